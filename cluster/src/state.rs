//! The state machine's tables in `raft-state.redb`, the rules that apply a [`Command`]
//! to them, and [`ClusterState`], the read API the HTTP layer uses.
//!
//! | table | key | value (JSON) |
//! |---|---|---|
//! | `meta` | `"schema"`, `"last_applied"`, `"membership"` | format version, Raft log id, Raft membership |
//! | `paths` | store path hash part (32 chars) | [`PathRecord`] |
//! | `blobs` | sha256 digest of the file (32 bytes) | [`BlobEntry`] (record, holders, refcount) |
//! | `tokens` | sha256 of the token text (32 bytes) | [`TokenRecord`] |
//! | `token_ids` | token id | sha256 of the token text (raw bytes) |
//! | `pins` | store path hash part | [`PinRecord`] |
//! | `settings` | `"retention"` | [`RetentionSettings`] |
//! | `access` | store path hash part | when the path was last served (Unix seconds) |
//! | `referrers` (multimap) | hash part of a reference | hash parts of the paths naming it |
//!
//! `referrers` is derived from the path records (kept in step by every write of a path,
//! rebuilt when a schema 1 database is opened); GC asks it which paths still need one.
//!
//! Nothing here knows openraft: the Raft side (log ids, membership, snapshots) lives in
//! [`crate::raft`], which calls `apply_command` inside its own write transaction.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use nix_formats::Hash;
use parking_lot::RwLock;
use redb::{
    Database, MultimapTableDefinition, ReadTransaction, ReadableDatabase, ReadableMultimapTable,
    ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction,
};
use store::meta::{BlobRecord, PathFilter, PathRecord, TokenRecord};

use crate::command::{
    Applied, BlobEntry, Command, GcVictim, NodeId, PinRecord, Rejection, Response,
    RetentionSettings,
};
use crate::error::{decode, encode, RaftStoreError};

/// The format version of `raft-state.redb` this code reads and writes. Version 1 had no
/// `access` and `referrers` tables; opening it builds them.
pub const STATE_SCHEMA_VERSION: u64 = 2;

pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
pub(crate) const PATHS: TableDefinition<&str, &[u8]> = TableDefinition::new("paths");
pub(crate) const BLOBS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("blobs");
pub(crate) const TOKENS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("tokens");
pub(crate) const TOKEN_IDS: TableDefinition<&str, &[u8]> = TableDefinition::new("token_ids");
pub(crate) const PINS: TableDefinition<&str, &[u8]> = TableDefinition::new("pins");
pub(crate) const SETTINGS: TableDefinition<&str, &[u8]> = TableDefinition::new("settings");
pub(crate) const ACCESS: TableDefinition<&str, u64> = TableDefinition::new("access");
pub(crate) const REFERRERS: MultimapTableDefinition<&str, &str> =
    MultimapTableDefinition::new("referrers");

const RETENTION_KEY: &str = "retention";

/// How many registered holders a blob needs before a path naming it is accepted.
///
/// Every registered holder counts, whether or not it is still a member: removing a node
/// from the cluster must unregister its copies (and repair make new ones) first.
///
/// The rule is part of what every node applies, so **every node of a cluster must be
/// opened with the same rule**: two nodes with different rules would disagree about
/// which paths exist. It is computed from replicated state only (the membership in
/// force when the entry is applied), never from anything local.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HolderRule {
    /// `min(n, voters)`, and at least 1: a single-node cluster (the default deployment)
    /// accepts paths with one holder, a cluster of three or more needs `n`. Counted
    /// against the voters of the membership in force when the entry is applied (during
    /// a joint change, the voters of both configurations).
    UpToVoters(usize),
    /// Exactly this many, whatever the membership (at least 1).
    Exactly(usize),
}

impl Default for HolderRule {
    /// `UpToVoters(2)`: invariant 1 of the design (≥2 replicas) wherever the cluster
    /// has two voters to hold them.
    fn default() -> Self {
        HolderRule::UpToVoters(2)
    }
}

