//! Golden bytes: one frame of every message kind, pinned. A change here is a wire-format change:
//! bump `PROTOCOL_VERSION` as `messages` describes, then paste the new bytes printed by the
//! failing test.
//!
//! Also: messages of an older peer, lacking the fields added since with `#[serde(default)]`,
//! still decode (MSG-1), and messages of a newer peer with fields we do not know decode too.

use std::collections::BTreeMap;
use std::fmt::Debug;

use serde::de::DeserializeOwned;
use serde::Serialize;

use procmesh_protocol::codec::{decode_body, encode_body};
use procmesh_protocol::messages::agent::ActionSpec;
use procmesh_protocol::messages::host::{HostInfo, SystemInfo};
use procmesh_protocol::messages::orchestrator::{QueueConfig, QueueToken};
use procmesh_protocol::spec::InputFile;
use procmesh_protocol::*;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// Checks that `value` encodes to exactly `expected` (hex) and that `expected` decodes to
/// `value`; on mismatch, says where the bytes part and what to paste.
fn check_golden<T>(name: &str, value: &T, expected: &str)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let mut frame = Vec::new();
    FrameCodec::default().encode(value, &mut frame).unwrap();
    let actual = hex(&frame);
    if actual != expected {
        let at = actual
            .as_bytes()
            .chunks(2)
            .zip(expected.as_bytes().chunks(2))
            .position(|(a, e)| a != e)
            .unwrap_or(actual.len().min(expected.len()) / 2);
        let window = |h: &str| {
            let start = (at * 2).saturating_sub(16).min(h.len());
            let end = (at * 2 + 32).min(h.len());
            h[start..end].to_owned()
        };
        panic!(
            "golden bytes of {name} changed at byte {at} (expected {} bytes, got {}):\n  \
             expected …{}…\n  actual   …{}…\n\
             If the change is intended (and the protocol version bumped), paste:\n{actual}",
            expected.len() / 2,
            frame.len(),
            window(expected),
            window(&actual),
        );
    }
    let (decoded, used) = FrameCodec::default()
        .decode::<T>(&unhex(expected))
        .unwrap_or_else(|e| panic!("golden bytes of {name} no longer decode: {e}"));
    assert_eq!(
        &decoded, value,
        "golden bytes of {name} decode to another value"
    );
    assert_eq!(used, expected.len() / 2);
}

fn agent() -> ActorId {
    "quic!10.0.0.5:7700,worker-3.agent".parse().unwrap()
}

fn orchestrator() -> ActorId {
    "quic!10.0.0.1:7700,service.orchestrator".parse().unwrap()
}

fn envelope(body: Body) -> Envelope {
    Envelope {
        dest: agent(),
        sender: orchestrator(),
        body,
        trace: None,
    }
}

