//! The cluster figures (issue 4): three `cairnd` nodes on loopback with their default
//! Raft timing, against one single `cairnd` (a cluster of one), on the same corpus:
//!
//! - upload throughput: `cachectl push` of the corpus closure into node 1 of a fresh
//!   cluster vs into a fresh single cairnd (target: cluster ≥ 0.6× single);
//! - replication: from the start of that push until every blob has three copies;
//! - narinfo hits and misses (wrk) on a follower vs on the leader (targets ≥ 0.9× and
//!   ≥ 0.7×), run leader, follower, follower, leader and each side averaged;
//! - failover: SIGKILL of the leader until the next acknowledged upload on a survivor
//!   (a NAR PUT answered 200, which needs two copies registered through Raft; target
//!   ≤ 5 s).
//!
//! The section goes into RESULTS.md between the markers [`BEGIN`] and [`END`], replacing
//! an earlier one, so `--cluster-only` refreshes it without rerunning the rest.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use rustix::process::{kill_process, Pid, Signal};

use crate::procs::{free_port, Kind, Server};
use crate::uploads::Ctx;
use crate::wrk::{self, RateSample, Workload};

pub const BEGIN: &str = "<!-- cluster:begin -->";
pub const END: &str = "<!-- cluster:end -->";
const ADMIN: &str = "cairn_bench_admin_token_0123456789abcdef";
const PUSH: &str = "cairn_bench_push_token_0123456789abcdef";
const SECRET: &str = "cairn-bench-cluster-secret-0123456789abcdef";

#[derive(Default)]
pub struct ClusterResults {
    pub push_single: Vec<f64>,
    pub push_cluster: Vec<f64>,
    pub replicated: Vec<f64>,
    pub stored_bytes: u64,
    pub hits_leader: Vec<RateSample>,
    pub hits_follower: Vec<RateSample>,
    pub misses_leader: Vec<RateSample>,
    pub misses_follower: Vec<RateSample>,
    pub failover: Vec<f64>,
    /// CPU seconds spent during each single-node push: cachectl, then cairnd.
    pub cpu_single: Vec<(f64, f64)>,
    /// CPU seconds spent during each cluster push: cachectl, then each node.
    pub cpu_cluster: Vec<(f64, [f64; 3])>,
    /// GC of the whole pushed closure: a dry run's seconds, then the pass's seconds,
    /// then how long until no node serves any of the deleted narinfos.
    pub gc: Vec<(f64, f64, f64)>,
    /// Paths the GC passes deleted.
    pub gc_deleted: u64,
    /// Length of each wrk run.
    pub wrk_seconds: u64,
    /// Raft terms begun during each cluster push and its replication (0: the leader
    /// held on throughout, no election timed out while the nodes wrote and fsynced).
    pub elections: Vec<u64>,
}

