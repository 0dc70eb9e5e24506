//! The frame codec against every wire type: round trips, truncated, oversized, corrupt and
//! arbitrary input, and the handshake.

mod utils;

use proptest::collection::vec;
use proptest::prelude::*;
use serde::de::DeserializeOwned;

use procmesh_protocol::codec::{encode_body, HANDSHAKE_PREFIX, LEN_PREFIX, MAGIC};
use procmesh_protocol::messages::agent::AgentError;
use procmesh_protocol::messages::host::{HostError, ProcReady};
use procmesh_protocol::messages::orchestrator::OrchestratorError;
use procmesh_protocol::*;
use utils::*;

fn hello() -> Hello {
    Hello {
        addr: "quic!10.0.0.5:7700".parse().unwrap(),
        name: "worker-3".into(),
        node: None,
        refused: None,
    }
}

fn sample_envelope() -> Envelope {
    Envelope {
        dest: "quic!10.0.0.5:7700,worker-3.agent".parse().unwrap(),
        sender: "quic!10.0.0.1:7700,service.orchestrator".parse().unwrap(),
        body: Body::Ask {
            id: 7,
            message: vec![1, 2, 3],
        },
        trace: None,
    }
}

fn frame_of<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    FrameCodec::default().encode(value, &mut out).unwrap();
    out
}

/// A frame around arbitrary body bytes.
fn raw_frame(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

fn handshake_with(major: u16, minor: u16) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&major.to_be_bytes());
    out.extend_from_slice(&minor.to_be_bytes());
    out.extend_from_slice(&frame_of(&hello()));
    out
}

proptest! {
    // Attests WIRE-1
    #[test]
    fn envelopes_round_trip(e in envelope()) {
        assert_round_trip(&e)?;
    }

    // Attests WIRE-1
    #[test]
    fn host_messages_round_trip(
        request in host_request(),
        reply in host_result(),
        ready in proc_ready(),
    ) {
        assert_round_trip(&request)?;
        assert_round_trip(&reply)?;
        assert_round_trip(&ready)?;
    }

    // Attests WIRE-1
    #[test]
    fn agent_messages_round_trip(request in agent_request(), reply in agent_result()) {
        assert_round_trip(&request)?;
        assert_round_trip(&reply)?;
    }

    // Attests WIRE-1
    #[test]
    fn orchestrator_messages_round_trip(
        request in orchestrator_request(),
        reply in orchestrator_result(),
    ) {
        assert_round_trip(&request)?;
        assert_round_trip(&reply)?;
    }

    // Attests WIRE-1
    #[test]
    fn client_events_and_transitions_round_trip(event in client_event(), t in transition()) {
        assert_round_trip(&event)?;
        assert_round_trip(&t)?;
    }

    // Attests WIRE-1: a message travels as the payload of an envelope and comes out the same.
    #[test]
    fn messages_round_trip_inside_envelopes(request in orchestrator_request(), e in envelope()) {
        let message = encode_body(&request).unwrap();
        let e = Envelope { body: Body::Tell { message }, ..e };
        let bytes = frame_of(&e);
        let (decoded, _) = FrameCodec::default().decode::<Envelope>(&bytes).unwrap();
        let Body::Tell { message } = decoded.body else { panic!("not a tell") };
        prop_assert_eq!(codec::decode_body::<OrchestratorRequest>(&message).unwrap(), request);
    }

    // Attests WIRE-5
    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..512)) {
        decode_everything(&bytes);
        decode_everything(&raw_frame(&bytes));
        let mut handshake = handshake_with(PROTOCOL_VERSION.major, 0)[..HANDSHAKE_PREFIX].to_vec();
        handshake.extend_from_slice(&raw_frame(&bytes));
        let _ = FrameCodec::default().decode_handshake(&handshake);
    }

    // Attests WIRE-5: valid frames with a few bytes flipped reach deep into the decoders.
    #[test]
    fn mutated_frames_never_panic(
        e in envelope(),
        request in orchestrator_request(),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        for mut bytes in [frame_of(&e), frame_of(&request)] {
            for (at, value) in &flips {
                let i = at.index(bytes.len());
                bytes[i] ^= value | 1;
            }
            decode_everything(&bytes);
        }
    }
}