impl HolderRule {
    /// The holders a path's blob needs when the membership has `voters` voters.
    pub fn required(self, voters: usize) -> usize {
        match self {
            HolderRule::UpToVoters(n) => n.min(voters).max(1),
            HolderRule::Exactly(n) => n.max(1),
        }
    }
}

/// Creates the tables (so read transactions always find them) and checks or writes the
/// schema version.
pub(crate) fn prepare(db: &Database) -> Result<(), RaftStoreError> {
    let tx = db.begin_write()?;
    {
        let mut meta = tx.open_table(META)?;
        let found = match meta.get("schema")? {
            Some(v) => Some(decode::<u64>("schema", v.value())?),
            None => None,
        };
        let rebuild = match found {
            None => false,
            Some(found) if found > STATE_SCHEMA_VERSION => {
                return Err(RaftStoreError::Schema {
                    found,
                    supported: STATE_SCHEMA_VERSION,
                });
            }
            Some(found) => found < STATE_SCHEMA_VERSION,
        };
        if found != Some(STATE_SCHEMA_VERSION) {
            meta.insert(
                "schema",
                encode("schema", &STATE_SCHEMA_VERSION)?.as_slice(),
            )?;
        }
        tx.open_table(PATHS)?;
        tx.open_table(BLOBS)?;
        tx.open_table(TOKENS)?;
        tx.open_table(TOKEN_IDS)?;
        tx.open_table(PINS)?;
        tx.open_table(SETTINGS)?;
        tx.open_table(ACCESS)?;
        tx.open_multimap_table(REFERRERS)?;
        if rebuild {
            let paths: Vec<PathRecord> = tx
                .open_table(PATHS)?
                .iter()?
                .map(|e| decode("path", e?.1.value()))
                .collect::<Result<_, _>>()?;
            for p in &paths {
                index_references(&tx, p)?;
            }
        }
    }
    tx.commit()?;
    Ok(())
}

/// Applies one command inside `tx`. `index` is the entry's log index (a blob entry's
/// generation); `required` the holder count a path's blob needs. Errors are storage
/// failures only; refusals are `Ok(Err(Rejection))` and leave the state unchanged.
pub(crate) fn apply_command(
    tx: &WriteTransaction,
    cmd: &Command,
    index: u64,
    required: usize,
) -> Result<Response, RaftStoreError> {
    match cmd {
        Command::PutPath { path, requires } => {
            put_path_checked(tx, path, requires, index, required)
        }
        Command::RegisterHolder { blob, node, at } => register_holder(tx, blob, *node, *at, index),
        Command::CommitUpload {
            blob,
            holders,
            at,
            path,
            requires,
        } => {
            let mut last = Ok(Applied::Nothing);
            for node in holders {
                last = register_holder(tx, blob, *node, *at, index)?;
                if last.is_err() {
                    return Ok(last);
                }
            }
            match path {
                Some(path) => put_path_checked(tx, path, requires, index, required),
                None => Ok(last),
            }
        }
        Command::UnregisterHolder {
            file_hash,
            node,
            only_if_unreferenced,
        } => {
            let mut blobs = tx.open_table(BLOBS)?;
            let key = file_hash.digest();
            let existing = match blobs.get(key)? {
                Some(v) => Some(decode::<BlobEntry>("blob", v.value())?),
                None => None,
            };
            let Some(mut entry) = existing else {
                return Ok(Ok(Applied::HolderUnregistered {
                    holders: 0,
                    blob_forgotten: false,
                }));
            };
            if *only_if_unreferenced && entry.refcount > 0 {
                return Ok(Err(Rejection::StillReferenced {
                    file_hash: file_hash.to_string(),
                }));
            }
            if entry.holders.remove(node).is_some() {
                entry.generation = index;
            }
            let holders = entry.holders.len();
            let forget = holders == 0 && entry.refcount == 0;
            if forget {
                blobs.remove(key)?;
            } else {
                blobs.insert(key, encode("blob", &entry)?.as_slice())?;
            }
            Ok(Ok(Applied::HolderUnregistered {
                holders,
                blob_forgotten: forget,
            }))
        }
        Command::PutToken { token } => {
            put_token(tx, token)?;
            Ok(Ok(Applied::TokenStored))
        }
        Command::RevokeToken { id } => {
            let mut tokens = tx.open_table(TOKENS)?;
            let ids = tx.open_table(TOKEN_IDS)?;
            let Some(secret) = ids.get(id.as_str())?.map(|v| v.value().to_vec()) else {
                return Ok(Ok(Applied::TokenRevoked { found: false }));
            };
            let record = match tokens.get(secret.as_slice())? {
                Some(v) => Some(decode::<TokenRecord>("token", v.value())?),
                None => None,
            };
            let Some(mut record) = record else {
                return Ok(Ok(Applied::TokenRevoked { found: false }));
            };
            if !record.revoked {
                record.revoked = true;
                tokens.insert(secret.as_slice(), encode("token", &record)?.as_slice())?;
            }
            Ok(Ok(Applied::TokenRevoked { found: true }))
        }
        Command::Pin { pin } => {
            put_pin(tx, pin)?;
            Ok(Ok(Applied::Pinned))
        }
        Command::Unpin { hash_part } => {
            let was_pinned = tx.open_table(PINS)?.remove(hash_part.as_str())?.is_some();
            Ok(Ok(Applied::Unpinned { was_pinned }))
        }
        Command::SetRetention { settings } => {
            put_retention(tx, settings)?;
            Ok(Ok(Applied::RetentionSet))
        }
        Command::Touch { hash_parts, at } => {
            let paths = tx.open_table(PATHS)?;
            let mut access = tx.open_table(ACCESS)?;
            let mut n = 0;
            for h in hash_parts {
                if paths.get(h.as_str())?.is_none() {
                    continue;
                }
                n += 1;
                let old = access.get(h.as_str())?.map(|v| v.value());
                if old.is_none_or(|old| old < *at) {
                    access.insert(h.as_str(), *at)?;
                }
            }
            Ok(Ok(Applied::Touched { paths: n }))
        }
        Command::DeletePaths { victims, at } => delete_paths(tx, victims, *at, index),
    }
}

