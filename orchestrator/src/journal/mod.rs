//! The orchestrator's journal: a crash-safe command log plus one snapshot, in one redb file.
//!
//! The journal knows nothing of the orchestrator's types. A record is an opaque byte string (the
//! orchestrator serialises its core's inputs with rmp-serde); so is a snapshot. The orchestrator
//! appends the inputs of a step in one group commit before any of their effects leave the
//! process, snapshots its state now and then (which truncates the log), and after a restart
//! replays the [`Recovery`] that [`Journal::open`] returns: the snapshot, then the records after
//! it, in index order.
//!
//! It is not a general store: one writer (the file is locked), one snapshot at a time, no reads
//! after open.
//!
//! # Layout
//! - `mod.rs`: [`Journal`], [`Recovery`], [`Snapshot`], [`JournalStats`], the tables.
//! - `options.rs`: [`Durability`], [`JournalOptions`].
//! - `error.rs`: [`JournalError`], [`ParseDurabilityError`].
//! - `recover.rs`: reading a file back at open, and its validation.
//! - `tests.rs`: the unit tests that attest the invariants.
//!
//! # Tables
//! ```text
//!  journal.redb (one redb database, page size 4 KiB)
//!  ┌ meta: &str -> u64 ────────────────────────────┐
//!  │ "format_version"  -> 1                          │ JNL-5
//!  │ "next_index"      -> index of the next record   │ JNL-1
//!  │ "snapshot_covers" -> last record in snapshot    │ ┐ present together,
//!  │ "snapshot_bytes"  -> snapshot length            │ │ iff there is a
//!  │ "snapshot_chunks" -> number of chunks           │ ┘ snapshot (JNL-4)
//!  └─────────────────────────────────────────────────┘
//!  ┌ records: u64 -> &[u8] ┐   ┌ snapshot_chunks: u64 -> &[u8] ┐
//!  │ covers+1 -> record     │   │ 0 -> bytes[0 .. 4 MiB]         │
//!  │ covers+2 -> record     │   │ 1 -> bytes[4 MiB .. 8 MiB]     │
//!  │ ...                    │   │ ...  (last chunk may be short) │
//!  │ next_index-1 -> record │   └────────────────────────────────┘
//!  └────────────────────────┘
//! ```
//!
//! # Invariants
//! - **JNL-1** Record indices are dense, start at 1 and are never reused: the log holds exactly
//!   `covers+1 ..= next_index-1` (`covers` = 0 without a snapshot), and `next_index` only grows,
//!   across reopens and snapshots. A file that breaks this fails to open with
//!   [`JournalError::Gap`] (or `Corrupt`).
//! - **JNL-2** A failed open leaves the file byte-for-byte as it was. Anything that is not a
//!   journal of this format (empty, garbage, truncated, another redb database, another format
//!   version, a gap) is an error naming the file; nothing is repaired, replaced or re-initialised.
//!   An existing file is only ever opened, never created; a file that was closed cleanly is
//!   validated through redb's read-only handle before it is opened for writing. One exception,
//!   by design: a file that was *not* closed cleanly (a crash) goes through redb's own crash
//!   recovery first, which writes to it, and only then through the journal's validation.
//! - **JNL-3** `append` is one write transaction: after a crash either all of its records are
//!   there or none. With [`Durability::Fsync`] a returned `append`/`snapshot` survives a crash.
//! - **JNL-4** `snapshot` is one transaction: the new snapshot, the deletion of the records it
//!   covers and the metadata replace the old snapshot and log prefix atomically. After a crash
//!   one sees either the old snapshot with its whole tail or the new one with its tail. A
//!   snapshot is stored in chunks of [`SNAPSHOT_CHUNK_BYTES`]; at open their number and total
//!   length must match the metadata.
//! - **JNL-5** One format version ([`FORMAT_VERSION`]); a file of another version is refused with
//!   [`JournalError::Version`] naming both.
//! - **JNL-6** A new journal appears atomically: it is created and initialised under
//!   `<name>.new`, then hard-linked to its path, so the path never names a half-made journal
//!   (and an empty file there is an error, [`JournalError::Empty`], not a new journal).
//! - **JNL-7** The file stays bounded by the live data: records deleted by a snapshot free their
//!   pages for reuse, and `snapshot` compacts the file when it is much larger than the live data
//!   (see [`Journal::snapshot`]).
//! - **JNL-8** After a failed commit the journal takes no more writes
//!   ([`JournalError::Poisoned`]); reopening recovers exactly what was committed.
//!
//! Corruption that redb itself detects only by panicking (it trusts a file it closed cleanly) is
//! caught at open and reported as [`JournalError::Corrupt`]; the panic message still reaches the
//! panic hook. Opening verifies the checksum of every page (redb's integrity check on open), so
//! it reads the whole file once more than the recovery needs.
#![deny(missing_docs)]
#![warn(rust_2018_idioms)]

