//! Garbage collection of uploaded paths on a cluster node: when paths were last served
//! (recorded through Raft, coarsely), GC passes (planned by [`cluster::gc::plan`], applied
//! with [`Command::DeletePaths`]), the leader's periodic pass, and the admin API's pins,
//! retention settings and on-demand pass.
//!
//! Deleting a path only drops its record: its blob becomes an orphan, and the repair
//! worker's orphan sweep deletes the copies once the grace period has passed (so a
//! client that fetched the narinfo just before can still download the NAR).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use cluster::{Applied, Command, Node, PinRecord, RetentionSettings};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use store::meta::Scope;

use crate::api::leading_hash_part;
use crate::auth::now;
use crate::error::ServerError;
use crate::replication::write;
use crate::state::AppState;

type Shared = Arc<AppState>;

/// A path's recorded access moves only when it is older than this: one Raft write per
/// path per hour at most, however often it is served.
pub const ACCESS_GRANULARITY_SECS: u64 = 3600;

/// How often served paths are written to the cluster state.
const ACCESS_FLUSH: Duration = Duration::from_secs(60);

/// Victims per `DeletePaths` entry, and paths per `Touch` entry.
const CHUNK: usize = 1000;

/// At most this many distinct paths are remembered between flushes (more are dropped:
/// recording access is best effort).
const MAX_NOTED: usize = 1 << 20;

/// The hash parts of paths served since the last flush.
#[derive(Default)]
pub struct AccessLog {
    seen: Mutex<HashSet<String>>,
}

impl AccessLog {
    /// Notes that the narinfo of `hash_part` was served.
    pub fn note(&self, hash_part: &str) {
        let mut seen = self.seen.lock();
        if seen.len() < MAX_NOTED && !seen.contains(hash_part) {
            seen.insert(hash_part.to_string());
        }
    }

    fn take(&self) -> HashSet<String> {
        std::mem::take(&mut *self.seen.lock())
    }
}

/// Writes the paths served since the last call whose recorded use is older than
/// [`ACCESS_GRANULARITY_SECS`]; paths that are not uploaded ones are skipped. Returns
/// how many it recorded.
pub async fn flush_access(s: &Shared, node: &Arc<Node>) -> Result<usize, ServerError> {
    let seen = s.access.take();
    if seen.is_empty() {
        return Ok(0);
    }
    let at = now();
    let st = node.clone();
    let stale: Vec<String> = tokio::task::spawn_blocking(move || {
        let state = st.state();
        let mut out = Vec::new();
        for h in seen {
            let Some(used) = state.last_used(&h)? else {
                continue;
            };
            if at.saturating_sub(used) >= ACCESS_GRANULARITY_SECS {
                out.push(h);
            }
        }
        Ok::<_, cluster::RaftStoreError>(out)
    })
    .await??;
    for chunk in stale.chunks(CHUNK) {
        let cmd = Command::Touch {
            hash_parts: chunk.to_vec(),
            at,
        };
        write(node, cmd).await?;
    }
    Ok(stale.len())
}

/// What a GC pass did (or, dry, would do).
#[derive(Debug, Clone, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    /// Uploaded paths when the pass was planned.
    pub paths: usize,
    /// Paths the plan chose to delete.
    pub planned: usize,
    /// Paths deleted (0 on a dry run).
    pub deleted: usize,
    /// Planned victims kept when applied: changed, pinned or referenced since the plan.
    pub kept_since_plan: usize,
    /// Bytes of one copy of every blob the paths name, and of those the plan frees.
    pub bytes: u64,
    pub bytes_freed: u64,
    pub over_high_watermark: bool,
    /// The planned victims' store path hash parts (dry runs only, at most 1000).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub victims: Vec<String>,
}

/// One GC pass: plans from this node's applied state and proposes the deletions
/// through the leader, which re-checks every victim as it applies them.
pub async fn gc_pass(s: &Shared, node: &Arc<Node>, dry_run: bool) -> Result<GcReport, ServerError> {
    let st = node.clone();
    let input = tokio::task::spawn_blocking(move || st.state().gc_input(now())).await??;
    let plan = cluster::gc::plan(&input);
    let mut report = GcReport {
        dry_run,
        paths: plan.paths,
        planned: plan.victims.len(),
        deleted: 0,
        kept_since_plan: 0,
        bytes: plan.bytes,
        bytes_freed: plan.bytes_freed,
        over_high_watermark: plan.over_high_watermark,
        victims: Vec::new(),
    };
    if dry_run {
        report.victims = plan
            .victims
            .iter()
            .take(1000)
            .map(|v| v.hash_part.clone())
            .collect();
        return Ok(report);
    }
    for chunk in plan.victims.chunks(CHUNK) {
        let cmd = Command::DeletePaths {
            victims: chunk.to_vec(),
            at: now(),
        };
        if let Applied::PathsDeleted { deleted, kept } = write(node, cmd).await? {
            report.deleted += deleted;
            report.kept_since_plan += kept;
        }
    }
    s.metrics
        .gc_paths_deleted
        .fetch_add(report.deleted as u64, std::sync::atomic::Ordering::Relaxed);
    if report.deleted > 0 {
        tracing::info!(
            deleted = report.deleted,
            kept = report.kept_since_plan,
            bytes_freed = report.bytes_freed,
            "GC deleted paths"
        );
    }
    Ok(report)
}

