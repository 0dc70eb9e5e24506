//! Bytes ↔ frames, and the connection handshake.
//!
//! ```text
//! frame      := len:u32 (big endian, body length) ‖ body:[u8; len]   body = MessagePack, named
//! handshake  := magic "PMSH" ‖ major:u16 BE ‖ minor:u16 BE ‖ frame(Hello)
//! refusal    := magic "PMSH" ‖ major:u16 BE ‖ minor:u16 BE ‖ frame(Hello { refused: Some(reason), .. })
//! ```
//!
//! A connection (a QUIC control stream, a Unix socket) starts with one handshake in each
//! direction, then carries frames. The dialling side writes its handshake first; the accepting
//! side reads it and only then answers, with its own handshake or with a **refusal**: a
//! handshake (its own version in the prefix) whose [`Hello::refused`] says why — for a peer of
//! another major version, a reason naming both versions (`"the peer speaks 2.0, we speak
//! 1.0"`) — after which it closes. The Hello's `addr`, `name` and `refused` fields (named
//! MessagePack) are frozen across major versions, so a peer of any version can read why it was
//! refused; a dialler of another major refuses the answer itself from its prefix alone, naming
//! both versions too (WIRE-4). Decoding never allocates before the length has been checked
//! against the configured maximum, and "need more bytes" is its own error
//! ([`CodecError::Incomplete`]), never confused with a corrupt frame.
//!
//! # Invariants
//! - **WIRE-1** `decode(encode(m)) == m`, and re-encoding a decoded frame gives the same bytes.
//! - **WIRE-2** A length above the maximum is refused from the 4-byte header alone, before any
//!   allocation for the body.
//! - **WIRE-3** A prefix of a valid frame or handshake is `Incomplete { needed }`, where `needed`
//!   is the number of bytes still missing for the next step; never `Corrupt`.
//! - **WIRE-4** A handshake whose major version differs from ours is refused with an error naming
//!   both versions; a different minor version is accepted (fields added with `#[serde(default)]`).
//! - **WIRE-5** No input makes the decoder panic.
//! - **WIRE-6** A Hello without the newer optional fields (`node`, `refused`) decodes, and one
//!   with them unset encodes to the same bytes as before they existed (they are skipped).

use std::fmt;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::ids::HostAddr;

crate::cas::hash_type! {
    /// A node's proof that it holds its node secret (32 bytes): BLAKE3 keyed with the secret,
    /// over a context string and, on QUIC, the TLS exporter of the connection it travels on (so
    /// a proof cannot be replayed on another connection). Computed and checked by
    /// `procmesh-transport` (`node_proof`, `proc_proof`).
    NodeProof
}

/// Which node a peer speaks for, beyond what its certificate names: the node name of a host
/// holding a fleet-wide shared host certificate, or the proc a proc agent is (to its host), and
/// the proof that it holds that node's secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeClaim {
    /// The node (or proc) name claimed.
    pub name: String,
    /// The proof of the node secret, if the node has one.
    #[serde(default)]
    pub proof: Option<NodeProof>,
}

/// The first bytes of every procmesh connection.
pub const MAGIC: [u8; 4] = *b"PMSH";
/// Bytes of a frame's length prefix.
pub const LEN_PREFIX: usize = 4;
/// Bytes of the handshake's fixed part: magic and version.
pub const HANDSHAKE_PREFIX: usize = 8;
/// The default maximum frame body: 16 MiB (blobs travel on their own streams, not in frames).
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;

/// A protocol version. Peers must agree on `major`; `minor` only adds optional fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// Incompatible changes bump this.
    pub major: u16,
    /// Compatible additions bump this.
    pub minor: u16,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// The version this build speaks.
pub const PROTOCOL_VERSION: Version = Version { major: 1, minor: 0 };

/// What a peer says about itself in the handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The address the peer answers at (its frontend, or its own address for a client).
    pub addr: HostAddr,
    /// A label: the proc name, `client`, `orchestrator`, …
    pub name: String,
    /// Which node the peer speaks for and its proof (absent from older peers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeClaim>,
    /// Set only in a refusal: why the handshake was refused (see the module docs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

impl Hello {
    /// A hello at `addr` labelled `name`, claiming no node.
    pub fn new(addr: HostAddr, name: impl Into<String>) -> Hello {
        Hello {
            addr,
            name: name.into(),
            node: None,
            refused: None,
        }
    }
}

/// Why bytes are not (yet) a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// More bytes are needed (WIRE-3); not an error of the peer.
    #[error("incomplete frame: {needed} more bytes needed")]
    Incomplete {
        /// How many more bytes the next step needs.
        needed: usize,
    },
    /// The length prefix exceeds the maximum (WIRE-2).
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The announced length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The body is not a valid MessagePack value of the expected type.
    #[error("corrupt frame: {0}")]
    Corrupt(String),
    /// The connection does not start with [`MAGIC`].
    #[error("not a procmesh peer: bad magic {0:02x?}")]
    BadMagic([u8; 4]),
    /// The peer speaks another major version (WIRE-4).
    #[error("incompatible protocol version: we speak {ours}, the peer speaks {theirs}")]
    IncompatibleVersion {
        /// This build's version.
        ours: Version,
        /// The peer's version.
        theirs: Version,
    },
    /// A value could not be encoded.
    #[error("cannot encode: {0}")]
    Encode(String),
}

