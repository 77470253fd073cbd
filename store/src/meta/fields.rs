//! serde for the nix-formats types inside records, in their text forms: hashes as
//! `sha256:<nix32>`, store paths as base names (`<hash>-<name>`), token secret hashes
//! as hex. Used with `#[serde(with = "...")]`; parsing borrows the input text, so
//! decoding a record allocates nothing beyond the record itself.

use std::fmt;

use nix_formats::{Hash, StorePath};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

struct HashVisitor;

impl Visitor<'_> for HashVisitor {
    type Value = Hash;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a hash as algo:digest")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Hash, E> {
        v.parse().map_err(E::custom)
    }
}

struct PathVisitor;

impl Visitor<'_> for PathVisitor {
    type Value = StorePath;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a store path base name")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<StorePath, E> {
        StorePath::from_base_name(v).map_err(E::custom)
    }
}

/// A store path serialised as its base name.
struct PathRef<'a>(&'a StorePath);

impl Serialize for PathRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self.0)
    }
}

/// A store path deserialised from its base name.
struct PathOwned(StorePath);

impl<'de> Deserialize<'de> for PathOwned {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(PathVisitor).map(PathOwned)
    }
}

pub mod hash {
    use super::*;

    pub fn serialize<S: Serializer>(h: &Hash, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(h)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Hash, D::Error> {
        d.deserialize_str(HashVisitor)
    }
}

pub mod store_path {
    use super::*;

    pub fn serialize<S: Serializer>(p: &StorePath, s: S) -> Result<S::Ok, S::Error> {
        PathRef(p).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<StorePath, D::Error> {
        d.deserialize_str(PathVisitor)
    }
}

pub mod opt_store_path {
    use super::*;

    pub fn serialize<S: Serializer>(p: &Option<StorePath>, s: S) -> Result<S::Ok, S::Error> {
        p.as_ref().map(PathRef).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<StorePath>, D::Error> {
        Ok(Option::<PathOwned>::deserialize(d)?.map(|p| p.0))
    }
}

pub mod store_paths {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[StorePath], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(PathRef))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<StorePath>, D::Error> {
        struct Paths;
        impl<'de> Visitor<'de> for Paths {
            type Value = Vec<StorePath>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of store path base names")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                // The hint comes from the input; do not let it size the allocation alone.
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(PathOwned(p)) = seq.next_element()? {
                    out.push(p);
                }
                Ok(out)
            }
        }
        d.deserialize_seq(Paths)
    }
}

pub mod hex32 {
    use super::*;

    pub fn serialize<S: Serializer>(h: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(h))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        struct Hex32;
        impl Visitor<'_> for Hex32 {
            type Value = [u8; 32];
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("32 bytes in hex")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<[u8; 32], E> {
                let mut out = [0u8; 32];
                hex::decode_to_slice(v, &mut out).map_err(E::custom)?;
                Ok(out)
            }
        }
        d.deserialize_str(Hex32)
    }
}
