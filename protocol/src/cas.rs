//! Content addressing: [`BlobHash`], the BLAKE3 hash that names every blob (worker files,
//! inputs, outputs), and [`BlobHasher`] to compute it over a stream.
//!
//! ```text
//! text form   64 lowercase hex characters   af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262
//! wire form   MessagePack bin 8 of 32 bytes c4 20 ‖ hash[32]       (human-readable formats: the text)
//! ```
//!
//! # Invariants
//! - **CAS-1** `h.to_string().parse() == Ok(h)`, and parsing accepts exactly 64 lowercase hex
//!   characters, so a hash has one text form.
//! - **CAS-2** On the wire a hash is exactly 32 bytes; any other length is refused on decode.

use std::fmt;

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserializer, Serializer};

/// Bytes of a BLAKE3 hash.
pub const HASH_LEN: usize = 32;

/// Text that is not a hash (or token) of the expected length in lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected {expected} lowercase hex characters, got {text:?}")]
pub struct HexError {
    /// How many hex characters were expected.
    pub expected: usize,
    /// The offending text (cut to 80 characters).
    pub text: String,
}

/// Appends the lowercase hex form of `bytes` to `out`.
pub(crate) fn write_hex(bytes: &[u8], f: &mut impl fmt::Write) -> fmt::Result {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        f.write_char(char::from(DIGITS[usize::from(b >> 4)]))?;
        f.write_char(char::from(DIGITS[usize::from(b & 0xf)]))?;
    }
    Ok(())
}

/// Parses exactly `2 * N` lowercase hex characters (CAS-1).
pub(crate) fn parse_hex<const N: usize>(text: &str) -> Result<[u8; N], HexError> {
    let error = || HexError {
        expected: 2 * N,
        text: text.chars().take(80).collect(),
    };
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let raw = text.as_bytes();
    if raw.len() != 2 * N {
        return Err(error());
    }
    let mut out = [0; N];
    for (byte, pair) in out.iter_mut().zip(raw.chunks_exact(2)) {
        *byte = (digit(pair[0]).ok_or_else(error)? << 4) | digit(pair[1]).ok_or_else(error)?;
    }
    Ok(out)
}

/// Serialises a 32-byte hash: text in human-readable formats, bytes otherwise (CAS-2).
pub(crate) fn serialize_hash<S: Serializer>(
    bytes: &[u8; HASH_LEN],
    text: &dyn fmt::Display,
    s: S,
) -> Result<S::Ok, S::Error> {
    if s.is_human_readable() {
        s.collect_str(text)
    } else {
        s.serialize_bytes(bytes)
    }
}

/// Deserialises a 32-byte hash from bytes, a sequence of bytes, or hex text (CAS-1, CAS-2).
pub(crate) fn deserialize_hash<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<[u8; HASH_LEN], D::Error> {
    struct HashVisitor;
    impl<'de> Visitor<'de> for HashVisitor {
        type Value = [u8; HASH_LEN];

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a 32-byte BLAKE3 hash")
        }

        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
            v.try_into()
                .map_err(|_| E::invalid_length(v.len(), &"32 bytes"))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            parse_hex(v).map_err(E::custom)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = [0; HASH_LEN];
            for (i, byte) in out.iter_mut().enumerate() {
                *byte = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(i, &"32 bytes"))?;
            }
            if seq.next_element::<u8>()?.is_some() {
                return Err(de::Error::invalid_length(HASH_LEN + 1, &"32 bytes"));
            }
            Ok(out)
        }
    }
    if d.is_human_readable() {
        d.deserialize_str(HashVisitor)
    } else {
        d.deserialize_bytes(HashVisitor)
    }
}

