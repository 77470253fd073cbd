//! `cachectl status`: the cache's state as its `/api/v1/status` reports it, in 80
//! columns or as JSON, with an exit status a monitoring check can use.

use std::process::ExitCode;
use std::time::Duration;

use indicatif::HumanBytes;
use serde::{Deserialize, Serialize};

/// Show the state of the cache (or cluster) and its nodes
///
/// Exits 0 when healthy, 1 when degraded (a node unreachable or behind, blobs below
/// their replica target, a disk nearly full), 2 when unavailable (no answer, or no
/// leader).
#[derive(clap::Args)]
pub struct Args {
    /// The cache's base URL.
    #[arg(long, env = "CAIRN_URL", default_value = "http://127.0.0.1:5000")]
    cache: String,
    /// A read token, for a private cache.
    #[arg(long, env = "CAIRN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Deserialize, Serialize)]
struct Node {
    id: u64,
    reachable: bool,
    role: String,
    term: Option<u64>,
    last_log_index: Option<u64>,
    applied_index: Option<u64>,
    replication_lag: Option<u64>,
    blobs_held: u64,
    blobs_missing: u64,
    disk_total_bytes: u64,
    disk_free_bytes: u64,
    version: String,
    uptime_secs: u64,
}

#[derive(Debug, Deserialize, Serialize)]
struct Status {
    leader: Option<u64>,
    voters: Vec<u64>,
    learners: Vec<u64>,
    paths: u64,
    stored_bytes: u64,
    under_replicated_blobs: u64,
    replicas_target: u64,
    upload_sessions: usize,
    nodes: Vec<Node>,
}

/// Health, worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Health {
    Healthy,
    Degraded,
    Unavailable,
}

impl Health {
    fn word(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Degraded => "DEGRADED",
            Health::Unavailable => "UNAVAILABLE",
        }
    }

    fn exit(self) -> ExitCode {
        ExitCode::from(match self {
            Health::Healthy => 0,
            Health::Degraded => 1,
            Health::Unavailable => 2,
        })
    }
}

/// A disk with less than this share free makes the cache degraded.
const LOW_DISK: f64 = 0.05;
/// A node this many entries behind the leader is lagging.
const LAGGING: u64 = 1000;