/// Decodes `bytes` as every wire type; only a panic fails.
fn decode_everything(bytes: &[u8]) {
    fn try_decode<T: DeserializeOwned>(bytes: &[u8]) {
        let _ = FrameCodec::default().decode::<T>(bytes);
        let _ = FrameCodec::new(64).decode::<T>(bytes);
    }
    try_decode::<Envelope>(bytes);
    try_decode::<HostRequest>(bytes);
    try_decode::<Result<HostReply, HostError>>(bytes);
    try_decode::<ProcReady>(bytes);
    try_decode::<AgentRequest>(bytes);
    try_decode::<Result<AgentReply, AgentError>>(bytes);
    try_decode::<OrchestratorRequest>(bytes);
    try_decode::<Result<OrchestratorReply, OrchestratorError>>(bytes);
    try_decode::<ClientEvent>(bytes);
    try_decode::<Transition>(bytes);
    let _ = FrameCodec::default().decode_handshake(bytes);
}

// Attests WIRE-3
#[test]
fn every_prefix_of_a_frame_is_incomplete() {
    let codec = FrameCodec::default();
    let frame = frame_of(&sample_envelope());
    for k in 0..frame.len() {
        let needed = if k < LEN_PREFIX {
            LEN_PREFIX - k
        } else {
            frame.len() - k
        };
        assert_eq!(
            codec.decode::<Envelope>(&frame[..k]),
            Err(CodecError::Incomplete { needed }),
            "prefix of {k} bytes"
        );
    }
    let (decoded, used) = codec.decode::<Envelope>(&frame).unwrap();
    assert_eq!((decoded, used), (sample_envelope(), frame.len()));
}

// Attests WIRE-3
#[test]
fn every_prefix_of_a_handshake_is_incomplete() {
    let codec = FrameCodec::default();
    let mut handshake = Vec::new();
    codec.encode_handshake(&hello(), &mut handshake).unwrap();
    for k in 0..handshake.len() {
        let needed = if k < HANDSHAKE_PREFIX {
            HANDSHAKE_PREFIX - k
        } else if k < HANDSHAKE_PREFIX + LEN_PREFIX {
            HANDSHAKE_PREFIX + LEN_PREFIX - k
        } else {
            handshake.len() - k
        };
        assert_eq!(
            codec.decode_handshake(&handshake[..k]),
            Err(CodecError::Incomplete { needed }),
            "prefix of {k} bytes"
        );
    }
    assert_eq!(
        codec.decode_handshake(&handshake),
        Ok((hello(), PROTOCOL_VERSION, handshake.len()))
    );
}

// Attests WIRE-1, WIRE-3: frames back to back decode one at a time.
#[test]
fn frames_decode_back_to_back() {
    let codec = FrameCodec::default();
    let mut stream = Vec::new();
    codec.encode(&sample_envelope(), &mut stream).unwrap();
    codec
        .encode(
            &ClientEvent::Lagged {
                subscription: 1,
                missed: 2,
            },
            &mut stream,
        )
        .unwrap();
    let (first, used) = codec.decode::<Envelope>(&stream).unwrap();
    assert_eq!(first, sample_envelope());
    let (second, rest) = codec.decode::<ClientEvent>(&stream[used..]).unwrap();
    assert_eq!(second.subscription(), 1);
    assert_eq!(used + rest, stream.len());
}

// Attests WIRE-2
#[test]
fn oversized_frames_are_refused_from_the_header() {
    let codec = FrameCodec::new(16);
    // Only the header: the body was never sent, so nothing can have been read or allocated.
    let header = 17u32.to_be_bytes();
    assert_eq!(
        codec.decode::<Envelope>(&header),
        Err(CodecError::TooLarge { len: 17, max: 16 })
    );
    assert_eq!(
        FrameCodec::default().peek_len(&u32::MAX.to_be_bytes()),
        Err(CodecError::TooLarge {
            len: u32::MAX as usize,
            max: codec::DEFAULT_MAX_FRAME
        })
    );
    // A frame of exactly the maximum is fine.
    assert_eq!(codec.peek_len(&16u32.to_be_bytes()), Ok(16));
    // The handshake's frame obeys the same limit.
    let mut handshake = handshake_with(PROTOCOL_VERSION.major, 0)[..HANDSHAKE_PREFIX].to_vec();
    handshake.extend_from_slice(&1000u32.to_be_bytes());
    assert_eq!(
        FrameCodec::new(999).decode_handshake(&handshake),
        Err(CodecError::TooLarge {
            len: 1000,
            max: 999
        })
    );
}

// Attests WIRE-2: the encoder refuses too, and leaves the buffer as it was.
#[test]
fn oversized_messages_are_not_encoded() {
    let codec = FrameCodec::new(16);
    let mut out = vec![9, 9];
    let err = codec.encode(&sample_envelope(), &mut out).unwrap_err();
    assert!(
        matches!(err, CodecError::TooLarge { max: 16, .. }),
        "{err:?}"
    );
    assert_eq!(out, vec![9, 9]);
}

