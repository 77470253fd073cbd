//! Cairn's own JSON API under `/api/v1` (documented in docs/api.md): which paths are
//! missing, and token management for `cachectl token`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use store::meta::{Scope, TokenRecord};

use crate::auth::{hash_token, new_token_text, now, parse_scope, scope_name};
use crate::error::ServerError;
use crate::state::AppState;

type Shared = Arc<AppState>;

/// Most paths one `missing` request may ask about.
const MAX_MISSING_QUERY: usize = 100_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MissingRequest {
    /// Store paths (`/nix/store/<hash>-<name>`) or their hash parts.
    pub paths: Vec<String>,
}

#[derive(Serialize)]
pub struct MissingResponse {
    /// The requested entries (as given) that this cache cannot serve.
    pub missing: Vec<String>,
}

/// The hash part that `path` starts with: a store path (`<store dir>/<hash>-<name>`), a
/// base name, or a bare hash part; 400 when it does not start with a valid one.
pub fn leading_hash_part<'a>(store_dir: &str, path: &'a str) -> Result<&'a str, ServerError> {
    let base = path
        .strip_prefix(store_dir)
        .and_then(|p| p.strip_prefix('/'))
        .unwrap_or(path);
    let hash = base.get(..32).ok_or(ServerError::BadHash)?;
    nix_formats::store_path::parse_hash_part(hash).map_err(|_| ServerError::BadHash)?;
    Ok(hash)
}

/// `POST /api/v1/missing` (push scope): which of these paths the cache lacks.
pub async fn missing(
    State(s): State<Shared>,
    headers: HeaderMap,
    Json(req): Json<MissingRequest>,
) -> Result<Response, ServerError> {
    s.auth.check(&s.catalog, &headers, Scope::Push)?;
    if req.paths.len() > MAX_MISSING_QUERY {
        return Err(ServerError::BadRequest("too many paths in one request"));
    }
    let mut hashes = Vec::with_capacity(req.paths.len());
    for p in &req.paths {
        hashes.push(leading_hash_part(&s.config.store_dir, p)?);
    }
    let absent = s.catalog.missing(&hashes)?;
    let mut missing = Vec::new();
    for (p, h) in req.paths.iter().zip(&hashes) {
        if !absent.iter().any(|a| a == h) {
            continue;
        }
        let local = match &s.store {
            Some(l) => l.query_by_hash_part(h)?.is_some(),
            None => false,
        };
        if !local {
            missing.push(p.clone());
        }
    }
    Ok(Json(MissingResponse { missing }).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    pub name: String,
    pub scopes: Vec<String>,
    /// Lifetime in seconds; none for a token that does not expire.
    pub expires_in: Option<u64>,
}

#[derive(Serialize)]
pub struct TokenInfo {
    pub id: String,
    pub name: String,
    pub scopes: Vec<&'static str>,
    pub created: u64,
    pub expires: Option<u64>,
    pub revoked: bool,
}

#[derive(Serialize)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub info: TokenInfo,
    /// The token text; shown once, stored only as a hash.
    pub token: String,
}

fn info(t: &TokenRecord) -> TokenInfo {
    TokenInfo {
        id: t.id.clone(),
        name: t.name.clone(),
        scopes: t.scopes.iter().map(|&s| scope_name(s)).collect(),
        created: t.created,
        expires: t.expires,
        revoked: t.revoked,
    }
}

/// `POST /api/v1/tokens` (admin).
pub async fn create_token(
    State(s): State<Shared>,
    headers: HeaderMap,
    Json(req): Json<CreateToken>,
) -> Result<Response, ServerError> {
    s.auth.check(&s.catalog, &headers, Scope::Admin)?;
    if req.name.trim().is_empty() || req.name.len() > 200 {
        return Err(ServerError::BadRequest(
            "token name must be 1 to 200 characters",
        ));
    }
    let scopes = req
        .scopes
        .iter()
        .map(|s| parse_scope(s))
        .collect::<Option<Vec<_>>>()
        .filter(|v| !v.is_empty())
        .ok_or(ServerError::BadRequest(
            "scopes must be some of read, push, admin",
        ))?;
    let token = new_token_text();
    let created = now();
    let rec = TokenRecord {
        id: token[6..14].to_string(),
        name: req.name,
        secret_hash: hash_token(&token),
        scopes,
        expires: req.expires_in.map(|s| created.saturating_add(s)),
        created,
        revoked: false,
    };
    crate::replication::put_token(&s, rec.clone()).await?;
    tracing::info!(id = %rec.id, name = %rec.name, "created token");
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            info: info(&rec),
            token,
        }),
    )
        .into_response())
}

