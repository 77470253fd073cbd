//! Where the records of uploaded paths, blobs and tokens live: the standalone cache
//! database (`cache.redb`), or the replicated state of a cluster node. Reads are the
//! same either way; writes to a cluster go through Raft (see [`crate::replication`]).

use std::sync::Arc;

use nix_formats::Hash;
use store::meta::{BlobRecord, CacheDb, PathRecord, TokenRecord};

use crate::error::ServerError;

pub enum Catalog {
    /// A standalone cache: one redb file, one durable transaction per commit.
    Local(CacheDb),
    /// A cluster node: reads from this node's applied state, writes through the leader.
    Cluster(Arc<cluster::Node>),
}

impl From<cluster::RaftStoreError> for ServerError {
    fn from(e: cluster::RaftStoreError) -> Self {
        ServerError::Cluster(e)
    }
}

impl Catalog {
    pub fn node(&self) -> Option<&Arc<cluster::Node>> {
        match self {
            Catalog::Local(_) => None,
            Catalog::Cluster(n) => Some(n),
        }
    }

    /// Moves whenever a record changes (narinfo caches key on it).
    pub fn generation(&self) -> u64 {
        match self {
            Catalog::Local(db) => db.generation(),
            Catalog::Cluster(n) => n.state().generation(),
        }
    }

    pub fn get_path(&self, hash_part: &str) -> Result<Option<PathRecord>, ServerError> {
        Ok(match self {
            Catalog::Local(db) => db.get_path(hash_part)?,
            Catalog::Cluster(n) => n.state().path(hash_part)?,
        })
    }

    pub fn has_path(&self, hash_part: &str) -> Result<bool, ServerError> {
        Ok(match self {
            Catalog::Local(db) => db.has_path(hash_part)?,
            Catalog::Cluster(n) => n.state().path(hash_part)?.is_some(),
        })
    }

    /// The hash parts without a path record, in the order given.
    pub fn missing(&self, hash_parts: &[&str]) -> Result<Vec<String>, ServerError> {
        Ok(match self {
            Catalog::Local(db) => db.missing(hash_parts)?,
            Catalog::Cluster(n) => n.state().missing(hash_parts)?,
        })
    }

    /// A blob that is durable and verified where it counts: stored here (standalone),
    /// or registered with as many holders as a path needs (cluster).
    pub fn get_blob(&self, file_hash: &Hash) -> Result<Option<BlobRecord>, ServerError> {
        Ok(match self {
            Catalog::Local(db) => db.get_blob(file_hash)?,
            Catalog::Cluster(n) => n
                .state()
                .blob(file_hash)?
                .filter(|e| e.holders.len() >= n.required_holders())
                .map(|e| e.blob),
        })
    }

    pub fn path_count(&self) -> Result<u64, ServerError> {
        Ok(match self {
            Catalog::Local(db) => db.path_count()?,
            Catalog::Cluster(n) => n.state().path_count()?,
        })
    }

    /// The number of blobs and the bytes of one copy of each.
    pub fn blob_stats(&self) -> Result<(u64, u64), ServerError> {
        Ok(match self {
            Catalog::Local(db) => db.blob_stats()?,
            Catalog::Cluster(n) => n.state().blob_stats()?,
        })
    }

    pub fn token_by_secret_hash(&self, h: &[u8; 32]) -> Result<Option<TokenRecord>, ServerError> {
        Ok(match self {
            Catalog::Local(db) => db.token_by_secret_hash(h)?,
            Catalog::Cluster(n) => n.state().token_by_secret_hash(h)?,
        })
    }

    pub fn tokens(&self) -> Result<Vec<TokenRecord>, ServerError> {
        Ok(match self {
            Catalog::Local(db) => db.tokens()?,
            Catalog::Cluster(n) => n.state().tokens()?,
        })
    }
}
