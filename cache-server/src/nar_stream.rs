//! NAR bodies: the archive is produced on a blocking thread (our NAR writer, optionally
//! through a zstd or xz encoder) and handed to the async side in chunks over a bounded
//! channel, so memory stays flat whatever the NAR size and a slow client slows the
//! producer instead of growing a buffer.
//!
//! Anything that goes wrong mid-way (a file that vanished or changed size, a read
//! error) is sent down the channel as an error, which makes hyper abort the connection:
//! the client sees a short body against `Content-Length` (or an unterminated chunked
//! body), never a clean end.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_stream::wrappers::ReceiverStream;

use crate::metrics::{Encoding, Metrics};
use crate::variants::VariantWriter;
use crate::zerocopy::Mapped;

/// Size of the chunks handed to hyper.
const CHUNK: usize = 128 * 1024;
/// Chunks in flight between producer and connection.
const DEPTH: usize = 4;
/// Smallest file whose contents an identity stream on a [`crate::zerocopy::Zerocopy`]
/// connection sends from a mapping (so with `sendfile`) instead of reading: below
/// this, mapping and unmapping cost more than the copies they save.
const MAP_MIN: u64 = 64 * 1024;
/// Pending bytes this short are copied out when shipped, so the chunk buffer is kept
/// (before a mapped file, most of what is pending is a few dozen bytes of framing).
const SHIP_COPY_MAX: usize = 4096;

/// A `Write` that forwards bytes in chunks to the response body, skipping the first
/// `skip` bytes and refusing to go past `limit` (for ranges and for checking that the
/// archive has the size the narinfo promised).
struct ChunkSink {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: BytesMut,
    skip: u64,
    /// Bytes still allowed through after `skip`; `None` for no limit.
    remaining: Option<u64>,
    /// Bytes handed on (after skip), for the metrics.
    sent: u64,
    /// Large files go out as mappings (the connection sends them with `sendfile`).
    map_files: bool,
}

/// Marks the early stop of a range request: the producer ran past the range's end.
#[derive(Debug)]
struct RangeDone;
impl std::fmt::Display for RangeDone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("range complete")
    }
}
impl std::error::Error for RangeDone {}

impl ChunkSink {
    fn new(tx: mpsc::Sender<io::Result<Bytes>>, skip: u64, limit: Option<u64>) -> Self {
        ChunkSink {
            tx,
            buf: BytesMut::with_capacity(CHUNK),
            skip,
            remaining: limit,
            sent: 0,
            map_files: false,
        }
    }

    fn ship(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = if self.buf.len() <= SHIP_COPY_MAX {
            let small = Bytes::copy_from_slice(&self.buf);
            self.buf.clear();
            small
        } else {
            let chunk = self.buf.split().freeze();
            self.buf.reserve(CHUNK);
            chunk
        };
        self.send(chunk)
    }

    fn send(&mut self, chunk: Bytes) -> io::Result<()> {
        self.sent += chunk.len() as u64;
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "client went away"))
    }

    fn fail(&self, e: io::Error) {
        let _ = self.tx.blocking_send(Err(e));
    }
}

