//! Unit tests of the journal; each says which invariant it attests.

use std::path::{Path, PathBuf};
use std::time::Instant;

use redb::{ReadableDatabase, ReadableTableMetadata};

use super::*;

fn options() -> JournalOptions {
    JournalOptions::default()
}

fn dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

fn record(i: u64, len: usize) -> Vec<u8> {
    let mut r = i.to_le_bytes().to_vec();
    r.resize(len, (i % 251) as u8);
    r
}

fn batch(from: u64, n: u64, len: usize) -> Vec<Vec<u8>> {
    (from..from + n).map(|i| record(i, len)).collect()
}

/// A journal with 10 records and a snapshot covering 6, closed cleanly.
fn sample(path: &Path) {
    let (mut j, _) = Journal::open(path, options()).unwrap();
    j.append(&batch(1, 6, 100)).unwrap();
    j.snapshot(6, b"state after 6").unwrap();
    j.append(&batch(7, 4, 100)).unwrap();
    j.close().unwrap();
}

/// Opening must fail, and leave the file byte-for-byte as it was.
fn open_fails_untouched(path: &Path) -> JournalError {
    let before = std::fs::read(path).unwrap();
    let err = Journal::open(path, options()).expect_err("open must fail");
    assert_eq!(
        std::fs::read(path).unwrap(),
        before,
        "file changed by a failed open"
    );
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "error must name the file: {err}"
    );
    assert_eq!(err.path(), path);
    err
}

/// Edits the file directly through redb, as another program would.
fn with_raw(path: &Path, f: impl FnOnce(&redb::WriteTransaction)) {
    let db = redb::Database::open(path).unwrap();
    let txn = db.begin_write().unwrap();
    f(&txn);
    txn.commit().unwrap();
    db.close().unwrap();
}

#[test]
fn new_journal_is_empty() {
    // Attests JNL-1, JNL-6
    let d = dir();
    let path = d.path().join("journal.redb");
    let (j, recovery) = Journal::open(&path, options()).unwrap();
    assert_eq!(recovery, Recovery::default());
    let stats = j.stats();
    assert_eq!(
        (stats.records, stats.last_index, stats.snapshot_bytes),
        (0, 0, 0)
    );
    assert!(stats.file_bytes > 0);
    assert_eq!(j.path(), path);
    assert!(!d.path().join("journal.redb.new").exists());
}

#[test]
fn round_trip_after_reopen() {
    // Attests JNL-1, JNL-3
    let d = dir();
    let path = d.path().join("journal.redb");
    let (mut j, _) = Journal::open(&path, options()).unwrap();
    assert_eq!(j.append(&batch(1, 3, 10)).unwrap(), 3);
    assert_eq!(j.append(&[]).unwrap(), 3, "an empty batch commits nothing");
    assert_eq!(j.append(&batch(4, 2, 5000)).unwrap(), 5);
    assert_eq!(
        j.append(&[Vec::new()]).unwrap(),
        6,
        "an empty record is a record"
    );
    let stats = j.stats();
    assert_eq!(
        (stats.records, stats.record_bytes, stats.last_index),
        (6, 10_030, 6)
    );
    j.close().unwrap();

    let (j, recovery) = Journal::open(&path, options()).unwrap();
    let mut expected: Vec<_> = (1..=5)
        .zip(batch(1, 3, 10).into_iter().chain(batch(4, 2, 5000)))
        .collect();
    expected.push((6, Vec::new()));
    assert_eq!(recovery.records, expected);
    assert_eq!(recovery.snapshot, None);
    assert_eq!(j.stats(), stats_with_file(stats, &j));
}

fn stats_with_file(mut stats: JournalStats, j: &Journal) -> JournalStats {
    stats.file_bytes = j.stats().file_bytes;
    stats
}

