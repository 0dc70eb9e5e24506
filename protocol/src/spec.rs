//! What to run: a [`WorkerDescriptor`] (the content-addressed package, named by its
//! [`WorkerId`]) and an [`ActionDef`] (one run of a worker with arguments, environment and
//! inputs), with the rules their paths and names follow.
//!
//! Validation here is lexical and pure, so the orchestrator refuses a bad submission before it
//! is journaled and the runner refuses it again before anything is written. Symlink escapes can
//! only be seen on disk; the runner checks those while materialising.
//!
//! The worker id is the BLAKE3 hash, in derive-key mode with the context
//! [`WORKER_ID_CONTEXT`], of this canonical form of the descriptor:
//!
//! ```text
//! str(s)     := len:u64 LE ‖ utf-8 bytes
//! canonical  := str(executable)
//!             ‖ n_files:u64 LE ‖ { str(path) ‖ hash[32] ‖ size:u64 LE ‖ executable:u8 }  by path
//!             ‖ n_dirs:u64 LE  ‖ { str(path) }                                           sorted
//!             ‖ n_env:u64 LE   ‖ { str(key) ‖ str(value) }                               by key
//! ```
//!
//! # Invariants
//! - **SPEC-1** A sandbox path is accepted only if it cannot leave the directory it is resolved
//!   against, lexically: non-empty, relative, at most [`MAX_PATH_LEN`] bytes, components
//!   separated by single `/`, none of them empty, `.` or `..`, no NUL byte.
//! - **SPEC-2** `WorkerId::of` depends on the descriptor's content only: the order of files and
//!   directories does not matter; any change of a path, hash, size, executable bit, directory,
//!   environment entry or the executable path gives another id. The id is pinned by a golden
//!   test.
//! - **SPEC-3** A valid descriptor or action names every path at most once and places no input
//!   in [`OUTPUTS_DIR`]; a descriptor's executable is one of its files with the executable bit
//!   set; environment names are non-empty without `=` or NUL; no argument or value contains NUL.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::cas::{hash_type, BlobHash};

/// Longest sandbox path accepted, in bytes (SPEC-1).
pub const MAX_PATH_LEN: usize = 4096;

/// The BLAKE3 derive-key context of [`WorkerId::of`] (SPEC-2).
pub const WORKER_ID_CONTEXT: &str = "procmesh 2025-01 worker descriptor v1";

/// Why a path may not be used inside a sandbox (SPEC-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum PathError {
    /// The path is empty.
    #[error("empty path")]
    Empty,
    /// The path starts with `/`.
    #[error("absolute path")]
    Absolute,
    /// A component is `..`.
    #[error("`..` leaves the sandbox")]
    ParentDir,
    /// A component is `.` or empty (`a//b`, a trailing `/`).
    #[error("`.` or empty component")]
    NotNormal,
    /// The path contains a NUL byte.
    #[error("NUL byte")]
    Nul,
    /// The path is longer than [`MAX_PATH_LEN`].
    #[error("longer than {MAX_PATH_LEN} bytes")]
    TooLong,
}

/// Checks that `path` stays inside the directory it is resolved against (SPEC-1).
pub fn validate_path(path: &str) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    if path.contains('\0') {
        return Err(PathError::Nul);
    }
    if path.starts_with('/') {
        return Err(PathError::Absolute);
    }
    for component in path.split('/') {
        match component {
            ".." => return Err(PathError::ParentDir),
            "" | "." => return Err(PathError::NotNormal),
            _ => {}
        }
    }
    Ok(())
}

