//! The storage side of openraft (with [`crate::net`] and [`crate::node`], the only code
//! that names openraft; other crates use the aliases here). It fixes the type configuration ([`TypeConfig`]:
//! node ids are `u64`, a node is its [`ClusterNode`] address, log entries carry a
//! [`Command`] and yield a [`Response`]) and implements
//! openraft's storage traits over redb:
//!
//! - [`LogStore`]: the Raft log, the vote and the committed log id in `raft-log.redb`
//!   (`RaftLogStorage` + `RaftLogReader`);
//! - [`StateMachineStore`]: the state machine in `raft-state.redb` and its snapshots
//!   under `snapshots/` (`RaftStateMachine` + `RaftSnapshotBuilder`), with
//!   [`SnapshotFile`] as the snapshot data: a file, never one in-memory blob.
//!
//! openraft 0.10 is an alpha pinned exactly in the workspace: its traits and the serde
//! form of its log ids, votes and membership (which we store) may change between
//! releases, so an upgrade is a deliberate step with the storage suite run again.

mod log_store;
mod snapshot;
mod state_machine;

use redb::{ReadTransaction, ReadableTable};
use serde::{Deserialize, Serialize};

pub use log_store::LogStore;
pub use snapshot::SnapshotFile;
pub use state_machine::{StateMachineStore, StateSnapshotBuilder};

use crate::command::{Command, Response};
use crate::error::{decode, RaftStoreError};
use crate::state::META;

/// What the cluster knows of a node besides its id: where its peers reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterNode {
    /// The node's address on the cluster network, as `host:port`.
    pub addr: String,
}

openraft::declare_raft_types!(
    /// Cairn's Raft types.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = u64,
        Node = ClusterNode,
);

pub(crate) type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
pub(crate) type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
pub(crate) type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
pub type Snapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, SnapshotFile>;

/// openraft's RPC messages, as the internal API's server side decodes them.
pub type AppendRequest = openraft::raft::AppendEntriesRequest<TypeConfig>;
pub type VoteRequest = openraft::raft::VoteRequest<TypeConfig>;

pub(crate) const LAST_APPLIED_KEY: &str = "last_applied";
pub(crate) const MEMBERSHIP_KEY: &str = "membership";

/// The last applied log id and membership recorded in the state database.
pub(crate) fn applied_state(
    tx: &ReadTransaction,
) -> Result<(Option<LogId>, StoredMembership), RaftStoreError> {
    applied_state_in(&tx.open_table(META)?)
}

/// [`applied_state`] from an open `meta` table (of a read or a write transaction).
pub(crate) fn applied_state_in(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<(Option<LogId>, StoredMembership), RaftStoreError> {
    let last = match meta.get(LAST_APPLIED_KEY)? {
        Some(v) => decode("last applied log id", v.value())?,
        None => None,
    };
    let membership = match meta.get(MEMBERSHIP_KEY)? {
        Some(v) => decode("membership", v.value())?,
        None => StoredMembership::default(),
    };
    Ok((last, membership))
}

/// The index of the last applied entry.
pub(crate) fn applied_index(tx: &ReadTransaction) -> Result<Option<u64>, RaftStoreError> {
    Ok(applied_state(tx)?.0.map(|id| id.index))
}
