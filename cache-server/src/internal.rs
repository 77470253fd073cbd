//! The internal API: what cluster nodes ask of each other, on the cluster listener only
//! (`[cluster] listen`), never on the public one. See [`cluster::net`] for the headers
//! every request carries; [`guard`] checks them before any handler runs.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use cluster::command::Command;
use cluster::net::{SnapshotHead, HEADER_CLUSTER, HEADER_TARGET};
use cluster::node::{Adopt, ForwardedWriteError, MembershipChange, ReadIndex};
use cluster::raft::{AppendRequest, Snapshot, SnapshotFile, VoteRequest};
use nix_formats::Hash;
use store::blobs::{AfterStore, Compression, ExpectedNar};

use crate::error::ServerError;
use crate::metrics::Refusal;
use crate::replication::{HEADER_COMPRESSION, HEADER_NAR_HASH, HEADER_NAR_SIZE};
use crate::state::Shared;
use crate::upload::with_body_reader;

/// The first line of a snapshot transfer is JSON of at most this many bytes.
const MAX_SNAPSHOT_HEAD: u64 = 1 << 20;
/// Append requests carry batches of entries; path records are small.
const MAX_RAFT_BODY: usize = 256 << 20;

pub fn router(s: Shared) -> Router {
    Router::new()
        .route("/internal/v1/raft/append", post(append))
        .route("/internal/v1/raft/vote", post(vote))
        .route("/internal/v1/raft/pre-vote", post(pre_vote))
        .route("/internal/v1/raft/snapshot", post(snapshot))
        .route("/internal/v1/raft/write", post(write))
        .route("/internal/v1/raft/read-index", post(read_index))
        .route("/internal/v1/cluster/adopt", post(adopt))
        .route("/internal/v1/cluster/change", post(change))
        .route("/internal/v1/status", get(status))
        .route("/internal/v1/blobs/{file}", put(put_blob).get(get_blob))
        .layer(DefaultBodyLimit::max(MAX_RAFT_BODY))
        .layer(middleware::from_fn_with_state(s.clone(), guard))
        .with_state(s)
}

fn refuse(status: StatusCode, msg: &str) -> Response {
    (status, format!("{msg}\n")).into_response()
}

/// Checks the secret, the target node and the cluster id of every internal request.
async fn guard(State(s): State<Shared>, req: Request, next: Next) -> Response {
    let refused = |why: Refusal, status: StatusCode, msg: &str| {
        s.metrics.refused(why);
        refuse(status, msg)
    };
    let node = s.catalog.node();
    let h = req.headers();
    let presented = h
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !node.wire().secret().matches(presented) {
        return refused(
            Refusal::Secret,
            StatusCode::UNAUTHORIZED,
            "wrong or missing cluster secret",
        );
    }
    let target = h.get(HEADER_TARGET).and_then(|v| v.to_str().ok());
    if target != Some(node.id().to_string().as_str()) {
        return refused(
            Refusal::Target,
            StatusCode::MISDIRECTED_REQUEST,
            &format!(
                "this is node {}, not node {}",
                node.id(),
                target.unwrap_or("?")
            ),
        );
    }
    let cluster = h.get(HEADER_CLUSTER).and_then(|v| v.to_str().ok());
    let adopting = req.uri().path() == "/internal/v1/cluster/adopt";
    match (node.identity(), cluster) {
        (Some(id), Some(c)) if id.cluster_id.as_str() == c => {}
        (Some(id), _) => {
            return refused(
                Refusal::Cluster,
                StatusCode::FORBIDDEN,
                &format!("this node belongs to cluster {}", id.cluster_id),
            )
        }
        (None, _) if adopting => {}
        (None, _) => {
            return refused(
                Refusal::NoIdentity,
                StatusCode::CONFLICT,
                "this node has no cluster identity (never joined, or wiped: then it rejoins under a new node id)",
            )
        }
    }
    next.run(req).await
}

/// A Raft RPC's answer as JSON, or its error as a 500 with the reason.
fn raft_answer<T: serde::Serialize>(r: Result<T, impl std::fmt::Display>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

async fn append(
    State(s): State<Shared>,
    Json(req): Json<AppendRequest>,
) -> Result<Response, ServerError> {
    let node = s.catalog.node();
    Ok(raft_answer(node.raft().append_entries(req).await))
}

async fn vote(
    State(s): State<Shared>,
    Json(req): Json<VoteRequest>,
) -> Result<Response, ServerError> {
    let node = s.catalog.node();
    Ok(raft_answer(node.raft().vote(req).await))
}

async fn pre_vote(
    State(s): State<Shared>,
    Json(req): Json<VoteRequest>,
) -> Result<Response, ServerError> {
    let node = s.catalog.node();
    Ok(raft_answer(node.raft().pre_vote(req).await))
}

/// Receives a snapshot: its head line, then its bytes into an unnamed file in the
/// snapshot directory (gone by itself if we crash), then hands it to Raft.
async fn snapshot(State(s): State<Shared>, body: Body) -> Result<Response, ServerError> {
    let node = s.catalog.node().clone();
    let dir = node.config().dir.join("snapshots");
    let (head, file) = with_body_reader(body, move |reader| {
        let mut reader = BufReader::with_capacity(256 << 10, reader);
        let mut line = Vec::new();
        (&mut reader)
            .take(MAX_SNAPSHOT_HEAD)
            .read_until(b'\n', &mut line)?;
        let head: SnapshotHead = serde_json::from_slice(&line)
            .map_err(|_| ServerError::BadRequest("snapshot head is not valid JSON"))?;
        let mut file = tempfile::tempfile_in(&dir)?;
        std::io::copy(&mut reader, &mut file)?;
        file.flush()?;
        file.seek(SeekFrom::Start(0))?;
        Ok((head, file))
    })
    .await?;
    let snap = Snapshot {
        meta: head.meta,
        snapshot: SnapshotFile::from_file(file),
    };
    Ok(raft_answer(
        node.raft().install_full_snapshot(head.vote, snap).await,
    ))
}

/// A write forwarded by another node: committed here if this node leads.
async fn write(State(s): State<Shared>, Json(cmd): Json<Command>) -> Result<Response, ServerError> {
    let node = s.catalog.node();
    Ok(match node.write_as_leader(cmd).await {
        Ok(r) => Json(r).into_response(),
        Err(ForwardedWriteError::NotLeader(n)) => {
            (StatusCode::MISDIRECTED_REQUEST, Json(n)).into_response()
        }
        Err(ForwardedWriteError::Refused(m)) => refuse(StatusCode::CONFLICT, &m),
        Err(ForwardedWriteError::Timeout) => refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "no quorum committed the write in time",
        ),
    })
}

