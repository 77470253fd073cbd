//! Upload sessions (docs/api.md): the streamed, resumable way `cachectl push` and the
//! uploader send NARs. The client declares the path up front (NarHash, NarSize,
//! references), so every narinfo check is done before a byte of NAR is sent; the NAR
//! then arrives compressed as the client produces it, in parts.
//!
//! Two kinds of session:
//!
//! - **One part** (NarSize ≤ `upload_part_bytes`, nearly every path): kept in memory
//!   only. The part streams through the one-pass ingest straight into the blob store,
//!   checked against the declared NAR before the blob is placed. There is nothing to
//!   resume in an all-or-nothing request, so a restart simply forgets the session and
//!   the client creates a new one.
//! - **Several parts**: kept under `<cache>/sessions/<id>/` as `session.json` (what was
//!   declared and how far it got) and `data` (the compressed bytes so far). Each part is
//!   appended, checked to be whole zstd frames holding no more NAR than declared,
//!   fsynced, and only then is the progress recorded (atomically) and acknowledged. A
//!   torn part is cut off again at the recorded length, also after a crash. The last
//!   part makes the blob store verify `data` as a whole and rename that same file into
//!   place: the bytes are written once.
//!
//! Either way the blob and the path record are committed in one transaction, so the
//! narinfo appears whole or not at all.
//!
//! **References still on their way.** A path may be declared while one of its
//! references is itself being uploaded in a session open here: the client need not
//! wait for a whole chain of paths to land one after the other. The checks are the
//! same, only later: once its own blob is verified and copied to the peers, the last
//! part waits (at most [`REFERENCE_WAIT`]) until every reference is recorded, and only
//! then is the path; a reference whose session ends without it gets the upload
//! refused. A one-part session's answer says `early_dependents: true`, which is how
//! a client knows it may create its dependents' sessions right away.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path as FsPath, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use nix_formats::{Hash, HashAlgo, StoreDir, StorePath};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::json;
use store::blobs::{BlobStore, Compression, ExpectedNar, Ingested};
use store::meta::{BlobRecord, PathRecord, Scope};

use crate::auth::now;
use crate::error::ServerError;
use crate::state::AppState;
use crate::upload::{blob_error, content_length, with_body_reader};

type Shared = Arc<AppState>;

/// Sessions untouched this long are deleted with their bytes.
pub const SESSION_TTL_SECS: u64 = 24 * 3600;

/// How long a finished upload waits for references still being uploaded here before it
/// gives up with 503 (the client tries again). Below the clients' own patience with a
/// silent request (cachectl: 300 s).
pub const REFERENCE_WAIT: std::time::Duration = std::time::Duration::from_secs(240);

const SESSION_FILE: &str = "session.json";
const DATA_FILE: &str = "data";
const WRITE_BUFFER: usize = 256 * 1024;

/// What the client declared when it created the session.
#[derive(Debug, Clone)]
struct Declared {
    store_path: StorePath,
    nar_hash: Hash,
    nar_size: u64,
    references: Vec<StorePath>,
    deriver: Option<StorePath>,
    system: Option<String>,
    ca: Option<String>,
    /// Only the signatures that verify against `trusted_public_keys`.
    sigs: Vec<String>,
    compression: Compression,
}

impl Declared {
    /// Sessions for the same path, NAR and compression are the same upload.
    fn key(&self) -> String {
        format!(
            "{}:{}:{}",
            self.store_path.hash_part(),
            self.nar_hash.to_nix32(),
            self.compression.name()
        )
    }
}

/// How far a session got: NAR bytes received and the compressed bytes holding them.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct Progress {
    nar_offset: u64,
    file_size: u64,
}

struct Session {
    id: String,
    decl: Declared,
    /// Kept on disk (several parts) or in memory only (one part).
    on_disk: bool,
    /// Held by the part in flight: a second concurrent part finds it taken (409).
    progress: tokio::sync::Mutex<Progress>,
    /// `progress.nar_offset`, readable without the lock.
    offset: AtomicU64,
    /// Unix seconds of the last create, part or look.
    touched: AtomicU64,
}

impl Session {
    fn touch(&self) {
        self.touched.store(now(), Ordering::Relaxed);
    }

    fn expired(&self, at: u64) -> bool {
        self.touched.load(Ordering::Relaxed) + SESSION_TTL_SECS < at
    }
}

