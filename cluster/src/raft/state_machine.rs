//! The state machine over `raft-state.redb`, and its snapshots.
//!
//! Layout of the state directory:
//!
//! - `raft-state.redb`: the tables of [`crate::state`], plus the last applied log id and
//!   membership in `meta`;
//! - `snapshots/current.snap`: the latest snapshot ([`super::snapshot`] format);
//! - `snapshots/*.tmp`, `raft-state.redb.install`: work in progress, deleted at open.
//!
//! Each `apply` call is one redb transaction: the records, the last applied log id and
//! the membership move together, so a restart resumes exactly after the last applied
//! entry that reached the disk (batches are fsynced at most a second apart; see
//! [`DURABLE_EVERY`]). A snapshot is built from one read transaction (a consistent view,
//! while applies go on) streamed into a file. Installing one streams it into a fresh
//! database file, which then replaces the old one by rename: a crash midway leaves the
//! old state and the new `current.snap`, from which openraft reinstalls at start.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use parking_lot::Mutex;
use redb::{Database, Durability, ReadableDatabase, WriteTransaction};
use tracing::info;

use super::snapshot::{read_meta, SnapshotReader, SnapshotWriter};
use super::{
    applied_state, applied_state_in, Entry, LogId, Snapshot, SnapshotFile, SnapshotMeta,
    StoredMembership, TypeConfig, LAST_APPLIED_KEY, MEMBERSHIP_KEY,
};
use crate::command::{Applied, Response};
use crate::error::{blocking, encode, RaftStoreError};
use crate::state::{self, ClusterState, HolderRule, SharedDb, StateRecord, META};

const STATE_FILE: &str = "raft-state.redb";
const INSTALL_FILE: &str = "raft-state.redb.install";
const SNAPSHOT_DIR: &str = "snapshots";
const CURRENT_SNAPSHOT: &str = "current.snap";
/// Records per transaction while installing a snapshot (all but the last unsynced).
const INSTALL_BATCH: usize = 4096;

/// The Raft state machine over `raft-state.redb`. See the module docs for the layout.
pub struct StateMachineStore {
    dir: PathBuf,
    db: SharedDb,
    rule: HolderRule,
    /// Serialises replacing `current.snap` (builds run beside applies and installs).
    snapshot_lock: Arc<Mutex<()>>,
    /// When an applied batch was last committed durably (see [`DURABLE_EVERY`]).
    last_durable: std::time::Instant,
}

/// Applied batches are committed without an fsync, and durably at most this long
/// apart. The Raft log is the durable record: after a crash the state machine reopens
/// at its last durable commit, openraft installs the current snapshot if that is newer,
/// and re-applies the committed entries after it (every command is idempotent). This
/// saves an fsync per batch on every node.
const DURABLE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl fmt::Debug for StateMachineStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateMachineStore")
            .field("dir", &self.dir)
            .field("rule", &self.rule)
            .finish_non_exhaustive()
    }
}

impl StateMachineStore {
    /// The state database's file name inside the state directory.
    pub const FILE: &'static str = STATE_FILE;

    /// Opens the state machine in `dir` (creating it if needed), deleting what an
    /// interrupted snapshot build or install left behind. `rule` decides how many
    /// holders a path's blob needs; every node of a cluster must use the same rule.
    pub fn open(dir: &Path, rule: HolderRule) -> Result<Self, RaftStoreError> {
        let snapshots = dir.join(SNAPSHOT_DIR);
        fs::create_dir_all(&snapshots)?;
        remove_if_exists(&dir.join(INSTALL_FILE))?;
        for entry in fs::read_dir(&snapshots)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                remove_if_exists(&path)?;
            }
        }
        let db = Database::create(dir.join(STATE_FILE))?;
        state::prepare(&db)?;
        Ok(StateMachineStore {
            dir: dir.to_path_buf(),
            db: SharedDb::new(db)?,
            rule,
            snapshot_lock: Arc::new(Mutex::new(())),
            last_durable: std::time::Instant::now(),
        })
    }

    /// Read access to the applied state; stays valid across snapshot installs.
    pub fn state(&self) -> ClusterState {
        ClusterState::new(self.db.clone())
    }

    /// The holder rule this state machine applies paths with.
    pub fn rule(&self) -> HolderRule {
        self.rule
    }

    fn snapshot_dir(&self) -> PathBuf {
        self.dir.join(SNAPSHOT_DIR)
    }
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Deletes a work file unless it was kept.
struct TempPath(Option<PathBuf>);

