//! `cairnd`: serves the local Nix store as a binary cache. Parses flags, sets up
//! tracing, binds, and hands over to the `cache_server` library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use cache_server::config::{BindAddr, Config, FileConfig, NarinfoCompression};
use cache_server::serve::{tls_acceptor, Listener};
use clap::{Args, Parser, Subcommand};

/// Cairn's binary cache server: serves the local Nix store (narinfo, NARs, listings,
/// logs) to Nix clients, signing and compressing on the fly, and takes uploads into its
/// own store. Its records are kept through Raft: without a [cluster] section it is a
/// cluster of one; with one (or --cluster-* flags) it is one node of a replicated
/// cluster, formed with `cachectl cluster init`.
///
/// With no flags and no config file it listens on [::]:5000, serves /nix/store, keeps its
/// data in ./cairn-data and signs with a key it generates there on first start. A
/// Harmonia config file works unchanged (CONFIG_FILE, SIGN_KEY_PATHS).
#[derive(Parser)]
#[command(name = "cairnd", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Check a config file (parse it, resolve defaults, load the signing keys and the TLS
    /// files it names) and exit: 0 when it would start, 1 with the reason when not.
    CheckConfig {
        /// The TOML config file to check.
        file: PathBuf,
    },
}

/// Every config file key as a flag; a flag wins over the file.
#[derive(Args)]
struct ServeArgs {
    /// TOML config file (Cairn's or Harmonia's keys).
    #[arg(long, env = "CONFIG_FILE")]
    config: Option<PathBuf>,
    /// Listen address, `host:port` or `unix:/path`; repeat for several. [default: [::]:5000]
    #[arg(long)]
    bind: Vec<String>,
    /// Directory for the generated key and the compressed-variant cache. [default: ./cairn-data]
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Async worker threads. [default: number of CPUs]
    #[arg(long)]
    workers: Option<usize>,
    /// Most new connections per second and listener. [default: 256]
    #[arg(long)]
    max_connection_rate: Option<usize>,
    /// Priority advertised in nix-cache-info (lower wins). [default: 30]
    #[arg(long)]
    priority: Option<u32>,
    /// Compress NARs with zstd when the client's Accept-Encoding allows. [default: true]
    #[arg(long)]
    enable_compression: Option<bool>,
    /// What narinfos advertise for NARs: none, zstd or xz. [default: none]
    #[arg(long, value_enum)]
    narinfo_compression: Option<NarinfoCompression>,
    /// zstd level for on-the-fly compression, 1-19. [default: 1]
    #[arg(long)]
    zstd_level: Option<i32>,
    /// xz preset for on-the-fly compression, 0-9. [default: 2]
    #[arg(long)]
    xz_level: Option<u32>,
    /// Most compressions at once. [default: number of CPUs plus one]
    #[arg(long)]
    max_encoders: Option<usize>,
    /// Bytes of compressed NAR variants kept on disk; 0 disables. [default: 1073741824]
    #[arg(long)]
    variant_cache_bytes: Option<u64>,
    /// Memory for compressed variants up to 64 KiB (kept in memory; the least recently
    /// used move to files past it). [default: 8388608]
    #[arg(long)]
    variant_memory_bytes: Option<u64>,
    /// Rendered local-store narinfos kept in memory while Nix's database is unchanged;
    /// 0 disables. [default: 8192]
    #[arg(long)]
    narinfo_cache_entries: Option<usize>,
    /// Secret key file (name:base64); repeat for several keys (each adds a Sig line).
    #[arg(long = "sign-key-path")]
    sign_key_paths: Vec<PathBuf>,
    /// Do not sign (serve only the signatures Nix recorded).
    #[arg(long)]
    no_signing: bool,
    /// Store directory clients see. [default: /nix/store]
    #[arg(long)]
    virtual_nix_store: Option<String>,
    /// Where the store's files really are. [default: the virtual store]
    #[arg(long)]
    real_nix_store: Option<PathBuf>,
    /// Nix's SQLite database. [default: <root>/nix/var/nix/db/db.sqlite]
    #[arg(long)]
    nix_db_path: Option<PathBuf>,
    /// Nix's build log directory. [default: <root>/nix/var/log/nix/drvs]
    #[arg(long)]
    nix_log_dir: Option<PathBuf>,
    /// PEM certificate chain for HTTPS (with --tls-key-path).
    #[arg(long)]
    tls_cert_path: Option<PathBuf>,
    /// PEM private key for HTTPS.
    #[arg(long)]
    tls_key_path: Option<PathBuf>,
    /// Require a read token for reads too. [default: false]
    #[arg(long)]
    private: Option<bool>,
    /// Public key (name:base64) whose signatures on uploads are kept; repeat for several.
    #[arg(long = "trusted-public-key")]
    trusted_public_keys: Vec<String>,
    /// Accept uploads whose references the cache lacks (behind cache.nixos.org). [default: false]
    #[arg(long)]
    allow_missing_references: Option<bool>,
    /// Largest NAR upload in bytes. [default: 68719476736]
    #[arg(long)]
    max_nar_upload_bytes: Option<u64>,
    /// Free space the blob disk always keeps. [default: 268435456]
    #[arg(long)]
    reserve_bytes: Option<u64>,
    /// Most NAR bytes per part of a resumable upload. [default: 67108864]
    #[arg(long)]
    upload_part_bytes: Option<u64>,
    /// Largest build log upload. [default: 67108864]
    #[arg(long)]
    max_log_bytes: Option<u64>,
    /// Serve the local Nix store too. [default: when its database exists]
    #[arg(long)]
    serve_local_store: Option<bool>,
    /// This node's id in its cluster ([cluster] node_id); required with
    /// --cluster-listen. [default: 1, a cluster of one]
    #[arg(long)]
    cluster_node_id: Option<u64>,
    /// The cluster listener, host:port on the cluster network ([cluster] listen).
    /// Without it the cache is a cluster of one.
    #[arg(long)]
    cluster_listen: Option<String>,
    /// How peers reach the cluster listener. [default: --cluster-listen]
    #[arg(long)]
    cluster_advertise: Option<String>,
    /// File holding the shared cluster secret ([cluster] secret_file).
    #[arg(long)]
    cluster_secret_file: Option<PathBuf>,
    /// A peer as ID=HOST:PORT; repeat for each ([[cluster.peers]]).
    #[arg(long = "cluster-peer", value_parser = parse_peer)]
    cluster_peers: Vec<cache_server::config::PeerConfig>,
    /// Copies of every blob the repair worker keeps. [default: 3]
    #[arg(long)]
    cluster_replicas: Option<usize>,
    /// Raft heartbeat interval in ms. [default: 250]
    #[arg(long)]
    cluster_heartbeat_ms: Option<u64>,
    /// Raft election timeout range in ms, MIN,MAX. [default: 1000,2000]
    #[arg(long, value_delimiter = ',', num_args = 2)]
    cluster_election_timeout_ms: Option<Vec<u64>>,
    /// Raft log entries between snapshots. [default: 10000]
    #[arg(long)]
    cluster_snapshot_logs: Option<u64>,
    /// Seconds between repair passes. [default: 30]
    #[arg(long)]
    cluster_repair_interval_secs: Option<u64>,
    /// Bytes per second of stored blobs re-hashed by the scrubber; 0 turns it off. [default: 8388608]
    #[arg(long)]
    cluster_scrub_bytes_per_sec: Option<u64>,
    /// Bytes per second the repair worker fetches from peers at most; 0 means no cap, else at least 1048576. [default: 67108864]
    #[arg(long)]
    cluster_repair_bytes_per_sec: Option<u64>,
    /// Seconds a blob no path names is kept before it is deleted (the retention
    /// settings' blob_grace_secs, when longer, wins). [default: 86400]
    #[arg(long)]
    cluster_orphan_grace_secs: Option<u64>,
    /// Seconds between the leader's GC passes (they delete only what the retention
    /// settings let go); 0 turns them off. [default: 3600]
    #[arg(long)]
    cluster_gc_interval_secs: Option<u64>,
}