/// The stamp GC plans with: the later of a path's registration and its last access.
pub(crate) fn gc_stamp(path: &PathRecord, access: Option<u64>) -> u64 {
    path.registered.max(access.unwrap_or(0))
}

/// The other paths a path names (itself left out).
fn other_references(path: &PathRecord) -> impl Iterator<Item = String> + '_ {
    let me = path.store_path.hash_part();
    path.references
        .iter()
        .map(|r| r.hash_part())
        .filter(move |h| *h != me)
}

/// Adds `path` as a referrer of each path it names.
fn index_references(tx: &WriteTransaction, path: &PathRecord) -> Result<(), RaftStoreError> {
    let mut referrers = tx.open_multimap_table(REFERRERS)?;
    let me = path.store_path.hash_part();
    for r in other_references(path) {
        referrers.insert(r.as_str(), me.as_str())?;
    }
    Ok(())
}

/// Removes `path` as a referrer of each path it names.
fn unindex_references(tx: &WriteTransaction, path: &PathRecord) -> Result<(), RaftStoreError> {
    let mut referrers = tx.open_multimap_table(REFERRERS)?;
    let me = path.store_path.hash_part();
    for r in other_references(path) {
        referrers.remove(r.as_str(), me.as_str())?;
    }
    Ok(())
}

/// Takes one reference off a blob; the last one marks it unreferenced at `at`, and a
/// blob with neither paths nor holders is forgotten.
fn release_blob(
    tx: &WriteTransaction,
    file_hash: &Hash,
    at: u64,
    index: u64,
) -> Result<(), RaftStoreError> {
    let mut blobs = tx.open_table(BLOBS)?;
    let key = file_hash.digest();
    let entry = match blobs.get(key)? {
        Some(v) => Some(decode::<BlobEntry>("blob", v.value())?),
        None => None,
    };
    let Some(mut e) = entry else {
        return Ok(());
    };
    e.refcount = e.refcount.saturating_sub(1);
    e.generation = index;
    if e.refcount == 0 {
        e.unreferenced_since = Some(at);
        if e.holders.is_empty() {
            blobs.remove(key)?;
            return Ok(());
        }
    }
    blobs.insert(key, encode("blob", &e)?.as_slice())?;
    Ok(())
}

