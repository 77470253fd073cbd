//! The cluster's write and read paths for blobs, and the repair worker.
//!
//! Writing (any node): the upload is ingested here (staged, verified, fsynced, renamed);
//! then copied to every other member at once, each of which checks that the bytes hash
//! to the blob's FileHash (the bytes verified here) and fsyncs them before answering;
//! then every node that holds it is registered through Raft; then the path record. The
//! state machine accepts the path only when its blob has the holders the rule requires,
//! so a narinfo is never visible with fewer than two copies.
//!
//! Reading a blob this node lacks: fetched from a holder into the local blob store
//! (checked against its FileHash), registered, then served from disk: the response head
//! goes out only once the bytes are here and checked.
//!
//! Repair: every `repair_interval_secs`, each node fetches the blobs that have fewer
//! copies than `replicas` and that it does not hold, one at a time.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use nix_formats::Hash;
use reqwest::Method;
use store::blobs::{AfterStore, ExpectedNar};
use store::meta::{BlobRecord, PathRecord, TokenRecord};

use cluster::command::{BlobEntry, Command, NodeId, Rejection};
use cluster::{Member, Node, WriteError};

use crate::auth::now;
use crate::config::ClusterConfig;
use crate::error::ServerError;
use crate::state::{AppState, Shared};
use crate::upload::{blob_error, with_body_reader};

/// Headers of a blob copy (`PUT /internal/v1/blobs/<filehash>`).
pub const HEADER_COMPRESSION: &str = "cairn-compression";
pub const HEADER_NAR_HASH: &str = "cairn-nar-hash";
pub const HEADER_NAR_SIZE: &str = "cairn-nar-size";

/// The crash tests' hook: with `CAIRN_FAILPOINT=<step>` in its environment, a node
/// dies on the spot (as under SIGKILL: no unwinding, no clean-up) when it reaches that
/// step: `mid-body` (the first bytes of a request body handed to its reader: an
/// upload's, a peer's copy, a session part), `after-ingest` (an uploaded blob is on this
/// disk, nothing registered), `after-copy` (a peer verified and kept its copy, not
/// registered), `after-register` (enough copies registered, the NAR not yet answered),
/// `before-path` (the narinfo verified, not yet proposed), `after-path` (committed, not
/// yet answered). Read once; unset (always, outside tests), it costs a comparison at
/// each of those steps.
pub(crate) fn failpoint(step: &str) {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    let armed = ARMED.get_or_init(|| std::env::var("CAIRN_FAILPOINT").ok());
    if armed.as_deref() == Some(step) {
        eprintln!("CAIRN_FAILPOINT={step}: dying here");
        std::process::abort();
    }
}

fn unavailable(e: WriteError) -> ServerError {
    match e {
        WriteError::Refused(m) => ServerError::Conflict(m),
        other => ServerError::Unavailable(other.to_string()),
    }
}

/// The file hashes of the blob entries `pick` takes, walked on the blocking pool in
/// file hash order. `pick` answers (take this one, go on).
async fn select_blobs(
    node: &Node,
    mut pick: impl FnMut(&BlobEntry) -> (bool, bool) + Send + 'static,
) -> Result<Vec<Hash>, ServerError> {
    let st = node.state().clone();
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        st.for_each_blob(|e| {
            let (take, go_on) = pick(&e);
            if take {
                out.push(e.blob.file_hash);
            }
            go_on
        })
        .map(|()| out)
    })
    .await?
    .map_err(ServerError::from)
}

/// The copies of every blob repair keeps: `replicas`, capped by the number of members.
pub fn replica_target(s: &AppState, members: usize) -> usize {
    s.config.cluster.replicas.min(members.max(1))
}

/// Registers this node as a holder of `blob` through Raft.
async fn register_self(node: &Node, blob: BlobRecord) -> Result<(), ServerError> {
    register_holder(node, blob, node.id(), now()).await
}

