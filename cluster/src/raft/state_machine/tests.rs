//! The state machine's rules and storage, on real redb files in temp dirs.

use std::collections::BTreeSet;

use nix_formats::{Hash, StorePath};
use openraft::entry::RaftEntry;
use openraft::storage::RaftLogStorageExt;
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::vote::RaftLeaderIdExt;
use openraft::{Membership, RaftLogReader, RaftSnapshotBuilder};
use store::blobs::Compression;
use store::meta::{BlobRecord, PathRecord, Scope, TokenRecord};

use super::*;
use crate::command::{BlobEntry, Command, GcVictim, PinRecord, Rejection, RetentionSettings};
use crate::raft::{ClusterNode, LogStore, Vote};

type LeaderId = <TypeConfig as openraft::RaftTypeConfig>::LeaderId;

fn log_id(index: u64) -> LogId {
    LogId::new(LeaderId::new_committed(1, 1), index)
}

/// Builds entries with consecutive log ids from `first`.
struct Log {
    next: u64,
}

impl Log {
    fn new() -> Self {
        Log { next: 1 }
    }
    fn cmd(&mut self, c: Command) -> Entry {
        self.next += 1;
        Entry::new_normal(log_id(self.next - 1), c)
    }
    fn membership(&mut self, voters: &[u64]) -> Entry {
        self.next += 1;
        let set: BTreeSet<u64> = voters.iter().copied().collect();
        let nodes = voters
            .iter()
            .map(|&n| {
                (
                    n,
                    ClusterNode {
                        addr: format!("10.99.0.{n}:7000"),
                    },
                )
            })
            .collect::<std::collections::BTreeMap<_, _>>();
        let m = Membership::new(vec![set], nodes).expect("membership");
        Entry::new_membership(log_id(self.next - 1), m)
    }
}

fn digest(n: u64, salt: u8) -> [u8; 32] {
    let mut d = [salt; 32];
    d[..8].copy_from_slice(&n.to_le_bytes());
    d
}

fn file_hash(n: u64) -> Hash {
    Hash::sha256(digest(n, 0xf1))
}

fn nar_hash(n: u64) -> Hash {
    Hash::sha256(digest(n, 0xa2))
}

fn blob(n: u64) -> BlobRecord {
    BlobRecord {
        file_hash: file_hash(n),
        file_size: 1000 + n,
        compression: Compression::Zstd,
        nar_hash: nar_hash(n),
        nar_size: 4000 + n,
        created: 1_700_000_000,
    }
}

fn store_path(n: u64) -> StorePath {
    let hash_part = nix_formats::nixbase32::encode(&digest(n, 0x33)[..20]);
    StorePath::from_base_name(&format!("{hash_part}-pkg-{n}")).expect("store path")
}

fn path(n: u64) -> PathRecord {
    PathRecord {
        store_path: store_path(n),
        url_file_hash: file_hash(n),
        nar_hash: nar_hash(n),
        nar_size: 4000 + n,
        references: vec![store_path(n), store_path(n + 1)],
        deriver: None,
        system: Some("x86_64-linux".to_string()),
        sigs: vec![format!("cache-1:sig{n}")],
        ca: None,
        registered: 1_700_000_100 + n,
    }
}

fn token(n: u64) -> TokenRecord {
    TokenRecord {
        id: format!("tok{n}"),
        name: format!("runner {n}"),
        secret_hash: digest(n, 0x7e),
        scopes: vec![Scope::Read, Scope::Push],
        expires: None,
        created: 1_700_000_000,
        revoked: false,
    }
}

fn register(n: u64, node: u64) -> Command {
    Command::RegisterHolder {
        blob: blob(n),
        node,
        at: 1_700_000_050,
    }
}

fn open(dir: &Path, rule: HolderRule) -> StateMachineStore {
    StateMachineStore::open(dir, rule).expect("open state machine")
}

fn apply(sm: &StateMachineStore, entries: &[Entry]) -> Vec<Response> {
    apply_batch(&sm.db, sm.rule, entries, true).expect("apply")
}

