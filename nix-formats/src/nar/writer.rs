//! The NAR writer: walks a tree on disk and emits the archive `nix-store --dump` would,
//! streaming file contents in bounded chunks.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::{padding, NarWriteError, MAGIC};

/// Size of the output buffer and of each read from a file. Writes reach `out` in
/// chunks of about this size, whatever the shape of the tree.
const CHUNK: usize = 64 * 1024;

/// Nix marks a file executable when its owner may execute it (`S_IXUSR`), ignoring the
/// group and other bits; so do we, or the NarHash would differ from Nix's.
const OWNER_EXEC: u32 = 0o100;

/// Writes the NAR of the tree at `path` into `out`; returns the bytes written.
///
/// Links are never followed, the top-level `path` included, so it may be a symlink.
/// `out` is not flushed: like `io::copy`, the caller owns its writer.
pub fn dump_path(path: &Path, out: &mut impl Write) -> Result<u64, NarWriteError> {
    dump_path_to(path, &mut ReadEverything(out))
}

/// An archive's destination that may send the contents of regular files itself (say,
/// with `sendfile`) instead of having the writer read them into `write`.
pub trait NarOutput: Write {
    /// Whether the output would take the contents of a regular file of `size` bytes
    /// (then [`file_contents`](NarOutput::file_contents) is offered them, after the
    /// writer's buffer went out; otherwise the writer reads them, buffering as usual).
    fn takes_contents(&self, size: u64) -> bool;

    /// Offered a regular file's contents, `size` bytes of `file` from its start, once
    /// everything before them has gone to `write`. `Ok(None)` when the output took them
    /// (it answers for delivering exactly `size` bytes of `file`, in order, before
    /// anything written after); `Ok(Some(file))` hands the file back for the writer to
    /// read. An error ends the archive as [`NarWriteError::Output`].
    fn file_contents(&mut self, file: File, size: u64) -> io::Result<Option<File>>;
}

/// A plain `Write` as a [`NarOutput`] that takes no file contents.
struct ReadEverything<'a, W: Write>(&'a mut W);

impl<W: Write> Write for ReadEverything<'_, W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.0.write(data)
    }
    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.0.write_all(data)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl<W: Write> NarOutput for ReadEverything<'_, W> {
    fn takes_contents(&self, _size: u64) -> bool {
        false
    }
    fn file_contents(&mut self, file: File, _size: u64) -> io::Result<Option<File>> {
        Ok(Some(file))
    }
}

/// [`dump_path`] into an output that may take file contents itself
/// ([`NarOutput::file_contents`]); the count returned includes the bytes it took.
pub fn dump_path_to(path: &Path, out: &mut impl NarOutput) -> Result<u64, NarWriteError> {
    let mut w = Emitter {
        out,
        buf: Vec::with_capacity(CHUNK + 1024),
        written: 0,
    };
    w.string(MAGIC)?;
    dump_node(&mut w, path)?;
    w.flush_buf()?;
    Ok(w.written)
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> NarWriteError + '_ {
    move |source| NarWriteError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn dump_node<W: NarOutput>(w: &mut Emitter<'_, W>, path: &Path) -> Result<(), NarWriteError> {
    let meta = fs::symlink_metadata(path).map_err(io_err(path))?;
    let kind = meta.file_type();
    w.string(b"(")?;
    w.string(b"type")?;
    if kind.is_file() {
        w.string(b"regular")?;
        if meta.permissions().mode() & OWNER_EXEC != 0 {
            w.string(b"executable")?;
            w.string(b"")?;
        }
        w.string(b"contents")?;
        let file = File::open(path).map_err(io_err(path))?;
        w.contents(path, file, meta.len())?;
    } else if kind.is_symlink() {
        let target = fs::read_link(path).map_err(io_err(path))?;
        w.string(b"symlink")?;
        w.string(b"target")?;
        w.string(target.as_os_str().as_bytes())?;
    } else if kind.is_dir() {
        w.string(b"directory")?;
        let mut names = Vec::new();
        for entry in fs::read_dir(path).map_err(io_err(path))? {
            names.push(entry.map_err(io_err(path))?.file_name());
        }
        // OsStr orders by bytes on Unix, which is the order Nix sorts entries in.
        names.sort_unstable();
        for name in names {
            w.string(b"entry")?;
            w.string(b"(")?;
            w.string(b"name")?;
            w.string(name.as_bytes())?;
            w.string(b"node")?;
            dump_node(w, &path.join(&name))?;
            w.string(b")")?;
        }
    } else {
        return Err(NarWriteError::UnsupportedType(path.to_path_buf()));
    }
    w.string(b")")
}

/// Batches the many small strings of an archive so `out` sees few, large writes.
struct Emitter<'a, W: NarOutput> {
    out: &'a mut W,
    buf: Vec<u8>,
    written: u64,
}

impl<W: NarOutput> Emitter<'_, W> {
    fn flush_buf(&mut self) -> Result<(), NarWriteError> {
        self.out
            .write_all(&self.buf)
            .map_err(NarWriteError::Output)?;
        self.written += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    fn bytes(&mut self, data: &[u8]) -> Result<(), NarWriteError> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush_buf()?;
        }
        Ok(())
    }

    fn string(&mut self, s: &[u8]) -> Result<(), NarWriteError> {
        self.bytes(&(s.len() as u64).to_le_bytes())?;
        self.bytes(s)?;
        self.bytes(&[0; 8][..padding(s.len() as u64)])
    }

    /// The length and `size` bytes of `file`: taken by the output, or read straight
    /// into the output buffer.
    fn contents(&mut self, path: &Path, file: File, size: u64) -> Result<(), NarWriteError> {
        self.bytes(&size.to_le_bytes())?;
        if size > 0 && self.out.takes_contents(size) {
            self.flush_buf()?;
            match self.out.file_contents(file, size) {
                Ok(None) => {
                    self.written += size;
                    return self.bytes(&[0; 8][..padding(size)]);
                }
                Ok(Some(file)) => return self.read_contents(path, file, size),
                Err(e) => return Err(NarWriteError::Output(e)),
            }
        }
        self.read_contents(path, file, size)
    }

    fn read_contents(
        &mut self,
        path: &Path,
        mut file: File,
        size: u64,
    ) -> Result<(), NarWriteError> {
        let mut remaining = size;
        while remaining > 0 {
            if self.buf.len() >= CHUNK {
                self.flush_buf()?;
            }
            let start = self.buf.len();
            let room = (CHUNK - start).min(usize::try_from(remaining).unwrap_or(usize::MAX));
            self.buf.resize(start + room, 0);
            let n = loop {
                match file.read(&mut self.buf[start..]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        self.buf.truncate(start);
                        return Err(io_err(path)(e));
                    }
                }
            };
            self.buf.truncate(start + n);
            if n == 0 {
                // The length is already out; going on would produce a corrupt archive.
                return Err(io_err(path)(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file shrank while it was being archived",
                )));
            }
            remaining -= n as u64;
        }
        self.bytes(&[0; 8][..padding(size)])
    }
}