/// `session.json`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionFile {
    store_path: String,
    nar_hash: String,
    nar_size: u64,
    references: Vec<String>,
    deriver: Option<String>,
    system: Option<String>,
    ca: Option<String>,
    sigs: Vec<String>,
    compression: Compression,
    progress: Progress,
    touched: u64,
}

/// The open sessions of one `cairnd`.
pub struct Sessions {
    dir: PathBuf,
    store_dir: StoreDir,
    by_id: Mutex<HashMap<String, Arc<Session>>>,
    /// Woken whenever a session ends (its path recorded or not): uploads waiting for
    /// their references look again.
    ended: tokio::sync::Notify,
}

impl Sessions {
    /// Loads the multi-part sessions an earlier process left under `dir`, cutting each
    /// `data` back to its recorded length and dropping expired or unreadable ones.
    pub fn open(dir: PathBuf, store_dir: StoreDir) -> io::Result<Self> {
        fs::create_dir_all(&dir)?;
        let sessions = Sessions {
            dir,
            store_dir,
            by_id: Mutex::new(HashMap::new()),
            ended: tokio::sync::Notify::new(),
        };
        let at = now();
        for entry in fs::read_dir(&sessions.dir)? {
            let entry = entry?;
            let id = entry.file_name().to_string_lossy().into_owned();
            match sessions.load(&entry.path(), &id) {
                Ok(s) if !s.expired(at) => {
                    tracing::info!(id, path = %sessions.store_dir.display(&s.decl.store_path),
                        nar_offset = s.offset.load(Ordering::Relaxed), "resumable upload kept");
                    sessions.by_id.lock().insert(id, Arc::new(s));
                }
                Ok(_) => {
                    tracing::info!(id, "upload session expired; deleting it");
                    remove_dir(&entry.path());
                }
                Err(e) => {
                    tracing::warn!(id, error = %e, "unusable upload session; deleting it");
                    remove_dir(&entry.path());
                }
            }
        }
        Ok(sessions)
    }

    fn load(&self, dir: &FsPath, id: &str) -> io::Result<Session> {
        let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
        let file: SessionFile = serde_json::from_slice(&fs::read(dir.join(SESSION_FILE))?)
            .map_err(|e| bad(e.to_string()))?;
        let path = |p: &str| {
            self.store_dir
                .parse_path(p)
                .map_err(|e| bad(format!("{p}: {e}")))
        };
        let decl = Declared {
            store_path: path(&file.store_path)?,
            nar_hash: Hash::from_str(&file.nar_hash).map_err(|e| bad(e.to_string()))?,
            nar_size: file.nar_size,
            references: file
                .references
                .iter()
                .map(|r| path(r))
                .collect::<Result<_, _>>()?,
            deriver: file.deriver.as_deref().map(path).transpose()?,
            system: file.system,
            ca: file.ca,
            sigs: file.sigs,
            compression: file.compression,
        };
        // Whatever a crash left past the last acknowledged part is not part of it.
        let data = File::options().write(true).open(dir.join(DATA_FILE))?;
        if data.metadata()?.len() < file.progress.file_size {
            return Err(bad("data is shorter than its recorded progress".into()));
        }
        data.set_len(file.progress.file_size)?;
        data.sync_all()?;
        Ok(Session {
            id: id.to_string(),
            decl,
            on_disk: true,
            offset: AtomicU64::new(file.progress.nar_offset),
            progress: tokio::sync::Mutex::new(file.progress),
            touched: AtomicU64::new(file.touched),
        })
    }

    fn session_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// Sessions open now.
    pub fn len(&self) -> usize {
        self.by_id.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.lock().is_empty()
    }

    fn get(&self, id: &str) -> Option<Arc<Session>> {
        self.by_id.lock().get(id).cloned()
    }

    fn find(&self, key: &str) -> Option<Arc<Session>> {
        self.by_id
            .lock()
            .values()
            .find(|s| s.decl.key() == key)
            .cloned()
    }

    /// Whether a session open here is uploading `path` (compared by digest: nothing is
    /// encoded under the lock).
    fn uploading(&self, path: &StorePath) -> bool {
        self.by_id
            .lock()
            .values()
            .any(|s| s.decl.store_path.digest() == path.digest())
    }

