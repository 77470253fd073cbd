//! GC planning: which uploaded paths the retention settings and pins let go.
//!
//! A plan is computed from one consistent read of the state ([`GcInput`]) and is only a
//! proposal: [`Command::DeletePaths`](crate::Command::DeletePaths) re-checks every victim
//! when it is applied, so a path re-uploaded, served, pinned or newly referenced after
//! the plan was made stays.
//!
//! The rules, in order:
//! 1. **Roots** are the pinned paths and the paths the age limits keep: registered
//!    within `max_age_secs` and served (or registered) within `max_idle_secs`, each
//!    limit applying only when set.
//! 2. Everything in the closure of a root is kept (references followed through the
//!    paths the cache holds; references it does not hold are someone else's).
//! 3. When the blobs the paths name take more than `high_watermark_bytes`, the kept set
//!    is rebuilt under a size budget of `low_watermark_bytes` (the high mark when no
//!    low one is set): the closures of pins first, whatever their size, then the other
//!    roots' closures from the most recently used down, stopping at the first that does
//!    not fit.
//! 4. Every path not kept is a victim. Without any limit set nothing is.

use std::collections::{HashMap, HashSet};

use nix_formats::Hash;

use crate::command::{GcVictim, RetentionSettings};

/// One uploaded path as GC sees it.
#[derive(Debug, Clone)]
pub struct GcPath {
    pub hash_part: String,
    /// Hash parts of the other paths it names.
    pub references: Vec<String>,
    pub registered: u64,
    /// When it was last served, if recorded.
    pub last_access: Option<u64>,
    /// The blob holding its NAR and that blob's file size.
    pub file_hash: Hash,
    pub file_size: u64,
}

impl GcPath {
    /// When it was last registered or served.
    pub fn last_used(&self) -> u64 {
        self.registered.max(self.last_access.unwrap_or(0))
    }
}

/// What a plan is made from: one consistent read of the state.
#[derive(Debug, Clone, Default)]
pub struct GcInput {
    pub paths: Vec<GcPath>,
    pub pins: HashSet<String>,
    pub retention: RetentionSettings,
    /// Unix seconds the plan is made at.
    pub now: u64,
}

/// What a plan decided.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GcPlan {
    /// The paths to delete, with the stamps they were planned from.
    pub victims: Vec<GcVictim>,
    pub paths: usize,
    pub kept: usize,
    /// Bytes of the distinct blobs all paths name, and of those only victims name.
    pub bytes: u64,
    pub bytes_freed: u64,
    /// Whether the size watermark applied.
    pub over_high_watermark: bool,
}

/// Whether any rule can make a path a victim.
pub fn limits_set(r: &RetentionSettings) -> bool {
    r.max_age_secs.is_some() || r.max_idle_secs.is_some() || r.high_watermark_bytes.is_some()
}

/// Plans a GC pass; see the module docs for the rules.
pub fn plan(input: &GcInput) -> GcPlan {
    let r = &input.retention;
    let index: HashMap<&str, usize> = input
        .paths
        .iter()
        .enumerate()
        .map(|(i, p)| (p.hash_part.as_str(), i))
        .collect();
    let bytes = blob_bytes(input.paths.iter());
    let mut out = GcPlan {
        paths: input.paths.len(),
        kept: input.paths.len(),
        bytes,
        ..GcPlan::default()
    };
    if !limits_set(r) {
        return out;
    }
    let fresh = |p: &GcPath| {
        r.max_age_secs
            .is_none_or(|a| input.now.saturating_sub(p.registered) <= a)
            && r.max_idle_secs
                .is_none_or(|a| input.now.saturating_sub(p.last_used()) <= a)
    };
    let pinned: Vec<usize> = input
        .paths
        .iter()
        .enumerate()
        .filter(|(_, p)| input.pins.contains(&p.hash_part))
        .map(|(i, _)| i)
        .collect();
    let mut others: Vec<usize> = input
        .paths
        .iter()
        .enumerate()
        .filter(|(_, p)| !input.pins.contains(&p.hash_part) && fresh(p))
        .map(|(i, _)| i)
        .collect();

    let mut keep = vec![false; input.paths.len()];
    for &i in &pinned {
        close_over(input, &index, i, &mut keep);
    }
    match r.high_watermark_bytes {
        Some(high) if bytes > high => {
            out.over_high_watermark = true;
            let budget = r.low_watermark_bytes.unwrap_or(high).min(high);
            others.sort_by_key(|&i| std::cmp::Reverse(input.paths[i].last_used()));
            let mut kept_blobs: HashSet<&Hash> = HashSet::new();
            let mut kept_bytes = 0u64;
            for (p, _) in input.paths.iter().zip(&keep).filter(|(_, k)| **k) {
                if kept_blobs.insert(&p.file_hash) {
                    kept_bytes += p.file_size;
                }
            }
            for i in others {
                let added = reach_new(input, &index, i, &keep);
                let mut extra_blobs = HashSet::new();
                let extra: u64 = added
                    .iter()
                    .map(|&j| &input.paths[j])
                    .filter(|p| {
                        !kept_blobs.contains(&p.file_hash) && extra_blobs.insert(&p.file_hash)
                    })
                    .map(|p| p.file_size)
                    .sum();
                if kept_bytes + extra > budget {
                    break;
                }
                kept_bytes += extra;
                kept_blobs.extend(extra_blobs);
                for j in added {
                    keep[j] = true;
                }
            }
        }
        _ => {
            for i in others {
                close_over(input, &index, i, &mut keep);
            }
        }
    }

    let kept_blobs: HashSet<&Hash> = input
        .paths
        .iter()
        .zip(&keep)
        .filter(|(_, k)| **k)
        .map(|(p, _)| &p.file_hash)
        .collect();
    out.bytes_freed = blob_bytes(
        input
            .paths
            .iter()
            .zip(&keep)
            .filter(|(p, k)| !**k && !kept_blobs.contains(&p.file_hash))
            .map(|(p, _)| p),
    );
    out.victims = referrers_first(input, &index, &keep)
        .into_iter()
        .map(|i| {
            let p = &input.paths[i];
            GcVictim {
                hash_part: p.hash_part.clone(),
                stamp: p.last_used(),
            }
        })
        .collect();
    out.kept = out.paths - out.victims.len();
    out
}

