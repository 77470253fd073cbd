//! The snapshot file: the whole state machine as JSON lines, streamed to and from disk.
//!
//! ```text
//! {"format":"cairn-raft-snapshot","version":1,"meta":{…openraft SnapshotMeta…}}
//! {"path":{…}}            one line per record: path, blob, token, pin, retention
//! …
//! {"end":{"records":N,"sha256":"<hex of every byte before this line>"}}
//! ```
//!
//! The trailer makes a truncated or altered file fail to install instead of installing
//! part of a state. Neither writing nor reading holds more than one record in memory.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use store::meta::{PathRecord, TokenRecord};

use super::SnapshotMeta;
use crate::command::{BlobEntry, PinRecord, RetentionSettings};
use crate::error::RaftStoreError;
use crate::state::StateRecord;

const FORMAT: &str = "cairn-raft-snapshot";
const VERSION: u64 = 1;
/// No record comes near this; a longer line is a corrupt file, not a reason to grow.
const MAX_LINE: u64 = 64 << 20;

/// A snapshot's bytes on disk: the snapshot data openraft hands between the state
/// machine and the network. It is an open file, so it stays readable when a newer
/// snapshot replaces the file under the same name, and it is never read into memory.
///
/// The network layer sends it with [`SnapshotFile::into_file`] and, on the receiving
/// side, writes the bytes to a file of its own and wraps it with
/// [`SnapshotFile::from_file`] for `install_snapshot`.
#[derive(Debug)]
pub struct SnapshotFile {
    file: File,
}

impl SnapshotFile {
    /// Opens the snapshot file at `path` for reading.
    pub fn open(path: &Path) -> io::Result<Self> {
        Ok(SnapshotFile {
            file: File::open(path)?,
        })
    }

    /// Wraps a file that holds a snapshot (read from its start).
    pub fn from_file(file: File) -> Self {
        SnapshotFile { file }
    }

    /// The file, positioned at its start.
    pub fn into_file(mut self) -> io::Result<File> {
        self.file.seek(SeekFrom::Start(0))?;
        Ok(self.file)
    }

    /// The size of the snapshot in bytes.
    pub fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    /// True for an empty (and so invalid) file.
    pub fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
}

#[derive(Serialize, Deserialize)]
struct Header {
    format: String,
    version: u64,
    meta: SnapshotMeta,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Line {
    Path(PathRecord),
    Blob(BlobEntry),
    Token(TokenRecord),
    Pin(PinRecord),
    Retention(RetentionSettings),
    Access { hash_part: String, at: u64 },
    End { records: u64, sha256: String },
}

impl From<StateRecord> for Line {
    fn from(r: StateRecord) -> Line {
        match r {
            StateRecord::Path(p) => Line::Path(p),
            StateRecord::Blob(b) => Line::Blob(b),
            StateRecord::Token(t) => Line::Token(t),
            StateRecord::Pin(p) => Line::Pin(p),
            StateRecord::Retention(s) => Line::Retention(s),
            StateRecord::Access { hash_part, at } => Line::Access { hash_part, at },
        }
    }
}

/// Writes a snapshot: the header, then records as they come, then the trailer.
pub(crate) struct SnapshotWriter {
    out: BufWriter<File>,
    hasher: Sha256,
    records: u64,
}

impl SnapshotWriter {
    pub(crate) fn new(file: File, meta: &SnapshotMeta) -> Result<Self, RaftStoreError> {
        let mut w = SnapshotWriter {
            out: BufWriter::with_capacity(1 << 16, file),
            hasher: Sha256::new(),
            records: 0,
        };
        let header = Header {
            format: FORMAT.to_string(),
            version: VERSION,
            meta: meta.clone(),
        };
        w.line(&header)?;
        Ok(w)
    }

    fn line(&mut self, value: &impl Serialize) -> Result<(), RaftStoreError> {
        let mut bytes = crate::error::encode("snapshot line", value)?;
        bytes.push(b'\n');
        self.hasher.update(&bytes);
        self.out.write_all(&bytes)?;
        Ok(())
    }