/// Why a worker descriptor or an action is refused. Crosses the wire; each variant has a stable
/// [`code`](Self::code).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum SpecError {
    /// A path breaks SPEC-1.
    #[error("bad path {path:?}: {reason}")]
    Path {
        /// The path (cut to 200 characters).
        path: String,
        /// What is wrong with it.
        reason: PathError,
    },
    /// A path is named twice (SPEC-3).
    #[error("path {0:?} is named more than once")]
    DuplicatePath(String),
    /// The executable is not among the worker's files (SPEC-3).
    #[error("the executable {0:?} is not one of the worker's files")]
    MissingExecutable(String),
    /// The executable's file lacks the executable bit (SPEC-3).
    #[error("the executable {0:?} is not marked executable")]
    NotExecutable(String),
    /// An environment name is empty or contains `=` or NUL (SPEC-3).
    #[error("bad environment variable name {0:?}")]
    EnvName(String),
    /// An argument or environment value contains NUL (SPEC-3).
    #[error("{0} contains a NUL byte")]
    Nul(String),
    /// An input would be placed in the runner's own [`OUTPUTS_DIR`].
    #[error("input path {0:?} lies in the reserved Outputs/ directory")]
    Reserved(String),
    /// A trace context is not a W3C `traceparent`.
    #[error("bad traceparent {0:?}: expected 00-<32 hex>-<16 hex>-<2 hex>")]
    Traceparent(String),
    /// A host program path is not absolute and normalised.
    #[error("bad host program {path:?}: {reason}")]
    HostProgram {
        /// The path (cut to 200 characters).
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl SpecError {
    /// A stable, matchable code.
    pub const fn code(&self) -> &'static str {
        match self {
            SpecError::Path { .. } => "bad_path",
            SpecError::DuplicatePath(_) => "duplicate_path",
            SpecError::MissingExecutable(_) => "missing_executable",
            SpecError::NotExecutable(_) => "not_executable",
            SpecError::EnvName(_) => "bad_env_name",
            SpecError::Nul(_) => "nul_byte",
            SpecError::Reserved(_) => "reserved_path",
            SpecError::HostProgram { .. } => "bad_host_program",
            SpecError::Traceparent(_) => "bad_traceparent",
        }
    }
}

fn check_path(path: &str) -> Result<(), SpecError> {
    validate_path(path).map_err(|reason| SpecError::Path {
        path: path.chars().take(200).collect(),
        reason,
    })
}

/// A W3C `traceparent`: `<2 hex version>-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`,
/// lowercase, ids not all zero.
pub fn is_traceparent(text: &str) -> bool {
    let parts: Vec<&str> = text.split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    parts.len() == 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && parts[1].bytes().any(|b| b != b'0')
        && hex(parts[2], 16)
        && parts[2].bytes().any(|b| b != b'0')
        && hex(parts[3], 2)
}

/// A host program: absolute, no empty, `.` or `..` component, no NUL, at most 4096 bytes.
fn check_host_program(path: &str) -> Result<(), SpecError> {
    let bad = |reason: &str| SpecError::HostProgram {
        path: path.chars().take(200).collect(),
        reason: reason.into(),
    };
    let Some(rest) = path.strip_prefix('/') else {
        return Err(bad("not an absolute path"));
    };
    if path.len() > 4096 {
        return Err(bad("longer than 4096 bytes"));
    }
    if path.contains('\0') {
        return Err(bad("contains a NUL byte"));
    }
    if rest
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(bad("has an empty, `.` or `..` component"));
    }
    Ok(())
}

fn check_unique<'a>(seen: &mut BTreeSet<&'a str>, path: &'a str) -> Result<(), SpecError> {
    if seen.insert(path) {
        Ok(())
    } else {
        Err(SpecError::DuplicatePath(path.to_owned()))
    }
}

fn check_env(env: &BTreeMap<String, String>) -> Result<(), SpecError> {
    for (name, value) in env {
        if name.is_empty() || name.contains(['=', '\0']) {
            return Err(SpecError::EnvName(name.clone()));
        }
        if value.contains('\0') {
            return Err(SpecError::Nul(format!("environment variable {name}")));
        }
    }
    Ok(())
}

hash_type! {
    /// A worker's id: the hash of its descriptor ([`WorkerId::of`], SPEC-2).
    WorkerId
}