/// `GET /api/v1/tokens` (admin).
pub async fn list_tokens(
    State(s): State<Shared>,
    headers: HeaderMap,
) -> Result<Response, ServerError> {
    s.auth.check(&s.catalog, &headers, Scope::Admin)?;
    let list: Vec<TokenInfo> = s.catalog.tokens()?.iter().map(info).collect();
    Ok(Json(list).into_response())
}

/// `DELETE /api/v1/tokens/<id>` (admin).
pub async fn revoke_token(
    State(s): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ServerError> {
    s.auth.check(&s.catalog, &headers, Scope::Admin)?;
    if crate::replication::revoke_token(&s, id.clone()).await? {
        tracing::info!(id = %id, "revoked token");
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ServerError::NotFound)
    }
}

/// One node in `GET /api/v1/status`. The consensus fields are `null` for a member that
/// did not answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    pub id: u64,
    pub reachable: bool,
    /// `leader`, `follower`, `learner`, `candidate`; `unjoined` for a node that
    /// belongs to no cluster yet; `unreachable` for a member that did not answer.
    pub role: String,
    pub term: Option<u64>,
    pub last_log_index: Option<u64>,
    pub applied_index: Option<u64>,
    /// Log entries the node is behind the leader.
    pub replication_lag: Option<u64>,
    pub blobs_held: u64,
    /// Blobs below the replica target that this node does not hold yet.
    pub blobs_missing: u64,
    pub disk_total_bytes: u64,
    pub disk_free_bytes: u64,
    pub version: String,
    pub uptime_secs: u64,
}

impl NodeStatus {
    fn unreachable(id: u64) -> Self {
        NodeStatus {
            reachable: false,
            role: "unreachable".into(),
            version: String::new(),
            ..Self::blank(id, 0, 0, 0)
        }
    }

    /// A reachable node's line with nothing known beyond its disk and uptime.
    fn blank(id: u64, total: u64, free: u64, uptime_secs: u64) -> Self {
        NodeStatus {
            id,
            reachable: true,
            role: String::new(),
            term: None,
            last_log_index: None,
            applied_index: None,
            replication_lag: None,
            blobs_held: 0,
            blobs_missing: 0,
            disk_total_bytes: total,
            disk_free_bytes: free,
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_secs,
        }
    }
}

/// `GET /api/v1/status`: what `cachectl status` shows.
#[derive(Serialize)]
pub struct Status {
    pub leader: Option<u64>,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    pub paths: u64,
    pub stored_bytes: u64,
    pub under_replicated_blobs: u64,
    /// Each blob's target number of copies.
    pub replicas_target: u64,
    pub upload_sessions: usize,
    pub nodes: Vec<NodeStatus>,
}

/// Blob counts of a cluster node's state: (held here, below target and not here,
/// below target anywhere).
fn blob_counts(node: &cluster::Node, target: usize) -> Result<(u64, u64, u64), ServerError> {
    let me = node.id();
    let members: Vec<u64> = node.members().iter().map(|m| m.node_id).collect();
    let (mut held, mut missing, mut under) = (0, 0, 0);
    node.state().for_each_blob(|e| {
        let here = e.holders.contains_key(&me);
        let short = e.under_replicated(&members, target);
        held += u64::from(here);
        missing += u64::from(short && !here);
        under += u64::from(short);
        true
    })?;
    Ok((held, missing, under))
}

/// This node's own line of the status report.
pub async fn local_node_status(s: &Shared) -> Result<NodeStatus, ServerError> {
    Ok(local_report(s).await?.0)
}

