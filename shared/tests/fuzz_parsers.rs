//! Property tests of the parsers a `/ws` (or Socket.IO) client reaches in
//! `natter_shared::v1::client`: `parse` (text frames), `parse_request` (an
//! event's payload, shared by both protocols) and `parse_upload` (binary
//! `file_upload` messages). Whatever the input (raw bytes, any string,
//! valid JSON of the wrong shape, a valid envelope with random data), they
//! never panic, and every refusal carries one of the stable codes that
//! `docs/protocol.md` documents for a frame.
//!
//! Bounded (`CASES` inputs per property) so that it runs in the normal
//! suite; `PROPTEST_CASES` raises the count for a longer local run.

use natter_shared::v1::client::{CLIENT_EVENTS, ClientRequest, MAX_UPLOAD_HEADER, parse, parse_request, parse_upload};
use natter_shared::v1::error::ErrorCode;
use natter_shared::v1::{MAX_CONTENT_BYTES, MAX_REQUEST_ID};
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{Map, Value, json};
use std::collections::BTreeSet;

const CASES: u32 = 256;

fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(CASES);
    // No regression files: a failure prints its minimal input.
    Config { cases, failure_persistence: None, ..Config::default() }
}

/// Every `ErrorCode`, written once here (see `shared/src/v1/error.rs`); the
/// exhaustive match below stops compiling when a variant is added and not
/// listed.
const ALL_CODES: &[ErrorCode] = &[
    ErrorCode::InvalidJson,
    ErrorCode::InvalidFrame,
    ErrorCode::UnknownEvent,
    ErrorCode::InvalidPayload,
    ErrorCode::NotAMember,
    ErrorCode::Forbidden,
    ErrorCode::NotFound,
    ErrorCode::RateLimited,
    ErrorCode::MissingToken,
    ErrorCode::InvalidToken,
    ErrorCode::TokenExpired,
    ErrorCode::InvalidUserId,
    ErrorCode::OriginNotAllowed,
    ErrorCode::Unavailable,
    ErrorCode::Pending,
    ErrorCode::Refused,
    ErrorCode::FileTooLarge,
    ErrorCode::EmptyFile,
    ErrorCode::ContentMismatch,
    ErrorCode::TypeNotAllowed,
    ErrorCode::UnknownType,
    ErrorCode::StagingExpired,
    ErrorCode::LimitExceeded,
    ErrorCode::Internal,
];

#[allow(dead_code)]
fn listed(c: ErrorCode) {
    use ErrorCode::*;
    match c {
        InvalidJson | InvalidFrame | UnknownEvent | InvalidPayload | NotAMember | Forbidden | NotFound
        | RateLimited | MissingToken | InvalidToken | TokenExpired | InvalidUserId | OriginNotAllowed | Unavailable
        | Pending | Refused | FileTooLarge | EmptyFile | ContentMismatch | TypeNotAllowed | UnknownType
        | StagingExpired | LimitExceeded | Internal => {}
    }
}

/// The codes in the "Error codes" table of `docs/protocol.md`.
fn documented_codes() -> BTreeSet<String> {
    let doc = include_str!("../../docs/protocol.md");
    let table = doc.split("\n## Error codes").nth(1).expect("protocol.md has an Error codes section");
    let table = table.split("\n## ").next().unwrap_or(table);
    let mut codes = BTreeSet::new();
    for row in table.lines().filter(|l| l.starts_with("| `")) {
        let first = row.split('|').nth(1).unwrap_or("");
        codes.extend(first.split('`').skip(1).step_by(2).map(str::to_string));
    }
    codes
}

