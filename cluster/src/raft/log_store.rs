//! The Raft log, the vote and the committed log id, in one redb file (`raft-log.redb`).
//!
//! | table | key | value (JSON) |
//! |---|---|---|
//! | `log` | log index | the entry |
//! | `log_meta` | `"schema"`, `"vote"`, `"committed"`, `"last_purged"` | format version, vote, log ids |
//!
//! Every write is one redb transaction committed durably (fsynced) before the method
//! returns, so the flush callback of `append` is called right after the commit, and
//! writes are serialised because openraft awaits each one before the next. The one
//! exception is the committed log id: openraft saves it each time the commit index
//! moves (on every node, for every batch) only so that a restart can apply committed
//! entries before hearing from a leader. Any value it once had is a safe one to
//! restart from, so it is kept in memory and written by the next durable write (an
//! append, a vote) in that write's transaction: no transaction of its own. A crash
//! before then leaves an older committed id, and the leader commits the entries after
//! it again as usual.

use std::fmt;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Entry, LogId, TypeConfig, Vote};
use crate::error::{blocking, decode, encode, RaftStoreError};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const LOG_META: TableDefinition<&str, &[u8]> = TableDefinition::new("log_meta");

const SCHEMA_KEY: &str = "schema";
const VOTE_KEY: &str = "vote";
const COMMITTED_KEY: &str = "committed";
const LAST_PURGED_KEY: &str = "last_purged";

/// The format version of `raft-log.redb` this code reads and writes.
pub const LOG_SCHEMA_VERSION: u64 = 1;

/// The Raft log store over `raft-log.redb`. Clones share the database; a clone is also
/// the log reader openraft's replication tasks use.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    committed: Arc<CommittedCell>,
}

/// The committed id waiting for a durable write; the last clone of the store to go
/// writes it if none came (a clean shutdown keeps it).
struct CommittedCell {
    db: Arc<Database>,
    state: parking_lot::Mutex<Committed>,
}

impl Drop for CommittedCell {
    fn drop(&mut self) {
        if let Ok(Some(bytes)) = self.state.get_mut().take_unwritten() {
            if let Err(e) = write_meta(&self.db, &[(COMMITTED_KEY, &bytes)]) {
                tracing::warn!(error = %e, "could not write the committed log id on close");
            }
        }
    }
}

/// The committed log id as openraft last saved it, and whether the file has it yet.
#[derive(Default)]
struct Committed {
    latest: Option<Option<LogId>>,
    unwritten: bool,
}

impl Committed {
    /// The encoded id to write with the next durable transaction, if the file lacks it.
    fn take_unwritten(&mut self) -> Result<Option<Vec<u8>>, RaftStoreError> {
        if !self.unwritten {
            return Ok(None);
        }
        self.unwritten = false;
        Ok(Some(encode(COMMITTED_KEY, &self.latest.flatten())?))
    }
}

/// Writes `entries` into the meta table in one durable transaction.
fn write_meta(db: &Database, entries: &[(&str, &[u8])]) -> Result<(), RaftStoreError> {
    let tx = db.begin_write()?;
    {
        let mut meta = tx.open_table(LOG_META)?;
        for (key, bytes) in entries {
            meta.insert(*key, *bytes)?;
        }
    }
    tx.commit()?;
    Ok(())
}

impl fmt::Debug for LogStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogStore").finish_non_exhaustive()
    }
}

impl LogStore {
    /// The file name inside the data directory.
    pub const FILE: &'static str = "raft-log.redb";

    /// Opens `<dir>/raft-log.redb`, creating the directory and the file if needed.
    pub fn open(dir: &Path) -> Result<Self, RaftStoreError> {
        std::fs::create_dir_all(dir)?;
        let db = Database::create(dir.join(Self::FILE))?;
        let tx = db.begin_write()?;
        {
            let mut meta = tx.open_table(LOG_META)?;
            let found = match meta.get(SCHEMA_KEY)? {
                Some(v) => Some(decode::<u64>("schema", v.value())?),
                None => None,
            };
            match found {
                None => {
                    meta.insert(
                        SCHEMA_KEY,
                        encode("schema", &LOG_SCHEMA_VERSION)?.as_slice(),
                    )?;
                }
                Some(found) if found > LOG_SCHEMA_VERSION => {
                    return Err(RaftStoreError::Schema {
                        found,
                        supported: LOG_SCHEMA_VERSION,
                    });
                }
                Some(_) => {}
            }
            tx.open_table(LOG)?;
        }
        tx.commit()?;
        let db = Arc::new(db);
        Ok(LogStore {
            committed: Arc::new(CommittedCell {
                db: db.clone(),
                state: parking_lot::Mutex::default(),
            }),
            db,
        })
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        db: &Database,
        key: &'static str,
    ) -> Result<Option<T>, RaftStoreError> {
        let tx = db.begin_read()?;
        let meta = tx.open_table(LOG_META)?;
        match meta.get(key)? {
            Some(v) => decode(key, v.value()),
            None => Ok(None),
        }
    }

