//! `cairnd`'s configuration: one TOML file, every key also a flag. A Harmonia config
//! file is accepted unchanged (same keys, same `CONFIG_FILE` and `SIGN_KEY_PATHS`
//! environment variables), so a runner host swaps the binary and nothing else.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Where to listen: a TCP address (`[::]:5000`, `127.0.0.1:5000`) or `unix:/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindAddr {
    Tcp(String),
    Unix(PathBuf),
}

impl BindAddr {
    pub fn parse(s: &str) -> Self {
        match s.strip_prefix("unix:") {
            Some(p) => BindAddr::Unix(PathBuf::from(p)),
            None => BindAddr::Tcp(s.to_string()),
        }
    }
}

impl std::fmt::Display for BindAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BindAddr::Tcp(a) => f.write_str(a),
            BindAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// How narinfos advertise NARs served from the local Nix store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum NarinfoCompression {
    /// `Compression: none`: identity on the wire, or zstd when the client's
    /// `Accept-Encoding` asks for it (and `enable_compression` is on).
    None,
    /// `Compression: zstd` with a `.nar.zst` URL: compressed on the fly, for clients that
    /// do not send `Accept-Encoding` (Nix before 2.20 or so).
    Zstd,
    /// `Compression: xz` with a `.nar.xz` URL: small on the wire, expensive to produce.
    Xz,
}

impl NarinfoCompression {
    pub fn name(self) -> &'static str {
        match self {
            NarinfoCompression::None => "none",
            NarinfoCompression::Zstd => "zstd",
            NarinfoCompression::Xz => "xz",
        }
    }
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// The slowest repair rate taken: a node below it would not catch up on a real cache
/// in days, which is a typo rather than a choice.
pub const MIN_REPAIR_RATE: u64 = 1 << 20;

