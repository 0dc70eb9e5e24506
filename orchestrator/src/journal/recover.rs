//! Reading a journal file back at open: validation (JNL-1, JNL-4, JNL-5) and the [`Recovery`].
//!
//! Everything here only reads. It runs on redb's read-only handle for a file that was closed
//! cleanly, so that a file found wrong is never written (JNL-2), and on the read-write handle
//! after redb's crash recovery for one that was not.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableError};

use super::error::JournalError;
use super::KEY_SNAPSHOT_COVERS;
use super::{Recovery, Snapshot, FORMAT_VERSION, META, RECORDS, SNAPSHOT_CHUNKS};
use super::{KEY_FORMAT_VERSION, KEY_NEXT_INDEX, KEY_SNAPSHOT_BYTES, KEY_SNAPSHOT_CHUNKS};

/// The journal's own bookkeeping as found in the file, compared across the two opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Summary {
    /// The index the next appended record gets.
    pub next_index: u64,
    /// `(covers, bytes, chunks)` of the snapshot, if there is one.
    pub snapshot: Option<(u64, u64, u64)>,
    /// How many records are in the log.
    pub records: u64,
}

/// A validated file: its summary, what to replay, and the live record bytes.
pub(crate) struct Loaded {
    pub summary: Summary,
    pub recovery: Recovery,
    pub record_bytes: u64,
}

/// Runs `f`, turning a panic into [`JournalError::Corrupt`]. redb trusts a file it closed
/// cleanly and may panic (debug builds: on purpose) on one damaged outside it.
pub(crate) fn guard<T>(
    path: &Path,
    what: &str,
    f: impl FnOnce() -> Result<T, JournalError>,
) -> Result<T, JournalError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            Err(JournalError::corrupt(
                path,
                format!("redb panicked while {what}: {message}"),
            ))
        }
    }
}

fn corrupt(path: &Path) -> impl Fn(redb::StorageError) -> JournalError + '_ {
    move |e| match e {
        redb::StorageError::Io(io) => JournalError::io(path, "read", io),
        other => JournalError::corrupt(path, other.to_string()),
    }
}

fn table_error(path: &Path, table: &str, error: TableError) -> JournalError {
    match error {
        TableError::Storage(e) => corrupt(path)(e),
        TableError::TableDoesNotExist(_) => {
            JournalError::not_journal(path, format!("redb database without the {table:?} table"))
        }
        other => JournalError::not_journal(path, format!("table {table:?}: {other}")),
    }
}

/// Reads only the summary (metadata and the record count): cheap, for comparing.
pub(crate) fn summary(db: &impl ReadableDatabase, path: &Path) -> Result<Summary, JournalError> {
    guard(path, "reading the journal metadata", || {
        let txn = db
            .begin_read()
            .map_err(|e| JournalError::corrupt(path, e.to_string()))?;
        let mut summary = read_meta(&txn, path)?;
        let records = txn
            .open_table(RECORDS)
            .map_err(|e| table_error(path, "records", e))?;
        summary.records = records.len().map_err(corrupt(path))?;
        Ok(summary)
    })
}

fn read_meta(txn: &redb::ReadTransaction, path: &Path) -> Result<Summary, JournalError> {
    let meta = txn
        .open_table(META)
        .map_err(|e| table_error(path, "meta", e))?;
    let get = |key: &str| -> Result<Option<u64>, JournalError> {
        Ok(meta.get(key).map_err(corrupt(path))?.map(|v| v.value()))
    };
    let version = get(KEY_FORMAT_VERSION)?
        .ok_or_else(|| JournalError::not_journal(path, "meta table without a format version"))?;
    // JNL-5: one format version, checked before anything else is read.
    if version != FORMAT_VERSION {
        return Err(JournalError::Version {
            path: path.to_owned(),
            found: version,
            expected: FORMAT_VERSION,
        });
    }
    let next_index = get(KEY_NEXT_INDEX)?
        .ok_or_else(|| JournalError::corrupt(path, "meta table without next_index"))?;
    if next_index == 0 {
        return Err(JournalError::corrupt(
            path,
            "next_index is 0 (indices start at 1)",
        ));
    }
    let snapshot = match (
        get(KEY_SNAPSHOT_COVERS)?,
        get(KEY_SNAPSHOT_BYTES)?,
        get(KEY_SNAPSHOT_CHUNKS)?,
    ) {
        (None, None, None) => None,
        (Some(covers), Some(bytes), Some(chunks)) => Some((covers, bytes, chunks)),
        found => {
            return Err(JournalError::corrupt(
                path,
                format!("incomplete snapshot metadata (covers, bytes, chunks) = {found:?}"),
            ))
        }
    };
    if let Some((covers, _, _)) = snapshot {
        if covers >= next_index {
            return Err(JournalError::corrupt(
                path,
                format!("the snapshot covers up to record {covers} but next_index is {next_index}"),
            ));
        }
    }
    Ok(Summary {
        next_index,
        snapshot,
        records: 0,
    })
}

