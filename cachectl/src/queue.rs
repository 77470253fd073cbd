//! The upload queue: a spool directory with one small JSON file per post-build-hook
//! call, named so that names sort oldest first. An entry appears whole or not at all
//! (temp file, fsync, rename, fsync of the directory) and disappears only once the
//! uploader has everything in it in the cache; an entry the cache refuses for good is
//! moved to `failed/` next to a `.reason` file. Nothing here needs a runtime, so the
//! hook stays fast.
//!
//! Several uploaders on one queue are safe (an entry deleted or moved twice is fine)
//! but wasteful.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// Prefix of entries being written; the uploader ignores them and removes old ones.
const TMP_PREFIX: &str = ".tmp-";
/// Entry file extension.
const EXT: &str = ".json";
/// Where refused entries go.
pub const FAILED_DIR: &str = "failed";

/// One hook call: what Nix built.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    /// `OUT_PATHS`, as Nix gave them.
    pub out_paths: Vec<String>,
    /// `DRV_PATH`, if Nix gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drv_path: Option<String>,
    /// When it was queued, in seconds since the epoch.
    #[serde(default)]
    pub queued_at: u64,
}

pub struct Queue {
    dir: PathBuf,
}

impl Queue {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Queue { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Adds an entry durably; returns its file. Creates the directory if needed.
    pub fn enqueue(&self, entry: &Entry) -> io::Result<PathBuf> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let pid = std::process::id();
        let nonce: u32 = rand::random();
        // Zero-padded nanoseconds first: names sort in queueing order.
        let name = format!("{:020}-{pid:010}-{nonce:08x}{EXT}", now.as_nanos());
        let text = serde_json::to_vec(entry).map_err(io::Error::other)?;

        let tmp = self.dir.join(format!("{TMP_PREFIX}{name}"));
        let mut file = match File::create_new(&tmp) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(&self.dir)?;
                File::create_new(&tmp)?
            }
            other => other?,
        };
        let written = file
            .write_all(&text)
            .and_then(|()| file.sync_all())
            .and_then(|()| fs::rename(&tmp, self.dir.join(&name)));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        sync_dir(&self.dir)?;
        Ok(self.dir.join(name))
    }

    /// The entries, oldest first. A missing directory is an empty queue.
    pub fn list(&self) -> io::Result<Vec<PathBuf>> {
        let rd = match fs::read_dir(&self.dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            other => other?,
        };
        let mut names = Vec::new();
        for e in rd {
            let e = e?;
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') || !name.ends_with(EXT) || !e.file_type()?.is_file() {
                continue;
            }
            names.push(name.to_string());
        }
        names.sort();
        Ok(names.into_iter().map(|n| self.dir.join(n)).collect())
    }

    /// Reads an entry.
    pub fn read(path: &Path) -> Result<Entry> {
        let text = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_slice(&text)
            .with_context(|| format!("{} is not a queue entry", path.display()))
    }

    /// Deletes a finished entry, durably. Already gone is fine.
    pub fn remove(&self, path: &Path) -> io::Result<()> {
        match fs::remove_file(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            other => other?,
        }
        sync_dir(&self.dir)
    }

    /// Moves a refused entry to `failed/`, after writing why next to it.
    pub fn fail(&self, path: &Path, reason: &str) -> io::Result<PathBuf> {
        let failed = self.dir.join(FAILED_DIR);
        fs::create_dir_all(&failed)?;
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::other("no file name"))?;
        let dest = failed.join(name);
        let mut reason_file = dest.clone().into_os_string();
        reason_file.push(".reason");
        let mut f = File::create(&reason_file)?;
        f.write_all(reason.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        match fs::rename(path, &dest) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            other => other?,
        }
        sync_dir(&failed)?;
        sync_dir(&self.dir)?;
        Ok(dest)
    }

    /// Removes temp files older than `age`: left by a hook killed while writing.
    pub fn remove_stale_temps(&self, age: Duration) {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            if !name.to_string_lossy().starts_with(TMP_PREFIX) {
                continue;
            }
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|a| a >= age);
            if old {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(p: &str) -> Entry {
        Entry {
            out_paths: vec![p.to_string()],
            drv_path: Some("/nix/store/x.drv".into()),
            queued_at: 1,
        }
    }

    #[test]
    fn entries_round_trip_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::new(dir.path().join("q"));
        assert!(q.list().unwrap().is_empty(), "a missing directory is empty");
        let files: Vec<PathBuf> = (0..20)
            .map(|i| q.enqueue(&entry(&format!("/p{i}"))).unwrap())
            .collect();
        let listed = q.list().unwrap();
        assert_eq!(listed, files, "oldest first");
        for (i, f) in listed.iter().enumerate() {
            assert_eq!(Queue::read(f).unwrap(), entry(&format!("/p{i}")));
        }
        q.remove(&listed[0]).unwrap();
        q.remove(&listed[0]).unwrap();
        assert_eq!(q.list().unwrap().len(), 19);
    }

    #[test]
    fn failed_entries_keep_their_reason_and_leave_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::new(dir.path());
        let f = q.enqueue(&entry("/a")).unwrap();
        let dest = q.fail(&f, "refused: 413").unwrap();
        assert!(q.list().unwrap().is_empty());
        assert_eq!(Queue::read(&dest).unwrap(), entry("/a"));
        let reason = fs::read_to_string(format!("{}.reason", dest.display())).unwrap();
        assert_eq!(reason, "refused: 413\n");
    }

    #[test]
    fn temps_and_strangers_are_not_entries() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::new(dir.path());
        fs::write(dir.path().join(".tmp-123.json"), "{").unwrap();
        fs::write(dir.path().join("notes.txt"), "x").unwrap();
        fs::create_dir(dir.path().join("d.json")).unwrap();
        assert!(q.list().unwrap().is_empty());
        q.remove_stale_temps(Duration::from_secs(3600));
        assert!(dir.path().join(".tmp-123.json").exists());
        q.remove_stale_temps(Duration::ZERO);
        assert!(!dir.path().join(".tmp-123.json").exists());
    }

    #[test]
    fn a_broken_entry_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("1.json");
        fs::write(&p, "not json").unwrap();
        let err = Queue::read(&p).unwrap_err();
        assert!(format!("{err:#}").contains("1.json"));
    }
}