mod error;
mod options;
mod recover;
#[cfg(test)]
mod tests;

use std::fs;
use std::path::{Path, PathBuf};

use redb::{Builder, Database, TableDefinition, WriteTransaction};
use tracing::{debug, info, warn};

pub use error::{JournalError, ParseDurabilityError};
pub use options::{Durability, JournalOptions};

/// The format version this build writes and reads (JNL-5).
pub const FORMAT_VERSION: u64 = 1;

/// The size of a snapshot chunk (the last one may be shorter), so no value is huge.
///
/// 4 MiB less one page: redb stores a large value in a leaf of its own, allocated in powers of
/// two pages, so a value of exactly 4 MiB (plus the leaf header) would take 8 MiB. Measured with
/// redb 4.6: a 100 MiB snapshot made a 269 MB file with 4 MiB chunks, 135 MB with these.
pub const SNAPSHOT_CHUNK_BYTES: usize = (4 << 20) - (4 << 10);

/// `snapshot` compacts the file when it is larger than this many times the live data...
const COMPACT_RATIO: u64 = 4;
/// ...and larger than this (small files are left alone).
const COMPACT_MIN_FILE_BYTES: u64 = 64 << 20;

/// redb's page cache. Small: the journal only writes after open, and reads each page once.
const CACHE_BYTES: usize = 64 << 20;

pub(crate) const META: TableDefinition<'static, &str, u64> = TableDefinition::new("meta");
pub(crate) const RECORDS: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("records");
pub(crate) const SNAPSHOT_CHUNKS: TableDefinition<'static, u64, &[u8]> =
    TableDefinition::new("snapshot_chunks");

pub(crate) const KEY_FORMAT_VERSION: &str = "format_version";
pub(crate) const KEY_NEXT_INDEX: &str = "next_index";
pub(crate) const KEY_SNAPSHOT_COVERS: &str = "snapshot_covers";
pub(crate) const KEY_SNAPSHOT_BYTES: &str = "snapshot_bytes";
pub(crate) const KEY_SNAPSHOT_CHUNKS: &str = "snapshot_chunks";

/// What to replay after [`Journal::open`]: the snapshot if any, then the records after it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// The latest snapshot, if one was ever stored.
    pub snapshot: Option<Snapshot>,
    /// The records after the snapshot (all records without one), `(index, bytes)`, in ascending,
    /// dense index order (JNL-1).
    pub records: Vec<(u64, Vec<u8>)>,
}

/// A snapshot: the state after applying every record up to and including `covers`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The index of the last record the snapshot includes.
    pub covers: u64,
    /// The snapshot, as it was given to [`Journal::snapshot`].
    pub bytes: Vec<u8>,
}

/// Sizes of a journal, for metrics and the admin API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Records in the log (after the snapshot).
    pub records: u64,
    /// Total length of those records.
    pub record_bytes: u64,
    /// Size of the file on disk (0 if it cannot be read).
    pub file_bytes: u64,
    /// Index of the last record appended (0 if none ever was).
    pub last_index: u64,
    /// Length of the current snapshot (0 without one).
    pub snapshot_bytes: u64,
}

