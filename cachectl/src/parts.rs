//! Turning a store path into upload parts, straight from disk: one blocking thread
//! dumps the NAR (`nix_formats::nar::dump_path`), drops the bytes before the offset the
//! cache already has, and cuts the rest into parts of at most `part_size` NAR bytes,
//! each compressed as its own complete zstd frame and handed over in chunks through a
//! small bounded channel. The NAR is never held whole: memory per upload is a few
//! chunks and one zstd context, whatever the NAR's size, and a slow cache slows the
//! reader down.
//!
//! Resuming re-dumps the NAR and skips what the cache has, which costs a read of the
//! skipped bytes but no network traffic; a NAR is dumped once when nothing fails.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;
use indicatif::ProgressBar;
use tokio::sync::mpsc;

/// Compressed bytes per chunk sent down a part's channel.
const CHUNK: usize = 128 * 1024;
/// Chunks buffered per part: the bound on memory between the reader and the network.
const CHUNKS_IN_FLIGHT: usize = 4;

/// What a part's body channel carries. `End` marks a complete frame: a channel closed
/// without it means the producer failed mid-part, and the body must fail rather than
/// end cleanly, so the cache never takes a cut-off part for a whole one.
pub enum Chunk {
    Data(Bytes),
    End,
}

/// One part: NAR bytes `[offset, offset + len)`, as zstd chunks.
pub struct Part {
    pub offset: u64,
    pub len: u64,
    pub body: mpsc::Receiver<Chunk>,
}

/// Why a producer stopped early.
#[derive(Debug)]
pub enum ProduceError {
    /// The consumer went away (a failed request, a deadline): nothing is wrong here.
    Cancelled,
    /// The path could not be archived as the database describes it; retrying will not
    /// help until someone repairs the store.
    Failed(String),
}

/// Counters the producer feeds.
#[derive(Clone)]
pub struct Meter {
    /// Compressed bytes handed to the network, retries included.
    pub wire: Arc<AtomicU64>,
    /// Progress in NAR bytes; each NAR byte counts once, however often it is resent.
    pub bar: ProgressBar,
    /// How far into this NAR the bar has been advanced (one per path, across attempts).
    pub counted: Arc<AtomicU64>,
}

/// What to produce.
pub struct Job {
    /// Where the path's files are on disk.
    pub real_path: PathBuf,
    /// For messages: the store path as users know it.
    pub display: String,
    /// NarSize from Nix's database; the archive must have exactly this size.
    pub nar_size: u64,
    /// NAR bytes the cache already has.
    pub skip: u64,
    pub part_size: u64,
    pub zstd_level: i32,
}

/// The running producer: parts arrive on `parts`; `handle` says how it ended.
pub struct Producer {
    pub parts: mpsc::Receiver<Part>,
    pub handle: tokio::task::JoinHandle<Result<(), ProduceError>>,
}

/// Starts producing on the blocking pool. Dropping `parts` (and the current part's
/// body) stops the producer at its next send.
pub fn spawn(job: Job, meter: Meter) -> Producer {
    let (tx, parts) = mpsc::channel(1);
    let handle = tokio::task::spawn_blocking(move || produce(job, meter, tx));
    Producer { parts, handle }
}

/// The marker inside the `io::Error` a send fails with when the consumer is gone.
#[derive(Debug)]
struct Gone;

impl std::fmt::Display for Gone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the upload was cancelled")
    }
}

impl std::error::Error for Gone {}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, Gone)
}

fn is_gone(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<Gone>())
}

fn produce(job: Job, meter: Meter, parts: mpsc::Sender<Part>) -> Result<(), ProduceError> {
    let mut splitter = Splitter {
        job: &job,
        meter: &meter,
        parts,
        pos: 0,
        part_end: 0,
        encoder: None,
        problem: None,
    };
    let result = nix_formats::nar::dump_path(&job.real_path, &mut splitter);
    if let Some(problem) = splitter.problem.take() {
        return Err(ProduceError::Failed(problem));
    }
    match result {
        Ok(total) if total == job.nar_size => Ok(()),
        Ok(total) => Err(ProduceError::Failed(format!(
            "the NAR of {} is {total} bytes but Nix's database says {}: was the path modified?",
            job.display, job.nar_size
        ))),
        Err(nix_formats::NarWriteError::Output(e)) if is_gone(&e) => Err(ProduceError::Cancelled),
        Err(e) => Err(ProduceError::Failed(format!(
            "cannot archive {}: {e}",
            job.display
        ))),
    }
}