/// Every record of the state, as JSON lines, in table and key order.
fn dump(sm: &StateMachineStore) -> Vec<String> {
    let db = sm.db.current();
    let tx = db.begin_read().expect("read");
    let mut out = Vec::new();
    state::for_each_record(&tx, |r| {
        out.push(
            match r {
                StateRecord::Path(p) => serde_json::to_string(&p),
                StateRecord::Blob(b) => serde_json::to_string(&b),
                StateRecord::Token(t) => serde_json::to_string(&t),
                StateRecord::Pin(p) => serde_json::to_string(&p),
                StateRecord::Retention(s) => serde_json::to_string(&s),
                StateRecord::Access { hash_part, at } => serde_json::to_string(&(hash_part, at)),
            }
            .expect("json"),
        );
        Ok(())
    })
    .expect("dump");
    out
}

#[test]
fn holder_rule_counts() {
    let r = HolderRule::UpToVoters(2);
    assert_eq!(r.required(0), 1, "no membership yet still needs one holder");
    assert_eq!(r.required(1), 1, "single node");
    assert_eq!(r.required(2), 2);
    assert_eq!(r.required(3), 2);
    assert_eq!(HolderRule::Exactly(3).required(1), 3);
    assert_eq!(HolderRule::Exactly(0).required(5), 1);
}

#[test]
fn a_path_needs_two_holders_in_a_three_node_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let sm = open(dir.path(), HolderRule::default());
    let state = sm.state();
    let mut log = Log::new();
    let m = log.membership(&[1, 2, 3]);
    let unknown = log.cmd(Command::PutPath {
        path: path(1),
        requires: vec![],
    });
    let reg1 = log.cmd(register(1, 1));
    let early = log.cmd(Command::PutPath {
        path: path(1),
        requires: vec![],
    });
    let out = apply(&sm, &[m, unknown, reg1, early]);
    assert_eq!(
        out[1],
        Err(Rejection::UnknownBlob {
            file_hash: file_hash(1).to_string()
        })
    );
    assert_eq!(out[2], Ok(Applied::HolderRegistered { holders: 1 }));
    assert_eq!(
        out[3],
        Err(Rejection::TooFewHolders {
            file_hash: file_hash(1).to_string(),
            holders: 1,
            required: 2
        })
    );
    let hp = store_path(1).hash_part();
    assert_eq!(
        state.path(&hp).unwrap(),
        None,
        "a rejected path stays invisible"
    );

    let reg2 = log.cmd(register(1, 2));
    let mut wrong = path(1);
    wrong.nar_size += 1;
    let mismatch = log.cmd(Command::PutPath {
        path: wrong,
        requires: vec![],
    });
    let ok = log.cmd(Command::PutPath {
        path: path(1),
        requires: vec![],
    });
    let out = apply(&sm, &[reg2, mismatch, ok]);
    assert_eq!(out[0], Ok(Applied::HolderRegistered { holders: 2 }));
    assert_eq!(
        out[1],
        Err(Rejection::NarMismatch {
            file_hash: file_hash(1).to_string()
        })
    );
    assert_eq!(out[2], Ok(Applied::PathStored { replaced: false }));
    assert_eq!(state.path(&hp).unwrap(), Some(path(1)));
    let b = state.blob(&file_hash(1)).unwrap().expect("blob entry");
    assert_eq!(b.refcount, 1);
    assert_eq!(state.holders(&file_hash(1)).unwrap(), vec![1, 2]);
    assert_eq!(state.applied_index().unwrap(), Some(log.next - 1));
}