impl WorkerId {
    /// The id of `descriptor` (SPEC-2).
    pub fn of(descriptor: &WorkerDescriptor) -> WorkerId {
        fn put_str(h: &mut blake3::Hasher, s: &str) {
            h.update(&(s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        }
        let mut h = blake3::Hasher::new_derive_key(WORKER_ID_CONTEXT);
        put_str(&mut h, &descriptor.executable);

        let mut files: Vec<&WorkerFile> = descriptor.files.iter().collect();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        h.update(&(files.len() as u64).to_le_bytes());
        for file in files {
            put_str(&mut h, &file.path);
            h.update(file.hash.as_bytes());
            h.update(&file.size.to_le_bytes());
            h.update(&[u8::from(file.executable)]);
        }

        let mut dirs: Vec<&str> = descriptor.directories.iter().map(String::as_str).collect();
        dirs.sort_unstable();
        h.update(&(dirs.len() as u64).to_le_bytes());
        for dir in dirs {
            put_str(&mut h, dir);
        }

        h.update(&(descriptor.env.len() as u64).to_le_bytes());
        for (key, value) in &descriptor.env {
            put_str(&mut h, key);
            put_str(&mut h, value);
        }
        WorkerId::from_bytes(*h.finalize().as_bytes())
    }
}

/// One file of a worker package.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WorkerFile {
    /// Where it goes, relative to the worker directory (SPEC-1), e.g. `bin/tool`.
    pub path: String,
    /// Its content.
    pub hash: BlobHash,
    /// Its size in bytes.
    pub size: u64,
    /// Whether it gets the executable bit.
    #[serde(default)]
    pub executable: bool,
}

/// A worker package: files (some executable), empty directories, environment, and which file
/// to run. Registered once; its [`WorkerId`] is the hash of this descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerDescriptor {
    /// The file to run, relative to the worker directory, e.g. `bin/tool`.
    pub executable: String,
    /// Every file of the package.
    #[serde(default)]
    pub files: Vec<WorkerFile>,
    /// Directories to create even if no file lies in them, e.g. `cache`.
    #[serde(default)]
    pub directories: Vec<String>,
    /// Environment every action of this worker gets (an action's own entries win).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// An executable that already lives on the host, run instead of a file of the package, e.g.
    /// `/usr/bin/gcc`: an absolute, normalised path. A host runs it only if it resolves
    /// (symbolic links followed) under one of its `allowed_host_programs` roots; the package's
    /// files are still placed in the sandbox (sources, say), and `executable` is then empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_program: Option<String>,
}

impl WorkerDescriptor {
    /// The descriptor's id (SPEC-2).
    pub fn id(&self) -> WorkerId {
        WorkerId::of(self)
    }

    /// Checks SPEC-1 and SPEC-3.
    pub fn validate(&self) -> Result<(), SpecError> {
        let mut seen = BTreeSet::new();
        for file in &self.files {
            check_path(&file.path)?;
            check_unique(&mut seen, &file.path)?;
        }
        for dir in &self.directories {
            check_path(dir)?;
            check_unique(&mut seen, dir)?;
        }
        if let Some(program) = &self.host_program {
            check_host_program(program)?;
            if !self.executable.is_empty() {
                return Err(SpecError::HostProgram {
                    path: program.clone(),
                    reason: "a worker naming a host program has an empty executable".into(),
                });
            }
            return check_env(&self.env);
        }
        check_path(&self.executable)?;
        match self.files.iter().find(|f| f.path == self.executable) {
            None => return Err(SpecError::MissingExecutable(self.executable.clone())),
            Some(file) if !file.executable => {
                return Err(SpecError::NotExecutable(self.executable.clone()))
            }
            Some(_) => {}
        }
        check_env(&self.env)
    }

    /// The distinct blobs the package needs, in hash order.
    pub fn blobs(&self) -> Vec<BlobHash> {
        let set: BTreeSet<BlobHash> = self.files.iter().map(|f| f.hash).collect();
        set.into_iter().collect()
    }

    /// The sum of the file sizes.
    pub fn total_size(&self) -> u64 {
        self.files
            .iter()
            .map(|f| f.size)
            .fold(0, u64::saturating_add)
    }
}

/// An input file materialised into an action's sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct InputFile {
    /// Where it goes, relative to the sandbox (SPEC-1), e.g. `in/data.csv`.
    pub path: String,
    /// Its content.
    pub hash: BlobHash,
    /// Its size in bytes.
    pub size: u64,
}

/// A file an action left in its `Outputs/` directory, taken into the CAS.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OutputFile {
    /// Where it was, relative to `Outputs/`, e.g. `report.json`.
    pub path: String,
    /// Its content.
    pub hash: BlobHash,
    /// Its size in bytes.
    pub size: u64,
}

/// What an action expects to use: hints for placement, not enforced limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceHints {
    /// Logical CPUs it keeps busy.
    #[serde(default)]
    pub cores: Option<u32>,
    /// Peak memory it needs, in bytes.
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// Scratch disk it needs, in bytes.
    #[serde(default)]
    pub disk_bytes: Option<u64>,
    /// Labels a host must carry with these values to run it, e.g. `{"gpu": "a100"}`.
    #[serde(default)]
    pub host_labels: BTreeMap<String, String>,
}

