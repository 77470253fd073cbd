//! How an ingest writes its staging file: through the page cache (the blob is about to
//! be read here), or around it with `O_DIRECT` (a replica pushed here that nobody has
//! asked this node for).
//!
//! Writing around the cache skips the copy into page-cache pages and their writeback,
//! which is most of what storing a replica costs once it is hashed; the data goes to
//! the disk straight from one reused, aligned buffer. `O_DIRECT` needs the buffer, the
//! file offset and the length aligned, so the writer sends whole chunks, then the
//! last chunk's whole blocks, and writes the rest of the last block (if any) through
//! the page cache, where the caller's fsync and page drop cover it as well. A
//! filesystem that refuses `O_DIRECT` (on setting the flag or on the first write) gets
//! ordinary buffered writes instead (the caller drops the pages after the fsync anyway).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;

use rustix::fs::OFlags;

/// Write buffer of a buffered staging file: body chunks arrive in whatever sizes the
/// network delivers; the disk sees large writes.
const BUFFERED_CAPACITY: usize = 256 * 1024;

/// Direct writes go out in chunks of this size (a multiple of [`ALIGN`]).
const DIRECT_CHUNK: usize = 1 << 20;

/// Alignment of a direct write's buffer, offset and length: the largest logical block
/// size in use (4 KiB sectors), which also satisfies 512-byte ones.
const ALIGN: usize = 4096;

/// The writer of a staging file.
pub(super) enum Staging<'a> {
    Buffered(BufWriter<&'a File>),
    Direct(Direct<'a>),
}

impl<'a> Staging<'a> {
    pub fn buffered(file: &'a File) -> Self {
        Staging::Buffered(BufWriter::with_capacity(BUFFERED_CAPACITY, file))
    }

    /// Direct when the filesystem takes `O_DIRECT` on `file`, else buffered.
    pub fn around_cache(file: &'a File) -> Self {
        let direct = rustix::fs::fcntl_getfl(file)
            .and_then(|flags| rustix::fs::fcntl_setfl(file, flags | OFlags::DIRECT));
        match direct {
            Ok(()) => Staging::Direct(Direct::new(file)),
            Err(_) => Self::buffered(file),
        }
    }

    /// Writes out what is buffered; the file then holds every byte written, and no
    /// more (not yet fsynced).
    pub fn finish(self) -> io::Result<&'a File> {
        match self {
            Staging::Buffered(w) => w.into_inner().map_err(|e| e.into_error()),
            Staging::Direct(w) => w.finish(),
        }
    }
}

impl Write for Staging<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Staging::Buffered(w) => w.write(buf),
            Staging::Direct(w) => w.write(buf),
        }
    }

    /// A direct writer's partial chunk cannot go out before [`Staging::finish`] (its
    /// length is not aligned yet); a buffered writer flushes as usual.
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Staging::Buffered(w) => w.flush(),
            Staging::Direct(_) => Ok(()),
        }
    }
}

/// Fills an aligned chunk and writes it at an aligned offset; see the module comment.
pub(super) struct Direct<'a> {
    file: &'a File,
    /// Holds `DIRECT_CHUNK` aligned bytes from `start`.
    storage: Vec<u8>,
    start: usize,
    filled: usize,
    /// Bytes already in the file.
    written: u64,
    /// The filesystem refused a direct write: the flag is off and the rest is written
    /// through the page cache.
    fell_back: bool,
}

impl<'a> Direct<'a> {
    fn new(file: &'a File) -> Self {
        let storage = DIRECT_BUFFERS
            .lock()
            .pop()
            .unwrap_or_else(|| vec![0u8; DIRECT_CHUNK + ALIGN]);
        let start = storage.as_ptr().align_offset(ALIGN);
        Direct {
            file,
            storage,
            start,
            filled: 0,
            written: 0,
            fell_back: false,
        }
    }

