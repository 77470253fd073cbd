//! The upload side (issue 3): getting the corpus closure into cairnd three ways, timed
//! — stock `nix copy --to 'http://…?compression=zstd'`, `cachectl push` (when this
//! cachectl has it), and `nix copy --to file://` as the local floor — then serving the
//! uploaded closure (stored zstd) against nginx's static files, and the latency of
//! `cachectl hook` (when this cachectl has it).

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{ensure, Context, Result};

use crate::narpass::{self, Ask, PassSample};
use crate::procs::{free_port, Kind, Server};
use crate::report::{k, mbps, median, RatePairs};
use crate::setup;
use crate::wrk::{self, Workload, WrkConfig};

/// The push token every upload run uses (written to a 0600 file).
const TOKEN: &str = "cairn_bench_push_token_0123456789abcdef";

pub struct UploadResults {
    /// Seconds per repetition.
    pub nix_copy_http: Vec<f64>,
    pub nix_copy_file: Vec<f64>,
    /// `None` when this cachectl has no `push`.
    pub push: Option<Vec<f64>>,
    /// narinfo hits on the uploaded closure: (cairnd, nginx) per repetition.
    pub hits: RatePairs,
    /// The closure's NARs as the narinfos name them (stored zstd), cairnd then nginx.
    pub served: Vec<PassSample>,
    pub nginx: Vec<PassSample>,
    /// Milliseconds per `cachectl hook` call; `None` when this cachectl has no `hook`.
    pub hook_ms: Option<Vec<f64>>,
}

pub struct Ctx<'a> {
    pub cairnd: &'a Path,
    pub cachectl: &'a Path,
    pub key: &'a Path,
    pub run_dir: &'a Path,
    pub pid_file: &'a Path,
    pub conf_dir: &'a Path,
    pub root: &'a str,
    pub hashes: &'a [String],
    pub reps: usize,
    pub parallel: usize,
    pub wrk: &'a WrkConfig,
    pub script: &'a Path,
    pub hits: &'a Workload,
}

fn step(msg: impl AsRef<str>) {
    eprintln!("cairn-bench: {}", msg.as_ref());
}

/// A cairnd that serves only its cache store and takes pushes with [`TOKEN`].
async fn upload_cairnd(ctx: &Ctx<'_>, tag: &str) -> Result<Server> {
    let dir = ctx.run_dir.join(format!("cairnd-{tag}"));
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::create_dir_all(&dir)?;
    let token = ctx.run_dir.join("push.token");
    fs::write(&token, format!("{TOKEN}\n"))?;
    fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let port = free_port()?;
    let config = dir.join("cairnd.toml");
    fs::write(
        &config,
        format!(
            "bind = \"127.0.0.1:{port}\"\ndata_dir = \"{data}\"\nsign_key_paths = [\"{key}\"]\n\
             serve_local_store = false\n\n[[tokens]]\nname = \"bench\"\nsecret_file = \"{token}\"\n\
             scopes = [\"push\"]\n",
            data = dir.join("data").display(),
            key = ctx.key.display(),
            token = token.display(),
        ),
    )?;
    let mut cmd = Command::new(ctx.cairnd);
    cmd.arg("--config")
        .arg(&config)
        .env_remove("CONFIG_FILE")
        .env_remove("SIGN_KEY_PATHS")
        .env_remove("SIGN_KEY_PATH")
        .env_remove("NIX_STORE_DIR")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
    step(format!("starting cairnd ({tag}) on port {port}"));
    Server::start(
        &format!("cairnd ({tag})"),
        Kind::Cairnd,
        cmd,
        port,
        &ctx.run_dir.join(format!("cairnd-{tag}.log")),
        ctx.pid_file,
    )
    .await
}

/// Nix with a fresh narinfo disk cache, so no answer from an earlier run (same port,
/// other server) is remembered.
fn fresh_nix(ctx: &Ctx<'_>, program: &str, tag: &str) -> Result<Command> {
    let cache = ctx.run_dir.join(format!("xdg-cache-{tag}"));
    if cache.exists() {
        fs::remove_dir_all(&cache)?;
    }
    fs::create_dir_all(&cache)?;
    let mut cmd = setup::nix(ctx.conf_dir, program);
    cmd.env("XDG_CACHE_HOME", &cache);
    Ok(cmd)
}

fn timed(cmd: Command) -> Result<f64> {
    let t = Instant::now();
    setup::output(cmd)?;
    Ok(t.elapsed().as_secs_f64())
}