/// Encodes and decodes frames with a maximum body size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameCodec {
    max_frame: usize,
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec::new(DEFAULT_MAX_FRAME)
    }
}

impl FrameCodec {
    /// A codec refusing bodies above `max_frame` bytes (capped at `u32::MAX`).
    pub fn new(max_frame: usize) -> Self {
        FrameCodec {
            max_frame: max_frame.min(u32::MAX as usize),
        }
    }

    /// The maximum body size.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Appends one frame holding `msg` to `out`. On error `out` is left as it was.
    pub fn encode<T: Serialize + ?Sized>(
        &self,
        msg: &T,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        let start = out.len();
        out.extend_from_slice(&[0; LEN_PREFIX]);
        if let Err(e) = rmp_serde::encode::write_named(out, msg) {
            out.truncate(start);
            return Err(CodecError::Encode(e.to_string()));
        }
        let len = out.len() - start - LEN_PREFIX;
        if len > self.max_frame {
            out.truncate(start);
            return Err(CodecError::TooLarge {
                len,
                max: self.max_frame,
            });
        }
        out[start..start + LEN_PREFIX].copy_from_slice(&(len as u32).to_be_bytes());
        Ok(())
    }

    /// The body length announced by the frame at the start of `buf` (WIRE-2, WIRE-3).
    pub fn peek_len(&self, buf: &[u8]) -> Result<usize, CodecError> {
        let Some(prefix) = buf.get(..LEN_PREFIX) else {
            return Err(CodecError::Incomplete {
                needed: LEN_PREFIX - buf.len(),
            });
        };
        let len = u32::from_be_bytes(prefix.try_into().expect("4 bytes")) as usize;
        if len > self.max_frame {
            return Err(CodecError::TooLarge {
                len,
                max: self.max_frame,
            });
        }
        Ok(len)
    }

    /// The body of the frame at the start of `buf`, and the bytes the whole frame takes.
    pub fn split_frame<'a>(&self, buf: &'a [u8]) -> Result<(&'a [u8], usize), CodecError> {
        let len = self.peek_len(buf)?;
        let total = LEN_PREFIX + len;
        match buf.get(LEN_PREFIX..total) {
            Some(body) => Ok((body, total)),
            None => Err(CodecError::Incomplete {
                needed: total - buf.len(),
            }),
        }
    }

    /// Decodes the frame at the start of `buf`: the message and the bytes it took.
    pub fn decode<T: DeserializeOwned>(&self, buf: &[u8]) -> Result<(T, usize), CodecError> {
        let (body, used) = self.split_frame(buf)?;
        Ok((decode_body(body)?, used))
    }

    /// Appends our handshake to `out`.
    pub fn encode_handshake(&self, hello: &Hello, out: &mut Vec<u8>) -> Result<(), CodecError> {
        let start = out.len();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&PROTOCOL_VERSION.major.to_be_bytes());
        out.extend_from_slice(&PROTOCOL_VERSION.minor.to_be_bytes());
        self.encode(hello, out).inspect_err(|_| out.truncate(start))
    }

    /// Decodes a peer's handshake at the start of `buf`: its hello, its version, and the bytes
    /// the handshake took. Magic and version are checked before the hello is parsed (WIRE-4).
    pub fn decode_handshake(&self, buf: &[u8]) -> Result<(Hello, Version, usize), CodecError> {
        let Some(prefix) = buf.get(..HANDSHAKE_PREFIX) else {
            // Refuse a wrong magic as soon as its first bytes are seen.
            let seen = buf.len().min(MAGIC.len());
            if buf[..seen] != MAGIC[..seen] {
                let mut magic = [0; 4];
                magic[..seen].copy_from_slice(&buf[..seen]);
                return Err(CodecError::BadMagic(magic));
            }
            return Err(CodecError::Incomplete {
                needed: HANDSHAKE_PREFIX - buf.len(),
            });
        };
        let magic: [u8; 4] = prefix[..4].try_into().expect("4 bytes");
        if magic != MAGIC {
            return Err(CodecError::BadMagic(magic));
        }
        let theirs = Version {
            major: u16::from_be_bytes([prefix[4], prefix[5]]),
            minor: u16::from_be_bytes([prefix[6], prefix[7]]),
        };
        if theirs.major != PROTOCOL_VERSION.major {
            return Err(CodecError::IncompatibleVersion {
                ours: PROTOCOL_VERSION,
                theirs,
            });
        }
        let (hello, used) = self.decode(&buf[HANDSHAKE_PREFIX..])?;
        Ok((hello, theirs, HANDSHAKE_PREFIX + used))
    }
}

/// Encodes a message body (no length prefix): named MessagePack.
pub fn encode_body<T: Serialize + ?Sized>(msg: &T) -> Result<Vec<u8>, CodecError> {
    rmp_serde::to_vec_named(msg).map_err(|e| CodecError::Encode(e.to_string()))
}

