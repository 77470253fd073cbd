//! Rendered, signed narinfos, kept while the databases they came from are unchanged.
//! A hit then costs a map lookup instead of a redb read, a SQLite query, a render and
//! a signature-cache lookup. Entries carry the generations of both databases they were
//! made under ([`cluster::ClusterState::generation`], [`store::LocalStore::generation`]);
//! one made under other generations is never served, so an upload, or a path Nix
//! deletes or signs, is reflected by the very next request.

use bytes::Bytes;
use lru::LruCache;
use parking_lot::Mutex;

pub struct NarinfoCache {
    entries: Option<Mutex<LruCache<[u8; 32], Entry>>>,
}

/// The (cache store, local store) generations an entry was made under.
pub type Generation = (u64, u64);

struct Entry {
    generation: Generation,
    body: Bytes,
}

impl NarinfoCache {
    /// A cache of at most `capacity` narinfos; 0 turns it off.
    pub fn new(capacity: usize) -> Self {
        NarinfoCache {
            entries: std::num::NonZeroUsize::new(capacity).map(|c| Mutex::new(LruCache::new(c))),
        }
    }

    /// The narinfo of `hash_part` if it was rendered under `generation`.
    pub fn get(&self, hash_part: &str, generation: Generation) -> Option<Bytes> {
        let key = key(hash_part)?;
        let mut entries = self.entries.as_ref()?.lock();
        match entries.get(&key) {
            Some(e) if e.generation == generation => Some(e.body.clone()),
            Some(_) => {
                entries.pop(&key);
                None
            }
            None => None,
        }
    }

    pub fn insert(&self, hash_part: &str, generation: Generation, body: Bytes) {
        if let (Some(key), Some(entries)) = (key(hash_part), self.entries.as_ref()) {
            entries.lock().put(key, Entry { generation, body });
        }
    }
}

fn key(hash_part: &str) -> Option<[u8; 32]> {
    hash_part.as_bytes().try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "0mhxs8i8rz8bvwxzmhygw2j8qp4asgc0";

    #[test]
    fn served_only_under_the_generation_it_was_made_in() {
        let c = NarinfoCache::new(4);
        c.insert(H, (1, 7), Bytes::from_static(b"StorePath: x\n"));
        assert_eq!(c.get(H, (1, 7)).as_deref(), Some(&b"StorePath: x\n"[..]));
        assert!(c.get(H, (1, 8)).is_none());
        assert!(c.get(H, (1, 7)).is_none(), "a stale entry is dropped");
        c.insert(H, (1, 7), Bytes::from_static(b"StorePath: x\n"));
        assert!(c.get(H, (2, 7)).is_none());
    }

    #[test]
    fn bounded_and_can_be_off() {
        let c = NarinfoCache::new(1);
        c.insert(H, (0, 1), Bytes::from_static(b"a"));
        let other = "1mhxs8i8rz8bvwxzmhygw2j8qp4asgc0";
        c.insert(other, (0, 1), Bytes::from_static(b"b"));
        assert!(c.get(H, (0, 1)).is_none());
        let off = NarinfoCache::new(0);
        off.insert(H, (0, 1), Bytes::from_static(b"a"));
        assert!(off.get(H, (0, 1)).is_none());
    }
}
