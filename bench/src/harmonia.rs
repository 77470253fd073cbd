//! Harmonia, measured side by side with cairnd when the run is given a `harmonia-cache`
//! binary (`--harmonia`). The zstd target is relative to Harmonia; its quoted
//! figures come from another day on a shared machine whose speed varies by a third from
//! hour to hour, so a Harmonia measured in the same run is the fair yardstick.
//!
//! Harmonia is never built or fetched by the benchmark: it is the operator's own build
//! (see bench/README.md). It runs on its default configuration (as a runner host has
//! it), with the benchmark's signing key, serving the same store as cairnd.
//!
//! The zstd passes treat both servers alike: each repetition starts a fresh process of
//! each (cairnd's must be fresh for its variant cache to start cold), and Harmonia then
//! makes a second pass on the same process, reported beside the first: on this machine
//! a process's first touch of its memory is expensive (bench/README.md) and Harmonia
//! touches several times what cairnd does, so the report shows whether a process that
//! has served before is the faster yardstick (measured so far: not, within noise).

use std::fs;
use std::path::Path;
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
    /// Each on a fresh process, as cairnd's first-time passes.
    pub zstd: Vec<PassSample>,
    /// Each right after one of `zstd`, on the same process.
    pub zstd_again: Vec<PassSample>,
    /// The largest of its processes'.
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

/// A running Harmonia and what it measured so far. The orchestrator runs each of its
/// measurements right after cairnd's of the same kind, repetition by repetition, so both
/// see the machine at about the same speed.
pub struct Side {
    pub server: Server,
    pub run: HarmoniaRun,
    binary: std::path::PathBuf,
}

impl Side {
    /// Starts Harmonia and warms it up with one untimed pass (page cache, its
    /// database; also a first check of every body it serves).
    pub async fn start(ctx: &Ctx<'_>, binary: &Path, client: &reqwest::Client) -> Result<Side> {
        let mut server = start(ctx, binary).await?;
        let version = version(client, &server).await?;
        crate::step("warm-up pass, Harmonia (untimed)");
        narpass::run(client, &mut server, ctx.hashes, Ask::Plain, ctx.parallel).await?;
        Ok(Side {
            server,
            run: HarmoniaRun {
                version,
                hits: Vec::new(),
                misses: Vec::new(),
                identity: Vec::new(),
                zstd: Vec::new(),
                zstd_again: Vec::new(),
                peak_rss: 0,
            },
            binary: binary.to_path_buf(),
        })
    }

    /// Replaces the process with a fresh one (no warm-up, like cairnd's fresh process
    /// for each zstd repetition), keeping the old one's peak RSS.
    pub async fn restart(&mut self, ctx: &Ctx<'_>) -> Result<()> {
        let fresh = start(ctx, &self.binary).await?;
        let old = std::mem::replace(&mut self.server, fresh);
        self.run.peak_rss = self.run.peak_rss.max(old.peak_rss()?);
        old.stop();
        Ok(())
    }

    /// One wrk run of `load`, kept with the hits or the misses.
    pub async fn rate(&mut self, ctx: &Ctx<'_>, load: &Workload, hits: bool) -> Result<RateSample> {
        let r = wrk::run(ctx.wrk, ctx.script, &mut self.server, load).await?;
        if hits {
            self.run.hits.push(r.clone());
        } else {
            self.run.misses.push(r.clone());
        }
        Ok(r)
    }

    /// One NAR pass, kept with the identity or the zstd passes (`again`: a zstd pass
    /// on a process that has made one already).
    pub async fn pass(
        &mut self,
        ctx: &Ctx<'_>,
        client: &reqwest::Client,
        ask: Ask,
        again: bool,
    ) -> Result<()> {
        let p = narpass::run(client, &mut self.server, ctx.hashes, ask, ctx.parallel).await?;
        crate::report_pass(&p);
        match (ask, again) {
            (Ask::Plain, _) => self.run.identity.push(p),
            (Ask::Zstd, false) => self.run.zstd.push(p),
            (Ask::Zstd, true) => self.run.zstd_again.push(p),
        }
        Ok(())
    }

    /// Stops Harmonia; what it measured, with its peak RSS.
    pub fn finish(self) -> Result<HarmoniaRun> {
        let mut run = self.run;
        run.peak_rss = run.peak_rss.max(self.server.peak_rss()?);
        self.server.stop();
        Ok(run)
    }
}