/// [`Command::DeletePaths`].
fn delete_paths(
    tx: &WriteTransaction,
    victims: &[GcVictim],
    at: u64,
    index: u64,
) -> Result<Response, RaftStoreError> {
    let mut doomed: std::collections::BTreeMap<String, PathRecord> = Default::default();
    {
        let paths = tx.open_table(PATHS)?;
        let access = tx.open_table(ACCESS)?;
        let pins = tx.open_table(PINS)?;
        for v in victims {
            let Some(rec) = paths.get(v.hash_part.as_str())? else {
                continue;
            };
            let rec: PathRecord = decode("path", rec.value())?;
            let seen = access.get(v.hash_part.as_str())?.map(|a| a.value());
            if gc_stamp(&rec, seen) != v.stamp || pins.get(v.hash_part.as_str())?.is_some() {
                continue;
            }
            doomed.insert(v.hash_part.clone(), rec);
        }
    }
    // A victim that a staying path names stays too, and so, in turn, may what it names:
    // drop such victims until none is left.
    {
        let referrers = tx.open_multimap_table(REFERRERS)?;
        loop {
            let mut saved = Vec::new();
            for h in doomed.keys() {
                for r in referrers.get(h.as_str())? {
                    if !doomed.contains_key(r?.value()) {
                        saved.push(h.clone());
                        break;
                    }
                }
            }
            if saved.is_empty() {
                break;
            }
            for h in saved {
                doomed.remove(&h);
            }
        }
    }
    let deleted = doomed.len();
    let mut paths = tx.open_table(PATHS)?;
    let mut access = tx.open_table(ACCESS)?;
    for (h, rec) in &doomed {
        paths.remove(h.as_str())?;
        access.remove(h.as_str())?;
        unindex_references(tx, rec)?;
        release_blob(tx, &rec.url_file_hash, at, index)?;
    }
    Ok(Ok(Applied::PathsDeleted {
        deleted,
        kept: victims.len() - deleted,
    }))
}

/// [`Command::RegisterHolder`]: records that `node` holds a verified copy of `blob`.
fn register_holder(
    tx: &WriteTransaction,
    blob: &BlobRecord,
    node: NodeId,
    at: u64,
    index: u64,
) -> Result<Response, RaftStoreError> {
    let mut blobs = tx.open_table(BLOBS)?;
    let key = blob.file_hash.digest();
    let existing = match blobs.get(key)? {
        Some(v) => Some(decode::<BlobEntry>("blob", v.value())?),
        None => None,
    };
    let mut entry = match existing {
        Some(e) => {
            let same = e.blob.file_size == blob.file_size
                && e.blob.compression == blob.compression
                && e.blob.nar_hash == blob.nar_hash
                && e.blob.nar_size == blob.nar_size;
            if !same {
                return Ok(Err(Rejection::BlobConflict {
                    file_hash: blob.file_hash.to_string(),
                }));
            }
            e
        }
        None => BlobEntry {
            blob: blob.clone(),
            holders: Default::default(),
            refcount: 0,
            generation: index,
            unreferenced_since: None,
        },
    };
    // A re-registration keeps the first time: the same command twice, or a
    // retried one, leaves the entry as it was.
    if let std::collections::btree_map::Entry::Vacant(v) = entry.holders.entry(node) {
        v.insert(at);
        entry.generation = index;
    }
    let holders = entry.holders.len();
    blobs.insert(key, encode("blob", &entry)?.as_slice())?;
    Ok(Ok(Applied::HolderRegistered { holders }))
}

