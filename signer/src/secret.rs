//! Secret signing keys in Nix's text form: `name:base64(seed ‖ public key)`.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signer as _, SigningKey};

use crate::error::{KeyError, KeyKind, KeyProblem};
use crate::{check_name, decode_named, PublicKey};

/// Key files are a line of ~100 bytes; anything much bigger is not a key, and reading it
/// whole would only waste memory.
const MAX_KEY_FILE: u64 = 64 * 1024;

/// An ed25519 signing key with its Nix key name.
///
/// `Debug` shows only the name; there is deliberately no `Display`. The key bytes are
/// zeroed on drop (ed25519-dalek's `zeroize` feature).
#[derive(Clone)]
pub struct SecretKey {
    name: String,
    key: SigningKey,
}

impl SecretKey {
    /// A fresh key from the operating system's random number generator.
    pub fn generate(name: &str) -> Result<Self, KeyError> {
        check_name(name).map_err(|_| KeyError::InvalidName {
            name: name.to_string(),
        })?;
        Ok(SecretKey {
            name: name.to_string(),
            key: SigningKey::generate(&mut rand::rngs::OsRng),
        })
    }

    /// Parses Nix's secret key text. Leading and trailing whitespace is ignored.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        parse(text).map_err(|problem| KeyError::Malformed {
            kind: KeyKind::Secret,
            problem,
        })
    }

    /// Reads a secret key file, as written by `nix-store --generate-binary-cache-key` or
    /// `cachectl keygen`. Refuses files that group or others may access at all.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, KeyError> {
        let path = path.as_ref();
        let read_err = |source| KeyError::Read {
            path: path.to_path_buf(),
            kind: KeyKind::Secret,
            source,
        };
        let file = File::open(path).map_err(read_err)?;
        // Check the mode of the file we opened, not of whatever is at the path now.
        let mode = file.metadata().map_err(read_err)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions {
                path: path.to_path_buf(),
                mode: mode & 0o7777,
            });
        }
        let mut text = String::new();
        file.take(MAX_KEY_FILE)
            .read_to_string(&mut text)
            .map_err(read_err)?;
        parse(&text).map_err(|problem| KeyError::BadFile {
            path: path.to_path_buf(),
            kind: KeyKind::Secret,
            problem,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn public(&self) -> PublicKey {
        PublicKey::from_parts(self.name.clone(), self.key.verifying_key())
    }

    /// Signs a fingerprint; returns the signature in `name:base64` form, as it appears
    /// after `Sig: ` in a narinfo.
    pub fn sign(&self, fingerprint: &str) -> String {
        let sig = self.key.sign(fingerprint.as_bytes());
        format!("{}:{}", self.name, B64.encode(sig.to_bytes()))
    }

    /// The key file text, exactly as Nix writes it (no trailing newline). This is the
    /// secret itself: write it only to a file nobody else can read.
    pub fn to_file_text(&self) -> String {
        format!("{}:{}", self.name, B64.encode(self.key.to_keypair_bytes()))
    }
}

fn parse(text: &str) -> Result<SecretKey, KeyProblem> {
    let (name, bytes) = decode_named::<64>(text.trim())?;
    let (seed, public) = bytes.split_at(32);
    let seed: &[u8; 32] = seed.try_into().expect("split at 32 of 64");
    let key = SigningKey::from_bytes(seed);
    if key.verifying_key().as_bytes() != public {
        return Err(KeyProblem::PublicMismatch);
    }
    Ok(SecretKey {
        name: name.to_string(),
        key,
    })
}

impl FromStr for SecretKey {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey")
            .field("name", &self.name)
            .field("key", &format_args!("<redacted>"))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// A key pair made by `nix-store --generate-binary-cache-key k1 sk pk` (Nix 2.8.0),
    /// and Nix's signature (`nix store sign`) of one store path, with its fingerprint.
    const NIX_SK: &str = "k1:3gIKzG0Gp5fLeQjPthBS0wKM9w9Ezdp5bnE6vRHNtUq2oqDVo1HzHwIdbVJl34DV0Kbk2x14NRrJ6B0SEK5NTw==";
    const NIX_PK: &str = "k1:tqKg1aNR8x8CHW1SZd+A1dCm5NsdeDUayegdEhCuTU8=";
    const NIX_FP: &str = "1;/nix/store/7m6ap3rqrjwrpq9jda1k9hdsxid1w4an-a;\
        sha256:1jpg5v8rcf4d08rlpq51vnd1w800l64h34r0bw4vkb6z3qlk089k;288;";
    const NIX_SIG: &str = "k1:XpplUQC28fBmpgCgyeZ8uh5uxIp7tRaQfWSoDO0tb2/gE24ZNjfO/R4uIJICmn4ZS6+T0uIT55iFhZgXk5NtBg==";

    fn secret_b64(key: &SecretKey) -> String {
        key.to_file_text().split_once(':').unwrap().1.to_string()
    }

    fn write_key(dir: &Path, text: &str, mode: u32) -> std::path::PathBuf {
        let path = dir.join("key.sec");
        fs::write(&path, text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn nix_golden_key_and_signature() {
        let sk = SecretKey::parse(NIX_SK).unwrap();
        assert_eq!(sk.name(), "k1");
        assert_eq!(sk.public().to_string(), NIX_PK);
        assert_eq!(sk.to_file_text(), NIX_SK);
        // ed25519 is deterministic, so our signature must be Nix's, byte for byte.
        assert_eq!(sk.sign(NIX_FP), NIX_SIG);
        assert!(PublicKey::parse(NIX_PK).unwrap().verify(NIX_FP, NIX_SIG));
    }

    #[test]
    fn generate_round_trips_through_file_text() {
        let sk = SecretKey::generate("cache.example.org-1").unwrap();
        let again = SecretKey::parse(&sk.to_file_text()).unwrap();
        assert_eq!(again.name(), "cache.example.org-1");
        assert_eq!(again.public(), sk.public());
        assert_eq!(again.sign("fp"), sk.sign("fp"));
        assert_ne!(
            SecretKey::generate("x").unwrap().public().as_bytes(),
            SecretKey::generate("x").unwrap().public().as_bytes()
        );
    }

    #[test]
    fn generate_refuses_bad_names() {
        for name in ["", "a:b", "a b", "a\n"] {
            let err = SecretKey::generate(name).unwrap_err();
            assert!(
                matches!(&err, KeyError::InvalidName { name: n } if n == name),
                "{name:?}: {err:?}"
            );
            assert!(err.to_string().starts_with("invalid key name"), "{err}");
        }
    }

    #[test]
    fn sign_verify_round_trip() {
        let sk = SecretKey::generate("k").unwrap();
        let pk = sk.public();
        let fp = "1;/nix/store/7m6ap3rqrjwrpq9jda1k9hdsxid1w4an-a;sha256:1jpg5v8rcf4d08rlpq51vnd1w800l64h34r0bw4vkb6z3qlk089k;288;";
        let sig = sk.sign(fp);
        assert!(sig.starts_with("k:"));
        assert!(pk.verify(fp, &sig));
    }

    #[test]
    fn tampered_fingerprint_fails() {
        let sk = SecretKey::generate("k").unwrap();
        let sig = sk.sign("1;/nix/store/aaa-x;sha256:abc;288;");
        assert!(!sk
            .public()
            .verify("1;/nix/store/aaa-x;sha256:abc;289;", &sig));
        assert!(!sk.public().verify("", &sig));
    }

    #[test]
    fn wrong_key_fails() {
        let sk = SecretKey::generate("k").unwrap();
        let other_same_name = SecretKey::generate("k").unwrap();
        let sig = sk.sign("fp");
        assert!(!other_same_name.public().verify("fp", &sig));

        // The right key bytes under another name: Nix looks keys up by name, so this
        // must not verify either.
        let renamed = format!("other:{}", sig.split_once(':').unwrap().1);
        assert!(!sk.public().verify("fp", &renamed));
    }

    #[test]
    fn garbage_signatures_fail() {
        let pk = SecretKey::generate("k").unwrap().public();
        for sig in [
            "",
            "k",
            "k:",
            "k:!!!!",
            "k:AAAA",
            ":",
            "k:tqKg1aNR8x8CHW1SZd+A1dCm5NsdeDUayegdEhCuTU8=",
        ] {
            assert!(!pk.verify("fp", sig), "{sig:?}");
        }
        let zeros = format!("k:{}", B64.encode([0u8; 64]));
        assert!(!pk.verify("fp", &zeros));
    }

    #[test]
    fn debug_and_errors_never_show_the_secret() {
        let sk = SecretKey::parse(NIX_SK).unwrap();
        let secret = secret_b64(&sk);
        let seed_b64 = B64.encode(&B64.decode(&secret).unwrap()[..32]);
        // Exact, so that a derived Debug (which would print the key bytes as numbers,
        // not base64) cannot sneak back in.
        assert_eq!(
            format!("{sk:?}"),
            r#"SecretKey { name: "k1", key: <redacted> }"#
        );
        let debug = format!("{sk:?} {sk:#?}");
        assert!(
            debug.contains("k1") && debug.contains("<redacted>"),
            "{debug}"
        );
        assert!(!debug.contains(&secret) && !debug.contains(&seed_b64));
        assert!(!debug.contains(&secret[..16]));

        // Every way a secret can be rejected, through text and through a file.
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = B64.decode(&secret).unwrap();
        bytes[63] ^= 1;
        let mismatched = format!("k1:{}", B64.encode(&bytes));
        let inputs = [
            secret.clone(),                             // no name
            format!(":{secret}"),                       // empty name
            format!("k 1:{secret}"),                    // bad name
            format!("k1:{secret}!"),                    // not base64
            format!("k1:{}", B64.encode(&bytes[..40])), // wrong length
            mismatched,                                 // public half mismatch
        ];
        let mut messages = Vec::new();
        for text in &inputs {
            messages.push(SecretKey::parse(text).unwrap_err());
            messages.push(SecretKey::load(write_key(dir.path(), text, 0o600)).unwrap_err());
            messages.push(PublicKey::parse(text).unwrap_err());
        }
        messages.push(SecretKey::load(write_key(dir.path(), NIX_SK, 0o644)).unwrap_err());
        for err in messages {
            let shown = format!("{err} {err:?}");
            assert!(!shown.contains(&secret[..16]), "{shown}");
            assert!(!shown.contains(&seed_b64[..16]), "{shown}");
        }
    }

    #[test]
    fn permissive_modes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o644, 0o640, 0o604, 0o660, 0o610, 0o601, 0o777] {
            let path = write_key(dir.path(), NIX_SK, mode);
            let err = SecretKey::load(&path).unwrap_err();
            let msg = err.to_string();
            assert!(
                matches!(&err, KeyError::Permissions { path: p, mode: m } if *p == path && *m == mode),
                "{mode:o}: {err:?}"
            );
            assert!(msg.contains(path.to_str().unwrap()), "{msg}");
            assert!(msg.contains("readable by group or others"), "{msg}");
            assert!(msg.contains("chmod 600"), "{msg}");
        }
        for mode in [0o600, 0o400] {
            let path = write_key(dir.path(), NIX_SK, mode);
            assert_eq!(SecretKey::load(&path).unwrap().public().to_string(), NIX_PK);
        }
    }

    #[test]
    fn trailing_whitespace_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        for text in [
            format!("{NIX_SK}\n"),
            format!("{NIX_SK}\r\n"),
            format!("  {NIX_SK} \n\n"),
        ] {
            let path = write_key(dir.path(), &text, 0o600);
            assert_eq!(SecretKey::load(&path).unwrap().public().to_string(), NIX_PK);
            assert_eq!(SecretKey::parse(&text).unwrap().name(), "k1");
        }
    }

    #[test]
    fn malformed_files_give_the_right_variant() {
        let dir = tempfile::tempdir().unwrap();
        let sk = SecretKey::parse(NIX_SK).unwrap();
        let mut bytes = B64.decode(secret_b64(&sk)).unwrap();
        let other_public = SecretKey::generate("z").unwrap().public();
        bytes[32..].copy_from_slice(other_public.as_bytes());
        let cases = [
            ("", KeyProblem::NoName),
            ("\n", KeyProblem::NoName),
            ("no-colon-here", KeyProblem::NoName),
            (":AAAA", KeyProblem::EmptyName),
            ("k 1:AAAA", KeyProblem::BadName),
            ("k1:not base64!", KeyProblem::NotBase64),
            ("k1:AAA", KeyProblem::NotBase64),
            (
                NIX_PK,
                KeyProblem::WrongLength {
                    expected: 64,
                    actual: 32,
                },
            ),
            (
                "k1:",
                KeyProblem::WrongLength {
                    expected: 64,
                    actual: 0,
                },
            ),
        ];
        let mismatch = format!("k1:{}", B64.encode(&bytes));
        let cases = cases
            .iter()
            .map(|(t, p)| (t.to_string(), *p))
            .chain([(mismatch, KeyProblem::PublicMismatch)]);
        for (text, problem) in cases {
            let path = write_key(dir.path(), &text, 0o600);
            let err = SecretKey::load(&path).unwrap_err();
            match &err {
                KeyError::BadFile {
                    path: p,
                    kind: KeyKind::Secret,
                    problem: got,
                } => {
                    assert_eq!(*got, problem, "{text:?}");
                    assert_eq!(*p, path);
                }
                other => panic!("{text:?}: {other:?}"),
            }
            assert!(err.to_string().contains(path.to_str().unwrap()));
            assert_eq!(
                SecretKey::parse(&text).unwrap_err().problem(),
                Some(problem)
            );
        }
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = SecretKey::load("/nonexistent/cairn/key.sec").unwrap_err();
        assert!(matches!(
            err,
            KeyError::Read {
                kind: KeyKind::Secret,
                ..
            }
        ));
        assert!(
            err.to_string().contains("/nonexistent/cairn/key.sec"),
            "{err}"
        );
    }
}