/// The config file. Every field is optional; unset fields take the defaults documented
/// here (and in the README's configuration reference).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Addresses to listen on: `host:port` or `unix:/path`; a string or a list.
    /// Default `[::]:5000`.
    #[serde(default, deserialize_with = "one_or_many")]
    pub bind: Vec<String>,
    /// Directory for Cairn's own state: the generated signing key, the cache of
    /// compressed NAR variants. Default `./cairn-data`.
    pub data_dir: Option<PathBuf>,
    /// Worker threads of the async runtime. Default: the number of CPUs.
    pub workers: Option<usize>,
    /// Most new connections accepted per second and listener (Harmonia's key).
    /// Default 256.
    pub max_connection_rate: Option<usize>,
    /// `Priority` in nix-cache-info; lower wins. Default 30.
    pub priority: Option<u32>,
    /// Compress on the fly (zstd) when a client's `Accept-Encoding` allows it.
    /// Default true.
    pub enable_compression: Option<bool>,
    /// What narinfos advertise for local-store NARs: none, zstd or xz. Default none.
    pub narinfo_compression: Option<NarinfoCompression>,
    /// zstd level for on-the-fly compression. Default 1.
    pub zstd_level: Option<i32>,
    /// xz preset for on-the-fly compression. Default 2.
    pub xz_level: Option<u32>,
    /// Most compressions running at once; more requests wait. Default: the number of
    /// CPUs plus one.
    pub max_encoders: Option<usize>,
    /// Bytes of compressed NAR variants kept on disk under `data_dir`; 0 turns the
    /// variant cache off. Default 1 GiB.
    pub variant_cache_bytes: Option<u64>,
    /// Compressed variants up to 64 KiB are held in memory instead of in files, up to
    /// this many bytes; the least recently used move to files past it. Default 8 MiB.
    pub variant_memory_bytes: Option<u64>,
    /// Rendered narinfos of local-store paths kept in memory while Nix's database is
    /// unchanged (about 0.6 KiB each); 0 turns this off. Default 8192.
    pub narinfo_cache_entries: Option<usize>,
    /// Secret key files (`name:base64`); each adds a `Sig:` line. Default: a key
    /// generated into `data_dir` on first start.
    #[serde(default)]
    pub sign_key_paths: Vec<PathBuf>,
    /// One secret key file (Harmonia's older key; added to `sign_key_paths`).
    pub sign_key_path: Option<PathBuf>,
    /// Serve without any signing key (narinfos carry only the signatures Nix recorded).
    pub no_signing: Option<bool>,
    /// The store directory clients see. Default `/nix/store`.
    pub virtual_nix_store: Option<String>,
    /// Where the store's files really are. Default: `virtual_nix_store`.
    pub real_nix_store: Option<PathBuf>,
    /// Nix's SQLite database. Default `/nix/var/nix/db/db.sqlite`, or
    /// `<root>/nix/var/nix/db/db.sqlite` when `real_nix_store` is `<root>/nix/store`.
    pub nix_db_path: Option<PathBuf>,
    /// Nix's build log directory. Default beside the database: `…/log/nix/drvs`.
    pub nix_log_dir: Option<PathBuf>,
    /// PEM certificate chain; with `tls_key_path`, TCP listeners speak HTTPS.
    pub tls_cert_path: Option<PathBuf>,
    /// PEM private key for `tls_cert_path`.
    pub tls_key_path: Option<PathBuf>,
    /// Harmonia's nix-daemon socket. Accepted for compatibility and ignored: Cairn
    /// reads Nix's database directly.
    pub daemon_socket: Option<PathBuf>,
    /// Require a token with the read scope for reads too. Default false (public reads).
    pub private: Option<bool>,
    /// Tokens provisioned from files: `[[tokens]]` with `name`, `secret_file`, `scopes`.
    #[serde(default)]
    pub tokens: Vec<crate::auth::TokenFile>,
    /// Public keys (`name:base64`) whose signatures on uploaded narinfos are kept.
    /// The cache always adds its own.
    #[serde(default)]
    pub trusted_public_keys: Vec<String>,
    /// Accept narinfos whose references the cache does not have (for caches that sit
    /// behind cache.nixos.org). Default false.
    pub allow_missing_references: Option<bool>,
    /// Largest NAR upload in bytes (compressed, as sent). Default 64 GiB.
    pub max_nar_upload_bytes: Option<u64>,
    /// Free space the blob disk always keeps; uploads that would eat into it get 507.
    /// Default 256 MiB.
    pub reserve_bytes: Option<u64>,
    /// Most NAR bytes per part of a resumable upload session (docs/api.md). Default
    /// 64 MiB; keep parts under the body limit of any proxy in front of the cache.
    pub upload_part_bytes: Option<u64>,
    /// Largest build log upload (`PUT /log/<drv>`), decompressed. Default 64 MiB.
    pub max_log_bytes: Option<u64>,
    /// Serve the local Nix store too. Default: when its database exists.
    pub serve_local_store: Option<bool>,
    /// This node's place in a replicated cluster (`[cluster]`); absent, or without
    /// `listen`: a cluster of one (node 1, no cluster listener).
    pub cluster: Option<ClusterFileConfig>,
}