/// Decodes a message body (no length prefix). Trailing bytes are corrupt.
///
/// Strings and bytes are read in place from `body` (no copy through a reader's buffer); the
/// body's end is found by [`value_len`], which walks the MessagePack markers without decoding.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, CodecError> {
    let mut de = rmp_serde::Deserializer::from_read_ref(body);
    let value = T::deserialize(&mut de).map_err(|e| CodecError::Corrupt(e.to_string()))?;
    let used = value_len(body)
        .ok_or_else(|| CodecError::Corrupt("the message is cut short".to_owned()))?;
    let rest = body.len() - used;
    if rest != 0 {
        return Err(CodecError::Corrupt(format!(
            "{rest} trailing bytes after the message"
        )));
    }
    Ok(value)
}

/// The length in bytes of the one MessagePack value at the start of `buf`, or `None` if it is
/// cut short or holds the never-used marker `0xc1`. Every value takes at least one byte, so
/// the walk ends within `buf.len()` steps whatever counts a hostile frame announces.
pub fn value_len(buf: &[u8]) -> Option<usize> {
    // A big-endian length of `n` bytes at `at`.
    fn len_at(buf: &[u8], at: usize, n: usize) -> Option<usize> {
        let bytes = buf.get(at..at.checked_add(n)?)?;
        let len = bytes.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        usize::try_from(len).ok()
    }
    let mut at = 0usize;
    let mut values: u64 = 1;
    while values > 0 {
        values -= 1;
        let marker = *buf.get(at)?;
        at += 1;
        // (bytes after the marker, values nested after those bytes)
        let (skip, nested): (usize, u64) = match marker {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
            0x80..=0x8f => (0, 2 * u64::from(marker & 0x0f)),
            0x90..=0x9f => (0, u64::from(marker & 0x0f)),
            0xa0..=0xbf => (usize::from(marker & 0x1f), 0),
            0xc1 => return None,
            0xc4 | 0xd9 => (1 + len_at(buf, at, 1)?, 0),
            0xc5 | 0xda => (2 + len_at(buf, at, 2)?, 0),
            0xc6 | 0xdb => (4usize.checked_add(len_at(buf, at, 4)?)?, 0),
            0xc7 => (2 + len_at(buf, at, 1)?, 0),
            0xc8 => (3 + len_at(buf, at, 2)?, 0),
            0xc9 => (5usize.checked_add(len_at(buf, at, 4)?)?, 0),
            0xca => (4, 0),
            0xcb => (8, 0),
            0xcc | 0xd0 => (1, 0),
            0xcd | 0xd1 => (2, 0),
            0xce | 0xd2 => (4, 0),
            0xcf | 0xd3 => (8, 0),
            0xd4 => (2, 0),
            0xd5 => (3, 0),
            0xd6 => (5, 0),
            0xd7 => (9, 0),
            0xd8 => (17, 0),
            0xdc => (2, len_at(buf, at, 2)? as u64),
            0xdd => (4, len_at(buf, at, 4)? as u64),
            0xde => (2, 2 * len_at(buf, at, 2)? as u64),
            0xdf => (4, 2 * len_at(buf, at, 4)? as u64),
        };
        at = at.checked_add(skip)?;
        if at > buf.len() {
            return None;
        }
        values = values.checked_add(nested)?;
    }
    Some(at)
}

#[cfg(test)]
mod value_len_tests {
    use std::collections::BTreeMap;

    use super::*;

    #[derive(Serialize)]
    struct Every {
        small: u8,
        big: u64,
        negative: i64,
        float: f64,
        single: f32,
        text: String,
        long_text: String,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
        list: Vec<Option<i32>>,
        map: BTreeMap<String, Vec<bool>>,
        unit: (),
    }

    #[test]
    fn measures_every_kind_of_value_exactly() {
        let every = Every {
            small: 7,
            big: u64::MAX,
            negative: -40_000,
            float: 1.5,
            single: 2.5,
            text: "hi".into(),
            long_text: "x".repeat(70_000),
            bytes: vec![1; 300],
            list: (0..20).map(|i| (i % 3 != 0).then_some(i * 1000)).collect(),
            map: (0..40).map(|i| (format!("k{i}"), vec![true; i])).collect(),
            unit: (),
        };
        for named in [true, false] {
            let bytes = if named {
                rmp_serde::to_vec_named(&every).unwrap()
            } else {
                rmp_serde::to_vec(&every).unwrap()
            };
            assert_eq!(value_len(&bytes), Some(bytes.len()));
            let mut longer = bytes.clone();
            longer.push(0xc0);
            assert_eq!(value_len(&longer), Some(bytes.len()));
            for cut in [1, 2, bytes.len() / 2, bytes.len() - 1] {
                assert_eq!(value_len(&bytes[..cut]), None, "cut at {cut}");
            }
        }
        assert_eq!(value_len(&[]), None);
        assert_eq!(value_len(&[0xc1]), None);
        // A map announcing 2^32 - 1 entries in a few bytes ends at once.
        assert_eq!(value_len(&[0xdf, 0xff, 0xff, 0xff, 0xff, 0x01]), None);
    }
}