const TELL: &str = "0000007183a464657374d921717569632131302e302e302e353a373730302c776f726b65722d332e6167656e74a673656e646572d927717569632131302e302e302e313a373730302c736572766963652e6f7263686573747261746f72a4626f647981a454656c6c81a76d657373616765c4020102";
const ASK: &str = "000000cb84a464657374d921717569632131302e302e302e353a373730302c776f726b65722d332e6167656e74a673656e646572d927717569632131302e302e302e313a373730302c736572766963652e6f7263686573747261746f72a4626f647981a341736b82a2696407a76d657373616765c40103a5747261636582ab7472616365706172656e74d93730302d34626639326633353737623334646136613363653932396430653065343733362d303066303637616130626139303262372d3031aa74726163657374617465a0";
const REPLY_OK: &str = "0000007883a464657374d921717569632131302e302e302e353a373730302c776f726b65722d332e6167656e74a673656e646572d927717569632131302e302e302e313a373730302c736572766963652e6f7263686573747261746f72a4626f647981a55265706c7982a2696407a6726573756c7481a24f6bc40104";
const REPLY_ERR: &str = "0000008483a464657374d921717569632131302e302e302e353a373730302c776f726b65722d332e6167656e74a673656e646572d927717569632131302e302e302e313a373730302c736572766963652e6f7263686573747261746f72a4626f647981a55265706c7982a2696407a6726573756c7481a345727281a748616e646c6572a4626f6f6d";
const UNDELIVERABLE: &str = "000000ae83a464657374d921717569632131302e302e302e353a373730302c776f726b65722d332e6167656e74a673656e646572d927717569632131302e302e302e313a373730302c736572766963652e6f7263686573747261746f72a4626f647981ad556e64656c6976657261626c6583a464657374d921717569632131302e302e302e353a373730302c776f726b65722d332e6167656e74a661736b5f696407a6726561736f6ea86e6f20726f757465";
const HELLO_CLAIMED: &str = "504d5348000100000000008884a461646472b2717569632131302e302e302e353a37373030a46e616d65a8776f726b65722d33a46e6f646582a46e616d65a26837a570726f6f66c420ababababababababababababababababababababababababababababababababa772656675736564d921746865207065657220737065616b7320322e302c20776520737065616b20312e30";
const HANDSHAKE: &str = "504d5348000100000000002782a461646472b2717569632131302e302e302e353a37373030a46e616d65a8776f726b65722d33";
const HOST_REQUEST: &str = "0000003381a95465726d696e61746583a46e616d65a8776f726b65722d33a867726163655f6d73cd1388a6726561736f6ea5647261696e";
const AGENT_REQUEST: &str = "0000013481a65375626d697482a6616374696f6e85a36c736e2aa7617474656d707402a87072696f7269747905a5717565756507a6616374696f6e86a6776f726b6572c4201111111111111111111111111111111111111111111111111111111111111111a46172677391a62d2d66617374a3656e7681a44c414e47a143a6696e707574739183a470617468a4696e2f61a468617368c4202222222222222222222222222222222222222222222222222222222222222222a473697a6503aa74696d656f75745f6d73cdea60a97265736f757263657384a5636f726573c0ac6d656d6f72795f6279746573c0aa6469736b5f6279746573c0ab686f73745f6c6162656c7380a97265706f72745f746fd927717569632131302e302e302e313a373730302c736572766963652e6f7263686573747261746f72";
const ORCHESTRATOR_REQUEST: &str = "0000003a81ab437265617465517565756583ab72657472795f6c696d697403b064656661756c745f7072696f7269747905a46e616d65a76e696768746c79";
const ORCHESTRATOR_REPLY: &str = "0000003681a24f6b81ac51756575654372656174656482a2696401a5746f6b656eb8616261626162616261626162616261626162616261626162";
const CLIENT_EVENT: &str = "0000001f81a64c616767656482ac737562736372697074696f6e09a66d697373656464";
const TRANSITION: &str = "0000008585a36c736e2aa7617474656d707402a57374617465a9436f6d706c65746564a26174cf0000018bcfe56800a664657461696c84a86c6f636174696f6ebb717569632131302e302e302e353a373730302c776f726b65722d33a46578697481a4436f646500a66370755f6d73cd05dcb17065616b5f6d656d6f72795f6279746573ce00100000";
const ACTION_RECORD: &str = "000000da86a36c736e2aa574696d657384a34e6577cf0000018bcfe56800a750656e64696e67cf0000018bcfe56803a752756e6e696e67cf0000018bcfe56804a9436f6d706c65746564cf0000018bcfe56804a9657865637574696f6e84a86c6f636174696f6ebb717569632131302e302e302e353a373730302c776f726b65722d33a46578697481a4436f646500a66370755f6d73cd05dcb17065616b5f6d656d6f72795f6279746573ce00100000aa6c6173745f6572726f72a96162616e646f6e6564a7617474656d707402a57374617465a9436f6d706c65746564";

#[test]
fn envelope_bodies() {
    check_golden(
        "Tell",
        &envelope(Body::Tell {
            message: vec![1, 2],
        }),
        TELL,
    );
    check_golden(
        "Ask",
        &Envelope {
            trace: Some(TraceContext {
                traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
                tracestate: String::new(),
            }),
            ..envelope(Body::Ask {
                id: 7,
                message: vec![3],
            })
        },
        ASK,
    );
    check_golden(
        "Reply ok",
        &envelope(Body::Reply {
            id: 7,
            result: Ok(Payload(vec![4])),
        }),
        REPLY_OK,
    );
    check_golden(
        "Reply err",
        &envelope(Body::Reply {
            id: 7,
            result: Err(RemoteError::Handler("boom".into())),
        }),
        REPLY_ERR,
    );
    check_golden(
        "Undeliverable",
        &envelope(Body::Undeliverable(Undeliverable {
            dest: agent(),
            ask_id: Some(7),
            reason: "no route".into(),
        })),
        UNDELIVERABLE,
    );
}