/// Reads and validates the whole journal: metadata, dense record indices after the snapshot
/// (JNL-1), the snapshot's chunks against its metadata (JNL-4).
pub(crate) fn load(db: &impl ReadableDatabase, path: &Path) -> Result<Loaded, JournalError> {
    guard(path, "reading the journal", || {
        let txn = db
            .begin_read()
            .map_err(|e| JournalError::corrupt(path, e.to_string()))?;
        let mut summary = read_meta(&txn, path)?;
        let covers = summary.snapshot.map_or(0, |(covers, _, _)| covers);

        let table = txn
            .open_table(RECORDS)
            .map_err(|e| table_error(path, "records", e))?;
        let mut records = Vec::new();
        let mut record_bytes = 0u64;
        let mut expected = covers + 1;
        for entry in table.iter().map_err(corrupt(path))? {
            let (key, value) = entry.map_err(corrupt(path))?;
            let index = key.value();
            if index <= covers {
                return Err(JournalError::corrupt(
                    path,
                    format!(
                        "record {index} is still in the log but the snapshot covers up to {covers}"
                    ),
                ));
            }
            // JNL-1: the log after the snapshot is exactly covers+1 ..= next_index-1.
            if index != expected || index >= summary.next_index {
                return Err(JournalError::Gap {
                    path: path.to_owned(),
                    expected,
                    found: Some(index),
                });
            }
            let bytes = value.value().to_vec();
            record_bytes += bytes.len() as u64;
            records.push((index, bytes));
            expected += 1;
        }
        if expected != summary.next_index {
            return Err(JournalError::Gap {
                path: path.to_owned(),
                expected,
                found: None,
            });
        }
        summary.records = records.len() as u64;

        let snapshot = match summary.snapshot {
            None => None,
            Some((covers, bytes, chunks)) => Some(Snapshot {
                covers,
                bytes: read_snapshot(&txn, path, bytes, chunks)?,
            }),
        };
        Ok(Loaded {
            summary,
            recovery: Recovery { snapshot, records },
            record_bytes,
        })
    })
}

fn read_snapshot(
    txn: &redb::ReadTransaction,
    path: &Path,
    bytes: u64,
    chunks: u64,
) -> Result<Vec<u8>, JournalError> {
    let table = txn
        .open_table(SNAPSHOT_CHUNKS)
        .map_err(|e| table_error(path, "snapshot_chunks", e))?;
    let capacity = usize::try_from(bytes)
        .map_err(|_| JournalError::corrupt(path, format!("snapshot of {bytes} bytes")))?;
    let mut out = Vec::with_capacity(capacity);
    let mut count = 0u64;
    for entry in table.iter().map_err(corrupt(path))? {
        let (key, value) = entry.map_err(corrupt(path))?;
        if key.value() != count {
            return Err(JournalError::corrupt(
                path,
                format!(
                    "snapshot chunk {count} is missing (found chunk {})",
                    key.value()
                ),
            ));
        }
        let chunk = value.value();
        if (out.len() + chunk.len()) as u64 > bytes {
            return Err(JournalError::corrupt(
                path,
                format!("the snapshot's chunks hold more than the {bytes} bytes recorded"),
            ));
        }
        out.extend_from_slice(chunk);
        count += 1;
    }
    if count != chunks || out.len() as u64 != bytes {
        return Err(JournalError::corrupt(
            path,
            format!(
                "the snapshot should have {chunks} chunks of {bytes} bytes in all, found {count} chunks of {} bytes",
                out.len()
            ),
        ));
    }
    Ok(out)
}
