//! `cachectl retention show|set`: what GC may delete.

use anyhow::{bail, Context};
use clap::Subcommand;
use serde_json::{json, Value};

use crate::status::short_bytes;
use crate::token::parse_duration;

/// Show or set the retention settings GC follows (needs an admin token).
///
/// A path is kept while it is pinned, or younger than --max-age and served within
/// --max-idle (each only when set), and so is everything a kept path references. Above
/// --high-watermark the most recently used closures are kept down to --low-watermark.
/// With nothing set, GC deletes nothing.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    conn: crate::admin::Conn,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand)]
enum Action {
    /// Print the settings.
    Show,
    /// Replace the settings: limits not given are removed.
    Set {
        /// Paths uploaded longer ago than this may go (e.g. 90d).
        #[arg(long)]
        max_age: Option<String>,
        /// Paths not served for this long may go (e.g. 30d; recorded to the hour).
        #[arg(long)]
        max_idle: Option<String>,
        /// Size of the stored NARs (one copy) above which GC trims (e.g. 400GiB).
        #[arg(long)]
        high_watermark: Option<String>,
        /// Size GC trims down to once over the high watermark [default: the high one].
        #[arg(long, requires = "high_watermark")]
        low_watermark: Option<String>,
        /// How long a deleted path's NAR stays downloadable (e.g. 1h) [default: 0, the
        /// nodes' orphan_grace_secs then applies].
        #[arg(long)]
        blob_grace: Option<String>,
    },
}

/// Parses `500`, `10K`/`10KiB`, `20M`/`MiB`, `400G`/`GiB`, `2T`/`TiB` (binary units).
pub fn parse_bytes(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, ""),
    };
    let n: u64 = num.parse().with_context(|| format!("bad size {s:?}"))?;
    let shift = match unit.trim().trim_end_matches("iB").trim_end_matches('B') {
        "" => 0,
        "K" | "k" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => bail!("bad size unit in {s:?}: use K, M, G or T (binary)"),
    };
    n.checked_mul(1 << shift).context("size too large")
}

pub fn run(args: Args) -> anyhow::Result<()> {
    crate::admin::block_on(async {
        let client = reqwest::Client::new();
        let url = format!("{}/api/v1/retention", args.conn.base());
        let text = match &args.action {
            Action::Show => args.conn.send(client.get(&url)).await?,
            Action::Set {
                max_age,
                max_idle,
                high_watermark,
                low_watermark,
                blob_grace,
            } => {
                let dur = |v: &Option<String>| v.as_deref().map(parse_duration).transpose();
                let size = |v: &Option<String>| v.as_deref().map(parse_bytes).transpose();
                let body = json!({
                    "max_age_secs": dur(max_age)?,
                    "max_idle_secs": dur(max_idle)?,
                    "high_watermark_bytes": size(high_watermark)?,
                    "low_watermark_bytes": size(low_watermark)?,
                    "blob_grace_secs": dur(blob_grace)?.unwrap_or(0),
                });
                args.conn.send(client.put(&url).json(&body)).await?
            }
        };
        let v: Value = serde_json::from_str(&text).context("unexpected reply")?;
        if args.json {
            println!("{v}");
            return Ok(());
        }
        let secs = |k: &str| {
            v[k].as_u64()
                .map_or("no limit".to_string(), |s| format!("{s} s"))
        };
        let bytes = |k: &str| v[k].as_u64().map_or("none".to_string(), short_bytes);
        println!("max age         {}", secs("max_age_secs"));
        println!("max idle        {}", secs("max_idle_secs"));
        println!("high watermark  {}", bytes("high_watermark_bytes"));
        println!("low watermark   {}", bytes("low_watermark_bytes"));
        println!(
            "blob grace      {} s",
            v["blob_grace_secs"].as_u64().unwrap_or(0)
        );
        Ok(())
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("500").unwrap(), 500);
        assert_eq!(parse_bytes("10K").unwrap(), 10 << 10);
        assert_eq!(parse_bytes("400GiB").unwrap(), 400 << 30);
        assert_eq!(parse_bytes("2T").unwrap(), 2 << 40);
        assert!(parse_bytes("3X").is_err());
        assert!(parse_bytes("GiB").is_err());
    }
}
