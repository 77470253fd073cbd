//! `cairn-bench`: measures `cairnd` side by side with nginx serving a static zstd cache of
//! the same closure, in one run, and writes `bench/RESULTS.md`. Run through `bench/run`,
//! which installs the tools, builds the binaries and the corpus first; see
//! `bench/README.md`. Not a test: nothing in the test suite runs it.

mod cluster;
mod harmonia;
mod narpass;
mod procs;
mod report;
mod setup;
mod uploads;
mod wrk;

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;

use narpass::{Ask, PassSample};
use procs::{free_port, Kind, Server};
use report::{Corpus, Machine, Results, Settings};
use wrk::{Workload, WrkConfig};

/// Benchmarks cairnd against nginx over a static zstd cache of the same closure.
#[derive(Parser)]
#[command(name = "cairn-bench")]
struct Args {
    /// Root store path of the corpus (`make-corpus 1` prints it).
    #[arg(long)]
    root: String,
    /// The cairnd binary.
    #[arg(long, default_value = "target/release/cairnd")]
    cairnd: PathBuf,
    /// Working directory: static cache, keys, configs, logs (git-ignored).
    #[arg(long, default_value = "bench/out")]
    out: PathBuf,
    /// Where the report goes.
    #[arg(long, default_value = "bench/RESULTS.md")]
    results: PathBuf,
    /// Repetitions of every measurement (the report gives the median).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Seconds per wrk run.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// wrk threads.
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// wrk keep-alive connections.
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// Parallel downloads in the NAR passes.
    #[arg(long, default_value_t = 16)]
    parallel: usize,
    /// The cachectl binary (push and hook are measured when it has them).
    #[arg(long, default_value = "target/release/cachectl")]
    cachectl: PathBuf,
    /// Skip the upload measurements (issue 3).
    #[arg(long)]
    no_uploads: bool,
    /// Random nonexistent hashes the miss runs cycle over.
    #[arg(long, default_value_t = 400_000)]
    miss_hashes: usize,
    /// Also measure a three-node cluster (issue 4) after everything else.
    #[arg(long)]
    cluster: bool,
    /// Measure only the three-node cluster and refresh that section of the report.
    #[arg(long, conflicts_with = "cluster")]
    cluster_only: bool,
    /// A `harmonia-cache` binary to measure side by side with cairnd (narinfo rates,
    /// identity and zstd passes, peak RSS); without one, the report compares with
    /// Harmonia's quoted reference figures.
    #[arg(long)]
    harmonia: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    // Run by Nix as the post-build hook of the hook-latency builds.
    if let Ok(times) = std::env::var(uploads::HOOK_TIMES_ENV) {
        return uploads::run_as_hook_timer(&times);
    }
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cairn-bench: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        // On a signal the benchmark future is dropped, which stops every server it
        // started (their guards' Drop) before we exit.
        tokio::select! {
            r = bench(args) => r,
            s = signalled() => Err(anyhow::anyhow!("interrupted by {s}; servers stopped")),
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cairn-bench: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn signalled() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
        _ = hup.recv() => "SIGHUP",
    }
}

fn step(msg: impl AsRef<str>) {
    eprintln!("cairn-bench: {}", msg.as_ref());
}

/// Everything a cairnd start needs.
struct CairndSetup {
    binary: PathBuf,
    key: PathBuf,
    run_dir: PathBuf,
    pid_file: PathBuf,
}

impl CairndSetup {
    fn flags(&self) -> String {
        format!(
            "--bind 127.0.0.1:PORT --data-dir DIR --sign-key-path {} \
             --narinfo-compression none --variant-cache-bytes {}",
            self.key.display(),
            VARIANT_CACHE_BYTES
        )
    }