fn put_path_checked(
    tx: &WriteTransaction,
    path: &PathRecord,
    requires: &[String],
    index: u64,
    required: usize,
) -> Result<Response, RaftStoreError> {
    let mut blobs = tx.open_table(BLOBS)?;
    let mut paths = tx.open_table(PATHS)?;
    for h in requires {
        if paths.get(h.as_str())?.is_none() {
            return Ok(Err(Rejection::MissingReference {
                hash_part: h.clone(),
            }));
        }
    }
    let file_hash = path.url_file_hash.to_string();
    let new_key = path.url_file_hash.digest();
    let blob = match blobs.get(new_key)? {
        Some(v) => decode::<BlobEntry>("blob", v.value())?,
        None => return Ok(Err(Rejection::UnknownBlob { file_hash })),
    };
    if blob.blob.nar_hash != path.nar_hash || blob.blob.nar_size != path.nar_size {
        return Ok(Err(Rejection::NarMismatch { file_hash }));
    }
    if blob.holders.len() < required {
        return Ok(Err(Rejection::TooFewHolders {
            file_hash,
            holders: blob.holders.len(),
            required,
        }));
    }
    let hash_part = path.store_path.hash_part();
    let old = match paths.get(hash_part.as_str())? {
        Some(v) => Some(decode::<PathRecord>("path", v.value())?),
        None => None,
    };
    // Refcounts move only when the blob a path names changes, so the same command
    // applied twice counts once.
    let old_blob = old
        .as_ref()
        .map(|o| o.url_file_hash.clone())
        .filter(|h| h != &path.url_file_hash);
    let newly_named = old.is_none() || old_blob.is_some();
    if newly_named {
        let mut blob = blob;
        blob.refcount += 1;
        blob.generation = index;
        blob.unreferenced_since = None;
        blobs.insert(new_key, encode("blob", &blob)?.as_slice())?;
    }
    paths.insert(hash_part.as_str(), encode("path", path)?.as_slice())?;
    drop((blobs, paths));
    if let Some(old_hash) = old_blob {
        release_blob(tx, &old_hash, path.registered, index)?;
    }
    if let Some(old) = &old {
        unindex_references(tx, old)?;
    }
    index_references(tx, path)?;
    Ok(Ok(Applied::PathStored {
        replaced: old.is_some(),
    }))
}

/// Stores a token so that each id names one secret and each secret one id.
pub(crate) fn put_token(tx: &WriteTransaction, t: &TokenRecord) -> Result<(), RaftStoreError> {
    let mut tokens = tx.open_table(TOKENS)?;
    let mut ids = tx.open_table(TOKEN_IDS)?;
    let old_secret = ids.get(t.id.as_str())?.map(|v| v.value().to_vec());
    if let Some(old) = old_secret.filter(|old| old[..] != t.secret_hash[..]) {
        tokens.remove(old.as_slice())?;
    }
    let old_record = match tokens.get(&t.secret_hash[..])? {
        Some(v) => Some(decode::<TokenRecord>("token", v.value())?),
        None => None,
    };
    if let Some(old) = old_record.filter(|old| old.id != t.id) {
        ids.remove(old.id.as_str())?;
    }
    tokens.insert(&t.secret_hash[..], encode("token", t)?.as_slice())?;
    ids.insert(t.id.as_str(), &t.secret_hash[..])?;
    Ok(())
}

pub(crate) fn put_pin(tx: &WriteTransaction, pin: &PinRecord) -> Result<(), RaftStoreError> {
    tx.open_table(PINS)?
        .insert(pin.hash_part.as_str(), encode("pin", pin)?.as_slice())?;
    Ok(())
}

pub(crate) fn put_retention(
    tx: &WriteTransaction,
    settings: &RetentionSettings,
) -> Result<(), RaftStoreError> {
    tx.open_table(SETTINGS)?
        .insert(RETENTION_KEY, encode("settings", settings)?.as_slice())?;
    Ok(())
}

/// Writes a path record as is (snapshot install: the snapshot was checked when built).
pub(crate) fn put_path_raw(tx: &WriteTransaction, path: &PathRecord) -> Result<(), RaftStoreError> {
    tx.open_table(PATHS)?.insert(
        path.store_path.hash_part().as_str(),
        encode("path", path)?.as_slice(),
    )?;
    index_references(tx, path)
}

/// Writes a path's recorded access as is (snapshot install).
pub(crate) fn put_access_raw(
    tx: &WriteTransaction,
    hash_part: &str,
    at: u64,
) -> Result<(), RaftStoreError> {
    tx.open_table(ACCESS)?.insert(hash_part, at)?;
    Ok(())
}