    /// Forgets a session and deletes its files.
    fn remove(&self, id: &str) {
        let removed = self.by_id.lock().remove(id);
        if let Some(s) = removed {
            if s.on_disk {
                remove_dir(&self.session_dir(id));
            }
            self.ended.notify_waiters();
        }
    }

    /// Deletes sessions untouched for [`SESSION_TTL_SECS`] (none with a part in flight).
    /// Blocking (it deletes files). `cairnd` runs it hourly; creating a session runs it
    /// too.
    pub fn sweep(&self) {
        let at = now();
        let expired: Vec<String> = self
            .by_id
            .lock()
            .values()
            .filter(|s| s.expired(at) && s.progress.try_lock().is_ok())
            .map(|s| s.id.clone())
            .collect();
        for id in expired {
            tracing::info!(id, "upload session expired; deleting it");
            self.remove(&id);
        }
    }

    /// Writes `session.json` atomically and durably.
    fn save(&self, s: &Session, progress: Progress) -> io::Result<()> {
        let d = &s.decl;
        let dir = &self.store_dir;
        let file = SessionFile {
            store_path: dir.display(&d.store_path),
            nar_hash: d.nar_hash.to_nix32_string(),
            nar_size: d.nar_size,
            references: d.references.iter().map(|r| dir.display(r)).collect(),
            deriver: d.deriver.as_ref().map(|p| dir.display(p)),
            system: d.system.clone(),
            ca: d.ca.clone(),
            sigs: d.sigs.clone(),
            compression: d.compression,
            progress,
            touched: s.touched.load(Ordering::Relaxed),
        };
        let sdir = self.session_dir(&s.id);
        let tmp = sdir.join(format!("{SESSION_FILE}.tmp"));
        let mut f = File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(&file).map_err(io::Error::other)?)?;
        f.sync_all()?;
        fs::rename(&tmp, sdir.join(SESSION_FILE))?;
        File::open(&sdir)?.sync_all()
    }
}

fn remove_dir(dir: &FsPath) {
    if let Err(e) = fs::remove_dir_all(dir) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot delete an upload session");
        }
    }
}

/// `POST /api/v1/uploads`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    store_path: String,
    nar_hash: String,
    nar_size: u64,
    #[serde(default)]
    references: Vec<String>,
    #[serde(default)]
    deriver: Option<String>,
    #[serde(default)]
    system: Option<String>,
    #[serde(default)]
    ca: Option<String>,
    #[serde(default)]
    sigs: Vec<String>,
    #[serde(default)]
    compression: Option<String>,
}

fn reject(msg: impl Into<String>) -> ServerError {
    ServerError::Rejected(msg.into())
}

/// Whether the cache can serve this path: its own store or the local Nix store.
fn present(s: &AppState, hash_part: &str) -> Result<bool, ServerError> {
    if s.catalog.has_path(hash_part)? {
        return Ok(true);
    }
    Ok(match &s.store {
        Some(local) => local.query_by_hash_part(hash_part)?.is_some(),
        None => false,
    })
}

fn open_answer(s: &AppState, session: &Session) -> Response {
    Json(json!({
        "id": session.id,
        "nar_offset": session.offset.load(Ordering::Relaxed),
        "nar_size": session.decl.nar_size,
        "part_size": s.config.upload_part_bytes,
        "complete": false,
        // A one-part session ends with the one request that brings its bytes, so its
        // dependents may wait on it (module docs); a multi-part one may take hours.
        "early_dependents": !session.on_disk,
    }))
    .into_response()
}

/// Where a reference stands for an upload that declares it.
enum Reference {
    Recorded,
    Uploading,
    Missing,
}

/// Looks at the sessions first: a session ends only after its path is recorded (or
/// refused), so a reference found in neither place was not recorded in between.
fn reference(s: &AppState, path: &StorePath) -> Result<Reference, ServerError> {
    Ok(if s.sessions.uploading(path) {
        Reference::Uploading
    } else if present(s, &path.hash_part())? {
        Reference::Recorded
    } else {
        Reference::Missing
    })
}

