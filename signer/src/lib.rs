//! Nix-format ed25519 signing: secret and public keys in Nix's `name:base64` text form,
//! signatures over narinfo fingerprints, several keys at once for rotation, a bounded
//! signature cache, and a set of trusted keys to check signatures that arrive with uploads.
//!
//! Pure and synchronous: the only I/O is reading key files. Secret key material never
//! appears in `Debug` output or in error messages.

mod error;
mod public;
mod secret;
mod signer;
mod trusted;

pub use error::{KeyError, KeyKind, KeyProblem};
pub use public::PublicKey;
pub use secret::SecretKey;
pub use signer::{Signer, SignerCounters};
pub use trusted::TrustedKeys;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

/// Splits Nix's `name:base64` key or signature text and decodes the data half into
/// exactly `N` bytes. Never puts any part of `text` into the error.
fn decode_named<const N: usize>(text: &str) -> Result<(&str, [u8; N]), KeyProblem> {
    let (name, data) = text.split_once(':').ok_or(KeyProblem::NoName)?;
    check_name(name)?;
    let bytes = B64.decode(data).map_err(|_| KeyProblem::NotBase64)?;
    let bytes: [u8; N] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| KeyProblem::WrongLength {
            expected: N,
            actual: bytes.len(),
        })?;
    Ok((name, bytes))
}

/// Key names end up in whitespace-separated settings (`trusted-public-keys`) and in
/// `Sig:` lines, so whitespace and control characters are refused as well as `:`.
fn check_name(name: &str) -> Result<(), KeyProblem> {
    if name.is_empty() {
        return Err(KeyProblem::EmptyName);
    }
    if name
        .chars()
        .any(|c| c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(KeyProblem::BadName);
    }
    Ok(())
}