/// Registers `holder` as a holder of `blob` through Raft, as of `at`.
async fn register_holder(
    node: &Node,
    blob: BlobRecord,
    holder: NodeId,
    at: u64,
) -> Result<(), ServerError> {
    let cmd = Command::RegisterHolder {
        blob,
        node: holder,
        at,
    };
    node.write(cmd)
        .await
        .map_err(unavailable)?
        .map(|_| ())
        .map_err(rejected)
}

/// Deletes this node's file of the blob and any copy of it held in memory.
fn drop_local_copy(s: &AppState, file_hash: &Hash) -> Result<(), ServerError> {
    s.variants.forget(&blob_memory_key(file_hash));
    s.blobs.remove(file_hash).map_err(blob_error)
}

/// The variant cache key under which a small stored blob is held in memory.
pub fn blob_memory_key(file_hash: &Hash) -> String {
    format!("blob-{}", file_hash.to_nix32())
}

/// Proposes `cmd` through the leader: what it applied, or the error a handler answers
/// (503 without a leader, 409 when Raft refuses, a rejection as [`rejected`] maps it).
pub async fn write(node: &Node, cmd: Command) -> Result<cluster::Applied, ServerError> {
    node.write(cmd)
        .await
        .map_err(unavailable)?
        .map_err(rejected)
}

fn rejected(r: Rejection) -> ServerError {
    match r {
        Rejection::TooFewHolders { .. } => ServerError::Unavailable(r.to_string()),
        other => ServerError::Rejected(other.to_string()),
    }
}

/// Makes a freshly ingested blob durable in the catalog: copied to the peers (if any)
/// and registered with its holders. Fails with 503 when fewer nodes than a path needs
/// hold a verified copy.
pub async fn commit_blob(s: &Shared, rec: &BlobRecord) -> Result<(), ServerError> {
    replicate(s, s.catalog.node(), rec, None, async { Ok(()) }).await?;
    failpoint("after-register");
    Ok(())
}

/// Which verified peer copies the upload's own entry registers: peers whose copy
/// verified while it was still being gathered. A copy that verifies after the entry
/// went out registers itself.
struct Gathered {
    open: bool,
    verified: Vec<NodeId>,
}