/// Defines a 32-byte hash newtype with hex text, bytes on the wire, and `Debug` as text.
macro_rules! hash_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; $crate::cas::HASH_LEN]);

        impl $name {
            /// The hash with these bytes.
            pub const fn from_bytes(bytes: [u8; $crate::cas::HASH_LEN]) -> Self {
                $name(bytes)
            }

            /// The raw bytes.
            pub const fn as_bytes(&self) -> &[u8; $crate::cas::HASH_LEN] {
                &self.0
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                $crate::cas::write_hex(&self.0, f)
            }
        }

        impl ::std::fmt::Debug for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                write!(f, "{}({self})", stringify!($name))
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::cas::HexError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $crate::cas::parse_hex(s).map($name)
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                $crate::cas::serialize_hash(&self.0, self, s)
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                $crate::cas::deserialize_hash(d).map($name)
            }
        }
    };
}
pub(crate) use hash_type;

hash_type! {
    /// The BLAKE3 hash of a blob's content: its name in every content-addressed store.
    BlobHash
}

impl BlobHash {
    /// The hash of `data`.
    pub fn of(data: &[u8]) -> BlobHash {
        BlobHash(*blake3::hash(data).as_bytes())
    }
}

/// Computes a [`BlobHash`] over data fed in pieces (a file streamed from disk, a chunked upload).
#[derive(Debug, Clone, Default)]
pub struct BlobHasher {
    inner: blake3::Hasher,
    len: u64,
}

impl BlobHasher {
    /// A hasher that has seen nothing.
    pub fn new() -> BlobHasher {
        BlobHasher::default()
    }

    /// Feeds more data.
    pub fn update(&mut self, data: &[u8]) -> &mut BlobHasher {
        self.inner.update(data);
        self.len += data.len() as u64;
        self
    }

    /// How many bytes were fed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was fed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The hash of everything fed so far.
    pub fn finalize(&self) -> BlobHash {
        BlobHash(*self.inner.finalize().as_bytes())
    }
}

impl std::io::Write for BlobHasher {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Attests CAS-1
    #[test]
    fn hex_round_trips_and_is_strict() {
        let h = BlobHash::of(b"abc");
        // The published BLAKE3 test value for "abc".
        assert_eq!(
            h.to_string(),
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
        assert_eq!(h.to_string().parse::<BlobHash>(), Ok(h));
        assert!(h.to_string().to_uppercase().parse::<BlobHash>().is_err());
        assert!(h.to_string()[1..].parse::<BlobHash>().is_err());
        assert!(format!("{h}0").parse::<BlobHash>().is_err());
        assert!("zz".repeat(32).parse::<BlobHash>().is_err());
        assert!(format!("{h:?}").starts_with("BlobHash(6437b3ac"));
    }

    // Attests CAS-2
    #[test]
    fn wire_form_is_32_bytes() {
        let h = BlobHash::of(b"abc");
        let bytes = rmp_serde::to_vec(&h).unwrap();
        assert_eq!(&bytes[..2], &[0xc4, 0x20]);
        assert_eq!(&bytes[2..], h.as_bytes());
        assert_eq!(rmp_serde::from_slice::<BlobHash>(&bytes).unwrap(), h);
        let short = rmp_serde::to_vec(&serde_bytes::Bytes::new(&[1; 31])).unwrap();
        assert!(rmp_serde::from_slice::<BlobHash>(&short).is_err());
        let long = rmp_serde::to_vec(&serde_bytes::Bytes::new(&[1; 33])).unwrap();
        assert!(rmp_serde::from_slice::<BlobHash>(&long).is_err());
    }

    #[test]
    fn streaming_matches_one_shot() {
        let mut hasher = BlobHasher::new();
        assert!(hasher.is_empty());
        hasher.update(b"hello ").update(b"world");
        std::io::Write::write_all(&mut hasher, b"!").unwrap();
        assert_eq!(hasher.len(), 12);
        assert_eq!(hasher.finalize(), BlobHash::of(b"hello world!"));
    }
}

hash_type! {
    /// The MAC of a [`DownloadTicket`]: BLAKE3 keyed hash, 32 bytes.
    TicketMac
}

/// A signed, expiring permission to fetch one blob from one store (an action's output from the
/// host that ran it). The orchestrator issues it with the result; the store verifies it with
/// the key it shares with the orchestrator (a per-host key, handed over at registration), so it
/// needs no queue state of its own.
///
/// ```text
/// mac = BLAKE3-keyed(key, "procmesh download ticket v1" ‖ hash[32] ‖ expires_ms:u64 LE)
/// ```
///
/// # Invariants
/// - **CAS-3** A ticket verifies only under the key it was issued with, for the hash it names,
///   before it expires; changing any byte of hash, expiry or MAC fails it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DownloadTicket {
    /// The blob it opens.
    pub hash: BlobHash,
    /// Until when (milliseconds since the Unix epoch).
    pub expires_ms: u64,
    /// The MAC over hash and expiry.
    pub mac: TicketMac,
}

