//! `cachectl pin add|remove|list`: paths GC keeps, with everything they reference.

use anyhow::Context;
use clap::Subcommand;
use serde_json::{json, Value};

/// Pin store paths so GC keeps them and their closures (needs an admin token).
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
    /// Pin a store path (`/nix/store/<hash>-<name>`, or its hash part); it need not be
    /// uploaded yet.
    Add {
        path: String,
        /// Why, for whoever reads `pin list` later.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Remove a pin.
    Remove { path: String },
    /// List the pins.
    List,
}

/// The path as it goes in a URL: its base name (the store dir is the server's concern).
fn url_part(path: &str) -> anyhow::Result<&str> {
    let base = path.rsplit('/').next().unwrap_or(path);
    anyhow::ensure!(
        base.len() >= 32 && base.is_char_boundary(32),
        "{path:?} is neither a store path nor a hash part"
    );
    Ok(base)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    crate::admin::block_on(async {
        let base = args.conn.base();
        let client = reqwest::Client::new();
        let send = |rb| args.conn.send(rb);
        match &args.action {
            Action::Add { path, reason } => {
                let url = format!("{base}/api/v1/pins/{}", url_part(path)?);
                let text = send(client.put(url).json(&json!({ "reason": reason }))).await?;
                if args.json {
                    println!("{}", text.trim());
                } else {
                    eprintln!("pinned {path}");
                }
            }
            Action::Remove { path } => {
                let url = format!("{base}/api/v1/pins/{}", url_part(path)?);
                send(client.delete(url)).await?;
                if !args.json {
                    eprintln!("unpinned {path}");
                }
            }
            Action::List => {
                let text = send(client.get(format!("{base}/api/v1/pins"))).await?;
                let v: Value = serde_json::from_str(&text).context("unexpected reply")?;
                if args.json {
                    println!("{v}");
                } else {
                    println!("{:<32}  {:<12}  REASON", "HASH", "PINNED");
                    for p in v.as_array().into_iter().flatten() {
                        println!(
                            "{:<32}  {:<12}  {}",
                            p["hash_part"].as_str().unwrap_or_default(),
                            p["pinned"].as_u64().unwrap_or(0),
                            p["reason"].as_str().unwrap_or("")
                        );
                    }
                }
            }
        }
        Ok(())
    })?
}