/// An upload in one entry: holders, then the path against them; a path the holders
/// cannot carry is refused while the registrations stay; the entry applied twice
/// changes nothing more.
#[test]
fn an_upload_commits_holders_and_path_in_one_entry() {
    let dir = tempfile::tempdir().unwrap();
    let sm = open(dir.path(), HolderRule::default());
    let state = sm.state();
    let mut log = Log::new();
    let m = log.membership(&[1, 2, 3]);
    let upload = |n: u64, holders: Vec<u64>, path: Option<PathRecord>| Command::CommitUpload {
        blob: blob(n),
        holders,
        at: 1_700_000_100,
        path,
        requires: vec![],
    };
    let short = log.cmd(upload(1, vec![1], Some(path(1))));
    let whole = log.cmd(upload(2, vec![1, 3], Some(path(2))));
    let again = log.cmd(upload(2, vec![1, 3], Some(path(2))));
    let late = log.cmd(upload(2, vec![2], None));
    let out = apply(&sm, &[m, short, whole, again, late]);
    assert_eq!(
        out[1],
        Err(Rejection::TooFewHolders {
            file_hash: file_hash(1).to_string(),
            holders: 1,
            required: 2
        })
    );
    assert_eq!(state.holders(&file_hash(1)).unwrap(), vec![1]);
    assert_eq!(state.path(&store_path(1).hash_part()).unwrap(), None);
    assert_eq!(out[2], Ok(Applied::PathStored { replaced: false }));
    assert_eq!(out[3], Ok(Applied::PathStored { replaced: true }));
    assert_eq!(out[4], Ok(Applied::HolderRegistered { holders: 3 }));
    assert_eq!(
        state.path(&store_path(2).hash_part()).unwrap(),
        Some(path(2))
    );
    assert_eq!(state.holders(&file_hash(2)).unwrap(), vec![1, 2, 3]);
    let b = state.blob(&file_hash(2)).unwrap().expect("blob entry");
    assert_eq!(b.refcount, 1, "the same path twice counts once");
    let mut conflicting = blob(3);
    let bad = log.cmd(upload(3, vec![1], None));
    conflicting.nar_size += 1;
    let clash = log.cmd(Command::CommitUpload {
        blob: conflicting,
        holders: vec![2],
        at: 1_700_000_200,
        path: Some(path(3)),
        requires: vec![],
    });
    let out = apply(&sm, &[bad, clash]);
    assert_eq!(out[0], Ok(Applied::HolderRegistered { holders: 1 }));
    assert_eq!(
        out[1],
        Err(Rejection::BlobConflict {
            file_hash: file_hash(3).to_string()
        })
    );
    assert_eq!(state.path(&store_path(3).hash_part()).unwrap(), None);
}

#[test]
fn a_single_node_cluster_accepts_one_holder() {
    let dir = tempfile::tempdir().unwrap();
    let sm = open(dir.path(), HolderRule::default());
    let mut log = Log::new();
    let entries = [
        log.membership(&[1]),
        log.cmd(register(7, 1)),
        log.cmd(Command::PutPath {
            path: path(7),
            requires: vec![],
        }),
    ];
    let out = apply(&sm, &entries);
    assert_eq!(out[2], Ok(Applied::PathStored { replaced: false }));
}

#[test]
fn an_explicit_rule_ignores_the_membership() {
    let dir = tempfile::tempdir().unwrap();
    let sm = open(dir.path(), HolderRule::Exactly(2));
    let mut log = Log::new();
    let entries = [
        log.membership(&[1]),
        log.cmd(register(7, 1)),
        log.cmd(Command::PutPath {
            path: path(7),
            requires: vec![],
        }),
    ];
    let out = apply(&sm, &entries);
    assert!(matches!(
        out[2],
        Err(Rejection::TooFewHolders { required: 2, .. })
    ));
}

#[test]
fn a_holder_registration_must_agree_with_the_blob_record() {
    let dir = tempfile::tempdir().unwrap();
    let sm = open(dir.path(), HolderRule::default());
    let mut log = Log::new();
    let mut other = blob(3);
    other.nar_size += 1;
    let entries = [
        log.cmd(register(3, 1)),
        log.cmd(Command::RegisterHolder {
            blob: other,
            node: 2,
            at: 5,
        }),
    ];
    let out = apply(&sm, &entries);
    assert!(matches!(out[1], Err(Rejection::BlobConflict { .. })));
    assert_eq!(sm.state().holders(&file_hash(3)).unwrap(), vec![1]);
}

#[test]
fn gc_never_unregisters_a_copy_a_path_needs() {
    let dir = tempfile::tempdir().unwrap();
    let sm = open(dir.path(), HolderRule::default());
    let mut log = Log::new();
    let gc = |n: u64, node: u64| Command::UnregisterHolder {
        file_hash: file_hash(n),
        node,
        only_if_unreferenced: true,
    };
    let entries = [
        log.membership(&[1, 2, 3]),
        log.cmd(register(1, 1)),
        log.cmd(register(1, 2)),
        log.cmd(Command::PutPath {
            path: path(1),
            requires: vec![],
        }),
        log.cmd(gc(1, 2)),
        log.cmd(register(2, 1)),
        log.cmd(gc(2, 1)),
    ];
    let out = apply(&sm, &entries);
    assert!(matches!(out[4], Err(Rejection::StillReferenced { .. })));
    assert_eq!(sm.state().holders(&file_hash(1)).unwrap(), vec![1, 2]);
    // An unreferenced blob's last copy goes, and the blob with it.
    assert_eq!(
        out[6],
        Ok(Applied::HolderUnregistered {
            holders: 0,
            blob_forgotten: true
        })
    );
    assert_eq!(sm.state().blob(&file_hash(2)).unwrap(), None);
}

