//! What every request handler shares: configuration, the stores, the signing keys, the
//! tokens, the encoder budget, the variant cache and the metrics.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::Semaphore;

use crate::auth::{Auth, TokenFileError};
use crate::config::Config;
use crate::landing;
use crate::metrics::Metrics;
use crate::narinfo_cache::NarinfoCache;
use crate::variants::VariantCache;

pub struct AppState {
    pub config: Config,
    /// The local Nix store, when this host has one and serves it.
    pub store: Option<store::LocalStore>,
    /// Cairn's own cache store: blobs on disk, records in redb.
    pub blobs: store::blobs::BlobStore,
    /// Path, blob and token records: this node's replicated state.
    pub catalog: crate::catalog::Catalog,
    pub auth: Auth,
    /// Keys whose signatures on uploaded narinfos are kept.
    pub trusted: signer::TrustedKeys,
    /// Signing keys, in the order their `Sig:` lines appear; empty when signing is off.
    pub keyring: signer::Signer,
    pub metrics: Arc<Metrics>,
    /// Caps concurrent on-the-fly compressions.
    pub encoders: Arc<Semaphore>,
    pub variants: Arc<VariantCache>,
    pub narinfos: NarinfoCache,
    /// Paths served since their access was last recorded (see [`crate::gc`]).
    pub access: crate::gc::AccessLog,
    /// Upload sessions in progress (docs/api.md).
    pub sessions: crate::sessions::Sessions,
    /// Build logs uploaded with `PUT /log/<drv>`.
    pub logs: crate::logs::LogStore,
    pub cache_info: Bytes,
    pub landing: Bytes,
    /// When this process started serving, for `uptime` in the status report.
    pub started: std::time::Instant,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("cache store under {path}: {source}")]
    Blobs {
        path: String,
        source: store::blobs::BlobError,
    },
    #[error("cache database {path}: {source}")]
    Meta {
        path: String,
        source: store::meta::MetaError,
    },
    #[error("variant cache under {path}: {source}")]
    Variants {
        path: String,
        source: std::io::Error,
    },
    #[error("{what} under {path}: {source}")]
    Dir {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Token(#[from] TokenFileError),
    #[error("trusted_public_keys: {0}")]
    TrustedKey(signer::KeyError),
    #[error("cluster node: {0}")]
    Node(String),
}

impl AppState {
    /// Opens the stores, the variant cache and the token files around `node` (started
    /// by [`crate::raft_node::start`]), whose replicated state holds the records.
    /// `keyring` is built by the caller, which knows whether to generate a default key.
    pub fn with_node(
        config: Config,
        keyring: signer::Signer,
        node: Arc<cluster::Node>,
    ) -> Result<Arc<Self>, StartError> {
        let local = store::LocalStoreConfig {
            store_dir: nix_formats::StoreDir::new(&config.store_dir)
                .expect("store dir validated by Config::resolve"),
            real_store_dir: config.real_store_dir.clone(),
            db_path: config.nix_db_path.clone(),
            log_dir: config.nix_log_dir.clone(),
        };
        let store = match config.serve_local_store {
            Some(false) => None,
            Some(true) => Some(store::LocalStore::open(local)?),
            // The embedded default serves the local store if there is one.
            None if local.db_path.exists() => Some(store::LocalStore::open(local)?),
            None => {
                tracing::info!(db = %local.db_path.display(), "no local Nix store; serving the cache store only");
                None
            }
        };
        let cache_dir = config.data_dir.join("cache");
        let blobs =
            store::blobs::BlobStore::open(&cache_dir, config.reserve_bytes).map_err(|source| {
                StartError::Blobs {
                    path: cache_dir.display().to_string(),
                    source,
                }
            })?;
        let catalog = crate::catalog::Catalog::new(node);
        let vdir = config.data_dir.join("variants");
        let variants = VariantCache::open(
            &vdir,
            config.variant_cache_bytes,
            config.variant_memory_bytes,
        )
        .map_err(|source| StartError::Variants {
            path: vdir.display().to_string(),
            source,
        })?;
        let sdir = blobs.sessions_dir();
        let sessions = crate::sessions::Sessions::open(
            sdir.clone(),
            nix_formats::StoreDir::new(&config.store_dir)
                .expect("store dir validated by Config::resolve"),
        )
        .map_err(|source| StartError::Dir {
            what: "upload sessions",
            path: sdir.display().to_string(),
            source,
        })?;
        let ldir = config.data_dir.join("logs");
        let logs = crate::logs::LogStore::open(ldir.clone()).map_err(|source| StartError::Dir {
            what: "build logs",
            path: ldir.display().to_string(),
            source,
        })?;
        let auth = Auth::new(config.private, &config.tokens)?;
        let trusted = signer::TrustedKeys::parse_list(&config.trusted_public_keys.join(" "))
            .map_err(StartError::TrustedKey)?;
        let cache_info = Bytes::from(format!(
            "StoreDir: {}\nWantMassQuery: 1\nPriority: {}\n",
            config.store_dir, config.priority
        ));
        let public_keys: Vec<String> = keyring
            .public_keys()
            .iter()
            .map(|k| k.to_string())
            .collect();
        let landing = Bytes::from(landing::render(&config, &public_keys));
        let config_narinfo_entries = config.narinfo_cache_entries;
        Ok(Arc::new(AppState {
            encoders: Arc::new(Semaphore::new(config.max_encoders)),
            config,
            store,
            blobs,
            catalog,
            auth,
            trusted,
            keyring,
            metrics: Arc::new(Metrics::default()),
            variants,
            narinfos: NarinfoCache::new(config_narinfo_entries),
            sessions,
            logs,
            cache_info,
            landing,
            started: std::time::Instant::now(),
            access: Default::default(),
        }))
    }

    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }
}

/// The state as handlers hold it.
pub type Shared = Arc<AppState>;