/// The background side: served paths recorded every minute (any node), and on the
/// leader a GC pass every `interval` (none when zero) while some retention limit is set.
pub async fn gc_loop(s: Shared, node: Arc<Node>, interval: Duration) {
    let mut flush = tokio::time::interval(ACCESS_FLUSH);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_pass = tokio::time::Instant::now();
    loop {
        flush.tick().await;
        if let Err(e) = flush_access(&s, &node).await {
            tracing::debug!(error = %e, "recording served paths failed");
        }
        if interval.is_zero() || last_pass.elapsed() < interval || !node.is_leader() {
            continue;
        }
        last_pass = tokio::time::Instant::now();
        let st = node.clone();
        let limits = tokio::task::spawn_blocking(move || st.state().retention())
            .await
            .ok()
            .and_then(Result::ok)
            .flatten()
            .is_some_and(|r| cluster::gc::limits_set(&r));
        if limits {
            if let Err(e) = gc_pass(&s, &node, false).await {
                tracing::warn!(error = %e, "GC pass failed");
            }
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct GcRequest {
    #[serde(default)]
    pub dry_run: bool,
}

/// `POST /api/v1/gc` (admin): one GC pass now.
pub async fn run_gc(
    State(s): State<Shared>,
    headers: HeaderMap,
    Json(req): Json<GcRequest>,
) -> Result<Response, ServerError> {
    s.auth.check(&s.catalog, &headers, Scope::Admin)?;
    let node = s.catalog.node().clone();
    Ok(Json(gc_pass(&s, &node, req.dry_run).await?).into_response())
}

/// `GET /api/v1/pins` (admin).
pub async fn list_pins(
    State(s): State<Shared>,
    headers: HeaderMap,
) -> Result<Response, ServerError> {
    s.auth.check(&s.catalog, &headers, Scope::Admin)?;
    let node = s.catalog.node().clone();
    let pins = tokio::task::spawn_blocking(move || node.state().pins()).await??;
    Ok(Json(pins).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PinRequest {
    #[serde(default)]
    pub reason: Option<String>,
}

/// The hash part of a store path given whole (`/nix/store/<hash>-<name>`), as a base
/// name, or as a hash part.
fn hash_part_of(s: &AppState, path: &str) -> Result<String, ServerError> {
    let hash = leading_hash_part(&s.config.store_dir, path)?;
    // What follows the hash in the base name, if anything, is `-<name>`.
    let base = path.rsplit('/').next().unwrap_or(path);
    if base.len() > 32 && base.as_bytes()[32] != b'-' {
        return Err(ServerError::BadHash);
    }
    Ok(hash.to_string())
}

/// `PUT /api/v1/pins/{path}` (admin): pins a path (which need not be uploaded yet).
pub async fn put_pin(
    State(s): State<Shared>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Option<Json<PinRequest>>,
) -> Result<Response, ServerError> {
    s.auth.check(&s.catalog, &headers, Scope::Admin)?;
    let node = s.catalog.node().clone();
    let reason = body.and_then(|Json(b)| b.reason);
    if reason.as_ref().is_some_and(|r| r.len() > 500) {
        return Err(ServerError::BadRequest("pin reason longer than 500 bytes"));
    }
    let pin = PinRecord {
        hash_part: hash_part_of(&s, &path)?,
        reason,
        pinned: now(),
    };
    write(&node, Command::Pin { pin: pin.clone() }).await?;
    Ok(Json(pin).into_response())
}

/// `DELETE /api/v1/pins/{path}` (admin): 404 when the path was not pinned.
pub async fn delete_pin(
    State(s): State<Shared>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ServerError> {
    s.auth.check(&s.catalog, &headers, Scope::Admin)?;
    let node = s.catalog.node().clone();
    let hash_part = hash_part_of(&s, &path)?;
    match write(&node, Command::Unpin { hash_part }).await? {
        Applied::Unpinned { was_pinned: true } => {
            Ok(axum::http::StatusCode::NO_CONTENT.into_response())
        }
        _ => Err(ServerError::NotFound),
    }
}

/// `GET /api/v1/retention` (admin): the settings (all limits absent when never set).
pub async fn get_retention(
    State(s): State<Shared>,
    headers: HeaderMap,
) -> Result<Response, ServerError> {
    s.auth.check(&s.catalog, &headers, Scope::Admin)?;
    let node = s.catalog.node().clone();
    let r = tokio::task::spawn_blocking(move || node.state().retention()).await??;
    Ok(Json(r.unwrap_or_default()).into_response())
}

/// `PUT /api/v1/retention` (admin): replaces the settings.
pub async fn put_retention(
    State(s): State<Shared>,
    headers: HeaderMap,
    Json(mut settings): Json<RetentionSettings>,
) -> Result<Response, ServerError> {
    s.auth.check(&s.catalog, &headers, Scope::Admin)?;
    let node = s.catalog.node().clone();
    if let (Some(low), Some(high)) = (settings.low_watermark_bytes, settings.high_watermark_bytes) {
        if low > high {
            return Err(ServerError::BadRequest(
                "low_watermark_bytes must not exceed high_watermark_bytes",
            ));
        }
    }
    if settings.low_watermark_bytes.is_some() && settings.high_watermark_bytes.is_none() {
        return Err(ServerError::BadRequest(
            "low_watermark_bytes needs high_watermark_bytes",
        ));
    }
    settings.set_at = now();
    write(
        &node,
        Command::SetRetention {
            settings: settings.clone(),
        },
    )
    .await?;
    Ok(Json(settings).into_response())
}