/// A code's name on the wire (its serde name).
fn wire(c: ErrorCode) -> String {
    serde_json::to_value(c).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

/// The codes a frame parser may answer with (the first rows of the table).
const FRAME_CODES: &[ErrorCode] =
    &[ErrorCode::InvalidJson, ErrorCode::InvalidFrame, ErrorCode::UnknownEvent, ErrorCode::InvalidPayload];

fn assert_documented(c: ErrorCode, input: &dyn std::fmt::Debug) {
    let docs = documented_codes();
    assert!(docs.contains(&wire(c)), "code {c:?} ({}) is not in docs/protocol.md; input {input:?}", wire(c));
    assert!(FRAME_CODES.contains(&c), "a parser answered {c:?}, not a frame code; input {input:?}");
}

#[test]
fn every_error_code_is_documented_and_round_trips() {
    let docs = documented_codes();
    for c in ALL_CODES {
        let name = wire(*c);
        assert_eq!(name, c.as_str(), "serde name and as_str of {c:?}");
        assert!(docs.contains(&name), "{name} is missing from the Error codes table of docs/protocol.md");
        assert_eq!(ErrorCode::parse(&name), Some(*c));
    }
    let ours: BTreeSet<String> = ALL_CODES.iter().map(|c| wire(*c)).collect();
    let extra: Vec<&String> = docs.difference(&ours).collect();
    assert!(extra.is_empty(), "documented codes that ErrorCode does not have: {extra:?}");
}

// ---------------------------------------------------------------------------
// Strategies.

/// Field names the payloads use, and some they do not.
const FIELDS: &[&str] = &[
    "conversationId",
    "groupId",
    "content",
    "messageType",
    "clientMsgId",
    "attachments",
    "lastSeq",
    "isTyping",
    "messageId",
    "filename",
    "type",
    "id",
    "userId",
    "username",
    "requestId",
    "data",
    "__proto__",
    "",
];

fn hex24() -> BoxedStrategy<String> {
    "[0-9a-f]{24}".boxed()
}

/// Strings that matter to these parsers: short, empty, blank, with control
/// characters, any Unicode, ids, and long ones (past the content and key
/// limits).
fn text() -> BoxedStrategy<String> {
    prop_oneof![
        4 => "[a-zA-Z0-9_ -]{0,16}",
        2 => any::<String>(),
        1 => "\\PC{0,40}",
        1 => "[\\x00-\\x1f\\x7f\u{80}-\u{9f}]{1,4}",
        1 => "[ \t\r\n\u{a0}\u{2028}]{0,6}",
        2 => hex24(),
        1 => prop::sample::select(vec!["text", "image", "document", "system", "TEXT", ""]).prop_map(String::from),
        1 => (0usize..3).prop_flat_map(|i| {
            let around = [MAX_REQUEST_ID, 1000, MAX_CONTENT_BYTES][i];
            (around - 2..around + 3).prop_map(|n| "y".repeat(n))
        }),
    ]
    .boxed()
}

fn number() -> BoxedStrategy<Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
        Just(json!(0)),
        Just(json!(-1)),
        Just(json!(u64::MAX)),
    ]
    .boxed()
}

fn leaf() -> BoxedStrategy<Value> {
    prop_oneof![Just(Value::Null), any::<bool>().prop_map(Value::from), number(), text().prop_map(Value::String),]
        .boxed()
}

fn field_name() -> BoxedStrategy<String> {
    prop_oneof![3 => prop::sample::select(FIELDS).prop_map(String::from), 1 => text()].boxed()
}

/// Any JSON value, nested a few levels, with the payloads' field names.
fn json_value() -> BoxedStrategy<Value> {
    leaf()
        .prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((field_name(), inner), 0..6)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
            ]
        })
        .boxed()
}

/// A value for a known field: usually of the right kind, sometimes not.
fn field_value(name: &'static str) -> BoxedStrategy<Value> {
    let right: BoxedStrategy<Value> = match name {
        "isTyping" => any::<bool>().prop_map(Value::from).boxed(),
        "lastSeq" => number().boxed(),
        "attachments" => prop::collection::vec(
            prop_oneof![hex24().prop_map(Value::String), hex24().prop_map(|id| json!({"id": id})), json_value(),],
            0..13,
        )
        .prop_map(Value::Array)
        .boxed(),
        _ => text().prop_map(Value::String).boxed(),
    };
    prop_oneof![4 => right, 1 => json_value()].boxed()
}

