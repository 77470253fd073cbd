//! A bounded on-disk cache of compressed NAR variants (`<narhash>.zst3`, …), so a hot
//! NAR is compressed once and then served from disk like a static file. Entries are
//! named by NarHash and encoder settings, written to a temp file while the first
//! client is served and renamed into place only when the whole archive was produced.
//! Least recently used entries are evicted once the total passes the budget.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lru::LruCache;
use parking_lot::Mutex;

pub struct VariantCache {
    dir: PathBuf,
    max_bytes: u64,
    inner: Mutex<Inner>,
}

struct Inner {
    entries: LruCache<String, u64>,
    total: u64,
    in_progress: HashSet<String>,
}

impl VariantCache {
    /// Opens (creating) the cache directory, drops leftover temp files and indexes what
    /// is there, oldest first.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<Arc<Self>> {
        std::fs::create_dir_all(dir)?;
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".tmp-") {
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            let meta = entry.metadata()?;
            if meta.is_file() {
                found.push((meta.modified().ok(), name, meta.len()));
            }
        }
        found.sort();
        let mut inner = Inner {
            entries: LruCache::unbounded(),
            total: 0,
            in_progress: HashSet::new(),
        };
        for (_, name, len) in found {
            inner.total += len;
            inner.entries.put(name, len);
        }
        let cache = Arc::new(VariantCache {
            dir: dir.to_path_buf(),
            max_bytes,
            inner: Mutex::new(inner),
        });
        cache.evict();
        Ok(cache)
    }

    /// The file of a cached variant and its size, marking it recently used.
    pub fn get(&self, key: &str) -> Option<(PathBuf, u64)> {
        let mut inner = self.inner.lock();
        let len = *inner.entries.get(key)?;
        Some((self.dir.join(key), len))
    }

    /// Forgets an entry whose file turned out to be missing.
    pub fn forget(&self, key: &str) {
        let mut inner = self.inner.lock();
        if let Some(len) = inner.entries.pop(key) {
            inner.total -= len;
        }
    }

    /// Starts writing a variant, unless one is being written already or the cache is off.
    pub fn begin(self: &Arc<Self>, key: &str) -> Option<VariantWriter> {
        if self.max_bytes == 0 {
            return None;
        }
        {
            let mut inner = self.inner.lock();
            if inner.entries.contains(key) || !inner.in_progress.insert(key.to_string()) {
                return None;
            }
        }
        let tmp = self.dir.join(format!(".tmp-{key}"));
        match File::create(&tmp) {
            Ok(file) => Some(VariantWriter {
                cache: Arc::clone(self),
                key: key.to_string(),
                tmp,
                file: Some(io::BufWriter::with_capacity(256 * 1024, file)),
                len: 0,
            }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot create a variant cache file");
                self.inner.lock().in_progress.remove(key);
                None
            }
        }
    }

    fn evict(&self) {
        let mut victims = Vec::new();
        {
            let mut inner = self.inner.lock();
            while inner.total > self.max_bytes {
                match inner.entries.pop_lru() {
                    Some((k, len)) => {
                        inner.total -= len;
                        victims.push(k);
                    }
                    None => break,
                }
            }
        }
        for k in victims {
            let _ = std::fs::remove_file(self.dir.join(k));
        }
    }

    pub fn total_bytes(&self) -> u64 {
        self.inner.lock().total
    }
}

/// A variant being written; removed on drop unless committed.
pub struct VariantWriter {
    cache: Arc<VariantCache>,
    key: String,
    tmp: PathBuf,
    file: Option<io::BufWriter<File>>,
    len: u64,
}

impl Write for VariantWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let f = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("closed"))?;
        let n = f.write(data)?;
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl VariantWriter {
    /// Moves the finished variant into place. The cache is only an optimisation, so
    /// failures are logged and the variant dropped.
    pub fn commit(mut self) {
        let Some(file) = self.file.take() else { return };
        let done = file
            .into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_data())
            .and_then(|()| std::fs::rename(&self.tmp, self.cache.dir.join(&self.key)));
        if let Err(e) = done {
            tracing::warn!(error = %e, "could not keep a compressed variant");
            let _ = std::fs::remove_file(&self.tmp);
            return;
        }
        {
            let mut inner = self.cache.inner.lock();
            inner.total += self.len;
            inner.entries.put(self.key.clone(), self.len);
        }
        self.cache.evict();
    }
}

impl Drop for VariantWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
        self.cache.inner.lock().in_progress.remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_get_evict_and_abandon() {
        let dir = tempfile::tempdir().unwrap();
        let cache = VariantCache::open(dir.path(), 10).unwrap();
        let mut w = cache.begin("a").unwrap();
        assert!(cache.begin("a").is_none(), "one writer per key");
        w.write_all(b"123456").unwrap();
        w.commit();
        assert_eq!(cache.get("a").unwrap().1, 6);
        let mut w = cache.begin("b").unwrap();
        w.write_all(b"12345").unwrap();
        w.commit();
        // 11 bytes > 10: "a" was least recently used and goes.
        assert!(cache.get("a").is_none());
        assert!(!dir.path().join("a").exists());
        assert_eq!(cache.get("b").unwrap().1, 5);
        // An abandoned writer leaves nothing behind.
        let mut w = cache.begin("c").unwrap();
        w.write_all(b"xx").unwrap();
        drop(w);
        assert!(cache.get("c").is_none());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("b")]);
        // Reopening finds what is there.
        drop(cache);
        let cache = VariantCache::open(dir.path(), 10).unwrap();
        assert_eq!(cache.total_bytes(), 5);
    }
}