/// The paths not kept, each before every path it names: deleted in chunks in this
/// order, no chunk holds a path back because a later chunk's path names it.
fn referrers_first(input: &GcInput, index: &HashMap<&str, usize>, keep: &[bool]) -> Vec<usize> {
    // Kahn's algorithm over the victims: a victim is ready once every victim naming
    // it is placed. Store references have no cycles (self-references are left out).
    let mut named_by = vec![0usize; input.paths.len()];
    for (i, p) in input.paths.iter().enumerate() {
        if keep[i] {
            continue;
        }
        for r in &p.references {
            if let Some(&j) = index.get(r.as_str()) {
                named_by[j] += 1;
            }
        }
    }
    let mut ready: Vec<usize> = (0..input.paths.len())
        .filter(|&i| !keep[i] && named_by[i] == 0)
        .collect();
    let mut out = Vec::new();
    while let Some(i) = ready.pop() {
        out.push(i);
        for r in &input.paths[i].references {
            if let Some(&j) = index.get(r.as_str()) {
                named_by[j] -= 1;
                if named_by[j] == 0 && !keep[j] {
                    ready.push(j);
                }
            }
        }
    }
    out
}

/// The paths `root` reaches through held references (itself included) that are not
/// kept yet.
fn reach_new(
    input: &GcInput,
    index: &HashMap<&str, usize>,
    root: usize,
    keep: &[bool],
) -> Vec<usize> {
    let mut seen = HashSet::new();
    let mut stack = vec![root];
    while let Some(i) = stack.pop() {
        if keep[i] || !seen.insert(i) {
            continue;
        }
        for r in &input.paths[i].references {
            if let Some(&j) = index.get(r.as_str()) {
                stack.push(j);
            }
        }
    }
    seen.into_iter().collect()
}

/// Marks path `root` and everything it reaches through held references.
fn close_over(input: &GcInput, index: &HashMap<&str, usize>, root: usize, keep: &mut [bool]) {
    let mut stack = vec![root];
    while let Some(i) = stack.pop() {
        if std::mem::replace(&mut keep[i], true) {
            continue;
        }
        for r in &input.paths[i].references {
            if let Some(&j) = index.get(r.as_str()) {
                if !keep[j] {
                    stack.push(j);
                }
            }
        }
    }
}

