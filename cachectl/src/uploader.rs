//! `cachectl uploader`: empties the upload queue into the cache. Takes entries oldest
//! first (a batch at a time, so their closures upload in parallel), pushes them with
//! the same engine as `cachectl push`, and deletes an entry only once everything in
//! its closure is in the cache. Killed at any moment, it loses nothing (entries are
//! still there) and redoes little: the missing check skips finished paths and an
//! interrupted NAR resumes from the cache's upload session.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;
use nix_formats::StorePath;

use crate::client::{backoff, ErrorKind};
use crate::hook::DEFAULT_QUEUE;
use crate::progress;
use crate::push::{CacheArgs, GroupResult, Pusher};
use crate::queue::Queue;

/// How often an idle uploader looks at the queue.
const POLL: Duration = Duration::from_secs(1);
/// Entries pushed together.
const BATCH: usize = 64;
/// Backoff between rounds while the cache is unreachable or refuses our token.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
const BACKOFF_CAP: Duration = Duration::from_secs(60);
/// Age at which a hook's unfinished temp file is garbage.
const STALE_TEMP: Duration = Duration::from_secs(3600);

/// Upload what the post-build-hook queued
///
/// Runs until stopped, watching the queue, unless --drain. Entries the cache refuses
/// for good (a 4xx other than 401/403, a path gone from the local store) are moved to
/// QUEUE/failed/ with a .reason file; while the cache is unreachable, failing or
/// refusing the token, entries stay and are retried with backoff (1 s to 60 s).
#[derive(clap::Args)]
pub struct Args {
    /// The upload queue directory.
    #[arg(long, env = "CAIRN_QUEUE_DIR", default_value = DEFAULT_QUEUE)]
    pub queue: PathBuf,
    #[command(flatten)]
    pub cache: CacheArgs,
    /// Upload what is queued, then exit 0 once the queue is empty.
    #[arg(long)]
    pub drain: bool,
    /// With --drain: give up after this long (e.g. 90s, 5m) and exit 1, naming the
    /// entries left.
    #[arg(long, requires = "drain", value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
}

pub fn run(args: Args) -> Result<()> {
    progress::init_tracing("info");
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
    let queue = Queue::new(&args.queue);
    tracing::info!(queue = %queue.dir().display(), cache = pusher.cache_url(), drain = args.drain, "uploader started");
    let work = work(&pusher, &queue, args.drain);
    let Some(timeout) = args.timeout else {
        return work.await;
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(result) => result,
        Err(_) => {
            let left = queue.list().unwrap_or_default();
            if left.is_empty() {
                return Ok(());
            }
            bail!(
                "the queue was not drained within {}: {} entries left: {}",
                humantime::format_duration(timeout),
                left.len(),
                describe(&left)
            );
        }
    }
}

