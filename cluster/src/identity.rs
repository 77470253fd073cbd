//! The cluster identity on disk: which cluster this data directory belongs to and which
//! node of it this directory is. Written once, at `init` (a new cluster) or on joining
//! one, and checked at every start. This is what refuses a wiped node restarted under
//! its old id (its directory no longer holds the identity, so it cannot pass for the
//! node the others know) and a directory moved to the wrong machine or cluster.
//!
//! The file is `<dir>/cluster-id`, JSON: `{"cluster_id":"<32 hex digits>","node_id":N}`.
//! It is written to a temporary file, fsynced, then hard-linked into place (which fails
//! if the file exists, so two `init`s cannot both win) and the directory fsynced.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The name of the identity file inside a data directory.
pub const IDENTITY_FILE: &str = "cluster-id";

/// A cluster's random id: 128 bits as 32 lowercase hex digits. Every internal RPC will
/// carry it, so that a node never answers a stranger.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClusterId(String);

impl ClusterId {
    /// A fresh random id.
    pub fn random() -> Self {
        ClusterId(format!("{:032x}", rand::random::<u128>()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for ClusterId {
    type Error = IdentityError;

    /// Accepts exactly 32 lowercase hex digits.
    fn try_from(s: String) -> Result<Self, IdentityError> {
        if s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(ClusterId(s))
        } else {
            Err(IdentityError::BadClusterId)
        }
    }
}

impl std::str::FromStr for ClusterId {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, IdentityError> {
        ClusterId::try_from(s.to_string())
    }
}

impl From<ClusterId> for String {
    fn from(id: ClusterId) -> String {
        id.0
    }
}

/// Which cluster a data directory belongs to, and which node of it it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterIdentity {
    pub cluster_id: ClusterId,
    pub node_id: u64,
}

/// Why the identity file could not be written or does not match.
#[derive(Debug, Error)]
pub enum IdentityError {
    /// `init` on a directory that already belongs to a cluster.
    #[error("this data directory already belongs to cluster {cluster_id} as node {node_id}")]
    AlreadyInitialised { cluster_id: ClusterId, node_id: u64 },
    /// The directory holds no identity: never initialised, or wiped.
    #[error("this data directory has no cluster identity; initialise or join a cluster first")]
    NotInitialised,
    /// The directory is another node's.
    #[error("this data directory is node {found}'s, not node {expected}'s")]
    NodeMismatch { found: u64, expected: u64 },
    /// The directory belongs to another cluster.
    #[error("this data directory belongs to cluster {found}, not {expected}")]
    ClusterMismatch {
        found: ClusterId,
        expected: ClusterId,
    },
    /// A cluster id that is not 32 lowercase hex digits.
    #[error("a cluster id is 32 lowercase hex digits")]
    BadClusterId,
    #[error("the cluster identity file is unreadable")]
    Corrupt(#[source] serde_json::Error),
    #[error("cannot read or write the cluster identity file")]
    Io(#[from] io::Error),
}

impl ClusterIdentity {
    fn path(dir: &Path) -> PathBuf {
        dir.join(IDENTITY_FILE)
    }

    /// Makes `dir` node `node_id` of a new cluster with a random id. Fails if `dir`
    /// already has an identity.
    pub fn init_new(dir: &Path, node_id: u64) -> Result<Self, IdentityError> {
        Self::write_new(
            dir,
            ClusterIdentity {
                cluster_id: ClusterId::random(),
                node_id,
            },
        )
    }

    /// Makes `dir` node `node_id` of the existing cluster `cluster_id` (a node joining).
    /// Fails if `dir` already has an identity.
    pub fn init_joining(
        dir: &Path,
        cluster_id: ClusterId,
        node_id: u64,
    ) -> Result<Self, IdentityError> {
        Self::write_new(
            dir,
            ClusterIdentity {
                cluster_id,
                node_id,
            },
        )
    }

    /// The identity in `dir`, if it has one.
    pub fn load(dir: &Path) -> Result<Option<Self>, IdentityError> {
        let bytes = match fs::read(Self::path(dir)) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(IdentityError::Corrupt)
    }

    /// The identity in `dir`, checked: it must be node `node_id`'s and, when the caller
    /// knows it, cluster `cluster_id`'s. A directory with no identity is an error here,
    /// never an invitation to initialise: that decision belongs to the operator.
    pub fn open(
        dir: &Path,
        node_id: u64,
        cluster_id: Option<&ClusterId>,
    ) -> Result<Self, IdentityError> {
        let found = Self::load(dir)?.ok_or(IdentityError::NotInitialised)?;
        if found.node_id != node_id {
            return Err(IdentityError::NodeMismatch {
                found: found.node_id,
                expected: node_id,
            });
        }
        if let Some(expected) = cluster_id {
            if &found.cluster_id != expected {
                return Err(IdentityError::ClusterMismatch {
                    found: found.cluster_id,
                    expected: expected.clone(),
                });
            }
        }
        Ok(found)
    }

    fn write_new(dir: &Path, id: ClusterIdentity) -> Result<Self, IdentityError> {
        if let Some(existing) = Self::load(dir)? {
            return Err(IdentityError::AlreadyInitialised {
                cluster_id: existing.cluster_id,
                node_id: existing.node_id,
            });
        }
        fs::create_dir_all(dir)?;
        let text = serde_json::to_vec(&id).map_err(IdentityError::Corrupt)?;
        let tmp = dir.join(format!(
            ".{IDENTITY_FILE}.{:016x}.tmp",
            rand::random::<u64>()
        ));
        let result = (|| {
            let mut f = File::create_new(&tmp)?;
            f.write_all(&text)?;
            f.sync_all()?;
            // A hard link never replaces an existing file: of two racing inits, one fails.
            fs::hard_link(&tmp, Self::path(dir))
        })();
        let _ = fs::remove_file(&tmp);
        match result {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let existing = Self::load(dir)?.ok_or(IdentityError::NotInitialised)?;
                return Err(IdentityError::AlreadyInitialised {
                    cluster_id: existing.cluster_id,
                    node_id: existing.node_id,
                });
            }
            Err(e) => return Err(e.into()),
        }
        File::open(dir)?.sync_all()?;
        Ok(id)
    }
}