impl Write for ChunkSink {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let total = data.len();
        if self.skip > 0 {
            let s = self.skip.min(data.len() as u64) as usize;
            self.skip -= s as u64;
            data = &data[s..];
        }
        if let Some(rem) = self.remaining {
            if data.len() as u64 > rem {
                data = &data[..rem as usize];
                self.remaining = Some(0);
                self.buf.extend_from_slice(data);
                self.ship()?;
                return Err(io::Error::other(RangeDone));
            }
            self.remaining = Some(rem - data.len() as u64);
        }
        // A large write (a whole zstd frame) goes out in chunks of the usual size, so
        // what waits in the channel stays bounded by its depth.
        while !data.is_empty() {
            let room = CHUNK.saturating_sub(self.buf.len()).max(1).min(data.len());
            let (now, rest) = data.split_at(room);
            self.buf.extend_from_slice(now);
            if self.buf.len() >= CHUNK {
                self.ship()?;
            }
            data = rest;
        }
        Ok(total)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl nix_formats::nar::NarOutput for ChunkSink {
    fn takes_contents(&self, size: u64) -> bool {
        self.map_files
            && size >= MAP_MIN
            && self.skip == 0
            && self.remaining.is_none_or(|r| r >= size)
    }

    fn file_contents(&mut self, file: File, size: u64) -> io::Result<Option<File>> {
        let mapped = match Mapped::new(file, size) {
            Ok(m) => m,
            Err((file, e)) => {
                tracing::debug!(error = %e, "mapping a store file failed; reading it");
                return Ok(Some(file));
            }
        };
        self.ship()?;
        if let Some(rem) = &mut self.remaining {
            *rem -= size;
        }
        self.send(mapped.into_bytes(0, size))?;
        Ok(None)
    }
}

fn is_range_done(e: &nix_formats::nar::NarWriteError) -> bool {
    match e {
        nix_formats::nar::NarWriteError::Output(io) => {
            io.get_ref().is_some_and(|inner| inner.is::<RangeDone>())
        }
        _ => false,
    }
}

/// What to produce.
pub enum Plan {
    /// The plain archive, `len` bytes starting at `start`. `nar_size` is what the
    /// narinfo promised; an archive of any other size aborts the stream. With
    /// `zerocopy` (the connection is a [`crate::zerocopy::Zerocopy`] one), large files
    /// go out as mappings, which the connection sends with `sendfile`.
    Identity {
        start: u64,
        len: u64,
        nar_size: u64,
        zerocopy: bool,
    },
    /// The archive through an encoder; `variant` keeps a copy for the variant cache.
    Compressed {
        encoding: Encoding,
        level: u32,
        nar_size: u64,
        permit: OwnedSemaphorePermit,
        variant: Option<VariantWriter>,
    },
}

/// Starts producing the NAR of `path` on the blocking pool and returns the body.
pub fn spawn(path: PathBuf, plan: Plan, metrics: Arc<Metrics>) -> Body {
    let (tx, rx) = mpsc::channel(DEPTH);
    tokio::task::spawn_blocking(move || produce(path, plan, tx, &metrics));
    Body::from_stream(ReceiverStream::new(rx))
}

fn produce(path: PathBuf, plan: Plan, tx: mpsc::Sender<io::Result<Bytes>>, metrics: &Metrics) {
    match plan {
        Plan::Identity {
            start,
            len,
            nar_size,
            zerocopy,
        } => {
            let whole = start == 0 && len == nar_size;
            let mut sink = ChunkSink::new(tx, start, Some(len));
            sink.map_files = zerocopy;
            let result = nix_formats::nar::dump_path_to(&path, &mut sink);
            let outcome = match result {
                Ok(n) if n == nar_size => sink.ship(),
                Ok(_) => Err(io::Error::other("archive size differs from the narinfo")),
                // Running past the range's end is how a range stops early; for a whole
                // NAR it means the archive grew since the narinfo was made.
                Err(e) if !whole && is_range_done(&e) => Ok(()),
                Err(e) => Err(nar_io(e)),
            };
            metrics.add_bytes(Encoding::Identity, sink.sent);
            if let Err(e) = outcome {
                abort(metrics, &path, &e);
                sink.fail(e);
            }
        }
        Plan::Compressed {
            encoding,
            level,
            nar_size,
            permit,
            variant,
        } => {
            let mut tee = Tee {
                sink: ChunkSink::new(tx, 0, None),
                variant,
            };
            let result =
                compress(&path, encoding, level, nar_size, &mut tee).and_then(|()| tee.sink.ship());
            drop(permit);
            metrics.add_bytes(encoding, tee.sink.sent);
            match result {
                Ok(()) => {
                    // The body ends first (dropping the sender closes the stream); then
                    // the variant's rename, or its move out of memory, happens behind it.
                    let Tee { sink, variant } = tee;
                    drop(sink);
                    if let Some(v) = variant {
                        v.commit();
                    }
                }
                Err(e) => {
                    abort(metrics, &path, &e);
                    tee.sink.fail(e);
                }
            }
        }
    }
}

fn abort(metrics: &Metrics, path: &std::path::Path, e: &io::Error) {
    use std::sync::atomic::Ordering::Relaxed;
    metrics.nar_aborts.fetch_add(1, Relaxed);
    if e.kind() == io::ErrorKind::BrokenPipe {
        tracing::debug!(path = %path.display(), "client went away mid-NAR");
    } else {
        tracing::warn!(path = %path.display(), error = %e, "aborting NAR stream");
    }
}

/// Writes to the client and, while that works, to the variant file too; a variant
/// that fails to write is dropped (and its temp file removed) without disturbing the
/// client.
struct Tee {
    sink: ChunkSink,
    variant: Option<VariantWriter>,
}

impl Write for Tee {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.sink.write(data)?;
        if let Some(v) = &mut self.variant {
            if v.write_all(data).is_err() {
                self.variant = None;
            }
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// NAR bytes per zstd frame. Each frame is compressed in one call from a buffer of
/// its own, which keeps libzstd on its fastest path (no streaming window that wraps
/// and turns every later match into a two-segment search); a frame starts without the
/// previous one's history, which costs about 0.2% of size at this length. Decoders,
/// Nix's included, read concatenated frames as one stream.
const ZSTD_FRAME: usize = 1 << 20;

/// A zstd context with its input and output buffers, kept between responses: most
/// NARs are small, and setting all this up afresh would cost more than compressing
/// them. At most `max_encoders` are in use at once (the permit), so the pool stays
/// that small.
struct ZstdEncoder {
    ctx: zstd::zstd_safe::CCtx<'static>,
    /// Always [`ZSTD_FRAME`] bytes long (zeroed once, when the encoder is made); the
    /// frame being gathered is `input[..filled]`, so neither copying nor reading into
    /// it has to grow or clear anything first.
    input: Vec<u8>,
    filled: usize,
    output: Vec<u8>,
}

static ZSTD_ENCODERS: parking_lot::Mutex<Vec<ZstdEncoder>> = parking_lot::Mutex::new(Vec::new());

/// Encoders kept beyond those in use; more would only hold memory.
const ZSTD_ENCODERS_KEPT: usize = 4;

fn compress(
    path: &std::path::Path,
    encoding: Encoding,
    level: u32,
    nar_size: u64,
    tee: &mut Tee,
) -> io::Result<()> {
    match encoding {
        Encoding::Zstd => {
            let mut enc = ZSTD_ENCODERS.lock().pop().unwrap_or_else(|| ZstdEncoder {
                ctx: zstd::zstd_safe::CCtx::create(),
                input: vec![0; ZSTD_FRAME],
                filled: 0,
                output: Vec::with_capacity(zstd::zstd_safe::compress_bound(ZSTD_FRAME)),
            });
            let result = zstd_into(&mut enc, path, level, nar_size, tee);
            let mut pool = ZSTD_ENCODERS.lock();
            if pool.len() < ZSTD_ENCODERS_KEPT {
                pool.push(enc);
            }
            result?;
        }
        Encoding::Xz => {
            let mut enc = xz2::write::XzEncoder::new(tee, level);
            nix_formats::nar::dump_path(path, &mut enc).map_err(nar_io)?;
            enc.finish()?;
        }
        Encoding::Identity => unreachable!("identity is not a compressed plan"),
    }
    Ok(())
}

/// A libzstd error code as an I/O error (the zstd crate keeps its own mapping private).
fn zstd_err(code: usize) -> io::Error {
    io::Error::other(zstd::zstd_safe::get_error_name(code))
}

/// An archive writer's error as the I/O error a compressing producer returns.
fn nar_io(e: nix_formats::nar::NarWriteError) -> io::Error {
    io::Error::other(e.to_string())
}

fn zstd_into(
    enc: &mut ZstdEncoder,
    path: &std::path::Path,
    level: u32,
    nar_size: u64,
    tee: &mut Tee,
) -> io::Result<()> {
    use zstd::zstd_safe::{CParameter, ResetDirective};
    enc.ctx
        .reset(ResetDirective::SessionAndParameters)
        .map_err(zstd_err)?;
    enc.ctx
        .set_parameter(CParameter::CompressionLevel(level as i32))
        .map_err(zstd_err)?;
    // No frame checksum: clients check the NarHash of what they unpack anyway.
    enc.ctx
        .set_parameter(CParameter::ChecksumFlag(false))
        .map_err(zstd_err)?;
    enc.filled = 0;
    let mut frames = Frames {
        enc,
        tee,
        left: nar_size,
    };
    let written = nix_formats::nar::dump_path_to(path, &mut frames).map_err(nar_io)?;
    frames.emit()?;
    if written != nar_size {
        return Err(io::Error::other(format!(
            "the archive has {written} bytes, the path's record says {nar_size}"
        )));
    }
    Ok(())
}

/// Gathers the archive into frames of [`ZSTD_FRAME`] bytes and passes each on
/// compressed (its header records its size). The contents of regular files are read
/// straight into the frame (no copy through the archive writer's buffer). More archive
/// bytes than the path's NarSize fail the write, so a path that changed on disk never
/// streams on past its recorded size.
struct Frames<'a> {
    enc: &'a mut ZstdEncoder,
    tee: &'a mut Tee,
    left: u64,
}

impl Frames<'_> {
    /// Compresses what is gathered as one frame and passes it on.
    fn emit(&mut self) -> io::Result<()> {
        let enc = &mut *self.enc;
        if enc.filled == 0 {
            return Ok(());
        }
        let input = &enc.input[..enc.filled];
        enc.output.clear();
        enc.output
            .reserve(zstd::zstd_safe::compress_bound(input.len()));
        enc.ctx
            .compress2(&mut enc.output, input)
            .map_err(zstd_err)?;
        enc.filled = 0;
        self.tee.write_all(&enc.output)
    }

