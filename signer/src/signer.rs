//! Signing with every configured key at once, behind a bounded cache of signatures.
//!
//! Signing on the fly with all keys is how keys rotate without re-signing anything: add
//! the new key, let clients learn it, drop the old one. The cache exists because the same
//! hot narinfos are asked for over and over, and an ed25519 signature costs far more than
//! a hash map lookup.

use std::collections::HashSet;
use std::fmt;
use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use lru::LruCache;
use parking_lot::Mutex;

use crate::{KeyError, PublicKey, SecretKey};

/// Monotonic counters for metrics. Read them with `Ordering::Relaxed`; nothing else is
/// ordered by them.
#[derive(Debug, Default)]
pub struct SignerCounters {
    /// ed25519 signatures computed (one per key per cache miss).
    pub signatures_made: AtomicU64,
    /// `sign` calls answered from the cache.
    pub cache_hits: AtomicU64,
    /// `sign` calls that had to sign (including every call when the cache is disabled).
    pub cache_misses: AtomicU64,
}

/// Several secret keys, used together, plus the signature cache.
pub struct Signer {
    keys: Vec<SecretKey>,
    /// `None` when the capacity is 0.
    cache: Option<Mutex<LruCache<String, Vec<String>>>>,
    counters: SignerCounters,
}

impl Signer {
    /// A signer with `keys` in the order their signatures are to appear, caching the
    /// signatures of up to `cache_capacity` fingerprints (0 disables the cache). No keys
    /// is allowed: such a signer signs nothing. Two keys with one name are refused.
    pub fn new(keys: Vec<SecretKey>, cache_capacity: usize) -> Result<Self, KeyError> {
        let mut names = HashSet::new();
        for key in &keys {
            if !names.insert(key.name()) {
                return Err(KeyError::DuplicateName {
                    name: key.name().to_string(),
                });
            }
        }
        Ok(Signer {
            keys,
            cache: NonZeroUsize::new(cache_capacity).map(|n| Mutex::new(LruCache::new(n))),
            counters: SignerCounters::default(),
        })
    }

    /// Loads each secret key file in order (see [`SecretKey::load`]).
    pub fn load<P: AsRef<Path>>(paths: &[P], cache_capacity: usize) -> Result<Self, KeyError> {
        let keys = paths
            .iter()
            .map(SecretKey::load)
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(keys, cache_capacity)
    }

    /// One signature line (`name:base64`) per key, in key order.
    pub fn sign(&self, fingerprint: &str) -> Vec<String> {
        if self.keys.is_empty() {
            return Vec::new();
        }
        if let Some(cache) = &self.cache {
            if let Some(sigs) = cache.lock().get(fingerprint) {
                self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
                return sigs.clone();
            }
        }
        self.counters.cache_misses.fetch_add(1, Ordering::Relaxed);
        // Sign outside the lock. Two threads missing on the same fingerprint both sign;
        // ed25519 is deterministic, so they store the same lines.
        let sigs: Vec<String> = self.keys.iter().map(|k| k.sign(fingerprint)).collect();
        self.counters
            .signatures_made
            .fetch_add(sigs.len() as u64, Ordering::Relaxed);
        if let Some(cache) = &self.cache {
            cache.lock().put(fingerprint.to_string(), sigs.clone());
        }
        sigs
    }

    pub fn keys(&self) -> &[SecretKey] {
        &self.keys
    }