async fn read_index(State(s): State<Shared>) -> Result<Response, ServerError> {
    let node = s.catalog.node();
    if !node.is_leader() {
        return Ok(refuse(StatusCode::MISDIRECTED_REQUEST, "not the leader"));
    }
    Ok(match node.read_index_as_leader().await {
        Ok(index) => Json(ReadIndex { index }).into_response(),
        Err(e) => refuse(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    })
}

async fn adopt(State(s): State<Shared>, Json(req): Json<Adopt>) -> Result<Response, ServerError> {
    let node = s.catalog.node();
    Ok(match node.adopt(req.cluster_id) {
        Ok(()) => Json(serde_json::json!({"node_id": node.id()})).into_response(),
        Err(e) => refuse(StatusCode::CONFLICT, &e.to_string()),
    })
}

async fn change(
    State(s): State<Shared>,
    Json(req): Json<MembershipChange>,
) -> Result<Response, ServerError> {
    let node = s.catalog.node();
    Ok(match node.change_as_leader(req).await {
        Ok(()) => Json(serde_json::json!({})).into_response(),
        Err(cluster::WriteError::Refused(m)) => refuse(StatusCode::CONFLICT, &m),
        Err(e) => refuse(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    })
}

async fn status(State(s): State<Shared>) -> Result<Response, ServerError> {
    let report = crate::api::local_node_status(&s).await?;
    Ok(Json(report).into_response())
}

fn parse_file_hash(file: &str) -> Result<Hash, ServerError> {
    Hash::parse_digest(nix_formats::HashAlgo::Sha256, file).map_err(|_| ServerError::BadHash)
}

/// A copy of a blob from a peer: kept once its bytes hash to the FileHash and are fsynced
/// (see `BlobStore::ingest_replica`).
async fn put_blob(
    State(s): State<Shared>,
    Path(file): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ServerError> {
    let file_hash = parse_file_hash(&file)?;
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let compression = text(HEADER_COMPRESSION)
        .and_then(Compression::from_name)
        .ok_or(ServerError::BadRequest(
            "missing or unknown cairn-compression",
        ))?;
    let nar_hash: Hash =
        text(HEADER_NAR_HASH)
            .and_then(|t| t.parse().ok())
            .ok_or(ServerError::BadRequest(
                "missing or malformed cairn-nar-hash",
            ))?;
    let nar_size: u64 =
        text(HEADER_NAR_SIZE)
            .and_then(|t| t.parse().ok())
            .ok_or(ServerError::BadRequest(
                "missing or malformed cairn-nar-size",
            ))?;
    if s.blobs.contains(&file_hash) {
        return Ok(Json(serde_json::json!({"stored": false})).into_response());
    }
    if let Some(len) = crate::upload::content_length(&headers) {
        s.blobs
            .check_space(len)
            .map_err(crate::upload::blob_error)?;
    }
    let st = s.clone();
    let max = s.config.max_nar_upload_bytes;
    with_body_reader(body, move |reader| {
        st.blobs
            .ingest_replica(
                reader,
                compression,
                &file_hash,
                ExpectedNar {
                    nar_hash: &nar_hash,
                    nar_size,
                },
                max,
                AfterStore::DropCached,
            )
            .map_err(crate::upload::blob_error)
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({"stored": true})),
    )
        .into_response())
}

/// This node's copy of a blob, for a peer that lacks it.
async fn get_blob(
    State(s): State<Shared>,
    Path(file): Path<String>,
) -> Result<Response, ServerError> {
    let file_hash = parse_file_hash(&file)?;
    let (file, len) = s
        .blobs
        .open_blob(&file_hash)
        .map_err(crate::upload::blob_error)?
        .ok_or(ServerError::NotFound)?;
    let body = match crate::zerocopy::Mapped::whole(file, len) {
        Ok(bytes) => Body::from(bytes),
        Err((file, _)) => Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
            tokio::fs::File::from_std(file),
            256 << 10,
        )),
    };
    Ok(Response::builder()
        .header(header::CONTENT_LENGTH, len)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(body)
        .expect("valid response"))
}
