//! Store paths (`<storedir>/<32 nix32 chars>-<name>`) and the store directory they live in.
//! The store directory is always configurable: a store kept physically under
//! `/some/root/nix/store` is still advertised as `/nix/store`.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use crate::nixbase32;

/// Length of a store path's hash part in characters.
pub const HASH_PART_LEN: usize = 32;
/// Length of a store path's digest in bytes.
pub const DIGEST_LEN: usize = 20;
/// Longest name Nix accepts.
pub const MAX_NAME_LEN: usize = 211;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum StorePathError {
    #[error("store path hash part must be {HASH_PART_LEN} nixbase32 characters")]
    BadHashPart,
    #[error("store path name is invalid")]
    BadName,
    #[error("store path base name has no '-' after the hash part")]
    NoName,
    #[error("path is not inside the store directory {0}")]
    NotInStore(String),
    #[error("store directory must be an absolute path without a trailing '/'")]
    BadStoreDir,
}

/// True when `s` is a well-formed hash part: 32 nixbase32 characters (160 bits, so any
/// such string decodes; no decoding needed to tell).
pub fn is_hash_part(s: &str) -> bool {
    s.len() == HASH_PART_LEN && nixbase32::is_valid(s)
}

/// Parses the 32-character hash part of a store path (what `<hash>.narinfo` names).
pub fn parse_hash_part(s: &str) -> Result<[u8; DIGEST_LEN], StorePathError> {
    if s.len() != HASH_PART_LEN {
        return Err(StorePathError::BadHashPart);
    }
    let mut out = [0u8; DIGEST_LEN];
    nixbase32::decode_into(s, &mut out).map_err(|_| StorePathError::BadHashPart)?;
    Ok(out)
}

/// True when `name` is a valid store path name.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"+-._?=".contains(&c))
}

/// A store path without its directory: digest plus name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorePath {
    digest: [u8; DIGEST_LEN],
    name: String,
}

impl StorePath {
    pub fn new(digest: [u8; DIGEST_LEN], name: &str) -> Result<Self, StorePathError> {
        if !is_valid_name(name) {
            return Err(StorePathError::BadName);
        }
        Ok(StorePath {
            digest,
            name: name.to_string(),
        })
    }

    /// Parses `<hash>-<name>`, the form narinfo References use.
    pub fn from_base_name(s: &str) -> Result<Self, StorePathError> {
        if s.len() < HASH_PART_LEN + 2 || !s.is_char_boundary(HASH_PART_LEN) {
            return Err(if s.len() <= HASH_PART_LEN {
                StorePathError::NoName
            } else {
                StorePathError::BadHashPart
            });
        }
        let (hash, rest) = s.split_at(HASH_PART_LEN);
        let digest = parse_hash_part(hash)?;
        let name = rest.strip_prefix('-').ok_or(StorePathError::NoName)?;
        StorePath::new(digest, name)
    }

    pub fn digest(&self) -> &[u8; DIGEST_LEN] {
        &self.digest
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The 32-character hash part.
    pub fn hash_part(&self) -> String {
        nixbase32::encode(&self.digest)
    }

    /// `<hash>-<name>`.
    pub fn base_name(&self) -> String {
        format!("{}-{}", self.hash_part(), self.name)
    }
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.hash_part(), self.name)
    }
}

impl fmt::Debug for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorePath({self})")
    }
}

impl FromStr for StorePath {
    type Err = StorePathError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        StorePath::from_base_name(s)
    }
}

/// The logical store directory, e.g. `/nix/store`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StoreDir(String);

impl Default for StoreDir {
    fn default() -> Self {
        StoreDir("/nix/store".to_string())
    }
}

impl StoreDir {
    pub fn new(dir: &str) -> Result<Self, StorePathError> {
        if !dir.starts_with('/') || (dir.len() > 1 && dir.ends_with('/')) || dir.contains("//") {
            return Err(StorePathError::BadStoreDir);
        }
        Ok(StoreDir(dir.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parses a full path such as `/nix/store/<hash>-<name>`. Anything below the store
    /// path itself (`/nix/store/<hash>-<name>/bin/x`) is rejected.
    pub fn parse_path(&self, full: &str) -> Result<StorePath, StorePathError> {
        let rest = full
            .strip_prefix(self.0.as_str())
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| StorePathError::NotInStore(self.0.clone()))?;
        if rest.contains('/') {
            return Err(StorePathError::BadName);
        }
        StorePath::from_base_name(rest)
    }

    /// The full path string of a store path in this directory.
    pub fn display(&self, path: &StorePath) -> String {
        format!("{}/{}", self.0, path)
    }
}

impl fmt::Display for StoreDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_part_check_agrees_with_parsing() {
        for s in [
            "0mhxs8i8rz8bvwxzmhygw2j8qp4asgc0",
            "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
            "0mhxs8i8rz8bvwxzmhygw2j8qp4asgce",
            "0mhxs8i8rz8bvwxzmhygw2j8qp4asgc",
            "0mhxs8i8rz8bvwxzmhygw2j8qp4asgc00",
            "0MHXS8I8RZ8BVWXZMHYGW2J8QP4ASGC0",
        ] {
            assert_eq!(is_hash_part(s), parse_hash_part(s).is_ok(), "{s}");
        }
    }

    const P: &str = "00bgd045z0d4icpbc2yyz4gx48ak44la-net-tools-1.60_p20170221182432";

    #[test]
    fn parses_and_prints() {
        let p = StorePath::from_base_name(P).unwrap();
        assert_eq!(p.name(), "net-tools-1.60_p20170221182432");
        assert_eq!(p.to_string(), P);
        let dir = StoreDir::default();
        let full = dir.display(&p);
        assert_eq!(full, format!("/nix/store/{P}"));
        assert_eq!(dir.parse_path(&full).unwrap(), p);
        let other = StoreDir::new("/tmp/x/store").unwrap();
        assert!(matches!(
            other.parse_path(&full),
            Err(StorePathError::NotInStore(_))
        ));
    }

    #[test]
    fn rejects_bad_paths() {
        for bad in [
            "",
            "00bgd045z0d4icpbc2yyz4gx48ak44la",
            "00bgd045z0d4icpbc2yyz4gx48ak44la-",
            "00bgd045z0d4icpbc2yyz4gx48ak44lae-x",
            "e0bgd045z0d4icpbc2yyz4gx48ak44la-x",
            "00bgd045z0d4icpbc2yyz4gx48ak44la-.x",
            "00bgd045z0d4icpbc2yyz4gx48ak44la-a/b",
            "00bgd045z0d4icpbc2yyz4gx48ak44la-a b",
            "00bgd045z0d4icpbc2yyz4gx48ak4€-ab",
        ] {
            assert!(StorePath::from_base_name(bad).is_err(), "{bad:?}");
        }
        assert!(StoreDir::default()
            .parse_path(&format!("/nix/store/{P}/bin"))
            .is_err());
        assert!(StoreDir::new("relative").is_err());
        assert!(StoreDir::new("/nix/store/").is_err());
    }

    #[test]
    fn hash_part_validation() {
        assert!(parse_hash_part("00bgd045z0d4icpbc2yyz4gx48ak44la").is_ok());
        assert!(parse_hash_part("00bgd045z0d4icpbc2yyz4gx48ak44l").is_err());
        assert!(parse_hash_part("00bgd045z0d4icpbc2yyz4gx48ak44lu").is_err());
        assert!(parse_hash_part("../../../../../../../etc/passwd").is_err());
    }
}
