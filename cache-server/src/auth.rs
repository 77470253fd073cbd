//! Who may do what. Tokens carry scopes (read ⊂ push ⊂ admin), are stored only as
//! sha256 hashes, may expire, and come either from files named in the config (so a
//! NixOS module hands them over with LoadCredential) or from the cache database
//! (created and revoked with `cachectl token …`). Clients present them as a bearer
//! token or as the password of HTTP basic auth (what Nix sends from netrc).

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{header, HeaderMap};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use store::meta::{Scope, TokenRecord};

use crate::catalog::Catalog;

use crate::error::ServerError;

/// A token provisioned from a file, as written in the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenFile {
    /// A name for logs and `cachectl token list`.
    pub name: String,
    /// File holding the token text (surrounding whitespace ignored).
    pub secret_file: PathBuf,
    /// What the token may do: any of "read", "push", "admin".
    pub scopes: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("token {name}: reading {path}: {source}")]
    Read {
        name: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("token {name}: {path} is empty")]
    Empty { name: String, path: PathBuf },
    #[error("token {name}: unknown scope {scope:?} (read, push or admin)")]
    Scope { name: String, scope: String },
}

pub fn parse_scope(s: &str) -> Option<Scope> {
    match s {
        "read" => Some(Scope::Read),
        "push" => Some(Scope::Push),
        "admin" => Some(Scope::Admin),
        _ => None,
    }
}

pub fn scope_name(s: Scope) -> &'static str {
    match s {
        Scope::Read => "read",
        Scope::Push => "push",
        Scope::Admin => "admin",
    }
}

fn rank(s: Scope) -> u8 {
    match s {
        Scope::Read => 0,
        Scope::Push => 1,
        Scope::Admin => 2,
    }
}

/// sha256 of a token's text: what we store and compare.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.trim().as_bytes()).into()
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A fresh random token text.
pub fn new_token_text() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyz23456789";
    let mut rng = rand::thread_rng();
    let body: String = (0..40)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect();
    format!("cairn_{body}")
}

struct StaticToken {
    name: String,
    hash: [u8; 32],
    scopes: Vec<Scope>,
}

/// The caller, once authenticated.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
}

pub struct Auth {
    private: bool,
    statics: Vec<StaticToken>,
}

impl Auth {
    pub fn new(private: bool, files: &[TokenFile]) -> Result<Self, TokenFileError> {
        let mut statics = Vec::new();
        for f in files {
            let text =
                std::fs::read_to_string(&f.secret_file).map_err(|source| TokenFileError::Read {
                    name: f.name.clone(),
                    path: f.secret_file.clone(),
                    source,
                })?;
            if text.trim().is_empty() {
                return Err(TokenFileError::Empty {
                    name: f.name.clone(),
                    path: f.secret_file.clone(),
                });
            }
            let scopes = f
                .scopes
                .iter()
                .map(|s| {
                    parse_scope(s).ok_or_else(|| TokenFileError::Scope {
                        name: f.name.clone(),
                        scope: s.clone(),
                    })
                })
                .collect::<Result<_, _>>()?;
            statics.push(StaticToken {
                name: f.name.clone(),
                hash: hash_token(&text),
                scopes,
            });
        }
        Ok(Auth { private, statics })
    }

    /// Checks that the request may act with `needed`. Reads of a public cache need
    /// nothing; everything else needs a token with that scope (or a higher one).
    /// No or unknown credentials: 401; a valid token lacking the scope: 403.
    pub fn check(
        &self,
        db: &Catalog,
        headers: &HeaderMap,
        needed: Scope,
    ) -> Result<Option<Caller>, ServerError> {
        if needed == Scope::Read && !self.private {
            return Ok(None);
        }
        let token = presented_token(headers).ok_or(ServerError::Unauthorized)?;
        let hash = hash_token(&token);
        let (name, scopes) = if let Some(t) = self.statics.iter().find(|t| t.hash == hash) {
            (t.name.clone(), t.scopes.clone())
        } else {
            match db.token_by_secret_hash(&hash)? {
                Some(TokenRecord {
                    name,
                    scopes,
                    expires,
                    revoked,
                    ..
                }) => {
                    if revoked || expires.is_some_and(|e| e <= now()) {
                        return Err(ServerError::Unauthorized);
                    }
                    (name, scopes)
                }
                None => return Err(ServerError::Unauthorized),
            }
        };
        if scopes.iter().any(|&s| rank(s) >= rank(needed)) {
            Ok(Some(Caller { name }))
        } else {
            Err(ServerError::Forbidden)
        }
    }
}

/// The token from `Authorization: Bearer T` or `Authorization: Basic base64(user:T)`.
fn presented_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.trim().to_string()).filter(|t| !t.is_empty());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = B64.decode(rest.trim()).ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (_, password) = text.split_once(':')?;
        return Some(password.to_string()).filter(|t| !t.is_empty());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_from_both_header_forms() {
        let mut h = HeaderMap::new();
        assert_eq!(presented_token(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(presented_token(&h).as_deref(), Some("abc"));
        let basic = format!("Basic {}", B64.encode("ci:s3cret"));
        h.insert(header::AUTHORIZATION, basic.parse().unwrap());
        assert_eq!(presented_token(&h).as_deref(), Some("s3cret"));
        h.insert(header::AUTHORIZATION, "Basic !!!".parse().unwrap());
        assert_eq!(presented_token(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(presented_token(&h), None);
    }

    #[test]
    fn new_tokens_are_distinct() {
        let a = new_token_text();
        assert!(a.starts_with("cairn_") && a.len() == 46);
        assert_ne!(a, new_token_text());
        assert_eq!(hash_token(&a), hash_token(&format!(" {a}\n")));
    }
}