/// Writes a blob entry as is (snapshot install).
pub(crate) fn put_blob_raw(tx: &WriteTransaction, e: &BlobEntry) -> Result<(), RaftStoreError> {
    tx.open_table(BLOBS)?
        .insert(e.blob.file_hash.digest(), encode("blob", e)?.as_slice())?;
    Ok(())
}

/// One record of the state, as a snapshot carries it.
pub(crate) enum StateRecord {
    Path(PathRecord),
    Blob(BlobEntry),
    Token(TokenRecord),
    Pin(PinRecord),
    Retention(RetentionSettings),
    /// When a path was last served.
    Access {
        hash_part: String,
        at: u64,
    },
}

/// Visits every record of the state seen by `tx`, table by table in key order.
pub(crate) fn for_each_record(
    tx: &ReadTransaction,
    mut f: impl FnMut(StateRecord) -> Result<(), RaftStoreError>,
) -> Result<(), RaftStoreError> {
    for entry in tx.open_table(PATHS)?.iter()? {
        let (_, v) = entry?;
        f(StateRecord::Path(decode("path", v.value())?))?;
    }
    for entry in tx.open_table(BLOBS)?.iter()? {
        let (_, v) = entry?;
        f(StateRecord::Blob(decode("blob", v.value())?))?;
    }
    for entry in tx.open_table(TOKENS)?.iter()? {
        let (_, v) = entry?;
        f(StateRecord::Token(decode("token", v.value())?))?;
    }
    for entry in tx.open_table(PINS)?.iter()? {
        let (_, v) = entry?;
        f(StateRecord::Pin(decode("pin", v.value())?))?;
    }
    if let Some(v) = tx.open_table(SETTINGS)?.get(RETENTION_KEY)? {
        f(StateRecord::Retention(decode("settings", v.value())?))?;
    }
    for entry in tx.open_table(ACCESS)?.iter()? {
        let (k, v) = entry?;
        f(StateRecord::Access {
            hash_part: k.value().to_string(),
            at: v.value(),
        })?;
    }
    Ok(())
}

/// The state database, swappable as a whole when a snapshot is installed. Readers take
/// the current one and keep a consistent view for as long as they hold it.
///
/// `generation` moves after every committed change (an applied batch, an installed
/// snapshot): caches of rendered narinfos key on it.
///
/// `known` holds a fingerprint of every path's hash part, noted before the path is
/// committed and never dropped (a deleted path's only costs a read), so most misses
/// are answered without a read transaction.
#[derive(Clone)]
pub(crate) struct SharedDb {
    db: Arc<RwLock<Arc<Database>>>,
    generation: Arc<AtomicU64>,
    known: Arc<PathFilter>,
}

impl SharedDb {
    pub(crate) fn new(db: Database) -> Result<Self, RaftStoreError> {
        let known = PathFilter::default();
        known.note_all::<RaftStoreError>(&db.begin_read()?, PATHS)?;
        Ok(SharedDb {
            db: Arc::new(RwLock::new(Arc::new(db))),
            generation: Arc::new(AtomicU64::new(1)),
            known: Arc::new(known),
        })
    }

    pub(crate) fn current(&self) -> Arc<Database> {
        self.db.read().clone()
    }

    /// Swaps in an installed snapshot's database, its paths noted first.
    pub(crate) fn replace(&self, db: Database) -> Result<(), RaftStoreError> {
        self.known
            .note_all::<RaftStoreError>(&db.begin_read()?, PATHS)?;
        *self.db.write() = Arc::new(db);
        self.bump();
        Ok(())
    }

    pub(crate) fn known(&self) -> &PathFilter {
        &self.known
    }

    /// Called after a change is committed.
    pub(crate) fn bump(&self) {
        self.generation.fetch_add(1, Ordering::Release);
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

/// Read access to the replicated metadata as this node has applied it: what the HTTP
/// layer serves narinfos, NAR locations and token checks from. Cheap to clone; `Send +
/// Sync`.
///
/// Every method is one redb read transaction and blocks on disk: call it from
/// `spawn_blocking` on an async service. What it returns is this node's applied state,
/// which on a follower or a node in a minority partition may lag the leader: fine for a
/// narinfo hit, not for a confident 404 (confirm misses with the leader).
#[derive(Clone)]
pub struct ClusterState {
    db: SharedDb,
}

impl fmt::Debug for ClusterState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterState").finish_non_exhaustive()
    }
}

