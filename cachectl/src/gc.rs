//! `cachectl gc`: one GC pass on the cache now, or a dry run that shows what would go.

use anyhow::Context;
use serde_json::{json, Value};

/// Run a garbage collection pass now (needs an admin token; a cluster node).
///
/// Deletes the uploaded paths the retention settings let go (see `cachectl retention`),
/// never a pinned path or anything a kept path references. Deleted paths' NARs stay
/// downloadable for the orphan grace period, then their files go from every node.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    conn: crate::admin::Conn,
    /// Only report what would be deleted.
    #[arg(long)]
    dry_run: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    crate::admin::block_on(async {
        let rb = reqwest::Client::new()
            .post(format!("{}/api/v1/gc", args.conn.base()))
            .json(&json!({ "dry_run": args.dry_run }));
        let text = args.conn.send(rb).await?;
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
                crate::status::short_bytes(n("bytes_freed")),
                crate::status::short_bytes(n("bytes"))
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
                crate::status::short_bytes(n("bytes_freed"))
            );
        }
        if v["over_high_watermark"] == true {
            println!("the cache was over its high watermark");
        }
        Ok(())
    })?
}