#[test]
fn snapshot_truncates_and_reopen_gives_snapshot_and_tail() {
    // Attests JNL-4
    let d = dir();
    let path = d.path().join("journal.redb");
    sample(&path);
    let (mut j, recovery) = Journal::open(&path, options()).unwrap();
    assert_eq!(
        recovery.snapshot,
        Some(Snapshot {
            covers: 6,
            bytes: b"state after 6".to_vec()
        })
    );
    assert_eq!(
        recovery.records,
        (7..=10).zip(batch(7, 4, 100)).collect::<Vec<_>>()
    );
    let stats = j.stats();
    assert_eq!(
        (stats.records, stats.record_bytes, stats.snapshot_bytes),
        (4, 400, 13)
    );

    // A second snapshot replaces the first, deletes up to 9, keeps 10.
    j.snapshot(9, b"nine").unwrap();
    assert_eq!((j.stats().records, j.stats().snapshot_bytes), (1, 4));
    drop(j);
    let (_, recovery) = Journal::open(&path, options()).unwrap();
    assert_eq!(
        recovery.snapshot.unwrap(),
        Snapshot {
            covers: 9,
            bytes: b"nine".to_vec()
        }
    );
    assert_eq!(recovery.records, vec![(10, record(10, 100))]);
}

#[test]
fn indices_continue_after_reopen_and_snapshot() {
    // Attests JNL-1
    let d = dir();
    let path = d.path().join("journal.redb");
    let (mut j, _) = Journal::open(&path, options()).unwrap();
    assert_eq!(j.append(&batch(1, 5, 8)).unwrap(), 5);
    j.snapshot(5, b"all").unwrap();
    assert_eq!(j.stats().records, 0);
    assert_eq!(
        j.append(&batch(6, 1, 8)).unwrap(),
        6,
        "not reused after a snapshot"
    );
    j.snapshot(6, b"all again").unwrap();
    drop(j);
    let (mut j, recovery) = Journal::open(&path, options()).unwrap();
    assert!(recovery.records.is_empty());
    assert_eq!(recovery.snapshot.unwrap().covers, 6);
    assert_eq!(j.stats().last_index, 6);
    assert_eq!(
        j.append(&batch(7, 2, 8)).unwrap(),
        8,
        "not reused after reopen"
    );
    assert_eq!(j.append_and_snapshot(&batch(9, 2, 8), b"ten").unwrap(), 10);
    drop(j);
    let (mut j, recovery) = Journal::open(&path, options()).unwrap();
    assert_eq!(
        recovery.snapshot.unwrap(),
        Snapshot {
            covers: 10,
            bytes: b"ten".to_vec()
        }
    );
    assert!(recovery.records.is_empty());
    assert_eq!(j.append(&batch(11, 1, 8)).unwrap(), 11);
}

#[test]
fn snapshot_covers_must_be_between_current_and_last() {
    // Attests JNL-1, JNL-4
    let d = dir();
    let path = d.path().join("journal.redb");
    let (mut j, _) = Journal::open(&path, options()).unwrap();
    j.append(&batch(1, 4, 8)).unwrap();
    let err = j.snapshot(5, b"x").unwrap_err();
    assert!(
        matches!(
            err,
            JournalError::Covers {
                covers: 5,
                last_index: 4,
                current: 0,
                ..
            }
        ),
        "{err}"
    );
    j.snapshot(3, b"x").unwrap();
    assert!(matches!(
        j.snapshot(2, b"y"),
        Err(JournalError::Covers { current: 3, .. })
    ));
    j.snapshot(3, b"same state, new bytes").unwrap();
    j.snapshot(4, b"").unwrap();
    drop(j);
    let (_, recovery) = Journal::open(&path, options()).unwrap();
    assert_eq!(
        recovery.snapshot.unwrap(),
        Snapshot {
            covers: 4,
            bytes: Vec::new()
        }
    );
}

