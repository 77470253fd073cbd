//! The public keys whose signatures we accept, as Nix's `trusted-public-keys` is.

use std::collections::{BTreeMap, HashSet};

use crate::{KeyError, PublicKey};

/// A set of public keys, at most one per key name (a later key replaces an earlier one
/// of the same name, as in Nix).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedKeys {
    keys: BTreeMap<String, PublicKey>,
}

impl TrustedKeys {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses a whitespace-separated list of `name:base64` keys, the format of Nix's
    /// `trusted-public-keys` setting.
    pub fn parse_list(list: &str) -> Result<Self, KeyError> {
        list.split_whitespace().map(PublicKey::parse).collect()
    }

    /// Adds a key; returns the key it replaced, if one had the same name.
    pub fn insert(&mut self, key: PublicKey) -> Option<PublicKey> {
        self.keys.insert(key.name().to_string(), key)
    }

    pub fn get(&self, name: &str) -> Option<&PublicKey> {
        self.keys.get(name)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &PublicKey> {
        self.keys.values()
    }

    /// Whether `sig_line` is a valid signature of `fingerprint` by a trusted key.
    pub fn verify(&self, fingerprint: &str, sig_line: &str) -> bool {
        let Some((name, _)) = sig_line.split_once(':') else {
            return false;
        };
        self.keys
            .get(name)
            .is_some_and(|key| key.verify(fingerprint, sig_line))
    }

    /// The signatures among `sigs` that verify, in their order, without duplicates. This
    /// is what an upload's signatures are filtered through before they are kept.
    pub fn valid_signatures<I, S>(&self, fingerprint: &str, sigs: I) -> Vec<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut seen = HashSet::new();
        sigs.into_iter()
            .filter(|s| self.verify(fingerprint, s.as_ref()))
            .filter(|s| seen.insert(s.as_ref().to_string()))
            .map(|s| s.as_ref().to_string())
            .collect()
    }
}

impl FromIterator<PublicKey> for TrustedKeys {
    fn from_iter<T: IntoIterator<Item = PublicKey>>(iter: T) -> Self {
        let mut keys = TrustedKeys::new();
        keys.extend(iter);
        keys
    }
}

impl Extend<PublicKey> for TrustedKeys {
    fn extend<T: IntoIterator<Item = PublicKey>>(&mut self, iter: T) {
        for key in iter {
            self.insert(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SecretKey;

    #[test]
    fn verifies_only_trusted_signatures() {
        let (a, b, untrusted) = (
            SecretKey::generate("a").unwrap(),
            SecretKey::generate("b").unwrap(),
            SecretKey::generate("c").unwrap(),
        );
        let list = format!("  {}\n{}  ", a.public(), b.public());
        let trusted = TrustedKeys::parse_list(&list).unwrap();
        assert_eq!(trusted.len(), 2);
        assert!(trusted.verify("fp", &a.sign("fp")));
        assert!(trusted.verify("fp", &b.sign("fp")));
        assert!(!trusted.verify("fp", &untrusted.sign("fp")));
        assert!(!trusted.verify("other", &a.sign("fp")));
        assert!(!trusted.verify("fp", "garbage"));

        // An impostor using a trusted key's name.
        let impostor = SecretKey::generate("a").unwrap();
        assert!(!trusted.verify("fp", &impostor.sign("fp")));

        let kept = trusted.valid_signatures(
            "fp",
            [
                untrusted.sign("fp"),
                b.sign("fp"),
                impostor.sign("fp"),
                a.sign("other"),
                a.sign("fp"),
                b.sign("fp"),
            ],
        );
        assert_eq!(kept, vec![b.sign("fp"), a.sign("fp")]);
    }

    #[test]
    fn parse_list_reports_bad_entries() {
        assert!(TrustedKeys::parse_list("").unwrap().is_empty());
        let err = TrustedKeys::parse_list("a:AAAA").unwrap_err();
        assert!(matches!(err, KeyError::Malformed { .. }));
    }

    #[test]
    fn later_key_replaces_same_name() {
        let (k1, k2) = (
            SecretKey::generate("a").unwrap(),
            SecretKey::generate("a").unwrap(),
        );
        let trusted: TrustedKeys = [k1.public(), k2.public()].into_iter().collect();
        assert_eq!(trusted.len(), 1);
        assert_eq!(trusted.get("a"), Some(&k2.public()));
    }
}