    /// Starts a cairnd with a new, empty data dir named `tag`.
    async fn start(&self, tag: &str) -> Result<Server> {
        let data = self.run_dir.join(format!("cairnd-{tag}"));
        if data.exists() {
            fs::remove_dir_all(&data)?;
        }
        fs::create_dir_all(&data)?;
        let port = free_port()?;
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--bind")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(&data)
            .arg("--sign-key-path")
            .arg(&self.key)
            .arg("--narinfo-compression")
            .arg("none")
            .arg("--variant-cache-bytes")
            .arg(VARIANT_CACHE_BYTES.to_string())
            // Harmonia-compatible variables a developer may have set would change the
            // configuration; the log level is cairnd's default, spelled out.
            .env_remove("CONFIG_FILE")
            .env_remove("SIGN_KEY_PATHS")
            .env_remove("SIGN_KEY_PATH")
            .env_remove("NIX_STORE_DIR")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        let log = self.run_dir.join(format!("cairnd-{tag}.log"));
        step(format!("starting cairnd ({tag}) on port {port}"));
        Server::start(
            &format!("cairnd ({tag})"),
            Kind::Cairnd,
            cmd,
            port,
            &log,
            &self.pid_file,
        )
        .await
    }
}

/// Room for every compressed variant of the corpus (about 0.4 of 640 MB), so the second
/// zstd pass is served entirely from the variant cache.
const VARIANT_CACHE_BYTES: u64 = 4 << 30;