/// Waits until every reference of `d` is recorded (in the cache or the local store),
/// as long as those that are not are being uploaded in sessions open here.
async fn references_recorded(s: &AppState, d: &Declared) -> Result<(), ServerError> {
    if s.config.allow_missing_references {
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + REFERENCE_WAIT;
    loop {
        // Registered before looking, so a session ending meanwhile still wakes us.
        let ended = s.sessions.ended.notified();
        tokio::pin!(ended);
        ended.as_mut().enable();
        let mut waiting_for = None;
        for r in d.references.iter().filter(|r| **r != d.store_path) {
            match reference(s, r)? {
                Reference::Recorded => {}
                Reference::Uploading => {
                    waiting_for.get_or_insert(r);
                }
                Reference::Missing => {
                    // Unavailable, not refused: a client retrying that reference's
                    // upload is between two sessions of it.
                    return Err(ServerError::Unavailable(format!(
                        "reference {} is neither in the cache nor being uploaded to it",
                        s.sessions.store_dir.display(r)
                    )));
                }
            }
        }
        let Some(r) = waiting_for else {
            return Ok(());
        };
        if tokio::time::timeout_at(deadline, ended).await.is_err() {
            return Err(ServerError::Unavailable(format!(
                "reference {} is still being uploaded after {} s; try again",
                s.sessions.store_dir.display(r),
                REFERENCE_WAIT.as_secs()
            )));
        }
    }
}

pub async fn create(
    State(s): State<Shared>,
    headers: HeaderMap,
    Json(req): Json<CreateRequest>,
) -> Result<Response, ServerError> {
    s.auth.check(&s.catalog, &headers, Scope::Push)?;
    let dir = &s.sessions.store_dir;
    let path = |p: &str, what: &str| {
        dir.parse_path(p).map_err(|e| {
            reject(format!(
                "{what} {p:?} is not a store path under {}: {e}",
                dir.as_str()
            ))
        })
    };
    let store_path = path(&req.store_path, "store_path")?;
    let nar_hash = Hash::from_str(&req.nar_hash)
        .map_err(|e| reject(format!("nar_hash {:?}: {e}", req.nar_hash)))?;
    if nar_hash.algo() != HashAlgo::Sha256 {
        return Err(reject("nar_hash must be a sha256 hash"));
    }
    let compression = match req.compression.as_deref() {
        None | Some("zstd") => Compression::Zstd,
        Some("none") => Compression::None,
        Some(other) => {
            return Err(reject(format!(
                "compression {other:?}: sessions take zstd or none"
            )))
        }
    };
    if req.nar_size == 0 {
        return Err(reject("nar_size 0: no NAR is empty"));
    }
    if req.nar_size > s.config.max_nar_upload_bytes {
        return Err(ServerError::TooLarge(s.config.max_nar_upload_bytes));
    }
    let references = req
        .references
        .iter()
        .map(|r| path(r, "reference"))
        .collect::<Result<Vec<_>, _>>()?;
    let deriver = req
        .deriver
        .as_deref()
        .map(|d| path(d, "deriver"))
        .transpose()?;

    if present(&s, &store_path.hash_part())? {
        return Ok(Json(json!({"id": null, "complete": true})).into_response());
    }
    if !s.config.allow_missing_references {
        let mut missing = Vec::new();
        for r in references.iter().filter(|r| **r != store_path) {
            if let Reference::Missing = reference(&s, r)? {
                missing.push(r);
            }
        }
        if let Some(first) = missing.first() {
            return Err(reject(format!(
                "{} reference(s) neither in the cache nor being uploaded to it, e.g. {}; \
                 upload them first",
                missing.len(),
                dir.display(first)
            )));
        }
    }
    let mut references = references;
    references.sort();
    let fingerprint =
        nix_formats::narinfo::fingerprint(dir, &store_path, &nar_hash, req.nar_size, &references);
    let decl = Declared {
        sigs: s.trusted.valid_signatures(&fingerprint, &req.sigs),
        store_path,
        nar_hash,
        nar_size: req.nar_size,
        references,
        deriver,
        system: req.system,
        ca: req.ca,
        compression,
    };

    s.sessions.sweep();
    // Creating again is how a client resumes: the same upload gets the same session.
    if let Some(existing) = s.sessions.find(&decl.key()) {
        existing.touch();
        return Ok(open_answer(&s, &existing));
    }
    s.blobs.check_space(decl.nar_size).map_err(blob_error)?;
    let id = format!("u_{}", hex::encode(rand::random::<[u8; 16]>()));
    let session = Arc::new(Session {
        id: id.clone(),
        on_disk: decl.nar_size > s.config.upload_part_bytes,
        decl,
        progress: tokio::sync::Mutex::new(Progress::default()),
        offset: AtomicU64::new(0),
        touched: AtomicU64::new(now()),
    });
    if session.on_disk {
        let state = s.clone();
        let sess = session.clone();
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            let sdir = state.sessions.session_dir(&sess.id);
            fs::create_dir(&sdir)?;
            let made = (|| {
                File::create(sdir.join(DATA_FILE))?.sync_all()?;
                state.sessions.save(&sess, Progress::default())?;
                File::open(&state.sessions.dir)?.sync_all()
            })();
            if made.is_err() {
                remove_dir(&sdir);
            }
            made
        })
        .await?
        .map_err(|e| match e.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
                ServerError::InsufficientStorage
            }
            _ => ServerError::Io(e),
        })?;
    }
    tracing::debug!(id, path = %req.store_path, nar_size = req.nar_size, "upload session created");
    s.sessions.by_id.lock().insert(id, session.clone());
    Ok(open_answer(&s, &session))
}

