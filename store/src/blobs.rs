//! Cairn's blob store: compressed NARs kept exactly as they were uploaded, one file per
//! FileHash at `<root>/blobs/<first 2 nix32 chars>/<nix32 file hash>`.
//!
//! This module owns that directory layout, the staging area for uploads in flight
//! (`<root>/staging`), the free-space reserve, durable placement (fsync, no-clobber
//! rename, fsync the directory) and removal. The one-pass ingest pipeline (hash the
//! compressed bytes, decompress, validate the NAR, write to staging) is the `ingest`
//! submodule. What a blob holds and which store paths use it is recorded
//! in [`crate::meta`]; the blob store itself knows only files and hashes.
//!
//! One `BlobStore` owns a root at a time: it holds an exclusive `flock` on `<root>/lock`,
//! because opening deletes whatever is left in staging, which must never be the uploads
//! in flight of another live process.

mod ingest;
mod staging;

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use nix_formats::Hash;
use parking_lot::Mutex;
use rustix::fs::FlockOperation;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// How a blob is compressed: the narinfo `Compression` values Cairn stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Zstd,
    Xz,
    Bzip2,
}

impl Compression {
    pub const ALL: [Compression; 4] = [
        Compression::None,
        Compression::Zstd,
        Compression::Xz,
        Compression::Bzip2,
    ];

    /// The narinfo `Compression` value.
    pub const fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Zstd => "zstd",
            Compression::Xz => "xz",
            Compression::Bzip2 => "bzip2",
        }
    }

    /// Parses a narinfo `Compression` value.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    /// What follows `.nar` in the file's URL.
    pub const fn ext(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Zstd => ".zst",
            Compression::Xz => ".xz",
            Compression::Bzip2 => ".bz2",
        }
    }

    /// Parses what follows `.nar` in a URL (`""`, `".zst"`, `".xz"`, `".bz2"`).
    pub fn from_ext(ext: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.ext() == ext)
    }
}

/// What an ingest verified and stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingested {
    /// sha256 of the bytes as uploaded (and stored).
    pub file_hash: Hash,
    pub file_size: u64,
    /// sha256 of the decompressed archive.
    pub nar_hash: Hash,
    pub nar_size: u64,
    pub compression: Compression,
}

/// Why a blob operation failed. Each cause is its own variant so the HTTP layer maps
/// them one by one: the texts of `FileHashMismatch`, `NotANar`, `Decompress`, `TooLarge`
/// and `InsufficientStorage` are safe to show an uploader; `Io` and `Body` carry OS
/// detail meant for the log.
#[derive(Debug, Error)]
pub enum BlobError {
    /// The blob store's own files (staging, blobs, directories) failed.
    #[error("blob store I/O error: {0}")]
    Io(#[source] io::Error),
    /// Reading the upload body failed (the client went away, a transfer encoding broke).
    #[error("reading the upload body: {0}")]
    Body(#[source] io::Error),
    /// The disk cannot take the bytes without eating into the reserve. `available` is
    /// the space left above the reserve; during an ingest `needed` is what had been
    /// received when space ran out (a lower bound).
    #[error("not enough space: {needed} bytes needed, {available} available")]
    InsufficientStorage { needed: u64, available: u64 },
    /// The body has more than `max` compressed bytes; reading stopped there.
    #[error("upload larger than {max} bytes")]
    TooLarge { max: u64 },
    #[error("upload hashes to {actual}, not {expected}")]
    FileHashMismatch { expected: Hash, actual: Hash },
    /// The (decompressed) body is not one well-formed NAR; the reason is the reader's.
    #[error("not a valid NAR: {0}")]
    NotANar(String),
    /// The body is not a valid stream of its compression, or has data after its end.
    #[error("does not decompress: {0}")]
    Decompress(String),
    /// A well-formed NAR, but not the one the uploader declared (NarHash or NarSize).
    #[error("the NAR is not the one declared: {0}")]
    NarMismatch(String),
}

/// What happens to a replica's pages once it is stored and fsynced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterStore {
    /// They stay in the page cache: the copy is about to be read here (fetched to serve
    /// a request for it).
    KeepCached,
    /// They never enter it: the copy was pushed here by the node that took the upload
    /// and nobody has asked this node for it. It is written with `O_DIRECT` where the
    /// filesystem allows (no copy into the page cache, no writeback of it; ZFS before
    /// 2.3 takes the flag and buffers anyway), and whatever pages it has are dropped
    /// after the fsync, so it does not push out what this node serves.
    DropCached,
}

/// The archive an upload must contain, when the uploader declared it up front: checked
/// before the blob is placed, so a mismatch leaves nothing behind.
#[derive(Debug, Clone, Copy)]
pub struct ExpectedNar<'a> {
    pub nar_hash: &'a Hash,
    pub nar_size: u64,
}

