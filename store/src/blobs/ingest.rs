//! The one-pass ingest of an upload:
//!
//! ```text
//! body ─> Intake ─────────────> decompressor ─> NarReader
//!         │ cap max_bytes                        NarHash, NarSize,
//!         │ staging file (buffered)              canonical form, EOF
//!         │ sha256 + count: FileHash, FileSize
//!         │ free space vs. reserve, every MiB
//! ```
//!
//! [`Intake`] is the only reader of the body, and it hands a byte on only after writing
//! it to the staging file and the hasher, so whatever the decompressor and the NAR
//! reader consume is exactly what gets stored and hashed. Once the NAR reader has seen
//! the archive end and the decompressed stream end, the intake must be at EOF too: data
//! after the end of the compressed stream is an error, never silently stored. Only then
//! is the FileHash compared, the staging file flushed, fsynced and renamed into place.
//!
//! Failures are recorded where they happen (the intake knows about the body, the disk
//! and the cap; the decoder watch knows about the codec) and take precedence in that
//! order over what the NAR reader makes of the broken stream, so a full disk is never
//! reported as a corrupt upload. The staging file is a `tempfile::NamedTempFile`, whose
//! drop removes it: every early return cleans up.

use std::fs::File;
use std::io::{self, Read, Write};

use nix_formats::nar::{self, NarReadError, NarSummary};
use nix_formats::{Hash, Sha256Hasher};
use tempfile::NamedTempFile;

use super::staging::Staging;
use super::{AfterStore, BlobError, BlobStore, Compression, ExpectedNar, Ingested};

/// Read buffer of a copy, which is only hashed and stored.
const COPY_BUFFER: usize = 256 * 1024;

/// How often (in compressed bytes received) free space is checked against the reserve,
/// so an upload without a declared length cannot eat into it either. A `statvfs` per
/// MiB costs nothing next to hashing and decompressing that MiB.
const SPACE_CHECK_INTERVAL: u64 = 1 << 20;

/// Decoder memory cap for xz. `xz -9e` needs 65 MiB to decode; the cap keeps a hostile
/// header from making us reserve a 1.5 GiB dictionary.
const XZ_MEMLIMIT: u64 = 256 << 20;

pub(super) fn ingest(
    store: &BlobStore,
    body: impl Read,
    compression: Compression,
    expected_file_hash: Option<&Hash>,
    expected_nar: Option<ExpectedNar<'_>>,
    max_bytes: u64,
) -> Result<Ingested, BlobError> {
    let staging = staging_file(store, "upload-")?;
    let (summary, file_hash, file_size) = receive(
        store,
        Some(Staging::buffered(staging.as_file())),
        body,
        expected_file_hash,
        max_bytes,
        |intake| read_archive(intake, compression),
    )?;
    check_nar(&summary, expected_nar)?;
    place(store, staging, &file_hash, file_size)?;
    Ok(Ingested {
        file_hash,
        file_size,
        nar_hash: summary.nar_hash,
        nar_size: summary.nar_size,
        compression,
    })
}

/// A new staging file, removed on drop (any `?` after it leaves nothing behind). A
/// body of unknown length is refused before it is read when the disk is already into
/// its reserve; from then on, `Intake` checks as bytes arrive.
fn staging_file(store: &BlobStore, prefix: &str) -> Result<NamedTempFile, BlobError> {
    store.check_reserve(0)?;
    tempfile::Builder::new()
        .prefix(prefix)
        .tempfile_in(&store.staging)
        .map_err(|e| store.write_error(e, 0))
}

/// Verifies an assembled upload in place and renames it into the store; see
/// [`BlobStore::adopt`].
pub(super) fn adopt(
    store: &BlobStore,
    path: &std::path::Path,
    compression: Compression,
    expected: ExpectedNar<'_>,
    max_bytes: u64,
) -> Result<Ingested, BlobError> {
    let file = File::options()
        .read(true)
        .write(true)
        .open(path)
        .map_err(BlobError::Io)?;
    // From here on the file is ours: dropping it (any `?`) deletes it.
    let temp_path = tempfile::TempPath::try_from_path(path).map_err(BlobError::Io)?;
    let owned = NamedTempFile::from_parts(file, temp_path);
    let reader = owned.as_file().try_clone().map_err(BlobError::Io)?;
    let (summary, file_hash, file_size) =
        receive(store, None, reader, None, max_bytes, |intake| {
            read_archive(intake, compression)
        })?;
    check_nar(&summary, Some(expected))?;
    owned
        .as_file()
        .sync_all()
        .map_err(|e| store.write_error(e, file_size))?;
    place(store, owned, &file_hash, file_size)?;
    Ok(Ingested {
        file_hash,
        file_size,
        nar_hash: summary.nar_hash,
        nar_size: summary.nar_size,
        compression,
    })
}