fn has_subcommand(cachectl: &Path, sub: &str) -> bool {
    Command::new(cachectl)
        .args([sub, "--help"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Every path of the closure is in the cache (a HEAD on each narinfo answers 200).
async fn check_complete(
    client: &reqwest::Client,
    server: &Server,
    hashes: &[String],
) -> Result<()> {
    for h in hashes {
        let url = format!("{}/{h}.narinfo", server.base_url);
        let st = client.head(&url).send().await?.status();
        ensure!(st == 200, "{url}: {st} after the upload");
    }
    Ok(())
}

pub async fn run(ctx: &Ctx<'_>, nginx: &mut Server) -> Result<UploadResults> {
    let client = narpass::client()?;
    let netrc = ctx.run_dir.join("netrc");
    fs::write(
        &netrc,
        format!("machine 127.0.0.1 login bench password {TOKEN}\n"),
    )?;
    let has_push = has_subcommand(ctx.cachectl, "push");
    let has_hook = has_subcommand(ctx.cachectl, "hook");

    let (mut http, mut file, mut push) = (Vec::new(), Vec::new(), Vec::new());
    let mut kept = None;
    for rep in 1..=ctx.reps {
        let mut server = upload_cairnd(ctx, &format!("upload-nix-{rep}")).await?;
        step(format!("nix copy --to http (zstd), run {rep}/{}", ctx.reps));
        let mut cmd = fresh_nix(ctx, "nix", &format!("nix-{rep}"))?;
        cmd.args(["copy", "--option", "netrc-file"])
            .arg(&netrc)
            .arg("--to")
            .arg(format!("{}?compression=zstd", server.base_url))
            .arg(ctx.root);
        let s = timed(cmd)?;
        server.check_alive()?;
        check_complete(&client, &server, ctx.hashes).await?;
        step(format!("  {s:.1} s"));
        http.push(s);
        if let Some(old) = kept.replace(server) {
            old.stop();
        }

        step(format!(
            "nix copy --to file:// (zstd), run {rep}/{}",
            ctx.reps
        ));
        let dest = ctx.run_dir.join(format!("file-cache-{rep}"));
        if dest.exists() {
            fs::remove_dir_all(&dest)?;
        }
        let mut cmd = fresh_nix(ctx, "nix", &format!("file-{rep}"))?;
        cmd.arg("copy")
            .arg("--to")
            .arg(format!("file://{}?compression=zstd", dest.display()))
            .arg(ctx.root);
        let s = timed(cmd)?;
        step(format!("  {s:.1} s"));
        file.push(s);
        fs::remove_dir_all(&dest)?;

        if has_push {
            let mut server = upload_cairnd(ctx, &format!("upload-push-{rep}")).await?;
            step(format!("cachectl push, run {rep}/{}", ctx.reps));
            let mut cmd = Command::new(ctx.cachectl);
            cmd.arg("push")
                .arg("--cache")
                .arg(&server.base_url)
                .arg("--token-file")
                .arg(ctx.run_dir.join("push.token"))
                .arg("--json")
                .arg(ctx.root);
            let s = timed(cmd)?;
            server.check_alive()?;
            check_complete(&client, &server, ctx.hashes).await?;
            step(format!("  {s:.1} s"));
            push.push(s);
            server.stop();
        }
    }
    let mut uploaded = kept.context("at least one repetition")?;

    // Serving what was uploaded, as Nix would fetch it.
    narpass::run(&client, &mut uploaded, ctx.hashes, Ask::Plain, ctx.parallel).await?;
    let (mut hits, mut served, mut static_) = (Vec::new(), Vec::new(), Vec::new());
    for rep in 1..=ctx.reps {
        step(format!(
            "uploaded closure, narinfo hits, run {rep}/{}",
            ctx.reps
        ));
        let c = wrk::run(ctx.wrk, ctx.script, &mut uploaded, ctx.hits).await?;
        let n = wrk::run(ctx.wrk, ctx.script, nginx, ctx.hits).await?;
        step(format!(
            "  cairnd {:.0}/s at {:.1} µs, nginx {:.0}/s",
            c.per_second,
            c.cpu_us_per_request(),
            n.per_second
        ));
        hits.push((c, n));
        step(format!(
            "uploaded closure, NAR pass, run {rep}/{}",
            ctx.reps
        ));
        let p = narpass::run(&client, &mut uploaded, ctx.hashes, Ask::Plain, ctx.parallel).await?;
        let q = narpass::run(&client, nginx, ctx.hashes, Ask::Plain, ctx.parallel).await?;
        step(format!(
            "  cairnd {:.0} MB/s, nginx {:.0} MB/s",
            p.nar_throughput() / 1e6,
            q.nar_throughput() / 1e6
        ));
        served.push(p);
        static_.push(q);
    }
    uploaded.stop();

    let hook_ms = if has_hook {
        Some(hook_latency(ctx)?)
    } else {
        None
    };
    Ok(UploadResults {
        nix_copy_http: http,
        nix_copy_file: file,
        push: has_push.then_some(push),
        hits,
        served,
        nginx: static_,
        hook_ms,
    })
}

/// Environment of a hook-timer run: where to append the milliseconds.
pub const HOOK_TIMES_ENV: &str = "CAIRN_BENCH_HOOK_TIMES";
const HOOK_CACHECTL_ENV: &str = "CAIRN_BENCH_HOOK_CACHECTL";
const HOOK_QUEUE_ENV: &str = "CAIRN_BENCH_HOOK_QUEUE";
const HOOK_BUILDS: usize = 100;

/// What `cairn-bench` does when Nix runs it as the post-build hook (the hook-timer
/// script sets [`HOOK_TIMES_ENV`]): runs `cachectl hook` with Nix's environment, times
/// it from spawn to exit, appends the milliseconds to the file, and exits as the hook
/// did. Our own start-up is outside the measured interval.
pub fn run_as_hook_timer(times: &str) -> std::process::ExitCode {
    use std::io::Write;
    let (Ok(cachectl), Ok(queue)) = (
        std::env::var(HOOK_CACHECTL_ENV),
        std::env::var(HOOK_QUEUE_ENV),
    ) else {
        eprintln!("cairn-bench hook timer: {HOOK_CACHECTL_ENV} and {HOOK_QUEUE_ENV} must be set");
        return std::process::ExitCode::FAILURE;
    };
    let t = Instant::now();
    let status = Command::new(cachectl)
        .arg("hook")
        .arg("--queue")
        .arg(queue)
        .status();
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let recorded = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(times)
        .and_then(|mut f| writeln!(f, "{ms:.3}"));
    match (status, recorded) {
        (Ok(st), Ok(())) if st.success() => std::process::ExitCode::SUCCESS,
        (st, rec) => {
            eprintln!("cairn-bench hook timer: hook {st:?}, recording {rec:?}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// [`HOOK_BUILDS`] real builds with Nix's `post-build-hook` set to `cachectl hook` (through
/// the timer above): each hook call is timed from spawn to exit, inside the build loop
/// Nix runs it in.
fn hook_latency(ctx: &Ctx<'_>) -> Result<Vec<f64>> {
    step(format!(
        "cachectl hook latency: {HOOK_BUILDS} builds with it as the post-build hook"
    ));
    let dir = ctx.run_dir.join("hook-builds");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let queue = dir.join("queue");
    let times = dir.join("times");
    let bench = std::env::current_exe().context("locating cairn-bench")?;
    let script = dir.join("post-build-hook");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\n{HOOK_TIMES_ENV}={} {HOOK_CACHECTL_ENV}={} {HOOK_QUEUE_ENV}={} exec {}\n",
            times.display(),
            ctx.cachectl.display(),
            queue.display(),
            bench.display()
        ),
    )?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755))?;
    let salt = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos()
    );
    let expr = dir.join("builds.nix");
    fs::write(
        &expr,
        format!(
            r#"builtins.genList (i: derivation {{
  name = "hook-bench-${{toString i}}";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "echo {salt}-${{toString i}} > $out" ];
}}) {HOOK_BUILDS}
"#
        ),
    )?;
    let mut cmd = setup::nix(ctx.conf_dir, "nix-build");
    cmd.arg(&expr)
        .arg("--no-out-link")
        .args(["--option", "post-build-hook"])
        .arg(&script);
    setup::output(cmd).context("building with the post-build hook")?;
    let ms: Vec<f64> = fs::read_to_string(&times)
        .context("the hook timer recorded nothing")?
        .lines()
        .map(|l| l.parse::<f64>())
        .collect::<Result<_, _>>()
        .context("parsing the hook times")?;
    ensure!(
        ms.len() == HOOK_BUILDS,
        "{} hook calls timed for {HOOK_BUILDS} builds",
        ms.len()
    );
    let queued = fs::read_dir(&queue)?.count();
    ensure!(queued > 0, "the hook queued nothing in {}", queue.display());
    Ok(ms)
}

