//! NAR archives: a streaming writer from a directory tree, byte-identical to
//! `nix-store --dump` ([`dump_path`]), and a streaming pull-based reader that checks an
//! archive is well formed while hashing it ([`NarReader`], with the one-call wrappers
//! [`validate`] and [`list`]), plus the `.ls` listing JSON ([`listing_json`]).
//!
//! The format, as Nix writes it: every string is a little-endian u64 length, the bytes,
//! and zero padding to a multiple of 8.
//!
//! ```text
//! nar   = "nix-archive-1" node
//! node  = "(" "type" ( "regular" ["executable" ""] "contents" <bytes>
//!                    | "symlink" "target" <target>
//!                    | "directory" entry* ) ")"
//! entry = "entry" "(" "name" <name> "node" node ")"
//! ```
//!
//! Entries are sorted by the bytes of their names and unique. The reader accepts exactly
//! this canonical form (Nix's own parser tolerates a few reorderings, but Nix never
//! writes them), so one tree has one archive and one NarHash.

mod reader;
mod writer;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

use serde::Serialize;
use thiserror::Error;

use crate::hash::Hash;

pub use reader::{NarContents, NarEvent, NarNode, NarReader};
pub use writer::{dump_path, dump_path_to, NarOutput};

/// The first string of every archive.
pub(crate) const MAGIC: &[u8] = b"nix-archive-1";

/// Longest entry name or symlink target the reader accepts. Linux's `PATH_MAX`: nothing
/// Nix can restore is longer, and a hostile length field must not make us allocate.
pub const MAX_STRING_LEN: u64 = 4096;

/// Deepest directory nesting the reader accepts. Nix dumps and restores trees by full
/// path, and `PATH_MAX` (4096 bytes, at least two per level) bounds those well below
/// this; the cap keeps a hostile archive from building a listing so deep that dropping
/// or serialising it overflows the stack.
pub const MAX_DEPTH: usize = 2048;

/// Zero bytes that follow a string of `len` bytes.
pub(crate) fn padding(len: u64) -> usize {
    ((8 - len % 8) % 8) as usize
}

#[derive(Debug, Error)]
pub enum NarWriteError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The output refused bytes. The `io::Error` is the writer's own, untouched, so a
    /// caller can recognise an error it raised on purpose (e.g. to stop a range early).
    #[error("writing the archive: {0}")]
    Output(std::io::Error),
    #[error("{0} is not a regular file, directory or symlink")]
    UnsupportedType(PathBuf),
    /// Never returned: names are archived as raw bytes, as Nix does, so a store path
    /// holding a Latin-1 file name is still served. Kept so matches elsewhere compile.
    #[error("{0} has a name that is not valid UTF-8")]
    NonUtf8Name(PathBuf),
}

#[derive(Debug, Error)]
pub enum NarReadError {
    #[error("reading the archive: {0}")]
    Io(#[from] std::io::Error),
    #[error("archive is truncated")]
    Truncated,
    #[error("not a NAR archive (bad magic)")]
    BadMagic,
    #[error("malformed archive: {0}")]
    Malformed(&'static str),
    #[error("directory entries are not sorted or not unique")]
    Unsorted,
    #[error("invalid entry name")]
    BadName,
    #[error("nonzero padding")]
    BadPadding,
    #[error("trailing data after the archive")]
    TrailingData,
    #[error("a name or symlink target is longer than {MAX_STRING_LEN} bytes")]
    TooLong,
    #[error("directories nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("invalid symlink target")]
    BadTarget,
    /// The archive is valid, but a name or target is not UTF-8 and so has no JSON
    /// listing (Nix's own listing fails the same way).
    #[error("a name or symlink target is not valid UTF-8")]
    NonUtf8,
    #[error("the archive reader was used after it failed")]
    Poisoned,
}

/// NarHash and NarSize of a complete archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarSummary {
    pub nar_hash: Hash,
    pub nar_size: u64,
}

/// One node of a `.ls` listing, serialised the way Nix's `listNar` does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ListingNode {
    Regular {
        size: u64,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        executable: bool,
        #[serde(rename = "narOffset")]
        nar_offset: u64,
    },
    Symlink {
        target: String,
    },
    Directory {
        entries: BTreeMap<String, ListingNode>,
    },
}

/// Reads a whole archive, checking it is well formed, and returns its hash and size.
/// Reads to EOF: bytes after the archive are an error.
pub fn validate(input: impl Read) -> Result<NarSummary, NarReadError> {
    NarReader::new(input).finish()
}

/// Like [`validate`], and also returns the listing of the archive's root.
pub fn list(input: impl Read) -> Result<(NarSummary, ListingNode), NarReadError> {
    let mut reader = NarReader::new(input);
    // Open directories: their name in the parent (None for the root) and entries so far.
    let mut open: Vec<(Option<String>, BTreeMap<String, ListingNode>)> = Vec::new();
    let mut root = None;
    while let Some(event) = reader.next_event()? {
        let (name, node) = match event {
            NarEvent::Node {
                name,
                node: NarNode::Directory,
            } => {
                open.push((name.map(utf8).transpose()?, BTreeMap::new()));
                continue;
            }
            NarEvent::Node { name, node } => (name.map(utf8).transpose()?, listing_leaf(node)?),
            NarEvent::EndDirectory => {
                let (name, entries) = open
                    .pop()
                    .ok_or(NarReadError::Malformed("unbalanced directory"))?;
                (name, ListingNode::Directory { entries })
            }
        };
        match (open.last_mut(), name) {
            (Some((_, entries)), Some(name)) => {
                entries.insert(name, node);
            }
            (None, None) => root = Some(node),
            _ => return Err(NarReadError::Malformed("entry outside a directory")),
        }
    }
    let summary = reader.finish()?;
    let root = root.ok_or(NarReadError::Malformed("archive has no root"))?;
    Ok((summary, root))
}

fn utf8(bytes: Vec<u8>) -> Result<String, NarReadError> {
    String::from_utf8(bytes).map_err(|_| NarReadError::NonUtf8)
}

fn listing_leaf(node: NarNode) -> Result<ListingNode, NarReadError> {
    Ok(match node {
        NarNode::Regular {
            executable,
            size,
            nar_offset,
        } => ListingNode::Regular {
            size,
            executable,
            nar_offset,
        },
        NarNode::Symlink { target } => ListingNode::Symlink {
            target: utf8(target)?,
        },
        NarNode::Directory => ListingNode::Directory {
            entries: BTreeMap::new(),
        },
    })
}

/// The `.ls` document Nix clients fetch: `{"version":1,"root":<node>}`.
pub fn listing_json(root: &ListingNode) -> String {
    #[derive(Serialize)]
    struct Listing<'a> {
        version: u32,
        root: &'a ListingNode,
    }
    serde_json::to_string(&Listing { version: 1, root })
        .expect("a listing has string keys only, so it always serialises")
}

#[cfg(test)]
mod tests;