/// `[cluster]`: this node's place in a replicated cluster.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFileConfig {
    /// This node's id, 1 or more, unique in the cluster and never reused. Required
    /// with `listen`; a cluster of one is node 1.
    pub node_id: Option<u64>,
    /// The cluster listener (`host:port` on the cluster network), serving only
    /// node-to-node traffic. Absent: a cluster of one, which needs none.
    pub listen: Option<String>,
    /// How peers reach the cluster listener. Default: `listen`.
    pub advertise: Option<String>,
    /// File holding the shared cluster secret (one line, 32+ characters, mode 0600).
    pub secret_file: Option<PathBuf>,
    /// The other nodes `cachectl cluster init` makes voters: `[[cluster.peers]]` with
    /// `node_id` and `addr` (their cluster listeners).
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    /// Copies of every blob the repair worker keeps. Default 3.
    pub replicas: Option<usize>,
    /// Raft heartbeat interval in milliseconds. Default 250.
    pub heartbeat_ms: Option<u64>,
    /// Raft election timeout range in milliseconds. Default [1000, 2000].
    pub election_timeout_ms: Option<[u64; 2]>,
    /// Log entries between snapshots. Default 10000.
    pub snapshot_logs: Option<u64>,
    /// Seconds between repair passes. Default 30.
    pub repair_interval_secs: Option<u64>,
    /// Bytes per second of stored blobs the scrubber re-hashes; 0 turns it off.
    /// Default 8 MiB.
    pub scrub_bytes_per_sec: Option<u64>,
    /// Bytes per second the repair worker fetches from peers at most; 0 means no cap,
    /// else at least [`MIN_REPAIR_RATE`]. Default 64 MiB.
    pub repair_bytes_per_sec: Option<u64>,
    /// Seconds a blob no path names is kept before the orphan sweep deletes it.
    /// Default 86400 (a day).
    pub orphan_grace_secs: Option<u64>,
    /// Seconds between the leader's GC passes (they delete only what the retention
    /// settings let go; none are set until `cachectl retention set`); 0 turns the
    /// periodic pass off. Default 3600.
    pub gc_interval_secs: Option<u64>,
}

/// A peer in `[[cluster.peers]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub node_id: u64,
    pub addr: String,
}

/// `[cluster]` after defaults. Without a `[cluster]` section, or with one that sets no
/// `listen`, the cache is a cluster of one: node 1, no cluster listener, no secret file,
/// the tuning keys as given or defaulted.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub node_id: u64,
    /// The cluster listener; `None` for a cluster of one (nothing else ever calls it).
    pub listen: Option<String>,
    /// How peers reach the cluster listener; empty without one.
    pub advertise: String,
    /// `None` for a cluster of one: a secret is made up at each start.
    pub secret_file: Option<PathBuf>,
    pub peers: Vec<PeerConfig>,
    pub replicas: usize,
    pub heartbeat_ms: u64,
    pub election_timeout_ms: (u64, u64),
    pub snapshot_logs: u64,
    pub repair_interval_secs: u64,
    pub scrub_bytes_per_sec: u64,
    pub repair_bytes_per_sec: u64,
    pub orphan_grace_secs: u64,
    pub gc_interval_secs: u64,
}

impl ClusterConfig {
    /// Whether this is a cluster of one without a listener (no `listen`).
    pub fn is_solo(&self) -> bool {
        self.listen.is_none()
    }

