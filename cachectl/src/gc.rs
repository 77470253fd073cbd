//! `cachectl gc`: one GC pass on the cache now, or a dry run that shows what would go.

use anyhow::Context;
use serde_json::{json, Value};

use crate::token::admin_send;

/// Run a garbage collection pass now (needs an admin token; a cluster node).
///
/// Deletes the uploaded paths the retention settings let go (see `cachectl retention`),
/// never a pinned path or anything a kept path references. Deleted paths' NARs stay
/// downloadable for the orphan grace period, then their files go from every node.
#[derive(clap::Args)]
pub struct Args {
    /// The cache's base URL (any node of a cluster).
    #[arg(long, env = "CAIRN_URL", default_value = "http://127.0.0.1:5000")]
    server: String,
    /// An admin token (prefer the environment variable to the flag: flags show up in `ps`).
    #[arg(long, env = "CAIRN_TOKEN", hide_env_values = true)]
    token: String,
    /// Only report what would be deleted.
    #[arg(long)]
    dry_run: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let base = args.server.trim_end_matches('/');
        let rb = reqwest::Client::new()
            .post(format!("{base}/api/v1/gc"))
            .json(&json!({ "dry_run": args.dry_run }));
        let text = admin_send(rb, base, &args.token).await?;
        let v: Value = serde_json::from_str(&text).context("unexpected reply")?;
        if args.json {
            println!("{v}");
            return Ok(());
        }
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        if args.dry_run {
            println!(
                "would delete {} of {} paths, freeing {} of {}",
                n("planned"),
                n("paths"),
                human(n("bytes_freed")),
                human(n("bytes"))
            );
            for h in v["victims"].as_array().into_iter().flatten() {
                println!("  {}", h.as_str().unwrap_or_default());
            }
        } else {
            println!(
                "deleted {} of {} paths ({} planned, {} kept as they changed since), freeing {}",
                n("deleted"),
                n("paths"),
                n("planned"),
                n("kept_since_plan"),
                human(n("bytes_freed"))
            );
        }
        if v["over_high_watermark"] == true {
            println!("the cache was over its high watermark");
        }
        Ok(())
    })
}

/// Bytes in binary units, one decimal.
pub fn human(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
