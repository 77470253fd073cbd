//! The full-closure NAR pass: fetch every narinfo of the closure, then every NAR at the
//! narinfo's URL, `parallel` requests at a time, the way `nix copy --from` does.
//!
//! Bodies are kept in memory as they arrive and verified (decompressed where encoded,
//! size = NarSize, sha256 = NarHash) only after the clock has stopped, on all cores: the
//! client shares the machine's cores with the server, and decompressing and hashing
//! while downloading would take CPU from the server under test.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use futures_util::{stream, StreamExt, TryStreamExt};
use nix_formats::hash::Sha256Hasher;
use nix_formats::narinfo::NarInfo;

use crate::procs::Server;

/// How a pass asks for NARs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Ask {
    /// No `Accept-Encoding`: the body must come as the narinfo says.
    Plain,
    /// `Accept-Encoding: zstd` on the narinfo's URL.
    Zstd,
}

/// The outcome of one pass.
#[derive(Clone, Debug)]
pub struct PassSample {
    pub wall: Duration,
    pub server_cpu_s: f64,
    /// CPU seconds of this client process over the same interval.
    pub client_cpu_s: f64,
    /// Sum of NarSize.
    pub nar_bytes: u64,
    /// Body bytes received for the NARs (narinfos not counted).
    pub wire_bytes: u64,
    /// NARs that came zstd-encoded.
    pub zstd_bodies: usize,
    pub paths: usize,
}

impl PassSample {
    pub fn nar_throughput(&self) -> f64 {
        self.nar_bytes as f64 / self.wall.as_secs_f64()
    }
    pub fn wire_ratio(&self) -> f64 {
        self.wire_bytes as f64 / self.nar_bytes.max(1) as f64
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Encoding {
    Identity,
    Zstd,
}

struct Body {
    info: NarInfo,
    encoding: Encoding,
    chunks: Vec<Bytes>,
}

pub fn client() -> Result<reqwest::Client> {
    // No proxies from the environment, no transparent decompression: we count and
    // check the bytes exactly as the server sent them.
    Ok(reqwest::Client::builder()
        .no_proxy()
        .no_gzip()
        .no_brotli()
        .no_zstd()
        .no_deflate()
        .pool_max_idle_per_host(64)
        .build()?)
}

/// Runs one pass over `hashes` (store path hash parts) against `server`.
pub async fn run(
    client: &reqwest::Client,
    server: &mut Server,
    hashes: &[String],
    ask: Ask,
    parallel: usize,
) -> Result<PassSample> {
    let base = server.base_url.clone();
    let cpu_before = server.cpu_seconds()?;
    let client_before = crate::procs::own_cpu_seconds()?;
    let start = Instant::now();

    let infos: Vec<NarInfo> = stream::iter(hashes)
        .map(|h| fetch_narinfo(client, &base, h))
        .buffered(parallel)
        .try_collect()
        .await?;
    let bodies: Vec<Body> = stream::iter(infos)
        .map(|info| fetch_nar(client, &base, info, ask))
        .buffer_unordered(parallel)
        .try_collect()
        .await?;

    let wall = start.elapsed();
    let server_cpu_s = server.cpu_seconds()? - cpu_before;
    let client_cpu_s = crate::procs::own_cpu_seconds()? - client_before;
    server.check_alive()?;

    let sample = PassSample {
        wall,
        server_cpu_s,
        client_cpu_s,
        nar_bytes: bodies.iter().map(|b| b.info.nar_size).sum(),
        wire_bytes: bodies
            .iter()
            .flat_map(|b| &b.chunks)
            .map(|c| c.len() as u64)
            .sum(),
        zstd_bodies: bodies
            .iter()
            .filter(|b| b.encoding == Encoding::Zstd)
            .count(),
        paths: bodies.len(),
    };
    tokio::task::spawn_blocking(move || verify_all(bodies))
        .await?
        .with_context(|| format!("verifying the NARs {} sent", server.name))?;
    Ok(sample)
}

async fn fetch_narinfo(client: &reqwest::Client, base: &str, hash: &str) -> Result<NarInfo> {
    let url = format!("{base}/{hash}.narinfo");
    let resp = client.get(&url).send().await.with_context(|| url.clone())?;
    ensure!(resp.status() == 200, "GET {url}: {}", resp.status());
    let text = resp.text().await.with_context(|| url.clone())?;
    NarInfo::parse(&text).with_context(|| format!("parsing {url}"))
}

async fn fetch_nar(client: &reqwest::Client, base: &str, info: NarInfo, ask: Ask) -> Result<Body> {
    let url = format!("{base}/{}", info.url);
    let mut req = client.get(&url);
    if ask == Ask::Zstd {
        req = req.header("accept-encoding", "zstd");
    }
    let mut resp = req.send().await.with_context(|| url.clone())?;
    ensure!(resp.status() == 200, "GET {url}: {}", resp.status());
    let content_encoding = resp
        .headers()
        .get("content-encoding")
        .map(|v| v.to_str().unwrap_or("?").to_ascii_lowercase());
    let encoding = match (content_encoding.as_deref(), info.compression.as_str()) {
        (Some("zstd"), "none" | "") if ask == Ask::Zstd => Encoding::Zstd,
        (Some(other), _) if other != "identity" => {
            bail!("GET {url}: unexpected Content-Encoding {other} (asked {ask:?})")
        }
        (_, "none" | "") => Encoding::Identity,
        (_, "zstd") => Encoding::Zstd,
        (_, other) => bail!("GET {url}: narinfo says Compression: {other}, not handled"),
    };
    let mut chunks = Vec::new();
    while let Some(c) = resp
        .chunk()
        .await
        .with_context(|| format!("reading {url}"))?
    {
        chunks.push(c);
    }
    Ok(Body {
        info,
        encoding,
        chunks,
    })
}

/// Checks every body on all cores; reports the first few failures.
fn verify_all(bodies: Vec<Body>) -> Result<()> {
    let next = AtomicUsize::new(0);
    let errors = Mutex::new(Vec::new());
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(b) = bodies.get(i) else { break };
                if let Err(e) = verify(b) {
                    errors
                        .lock()
                        .unwrap()
                        .push(format!("{}: {e:#}", b.info.store_path));
                }
            });
        }
    });
    let errors = errors.into_inner().unwrap();
    if !errors.is_empty() {
        bail!(
            "{} of {} NARs failed verification, e.g.:\n  {}",
            errors.len(),
            bodies.len(),
            errors[..errors.len().min(5)].join("\n  ")
        );
    }
    Ok(())
}

fn verify(b: &Body) -> Result<()> {
    let mut hasher = Sha256Hasher::new();
    let mut size = 0u64;
    match b.encoding {
        Encoding::Identity => {
            for c in &b.chunks {
                hasher.update(c);
                size += c.len() as u64;
            }
        }
        Encoding::Zstd => {
            let compressed: Vec<u8> = b.chunks.concat();
            let mut dec = zstd::stream::read::Decoder::new(&compressed[..])?;
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = std::io::Read::read(&mut dec, &mut buf).context("zstd decoding")?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                size += n as u64;
            }
        }
    }
    ensure!(
        size == b.info.nar_size,
        "{size} bytes, NarSize is {}",
        b.info.nar_size
    );
    let got = hasher.finish();
    ensure!(
        got == b.info.nar_hash,
        "sha256 {} but NarHash is {}",
        got.to_nix32_string(),
        b.info.nar_hash.to_nix32_string()
    );
    Ok(())
}
