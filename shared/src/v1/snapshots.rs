//! Snapshot tests: the published JSON shapes of v1. A failing test here means
//! a wire change; make it a new version instead of editing the expectation.

use super::command::*;
use super::error::ErrorCode;
use super::server::*;
use crate::ids::UserId;

fn uid(h: &str) -> UserId {
    h.parse().unwrap()
}

#[test]
fn command_envelope_shape() {
    let env = CommandEnvelope {
        v: 1,
        actor: uid("64b7f0c2a1b2c3d4e5f60718"),
        roles: vec!["Admin".into()],
        reply: None,
        meta: None,
        command: Command::SendMessage(SendMessageCmd {
            message_id: "650000000000000000000001".parse().unwrap(),
            room: RoomFields { conversation_id: Some("650000000000000000000002".into()), group_id: None },
            content: "hi".into(),
            message_type: crate::model::MessageType::Text,
            client_msg_id: "k1".into(),
            attachments: vec![],
            reply_to: None,
            mentions: vec![],
        }),
    };
    assert_eq!(
        serde_json::to_string(&env).unwrap(),
        r#"{"v":1,"actor":"64b7f0c2a1b2c3d4e5f60718","roles":["Admin"],"command":{"type":"send_message","messageId":"650000000000000000000001","conversationId":"650000000000000000000002","content":"hi","messageType":"text","clientMsgId":"k1"}}"#
    );
    let create = Command::CreateConversation(CreateConversationCmd {
        conversation_id: "650000000000000000000002".parse().unwrap(),
        participant_ids: [uid("64b7f0c2a1b2c3d4e5f60718"), uid("64b7f0c2a1b2c3d4e5f60719")],
    });
    let m = || "650000000000000000000001".parse().unwrap();
    let room = || RoomFields { conversation_id: None, group_id: Some("650000000000000000000003".into()) };
    for (cmd, want) in [
        (
            Command::EditMessage(EditMessageCmd { room: room(), message_id: m(), content: "new".into() }),
            r#"{"type":"edit_message","groupId":"650000000000000000000003","messageId":"650000000000000000000001","content":"new"}"#,
        ),
        (
            Command::AddReaction(ReactionCmd { room: room(), message_id: m(), emoji: ":ok:".into() }),
            r#"{"type":"add_reaction","groupId":"650000000000000000000003","messageId":"650000000000000000000001","emoji":":ok:"}"#,
        ),
        (
            Command::UnpinMessage(MessageCmd { room: room(), message_id: m() }),
            r#"{"type":"unpin_message","groupId":"650000000000000000000003","messageId":"650000000000000000000001"}"#,
        ),
    ] {
        assert_eq!(serde_json::to_string(&cmd).unwrap(), want);
    }
    assert_eq!(
        serde_json::to_string(&create).unwrap(),
        r#"{"type":"create_conversation","conversationId":"650000000000000000000002","participantIds":["64b7f0c2a1b2c3d4e5f60718","64b7f0c2a1b2c3d4e5f60719"]}"#
    );
}