/// The report section; returns the verdict lines.
pub fn render(w: &mut String, u: &UploadResults) -> Vec<(bool, String)> {
    use std::fmt::Write;
    let med = |v: &[f64]| median(v.to_vec());
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.1}"))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let http = med(&u.nix_copy_http);
    let file = med(&u.nix_copy_file);
    let _ = writeln!(w, "## 5. Uploads: getting the closure in, and serving it\n");
    let _ = writeln!(
        w,
        "Each upload goes into a fresh cairnd (cache store only, a push token; the Nix \
         client with an empty narinfo cache). Every path's narinfo is checked to answer 200 \
         afterwards.\n"
    );
    let _ = writeln!(
        w,
        "| upload of the whole closure | seconds (median) | runs |"
    );
    let _ = writeln!(w, "|---|---:|---|");
    let _ = writeln!(
        w,
        "| `nix copy --to file://…?compression=zstd` (local floor) | {file:.1} | {} |",
        list(&u.nix_copy_file)
    );
    let _ = writeln!(
        w,
        "| `nix copy --to 'http://cairnd?compression=zstd'` | {http:.1} | {} |",
        list(&u.nix_copy_http)
    );
    let mut verdicts = Vec::new();
    match &u.push {
        Some(p) => {
            let push = med(p);
            let _ = writeln!(w, "| `cachectl push` | {push:.1} | {} |", list(p));
            verdicts.push((
                push <= 0.5 * http,
                format!(
                    "`cachectl push` ≤ 0.5× `nix copy --to http`: {:.2}×",
                    push / http
                ),
            ));
        }
        None => {
            let _ = writeln!(
                w,
                "| `cachectl push` | not measured: this cachectl has no `push` | |"
            );
            verdicts.push((
                false,
                "`cachectl push` ≤ 0.5× `nix copy --to http`: not measured (no `cachectl push`)"
                    .to_string(),
            ));
        }
    }
    let _ = writeln!(w);

    let hits_c = median(u.hits.iter().map(|p| p.0.per_second).collect());
    let hits_n = median(u.hits.iter().map(|p| p.1.per_second).collect());
    let cpu_c = median(u.hits.iter().map(|p| p.0.cpu_us_per_request()).collect());
    let tp_c = median(u.served.iter().map(PassSample::nar_throughput).collect());
    let tp_n = median(u.nginx.iter().map(PassSample::nar_throughput).collect());
    let ratio_c = median(u.served.iter().map(PassSample::wire_ratio).collect());
    let _ = writeln!(
        w,
        "Serving the closure uploaded by `nix copy` (stored zstd, fetched at the URLs the \
         narinfos name, as many parallel downloads as in section 3) against nginx's static \
         files:\n"
    );
    let _ = writeln!(w, "| measurement | cairnd | nginx | cairnd/nginx |");
    let _ = writeln!(w, "|---|---:|---:|---:|");
    let _ = writeln!(
        w,
        "| narinfo hits/s | {} ({cpu_c:.1} µs CPU each) | {} | {:.2}× |",
        k(hits_c),
        k(hits_n),
        hits_c / hits_n
    );
    let _ = writeln!(
        w,
        "| NAR pass throughput | {} (wire ratio {ratio_c:.3}) | {} | {:.2}× |\n",
        mbps(tp_c),
        mbps(tp_n),
        tp_c / tp_n
    );
    verdicts.push((
        hits_c >= 0.8 * hits_n,
        format!(
            "uploaded closure: narinfo hits ≥ 0.8× nginx: {:.2}×",
            hits_c / hits_n
        ),
    ));
    verdicts.push((
        tp_c >= 0.8 * tp_n,
        format!(
            "uploaded closure: zstd NAR pass ≥ 0.8× nginx: {:.2}×",
            tp_c / tp_n
        ),
    ));

    match &u.hook_ms {
        Some(ms) => {
            let mut sorted = ms.clone();
            sorted.sort_by(f64::total_cmp);
            let p = |q: f64| {
                sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
            };
            let _ = writeln!(
                w,
                "`cachectl hook` as Nix's post-build hook over {} real builds (`nix-build` of \
                 trivial derivations; each call timed from spawn to exit): p50 {:.1} ms, \
                 p99 {:.1} ms, max {:.1} ms.\n",
                sorted.len(),
                p(0.5),
                p(0.99),
                sorted[sorted.len() - 1]
            );
            verdicts.push((
                p(0.99) <= 50.0,
                format!("hook latency p99 ≤ 50 ms: {:.1} ms", p(0.99)),
            ));
        }
        None => {
            let _ = writeln!(
                w,
                "`cachectl hook`: not measured (this cachectl has no `hook`).\n"
            );
            verdicts.push((
                false,
                "hook latency p99 ≤ 50 ms: not measured (no `cachectl hook`)".to_string(),
            ));
        }
    }
    verdicts
}