    /// Appends `len` more archive bytes, which `put` writes in place one piece at a
    /// time (each piece the room left in the frame, or what remains), and emits every
    /// frame that fills up. Past the NarSize it fails before anything is gathered.
    fn gather(
        &mut self,
        len: u64,
        mut put: impl FnMut(&mut [u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        if len > self.left {
            return Err(io::Error::other(
                "the archive is longer than the path's recorded NarSize",
            ));
        }
        self.left -= len;
        let mut remaining = len;
        while remaining > 0 {
            let enc = &mut *self.enc;
            let n = (ZSTD_FRAME - enc.filled).min(usize::try_from(remaining).unwrap_or(usize::MAX));
            put(&mut enc.input[enc.filled..enc.filled + n])?;
            enc.filled += n;
            remaining -= n as u64;
            if enc.filled == ZSTD_FRAME {
                self.emit()?;
            }
        }
        Ok(())
    }
}

impl Write for Frames<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut rest = data;
        self.gather(data.len() as u64, |piece| {
            let (now, later) = rest.split_at(piece.len());
            piece.copy_from_slice(now);
            rest = later;
            Ok(())
        })?;
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl nix_formats::nar::NarOutput for Frames<'_> {
    fn takes_contents(&self, _size: u64) -> bool {
        true
    }

    fn file_contents(&mut self, mut file: File, size: u64) -> io::Result<Option<File>> {
        self.gather(size, |piece| {
            file.read_exact(piece).map_err(|e| match e.kind() {
                // The length is out already; going on would make a corrupt archive.
                io::ErrorKind::UnexpectedEof => io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "a file shrank while it was being archived",
                ),
                _ => e,
            })
        })?;
        Ok(None)
    }
}

/// What a whole-file stream checks before its last chunk goes out: the bytes must hash
/// to `expected`, else the connection is aborted (the client never sees a clean end of
/// bad bytes) and `on_mismatch` runs.
pub struct Verify {
    pub expected: nix_formats::Hash,
    /// Runs with the file once every byte hashed right (and before the last goes out).
    pub on_match: Box<dyn FnOnce(&std::fs::File) + Send>,
    pub on_mismatch: Box<dyn FnOnce() + Send>,
}

/// Streams `len` bytes of a file already in its final form (a cached variant, a stored
/// blob) from `start` on, read on the blocking pool straight into the chunks that go
/// out: one blocking task per response rather than one per read. A file that ends
/// early aborts the connection.
pub fn spawn_file(
    mut file: std::fs::File,
    start: u64,
    len: u64,
    encoding: Encoding,
    metrics: Arc<Metrics>,
    verify: Option<Verify>,
) -> Body {
    use std::io::{Read, Seek};
    let (tx, rx) = mpsc::channel(DEPTH);
    tokio::task::spawn_blocking(move || {
        let mut sent = 0u64;
        let mut hasher = verify.as_ref().map(|_| nix_formats::Sha256Hasher::new());
        // With a check, each chunk is held back until the next is read, so the last
        // one goes out only after the whole file hashed right.
        let mut held: Option<Bytes> = None;
        let send = |b: Bytes| {
            tx.blocking_send(Ok(b))
                .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "client went away"))
        };
        let mut result = (|| -> io::Result<()> {
            if start > 0 {
                file.seek(io::SeekFrom::Start(start))?;
            }
            let mut read = 0u64;
            while read < len {
                let n = (len - read).min(CHUNK as u64) as usize;
                // `read_to_end` on a `File` fills spare capacity without zeroing it first.
                let mut chunk = Vec::with_capacity(n);
                (&mut file).take(n as u64).read_to_end(&mut chunk)?;
                if chunk.len() != n {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "stored file is shorter than recorded",
                    ));
                }
                read += n as u64;
                let chunk = Bytes::from(chunk);
                match &mut hasher {
                    Some(h) => {
                        h.update(&chunk);
                        if let Some(prev) = held.replace(chunk) {
                            sent += prev.len() as u64;
                            send(prev)?;
                        }
                    }
                    None => {
                        sent += n as u64;
                        send(chunk)?;
                    }
                }
            }
            Ok(())
        })();
        if let (Ok(()), Some(h), Some(v)) = (&result, hasher, verify) {
            if h.finish() == v.expected {
                (v.on_match)(&file);
                if let Some(last) = held.take() {
                    sent += last.len() as u64;
                    result = send(last);
                }
            } else {
                (v.on_mismatch)();
                result = Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "stored blob does not hash to its name",
                ));
            }
        }
        metrics.add_bytes(encoding, sent);
        if let Err(e) = result {
            abort(&metrics, std::path::Path::new("<stored file>"), &e);
            let _ = tx.blocking_send(Err(e));
        }
    });
    Body::from_stream(ReceiverStream::new(rx))
}