/// Stores a byte-for-byte copy of a blob another node verified; see
/// [`BlobStore::ingest_replica`]. Only the FileHash is checked: bytes that hash to it
/// are the bytes whose archive was verified at the first ingest.
pub(super) fn copy(
    store: &BlobStore,
    body: impl Read,
    compression: Compression,
    file_hash: &Hash,
    expected: ExpectedNar<'_>,
    max_bytes: u64,
    after: AfterStore,
) -> Result<Ingested, BlobError> {
    let staging = staging_file(store, "copy-")?;
    let writer = match after {
        AfterStore::KeepCached => Staging::buffered(staging.as_file()),
        AfterStore::DropCached => Staging::around_cache(staging.as_file()),
    };
    let ((), file_hash, file_size) = receive(
        store,
        Some(writer),
        body,
        Some(file_hash),
        max_bytes,
        |intake| intake.drain(),
    )?;
    if after == AfterStore::DropCached {
        // Only a hint: the pages are clean now, and keeping them is never wrong.
        let _ = rustix::fs::fadvise(staging.as_file(), 0, None, rustix::fs::Advice::DontNeed);
    }
    place(store, staging, &file_hash, file_size)?;
    Ok(Ingested {
        file_hash,
        file_size,
        nar_hash: expected.nar_hash.clone(),
        nar_size: expected.nar_size,
        compression,
    })
}

fn check_nar(summary: &NarSummary, expected: Option<ExpectedNar<'_>>) -> Result<(), BlobError> {
    let Some(expected) = expected else {
        return Ok(());
    };
    if summary.nar_size != expected.nar_size {
        return Err(BlobError::NarMismatch(format!(
            "its NarSize is {}, not {}",
            summary.nar_size, expected.nar_size
        )));
    }
    if summary.nar_hash != *expected.nar_hash {
        return Err(BlobError::NarMismatch(format!(
            "its NarHash is {}, not {}",
            summary.nar_hash.to_nix32_string(),
            expected.nar_hash.to_nix32_string()
        )));
    }
    Ok(())
}

/// Streams `body` through an [`Intake`], into `staging` when given (an assembled file
/// being adopted is only read), with `read` consuming it to its end ([`read_archive`]
/// for an archive, [`Intake::drain`] for bytes only hashed), and makes the staging file
/// durable. Returns what `read` found, FileHash and FileSize.
fn receive<'a, R: Read, T>(
    store: &'a BlobStore,
    staging: Option<Staging<'a>>,
    body: R,
    expected_file_hash: Option<&Hash>,
    max_bytes: u64,
    read: impl FnOnce(&mut Intake<'a, R>) -> Result<T, BlobError>,
) -> Result<(T, Hash, u64), BlobError> {
    let mut intake = Intake::new(store, body, staging, max_bytes);
    let found = read(&mut intake)?;
    let (file_hash, file_size, writer) = intake.finish();
    if let Some(expected) = expected_file_hash {
        if *expected != file_hash {
            return Err(BlobError::FileHashMismatch {
                expected: expected.clone(),
                actual: file_hash,
            });
        }
    }
    if let Some(writer) = writer {
        writer
            .finish()
            .map_err(|e| store.write_error(e, file_size))?
            .sync_all()
            .map_err(|e| store.write_error(e, file_size))?;
    }
    Ok((found, file_hash, file_size))
}

/// Reads the body as one whole archive in `compression`, to its end: NarHash, NarSize.
fn read_archive<R: Read>(
    intake: &mut Intake<'_, R>,
    compression: Compression,
) -> Result<NarSummary, BlobError> {
    let summary = match validate(intake, compression) {
        Ok(summary) => summary,
        Err(e) => return Err(intake.failure.take().unwrap_or(e)),
    };
    intake.expect_eof(compression)?;
    Ok(summary)
}

