//! Feeds arbitrary bytes to every decoder of the wire protocol.
//!
//! Oracles: no input panics the decoders (WIRE-5), and whatever decodes re-encodes to bytes that
//! decode to the same value (WIRE-1).
#![no_main]

use std::fmt::Debug;

use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;

use procmesh_protocol::messages::agent::AgentError;
use procmesh_protocol::messages::host::{HostError, ProcReady};
use procmesh_protocol::messages::orchestrator::OrchestratorError;
use procmesh_protocol::{
    codec, ActionRecord, AgentReply, AgentRequest, ClientEvent, Envelope, FrameCodec, HostReply,
    HostRequest, OrchestratorReply, OrchestratorRequest, Transition,
};

/// Decodes `data` as a frame and as a bare body of `T`; checks what decodes (WIRE-1).
fn check<T: Serialize + DeserializeOwned + PartialEq + Debug>(data: &[u8]) {
    let codec = FrameCodec::new(1 << 20);
    if let Ok((value, used)) = codec.decode::<T>(data) {
        assert!(used <= data.len());
        round_trip(&value);
    }
    if let Ok(value) = codec::decode_body::<T>(data) {
        round_trip(&value);
    }
}

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(value: &T) {
    let codec = FrameCodec::default();
    let mut bytes = Vec::new();
    codec
        .encode(value, &mut bytes)
        .expect("a decoded value encodes");
    let (again, used) = codec.decode::<T>(&bytes).expect("an encoded value decodes");
    assert_eq!(used, bytes.len());
    assert_eq!(&again, value);
}

fuzz_target!(|data: &[u8]| {
    let codec = FrameCodec::new(1 << 20);
    if let Ok((hello, _, used)) = codec.decode_handshake(data) {
        assert!(used <= data.len());
        round_trip(&hello);
    }
    // A connection's stream: frames back to back until the bytes run out or go bad.
    let mut rest = data;
    while let Ok((envelope, used)) = codec.decode::<Envelope>(rest) {
        round_trip(&envelope);
        rest = &rest[used..];
    }
    check::<HostRequest>(data);
    check::<Result<HostReply, HostError>>(data);
    check::<ProcReady>(data);
    check::<AgentRequest>(data);
    check::<Result<AgentReply, AgentError>>(data);
    check::<OrchestratorRequest>(data);
    check::<Result<OrchestratorReply, OrchestratorError>>(data);
    check::<ClientEvent>(data);
    check::<Transition>(data);
    check::<ActionRecord>(data);
});
