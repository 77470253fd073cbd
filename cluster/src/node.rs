//! A running cluster node: openraft over our storage and network, the identity check,
//! writes that find the leader, read barriers that confirm misses, and membership
//! changes. The HTTP layer (`cache-server`) serves the internal API on top of this and
//! calls [`Node::write`] for every change of the replicated metadata.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, RaftError};
use openraft::raft::ReadPolicy;
use openraft::storage::RaftLogStorage;
use openraft::{ChangeMembers, RaftLogReader};
use parking_lot::RwLock;
use reqwest::Method;
use serde::{Deserialize, Serialize};

use crate::command::{Command, NodeId, Response};
use crate::error::RaftStoreError;
use crate::identity::{ClusterId, ClusterIdentity, IdentityError};
use crate::net::{send_json, CallError, Network, Wire};
use crate::raft::{ClusterNode, LogStore, StateMachineStore, TypeConfig};
use crate::secret::ClusterSecret;
use crate::state::{ClusterState, HolderRule};

/// The openraft handle over Cairn's storage.
pub type Raft = openraft::Raft<TypeConfig, StateMachineStore>;

/// How a node runs. Every node of a cluster must use the same `rule`.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: NodeId,
    /// Where the identity, the Raft log, the state machine and its snapshots live.
    pub dir: PathBuf,
    /// `host:port` of this node's cluster listener, as its peers reach it.
    pub advertise: String,
    pub secret: ClusterSecret,
    pub rule: HolderRule,
    /// Raft timing. Elections wait at least `election_timeout_ms.0` without a heartbeat;
    /// size it above the worst fsync stall of the Raft disk under a multi-GB write.
    pub heartbeat_ms: u64,
    pub election_timeout_ms: (u64, u64),
    /// A snapshot is built after this many entries since the last one.
    pub snapshot_logs: u64,
    /// How long a write waits for a leader and a quorum before giving up.
    pub write_timeout: Duration,
}

impl NodeConfig {
    pub fn new(node_id: NodeId, dir: &Path, advertise: String, secret: ClusterSecret) -> Self {
        NodeConfig {
            node_id,
            dir: dir.to_path_buf(),
            advertise,
            secret,
            rule: HolderRule::default(),
            heartbeat_ms: 250,
            election_timeout_ms: (1000, 2000),
            snapshot_logs: 10_000,
            write_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Store(#[from] RaftStoreError),
    /// Raft files without an identity file: the identity was deleted, or the files were
    /// copied from another node. Starting would let this node vote twice in a term.
    #[error("{dir} holds Raft state but no cluster identity; refusing to start (restore the identity file or wipe the directory and rejoin under a new node id)")]
    OrphanRaftState { dir: String },
    #[error("raft: {0}")]
    Raft(String),
    /// Started as a cluster of one over the state of a larger cluster.
    #[error("{dir} holds the Raft state of a cluster with nodes {members:?}, but this node was started without its [cluster] section; give it back")]
    NotAlone { dir: String, members: Vec<NodeId> },
}

/// Why a write (or a read barrier) did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// No leader answered in time: the cluster has no quorum reachable from here.
    #[error("the cluster has no reachable leader with a quorum: {0}")]
    Unavailable(String),
    /// This node belongs to no cluster yet.
    #[error(
        "this node is not part of a cluster yet (cachectl cluster init, or add it from the leader)"
    )]
    NotJoined,
    /// The leader refused the request for a reason of its own (a membership change that
    /// is not allowed, say).
    #[error("{0}")]
    Refused(String),
}

/// A membership change, as forwarded to the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum MembershipChange {
    /// Adds `node_id` at `addr` as a learner, waits until it has caught up, then makes
    /// it a voter.
    Add { node_id: NodeId, addr: String },
    /// Removes `node_id` from the voters and learners.
    Remove { node_id: NodeId },
}

/// One member as the current membership lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub node_id: NodeId,
    pub addr: String,
    pub voter: bool,
}

/// What a forwarded write answers when this node is not the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NotLeader {
    pub leader: Option<NodeId>,
}