fn parse_peer(s: &str) -> Result<cache_server::config::PeerConfig, String> {
    let (id, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: a peer is ID=HOST:PORT"))?;
    Ok(cache_server::config::PeerConfig {
        node_id: id.parse().map_err(|_| format!("{id:?} is not a node id"))?,
        addr: addr.to_string(),
    })
}

impl ServeArgs {
    fn merge(self, mut f: FileConfig) -> FileConfig {
        if !self.bind.is_empty() {
            f.bind = self.bind;
        }
        macro_rules! over {
            ($($field:ident),*) => { $( if self.$field.is_some() { f.$field = self.$field; } )* };
        }
        over!(
            data_dir,
            workers,
            max_connection_rate,
            priority,
            enable_compression,
            narinfo_compression,
            zstd_level,
            xz_level,
            max_encoders,
            variant_cache_bytes,
            variant_memory_bytes,
            narinfo_cache_entries,
            virtual_nix_store,
            real_nix_store,
            nix_db_path,
            nix_log_dir,
            tls_cert_path,
            tls_key_path,
            private,
            allow_missing_references,
            max_nar_upload_bytes,
            reserve_bytes,
            upload_part_bytes,
            max_log_bytes,
            serve_local_store
        );
        if !self.trusted_public_keys.is_empty() {
            f.trusted_public_keys = self.trusted_public_keys;
        }
        if !self.sign_key_paths.is_empty() {
            f.sign_key_paths = self.sign_key_paths;
        }
        if self.no_signing {
            f.no_signing = Some(true);
        }
        let any_cluster_flag = self.cluster_node_id.is_some()
            || self.cluster_listen.is_some()
            || self.cluster_advertise.is_some()
            || self.cluster_secret_file.is_some()
            || !self.cluster_peers.is_empty()
            || self.cluster_replicas.is_some()
            || self.cluster_heartbeat_ms.is_some()
            || self.cluster_election_timeout_ms.is_some()
            || self.cluster_snapshot_logs.is_some()
            || self.cluster_repair_interval_secs.is_some()
            || self.cluster_scrub_bytes_per_sec.is_some()
            || self.cluster_repair_bytes_per_sec.is_some()
            || self.cluster_orphan_grace_secs.is_some()
            || self.cluster_gc_interval_secs.is_some();
        if any_cluster_flag {
            let c = f.cluster.get_or_insert_with(Default::default);
            macro_rules! over_c {
                ($($flag:ident => $field:ident),*) => { $( if self.$flag.is_some() { c.$field = self.$flag; } )* };
            }
            over_c!(
                cluster_node_id => node_id,
                cluster_listen => listen,
                cluster_advertise => advertise,
                cluster_secret_file => secret_file,
                cluster_replicas => replicas,
                cluster_heartbeat_ms => heartbeat_ms,
                cluster_snapshot_logs => snapshot_logs,
                cluster_repair_interval_secs => repair_interval_secs,
                cluster_scrub_bytes_per_sec => scrub_bytes_per_sec,
                cluster_repair_bytes_per_sec => repair_bytes_per_sec,
                cluster_orphan_grace_secs => orphan_grace_secs,
                cluster_gc_interval_secs => gc_interval_secs
            );
            if !self.cluster_peers.is_empty() {
                c.peers = self.cluster_peers;
            }
            if let Some(v) = self.cluster_election_timeout_ms {
                c.election_timeout_ms = Some([v[0], v[1]]);
            }
        }
        f
    }
}

fn env(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.is_empty())
}