/// This node's line, and (on a cluster node) how many blobs are below their replica
/// target cluster-wide, from the same walk over the blob records.
async fn local_report(s: &Shared) -> Result<(NodeStatus, u64), ServerError> {
    let state = s.clone();
    tokio::task::spawn_blocking(move || -> Result<(NodeStatus, u64), ServerError> {
        let (total, free) = state
            .blobs
            .disk_usage()
            .map_err(|e| ServerError::Io(std::io::Error::other(e.to_string())))?;
        let node = state.catalog.node();
        let m = node.metrics();
        let target = crate::replication::replica_target(&state, node.members().len());
        let (held, missing, under) = blob_counts(node, target)?;
        let n = NodeStatus {
            role: if node.identity().is_none() {
                "unjoined".into()
            } else {
                format!("{:?}", m.state).to_lowercase()
            },
            term: Some(m.current_term),
            last_log_index: m.last_log_index,
            applied_index: m.last_applied.map(|l| l.index),
            blobs_held: held,
            blobs_missing: missing,
            ..NodeStatus::blank(node.id(), total, free, state.started.elapsed().as_secs())
        };
        Ok((n, under))
    })
    .await?
}

/// `GET /api/v1/status` (read scope; public unless the cache is private). On a
/// cluster node it asks every member for its line (2 s each, at once).
pub async fn status(State(s): State<Shared>, headers: HeaderMap) -> Result<Response, ServerError> {
    s.auth.check(&s.catalog, &headers, Scope::Read)?;
    let (local, under) = local_report(&s).await?;
    let node = s.catalog.node().clone();
    let members = node.members();
    let me = node.id();
    let reports = futures_util::future::join_all(members.iter().map(|m| {
        let node = node.clone();
        let local = local.clone();
        async move {
            if m.node_id == me {
                return local;
            }
            let rb = node
                .wire()
                .raft_request(reqwest::Method::GET, &m.addr, "/status", m.node_id)
                .timeout(std::time::Duration::from_secs(2));
            cluster::net::send_json::<NodeStatus>(rb, m.node_id, &m.addr)
                .await
                .unwrap_or_else(|_| NodeStatus::unreachable(m.node_id))
        }
    }))
    .await;
    let mut nodes = if members.iter().any(|m| m.node_id == me) {
        reports
    } else {
        // Not (yet) a member: show this node alone beside what it knows.
        let mut v = vec![local];
        v.extend(reports);
        v
    };
    let metrics = node.metrics();
    let leader = metrics.current_leader;
    let leader_log = nodes
        .iter()
        .find(|n| Some(n.id) == leader && n.reachable)
        .and_then(|n| n.last_log_index);
    for n in &mut nodes {
        if n.reachable {
            n.replication_lag = leader_log.map(|l| l.saturating_sub(n.applied_index.unwrap_or(0)));
        }
    }
    let target = crate::replication::replica_target(&s, members.len());
    let st = s.clone();
    let (paths, stored_bytes) = tokio::task::spawn_blocking(move || -> Result<_, ServerError> {
        Ok((st.catalog.path_count()?, st.catalog.blob_stats()?.1))
    })
    .await??;
    Ok(Json(Status {
        leader,
        voters: members
            .iter()
            .filter(|m| m.voter)
            .map(|m| m.node_id)
            .collect(),
        learners: members
            .iter()
            .filter(|m| !m.voter)
            .map(|m| m.node_id)
            .collect(),
        paths,
        stored_bytes,
        under_replicated_blobs: under,
        replicas_target: target as u64,
        upload_sessions: s.sessions.len(),
        nodes,
    })
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterInitRequest {
    /// Make the configured `[[cluster.peers]]` voters too (default true). Each must be
    /// up and fresh (no identity of another cluster).
    #[serde(default = "yes")]
    pub with_peers: bool,
}

fn yes() -> bool {
    true
}

fn write_error(e: cluster::WriteError) -> ServerError {
    match e {
        cluster::WriteError::Refused(m) => ServerError::Conflict(m),
        other => ServerError::Unavailable(other.to_string()),
    }
}

/// `POST /api/v1/cluster/init` (admin): makes this node the first of a new cluster,
/// with the configured peers as voters. Repeating it is harmless.
pub async fn cluster_init(
    State(s): State<Shared>,
    headers: HeaderMap,
    body: Option<Json<ClusterInitRequest>>,
) -> Result<Response, ServerError> {
    s.auth.check(&s.catalog, &headers, Scope::Admin)?;
    let node = s.catalog.node().clone();
    let with_peers = body.map(|Json(b)| b.with_peers).unwrap_or(true);
    let cfg = &s.config.cluster;
    let identity = node
        .init_identity()
        .map_err(|e| ServerError::Conflict(e.to_string()))?;
    let mut members = std::collections::BTreeMap::from([(
        node.id(),
        cluster::ClusterNode {
            addr: cfg.advertise.clone(),
        },
    )]);
    if with_peers {
        for p in &cfg.peers {
            let rb = node
                .wire()
                .raft_request(reqwest::Method::POST, &p.addr, "/cluster/adopt", p.node_id)
                .timeout(std::time::Duration::from_secs(10))
                .json(&cluster::node::Adopt {
                    cluster_id: identity.cluster_id.clone(),
                });
            cluster::net::send_json::<serde_json::Value>(rb, p.node_id, &p.addr)
                .await
                .map_err(|e| {
                    ServerError::Unavailable(format!(
                        "peer {} did not join (nothing initialised; fix it and run init again): {e}",
                        p.node_id
                    ))
                })?;
            members.insert(
                p.node_id,
                cluster::ClusterNode {
                    addr: p.addr.clone(),
                },
            );
        }
    }
    node.initialize(members.clone())
        .await
        .map_err(|e| ServerError::Conflict(e.to_string()))?;
    tracing::info!(cluster = %identity.cluster_id, voters = ?members.keys().collect::<Vec<_>>(), "cluster initialised");
    Ok(Json(serde_json::json!({
        "cluster_id": identity.cluster_id,
        "voters": members.keys().collect::<Vec<_>>(),
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddNodeRequest {
    pub node_id: u64,
    /// The new node's cluster listener, `host:port`.
    pub addr: String,
}

/// `POST /api/v1/cluster/nodes` (admin): adds a fresh node as a learner, waits until it
/// has caught up, then makes it a voter.
pub async fn cluster_add(
    State(s): State<Shared>,
    headers: HeaderMap,
    Json(req): Json<AddNodeRequest>,
) -> Result<Response, ServerError> {
    s.auth.check(&s.catalog, &headers, Scope::Admin)?;
    if s.config.cluster.is_solo() {
        return Err(ServerError::Conflict(
            "this cache has no cluster listener for its peers to reach: give it a [cluster] \
             section (node_id = 1, listen, secret_file) and restart it, then add nodes"
                .into(),
        ));
    }
    let node = s.catalog.node().clone();
    // A cluster of one that was just given its listener may not have recorded its
    // address yet: the new node must find it before it can forward a write.
    node.refresh_own_addr().await.map_err(write_error)?;
    node.change_membership(cluster::MembershipChange::Add {
        node_id: req.node_id,
        addr: req.addr,
    })
    .await
    .map_err(write_error)?;
    Ok(Json(serde_json::json!({"members": node.members()})).into_response())
}

/// `DELETE /api/v1/cluster/nodes/<id>` (admin): removes a node from the membership.
pub async fn cluster_remove(
    State(s): State<Shared>,
    Path(id): Path<u64>,
    headers: HeaderMap,
) -> Result<Response, ServerError> {
    s.auth.check(&s.catalog, &headers, Scope::Admin)?;
    let node = s.catalog.node().clone();
    node.change_membership(cluster::MembershipChange::Remove { node_id: id })
        .await
        .map_err(write_error)?;
    crate::replication::forget_holder(node.clone(), id);
    Ok(Json(serde_json::json!({"members": node.members()})).into_response())
}
