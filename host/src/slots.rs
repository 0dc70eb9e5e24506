//! Slots: how many actions a host runs at once, and how they are shared by its procs.
//!
//! A host's **capacity** (`--capacity`, default: its logical CPUs) bounds the sum of its procs'
//! `max_actions`; the scheduler places on a proc at most its `max_actions` (ORC-16), so what
//! `procmesh hosts` shows, what the host announces and what runs agree.
//!
//! # Invariants
//! - **HST-25** The `max_actions` of the procs a host holds (launched or launching) sum to at
//!   most its capacity. A spawn that names more than the slots left is refused
//!   [`HostError::NoCapacity`] and changes nothing; a spawn that names none gets every slot left
//!   (none left: refused too).
//! - **HST-26** The procs a host starts with (`--procs N`) without `--max-actions` share its
//!   capacity evenly, the first ones taking the remainder; with `--max-actions M`, `N × M` must
//!   fit in the capacity, else the host refuses to start, saying so.

use procmesh_protocol::messages::HostError;

/// How the procs a host starts with share its capacity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotPlan {
    /// The host's capacity: what it announces and what bounds its procs.
    pub capacity: u32,
    /// The `max_actions` of `proc-1` … `proc-N`.
    pub per_proc: Vec<u32>,
}

/// Plans the slots of `procs` starting procs (HST-26). `capacity` and `max_actions` are the
/// operator's settings; `cpus` is the default capacity.
pub fn plan(
    capacity: Option<u32>,
    procs: u32,
    max_actions: Option<u32>,
    cpus: u32,
) -> Result<SlotPlan, String> {
    let (capacity, given) = match capacity {
        Some(0) => return Err("--capacity must be at least 1".to_owned()),
        Some(c) => (c, true),
        None => (cpus.max(1), false),
    };
    let default_note = if given { "" } else { " (logical CPUs)" };
    let per_proc = match max_actions {
        Some(0) => return Err("--max-actions must be at least 1".to_owned()),
        Some(m) => {
            let total = u64::from(m) * u64::from(procs);
            if total > u64::from(capacity) {
                return Err(format!(
                    "{procs} procs × --max-actions {m} = {total} slots, more than the host's \
                     capacity {capacity}{default_note}; raise --capacity or lower --max-actions"
                ));
            }
            vec![m; procs as usize]
        }
        None => {
            if procs > capacity {
                return Err(format!(
                    "{procs} procs need at least one slot each, but the host's capacity is \
                     {capacity}{default_note}; raise --capacity or start fewer procs"
                ));
            }
            let (share, extra) = match procs {
                0 => (0, 0),
                n => (capacity / n, capacity % n),
            };
            (0..procs).map(|i| share + u32::from(i < extra)).collect()
        }
    };
    Ok(SlotPlan { capacity, per_proc })
}

/// The slots a spawn gets (HST-25): what it `asked` for if that fits in `capacity` beside the
/// `used` ones, else every slot left when it asked for none.
pub(crate) fn grant(
    name: &str,
    asked: Option<u32>,
    used: u32,
    capacity: u32,
) -> Result<u32, HostError> {
    let left = capacity.saturating_sub(used);
    let refused = |asked: u32| HostError::NoCapacity {
        name: name.to_owned(),
        asked,
        left,
        capacity,
    };
    match asked {
        Some(0) => Err(refused(0)),
        Some(n) if n > left => Err(refused(n)),
        Some(n) => Ok(n),
        None if left == 0 => Err(refused(1)),
        None => Ok(left),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Attests HST-26
    #[test]
    fn starting_procs_share_the_capacity() {
        let p = plan(None, 2, None, 2).unwrap();
        assert_eq!(
            p,
            SlotPlan {
                capacity: 2,
                per_proc: vec![1, 1]
            }
        );
        let p = plan(Some(3), 2, None, 2).unwrap();
        assert_eq!(
            p,
            SlotPlan {
                capacity: 3,
                per_proc: vec![2, 1]
            }
        );
        let p = plan(Some(16), 3, None, 2).unwrap();
        assert_eq!(p.per_proc, vec![6, 5, 5]);
        assert_eq!(p.per_proc.iter().sum::<u32>(), 16);
        let p = plan(Some(8), 2, Some(4), 2).unwrap();
        assert_eq!(
            p,
            SlotPlan {
                capacity: 8,
                per_proc: vec![4, 4]
            }
        );
        let p = plan(Some(8), 2, Some(3), 2).unwrap();
        assert_eq!(
            p.per_proc,
            vec![3, 3],
            "fewer slots than the capacity is fine"
        );
        let p = plan(None, 0, None, 4).unwrap();
        assert_eq!(
            p,
            SlotPlan {
                capacity: 4,
                per_proc: vec![]
            }
        );
    }

    // Attests HST-26
    #[test]
    fn more_slots_than_the_capacity_is_refused_saying_why() {
        let e = plan(None, 2, Some(2), 2).unwrap_err();
        assert!(e.contains("2 procs × --max-actions 2 = 4 slots"), "{e}");
        assert!(e.contains("capacity 2 (logical CPUs)"), "{e}");
        let e = plan(Some(3), 4, None, 8).unwrap_err();
        assert!(e.contains("4 procs need at least one slot each"), "{e}");
        assert!(!e.contains("logical CPUs"), "{e}");
        assert!(plan(Some(0), 1, None, 2).is_err());
        assert!(plan(Some(2), 1, Some(0), 2).is_err());
    }

    // Attests HST-25
    #[test]
    fn a_spawn_gets_what_fits_or_is_refused() {
        assert_eq!(grant("p", Some(2), 1, 4), Ok(2));
        assert_eq!(grant("p", None, 1, 4), Ok(3));
        assert!(matches!(
            grant("p", Some(4), 1, 4),
            Err(HostError::NoCapacity {
                asked: 4,
                left: 3,
                capacity: 4,
                ..
            })
        ));
        assert!(matches!(
            grant("p", None, 4, 4),
            Err(HostError::NoCapacity { left: 0, .. })
        ));
        assert!(grant("p", Some(0), 0, 4).is_err());
    }
}
