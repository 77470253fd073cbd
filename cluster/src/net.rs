//! Node-to-node traffic: the internal HTTP API's client side, and openraft's network
//! over it.
//!
//! Every internal request goes to a peer's cluster listener (`http://<addr>/internal/v1/…`)
//! and carries three headers, which the receiving side checks before anything else:
//!
//! | header | value |
//! |---|---|
//! | `Authorization` | `Bearer <cluster secret>` |
//! | `Cairn-Cluster` | the cluster id (absent only on the `adopt` call that hands it over) |
//! | `Cairn-Target-Node` | the node id the sender means to reach |
//!
//! plus `Cairn-From-Node` (the sender's id, for logs). Two connection pools: one for
//! Raft's small, latency-bound RPCs, one for bulk bodies (snapshots, blob copies), so a
//! multi-GB copy never delays a heartbeat.
//!
//! Raft RPCs are `POST /internal/v1/raft/{append,vote,pre-vote}` with the openraft
//! request as JSON and its response as JSON. A snapshot is `POST /internal/v1/raft/snapshot`
//! whose body is one JSON line (`{"vote":…,"meta":…}`) followed by the snapshot file's
//! bytes, streamed from disk; the receiver streams them into a file of its own.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use parking_lot::RwLock;
use reqwest::{Method, RequestBuilder};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::command::NodeId;
use crate::identity::ClusterId;
use crate::raft::{ClusterNode, SnapshotFile, SnapshotMeta, TypeConfig, Vote};
use crate::secret::ClusterSecret;

pub const HEADER_CLUSTER: &str = "cairn-cluster";
pub const HEADER_TARGET: &str = "cairn-target-node";
pub const HEADER_FROM: &str = "cairn-from-node";

/// The path prefix of the internal API.
pub const INTERNAL_PREFIX: &str = "/internal/v1";

/// How long a Raft-pool connection attempt may take: peers share a LAN.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The first line of a snapshot transfer.
#[derive(Serialize, Deserialize)]
pub struct SnapshotHead {
    pub vote: Vote,
    pub meta: SnapshotMeta,
}

/// This node's credentials on the cluster network and its two connection pools.
/// Cheap to clone.
#[derive(Clone)]
pub struct Wire(Arc<WireInner>);

struct WireInner {
    node_id: NodeId,
    secret: ClusterSecret,
    /// Unknown until the node is initialised or adopted into a cluster.
    cluster: RwLock<Option<ClusterId>>,
    raft: reqwest::Client,
    bulk: reqwest::Client,
}

impl std::fmt::Debug for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wire")
            .field("node_id", &self.0.node_id)
            .field("cluster", &*self.0.cluster.read())
            .finish_non_exhaustive()
    }
}

impl Wire {
    pub fn new(node_id: NodeId, secret: ClusterSecret, cluster: Option<ClusterId>) -> Self {
        let raft = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .build()
            .expect("a plain HTTP client builds");
        let bulk = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .expect("a plain HTTP client builds");
        Wire(Arc::new(WireInner {
            node_id,
            secret,
            cluster: RwLock::new(cluster),
            raft,
            bulk,
        }))
    }

    pub fn node_id(&self) -> NodeId {
        self.0.node_id
    }

    pub fn secret(&self) -> &ClusterSecret {
        &self.0.secret
    }

    pub fn cluster(&self) -> Option<ClusterId> {
        self.0.cluster.read().clone()
    }

    pub(crate) fn set_cluster(&self, id: ClusterId) {
        *self.0.cluster.write() = Some(id);
    }

    /// A request on the Raft pool to node `target` at `addr`; `path` starts after
    /// [`INTERNAL_PREFIX`].
    pub fn raft_request(
        &self,
        method: Method,
        addr: &str,
        path: &str,
        target: NodeId,
    ) -> RequestBuilder {
        self.request(&self.0.raft, method, addr, path, target)
    }

    /// A request on the bulk pool (snapshots, blob copies).
    pub fn bulk_request(
        &self,
        method: Method,
        addr: &str,
        path: &str,
        target: NodeId,
    ) -> RequestBuilder {
        self.request(&self.0.bulk, method, addr, path, target)
    }

    fn request(
        &self,
        client: &reqwest::Client,
        method: Method,
        addr: &str,
        path: &str,
        target: NodeId,
    ) -> RequestBuilder {
        let mut rb = client
            .request(method, format!("http://{addr}{INTERNAL_PREFIX}{path}"))
            .header(reqwest::header::AUTHORIZATION, self.0.secret.bearer())
            .header(HEADER_TARGET, target.to_string())
            .header(HEADER_FROM, self.0.node_id.to_string());
        if let Some(id) = self.cluster() {
            rb = rb.header(HEADER_CLUSTER, id.as_str());
        }
        rb
    }
}

