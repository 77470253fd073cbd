//! Cairn's cluster: the replicated metadata of the cache.
//!
//! - [`command`]: what is replicated ([`Command`], [`Response`], [`BlobEntry`], pins,
//!   retention settings; path and token records are [`store::meta`]'s);
//! - [`state`]: the state machine's tables and rules, and [`ClusterState`], the read
//!   API the HTTP layer serves from;
//! - [`raft`]: openraft's type configuration and storage over redb (the only module
//!   that names openraft);
//! - [`gc`]: which paths the retention settings and pins let go;
//! - [`identity`]: the cluster id and node id on disk, written once;
//! - [`secret`]: the shared secret that authenticates node-to-node traffic;
//! - [`net`]: the internal HTTP API's client side and openraft's network over it;
//! - [`node`]: a running node: Raft started over the storage and network, writes that
//!   find the leader, read barriers, membership changes.
//!
//! A path becomes visible only when its blob has enough registered holders: by default
//! `min(2, voters)` (see [`HolderRule`]), so the default single-node deployment works and
//! a cluster of three keeps two replicas of every visible NAR.
//!
//! Blob copies, repair and the internal API's server side live in `cache-server`,
//! which owns the blob store and the HTTP listeners.

pub mod command;
pub mod error;
pub mod gc;
pub mod identity;
pub mod net;
pub mod node;
pub mod raft;
pub mod secret;
pub mod state;

pub use command::{
    Applied, BlobEntry, Command, GcVictim, NodeId, PinRecord, Rejection, Response,
    RetentionSettings,
};
pub use error::RaftStoreError;
pub use identity::{ClusterId, ClusterIdentity, IdentityError};
pub use net::{CallError, Wire};
pub use node::{Member, MembershipChange, Node, NodeConfig, NodeError, WriteError};
pub use raft::{
    ClusterNode, LogStore, Snapshot, SnapshotFile, SnapshotMeta, StateMachineStore, TypeConfig,
    Vote,
};
pub use secret::{ClusterSecret, SecretError};
pub use state::{ClusterState, HolderRule};