    fn chunk(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + DIRECT_CHUNK]
    }

    /// Writes the first `len` bytes of the chunk (a multiple of [`ALIGN`], or anything
    /// once fallen back) at `written`.
    fn write_chunk(&mut self, len: usize) -> io::Result<()> {
        let at = self.written;
        let (file, start) = (self.file, self.start);
        let data = &self.storage[start..start + len];
        match file.write_all_at(data, at) {
            Err(e) if !self.fell_back && e.raw_os_error() == Some(EINVAL) => {
                clear_direct(file)?;
                self.fell_back = true;
                file.write_all_at(data, at)
            }
            other => other,
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(DIRECT_CHUNK - self.filled);
        let filled = self.filled;
        self.chunk()[filled..filled + n].copy_from_slice(&buf[..n]);
        self.filled += n;
        if self.filled == DIRECT_CHUNK {
            self.write_chunk(DIRECT_CHUNK)?;
            self.written += DIRECT_CHUNK as u64;
            self.filled = 0;
        }
        Ok(n)
    }

    /// Writes what is gathered: its whole blocks directly, the part of a block after
    /// them (if any) through the page cache. Padding that part to a block and cutting
    /// the file back instead would make ext4 read the block back from the disk to
    /// zero its end (one synchronous read per blob); a partial block written at the
    /// end of the file needs no read.
    fn finish(mut self) -> io::Result<&'a File> {
        let whole = self.filled / ALIGN * ALIGN;
        if whole > 0 {
            self.write_chunk(whole)?;
            self.written += whole as u64;
        }
        let tail = self.start + whole..self.start + self.filled;
        if !tail.is_empty() {
            if !self.fell_back {
                clear_direct(self.file)?;
            }
            self.file
                .write_all_at(&self.storage[tail.clone()], self.written)?;
            self.written += tail.len() as u64;
        }
        Ok(self.file)
    }
}

/// Turns `O_DIRECT` off on `file`: later writes go through the page cache.
fn clear_direct(file: &File) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(file)?;
    rustix::fs::fcntl_setfl(file, flags - OFlags::DIRECT)?;
    Ok(())
}

impl Drop for Direct<'_> {
    fn drop(&mut self) {
        let mut kept = DIRECT_BUFFERS.lock();
        if kept.len() < DIRECT_BUFFERS_KEPT {
            kept.push(std::mem::take(&mut self.storage));
        }
    }
}

/// Chunk buffers of finished direct writers, for the next ones. Replicas arrive one
/// after another, most of them small: a fresh megabyte for each would be mostly page
/// faults and zeroing (6.5% of a follower's CPU during a corpus push). Whatever a buffer
/// held before is never written out: only the filled part of a chunk goes to the file.
static DIRECT_BUFFERS: parking_lot::Mutex<Vec<Vec<u8>>> = parking_lot::Mutex::new(Vec::new());

/// Buffers kept for reuse: about as many as replicas are written at once.
const DIRECT_BUFFERS_KEPT: usize = 4;

const EINVAL: i32 = rustix::io::Errno::INVAL.raw_os_error();

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn write_in_pieces(staging: Staging<'_>, data: &[u8], piece: usize) {
        let mut w = staging;
        for p in data.chunks(piece) {
            w.write_all(p).unwrap();
        }
        w.finish().unwrap();
    }

    /// Read through a descriptor of its own: the writer's may be `O_DIRECT`.
    fn contents(path: &std::path::Path) -> Vec<u8> {
        let mut out = Vec::new();
        File::open(path).unwrap().read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn both_writers_store_exactly_the_bytes_written() {
        let dir = tempfile::tempdir().unwrap();
        // Empty, under a block, an unaligned tail, exactly a chunk, several chunks
        // plus a tail; then the same downwards, so a reused direct buffer still holds
        // a longer blob's bytes.
        let lens = [
            0,
            1,
            4095,
            4096,
            70_001,
            DIRECT_CHUNK,
            3 * DIRECT_CHUNK + 12_345,
        ];
        for &len in lens.iter().chain(lens.iter().rev()) {
            let data: Vec<u8> = (0..len).map(|i| ((i * 31 + len) % 251) as u8).collect();
            for (around, piece) in [(false, 8192), (true, 1000), (true, 65_536)] {
                let file = tempfile::NamedTempFile::new_in(dir.path()).unwrap();
                let staging = if around {
                    Staging::around_cache(file.as_file())
                } else {
                    Staging::buffered(file.as_file())
                };
                write_in_pieces(staging, &data, piece);
                assert_eq!(file.as_file().metadata().unwrap().len(), len as u64);
                assert!(
                    contents(file.path()) == data,
                    "contents of {len} bytes differ"
                );
            }
        }
    }
}
