//! `cachectl push`: uploads store paths and their closures through the cache's upload
//! sessions. [`Pusher`] is the engine `uploader` reuses: closures from the local Nix
//! database, one `missing` question per batch, then uploads in dependency order with a
//! bounded number in parallel. A path starts once every reference it has in the upload
//! set is in the cache, or is being uploaded in a session whose answer allowed early
//! dependents (the cache then records the path after its references): a chain of
//! small paths streams up `jobs` at a time instead of one round trip after another.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use indicatif::{HumanBytes, ProgressBar};
use nix_formats::{StoreDir, StorePath};
use serde::Serialize;
use store::{LocalStore, LocalStoreConfig, PathInfo};

use crate::client::{backoff, Client, ClientError, CreateUpload, ErrorKind, MISSING_BATCH};
use crate::closure::{self, InfoCache};
use crate::parts::{self, ProduceError};
use crate::progress;

/// Retries of a request that failed transiently, within one push. The uploader retries
/// further on its own schedule.
const RETRIES: u32 = 4;
const RETRY_BASE: Duration = Duration::from_secs(1);
const RETRY_CAP: Duration = Duration::from_secs(30);
/// A part request with no body chunk taken and no answer for this long is abandoned
/// (and retried): a dead connection must not hang an uploader forever.
const STALL: Duration = Duration::from_secs(300);

/// Where the cache is, how to log in, and the local store to read from: shared by
/// `push` and `uploader`.
#[derive(clap::Args, Clone, Debug)]
pub struct CacheArgs {
    /// The cache's base URL.
    #[arg(long, env = "CAIRN_URL", default_value = "http://127.0.0.1:5000")]
    pub cache: String,
    /// A file holding a push token (else the environment variable CAIRN_TOKEN).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Paths uploaded at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: u16,
    /// Skip closure members signed by this key (e.g. `cache.nixos.org-1`): they come
    /// from upstream. Repeatable.
    #[arg(long, value_name = "KEYNAME")]
    pub skip_signed_by: Vec<String>,
    /// The store directory of the local Nix store.
    #[arg(long, default_value = "/nix/store")]
    pub store_dir: String,
    /// Where the store's files really are, if not at --store-dir (a chroot store).
    #[arg(long, value_name = "DIR")]
    pub real_store_dir: Option<PathBuf>,
    /// Nix's database, opened read-only.
    #[arg(long, default_value = "/nix/var/nix/db/db.sqlite")]
    pub nix_db: PathBuf,
    /// zstd level the NARs are compressed with (1–19); the cache keeps and serves
    /// them as sent.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=19))]
    pub zstd_level: i32,
}

/// Upload store paths and their closures to a Cairn cache
///
/// Computes the closure of each PATH from the local Nix database, asks the cache which
/// of its paths it lacks, and uploads those, references first, several at once. NARs
/// are streamed from disk, zstd-compressed, in resumable parts. Exits non-zero, with a
/// line per failed path, if anything could not be uploaded.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub cache: CacheArgs,
    /// Print one JSON summary object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Store paths, or links to them such as ./result.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<String>,
}

/// What happened to one path.
#[derive(Debug, Clone)]
enum Status {
    Skipped,
    Present,
    Uploaded,
    Failed(ClientError),
}

/// One failed path, for the summary.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub path: String,
    pub reason: String,
}

/// The `--json` summary of a push.
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    /// Closure members looked at.
    pub considered: usize,
    /// Closure members left out by --skip-signed-by.
    pub skipped_signed: usize,
    pub already_present: usize,
    pub uploaded: usize,
    pub failed: usize,
    /// NAR bytes of the uploaded paths.
    pub nar_bytes: u64,
    /// Compressed bytes sent, retries included.
    pub wire_bytes: u64,
    pub seconds: f64,
    pub failures: Vec<Failure>,
}

/// How one group of roots (a queue entry) fared.
#[derive(Debug)]
pub enum GroupResult {
    /// Its whole closure is in the cache (or skipped as upstream's).
    Done,
    /// Something in it failed; `kind` says whether trying later may help.
    Failed { kind: ErrorKind, reason: String },
}

pub struct Pusher {
    client: Client,
    store: Arc<LocalStore>,
    jobs: usize,
    zstd_level: i32,
    skip_signed_by: Vec<String>,
    wire: Arc<AtomicU64>,
}

