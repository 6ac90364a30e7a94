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
            message_id: "650000000000000000000001".into(),
            room: RoomFields { conversation_id: Some("650000000000000000000002".into()), group_id: None },
            content: "hi".into(),
            message_type: "text".into(),
            client_msg_id: "k1".into(),
            attachments: vec![],
        }),
    };
    assert_eq!(
        serde_json::to_string(&env).unwrap(),
        r#"{"v":1,"actor":"64b7f0c2a1b2c3d4e5f60718","roles":["Admin"],"command":{"type":"send_message","messageId":"650000000000000000000001","conversationId":"650000000000000000000002","content":"hi","messageType":"text","clientMsgId":"k1"}}"#
    );
    let create = Command::CreateConversation(CreateConversationCmd {
        conversation_id: "650000000000000000000002".into(),
        participant_ids: [uid("64b7f0c2a1b2c3d4e5f60718"), uid("64b7f0c2a1b2c3d4e5f60719")],
    });
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
            message_id: "m",
            conversation_id: Some("c"),
            group_id: None,
            client_msg_id: "k",
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
        message_id: "650000000000000000000001".into(),
    });
    assert_eq!(
        serde_json::to_string(&read).unwrap(),
        r#"{"type":"mark_read","groupId":"650000000000000000000003","messageId":"650000000000000000000001"}"#
    );
    let add = Command::AddMember(MemberCmd {
        group_id: "650000000000000000000003".into(),
        user_id: uid("64b7f0c2a1b2c3d4e5f60718"),
    });
    assert_eq!(
        serde_json::to_string(&add).unwrap(),
        r#"{"type":"add_member","groupId":"650000000000000000000003","userId":"64b7f0c2a1b2c3d4e5f60718"}"#
    );
    let back: Command = serde_json::from_str(&serde_json::to_string(&read).unwrap()).unwrap();
    assert_eq!(back, read);
}