async fn bench(args: Args) -> Result<()> {
    let started = Instant::now();
    ensure!(args.reps >= 1, "--reps must be at least 1");
    let out = absolute(&args.out)?;
    let run_dir = out.join("run");
    if run_dir.exists() {
        fs::remove_dir_all(&run_dir)?;
    }
    fs::create_dir_all(&run_dir)?;
    let pid_file = out.join("servers.pids");
    let cairnd_bin = existing_binary(&args.cairnd, "cairnd", "cargo build --release --bin cairnd")?;
    let harmonia_bin = args
        .harmonia
        .as_deref()
        .map(|p| existing_binary(p, "harmonia-cache", "see bench/README.md for building one"))
        .transpose()?;

    // Corpus, static cache, key.
    let conf_dir = setup::nix_conf_dir(&out)?;
    let closure = setup::closure(&conf_dir, &args.root)?;
    let hashes: Vec<String> = closure
        .iter()
        .map(|p| setup::hash_part(p))
        .collect::<Result<_>>()?;
    step(format!(
        "corpus {}: {} store paths",
        args.root,
        closure.len()
    ));
    let static_dir = setup::static_cache(&out, &conf_dir, &args.root, &closure)?;
    let key = setup::signing_key(&out, &conf_dir)?;

    // wrk inputs.
    let script = wrk::write_script(&run_dir)?;
    let hits_file = run_dir.join("hits.txt");
    setup::write_paths(&hits_file, &hashes)?;
    let known: HashSet<String> = hashes.iter().cloned().collect();
    let misses_file = run_dir.join("misses.txt");
    setup::write_paths(
        &misses_file,
        &setup::random_hashes(args.miss_hashes, &known)?,
    )?;
    let hits_load = Workload {
        name: "narinfo hit",
        paths_file: hits_file,
        expected_status: 200,
    };
    let misses_load = Workload {
        name: "narinfo miss",
        paths_file: misses_file,
        expected_status: 404,
    };
    let wrk_cfg = WrkConfig {
        threads: args.threads,
        connections: args.connections,
        duration: Duration::from_secs(args.duration),
    };
    let cachectl_bin = absolute(&args.cachectl)?;
    // What the upload side and the cluster measurements start cairnd and cachectl with.
    let ctx = uploads::Ctx {
        cairnd: &cairnd_bin,
        cachectl: &cachectl_bin,
        key: &key,
        run_dir: &run_dir,
        pid_file: &pid_file,
        conf_dir: &conf_dir,
        root: &args.root,
        hashes: &hashes,
        reps: args.reps,
        parallel: args.parallel,
        wrk: &wrk_cfg,
        script: &script,
        hits: &hits_load,
    };
    if args.cluster_only {
        let r = cluster::run(&ctx, &misses_load).await?;
        cluster::splice(&args.results, &cluster::render(&r))?;
        step(format!(
            "wrote the cluster section of {}",
            args.results.display()
        ));
        return Ok(());
    }

    // nginx.
    let nginx_dir = run_dir.join("nginx");
    let nginx_port = free_port()?;
    let nginx_conf = setup::nginx_conf(&nginx_dir, &static_dir, nginx_port)?;
    let mut cmd = Command::new("nginx");
    cmd.arg("-p")
        .arg(&nginx_dir)
        .arg("-c")
        .arg(&nginx_conf)
        .arg("-e")
        .arg(nginx_dir.join("error.log"));
    step(format!("starting nginx on port {nginx_port}"));
    let mut nginx = Server::start(
        "nginx",
        Kind::Nginx,
        cmd,
        nginx_port,
        &nginx_dir.join("stdout.log"),
        &pid_file,
    )
    .await?;

    let cairnd = CairndSetup {
        binary: cairnd_bin.clone(),
        key: key.clone(),
        run_dir: run_dir.clone(),
        pid_file: pid_file.clone(),
    };
    let mut main_cairnd = cairnd.start("narinfo-identity").await?;
    let client = narpass::client()?;
    check_signed(&client, &main_cairnd, &hashes[0]).await?;

    // Warm-up: page cache, database, connection set-up; also a first full check of
    // both servers' narinfos and NARs.
    step("warm-up passes (untimed)");
    let warm_id = narpass::run(
        &client,
        &mut main_cairnd,
        &hashes,
        Ask::Plain,
        args.parallel,
    )
    .await?;
    narpass::run(&client, &mut nginx, &hashes, Ask::Plain, args.parallel).await?;
    let nar_bytes = warm_id.nar_bytes;
    // Harmonia, when given, measured right after cairnd in every repetition below.
    let mut harmonia = match &harmonia_bin {
        Some(binary) => Some(harmonia::Side::start(&ctx, binary, &client).await?),
        None => None,
    };

    // 1–2: narinfo rates.
    let mut hits = Vec::new();
    let mut misses = Vec::new();
    for (load, samples, are_hits) in [
        (&hits_load, &mut hits, true),
        (&misses_load, &mut misses, false),
    ] {
        for rep in 1..=args.reps {
            step(format!("{}s, run {rep}/{}: cairnd", load.name, args.reps));
            let c = wrk::run(&wrk_cfg, &script, &mut main_cairnd, load).await?;
            step(format!("{}s, run {rep}/{}: nginx", load.name, args.reps));
            let n = wrk::run(&wrk_cfg, &script, &mut nginx, load).await?;
            step(format!(
                "  cairnd {:.0}/s at {:.1} µs, nginx {:.0}/s at {:.1} µs",
                c.per_second,
                c.cpu_us_per_request(),
                n.per_second,
                n.cpu_us_per_request()
            ));
            if let Some(h) = &mut harmonia {
                step(format!("{}s, run {rep}/{}: Harmonia", load.name, args.reps));
                let r = h.rate(&ctx, load, are_hits).await?;
                step(format!(
                    "  Harmonia {:.0}/s at {:.1} µs",
                    r.per_second,
                    r.cpu_us_per_request()
                ));
            }
            samples.push((c, n));
        }
    }

    // 3a: identity.
    let mut identity = Vec::new();
    for rep in 1..=args.reps {
        step(format!("identity pass, run {rep}/{}: cairnd", args.reps));
        let p = narpass::run(
            &client,
            &mut main_cairnd,
            &hashes,
            Ask::Plain,
            args.parallel,
        )
        .await?;
        report_pass(&p);
        identity.push(p);
        if let Some(h) = &mut harmonia {
            step(format!("identity pass, run {rep}/{}: Harmonia", args.reps));
            h.pass(&ctx, &client, Ask::Plain, false).await?;
        }
    }
    let mut peak_rss = vec![(
        "narinfo runs + identity passes".to_string(),
        main_cairnd.peak_rss()?,
    )];
    main_cairnd.stop();

    // 3b–d: zstd, cold and warm, against nginx's static files.
    let (mut cold, mut warm, mut nginx_zstd) = (Vec::new(), Vec::new(), Vec::new());
    for rep in 1..=args.reps {
        let mut fresh = cairnd.start(&format!("zstd-{rep}")).await?;
        step(format!("zstd pass, run {rep}/{}: cairnd, cold", args.reps));
        let p = narpass::run(&client, &mut fresh, &hashes, Ask::Zstd, args.parallel).await?;
        report_pass(&p);
        cold.push(p);
        step(format!("zstd pass, run {rep}/{}: cairnd, warm", args.reps));
        let p = narpass::run(&client, &mut fresh, &hashes, Ask::Zstd, args.parallel).await?;
        report_pass(&p);
        warm.push(p);
        step(format!("zstd pass, run {rep}/{}: nginx", args.reps));
        let p = narpass::run(&client, &mut nginx, &hashes, Ask::Plain, args.parallel).await?;
        report_pass(&p);
        nginx_zstd.push(p);
        if let Some(h) = &mut harmonia {
            h.restart(&ctx).await?;
            step(format!(
                "zstd pass, run {rep}/{}: Harmonia, fresh",
                args.reps
            ));
            h.pass(&ctx, &client, Ask::Zstd, false).await?;
            step(format!(
                "zstd pass, run {rep}/{}: Harmonia, again",
                args.reps
            ));
            h.pass(&ctx, &client, Ask::Zstd, true).await?;
        }
        peak_rss.push((format!("zstd run {rep} (cold + warm)"), fresh.peak_rss()?));
        fresh.stop();
    }

    let harmonia = harmonia.map(harmonia::Side::finish).transpose()?;

    // The upload side.
    let uploads = if args.no_uploads {
        None
    } else {
        Some(uploads::run(&ctx, &mut nginx).await?)
    };
    nginx.stop();

    let results = Results {
        machine: machine(&cairnd_bin)?,
        corpus: Corpus {
            root: args.root.clone(),
            paths: closure.len(),
            nar_bytes,
            static_bytes: dir_size(&static_dir.join("nar"))?,
        },
        settings: Settings {
            reps: args.reps,
            duration_s: args.duration,
            threads: args.threads,
            connections: args.connections,
            parallel: args.parallel,
            miss_hashes: args.miss_hashes,
            cairnd_flags: cairnd.flags(),
        },
        hits,
        misses,
        identity,
        zstd_cold: cold,
        zstd_warm: warm,
        nginx_zstd,
        harmonia,
        uploads,
        peak_rss,
        cairnd_log: cairnd_warnings(&run_dir)?,
        wall_minutes: started.elapsed().as_secs_f64() / 60.0,
    };
    let text = report::render(&results);
    // A cluster section from an earlier `--cluster-only` run is kept unless remeasured.
    let old = fs::read_to_string(&args.results).unwrap_or_default();
    let old_cluster = match (old.find(cluster::BEGIN), old.find(cluster::END)) {
        (Some(a), Some(b)) if b > a => Some(old[a..b + cluster::END.len()].to_string()),
        _ => None,
    };
    fs::write(&args.results, &text)
        .with_context(|| format!("writing {}", args.results.display()))?;
    if args.cluster {
        let r = cluster::run(&ctx, &misses_load).await?;
        cluster::splice(&args.results, &cluster::render(&r))?;
    } else if let Some(section) = old_cluster {
        cluster::splice(&args.results, &section)?;
    }
    step(format!(
        "wrote {} ({:.1} minutes)",
        args.results.display(),
        results.wall_minutes
    ));
    Ok(())
}