/// The `Write` end `dump_path` writes the NAR into.
struct Splitter<'a> {
    job: &'a Job,
    meter: &'a Meter,
    parts: mpsc::Sender<Part>,
    /// NAR bytes seen so far, skipped ones included.
    pos: u64,
    /// Where the current part ends.
    part_end: u64,
    encoder: Option<zstd::stream::write::Encoder<'static, PartSink>>,
    /// A reason to stop that is not an I/O error of ours (the NAR is too long).
    problem: Option<String>,
}

impl Splitter<'_> {
    fn start_part(&mut self) -> io::Result<()> {
        let len = self.job.part_size.min(self.job.nar_size - self.pos);
        let (tx, body) = mpsc::channel(CHUNKS_IN_FLIGHT);
        self.parts
            .blocking_send(Part {
                offset: self.pos,
                len,
                body,
            })
            .map_err(|_| gone())?;
        let sink = PartSink {
            tx,
            buf: Vec::with_capacity(CHUNK),
            wire: self.meter.wire.clone(),
        };
        let mut encoder = zstd::stream::write::Encoder::new(sink, self.job.zstd_level)?;
        encoder.set_pledged_src_size(Some(len))?;
        self.encoder = Some(encoder);
        self.part_end = self.pos + len;
        Ok(())
    }

    fn count(&self, from: u64, to: u64) {
        // Only bytes past the furthest point counted before move the bar.
        let seen = self.meter.counted.fetch_max(to, Ordering::Relaxed);
        if to > seen {
            self.meter.bar.inc(to - seen.max(from));
        }
    }
}

impl Write for Splitter<'_> {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let total = data.len();
        while !data.is_empty() {
            if self.pos < self.job.skip {
                let n = (self.job.skip - self.pos).min(data.len() as u64) as usize;
                self.pos += n as u64;
                data = &data[n..];
                continue;
            }
            if self.pos >= self.job.nar_size {
                self.problem = Some(format!(
                    "the NAR of {} is longer than the {} bytes Nix's database says: was the path modified?",
                    self.job.display, self.job.nar_size
                ));
                return Err(io::Error::other("NAR too long"));
            }
            if self.encoder.is_none() {
                self.start_part()?;
            }
            let n = (self.part_end - self.pos).min(data.len() as u64) as usize;
            let encoder = self.encoder.as_mut().expect("a part is open");
            encoder.write_all(&data[..n])?;
            self.count(self.pos, self.pos + n as u64);
            self.pos += n as u64;
            data = &data[n..];
            if self.pos == self.part_end {
                let encoder = self.encoder.take().expect("a part is open");
                encoder.finish()?.finish()?;
            }
        }
        Ok(total)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Collects one part's compressed bytes into chunks for its channel.
struct PartSink {
    tx: mpsc::Sender<Chunk>,
    buf: Vec<u8>,
    wire: Arc<AtomicU64>,
}

impl PartSink {
    fn send_buf(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.wire.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        self.tx
            .blocking_send(Chunk::Data(Bytes::from(chunk)))
            .map_err(|_| gone())
    }

    /// The frame is complete: send the rest and the end marker.
    fn finish(mut self) -> io::Result<()> {
        self.send_buf()?;
        self.tx.blocking_send(Chunk::End).map_err(|_| gone())
    }
}

