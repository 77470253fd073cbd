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

/// `POST /api/v1/missing` (push scope): which of these paths the cache lacks.
pub async fn missing(
    State(s): State<Shared>,
    headers: HeaderMap,
    Json(req): Json<MissingRequest>,
) -> Result<Response, ServerError> {
    s.auth.check(&s.db, &headers, Scope::Push)?;
    if req.paths.len() > MAX_MISSING_QUERY {
        return Err(ServerError::BadRequest("too many paths in one request"));
    }
    let prefix = format!("{}/", s.config.store_dir);
    let mut hashes = Vec::with_capacity(req.paths.len());
    for p in &req.paths {
        let base = p.strip_prefix(&prefix).unwrap_or(p);
        let hash = base.get(..32).ok_or(ServerError::BadHash)?;
        nix_formats::store_path::parse_hash_part(hash).map_err(|_| ServerError::BadHash)?;
        hashes.push(hash);
    }
    let absent = s.db.missing(&hashes)?;
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
    s.auth.check(&s.db, &headers, Scope::Admin)?;
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
    s.db.put_token(&rec)?;
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
    s.auth.check(&s.db, &headers, Scope::Admin)?;
    let list: Vec<TokenInfo> = s.db.tokens()?.iter().map(info).collect();
    Ok(Json(list).into_response())
}

/// `DELETE /api/v1/tokens/<id>` (admin).
pub async fn revoke_token(
    State(s): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ServerError> {
    s.auth.check(&s.db, &headers, Scope::Admin)?;
    if s.db.revoke_token(&id)? {
        tracing::info!(id = %id, "revoked token");
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ServerError::NotFound)
    }
}

/// One node in `GET /api/v1/status`. The consensus fields are `null` until the node
/// runs in a cluster; a single node is its own cluster of one.
#[derive(Serialize)]
pub struct NodeStatus {
    pub id: u64,
    pub reachable: bool,
    /// `single` for a standalone node; `leader`, `follower`, `learner` in a cluster.
    pub role: &'static str,
    pub term: Option<u64>,
    pub last_log_index: Option<u64>,
    pub applied_index: Option<u64>,
    /// Log entries the node is behind the leader.
    pub replication_lag: Option<u64>,
    pub blobs_held: u64,
    /// Blobs this node should hold but does not.
    pub blobs_missing: u64,
    pub disk_total_bytes: u64,
    pub disk_free_bytes: u64,
    pub version: &'static str,
    pub uptime_secs: u64,
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

/// `GET /api/v1/status` (read scope; public unless the cache is private).
pub async fn status(State(s): State<Shared>, headers: HeaderMap) -> Result<Response, ServerError> {
    s.auth.check(&s.db, &headers, Scope::Read)?;
    let state = s.clone();
    let status = tokio::task::spawn_blocking(move || -> Result<Status, ServerError> {
        let paths = state.db.path_count()?;
        let (blobs, stored_bytes) = state.db.blob_stats()?;
        let (total, free) = state
            .blobs
            .disk_usage()
            .map_err(|e| ServerError::Io(std::io::Error::other(e.to_string())))?;
        Ok(Status {
            leader: Some(1),
            voters: vec![1],
            learners: Vec::new(),
            paths,
            stored_bytes,
            under_replicated_blobs: 0,
            replicas_target: 1,
            upload_sessions: state.sessions.len(),
            nodes: vec![NodeStatus {
                id: 1,
                reachable: true,
                role: "single",
                term: None,
                last_log_index: None,
                applied_index: None,
                replication_lag: None,
                blobs_held: blobs,
                blobs_missing: 0,
                disk_total_bytes: total,
                disk_free_bytes: free,
                version: env!("CARGO_PKG_VERSION"),
                uptime_secs: state.started.elapsed().as_secs(),
            }],
        })
    })
    .await??;
    Ok(Json(status).into_response())
}
