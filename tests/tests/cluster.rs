//! The three-node cluster with real processes: each node a `cairnd` in its own network
//! namespace (as root), partitions made with nftables. Every scenario ends by checking
//! the design's invariants that show from outside (`check_invariants`). Clusters run
//! one at a time: two cores cannot hold several elections to time.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use cairn_tests::cluster::{check_invariants, http_get, Options, TestCluster, PUSH};
use cairn_tests::wait_for;
use testkit::Nix;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn hash_part(path: &str) -> &str {
    &path.rsplit('/').next().unwrap()[..32]
}

fn narinfo_status(c: &TestCluster, id: u64, path: &str) -> u16 {
    http_get(&format!("{}/{}.narinfo", c.url(id), hash_part(path)))
        .map(|(s, _)| s)
        .unwrap_or(0)
}

/// `cachectl status` against node `id`: its exit code and report.
fn status(c: &TestCluster, id: u64) -> (i32, String) {
    let out = c.cachectl(id, &["status"]);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// A NAR PUT straight to node `id` (no Nix retry logic): its status.
fn put_nar(c: &TestCluster, id: u64, nar: &[u8]) -> u16 {
    let fh = nix_formats::Hash::sha256_of(nar).to_nix32();
    let rt = cairn_tests::rt();
    rt.block_on(async {
        cairn_tests::http_client()
            .put(format!("{}/nar/{fh}.nar", c.url(id)))
            .bearer_auth(PUSH)
            .timeout(Duration::from_secs(60))
            .body(nar.to_vec())
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    })
}

fn followers(c: &TestCluster, leader: u64) -> Vec<u64> {
    c.ids().into_iter().filter(|&i| i != leader).collect()
}

#[test]
fn upload_through_one_node_and_substitute_from_another() {
    let _g = serial();
    let nix = Nix::new();
    let paths = nix.build_fixtures(&testkit::salt(), 4);
    let c = TestCluster::start(Options::default());
    let (code, report) = status(&c, 3);
    assert_eq!(code, 0, "a fresh cluster is healthy:\n{report}");
    assert!(report.contains("voters 3"), "{report}");

    let out = c.nix_copy(&nix, 2, &paths);
    assert!(
        out.status.success(),
        "nix copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // At once, from another node: misses are confirmed with the leader, so node 3
    // never answers 404 for what node 2 acknowledged.
    check_invariants(&c, &[3, 1, 2], &paths);
    let (_, info) = cairn_tests::substitute(&c.url(3), &c.key.public, paths.last().unwrap());
    assert_eq!(
        info.as_array().map(|a| a.len()),
        Some(paths.len()),
        "{info}"
    );

    // Node 1 alone: an upload there, read from node 3 straight after.
    let more = nix.build_fixtures(&testkit::salt(), 1);
    let out = c.nix_copy(&nix, 1, &more);
    assert!(
        out.status.success(),
        "nix copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(narinfo_status(&c, 3, &more[0]), 200);

    // Every blob reaches three copies; the report says healthy again.
    wait_for(
        Duration::from_secs(30),
        "three copies of every blob",
        || {
            c.ids()
                .iter()
                .all(|&id| c.blob_files(id).len() == paths.len() + 1)
        },
    );
    wait_for(Duration::from_secs(10), "a healthy status", || {
        status(&c, 2).0 == 0
    });
    let (_, json) = {
        let out = c.cachectl(1, &["status", "--json"]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let v: serde_json::Value = serde_json::from_str(&json).expect("status --json");
    assert_eq!(v["paths"], (paths.len() + 1) as u64, "{v}");
    assert_eq!(v["under_replicated_blobs"], 0, "{v}");
    assert_eq!(v["nodes"].as_array().unwrap().len(), 3, "{v}");
}

#[test]
fn leader_killed_during_uploads_loses_nothing() {
    let _g = serial();
    let nix = Nix::new();
    let paths = nix.build_fixtures(&testkit::salt(), 10);
    let mut c = TestCluster::start(Options::default());
    let leader = c.wait_leader(&c.ids(), Duration::from_secs(10));
    let target = followers(&c, leader)[0];
    let mut acked = Vec::new();
    let mut killed_at = None;
    let mut first_after_kill = None;
    for (i, p) in paths.iter().enumerate() {
        if i == 3 {
            c.kill(leader);
            killed_at = Some(Instant::now());
        }
        let out = c.nix_copy(&nix, target, std::slice::from_ref(p));
        if out.status.success() {
            acked.push(p.clone());
            if let (Some(t), None) = (killed_at, first_after_kill) {
                first_after_kill = Some(t.elapsed());
            }
        }
    }
    let failover = first_after_kill.expect("an upload succeeded after the kill");
    assert!(
        failover <= Duration::from_secs(5),
        "writes resumed after {failover:?}"
    );
    assert_eq!(acked.len(), paths.len(), "every upload was acknowledged");
    let survivors = followers(&c, leader);
    check_invariants(&c, &survivors, &acked);

    // The old leader comes back as a follower and catches up.
    c.restart(leader);
    c.wait_leader(&c.ids(), Duration::from_secs(20));
    wait_for(
        Duration::from_secs(20),
        "the restarted node to catch up",
        || acked.iter().all(|p| narinfo_status(&c, leader, p) == 200),
    );
    check_invariants(&c, &c.ids(), &acked);
}

#[test]
fn follower_killed_writes_continue_and_third_copy_follows() {
    let _g = serial();
    let nix = Nix::new();
    let paths = nix.build_fixtures(&testkit::salt(), 3);
    let mut c = TestCluster::start(Options::default());
    let leader = c.wait_leader(&c.ids(), Duration::from_secs(10));
    let down = followers(&c, leader)[1];
    c.kill(down);
    let out = c.nix_copy(&nix, leader, &paths);
    assert!(
        out.status.success(),
        "nix copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_invariants(&c, &followers(&c, down), &paths);
    let (code, report) = status(&c, leader);
    assert_eq!(code, 1, "one node down is degraded:\n{report}");
    assert!(c.blob_files(down).is_empty());
    c.restart(down);
    wait_for(
        Duration::from_secs(30),
        "the third copy of every blob",
        || c.blob_files(down).len() == paths.len(),
    );
    wait_for(Duration::from_secs(10), "a healthy status", || {
        status(&c, leader).0 == 0
    });
    check_invariants(&c, &c.ids(), &paths);
}

#[test]
fn two_nodes_down_reads_go_on_and_writes_are_refused_cleanly() {
    let _g = serial();
    let nix = Nix::new();
    let paths = nix.build_fixtures(&testkit::salt(), 2);
    let mut c = TestCluster::start(Options::default());
    let out = c.nix_copy(&nix, 1, &paths);
    assert!(
        out.status.success(),
        "nix copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(Duration::from_secs(30), "three copies", || {
        c.ids()
            .iter()
            .all(|&id| c.blob_files(id).len() == paths.len())
    });
    c.kill(2);
    c.kill(3);
    // Reads of committed paths go on.
    check_invariants(&c, &[1], &paths);
    // A write is refused with 503, and nothing of it becomes visible.
    let refused = {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, testkit::salt()).unwrap();
        let out = std::process::Command::new("nix-store")
            .args(["--dump", f.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success());
        out.stdout
    };
    assert_eq!(put_nar(&c, 1, &refused), 503);
    let (code, report) = status(&c, 1);
    assert_eq!(code, 2, "no leader is unavailable:\n{report}");
    c.restart(2);
    c.restart(3);
    c.wait_leader(&c.ids(), Duration::from_secs(20));
    let fh = nix_formats::Hash::sha256_of(&refused).to_nix32();
    for id in c.ids() {
        let (s, _) = http_get(&format!("{}/nar/{fh}.nar", c.url(id))).unwrap();
        assert_eq!(s, 404, "node {id} serves a NAR whose upload was refused");
    }
    check_invariants(&c, &c.ids(), &paths);
}

#[test]
fn partition_with_the_leader_in_the_minority() {
    let _g = serial();
    let nix = Nix::new();
    let paths = nix.build_fixtures(&testkit::salt(), 2);
    let c = TestCluster::start(Options::default());
    if !c.can_partition() {
        eprintln!("skipped: partitions need root, ip netns and nft");
        return;
    }
    let out = c.nix_copy(&nix, 1, &paths[..1]);
    assert!(out.status.success());
    let old = c.wait_leader(&c.ids(), Duration::from_secs(10));
    let majority = followers(&c, old);
    c.partition(&[&[old], &majority]);
    let new = c.wait_leader(&majority, Duration::from_secs(15));
    assert_ne!(new, old);
    // The majority takes writes; the minority still serves what it has.
    let out = c.nix_copy(&nix, majority[1], &paths[1..]);
    assert!(
        out.status.success(),
        "nix copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(narinfo_status(&c, old, &paths[0]), 200);
    check_invariants(&c, &majority, &paths);
    c.heal();
    wait_for(
        Duration::from_secs(20),
        "the old leader to catch up",
        || narinfo_status(&c, old, &paths[1]) == 200,
    );
    assert_eq!(c.wait_leader(&c.ids(), Duration::from_secs(20)), new);
    check_invariants(&c, &c.ids(), &paths);
}

#[test]
fn partition_with_the_leader_in_the_majority() {
    let _g = serial();
    let nix = Nix::new();
    let paths = nix.build_fixtures(&testkit::salt(), 2);
    let c = TestCluster::start(Options::default());
    if !c.can_partition() {
        eprintln!("skipped: partitions need root, ip netns and nft");
        return;
    }
    let leader = c.wait_leader(&c.ids(), Duration::from_secs(10));
    let cut = followers(&c, leader)[0];
    let rest: Vec<u64> = c.ids().into_iter().filter(|&i| i != cut).collect();
    c.partition(&[&[cut], &rest]);
    let out = c.nix_copy(&nix, leader, &paths);
    assert!(
        out.status.success(),
        "nix copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_invariants(&c, &rest, &paths);
    // Cut off, the follower cannot confirm misses; it answers 404, never 5xx.
    assert_eq!(narinfo_status(&c, cut, &paths[0]), 404);
    c.heal();
    wait_for(Duration::from_secs(30), "the cut node to catch up", || {
        paths.iter().all(|p| narinfo_status(&c, cut, p) == 200)
    });
    assert_eq!(c.leader_among(&c.ids()), Some(leader));
    check_invariants(&c, &c.ids(), &paths);
}

#[test]
fn leader_paused_with_sigstop() {
    let _g = serial();
    let nix = Nix::new();
    let paths = nix.build_fixtures(&testkit::salt(), 2);
    let c = TestCluster::start(Options::default());
    let old = c.wait_leader(&c.ids(), Duration::from_secs(10));
    c.signal(old, "STOP");
    let others = followers(&c, old);
    let new = c.wait_leader(&others, Duration::from_secs(15));
    let out = c.nix_copy(&nix, new, &paths);
    assert!(
        out.status.success(),
        "nix copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_invariants(&c, &others, &paths);
    c.signal(old, "CONT");
    wait_for(
        Duration::from_secs(20),
        "the paused node to catch up",
        || paths.iter().all(|p| narinfo_status(&c, old, p) == 200),
    );
    assert_eq!(c.wait_leader(&c.ids(), Duration::from_secs(20)), new);
    check_invariants(&c, &c.ids(), &paths);
}

#[test]
fn far_behind_node_catches_up_through_a_snapshot() {
    let _g = serial();
    let nix = Nix::new();
    let paths = nix.build_fixtures(&testkit::salt(), 12);
    let mut c = TestCluster::start(Options {
        snapshot_logs: 10,
        ..Options::default()
    });
    let leader = c.wait_leader(&c.ids(), Duration::from_secs(10));
    let behind = followers(&c, leader)[0];
    c.kill(behind);
    for p in &paths {
        let out = c.nix_copy(&nix, leader, std::slice::from_ref(p));
        assert!(
            out.status.success(),
            "nix copy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    c.restart(behind);
    wait_for(Duration::from_secs(30), "the node to catch up", || {
        paths.iter().all(|p| narinfo_status(&c, behind, p) == 200)
    });
    let snap = c.node(behind).data.join("raft/snapshots/current.snap");
    assert!(snap.is_file(), "the node caught up without a snapshot");
    check_invariants(&c, &c.ids(), &paths);
}

#[test]
fn wiped_node_restarted_under_its_old_id_is_refused() {
    let _g = serial();
    let nix = Nix::new();
    let paths = nix.build_fixtures(&testkit::salt(), 1);
    let mut c = TestCluster::start(Options::default());
    let out = c.nix_copy(&nix, 1, &paths);
    assert!(out.status.success());
    c.kill(3);
    std::fs::remove_dir_all(&c.node(3).data).unwrap();
    c.restart(3);
    // It holds no identity, so the others' Raft traffic is refused and it stays out.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(c.metric(3, "cairn_raft_term"), Some(0));
    assert_eq!(narinfo_status(&c, 3, &paths[0]), 404);
    let (code, _) = status(&c, 3);
    assert_eq!(code, 2, "the wiped node knows no leader");
    let (code, report) = status(&c, 1);
    assert_eq!(code, 1, "the cluster is degraded, not down:\n{report}");
    let more = nix.build_fixtures(&testkit::salt(), 1);
    let out = c.nix_copy(&nix, 2, &more);
    assert!(out.status.success(), "two nodes still take writes");
    check_invariants(&c, &[1, 2], &[paths[0].clone(), more[0].clone()]);
}