/// A mixed workload touching every command.
fn workload(log: &mut Log) -> Vec<Entry> {
    let mut retention = RetentionSettings {
        max_age_secs: Some(90 * 86400),
        blob_grace_secs: 3600,
        set_at: 1_700_000_000,
        ..Default::default()
    };
    let mut v = vec![log.membership(&[1, 2, 3])];
    for n in 0..5 {
        v.push(log.cmd(register(n, 1)));
        v.push(log.cmd(register(n, 2)));
        v.push(log.cmd(Command::PutPath {
            path: path(n),
            requires: vec![],
        }));
    }
    v.push(log.cmd(Command::UnregisterHolder {
        file_hash: file_hash(0),
        node: 2,
        only_if_unreferenced: false,
    }));
    v.push(log.cmd(register(9, 3)));
    v.push(log.cmd(Command::UnregisterHolder {
        file_hash: file_hash(9),
        node: 3,
        only_if_unreferenced: true,
    }));
    v.push(log.cmd(Command::PutToken { token: token(1) }));
    v.push(log.cmd(Command::PutToken { token: token(2) }));
    v.push(log.cmd(Command::RevokeToken {
        id: "tok2".to_string(),
    }));
    v.push(log.cmd(Command::Pin {
        pin: PinRecord {
            hash_part: store_path(1).hash_part(),
            reason: Some("release".to_string()),
            pinned: 1_700_000_500,
        },
    }));
    v.push(log.cmd(Command::Pin {
        pin: PinRecord {
            hash_part: store_path(2).hash_part(),
            reason: None,
            pinned: 1_700_000_500,
        },
    }));
    v.push(log.cmd(Command::Unpin {
        hash_part: store_path(2).hash_part(),
    }));
    v.push(log.cmd(Command::SetRetention {
        settings: retention.clone(),
    }));
    retention.high_watermark_bytes = Some(1 << 40);
    v.push(log.cmd(Command::SetRetention {
        settings: retention,
    }));
    v.push(log.cmd(Command::Touch {
        hash_parts: vec![store_path(3).hash_part(), store_path(77).hash_part()],
        at: 1_700_100_000,
    }));
    // Path 0 goes; path 4 stays, as path 3 names it.
    v.push(
        log.cmd(Command::DeletePaths {
            victims: [0, 4]
                .map(|n| GcVictim {
                    hash_part: store_path(n).hash_part(),
                    stamp: path(n).registered,
                })
                .to_vec(),
            at: 1_700_200_000,
        }),
    );
    v
}

/// The entries at new log indexes: `index(i)` for the i-th.
fn reindexed(entries: &[Entry], index: impl Fn(u64) -> u64) -> Vec<Entry> {
    entries
        .iter()
        .zip(0u64..)
        .map(|(e, i)| {
            let mut e = e.clone();
            e.set_log_id(log_id(index(i)));
            e
        })
        .collect()
}

#[test]
fn applying_each_command_twice_leaves_the_same_state() {
    let commands = workload(&mut Log::new());
    // Reference: each entry once, at odd indexes.
    let dir = tempfile::tempdir().unwrap();
    let sm = open(dir.path(), HolderRule::default());
    apply(&sm, &reindexed(&commands, |i| 2 * i + 1));
    let once = dump(&sm);
    assert!(once.len() > 10, "the workload leaves records: {once:?}");

    // Each entry at the same odd index, then again right after it (a retried proposal).
    let dir2 = tempfile::tempdir().unwrap();
    let sm2 = open(dir2.path(), HolderRule::default());
    let first = reindexed(&commands, |i| 2 * i + 1);
    let retry = reindexed(&commands, |i| 2 * i + 2);
    for (a, b) in first.iter().zip(&retry) {
        apply(&sm2, std::slice::from_ref(a));
        apply(&sm2, std::slice::from_ref(b));
    }
    assert_eq!(dump(&sm2), once, "a repeated command changed the state");
}

/// `dump` without blob generations (which record when an entry last changed).
fn dump_without_generations(sm: &StateMachineStore) -> Vec<String> {
    dump(sm)
        .into_iter()
        .map(|line| {
            let mut v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if let Some(o) = v.as_object_mut() {
                o.remove("generation");
            }
            v.to_string()
        })
        .collect()
}