/// The cluster's write path for one ingested blob (and the path naming it, when the
/// upload brought both). Copies go to every peer lacking one, each in a task of its
/// own; as soon as this node and the verified copies make the number a path needs, one
/// Raft entry registers them all, and the path with them (once `ready`, which may wait
/// for the path's references). Copies that finish later register in entries of their
/// own; a peer that is down or cut off is left to repair.
async fn replicate(
    s: &Shared,
    node: &Arc<Node>,
    rec: &BlobRecord,
    path: Option<&PathRecord>,
    ready: impl std::future::Future<Output = Result<(), ServerError>>,
) -> Result<(), ServerError> {
    failpoint("after-ingest");
    let me = node.id();
    let already: Vec<NodeId> = node.state().holders(&rec.file_hash)?;
    let required = node.required_holders();
    let peers: Vec<Member> = node
        .members()
        .into_iter()
        .filter(|m| m.node_id != me && !already.contains(&m.node_id))
        .collect();
    let at = now();
    let gathered = Arc::new(parking_lot::Mutex::new(Gathered {
        open: true,
        verified: Vec::new(),
    }));
    let peer_count = peers.len();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<(), String>>(peer_count.max(1));
    for m in peers {
        let (tx, s2, node2, rec2, gathered) = (
            tx.clone(),
            s.clone(),
            node.clone(),
            rec.clone(),
            gathered.clone(),
        );
        tokio::spawn(async move {
            let r = match copy_to(&s2, &node2, &m, &rec2).await {
                Ok(()) => {
                    failpoint("after-copy");
                    s2.metrics
                        .blob_copies
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let joined = {
                        let mut g = gathered.lock();
                        if g.open {
                            g.verified.push(m.node_id);
                        }
                        g.open
                    };
                    if joined {
                        Ok(())
                    } else {
                        register_holder(&node2, rec2.clone(), m.node_id, at)
                            .await
                            .map_err(|e| e.to_string())
                    }
                }
                Err(e) => Err(e),
            };
            if let Err(e) = &r {
                tracing::warn!(node = m.node_id, file_hash = %rec2.file_hash, error = %e, "blob copy or registration failed; repair will retry");
            }
            let _ = tx.send(r).await;
        });
    }
    drop(tx);
    let copying = std::time::Instant::now();
    // This node's own copy counts unless it is registered already.
    let mine = usize::from(!already.contains(&me));
    let mut last_err = String::new();
    let mut reported = 0;
    loop {
        let verified = gathered.lock().verified.len();
        if already.len() + mine + verified >= required {
            break;
        }
        match rx.recv().await {
            Some(Ok(())) => reported += 1,
            Some(Err(e)) => {
                reported += 1;
                last_err = e;
            }
            None => {
                let holders = already.len() + mine + gathered.lock().verified.len();
                return Err(ServerError::Unavailable(format!(
                    "only {holders} node(s) hold a registered, verified copy; {required} required ({last_err})"
                )));
            }
        }
    }
    // Copies of the same bytes sent at once finish at about the same time: a copy
    // still going gets a moment more to join this entry (one Raft entry per upload
    // instead of one more per late copy). One much slower than the rest (a busy or
    // distant peer) registers itself when done; a peer that is down has failed already.
    let deadline = tokio::time::Instant::now() + gather_grace(copying.elapsed());
    while reported < peer_count {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(_)) => reported += 1,
            Ok(None) | Err(_) => break,
        }
    }
    let mut holders = {
        let mut g = gathered.lock();
        g.open = false;
        std::mem::take(&mut g.verified)
    };
    if mine == 1 {
        holders.insert(0, me);
    }
    if holders.is_empty() && path.is_none() {
        return Ok(());
    }
    ready.await?;
    if path.is_some() {
        failpoint("before-path");
    }
    let requires = match path {
        Some(p) => required_references(s, p)?,
        None => Vec::new(),
    };
    let started = std::time::Instant::now();
    let cmd = Command::CommitUpload {
        blob: rec.clone(),
        holders,
        at,
        path: path.cloned(),
        requires,
    };
    let r = node.write(cmd).await.map_err(unavailable)?;
    if path.is_some() {
        s.metrics.observe_commit(started.elapsed());
        failpoint("after-path");
    }
    r.map(|_| ()).map_err(rejected)
}

/// How long an upload's entry waits for copies still going once it has the copies it
/// needs: half as long again as the copies so far took, within 5 to 200 ms.
fn gather_grace(copies_took: Duration) -> Duration {
    (copies_took / 2).clamp(Duration::from_millis(5), Duration::from_millis(200))
}

/// The references of `rec` the upload relies on the cluster for (all but itself and
/// those the local Nix store serves; none when missing references are allowed): the
/// state machine refuses the path if GC deleted one after the upload checked it.
fn required_references(s: &AppState, rec: &PathRecord) -> Result<Vec<String>, ServerError> {
    if s.config.allow_missing_references {
        return Ok(Vec::new());
    }
    let me = rec.store_path.hash_part();
    let mut out = Vec::new();
    for r in &rec.references {
        let h = r.hash_part();
        let local = match &s.store {
            Some(l) => l.query_by_hash_part(&h)?.is_some(),
            None => false,
        };
        if h != me && !local {
            out.push(h);
        }
    }
    Ok(out)
}

/// Records a verified path through Raft.
pub async fn commit_path(s: &Shared, rec: &PathRecord) -> Result<(), ServerError> {
    failpoint("before-path");
    let requires = required_references(s, rec)?;
    let started = std::time::Instant::now();
    let r = s
        .catalog
        .node()
        .write(Command::PutPath {
            path: rec.clone(),
            requires,
        })
        .await
        .map_err(unavailable)?;
    s.metrics.observe_commit(started.elapsed());
    failpoint("after-path");
    r.map(|_| ()).map_err(rejected)
}

/// Records a blob and its path together (an upload session's last step), in the same
/// Raft entry as the blob's first holders, once the copies are made and `ready` is.
pub async fn commit_blob_and_path(
    s: &Shared,
    blob: &BlobRecord,
    path: &PathRecord,
    ready: impl std::future::Future<Output = Result<(), ServerError>>,
) -> Result<(), ServerError> {
    replicate(s, s.catalog.node(), blob, Some(path), ready).await
}