fn report_pass(p: &PassSample) {
    step(format!(
        "  {:.2} s, server {:.2} CPU-s, client {:.2} CPU-s, {:.0} MB/s of NAR, wire ratio {:.3}",
        p.wall.as_secs_f64(),
        p.server_cpu_s,
        p.client_cpu_s,
        p.nar_throughput() / 1e6,
        p.wire_ratio()
    ));
}

/// The narinfo benchmark is meant with signing on: make sure cairnd signs with our key.
async fn check_signed(client: &reqwest::Client, server: &Server, hash: &str) -> Result<()> {
    let url = format!("{}/{hash}.narinfo", server.base_url);
    let text = client.get(&url).send().await?.text().await?;
    let info = nix_formats::narinfo::NarInfo::parse(&text).with_context(|| url.clone())?;
    if !info.sigs.iter().any(|s| s.starts_with("bench-cairn-1:")) {
        bail!("{url} carries no signature by bench-cairn-1:\n{text}");
    }
    Ok(())
}

/// `p` made absolute; an error naming `what` and how to get it when there is no file.
fn existing_binary(p: &Path, what: &str, hint: &str) -> Result<PathBuf> {
    let p = absolute(p)?;
    ensure!(p.is_file(), "no {what} binary at {} ({hint})", p.display());
    Ok(p)
}

