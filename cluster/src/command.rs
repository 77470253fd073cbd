//! The replicated metadata: what the state machine holds ([`BlobEntry`], [`PinRecord`],
//! [`RetentionSettings`], and the path and token records of [`store::meta`]) and the
//! [`Command`]s that change it, with their [`Response`].
//!
//! Every command is deterministic and idempotent: it carries every value it writes,
//! timestamps included (the proposer stamps them; the applying node's clock is never
//! read), and applying it a second time leaves the state as the first time did. A
//! command the state refuses (a path whose blob has too few holders, say) is not an
//! error: it is applied as a no-op whose response is a [`Rejection`], so Raft goes on.

use std::collections::BTreeMap;
use std::fmt;

use nix_formats::Hash;
use serde::{Deserialize, Serialize};
use store::meta::{BlobRecord, PathRecord, TokenRecord};

/// A Raft node id.
pub type NodeId = u64;

/// A blob as the cluster knows it: what was verified at ingest, and which nodes hold a
/// durable, verified copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobEntry {
    pub blob: BlobRecord,
    /// The nodes holding a copy, with when each registered it (Unix seconds, stamped
    /// by the proposer).
    pub holders: BTreeMap<NodeId, u64>,
    /// How many path records name this blob as their NAR.
    pub refcount: u64,
    /// The log index of the command that last changed this entry: moves on every
    /// change, and is the same on every node.
    pub generation: u64,
    /// When the last path naming this blob went (Unix seconds, from the command that
    /// removed or repointed it); `None` while a path names it. Orphan sweeps wait out
    /// their grace period from here, so a NAR whose narinfo a client fetched just before
    /// GC can still be downloaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreferenced_since: Option<u64>,
}

impl BlobEntry {
    /// Whether a path names this blob and fewer than `target` of `members` hold a copy
    /// (copies on nodes that left the cluster do not count; a blob no path names is an
    /// orphan on its way out, never under-replicated).
    pub fn under_replicated(&self, members: &[NodeId], target: usize) -> bool {
        self.refcount > 0 && self.holders.keys().filter(|h| members.contains(h)).count() < target
    }
}

/// A pinned store path: GC keeps it and its closure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinRecord {
    /// The store path's hash part (32 nix32 characters); the key.
    pub hash_part: String,
    /// Free text for operators (`cachectl pin --reason`).
    #[serde(default)]
    pub reason: Option<String>,
    /// Unix seconds, stamped by the proposer.
    pub pinned: u64,
}

/// What GC keeps. Absent values mean "no limit of this kind".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    /// Paths registered longer ago than this (seconds) may go.
    #[serde(default)]
    pub max_age_secs: Option<u64>,
    /// Paths not served for this long (seconds) may go.
    #[serde(default)]
    pub max_idle_secs: Option<u64>,
    /// GC starts when the blob store holds more than this many bytes...
    #[serde(default)]
    pub high_watermark_bytes: Option<u64>,
    /// ...and stops once it holds fewer than this.
    #[serde(default)]
    pub low_watermark_bytes: Option<u64>,
    /// How long an unreferenced blob stays on disk before deletion (seconds).
    #[serde(default)]
    pub blob_grace_secs: u64,
    /// Unix seconds, stamped by the proposer.
    #[serde(default)]
    pub set_at: u64,
}

/// A change to the replicated metadata: the application data of a Raft log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Makes a path visible (its narinfo). Accepted only when its blob has at least the
    /// required number of holders and the blob's NarHash/NarSize equal the path's.
    /// Replaces any record of the same store path.
    PutPath {
        path: PathRecord,
        /// Hash parts of the references the upload found in the cluster's state: each
        /// must still be there when the entry is applied (GC may have deleted one since
        /// the upload checked), else the path is refused.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        requires: Vec<String>,
    },
    /// Records that `node` holds a durable, verified copy of `blob`. Creates the blob
    /// entry on first registration; later registrations must agree with it.
    RegisterHolder {
        blob: BlobRecord,
        node: NodeId,
        /// Unix seconds, stamped by the proposer.
        at: u64,
    },
    /// An upload in one entry: registers every node in `holders` as holding a durable,
    /// verified copy of `blob` (as [`Command::RegisterHolder`] would, in order), then,
    /// when there is one, puts `path` (as [`Command::PutPath`] would, against the
    /// holders just registered). Registrations that succeed stay even when the path is
    /// refused: the copies are real either way.
    CommitUpload {
        blob: BlobRecord,
        holders: Vec<NodeId>,
        /// Unix seconds, stamped by the proposer.
        at: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<PathRecord>,
        /// As [`Command::PutPath`]'s, for `path`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        requires: Vec<String>,
    },
    /// Records that `node` no longer holds the blob (sent before its file is deleted).
    /// A blob with no holders and no paths naming it is forgotten.
    UnregisterHolder {
        #[serde(with = "hash_text")]
        file_hash: Hash,
        node: NodeId,
        /// GC's form: refused (a no-op answering [`Rejection::StillReferenced`]) while a
        /// path names the blob, so a path committed a moment before never loses a copy
        /// to a sweep that read an older state.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        only_if_unreferenced: bool,
    },
    /// Stores a token; a record with the same id or secret hash is replaced.
    PutToken { token: TokenRecord },
    /// Marks the token `id` revoked.
    RevokeToken { id: String },
    /// Pins a path (by hash part); pinning again replaces the reason and time.
    Pin { pin: PinRecord },
    /// Removes a pin.
    Unpin { hash_part: String },
    /// Replaces the retention settings.
    SetRetention { settings: RetentionSettings },
    /// Records that these paths were served at `at` (Unix seconds, stamped by the
    /// proposer). A path's recorded access only moves forward; unknown paths are skipped.
    Touch { hash_parts: Vec<String>, at: u64 },
    /// GC's deletion of paths it planned from an older state. A victim is deleted only
    /// if, when this entry is applied, it still exists with the stamp the plan saw
    /// (neither re-uploaded nor served since), is not pinned, and no path that stays
    /// references it; the rest are kept. The blobs of deleted paths lose a reference;
    /// one no path names any more is marked unreferenced at `at` and left to the orphan
    /// sweep's grace period.
    DeletePaths { victims: Vec<GcVictim>, at: u64 },
}

