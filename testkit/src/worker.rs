//! Workers made of one shell script, stored in a blob store.

use std::collections::BTreeMap;

use procmesh_protocol::spec::{WorkerDescriptor, WorkerFile};
use procmesh_transport::BlobStore;

/// A worker whose executable is one script: `run.sh` with no environment unless told
/// otherwise.
#[derive(Debug, Clone)]
pub struct ScriptWorker {
    path: String,
    script: String,
    env: BTreeMap<String, String>,
}

impl ScriptWorker {
    /// A worker running `script` exactly as given (it carries its own `#!` line).
    pub fn new(script: &str) -> ScriptWorker {
        ScriptWorker {
            path: "run.sh".into(),
            script: script.to_owned(),
            env: BTreeMap::new(),
        }
    }

    /// A worker running `#!/bin/sh`, then `body`, then a newline.
    pub fn sh(body: &str) -> ScriptWorker {
        ScriptWorker::new(&format!("#!/bin/sh\n{body}\n"))
    }

    /// Puts the script at `path` in the worker (default `run.sh`).
    pub fn at(mut self, path: &str) -> ScriptWorker {
        self.path = path.to_owned();
        self
    }

    /// Sets `key=value` in the worker's environment.
    pub fn env(mut self, key: &str, value: &str) -> ScriptWorker {
        self.env.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Stores the script in `store`; the worker's descriptor.
    pub async fn store(self, store: &BlobStore) -> WorkerDescriptor {
        let hash = store
            .put_bytes(self.script.as_bytes())
            .await
            .expect("store the script");
        WorkerDescriptor {
            executable: self.path.clone(),
            files: vec![WorkerFile {
                path: self.path,
                hash,
                size: self.script.len() as u64,
                executable: true,
            }],
            directories: Vec::new(),
            env: self.env,
            host_program: None,
        }
    }
}

/// A worker made of one `run.sh` holding `script`, stored in `store`.
pub async fn script_worker(store: &BlobStore, script: &str) -> WorkerDescriptor {
    ScriptWorker::new(script).store(store).await
}