/// Why the cache is not healthy, one reason per line; empty when it is.
fn judge(s: &Status) -> (Health, Vec<String>) {
    let mut health = Health::Healthy;
    let mut why = Vec::new();
    let mut worse = |h: Health, reason: String| {
        health = health.max(h);
        why.push(reason);
    };
    if s.leader.is_none() {
        worse(Health::Unavailable, "no leader: writes are refused".into());
    }
    let reachable_voters = s
        .voters
        .iter()
        .filter(|v| s.nodes.iter().any(|n| n.id == **v && n.reachable))
        .count();
    if s.leader.is_some() && reachable_voters * 2 <= s.voters.len() {
        worse(
            Health::Unavailable,
            format!(
                "only {reachable_voters} of {} voters reachable: no quorum, writes are refused",
                s.voters.len()
            ),
        );
    }
    for n in &s.nodes {
        if !n.reachable {
            worse(Health::Degraded, format!("node {} is unreachable", n.id));
            continue;
        }
        if n.replication_lag.is_some_and(|l| l >= LAGGING) {
            worse(
                Health::Degraded,
                format!(
                    "node {} is {} entries behind",
                    n.id,
                    n.replication_lag.unwrap_or(0)
                ),
            );
        }
        if n.disk_total_bytes > 0
            && (n.disk_free_bytes as f64) < LOW_DISK * n.disk_total_bytes as f64
        {
            worse(
                Health::Degraded,
                format!("node {}'s data disk is nearly full", n.id),
            );
        }
    }
    if s.under_replicated_blobs > 0 {
        worse(
            Health::Degraded,
            format!(
                "{} blobs have fewer than {} copies",
                s.under_replicated_blobs, s.replicas_target
            ),
        );
    }
    (health, why)
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn uptime(secs: u64) -> String {
    match secs {
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// The report, every line at most 80 columns.
fn render(url: &str, s: &Status, health: Health, why: &[String]) -> String {
    let mut out = String::new();
    let leader = s
        .leader
        .map_or_else(|| "none".to_string(), |l| l.to_string());
    out.push_str(&format!("cairn at {url}: {}\n", health.word()));
    out.push_str(&format!(
        "leader {leader} · voters {} · learners {} · copies wanted {}\n",
        s.voters.len(),
        s.learners.len(),
        s.replicas_target
    ));
    out.push_str(&format!(
        "paths {} · stored {} · under-replicated {} · uploads open {}\n",
        s.paths,
        HumanBytes(s.stored_bytes),
        s.under_replicated_blobs,
        s.upload_sessions
    ));
    for reason in why {
        out.push_str(&format!("! {reason}\n"));
    }
    out.push('\n');
    out.push_str(&format!(
        "{:<4} {:<8} {:>5} {:>17} {:>5} {:>13} {:>15} {:>6}\n",
        "node", "role", "term", "log/applied", "lag", "blobs", "disk free/total", "up"
    ));
    for n in &s.nodes {
        if !n.reachable {
            out.push_str(&format!("{:<4} unreachable\n", n.id));
            continue;
        }
        let log = format!("{}/{}", opt(n.last_log_index), opt(n.applied_index));
        let blobs = if n.blobs_missing > 0 {
            format!("{}-{}", n.blobs_held, n.blobs_missing)
        } else {
            n.blobs_held.to_string()
        };
        let disk = format!(
            "{}/{}",
            short_bytes(n.disk_free_bytes),
            short_bytes(n.disk_total_bytes)
        );
        out.push_str(&format!(
            "{:<4} {:<8} {:>5} {:>17} {:>5} {:>13} {:>15} {:>6}\n",
            n.id,
            n.role,
            opt(n.term),
            log,
            opt(n.replication_lag),
            blobs,
            disk,
            uptime(n.uptime_secs)
        ));
    }
    out.push_str(&versions(&s.nodes));
    out
}

/// The footer: one cairnd version, or which nodes run which (a rolling upgrade half
/// done; versions in name order), wrapped at 80 columns.
fn versions(nodes: &[Node]) -> String {
    let mut by_version: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    for n in nodes.iter().filter(|n| n.reachable) {
        by_version
            .entry(n.version.as_str())
            .or_default()
            .push(n.id.to_string());
    }
    match by_version.len() {
        0 => String::new(),
        1 => format!("\ncairnd {}\n", by_version.keys().next().expect("one")),
        _ => {
            let parts: Vec<String> = by_version
                .iter()
                .map(|(v, ids)| format!("{v} on {}", ids.join(", ")))
                .collect();
            let text = format!("cairnd versions differ: {}", parts.join("; "));
            let mut out = String::from("\n");
            let mut line = String::new();
            for word in text.split(' ') {
                if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > 80 {
                    out.push_str(&line);
                    out.push('\n');
                    line = String::from(" ");
                }
                if !line.trim().is_empty() {
                    line.push(' ');
                }
                line.push_str(word);
            }
            out.push_str(&line);
            out.push('\n');
            out
        }
    }
}

/// Bytes in at most 7 characters: `931.3G`, `12.0T`.
pub fn short_bytes(b: u64) -> String {
    const UNITS: [&str; 6] = ["B", "K", "M", "G", "T", "P"];
    let mut v = b as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{b}B")
    } else {
        format!("{v:.1}{}", UNITS[unit])
    }
}

pub fn run(args: Args) -> ExitCode {
    let url = args.cache.trim_end_matches('/').to_string();
    let fetched = fetch(&url, args.token.as_deref());
    let status = match fetched {
        Ok(s) => s,
        Err(e) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({"health": "unavailable", "error": e.to_string()})
                );
            } else {
                println!("cairn at {url}: UNAVAILABLE\n! {e:#}");
            }
            return Health::Unavailable.exit();
        }
    };
    let (health, why) = judge(&status);
    if args.json {
        let mut v = serde_json::to_value(&status).unwrap_or_default();
        v["health"] = serde_json::json!(health.word().to_lowercase());
        v["problems"] = serde_json::json!(why);
        println!("{v}");
    } else {
        print!("{}", render(&url, &status, health, &why));
    }
    health.exit()
}

