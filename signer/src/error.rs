//! The crate's error type. Messages name the file and the kind of problem; they never
//! contain key text, so they are safe to log.

use std::fmt;
use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// Which half of a key pair an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Secret,
    Public,
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyKind::Secret => "secret",
            KeyKind::Public => "public",
        })
    }
}

/// What is wrong with the text of a key.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum KeyProblem {
    #[error("has no key name (expected `name:base64`)")]
    NoName,
    #[error("has an empty key name")]
    EmptyName,
    #[error("has a key name containing `:`, whitespace or control characters")]
    BadName,
    #[error("key data is not valid base64")]
    NotBase64,
    #[error("key data is {actual} bytes, expected {expected}{}", length_hint(*expected, *actual))]
    WrongLength { expected: usize, actual: usize },
    #[error("public half does not match the secret seed")]
    PublicMismatch,
    #[error("is not a valid ed25519 public key")]
    InvalidPoint,
}

/// A 64-byte blob where a public key belongs (or the reverse) is the usual mix-up.
fn length_hint(expected: usize, actual: usize) -> &'static str {
    match (expected, actual) {
        (32, 64) => " (is this a secret key?)",
        (64, 32) => " (is this a public key?)",
        _ => "",
    }
}

#[derive(Debug, Error)]
pub enum KeyError {
    /// Key text given directly (not from a file) is malformed.
    #[error("malformed {kind} key: {problem}")]
    Malformed { kind: KeyKind, problem: KeyProblem },
    /// A key file's contents are malformed.
    #[error("{kind} key file {}: {problem}", path.display())]
    BadFile {
        path: PathBuf,
        kind: KeyKind,
        problem: KeyProblem,
    },
    #[error("cannot read {kind} key file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        kind: KeyKind,
        #[source]
        source: io::Error,
    },
    /// Secret key files must not be readable by anyone but their owner.
    #[error(
        "secret key file {} is readable by group or others (mode {mode:03o}); chmod 600 it",
        path.display()
    )]
    Permissions { path: PathBuf, mode: u32 },
    /// A name for a new key is unusable.
    #[error(
        "invalid key name {name:?}: it must be non-empty, without `:`, whitespace or \
         control characters"
    )]
    InvalidName { name: String },
    /// Two keys given to one signer share a name, so their signatures could not be told
    /// apart by a client.
    #[error("two signing keys are both named {name:?}")]
    DuplicateName { name: String },
}

impl KeyError {
    /// The problem with the key text, when that is what went wrong.
    pub fn problem(&self) -> Option<KeyProblem> {
        match self {
            KeyError::Malformed { problem, .. } | KeyError::BadFile { problem, .. } => {
                Some(*problem)
            }
            KeyError::Read { .. }
            | KeyError::Permissions { .. }
            | KeyError::InvalidName { .. }
            | KeyError::DuplicateName { .. } => None,
        }
    }
}
