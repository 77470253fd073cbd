//! Cairn's cache records, in one redb file: blobs (what a stored file holds), paths (the
//! narinfo of each uploaded store path) and tokens. The record types are shared with
//! the replicated state (`cluster`); the file itself (`cache.redb`) is how an earlier
//! Cairn kept a single cache's records, which a cluster of one now imports at start.
//! [`PathFilter`] serves both. Every write is one durable
//! transaction (redb fsyncs on commit); every read is one read transaction, and the hot
//! lookups (`get_path`, `get_blob`, `has_path`) decode straight from redb's page without
//! copying.
//!
//! Records are JSON: hashes as `sha256:<nix32>`, store paths as base names, secret
//! hashes as hex. The JSON field names are the file format, so renaming a field is a
//! migration; the `schema` entry in the `meta` table says which format a file holds.
//!
//! | table | key | value |
//! |---|---|---|
//! | `meta` | `"schema"` | format version |
//! | `blobs` | sha256 digest of the file (32 bytes) | [`BlobRecord`] |
//! | `paths` | store path hash part (32 chars) | [`PathRecord`] |
//! | `tokens` | sha256 of the token text (32 bytes) | [`TokenRecord`] |
//! | `token_ids` | token id | sha256 of the token text |

mod fields;

use std::fmt;
use std::path::Path;

use nix_formats::{Hash, StorePath};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::blobs::Compression;

/// The format version this code reads and writes.
pub const SCHEMA_VERSION: u64 = 1;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const BLOBS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("blobs");
const PATHS: TableDefinition<&str, &[u8]> = TableDefinition::new("paths");
const TOKENS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("tokens");
const TOKEN_IDS: TableDefinition<&str, &[u8]> = TableDefinition::new("token_ids");

/// A stored blob: what [`crate::blobs::BlobStore::ingest`] verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRecord {
    #[serde(with = "fields::hash")]
    pub file_hash: Hash,
    pub file_size: u64,
    pub compression: Compression,
    #[serde(with = "fields::hash")]
    pub nar_hash: Hash,
    pub nar_size: u64,
    /// Unix seconds.
    pub created: u64,
}

/// An uploaded store path: its narinfo, minus what the blob record holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathRecord {
    #[serde(with = "fields::store_path")]
    pub store_path: StorePath,
    /// The blob the narinfo's URL names.
    #[serde(with = "fields::hash")]
    pub url_file_hash: Hash,
    #[serde(with = "fields::hash")]
    pub nar_hash: Hash,
    pub nar_size: u64,
    #[serde(with = "fields::store_paths")]
    pub references: Vec<StorePath>,
    #[serde(with = "fields::opt_store_path", default)]
    pub deriver: Option<StorePath>,
    #[serde(default)]
    pub system: Option<String>,
    pub sigs: Vec<String>,
    #[serde(default)]
    pub ca: Option<String>,
    /// Unix seconds.
    pub registered: u64,
}

/// What a token may do. Each scope includes the ones before it for the HTTP layer's
/// purposes; that policy lives there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Read,
    Push,
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Read, Scope::Push, Scope::Admin];

    pub const fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Push => "push",
            Scope::Admin => "admin",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// An API token. Only the sha256 of its text is kept; ids and secret hashes are each
/// unique. `Debug` leaves the secret hash out.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Short public id, for listing and revoking.
    pub id: String,
    pub name: String,
    /// sha256 of the token text.
    #[serde(with = "fields::hex32")]
    pub secret_hash: [u8; 32],
    pub scopes: Vec<Scope>,
    /// Unix seconds; `None` never expires.
    #[serde(default)]
    pub expires: Option<u64>,
    /// Unix seconds.
    pub created: u64,
    pub revoked: bool,
}

impl fmt::Debug for TokenRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenRecord")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("secret_hash", &"<redacted>")
            .field("scopes", &self.scopes)
            .field("expires", &self.expires)
            .field("created", &self.created)
            .field("revoked", &self.revoked)
            .finish()
    }
}