/// One run of a worker: what a client submits (the orchestrator adds LSN, attempt and
/// priority to make an [`ActionSpec`](crate::messages::agent::ActionSpec)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionDef {
    /// The registered worker to run.
    pub worker: WorkerId,
    /// Arguments after the executable.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment on top of the worker's.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Files materialised into the sandbox before it starts.
    #[serde(default)]
    pub inputs: Vec<InputFile>,
    /// Wall-clock limit in milliseconds from start; `None` for none. At the limit the action is
    /// cancelled and ends `Failed`.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Placement hints.
    #[serde(default)]
    pub resources: ResourceHints,
    /// The W3C trace context of the submission (`traceparent`, e.g.
    /// `00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01`), handed to the action as
    /// `TRACEPARENT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl ActionDef {
    /// An action running `worker` with nothing else set.
    pub fn new(worker: WorkerId) -> ActionDef {
        ActionDef {
            worker,
            args: Vec::new(),
            env: BTreeMap::new(),
            inputs: Vec::new(),
            timeout_ms: None,
            resources: ResourceHints::default(),
            traceparent: None,
        }
    }

    /// Checks SPEC-1 and SPEC-3 for the inputs, arguments and environment. `Outputs/` is the
    /// runner's: an input may not be placed in it.
    pub fn validate(&self) -> Result<(), SpecError> {
        let mut seen = BTreeSet::new();
        for input in &self.inputs {
            check_path(&input.path)?;
            check_unique(&mut seen, &input.path)?;
            if input.path == OUTPUTS_DIR || input.path.starts_with("Outputs/") {
                return Err(SpecError::Reserved(input.path.clone()));
            }
        }
        for (i, arg) in self.args.iter().enumerate() {
            if arg.contains('\0') {
                return Err(SpecError::Nul(format!("argument {i}")));
            }
        }
        if let Some(tp) = &self.traceparent {
            if !is_traceparent(tp) {
                return Err(SpecError::Traceparent(tp.chars().take(80).collect()));
            }
        }
        check_env(&self.env)
    }

    /// The distinct input blobs, in hash order.
    pub fn blobs(&self) -> Vec<BlobHash> {
        let set: BTreeSet<BlobHash> = self.inputs.iter().map(|f| f.hash).collect();
        set.into_iter().collect()
    }
}