/// Stores a token through Raft.
pub async fn put_token(s: &Shared, rec: TokenRecord) -> Result<(), ServerError> {
    write(s.catalog.node(), Command::PutToken { token: rec })
        .await
        .map(|_| ())
}

/// Revokes a token; false when no token has that id.
pub async fn revoke_token(s: &Shared, id: String) -> Result<bool, ServerError> {
    Ok(matches!(
        write(s.catalog.node(), Command::RevokeToken { id }).await?,
        cluster::Applied::TokenRevoked { found: true }
    ))
}

/// How long a blob transfer between nodes may take: 10 s plus 10 MB/s. A peer slower
/// than that (paused, cut off behind a kept-alive connection) is given up on.
pub fn transfer_timeout(bytes: u64) -> Duration {
    Duration::from_secs(10) + Duration::from_millis(bytes / 10_000)
}

/// Sends this node's copy of `rec` to member `m`, which checks it hashes to the FileHash
/// and makes it durable before answering.
async fn copy_to(s: &AppState, node: &Node, m: &Member, rec: &BlobRecord) -> Result<(), String> {
    let Some((file, len)) = s
        .blobs
        .open_blob(&rec.file_hash)
        .map_err(|e| e.to_string())?
    else {
        return Err("the blob is not on this node's disk".into());
    };
    let body = match crate::zerocopy::Mapped::whole(file, len) {
        Ok(bytes) => reqwest::Body::from(bytes),
        Err((file, _)) => reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
            tokio::fs::File::from_std(file),
            256 << 10,
        )),
    };
    let rb = node
        .wire()
        .bulk_request(
            Method::PUT,
            &m.addr,
            &format!("/blobs/{}", rec.file_hash.to_nix32()),
            m.node_id,
        )
        .header(HEADER_COMPRESSION, rec.compression.name())
        .header(HEADER_NAR_HASH, rec.nar_hash.to_string())
        .header(HEADER_NAR_SIZE, rec.nar_size.to_string())
        .header(reqwest::header::CONTENT_LENGTH, len)
        .timeout(transfer_timeout(len))
        .body(body);
    cluster::net::send_json::<serde_json::Value>(rb, m.node_id, &m.addr)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Makes sure this node has a verified copy of the blob `file_hash` on disk, fetching it
/// from a holder when it has none. Errors mean no holder could deliver it.
pub async fn ensure_local(s: &Shared, file_hash: &Hash) -> Result<(), ServerError> {
    if s.blobs.contains(file_hash) {
        return Ok(());
    }
    let node = s.catalog.node().clone();
    let entry = node.state().blob(file_hash)?.ok_or(ServerError::NotFound)?;
    let me = node.id();
    for (&holder, _) in entry.holders.iter().filter(|(h, _)| **h != me) {
        let Some(addr) = node.addr_of(holder) else {
            continue;
        };
        match fetch_from(s, &node, holder, &addr, &entry.blob).await {
            Ok(()) => {
                // Registering is bookkeeping; the copy is already usable here.
                let node = node.clone();
                let blob = entry.blob.clone();
                tokio::spawn(async move {
                    if let Err(e) = register_self(&node, blob).await {
                        tracing::warn!(error = %e, "registering a fetched copy failed; repair will retry");
                    }
                });
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(holder, file_hash = %file_hash, error = %e, "fetching a blob from a holder failed")
            }
        }
    }
    Err(ServerError::NotFound)
}

/// This node's copy of a blob: opened from disk, or when this node has none, fetched
/// from a holder (verified) first.
pub async fn open_or_fetch(
    s: &Shared,
    file_hash: &Hash,
) -> Result<Option<(std::fs::File, u64)>, ServerError> {
    if let Some(f) = s.blobs.open_blob(file_hash).map_err(blob_error)? {
        return Ok(Some(f));
    }
    ensure_local(s, file_hash).await?;
    s.blobs.open_blob(file_hash).map_err(blob_error)
}