    /// Stores `value` under `key`, fsynced before returning.
    async fn put_meta<T: serde::Serialize>(
        &self,
        key: &'static str,
        value: &T,
    ) -> Result<(), RaftStoreError> {
        let bytes = encode(key, value)?;
        let committed = self.committed.state.lock().take_unwritten()?;
        let db = self.db.clone();
        blocking(move || match &committed {
            Some(c) => write_meta(&db, &[(key, &bytes), (COMMITTED_KEY, c)]),
            None => write_meta(&db, &[(key, &bytes)]),
        })
        .await
    }
}

/// `range` as `[start, end)`, `end` `None` for unbounded; `None` when it is empty.
fn bounds(range: &impl RangeBounds<u64>) -> Option<(u64, Option<u64>)> {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.checked_add(1),
        Bound::Excluded(&e) => Some(e),
        Bound::Unbounded => None,
    };
    match end {
        Some(e) if e <= start => None,
        _ => Some((start, end)),
    }
}

fn read_entries(db: &Database, start: u64, end: Option<u64>) -> Result<Vec<Entry>, RaftStoreError> {
    let tx = db.begin_read()?;
    let table = tx.open_table(LOG)?;
    let iter = match end {
        Some(end) => table.range(start..end)?,
        None => table.range(start..)?,
    };
    let mut out: Vec<Entry> = Vec::new();
    for item in iter {
        let (k, v) = item?;
        let index = k.value();
        let entry: Entry = decode("log entry", v.value())?;
        let expected = out.last().map(|e| e.log_id.index + 1);
        if entry.log_id.index != index || expected.is_some_and(|x| x != index) {
            return Err(RaftStoreError::LogHole { index });
        }
        out.push(entry);
    }
    Ok(out)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let Some((start, end)) = bounds(&range) else {
            return Ok(Vec::new());
        };
        let db = self.db.clone();
        Ok(blocking(move || read_entries(&db, start, end)).await?)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        let db = self.db.clone();
        Ok(blocking(move || LogStore::get_meta(&db, VOTE_KEY)).await?)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let db = self.db.clone();
        let state = blocking(move || {
            let tx = db.begin_read()?;
            let last_purged: Option<LogId> = match tx.open_table(LOG_META)?.get(LAST_PURGED_KEY)? {
                Some(v) => decode(LAST_PURGED_KEY, v.value())?,
                None => None,
            };
            let table = tx.open_table(LOG)?;
            let last = match table.last()? {
                Some((_, v)) => Some(decode::<Entry>("log entry", v.value())?.log_id),
                None => last_purged,
            };
            Ok(LogState {
                last_purged_log_id: last_purged,
                last_log_id: last,
            })
        })
        .await?;
        Ok(state)
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        Ok(self.put_meta(VOTE_KEY, vote).await?)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        let mut c = self.committed.state.lock();
        c.latest = Some(committed);
        c.unwritten = true;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        if let Some(latest) = self.committed.state.lock().latest {
            return Ok(latest);
        }
        let db = self.db.clone();
        let c: Option<Option<LogId>> =
            blocking(move || LogStore::get_meta(&db, COMMITTED_KEY)).await?;
        Ok(c.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded = Vec::new();
        for e in entries {
            encoded.push((e.log_id.index, encode("log entry", &e)?));
        }
        let committed = self.committed.state.lock().take_unwritten()?;
        let db = self.db.clone();
        blocking(move || {
            let tx = db.begin_write()?;
            {
                let mut table = tx.open_table(LOG)?;
                for (index, bytes) in &encoded {
                    table.insert(*index, bytes.as_slice())?;
                }
            }
            if let Some(c) = &committed {
                tx.open_table(LOG_META)?
                    .insert(COMMITTED_KEY, c.as_slice())?;
            }
            tx.commit()?;
            Ok(())
        })
        .await?;
        callback.io_completed(Ok(()));
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |id| id.index + 1);
        let db = self.db.clone();
        blocking(move || {
            let tx = db.begin_write()?;
            tx.open_table(LOG)?.retain_in(from.., |_, _| false)?;
            tx.commit()?;
            Ok(())
        })
        .await?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let db = self.db.clone();
        blocking(move || {
            let tx = db.begin_write()?;
            {
                let mut meta = tx.open_table(LOG_META)?;
                let prev: Option<LogId> = match meta.get(LAST_PURGED_KEY)? {
                    Some(v) => decode(LAST_PURGED_KEY, v.value())?,
                    None => None,
                };
                if prev.as_ref().is_none_or(|p| p < &log_id) {
                    meta.insert(
                        LAST_PURGED_KEY,
                        encode(LAST_PURGED_KEY, &Some(&log_id))?.as_slice(),
                    )?;
                }
            }
            tx.open_table(LOG)?
                .retain_in(..=log_id.index, |_, _| false)?;
            tx.commit()?;
            Ok(())
        })
        .await?;
        Ok(())
    }
}
