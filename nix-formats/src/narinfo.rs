//! narinfo files: parsing and rendering (byte-for-byte round trip of what
//! `nix copy --to file://` writes) and signature fingerprints.
//!
//! A narinfo is `Key: value` lines, each ending in `\n`. Nix ignores keys it does not
//! know, so we do too (they are dropped on render); every other deviation is an error.

use std::fmt::Write as _;

use thiserror::Error;

use crate::hash::{Hash, HashAlgo};
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

/// What Nix assumes when a narinfo has no `Compression` line: binary caches predating
/// the field compressed with bzip2.
pub const DEFAULT_COMPRESSION: &str = "bzip2";

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

/// The fields with a meaning; each may appear once, except `Sig`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    StorePath,
    Url,
    Compression,
    FileHash,
    FileSize,
    NarHash,
    NarSize,
    References,
    Deriver,
    System,
    Ca,
}

impl Field {
    const ALL: [Field; 11] = [
        Field::StorePath,
        Field::Url,
        Field::Compression,
        Field::FileHash,
        Field::FileSize,
        Field::NarHash,
        Field::NarSize,
        Field::References,
        Field::Deriver,
        Field::System,
        Field::Ca,
    ];

    fn key(self) -> &'static str {
        match self {
            Field::StorePath => "StorePath",
            Field::Url => "URL",
            Field::Compression => "Compression",
            Field::FileHash => "FileHash",
            Field::FileSize => "FileSize",
            Field::NarHash => "NarHash",
            Field::NarSize => "NarSize",
            Field::References => "References",
            Field::Deriver => "Deriver",
            Field::System => "System",
            Field::Ca => "CA",
        }
    }
}

fn invalid(field: &'static str, reason: impl ToString) -> NarInfoError {
    NarInfoError::Invalid {
        field,
        reason: reason.to_string(),
    }
}

/// A decimal size as Nix writes it: digits only, no sign or spaces.
fn parse_size(field: &'static str, value: &str) -> Result<u64, NarInfoError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(field, "not a decimal number"));
    }
    value.parse().map_err(|_| invalid(field, "out of range"))
}

fn parse_hash(field: &'static str, value: &str) -> Result<Hash, NarInfoError> {
    value.parse::<Hash>().map_err(|e| invalid(field, e))
}

/// A content address: `text:<hash>`, `fixed:<hash>`, `fixed:r:<hash>` or
/// `fixed:git:<hash>`, where `<hash>` is `algo:digest`. Kept as text; checked so a
/// corrupt one is refused at the door rather than handed on to clients.
fn check_ca(value: &str) -> Result<(), NarInfoError> {
    let mut parts = value.rsplitn(3, ':');
    let (digest, algo, method) = (parts.next(), parts.next(), parts.next());
    let (Some(digest), Some(algo), Some(method)) = (digest, algo, method) else {
        return Err(invalid("CA", "not a content address"));
    };
    if !matches!(method, "text" | "fixed" | "fixed:r" | "fixed:git") {
        return Err(invalid("CA", "unknown content address method"));
    }
    parse_hash("CA", &format!("{algo}:{digest}")).map(drop)
}