/// Renames a verified, fsynced staging file to its blob path without replacing an
/// existing blob (same hash, same bytes: the re-upload is dropped), then fsyncs the
/// directory so the blob survives a crash once we acknowledge it.
fn place(
    store: &BlobStore,
    staging: NamedTempFile,
    file_hash: &Hash,
    file_size: u64,
) -> Result<(), BlobError> {
    let dest = store.blob_path(file_hash);
    // A new directory needs a block: on a full disk that is a 507 like any other.
    store
        .ensure_fanout_dir(&dest)
        .map_err(|e| store.write_error(e, file_size))?;
    match staging.persist_noclobber(&dest) {
        // The bytes just verified are the file now in place.
        Ok(file) => store.note_verified(file_hash, &file),
        // Dropping the returned temp file removes the staging copy.
        Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => {
            drop(e.file);
            // The blob is wanted again: its age restarts, so a sweep of unregistered
            // files (cluster GC) does not take it while this upload registers it.
            if let Ok(f) = std::fs::File::options().write(true).open(&dest) {
                let _ = f.set_modified(std::time::SystemTime::now());
            }
        }
        Err(e) => return Err(BlobError::Io(e.error)),
    }
    // Also when the blob existed: a concurrent ingest may have renamed it a moment ago
    // and not yet made the rename durable.
    super::sync_dir(dest.parent().expect("a blob path has a fan-out directory"))
        .map_err(BlobError::Io)
}

/// Decompresses and validates, returning NarHash and NarSize. The error is what the
/// codec or the NAR reader saw; the caller prefers the intake's own failure, if any.
fn validate<R: Read>(
    intake: &mut Intake<'_, R>,
    compression: Compression,
) -> Result<NarSummary, BlobError> {
    let mut codec_error = None;
    let result = match compression {
        Compression::None => nar::validate(&mut *intake),
        Compression::Zstd => {
            let decoder = zstd::stream::read::Decoder::new(&mut *intake).map_err(BlobError::Io)?;
            nar::validate(DecoderWatch::new(decoder, &mut codec_error))
        }
        Compression::Xz => {
            // Concatenated streams (and the padding between them) are valid xz.
            let stream =
                xz2::stream::Stream::new_stream_decoder(XZ_MEMLIMIT, xz2::stream::CONCATENATED)
                    .map_err(|e| BlobError::Io(e.into()))?;
            let decoder = xz2::read::XzDecoder::new_stream(&mut *intake, stream);
            nar::validate(DecoderWatch::new(decoder, &mut codec_error))
        }
        Compression::Bzip2 => {
            let decoder = bzip2::read::MultiBzDecoder::new(&mut *intake);
            nar::validate(DecoderWatch::new(decoder, &mut codec_error))
        }
    };
    match (result, codec_error) {
        (Ok(summary), _) => Ok(summary),
        // Checked first: a codec failing at a truncated input reports UnexpectedEof,
        // which the NAR reader would call a truncated archive.
        (Err(_), Some(reason)) => Err(BlobError::Decompress(reason)),
        (Err(NarReadError::Io(e)), None) => Err(BlobError::Io(e)),
        (Err(e), None) => Err(BlobError::NotANar(e.to_string())),
    }
}

/// The error the intake hands its reader after it recorded the real one.
fn intake_failed() -> io::Error {
    io::Error::other("upload intake failed")
}

/// Reads the body for the decompressor; see the module docs.
struct Intake<'a, R> {
    store: &'a BlobStore,
    body: R,
    /// `None` when the body is already on disk (an adopted file).
    staging: Option<Staging<'a>>,
    hasher: Sha256Hasher,
    received: u64,
    max_bytes: u64,
    next_space_check: u64,
    /// Set on the first failure; every later read fails.
    failure: Option<BlobError>,
}

impl<'a, R: Read> Intake<'a, R> {
    fn new(store: &'a BlobStore, body: R, staging: Option<Staging<'a>>, max_bytes: u64) -> Self {
        Intake {
            store,
            body,
            staging,
            hasher: Sha256Hasher::new(),
            received: 0,
            max_bytes,
            next_space_check: SPACE_CHECK_INTERVAL,
            failure: None,
        }
    }

