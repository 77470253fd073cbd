//! Sending stored files to plain HTTP/1 connections with `sendfile(2)`, so their bytes
//! never pass through user space.
//!
//! hyper writes response bodies through the connection's `poll_write_vectored` with
//! slices that point straight into the body's `Bytes` (its queueing write strategy never
//! copies them). A [`Mapped`] body is a read-only `mmap` of a stored file that nothing in
//! this process reads; while it lives, its address range is registered here together
//! with the file. [`SendfileIo`], the connection wrapper, recognises slices that lie in a
//! registered range and hands the kernel the file and offset instead of the memory.
//! Anything that does read the memory (TLS, HTTP/2, a copying strategy) still gets the
//! same bytes from the page cache, only slower; handlers use mapped bodies only on
//! connections marked [`Zerocopy`], so those paths do not arise in practice.
//!
//! Stored blobs and compressed variants are never rewritten in place (new files are
//! renamed in, old ones unlinked), and neither are the files of a Nix store path (Nix
//! makes them read-only; garbage collection unlinks them): a mapping shows the bytes
//! it was made for. Identity NARs of local store paths send their large files this
//! way (`nar_stream`), framed by the archive's bytes from memory. Should a file be cut
//! short anyway, `sendfile` comes up short and the write fails, which breaks the
//! connection (never a clean short body).
//! Node-to-node blob copies send mappings too ([`Mapped::whole`]): there the kernel
//! copies from the mapping into the socket, which reports a fault as an error rather
//! than a signal.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, BorrowedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use parking_lot::RwLock;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

/// Request extension: the connection is plain HTTP/1 over a [`SendfileIo`], so a
/// [`Mapped`] body goes out with `sendfile`.
#[derive(Clone, Copy, Debug)]
pub struct Zerocopy;

/// A registered mapping (of a file from its first byte): where its bytes come from.
struct Region {
    end: usize,
    file: Arc<File>,
}

/// Live mappings by start address. Ranges never overlap (they are live mappings).
static REGIONS: LazyLock<RwLock<BTreeMap<usize, Region>>> =
    LazyLock::new(|| RwLock::new(BTreeMap::new()));
/// How many mappings are registered: writes skip the lookup when none are.
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// A read-only mapping of a whole file, registered for [`SendfileIo`] while it lives.
pub struct Mapped {
    map: memmap2::Mmap,
}

impl Mapped {
    /// Maps the first `len` bytes of `file` (its length when opened; not zero). On
    /// failure the file comes back with the error, for the caller's slower path.
    pub fn new(file: File, len: u64) -> Result<Mapped, (File, io::Error)> {
        let size = match usize::try_from(len) {
            Ok(0) => return Err((file, io::Error::other("an empty file has nothing to map"))),
            Ok(n) => n,
            Err(_) => return Err((file, io::Error::other("file too large to map"))),
        };
        // A mapping is only sound while nobody
        // changes the file. Stored blobs and variants are never written after they are
        // renamed into place, nor are store paths' files (module docs), and this
        // process does not read the memory on the path it is made for (`sendfile`
        // reads the file itself).
        #[allow(unsafe_code)]
        // SAFETY: see above; the mapping is read-only.
        let map = match unsafe { memmap2::MmapOptions::new().len(size).map(&file) } {
            Ok(m) => m,
            Err(e) => return Err((file, e)),
        };
        let start = map.as_ptr() as usize;
        REGIONS.write().insert(
            start,
            Region {
                end: start + size,
                file: Arc::new(file),
            },
        );
        LIVE.fetch_add(1, Ordering::Relaxed);
        Ok(Mapped { map })
    }

    /// The whole file as one `Bytes` (empty for an empty file), or the file back when
    /// it cannot be mapped. For node-to-node copies: the socket write then copies
    /// straight from the page cache (the kernel reads the mapping, this process never
    /// does), with no read into a buffer first.
    pub fn whole(file: File, len: u64) -> Result<Bytes, (File, io::Error)> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        Mapped::new(file, len).map(|m| m.into_bytes(0, len))
    }

    /// The body: `start..start + len` of the file, without reading it.
    pub fn into_bytes(self, start: u64, len: u64) -> Bytes {
        let (start, len) = (start as usize, len as usize);
        Bytes::from_owner(self).slice(start..start + len)
    }
}

impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // Unregistered before `map` unmaps, so no lookup can find a dead range.
        REGIONS.write().remove(&(self.map.as_ptr() as usize));
        LIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The file and offset behind `slice` when it lies in a registered mapping.
fn lookup(slice: &[u8]) -> Option<(Arc<File>, u64)> {
    if LIVE.load(Ordering::Relaxed) == 0 || slice.is_empty() {
        return None;
    }
    let at = slice.as_ptr() as usize;
    let regions = REGIONS.read();
    let (&start, region) = regions.range(..=at).next_back()?;
    (at + slice.len() <= region.end).then(|| (region.file.clone(), (at - start) as u64))
}

/// A socket whose vectored writes send registered mappings with `sendfile`.
pub struct SendfileIo<S> {
    inner: S,
}

impl<S> SendfileIo<S> {
    pub fn new(inner: S) -> Self {
        SendfileIo { inner }
    }
}

/// What the wrapper needs of a tokio socket: readiness and a raw descriptor.
pub trait Socket: AsyncRead + AsyncWrite + AsFd + Unpin {
    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    fn try_io<R>(&self, f: impl FnOnce() -> io::Result<R>) -> io::Result<R>;
}