#[test]
fn large_snapshot_round_trips_in_chunks() {
    // Attests JNL-4
    let d = dir();
    let path = d.path().join("journal.redb");
    let big: Vec<u8> = (0..20_000_003u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let (mut j, _) = Journal::open(&path, options()).unwrap();
    j.append(&batch(1, 10, 200)).unwrap();
    j.snapshot(8, &big).unwrap();
    j.close().unwrap();
    {
        let db = redb::Builder::new().open_read_only(&path).unwrap();
        let txn = db.begin_read().unwrap();
        let chunks = txn.open_table(SNAPSHOT_CHUNKS).unwrap();
        assert_eq!(
            chunks.len().unwrap(),
            20_000_003u64.div_ceil(SNAPSHOT_CHUNK_BYTES as u64)
        );
    }
    let (mut j, recovery) = Journal::open(&path, options()).unwrap();
    let snapshot = recovery.snapshot.unwrap();
    assert_eq!(snapshot.covers, 8);
    assert!(snapshot.bytes == big, "snapshot bytes differ");
    assert_eq!(recovery.records.len(), 2);
    // A small snapshot replaces all the chunks of the big one.
    j.snapshot(10, b"small").unwrap();
    drop(j);
    let (_, recovery) = Journal::open(&path, options()).unwrap();
    assert_eq!(recovery.snapshot.unwrap().bytes, b"small");
}

#[test]
fn garbage_file_is_refused_untouched() {
    // Attests JNL-2
    let d = dir();
    let path = d.path().join("journal.redb");
    std::fs::write(&path, vec![0x5a; 100_000]).unwrap();
    let err = open_fails_untouched(&path);
    assert!(matches!(err, JournalError::NotJournal { .. }), "{err}");
    assert!(err.to_string().contains("not a procmesh journal"), "{err}");
    std::fs::write(&path, b"hello").unwrap();
    assert!(matches!(
        open_fails_untouched(&path),
        JournalError::NotJournal { .. }
    ));
}

#[test]
fn truncated_file_is_refused_untouched() {
    // Attests JNL-2
    let d = dir();
    let path = d.path().join("journal.redb");
    let (mut j, _) = Journal::open(&path, options()).unwrap();
    for i in 0..20 {
        j.append(&batch(1 + i * 100, 100, 200)).unwrap();
    }
    j.close().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = open_fails_untouched(&path);
    assert!(matches!(err, JournalError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("truncated"), "{err}");
}

#[test]
fn truncated_crashed_file_is_refused_untouched() {
    // Attests JNL-2
    let d = dir();
    let path = d.path().join("journal.redb");
    let copy = d.path().join("crashed.redb");
    let (mut j, _) = Journal::open(&path, options()).unwrap();
    for i in 0..20 {
        j.append(&batch(1 + i * 100, 100, 200)).unwrap();
    }
    std::fs::copy(&path, &copy).unwrap(); // the file as a crash would leave it
    drop(j);
    let bytes = std::fs::read(&copy).unwrap();
    std::fs::write(&copy, &bytes[..bytes.len() / 2]).unwrap();
    let err = open_fails_untouched(&copy);
    assert!(matches!(err, JournalError::Corrupt { .. }), "{err}");
}

#[test]
fn flipped_bytes_are_refused_untouched() {
    // Attests JNL-2
    let d = dir();
    let path = d.path().join("journal.redb");
    let (mut j, _) = Journal::open(&path, options()).unwrap();
    for i in 0..20 {
        j.append(&batch(1 + i * 100, 100, 200)).unwrap();
    }
    j.close().unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 4096] {
        *b ^= 0xff;
    }
    std::fs::write(&path, &bytes).unwrap();
    let err = open_fails_untouched(&path);
    assert!(matches!(err, JournalError::Corrupt { .. }), "{err}");
}

#[test]
fn empty_file_is_refused_untouched() {
    // Attests JNL-2, JNL-6
    let d = dir();
    let path = d.path().join("journal.redb");
    std::fs::write(&path, b"").unwrap();
    let err = open_fails_untouched(&path);
    assert!(matches!(err, JournalError::Empty { .. }), "{err}");
}

#[test]
fn other_redb_database_is_not_a_journal() {
    // Attests JNL-2
    let d = dir();
    let path = d.path().join("journal.redb");
    let db = redb::Database::create(&path).unwrap();
    let txn = db.begin_write().unwrap();
    txn.open_table(redb::TableDefinition::<u64, u64>::new("other"))
        .unwrap()
        .insert(1, 2)
        .unwrap();
    txn.commit().unwrap();
    drop(db);
    let err = open_fails_untouched(&path);
    assert!(matches!(err, JournalError::NotJournal { .. }), "{err}");
    assert!(err.to_string().contains("\"meta\""), "{err}");
}

#[test]
fn other_format_version_is_refused_untouched() {
    // Attests JNL-5, JNL-2
    let d = dir();
    let path = d.path().join("journal.redb");
    sample(&path);
    with_raw(&path, |txn| {
        txn.open_table(META)
            .unwrap()
            .insert(KEY_FORMAT_VERSION, 2)
            .unwrap();
    });
    let err = open_fails_untouched(&path);
    assert!(
        matches!(
            err,
            JournalError::Version {
                found: 2,
                expected: 1,
                ..
            }
        ),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("format version 2") && text.contains("format version 1"),
        "{text}"
    );
}

#[test]
fn gap_in_indices_is_refused_untouched() {
    // Attests JNL-1, JNL-2
    let d = dir();
    let path = d.path().join("journal.redb");
    sample(&path); // snapshot covers 6, records 7..=10
    with_raw(&path, |txn| {
        txn.open_table(RECORDS).unwrap().remove(8).unwrap();
    });
    let err = open_fails_untouched(&path);
    assert!(
        matches!(
            err,
            JournalError::Gap {
                expected: 8,
                found: Some(9),
                ..
            }
        ),
        "{err}"
    );

    let path = d.path().join("tail.redb");
    sample(&path);
    with_raw(&path, |txn| {
        txn.open_table(RECORDS).unwrap().remove(10).unwrap();
    });
    let err = open_fails_untouched(&path);
    assert!(
        matches!(
            err,
            JournalError::Gap {
                expected: 10,
                found: None,
                ..
            }
        ),
        "{err}"
    );

    let path = d.path().join("head.redb");
    sample(&path);
    with_raw(&path, |txn| {
        txn.open_table(RECORDS).unwrap().remove(7).unwrap();
    });
    let err = open_fails_untouched(&path);
    assert!(
        matches!(
            err,
            JournalError::Gap {
                expected: 7,
                found: Some(8),
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn missing_snapshot_chunk_is_refused_untouched() {
    // Attests JNL-4, JNL-2
    let d = dir();
    let path = d.path().join("journal.redb");
    let (mut j, _) = Journal::open(&path, options()).unwrap();
    j.append(&batch(1, 1, 8)).unwrap();
    j.snapshot(1, &vec![7u8; SNAPSHOT_CHUNK_BYTES * 2 + 1])
        .unwrap();
    j.close().unwrap();
    with_raw(&path, |txn| {
        txn.open_table(SNAPSHOT_CHUNKS).unwrap().remove(1).unwrap();
    });
    let err = open_fails_untouched(&path);
    assert!(matches!(err, JournalError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("chunk 1"), "{err}");
}

#[test]
fn drop_without_close_keeps_every_commit() {
    // Attests JNL-3
    let d = dir();
    let path = d.path().join("journal.redb");
    let (mut j, _) = Journal::open(&path, options()).unwrap();
    j.append(&batch(1, 50, 64)).unwrap();
    j.snapshot(40, b"forty").unwrap();
    j.append(&batch(51, 5, 64)).unwrap();
    drop(j);
    let (_, recovery) = Journal::open(&path, options()).unwrap();
    assert_eq!(recovery.snapshot.unwrap().covers, 40);
    let indices: Vec<u64> = recovery.records.iter().map(|(i, _)| *i).collect();
    assert_eq!(indices, (41..=55).collect::<Vec<_>>());
}

#[test]
fn crash_image_is_recovered_by_redb() {
    // Attests JNL-3, JNL-4: a copy of the file taken while the journal is open, after its
    // commits, is what a crash leaves (not closed cleanly); it reopens with every commit.
    let d = dir();
    let path = d.path().join("journal.redb");
    let crashed = d.path().join("crashed.redb");
    let (mut j, _) = Journal::open(&path, options()).unwrap();
    j.append(&batch(1, 30, 64)).unwrap();
    j.snapshot(20, b"twenty").unwrap();
    j.append(&batch(31, 3, 64)).unwrap();
    std::fs::copy(&path, &crashed).unwrap();
    drop(j);
    {
        let ro = redb::Builder::new().open_read_only(&crashed);
        assert!(
            matches!(ro, Err(redb::DatabaseError::RepairAborted)),
            "not a crash image"
        );
    }
    let (mut j, recovery) = Journal::open(&crashed, options()).unwrap();
    assert_eq!(
        recovery.snapshot.unwrap(),
        Snapshot {
            covers: 20,
            bytes: b"twenty".to_vec()
        }
    );
    assert_eq!(recovery.records.len(), 13);
    assert_eq!(recovery.records.last().unwrap(), &(33, record(33, 64)));
    assert_eq!(j.append(&batch(34, 1, 64)).unwrap(), 34);
}

#[test]
fn second_open_of_the_same_file_is_refused() {
    // Attests JNL-2
    let d = dir();
    let path = d.path().join("journal.redb");
    let (_j, _) = Journal::open(&path, options()).unwrap();
    let err = Journal::open(&path, options()).unwrap_err();
    assert!(matches!(err, JournalError::Open { .. }), "{err}");
}

#[test]
fn file_stays_bounded_over_snapshots() {
    // Attests JNL-7: 100 rounds of 1,000 records of 200 B and a 50 KB snapshot covering all.
    for durability in [Durability::Fsync, Durability::None] {
        let d = dir();
        let path = d.path().join("journal.redb");
        let (mut j, _) = Journal::open(&path, JournalOptions { durability }).unwrap();
        let snapshot = vec![3u8; 50_000];
        let mut largest = 0;
        let mut next = 1;
        for _ in 0..100 {
            for _ in 0..10 {
                j.append(&batch(next, 100, 200)).unwrap();
                next += 100;
            }
            largest = largest.max(j.stats().file_bytes);
            j.snapshot(next - 1, &snapshot).unwrap();
            largest = largest.max(j.stats().file_bytes);
        }
        let stats = j.stats();
        eprintln!("durability {durability}: largest file {largest} B, final {stats:?}");
        assert_eq!((stats.records, stats.last_index), (0, 100_000));
        assert!(
            largest < BOUND_BYTES,
            "{durability}: file reached {largest} B"
        );
    }
}

/// The bound asserted by `file_stays_bounded_over_snapshots`. Measured with redb 4.6: the file
/// never passes 561,152 B (0.54 MiB) with either durability, live data being ~250 KB.
const BOUND_BYTES: u64 = 4 << 20;

#[test]
fn durability_names() {
    assert_eq!(Durability::default(), Durability::Fsync);
    assert_eq!(JournalOptions::default().durability, Durability::Fsync);
    for d in [Durability::Fsync, Durability::None] {
        assert_eq!(d.to_string().parse::<Durability>().unwrap(), d);
        let encoded = rmp_serde::to_vec(&d.to_string()).unwrap();
        assert_eq!(rmp_serde::from_slice::<Durability>(&encoded).unwrap(), d);
    }
    assert_eq!(Durability::None.to_string(), "none");
    let err = "Fsync".parse::<Durability>().unwrap_err();
    assert!(err.to_string().contains("\"Fsync\""), "{err}");
}

/// Prints timings; run with `cargo test -- --ignored --nocapture measure`, and
/// `JOURNAL_MEASURE_DIRS=/work/x:/dev/shm/x` to choose the file systems.
#[test]
#[ignore]
fn measure() {
    let dirs = std::env::var("JOURNAL_MEASURE_DIRS").unwrap_or_else(|_| "/tmp".to_owned());
    for base in dirs.split(':') {
        let d = tempfile::tempdir_in(base).unwrap();
        let path: PathBuf = d.path().join("journal.redb");
        let (mut j, _) = Journal::open(&path, options()).unwrap();
        let b = batch(1, 100, 200);
        let rounds = 200;
        let start = Instant::now();
        for _ in 0..rounds {
            j.append(&b).unwrap();
        }
        let per = start.elapsed() / rounds;
        eprintln!("{base}: append of 100 x 200 B with fsync: {per:?} per batch");

        let big = vec![0x42u8; 300 << 20];
        let start = Instant::now();
        j.snapshot(j.stats().last_index, &big).unwrap();
        eprintln!("{base}: snapshot of 300 MiB: {:?}", start.elapsed());
        j.close().unwrap();
        let start = Instant::now();
        let (j, recovery) = Journal::open(&path, options()).unwrap();
        eprintln!(
            "{base}: open with a 300 MiB snapshot: {:?} (file {} B)",
            start.elapsed(),
            j.stats().file_bytes
        );
        assert_eq!(recovery.snapshot.unwrap().bytes.len(), 300 << 20);
    }
}

#[test]
fn replacing_a_big_snapshot_gives_the_space_back() {
    // Attests JNL-7: a 100 MiB snapshot replaced by a small one; the file must shrink (redb's
    // own trimming of free space at the end, or the compaction in `snapshot`).
    let d = dir();
    let path = d.path().join("journal.redb");
    let (mut j, _) = Journal::open(&path, options()).unwrap();
    j.append(&batch(1, 10, 200)).unwrap();
    j.snapshot(5, &vec![9u8; 100 << 20]).unwrap();
    let big = j.stats().file_bytes;
    j.append(&batch(11, 10, 200)).unwrap();
    j.snapshot(15, b"small").unwrap();
    let small = j.stats().file_bytes;
    eprintln!("file with a 100 MiB snapshot: {big} B, after replacing it: {small} B");
    assert!(big > 100 << 20);
    assert!(small < 8 << 20, "file still {small} B");
    drop(j);
    let (_, recovery) = Journal::open(&path, options()).unwrap();
    assert_eq!(
        recovery.snapshot.unwrap(),
        Snapshot {
            covers: 15,
            bytes: b"small".to_vec()
        }
    );
    assert_eq!(recovery.records.len(), 5);
}

#[test]
fn durability_none_commits_reach_the_file_at_close() {
    // Attests JNL-3: without fsync a commit is visible at once and written at the latest by a
    // clean close (drop); only a crash may lose it.
    let d = dir();
    let path = d.path().join("journal.redb");
    let none = JournalOptions {
        durability: Durability::None,
    };
    let (mut j, _) = Journal::open(&path, none).unwrap();
    j.append(&batch(1, 20, 32)).unwrap();
    j.snapshot(10, b"ten").unwrap();
    j.append(&batch(21, 1, 32)).unwrap();
    drop(j);
    let (_, recovery) = Journal::open(&path, none).unwrap();
    assert_eq!(recovery.snapshot.unwrap().covers, 10);
    assert_eq!(recovery.records.len(), 11);
}

#[test]
fn journal_can_move_to_another_thread() {
    fn assert_send<T: Send + 'static>() {}
    assert_send::<Journal>();
    assert_send::<JournalError>();
}
