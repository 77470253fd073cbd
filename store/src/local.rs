//! The local Nix store, read-only: path metadata from Nix's SQLite database (opened
//! read-only, no nix-daemon needed) and contents from the filesystem.
//!
//! The logical store directory (what clients see, usually `/nix/store`) and the physical
//! directory on disk are configured separately, so a store kept under
//! `/some/root/nix/store` can be served as `/nix/store`.

use std::path::{Path, PathBuf};
use std::time::Duration;

mod watch;

use nix_formats::store_path::is_hash_part;
use nix_formats::{Hash, StoreDir, StorePath};
use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("opening the Nix database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("querying the Nix database: {0}")]
    Query(#[from] rusqlite::Error),
    #[error("the Nix database holds an invalid record for {path}: {reason}")]
    Corrupt { path: String, reason: String },
}

/// Everything Nix's database knows about a valid path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathInfo {
    pub path: StorePath,
    pub nar_hash: Hash,
    pub nar_size: u64,
    pub references: Vec<StorePath>,
    pub deriver: Option<StorePath>,
    /// Signatures Nix recorded for the path (`nix store sign`, substitution).
    pub sigs: Vec<String>,
    pub ca: Option<String>,
    pub registration_time: i64,
}

#[derive(Debug, Clone)]
pub struct LocalStoreConfig {
    /// The store directory clients see (`StoreDir` in nix-cache-info).
    pub store_dir: StoreDir,
    /// Where the store's files really are.
    pub real_store_dir: PathBuf,
    /// Nix's database, usually `/nix/var/nix/db/db.sqlite`.
    pub db_path: PathBuf,
    /// Nix's build log directory, usually `/nix/var/log/nix/drvs`.
    pub log_dir: PathBuf,
}

impl LocalStoreConfig {
    /// The layout of a store whose logical directory is `/nix/store` kept under `root`
    /// (`/` for the machine's own store).
    pub fn under_root(root: &Path) -> Self {
        LocalStoreConfig {
            store_dir: StoreDir::default(),
            real_store_dir: root.join("nix/store"),
            db_path: root.join("nix/var/nix/db/db.sqlite"),
            log_dir: root.join("nix/var/log/nix/drvs"),
        }
    }
}

/// Read-only access to a Nix store. Cheap to share; holds a small pool of SQLite
/// connections because `rusqlite::Connection` is not `Sync`.
pub struct LocalStore {
    config: LocalStoreConfig,
    pool: Mutex<Vec<Connection>>,
    /// Writes to the database; `None` when they cannot be watched (nothing is cached).
    watch: Option<watch::ChangeWatch>,
    /// Every hash part seen valid, for answering misses without a query.
    known: Mutex<watch::KnownPaths>,
    /// Recently looked-up paths with the watch generation they were read at: a NAR
    /// request right after its narinfo needs no query (valid only while nothing wrote).
    infos: Mutex<lru::LruCache<String, (u64, PathInfo)>>,
}

/// How many looked-up paths [`LocalStore`] keeps (a few hundred bytes each).
const INFO_CACHE: usize = 4096;

const POOL_MAX: usize = 8;

const PATH_COLUMNS: &str = "id, path, hash, registrationTime, deriver, narSize, sigs, ca";