/// Content-addressed blobs under one root directory. `Send + Sync`; share it.
pub struct BlobStore {
    root: PathBuf,
    blobs: PathBuf,
    staging: PathBuf,
    reserve_bytes: u64,
    /// Fan-out directories under `blobs` whose entry in `blobs` is known to be durable.
    /// A blob is acknowledged only when its whole path is, so creating one of these
    /// fsyncs `blobs` first, under this lock so a concurrent ingest cannot skip it.
    durable_dirs: Mutex<HashSet<String>>,
    /// Blobs whose file hashed right, with the file's identity and change times then.
    verified: Mutex<lru::LruCache<Hash, (Stamp, std::time::Instant)>>,
    /// Held open for the lifetime of the store: its `flock` is the ownership of `root`.
    _lock: File,
}

/// What identifies a file's content without reading it: any write through the
/// filesystem moves the change time (which no caller can set back), a replacement has
/// another inode. Silent corruption below the filesystem is what ZFS's own checksums and
/// the scrubber are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    /// What identifies an opened file's content now (`None` if it cannot be read).
    pub fn of(file: &File) -> Option<Stamp> {
        use std::os::unix::fs::MetadataExt;
        let m = file.metadata().ok()?;
        Some(Stamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

/// How many verified blobs are remembered (about 100 bytes each): the hot set of any
/// cache; colder blobs are hashed again when they are next served.
const VERIFIED_MEMO: usize = 200_000;
/// How long a verification is trusted: a blob served all day is hashed again hourly,
/// which bounds how long corruption the filesystem did not notice can go out.
const REVERIFY_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore")
            .field("root", &self.root)
            .field("reserve_bytes", &self.reserve_bytes)
            .finish_non_exhaustive()
    }
}

