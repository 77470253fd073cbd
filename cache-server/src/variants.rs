//! A bounded cache of compressed NAR variants (`<narhash>.zst1`, …), so a hot NAR is
//! compressed once and then served like a static file. Entries are named by NarHash
//! and encoder settings and made while the first client is served; an entry exists
//! only once the whole archive was produced.
//!
//! Small variants (most NARs are a few KiB) stay in memory: a file per entry would cost
//! more in inode creation than compressing them did. Larger ones go to a temp file
//! renamed into place under `data_dir/variants`. Each tier evicts its least recently
//! used entries past its own budget; a small variant pushed out of memory moves to a
//! file rather than being lost, so a memory budget smaller than the hot set costs a file
//! per entry that did not fit, not a second compression of every one of them (an LRU
//! cycled through by a set larger than itself would otherwise miss on every entry).
//!
//! The files are a cache and are not fsynced; instead the directory is emptied at
//! start, so a file torn by a crash can never be served.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use lru::LruCache;
use parking_lot::Mutex;

/// Variants up to this size are kept in memory.
pub const MEMORY_ENTRY_MAX: usize = 64 * 1024;

pub struct VariantCache {
    dir: PathBuf,
    max_bytes: u64,
    memory_max: u64,
    inner: Mutex<Inner>,
}

struct Inner {
    files: LruCache<String, u64>,
    files_total: u64,
    memory: LruCache<String, Small>,
    memory_total: u64,
    /// Variants being made, or moving from memory to a file.
    in_progress: HashSet<String>,
}

impl Inner {
    fn put_small(&mut self, key: &str, bytes: Bytes, keep: bool) {
        self.memory_total += bytes.len() as u64;
        if let Some(old) = self.memory.put(key.to_string(), Small { bytes, keep }) {
            self.memory_total -= old.bytes.len() as u64;
        }
    }
}

/// An entry of the memory tier.
struct Small {
    bytes: Bytes,
    /// A variant made here, whose only copy this is: it moves to a file when memory
    /// evicts it. A copy of a stored blob (`put_memory`) is simply dropped.
    keep: bool,
}

/// A cached variant.
pub enum Variant {
    File(PathBuf, u64),
    Memory(Bytes),
}