/// Why the cache database failed. The texts are short and fixed, safe for any client;
/// the redb or serde error with the detail (paths, OS errors) is the `source()`, for
/// the log (`{:?}`, or walk the chain).
#[derive(Debug, Error)]
pub enum MetaError {
    /// Another process (or another `CacheDb` in this one) has the file open.
    #[error("the cache database is in use")]
    InUse,
    /// The file could not be created, read, or is not a redb database we can use.
    #[error("cannot open the cache database")]
    Open(#[source] redb::DatabaseError),
    /// The file was written by a newer Cairn.
    #[error("the cache database has format {found}; this Cairn reads format {supported}")]
    Schema { found: u64, supported: u64 },
    #[error("cache database transaction failed")]
    Transaction(#[from] redb::TransactionError),
    #[error("cache database table unavailable")]
    Table(#[from] redb::TableError),
    #[error("cache database storage failed")]
    Storage(#[from] redb::StorageError),
    #[error("cache database commit failed")]
    Commit(#[from] redb::CommitError),
    /// A stored record does not decode.
    #[error("the cache database holds an unreadable {table} record")]
    Corrupt {
        table: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

impl From<redb::DatabaseError> for MetaError {
    fn from(e: redb::DatabaseError) -> Self {
        match e {
            redb::DatabaseError::DatabaseAlreadyOpen => MetaError::InUse,
            e => MetaError::Open(e),
        }
    }
}

/// The cache database. `Send + Sync`; share it. Writes are serialised by redb.
pub struct CacheDb {
    db: Database,
    /// Moves after every committed write: what was read under one value stays true
    /// while it stays the same.
    generation: std::sync::atomic::AtomicU64,
    known: PathFilter,
}

/// A fingerprint of every recorded path's hash part, so that a lookup of a path that
/// is not recorded (most narinfo misses) is answered from memory, without a read
/// transaction. Exact for absence; a present fingerprint still reads the record (and a
/// fingerprint may outlive its path: that only costs the read). About 16 bytes per path.
#[derive(Default)]
pub struct PathFilter {
    known: parking_lot::RwLock<std::collections::HashSet<u64>>,
}

impl PathFilter {
    /// False when no path with this hash part was noted; true when one may be recorded.
    pub fn may_have(&self, hash_part: &str) -> bool {
        self.known.read().contains(&fingerprint(hash_part))
    }

    /// Call before a path record is committed: a reader that sees the fingerprint
    /// before the commit only does a lookup that finds nothing yet.
    pub fn note(&self, hash_part: &str) {
        self.known.write().insert(fingerprint(hash_part));
    }

    /// Notes every key of a `paths` table (`&str` hash parts).
    pub fn note_all<E: From<redb::TableError> + From<redb::StorageError>>(
        &self,
        tx: &redb::ReadTransaction,
        table: TableDefinition<&str, &[u8]>,
    ) -> Result<(), E> {
        let mut known = self.known.write();
        for entry in tx.open_table(table)?.iter()? {
            known.insert(fingerprint(entry?.0.value()));
        }
        Ok(())
    }
}

/// 64 bits folded from a hash part (already uniformly random text).
fn fingerprint(hash_part: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for chunk in hash_part.as_bytes().chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        h = (h.rotate_left(23) ^ u64::from_le_bytes(word)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    h
}

impl fmt::Debug for CacheDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheDb").finish_non_exhaustive()
    }
}

impl CacheDb {
    /// Opens the database at `path`, creating it (and its tables) if it does not exist.
    pub fn open(path: &Path) -> Result<Self, MetaError> {
        let db = Database::create(path)?;
        let tx = db.begin_write()?;
        {
            let mut meta = tx.open_table(META)?;
            let found = meta.get("schema")?.map(|v| v.value());
            match found {
                None => {
                    meta.insert("schema", SCHEMA_VERSION)?;
                }
                Some(found) if found > SCHEMA_VERSION => {
                    return Err(MetaError::Schema {
                        found,
                        supported: SCHEMA_VERSION,
                    });
                }
                Some(_) => {}
            }
            // Created here so that read transactions always find them.
            tx.open_table(BLOBS)?;
            tx.open_table(PATHS)?;
            tx.open_table(TOKENS)?;
            tx.open_table(TOKEN_IDS)?;
        }
        tx.commit()?;
        let known = PathFilter::default();
        known.note_all::<MetaError>(&db.begin_read()?, PATHS)?;
        Ok(CacheDb {
            db,
            generation: std::sync::atomic::AtomicU64::new(0),
            known,
        })
    }

    fn may_have(&self, hash_part: &str) -> bool {
        self.known.may_have(hash_part)
    }

    fn note_path(&self, hash_part: &str) {
        self.known.note(hash_part);
    }

    /// A number that changes after every write this database commits. Read it before
    /// a lookup to tag what the lookup found (see `cache-server`'s narinfo cache).
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Records a blob, replacing any record of the same file hash.
    pub fn put_blob(&self, rec: &BlobRecord) -> Result<(), MetaError> {
        let value = encode(rec);
        self.write(|tx| {
            tx.open_table(BLOBS)?
                .insert(rec.file_hash.digest(), value.as_slice())?;
            Ok(())
        })
    }

    pub fn get_blob(&self, file_hash: &Hash) -> Result<Option<BlobRecord>, MetaError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(BLOBS)?;
        let Some(value) = table.get(file_hash.digest())? else {
            return Ok(None);
        };
        decode("blob", value.value()).map(Some)
    }

    /// Records a path under its hash part, replacing any record of the same path.
    pub fn put_path(&self, rec: &PathRecord) -> Result<(), MetaError> {
        let key = rec.store_path.hash_part();
        let value = encode(rec);
        self.note_path(&key);
        self.write(|tx| {
            tx.open_table(PATHS)?
                .insert(key.as_str(), value.as_slice())?;
            Ok(())
        })
    }

    /// Records a blob and the path it holds in one durable transaction: an upload that
    /// arrived with its metadata (an upload session) becomes visible whole or not at all.
    pub fn put_blob_and_path(&self, blob: &BlobRecord, path: &PathRecord) -> Result<(), MetaError> {
        let blob_value = encode(blob);
        let key = path.store_path.hash_part();
        let path_value = encode(path);
        self.note_path(&key);
        self.write(|tx| {
            tx.open_table(BLOBS)?
                .insert(blob.file_hash.digest(), blob_value.as_slice())?;
            tx.open_table(PATHS)?
                .insert(key.as_str(), path_value.as_slice())?;
            Ok(())
        })
    }

    pub fn get_path(&self, hash_part: &str) -> Result<Option<PathRecord>, MetaError> {
        if !self.may_have(hash_part) {
            return Ok(None);
        }
        let tx = self.db.begin_read()?;
        let table = tx.open_table(PATHS)?;
        let Some(value) = table.get(hash_part)? else {
            return Ok(None);
        };
        decode("path", value.value()).map(Some)
    }

    pub fn has_path(&self, hash_part: &str) -> Result<bool, MetaError> {
        if !self.may_have(hash_part) {
            return Ok(false);
        }
        let tx = self.db.begin_read()?;
        let table = tx.open_table(PATHS)?;
        Ok(table.get(hash_part)?.is_some())
    }

    /// The hash parts (in the order given) that have no path record, all looked up in
    /// one read transaction.
    pub fn missing(&self, hash_parts: &[&str]) -> Result<Vec<String>, MetaError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(PATHS)?;
        let mut out = Vec::new();
        for &h in hash_parts {
            if !self.may_have(h) || table.get(h)?.is_none() {
                out.push(h.to_string());
            }
        }
        Ok(out)
    }

    /// How many blobs are recorded and their stored (compressed) bytes. Reads every
    /// blob record: for status reports, not for request paths.
    pub fn blob_stats(&self) -> Result<(u64, u64), MetaError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(BLOBS)?;
        let (mut count, mut bytes) = (0u64, 0u64);
        for entry in table.iter()? {
            let (_, value) = entry?;
            let rec: BlobRecord = decode("blob", value.value())?;
            count += 1;
            bytes += rec.file_size;
        }
        Ok((count, bytes))
    }

    /// Every record of `table`, decoded, in key order.
    fn records<K: redb::Key + 'static, T: DeserializeOwned>(
        &self,
        table: TableDefinition<K, &'static [u8]>,
        what: &'static str,
    ) -> Result<Vec<T>, MetaError> {
        let tx = self.db.begin_read()?;
        let mut out = Vec::new();
        for entry in tx.open_table(table)?.iter()? {
            out.push(decode(what, entry?.1.value())?);
        }
        Ok(out)
    }

    /// Every blob record, in file hash order.
    pub fn blobs(&self) -> Result<Vec<BlobRecord>, MetaError> {
        self.records(BLOBS, "blob")
    }

    /// Every path record, in hash part order.
    pub fn paths(&self) -> Result<Vec<PathRecord>, MetaError> {
        self.records(PATHS, "path")
    }

    pub fn path_count(&self) -> Result<u64, MetaError> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(PATHS)?.len()?)
    }