/// Streams the NAR inside a compressed blob, decompressed on the blocking pool. The
/// result must be exactly `nar_size` bytes (what was verified at ingest); anything else
/// aborts the connection.
pub fn spawn_decompressed(
    file: std::fs::File,
    compression: store::blobs::Compression,
    nar_size: u64,
    permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
) -> Body {
    let (tx, rx) = mpsc::channel(DEPTH);
    tokio::task::spawn_blocking(move || {
        use store::blobs::Compression as C;
        let mut sink = ChunkSink::new(tx, 0, Some(nar_size));
        let input = io::BufReader::with_capacity(256 * 1024, file);
        let copied = match compression {
            C::None => io::copy(&mut { input }, &mut sink),
            C::Zstd => zstd::stream::read::Decoder::with_buffer(input)
                .and_then(|mut d| io::copy(&mut d, &mut sink)),
            C::Xz => io::copy(
                &mut xz2::read::XzDecoder::new_multi_decoder(input),
                &mut sink,
            ),
            C::Bzip2 => io::copy(&mut bzip2::read::MultiBzDecoder::new(input), &mut sink),
        };
        drop(permit);
        let outcome = match copied {
            Ok(n) if n == nar_size => sink.ship(),
            Ok(_) => Err(io::Error::other("blob decompressed to the wrong size")),
            Err(e) => Err(e),
        };
        metrics.add_bytes(Encoding::Identity, sink.sent);
        if let Err(e) = outcome {
            abort(&metrics, std::path::Path::new("<blob>"), &e);
            sink.fail(e);
        }
    });
    Body::from_stream(ReceiverStream::new(rx))
}