/// Why a [`DownloadTicket`] does not open a blob.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    /// It names another blob.
    #[error("the ticket is for blob {ticket}, not {wanted}")]
    WrongBlob {
        /// What it names.
        ticket: BlobHash,
        /// What was asked for.
        wanted: BlobHash,
    },
    /// It has expired.
    #[error("the ticket expired at {expires_ms} ms (now {now_ms} ms)")]
    Expired {
        /// When it expired.
        expires_ms: u64,
        /// Now.
        now_ms: u64,
    },
    /// Its MAC is wrong (another key, or tampered).
    #[error("the ticket's signature does not verify")]
    BadMac,
}

impl DownloadTicket {
    fn mac_of(key: &[u8; HASH_LEN], hash: &BlobHash, expires_ms: u64) -> TicketMac {
        let mut h = blake3::Hasher::new_keyed(key);
        h.update(b"procmesh download ticket v1");
        h.update(hash.as_bytes());
        h.update(&expires_ms.to_le_bytes());
        TicketMac(*h.finalize().as_bytes())
    }

    /// A ticket for `hash` under `key`, valid until `expires_ms`.
    pub fn issue(key: &[u8; HASH_LEN], hash: BlobHash, expires_ms: u64) -> DownloadTicket {
        DownloadTicket {
            hash,
            expires_ms,
            mac: Self::mac_of(key, &hash, expires_ms),
        }
    }

    /// Whether this ticket opens `wanted` under `key` at `now_ms` (CAS-3).
    pub fn verify(
        &self,
        key: &[u8; HASH_LEN],
        wanted: &BlobHash,
        now_ms: u64,
    ) -> Result<(), TicketError> {
        if self.hash != *wanted {
            return Err(TicketError::WrongBlob {
                ticket: self.hash,
                wanted: *wanted,
            });
        }
        let expected = Self::mac_of(key, &self.hash, self.expires_ms);
        // Constant-time comparison of the MACs.
        if blake3::Hash::from(*expected.as_bytes()) != blake3::Hash::from(*self.mac.as_bytes()) {
            return Err(TicketError::BadMac);
        }
        if now_ms >= self.expires_ms {
            return Err(TicketError::Expired {
                expires_ms: self.expires_ms,
                now_ms,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod ticket_tests {
    use super::*;

    // Attests CAS-3
    #[test]
    fn a_ticket_opens_only_its_blob_under_its_key_until_it_expires() {
        let key = [7u8; HASH_LEN];
        let hash = BlobHash::of(b"output");
        let t = DownloadTicket::issue(&key, hash, 1_000);
        assert_eq!(t.verify(&key, &hash, 999), Ok(()));
        assert!(matches!(
            t.verify(&key, &hash, 1_000),
            Err(TicketError::Expired { .. })
        ));
        assert_eq!(
            t.verify(&[8u8; HASH_LEN], &hash, 1),
            Err(TicketError::BadMac)
        );
        let other = BlobHash::of(b"other");
        assert!(matches!(
            t.verify(&key, &other, 1),
            Err(TicketError::WrongBlob { .. })
        ));
        let stretched = DownloadTicket {
            expires_ms: 2_000,
            ..t
        };
        assert_eq!(
            stretched.verify(&key, &hash, 1_500),
            Err(TicketError::BadMac)
        );
        let forged = DownloadTicket { hash: other, ..t };
        assert_eq!(forged.verify(&key, &other, 1), Err(TicketError::BadMac));
    }
}
