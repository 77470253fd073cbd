//! Harmonia, measured side by side with cairnd when the run is given a `harmonia-cache`
//! binary (`--harmonia`). The zstd target is relative to Harmonia; its quoted
//! figures come from another day on a shared machine whose speed varies by a third from
//! hour to hour, so a Harmonia measured in the same run is the fair yardstick.
//!
//! Harmonia is never built or fetched by the benchmark: it is the operator's own build
//! (see bench/README.md). It runs on its default configuration (as a runner host has
//! it), with the benchmark's signing key, serving the same store as cairnd.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;

use crate::narpass::{self, Ask, PassSample};
use crate::procs::{free_port, Kind, Server};
use crate::uploads::Ctx;
use crate::wrk::{self, RateSample, Workload};

/// What the Harmonia side measured.
pub struct HarmoniaRun {
    pub version: String,
    pub hits: Vec<RateSample>,
    pub misses: Vec<RateSample>,
    pub identity: Vec<PassSample>,
    pub zstd: Vec<PassSample>,
    pub peak_rss: u64,
}

/// What Harmonia's `/version` answers ("harmonia-cache 3.2.0"); it has no `--version`.
async fn version(client: &reqwest::Client, server: &Server) -> Result<String> {
    let url = format!("{}/version", server.base_url);
    let text = client
        .get(&url)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(text.lines().next().unwrap_or("unknown").trim().to_string())
}

async fn start(i: &Ctx<'_>, binary: &Path) -> Result<Server> {
    let dir = i.run_dir.join("harmonia");
    fs::create_dir_all(&dir)?;
    let port = free_port()?;
    let config = dir.join("harmonia.toml");
    // Harmonia's own defaults for everything else (workers, zstd level 1 with
    // long-distance matching, priority 30).
    fs::write(
        &config,
        format!(
            "bind = \"127.0.0.1:{port}\"\nsign_key_paths = [{:?}]\n",
            i.key.display().to_string()
        ),
    )?;
    let mut cmd = Command::new(binary);
    cmd.env("CONFIG_FILE", &config)
        .env_remove("SIGN_KEY_PATHS")
        .env_remove("SIGN_KEY_PATH")
        .env_remove("NIX_STORE_DIR")
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1");
    crate::step(format!("starting Harmonia on port {port}"));
    Server::start(
        "harmonia",
        Kind::Harmonia,
        cmd,
        port,
        &dir.join("harmonia.log"),
        i.pid_file,
    )
    .await
}

/// Measures one Harmonia process: a warm-up pass (untimed, which also checks every
/// body), then per repetition narinfo hits and misses, an identity pass and a zstd pass.
pub async fn run(i: &Ctx<'_>, binary: &Path, misses: &Workload) -> Result<HarmoniaRun> {
    let mut server = start(i, binary).await?;
    let client = narpass::client()?;
    let version = version(&client, &server).await?;
    crate::step("warm-up pass, Harmonia (untimed)");
    narpass::run(&client, &mut server, i.hashes, Ask::Plain, i.parallel).await?;
    let mut r = HarmoniaRun {
        version,
        hits: Vec::new(),
        misses: Vec::new(),
        identity: Vec::new(),
        zstd: Vec::new(),
        peak_rss: 0,
    };
    for rep in 1..=i.reps {
        crate::step(format!(
            "Harmonia, run {rep}/{}: narinfo hits and misses",
            i.reps
        ));
        r.hits
            .push(wrk::run(i.wrk, i.script, &mut server, i.hits).await?);
        r.misses
            .push(wrk::run(i.wrk, i.script, &mut server, misses).await?);
        crate::step(format!("Harmonia, run {rep}/{}: identity pass", i.reps));
        let p = narpass::run(&client, &mut server, i.hashes, Ask::Plain, i.parallel).await?;
        crate::report_pass(&p);
        r.identity.push(p);
        crate::step(format!("Harmonia, run {rep}/{}: zstd pass", i.reps));
        let p = narpass::run(&client, &mut server, i.hashes, Ask::Zstd, i.parallel).await?;
        crate::report_pass(&p);
        r.zstd.push(p);
    }
    r.peak_rss = server.peak_rss()?;
    server.stop();
    Ok(r)
}

/// The binary `--harmonia` names, made absolute and checked to exist.
pub fn binary(p: &Path) -> Result<PathBuf> {
    let p = crate::absolute(p)?;
    anyhow::ensure!(
        p.is_file(),
        "no harmonia-cache binary at {} (see bench/README.md for building one)",
        p.display()
    );
    Ok(p)
}
