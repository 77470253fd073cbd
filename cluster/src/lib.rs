//! Cairn's cluster: the replicated metadata of the cache.
//!
//! - [`command`]: what is replicated ([`Command`], [`Response`], [`BlobEntry`], pins,
//!   retention settings; path and token records are [`store::meta`]'s);
//! - [`state`]: the state machine's tables and rules, and [`ClusterState`], the read
//!   API the HTTP layer serves from;
//! - [`raft`]: openraft's type configuration and storage over redb (the only module
//!   that names openraft);
//! - [`identity`]: the cluster id and node id on disk, written once.
//!
//! A path becomes visible only when its blob has enough registered holders: by default
//! `min(2, voters)` (see [`HolderRule`]), so the default single-node deployment works and
//! a cluster of three keeps two replicas of every visible NAR.
//!
//! Not here yet: the Raft network (internal RPCs), blob replication, repair and GC.

pub mod command;
pub mod error;
pub mod identity;
pub mod raft;
pub mod state;

pub use command::{
    Applied, BlobEntry, Command, NodeId, PinRecord, Rejection, Response, RetentionSettings,
};
pub use error::RaftStoreError;
pub use identity::{ClusterId, ClusterIdentity, IdentityError};
pub use raft::{ClusterNode, LogStore, SnapshotFile, StateMachineStore, TypeConfig};
pub use state::{ClusterState, HolderRule};