impl TempPath {
    fn new(path: PathBuf) -> Self {
        TempPath(Some(path))
    }
    fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new(""))
    }
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_file(p);
        }
    }
}

fn temp_name(prefix: &str) -> String {
    format!("{prefix}-{:016x}.tmp", rand::random::<u64>())
}

fn put_meta(
    tx: &WriteTransaction,
    last: &Option<LogId>,
    membership: &StoredMembership,
) -> Result<(), RaftStoreError> {
    let mut meta = tx.open_table(META)?;
    meta.insert(
        LAST_APPLIED_KEY,
        encode("last applied log id", last)?.as_slice(),
    )?;
    meta.insert(MEMBERSHIP_KEY, encode("membership", membership)?.as_slice())?;
    Ok(())
}

/// Applies `entries` in one transaction (fsynced when `durable`); one response per entry.
fn apply_batch(
    db: &SharedDb,
    rule: HolderRule,
    entries: &[Entry],
    durable: bool,
) -> Result<Vec<Response>, RaftStoreError> {
    let mut tx = db.current().begin_write()?;
    if !durable {
        tx.set_durability(Durability::None)?;
    }
    let (mut last, mut membership) = applied_state_in(&tx.open_table(META)?)?;
    let mut voters = membership.voter_ids().count();
    let mut responses = Vec::with_capacity(entries.len());
    for entry in entries {
        let response = match &entry.payload {
            EntryPayload::Blank => Ok(Applied::Nothing),
            EntryPayload::Normal(cmd) => {
                if let Some(hash_part) = cmd.path_hash_part() {
                    db.known().note(&hash_part);
                }
                state::apply_command(&tx, cmd, entry.log_id.index, rule.required(voters))?
            }
            EntryPayload::Membership(m) => {
                membership = StoredMembership::new(Some(entry.log_id), m.clone());
                voters = membership.voter_ids().count();
                Ok(Applied::Nothing)
            }
        };
        responses.push(response);
        last = Some(entry.log_id);
    }
    put_meta(&tx, &last, &membership)?;
    tx.commit()?;
    Ok(responses)
}

/// Builds a snapshot of `db` into `snap_dir` and makes it current unless a newer one
/// already is.
fn build(db: &Database, snap_dir: &Path, lock: &Mutex<()>) -> Result<Snapshot, RaftStoreError> {
    let tx = db.begin_read()?;
    let (last_log_id, last_membership) = applied_state(&tx)?;
    let meta = SnapshotMeta {
        last_log_id,
        last_membership,
    };
    let tmp = TempPath::new(snap_dir.join(temp_name("build")));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(tmp.path())?;
    let mut w = SnapshotWriter::new(file, &meta)?;
    state::for_each_record(&tx, |r| w.record(r))?;
    let file = w.finish()?;
    drop(tx);
    {
        let _guard = lock.lock();
        let current = snap_dir.join(CURRENT_SNAPSHOT);
        let newer_exists = match File::open(&current) {
            Ok(mut f) => read_meta(&mut f)?.last_log_id > meta.last_log_id,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(e.into()),
        };
        if !newer_exists {
            fs::rename(tmp.path(), &current)?;
            tmp.keep();
            sync_dir(snap_dir)?;
        }
        // Otherwise the open file outlives its deleted name and is returned as is.
    }
    info!(last_log_id = ?meta.last_log_id, "built raft snapshot");
    Ok(Snapshot {
        meta,
        snapshot: SnapshotFile::from_file(file),
    })
}