#[test]
fn server_frames_shape() {
    let ack = to_text(
        "ack",
        Some("r1"),
        SendAck {
            message_id: "m".into(),
            room: RoomFields { conversation_id: Some("c".into()), group_id: None },
            client_msg_id: "k".into(),
            seq: 7,
            duplicate: false,
        },
    );
    assert_eq!(
        ack,
        r#"{"type":"ack","requestId":"r1","data":{"messageId":"m","conversationId":"c","clientMsgId":"k","seq":7,"duplicate":false}}"#
    );
    assert_eq!(
        error_text(None, ErrorCode::NotAMember, "no"),
        r#"{"type":"error","data":{"code":"not_a_member","message":"no"}}"#
    );
    let outcome = Outcome { status: OutcomeStatus::Refused, seq: 3, reason: Some("x".into()), code: None };
    assert_eq!(serde_json::to_string(&outcome).unwrap(), r#"{"status":"refused","seq":3,"reason":"x"}"#);
}

#[test]
fn group_commands_shape() {
    let read = Command::MarkRead(MarkReadCmd {
        room: RoomFields { conversation_id: None, group_id: Some("650000000000000000000003".into()) },
        message_id: "650000000000000000000001".parse().unwrap(),
    });
    assert_eq!(
        serde_json::to_string(&read).unwrap(),
        r#"{"type":"mark_read","groupId":"650000000000000000000003","messageId":"650000000000000000000001"}"#
    );
    let add = Command::AddMember(MemberCmd {
        group_id: "650000000000000000000003".parse().unwrap(),
        user_id: uid("64b7f0c2a1b2c3d4e5f60718"),
    });
    assert_eq!(
        serde_json::to_string(&add).unwrap(),
        r#"{"type":"add_member","groupId":"650000000000000000000003","userId":"64b7f0c2a1b2c3d4e5f60718"}"#
    );
    let back: Command = serde_json::from_str(&serde_json::to_string(&read).unwrap()).unwrap();
    assert_eq!(back, read);
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap()
}

fn conv(id: &str) -> RoomFields {
    RoomFields { conversation_id: Some(id.into()), group_id: None }
}

fn group(id: &str) -> RoomFields {
    RoomFields { conversation_id: None, group_id: Some(id.into()) }
}

/// Every event's `data` that is not a REST view, field by field (the
/// views are recorded from a running stack by the `wire` integration
/// test; shapes only the unit can reach cheaply, such as a retraction or
/// a refused upload, are here).
#[test]
fn event_payload_shapes() {
    use super::event::*;
    let deleted =
        MessageDeleted { message_id: "m".into(), deleted_by: Some("u".into()), retracted: false, room: conv("c") };
    assert_eq!(json(&deleted), r#"{"messageId":"m","deletedBy":"u","conversationId":"c"}"#);
    let retracted = MessageDeleted { message_id: "m".into(), deleted_by: None, retracted: true, room: group("g") };
    assert_eq!(json(&retracted), r#"{"messageId":"m","deletedBy":null,"retracted":true,"groupId":"g"}"#);
    let read = MessageRead {
        message_id: "m".into(),
        user_id: "u".into(),
        read_at: "2026-01-01T00:00:00.000Z".into(),
        up_to_seq: 9,
        room: conv("c"),
    };
    assert_eq!(
        json(&read),
        r#"{"messageId":"m","userId":"u","readAt":"2026-01-01T00:00:00.000Z","upToSeq":9,"conversationId":"c"}"#
    );
    let edited = MessageEdited {
        message_id: "m".into(),
        content: "new".into(),
        edited_at: "2026-01-01T00:00:00.000Z".into(),
        edit_count: 2,
        room: group("g"),
    };
    assert_eq!(
        json(&edited),
        r#"{"messageId":"m","content":"new","editedAt":"2026-01-01T00:00:00.000Z","editCount":2,"groupId":"g"}"#
    );
    let reaction =
        ReactionChanged {
            message_id: "m".into(), emoji: "👍".into(), user_id: "u".into(), count: 3, room: conv("c")
        };
    assert_eq!(json(&reaction), r#"{"messageId":"m","emoji":"👍","userId":"u","count":3,"conversationId":"c"}"#);
    let pinned = MessagePinned {
        message_id: "m".into(),
        user_id: "u".into(),
        at: "2026-01-01T00:00:00.000Z".into(),
        room: group("g"),
    };
    assert_eq!(json(&pinned), r#"{"messageId":"m","userId":"u","at":"2026-01-01T00:00:00.000Z","groupId":"g"}"#);
    let status = MessageStatusUpdated { message_id: "m".into(), status: MessageStatus::Delivered, room: group("g") };
    assert_eq!(json(&status), r#"{"messageId":"m","status":"delivered","groupId":"g"}"#);
    let contact = ContactAdded { conversation_id: "c".into(), user_ids: vec!["a".into(), "b".into()] };
    assert_eq!(json(&contact), r#"{"conversationId":"c","userIds":["a","b"]}"#);
    assert_eq!(
        json(&GroupDeleted { group_id: "g".into(), deleted_by: "u".into() }),
        r#"{"groupId":"g","deletedBy":"u"}"#
    );
    assert_eq!(
        json(&MemberAdded { group_id: "g".into(), user_id: "u".into(), added_by: "a".into() }),
        r#"{"groupId":"g","userId":"u","addedBy":"a"}"#
    );
    assert_eq!(
        json(&MemberRemoved { group_id: "g".into(), user_id: "u".into(), removed_by: "u".into(), left: true }),
        r#"{"groupId":"g","userId":"u","removedBy":"u","left":true}"#
    );
    let refused = CommandRefused {
        action: "send_message".into(),
        code: ErrorCode::NotAMember,
        reason: "no".into(),
        seq: 4,
        about: RefusedIds { message_id: Some("m".into()), client_msg_id: Some("k".into()), group_id: None },
    };
    assert_eq!(
        json(&refused),
        r#"{"action":"send_message","code":"not_a_member","reason":"no","seq":4,"messageId":"m","clientMsgId":"k"}"#
    );
    let bare = CommandRefused { about: RefusedIds::group("g"), ..refused };
    assert_eq!(json(&bare), r#"{"action":"send_message","code":"not_a_member","reason":"no","seq":4,"groupId":"g"}"#);
    let upload = UploadRefused { id: "a".into(), error: Some("too big".into()), code: Some("file_too_large".into()) };
    assert_eq!(json(&upload), r#"{"id":"a","error":"too big","code":"file_too_large"}"#);
    let typing = UserTyping { user_id: "u".into(), username: "Ann".into(), is_typing: true, room: conv("c") };
    assert_eq!(json(&typing), r#"{"userId":"u","username":"Ann","isTyping":true,"conversationId":"c"}"#);
    let online = UserPresence { user_id: "u".into(), is_online: false, last_seen: None };
    assert_eq!(json(&online), r#"{"userId":"u","isOnline":false,"lastSeen":null}"#);
    let resync = ResyncRequired { last_seq: 3, reason: "expired".into(), room: group("g") };
    assert_eq!(json(&resync), r#"{"lastSeq":3,"reason":"expired","groupId":"g"}"#);
    // Every payload reads back as written (the edge reads some of them).
    assert_eq!(serde_json::from_str::<MessageDeleted>(&json(&retracted)).unwrap(), retracted);
    assert_eq!(serde_json::from_str::<CommandRefused>(&json(&bare)).unwrap(), bare);
}

/// Every ack and error body, on both protocols and REST.
#[test]
fn ack_and_error_shapes() {
    let upload = Ack::Staged(UploadAck { attachment_id: "a".into(), seq: 2, room: RoomFields::default() });
    assert_eq!(json(&upload), r#"{"attachmentId":"a","seq":2}"#);
    let receipt = Ack::Receipt(ReceiptAck { message_id: "m".into(), seq: 5, room: group("g") });
    assert_eq!(json(&receipt), r#"{"messageId":"m","seq":5,"groupId":"g"}"#);
    assert_eq!(json(&Ack::Room(conv("c"))), r#"{"conversationId":"c"}"#);
    let plain = Ack::Joined(JoinAck { room: conv("c"), catch_up: None });
    assert_eq!(json(&plain), r#"{"conversationId":"c"}"#);
    let caught = Ack::Joined(JoinAck {
        room: conv("c"),
        catch_up: Some(CatchUpReport { last_seq: 3, events: Some(2), complete: true, reason: None }),
    });
    assert_eq!(json(&caught), r#"{"conversationId":"c","catchUp":{"lastSeq":3,"events":2,"complete":true}}"#);
    let resync = CatchUpReport { last_seq: 3, events: None, complete: false, reason: Some("r".into()) };
    assert_eq!(json(&resync), r#"{"lastSeq":3,"complete":false,"reason":"r"}"#);
    let reply = ErrorReply { error: super::error::ErrorBody { code: ErrorCode::Forbidden, message: "no".into() } };
    assert_eq!(json(&reply), r#"{"error":{"code":"forbidden","message":"no"}}"#);
    let event = ErrorEvent { code: ErrorCode::RateLimited, message: "slow".into(), event: "send_message".into() };
    assert_eq!(json(&event), r#"{"code":"rate_limited","message":"slow","event":"send_message"}"#);
    let connect = ConnectError { message: "bad".into(), data: Some(CodeOnly { code: ErrorCode::InvalidToken }) };
    assert_eq!(json(&connect), r#"{"message":"bad","data":{"code":"invalid_token"}}"#);
    assert_eq!(json(&ConnectError { message: "bad".into(), data: None }), r#"{"message":"bad"}"#);
    assert_eq!(json(&PendingReply { status: PendingStatus::Pending, seq: 8 }), r#"{"status":"pending","seq":8}"#);
}

/// The enums stored in documents and shown in views keep the module's
/// strings.
#[test]
fn enum_strings() {
    use crate::model::{AttachmentStatus, GroupType, MessageStatus, MessageType};
    for t in [MessageType::Text, MessageType::Image, MessageType::Document, MessageType::System] {
        assert_eq!(json(&t), format!("\"{}\"", t.as_str()));
    }
    for s in [MessageStatus::Sent, MessageStatus::Delivered, MessageStatus::Read] {
        assert_eq!(json(&s), format!("\"{}\"", s.as_str()));
    }
    assert!(MessageStatus::Sent < MessageStatus::Delivered && MessageStatus::Delivered < MessageStatus::Read);
    for g in GroupType::ALL {
        assert_eq!(json(&g), format!("\"{}\"", g.as_str()));
        assert_eq!(GroupType::parse(g.as_str()), Some(g));
    }
    assert_eq!(GroupType::parse("Custom"), None);
    for a in [AttachmentStatus::Accepted, AttachmentStatus::Rejected, AttachmentStatus::Expired] {
        assert_eq!(json(&a), format!("\"{}\"", a.as_str()));
    }
    assert_eq!(json(&crate::audit::FactStatus::DeadLettered), "\"dead_lettered\"");
}

/// A command naming an id that is not an ObjectId does not decode: ids are
/// parsed once, where the command is read.
#[test]
fn command_ids_are_parsed_when_decoded() {
    let ok = r#"{"type":"mark_read","groupId":"650000000000000000000003","messageId":"650000000000000000000001"}"#;
    assert!(serde_json::from_str::<Command>(ok).is_ok());
    let bad = r#"{"type":"mark_read","groupId":"650000000000000000000003","messageId":"not-an-id"}"#;
    let err = serde_json::from_str::<Command>(bad).unwrap_err().to_string();
    assert!(err.contains("messageId `not-an-id`"), "{err}");
}
