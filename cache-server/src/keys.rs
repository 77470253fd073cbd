//! Which keys sign: the configured secret key files, or on the embedded default a key
//! generated into the data directory on first start (and reused after).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Key(#[from] signer::KeyError),
    #[error("creating the default signing key {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// File names of the generated default key inside the data directory.
pub const DEFAULT_SECRET: &str = "signing-key.sec";
pub const DEFAULT_PUBLIC: &str = "signing-key.pub";

/// Fingerprints whose signatures are kept. An entry is a few hundred bytes, so this
/// bounds the cache to a few MB while covering the hot set of a CI fleet.
const SIGNATURE_CACHE: usize = 16 * 1024;

/// The keyring the configuration asks for. Returns it with a note of a key that was
/// just generated, so the caller can print its public half.
pub fn load_keyring(config: &Config) -> Result<(signer::Signer, Option<String>), KeyError> {
    if config.no_signing {
        return Ok((signer::Signer::new(Vec::new(), 0)?, None));
    }
    if !config.sign_key_paths.is_empty() {
        let signer = signer::Signer::load(&config.sign_key_paths, SIGNATURE_CACHE)?;
        return Ok((signer, None));
    }
    let secret = config.data_dir.join(DEFAULT_SECRET);
    let mut generated = None;
    if !secret.exists() {
        let name = format!("{}-cairn-1", hostname());
        let key = signer::SecretKey::generate(&name)?;
        write_new(&secret, &key.to_file_text(), 0o600)?;
        let public = key.public().to_string();
        write_new(
            &config.data_dir.join(DEFAULT_PUBLIC),
            &format!("{public}\n"),
            0o644,
        )?;
        generated = Some(public);
    }
    let key = signer::SecretKey::load(&secret)?;
    Ok((signer::Signer::new(vec![key], SIGNATURE_CACHE)?, generated))
}

fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), KeyError> {
    let err = |source| KeyError::Create {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    // The mode is set at creation, so the secret is never readable by others, not even
    // for a moment.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.')
        })
        .unwrap_or_else(|| "localhost".to_string())
}
