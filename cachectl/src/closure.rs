//! Closures from the local Nix database: every path a set of roots references,
//! directly or not, in an order where each path comes after all of its references
//! (the order the cache accepts uploads in, since it checks references).

use std::collections::{HashMap, HashSet};

use anyhow::{bail, Context, Result};
use nix_formats::StorePath;
use store::{LocalStore, PathInfo};

/// Path infos read from the database once per run, shared by every closure computed
/// with it (queue entries overlap heavily).
#[derive(Default)]
pub struct InfoCache {
    infos: HashMap<StorePath, PathInfo>,
}

impl InfoCache {
    /// The closure of `roots` in the local store, references first.
    pub fn closure(&mut self, store: &LocalStore, roots: &[StorePath]) -> Result<Vec<PathInfo>> {
        let dir = store.store_dir();
        self.closure_with(roots, |path| {
            store
                .query_path(path)
                .with_context(|| format!("cannot read {}", dir.display(path)))?
                .with_context(|| {
                    format!(
                        "{} is not a valid path in the local Nix store",
                        dir.display(path)
                    )
                })
        })
    }

    fn get(
        &mut self,
        path: &StorePath,
        query: &mut impl FnMut(&StorePath) -> Result<PathInfo>,
    ) -> Result<&PathInfo> {
        if !self.infos.contains_key(path) {
            let info = query(path)?;
            self.infos.insert(path.clone(), info);
        }
        Ok(&self.infos[path])
    }

    /// The closure of `roots` with infos from `query`, references first (a post-order
    /// walk, so the result is a topological order). Self-references are ignored.
    fn closure_with(
        &mut self,
        roots: &[StorePath],
        mut query: impl FnMut(&StorePath) -> Result<PathInfo>,
    ) -> Result<Vec<PathInfo>> {
        let mut done: HashSet<StorePath> = HashSet::new();
        let mut order = Vec::new();
        for root in roots {
            if done.contains(root) {
                continue;
            }
            // Iterative depth-first walk: (path, references already pushed?).
            let mut stack = vec![(root.clone(), false)];
            while let Some((path, expanded)) = stack.pop() {
                if done.contains(&path) {
                    continue;
                }
                if expanded {
                    done.insert(path.clone());
                    order.push(self.get(&path, &mut query)?.clone());
                    continue;
                }
                stack.push((path.clone(), true));
                let refs = self.get(&path, &mut query)?.references.clone();
                // Reversed so that references are visited in their sorted order.
                for r in refs.into_iter().rev() {
                    if r != path && !done.contains(&r) {
                        stack.push((r, false));
                    }
                }
            }
        }
        Ok(order)
    }
}

/// Whether a path carries a signature by one of `key_names` (`name:base64` form).
pub fn signed_by(info: &PathInfo, key_names: &[String]) -> bool {
    info.sigs.iter().any(|sig| {
        sig.split_once(':')
            .is_some_and(|(name, _)| key_names.iter().any(|k| k == name))
    })
}

/// Parses a command-line or queue path: a full store path (`<store dir>/<hash>-<name>`,
/// possibly with a trailing slash or a subpath such as `…/bin/hello`, as `./result`
/// links resolve) or a symlink to one.
pub fn parse_root(store: &LocalStore, arg: &str) -> Result<StorePath> {
    let dir = store.store_dir().as_str();
    let resolved;
    let mut s = arg;
    if !s.starts_with(&format!("{dir}/")) {
        // `./result` and other symlinks into the store.
        resolved = std::fs::canonicalize(arg)
            .ok()
            .and_then(|p| p.to_str().map(str::to_string));
        match &resolved {
            Some(r) if r.starts_with(&format!("{dir}/")) => s = r,
            _ => bail!("{arg} is not a path in the Nix store {dir}"),
        }
    }
    let rest = &s[dir.len() + 1..];
    let base = rest.split('/').next().unwrap_or_default();
    StorePath::from_base_name(base).with_context(|| format!("{arg} is not a valid store path"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix_formats::Hash;

    fn sp(i: u8) -> StorePath {
        StorePath::new([i; 20], &format!("p{i}")).unwrap()
    }

    fn info(i: u8, refs: &[u8], sigs: &[&str]) -> PathInfo {
        PathInfo {
            path: sp(i),
            nar_hash: Hash::sha256([i; 32]),
            nar_size: 100,
            references: refs.iter().map(|&r| sp(r)).collect(),
            deriver: None,
            sigs: sigs.iter().map(|s| s.to_string()).collect(),
            ca: None,
            registration_time: 0,
        }
    }

    #[test]
    fn closure_is_topological_and_deduplicated() {
        // 1 -> {2, 3}, 2 -> {4, 2 (self)}, 3 -> {4}, 5 -> {3}
        let db: HashMap<StorePath, PathInfo> = [
            info(1, &[2, 3], &[]),
            info(2, &[2, 4], &[]),
            info(3, &[4], &[]),
            info(4, &[], &[]),
            info(5, &[3], &[]),
        ]
        .into_iter()
        .map(|i| (i.path.clone(), i))
        .collect();
        let mut queries = 0;
        let mut cache = InfoCache::default();
        let order = cache
            .closure_with(&[sp(1), sp(5), sp(1)], |p| {
                queries += 1;
                Ok(db[p].clone())
            })
            .unwrap();
        let names: Vec<_> = order.iter().map(|i| i.path.name().to_string()).collect();
        assert_eq!(names, ["p4", "p2", "p3", "p1", "p5"]);
        assert_eq!(queries, 5, "each path is read once");
        for (at, i) in order.iter().enumerate() {
            for r in &i.references {
                if *r != i.path {
                    assert!(order[..at].iter().any(|x| x.path == *r));
                }
            }
        }
    }

    #[test]
    fn unknown_path_is_an_error() {
        let mut cache = InfoCache::default();
        let err = cache
            .closure_with(&[sp(1)], |_| bail!("not valid"))
            .unwrap_err();
        assert!(err.to_string().contains("not valid"));
    }

    #[test]
    fn signatures_by_key_name() {
        let i = info(1, &[], &["cache.nixos.org-1:abc=", "other-1:def="]);
        assert!(signed_by(&i, &["cache.nixos.org-1".into()]));
        assert!(signed_by(&i, &["x".into(), "other-1".into()]));
        assert!(!signed_by(&i, &["cache.nixos.org".into()]));
        assert!(!signed_by(&info(2, &[], &[]), &["other-1".into()]));
    }
}