    pub(crate) fn record(&mut self, r: StateRecord) -> Result<(), RaftStoreError> {
        self.line(&Line::from(r))?;
        self.records += 1;
        Ok(())
    }

    /// Writes the trailer and fsyncs the file.
    pub(crate) fn finish(mut self) -> Result<File, RaftStoreError> {
        let sha256 = hex::encode(self.hasher.clone().finalize());
        let end = Line::End {
            records: self.records,
            sha256,
        };
        let mut bytes = crate::error::encode("snapshot line", &end)?;
        bytes.push(b'\n');
        self.out.write_all(&bytes)?;
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(file)
    }
}

/// Reads a snapshot from its start: the header at once, then the records one by one.
pub(crate) struct SnapshotReader<R> {
    input: BufReader<R>,
    hasher: Sha256,
    records: u64,
    buf: Vec<u8>,
    done: bool,
}

impl<R: Read> SnapshotReader<R> {
    pub(crate) fn new(input: R) -> Result<(Self, SnapshotMeta), RaftStoreError> {
        let mut r = SnapshotReader {
            input: BufReader::with_capacity(1 << 16, input),
            hasher: Sha256::new(),
            records: 0,
            buf: Vec::new(),
            done: false,
        };
        if !r.read_line()? {
            return Err(RaftStoreError::BadSnapshot("empty file"));
        }
        r.hasher.update(&r.buf);
        let header: Header =
            serde_json::from_slice(&r.buf).map_err(|_| RaftStoreError::BadSnapshot("no header"))?;
        if header.format != FORMAT {
            return Err(RaftStoreError::BadSnapshot("not a Cairn snapshot"));
        }
        if header.version != VERSION {
            return Err(RaftStoreError::BadSnapshot("unsupported snapshot version"));
        }
        Ok((r, header.meta))
    }

    /// Reads one line into `buf`; false at end of file.
    fn read_line(&mut self) -> Result<bool, RaftStoreError> {
        self.buf.clear();
        let n = (&mut self.input)
            .take(MAX_LINE)
            .read_until(b'\n', &mut self.buf)?;
        if n == 0 {
            return Ok(false);
        }
        if self.buf.last() != Some(&b'\n') {
            return Err(RaftStoreError::BadSnapshot("truncated or overlong line"));
        }
        Ok(true)
    }

    /// The next record; `None` after a valid trailer. A file that ends without one, or
    /// whose trailer does not match what was read, is an error.
    pub(crate) fn next_record(&mut self) -> Result<Option<StateRecord>, RaftStoreError> {
        if self.done {
            return Ok(None);
        }
        if !self.read_line()? {
            return Err(RaftStoreError::BadSnapshot("no trailer (truncated)"));
        }
        let line: Line = serde_json::from_slice(&self.buf)
            .map_err(|_| RaftStoreError::BadSnapshot("unreadable record"))?;
        let record = match line {
            Line::End { records, sha256 } => {
                let digest = hex::encode(self.hasher.clone().finalize());
                if records != self.records || sha256 != digest {
                    return Err(RaftStoreError::BadSnapshot("trailer does not match"));
                }
                if self.read_line()? {
                    return Err(RaftStoreError::BadSnapshot("data after the trailer"));
                }
                self.done = true;
                return Ok(None);
            }
            Line::Path(p) => StateRecord::Path(p),
            Line::Blob(b) => StateRecord::Blob(b),
            Line::Token(t) => StateRecord::Token(t),
            Line::Pin(p) => StateRecord::Pin(p),
            Line::Retention(s) => StateRecord::Retention(s),
            Line::Access { hash_part, at } => StateRecord::Access { hash_part, at },
        };
        self.hasher.update(&self.buf);
        self.records += 1;
        Ok(Some(record))
    }
}

/// The meta in the header of the snapshot file `file` (read from its start; the file
/// is left positioned at its start).
pub(crate) fn read_meta(file: &mut File) -> Result<SnapshotMeta, RaftStoreError> {
    file.seek(SeekFrom::Start(0))?;
    let (_, meta) = SnapshotReader::new(&mut *file)?;
    file.seek(SeekFrom::Start(0))?;
    Ok(meta)
}