fn main() -> ExitCode {
    tune_malloc();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::CheckConfig { file }) => check_config(&file),
        None => run(cli.serve),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Three settings of glibc's allocator, each unless the operator set it in the
/// environment (`MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`,
/// or any `glibc.malloc` tunable in `GLIBC_TUNABLES`, which leaves all three alone):
///
/// - Arenas: glibc gives each thread that allocates while another holds an arena's
///   lock an arena of its own, up to eight per core, and what is freed into an arena
///   is reused by that arena only. A NAR stream allocates its chunks on a blocking
///   thread and hyper frees them on a worker, so the blocking threads' arenas fill with
///   free chunks that nothing reuses: in the benchmark's 16 parallel downloads that
///   held about 14 MiB resident. Two arenas (the runtime has two workers by default)
///   keep contention low and the free memory shared.
/// - Giving memory back: by default a freed block of a few hundred KiB (a request's
///   body buffer, an upload's staging buffer) is unmapped, or trimmed off the heap,
///   and the next request faults in and zeroes fresh pages for the same job. Blocks up
///   to [`MMAP_THRESHOLD`] now come from the heap, and up to [`TRIM_THRESHOLD`] of
///   free heap stays mapped, so steady traffic reuses the same pages. The peak
///   resident size is what the busiest moment needed, as before.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_malloc() {
    let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    if tunables.contains("glibc.malloc.") {
        return;
    }
    let settings = [
        ("MALLOC_ARENA_MAX", libc::M_ARENA_MAX, 2),
        (
            "MALLOC_MMAP_THRESHOLD_",
            libc::M_MMAP_THRESHOLD,
            MMAP_THRESHOLD,
        ),
        (
            "MALLOC_TRIM_THRESHOLD_",
            libc::M_TRIM_THRESHOLD,
            TRIM_THRESHOLD,
        ),
    ];
    for (variable, param, value) in settings {
        if std::env::var_os(variable).is_none() {
            #[allow(unsafe_code)]
            // SAFETY: mallopt only sets a tunable of the allocator; it is called before
            // any other thread exists, and a refusal (return value 0) leaves glibc's
            // default.
            unsafe {
                libc::mallopt(param, value);
            }
        }
    }
}

