//! The action store of a [`Book`](super::Book): entries in a chunked slab, found by LSN through a
//! small hash map (ORC-13).
//!
//! ```text
//!  slots  HashMap<Lsn, u32>   16 bytes + 1 control byte per bucket, 1..2 buckets per entry
//!  chunks [chunk 0: 4096 × Option<T>] [chunk 1] …   T in place, never moved, never doubled
//!  free   [slot, slot, …]     slots of retired entries, reused first
//! ```
//!
//! A hash map of whole entries would double its 120-byte buckets at each growth (270 bytes per
//! entry just past a million); here only the 17-byte buckets double, and the slab grows one
//! chunk at a time. Retirement in any order leaves no holes: freed slots are reused.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use procmesh_protocol::action::Lsn;

/// Entries per chunk.
const CHUNK: usize = 4096;

/// A hasher for orchestrator-assigned LSNs: one multiplication. LSNs are dense and never chosen
/// by a peer, so there is nothing to flood; the low bits stay distinct for consecutive LSNs.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct LsnHasher(u64);

const MIX: u64 = 0x9e37_79b9_7f4a_7c15;

impl Hasher for LsnHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(MIX);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(MIX);
    }
}

/// A hash map keyed by LSN.
pub(crate) type LsnMap<V> = HashMap<Lsn, V, BuildHasherDefault<LsnHasher>>;

/// Entries by LSN.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Store<T> {
    slots: LsnMap<u32>,
    chunks: Vec<Vec<Option<T>>>,
    free: Vec<u32>,
}

impl<T> Default for Store<T> {
    fn default() -> Self {
        Store {
            slots: LsnMap::default(),
            chunks: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T> Store<T> {
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub(crate) fn contains(&self, lsn: &Lsn) -> bool {
        self.slots.contains_key(lsn)
    }

    fn at(&self, slot: u32) -> Option<&T> {
        let slot = slot as usize;
        self.chunks.get(slot / CHUNK)?.get(slot % CHUNK)?.as_ref()
    }

    fn at_mut(&mut self, slot: u32) -> &mut Option<T> {
        let slot = slot as usize;
        &mut self.chunks[slot / CHUNK][slot % CHUNK]
    }

    pub(crate) fn get(&self, lsn: &Lsn) -> Option<&T> {
        self.at(*self.slots.get(lsn)?)
    }

    pub(crate) fn get_mut(&mut self, lsn: &Lsn) -> Option<&mut T> {
        let slot = *self.slots.get(lsn)?;
        self.at_mut(slot).as_mut()
    }

    /// Stores `value` under `lsn`, replacing (and returning) what was there.
    pub(crate) fn insert(&mut self, lsn: Lsn, value: T) -> Option<T> {
        if let Some(&slot) = self.slots.get(&lsn) {
            return self.at_mut(slot).replace(value);
        }
        let slot = match self.free.pop() {
            Some(slot) => {
                *self.at_mut(slot) = Some(value);
                slot
            }
            None => {
                if self.chunks.last().is_none_or(|c| c.len() == CHUNK) {
                    self.chunks.push(Vec::with_capacity(CHUNK));
                }
                let used = (self.chunks.len() - 1) * CHUNK;
                let Some(chunk) = self.chunks.last_mut() else {
                    unreachable!("a chunk was just pushed");
                };
                let slot = used + chunk.len();
                chunk.push(Some(value));
                u32::try_from(slot).unwrap_or_else(|_| panic!("more than 2^32 actions in a book"))
            }
        };
        self.slots.insert(lsn, slot);
        None
    }

    pub(crate) fn remove(&mut self, lsn: &Lsn) -> Option<T> {
        let slot = self.slots.remove(lsn)?;
        self.free.push(slot);
        self.at_mut(slot).take()
    }

    /// Every entry, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (Lsn, &T)> + '_ {
        self.slots
            .iter()
            .filter_map(|(&lsn, &slot)| Some((lsn, self.at(slot)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_reused_in_any_order() {
        let mut store: Store<u64> = Store::default();
        for i in 0..10_000u64 {
            assert_eq!(store.insert(Lsn(i), i * 2), None);
        }
        assert_eq!(store.chunks.len(), 3);
        for i in (0..10_000u64).step_by(3) {
            assert_eq!(store.remove(&Lsn(i)), Some(i * 2));
        }
        assert_eq!(store.remove(&Lsn(0)), None);
        for i in 10_000..13_000u64 {
            store.insert(Lsn(i), i * 2);
        }
        assert_eq!(store.chunks.len(), 3, "freed slots were reused");
        assert_eq!(store.len(), 10_000 - 3334 + 3000);
        assert_eq!(store.get(&Lsn(1)), Some(&2));
        assert_eq!(store.get(&Lsn(3)), None);
        *store.get_mut(&Lsn(12_999)).unwrap() += 1;
        assert_eq!(store.get(&Lsn(12_999)), Some(&25_999));
        assert_eq!(store.insert(Lsn(1), 7), Some(2));
        assert!(store.contains(&Lsn(1)) && !store.contains(&Lsn(0)));
        assert_eq!(store.iter().count(), store.len());
        assert!(!store.is_empty());
    }
}
