//! Public verification keys in Nix's text form: `name:base64(32 bytes)`.

use std::fmt;
use std::fs;
use std::path::Path;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signature, VerifyingKey};

use crate::decode_named;
use crate::error::{KeyError, KeyKind, KeyProblem};

/// An ed25519 public key with its Nix key name. `Display` gives the form
/// `trusted-public-keys` takes.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    name: String,
    key: VerifyingKey,
}

impl PublicKey {
    pub(crate) fn from_parts(name: String, key: VerifyingKey) -> Self {
        PublicKey { name, key }
    }

    /// Parses Nix's public key text. Leading and trailing whitespace is ignored.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        parse(text).map_err(|problem| KeyError::Malformed {
            kind: KeyKind::Public,
            problem,
        })
    }

    /// Reads a public key file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, KeyError> {
        let path = path.as_ref();
        let text = fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: path.to_path_buf(),
            kind: KeyKind::Public,
            source,
        })?;
        parse(&text).map_err(|problem| KeyError::BadFile {
            path: path.to_path_buf(),
            kind: KeyKind::Public,
            problem,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        self.key.as_bytes()
    }

    /// Whether `sig_line` (`name:base64`, as after `Sig: ` in a narinfo) is this key's
    /// valid signature of `fingerprint`. A signature under another key name is `false`.
    ///
    /// Uses strict verification (canonical `S`, no small-order keys or `R`), which is what
    /// libsodium, and so Nix, accepts.
    pub fn verify(&self, fingerprint: &str, sig_line: &str) -> bool {
        let Ok((name, bytes)) = decode_named::<64>(sig_line) else {
            return false;
        };
        name == self.name
            && self
                .key
                .verify_strict(fingerprint.as_bytes(), &Signature::from_bytes(&bytes))
                .is_ok()
    }
}

fn parse(text: &str) -> Result<PublicKey, KeyProblem> {
    let (name, bytes) = decode_named::<32>(text.trim())?;
    let key = VerifyingKey::from_bytes(&bytes).map_err(|_| KeyProblem::InvalidPoint)?;
    Ok(PublicKey {
        name: name.to_string(),
        key,
    })
}

impl FromStr for PublicKey {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, B64.encode(self.key.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::SecretKey;

    #[test]
    fn display_round_trips() {
        let pk = SecretKey::generate("k-1").unwrap().public();
        let text = pk.to_string();
        assert!(text.starts_with("k-1:"));
        assert_eq!(text.len(), "k-1:".len() + 44);
        assert_eq!(PublicKey::parse(&text).unwrap(), pk);
        assert_eq!(format!("{text}\n").parse::<PublicKey>().unwrap(), pk);
        assert_eq!(format!("{pk:?}"), format!("PublicKey({text})"));
    }

    #[test]
    fn malformed_public_keys() {
        let sk = SecretKey::generate("k").unwrap();
        let cases = [
            ("nocolon".to_string(), KeyProblem::NoName),
            (":AAAA".to_string(), KeyProblem::EmptyName),
            ("k:@@@@".to_string(), KeyProblem::NotBase64),
            (
                sk.to_file_text(),
                KeyProblem::WrongLength {
                    expected: 32,
                    actual: 64,
                },
            ),
        ];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pub");
        for (text, problem) in cases {
            let err = PublicKey::parse(&text).unwrap_err();
            assert!(
                matches!(err, KeyError::Malformed { kind: KeyKind::Public, problem: p } if p == problem),
                "{text:?}: {err:?}"
            );
            fs::write(&path, &text).unwrap();
            let err = PublicKey::load(&path).unwrap_err();
            assert!(
                matches!(&err, KeyError::BadFile { kind: KeyKind::Public, problem: p, .. } if *p == problem),
                "{err:?}"
            );
            assert!(err.to_string().contains(path.to_str().unwrap()));
        }
        // A secret key where a public key belongs gets a hint.
        let err = PublicKey::parse(&sk.to_file_text()).unwrap_err();
        assert!(err.to_string().contains("is this a secret key?"), "{err}");
    }
}
