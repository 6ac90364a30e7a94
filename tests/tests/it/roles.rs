//! A worker role is one handler and one registration. `Tally` is a whole
//! role: it names its `Role` (what it consumes), says how it applies a
//! batch, and boots with `start::serve`; its consumers are declared by
//! `apply_consumers`, as `topology::apply` does for each entry of
//! `Role::ALL` (the one line a role of the product adds).

use natter_nats::topology::{Input, Role};
use natter_shared::audit::AuditFact;
use natter_tests::{TestApp, WsClient};
use natter_workers::handler::{ApplyError, Disposition, Done, Handler, Incoming};
use natter_workers::{RunnerConfig, start};
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Counts what the other roles did: the (role, action) of every outcome.
struct Tally {
    seen: Arc<Mutex<Vec<(String, String)>>>,
}

impl Handler for Tally {
    const ROLE: Role = Role { name: "tally", input: Input::Outcomes };
    type Msg = AuditFact;
    type State = ();
    type Writes = ();

    async fn apply(&self, _: &mut (), batch: &[Incoming<AuditFact>], done: &mut Done) -> Result<(), ApplyError> {
        let mut seen = self.seen.lock().unwrap();
        for inc in batch {
            seen.push((inc.msg.role.clone(), inc.msg.action.clone()));
            done.insert(inc.seq, Disposition::Applied(vec![]));
        }
        Ok(())
    }

    fn take(&self, _: &mut ()) {}

    async fn write(&self, _: ()) -> Result<(), ApplyError> {
        Ok(())
    }

    fn written(&self, _: &mut (), _: bool) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_is_a_handler_and_a_registration() {
    let mut app = TestApp::new().await;
    let e = app.start_edge().await;
    app.start_worker();
    let js = async_nats::jetstream::new(async_nats::connect(&app.nats_url).await.unwrap());
    natter_nats::apply_consumers(&js, &natter_nats::Subjects::new(&app.name), Tally::ROLE).await.expect("consumers");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let tally = Tally { seen: seen.clone() };
    let (core, stop) = (app.core(), app.cancel.child_token());
    let cfg = RunnerConfig { fetch_wait: Duration::from_millis(500), ..RunnerConfig::default() };
    tokio::spawn(async move { start::serve(&core, cfg, stop, async |_| Ok(tally)).await });

    let (a, b) = (app.user(), app.user());
    let conv = app.open_conversation(e, a, b).await;
    let mut ws = WsClient::connect(e, &app.token(a, &[])).await;
    for i in 0..3 {
        let r = ws.request("send_message", json!({"conversationId": conv, "content": format!("m{i}")})).await;
        assert_eq!(r["type"], "ack", "{r}");
    }
    let counted = natter_tests::eventually("the tally", Duration::from_secs(20), || async {
        let seen = seen.lock().unwrap();
        let sent = seen.iter().filter(|(r, a)| r == "messages" && a == "send_message").count();
        (sent == 3 && seen.iter().any(|(_, a)| a == "create_conversation")).then(|| seen.len())
    })
    .await;
    assert!(counted >= 4, "{counted}");
}