/// A running node. See the module docs.
pub struct Node {
    config: NodeConfig,
    raft: Raft,
    state: ClusterState,
    wire: Wire,
    identity: RwLock<Option<ClusterIdentity>>,
    /// When the last completed read barrier started: callers that arrived before it
    /// started share its result (misses are confirmed in batches).
    barrier: tokio::sync::Mutex<Option<Instant>>,
    /// Read barrier rounds made (each one read index asked of the leader).
    barrier_rounds: std::sync::atomic::AtomicU64,
    started: Instant,
    /// Whether this node is its cluster's only voter, kept current from the server
    /// metrics (which change with the role and the membership, not with every entry):
    /// asked on every narinfo miss.
    sole_voter: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("node_id", &self.config.node_id)
            .field("advertise", &self.config.advertise)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Opens the node's storage and starts Raft. A directory with an identity must be
    /// this node's; one without must hold no Raft state (a fresh node, waiting to be
    /// initialised or added; it refuses Raft traffic until then).
    pub async fn start(config: NodeConfig) -> Result<Arc<Node>, NodeError> {
        std::fs::create_dir_all(&config.dir).map_err(RaftStoreError::Io)?;
        let identity = match ClusterIdentity::load(&config.dir)? {
            Some(found) if found.node_id != config.node_id => {
                return Err(IdentityError::NodeMismatch {
                    found: found.node_id,
                    expected: config.node_id,
                }
                .into())
            }
            other => other,
        };
        let mut log = LogStore::open(&config.dir)?;
        if identity.is_none() {
            let state = log
                .get_log_state()
                .await
                .map_err(|e| NodeError::Raft(e.to_string()))?;
            let vote = log
                .read_vote()
                .await
                .map_err(|e| NodeError::Raft(e.to_string()))?;
            if state.last_log_id.is_some() || vote.is_some() {
                return Err(NodeError::OrphanRaftState {
                    dir: config.dir.display().to_string(),
                });
            }
        }
        let sm = StateMachineStore::open(&config.dir, config.rule)?;
        let state = sm.state();
        let wire = Wire::new(
            config.node_id,
            config.secret.clone(),
            identity.as_ref().map(|i| i.cluster_id.clone()),
        );
        let raft_config = openraft::Config {
            cluster_name: "cairn".to_string(),
            heartbeat_interval: config.heartbeat_ms,
            election_timeout_min: config.election_timeout_ms.0,
            election_timeout_max: config.election_timeout_ms.1,
            install_snapshot_timeout: 120_000,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_logs),
            max_in_snapshot_log_to_keep: config.snapshot_logs / 2,
            ..Default::default()
        }
        .validate()
        .map_err(|e| NodeError::Raft(e.to_string()))?;
        let raft = Raft::new(
            config.node_id,
            Arc::new(raft_config),
            Network::new(wire.clone()),
            log,
            sm,
        )
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))?;
        let sole_voter = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, me, mut watch) = (sole_voter.clone(), config.node_id, raft.server_metrics());
        tokio::spawn(async move {
            loop {
                let sole = {
                    let m = watch.borrow_watched();
                    let mut voters = m.membership_config.voter_ids();
                    voters.next() == Some(me) && voters.next().is_none()
                };
                flag.store(sole, std::sync::atomic::Ordering::Release);
                if watch.changed().await.is_err() {
                    break;
                }
            }
        });
        Ok(Arc::new(Node {
            config,
            raft,
            state,
            wire,
            identity: RwLock::new(identity),
            barrier: tokio::sync::Mutex::new(None),
            barrier_rounds: Default::default(),
            sole_voter,
            started: Instant::now(),
        }))
    }

    pub fn id(&self) -> NodeId {
        self.config.node_id
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    pub fn wire(&self) -> &Wire {
        &self.wire
    }

    pub fn identity(&self) -> Option<ClusterIdentity> {
        self.identity.read().clone()
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Makes this node the first of a new cluster: writes a fresh identity (once;
    /// repeating `init` on the same node is harmless) and returns it.
    pub fn init_identity(&self) -> Result<ClusterIdentity, NodeError> {
        if let Some(id) = self.identity() {
            return Ok(id);
        }
        let id = ClusterIdentity::init_new(&self.config.dir, self.config.node_id)?;
        self.wire.set_cluster(id.cluster_id.clone());
        *self.identity.write() = Some(id.clone());
        tracing::info!(cluster = %id.cluster_id, node = id.node_id, "created a new cluster identity");
        Ok(id)
    }

    /// Joins this (fresh) node to `cluster`, at the leader's request. A node that
    /// already belongs to that cluster accepts again; one of another cluster refuses.
    pub fn adopt(&self, cluster: ClusterId) -> Result<(), NodeError> {
        let mut guard = self.identity.write();
        match &*guard {
            Some(id) if id.cluster_id == cluster => Ok(()),
            Some(id) => Err(IdentityError::ClusterMismatch {
                found: id.cluster_id.clone(),
                expected: cluster,
            }
            .into()),
            None => {
                let id =
                    ClusterIdentity::init_joining(&self.config.dir, cluster, self.config.node_id)?;
                self.wire.set_cluster(id.cluster_id.clone());
                tracing::info!(cluster = %id.cluster_id, node = id.node_id, "joined a cluster");
                *guard = Some(id);
                Ok(())
            }
        }
    }

    /// Initialises Raft with `members` as the voters (this node among them). Repeating
    /// it on an initialised cluster is harmless.
    pub async fn initialize(
        &self,
        members: BTreeMap<NodeId, ClusterNode>,
    ) -> Result<(), NodeError> {
        if self.identity().is_none() {
            return Err(IdentityError::NotInitialised.into());
        }
        if self
            .raft
            .is_initialized()
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?
        {
            return Ok(());
        }
        self.raft
            .initialize(members)
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))
    }

    /// Runs this node as a cluster of one: creates the identity and makes this node
    /// the only voter on first start, and on every start takes the lead at once rather
    /// than after an election timeout. Returns once it leads, or fails after `timeout`,
    /// or at once when its stored membership names other nodes (it has peers it could
    /// not reach without its cluster listener).
    pub async fn lead_alone(&self, timeout: Duration) -> Result<(), NodeError> {
        let me = self.config.node_id;
        let raft_err = |e: &dyn std::fmt::Display| NodeError::Raft(e.to_string());
        if self.identity().is_none() {
            self.init_identity()?;
            let members = BTreeMap::from([(
                me,
                ClusterNode {
                    addr: self.config.advertise.clone(),
                },
            )]);
            self.initialize(members).await?;
        }
        // The stored membership shows in the metrics once Raft has loaded it.
        let m = self
            .raft
            .wait(Some(timeout))
            .metrics(
                |m| m.membership_config.voter_ids().next().is_some(),
                "the stored membership",
            )
            .await
            .map_err(|e| raft_err(&e))?;
        let members: Vec<NodeId> = m.membership_config.nodes().map(|(id, _)| *id).collect();
        if members != [me] {
            return Err(NodeError::NotAlone {
                dir: self.config.dir.display().to_string(),
                members,
            });
        }
        if m.current_leader != Some(me) {
            self.raft
                .trigger()
                .elect(false)
                .await
                .map_err(|e| raft_err(&e))?;
        }
        self.raft
            .wait(Some(timeout))
            .current_leader(me, "leading alone")
            .await
            .map_err(|e| raft_err(&e))?;
        Ok(())
    }

    /// When this node leads and the membership records another address for it than
    /// the one it now advertises (a cluster of one given a cluster listener, a node
    /// moved to a new address), records the new one, so peers and forwarded writes
    /// find it.
    pub async fn refresh_own_addr(&self) -> Result<(), WriteError> {
        let me = self.config.node_id;
        let advertised = &self.config.advertise;
        if !self.is_leader() || self.addr_of(me).as_ref() == Some(advertised) {
            return Ok(());
        }
        let nodes = BTreeMap::from([(
            me,
            ClusterNode {
                addr: advertised.clone(),
            },
        )]);
        self.raft
            .change_membership(ChangeMembers::SetNodes(nodes), false)
            .await
            .map_err(|e| WriteError::Unavailable(e.to_string()))?;
        tracing::info!(node = me, addr = %advertised, "recorded this node's new cluster address");
        Ok(())
    }

    /// The members of the membership in force (voters first), as this node knows it.
    pub fn members(&self) -> Vec<Member> {
        let m = self
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .clone();
        let voters: BTreeSet<NodeId> = m.voter_ids().collect();
        let mut out: Vec<Member> = m
            .nodes()
            .map(|(id, node)| Member {
                node_id: *id,
                addr: node.addr.clone(),
                voter: voters.contains(id),
            })
            .collect();
        out.sort_by_key(|m| (!m.voter, m.node_id));
        out
    }

    /// Whether this node is the only voter of its cluster (a cluster of one).
    pub fn is_sole_voter(&self) -> bool {
        self.sole_voter.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The address of member `id`.
    pub fn addr_of(&self, id: NodeId) -> Option<String> {
        let m = self
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .clone();
        let addr = m
            .nodes()
            .find(|(n, _)| **n == id)
            .map(|(_, node)| node.addr.clone());
        addr
    }

    /// How many registered holders a path's blob needs under the membership in force.
    pub fn required_holders(&self) -> usize {
        let voters = self
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .voter_ids()
            .count();
        self.config.rule.required(voters)
    }

    /// Where to reach `leader`, which the membership must name.
    fn leader_addr(&self, leader: NodeId) -> Result<String, WriteError> {
        self.addr_of(leader)
            .ok_or_else(|| WriteError::Unavailable(format!("leader {leader} has no address")))
    }

    /// The leader as this node knows it.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow_watched().current_leader
    }

    pub fn is_leader(&self) -> bool {
        self.leader() == Some(self.id())
    }

    pub fn metrics(&self) -> openraft::RaftMetrics<TypeConfig> {
        self.raft.metrics().borrow_watched().clone()
    }

    /// Replicates `cmd` through the leader (this node or another) and returns what the
    /// state machine answered. Commands are idempotent, so a retry after a lost answer
    /// is safe.
    pub async fn write(&self, cmd: Command) -> Result<Response, WriteError> {
        if self.identity().is_none() {
            return Err(WriteError::NotJoined);
        }
        let deadline = Instant::now() + self.config.write_timeout;
        let mut last_err = String::from("no leader elected");
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(WriteError::Unavailable(last_err));
            }
            match self.leader() {
                Some(leader) if leader == self.id() => {
                    match tokio::time::timeout(remaining, self.raft.client_write(cmd.clone())).await
                    {
                        Ok(Ok(resp)) => return Ok(resp.data),
                        Ok(Err(e)) => {
                            if e.forward_to_leader().is_none() {
                                return Err(WriteError::Refused(e.to_string()));
                            }
                            last_err = e.to_string();
                        }
                        Err(_) => {
                            return Err(WriteError::Unavailable(
                                "timed out waiting for a quorum to commit".into(),
                            ))
                        }
                    }
                }
                Some(leader) => {
                    let Some(addr) = self.addr_of(leader) else {
                        last_err = format!("leader {leader} has no known address");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    };
                    let rb = self
                        .wire
                        .raft_request(Method::POST, &addr, "/raft/write", leader)
                        .timeout(remaining)
                        .json(&cmd);
                    match send_json::<Committed>(rb, leader, &addr).await {
                        Ok(c) => {
                            // Read-your-writes here: what the caller does next (a
                            // narinfo after its NAR) sees this node's state.
                            let wait = deadline.saturating_duration_since(Instant::now());
                            if let Err(e) = self
                                .raft
                                .wait(Some(wait.max(Duration::from_millis(100))))
                                .applied_index_at_least(Some(c.index), "own write")
                                .await
                            {
                                tracing::warn!(index = c.index, error = %e, "own write not applied here in time");
                            }
                            return Ok(c.response);
                        }
                        Err(CallError::Status {
                            status, message, ..
                        }) if status == 400 || status == 409 => {
                            return Err(WriteError::Refused(message));
                        }
                        Err(e) => last_err = e.to_string(),
                    }
                }
                None => {}
            }
            tokio::time::sleep(Duration::from_millis(100).min(remaining)).await;
        }
    }

    /// The leader's side of a forwarded write: commits `cmd` here, or says who leads.
    pub async fn write_as_leader(&self, cmd: Command) -> Result<Committed, ForwardedWriteError> {
        match tokio::time::timeout(self.config.write_timeout, self.raft.client_write(cmd)).await {
            Ok(Ok(resp)) => Ok(Committed {
                response: resp.data,
                index: resp.log_id.index,
            }),
            Ok(Err(e)) => match e.forward_to_leader() {
                Some(f) => Err(ForwardedWriteError::NotLeader(NotLeader {
                    leader: f.leader_id,
                })),
                None => Err(ForwardedWriteError::Refused(e.to_string())),
            },
            Err(_) => Err(ForwardedWriteError::Timeout),
        }
    }

    /// Waits until this node has applied everything the leader had committed when the
    /// call began (or when a concurrent call began): after it, a path absent from
    /// [`Node::state`] is absent from the cluster. Concurrent callers share one round.
    pub async fn read_barrier(&self, timeout: Duration) -> Result<(), WriteError> {
        if self.identity().is_none() {
            return Err(WriteError::NotJoined);
        }
        let arrived = Instant::now();
        let mut last = self.barrier.lock().await;
        if last.is_some_and(|t| t >= arrived) {
            return Ok(());
        }
        let started = Instant::now();
        self.barrier_rounds
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let index = match tokio::time::timeout(timeout, self.fetch_read_index()).await {
            Ok(r) => r?,
            Err(_) => return Err(WriteError::Unavailable("no leader answered in time".into())),
        };
        let remaining = timeout.saturating_sub(started.elapsed());
        self.raft
            .wait(Some(remaining.max(Duration::from_millis(10))))
            .applied_index_at_least(Some(index), "read barrier")
            .await
            .map_err(|e| WriteError::Unavailable(format!("catching up with the leader: {e}")))?;
        *last = Some(started);
        Ok(())
    }

    /// Read barrier rounds this node has made since it started.
    pub fn barrier_rounds(&self) -> u64 {
        self.barrier_rounds
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The leader's commit index as of now, confirmed by a quorum (or its lease).
    async fn fetch_read_index(&self) -> Result<u64, WriteError> {
        match self.leader() {
            Some(l) if l == self.id() => self.read_index_as_leader().await,
            Some(leader) => {
                let addr = self.leader_addr(leader)?;
                let rb = self
                    .wire
                    .raft_request(Method::POST, &addr, "/raft/read-index", leader)
                    .timeout(Duration::from_secs(5));
                let r: ReadIndex = send_json(rb, leader, &addr)
                    .await
                    .map_err(|e| WriteError::Unavailable(e.to_string()))?;
                Ok(r.index)
            }
            None => Err(WriteError::Unavailable("no leader elected".into())),
        }
    }

    /// The leader's side of a read barrier.
    pub async fn read_index_as_leader(&self) -> Result<u64, WriteError> {
        match self.raft.ensure_linearizable(ReadPolicy::LeaseRead).await {
            Ok(id) => Ok(id.index()),
            Err(e) => Err(WriteError::Unavailable(e.to_string())),
        }
    }

    /// Carries out a membership change on the leader, or forwards it there.
    pub async fn change_membership(&self, change: MembershipChange) -> Result<(), WriteError> {
        if self.identity().is_none() {
            return Err(WriteError::NotJoined);
        }
        match self.leader() {
            Some(l) if l == self.id() => self.change_as_leader(change).await,
            Some(leader) => {
                let addr = self.leader_addr(leader)?;
                let rb = self
                    .wire
                    .raft_request(Method::POST, &addr, "/cluster/change", leader)
                    .timeout(Duration::from_secs(600))
                    .json(&change);
                match send_json::<serde_json::Value>(rb, leader, &addr).await {
                    Ok(_) => Ok(()),
                    Err(CallError::Status {
                        status, message, ..
                    }) if status == 409 || status == 400 => Err(WriteError::Refused(message)),
                    Err(e) => Err(WriteError::Unavailable(e.to_string())),
                }
            }
            None => Err(WriteError::Unavailable("no leader elected".into())),
        }
    }

    /// The leader's side of [`Node::change_membership`].
    pub async fn change_as_leader(&self, change: MembershipChange) -> Result<(), WriteError> {
        match change {
            MembershipChange::Add { node_id, addr } => {
                let membership = self.metrics().membership_config.clone();
                let known = membership
                    .nodes()
                    .find(|(id, _)| **id == node_id)
                    .map(|(_, n)| n.addr.clone());
                if let Some(known) = known {
                    let voter = membership.voter_ids().any(|v| v == node_id);
                    return self.add_again(node_id, &known, &addr, voter).await;
                }
                let cluster = self
                    .identity()
                    .map(|i| i.cluster_id)
                    .ok_or(WriteError::NotJoined)?;
                // The new node takes the cluster's identity first: until then it
                // refuses Raft traffic.
                let rb = self
                    .wire
                    .raft_request(Method::POST, &addr, "/cluster/adopt", node_id)
                    .timeout(Duration::from_secs(10))
                    .json(&Adopt {
                        cluster_id: cluster,
                    });
                send_json::<serde_json::Value>(rb, node_id, &addr)
                    .await
                    .map_err(|e| {
                        WriteError::Refused(format!("node {node_id} did not join: {e}"))
                    })?;
                self.raft
                    .add_learner(node_id, ClusterNode { addr }, true)
                    .await
                    .map_err(membership_refused)?;
                self.promote(node_id).await
            }
            MembershipChange::Remove { node_id } => {
                let m = self.metrics().membership_config.clone();
                let ids = BTreeSet::from([node_id]);
                let change = if m.voter_ids().any(|v| v == node_id) {
                    ChangeMembers::RemoveVoters(ids)
                } else if m.nodes().any(|(id, _)| *id == node_id) {
                    ChangeMembers::RemoveNodes(ids)
                } else {
                    return Ok(());
                };
                self.raft
                    .change_membership(change, false)
                    .await
                    .map_err(membership_refused)?;
                Ok(())
            }
        }
    }

    /// Makes a caught-up learner a voter.
    async fn promote(&self, node_id: NodeId) -> Result<(), WriteError> {
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([node_id])), false)
            .await
            .map_err(membership_refused)?;
        Ok(())
    }

    /// `cluster add` of a node already in the membership, at `known`: nothing to do for
    /// a voter that answers as one of ours, a promotion for such a learner (an add cut
    /// short, or retried). Refused for one that lost its cluster identity: a wiped disk
    /// under its old id would vote with an empty log and a forgotten vote, which can
    /// undo committed entries (and made openraft's core panic when it was let in).
    async fn add_again(
        &self,
        node_id: NodeId,
        known: &str,
        asked: &str,
        voter: bool,
    ) -> Result<(), WriteError> {
        if known != asked {
            return Err(WriteError::Refused(format!(
                "node {node_id} is already a member, at {known}, not {asked}"
            )));
        }
        let rb = self
            .wire
            .raft_request(Method::GET, known, "/status", node_id)
            .timeout(Duration::from_secs(10));
        match send_json::<serde_json::Value>(rb, node_id, known).await {
            Ok(_) if voter => Ok(()),
            Ok(_) => self.promote(node_id).await,
            Err(CallError::Status { status: 409, .. }) => Err(WriteError::Refused(format!(
                "node {node_id} is already a member but has lost its cluster identity (a wiped \
                 disk); it rejoins under a new id: cachectl cluster replace {node_id} NEW_ID ADDR"
            ))),
            Err(e) => Err(WriteError::Refused(format!(
                "node {node_id} is already a member and does not answer at {known}: {e}"
            ))),
        }
    }

    /// Stops Raft (tests; cairnd just exits).
    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }
}

/// A membership change openraft refused: 503 when leadership moved meanwhile (retry
/// on the new leader), else the reason.
fn membership_refused(e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> WriteError {
    match e.forward_to_leader() {
        Some(_) => WriteError::Unavailable(format!("leadership moved: {e}")),
        None => WriteError::Refused(e.to_string()),
    }
}

/// The leader's answer to a forwarded write it could not carry out.
#[derive(Debug)]
pub enum ForwardedWriteError {
    NotLeader(NotLeader),
    Refused(String),
    Timeout,
}

/// The answer of a forwarded write: what the state machine said, and the entry's index
/// (the forwarding node waits until it has applied it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Committed {
    pub response: Response,
    pub index: u64,
}

/// The answer of `POST /internal/v1/raft/read-index`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadIndex {
    pub index: u64,
}

/// The body of `POST /internal/v1/cluster/adopt`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Adopt {
    pub cluster_id: ClusterId,
}