/// Why an internal call failed, as the caller needs to know it.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The peer could not be reached (connect failed, timed out).
    #[error("node {node} at {addr} is unreachable: {reason}")]
    Unreachable {
        node: NodeId,
        addr: String,
        reason: String,
    },
    /// The peer answered with an error status.
    #[error("node {node} answered {status}: {message}")]
    Status {
        node: NodeId,
        status: u16,
        message: String,
    },
    /// The peer's answer did not decode, or the connection broke mid-answer.
    #[error("node {node}: {reason}")]
    Protocol { node: NodeId, reason: String },
}

impl CallError {
    fn from_reqwest(node: NodeId, addr: &str, e: reqwest::Error) -> Self {
        if e.is_connect() || e.is_timeout() {
            CallError::Unreachable {
                node,
                addr: addr.to_string(),
                reason: e.to_string(),
            }
        } else {
            CallError::Protocol {
                node,
                reason: e.to_string(),
            }
        }
    }
}

/// Sends `rb` and decodes a JSON answer; error statuses become [`CallError::Status`]
/// with the peer's one-line reason.
pub async fn send_json<T: DeserializeOwned>(
    rb: RequestBuilder,
    node: NodeId,
    addr: &str,
) -> Result<T, CallError> {
    let resp = rb
        .send()
        .await
        .map_err(|e| CallError::from_reqwest(node, addr, e))?;
    let status = resp.status();
    if !status.is_success() {
        let message = resp.text().await.unwrap_or_default();
        return Err(CallError::Status {
            node,
            status: status.as_u16(),
            message: message.trim().chars().take(500).collect(),
        });
    }
    let body = resp
        .bytes()
        .await
        .map_err(|e| CallError::from_reqwest(node, addr, e))?;
    serde_json::from_slice(&body).map_err(|e| CallError::Protocol {
        node,
        reason: format!("undecodable answer: {e}"),
    })
}

/// openraft's network factory: one [`PeerConn`] per target.
#[derive(Clone, Debug)]
pub struct Network {
    wire: Wire,
}

impl Network {
    pub fn new(wire: Wire) -> Self {
        Network { wire }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConn;

    async fn new_client(&mut self, target: NodeId, node: &ClusterNode) -> PeerConn {
        PeerConn {
            wire: self.wire.clone(),
            target,
            addr: node.addr.clone(),
        }
    }
}

/// The Raft RPCs to one peer.
pub struct PeerConn {
    wire: Wire,
    target: NodeId,
    addr: String,
}

impl PeerConn {
    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        what: &str,
        req: &Req,
        ttl: Duration,
    ) -> Result<Resp, RPCError<TypeConfig>> {
        let rb = self
            .wire
            .raft_request(
                Method::POST,
                &self.addr,
                &format!("/raft/{what}"),
                self.target,
            )
            .timeout(ttl)
            .json(req);
        send_json(rb, self.target, &self.addr)
            .await
            .map_err(to_rpc_error)
    }
}

fn to_rpc_error(e: CallError) -> RPCError<TypeConfig> {
    match &e {
        // A peer that refuses us (no identity, another cluster, bad secret) is as good
        // as unreachable: back off rather than hammer it.
        CallError::Unreachable { .. } | CallError::Status { .. } => {
            RPCError::Unreachable(Unreachable::new(&e))
        }
        CallError::Protocol { .. } => RPCError::Network(NetworkError::new(&e)),
    }
}

impl RaftNetworkV2<TypeConfig> for PeerConn {
    type SnapshotData = SnapshotFile;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call("append", &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call("vote", &rpc, option.hard_ttl()).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call("pre-vote", &rpc, option.hard_ttl()).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: openraft::type_config::alias::SnapshotOf<TypeConfig, SnapshotFile>,
        cancel: impl Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let mut head = serde_json::to_vec(&SnapshotHead {
            vote,
            meta: snapshot.meta.clone(),
        })
        .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        head.push(b'\n');
        let size = snapshot
            .snapshot
            .len()
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        let file = snapshot
            .snapshot
            .into_file()
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        let file = tokio::fs::File::from_std(file);
        let body =
            futures_util::stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(head)) })
                .chain(tokio_util::io::ReaderStream::with_capacity(file, 256 << 10));
        let rb = self
            .wire
            .bulk_request(Method::POST, &self.addr, "/raft/snapshot", self.target)
            // 10 s plus 10 MB/s: a stalled peer is given up on and tried again.
            .timeout(Duration::from_secs(10) + Duration::from_millis(size / 10_000))
            .body(reqwest::Body::wrap_stream(body));
        let target = self.target;
        let addr = self.addr.clone();
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            r = send_json::<SnapshotResponse<TypeConfig>>(rb, target, &addr) => {
                r.map_err(|e| match to_rpc_error(e) {
                    RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                    RPCError::Network(n) => StreamingError::Network(n),
                    other => StreamingError::Network(NetworkError::new(&other)),
                })
            }
        }
    }
}
