//! The web client in real browsers: Debian's Chromium driven through
//! chromedriver (WebDriver), two sessions against a running stack. User A
//! starts a conversation and writes, B's page shows it (with its unread
//! count), B reads, A's page marks it read; B's typing shows on A's page;
//! a picture A uploads shows on both. A screenshot of each page is kept in
//! `target/browser/` for a person to look at.

use fantoccini::{Client, ClientBuilder, Locator};
use natter_tests::TestApp;
use natter_tests::procs::{self, Owned};
use std::path::PathBuf;
use std::time::Duration;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

async fn browser(driver: &str) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1200,800"],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector).capabilities(caps).connect(driver).await.expect("a Chromium session")
}

/// The text of the first element `css` finds, once `ok` accepts it. On a
/// time-out the page is kept as `target/browser/failed.png` and what it
/// shows in `#error` goes in the panic.
async fn text_when(c: &Client, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    loop {
        if let Ok(e) = c.find(Locator::Css(css)).await
            && let Ok(t) = e.text().await
        {
            if ok(&t) {
                return t;
            }
            last = t;
        }
        if tokio::time::Instant::now() > deadline {
            screenshot(c, "failed.png").await;
            let error = match c.find(Locator::Id("error")).await {
                Ok(e) => e.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            panic!("timed out waiting for {what}: `{css}` says {last:?}; the page's error: {error:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn sign_in(c: &Client, url: &str, name: &str) -> String {
    c.goto(url).await.expect("the page");
    c.find(Locator::Id("name")).await.unwrap().send_keys(name).await.unwrap();
    c.find(Locator::Id("signin-btn")).await.unwrap().click().await.unwrap();
    let me = text_when(c, "#me", "signed in", |t| t.len() == 24).await;
    text_when(c, "#conn-status", "connected", |t| t == "online").await;
    me
}

async fn screenshot(c: &Client, name: &str) {
    let dir = workspace().join("target").join("browser");
    std::fs::create_dir_all(&dir).unwrap();
    let png = c.screenshot().await.expect("a screenshot");
    std::fs::write(dir.join(name), png).unwrap();
}

#[tokio::test]
async fn two_browsers_chat_read_and_share_a_picture() {
    let mut app = TestApp::new().await;
    app.with_s3();
    app.edge_env.insert("WEB_DIR".into(), workspace().join("web").display().to_string());
    app.edge_env.insert("DEV_TOKENS".into(), "true".into());
    app.edge_env.insert("ATTACHMENT_DOWNLOAD".into(), "proxy".into());
    let edge = app.start_edge().await;
    app.start_worker();
    app.start_attachments_worker();
    let port = procs::free_port();
    let log = std::env::temp_dir().join(format!("{}-chromedriver.log", app.name));
    let _driver =
        Owned::spawn(&PathBuf::from("chromedriver"), &[format!("--port={port}")], &[], &log.display().to_string());
    procs::wait_for_port(port, Duration::from_secs(30)).await;
    let driver = format!("http://127.0.0.1:{port}");
    let url = format!("http://{edge}/");
    let a = browser(&driver).await;
    let b = browser(&driver).await;

    let a_id = sign_in(&a, &url, "Ann").await;
    let b_id = sign_in(&b, &url, "Bob").await;

    // A opens a conversation with B and writes.
    a.find(Locator::Id("new-conv-user")).await.unwrap().send_keys(&b_id).await.unwrap();
    a.find(Locator::Id("new-conv-btn")).await.unwrap().click().await.unwrap();
    text_when(&a, "#room-title", "the room open", |t| t.contains(&b_id)).await;
    a.find(Locator::Id("text")).await.unwrap().send_keys("hello from Ann").await.unwrap();
    a.find(Locator::Id("send-btn")).await.unwrap().click().await.unwrap();
    text_when(&a, ".message.mine .content", "A's message on A's page", |t| t == "hello from Ann").await;

    // B's list shows the conversation with one unread; B opens it.
    text_when(&b, ".room .unread", "B's unread count", |t| t == "1").await;
    b.find(Locator::Css(".room")).await.unwrap().click().await.unwrap();
    text_when(&b, ".message .content", "A's message on B's page", |t| t == "hello from Ann").await;
    // B read it: A's page says so.
    text_when(&a, ".message.mine .status", "read on A's page", |t| t.contains("read")).await;

    // B types; A sees it.
    b.find(Locator::Id("text")).await.unwrap().send_keys("hi").await.unwrap();
    text_when(&a, "#typing", "B typing on A's page", |t| t.contains("typing")).await;

    // B reacts to A's message: A's page counts it. A edits it: B's page
    // shows the new words, marked edited.
    b.find(Locator::Css(".message .act-react")).await.unwrap().click().await.unwrap();
    text_when(&a, ".message.mine .reaction", "B's reaction on A's page", |t| t == "👍 1").await;
    a.execute("window.prompt = () => 'hello again from Ann'; return null;", vec![]).await.unwrap();
    a.find(Locator::Css(".message.mine .act-edit")).await.unwrap().click().await.unwrap();
    text_when(&b, ".message .content", "A's edit on B's page", |t| t == "hello again from Ann").await;
    let edited = b.find(Locator::Css(".message .edited")).await.unwrap();
    assert!(edited.is_displayed().await.unwrap(), "marked edited");

    // A shares a picture: both pages show it.
    let png = std::env::temp_dir().join(format!("{}-pixel.png", app.name));
    let mut img = image::RgbImage::new(64, 48);
    for (x, y, p) in img.enumerate_pixels_mut() {
        *p = image::Rgb([(x * 4) as u8, (y * 5) as u8, 160]);
    }
    img.save(&png).unwrap();
    a.find(Locator::Id("file")).await.unwrap().send_keys(&png.display().to_string()).await.unwrap();
    let name = png.file_name().unwrap().to_string_lossy().to_string();
    for (c, who) in [(&a, "A"), (&b, "B")] {
        text_when(c, ".message:last-child .attachment", &format!("the picture on {who}'s page"), |t| t.contains(&name))
            .await;
    }
    // Older history on scroll: 40 more messages (from A's own socket), B
    // reloads (the tab keeps its sign-in) and reopens the room: the newest
    // page shows; scrolled to the top, the older ones come.
    let conv = a.find(Locator::Css(".room")).await.unwrap().attr("data-room-id").await.unwrap().expect("a room id");
    let mut ws = natter_tests::WsClient::connect(edge, &app.token(a_id.parse().unwrap(), &[])).await;
    for i in 0..40 {
        let r =
            ws.request("send_message", serde_json::json!({"conversationId": conv, "content": format!("m{i}")})).await;
        assert_eq!(r["type"], "ack");
    }
    natter_tests::eventually("the history written", Duration::from_secs(10), || async {
        let (_, h) =
            app.get(edge, &format!("/api/chat/conversations/{conv}/messages?limit=1"), b_id.parse().unwrap()).await;
        (h["messages"][0]["content"] == "m39").then_some(())
    })
    .await;
    b.goto(&url).await.unwrap();
    text_when(&b, "#conn-status", "B connected again", |t| t == "online").await;
    b.find(Locator::Css(".room")).await.unwrap().click().await.unwrap();
    text_when(&b, ".message:last-child .content", "the newest on B's page", |t| t == "m39").await;
    let shown = async || b.find_all(Locator::Css(".message")).await.unwrap().len();
    assert_eq!(shown().await, 30, "one page");
    b.execute("document.getElementById('messages').scrollTop = 0; return null;", vec![]).await.unwrap();
    text_when(&b, ".message:first-child .content", "the oldest after scrolling up", |t| t == "hello again from Ann")
        .await;
    assert_eq!(shown().await, 42, "every message, once");

    let errors = [&a, &b].map(|c| async move { c.find(Locator::Id("error")).await.unwrap().text().await.unwrap() });
    for e in errors {
        assert_eq!(e.await, "", "no error shown");
    }
    screenshot(&a, "a.png").await;
    screenshot(&b, "b.png").await;
    a.close().await.unwrap();
    b.close().await.unwrap();
}