/// Saves the snapshot in `src` as current and replaces the state with its contents.
fn install(
    dir: &Path,
    shared: &SharedDb,
    lock: &Mutex<()>,
    meta: &SnapshotMeta,
    src: SnapshotFile,
) -> Result<(), RaftStoreError> {
    let snap_dir = dir.join(SNAPSHOT_DIR);
    let mut src = src.into_file()?;
    let tmp_snap = TempPath::new(snap_dir.join(temp_name("incoming")));
    let mut copy = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(tmp_snap.path())?;
    io::copy(&mut src, &mut copy)?;
    copy.sync_all()?;
    copy.seek(SeekFrom::Start(0))?;

    let (mut reader, file_meta) = SnapshotReader::new(&mut copy)?;
    if &file_meta != meta {
        return Err(RaftStoreError::BadSnapshot(
            "the file's meta differs from the snapshot's",
        ));
    }
    let install_path = TempPath::new(dir.join(INSTALL_FILE));
    remove_if_exists(install_path.path())?;
    let fresh = Database::create(install_path.path())?;
    state::prepare(&fresh)?;
    loop {
        let mut tx = fresh.begin_write()?;
        tx.set_durability(Durability::None)?;
        let mut n = 0;
        let mut end = false;
        while n < INSTALL_BATCH {
            let Some(record) = reader.next_record()? else {
                end = true;
                break;
            };
            match record {
                StateRecord::Path(p) => state::put_path_raw(&tx, &p)?,
                StateRecord::Blob(b) => state::put_blob_raw(&tx, &b)?,
                StateRecord::Token(t) => state::put_token(&tx, &t)?,
                StateRecord::Pin(p) => state::put_pin(&tx, &p)?,
                StateRecord::Retention(s) => state::put_retention(&tx, &s)?,
                StateRecord::Access { hash_part, at } => {
                    state::put_access_raw(&tx, &hash_part, at)?
                }
            }
            n += 1;
        }
        tx.commit()?;
        if end {
            break;
        }
    }
    let tx = fresh.begin_write()?;
    put_meta(&tx, &meta.last_log_id, &meta.last_membership)?;
    tx.commit()?;

    let _guard = lock.lock();
    // The snapshot first: if we stop between the renames, the old state is behind
    // `current.snap` and openraft installs it again at start.
    fs::rename(tmp_snap.path(), snap_dir.join(CURRENT_SNAPSHOT))?;
    tmp_snap.keep();
    sync_dir(&snap_dir)?;
    fs::rename(install_path.path(), dir.join(STATE_FILE))?;
    install_path.keep();
    sync_dir(dir)?;
    shared.replace(fresh)?;
    info!(last_log_id = ?meta.last_log_id, "installed raft snapshot");
    Ok(())
}

fn current_snapshot(snap_dir: &Path) -> Result<Option<Snapshot>, RaftStoreError> {
    let mut file = match File::open(snap_dir.join(CURRENT_SNAPSHOT)) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let meta = read_meta(&mut file)?;
    Ok(Some(Snapshot {
        meta,
        snapshot: SnapshotFile::from_file(file),
    }))
}

/// Builds snapshots from the state database as it is when the build starts.
pub struct StateSnapshotBuilder {
    db: Arc<Database>,
    snap_dir: PathBuf,
    lock: Arc<Mutex<()>>,
}

impl RaftSnapshotBuilder<TypeConfig> for StateSnapshotBuilder {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let db = self.db.clone();
        let snap_dir = self.snap_dir.clone();
        let lock = self.lock.clone();
        Ok(blocking(move || build(&db, &snap_dir, &lock)).await?)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = StateSnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let db = self.db.current();
        Ok(blocking(move || applied_state(&db.begin_read()?)).await?)
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut batch = Vec::new();
        let mut responders = Vec::new();
        let mut failed = None;
        while let Some(item) = entries.next().await {
            match item {
                Ok((entry, responder)) => {
                    batch.push(entry);
                    responders.push(responder);
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if !batch.is_empty() {
            let db = self.db.clone();
            let rule = self.rule;
            let durable = self.last_durable.elapsed() >= DURABLE_EVERY;
            if durable {
                self.last_durable = std::time::Instant::now();
            }
            let responses = blocking(move || apply_batch(&db, rule, &batch, durable)).await?;
            self.db.bump();
            // Answered after the commit: a client never hears of a change a crash
            // could still take back from this state machine.
            for (responder, response) in responders.into_iter().zip(responses) {
                if let Some(r) = responder {
                    r.send(response);
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        StateSnapshotBuilder {
            db: self.db.current(),
            snap_dir: self.snapshot_dir(),
            lock: self.snapshot_lock.clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotFile,
    ) -> Result<(), io::Error> {
        let dir = self.dir.clone();
        let shared = self.db.clone();
        let lock = self.snapshot_lock.clone();
        let meta = meta.clone();
        Ok(blocking(move || install(&dir, &shared, &lock, &meta, snapshot)).await?)
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let snap_dir = self.snapshot_dir();
        Ok(blocking(move || current_snapshot(&snap_dir)).await?)
    }
}

#[cfg(test)]
mod tests;
