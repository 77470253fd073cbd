//! The error type of the cluster's storage: the Raft log, the state machine and its
//! snapshots. Texts are short and fixed; the detail (redb, serde or OS error, which
//! may name paths) is the `source()`, for the log.

use std::io;

use thiserror::Error;

/// Why reading or writing the cluster's Raft storage failed.
#[derive(Debug, Error)]
pub enum RaftStoreError {
    /// Another process (or another handle in this one) has the file open.
    #[error("the raft database is in use")]
    InUse,
    /// The file could not be created or read, or is not a redb database we can use.
    #[error("cannot open the raft database")]
    Open(#[source] redb::DatabaseError),
    /// The file was written by a newer Cairn.
    #[error("the raft database has format {found}; this Cairn reads format {supported}")]
    Schema { found: u64, supported: u64 },
    #[error("raft database transaction failed")]
    Transaction(#[from] redb::TransactionError),
    #[error("raft database table unavailable")]
    Table(#[from] redb::TableError),
    #[error("raft database storage failed")]
    Storage(#[from] redb::StorageError),
    #[error("raft database commit failed")]
    Commit(#[from] redb::CommitError),
    #[error("raft database durability setting refused")]
    Durability(#[from] redb::SetDurabilityError),
    /// A stored record does not decode.
    #[error("the raft database holds an unreadable {what} record")]
    Corrupt {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// A record does not serialise (never expected: records are plain data).
    #[error("a {what} record does not encode")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// The log holds a hole or an entry at the wrong index.
    #[error("the raft log is not contiguous at index {index}")]
    LogHole { index: u64 },
    /// Reading or writing a snapshot file or a data directory failed.
    #[error("raft storage file I/O failed")]
    Io(#[from] io::Error),
    /// A snapshot file is truncated, altered, or not a snapshot.
    #[error("the snapshot is malformed: {0}")]
    BadSnapshot(&'static str),
    /// A blocking storage task panicked or was cancelled.
    #[error("a storage task did not finish")]
    TaskLost,
}

impl From<redb::DatabaseError> for RaftStoreError {
    fn from(e: redb::DatabaseError) -> Self {
        match e {
            redb::DatabaseError::DatabaseAlreadyOpen => RaftStoreError::InUse,
            e => RaftStoreError::Open(e),
        }
    }
}

impl From<RaftStoreError> for io::Error {
    /// openraft's storage traits speak `io::Error`; the typed error rides inside it.
    fn from(e: RaftStoreError) -> Self {
        match e {
            RaftStoreError::Io(e) => e,
            e => io::Error::other(e),
        }
    }
}

pub(crate) fn encode(
    what: &'static str,
    rec: &impl serde::Serialize,
) -> Result<Vec<u8>, RaftStoreError> {
    serde_json::to_vec(rec).map_err(|source| RaftStoreError::Encode { what, source })
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, RaftStoreError> {
    serde_json::from_slice(bytes).map_err(|source| RaftStoreError::Corrupt { what, source })
}

/// Runs blocking storage work (redb, files) off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RaftStoreError> + Send + 'static,
) -> Result<T, RaftStoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| RaftStoreError::TaskLost)?
}
