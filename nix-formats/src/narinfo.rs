//! narinfo files: parsing and rendering (byte-for-byte round trip of what
//! `nix copy --to file://` writes) and signature fingerprints. (Skeleton.)

use thiserror::Error;

use crate::hash::Hash;
use crate::store_path::{StoreDir, StorePath};

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum NarInfoError {
    #[error("line {0} is not of the form 'Key: value'")]
    BadLine(usize),
    #[error("field {0} appears more than once")]
    Duplicate(&'static str),
    #[error("required field {0} is missing")]
    Missing(&'static str),
    #[error("field {field} is invalid: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// A parsed narinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarInfo {
    pub store_dir: StoreDir,
    pub store_path: StorePath,
    pub url: String,
    pub compression: String,
    pub file_hash: Option<Hash>,
    pub file_size: Option<u64>,
    pub nar_hash: Hash,
    pub nar_size: u64,
    pub references: Vec<StorePath>,
    pub deriver: Option<StorePath>,
    pub system: Option<String>,
    pub sigs: Vec<String>,
    pub ca: Option<String>,
}

impl NarInfo {
    pub fn parse(_text: &str) -> Result<Self, NarInfoError> {
        todo!("narinfo parser")
    }

    pub fn render(&self) -> String {
        todo!("narinfo renderer")
    }

    /// The string Nix signs: `1;<path>;<narhash>;<narsize>;<refs,comma-separated>`.
    pub fn fingerprint(&self) -> String {
        fingerprint(
            &self.store_dir,
            &self.store_path,
            &self.nar_hash,
            self.nar_size,
            &self.references,
        )
    }
}

/// The signature fingerprint of a path.
pub fn fingerprint(
    _store_dir: &StoreDir,
    _path: &StorePath,
    _nar_hash: &Hash,
    _nar_size: u64,
    _references: &[StorePath],
) -> String {
    todo!("fingerprint")
}
