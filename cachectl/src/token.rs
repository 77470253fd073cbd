//! `cachectl token create|list|revoke`: manage the cache's tokens through its admin API.
//! The server keeps only token hashes; the text of a new token is printed once.

use anyhow::{bail, Context};
use clap::Subcommand;
use serde_json::{json, Value};

/// Manage access tokens (needs an admin token).
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
    /// Create a token and print its text (shown only this once).
    Create {
        /// A name for the token, e.g. the runner it is for.
        name: String,
        /// Scopes: read, push, admin (repeat or comma-separate).
        #[arg(long, value_delimiter = ',', default_value = "push")]
        scope: Vec<String>,
        /// Lifetime, e.g. 3600s, 90m, 12h, 30d; default: no expiry.
        #[arg(long)]
        expires_in: Option<String>,
    },
    /// List tokens (never their text).
    List,
    /// Revoke a token by id; it is refused from then on.
    Revoke {
        /// The id `create` and `list` print.
        id: String,
    },
}

/// Parses `90`, `90s`, `15m`, `12h`, `30d` into seconds.
pub fn parse_duration(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num.parse().with_context(|| format!("bad duration {s:?}"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => bail!("bad duration unit in {s:?}: use s, m, h or d"),
    };
    n.checked_mul(mult).context("duration too long")
}

pub fn run(args: Args) -> anyhow::Result<()> {
    crate::admin::block_on(run_async(args))?
}

async fn run_async(args: Args) -> anyhow::Result<()> {
    let base = args.conn.base();
    let client = reqwest::Client::new();
    let send = |rb: reqwest::RequestBuilder| args.conn.send(rb);
    match args.action {
        Action::Create {
            name,
            scope,
            expires_in,
        } => {
            let expires_in = expires_in.as_deref().map(parse_duration).transpose()?;
            let body = json!({ "name": name, "scopes": scope, "expires_in": expires_in });
            let text = send(client.post(format!("{base}/api/v1/tokens")).json(&body)).await?;
            let v: Value = serde_json::from_str(&text).context("unexpected reply")?;
            if args.json {
                println!("{v}");
            } else {
                println!("{}", v["token"].as_str().unwrap_or_default());
                eprintln!(
                    "created token {} ({}); store it now, it is not shown again",
                    v["id"].as_str().unwrap_or_default(),
                    name
                );
            }
        }
        Action::List => {
            let text = send(client.get(format!("{base}/api/v1/tokens"))).await?;
            let v: Value = serde_json::from_str(&text).context("unexpected reply")?;
            if args.json {
                println!("{v}");
            } else {
                println!(
                    "{:<10} {:<24} {:<18} {:<12} STATE",
                    "ID", "NAME", "SCOPES", "EXPIRES"
                );
                for t in v.as_array().into_iter().flatten() {
                    let scopes: Vec<&str> = t["scopes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    println!(
                        "{:<10} {:<24} {:<18} {:<12} {}",
                        t["id"].as_str().unwrap_or_default(),
                        t["name"].as_str().unwrap_or_default(),
                        scopes.join(","),
                        t["expires"]
                            .as_u64()
                            .map_or("never".to_string(), |e| e.to_string()),
                        if t["revoked"].as_bool() == Some(true) {
                            "revoked"
                        } else {
                            "active"
                        }
                    );
                }
            }
        }
        Action::Revoke { id } => {
            send(client.delete(format!("{base}/api/v1/tokens/{id}"))).await?;
            if !args.json {
                eprintln!("revoked token {id}");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), 90);
        assert_eq!(parse_duration("15m").unwrap(), 900);
        assert_eq!(parse_duration("12h").unwrap(), 43200);
        assert_eq!(parse_duration("30d").unwrap(), 2_592_000);
        assert!(parse_duration("3w").is_err());
        assert!(parse_duration("h").is_err());
    }
}
