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