#[test]
fn replaying_the_whole_log_leaves_the_same_records() {
    let dir = tempfile::tempdir().unwrap();
    let sm = open(dir.path(), HolderRule::default());
    let mut log = Log::new();
    let entries = workload(&mut log);
    apply(&sm, &entries);
    let once = dump_without_generations(&sm);
    let n = entries.len() as u64;
    apply(&sm, &reindexed(&entries, |i| n + 1 + i));
    assert_eq!(dump_without_generations(&sm), once);
}

#[test]
fn the_workload_means_what_it_says() {
    let dir = tempfile::tempdir().unwrap();
    let sm = open(dir.path(), HolderRule::default());
    let mut log = Log::new();
    apply(&sm, &workload(&mut log));
    let st = sm.state();
    assert_eq!(st.path_count().unwrap(), 4);
    assert_eq!(st.holders(&file_hash(0)).unwrap(), vec![1]);
    let b0 = st.blob(&file_hash(0)).unwrap().unwrap();
    assert_eq!(
        (b0.refcount, b0.unreferenced_since),
        (0, Some(1_700_200_000))
    );
    assert_eq!(
        st.last_access(&store_path(3).hash_part()).unwrap(),
        Some(1_700_100_000)
    );
    assert_eq!(st.last_access(&store_path(77).hash_part()).unwrap(), None);
    assert_eq!(
        st.blob(&file_hash(9)).unwrap(),
        None,
        "unreferenced, no holders: forgotten"
    );
    let t2 = st.token_by_secret_hash(&digest(2, 0x7e)).unwrap().unwrap();
    assert!(t2.revoked);
    assert!(
        !st.token_by_secret_hash(&digest(1, 0x7e))
            .unwrap()
            .unwrap()
            .revoked
    );
    assert!(st.pin(&store_path(1).hash_part()).unwrap().is_some());
    assert!(st.pin(&store_path(2).hash_part()).unwrap().is_none());
    assert_eq!(
        st.retention().unwrap().unwrap().high_watermark_bytes,
        Some(1 << 40)
    );
    let hp0 = store_path(0).hash_part();
    let absent = store_path(77).hash_part();
    assert_eq!(st.missing(&[&hp0, &absent]).unwrap(), vec![hp0, absent]);
}

/// Paths `ns` with their blobs held by nodes 1 and 2 of three voters.
fn put_paths(sm: &StateMachineStore, log: &mut Log, ns: &[u64]) {
    let mut v = Vec::new();
    for &n in ns {
        v.push(log.cmd(register(n, 1)));
        v.push(log.cmd(register(n, 2)));
        v.push(log.cmd(Command::PutPath {
            path: path(n),
            requires: vec![],
        }));
    }
    for r in apply(sm, &v) {
        assert!(r.is_ok(), "{r:?}");
    }
}