/// An open journal: the only writer of its file (redb locks it).
///
/// Dropping it closes the file cleanly; [`Journal::close`] does the same and reports errors.
pub struct Journal {
    db: Database,
    path: PathBuf,
    durability: Durability,
    /// The index the next record gets (JNL-1).
    next_index: u64,
    /// What the snapshot covers (0 without one).
    covers: u64,
    records: u64,
    record_bytes: u64,
    snapshot_bytes: u64,
    /// Set by a failed write transaction (JNL-8).
    poisoned: bool,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("path", &self.path)
            .field("durability", &self.durability)
            .field("next_index", &self.next_index)
            .field("covers", &self.covers)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl Journal {
    /// Opens (creating if absent) the journal file; returns what to replay.
    ///
    /// A missing file becomes a new, empty journal (JNL-6). An existing file must be a journal
    /// of [`FORMAT_VERSION`] with dense indices, or the open fails with an error naming the file
    /// and what was found, and the file is left untouched (JNL-2). A file that was not closed
    /// cleanly (a crash) is first recovered by redb. Every page's checksum is verified.
    pub fn open(path: &Path, options: JournalOptions) -> Result<(Journal, Recovery), JournalError> {
        match fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_new(path)?,
            Err(e) => return Err(JournalError::io(path, "stat", e)),
            Ok(meta) if !meta.is_file() => {
                return Err(JournalError::not_journal(path, "not a regular file"))
            }
            Ok(meta) if meta.len() == 0 => {
                return Err(JournalError::Empty {
                    path: path.to_owned(),
                })
            }
            Ok(_) => {}
        }

        // JNL-2: a cleanly closed file is read and validated in full through the read-only
        // handle, which never writes. Only a file that passed is opened for writing.
        let clean = match recover::guard(path, "opening the file read-only", || {
            Builder::new()
                .set_cache_size(CACHE_BYTES)
                .open_read_only(path)
                .map_err(|e| JournalError::from_open(path, e))
        }) {
            Ok(db) => Some(recover::load(&db, path)?),
            // Not closed cleanly: a crash. redb's recovery below runs first (JNL-2's exception).
            Err(JournalError::Open {
                source: redb::DatabaseError::RepairAborted,
                ..
            }) => {
                warn!(path = %path.display(), "journal was not closed cleanly; redb recovers it");
                None
            }
            Err(e) => return Err(e),
        };

        let db = recover::guard(path, "opening the file", || {
            Builder::new()
                .set_cache_size(CACHE_BYTES)
                .set_check_integrity_on_open(true)
                .open(path)
                .map_err(|e| JournalError::from_open(path, e))
        })?;
        let loaded = match clean {
            Some(loaded) => {
                // The integrity check may only confirm what the read-only pass saw.
                let now = recover::summary(&db, path)?;
                if now != loaded.summary {
                    return Err(JournalError::corrupt(
                        path,
                        format!(
                            "redb's integrity check changed the journal ({:?} became {now:?})",
                            loaded.summary
                        ),
                    ));
                }
                loaded
            }
            None => recover::load(&db, path)?,
        };

        let summary = loaded.summary;
        let (covers, snapshot_bytes) = summary
            .snapshot
            .map_or((0, 0), |(covers, bytes, _)| (covers, bytes));
        let journal = Journal {
            db,
            path: path.to_owned(),
            durability: options.durability,
            next_index: summary.next_index,
            covers,
            records: summary.records,
            record_bytes: loaded.record_bytes,
            snapshot_bytes,
            poisoned: false,
        };
        info!(
            path = %path.display(),
            last_index = journal.next_index - 1,
            covers,
            records = summary.records,
            snapshot_bytes,
            durability = %options.durability,
            "journal opened"
        );
        Ok((journal, loaded.recovery))
    }

    /// Appends records in ONE write transaction (group commit); returns the index of the last
    /// one. Indices are dense, start at 1, never reused (also after snapshots truncate the log).
    ///
    /// An empty batch commits nothing and returns the last index (0 if none yet).
    pub fn append(&mut self, records: &[Vec<u8>]) -> Result<u64, JournalError> {
        self.append_and_snapshot_inner(records, None)
    }