    fn resolve(section: Option<&ClusterFileConfig>) -> Result<Self, ConfigError> {
        let bad = |m: &str| ConfigError::Invalid(format!("[cluster] {m}"));
        let solo = ClusterFileConfig::default();
        let f = section.unwrap_or(&solo);
        let (node_id, listen, secret_file) = match &f.listen {
            // A cluster of one: only the tuning keys mean anything.
            None => {
                if f.secret_file.is_some() || f.advertise.is_some() || !f.peers.is_empty() {
                    return Err(bad(
                        "listen is required with secret_file, advertise or peers (without \
                         it the cache is a cluster of one)",
                    ));
                }
                (f.node_id.unwrap_or(1), None, None)
            }
            Some(listen) => (
                f.node_id.ok_or_else(|| bad("node_id is required"))?,
                Some(listen.clone()),
                Some(
                    f.secret_file
                        .clone()
                        .ok_or_else(|| bad("secret_file is required"))?,
                ),
            ),
        };
        if node_id == 0 {
            return Err(bad("node_id must be 1 or more"));
        }
        let mut seen = std::collections::BTreeSet::from([node_id]);
        for p in &f.peers {
            if !seen.insert(p.node_id) || p.node_id == 0 {
                return Err(bad(&format!(
                    "peer node_id {} is 0 or appears twice (or is this node's)",
                    p.node_id
                )));
            }
        }
        let heartbeat_ms = f.heartbeat_ms.unwrap_or(250);
        let [emin, emax] = f.election_timeout_ms.unwrap_or([1000, 2000]);
        if heartbeat_ms == 0 || emin < 3 * heartbeat_ms || emax <= emin {
            return Err(bad(
                "election_timeout_ms must be [min, max] with max > min >= 3 * heartbeat_ms",
            ));
        }
        let replicas = f.replicas.unwrap_or(3);
        if !(1..=7).contains(&replicas) {
            return Err(bad("replicas must be 1 to 7"));
        }
        let repair_bytes_per_sec = f.repair_bytes_per_sec.unwrap_or(64 << 20);
        if (1..MIN_REPAIR_RATE).contains(&repair_bytes_per_sec) {
            return Err(bad(
                "repair_bytes_per_sec must be 0 (no cap) or at least 1048576 (1 MiB/s)",
            ));
        }
        Ok(ClusterConfig {
            node_id,
            advertise: f
                .advertise
                .clone()
                .or_else(|| listen.clone())
                .unwrap_or_default(),
            listen,
            secret_file,
            peers: f.peers.clone(),
            replicas,
            heartbeat_ms,
            election_timeout_ms: (emin, emax),
            snapshot_logs: f.snapshot_logs.unwrap_or(10_000).max(10),
            repair_interval_secs: f.repair_interval_secs.unwrap_or(30).max(1),
            scrub_bytes_per_sec: f.scrub_bytes_per_sec.unwrap_or(8 << 20),
            repair_bytes_per_sec,
            orphan_grace_secs: f.orphan_grace_secs.unwrap_or(86_400),
            gc_interval_secs: f.gc_interval_secs.unwrap_or(3600),
        })
    }
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// The configuration after defaults, environment and flags are applied.
#[derive(Debug, Clone)]
pub struct Config {
    pub binds: Vec<BindAddr>,
    pub data_dir: PathBuf,
    pub workers: usize,
    pub max_connection_rate: usize,
    pub priority: u32,
    pub enable_compression: bool,
    pub narinfo_compression: NarinfoCompression,
    pub zstd_level: i32,
    pub xz_level: u32,
    pub max_encoders: usize,
    pub variant_cache_bytes: u64,
    pub variant_memory_bytes: u64,
    pub narinfo_cache_entries: usize,
    pub sign_key_paths: Vec<PathBuf>,
    pub no_signing: bool,
    pub store_dir: String,
    pub real_store_dir: PathBuf,
    pub nix_db_path: PathBuf,
    pub nix_log_dir: PathBuf,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub private: bool,
    pub tokens: Vec<crate::auth::TokenFile>,
    pub trusted_public_keys: Vec<String>,
    pub allow_missing_references: bool,
    pub max_nar_upload_bytes: u64,
    pub reserve_bytes: u64,
    pub upload_part_bytes: u64,
    pub max_log_bytes: u64,
    pub serve_local_store: Option<bool>,
    /// This node's place in its cluster (a cluster of one by default).
    pub cluster: ClusterConfig,
}

fn cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

impl Config {
    /// Applies defaults and Harmonia's environment variables (`SIGN_KEY_PATHS`,
    /// `SIGN_KEY_PATH`, `NIX_STORE_DIR`) to a file config.
    pub fn resolve(
        file: FileConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let binds = if file.bind.is_empty() {
            vec![BindAddr::Tcp("[::]:5000".into())]
        } else {
            file.bind.iter().map(|b| BindAddr::parse(b)).collect()
        };
        let mut sign_key_paths = file.sign_key_paths.clone();
        sign_key_paths.extend(file.sign_key_path.clone());
        sign_key_paths.extend(env("SIGN_KEY_PATH").map(PathBuf::from));
        if let Some(list) = env("SIGN_KEY_PATHS") {
            sign_key_paths.extend(list.split_whitespace().map(PathBuf::from));
        }
        let store_dir = env("NIX_STORE_DIR")
            .or(file.virtual_nix_store.clone())
            .unwrap_or_else(|| "/nix/store".into());
        nix_formats::StoreDir::new(&store_dir)
            .map_err(|e| ConfigError::Invalid(format!("virtual_nix_store {store_dir:?}: {e}")))?;
        let real_store_dir = file
            .real_nix_store
            .clone()
            .unwrap_or_else(|| PathBuf::from(&store_dir));
        // A store under `<root>/nix/store` keeps its database under `<root>/nix/var`.
        let state_root = real_store_dir
            .parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"));
        let nix_db_path = file
            .nix_db_path
            .clone()
            .unwrap_or_else(|| state_root.join("nix/var/nix/db/db.sqlite"));
        let nix_log_dir = file.nix_log_dir.clone().unwrap_or_else(|| {
            nix_db_path
                .parent()
                .and_then(Path::parent)
                .and_then(Path::parent)
                .map(|var| var.join("log/nix/drvs"))
                .unwrap_or_else(|| PathBuf::from("/nix/var/log/nix/drvs"))
        });
        let tls = match (file.tls_cert_path.clone(), file.tls_key_path.clone()) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                return Err(ConfigError::Invalid(
                    "tls_cert_path and tls_key_path go together".into(),
                ))
            }
        };
        let workers = file.workers.unwrap_or_else(cpus);
        if workers == 0 {
            return Err(ConfigError::Invalid("workers must be at least 1".into()));
        }
        // One more than the cores: an encoder whose client has not yet drained what it
        // made waits holding its permit, and the extra one keeps the cores busy then.
        let max_encoders = file.max_encoders.unwrap_or_else(|| cpus() + 1);
        if max_encoders == 0 {
            return Err(ConfigError::Invalid(
                "max_encoders must be at least 1".into(),
            ));
        }
        let zstd_level = file.zstd_level.unwrap_or(1);
        if !(1..=19).contains(&zstd_level) {
            return Err(ConfigError::Invalid("zstd_level must be 1 to 19".into()));
        }
        let xz_level = file.xz_level.unwrap_or(2);
        if xz_level > 9 {
            return Err(ConfigError::Invalid("xz_level must be 0 to 9".into()));
        }
        let upload_part_bytes = file.upload_part_bytes.unwrap_or(64 << 20);
        if upload_part_bytes < 1 << 20 {
            return Err(ConfigError::Invalid(
                "upload_part_bytes must be at least 1 MiB (1048576)".into(),
            ));
        }
        Ok(Config {
            binds,
            data_dir: file
                .data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("cairn-data")),
            workers,
            max_connection_rate: file.max_connection_rate.unwrap_or(256),
            priority: file.priority.unwrap_or(30),
            enable_compression: file.enable_compression.unwrap_or(true),
            narinfo_compression: file.narinfo_compression.unwrap_or(NarinfoCompression::None),
            zstd_level,
            xz_level,
            max_encoders,
            variant_cache_bytes: file.variant_cache_bytes.unwrap_or(1 << 30),
            variant_memory_bytes: file.variant_memory_bytes.unwrap_or(8 << 20),
            narinfo_cache_entries: file.narinfo_cache_entries.unwrap_or(8192),
            sign_key_paths,
            no_signing: file.no_signing.unwrap_or(false),
            store_dir,
            real_store_dir,
            nix_db_path,
            nix_log_dir,
            tls,
            private: file.private.unwrap_or(false),
            tokens: file.tokens.clone(),
            trusted_public_keys: file.trusted_public_keys.clone(),
            allow_missing_references: file.allow_missing_references.unwrap_or(false),
            max_nar_upload_bytes: file.max_nar_upload_bytes.unwrap_or(64 << 30),
            reserve_bytes: file.reserve_bytes.unwrap_or(256 << 20),
            upload_part_bytes,
            max_log_bytes: file.max_log_bytes.unwrap_or(64 << 20),
            serve_local_store: file.serve_local_store,
            cluster: ClusterConfig::resolve(file.cluster.as_ref())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn harmonia_config_is_accepted_unchanged() {
        let text = r#"
bind = "[::]:5000"
workers = 4
max_connection_rate = 256
priority = 30
enable_compression = false
sign_key_paths = ["/run/secrets/a", "/run/secrets/b"]
sign_key_path = "/run/secrets/old"
virtual_nix_store = "/nix/store"
real_nix_store = "/some/root/nix/store"
nix_db_path = "/some/root/nix/var/nix/db/db.sqlite"
tls_cert_path = "/etc/cert.pem"
tls_key_path = "/etc/key.pem"
daemon_socket = "/nix/var/nix/daemon-socket/socket"
"#;
        let file: FileConfig = toml::from_str(text).unwrap();
        let env = |k: &str| (k == "SIGN_KEY_PATHS").then(|| "/env/c /env/d".to_string());
        let c = Config::resolve(file, env).unwrap();
        assert_eq!(c.binds, vec![BindAddr::Tcp("[::]:5000".into())]);
        assert_eq!(c.workers, 4);
        assert!(!c.enable_compression);
        assert_eq!(
            c.sign_key_paths,
            [
                "/run/secrets/a",
                "/run/secrets/b",
                "/run/secrets/old",
                "/env/c",
                "/env/d"
            ]
            .map(PathBuf::from)
        );
        assert_eq!(c.real_store_dir, PathBuf::from("/some/root/nix/store"));
        assert_eq!(
            c.nix_log_dir,
            PathBuf::from("/some/root/nix/var/log/nix/drvs")
        );
        assert!(c.tls.is_some());
    }

    #[test]
    fn defaults_follow_the_real_store() {
        let file = FileConfig {
            real_nix_store: Some("/srv/root/nix/store".into()),
            bind: vec!["unix:/run/cairn.sock".into(), "127.0.0.1:5001".into()],
            ..Default::default()
        };
        let c = Config::resolve(file, no_env).unwrap();
        assert_eq!(
            c.nix_db_path,
            PathBuf::from("/srv/root/nix/var/nix/db/db.sqlite")
        );
        assert_eq!(c.store_dir, "/nix/store");
        assert_eq!(
            c.binds,
            vec![
                BindAddr::Unix("/run/cairn.sock".into()),
                BindAddr::Tcp("127.0.0.1:5001".into())
            ]
        );
        assert_eq!(c.priority, 30);
        assert!(c.enable_compression);
    }

    #[test]
    fn rejects_unknown_keys_and_bad_values() {
        assert!(toml::from_str::<FileConfig>("bindd = \"x\"").is_err());
        let bad = FileConfig {
            tls_cert_path: Some("/c".into()),
            ..Default::default()
        };
        assert!(Config::resolve(bad, no_env).is_err());
        let bad = FileConfig {
            workers: Some(0),
            ..Default::default()
        };
        assert!(Config::resolve(bad, no_env).is_err());
        let bad = FileConfig {
            virtual_nix_store: Some("nix/store".into()),
            ..Default::default()
        };
        assert!(Config::resolve(bad, no_env).is_err());
        // A repair rate is no cap (0) or at least 1 MiB/s.
        for (rate, ok) in [
            (0, true),
            (1, false),
            (MIN_REPAIR_RATE - 1, false),
            (MIN_REPAIR_RATE, true),
        ] {
            let text = format!("[cluster]\nnode_id = 1\nrepair_bytes_per_sec = {rate}\n");
            let file: FileConfig = toml::from_str(&text).unwrap();
            let c = Config::resolve(file, no_env);
            assert_eq!(c.is_ok(), ok, "repair_bytes_per_sec = {rate}");
        }
    }
}