/// The bytes of the distinct blobs these paths name.
fn blob_bytes<'a>(paths: impl Iterator<Item = &'a GcPath>) -> u64 {
    let mut seen = HashSet::new();
    paths
        .filter(|p| seen.insert(&p.file_hash))
        .map(|p| p.file_size)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Path `n` registered at `registered`, naming `refs`, in a blob of `size` bytes.
    fn p(n: u8, registered: u64, refs: &[u8], size: u64) -> GcPath {
        GcPath {
            hash_part: format!("p{n}"),
            references: refs.iter().map(|r| format!("p{r}")).collect(),
            registered,
            last_access: None,
            file_hash: Hash::sha256([n; 32]),
            file_size: size,
        }
    }

    fn victims(plan: &GcPlan) -> Vec<String> {
        let mut v: Vec<String> = plan.victims.iter().map(|v| v.hash_part.clone()).collect();
        v.sort();
        v
    }

    #[test]
    fn without_limits_nothing_goes() {
        let input = GcInput {
            paths: vec![p(1, 0, &[], 10)],
            now: 1_000_000,
            ..Default::default()
        };
        let plan = plan(&input);
        assert!(plan.victims.is_empty());
        assert_eq!((plan.paths, plan.kept, plan.bytes), (1, 1, 10));
    }

    #[test]
    fn age_and_idleness_let_paths_go_but_never_what_a_root_reaches() {
        // p1 (old) names p2 (old) names p3 (old); p4 (new) names p2. p5 old, served
        // lately; p6 old and pinned names p7 (old); p8 old names p9 (not held here).
        let mut paths = vec![
            p(1, 100, &[2], 1),
            p(2, 100, &[3], 1),
            p(3, 100, &[], 1),
            p(4, 950, &[2], 1),
            p(5, 100, &[], 1),
            p(6, 100, &[7], 1),
            p(7, 100, &[], 1),
            p(8, 100, &[9], 1),
        ];
        paths[4].last_access = Some(990);
        let mut input = GcInput {
            paths,
            pins: ["p6".to_string()].into_iter().collect(),
            retention: RetentionSettings {
                max_age_secs: Some(500),
                ..Default::default()
            },
            now: 1000,
        };
        assert_eq!(victims(&plan(&input)), ["p1", "p5", "p8"]);
        // Idleness alone: p5 was served within the limit.
        input.retention = RetentionSettings {
            max_idle_secs: Some(500),
            ..Default::default()
        };
        let plan_idle = plan(&input);
        assert_eq!(victims(&plan_idle), ["p1", "p8"]);
        // Unpinned, p6 comes before p7, which it names.
        input.pins.clear();
        let unpinned = plan(&input);
        let order: Vec<&str> = unpinned
            .victims
            .iter()
            .map(|v| v.hash_part.as_str())
            .collect();
        let at = |h: &str| order.iter().position(|x| *x == h).unwrap();
        assert!(at("p6") < at("p7"), "{order:?}");
        let stamp = |h: &str| {
            plan_idle
                .victims
                .iter()
                .find(|v| v.hash_part == h)
                .unwrap()
                .stamp
        };
        assert_eq!(stamp("p1"), 100);
        assert_eq!(plan_idle.bytes_freed, 2);
    }

    #[test]
    fn over_the_high_watermark_the_most_recently_used_closures_are_kept_down_to_the_low_one() {
        // Sizes 100 each. p1 newest names p2; p3 next; p4 next; p5 pinned, oldest.
        let mut paths = vec![
            p(1, 900, &[2], 100),
            p(2, 100, &[], 100),
            p(3, 800, &[], 100),
            p(4, 700, &[], 100),
            p(5, 10, &[], 100),
        ];
        paths[3].last_access = Some(950); // p4 served lately: used more recently than p3
        let mut input = GcInput {
            paths,
            pins: ["p5".to_string()].into_iter().collect(),
            retention: RetentionSettings {
                high_watermark_bytes: Some(450),
                low_watermark_bytes: Some(300),
                ..Default::default()
            },
            now: 1000,
        };
        let out = plan(&input);
        assert!(out.over_high_watermark);
        // Budget 300: p5 (pinned, 100), then p4 (100), then p1 with p2 (200) does not fit.
        assert_eq!(victims(&out), ["p1", "p2", "p3"]);
        assert_eq!(out.bytes_freed, 300);
        // Under the high mark nothing goes: no age limit is set.
        input.retention.high_watermark_bytes = Some(500);
        assert!(plan(&input).victims.is_empty());
    }

    #[test]
    fn paths_sharing_a_blob_count_it_once() {
        let mut a = p(1, 0, &[], 100);
        let mut b = p(2, 0, &[], 100);
        b.file_hash = a.file_hash.clone();
        a.registered = 10;
        let input = GcInput {
            paths: vec![a, b],
            retention: RetentionSettings {
                max_age_secs: Some(5),
                ..Default::default()
            },
            now: 12,
            ..Default::default()
        };
        let out = plan(&input);
        assert_eq!(out.bytes, 100);
        assert_eq!(victims(&out), ["p2"]);
        assert_eq!(out.bytes_freed, 0, "p1 still names the blob");
    }
}