/// A payload for `event`: its fields (and some others), each present or
/// not, most of the right kind.
fn payload(event: &str) -> BoxedStrategy<Value> {
    let fields: &'static [&'static str] = match event {
        "send_message" => {
            &["conversationId", "groupId", "content", "messageType", "clientMsgId", "attachments", "replyTo"]
        }
        "join_conversation" | "leave_conversation" => &["conversationId", "lastSeq"],
        "join_group" | "leave_group" => &["groupId", "lastSeq"],
        "typing" => &["conversationId", "groupId", "isTyping", "userId", "username"],
        "mark_as_read" | "delete_message" | "pin_message" | "unpin_message" => &["messageId"],
        "edit_message" => &["messageId", "content"],
        "add_reaction" | "remove_reaction" => &["messageId", "emoji"],
        "file_upload" => &["filename", "type", "conversationId", "groupId"],
        _ => &["id", "content"],
    };
    let present: Vec<BoxedStrategy<Option<(String, Value)>>> = fields
        .iter()
        .copied()
        .map(|f| prop::option::weighted(0.7, field_value(f).prop_map(move |v| (f.to_string(), v))).boxed())
        .collect();
    (present, prop::collection::vec((field_name(), json_value()), 0..2))
        .prop_map(|(fields, extra)| {
            let mut m: Map<String, Value> = extra.into_iter().collect();
            m.extend(fields.into_iter().flatten());
            Value::Object(m)
        })
        .boxed()
}

fn event_name() -> BoxedStrategy<String> {
    prop_oneof![
        4 => prop::sample::select(CLIENT_EVENTS).prop_map(String::from),
        1 => prop::sample::select(CLIENT_EVENTS).prop_map(|e| e.to_uppercase()),
        1 => text(),
    ]
    .boxed()
}

/// An event name and a payload for it (or random JSON as the payload).
fn event_and_data() -> BoxedStrategy<(String, Value)> {
    event_name()
        .prop_flat_map(|e| {
            let data = prop_oneof![4 => payload(&e), 1 => json_value()];
            (Just(e), data)
        })
        .boxed()
}

/// A frame envelope: `type`, `requestId` and `data` each present or not,
/// of the right kind or not, plus stray keys.
fn envelope() -> BoxedStrategy<Value> {
    let kind = prop_oneof![8 => event_name().prop_map(Value::String), 1 => json_value()];
    let rid = prop_oneof![6 => text().prop_map(Value::String), 1 => json_value()];
    (
        prop::option::weighted(0.9, kind),
        prop::option::weighted(0.7, rid),
        event_and_data(),
        prop::option::weighted(0.1, json_value()),
        any::<bool>(),
        prop::collection::vec((field_name(), json_value()), 0..2),
    )
        .prop_map(|(kind, rid, (_, data), other_data, with_data, extra)| {
            let mut m: Map<String, Value> = extra.into_iter().collect();
            if let Some(k) = kind {
                m.insert("type".into(), k);
            }
            if let Some(r) = rid {
                m.insert("requestId".into(), r);
            }
            if with_data {
                m.insert("data".into(), other_data.unwrap_or(data));
            }
            Value::Object(m)
        })
        .boxed()
}

/// A valid frame: a known event with a well-formed payload.
fn valid_frame() -> BoxedStrategy<(Value, String)> {
    let room =
        prop_oneof![hex24().prop_map(|c| json!({"conversationId": c})), hex24().prop_map(|g| json!({"groupId": g}))];
    let content = "[a-zA-Z0-9][a-zA-Z0-9 ]{0,40}";
    let data = prop_oneof![
        (room.clone(), content, prop::option::of("[a-z0-9-]{1,20}")).prop_map(|(mut r, c, k)| {
            r["content"] = json!(c);
            if let Some(k) = k {
                r["clientMsgId"] = json!(k);
            }
            ("send_message", r)
        }),
        (hex24(), prop::option::of(any::<u64>())).prop_map(|(c, s)| {
            let mut d = json!({"conversationId": c});
            if let Some(s) = s {
                d["lastSeq"] = json!(s);
            }
            ("join_conversation", d)
        }),
        hex24().prop_map(|g| ("leave_group", json!({"groupId": g}))),
        (room, any::<bool>()).prop_map(|(mut r, t)| {
            r["isTyping"] = json!(t);
            ("typing", r)
        }),
        hex24().prop_map(|m| ("mark_as_read", json!({"messageId": m}))),
        hex24().prop_map(|m| ("delete_message", json!({"messageId": m}))),
        (hex24(), content).prop_map(|(m, c)| ("edit_message", json!({"messageId": m, "content": c}))),
        (hex24(), "[a-z:]{1,10}").prop_map(|(m, e)| ("add_reaction", json!({"messageId": m, "emoji": e}))),
        hex24().prop_map(|m| ("unpin_message", json!({"messageId": m}))),
    ];
    (data, "[a-zA-Z0-9-]{1,32}")
        .prop_map(|((kind, data), rid)| (json!({"type": kind, "requestId": rid, "data": data}), rid))
        .boxed()
}