#[derive(Deserialize)]
pub struct PartQuery {
    nar_offset: Option<u64>,
}

fn unknown_session() -> Response {
    (
        StatusCode::NOT_FOUND,
        "no such upload session (finished, expired or never created); create it again\n",
    )
        .into_response()
}

fn conflict(offset: u64, why: &str) -> Response {
    (
        StatusCode::CONFLICT,
        Json(json!({"nar_offset": offset, "error": why})),
    )
        .into_response()
}

/// `PUT /api/v1/uploads/<id>?nar_offset=N`.
pub async fn put_part(
    State(s): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<PartQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ServerError> {
    s.auth.check(&s.catalog, &headers, Scope::Push)?;
    let at = q
        .nar_offset
        .ok_or(ServerError::BadRequest("a part needs ?nar_offset=N"))?;
    let Some(session) = s.sessions.get(&id) else {
        return Ok(unknown_session());
    };
    let Ok(mut progress) = session.progress.try_lock() else {
        return Ok(conflict(
            session.offset.load(Ordering::Relaxed),
            "another part of this session is in flight",
        ));
    };
    if at != progress.nar_offset {
        return Ok(conflict(
            progress.nar_offset,
            "nar_offset is not where the session is",
        ));
    }
    session.touch();
    if let Some(len) = content_length(&headers) {
        if len
            > s.config
                .max_nar_upload_bytes
                .saturating_sub(progress.file_size)
        {
            return Err(ServerError::TooLarge(s.config.max_nar_upload_bytes));
        }
        s.blobs.check_space(len).map_err(blob_error)?;
    }
    let state = s.clone();
    let sess = session.clone();
    let before = *progress;
    let outcome = with_body_reader(body, move |reader| {
        Ok(receive_part(&state, &sess, before, reader))
    })
    .await?;
    match outcome {
        Ok(PartOutcome::More(next)) => {
            *progress = next;
            session.offset.store(next.nar_offset, Ordering::Relaxed);
            Ok(Json(json!({
                "id": session.id,
                "nar_offset": next.nar_offset,
                "nar_size": session.decl.nar_size,
                "complete": false,
            }))
            .into_response())
        }
        Ok(PartOutcome::Complete(ingested)) => {
            // The blob is in place. The session stays open while its path is recorded
            // (uploads referencing it wait for that), and is over whatever the commit
            // says (a retry starts afresh and finds the blob already stored).
            let (blob, path) = records(&session.decl, &ingested);
            let committed = crate::replication::commit_blob_and_path(
                &s,
                &blob,
                &path,
                references_recorded(&s, &session.decl),
            )
            .await;
            drop(progress);
            s.sessions.remove(&id);
            committed?;
            tracing::info!(
                path = %s.sessions.store_dir.display(&session.decl.store_path),
                nar_size = ingested.nar_size,
                file_size = ingested.file_size,
                "upload complete; path registered"
            );
            Ok(Json(json!({
                "id": session.id,
                "nar_offset": ingested.nar_size,
                "nar_size": ingested.nar_size,
                "complete": true,
                "file_hash": ingested.file_hash.to_nix32_string(),
                "file_size": ingested.file_size,
            }))
            .into_response())
        }
        Err(PartError::Keep(e)) => Err(e),
        Err(PartError::Drop(e)) => {
            drop(progress);
            s.sessions.remove(&id);
            Err(e)
        }
    }
}

enum PartOutcome {
    More(Progress),
    Complete(Ingested),
}

/// A failed part either leaves the session where it was (the client can send the part
/// again) or ends it (the whole upload failed verification; nothing is kept).
enum PartError {
    Keep(ServerError),
    Drop(ServerError),
}

/// Receives one part on the blocking pool.
fn receive_part(
    s: &AppState,
    session: &Session,
    before: Progress,
    body: impl Read,
) -> Result<PartOutcome, PartError> {
    let d = &session.decl;
    let expected = ExpectedNar {
        nar_hash: &d.nar_hash,
        nar_size: d.nar_size,
    };
    let max = s.config.max_nar_upload_bytes;
    let ingested = if !session.on_disk {
        // The whole NAR in this one request.
        s.blobs
            .ingest_expecting(body, d.compression, expected, max)
            .map_err(|e| PartError::Drop(blob_error(e)))?
    } else {
        let sdir = s.sessions.session_dir(&session.id);
        let data = sdir.join(DATA_FILE);
        let next = append_part(
            &s.blobs,
            &data,
            d.compression,
            before,
            d.nar_size,
            max,
            body,
        )
        .map_err(PartError::Keep)?;
        if next.nar_offset < d.nar_size {
            s.sessions
                .save(session, next)
                .map_err(|e| PartError::Keep(space_or_io(e)))?;
            return Ok(PartOutcome::More(next));
        }
        // The last part: verify the whole and move it into the store.
        s.blobs
            .adopt(&data, d.compression, expected, max)
            .map_err(|e| PartError::Drop(blob_error(e)))?
    };
    Ok(PartOutcome::Complete(ingested))
}

fn space_or_io(e: io::Error) -> ServerError {
    match e.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
            ServerError::InsufficientStorage
        }
        _ => ServerError::Io(e),
    }
}