/// Streams the blob from `holder` into this node's blob store, verified.
async fn fetch_from(
    s: &Shared,
    node: &Node,
    holder: NodeId,
    addr: &str,
    blob: &BlobRecord,
) -> Result<(), String> {
    let resp = node
        .wire()
        .bulk_request(
            Method::GET,
            addr,
            &format!("/blobs/{}", blob.file_hash.to_nix32()),
            holder,
        )
        .timeout(transfer_timeout(blob.file_size))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("answered {}", resp.status()));
    }
    let st = s.clone();
    let blob = blob.clone();
    let body = Body::from_stream(resp.bytes_stream());
    with_body_reader(body, move |reader| {
        st.blobs
            .ingest_replica(
                reader,
                blob.compression,
                &blob.file_hash,
                ExpectedNar {
                    nar_hash: &blob.nar_hash,
                    nar_size: blob.nar_size,
                },
                blob.file_size,
                AfterStore::KeepCached,
            )
            .map(|_| ())
            .map_err(|e| ServerError::Rejected(e.to_string()))
    })
    .await
    .map_err(|e| e.to_string())
}

/// After `gone` left the cluster: unregisters every copy it was recorded as holding, so
/// the holder counts (and the path rule) see only members. Runs in the background.
pub fn forget_holder(node: Arc<Node>, gone: NodeId) {
    tokio::spawn(async move {
        let held = select_blobs(&node, move |e| (e.holders.contains_key(&gone), true))
            .await
            .unwrap_or_default();
        for file_hash in held {
            let cmd = Command::UnregisterHolder {
                file_hash,
                node: gone,
                only_if_unreferenced: false,
            };
            if let Err(e) = node.write(cmd).await {
                tracing::warn!(error = %e, node = gone, "unregistering a removed node's copies stopped");
                return;
            }
        }
    });
}

/// Deletes this node's orphans: copies of blobs no path names, registered here and
/// unreferenced (GC deleted their last path) longer than `grace` ago, or than the
/// retention settings' `blob_grace_secs` when that is longer (unregistered first,
/// refused if a path named the blob meanwhile, so a
/// copy a path needs is never deleted), and blob files nothing registers here that have
/// not been placed or wanted for `grace` (an upload refused half way, a copy whose
/// registration never came). Returns how many files it deleted.
pub async fn gc_orphans(s: &Shared, grace: Duration) -> Result<u64, ServerError> {
    let node = s.catalog.node().clone();
    if node.identity().is_none() {
        return Ok(0);
    }
    let me = node.id();
    let now_secs = now();
    let st = node.clone();
    let retention = tokio::task::spawn_blocking(move || st.state().retention()).await??;
    let grace = grace.max(Duration::from_secs(
        retention.map_or(0, |r| r.blob_grace_secs),
    ));
    let stale = select_blobs(&node, move |e| {
        let since = |at: u64| now_secs.saturating_sub(at) >= grace.as_secs();
        let old = e.holders.get(&me).is_some_and(|at| since(*at))
            && e.unreferenced_since.is_none_or(since);
        (e.refcount == 0 && old, true)
    })
    .await?;
    let mut deleted = 0;
    for h in stale {
        let cmd = Command::UnregisterHolder {
            file_hash: h.clone(),
            node: me,
            only_if_unreferenced: true,
        };
        match node.write(cmd).await.map_err(unavailable)? {
            // An upload of the same bytes restarts the file's age before it registers
            // its holders (see `store::blobs`): if one did, that registration may be
            // on its way, and the file stays. Unregistered now, it goes with the
            // unregistered files below once it is old enough.
            Ok(_) if placed_within(s, &h, grace) => {}
            Ok(_) => {
                drop_local_copy(s, &h)?;
                deleted += 1;
            }
            Err(Rejection::StillReferenced { .. }) => {}
            Err(r) => return Err(rejected(r)),
        }
    }
    let st = s.clone();
    let files = tokio::task::spawn_blocking(move || st.blobs.list())
        .await?
        .map_err(blob_error)?;
    let cutoff = std::time::SystemTime::now()
        .checked_sub(grace)
        .unwrap_or(std::time::UNIX_EPOCH);
    for (h, modified) in files {
        if modified > cutoff {
            continue;
        }
        // Looked up just before deleting: registered here means kept.
        let mine = node
            .state()
            .blob(&h)?
            .is_some_and(|e| e.holders.contains_key(&me));
        if !mine {
            drop_local_copy(s, &h)?;
            deleted += 1;
        }
    }
    if deleted > 0 {
        tracing::info!(deleted, "deleted orphan blobs");
    }
    Ok(deleted)
}