    /// The public halves, in key order (for `trusted-public-keys`, status pages).
    pub fn public_keys(&self) -> Vec<PublicKey> {
        self.keys.iter().map(SecretKey::public).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn counters(&self) -> &SignerCounters {
        &self.counters
    }

    /// Fingerprints currently cached.
    pub fn cached(&self) -> usize {
        self.cache.as_ref().map_or(0, |c| c.lock().len())
    }
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("keys", &self.keys)
            .field(
                "cache_capacity",
                &self.cache.as_ref().map_or(0, |c| c.lock().cap().get()),
            )
            .field("counters", &self.counters)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> SecretKey {
        SecretKey::generate(name).unwrap()
    }

    fn count(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    #[test]
    fn rotation_signs_with_every_key_in_order() {
        let (new, old) = (key("cache-2"), key("cache-1"));
        let signer = Signer::new(vec![new.clone(), old.clone()], 16).unwrap();
        let sigs = signer.sign("fp");
        assert_eq!(sigs.len(), 2);
        assert!(sigs[0].starts_with("cache-2:") && sigs[1].starts_with("cache-1:"));
        assert!(new.public().verify("fp", &sigs[0]));
        assert!(old.public().verify("fp", &sigs[1]));
        assert_eq!(sigs, vec![new.sign("fp"), old.sign("fp")]);
        assert_eq!(signer.public_keys(), vec![new.public(), old.public()]);
    }

    #[test]
    fn cache_hits_are_counted() {
        let signer = Signer::new(vec![key("a"), key("b")], 16).unwrap();
        let c = signer.counters();
        let first = signer.sign("fp1");
        assert_eq!((count(&c.cache_hits), count(&c.cache_misses)), (0, 1));
        assert_eq!(count(&c.signatures_made), 2);

        assert_eq!(signer.sign("fp1"), first);
        assert_eq!(signer.sign("fp1"), first);
        assert_eq!((count(&c.cache_hits), count(&c.cache_misses)), (2, 1));
        assert_eq!(count(&c.signatures_made), 2);

        signer.sign("fp2");
        assert_eq!((count(&c.cache_hits), count(&c.cache_misses)), (2, 2));
        assert_eq!(count(&c.signatures_made), 4);
        assert_eq!(signer.cached(), 2);
    }

    #[test]
    fn cache_is_bounded_lru() {
        let signer = Signer::new(vec![key("a")], 2).unwrap();
        signer.sign("1");
        signer.sign("2");
        signer.sign("1"); // hit; "2" is now least recently used
        signer.sign("3"); // evicts "2"
        assert_eq!(signer.cached(), 2);
        signer.sign("1");
        assert_eq!(count(&signer.counters().cache_hits), 2);
        signer.sign("2");
        assert_eq!(count(&signer.counters().cache_misses), 4);
    }

    #[test]
    fn zero_capacity_disables_the_cache() {
        let signer = Signer::new(vec![key("a")], 0).unwrap();
        let a = signer.sign("fp");
        assert_eq!(signer.sign("fp"), a);
        assert_eq!(count(&signer.counters().cache_hits), 0);
        assert_eq!(count(&signer.counters().signatures_made), 2);
        assert_eq!(signer.cached(), 0);
    }

    #[test]
    fn no_keys_signs_nothing() {
        let signer = Signer::new(vec![], 16).unwrap();
        assert!(signer.is_empty());
        assert!(signer.sign("fp").is_empty());
        assert_eq!(count(&signer.counters().signatures_made), 0);
    }

    #[test]
    fn duplicate_names_are_refused() {
        let err = Signer::new(vec![key("a"), key("b"), key("a")], 1).unwrap_err();
        assert!(
            matches!(&err, KeyError::DuplicateName { name } if name == "a"),
            "{err:?}"
        );
    }

    #[test]
    fn debug_redacts() {
        let k = key("a");
        let secret = k.to_file_text();
        let shown = format!("{:?}", Signer::new(vec![k], 4).unwrap());
        assert!(
            !shown.contains(secret.split_once(':').unwrap().1),
            "{shown}"
        );
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn load_reads_files_in_order() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mut paths = Vec::new();
        for name in ["n2", "n1"] {
            let path = dir.path().join(name);
            std::fs::write(&path, key(name).to_file_text()).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            paths.push(path);
        }
        let signer = Signer::load(&paths, 4).unwrap();
        let names: Vec<_> = signer.keys().iter().map(SecretKey::name).collect();
        assert_eq!(names, ["n2", "n1"]);
    }
}
