//! How a [`Journal`](super::Journal) commits: [`Durability`] and [`JournalOptions`].

use std::fmt;
use std::str::FromStr;

use super::error::ParseDurabilityError;

/// Whether a commit waits for the disk.
///
/// Parsed from and displayed as `"fsync"` / `"none"`, in config files too (serde, lowercase).
///
/// ```text
/// [journal]
/// durability = "fsync"   # or "none" for tests and benches on tmpfs
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Every commit is fsynced before `append`/`snapshot` returns (redb's
    /// `Durability::Immediate`). A crash loses nothing that was acknowledged. The default.
    #[default]
    Fsync,
    /// No fsync (redb's `Durability::None`): commits are visible at once but reach the disk only
    /// with a later durable commit or a clean close. A crash (of the process or the machine) may
    /// lose the last commits; what survives is still a consistent prefix. For tests and
    /// benchmarks on tmpfs only.
    None,
}

impl Durability {
    /// The config name: `"fsync"` or `"none"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Fsync => "fsync",
            Durability::None => "none",
        }
    }

    pub(crate) fn to_redb(self) -> redb::Durability {
        match self {
            Durability::Fsync => redb::Durability::Immediate,
            Durability::None => redb::Durability::None,
        }
    }
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Durability {
    type Err = ParseDurabilityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fsync" => Ok(Durability::Fsync),
            "none" => Ok(Durability::None),
            other => Err(ParseDurabilityError(other.to_owned())),
        }
    }
}

/// How to open a [`Journal`](super::Journal). `Default` is what production uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JournalOptions {
    /// Whether commits are fsynced. Default [`Durability::Fsync`].
    pub durability: Durability,
}