impl NarInfo {
    /// Parses a narinfo as Nix writes it. The store directory is whatever precedes the
    /// last `/` of `StorePath`.
    pub fn parse(text: &str) -> Result<Self, NarInfoError> {
        let mut seen = [false; Field::ALL.len()];
        let mut store: Option<(StoreDir, StorePath)> = None;
        let mut url = None;
        let mut compression = None;
        let mut file_hash = None;
        let mut file_size = None;
        let mut nar_hash = None;
        let mut nar_size = None;
        let mut references = Vec::new();
        let mut deriver = None;
        let mut system = None;
        let mut sigs = Vec::new();
        let mut ca = None;

        // Nix ends every line with '\n'; a missing one at the very end is forgiven.
        let body = text.strip_suffix('\n').unwrap_or(text);
        for (i, line) in body.split('\n').enumerate() {
            let (key, value) = line.split_once(": ").ok_or(NarInfoError::BadLine(i + 1))?;
            if key == "Sig" {
                if value.is_empty() || !value.contains(':') {
                    return Err(invalid("Sig", "not of the form 'keyname:signature'"));
                }
                sigs.push(value.to_string());
                continue;
            }
            let Some(index) = Field::ALL.iter().position(|f| f.key() == key) else {
                continue;
            };
            let field = Field::ALL[index];
            let name = field.key();
            if std::mem::replace(&mut seen[index], true) {
                return Err(NarInfoError::Duplicate(name));
            }
            match field {
                Field::StorePath => {
                    let (dir, _) = value
                        .rsplit_once('/')
                        .ok_or_else(|| invalid(name, "not an absolute path"))?;
                    let dir = StoreDir::new(dir).map_err(|e| invalid(name, e))?;
                    let path = dir.parse_path(value).map_err(|e| invalid(name, e))?;
                    store = Some((dir, path));
                }
                Field::Url => {
                    if value.is_empty() {
                        return Err(invalid(name, "empty"));
                    }
                    url = Some(value.to_string());
                }
                // Nix treats an empty value like a missing line.
                Field::Compression => {
                    compression = Some(value).filter(|v| !v.is_empty()).map(str::to_string)
                }
                Field::FileHash => file_hash = Some(parse_hash(name, value)?),
                Field::FileSize => file_size = Some(parse_size(name, value)?),
                Field::NarHash => {
                    let hash = parse_hash(name, value)?;
                    // Fingerprints, and so signatures, are defined over a sha256.
                    if hash.algo() != HashAlgo::Sha256 {
                        return Err(invalid(name, "not a sha256 hash"));
                    }
                    nar_hash = Some(hash);
                }
                Field::NarSize => {
                    let size = parse_size(name, value)?;
                    // No archive is empty; Nix rejects this too.
                    if size == 0 {
                        return Err(invalid(name, "zero"));
                    }
                    nar_size = Some(size);
                }
                Field::References => {
                    references = value
                        .split(' ')
                        .filter(|r| !r.is_empty())
                        .map(StorePath::from_base_name)
                        .collect::<Result<_, _>>()
                        .map_err(|e| invalid(name, e))?;
                }
                // Old caches wrote a placeholder for "no deriver".
                Field::Deriver if value == "unknown-deriver" => {}
                Field::Deriver => {
                    deriver = Some(StorePath::from_base_name(value).map_err(|e| invalid(name, e))?)
                }
                Field::System => system = Some(value).filter(|v| !v.is_empty()).map(str::to_string),
                Field::Ca if value.is_empty() => {}
                Field::Ca => {
                    check_ca(value)?;
                    ca = Some(value.to_string());
                }
            }
        }

        let (store_dir, store_path) = store.ok_or(NarInfoError::Missing("StorePath"))?;
        Ok(NarInfo {
            store_dir,
            store_path,
            url: url.ok_or(NarInfoError::Missing("URL"))?,
            compression: compression.unwrap_or_else(|| DEFAULT_COMPRESSION.to_string()),
            file_hash,
            file_size,
            nar_hash: nar_hash.ok_or(NarInfoError::Missing("NarHash"))?,
            nar_size: nar_size.ok_or(NarInfoError::Missing("NarSize"))?,
            references,
            deriver,
            system,
            sigs,
            ca,
        })
    }

    /// Writes the narinfo with Nix's field order and spelling, so a file written by Nix
    /// renders back to the same bytes. `References` is always present, with its
    /// trailing space when empty, as Nix writes it.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(512 + 80 * self.references.len());
        // Writing into a String cannot fail.
        let _ = writeln!(
            out,
            "StorePath: {}",
            self.store_dir.display(&self.store_path)
        );
        let _ = writeln!(out, "URL: {}", self.url);
        let _ = writeln!(out, "Compression: {}", self.compression);
        if let Some(h) = &self.file_hash {
            let _ = writeln!(out, "FileHash: {}", h.to_nix32_string());
        }
        if let Some(n) = self.file_size {
            let _ = writeln!(out, "FileSize: {n}");
        }
        let _ = writeln!(out, "NarHash: {}", self.nar_hash.to_nix32_string());
        let _ = writeln!(out, "NarSize: {}", self.nar_size);
        out.push_str("References:");
        for r in &self.references {
            out.push(' ');
            out.push_str(&r.base_name());
        }
        if self.references.is_empty() {
            out.push(' ');
        }
        out.push('\n');
        if let Some(d) = &self.deriver {
            let _ = writeln!(out, "Deriver: {d}");
        }
        if let Some(s) = &self.system {
            let _ = writeln!(out, "System: {s}");
        }
        for sig in &self.sigs {
            let _ = writeln!(out, "Sig: {sig}");
        }
        if let Some(ca) = &self.ca {
            let _ = writeln!(out, "CA: {ca}");
        }
        out
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

/// The signature fingerprint of a path: full store paths, the NarHash as
/// `sha256:<nix32>`, references comma-separated in the order given (Nix passes them
/// sorted).
pub fn fingerprint(
    store_dir: &StoreDir,
    path: &StorePath,
    nar_hash: &Hash,
    nar_size: u64,
    references: &[StorePath],
) -> String {
    let mut out = format!(
        "1;{};{};{};",
        store_dir.display(path),
        nar_hash.to_nix32_string(),
        nar_size
    );
    for (i, r) in references.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&store_dir.display(r));
    }
    out
}
