//! What every request handler shares: configuration, the store, the signing keys, the
//! encoder budget, the variant cache and the metrics.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::Semaphore;

use crate::config::Config;
use crate::landing;
use crate::metrics::Metrics;
use crate::variants::VariantCache;

pub struct AppState {
    pub config: Config,
    pub store: store::LocalStore,
    /// Signing keys, in the order their `Sig:` lines appear; empty when signing is off.
    pub keyring: signer::Signer,
    pub metrics: Arc<Metrics>,
    /// Caps concurrent on-the-fly compressions.
    pub encoders: Arc<Semaphore>,
    pub variants: Arc<VariantCache>,
    pub cache_info: Bytes,
    pub landing: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("variant cache under {path}: {source}")]
    Variants {
        path: String,
        source: std::io::Error,
    },
}

impl AppState {
    /// Opens the store and the variant cache. `keyring` is built by the caller, which
    /// knows whether to generate a default key.
    pub fn new(config: Config, keyring: signer::Signer) -> Result<Arc<Self>, StartError> {
        let store = store::LocalStore::open(store::LocalStoreConfig {
            store_dir: nix_formats::StoreDir::new(&config.store_dir)
                .expect("store dir validated by Config::resolve"),
            real_store_dir: config.real_store_dir.clone(),
            db_path: config.nix_db_path.clone(),
            log_dir: config.nix_log_dir.clone(),
        })?;
        let vdir = config.data_dir.join("variants");
        let variants = VariantCache::open(&vdir, config.variant_cache_bytes).map_err(|source| {
            StartError::Variants {
                path: vdir.display().to_string(),
                source,
            }
        })?;
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
        Ok(Arc::new(AppState {
            encoders: Arc::new(Semaphore::new(config.max_encoders)),
            config,
            store,
            keyring,
            metrics: Arc::new(Metrics::default()),
            variants,
            cache_info,
            landing,
        }))
    }

    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }
}
