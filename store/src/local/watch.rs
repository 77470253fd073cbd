//! Knowing, exactly and cheaply, whether Nix's database changed, and which hash parts it
//! holds, so that narinfo hits can be answered from a cache and misses without a query.
//!
//! An inotify watch on the database's directory sees every write Nix commits: in WAL
//! mode each commit appends to `db.sqlite-wal`, in rollback mode it writes `db.sqlite`
//! and its journal. The kernel queues the event inside the writer's `write()`, so once
//! Nix's commit has returned, the event is readable. [`ChangeWatch::generation`] drains
//! the queue under a lock before it answers: a caller that sees an unchanged generation
//! knows no commit finished before its call that it has not accounted for, and a commit
//! finishing later is ordered after the caller's lookup. No timers, no polling, no
//! window in which a just-registered path looks missing.
//!
//! [`KnownPaths`] is the set of every hash part ever seen valid (as 64-bit keys, 8 bytes
//! per path), brought up to date with the rows added since the last refresh whenever
//! the generation moved. Nix's path ids only grow (`autoincrement`), so "rows with a
//! higher id" are exactly the new ones. Paths that Nix later deletes stay in the set:
//! that costs a real query for them, never a wrong answer.

use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use rustix::fs::inotify;

/// Watches the directory of Nix's database for writes to the database files.
pub(super) struct ChangeWatch {
    fd: Mutex<OwnedFd>,
    /// The database file name (`db.sqlite`): events for it and its `-wal` and
    /// `-journal` companions count; the `-shm` index and Nix's lock files do not.
    db_name: String,
    generation: AtomicU64,
}

impl ChangeWatch {
    /// `None` when inotify is unavailable (then nothing may be cached).
    pub(super) fn open(db_path: &Path) -> Option<Self> {
        let dir = db_path.parent()?;
        let db_name = db_path.file_name()?.to_str()?.to_string();
        let fd = inotify::init(inotify::CreateFlags::NONBLOCK | inotify::CreateFlags::CLOEXEC)
            .map_err(|e| tracing::warn!(error = %e, "inotify unavailable: narinfo lookups are not cached"))
            .ok()?;
        let mask = inotify::WatchFlags::MODIFY
            | inotify::WatchFlags::CREATE
            | inotify::WatchFlags::DELETE
            | inotify::WatchFlags::MOVED_TO
            | inotify::WatchFlags::MOVED_FROM
            | inotify::WatchFlags::DELETE_SELF
            | inotify::WatchFlags::MOVE_SELF;
        inotify::add_watch(&fd, dir, mask)
            .map_err(|e| {
                tracing::warn!(error = %e, dir = %dir.display(), "cannot watch Nix's database directory: narinfo lookups are not cached")
            })
            .ok()?;
        Some(ChangeWatch {
            fd: Mutex::new(fd),
            db_name,
            generation: AtomicU64::new(0),
        })
    }

    /// The current generation: it moves whenever the database was written since the
    /// previous call. Costs one non-blocking `read` when nothing happened.
    pub(super) fn generation(&self) -> u64 {
        // The lock makes "drain, then bump" atomic: a caller that finds the queue empty
        // because another thread just took the event waits here for that bump.
        let fd = self.fd.lock();
        let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
        let mut changed = false;
        let mut overflow = false;
        {
            let mut reader = inotify::Reader::new(&*fd, &mut buf);
            loop {
                match reader.next() {
                    Ok(event) => {
                        if event.events().contains(inotify::ReadFlags::QUEUE_OVERFLOW) {
                            overflow = true;
                        }
                        let relevant = match event.file_name() {
                            Some(name) => concerns(&self.db_name, name.to_bytes()),
                            // Events on the directory itself (deleted, moved away).
                            None => true,
                        };
                        changed |= relevant;
                    }
                    Err(rustix::io::Errno::AGAIN) => break,
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => {
                        // Cannot tell: treat as changed, which is always safe.
                        tracing::warn!(error = %e, "reading inotify events");
                        changed = true;
                        break;
                    }
                }
            }
        }
        if changed || overflow {
            self.generation.fetch_add(1, Ordering::SeqCst) + 1
        } else {
            self.generation.load(Ordering::SeqCst)
        }
    }
}