/// Whether this node's file of the blob was placed or wanted again within `grace`.
fn placed_within(s: &AppState, file_hash: &Hash, grace: Duration) -> bool {
    std::fs::metadata(s.blobs.blob_path(file_hash))
        .and_then(|m| m.modified())
        .is_ok_and(|t| t.elapsed().is_ok_and(|age| age < grace))
}

/// Sets aside a local blob that failed its check: its holder record goes first
/// (invariant 3), then the file; repair fetches a good copy later (a read does at
/// once). Without another copy (a cluster of one) the path's NAR answers 404.
pub async fn quarantine(s: &Shared, file_hash: &Hash) {
    tracing::error!(file_hash = %file_hash, "a stored blob does not hash to its name; removing this copy");
    let node = s.catalog.node();
    let cmd = Command::UnregisterHolder {
        file_hash: file_hash.clone(),
        node: node.id(),
        only_if_unreferenced: false,
    };
    if let Err(e) = node.write(cmd).await {
        // Still registered: the registry must agree before the file goes, so it
        // stays for the next check.
        tracing::warn!(error = %e, "could not unregister a corrupt copy; will retry");
        return;
    }
    if let Err(e) = drop_local_copy(s, file_hash) {
        tracing::warn!(error = %e, "removing a corrupt blob failed");
    }
    s.metrics
        .scrub_failures
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Re-hashes up to `budget` bytes of this node's blobs, resuming after `cursor` (a
/// file hash digest), and sets aside any that fail. Returns the new cursor (None after
/// the last blob: the next pass starts over).
pub async fn scrub_step(s: &Shared, cursor: Option<Vec<u8>>, budget: u64) -> Option<Vec<u8>> {
    let node = s.catalog.node().clone();
    let me = node.id();
    let after = cursor.clone();
    let mut total = 0u64;
    let list = select_blobs(&node, move |e| {
        let done = after
            .as_deref()
            .is_some_and(|a| e.blob.file_hash.digest() <= a);
        if done || !e.holders.contains_key(&me) {
            return (false, true);
        }
        total += e.blob.file_size;
        (true, total < budget)
    })
    .await
    .ok()?;
    let mut last = None;
    for h in list {
        let blobs = s.clone();
        let h2 = h.clone();
        let good = tokio::task::spawn_blocking(move || -> std::io::Result<bool> {
            let Some((file, _)) = blobs.blobs.open_blob(&h2).map_err(std::io::Error::other)? else {
                return Ok(false);
            };
            Ok(hash_of_file(&file)? == h2)
        })
        .await
        .unwrap_or(Ok(true))
        .unwrap_or(true);
        if !good {
            quarantine(s, &h).await;
        }
        last = Some(h.digest().to_vec());
    }
    last
}

/// The sha256 of the whole of `file`, read from its start whatever its offset
/// (blocking).
pub fn hash_of_file(file: &std::fs::File) -> std::io::Result<Hash> {
    use std::os::unix::fs::FileExt;
    let mut hasher = nix_formats::Sha256Hasher::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut at = 0;
    loop {
        let n = file.read_at(&mut buf, at)?;
        if n == 0 {
            return Ok(hasher.finish());
        }
        hasher.update(&buf[..n]);
        at += n as u64;
    }
}

/// The repair worker: every `repair_interval_secs` a scrub step and an orphan sweep,
/// and in a task of its own a repair pass (see the module docs), which may take hours
/// at its rate when a node catches up on a whole cache.
pub async fn repair_loop(s: Shared, c: ClusterConfig) {
    let every = Duration::from_secs(c.repair_interval_secs);
    let (s2, rate) = (s.clone(), c.repair_bytes_per_sec);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = repair_pass(&s2, rate).await {
                tracing::warn!(error = %e, "repair pass failed");
            }
        }
    });
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let budget = c.scrub_bytes_per_sec.saturating_mul(c.repair_interval_secs);
    let grace = Duration::from_secs(c.orphan_grace_secs);
    let mut cursor = None;
    loop {
        tick.tick().await;
        if budget > 0 {
            cursor = scrub_step(&s, cursor, budget).await;
        }
        if let Err(e) = gc_orphans(&s, grace).await {
            tracing::warn!(error = %e, "orphan sweep failed");
        }
    }
}