#[test]
fn gc_racing_uploads_pins_and_reads_keeps_what_changed_since_the_plan() {
    let dir = tempfile::tempdir().unwrap();
    let sm = open(dir.path(), HolderRule::default());
    let mut log = Log::new();
    apply(&sm, &[log.membership(&[1, 2, 3])]);
    // Path n names path n + 1: 1 → 2, 5, 7, 9 stand alone (6 and 8, 10 are absent).
    put_paths(&sm, &mut log, &[1, 2, 5, 7, 9]);
    apply(
        &sm,
        &[log.cmd(Command::SetRetention {
            settings: RetentionSettings {
                max_age_secs: Some(0),
                ..Default::default()
            },
        })],
    );
    let plan = crate::gc::plan(&sm.state().gc_input(1_800_000_000).unwrap());
    assert_eq!(plan.victims.len(), 5, "{plan:?}");

    // Between the plan and its deletion: path 5 is uploaded again, path 7 is served,
    // path 1 is pinned, and a new path 6 names path 7.
    let mut again = path(5);
    again.registered += 1000;
    let mut v = vec![
        log.cmd(Command::PutPath {
            path: again,
            requires: vec![],
        }),
        log.cmd(Command::Touch {
            hash_parts: vec![store_path(7).hash_part()],
            at: 1_800_000_001,
        }),
        log.cmd(Command::Pin {
            pin: PinRecord {
                hash_part: store_path(1).hash_part(),
                reason: None,
                pinned: 1_800_000_001,
            },
        }),
        log.cmd(register(6, 1)),
        log.cmd(register(6, 2)),
        log.cmd(Command::PutPath {
            path: path(6),
            requires: vec![],
        }),
    ];
    v.push(log.cmd(Command::DeletePaths {
        victims: plan.victims.clone(),
        at: 1_800_000_002,
    }));
    let out = apply(&sm, &v);
    assert_eq!(
        out.last().unwrap(),
        &Ok(Applied::PathsDeleted {
            deleted: 1,
            kept: 4
        })
    );
    let st = sm.state();
    for n in [1, 2, 5, 6, 7] {
        assert!(
            st.path(&store_path(n).hash_part()).unwrap().is_some(),
            "path {n}"
        );
    }
    assert!(st.path(&store_path(9).hash_part()).unwrap().is_none());
    // An upload that checked its reference 9 before the deletion is refused now; one
    // whose reference stays is taken.
    let mut p8 = path(8);
    p8.references = vec![store_path(9)];
    let mut p4 = path(4);
    p4.references = vec![store_path(5)];
    let out = apply(
        &sm,
        &[
            log.cmd(register(8, 1)),
            log.cmd(register(8, 2)),
            log.cmd(Command::PutPath {
                path: p8,
                requires: vec![store_path(9).hash_part()],
            }),
            log.cmd(register(4, 1)),
            log.cmd(register(4, 2)),
            log.cmd(Command::PutPath {
                path: p4,
                requires: vec![store_path(5).hash_part()],
            }),
        ],
    );
    assert_eq!(
        out[2],
        Err(Rejection::MissingReference {
            hash_part: store_path(9).hash_part()
        })
    );
    assert_eq!(out[5], Ok(Applied::PathStored { replaced: false }));
    let st = sm.state();
    let b9 = st.blob(&file_hash(9)).unwrap().unwrap();
    assert_eq!(b9.refcount, 0);
    assert_eq!(b9.unreferenced_since, Some(1_800_000_002));
    assert_eq!(b9.holders.len(), 2, "copies stay for the orphan sweep");

    // The orphan sweep may now unregister blob 9's copies, never blob 7's.
    let unregister = |n: u64| Command::UnregisterHolder {
        file_hash: file_hash(n),
        node: 1,
        only_if_unreferenced: true,
    };
    let out = apply(&sm, &[log.cmd(unregister(9)), log.cmd(unregister(7))]);
    assert!(out[0].is_ok());
    assert!(matches!(out[1], Err(Rejection::StillReferenced { .. })));

    // Unpinned and planned again, everything goes at once, leaves first or not.
    apply(
        &sm,
        &[log.cmd(Command::Unpin {
            hash_part: store_path(1).hash_part(),
        })],
    );
    let plan = crate::gc::plan(&sm.state().gc_input(1_900_000_000).unwrap());
    let out = apply(
        &sm,
        &[log.cmd(Command::DeletePaths {
            victims: plan.victims,
            at: 1_900_000_001,
        })],
    );
    assert_eq!(
        out[0],
        Ok(Applied::PathsDeleted {
            deleted: 6,
            kept: 0
        })
    );
    assert_eq!(sm.state().path_count().unwrap(), 0);
}

#[test]
fn a_schema_1_state_gets_its_referrer_index_on_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let sm = open(dir.path(), HolderRule::default());
        let mut log = Log::new();
        apply(&sm, &[log.membership(&[1, 2, 3])]);
        put_paths(&sm, &mut log, &[1, 2]);
    }
    // Make it look like a database written before the index existed.
    {
        let db = redb::Database::open(dir.path().join("raft-state.redb")).unwrap();
        let tx = db.begin_write().unwrap();
        tx.delete_multimap_table(state::REFERRERS).unwrap();
        tx.open_table(state::META)
            .unwrap()
            .insert("schema", serde_json::to_vec(&1u64).unwrap().as_slice())
            .unwrap();
        tx.commit().unwrap();
    }
    let sm = open(dir.path(), HolderRule::default());
    let mut log = Log { next: 100 };
    let out = apply(
        &sm,
        &[log.cmd(Command::DeletePaths {
            victims: vec![GcVictim {
                hash_part: store_path(2).hash_part(),
                stamp: path(2).registered,
            }],
            at: 1_800_000_000,
        })],
    );
    assert_eq!(
        out[0],
        Ok(Applied::PathsDeleted {
            deleted: 0,
            kept: 1
        }),
        "path 1 names path 2"
    );
}

