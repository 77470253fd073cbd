//! Where the records of uploaded paths, blobs and tokens live: the replicated state of
//! this node's cluster (a cluster of one unless configured otherwise). Reads come from
//! this node's applied state; writes go through Raft (see [`crate::replication`]).

use std::sync::Arc;

use nix_formats::Hash;
use store::meta::{BlobRecord, PathRecord, TokenRecord};

use crate::error::ServerError;

pub struct Catalog(Arc<cluster::Node>);

impl From<cluster::RaftStoreError> for ServerError {
    fn from(e: cluster::RaftStoreError) -> Self {
        ServerError::Cluster(e)
    }
}

impl Catalog {
    pub fn new(node: Arc<cluster::Node>) -> Self {
        Catalog(node)
    }

    pub fn node(&self) -> &Arc<cluster::Node> {
        &self.0
    }

    /// Whether a path missing here is missing everywhere: this node is its cluster's
    /// only voter, so every acknowledged write was applied here first.
    pub fn misses_are_final(&self) -> bool {
        self.0.is_sole_voter()
    }

    /// Moves whenever a record changes (narinfo caches key on it).
    pub fn generation(&self) -> u64 {
        self.0.state().generation()
    }

    pub fn get_path(&self, hash_part: &str) -> Result<Option<PathRecord>, ServerError> {
        Ok(self.0.state().path(hash_part)?)
    }

    pub fn has_path(&self, hash_part: &str) -> Result<bool, ServerError> {
        Ok(self.0.state().path(hash_part)?.is_some())
    }

    /// The hash parts without a path record, in the order given.
    pub fn missing(&self, hash_parts: &[&str]) -> Result<Vec<String>, ServerError> {
        Ok(self.0.state().missing(hash_parts)?)
    }

    /// A blob that is durable and verified where it counts: registered with as many
    /// holders as a path needs.
    pub fn get_blob(&self, file_hash: &Hash) -> Result<Option<BlobRecord>, ServerError> {
        let n = &self.0;
        Ok(n.state()
            .blob(file_hash)?
            .filter(|e| e.holders.len() >= n.required_holders())
            .map(|e| e.blob))
    }

    pub fn path_count(&self) -> Result<u64, ServerError> {
        Ok(self.0.state().path_count()?)
    }

    /// The number of blobs and the bytes of one copy of each.
    pub fn blob_stats(&self) -> Result<(u64, u64), ServerError> {
        Ok(self.0.state().blob_stats()?)
    }

    pub fn token_by_secret_hash(&self, h: &[u8; 32]) -> Result<Option<TokenRecord>, ServerError> {
        Ok(self.0.state().token_by_secret_hash(h)?)
    }

    pub fn tokens(&self) -> Result<Vec<TokenRecord>, ServerError> {
        Ok(self.0.state().tokens()?)
    }
}