/// A path GC plans to delete, with the stamp it planned from: the later of its
/// registration and its last recorded access.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcVictim {
    pub hash_part: String,
    pub stamp: u64,
}

impl Command {
    /// The hash part of the path this command records, if it records one.
    pub fn path_hash_part(&self) -> Option<String> {
        match self {
            Command::PutPath { path, .. }
            | Command::CommitUpload {
                path: Some(path), ..
            } => Some(path.store_path.hash_part()),
            _ => None,
        }
    }
}

/// A short summary for logs: names what changes, never a secret.
impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::PutPath { path, .. } => write!(f, "put_path {}", path.store_path),
            Command::RegisterHolder { blob, node, .. } => {
                write!(f, "register_holder {} node {node}", blob.file_hash)
            }
            Command::CommitUpload {
                blob,
                holders,
                path,
                ..
            } => {
                write!(f, "commit_upload {} nodes {holders:?}", blob.file_hash)?;
                match path {
                    Some(p) => write!(f, " path {}", p.store_path),
                    None => Ok(()),
                }
            }
            Command::UnregisterHolder {
                file_hash, node, ..
            } => {
                write!(f, "unregister_holder {file_hash} node {node}")
            }
            Command::PutToken { token } => write!(f, "put_token {}", token.id),
            Command::RevokeToken { id } => write!(f, "revoke_token {id}"),
            Command::Pin { pin } => write!(f, "pin {}", pin.hash_part),
            Command::Unpin { hash_part } => write!(f, "unpin {hash_part}"),
            Command::SetRetention { .. } => f.write_str("set_retention"),
            Command::Touch { hash_parts, .. } => write!(f, "touch {} path(s)", hash_parts.len()),
            Command::DeletePaths { victims, .. } => {
                write!(f, "delete_paths {} path(s)", victims.len())
            }
        }
    }
}

/// What applying an entry did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "applied", rename_all = "snake_case")]
pub enum Applied {
    /// A blank or membership entry: nothing of ours changed.
    Nothing,
    PathStored {
        /// A record of the same store path was there before.
        replaced: bool,
    },
    HolderRegistered {
        holders: usize,
    },
    HolderUnregistered {
        holders: usize,
        /// The blob had no holders and no paths left, and was forgotten.
        blob_forgotten: bool,
    },
    TokenStored,
    TokenRevoked {
        /// False when no token has that id.
        found: bool,
    },
    Pinned,
    Unpinned {
        was_pinned: bool,
    },
    RetentionSet,
    Touched {
        /// How many of the named paths exist.
        paths: usize,
    },
    PathsDeleted {
        deleted: usize,
        /// Victims kept because they changed since the plan, were pinned, were gone
        /// already, or are referenced by a path that stays.
        kept: usize,
    },
}

/// Why the state machine refused a command. The state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "rejected", rename_all = "snake_case")]
pub enum Rejection {
    /// A path names a blob no node has registered.
    #[error("blob {file_hash} is not registered")]
    UnknownBlob { file_hash: String },
    /// A path's blob has fewer holders than required (invariant 1).
    #[error("blob {file_hash} has {holders} holder(s); {required} required")]
    TooFewHolders {
        file_hash: String,
        holders: usize,
        required: usize,
    },
    /// A path's NarHash/NarSize differ from what was verified at ingest (invariant 4).
    #[error("the NarHash/NarSize of the path differ from blob {file_hash}'s")]
    NarMismatch { file_hash: String },
    /// A path names a path that is gone (GC deleted it after the upload checked).
    #[error("reference {hash_part} is no longer in the cache; upload it again")]
    MissingReference { hash_part: String },
    /// A GC unregistration of a blob that a path names again.
    #[error("blob {file_hash} is named by a path")]
    StillReferenced { file_hash: String },
    /// A holder registration describes the blob differently from its record.
    #[error("blob {file_hash} is recorded with other sizes, compression or NarHash")]
    BlobConflict { file_hash: String },
}

/// The outcome of one applied command.
pub type Response = Result<Applied, Rejection>;

/// A hash as its narinfo text (`sha256:<nix32>`).
pub(crate) mod hash_text {
    use nix_formats::Hash;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(h: &Hash, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(h)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Hash, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