#[test]
fn replacing_a_path_moves_the_refcount() {
    let dir = tempfile::tempdir().unwrap();
    let sm = open(dir.path(), HolderRule::default());
    let mut log = Log::new();
    let mut p = path(1);
    p.url_file_hash = file_hash(2);
    p.nar_hash = nar_hash(2);
    p.nar_size = 4002;
    let entries = [
        log.membership(&[1]),
        log.cmd(register(1, 1)),
        log.cmd(register(2, 1)),
        log.cmd(Command::PutPath {
            path: path(1),
            requires: vec![],
        }),
        log.cmd(Command::PutPath {
            path: p,
            requires: vec![],
        }),
    ];
    let out = apply(&sm, &entries);
    assert_eq!(out[4], Ok(Applied::PathStored { replaced: true }));
    let st = sm.state();
    assert_eq!(st.blob(&file_hash(1)).unwrap().unwrap().refcount, 0);
    assert_eq!(st.blob(&file_hash(2)).unwrap().unwrap().refcount, 1);
}

/// A state of a few thousand records.
fn big_state(sm: &StateMachineStore, paths: u64) -> Log {
    let mut log = Log::new();
    apply(sm, &[log.membership(&[1, 2, 3])]);
    let mut batch = Vec::new();
    for n in 0..paths {
        batch.push(log.cmd(register(n, 1)));
        batch.push(log.cmd(register(n, 2)));
        batch.push(log.cmd(Command::PutPath {
            path: path(n),
            requires: vec![],
        }));
        if n % 10 == 0 {
            batch.push(log.cmd(Command::PutToken { token: token(n) }));
            batch.push(log.cmd(Command::Pin {
                pin: PinRecord {
                    hash_part: store_path(n).hash_part(),
                    reason: None,
                    pinned: n,
                },
            }));
        }
        if batch.len() > 500 {
            apply(sm, &batch);
            batch.clear();
        }
    }
    batch.push(log.cmd(Command::SetRetention {
        settings: RetentionSettings::default(),
    }));
    apply(sm, &batch);
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_thousands_of_records_installs_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut leader = open(dir.path(), HolderRule::default());
    let mut log = big_state(&leader, 1500);
    // A chain 5000 → 5001 → … → 5009 with no pins.
    put_paths(&leader, &mut log, &(5000..5010).collect::<Vec<_>>());
    apply(
        &leader,
        &[log.cmd(Command::Touch {
            hash_parts: (0..1500)
                .step_by(7)
                .map(|n| store_path(n).hash_part())
                .collect(),
            at: 1_800_000_000,
        })],
    );
    let before = dump(&leader);
    assert!(before.len() > 3000, "{} records", before.len());

    let snap = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let (applied, membership) = leader.applied_state().await.unwrap();
    assert_eq!(snap.meta.last_log_id, applied);
    assert_eq!(snap.meta.last_membership, membership);
    assert!(snap.snapshot.len().unwrap() > 100_000);

    // Applies after the build do not leak into it.
    let mut log = Log { next: 100_000 };
    apply(
        &leader,
        &[log.cmd(Command::PutToken {
            token: token(99_999),
        })],
    );

    let dir2 = tempfile::tempdir().unwrap();
    let mut follower = open(dir2.path(), HolderRule::default());
    // Something the snapshot must replace, not merge with.
    apply(
        &follower,
        &[Log { next: 1 }.cmd(Command::PutToken {
            token: token(424_242),
        })],
    );
    let reader = follower.state();
    follower
        .install_snapshot(&snap.meta, snap.snapshot)
        .await
        .unwrap();
    assert_eq!(dump(&follower), before);
    assert_eq!(
        follower.applied_state().await.unwrap(),
        (applied, membership)
    );
    // A reader taken before the install sees the new state.
    let hp = store_path(1234).hash_part();
    assert_eq!(reader.path(&hp).unwrap(), Some(path(1234)));
    assert!(reader
        .token_by_secret_hash(&digest(424_242, 0x7e))
        .unwrap()
        .is_none());
    let cur = follower
        .get_current_snapshot()
        .await
        .unwrap()
        .expect("current");
    assert_eq!(cur.meta.last_log_id, applied);

    // The follower's state survives a restart.
    drop(follower);
    drop(reader);
    let follower = open(dir2.path(), HolderRule::default());
    assert_eq!(dump(&follower), before);

    // The referrer index came with it: the same GC entry deletes the same paths on
    // both. Of the victims, 5000 and 5001 go; 5002 stays, and so 5003 to 5009, which
    // it reaches (without the index, all nine would go).
    let victims: Vec<GcVictim> = [5000, 5001, 5003, 5004, 5005, 5006, 5007, 5008, 5009]
        .iter()
        .map(|&n| GcVictim {
            hash_part: store_path(n).hash_part(),
            stamp: path(n).registered,
        })
        .collect();
    let gc = Log { next: 200_000 }.cmd(Command::DeletePaths {
        victims,
        at: 1_900_000_000,
    });
    let on_leader = apply(&leader, std::slice::from_ref(&gc));
    let on_follower = apply(&follower, std::slice::from_ref(&gc));
    assert_eq!(on_leader, on_follower);
    assert_eq!(
        on_leader[0],
        Ok(Applied::PathsDeleted {
            deleted: 2,
            kept: 7
        })
    );
    assert_eq!(
        dump(&follower),
        dump(&leader)
            .into_iter()
            .filter(|l| !l.contains("tok99999"))
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_snapshot_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut leader = open(dir.path(), HolderRule::default());
    big_state(&leader, 50);
    let snap = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let len = snap.snapshot.len().unwrap();
    let mut file = snap.snapshot.into_file().unwrap();
    let cut = tempfile::NamedTempFile::new().unwrap();
    let mut out = cut.reopen().unwrap();
    std::io::copy(&mut std::io::Read::take(&mut file, len - 10), &mut out).unwrap();

    let dir2 = tempfile::tempdir().unwrap();
    let mut follower = open(dir2.path(), HolderRule::default());
    apply(
        &follower,
        &[Log { next: 1 }.cmd(Command::PutToken { token: token(5) })],
    );
    let before = dump(&follower);
    let err = follower
        .install_snapshot(&snap.meta, SnapshotFile::open(cut.path()).unwrap())
        .await
        .expect_err("a truncated snapshot installs");
    assert!(err.to_string().contains("snapshot"), "{err}");
    assert_eq!(dump(&follower), before);
    assert!(follower.get_current_snapshot().await.unwrap().is_none());
    let leftovers: Vec<_> = std::fs::read_dir(dir2.path().join(SNAPSHOT_DIR))
        .unwrap()
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(!dir2.path().join(INSTALL_FILE).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_and_state_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::new();
    let entries = workload(&mut log);
    let last = entries.last().unwrap().log_id;
    let vote = Vote::new_committed(1, 1);
    let expected_state;
    {
        let mut ls = LogStore::open(&dir.path().join("log")).unwrap();
        let mut sm = open(&dir.path().join("state"), HolderRule::default());
        ls.blocking_append(entries.clone()).await.unwrap();
        ls.save_vote(&vote).await.unwrap();
        ls.save_committed(Some(last)).await.unwrap();
        let items = entries.clone().into_iter().map(|e| Ok((e, None)));
        sm.apply(futures_util::stream::iter(items)).await.unwrap();
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        expected_state = dump(&sm);
    }
    let mut ls = LogStore::open(&dir.path().join("log")).unwrap();
    let mut sm = open(&dir.path().join("state"), HolderRule::default());
    let st = ls.get_log_state().await.unwrap();
    assert_eq!(st.last_log_id, Some(last));
    assert_eq!(st.last_purged_log_id, None);
    assert_eq!(ls.read_vote().await.unwrap(), Some(vote));
    assert_eq!(ls.read_committed().await.unwrap(), Some(last));
    let back = ls.try_get_log_entries(..).await.unwrap();
    assert_eq!(back, entries);
    assert_eq!(sm.applied_state().await.unwrap().0, Some(last));
    assert_eq!(dump(&sm), expected_state);
    let snap = sm
        .get_current_snapshot()
        .await
        .unwrap()
        .expect("snapshot kept");
    assert_eq!(snap.meta.last_log_id, Some(last));

    // The second open of the same files is refused while the first is alive.
    assert!(matches!(
        LogStore::open(&dir.path().join("log")),
        Err(RaftStoreError::InUse)
    ));
    assert!(matches!(
        StateMachineStore::open(&dir.path().join("state"), HolderRule::default()),
        Err(RaftStoreError::InUse)
    ));
}

#[test]
fn entries_for_blob_entries_are_json() {
    // The snapshot and the table share one encoding: a BlobEntry round-trips.
    let e = BlobEntry {
        blob: blob(1),
        holders: [(1, 5), (3, 6)].into_iter().collect(),
        refcount: 2,
        generation: 9,
        unreferenced_since: Some(7),
    };
    let text = serde_json::to_string(&e).unwrap();
    assert_eq!(serde_json::from_str::<BlobEntry>(&text).unwrap(), e);
}
