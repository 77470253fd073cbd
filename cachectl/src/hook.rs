//! `cachectl hook`: what Nix's `post-build-hook` runs. Nix runs the hook inside its
//! build loop and stops building when it fails, so this only appends the build's
//! outputs to the upload queue and exits 0, whatever happens: no network, no runtime,
//! one small fsynced file. `cachectl uploader` does the rest.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::queue::{Entry, Queue};

/// The queue directory when neither --queue nor CAIRN_QUEUE_DIR says otherwise.
pub const DEFAULT_QUEUE: &str = "/var/lib/cairn/upload-queue";

/// Queue a build's outputs for upload (Nix's post-build-hook)
///
/// Reads OUT_PATHS (space-separated) and DRV_PATH from the environment, as Nix sets
/// them, and adds one entry to the upload queue (with only DRV_PATH when OUT_PATHS is
/// empty, as Nix 2.8.0 leaves it: the uploader reads the outputs from the derivation). Never touches the network and always
/// exits 0, so a broken queue never fails a build: problems are reported on stderr.
#[derive(clap::Args)]
pub struct Args {
    /// The upload queue directory (created if missing).
    #[arg(long, env = "CAIRN_QUEUE_DIR", default_value = DEFAULT_QUEUE)]
    pub queue: PathBuf,
}

pub fn run(args: Args) {
    let out_paths: Vec<String> = std::env::var("OUT_PATHS")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let drv_path = std::env::var("DRV_PATH")
        .ok()
        .filter(|d| !d.trim().is_empty());
    // Nix 2.8.0 passes OUT_PATHS empty (NixOS/nix#6446): the derivation then tells the
    // uploader what was built.
    if out_paths.is_empty() && drv_path.is_none() {
        eprintln!("cachectl hook: OUT_PATHS and DRV_PATH are empty; nothing queued");
        return;
    }
    let entry = Entry {
        out_paths,
        drv_path,
        queued_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default(),
    };
    let queue = Queue::new(args.queue);
    if let Err(e) = queue.enqueue(&entry) {
        eprintln!(
            "cachectl hook: cannot queue {} in {}: {e}; they will not be uploaded",
            what(&entry),
            queue.dir().display()
        );
    }
}

/// The paths of an entry, for a message.
fn what(entry: &Entry) -> String {
    match &entry.drv_path {
        Some(d) if entry.out_paths.is_empty() => format!("the outputs of {d}"),
        _ => entry.out_paths.join(" "),
    }
}