impl Socket for tokio::net::TcpStream {
    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tokio::net::TcpStream::poll_write_ready(self, cx)
    }
    fn try_io<R>(&self, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        tokio::net::TcpStream::try_io(self, Interest::WRITABLE, f)
    }
}

impl Socket for tokio::net::UnixStream {
    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tokio::net::UnixStream::poll_write_ready(self, cx)
    }
    fn try_io<R>(&self, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        tokio::net::UnixStream::try_io(self, Interest::WRITABLE, f)
    }
}

/// One non-blocking write of the front of `bufs`: memory slices up to the first mapped
/// one with `sendmsg` (flagged `MSG_MORE` when file bytes follow, so headers and body
/// share packets), or the mapped slice with `sendfile`.
fn write_front(socket: BorrowedFd<'_>, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    use rustix::net::{SendAncillaryBuffer, SendFlags};
    let first_mapped = bufs
        .iter()
        .enumerate()
        .find_map(|(i, b)| lookup(b).map(|found| (i, found)));
    if let Some((0, (file, mut offset))) = first_mapped {
        let n = rustix::fs::sendfile(socket, &*file, Some(&mut offset), bufs[0].len())?;
        if n == 0 {
            // The file ended before its mapping did: it was cut short under us.
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "stored file is shorter than its mapping",
            ));
        }
        return Ok(n);
    }
    let next_mapped = first_mapped.map(|(i, _)| i);
    let count = next_mapped.unwrap_or(bufs.len()).min(1024);
    let mut flags = SendFlags::NOSIGNAL;
    if next_mapped.is_some() {
        flags |= SendFlags::MORE;
    }
    Ok(rustix::net::sendmsg(
        socket,
        &bufs[..count],
        &mut SendAncillaryBuffer::default(),
        flags,
    )?)
}

impl<S: Socket> AsyncRead for SendfileIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: Socket> AsyncWrite for SendfileIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if bufs.iter().all(|b| b.is_empty()) {
            return Poll::Ready(Ok(0));
        }
        loop {
            ready!(self.inner.poll_write_ready(cx))?;
            match self.inner.try_io(|| write_front(self.inner.as_fd(), bufs)) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn file_with(bytes: &[u8]) -> (tempfile::NamedTempFile, File) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        let opened = File::open(f.path()).unwrap();
        (f, opened)
    }

    #[test]
    fn slices_of_a_mapping_are_found_and_others_are_not() {
        let content: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let (_keep, file) = file_with(&content);
        let bytes = Mapped::new(file, content.len() as u64)
            .map_err(|(_, e)| e)
            .unwrap()
            .into_bytes(1000, 5000);
        assert_eq!(&bytes[..], &content[1000..6000]);
        let (_, offset) = lookup(&bytes[10..20]).expect("inside the mapping");
        assert_eq!(offset, 1010);
        assert!(lookup(&content[..]).is_none());
        let start = bytes.as_ptr() as usize - 1000;
        assert!(REGIONS.read().contains_key(&start));
        drop(bytes);
        assert!(
            !REGIONS.read().contains_key(&start),
            "unregistered when dropped"
        );
    }

    #[test]
    fn an_empty_file_cannot_be_mapped_and_comes_back() {
        let (_keep, file) = file_with(b"");
        let (back, _) = Mapped::new(file, 0).err().expect("nothing to map");
        assert_eq!(back.metadata().unwrap().len(), 0);
    }

    /// Headers from memory, then a mapped body, then memory again, through a real
    /// socket pair: the reader gets exactly the bytes in order.
    #[tokio::test]
    async fn mixed_writes_arrive_in_order() {
        let content: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 256) as u8).collect();
        let (_keep, file) = file_with(&content);
        let body = Mapped::new(file, content.len() as u64)
            .map_err(|(_, e)| e)
            .unwrap()
            .into_bytes(17, content.len() as u64 - 17);
        let (a, mut b) = tokio::net::UnixStream::pair().unwrap();
        let mut a = SendfileIo::new(a);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            b.read_to_end(&mut got).await.unwrap();
            got
        });
        let head = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        let tail = b"end".to_vec();
        let mut parts: Vec<&[u8]> = vec![&head, &body, &tail];
        while !parts.is_empty() {
            let slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
            let mut n = a.write_vectored(&slices).await.unwrap();
            assert!(n > 0);
            while n > 0 {
                if n >= parts[0].len() {
                    n -= parts[0].len();
                    parts.remove(0);
                } else {
                    parts[0] = &parts[0][n..];
                    n = 0;
                }
            }
        }
        a.shutdown().await.unwrap();
        drop(a);
        let got = reader.await.unwrap();
        let mut want = head.clone();
        want.extend_from_slice(&content[17..]);
        want.extend_from_slice(&tail);
        assert_eq!(got.len(), want.len());
        assert!(got == want);
    }

    /// A file cut short after it was mapped (a store path's file truncated under a
    /// stream) fails the write: the connection breaks instead of sending less.
    #[tokio::test]
    async fn a_file_cut_short_under_its_mapping_fails_the_write() {
        let content = vec![3u8; 200_000];
        let (keep, file) = file_with(&content);
        let body = Mapped::new(file, content.len() as u64)
            .map_err(|(_, e)| e)
            .unwrap()
            .into_bytes(0, content.len() as u64);
        keep.as_file().set_len(1000).unwrap();
        let (a, _b) = tokio::net::UnixStream::pair().unwrap();
        let mut a = SendfileIo::new(a);
        // Nothing here reads the mapping (past the end of the file that would fault):
        // the slice only names it.
        let tail = body.slice(5000..);
        let err = a.write(&tail).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
    }
}