/// True when a write to the file `name` in the database directory means the database
/// changed: the database itself and its `-wal` and `-journal` files, not the `-shm`
/// index (readers touch it) nor Nix's lock files.
fn concerns(db_name: &str, name: &[u8]) -> bool {
    name.strip_prefix(db_name.as_bytes())
        .is_some_and(|rest| rest != b"-shm")
}

/// The 64-bit key of a hash part: its 32 nix32 characters mixed down. Two hash parts
/// sharing a key only make a miss cost a real query.
pub(super) fn key(hash_part: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for chunk in hash_part.as_bytes().chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        h = (h ^ u64::from_le_bytes(word)).wrapping_mul(0x0000_0100_0000_01b3);
        h ^= h >> 29;
    }
    h
}

/// Every hash part the database held as of `generation`.
pub(super) struct KnownPaths {
    /// Sorted.
    keys: Vec<u64>,
    /// Highest `ValidPaths.id` read so far.
    max_id: i64,
    /// The watch generation the set is current for; `None` before the first load.
    generation: Option<u64>,
}

impl KnownPaths {
    pub(super) fn new() -> Self {
        KnownPaths {
            keys: Vec::new(),
            max_id: 0,
            generation: None,
        }
    }

    pub(super) fn is_current(&self, generation: u64) -> bool {
        self.generation == Some(generation)
    }

    /// Adds the hash parts of rows with ids above the last one seen.
    pub(super) fn refresh(
        &mut self,
        conn: &rusqlite::Connection,
        store_dir: &str,
        generation: u64,
    ) -> rusqlite::Result<()> {
        let mut stmt =
            conn.prepare_cached("SELECT id, path FROM ValidPaths WHERE id > ?1 ORDER BY id")?;
        let mut rows = stmt.query([self.max_id])?;
        let before = self.keys.len();
        while let Some(row) = rows.next()? {
            let id: i64 = row.get(0)?;
            let path: String = row.get(1)?;
            self.max_id = self.max_id.max(id);
            if let Some(hash) = hash_part_of(&path, store_dir) {
                self.keys.push(key(hash));
            }
        }
        if self.keys.len() != before {
            self.keys.sort_unstable();
            self.keys.dedup();
        }
        self.generation = Some(generation);
        Ok(())
    }

    pub(super) fn may_contain(&self, hash_part: &str) -> bool {
        self.keys.binary_search(&key(hash_part)).is_ok()
    }

    pub(super) fn len(&self) -> usize {
        self.keys.len()
    }
}

fn hash_part_of<'a>(path: &'a str, store_dir: &str) -> Option<&'a str> {
    let base = path.strip_prefix(store_dir)?.strip_prefix('/')?;
    base.get(..nix_formats::store_path::HASH_PART_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_files_count_and_others_do_not() {
        for (name, counts) in [
            ("db.sqlite", true),
            ("db.sqlite-wal", true),
            ("db.sqlite-journal", true),
            ("db.sqlite-shm", false),
            ("big-lock", false),
            ("reserved", false),
            ("schema", false),
        ] {
            assert_eq!(concerns("db.sqlite", name.as_bytes()), counts, "{name}");
        }
    }

    #[test]
    fn a_write_moves_the_generation_and_a_read_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db.sqlite");
        std::fs::write(&db, b"x").unwrap();
        let watch = ChangeWatch::open(&db).expect("inotify works here");
        let g0 = watch.generation();
        assert_eq!(watch.generation(), g0);
        std::fs::read(&db).unwrap();
        std::fs::write(dir.path().join("db.sqlite-shm"), b"x").unwrap();
        std::fs::write(dir.path().join("big-lock"), b"x").unwrap();
        assert_eq!(
            watch.generation(),
            g0,
            "reads and unrelated files do not count"
        );
        std::fs::write(dir.path().join("db.sqlite-wal"), b"frame").unwrap();
        let g1 = watch.generation();
        assert_ne!(g1, g0);
        assert_eq!(watch.generation(), g1);
    }

    #[test]
    fn keys_differ_for_different_hash_parts() {
        let a = key("0mhxs8i8rz8bvwxzmhygw2j8qp4asgc0");
        let b = key("0mhxs8i8rz8bvwxzmhygw2j8qp4asgc1");
        assert_ne!(a, b);
        assert_eq!(a, key("0mhxs8i8rz8bvwxzmhygw2j8qp4asgc0"));
    }
}