impl VariantCache {
    /// Opens (creating) the cache directory and empties it. `max_bytes` bounds the
    /// files, `memory_max` the small variants held in memory; `max_bytes` 0 turns the
    /// whole cache off.
    pub fn open(dir: &Path, max_bytes: u64, memory_max: u64) -> io::Result<Arc<Self>> {
        std::fs::create_dir_all(dir)?;
        let mut removed = 0usize;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                std::fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::debug!(removed, "emptied the variant cache");
        }
        Ok(Arc::new(VariantCache {
            dir: dir.to_path_buf(),
            max_bytes,
            memory_max: if max_bytes == 0 { 0 } else { memory_max },
            inner: Mutex::new(Inner {
                files: LruCache::unbounded(),
                files_total: 0,
                memory: LruCache::unbounded(),
                memory_total: 0,
                in_progress: HashSet::new(),
            }),
        }))
    }

    /// A cached variant, marking it recently used.
    pub fn get(&self, key: &str) -> Option<Variant> {
        let mut inner = self.inner.lock();
        if let Some(small) = inner.memory.get(key) {
            return Some(Variant::Memory(small.bytes.clone()));
        }
        let len = *inner.files.get(key)?;
        Some(Variant::File(self.dir.join(key), len))
    }

    /// Keeps a copy of small bytes (at most [`MEMORY_ENTRY_MAX`]) held elsewhere in the
    /// memory tier, e.g. a small stored blob; `false` when they are too large or the
    /// cache is off. Variants it pushes out of memory move to files on the blocking pool.
    pub fn put_memory(self: &Arc<Self>, key: &str, bytes: Bytes) -> bool {
        if self.memory_max == 0 || bytes.len() > MEMORY_ENTRY_MAX {
            return false;
        }
        self.inner.lock().put_small(key, bytes, false);
        self.rebalance(false);
        true
    }

    /// Brings both tiers within their budgets; variants pushed out of memory move to
    /// files, right here when `inline` (the caller is a blocking thread already), else
    /// on the blocking pool (when there is a runtime to spawn on).
    fn rebalance(self: &Arc<Self>, inline: bool) {
        let moving = self.evict();
        if moving.is_empty() {
            return;
        }
        if !inline {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let cache = Arc::clone(self);
                drop(rt.spawn_blocking(move || cache.move_to_files(moving)));
                return;
            }
        }
        self.move_to_files(moving);
    }

    /// Forgets an entry whose file turned out to be missing, or whose source went bad.
    pub fn forget(&self, key: &str) {
        let mut inner = self.inner.lock();
        if let Some(len) = inner.files.pop(key) {
            inner.files_total -= len;
        }
        if let Some(small) = inner.memory.pop(key) {
            inner.memory_total -= small.bytes.len() as u64;
        }
    }

    /// Starts making a variant, unless one is being made already or the cache is off.
    pub fn begin(self: &Arc<Self>, key: &str) -> Option<VariantWriter> {
        if self.max_bytes == 0 {
            return None;
        }
        {
            let mut inner = self.inner.lock();
            if inner.files.contains(key)
                || inner.memory.contains(key)
                || !inner.in_progress.insert(key.to_string())
            {
                return None;
            }
        }
        Some(VariantWriter {
            cache: Arc::clone(self),
            key: key.to_string(),
            small: Vec::new(),
            file: None,
            len: 0,
            failed: false,
        })
    }

    /// Brings both tiers within their budgets. Returns the variants evicted from memory
    /// that are to move to files, marked in progress meanwhile (so nobody starts making
    /// them again or writes their temp file).
    fn evict(&self) -> Vec<(String, Bytes)> {
        let mut victims = Vec::new();
        let mut moving = Vec::new();
        {
            let mut inner = self.inner.lock();
            while inner.files_total > self.max_bytes {
                match inner.files.pop_lru() {
                    Some((k, len)) => {
                        inner.files_total -= len;
                        victims.push(k);
                    }
                    None => break,
                }
            }
            while inner.memory_total > self.memory_max {
                match inner.memory.pop_lru() {
                    Some((k, small)) => {
                        inner.memory_total -= small.bytes.len() as u64;
                        if small.keep && inner.in_progress.insert(k.clone()) {
                            moving.push((k, small.bytes));
                        }
                    }
                    None => break,
                }
            }
        }
        for k in victims {
            let _ = std::fs::remove_file(self.dir.join(k));
        }
        moving
    }

    /// Writes variants evicted from memory to files (blocking I/O), then applies the
    /// file budget they now count against.
    fn move_to_files(&self, moving: Vec<(String, Bytes)>) {
        for (key, bytes) in moving {
            let tmp = self.tmp_path(&key);
            let done = std::fs::write(&tmp, &bytes)
                .and_then(|()| std::fs::rename(&tmp, self.dir.join(&key)));
            let mut inner = self.inner.lock();
            inner.in_progress.remove(&key);
            match done {
                Ok(()) => {
                    inner.files_total += bytes.len() as u64;
                    inner.files.put(key, bytes.len() as u64);
                }
                Err(e) => {
                    drop(inner);
                    tracing::warn!(error = %e, "could not move a compressed variant to a file");
                    let _ = std::fs::remove_file(&tmp);
                }
            }
        }
        // Only files were added: this round moves nothing more.
        let again = self.evict();
        debug_assert!(again.is_empty());
    }

    /// Bytes held (files, memory).
    pub fn totals(&self) -> (u64, u64) {
        let inner = self.inner.lock();
        (inner.files_total, inner.memory_total)
    }

    fn tmp_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!(".tmp-{key}"))
    }
}

/// A variant being made: in memory while small, in a temp file once it grows past
/// [`MEMORY_ENTRY_MAX`]. Dropped without `commit`, it leaves nothing behind.
pub struct VariantWriter {
    cache: Arc<VariantCache>,
    key: String,
    small: Vec<u8>,
    file: Option<io::BufWriter<File>>,
    len: u64,
    /// A write failed: the variant is abandoned, the client is not disturbed.
    failed: bool,
}

impl VariantWriter {
    fn spill(&mut self) -> io::Result<()> {
        let file = File::create(self.cache.tmp_path(&self.key))?;
        let mut w = io::BufWriter::with_capacity(256 * 1024, file);
        w.write_all(&self.small)?;
        self.small = Vec::new();
        self.file = Some(w);
        Ok(())
    }

    fn write_inner(&mut self, data: &[u8]) -> io::Result<()> {
        if self.file.is_none() && self.small.len() + data.len() > MEMORY_ENTRY_MAX {
            self.spill()?;
        }
        match self.file.as_mut() {
            Some(f) => f.write_all(data)?,
            None => self.small.extend_from_slice(data),
        }
        self.len += data.len() as u64;
        Ok(())
    }

    /// Keeps the finished variant. The cache is only an optimisation, so failures are
    /// logged and the variant dropped.
    pub fn commit(mut self) {
        if self.failed {
            return;
        }
        let cache = Arc::clone(&self.cache);
        match self.file.take() {
            None => {
                let bytes = Bytes::from(std::mem::take(&mut self.small));
                cache.inner.lock().put_small(&self.key, bytes, true);
            }
            Some(file) => {
                let tmp = cache.tmp_path(&self.key);
                let done = file
                    .into_inner()
                    .map_err(|e| e.into_error())
                    .and_then(|_| std::fs::rename(&tmp, cache.dir.join(&self.key)));
                if let Err(e) = done {
                    tracing::warn!(error = %e, "could not keep a compressed variant");
                    let _ = std::fs::remove_file(&tmp);
                    return;
                }
                let mut inner = cache.inner.lock();
                inner.files_total += self.len;
                inner.files.put(self.key.clone(), self.len);
            }
        }
        // The writer's claim on its key ends first, so evicting this very variant can
        // claim it again for the move to a file.
        drop(self);
        cache.rebalance(true);
    }
}