impl Write for PartSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send_buf()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A part's body as an HTTP body stream. A channel that closes before `End` yields an
/// error, which makes the HTTP client abort the request instead of ending it cleanly.
/// `activity` is bumped on every chunk (for the stall watchdog).
pub fn body_stream(
    rx: mpsc::Receiver<Chunk>,
    activity: Arc<AtomicU64>,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    futures_util::stream::unfold(Some(rx), move |state| {
        let activity = activity.clone();
        async move {
            let mut rx = state?;
            match rx.recv().await {
                Some(Chunk::Data(b)) => {
                    activity.fetch_add(1, Ordering::Relaxed);
                    Some((Ok(b), Some(rx)))
                }
                Some(Chunk::End) => None,
                None => Some((
                    Err(io::Error::other("the NAR reader stopped mid-part")),
                    None,
                )),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn tree() -> (tempfile::TempDir, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("p");
        std::fs::create_dir(&root).unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(root.join("big"), &data).unwrap();
        std::fs::write(root.join("small"), b"hi").unwrap();
        let mut nar = Vec::new();
        nix_formats::nar::dump_path(&root, &mut nar).unwrap();
        (dir, nar)
    }

    fn meter() -> Meter {
        Meter {
            wire: Arc::default(),
            bar: ProgressBar::hidden(),
            counted: Arc::default(),
        }
    }

    /// Runs a producer to the end, decompressing each part on its own.
    async fn collect(
        job: Job,
        meter: Meter,
    ) -> (Vec<(u64, u64, Vec<u8>)>, Result<(), ProduceError>) {
        let mut p = spawn(job, meter);
        let mut parts = Vec::new();
        while let Some(part) = p.parts.recv().await {
            let body: Vec<io::Result<Bytes>> =
                body_stream(part.body, Arc::default()).collect().await;
            if body.iter().any(Result::is_err) {
                continue;
            }
            let compressed: Vec<u8> = body.into_iter().flat_map(|b| b.unwrap().to_vec()).collect();
            let nar = zstd::decode_all(&compressed[..]).unwrap();
            parts.push((part.offset, part.len, nar));
        }
        (parts, p.handle.await.unwrap())
    }

    fn job(dir: &tempfile::TempDir, nar_size: u64, skip: u64, part_size: u64) -> Job {
        Job {
            real_path: dir.path().join("p"),
            display: "/nix/store/x-p".into(),
            nar_size,
            skip,
            part_size,
            zstd_level: 3,
        }
    }

    #[tokio::test]
    async fn parts_are_frames_of_the_nar_from_the_offset() {
        let (dir, nar) = tree();
        let size = nar.len() as u64;
        for (skip, part_size) in [
            (0, 1 << 30),
            (0, 100_000),
            (123_457, 65_536),
            (size - 1, 10),
        ] {
            let m = meter();
            let (parts, result) = collect(job(&dir, size, skip, part_size), m.clone()).await;
            result.unwrap();
            let mut at = skip;
            for (offset, len, bytes) in &parts {
                assert_eq!(*offset, at);
                assert!(*len <= part_size && *len > 0);
                assert_eq!(bytes.len() as u64, *len);
                assert_eq!(&nar[at as usize..(at + len) as usize], &bytes[..]);
                at += len;
            }
            assert_eq!(at, size);
            assert_eq!(m.bar.position(), size - skip);
            assert!(m.wire.load(Ordering::Relaxed) > 0);
        }
    }

    #[tokio::test]
    async fn a_size_other_than_the_database_says_fails() {
        let (dir, nar) = tree();
        let size = nar.len() as u64;
        for wrong in [size - 8, size + 8] {
            let (_, result) = collect(job(&dir, wrong, 0, 1 << 20), meter()).await;
            match result {
                Err(ProduceError::Failed(m)) => assert!(m.contains("modified"), "{m}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_cut_off_part_ends_its_body_with_an_error() {
        let (dir, nar) = tree();
        // Claims more than the archive holds, in one part: the part never completes.
        let mut p = spawn(job(&dir, nar.len() as u64 + 8, 0, 1 << 30), meter());
        let part = p.parts.recv().await.unwrap();
        let body: Vec<io::Result<Bytes>> = body_stream(part.body, Arc::default()).collect().await;
        assert!(body.last().unwrap().is_err());
        assert!(matches!(
            p.handle.await.unwrap(),
            Err(ProduceError::Failed(_))
        ));
    }

    #[tokio::test]
    async fn dropping_the_consumer_cancels() {
        let (dir, nar) = tree();
        let mut p = spawn(job(&dir, nar.len() as u64, 0, 1000), meter());
        let part = p.parts.recv().await.unwrap();
        drop(part);
        drop(p.parts);
        assert!(matches!(
            p.handle.await.unwrap(),
            Err(ProduceError::Cancelled)
        ));
    }

    #[tokio::test]
    async fn resent_bytes_count_once() {
        let (dir, nar) = tree();
        let size = nar.len() as u64;
        let m = meter();
        collect(job(&dir, size, 0, 50_000), m.clone())
            .await
            .1
            .unwrap();
        collect(job(&dir, size, 100_000, 50_000), m.clone())
            .await
            .1
            .unwrap();
        assert_eq!(m.bar.position(), size);
    }
}