#[test]
fn handshake() {
    let hello = Hello {
        addr: "quic!10.0.0.5:7700".parse().unwrap(),
        name: "worker-3".into(),
        node: None,
        refused: None,
    };
    let mut bytes = Vec::new();
    FrameCodec::default()
        .encode_handshake(&hello, &mut bytes)
        .unwrap();
    assert_eq!(
        hex(&bytes),
        HANDSHAKE,
        "handshake bytes changed; paste:\n{}",
        hex(&bytes)
    );
    let (decoded, version, used) = FrameCodec::default()
        .decode_handshake(&unhex(HANDSHAKE))
        .unwrap();
    assert_eq!(
        (decoded, version, used),
        (hello, PROTOCOL_VERSION, bytes.len())
    );
    // The layout the codec documents: magic, major, minor, then a frame.
    assert_eq!(&bytes[..4], b"PMSH");
    assert_eq!(&bytes[4..8], &[0, 1, 0, 0]);
}

// Attests WIRE-6
#[test]
fn hello_with_a_node_claim_and_a_refusal() {
    use procmesh_protocol::codec::{NodeClaim, NodeProof};
    let codec = FrameCodec::default();
    // Unset, the new fields leave the bytes of an older hello unchanged.
    let plain = Hello::new("quic!10.0.0.5:7700".parse().unwrap(), "worker-3");
    let mut bytes = Vec::new();
    codec.encode_handshake(&plain, &mut bytes).unwrap();
    assert_eq!(hex(&bytes), HANDSHAKE);
    let claimed = Hello {
        node: Some(NodeClaim {
            name: "h7".into(),
            proof: Some(NodeProof::from_bytes([0xab; 32])),
        }),
        refused: Some("the peer speaks 2.0, we speak 1.0".into()),
        ..plain
    };
    let mut bytes = Vec::new();
    codec.encode_handshake(&claimed, &mut bytes).unwrap();
    assert_eq!(
        hex(&bytes),
        HELLO_CLAIMED,
        "hello bytes changed; paste:\n{}",
        hex(&bytes)
    );
    let (decoded, _, _) = codec.decode_handshake(&unhex(HELLO_CLAIMED)).unwrap();
    assert_eq!(decoded, claimed);
}

#[test]
fn host_request() {
    check_golden(
        "HostRequest::Terminate",
        &HostRequest::Terminate {
            name: "worker-3".into(),
            grace_ms: 5000,
            reason: "drain".into(),
        },
        HOST_REQUEST,
    );
}

#[test]
fn agent_request() {
    let worker = WorkerId::from_bytes([0x11; 32]);
    let mut action = ActionDef::new(worker);
    action.args = vec!["--fast".into()];
    action.env = BTreeMap::from([("LANG".into(), "C".into())]);
    action.inputs = vec![InputFile {
        path: "in/a".into(),
        hash: BlobHash::from_bytes([0x22; 32]),
        size: 3,
    }];
    action.timeout_ms = Some(60_000);
    check_golden(
        "AgentRequest::Submit",
        &AgentRequest::Submit {
            action: ActionSpec {
                lsn: Lsn(42),
                attempt: Attempt::new(2).unwrap(),
                priority: 5,
                queue: 7,
                action,
            },
            report_to: orchestrator(),
        },
        AGENT_REQUEST,
    );
}

#[test]
fn orchestrator_request_and_reply() {
    check_golden(
        "OrchestratorRequest::CreateQueue",
        &OrchestratorRequest::CreateQueue(QueueConfig {
            retry_limit: 3,
            default_priority: 5,
            name: "nightly".into(),
        }),
        ORCHESTRATOR_REQUEST,
    );
    let reply: Result<OrchestratorReply, messages::OrchestratorError> =
        Ok(OrchestratorReply::QueueCreated {
            id: 1,
            token: QueueToken::from_bytes([0xab; 12]),
        });
    check_golden(
        "OrchestratorReply::QueueCreated",
        &reply,
        ORCHESTRATOR_REPLY,
    );
}

#[test]
fn client_event() {
    check_golden(
        "ClientEvent::Lagged",
        &ClientEvent::Lagged {
            subscription: 9,
            missed: 100,
        },
        CLIENT_EVENT,
    );
}