/// A text edited at random: cut, a character put in, a range removed,
/// the start repeated.
fn mutated(text: String) -> BoxedStrategy<String> {
    let n = text.len().max(1);
    (0usize..4, 0..n, 0..n, any::<char>())
        .prop_map(move |(op, a, b, c)| {
            let at = |i: usize| (0..=i.min(text.len())).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
            let (a, b) = (at(a.min(b)), at(a.max(b)));
            match op {
                0 => text[..a].to_string(),
                1 => format!("{}{c}{}", &text[..a], &text[a..]),
                2 => format!("{}{}", &text[..a], &text[b..]),
                _ => format!("{}{}", &text[..b], &text),
            }
        })
        .boxed()
}

/// Any text a client might send as a frame.
fn frame_text() -> BoxedStrategy<String> {
    prop_oneof![
        3 => envelope().prop_map(|v| v.to_string()),
        2 => envelope().prop_flat_map(|v| mutated(v.to_string())),
        1 => valid_frame().prop_flat_map(|(v, _)| mutated(v.to_string())),
        1 => json_value().prop_map(|v| v.to_string()),
        1 => any::<String>(),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        1 => (1usize..3000, any::<bool>()).prop_map(|(d, obj)| {
            // Deep nesting, in `data` or as the whole frame.
            let (open, close) = if obj { ("{\"a\":", "}") } else { ("[", "]") };
            let nested = format!("{}1{}", open.repeat(d), close.repeat(d));
            if d % 2 == 0 { format!(r#"{{"type":"typing","data":{nested}}}"#) } else { nested }
        }),
    ]
    .boxed()
}

// ---------------------------------------------------------------------------
// Properties.

/// The rules every refusal of `parse(text)` follows.
fn check_parse(text: &str) {
    let Err(e) = parse(text) else { return };
    assert_documented(e.code, &text);
    let value: Option<Value> = serde_json::from_str(text).ok();
    if value.is_some() {
        assert_ne!(e.code, ErrorCode::InvalidJson, "valid JSON answered invalid_json: {text:?}");
    }
    // A request id is echoed only as sent, and only when it is a plain key.
    if let Some(rid) = &e.request_id {
        assert!(rid.len() <= MAX_REQUEST_ID && !rid.chars().any(char::is_control), "echoed {rid:?} for {text:?}");
        let sent = value.as_ref().and_then(|v| v.get("requestId")).and_then(Value::as_str);
        assert_eq!(sent, Some(rid.as_str()), "echoed a request id that was not sent: {text:?}");
    }
    // A frame with a string `type` (written once, as a serializer writes
    // it: no duplicate keys) is refused on its event or its request id.
    if let Some(v @ Value::Object(m)) = &value
        && serde_json::to_string(v).ok().as_deref() == Some(text)
        && let Some(Value::String(kind)) = m.get("type")
    {
        let rid = match m.get("requestId") {
            None | Some(Value::Null) => Some(None),
            Some(Value::String(r)) if r.len() <= MAX_REQUEST_ID && !r.chars().any(char::is_control) => Some(Some(r)),
            Some(_) => None,
        };
        match rid {
            Some(rid) => {
                let expected = if CLIENT_EVENTS.contains(&kind.as_str()) {
                    ErrorCode::InvalidPayload
                } else {
                    ErrorCode::UnknownEvent
                };
                assert_eq!(e.code, expected, "{kind:?}: {text:?}");
                assert_eq!(e.request_id.as_ref(), rid, "the request id is echoed: {text:?}");
            }
            None => assert_eq!((e.code, &e.request_id), (ErrorCode::InvalidFrame, &None), "{text:?}"),
        }
    }
}

/// docs/protocol.md: a frame that is JSON but "not an object" is
/// `invalid_frame`, and a payload of "a wrong type" is `invalid_payload`.
/// serde reads a JSON array into a struct positionally, so before the fix
/// `["typing","r1",{...}]` was taken as a `typing` frame and executed,
/// `["",""]` echoed the request id `""`, and `"data":["<id>"]` was a
/// `messageId`. Found by `parse_never_panics_and_refuses_with_frame_codes`
/// (minimal input `["",""]`).
#[test]
fn a_json_array_is_not_a_frame() {
    let frame = r#"["typing","r1",{"groupId":"g","isTyping":true}]"#;
    assert_eq!(parse(frame).map(|_| ()).map_err(|e| e.code), Err(ErrorCode::InvalidFrame), "{frame}");
    let e = parse(r#"["",""]"#).unwrap_err();
    assert_eq!((e.code, e.request_id), (ErrorCode::InvalidFrame, None), r#"["",""]"#);
    let long = parse(r#"["",null,null,null]"#).unwrap_err();
    assert_eq!(long.code, ErrorCode::InvalidFrame, "valid JSON, not a frame: {}", long.message);
    let payload = parse_request("mark_as_read", r#"["0123456789abcdef01234567"]"#).map(|_| ()).map_err(|e| e.0);
    assert_eq!(payload, Err(ErrorCode::InvalidPayload), "a payload that is an array");
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn parse_never_panics_and_refuses_with_frame_codes(text in frame_text()) {
        check_parse(&text);
    }

    #[test]
    fn parse_answers_envelopes_by_their_event(env in envelope()) {
        let text = env.to_string();
        check_parse(&text);
        if let (Ok(_), Some(Value::String(kind))) = (parse(&text), env.get("type")) {
            prop_assert!(CLIENT_EVENTS.contains(&kind.as_str()) && kind != "file_upload", "accepted {text}");
        }
    }

    #[test]
    fn valid_frames_parse_and_keep_their_request_id((frame, rid) in valid_frame()) {
        let text = frame.to_string();
        match parse(&text) {
            Ok((got, _)) => prop_assert_eq!(got.as_deref(), Some(rid.as_str()), "{}", text),
            Err(e) => prop_assert!(false, "valid frame refused with {:?}: {}", e, text),
        }
    }

    #[test]
    fn parse_request_refuses_with_payload_or_event_codes((kind, data) in event_and_data()) {
        let text = data.to_string();
        match parse_request(&kind, &text) {
            Ok(req) => {
                prop_assert!(CLIENT_EVENTS.contains(&kind.as_str()) && kind != "file_upload", "accepted {kind}");
                if let ClientRequest::SendMessage(m) = &req {
                    prop_assert!(!m.content.trim().is_empty() && m.content.len() <= MAX_CONTENT_BYTES);
                    prop_assert!(m.attachments.len() <= 10);
                    prop_assert!(m.conversation_id.is_some() != m.group_id.is_some());
                    if let Some(k) = &m.client_msg_id {
                        prop_assert!(!k.is_empty() && k.len() <= 128 && !k.chars().any(char::is_control));
                    }
                }
            }
            Err((code, message)) => {
                assert_documented(code, &(&kind, &text));
                let expected = if CLIENT_EVENTS.contains(&kind.as_str()) {
                    ErrorCode::InvalidPayload
                } else {
                    ErrorCode::UnknownEvent
                };
                prop_assert_eq!(code, expected, "{} {}: {}", kind, text, message);
            }
        }
    }

    #[test]
    fn parse_request_takes_any_text_as_payload(kind in event_name(), data in frame_text()) {
        if let Err((code, _)) = parse_request(&kind, &data) {
            assert_documented(code, &(&kind, &data));
        }
    }
}

// ---------------------------------------------------------------------------
// Binary uploads: `[u32 big-endian header length][JSON header][file bytes]`.

/// How the length prefix relates to the header that follows.
#[derive(Clone, Copy, Debug)]
enum Prefix {
    Exact,
    Delta(i64),
    Raw(u32),
}

fn upload_header() -> BoxedStrategy<String> {
    let upload_data = prop_oneof![
        3 => payload("file_upload"),
        1 => ("\\PC{1,30}", "[a-z]{1,10}/[a-z0-9.+-]{1,20}", prop::option::of(hex24()))
            .prop_map(|(f, t, c)| {
                let mut d = json!({"filename": f, "type": t});
                if let Some(c) = c {
                    d["conversationId"] = json!(c);
                }
                d
            }),
        1 => json_value(),
    ];
    prop_oneof![
        4 => (prop_oneof![4 => Just(json!("file_upload")), 1 => event_name().prop_map(Value::String), 1 => json_value()],
              prop::option::of(text()), upload_data)
            .prop_map(|(kind, rid, data)| {
                let mut m = json!({"type": kind, "data": data});
                if let Some(r) = rid {
                    m["requestId"] = json!(r);
                }
                m.to_string()
            }),
        1 => frame_text(),
        1 => (MAX_UPLOAD_HEADER - 40..MAX_UPLOAD_HEADER + 40).prop_map(|n| {
            let pad = n.saturating_sub(60);
            format!(r#"{{"type":"file_upload","data":{{"filename":"{}","type":"a/b"}}}}"#, "f".repeat(pad))
        }),
    ]
    .boxed()
}

fn upload_message() -> BoxedStrategy<(Vec<u8>, Prefix)> {
    let prefix = prop_oneof![
        6 => Just(Prefix::Exact),
        2 => (-8i64..8).prop_map(Prefix::Delta),
        1 => prop_oneof![Just(u32::MAX), Just(MAX_UPLOAD_HEADER as u32 + 1), any::<u32>()].prop_map(Prefix::Raw),
    ];
    let header = prop_oneof![
        6 => upload_header().prop_map(String::into_bytes),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ];
    (header, prefix, prop::collection::vec(any::<u8>(), 0..256))
        .prop_map(|(header, prefix, file)| {
            let len = match prefix {
                Prefix::Exact => header.len() as u32,
                Prefix::Delta(d) => (header.len() as i64 + d).clamp(0, u32::MAX as i64) as u32,
                Prefix::Raw(n) => n,
            };
            let mut msg = len.to_be_bytes().to_vec();
            msg.extend_from_slice(&header);
            msg.extend_from_slice(&file);
            (msg, prefix)
        })
        .boxed()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn parse_upload_never_panics_on_raw_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        if let Err(e) = parse_upload(&bytes) {
            assert_documented(e.code, &bytes);
        }
    }

    #[test]
    fn parse_upload_splits_header_and_file_or_refuses((msg, prefix) in upload_message()) {
        match parse_upload(&msg) {
            Ok((rid, up, file)) => {
                let len = u32::from_be_bytes([msg[0], msg[1], msg[2], msg[3]]) as usize;
                prop_assert!(len <= MAX_UPLOAD_HEADER, "{:?} {:?}", prefix, msg);
                prop_assert_eq!(file, &msg[4 + len..]);
                prop_assert!(up.validate().is_ok());
                if let Some(r) = rid {
                    prop_assert!(r.len() <= MAX_REQUEST_ID && !r.chars().any(char::is_control));
                }
            }
            Err(e) => {
                assert_documented(e.code, &(prefix, String::from_utf8_lossy(&msg)));
                if let Some(r) = &e.request_id {
                    prop_assert!(r.len() <= MAX_REQUEST_ID && !r.chars().any(char::is_control));
                }
            }
        }
    }
}