    /// Stores a token. A record with the same id or the same secret hash is replaced,
    /// so each id names one secret and each secret one id.
    pub fn put_token(&self, t: &TokenRecord) -> Result<(), MetaError> {
        let value = encode(t);
        self.write(|tx| {
            let mut tokens = tx.open_table(TOKENS)?;
            let mut ids = tx.open_table(TOKEN_IDS)?;
            let old_secret = ids.get(t.id.as_str())?.map(|v| v.value().to_vec());
            if let Some(old) = old_secret.filter(|old| old[..] != t.secret_hash[..]) {
                tokens.remove(old.as_slice())?;
            }
            let old_record = tokens
                .get(&t.secret_hash[..])?
                .map(|v| decode::<TokenRecord>("token", v.value()))
                .transpose()?;
            if let Some(old) = old_record.filter(|old| old.id != t.id) {
                ids.remove(old.id.as_str())?;
            }
            tokens.insert(&t.secret_hash[..], value.as_slice())?;
            ids.insert(t.id.as_str(), &t.secret_hash[..])?;
            Ok(())
        })
    }

    /// The token whose text hashes to `h`, revoked or expired ones included: the caller
    /// decides what those may do.
    pub fn token_by_secret_hash(&self, h: &[u8; 32]) -> Result<Option<TokenRecord>, MetaError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(TOKENS)?;
        let Some(value) = table.get(&h[..])? else {
            return Ok(None);
        };
        decode("token", value.value()).map(Some)
    }

    /// Every token, oldest first.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>, MetaError> {
        let mut out: Vec<TokenRecord> = self.records(TOKENS, "token")?;
        out.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        Ok(out)
    }

    /// Marks the token `id` revoked; `false` when there is no such token. Revoking a
    /// revoked token is a no-op that returns `true`.
    pub fn revoke_token(&self, id: &str) -> Result<bool, MetaError> {
        self.write(|tx| {
            let mut tokens = tx.open_table(TOKENS)?;
            let ids = tx.open_table(TOKEN_IDS)?;
            let Some(secret) = ids.get(id)?.map(|v| v.value().to_vec()) else {
                return Ok(false);
            };
            let record = tokens
                .get(secret.as_slice())?
                .map(|v| decode::<TokenRecord>("token", v.value()))
                .transpose()?;
            let Some(mut record) = record else {
                return Ok(false);
            };
            if !record.revoked {
                record.revoked = true;
                tokens.insert(secret.as_slice(), encode(&record).as_slice())?;
            }
            Ok(true)
        })
    }

    /// Runs `f` in a write transaction and commits it durably; an error aborts it.
    fn write<T>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, MetaError>,
    ) -> Result<T, MetaError> {
        let tx = self.db.begin_write()?;
        let out = f(&tx)?;
        tx.commit()?;
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(out)
    }
}

fn encode(rec: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(rec).expect("records hold strings, numbers and lists only")
}

fn decode<T: DeserializeOwned>(table: &'static str, bytes: &[u8]) -> Result<T, MetaError> {
    serde_json::from_slice(bytes).map_err(|source| MetaError::Corrupt { table, source })
}