/// The highest Raft term any node of a status report is in.
fn max_term(v: &serde_json::Value) -> u64 {
    v["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["term"].as_u64())
        .max()
        .unwrap_or(0)
}

fn step(msg: impl AsRef<str>) {
    eprintln!("cairn-bench: {}", msg.as_ref());
}

fn private_file(path: &Path, text: &str) -> Result<()> {
    fs::write(path, format!("{text}\n"))?;
    fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok(())
}

/// One node's ports and files.
struct NodeSpec {
    id: u64,
    port: u16,
    cluster_port: u16,
    config: PathBuf,
}

/// Writes the configs of a fresh `n`-node cluster (`n == 0`: one single node).
fn write_configs(ctx: &Ctx<'_>, tag: &str, n: u64) -> Result<Vec<NodeSpec>> {
    let dir = ctx.run_dir.join(format!("cluster-{tag}"));
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::create_dir_all(&dir)?;
    let (admin, push, secret) = (dir.join("admin"), dir.join("push"), dir.join("secret"));
    private_file(&admin, ADMIN)?;
    private_file(&push, PUSH)?;
    private_file(&secret, SECRET)?;
    let count = n.max(1);
    let mut specs = Vec::new();
    for id in 1..=count {
        specs.push(NodeSpec {
            id,
            port: free_port()?,
            cluster_port: free_port()?,
            config: dir.join(format!("node-{id}.toml")),
        });
    }
    for s in &specs {
        let mut text = format!(
            "bind = \"127.0.0.1:{port}\"\ndata_dir = \"{data}\"\nsign_key_paths = [\"{key}\"]\n\
             serve_local_store = false\n\n[[tokens]]\nname = \"admin\"\nsecret_file = \"{admin}\"\n\
             scopes = [\"admin\"]\n\n[[tokens]]\nname = \"bench\"\nsecret_file = \"{push}\"\n\
             scopes = [\"push\"]\n",
            port = s.port,
            data = dir.join(format!("data-{}", s.id)).display(),
            key = ctx.key.display(),
            admin = admin.display(),
            push = push.display(),
        );
        if n > 0 {
            write!(
                text,
                "\n[cluster]\nnode_id = {}\nlisten = \"127.0.0.1:{}\"\nsecret_file = \"{}\"\n\
                 repair_interval_secs = 5\n",
                s.id,
                s.cluster_port,
                secret.display()
            )?;
            for p in specs.iter().filter(|p| p.id != s.id) {
                write!(
                    text,
                    "\n[[cluster.peers]]\nnode_id = {}\naddr = \"127.0.0.1:{}\"\n",
                    p.id, p.cluster_port
                )?;
            }
        }
        fs::write(&s.config, text)?;
    }
    Ok(specs)
}

async fn start(ctx: &Ctx<'_>, tag: &str, s: &NodeSpec) -> Result<Server> {
    let mut cmd = Command::new(ctx.cairnd);
    cmd.arg("--config")
        .arg(&s.config)
        .env_remove("CONFIG_FILE")
        .env_remove("SIGN_KEY_PATHS")
        .env_remove("SIGN_KEY_PATH")
        .env_remove("NIX_STORE_DIR")
        .env("RUST_LOG", "info,openraft=warn")
        .env("NO_COLOR", "1");
    let log = ctx.run_dir.join(format!("cairnd-{tag}-{}.log", s.id));
    Server::start(
        &format!("cairnd ({tag} node {})", s.id),
        Kind::Cairnd,
        cmd,
        s.port,
        &log,
        ctx.pid_file,
    )
    .await
}

async fn status(client: &reqwest::Client, base: &str) -> Result<serde_json::Value> {
    let text = client
        .get(format!("{base}/api/v1/status"))
        .timeout(Duration::from_secs(10))
        .send()
        .await?
        .text()
        .await?;
    serde_json::from_str(&text).context("status JSON")
}

/// Polls `cond` on node `base`'s status every 50 ms, up to `limit`.
async fn wait_status(
    client: &reqwest::Client,
    base: &str,
    limit: Duration,
    what: &str,
    cond: impl Fn(&serde_json::Value) -> bool,
) -> Result<serde_json::Value> {
    let t = Instant::now();
    loop {
        if let Ok(v) = status(client, base).await {
            if cond(&v) {
                return Ok(v);
            }
        }
        if t.elapsed() > limit {
            bail!("timed out waiting for {what} on {base}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn all_up(v: &serde_json::Value) -> bool {
    !v["leader"].is_null()
        && v["nodes"]
            .as_array()
            .is_some_and(|n| n.len() == 3 && n.iter().all(|x| x["reachable"] == true))
}

/// Starts a fresh three-node cluster and forms it.
async fn cluster(
    ctx: &Ctx<'_>,
    client: &reqwest::Client,
    tag: &str,
) -> Result<(Vec<NodeSpec>, Vec<Option<Server>>)> {
    let specs = write_configs(ctx, tag, 3)?;
    let mut servers = Vec::new();
    for s in &specs {
        servers.push(Some(start(ctx, tag, s).await?));
    }
    let base = servers[0].as_ref().expect("started").base_url.clone();
    let st = client
        .post(format!("{base}/api/v1/cluster/init"))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await?
        .status();
    ensure!(st.is_success(), "cluster init answered {st}");
    wait_status(
        client,
        &base,
        Duration::from_secs(30),
        "a formed cluster",
        all_up,
    )
    .await?;
    Ok((specs, servers))
}

/// CPU seconds (user + system) of this process's waited-for children so far.
fn children_cpu() -> Result<f64> {
    let stat = fs::read_to_string("/proc/self/stat")?;
    let rest = &stat[stat.rfind(')').context("malformed stat")? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // cutime(16) and cstime(17): indexes 13 and 14 after the name.
    let ticks: u64 = f.get(13).context("short stat")?.parse::<u64>()?
        + f.get(14).context("short stat")?.parse::<u64>()?;
    Ok(ticks as f64 / rustix::param::clock_ticks_per_second() as f64)
}

/// Pushes the corpus; returns the wall seconds and cachectl's CPU seconds.
fn push(ctx: &Ctx<'_>, base: &str, token: &Path) -> Result<(f64, f64)> {
    let cpu = children_cpu()?;
    let t = Instant::now();
    let out = Command::new(ctx.cachectl)
        .args(["push", "--cache", base, "--token-file"])
        .arg(token)
        .arg("--json")
        .arg(ctx.root)
        .output()?;
    ensure!(
        out.status.success(),
        "cachectl push: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((t.elapsed().as_secs_f64(), children_cpu()? - cpu))
}

/// A small valid NAR (one regular file with random contents).
fn small_nar() -> Result<Vec<u8>> {
    let dir = std::env::temp_dir().join(format!("cairn-bench-nar-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    let f = dir.join("f");
    fs::write(&f, format!("{:032x}", rand_u128()))?;
    let mut nar = Vec::new();
    nix_formats::nar::dump_path(&f, &mut nar).map_err(|e| anyhow::anyhow!("{e}"))?;
    fs::remove_dir_all(&dir)?;
    Ok(nar)
}

fn rand_u128() -> u128 {
    let mut b = [0u8; 16];
    let _ =
        fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
    u128::from_le_bytes(b)
}

async fn put_nar(client: &reqwest::Client, base: &str, nar: &[u8]) -> Result<u16> {
    let fh = nix_formats::Hash::sha256_of(nar).to_nix32();
    Ok(client
        .put(format!("{base}/nar/{fh}.nar"))
        .bearer_auth(PUSH)
        .timeout(Duration::from_secs(30))
        .body(nar.to_vec())
        .send()
        .await?
        .status()
        .as_u16())
}

/// How long after many files were deleted the pushes wait (see [`settle_deletions`]).
const DELETION_WINDOW: Duration = Duration::from_secs(100);

/// Waits until [`DELETION_WINDOW`] has passed since `deleted`. On ext4 without a journal
/// (this benchmark machine's root file system), allocating an inode skips, one inode
/// table read at a time, every inode freed recently; after a few thousand deletions,
/// creating a file in that part of the disk stays 5–30× slower for about 95 s here
/// (measured: 600–1000 µs a file, then 70–130 µs), well past the 30–35 s the kernel
/// source suggests. Left alone, that charged whichever push followed a deletion (the
/// earlier runs' data directories, the previous repetition's GC), and the cluster's
/// most, which creates three files per blob. Both pushes of a repetition start
/// outside the window. (A probe creating files of its own cannot tell when it is over:
/// the inodes it gets come from other parts of the inode table.)
async fn settle_deletions(deleted: Instant) {
    let left = DELETION_WINDOW.saturating_sub(deleted.elapsed());
    if !left.is_zero() {
        step(format!(
            "  waiting {:.0} s for recently deleted files to age (ext4 inode allocation)",
            left.as_secs_f64()
        ));
        tokio::time::sleep(left).await;
    }
}

/// Deletes the data directories an earlier run of the cluster figures left behind.
fn remove_earlier_runs(ctx: &Ctx<'_>) -> Result<()> {
    for entry in fs::read_dir(ctx.run_dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with("cluster-") {
            fs::remove_dir_all(entry.path())?;
        }
    }
    Ok(())
}

/// Runs the cluster measurements with the upload side's context and the miss workload.
pub async fn run(ctx: &Ctx<'_>, misses: &Workload) -> Result<ClusterResults> {
    let client = crate::narpass::client()?;
    let mut r = ClusterResults {
        wrk_seconds: ctx.wrk.duration.as_secs(),
        ..ClusterResults::default()
    };
    // Whatever ran before (earlier runs' directories, the other sections' caches)
    // deleted files just now.
    remove_earlier_runs(ctx)?;
    let mut last_deletion = Instant::now();
    for rep in 1..=ctx.reps {
        settle_deletions(last_deletion).await;
        // Upload throughput: single, then a fresh cluster.
        let single = write_configs(ctx, &format!("single-{rep}"), 0)?;
        let mut one = start(ctx, &format!("single-{rep}"), &single[0]).await?;
        let token = single[0].config.with_file_name("push");
        step(format!(
            "cluster bench {rep}/{}: cachectl push into one node",
            ctx.reps
        ));
        let server_cpu = one.cpu_seconds()?;
        let (s, client_cpu) = push(ctx, &one.base_url, &token)?;
        one.check_alive()?;
        let server_cpu = one.cpu_seconds()? - server_cpu;
        step(format!(
            "  {s:.1} s (CPU: cachectl {client_cpu:.1} s, cairnd {server_cpu:.1} s)"
        ));
        r.push_single.push(s);
        r.cpu_single.push((client_cpu, server_cpu));
        one.stop();

        let tag = format!("three-{rep}");
        let (specs, mut servers) = cluster(ctx, &client, &tag).await?;
        let base1 = servers[0].as_ref().expect("running").base_url.clone();
        step(format!(
            "cluster bench {rep}/{}: cachectl push into node 1 of three",
            ctx.reps
        ));
        let node_cpu = |servers: &[Option<Server>]| -> Result<[f64; 3]> {
            let mut c = [0.0; 3];
            for (i, s) in servers.iter().enumerate() {
                c[i] = s.as_ref().expect("running").cpu_seconds()?;
            }
            Ok(c)
        };
        let term_before = max_term(
            &wait_status(&client, &base1, Duration::from_secs(10), "a status", |_| {
                true
            })
            .await?,
        );
        let before = node_cpu(&servers)?;
        let t = Instant::now();
        let (s, client_cpu) = push(ctx, &base1, &specs[0].config.with_file_name("push"))?;
        let after = node_cpu(&servers)?;
        let nodes = [0, 1, 2].map(|i| after[i] - before[i]);
        step(format!(
            "  {s:.1} s (CPU: cachectl {client_cpu:.1} s, nodes {:.1} / {:.1} / {:.1} s)",
            nodes[0], nodes[1], nodes[2]
        ));
        r.push_cluster.push(s);
        r.cpu_cluster.push((client_cpu, nodes));
        let v = wait_status(
            &client,
            &base1,
            Duration::from_secs(600),
            "three copies",
            |v| v["under_replicated_blobs"] == 0 && v["paths"].as_u64().unwrap_or(0) > 0,
        )
        .await?;
        let rs = t.elapsed().as_secs_f64();
        r.stored_bytes = v["stored_bytes"].as_u64().unwrap_or(0);
        let elections = max_term(&v).saturating_sub(term_before);
        step(format!(
            "  three copies of every blob after {rs:.1} s; {elections} Raft terms begun meanwhile"
        ));
        r.replicated.push(rs);
        r.elections.push(elections);

        // narinfo rates on the leader and on a follower, in the order leader, follower,
        // follower, leader: each side's rate is the mean of its two runs, so load from
        // elsewhere on this shared machine that rises or falls over the four runs
        // weighs on both sides alike.
        let leader = v["leader"].as_u64().context("a leader")? as usize;
        let follower = (1..=3).find(|&i| i != leader).expect("a follower");
        for (load, on_leader, on_follower) in [
            (ctx.hits, &mut r.hits_leader, &mut r.hits_follower),
            (misses, &mut r.misses_leader, &mut r.misses_follower),
        ] {
            let mut runs = Vec::new();
            for node in [leader, follower, follower, leader] {
                let role = if node == leader {
                    "the leader"
                } else {
                    "a follower"
                };
                step(format!("  {} on {role} (node {node})", load.name));
                let sample = wrk::run(
                    ctx.wrk,
                    ctx.script,
                    servers[node - 1].as_mut().expect("running"),
                    load,
                )
                .await?;
                step(format!("    {:.0}/s", sample.per_second));
                runs.push(sample);
            }
            let l = RateSample::mean(&runs[0], &runs[3]);
            let f = RateSample::mean(&runs[1], &runs[2]);
            step(format!(
                "    leader {:.0}/s, follower {:.0}/s (means of two runs each)",
                l.per_second, f.per_second
            ));
            on_leader.push(l);
            on_follower.push(f);
        }

        // GC of everything pushed: a dry run, then the pass, through a follower.
        let fbase = servers[follower - 1]
            .as_ref()
            .expect("running")
            .base_url
            .clone();
        step("  GC of the whole closure (retention max age 0, through a follower)");
        let admin = |rb: reqwest::RequestBuilder, body: serde_json::Value| {
            rb.bearer_auth(ADMIN)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
        };
        let st = admin(
            client.put(format!("{fbase}/api/v1/retention")),
            serde_json::json!({ "max_age_secs": 0 }),
        )
        .await?
        .status();
        ensure!(st.is_success(), "retention set answered {st}");
        tokio::time::sleep(Duration::from_millis(1100)).await; // every path a second old
        let gc = |dry: bool| {
            let req = admin(
                client.post(format!("{fbase}/api/v1/gc")),
                serde_json::json!({ "dry_run": dry }),
            );
            async move {
                let t = Instant::now();
                let text = req.await?.text().await?;
                let v: serde_json::Value = serde_json::from_str(&text).context("GC reply")?;
                Ok::<_, anyhow::Error>((t.elapsed().as_secs_f64(), v))
            }
        };
        let (dry_s, dry) = gc(true).await?;
        let (pass_s, done) = gc(false).await?;
        let deleted = done["deleted"].as_u64().unwrap_or(0);
        ensure!(
            dry["planned"] == done["paths"]
                && deleted == done["paths"].as_u64().unwrap_or(u64::MAX),
            "GC did not delete every path: dry run {dry}, pass {done}"
        );
        let t = Instant::now();
        for base in servers.iter().flatten().map(|s| s.base_url.clone()) {
            wait_status(&client, &base, Duration::from_secs(60), "no paths", |v| {
                v["paths"] == 0
            })
            .await?;
        }
        let everywhere = pass_s + t.elapsed().as_secs_f64();
        last_deletion = Instant::now();
        step(format!(
            "    {deleted} paths: plan {dry_s:.2} s, pass {pass_s:.2} s, gone on every node after {everywhere:.2} s"
        ));
        r.gc.push((dry_s, pass_s, everywhere));
        r.gc_deleted = deleted;

        // Failover: SIGKILL the leader, then upload to a survivor until one is taken.
        let victim = servers[leader - 1].take().expect("running");
        let nar = small_nar()?;
        let survivor = servers[follower - 1]
            .as_ref()
            .expect("running")
            .base_url
            .clone();
        step(format!("  SIGKILL of the leader (node {leader})"));
        kill_process(
            Pid::from_raw(victim.pid() as i32).context("pid")?,
            Signal::KILL,
        )?;
        let t = Instant::now();
        loop {
            if put_nar(&client, &survivor, &nar).await.unwrap_or(0) == 200 {
                break;
            }
            ensure!(
                t.elapsed() < Duration::from_secs(60),
                "no upload taken within 60 s of the kill"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let f = t.elapsed().as_secs_f64();
        step(format!("    next acknowledged upload after {f:.2} s"));
        r.failover.push(f);
        drop(victim);
        for s in servers.into_iter().flatten() {
            s.stop();
        }
    }
    Ok(r)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return f64::NAN;
    }
    s[s.len() / 2]
}

fn rates(v: &[RateSample]) -> Vec<f64> {
    v.iter().map(|s| s.per_second).collect()
}

fn list(v: &[f64], digits: usize) -> String {
    v.iter()
        .map(|x| format!("{x:.digits$}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The RESULTS.md section, markers included.
pub fn render(r: &ClusterResults) -> String {
    let mut w = String::new();
    let ok = |b: bool| if b { "✔" } else { "✘" };
    // Ratios are taken run by run (the two sides of a run share the machine's state at
    // that moment), then their median.
    // Shown rounded down, so a ratio printed as meeting its target does meet it.
    let paired = |a: &[f64], b: &[f64]| {
        let r = median(&a.iter().zip(b).map(|(x, y)| x / y).collect::<Vec<_>>());
        (r * 100.0).floor() / 100.0
    };
    let push_ratio = paired(&r.push_single, &r.push_cluster);
    let repl = median(&r.replicated);
    let hits = paired(&rates(&r.hits_follower), &rates(&r.hits_leader));
    let misses = paired(&rates(&r.misses_follower), &rates(&r.misses_leader));
    let failover = median(&r.failover);
    let _ = writeln!(w, "{BEGIN}\n## Cluster (issue 4)\n");
    let _ = writeln!(
        w,
        "Three `cairnd` nodes on loopback, all on this one 2-core machine (so the cluster's \
         three verifications of every upload share the cores one single node has to \
         itself) (default Raft timing: heartbeat 250 ms, elections \
         1–2 s) beside one single `cairnd` (the default: a cluster of one, no peers), same \
         machine, same corpus; medians of {} \
         runs, every run listed. Each repetition's two pushes start at least 100 s after \
         the last mass deletion of files (earlier data directories, the GC step): this \
         machine's root file system is ext4 without a journal, whose inode allocator \
         skips recently freed inodes one table read at a time, which here makes file \
         creation 5–30× slower for about 95 s after a few thousand deletions and would \
         charge the deletions to whichever push came next (the cluster's most: it \
         creates three files per blob). The narinfo rates were taken in the order \
         leader, follower, follower, leader ({}-s wrk runs), each side the mean of its \
         two runs.\n",
        r.push_single.len(),
        r.wrk_seconds
    );
    let _ = writeln!(w, "| measure | result | target | |\n|---|---|---|---|");
    let _ = writeln!(
        w,
        "| upload throughput, cluster vs single (`cachectl push` of the closure) | {:.2}× ({:.1} s vs {:.1} s) | ≥ 0.6× | {} |",
        push_ratio,
        median(&r.push_cluster),
        median(&r.push_single),
        ok(push_ratio >= 0.6)
    );
    let _ = writeln!(
        w,
        "| replication: push start → every blob on 3 nodes | {:.1} s ({:.0} MB/s of stored bytes, {:.0} MB) | — | |",
        repl,
        r.stored_bytes as f64 / 1e6 / repl,
        r.stored_bytes as f64 / 1e6
    );
    let _ = writeln!(
        w,
        "| narinfo hits, follower vs leader | {:.2}× ({:.0}/s vs {:.0}/s) | ≥ 0.9× | {} |",
        hits,
        median(&rates(&r.hits_follower)),
        median(&rates(&r.hits_leader)),
        ok(hits >= 0.9)
    );
    let _ = writeln!(
        w,
        "| narinfo misses, follower vs leader | {:.2}× ({:.0}/s vs {:.0}/s) | ≥ 0.7× | {} |",
        misses,
        median(&rates(&r.misses_follower)),
        median(&rates(&r.misses_leader)),
        ok(misses >= 0.7)
    );
    let _ = writeln!(
        w,
        "| failover: leader SIGKILL → next acknowledged upload | {failover:.2} s | ≤ 5 s | {} |",
        ok(failover <= 5.0)
    );
    let _ = writeln!(
        w,
        "| elections during a push (Raft terms begun, push start → three copies) | {} | 0 | {} |",
        r.elections.iter().max().copied().unwrap_or(0),
        ok(r.elections.iter().all(|&e| e == 0))
    );
    let gc_at = |f: fn(&(f64, f64, f64)) -> f64| median(&r.gc.iter().map(f).collect::<Vec<_>>());
    let _ = writeln!(
        w,
        "| GC of the whole closure ({} paths) through a follower: plan (dry run) / pass / gone from every node | {:.2} s / {:.2} s / {:.2} s | — | |",
        r.gc_deleted,
        gc_at(|g| g.0),
        gc_at(|g| g.1),
        gc_at(|g| g.2)
    );
    let _ = writeln!(w, "\nRuns: push single {} s; push cluster {} s; to three copies {} s; hits leader {} /s, follower {} /s; misses leader {} /s, follower {} /s; failover {} s; GC pass {} s.",
        list(&r.push_single, 1),
        list(&r.push_cluster, 1),
        list(&r.replicated, 1),
        list(&rates(&r.hits_leader), 0),
        list(&rates(&r.hits_follower), 0),
        list(&rates(&r.misses_leader), 0),
        list(&rates(&r.misses_follower), 0),
        list(&r.failover, 2),
        list(&r.gc.iter().map(|g| g.1).collect::<Vec<_>>(), 2),
    );
    let cpu_single: Vec<String> = r
        .cpu_single
        .iter()
        .map(|(c, s)| format!("cachectl {c:.1} + cairnd {s:.1}"))
        .collect();
    let cpu_cluster: Vec<String> = r
        .cpu_cluster
        .iter()
        .map(|(c, n)| {
            format!(
                "cachectl {c:.1} + nodes {:.1} / {:.1} / {:.1}",
                n[0], n[1], n[2]
            )
        })
        .collect();
    let _ = writeln!(
        w,
        "CPU seconds used during the pushes (the machine has 2 cores): single {}; cluster {}.",
        cpu_single.join(", "),
        cpu_cluster.join(", ")
    );
    let _ = writeln!(w, "{END}");
    w
}

/// Puts `section` into the report at `path`, replacing an earlier cluster section.
pub fn splice(path: &Path, section: &str) -> Result<()> {
    let old = fs::read_to_string(path).unwrap_or_default();
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(a), Some(b)) if b > a => {
            format!(
                "{}{}{}",
                &old[..a],
                section.trim_end(),
                &old[b + END.len()..]
            )
        }
        _ => format!("{}\n{section}", old.trim_end()),
    };
    fs::write(path, new)?;
    Ok(())
}
