//! The shared cluster secret: what authenticates node-to-node traffic. Every node of a
//! cluster reads the same secret from a file (handed over by the NixOS module with
//! `LoadCredential`); every internal request carries it as a bearer token, beside the
//! cluster id and the target node id.

use std::fmt;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use thiserror::Error;

/// Shorter secrets are refused: 32 characters of `head -c 24 /dev/urandom | base64`.
pub const MIN_SECRET_LEN: usize = 32;

/// The cluster secret. Its `Debug` never shows it.
#[derive(Clone)]
pub struct ClusterSecret {
    text: String,
    digest: [u8; 32],
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(<redacted>)")
    }
}

#[derive(Debug, Error)]
pub enum SecretError {
    #[error("cluster secret file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "cluster secret file {path} is readable by group or others (mode {mode:o}); chmod 600 it"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("cluster secret file {path} holds fewer than {MIN_SECRET_LEN} characters")]
    TooShort { path: PathBuf },
    #[error("cluster secret file {path} holds more than one line or non-printable characters")]
    Malformed { path: PathBuf },
}

impl ClusterSecret {
    /// Reads the secret from `path`: one line of printable ASCII, at least
    /// [`MIN_SECRET_LEN`] characters, in a file no one but its owner can read.
    pub fn from_file(path: &Path) -> Result<Self, SecretError> {
        let read_err = |source| SecretError::Read {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read_err)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(SecretError::Permissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        let raw = std::fs::read_to_string(path).map_err(read_err)?;
        let text = raw.trim();
        if text.len() < MIN_SECRET_LEN {
            return Err(SecretError::TooShort {
                path: path.to_path_buf(),
            });
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(SecretError::Malformed {
                path: path.to_path_buf(),
            });
        }
        Ok(Self::new(text))
    }

    /// A fresh random secret, for a cluster of one that has no peers to share one with.
    pub fn random() -> Self {
        Self::new(&format!("{:032x}", rand::random::<u128>()))
    }

    /// A secret from its text (tests, and the file reader above).
    pub fn new(text: &str) -> Self {
        ClusterSecret {
            text: text.to_string(),
            digest: Sha256::digest(text.as_bytes()).into(),
        }
    }

    /// The `Authorization` header value that carries it.
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.text)
    }

    /// Whether `presented` is the secret. Compares digests in constant time, so the
    /// time taken says nothing about how much of a guess was right.
    pub fn matches(&self, presented: &str) -> bool {
        let other: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        self.digest
            .iter()
            .zip(other.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_file_rules() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        std::fs::write(&p, "0123456789abcdef0123456789abcdef\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = ClusterSecret::from_file(&p).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let s = ClusterSecret::from_file(&p).unwrap();
        assert!(s.matches("0123456789abcdef0123456789abcdef"));
        assert!(!s.matches("0123456789abcdef0123456789abcdeX"));
        assert!(!format!("{s:?}").contains("0123"));
        std::fs::write(&p, "short\n").unwrap();
        assert!(matches!(
            ClusterSecret::from_file(&p),
            Err(SecretError::TooShort { .. })
        ));
        std::fs::write(&p, "0123456789abcdef 0123456789abcdef\n").unwrap();
        assert!(matches!(
            ClusterSecret::from_file(&p),
            Err(SecretError::Malformed { .. })
        ));
    }
}