    /// Stores a snapshot covering every record up to `covers` and deletes those records, in one
    /// transaction (JNL-4). The previous snapshot is replaced atomically. The snapshot is stored
    /// in chunks of [`SNAPSHOT_CHUNK_BYTES`].
    ///
    /// `covers` must be at most the last index and at least what the current snapshot covers
    /// (equal is allowed: a new snapshot of the same state), else [`JournalError::Covers`].
    ///
    /// Compaction rule (JNL-7): after the commit, if the file is larger than 64 MiB and than
    /// 4 times the live data (records + snapshot), the file is compacted (redb's `compact`,
    /// which moves pages down and truncates the file). A failed compaction is logged, not
    /// returned: the snapshot is committed either way. redb does not give the space back by
    /// itself: a 100 MiB snapshot replaced by a small one leaves a 135 MB file without
    /// compaction, 24 KiB with it. The pages of the old snapshot are freed at commit, so while a
    /// big snapshot replaces another the file holds both.
    pub fn snapshot(&mut self, covers: u64, bytes: &[u8]) -> Result<(), JournalError> {
        self.check_covers(covers, self.next_index - 1)?;
        self.append_and_snapshot_inner(&[], Some((covers, bytes)))
            .map(|_| ())
    }

    /// Appends records and then stores a snapshot covering all of them (and every earlier
    /// record), in one transaction; returns the index of the last record.
    pub fn append_and_snapshot(
        &mut self,
        records: &[Vec<u8>],
        bytes: &[u8],
    ) -> Result<u64, JournalError> {
        let last = self.next_index - 1 + records.len() as u64;
        self.append_and_snapshot_inner(records, Some((last, bytes)))
    }