fn absolute(p: &Path) -> Result<PathBuf> {
    Ok(if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    })
}

fn dir_size(dir: &Path) -> Result<u64> {
    let mut sum = 0;
    for e in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        sum += e?.metadata()?.len();
    }
    Ok(sum)
}

fn first_line(mut cmd: Command) -> String {
    match cmd.output() {
        Ok(o) => {
            let text = [o.stdout, o.stderr].concat();
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        }
        Err(e) => format!("unknown ({e})"),
    }
}

fn machine(cairnd: &Path) -> Result<Machine> {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo")?;
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown".to_string(), |(_, v)| v.trim().to_string());
    let meminfo = fs::read_to_string("/proc/meminfo")?;
    let mem_total = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or("unknown".to_string(), |kb| {
            format!("{:.1} GiB", kb / (1u64 << 20) as f64)
        });
    let tree = {
        let mut c = Command::new("git");
        c.args(["rev-parse", "--short", "HEAD"]);
        let head = first_line(c);
        let mut c = Command::new("git");
        c.args(["status", "--porcelain", "--untracked-files=no"]);
        let dirty = c.output().map(|o| !o.stdout.is_empty()).unwrap_or(false);
        if dirty {
            format!("git {head} plus uncommitted changes in the working tree")
        } else {
            format!("git {head}")
        }
    };
    let mut date = Command::new("date");
    date.args(["-u", "+%Y-%m-%d %H:%M UTC"]);
    let mut nix = Command::new("nix");
    nix.arg("--version");
    let mut nginx = Command::new("nginx");
    nginx.arg("-v");
    let mut wrk = Command::new("wrk");
    wrk.arg("--version");
    let mut cairnd_v = Command::new(cairnd);
    cairnd_v.arg("--version");
    Ok(Machine {
        date: first_line(date),
        nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model,
        mem_total,
        kernel: fs::read_to_string("/proc/sys/kernel/osrelease")?
            .trim()
            .to_string(),
        tree,
        versions: vec![
            ("cairnd".to_string(), first_line(cairnd_v)),
            ("nginx".to_string(), first_line(nginx)),
            ("wrk".to_string(), first_line(wrk)),
            ("nix".to_string(), first_line(nix)),
        ],
    })
}

/// Distinct WARN/ERROR lines from every cairnd log of this run (timestamps dropped),
/// with how often each occurred.
fn cairnd_warnings(run_dir: &Path) -> Result<Vec<String>> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for e in fs::read_dir(run_dir)? {
        let path = e?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !(name.starts_with("cairnd-") && name.ends_with(".log")) {
            continue;
        }
        for line in fs::read_to_string(&path)?.lines() {
            if line.contains(" WARN ") || line.contains(" ERROR ") {
                let without_time = line.split_once(' ').map_or(line, |(_, rest)| rest);
                *counts.entry(without_time.trim().to_string()).or_default() += 1;
            }
        }
    }
    let mut v: Vec<(String, usize)> = counts.into_iter().collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.1));
    Ok(v.into_iter()
        .take(20)
        .map(|(l, n)| format!("{n}× {l}"))
        .collect())
}