/// The records of a finished upload.
fn records(d: &Declared, ingested: &Ingested) -> (BlobRecord, PathRecord) {
    let at = now();
    let blob = BlobRecord {
        file_hash: ingested.file_hash.clone(),
        file_size: ingested.file_size,
        compression: ingested.compression,
        nar_hash: ingested.nar_hash.clone(),
        nar_size: ingested.nar_size,
        created: at,
    };
    let path = PathRecord {
        store_path: d.store_path.clone(),
        url_file_hash: ingested.file_hash.clone(),
        nar_hash: ingested.nar_hash.clone(),
        nar_size: ingested.nar_size,
        references: d.references.clone(),
        deriver: d.deriver.clone(),
        system: d.system.clone(),
        sigs: d.sigs.clone(),
        ca: d.ca.clone(),
        registered: at,
    };
    (blob, path)
}

/// Appends one part to `data` and returns the new progress; on any failure `data` is
/// cut back to where it was. The part must be whole frames (for zstd) holding at least
/// one and at most `nar_size - nar_offset` NAR bytes.
fn append_part(
    blobs: &BlobStore,
    data: &FsPath,
    compression: Compression,
    before: Progress,
    nar_size: u64,
    max_file: u64,
    body: impl Read,
) -> Result<Progress, ServerError> {
    let mut file = File::options().write(true).open(data)?;
    file.set_len(before.file_size)?;
    file.seek(SeekFrom::Start(before.file_size))?;
    let result = (|| {
        let mut tee = Tee {
            blobs,
            body,
            out: BufWriter::with_capacity(WRITE_BUFFER, &file),
            written: 0,
            room: max_file.saturating_sub(before.file_size),
            next_space_check: 1 << 20,
            failure: None,
        };
        let counted = match count_nar_bytes(&mut tee, compression) {
            Ok(n) => n,
            Err(e) => return Err(tee.failure.take().unwrap_or(e)),
        };
        let written = tee.written;
        tee.out
            .into_inner()
            .map_err(|e| space_or_io(e.into_error()))?
            .sync_data()
            .map_err(space_or_io)?;
        let nar_bytes = match counted {
            Some(n) => n,
            None => decoded_size(data, before.file_size, written)?,
        };
        if nar_bytes == 0 {
            return Err(reject("an empty part"));
        }
        let room = nar_size - before.nar_offset;
        if nar_bytes > room {
            return Err(reject(format!(
                "the part holds more NAR bytes than the {room} the session has left"
            )));
        }
        Ok(Progress {
            nar_offset: before.nar_offset + nar_bytes,
            file_size: before.file_size + written,
        })
    })();
    if result.is_err() {
        if let Err(e) = file.set_len(before.file_size) {
            tracing::warn!(data = %data.display(), error = %e, "cannot cut a failed part off");
        }
    }
    result
}