/// One pass: fetch every under-replicated blob this node lacks, at most `rate` bytes
/// per second on average (0: no cap). Returns how many it fetched.
pub async fn repair_pass(s: &Shared, rate: u64) -> Result<u64, ServerError> {
    let node = s.catalog.node().clone();
    let me = node.id();
    let members = node.members();
    if !members.iter().any(|m| m.node_id == me) {
        return Ok(0);
    }
    let target = replica_target(s, members.len());
    let member_ids: Vec<NodeId> = members.iter().map(|m| m.node_id).collect();
    let wanted = select_blobs(&node, move |e| {
        let take = e.under_replicated(&member_ids, target) && !e.holders.contains_key(&me);
        (take, true)
    })
    .await?;
    s.metrics
        .repair_backlog
        .store(wanted.len() as u64, std::sync::atomic::Ordering::Relaxed);
    let mut fetched = 0;
    let mut pace = Pace::new(rate);
    for h in wanted {
        if s.blobs.contains(&h) {
            // On disk but not registered (a crash between the two): register it.
            if let Some(entry) = node.state().blob(&h)? {
                register_self(&node, entry.blob).await?;
            }
        } else {
            ensure_local(s, &h).await?;
            if let Ok(Some(entry)) = node.state().blob(&h) {
                pace.took(entry.blob.file_size).await;
            }
        }
        fetched += 1;
        s.metrics
            .repair_backlog
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(fetched)
}

/// Keeps a run of transfers at `rate` bytes per second on average: after each one it
/// waits until the bytes so far fit the time so far. Time left unused (slow transfers,
/// blobs only registered) is credited for at most [`Pace::CREDIT`], so a slow start
/// does not buy a long burst at full speed later.
struct Pace {
    rate: u64,
    start: tokio::time::Instant,
    bytes: u64,
}

impl Pace {
    fn new(rate: u64) -> Self {
        Pace {
            rate,
            start: tokio::time::Instant::now(),
            bytes: 0,
        }
    }

    const CREDIT: Duration = Duration::from_secs(1);

    async fn took(&mut self, bytes: u64) {
        if self.rate == 0 {
            return;
        }
        let spent = Duration::from_secs_f64(self.bytes as f64 / self.rate as f64);
        let now = tokio::time::Instant::now();
        if self.start + spent + Self::CREDIT < now {
            self.start = now - spent - Self::CREDIT;
        }
        self.bytes = self.bytes.saturating_add(bytes);
        let due = Duration::from_secs_f64(self.bytes as f64 / self.rate as f64);
        tokio::time::sleep_until(self.start + due).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn repair_keeps_to_its_rate() {
        let start = tokio::time::Instant::now();
        let mut pace = Pace::new(1_000_000);
        pace.took(250_000).await;
        assert_eq!(start.elapsed(), Duration::from_millis(250));
        pace.took(750_000).await;
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        // Time left unused counts, up to a second of credit: after 5 s without a
        // transfer, a second's worth goes at once, and the next waits its second.
        tokio::time::advance(Duration::from_secs(5)).await;
        pace.took(1_000_000).await;
        assert_eq!(start.elapsed(), Duration::from_secs(6));
        pace.took(1_000_000).await;
        assert_eq!(start.elapsed(), Duration::from_secs(7));
        let mut free = Pace::new(0);
        free.took(u64::MAX).await;
        assert_eq!(start.elapsed(), Duration::from_secs(7));
    }
}