/// Allocations below this size come from the heap (glibc's default starts at 128 KiB).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: i32 = 4 << 20;

/// Free memory at the top of a heap beyond this is given back to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: i32 = 32 << 20;

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_malloc() {}

fn check_config(file: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::resolve(FileConfig::load(file)?, env)?;
    if !config.no_signing {
        for p in &config.sign_key_paths {
            signer::SecretKey::load(p)?;
        }
    }
    if let Some((c, k)) = &config.tls {
        tls_acceptor(c, k)?;
    }
    println!("{}: ok", file.display());
    Ok(())
}

fn run(args: ServeArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    let config = Config::resolve(args.merge(file), env)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.workers)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        std::fs::create_dir_all(&config.data_dir)?;
        let (keyring, generated) = cache_server::keys::load_keyring(&config)?;
        if let Some(public) = &generated {
            tracing::info!(public_key = %public, "generated a signing key");
        }
        for k in keyring.public_keys() {
            println!("public key: {k}");
        }
        let tls = match &config.tls {
            Some((c, k)) => Some(tls_acceptor(c, k)?),
            None => None,
        };
        let mut listeners = Vec::new();
        for b in &config.binds {
            match b {
                BindAddr::Tcp(addr) => {
                    let l = tokio::net::TcpListener::bind(addr)
                        .await
                        .map_err(|e| anyhow::anyhow!("binding {addr}: {e}"))?;
                    tracing::info!(addr = %l.local_addr()?, tls = tls.is_some(), "listening");
                    listeners.push(Listener::Tcp(l, tls.clone()));
                }
                BindAddr::Unix(path) => {
                    // A socket left by a crashed predecessor would make bind fail.
                    if path.exists() {
                        std::fs::remove_file(path)?;
                    }
                    let l = tokio::net::UnixListener::bind(path)
                        .map_err(|e| anyhow::anyhow!("binding {}: {e}", path.display()))?;
                    tracing::info!(path = %path.display(), "listening");
                    listeners.push(Listener::Unix(l, path.clone()));
                }
            }
        }
        let rate = config.max_connection_rate;
        let started = cache_server::raft_node::start(&config).await?;
        let node = started.node;
        let state = cache_server::AppState::with_node(config, keyring, node.clone())?;
        if let Some(listener) = started.listener {
            let internal = cache_server::internal::router(state.clone());
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, internal).await {
                    tracing::error!(error = %e, "the cluster listener failed");
                }
            });
        }
        let c = state.config.cluster.clone();
        let gc_every = Duration::from_secs(c.gc_interval_secs);
        tokio::spawn(cache_server::replication::repair_loop(state.clone(), c));
        tokio::spawn(cache_server::gc::gc_loop(
            state.clone(),
            node.clone(),
            gc_every,
        ));
        tokio::spawn(count_leader_changes(node, state.metrics.clone()));
        tracing::info!(store = %state.config.store_dir, "serving");
        // Upload sessions nobody touched for a day go with their bytes, also when no
        // new upload comes along to notice.
        let sweeper = state.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(3600));
            loop {
                every.tick().await;
                let s = sweeper.clone();
                let _ = tokio::task::spawn_blocking(move || s.sessions.sweep()).await;
            }
        });
        cache_server::serve(
            listeners,
            cache_server::app(state),
            rate,
            shutdown_signal(),
            Duration::from_secs(10),
        )
        .await;
        Ok(())
    })
}

/// Counts leader changes for /metrics.
async fn count_leader_changes(
    node: std::sync::Arc<cluster::Node>,
    metrics: std::sync::Arc<cache_server::metrics::Metrics>,
) {
    let mut last = node.leader();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = node.leader();
        if now != last && now.is_some() {
            metrics
                .leader_changes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(leader = ?now, "leader changed");
        }
        last = now;
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