/// The sandbox directory an action fills with its outputs.
pub const OUTPUTS_DIR: &str = "Outputs";

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, content: &[u8], executable: bool) -> WorkerFile {
        WorkerFile {
            path: path.to_owned(),
            hash: BlobHash::of(content),
            size: content.len() as u64,
            executable,
        }
    }

    fn descriptor() -> WorkerDescriptor {
        WorkerDescriptor {
            executable: "bin/tool".into(),
            files: vec![
                file("bin/tool", b"#!/bin/sh\necho hi\n", true),
                file("share/data.txt", b"data", false),
            ],
            directories: vec!["cache".into()],
            env: BTreeMap::from([("LANG".into(), "C.UTF-8".into())]),
            host_program: None,
        }
    }

    // Attests SPEC-1
    #[test]
    fn paths_stay_inside() {
        for ok in ["a", "a/b", "a.b/c..d", "...", "Outputs2/x", "with space/ü"] {
            assert_eq!(validate_path(ok), Ok(()), "{ok:?}");
        }
        let long = "a".repeat(MAX_PATH_LEN + 1);
        for (bad, why) in [
            ("", PathError::Empty),
            ("/etc/passwd", PathError::Absolute),
            ("..", PathError::ParentDir),
            ("a/../../b", PathError::ParentDir),
            ("a/..", PathError::ParentDir),
            ("./a", PathError::NotNormal),
            ("a//b", PathError::NotNormal),
            ("a/", PathError::NotNormal),
            ("a\0b", PathError::Nul),
            (long.as_str(), PathError::TooLong),
        ] {
            assert_eq!(validate_path(bad), Err(why), "{bad:?}");
        }
    }

    // Attests SPEC-2
    #[test]
    fn worker_id_depends_on_content_only() {
        let d = descriptor();
        // Pinned: changing the canonical form changes every registered worker's id.
        assert_eq!(
            d.id().to_string(),
            "839338c9dd699b524d78884332c4d8ec7a1a0759f14236457a0d69ed37b9331b"
        );
        let mut reordered = d.clone();
        reordered.files.reverse();
        assert_eq!(reordered.id(), d.id());

        let changes: &[fn(&mut WorkerDescriptor)] = &[
            |d| d.executable = "share/data.txt".into(),
            |d| d.files[1].path = "share/data2.txt".into(),
            |d| d.files[1].hash = BlobHash::of(b"other"),
            |d| d.files[1].size += 1,
            |d| d.files[1].executable = true,
            |d| d.directories.push("tmp".into()),
            |d| {
                d.env.insert("LANG".into(), "C".into());
            },
            |d| {
                d.env.insert("X".into(), String::new());
            },
            // Length prefixes keep field boundaries apart.
            |d| {
                d.env = BTreeMap::from([("LANGC".into(), ".UTF-8".into())]);
            },
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut other = d.clone();
            change(&mut other);
            assert_ne!(other.id(), d.id(), "change {i} kept the id");
        }
    }

    // Attests SPEC-3
    #[test]
    fn descriptors_are_validated() {
        assert_eq!(descriptor().validate(), Ok(()));
        let mut d = descriptor();
        d.executable = "bin/missing".into();
        assert_eq!(
            d.validate(),
            Err(SpecError::MissingExecutable("bin/missing".into()))
        );
        let mut d = descriptor();
        d.files[0].executable = false;
        assert!(matches!(d.validate(), Err(SpecError::NotExecutable(_))));
        let mut d = descriptor();
        d.directories.push("share/data.txt".into());
        assert_eq!(
            d.validate(),
            Err(SpecError::DuplicatePath("share/data.txt".into()))
        );
        let mut d = descriptor();
        d.files[1].path = "../escape".into();
        let err = d.validate().unwrap_err();
        assert_eq!(err.code(), "bad_path");
        assert!(err.to_string().contains("leaves the sandbox"), "{err}");
        let mut d = descriptor();
        d.env.insert("A=B".into(), "x".into());
        assert_eq!(d.validate(), Err(SpecError::EnvName("A=B".into())));
    }

    // Attests SPEC-1, SPEC-3
    #[test]
    fn actions_are_validated() {
        let mut a = ActionDef::new(descriptor().id());
        a.inputs.push(InputFile {
            path: "in/x".into(),
            hash: BlobHash::of(b"x"),
            size: 1,
        });
        a.args.push("--flag".into());
        assert_eq!(a.validate(), Ok(()));
        let mut dup = a.clone();
        dup.inputs.push(dup.inputs[0].clone());
        assert_eq!(dup.validate(), Err(SpecError::DuplicatePath("in/x".into())));
        let mut outputs = a.clone();
        outputs.inputs[0].path = "Outputs/x".into();
        assert_eq!(
            outputs.validate(),
            Err(SpecError::Reserved("Outputs/x".into()))
        );
        let mut abs = a.clone();
        abs.inputs[0].path = "/x".into();
        assert!(matches!(
            abs.validate(),
            Err(SpecError::Path {
                reason: PathError::Absolute,
                ..
            })
        ));
        let mut nul = a.clone();
        nul.args.push("a\0b".into());
        assert_eq!(nul.validate(), Err(SpecError::Nul("argument 1".into())));
        assert_eq!(a.blobs(), vec![BlobHash::of(b"x")]);
    }

    #[test]
    fn host_programs_and_trace_contexts_are_validated() {
        let mut d = WorkerDescriptor {
            executable: String::new(),
            files: vec![file("src/x.c", b"int main;", false)],
            directories: Vec::new(),
            env: BTreeMap::new(),
            host_program: Some("/usr/bin/gcc".into()),
        };
        assert_eq!(d.validate(), Ok(()));
        for bad in [
            "usr/bin/gcc",
            "/usr/../bin/sh",
            "/usr//bin/gcc",
            "/usr/bin/./gcc",
            "/a\0b",
        ] {
            d.host_program = Some(bad.into());
            let err = d.validate().unwrap_err();
            assert_eq!(err.code(), "bad_host_program", "{bad:?}: {err}");
        }
        d.host_program = Some("/usr/bin/gcc".into());
        d.executable = "src/x.c".into();
        assert_eq!(d.validate().unwrap_err().code(), "bad_host_program");
        // Without a host program the descriptor (and so its id) is what it always was.
        let plain = descriptor();
        let bytes = rmp_serde::to_vec_named(&plain).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("host_program"));

        assert!(is_traceparent(
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        ));
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
        ] {
            assert!(!is_traceparent(bad), "{bad:?}");
        }
        let mut a = ActionDef::new(WorkerId::from_bytes([1; 32]));
        a.traceparent = Some("nope".into());
        assert_eq!(a.validate().unwrap_err().code(), "bad_traceparent");
    }
}