// Attests WIRE-5: malformed bodies are errors of their own kind, never a panic or a value.
#[test]
fn garbage_bodies_are_corrupt() {
    let codec = FrameCodec::default();
    // 0xc1 is the one byte MessagePack never uses.
    for body in [
        &[0xc1][..],
        &[0x01],
        &[0x81, 0xa1, b'x'],
        &[0xa3, b'a', b'b', b'c'],
    ] {
        assert!(
            matches!(
                codec.decode::<Envelope>(&raw_frame(body)),
                Err(CodecError::Corrupt(_))
            ),
            "{body:02x?}"
        );
    }
    // A valid frame of another type is corrupt, not silently accepted.
    let other = frame_of(&ClientEvent::Lagged {
        subscription: 1,
        missed: 2,
    });
    assert!(matches!(
        codec.decode::<Envelope>(&other),
        Err(CodecError::Corrupt(_))
    ));
    // A body cut short inside its frame is corrupt (the frame is complete, the value is not).
    let mut body = encode_body(&sample_envelope()).unwrap();
    body.pop();
    assert!(matches!(
        codec.decode::<Envelope>(&raw_frame(&body)),
        Err(CodecError::Corrupt(_))
    ));
}

// Attests WIRE-1, WIRE-5: a frame holds exactly one message.
#[test]
fn trailing_bytes_are_corrupt() {
    let mut body = encode_body(&sample_envelope()).unwrap();
    body.push(0xc0);
    match FrameCodec::default().decode::<Envelope>(&raw_frame(&body)) {
        Err(CodecError::Corrupt(why)) => assert!(why.contains("trailing"), "{why}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

// Attests WIRE-5: nesting deep enough to overflow a recursive decoder is refused.
#[test]
fn deep_nesting_is_refused_without_overflow() {
    // An envelope-shaped map whose unknown field holds 100 000 nested one-element arrays.
    let mut body = vec![0x81, 0xa5];
    body.extend_from_slice(b"extra");
    body.extend(std::iter::repeat_n(0x91, 100_000));
    body.push(0xc0);
    let frame = raw_frame(&body);
    // Run on a thread with the small stack of a tokio worker to make an overflow visible.
    let result = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || {
            let envelope = FrameCodec::default().decode::<Envelope>(&frame);
            let request = FrameCodec::default().decode::<OrchestratorRequest>(&frame);
            (envelope.is_err(), request.is_err())
        })
        .unwrap()
        .join()
        .expect("decoder overflowed its stack");
    assert_eq!(result, (true, true));
}

// Attests WIRE-4
#[test]
fn bad_magic_is_refused_early() {
    let codec = FrameCodec::default();
    assert_eq!(
        codec.decode_handshake(b"GET / HTTP/1.1\r\n"),
        Err(CodecError::BadMagic(*b"GET "))
    );
    // Two wrong bytes are enough to know.
    assert!(matches!(
        codec.decode_handshake(b"PX"),
        Err(CodecError::BadMagic(_))
    ));
    assert_eq!(
        codec.decode_handshake(b"PM"),
        Err(CodecError::Incomplete { needed: 6 })
    );
}

// Attests WIRE-4
#[test]
fn another_major_version_is_refused_naming_both() {
    let theirs = PROTOCOL_VERSION.major + 1;
    let err = FrameCodec::default()
        .decode_handshake(&handshake_with(theirs, 3))
        .unwrap_err();
    assert_eq!(
        err,
        CodecError::IncompatibleVersion {
            ours: PROTOCOL_VERSION,
            theirs: Version {
                major: theirs,
                minor: 3
            },
        }
    );
    let text = err.to_string();
    assert!(text.contains(&PROTOCOL_VERSION.to_string()), "{text}");
    assert!(text.contains(&format!("{theirs}.3")), "{text}");
    // The version is checked before the hello: no hello needed to refuse.
    let prefix = &handshake_with(theirs, 0)[..HANDSHAKE_PREFIX];
    assert!(matches!(
        FrameCodec::default().decode_handshake(prefix),
        Err(CodecError::IncompatibleVersion { .. })
    ));
}

// Attests WIRE-4
#[test]
fn another_minor_version_is_accepted() {
    let minor = PROTOCOL_VERSION.minor + 5;
    let bytes = handshake_with(PROTOCOL_VERSION.major, minor);
    let (peer, version, used) = FrameCodec::default().decode_handshake(&bytes).unwrap();
    assert_eq!(peer, hello());
    assert_eq!(
        version,
        Version {
            major: PROTOCOL_VERSION.major,
            minor
        }
    );
    assert_eq!(used, bytes.len());
}
