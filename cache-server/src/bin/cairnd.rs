//! `cairnd`: serves the local Nix store as a binary cache. Parses flags, sets up
//! tracing, binds, and hands over to the `cache_server` library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use cache_server::config::{BindAddr, Config, FileConfig, NarinfoCompression};
use cache_server::serve::{tls_acceptor, Listener};
use clap::{Args, Parser, Subcommand};

/// Cairn's binary cache server: serves the local Nix store (narinfo, NARs, listings,
/// logs) to Nix clients, signing and compressing on the fly.
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
    /// Most compressions at once. [default: number of CPUs]
    #[arg(long)]
    max_encoders: Option<usize>,
    /// Bytes of compressed NAR variants kept on disk; 0 disables. [default: 1073741824]
    #[arg(long)]
    variant_cache_bytes: Option<u64>,
    /// Memory for compressed variants up to 64 KiB (kept in memory, not in files).
    /// [default: 16777216]
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
        f
    }
}

fn env(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.is_empty())
}

fn main() -> ExitCode {
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
        let state = cache_server::AppState::new(config, keyring)?;
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
            cache_server::router(state),
            rate,
            shutdown_signal(),
            Duration::from_secs(10),
        )
        .await;
        Ok(())
    })
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