impl ClusterState {
    pub(crate) fn new(db: SharedDb) -> Self {
        ClusterState { db }
    }

    fn read(&self) -> Result<ReadTransaction, RaftStoreError> {
        Ok(self.db.current().begin_read()?)
    }

    /// The path whose store path has this hash part.
    pub fn path(&self, hash_part: &str) -> Result<Option<PathRecord>, RaftStoreError> {
        if !self.db.known().may_have(hash_part) {
            return Ok(None);
        }
        let tx = self.read()?;
        let table = tx.open_table(PATHS)?;
        let Some(v) = table.get(hash_part)? else {
            return Ok(None);
        };
        decode("path", v.value()).map(Some)
    }

    /// The hash parts (in the order given) that have no path record, all looked up in
    /// one read transaction.
    pub fn missing(&self, hash_parts: &[&str]) -> Result<Vec<String>, RaftStoreError> {
        let tx = self.read()?;
        let table = tx.open_table(PATHS)?;
        let mut out = Vec::new();
        for &h in hash_parts {
            if !self.db.known().may_have(h) || table.get(h)?.is_none() {
                out.push(h.to_string());
            }
        }
        Ok(out)
    }

    /// The blob with this file hash: its record, holders and refcount.
    pub fn blob(&self, file_hash: &Hash) -> Result<Option<BlobEntry>, RaftStoreError> {
        let tx = self.read()?;
        let table = tx.open_table(BLOBS)?;
        let Some(v) = table.get(file_hash.digest())? else {
            return Ok(None);
        };
        decode("blob", v.value()).map(Some)
    }

    /// The nodes holding the blob with this file hash (empty when it is unknown).
    pub fn holders(&self, file_hash: &Hash) -> Result<Vec<NodeId>, RaftStoreError> {
        Ok(self
            .blob(file_hash)?
            .map(|e| e.holders.into_keys().collect())
            .unwrap_or_default())
    }

    /// The token whose text hashes to `h`, revoked or expired ones included: the caller
    /// decides what those may do.
    pub fn token_by_secret_hash(
        &self,
        h: &[u8; 32],
    ) -> Result<Option<TokenRecord>, RaftStoreError> {
        let tx = self.read()?;
        let table = tx.open_table(TOKENS)?;
        let Some(v) = table.get(&h[..])? else {
            return Ok(None);
        };
        decode("token", v.value()).map(Some)
    }

    /// The pin of the path with this hash part.
    pub fn pin(&self, hash_part: &str) -> Result<Option<PinRecord>, RaftStoreError> {
        let tx = self.read()?;
        let table = tx.open_table(PINS)?;
        let Some(v) = table.get(hash_part)? else {
            return Ok(None);
        };
        decode("pin", v.value()).map(Some)
    }

    /// Every pin, by hash part.
    pub fn pins(&self) -> Result<Vec<PinRecord>, RaftStoreError> {
        let tx = self.read()?;
        let mut out = Vec::new();
        for entry in tx.open_table(PINS)?.iter()? {
            let (_, v) = entry?;
            out.push(decode("pin", v.value())?);
        }
        Ok(out)
    }

    /// The retention settings, if ever set.
    pub fn retention(&self) -> Result<Option<RetentionSettings>, RaftStoreError> {
        let tx = self.read()?;
        let table = tx.open_table(SETTINGS)?;
        let Some(v) = table.get(RETENTION_KEY)? else {
            return Ok(None);
        };
        decode("settings", v.value()).map(Some)
    }

    pub fn path_count(&self) -> Result<u64, RaftStoreError> {
        Ok(self.read()?.open_table(PATHS)?.len()?)
    }

    pub fn blob_count(&self) -> Result<u64, RaftStoreError> {
        Ok(self.read()?.open_table(BLOBS)?.len()?)
    }