    /// Sizes of the journal now.
    pub fn stats(&self) -> JournalStats {
        JournalStats {
            records: self.records,
            record_bytes: self.record_bytes,
            file_bytes: fs::metadata(&self.path).map_or(0, |m| m.len()),
            last_index: self.next_index - 1,
            snapshot_bytes: self.snapshot_bytes,
        }
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Closes the file cleanly, reporting an error that dropping would ignore.
    pub fn close(self) -> Result<(), JournalError> {
        let path = self.path;
        self.db
            .close()
            .map_err(|source| JournalError::Close { path, source })
    }

    fn check_covers(&self, covers: u64, last_index: u64) -> Result<(), JournalError> {
        if covers > last_index || covers < self.covers {
            return Err(JournalError::Covers {
                path: self.path.clone(),
                covers,
                last_index,
                current: self.covers,
            });
        }
        Ok(())
    }

    fn append_and_snapshot_inner(
        &mut self,
        records: &[Vec<u8>],
        snapshot: Option<(u64, &[u8])>,
    ) -> Result<u64, JournalError> {
        if self.poisoned {
            return Err(JournalError::Poisoned {
                path: self.path.clone(),
            });
        }
        if records.is_empty() && snapshot.is_none() {
            return Ok(self.next_index - 1);
        }
        let first = self.next_index;
        let next_index = first + records.len() as u64;
        let durability = self.durability.to_redb();
        let result = (|| -> Result<Option<(u64, u64)>, redb::Error> {
            let mut txn = self.db.begin_write()?;
            txn.set_durability(durability)?;
            let mut removed = None;
            {
                let mut table = txn.open_table(RECORDS)?;
                for (index, record) in (first..).zip(records) {
                    table.insert(index, record.as_slice())?;
                }
                if let Some((covers, _)) = snapshot {
                    let (mut count, mut bytes) = (0u64, 0u64);
                    table.retain_in(..=covers, |_, value| {
                        count += 1;
                        bytes += value.len() as u64;
                        false
                    })?;
                    removed = Some((count, bytes));
                }
            }
            {
                let mut meta = txn.open_table(META)?;
                meta.insert(KEY_NEXT_INDEX, next_index)?;
            }
            if let Some((covers, bytes)) = snapshot {
                write_snapshot(&txn, covers, bytes)?;
            }
            txn.commit()?;
            Ok(removed)
        })();
        let removed = match result {
            Ok(removed) => removed,
            Err(source) => {
                // JNL-8: the state of the file after a failed commit (fsync) is not known.
                self.poisoned = true;
                warn!(path = %self.path.display(), error = %source, "journal commit failed");
                return Err(JournalError::Commit {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        self.next_index = next_index;
        self.records += records.len() as u64;
        self.record_bytes += records.iter().map(|r| r.len() as u64).sum::<u64>();
        if let (Some((covers, bytes)), Some((count, removed_bytes))) = (snapshot, removed) {
            self.covers = covers;
            self.snapshot_bytes = bytes.len() as u64;
            self.records -= count;
            self.record_bytes -= removed_bytes;
            debug!(
                path = %self.path.display(),
                covers,
                snapshot_bytes = bytes.len(),
                deleted = count,
                "journal snapshot stored"
            );
            self.maybe_compact();
        }
        Ok(next_index - 1)
    }

    /// JNL-7: compacts when the file is much larger than the live data.
    fn maybe_compact(&mut self) {
        let file_bytes = fs::metadata(&self.path).map_or(0, |m| m.len());
        let live = self.record_bytes + self.snapshot_bytes;
        if file_bytes <= COMPACT_MIN_FILE_BYTES || file_bytes <= COMPACT_RATIO * live {
            return;
        }
        match self.db.compact() {
            Ok(_) => info!(
                path = %self.path.display(),
                before = file_bytes,
                after = fs::metadata(&self.path).map_or(0, |m| m.len()),
                live,
                "journal compacted"
            ),
            Err(error) => warn!(path = %self.path.display(), %error, "journal compaction failed"),
        }
    }
}

/// Replaces the snapshot: its chunks and its metadata (JNL-4).
fn write_snapshot(txn: &WriteTransaction, covers: u64, bytes: &[u8]) -> Result<(), redb::Error> {
    let mut chunks = txn.open_table(SNAPSHOT_CHUNKS)?;
    chunks.retain(|_, _| false)?;
    let mut count = 0u64;
    for (number, chunk) in (0u64..).zip(bytes.chunks(SNAPSHOT_CHUNK_BYTES)) {
        chunks.insert(number, chunk)?;
        count += 1;
    }
    let mut meta = txn.open_table(META)?;
    meta.insert(KEY_SNAPSHOT_COVERS, covers)?;
    meta.insert(KEY_SNAPSHOT_BYTES, bytes.len() as u64)?;
    meta.insert(KEY_SNAPSHOT_CHUNKS, count)?;
    Ok(())
}

/// Creates a new journal at `path` (JNL-6): initialised under `<name>.new`, fsynced, closed,
/// then hard-linked into place (which fails rather than replace a file that appeared meanwhile).
fn create_new(path: &Path) -> Result<(), JournalError> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(".new");
    let tmp = path.with_file_name(tmp_name);
    // A leftover of an earlier creation that crashed before linking: ours, never the journal.
    match fs::remove_file(&tmp) {
        Ok(()) => warn!(path = %tmp.display(), "removed a half-made journal"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(JournalError::io(path, "remove the stale .new file", e)),
    }
    let db = Builder::new()
        .create(&tmp)
        .map_err(|e| JournalError::from_open(path, e))?;
    let init = (|| -> Result<(), redb::Error> {
        let txn = db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            meta.insert(KEY_FORMAT_VERSION, FORMAT_VERSION)?;
            meta.insert(KEY_NEXT_INDEX, 1)?;
            txn.open_table(RECORDS)?;
            txn.open_table(SNAPSHOT_CHUNKS)?;
        }
        txn.commit()?;
        Ok(())
    })();
    init.map_err(|source| JournalError::Commit {
        path: path.to_owned(),
        source,
    })?;
    db.close().map_err(|source| JournalError::Close {
        path: path.to_owned(),
        source,
    })?;
    fs::hard_link(&tmp, path).map_err(|e| JournalError::io(path, "link the new journal", e))?;
    fs::remove_file(&tmp).map_err(|e| JournalError::io(path, "remove the .new file", e))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| JournalError::io(path, "fsync the journal's directory", e))?;
    }
    info!(path = %path.display(), "created a new journal");
    Ok(())
}