/// The work loop: forever, or until the queue is empty with `drain`.
async fn work(pusher: &Pusher, queue: &Queue, drain: bool) -> Result<()> {
    let mut failed_rounds = 0;
    let mut temps_checked: Option<Instant> = None;
    loop {
        if temps_checked.is_none_or(|t| t.elapsed() >= STALE_TEMP / 6) {
            queue.remove_stale_temps(STALE_TEMP);
            temps_checked = Some(Instant::now());
        }
        let entries = match queue.list() {
            Ok(e) => e,
            Err(e) if drain => {
                return Err(e)
                    .with_context(|| format!("cannot read the queue {}", queue.dir().display()))
            }
            Err(e) => {
                tracing::error!(queue = %queue.dir().display(), error = %e, "cannot read the queue");
                tokio::time::sleep(backoff(failed_rounds, BACKOFF_BASE, BACKOFF_CAP)).await;
                failed_rounds += 1;
                continue;
            }
        };
        if entries.is_empty() {
            if drain {
                tracing::info!("queue empty");
                return Ok(());
            }
            tokio::time::sleep(POLL).await;
            continue;
        }

        let retry = round(pusher, queue, &entries[..entries.len().min(BATCH)]).await;
        match retry {
            None => failed_rounds = 0,
            Some(reason) => {
                let wait = backoff(failed_rounds, BACKOFF_BASE, BACKOFF_CAP);
                failed_rounds += 1;
                tracing::warn!(reason = %reason, retry_in = ?wait, "entries left in the queue; retrying");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Pushes one batch of entries and settles each: deleted when done, moved to
/// `failed/` when refused for good, kept otherwise. Returns why, if any entry was kept.
async fn round(pusher: &Pusher, queue: &Queue, batch: &[PathBuf]) -> Option<String> {
    let mut files = Vec::new();
    let mut groups = Vec::new();
    for file in batch {
        match roots(pusher, file) {
            Ok(roots) => {
                files.push(file);
                groups.push(roots);
            }
            Err(e) => refuse(queue, file, &format!("{e:#}")),
        }
    }
    if groups.is_empty() {
        return None;
    }
    let (results, summary) = pusher.push(&groups, &ProgressBar::hidden()).await;
    if summary.uploaded > 0 {
        tracing::info!(
            entries = files.len(),
            uploaded = summary.uploaded,
            already_present = summary.already_present,
            nar_bytes = summary.nar_bytes,
            wire_bytes = summary.wire_bytes,
            seconds = summary.seconds,
            "pushed"
        );
    }
    let mut retry = None;
    for (file, result) in files.into_iter().zip(results) {
        match result {
            GroupResult::Done => {
                if let Err(e) = queue.remove(file) {
                    tracing::error!(entry = %file.display(), error = %e, "uploaded, but cannot delete the entry");
                }
            }
            GroupResult::Failed {
                kind: ErrorKind::Permanent,
                reason,
            } => refuse(queue, file, &reason),
            GroupResult::Failed {
                kind: ErrorKind::Transient | ErrorKind::Auth,
                reason,
            } => {
                retry.get_or_insert(reason);
            }
        }
    }
    retry
}

/// The roots an entry names.
fn roots(pusher: &Pusher, file: &Path) -> Result<Vec<StorePath>> {
    let entry = Queue::read(file)?;
    let dir = pusher.store().store_dir();
    let paths = match (&entry.out_paths[..], &entry.drv_path) {
        ([], Some(drv)) => {
            let drv = dir
                .parse_path(drv)
                .map_err(|e| anyhow::anyhow!("{drv:?} is not a store path in {dir}: {e}"))?;
            crate::drv::outputs_of_file(&pusher.store().real_path(&drv))?
        }
        (paths, _) => paths.to_vec(),
    };
    let roots = paths
        .iter()
        .map(|p| {
            dir.parse_path(p)
                .map_err(|e| anyhow::anyhow!("{p:?} is not a store path in {dir}: {e}"))
        })
        .collect::<Result<Vec<_>>>()?;
    if roots.is_empty() {
        bail!("the entry names no paths");
    }
    Ok(roots)
}

/// Moves an entry the cache will never take to `failed/`, loudly.
fn refuse(queue: &Queue, file: &Path, reason: &str) {
    match queue.fail(file, reason) {
        Ok(dest) => {
            tracing::error!(entry = %dest.display(), reason, "entry refused; moved to failed/")
        }
        Err(e) => {
            tracing::error!(entry = %file.display(), reason, error = %e, "entry refused, and cannot move it to failed/")
        }
    }
}

/// A short description of entries left: names and paths of the first few.
fn describe(entries: &[PathBuf]) -> String {
    const SHOWN: usize = 5;
    let mut parts: Vec<String> = entries
        .iter()
        .take(SHOWN)
        .map(|f| {
            let name = f
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            match Queue::read(f) {
                Ok(e) if e.out_paths.is_empty() => {
                    format!("{name} ({})", e.drv_path.unwrap_or_default())
                }
                Ok(e) => format!("{name} ({})", e.out_paths.join(" ")),
                Err(_) => name,
            }
        })
        .collect();
    if entries.len() > SHOWN {
        parts.push(format!("and {} more", entries.len() - SHOWN));
    }
    parts.join(", ")
}