impl BlobStore {
    /// Opens (creating) the store under `root`: takes the lock, creates `blobs/` and
    /// `staging/`, and deletes whatever a previous process left in staging.
    /// `reserve_bytes` of the disk are kept free: uploads that would eat into them fail.
    pub fn open(root: &Path, reserve_bytes: u64) -> Result<Self, BlobError> {
        fs::create_dir_all(root).map_err(BlobError::Io)?;
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(root.join("lock"))
            .map_err(BlobError::Io)?;
        rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive).map_err(|e| {
            if e == rustix::io::Errno::WOULDBLOCK {
                BlobError::Io(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!("{} is in use by another blob store", root.display()),
                ))
            } else {
                BlobError::Io(e.into())
            }
        })?;
        let blobs = root.join("blobs");
        let staging = root.join("staging");
        fs::create_dir_all(&blobs).map_err(BlobError::Io)?;
        fs::create_dir_all(&staging).map_err(BlobError::Io)?;
        let removed = clear_dir(&staging).map_err(BlobError::Io)?;
        if removed > 0 {
            tracing::info!(
                removed,
                "removed uploads left in staging by an earlier process"
            );
        }
        // Whatever is visible now is made durable once; later creations fsync as they go.
        sync_dir(root).map_err(BlobError::Io)?;
        sync_dir(&blobs).map_err(BlobError::Io)?;
        let mut durable = HashSet::new();
        for entry in fs::read_dir(&blobs).map_err(BlobError::Io)? {
            let entry = entry.map_err(BlobError::Io)?;
            if let Ok(name) = entry.file_name().into_string() {
                durable.insert(name);
            }
        }
        Ok(BlobStore {
            root: root.to_path_buf(),
            blobs,
            staging,
            reserve_bytes,
            durable_dirs: Mutex::new(durable),
            // Grows with use (bounded in `remember`): `LruCache::new` would allocate
            // room for every entry up front.
            verified: Mutex::new(lru::LruCache::unbounded()),
            _lock: lock,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where uploads in flight are written; empty whenever no ingest is running.
    pub fn staging_dir(&self) -> &Path {
        &self.staging
    }

    pub fn reserve_bytes(&self) -> u64 {
        self.reserve_bytes
    }

    /// Space on the store's disk beyond the reserve.
    pub fn available(&self) -> Result<u64, BlobError> {
        Ok(self
            .free_bytes()
            .map_err(BlobError::Io)?
            .saturating_sub(self.reserve_bytes))
    }

    /// Fails with `InsufficientStorage` unless `needed` more bytes fit above the reserve.
    /// Call it with a declared `Content-Length` before reading a body.
    pub fn check_space(&self, needed: u64) -> Result<(), BlobError> {
        let available = self.available()?;
        if available < needed {
            return Err(BlobError::InsufficientStorage { needed, available });
        }
        Ok(())
    }

    /// Streams an upload into the store in one pass, verifying it on the way. Blocking:
    /// run it off the async threads.
    ///
    /// The compressed bytes are hashed and counted (FileHash, FileSize), decompressed
    /// according to `compression` and validated as exactly one NAR (NarHash, NarSize);
    /// at most `max_bytes` compressed bytes are read. `expected_file_hash`, when given,
    /// must match after EOF. Only a verified blob is renamed into place, after an
    /// fsync; on any error nothing is left behind. Ingesting a blob that is already
    /// stored succeeds and keeps the stored file.
    pub fn ingest(
        &self,
        body: impl Read,
        compression: Compression,
        expected_file_hash: Option<&Hash>,
        max_bytes: u64,
    ) -> Result<Ingested, BlobError> {
        ingest::ingest(self, body, compression, expected_file_hash, None, max_bytes)
    }

    /// [`BlobStore::ingest`] for an upload whose archive was declared up front: the
    /// NAR must have `expected`'s NarHash and NarSize, else nothing is kept.
    pub fn ingest_expecting(
        &self,
        body: impl Read,
        compression: Compression,
        expected: ExpectedNar<'_>,
        max_bytes: u64,
    ) -> Result<Ingested, BlobError> {
        ingest::ingest(self, body, compression, None, Some(expected), max_bytes)
    }

    /// Ingests a copy of a blob another node verified (replication, repair): the bytes
    /// must hash to `file_hash`. That is the whole check: the blob is named by the
    /// SHA-256 of its bytes, and the node that first stored it verified that exactly
    /// these bytes hold the archive `expected` describes (NarHash, NarSize, canonical
    /// form), so a copy that hashes right holds it too, and decompressing it again
    /// would only repeat that work on every node. Any change to the bytes on the way or
    /// on the sender's disk changes the hash and is refused.
    /// `after` says whether its pages stay in the page cache.
    pub fn ingest_replica(
        &self,
        body: impl Read,
        compression: Compression,
        file_hash: &Hash,
        expected: ExpectedNar<'_>,
        max_bytes: u64,
        after: AfterStore,
    ) -> Result<Ingested, BlobError> {
        ingest::copy(
            self,
            body,
            compression,
            file_hash,
            expected,
            max_bytes,
            after,
        )
    }

    /// Verifies a file assembled elsewhere on this disk (the parts of a resumable
    /// upload, under [`BlobStore::sessions_dir`]) exactly as an ingest would, then
    /// renames that same file into place: no second copy of the bytes. The file is
    /// consumed either way: placed when it verifies, deleted when it does not.
    pub fn adopt(
        &self,
        file: &Path,
        compression: Compression,
        expected: ExpectedNar<'_>,
        max_bytes: u64,
    ) -> Result<Ingested, BlobError> {
        ingest::adopt(self, file, compression, expected, max_bytes)
    }

    /// Where resumable uploads keep their parts: on the blob disk, so a finished upload
    /// is renamed into place, and kept across restarts (unlike staging).
    pub fn sessions_dir(&self) -> PathBuf {
        self.root.join("sessions")
    }

    /// The stored file and its length, or `None` when there is no such blob.
    pub fn open_blob(&self, file_hash: &Hash) -> Result<Option<(File, u64)>, BlobError> {
        let file = match File::open(self.blob_path(file_hash)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(BlobError::Io(e)),
        };
        let len = file.metadata().map_err(BlobError::Io)?.len();
        Ok(Some((file, len)))
    }

    /// Records that `file`, the stored blob `file_hash`, was just read in full and
    /// hashed to its name (ingest).
    pub fn note_verified(&self, file_hash: &Hash, file: &File) {
        if let Some(stamp) = Stamp::of(file) {
            self.remember(file_hash, stamp);
        }
    }

    /// [`BlobStore::note_verified`] for a file read while others could write it (a
    /// checked serve): recorded only when it is still as it was (`before`, its
    /// [`Stamp::of`]) when the reading started.
    pub fn note_verified_since(&self, file_hash: &Hash, before: Option<Stamp>, file: &File) {
        if let Some(before) = before.filter(|b| Stamp::of(file) == Some(*b)) {
            self.remember(file_hash, before);
        }
    }

    fn remember(&self, file_hash: &Hash, stamp: Stamp) {
        let mut memo = self.verified.lock();
        memo.put(file_hash.clone(), (stamp, std::time::Instant::now()));
        if memo.len() > VERIFIED_MEMO {
            memo.pop_lru();
        }
    }

    /// True when the stored blob `file_hash`, whose opened file has `stamp`, is
    /// unchanged since it last hashed to its name in this process, less than an hour
    /// ago, so it can be served without hashing it again.
    pub fn is_verified(&self, file_hash: &Hash, stamp: &Stamp) -> bool {
        matches!(
            self.verified.lock().get(file_hash),
            Some((then, at)) if then == stamp && at.elapsed() < REVERIFY_AFTER
        )
    }

    pub fn contains(&self, file_hash: &Hash) -> bool {
        fs::metadata(self.blob_path(file_hash)).is_ok_and(|m| m.is_file())
    }

    /// Deletes a blob; a missing blob is not an error. Unregister it first (invariant 3).
    pub fn remove(&self, file_hash: &Hash) -> Result<(), BlobError> {
        self.verified.lock().pop(file_hash);
        let path = self.blob_path(file_hash);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(BlobError::Io(e)),
        }
        sync_dir(path.parent().expect("a blob path has a fan-out directory")).map_err(BlobError::Io)
    }

    /// `<root>/blobs/<first 2 nix32 chars>/<nix32 file hash>`.
    /// Every stored blob with its file's modification time (when it was placed, or last
    /// wanted again by an upload). Files whose names are not file hashes are skipped.
    pub fn list(&self) -> Result<Vec<(Hash, std::time::SystemTime)>, BlobError> {
        let mut out = Vec::new();
        for shard in fs::read_dir(&self.blobs).map_err(BlobError::Io)? {
            let shard = shard.map_err(BlobError::Io)?;
            if !shard.file_type().map_err(BlobError::Io)?.is_dir() {
                continue;
            }
            for f in fs::read_dir(shard.path()).map_err(BlobError::Io)? {
                let f = f.map_err(BlobError::Io)?;
                let Some(name) = f.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                let Ok(hash) = Hash::parse_digest(nix_formats::HashAlgo::Sha256, &name) else {
                    continue;
                };
                let modified = f
                    .metadata()
                    .and_then(|m| m.modified())
                    .map_err(BlobError::Io)?;
                out.push((hash, modified));
            }
        }
        Ok(out)
    }

    pub fn blob_path(&self, file_hash: &Hash) -> PathBuf {
        let name = file_hash.to_nix32();
        self.blobs.join(&name[..2]).join(&name)
    }

    /// Size and free space (for an unprivileged writer) of the store's disk.
    pub fn disk_usage(&self) -> Result<(u64, u64), BlobError> {
        let st = rustix::fs::statvfs(&self.root).map_err(|e| BlobError::Io(e.into()))?;
        Ok((
            st.f_blocks.saturating_mul(st.f_frsize),
            st.f_bavail.saturating_mul(st.f_frsize),
        ))
    }

    /// Free bytes on the store's disk for an unprivileged writer.
    fn free_bytes(&self) -> io::Result<u64> {
        let st = rustix::fs::statvfs(&self.root)?;
        Ok(st.f_bavail.saturating_mul(st.f_frsize))
    }

    /// Creates the fan-out directory of `path` if needed and makes its entry durable.
    fn ensure_fanout_dir(&self, path: &Path) -> io::Result<()> {
        let dir = path.parent().expect("a blob path has a fan-out directory");
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("fan-out directory names are nix32")
            .to_string();
        let mut durable = self.durable_dirs.lock();
        if durable.contains(&name) {
            return Ok(());
        }
        match fs::create_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        sync_dir(&self.blobs)?;
        durable.insert(name);
        Ok(())
    }
}

/// fsync of a directory, so the entries created or removed in it survive a crash.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Deletes everything in `dir`; returns how many entries there were.
fn clear_dir(dir: &Path) -> io::Result<usize> {
    let mut removed = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            fs::remove_dir_all(entry.path())?;
        } else {
            fs::remove_file(entry.path())?;
        }
        removed += 1;
    }
    Ok(removed)
}