    /// A number that moves whenever the applied state changes: a value read before a
    /// lookup names the state the lookup saw (or an older one).
    pub fn generation(&self) -> u64 {
        self.db.generation()
    }

    /// The number of blobs and the bytes of their files (stored size, one copy).
    pub fn blob_stats(&self) -> Result<(u64, u64), RaftStoreError> {
        let tx = self.read()?;
        let mut n = 0;
        let mut bytes = 0;
        for entry in tx.open_table(BLOBS)?.iter()? {
            let (_, v) = entry?;
            let e: BlobEntry = decode("blob", v.value())?;
            n += 1;
            bytes += e.blob.file_size;
        }
        Ok((n, bytes))
    }

    /// Every blob entry, in file hash order, from one consistent view (repair and
    /// status walk this). `f` returns false to stop early.
    pub fn for_each_blob(
        &self,
        mut f: impl FnMut(BlobEntry) -> bool,
    ) -> Result<(), RaftStoreError> {
        let tx = self.read()?;
        for entry in tx.open_table(BLOBS)?.iter()? {
            let (_, v) = entry?;
            if !f(decode("blob", v.value())?) {
                break;
            }
        }
        Ok(())
    }

    /// Every token record (revoked and expired ones included).
    pub fn tokens(&self) -> Result<Vec<TokenRecord>, RaftStoreError> {
        let tx = self.read()?;
        let mut out = Vec::new();
        for entry in tx.open_table(TOKENS)?.iter()? {
            let (_, v) = entry?;
            out.push(decode("token", v.value())?);
        }
        Ok(out)
    }

    /// Everything a GC plan is made from, read in one transaction: every path with its
    /// references, registration, last access and blob size; the pins; the retention
    /// settings (defaults when never set).
    pub fn gc_input(&self, now: u64) -> Result<crate::gc::GcInput, RaftStoreError> {
        let tx = self.read()?;
        let access = tx.open_table(ACCESS)?;
        let blobs = tx.open_table(BLOBS)?;
        let mut paths = Vec::new();
        for entry in tx.open_table(PATHS)?.iter()? {
            let (k, v) = entry?;
            let rec: PathRecord = decode("path", v.value())?;
            let file_size = match blobs.get(rec.url_file_hash.digest())? {
                Some(b) => decode::<BlobEntry>("blob", b.value())?.blob.file_size,
                None => 0,
            };
            paths.push(crate::gc::GcPath {
                hash_part: k.value().to_string(),
                references: other_references(&rec).collect(),
                registered: rec.registered,
                last_access: access.get(k.value())?.map(|a| a.value()),
                file_hash: rec.url_file_hash,
                file_size,
            });
        }
        let mut pins = std::collections::HashSet::new();
        for entry in tx.open_table(PINS)?.iter()? {
            pins.insert(entry?.0.value().to_string());
        }
        let retention = match tx.open_table(SETTINGS)?.get(RETENTION_KEY)? {
            Some(v) => decode("settings", v.value())?,
            None => RetentionSettings::default(),
        };
        Ok(crate::gc::GcInput {
            paths,
            pins,
            retention,
            now,
        })
    }

    /// When the path was last registered or served (the stamp GC plans with); `None`
    /// when there is no such path. One read transaction.
    pub fn last_used(&self, hash_part: &str) -> Result<Option<u64>, RaftStoreError> {
        let tx = self.read()?;
        let Some(v) = tx.open_table(PATHS)?.get(hash_part)? else {
            return Ok(None);
        };
        let rec: PathRecord = decode("path", v.value())?;
        let access = tx.open_table(ACCESS)?.get(hash_part)?.map(|a| a.value());
        Ok(Some(gc_stamp(&rec, access)))
    }

    /// When the path was last served, if recorded.
    pub fn last_access(&self, hash_part: &str) -> Result<Option<u64>, RaftStoreError> {
        Ok(self
            .read()?
            .open_table(ACCESS)?
            .get(hash_part)?
            .map(|v| v.value()))
    }

    /// The index of the last log entry applied to this state, if any.
    pub fn applied_index(&self) -> Result<Option<u64>, RaftStoreError> {
        let tx = self.read()?;
        crate::raft::applied_index(&tx)
    }
}