fn completed() -> Transition {
    Transition::new(
        Lsn(42),
        Attempt::new(2).unwrap(),
        ActionState::Completed,
        Timestamp(1_700_000_000_000),
    )
    .with_detail(TransitionDetail {
        location: Some(agent().proc_id().clone()),
        exit: Some(ExitStatus::Code(0)),
        cpu_ms: Some(1500),
        peak_memory_bytes: Some(1 << 20),
        ..TransitionDetail::default()
    })
}

#[test]
fn transition() {
    check_golden("Transition", &completed(), TRANSITION);
}

#[test]
fn action_record() {
    let mut record = ActionRecord::new(Lsn(42), Timestamp(1_700_000_000_000));
    record
        .apply(&record.transition_to(ActionState::Pending, Timestamp(1_700_000_000_001)))
        .unwrap();
    record
        .apply(&record.transition_to(ActionState::Abandoned, Timestamp(1_700_000_000_002)))
        .unwrap();
    record.retry(Timestamp(1_700_000_000_003)).unwrap();
    record
        .apply(&record.transition_to(ActionState::Running, Timestamp(1_700_000_000_004)))
        .unwrap();
    record.apply(&completed()).unwrap();
    check_golden("ActionRecord", &record, ACTION_RECORD);
}

// Attests MSG-1: an older peer's messages, without the fields added with defaults, decode.
#[test]
fn older_peers_messages_decode_with_defaults() {
    #[derive(Serialize)]
    struct OldSystemInfo {
        cores: u32,
        memory_bytes: u64,
        os: String,
        hostname: String,
    }
    #[derive(Serialize)]
    struct OldHostInfo {
        addr: HostAddr,
        capacity: u32,
        system: OldSystemInfo,
    }
    #[derive(Serialize)]
    enum OldOrchestratorRequest {
        RegisterHost(OldHostInfo),
    }
    let old = OldOrchestratorRequest::RegisterHost(OldHostInfo {
        addr: "quic!10.0.0.5:7700".parse().unwrap(),
        capacity: 8,
        system: OldSystemInfo {
            cores: 8,
            memory_bytes: 1 << 34,
            os: "linux".into(),
            hostname: "a".into(),
        },
    });
    let decoded: OrchestratorRequest = decode_body(&encode_body(&old).unwrap()).unwrap();
    assert_eq!(
        decoded,
        OrchestratorRequest::RegisterHost(HostInfo {
            addr: "quic!10.0.0.5:7700".parse().unwrap(),
            capacity: 8,
            labels: BTreeMap::new(),
            system: SystemInfo {
                cores: 8,
                memory_bytes: 1 << 34,
                os: "linux".into(),
                hostname: "a".into(),
                arch: String::new(),
            },
            version: String::new(),
            node: String::new(),
            node_secret: None,
            isolation: None,
        })
    );

    // A transition without detail, a queue config without anything.
    #[derive(Serialize)]
    struct OldTransition {
        lsn: u64,
        attempt: u32,
        state: ActionState,
        at: u64,
    }
    let old = OldTransition {
        lsn: 42,
        attempt: 1,
        state: ActionState::Running,
        at: 5,
    };
    let decoded: Transition = decode_body(&encode_body(&old).unwrap()).unwrap();
    assert_eq!(
        decoded,
        Transition::new(Lsn(42), Attempt::FIRST, ActionState::Running, Timestamp(5))
    );
    #[derive(Serialize)]
    struct Empty {}
    let decoded: QueueConfig = decode_body(&encode_body(&Empty {}).unwrap()).unwrap();
    assert_eq!(decoded, QueueConfig::default());
}

// Attests MSG-1, the other way: a newer peer's extra fields are ignored.
#[test]
fn newer_peers_extra_fields_are_ignored() {
    #[derive(Serialize)]
    struct NewerTransition {
        lsn: u64,
        attempt: u32,
        state: ActionState,
        at: u64,
        gpu_seconds: Vec<u64>,
    }
    let newer = NewerTransition {
        lsn: 42,
        attempt: 3,
        state: ActionState::Failed,
        at: 5,
        gpu_seconds: vec![1, 2],
    };
    let decoded: Transition = decode_body(&encode_body(&newer).unwrap()).unwrap();
    assert_eq!(decoded.attempt, Attempt::new(3).unwrap());
    assert_eq!(decoded.state, ActionState::Failed);
}