impl LocalStore {
    /// Opens the database read-only and checks it has Nix's schema.
    pub fn open(config: LocalStoreConfig) -> Result<Self, StoreError> {
        let watch = watch::ChangeWatch::open(&config.db_path);
        let store = LocalStore {
            config,
            pool: Mutex::new(Vec::new()),
            watch,
            known: Mutex::new(watch::KnownPaths::new()),
            infos: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(INFO_CACHE).expect("non-zero"),
            )),
        };
        let conn = store.connect()?;
        conn.query_row("SELECT count(*) FROM ValidPaths LIMIT 1", [], |_| Ok(()))
            .map_err(|source| StoreError::Open {
                path: store.config.db_path.clone(),
                source,
            })?;
        store.pool.lock().push(conn);
        Ok(store)
    }

    pub fn config(&self) -> &LocalStoreConfig {
        &self.config
    }

    pub fn store_dir(&self) -> &StoreDir {
        &self.config.store_dir
    }

    fn connect(&self) -> Result<Connection, StoreError> {
        let open = || -> rusqlite::Result<Connection> {
            let conn = Connection::open_with_flags(
                &self.config.db_path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            // Nix holds write transactions briefly while registering paths.
            conn.busy_timeout(Duration::from_secs(5))?;
            Ok(conn)
        };
        open().map_err(|source| StoreError::Open {
            path: self.config.db_path.clone(),
            source,
        })
    }

    fn with_conn<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = match self.pool.lock().pop() {
            Some(c) => c,
            None => self.connect()?,
        };
        let result = f(&conn);
        let mut pool = self.pool.lock();
        if pool.len() < POOL_MAX {
            pool.push(conn);
        }
        result
    }

    /// A number that changes whenever Nix's database may have changed since it was last
    /// read: anything derived from the database under one generation stays true while
    /// the generation stays the same. `None` when changes cannot be watched.
    pub fn generation(&self) -> Option<u64> {
        self.watch.as_ref().map(watch::ChangeWatch::generation)
    }

    /// `false` only when the database certainly holds no path with this hash part
    /// (exact as of this call: see the `watch` module); `true` when it may.
    fn may_have(&self, hash_part: &str, generation: Option<u64>) -> Result<bool, StoreError> {
        let Some(generation) = generation.or_else(|| self.generation()) else {
            return Ok(true);
        };
        let mut known = self.known.lock();
        if !known.is_current(generation) {
            let dir = self.config.store_dir.as_str();
            self.with_conn(|conn| Ok(known.refresh(conn, dir, generation)?))?;
            tracing::debug!(
                paths = known.len(),
                generation,
                "refreshed the known hash parts"
            );
        }
        Ok(known.may_contain(hash_part))
    }

    /// Looks a path up by the 32-character hash part a narinfo request names.
    /// Returns `None` for a malformed hash part as well as for an unknown one.
    pub fn query_by_hash_part(&self, hash_part: &str) -> Result<Option<PathInfo>, StoreError> {
        self.query_by_hash_part_under(hash_part, None)
    }

    /// [`Self::query_by_hash_part`] for a caller that has just read
    /// [`Self::generation`]: saves reading it again.
    pub fn query_by_hash_part_under(
        &self,
        hash_part: &str,
        generation: Option<u64>,
    ) -> Result<Option<PathInfo>, StoreError> {
        let generation = generation.or_else(|| self.generation());
        if !is_hash_part(hash_part) || !self.may_have(hash_part, generation)? {
            return Ok(None);
        }
        if let Some(g) = generation {
            if let Some((at, info)) = self.infos.lock().get(hash_part) {
                if *at == g {
                    return Ok(Some(info.clone()));
                }
            }
        }
        let found = self.query_by_hash_part_uncached(hash_part)?;
        if let (Some(g), Some(info)) = (generation, &found) {
            self.infos
                .lock()
                .put(hash_part.to_string(), (g, info.clone()));
        }
        Ok(found)
    }

    fn query_by_hash_part_uncached(&self, hash_part: &str) -> Result<Option<PathInfo>, StoreError> {
        let prefix = format!("{}/{}", self.config.store_dir, hash_part);
        self.with_conn(|conn| {
            // Same trick as Nix's queryPathFromHashPart: the first path sorting at or after
            // the prefix is the only candidate.
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {PATH_COLUMNS} FROM ValidPaths WHERE path >= ?1 ORDER BY path LIMIT 1"
            ))?;
            let row = stmt.query_row([&prefix], RawRow::from_row).optional()?;
            match row {
                Some(raw) if raw.path.starts_with(&prefix) && raw.path.len() > prefix.len() + 1 => {
                    self.finish(conn, raw).map(Some)
                }
                _ => Ok(None),
            }
        })
    }

    /// Looks a path up by its store path.
    pub fn query_path(&self, path: &StorePath) -> Result<Option<PathInfo>, StoreError> {
        let full = self.config.store_dir.display(path);
        self.with_conn(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {PATH_COLUMNS} FROM ValidPaths WHERE path = ?1"
            ))?;
            match stmt.query_row([&full], RawRow::from_row).optional()? {
                Some(raw) => self.finish(conn, raw).map(Some),
                None => Ok(None),
            }
        })
    }

    fn finish(&self, conn: &Connection, raw: RawRow) -> Result<PathInfo, StoreError> {
        let dir = &self.config.store_dir;
        let corrupt = |reason: String| StoreError::Corrupt {
            path: raw.path.clone(),
            reason,
        };
        let path = dir
            .parse_path(&raw.path)
            .map_err(|e| corrupt(e.to_string()))?;
        let nar_hash: Hash = raw
            .hash
            .parse()
            .map_err(|e: nix_formats::HashError| corrupt(e.to_string()))?;
        let deriver = match raw.deriver.as_deref() {
            None | Some("") => None,
            Some(d) => Some(
                dir.parse_path(d)
                    .map_err(|e| corrupt(format!("deriver: {e}")))?,
            ),
        };
        let mut stmt = conn.prepare_cached(
            "SELECT path FROM Refs JOIN ValidPaths ON reference = id WHERE referrer = ?1",
        )?;
        let mut references = stmt
            .query_map([raw.id], |r| r.get::<_, String>(0))?
            .map(|r| {
                let p = r?;
                dir.parse_path(&p)
                    .map_err(|e| corrupt(format!("reference {p}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Nix prints references sorted by full path; the fingerprint depends on the order.
        references.sort_by_key(|p| p.base_name());
        let nar_size = u64::try_from(raw.nar_size.unwrap_or(0))
            .map_err(|_| corrupt("negative narSize".into()))?;
        Ok(PathInfo {
            path,
            nar_hash,
            nar_size,
            references,
            deriver,
            sigs: raw
                .sigs
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_string)
                .collect(),
            ca: raw.ca.filter(|c| !c.is_empty()),
            registration_time: raw.registration_time,
        })
    }

    /// Where the path's files are on disk.
    pub fn real_path(&self, path: &StorePath) -> PathBuf {
        self.config.real_store_dir.join(path.base_name())
    }

    /// The build log of a derivation (`<hash>-<name>.drv`), plain or bzip2-compressed,
    /// where Nix keeps it: `<log_dir>/<first 2 chars>/<rest>`.
    pub fn log_file(&self, drv: &StorePath) -> Option<(PathBuf, LogCompression)> {
        let base = drv.base_name();
        let dir = self.config.log_dir.join(&base[..2]);
        let plain = dir.join(&base[2..]);
        if plain.is_file() {
            return Some((plain, LogCompression::None));
        }
        let bz = dir.join(format!("{}.bz2", &base[2..]));
        bz.is_file().then_some((bz, LogCompression::Bzip2))
    }
}

/// How a build log is stored on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogCompression {
    None,
    Bzip2,
}

struct RawRow {
    id: i64,
    path: String,
    hash: String,
    registration_time: i64,
    deriver: Option<String>,
    nar_size: Option<i64>,
    sigs: Option<String>,
    ca: Option<String>,
}

impl RawRow {
    fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(RawRow {
            id: r.get(0)?,
            path: r.get(1)?,
            hash: r.get(2)?,
            registration_time: r.get(3)?,
            deriver: r.get(4)?,
            nar_size: r.get(5)?,
            sigs: r.get(6)?,
            ca: r.get(7)?,
        })
    }
}