/// Reads the part through `tee` (which stores it) and counts its NAR bytes: for zstd,
/// the part must be whole frames, and the sizes their headers declare are the count
/// (`None` when a frame declares none). The content is decompressed and verified once,
/// when the finished upload is adopted.
fn count_nar_bytes(
    tee: &mut Tee<'_, impl Read>,
    compression: Compression,
) -> Result<Option<u64>, ServerError> {
    match compression {
        // Block headers are read a few bytes at a time: buffer the body.
        Compression::Zstd => {
            crate::zstd_frames::content_size(&mut io::BufReader::with_capacity(64 * 1024, tee))
                .map_err(not_whole_frames)
        }
        _ => io::copy(tee, &mut io::sink())
            .map(Some)
            .map_err(ServerError::Io),
    }
}

/// The NAR bytes in `len` bytes of zstd frames at `offset` of `data`, by decompressing
/// them (a part whose frame headers do not say).
fn decoded_size(data: &FsPath, offset: u64, len: u64) -> Result<u64, ServerError> {
    let mut file = File::open(data)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut decoder = zstd::stream::read::Decoder::new(io::Read::take(file, len))?;
    io::copy(&mut decoder, &mut io::sink()).map_err(not_whole_frames)
}

fn not_whole_frames(e: impl std::fmt::Display) -> ServerError {
    reject(format!(
        "the part is not whole zstd frames (cut short or corrupt): {e}"
    ))
}

/// Writes what is read from the body into the session's `data` file.
struct Tee<'a, R> {
    blobs: &'a BlobStore,
    body: R,
    out: BufWriter<&'a File>,
    written: u64,
    room: u64,
    next_space_check: u64,
    /// The real reason a read failed (the body, the disk, the cap).
    failure: Option<ServerError>,
}

impl<R: Read> Tee<'_, R> {
    fn fail(&mut self, e: ServerError) -> io::Error {
        self.failure = Some(e);
        io::Error::other("part intake failed")
    }
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.failure.is_some() {
            return Err(io::Error::other("part intake failed"));
        }
        let n = match self.body.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => {
                tracing::debug!(error = %e, "part body broke off");
                return Err(self.fail(reject("the part's body broke off before its end")));
            }
        };
        let written = self.written + n as u64;
        if written > self.room {
            let max = self.room;
            return Err(self.fail(ServerError::TooLarge(max)));
        }
        if let Err(e) = self.out.write_all(&buf[..n]) {
            let e = space_or_io(e);
            return Err(self.fail(e));
        }
        self.written = written;
        if written >= self.next_space_check {
            self.next_space_check = written + (1 << 20);
            if let Err(e) = self.blobs.check_reserve(written) {
                return Err(self.fail(blob_error(e)));
            }
        }
        Ok(n)
    }
}

/// `GET /api/v1/uploads/<id>`.
pub async fn look(
    State(s): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ServerError> {
    s.auth.check(&s.catalog, &headers, Scope::Push)?;
    let Some(session) = s.sessions.get(&id) else {
        return Ok(unknown_session());
    };
    session.touch();
    Ok(Json(json!({
        "id": session.id,
        "nar_offset": session.offset.load(Ordering::Relaxed),
        "nar_size": session.decl.nar_size,
        "complete": false,
        "busy": session.progress.try_lock().is_err(),
    }))
    .into_response())
}

/// `DELETE /api/v1/uploads/<id>`.
pub async fn abort(
    State(s): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ServerError> {
    s.auth.check(&s.catalog, &headers, Scope::Push)?;
    let Some(session) = s.sessions.get(&id) else {
        return Ok(unknown_session());
    };
    if session.progress.try_lock().is_err() {
        return Ok(conflict(
            session.offset.load(Ordering::Relaxed),
            "a part of this session is in flight",
        ));
    }
    let state = s.clone();
    tokio::task::spawn_blocking(move || state.sessions.remove(&id)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