fn fetch(url: &str, token: Option<&str>) -> anyhow::Result<Status> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(20))
            .build()?;
        let mut req = client.get(format!("{url}/api/v1/status"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("no answer from the cache: {e}"))?;
        let code = resp.status();
        if !code.is_success() {
            anyhow::bail!("the cache answered {code}");
        }
        Ok(resp.json::<Status>().await?)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64) -> Node {
        Node {
            id,
            reachable: true,
            role: "follower".into(),
            term: Some(7),
            last_log_index: Some(123_456),
            applied_index: Some(123_450),
            replication_lag: Some(6),
            blobs_held: 1_234_567,
            blobs_missing: 0,
            disk_total_bytes: 2_000_000_000_000,
            disk_free_bytes: 1_500_000_000_000,
            version: "0.1.0".into(),
            uptime_secs: 3 * 86400 + 7200,
        }
    }

    fn three() -> Status {
        Status {
            leader: Some(1),
            voters: vec![1, 2, 3],
            learners: vec![],
            paths: 1_000_000,
            stored_bytes: 3_000_000_000_000,
            under_replicated_blobs: 0,
            replicas_target: 3,
            upload_sessions: 2,
            nodes: vec![node(1), node(2), node(3)],
        }
    }

    #[test]
    fn health_follows_the_worst_problem() {
        let s = three();
        assert_eq!(judge(&s).0, Health::Healthy);

        let mut s = three();
        s.nodes[2].reachable = false;
        s.under_replicated_blobs = 10;
        let (h, why) = judge(&s);
        assert_eq!(h, Health::Degraded);
        assert_eq!(why.len(), 2, "{why:?}");

        let mut s = three();
        s.leader = None;
        assert_eq!(judge(&s).0, Health::Unavailable);

        let mut s = three();
        s.nodes[0].disk_free_bytes = s.nodes[0].disk_total_bytes / 100;
        assert_eq!(judge(&s).0, Health::Degraded);
    }

    #[test]
    fn the_report_fits_in_80_columns() {
        let mut s = three();
        s.nodes[1].blobs_missing = 99_999;
        s.nodes[2].reachable = false;
        s.under_replicated_blobs = 123_456_789;
        let (h, why) = judge(&s);
        let text = render("https://cache.example.internal:5000", &s, h, &why);
        for line in text.lines() {
            assert!(
                line.chars().count() <= 80,
                "{} columns: {line:?}",
                line.len()
            );
        }
        assert!(text.contains("DEGRADED"), "{text}");
        assert!(text.contains("node 3 is unreachable"), "{text}");
        assert!(text.ends_with("\ncairnd 0.1.0\n"), "{text}");
    }

    #[test]
    fn mixed_versions_are_listed_by_node() {
        let mut s = three();
        s.nodes[1].version = "0.2.0".into();
        assert_eq!(
            versions(&s.nodes),
            "\ncairnd versions differ: 0.1.0 on 1, 3; 0.2.0 on 2\n"
        );
        // Many nodes and versions, or one version on many nodes, fit in 80 columns.
        type Versions = fn(u64) -> String;
        let cases: [(Versions, &str); 2] = [
            (|id| format!("0.{}.0-rc.{id}", id % 7), "0.3.0-rc.3 on 3;"),
            (
                |id| if id == 1 { "0.2.0" } else { "0.1.0" }.into(),
                "59, 60; 0.2.0 on 1\n",
            ),
        ];
        for (version, expected) in cases {
            let nodes: Vec<Node> = (1..=60)
                .map(|id| Node {
                    version: version(id),
                    ..node(id)
                })
                .collect();
            let text = versions(&nodes);
            assert!(text.lines().all(|l| l.chars().count() <= 80), "{text}");
            assert!(text.replace("\n ", " ").contains(expected), "{text}");
        }
    }

    #[test]
    fn byte_sizes_stay_short() {
        assert_eq!(short_bytes(999), "999B");
        assert_eq!(short_bytes(2_000_000_000_000), "1.8T");
        assert!(short_bytes(u64::MAX).len() <= 8);
    }
}