impl Pusher {
    pub fn new(args: &CacheArgs) -> Result<Self> {
        let token = crate::client::load_token(
            args.token_file.as_deref(),
            std::env::var("CAIRN_TOKEN").ok(),
        )?;
        let client = Client::new(&args.cache, token)?;
        let store_dir = StoreDir::new(&args.store_dir)
            .map_err(|e| anyhow::anyhow!("bad --store-dir {:?}: {e}", args.store_dir))?;
        let config = LocalStoreConfig {
            real_store_dir: args
                .real_store_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(store_dir.as_str())),
            store_dir,
            db_path: args.nix_db.clone(),
            log_dir: PathBuf::from("/nix/var/log/nix/drvs"),
        };
        let store = LocalStore::open(config).context("cannot open the local Nix store")?;
        Ok(Pusher {
            client,
            store: Arc::new(store),
            jobs: usize::from(args.jobs),
            zstd_level: args.zstd_level,
            skip_signed_by: args.skip_signed_by.clone(),
            wire: Arc::default(),
        })
    }

    pub fn store(&self) -> &LocalStore {
        &self.store
    }

    pub fn cache_url(&self) -> &str {
        self.client.base()
    }

    /// Pushes the closures of several groups of roots at once; says for each group
    /// whether all of its closure is now in the cache.
    pub async fn push(
        &self,
        groups: &[Vec<StorePath>],
        bar: &ProgressBar,
    ) -> (Vec<GroupResult>, Summary) {
        let start = Instant::now();
        let wire_before = self.wire.load(Ordering::Relaxed);
        let mut summary = Summary::default();

        // Closures, on the blocking pool (SQLite).
        let store = self.store.clone();
        let owned = groups.to_vec();
        let closures = tokio::task::spawn_blocking(move || {
            let mut cache = InfoCache::default();
            owned
                .iter()
                .map(|g| cache.closure(&store, g).map_err(|e| format!("{e:#}")))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_else(|e| {
            vec![Err(format!("reading the Nix database failed: {e}")); groups.len()]
        });

        // Their union, still references first.
        let mut infos: Vec<PathInfo> = Vec::new();
        let mut seen = HashSet::new();
        for info in closures.iter().flatten().flatten() {
            if seen.insert(info.path.clone()) {
                infos.push(info.clone());
            }
        }
        summary.considered = infos.len();
        let mut status: HashMap<StorePath, Status> = HashMap::new();
        let mut candidates = Vec::new();
        for info in &infos {
            if closure::signed_by(info, &self.skip_signed_by) {
                status.insert(info.path.clone(), Status::Skipped);
            } else {
                candidates.push(info);
            }
        }
        summary.skipped_signed = infos.len() - candidates.len();

        match self.missing(&candidates).await {
            Ok(absent) => {
                let mut missing: Vec<&PathInfo> = Vec::new();
                for info in &candidates {
                    if absent.contains(&info.path) {
                        missing.push(info);
                    } else {
                        status.insert(info.path.clone(), Status::Present);
                    }
                }
                bar.set_length(missing.iter().map(|i| i.nar_size).sum());
                self.upload_all(&missing, &mut status, bar).await;
            }
            Err(e) => {
                for info in &candidates {
                    status.insert(info.path.clone(), Status::Failed(e.clone()));
                }
            }
        }

        let dir = self.store.store_dir();
        for info in &infos {
            match &status[&info.path] {
                Status::Skipped => {}
                Status::Present => summary.already_present += 1,
                Status::Uploaded => {
                    summary.uploaded += 1;
                    summary.nar_bytes += info.nar_size;
                }
                Status::Failed(e) => summary.failures.push(Failure {
                    path: dir.display(&info.path),
                    reason: e.message.clone(),
                }),
            }
        }
        summary.failed = summary.failures.len();
        summary.wire_bytes = self.wire.load(Ordering::Relaxed) - wire_before;
        summary.seconds = start.elapsed().as_secs_f64();

        let results = closures
            .into_iter()
            .map(|closure| match closure {
                Err(reason) => GroupResult::Failed {
                    kind: ErrorKind::Permanent,
                    reason,
                },
                Ok(members) => {
                    let failed: Vec<(&PathInfo, &ClientError)> = members
                        .iter()
                        .filter_map(|i| match &status[&i.path] {
                            Status::Failed(e) => Some((i, e)),
                            _ => None,
                        })
                        .collect();
                    group_result(dir, &failed)
                }
            })
            .collect();
        (results, summary)
    }

    /// The paths of `infos` the cache lacks, asked in batches, with retries.
    async fn missing(&self, infos: &[&PathInfo]) -> Result<HashSet<StorePath>, ClientError> {
        let dir = self.store.store_dir();
        let mut missing = HashSet::new();
        for batch in infos.chunks(MISSING_BATCH) {
            let paths: Vec<String> = batch.iter().map(|i| dir.display(&i.path)).collect();
            let answer = retry("asking which paths are missing", || {
                self.client.missing(&paths)
            })
            .await?;
            for p in answer {
                if let Ok(sp) = dir.parse_path(&p) {
                    missing.insert(sp);
                }
            }
        }
        Ok(missing)
    }

    /// Uploads `missing` (references first) with `jobs` at once; a path waits for its
    /// references in the set (until they are uploaded, or their sessions allowed early
    /// dependents) and fails without a request if one of them failed first.
    async fn upload_all<'a>(
        &self,
        missing: &[&'a PathInfo],
        status: &mut HashMap<StorePath, Status>,
        bar: &ProgressBar,
    ) {
        let total = missing.len();
        let by_path: HashMap<&'a StorePath, &'a PathInfo> =
            missing.iter().map(|i| (&i.path, *i)).collect();
        let mut waiting: HashMap<&StorePath, usize> = HashMap::new();
        let mut dependents: HashMap<&StorePath, Vec<&StorePath>> = HashMap::new();
        let mut ready = VecDeque::new();
        for info in missing {
            let refs: Vec<&StorePath> = info
                .references
                .iter()
                .filter(|r| **r != info.path && by_path.contains_key(r))
                .collect();
            for r in &refs {
                dependents.entry(*r).or_default().push(&info.path);
            }
            if refs.is_empty() {
                ready.push_back(*info);
            } else {
                waiting.insert(&info.path, refs.len());
            }
        }

        let mut done = 0;
        bar.set_message(format!("0/{total} paths"));
        let mut running = FuturesUnordered::new();
        // Paths whose dependents were let go (started early, or done).
        let mut released: HashSet<&'a StorePath> = HashSet::new();
        let mut launched: HashSet<&'a StorePath> = HashSet::new();
        let (early_tx, mut early_rx) = tokio::sync::mpsc::unbounded_channel::<&'a StorePath>();
        let mut release = |p: &StorePath, ready: &mut VecDeque<&'a PathInfo>| {
            let Some((p, _)) = by_path.get_key_value(p) else {
                return;
            };
            if !released.insert(*p) {
                return;
            }
            for d in dependents.get(p).into_iter().flatten() {
                let n = waiting.get_mut(d).expect("a dependent waits");
                *n -= 1;
                if *n == 0 {
                    ready.push_back(by_path[d]);
                }
            }
        };
        loop {
            while running.len() < self.jobs {
                let Some(info) = ready.pop_front() else { break };
                if status.contains_key(&info.path) {
                    continue; // failed with a reference before its turn came
                }
                launched.insert(&info.path);
                let early = early_tx.clone();
                // The receiver lives as long as this loop.
                let started = move || {
                    let _ = early.send(&info.path);
                };
                running.push(async move { (info, self.upload_one(info, bar, started).await) });
            }
            let (info, result) = tokio::select! {
                biased;
                Some(p) = early_rx.recv() => {
                    release(p, &mut ready);
                    continue;
                }
                next = running.next() => match next {
                    Some(r) => r,
                    None => break,
                },
            };
            done += 1;
            bar.set_message(format!("{done}/{total} paths"));
            match result {
                Ok(s) => {
                    status.insert(info.path.clone(), s);
                    release(&info.path, &mut ready);
                }
                Err(e) => {
                    let dir = self.store.store_dir();
                    let failed = dir.display(&info.path);
                    tracing::warn!(path = %failed, error = %e, "upload failed");
                    status.insert(info.path.clone(), Status::Failed(e.clone()));
                    // Everything that references it, directly or not, cannot be sent.
                    let mut stack: Vec<&StorePath> =
                        dependents.get(&info.path).cloned().unwrap_or_default();
                    while let Some(d) = stack.pop() {
                        // One already sent reports its own outcome (the cache refuses
                        // it without its reference).
                        if status.contains_key(d) || launched.contains(d) {
                            continue;
                        }
                        done += 1;
                        status.insert(
                            d.clone(),
                            Status::Failed(ClientError {
                                kind: e.kind,
                                message: format!("not sent: it references {failed}, which failed"),
                                status: None,
                            }),
                        );
                        stack.extend(dependents.get(d).into_iter().flatten());
                    }
                }
            }
        }
    }

    /// Uploads one path, resuming and retrying transient failures a few times. `started`
    /// is called when the cache opened a session that allows early dependents.
    async fn upload_one(
        &self,
        info: &PathInfo,
        bar: &ProgressBar,
        started: impl Fn(),
    ) -> Result<Status, ClientError> {
        let dir = self.store.store_dir();
        let full = dir.display(&info.path);
        let req = CreateUpload {
            store_path: full.clone(),
            nar_hash: info.nar_hash.to_nix32_string(),
            nar_size: info.nar_size,
            references: info.references.iter().map(|r| dir.display(r)).collect(),
            deriver: info.deriver.as_ref().map(|d| dir.display(d)),
            ca: info.ca.clone(),
            sigs: info.sigs.clone(),
            compression: "zstd",
        };
        let meter = parts::Meter {
            wire: self.wire.clone(),
            bar: bar.clone(),
            counted: Arc::default(),
        };
        let mut failures = 0;
        let mut sent_any = false;
        loop {
            let (result, progressed) = self.attempt(&req, info, &full, &meter, &started).await;
            sent_any |= progressed;
            match result {
                Ok(true) => return Ok(Status::Uploaded),
                // Complete on creation: here already, or our own earlier attempt
                // finished although its answer was lost.
                Ok(false) if sent_any => return Ok(Status::Uploaded),
                Ok(false) => {
                    // A path the missing check called absent but the cache has now
                    // (another uploader): its bytes count as done.
                    bar.inc(
                        info.nar_size
                            .saturating_sub(meter.counted.load(Ordering::Relaxed)),
                    );
                    return Ok(Status::Present);
                }
                Err(e) if e.is_transient() => {
                    if progressed {
                        failures = 0;
                    }
                    if failures >= RETRIES {
                        return Err(e);
                    }
                    let wait = backoff(failures, RETRY_BASE, RETRY_CAP);
                    failures += 1;
                    tracing::warn!(path = %full, error = %e, retry_in = ?wait, "upload interrupted; resuming");
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One try: create (or resume) the session and send parts until the cache says
    /// complete. `Ok(true)` when this attempt completed it, `Ok(false)` when the cache
    /// had it already; the flag says whether any part was acknowledged.
    async fn attempt(
        &self,
        req: &CreateUpload,
        info: &PathInfo,
        display: &str,
        meter: &parts::Meter,
        started: &impl Fn(),
    ) -> (Result<bool, ClientError>, bool) {
        let session = match self.client.create_upload(req).await {
            Ok(s) => s,
            Err(e) => return (Err(e), false),
        };
        let Some(id) = session.id.filter(|_| !session.complete) else {
            return (Ok(false), false);
        };
        if session.early_dependents {
            started();
        }
        let job = parts::Job {
            real_path: self.store.real_path(&info.path),
            display: display.to_string(),
            nar_size: info.nar_size,
            skip: session.nar_offset,
            part_size: session.part_size,
            zstd_level: self.zstd_level,
        };
        let mut producer = parts::spawn(job, meter.clone());
        let mut progressed = false;
        let result = loop {
            let Some(part) = producer.parts.recv().await else {
                break Err(ClientError::permanent(format!(
                    "sent all of {display} but the cache did not call it complete"
                )));
            };
            let activity = Arc::new(AtomicU64::new(0));
            let body = reqwest::Body::wrap_stream(parts::body_stream(part.body, activity.clone()));
            let sent = watched(self.client.put_part(&id, part.offset, body), &activity).await;
            match sent {
                Ok(a) if a.complete => break Ok(true),
                Ok(a) if a.nar_offset == part.offset + part.len => progressed = true,
                Ok(a) => {
                    // Creating again resynchronises with wherever the session is.
                    break Err(ClientError::transient(format!(
                        "sending a part: the cache is at NAR offset {}, expected {}",
                        a.nar_offset,
                        part.offset + part.len
                    )));
                }
                Err(e) => break Err(e),
            }
        };
        drop(producer.parts);
        let produced = producer.handle.await;
        let result = match (result, produced) {
            (Ok(done), _) => Ok(done),
            // A read failure of ours explains the request's failure: report ours.
            (Err(_), Ok(Err(ProduceError::Failed(reason)))) => Err(ClientError::permanent(reason)),
            (Err(e), _) => Err(e),
        };
        (result, progressed)
    }
}

/// A group's outcome from its failed members: permanent if any failure is, else the
/// kind of the first; the reason names the first failure and how many there were.
fn group_result(dir: &StoreDir, failed: &[(&PathInfo, &ClientError)]) -> GroupResult {
    let Some((first, e)) = failed
        .iter()
        .find(|(_, e)| e.kind == ErrorKind::Permanent)
        .or_else(|| failed.first())
    else {
        return GroupResult::Done;
    };
    let more = match failed.len() {
        1 => String::new(),
        n => format!(" (and {} more)", n - 1),
    };
    GroupResult::Failed {
        kind: e.kind,
        reason: format!("{}: {}{more}", dir.display(&first.path), e.message),
    }
}

/// Runs a request, retrying transient failures a few times with backoff.
async fn retry<T, F, Fut>(what: &str, mut f: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let mut attempt = 0;
    loop {
        match f().await {
            Err(e) if e.is_transient() && attempt < RETRIES => {
                let wait = backoff(attempt, RETRY_BASE, RETRY_CAP);
                tracing::warn!(error = %e, retry_in = ?wait, "{what}: retrying");
                attempt += 1;
                tokio::time::sleep(wait).await;
            }
            other => return other,
        }
    }
}

/// Abandons `fut` when `activity` has not moved for [`STALL`].
async fn watched<T>(
    fut: impl std::future::Future<Output = Result<T, ClientError>>,
    activity: &AtomicU64,
) -> Result<T, ClientError> {
    tokio::pin!(fut);
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut last = activity.load(Ordering::Relaxed);
    let mut since = Instant::now();
    loop {
        tokio::select! {
            r = &mut fut => return r,
            _ = tick.tick() => {
                let now = activity.load(Ordering::Relaxed);
                if now != last {
                    last = now;
                    since = Instant::now();
                } else if since.elapsed() >= STALL {
                    return Err(ClientError::transient(format!(
                        "sending a part: no progress for {} s",
                        STALL.as_secs()
                    )));
                }
            }
        }
    }
}

pub fn run(args: Args) -> Result<()> {
    progress::init_tracing("warn");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(run_async(args));
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn run_async(args: Args) -> Result<()> {
    let pusher = Pusher::new(&args.cache)?;
    let roots = args
        .paths
        .iter()
        .map(|p| closure::parse_root(pusher.store(), p))
        .collect::<Result<Vec<_>>>()?;
    let bar = progress::bar();
    let (results, summary) = pusher.push(&[roots], &bar).await;
    bar.finish_and_clear();
    progress::clear();

    if let Some(GroupResult::Failed { reason, .. }) = results.first() {
        if summary.failures.is_empty() {
            // The closure itself could not be computed.
            bail!("{reason}");
        }
    }
    for f in &summary.failures {
        eprintln!("cachectl: failed: {}: {}", f.path, f.reason);
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&summary).context("cannot render the summary")?
        );
    } else {
        eprintln!(
            "pushed {} paths ({} NAR, {} sent) in {:.1} s; {} already in the cache{}",
            summary.uploaded,
            HumanBytes(summary.nar_bytes),
            HumanBytes(summary.wire_bytes),
            summary.seconds,
            summary.already_present,
            match summary.skipped_signed {
                0 => String::new(),
                n => format!(", {n} skipped as signed upstream"),
            }
        );
    }
    if summary.failed > 0 {
        bail!(
            "{} of {} paths could not be pushed to {}",
            summary.failed,
            summary.considered - summary.skipped_signed,
            pusher.cache_url()
        );
    }
    Ok(())
}
