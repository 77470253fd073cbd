//! NAR archives: a streaming writer from a directory tree, byte-identical to
//! `nix-store --dump`, and a streaming reader/validator that yields NarHash, NarSize and
//! the `.ls` listing. (Skeleton: implementation in progress.)

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use thiserror::Error;

use crate::hash::Hash;

#[derive(Debug, Error)]
pub enum NarWriteError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing the archive: {0}")]
    Output(std::io::Error),
    #[error("{0} is not a regular file, directory or symlink")]
    UnsupportedType(PathBuf),
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
        entries: std::collections::BTreeMap<String, ListingNode>,
    },
}

/// Writes the NAR of the tree at `path` into `out`; returns the bytes written.
pub fn dump_path(_path: &Path, _out: &mut impl Write) -> Result<u64, NarWriteError> {
    todo!("NAR writer")
}

/// Reads a whole archive, checking it is well formed, and returns its hash and size.
pub fn validate(_input: impl Read) -> Result<NarSummary, NarReadError> {
    todo!("NAR validator")
}

/// Like [`validate`], and also returns the listing of the archive's root.
pub fn list(_input: impl Read) -> Result<(NarSummary, ListingNode), NarReadError> {
    todo!("NAR listing")
}