    /// FileHash, FileSize and the (not yet flushed) staging writer.
    fn finish(self) -> (Hash, u64, Option<Staging<'a>>) {
        (self.hasher.finish(), self.received, self.staging)
    }

    fn fail(&mut self, e: BlobError) -> io::Error {
        self.failure = Some(e);
        intake_failed()
    }

    /// Reads the body to its end (staging and hashing it) without looking inside.
    fn drain(&mut self) -> Result<(), BlobError> {
        let mut buf = vec![0u8; COPY_BUFFER];
        loop {
            match self.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.failure.take().unwrap_or(BlobError::Body(e))),
            }
        }
    }

    /// After the decompressed stream ended: the compressed stream must end too. The
    /// decoders read to EOF themselves (all accept concatenated streams), so this only
    /// confirms it; a byte here was not part of any stream and is refused.
    fn expect_eof(&mut self, compression: Compression) -> Result<(), BlobError> {
        let mut probe = [0u8; 1];
        loop {
            match self.read(&mut probe) {
                Ok(0) => return Ok(()),
                Ok(_) => {
                    return Err(match compression {
                        Compression::None => {
                            BlobError::NotANar(NarReadError::TrailingData.to_string())
                        }
                        _ => BlobError::Decompress(
                            "data after the end of the compressed stream".into(),
                        ),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.failure.take().unwrap_or(BlobError::Body(e))),
            }
        }
    }
}

impl<R: Read> Read for Intake<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.failure.is_some() {
            return Err(intake_failed());
        }
        if buf.is_empty() {
            return Ok(0);
        }
        // One byte past the cap is enough to know the body is too large.
        let room = self
            .max_bytes
            .saturating_sub(self.received)
            .saturating_add(1);
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = match self.body.read(&mut buf[..want]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => return Err(self.fail(BlobError::Body(e))),
        };
        let received = self.received + n as u64;
        if received > self.max_bytes {
            let max = self.max_bytes;
            return Err(self.fail(BlobError::TooLarge { max }));
        }
        if let Some(staging) = &mut self.staging {
            if let Err(e) = staging.write_all(&buf[..n]) {
                let e = self.store.write_error(e, received);
                return Err(self.fail(e));
            }
        }
        self.hasher.update(&buf[..n]);
        self.received = received;
        if self.staging.is_some() && received >= self.next_space_check {
            self.next_space_check = received.saturating_add(SPACE_CHECK_INTERVAL);
            if let Err(e) = self.store.check_reserve(received) {
                return Err(self.fail(e));
            }
        }
        Ok(n)
    }
}

/// Passes a decoder's output through, remembering why it failed: the NAR reader turns
/// I/O errors into its own (an `UnexpectedEof` becomes "truncated"), and an uploader
/// should hear that the compression is broken rather than the archive.
struct DecoderWatch<'a, D> {
    decoder: D,
    error: &'a mut Option<String>,
}

impl<'a, D> DecoderWatch<'a, D> {
    fn new(decoder: D, error: &'a mut Option<String>) -> Self {
        DecoderWatch { decoder, error }
    }
}

impl<D: Read> Read for DecoderWatch<'_, D> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.decoder.read(buf).inspect_err(|e| {
            if e.kind() != io::ErrorKind::Interrupted && self.error.is_none() {
                *self.error = Some(e.to_string());
            }
        })
    }
}

impl BlobStore {
    /// Classifies a failed write to staging: a full disk (or quota) is
    /// `InsufficientStorage`, anything else is `Io`.
    pub fn write_error(&self, e: io::Error, needed: u64) -> BlobError {
        match e.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
                BlobError::InsufficientStorage {
                    needed,
                    available: self.available().unwrap_or(0),
                }
            }
            _ => BlobError::Io(e),
        }
    }

    /// Fails once free space has dropped below the reserve while `received` bytes of
    /// an upload are in staging.
    pub fn check_reserve(&self, received: u64) -> Result<(), BlobError> {
        let free = self.free_bytes().map_err(BlobError::Io)?;
        if free < self.reserve_bytes {
            return Err(BlobError::InsufficientStorage {
                needed: received,
                available: 0,
            });
        }
        Ok(())
    }
}