impl Write for VariantWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if !self.failed {
            if let Err(e) = self.write_inner(data) {
                tracing::warn!(error = %e, "cannot write a compressed variant");
                self.failed = true;
            }
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for VariantWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(self.cache.tmp_path(&self.key));
        }
        self.cache.inner.lock().in_progress.remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn small_variants_live_in_memory_within_their_budget() {
        let dir = tempfile::tempdir().unwrap();
        let cache = VariantCache::open(dir.path(), 1 << 30, 10).unwrap();
        let mut w = cache.begin("a").unwrap();
        assert!(cache.begin("a").is_none(), "one writer per key");
        w.write_all(b"123456").unwrap();
        w.commit();
        assert!(matches!(cache.get("a"), Some(Variant::Memory(b)) if &b[..] == b"123456"));
        let mut w = cache.begin("b").unwrap();
        w.write_all(b"12345").unwrap();
        w.commit();
        assert!(matches!(cache.get("b"), Some(Variant::Memory(_))));
        // 11 bytes > 10: "a" was least recently used and moved to a file, whole.
        match cache.get("a") {
            Some(Variant::File(p, 6)) => assert_eq!(std::fs::read(p).unwrap(), b"123456"),
            _ => panic!("a moved to a file"),
        }
        assert_eq!(files_in(dir.path()), vec!["a".to_string()]);
        assert_eq!(cache.totals(), (6, 5));
        // A copy of a stored blob pushed out of memory is dropped, not moved: the blob
        // file is the copy. Putting it evicted "b", which moves.
        assert!(cache.put_memory("blob-x", Bytes::from_static(b"0123456789")));
        assert!(matches!(cache.get("b"), Some(Variant::File(_, 5))));
        let mut w = cache.begin("c").unwrap();
        w.write_all(b"1").unwrap();
        w.commit();
        assert!(cache.get("blob-x").is_none());
        assert_eq!(files_in(dir.path()), vec!["a".to_string(), "b".to_string()]);
        // A variant moving to a file is not made a second time meanwhile.
        assert!(cache.begin("a").is_none() && cache.begin("b").is_none());
    }

    #[test]
    fn small_variants_moved_to_files_obey_the_file_budget() {
        let dir = tempfile::tempdir().unwrap();
        let cache = VariantCache::open(dir.path(), 8, 4).unwrap();
        for key in ["a", "b", "c", "d"] {
            let mut w = cache.begin(key).unwrap();
            w.write_all(b"xyz").unwrap();
            w.commit();
        }
        // Memory holds "d"; "a", "b", "c" moved out in turn, and the file budget of 8
        // bytes keeps the two most recent of them.
        assert!(matches!(cache.get("d"), Some(Variant::Memory(_))));
        assert!(cache.get("a").is_none());
        assert_eq!(files_in(dir.path()), vec!["b".to_string(), "c".to_string()]);
        assert_eq!(cache.totals(), (6, 3));
    }

    #[test]
    fn large_variants_go_to_files_and_are_evicted_past_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let big = vec![7u8; MEMORY_ENTRY_MAX + 1];
        let budget = (2 * big.len() - 1) as u64;
        let cache = VariantCache::open(dir.path(), budget, 1 << 20).unwrap();
        for key in ["a", "b"] {
            let mut w = cache.begin(key).unwrap();
            w.write_all(&big[..10]).unwrap();
            w.write_all(&big[10..]).unwrap();
            w.commit();
        }
        assert!(cache.get("a").is_none(), "evicted");
        match cache.get("b") {
            Some(Variant::File(p, len)) => {
                assert_eq!(len, big.len() as u64);
                assert_eq!(std::fs::read(p).unwrap(), big);
            }
            _ => panic!("b is a file variant"),
        }
        assert_eq!(files_in(dir.path()), vec!["b".to_string()]);
        // An abandoned writer leaves nothing behind.
        let mut w = cache.begin("c").unwrap();
        w.write_all(&big).unwrap();
        drop(w);
        assert!(cache.get("c").is_none());
        assert_eq!(files_in(dir.path()), vec!["b".to_string()]);
        // Reopening starts empty: unsynced files are never trusted after a restart.
        drop(cache);
        let cache = VariantCache::open(dir.path(), budget, 1 << 20).unwrap();
        assert_eq!(cache.totals(), (0, 0));
        assert!(files_in(dir.path()).is_empty());
    }

    #[test]
    fn off_means_off() {
        let dir = tempfile::tempdir().unwrap();
        let cache = VariantCache::open(dir.path(), 0, 1 << 20).unwrap();
        assert!(cache.begin("a").is_none());
    }
}
