//! The three-node cluster with real processes: each node a `cairnd` in its own network
//! namespace (as root), partitions made with nftables. Every scenario ends by checking
//! the design's invariants that show from outside (`check_invariants`). Clusters run
//! one at a time: two cores cannot hold several elections to time.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use cairn_tests::cluster::{
    check_invariants, http_get, http_get_bytes, Options, TestCluster, PUSH, SECRET,
};
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

/// Waits until node `id` has a narinfo for every one of `paths`.
fn wait_caught_up(c: &TestCluster, id: u64, paths: &[String], timeout: Duration) {
    wait_for(timeout, &format!("node {id} to catch up"), || {
        paths.iter().all(|p| narinfo_status(c, id, p) == 200)
    });
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

/// `nix copy --to` node `id`, which must succeed.
fn copy_ok(c: &TestCluster, nix: &Nix, id: u64, paths: &[String]) {
    let out = c.nix_copy(nix, id, paths);
    assert!(
        out.status.success(),
        "nix copy to node {id}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until every node holds `n` blobs.
fn wait_three_copies(c: &TestCluster, n: usize) {
    wait_for(
        Duration::from_secs(30),
        "a copy of every blob on every node",
        || c.ids().iter().all(|&id| c.blob_files(id).len() == n),
    );
}

/// The NAR (from `nix-store --dump`) of a file with random contents.
fn random_nar() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("f");
    std::fs::write(&f, testkit::salt()).unwrap();
    let out = std::process::Command::new("nix-store")
        .args(["--dump", f.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    out.stdout
}

/// Whether the partition scenarios can run: they need root (CI runs as root, with the
/// tools `scripts/test` installs), and without root they are skipped, said on stderr.
fn can_partition(c: &TestCluster) -> bool {
    if c.can_partition() {
        return true;
    }
    assert!(
        !cairn_tests::is_root(),
        "running as root, yet no network namespaces: are `ip` and `nft` installed?"
    );
    eprintln!("skipped: partitions need root, ip netns and nft");
    false
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

    copy_ok(&c, &nix, 2, &paths);
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
    copy_ok(&c, &nix, 1, &more);
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
    // The node that took the uploads counted its copies to peers and its commits;
    // the leader follows each peer's lag, which is none once all is replicated.
    assert!(c.metric(2, "cairn_blob_copies_total").unwrap() >= paths.len() as u64);
    assert!(c.metric(2, "cairn_raft_commit_seconds_count").unwrap() >= paths.len() as u64);
    let leader = c.wait_leader(&c.ids(), Duration::from_secs(10));
    for id in followers(&c, leader) {
        let lag = format!("cairn_raft_replication_lag_entries{{node=\"{id}\"}}");
        wait_for(Duration::from_secs(10), "no replication lag", || {
            c.metric(leader, &lag) == Some(0)
        });
    }
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

    // The batch API (`cachectl push`) through node 3: each path is committed in the
    // same Raft entry as its blob's first holders, and reads at once from node 1.
    let pushed = nix.build_fixtures(&testkit::salt(), 3);
    let mut args = vec!["push", "--json"];
    args.extend(pushed.iter().map(String::as_str));
    let out = c.cachectl(3, &args);
    assert!(
        out.status.success(),
        "cachectl push through node 3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_invariants(&c, &[1, 2, 3], &pushed);

    // Misses on a follower are each confirmed with the leader, concurrent ones in
    // shared rounds.
    let follower = followers(&c, leader)[0];
    let rounds = "cairn_raft_read_barrier_rounds_total";
    let before = c.metric(follower, rounds).unwrap();
    let misses: Vec<String> = (0..256)
        .map(|i| format!("{}/{:0>32}.narinfo", c.url(follower), i))
        .collect();
    let statuses: Vec<u16> = cairn_tests::rt().block_on(async {
        use futures_util::StreamExt;
        let client = cairn_tests::http_client();
        futures_util::stream::iter(&misses)
            .map(|url| {
                let client = client.clone();
                async move {
                    client
                        .get(url)
                        .send()
                        .await
                        .map_or(0, |r| r.status().as_u16())
                }
            })
            .buffer_unordered(64)
            .collect()
            .await
    });
    assert!(statuses.iter().all(|&s| s == 404), "{statuses:?}");
    let made = c.metric(follower, rounds).unwrap() - before;
    assert!(
        (1..=misses.len() as u64 / 2).contains(&made),
        "{made} rounds for {} concurrent misses",
        misses.len()
    );
    let total = paths.len() + 1 + pushed.len();
    wait_for(
        Duration::from_secs(30),
        "three copies of the pushed blobs",
        || c.ids().iter().all(|&id| c.blob_files(id).len() == total),
    );
}

#[test]
fn leader_killed_during_uploads_loses_nothing() {
    let _g = serial();
    let nix = Nix::new();
    let paths = nix.build_fixtures(&testkit::salt(), 10);
    let mut c = TestCluster::start(Options::default());
    let leader = c.wait_leader(&c.ids(), Duration::from_secs(10));
    let target = followers(&c, leader)[0];
    let before = c.metric(target, "cairn_raft_leader_changes_total").unwrap();
    // Uploads run back to back on a thread; the leader dies right after the third is
    // acknowledged, with the fourth under way.
    let (tx, rx) = std::sync::mpsc::channel();
    let mut killed_at = None;
    let mut results = Vec::new();
    std::thread::scope(|s| {
        s.spawn(|| {
            for p in &paths {
                let out = c.nix_copy(&nix, target, std::slice::from_ref(p));
                let err = String::from_utf8_lossy(&out.stderr).into_owned();
                tx.send((p.clone(), out.status.success(), Instant::now(), err))
                    .unwrap();
            }
            drop(tx);
        });
        for r in rx.iter() {
            results.push(r);
            if killed_at.is_none() && results.iter().filter(|r| r.1).count() == 3 {
                c.signal(leader, "KILL");
                killed_at = Some(Instant::now());
            }
        }
    });
    c.kill(leader);
    let killed_at = killed_at.expect("three uploads before the kill");
    let mut acked = Vec::new();
    let mut first_after_kill = None;
    for (p, ok, at, err) in results {
        if ok {
            acked.push(p);
            if at > killed_at && first_after_kill.is_none() {
                first_after_kill = Some(at - killed_at);
            }
        } else {
            // Refused while the leader was gone: not acknowledged, so sent again.
            assert!(
                at > killed_at,
                "upload of {p} failed before the kill: {err}"
            );
            eprintln!("upload of {p} failed: {err}");
            copy_ok(&c, &nix, target, std::slice::from_ref(&p));
            acked.push(p);
        }
    }
    let failover = first_after_kill.expect("an upload succeeded after the kill");
    assert!(
        failover <= Duration::from_secs(5),
        "writes resumed after {failover:?}"
    );
    assert_eq!(acked.len(), paths.len(), "every upload was acknowledged");
    assert!(
        c.metric(target, "cairn_raft_leader_changes_total").unwrap() > before,
        "the new leader was counted"
    );
    let survivors = followers(&c, leader);
    check_invariants(&c, &survivors, &acked);

    // The old leader comes back as a follower and catches up.
    c.restart(leader);
    c.wait_leader(&c.ids(), Duration::from_secs(20));
    wait_caught_up(&c, leader, &acked, Duration::from_secs(20));
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
    copy_ok(&c, &nix, leader, &paths);
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
    wait_for(Duration::from_secs(10), "an empty repair backlog", || {
        c.metric(down, "cairn_repair_backlog_blobs") == Some(0)
    });
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
    copy_ok(&c, &nix, 1, &paths);
    wait_three_copies(&c, paths.len());
    c.kill(2);
    c.kill(3);
    // Reads of committed paths go on.
    check_invariants(&c, &[1], &paths);
    // A write is refused with 503, and nothing of it becomes visible.
    let refused = random_nar();
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
    if !can_partition(&c) {
        return;
    }
    copy_ok(&c, &nix, 1, &paths[..1]);
    let old = c.wait_leader(&c.ids(), Duration::from_secs(10));
    let majority = followers(&c, old);
    c.partition(&[&[old], &majority]);
    let new = c.wait_leader(&majority, Duration::from_secs(15));
    assert_ne!(new, old);
    // The majority takes writes; the minority still serves what it has.
    copy_ok(&c, &nix, majority[1], &paths[1..]);
    assert_eq!(narinfo_status(&c, old, &paths[0]), 200);
    check_invariants(&c, &majority, &paths);
    c.heal();
    wait_caught_up(&c, old, &paths[1..], Duration::from_secs(20));
    assert_eq!(c.wait_leader(&c.ids(), Duration::from_secs(20)), new);
    check_invariants(&c, &c.ids(), &paths);
}

#[test]
fn partition_with_the_leader_in_the_majority() {
    let _g = serial();
    let nix = Nix::new();
    let paths = nix.build_fixtures(&testkit::salt(), 2);
    let c = TestCluster::start(Options::default());
    if !can_partition(&c) {
        return;
    }
    let leader = c.wait_leader(&c.ids(), Duration::from_secs(10));
    let cut = followers(&c, leader)[0];
    let rest: Vec<u64> = c.ids().into_iter().filter(|&i| i != cut).collect();
    c.partition(&[&[cut], &rest]);
    copy_ok(&c, &nix, leader, &paths);
    check_invariants(&c, &rest, &paths);
    // Cut off, the follower cannot confirm misses; it answers 404, never 5xx.
    assert_eq!(narinfo_status(&c, cut, &paths[0]), 404);
    c.heal();
    wait_caught_up(&c, cut, &paths, Duration::from_secs(30));
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
    copy_ok(&c, &nix, new, &paths);
    check_invariants(&c, &others, &paths);
    c.signal(old, "CONT");
    wait_caught_up(&c, old, &paths, Duration::from_secs(20));
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
    let had = c.metric(behind, "cairn_raft_last_log_index").unwrap();
    c.kill(behind);
    for p in &paths {
        copy_ok(&c, &nix, leader, std::slice::from_ref(p));
    }
    // The leader's log no longer reaches back to where the node stopped.
    wait_for(
        Duration::from_secs(20),
        "the leader to purge past the node",
        || c.metric(leader, "cairn_raft_purged_index").unwrap_or(0) > had,
    );
    c.restart(behind);
    wait_caught_up(&c, behind, &paths, Duration::from_secs(30));
    // It installed the leader's snapshot: its own would not say so.
    assert!(
        c.log_tail(behind, usize::MAX)
            .contains("installed raft snapshot"),
        "the node caught up without a snapshot:\n{}",
        c.log_tail(behind, 30)
    );
    check_invariants(&c, &c.ids(), &paths);
}

/// How many requests node `id`'s cluster listener refused for `reason`.
fn refused(c: &TestCluster, id: u64, reason: &str) -> u64 {
    let name = format!("cairn_cluster_requests_refused_total{{reason=\"{reason}\"}}");
    c.metric(id, &name).unwrap_or(0)
}

#[test]
fn the_cluster_listener_refuses_strangers_and_a_wiped_node() {
    let _g = serial();
    let nix = Nix::new();
    let paths = nix.build_fixtures(&testkit::salt(), 1);
    let mut c = TestCluster::start(Options::default());
    copy_ok(&c, &nix, 1, &paths);

    // Every internal request carries the secret, the node it is meant for and the
    // cluster id; each one missing or wrong is its own refusal.
    let id = c.cluster_id(2).expect("node 2 joined");
    let ok = Some(SECRET);
    assert_eq!(c.internal_status(2, ok, Some(2), Some(&id)), 200);
    assert_eq!(c.internal_status(2, None, Some(2), Some(&id)), 401);
    assert_eq!(
        c.internal_status(
            2,
            Some("not-the-secret-0123456789abcdef0123"),
            Some(2),
            Some(&id)
        ),
        401
    );
    assert_eq!(c.internal_status(2, ok, Some(3), Some(&id)), 421);
    assert_eq!(c.internal_status(2, ok, None, Some(&id)), 421);
    assert_eq!(c.internal_status(2, ok, Some(2), None), 403);
    let other = "0123456789abcdef0123456789abcdef";
    assert_eq!(c.internal_status(2, ok, Some(2), Some(other)), 403);
    for (reason, n) in [("secret", 2), ("target", 2), ("cluster", 2)] {
        assert_eq!(refused(&c, 2, reason), n, "refusals for {reason}");
    }

    c.kill(3);
    std::fs::remove_dir_all(&c.node(3).data).unwrap();
    c.restart(3);
    // It holds no identity, so the others' Raft traffic is refused and it stays out.
    wait_for(
        Duration::from_secs(10),
        "Raft traffic refused by the wiped node",
        || refused(&c, 3, "no_identity") >= 5,
    );
    assert_eq!(c.metric(3, "cairn_raft_term"), Some(0));
    // Adding it back under its old id is refused as well: it is still a member, and it
    // would vote with an empty log.
    let out = c.cachectl(1, &["cluster", "add", "3", &c.node(3).cluster.clone()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("already a member"),
        "re-adding a wiped member: {err}"
    );
    assert_eq!(c.cluster_id(3), None, "the wiped node took no identity");
    // Adding a healthy voter again changes nothing and is no error (a retried add).
    cachectl_ok(&c, 1, &["cluster", "add", "2", &c.node(2).cluster.clone()]);
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

/// The file hash (nix32) of `path`'s NAR, from node `id`'s narinfo.
fn blob_name(c: &TestCluster, id: u64, path: &str) -> String {
    let (s, text) = http_get(&format!("{}/{}.narinfo", c.url(id), hash_part(path))).unwrap();
    assert_eq!(s, 200);
    let ni = nix_formats::NarInfo::parse(&text).unwrap();
    ni.file_hash.unwrap().to_nix32()
}

/// A GET of bytes `a..=b`: (status, body).
fn get_range(url: &str, a: u64, b: u64) -> (u16, Vec<u8>) {
    cairn_tests::rt().block_on(async {
        let resp = cairn_tests::http_client()
            .get(url)
            .header("range", format!("bytes={a}-{b}"))
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .expect("an answer");
        let status = resp.status().as_u16();
        (status, resp.bytes().await.expect("a body").to_vec())
    })
}

#[test]
fn flipped_byte_is_never_served_and_is_repaired_from_a_peer() {
    let _g = serial();
    let nix = Nix::new();
    let paths = nix.build_fixtures(&testkit::salt(), 2);
    let c = TestCluster::start(Options::default());
    copy_ok(&c, &nix, 1, &paths);
    wait_three_copies(&c, paths.len());
    // Read on node 3: a small blob is checked before a byte goes out (then set aside,
    // fetched again from a peer and served); a large one as it streams, and the
    // connection is cut before its end. Never a clean 200 of bad bytes.
    let first = blob_name(&c, 1, &paths[0]);
    c.flip_byte(3, &first);
    let (s, text) = http_get(&format!("{}/{}.narinfo", c.url(3), hash_part(&paths[0]))).unwrap();
    assert_eq!(s, 200);
    let url = nix_formats::NarInfo::parse(&text).unwrap().url;
    if let Some((200, bytes)) = http_get_bytes(&format!("{}/{url}", c.url(3))) {
        assert_eq!(
            nix_formats::Hash::sha256_of(&bytes).to_nix32(),
            first,
            "bad bytes served"
        );
    }
    wait_for(
        Duration::from_secs(30),
        "a good copy on node 3 again",
        || c.has_good_copy(3, &first),
    );
    check_invariants(&c, &[3], &paths[..1]);
    // A range of a bad copy, on node 2: the whole blob is hashed before a part of it
    // goes out, so the part comes from a good copy fetched again.
    let good = http_get_bytes(&format!("{}/{url}", c.url(1))).unwrap().1;
    let mid = good.len() as u64 / 2;
    c.flip_byte(2, &first);
    let (status, part) = get_range(&format!("{}/{url}", c.url(2)), mid - 10, mid + 10);
    assert_eq!(status, 206);
    assert!(
        part == good[mid as usize - 10..=mid as usize + 10],
        "bad bytes served in a range"
    );
    wait_for(
        Duration::from_secs(30),
        "a good copy on node 2 again",
        || c.has_good_copy(2, &first),
    );
    // Unread on node 2: the scrubber finds it, and repair brings a good copy back.
    let second = blob_name(&c, 1, &paths[1]);
    c.flip_byte(2, &second);
    wait_for(
        Duration::from_secs(30),
        "the scrubber to set the bad copy aside",
        || c.metric(2, "cairn_blob_check_failures_total").unwrap_or(0) >= 1,
    );
    wait_for(
        Duration::from_secs(30),
        "a good copy on node 2 again",
        || c.has_good_copy(2, &second),
    );
    assert!(c.metric(3, "cairn_blob_check_failures_total").unwrap_or(0) >= 1);
    check_invariants(&c, &c.ids(), &paths);
}

#[test]
fn rolling_restart_of_all_three_fails_no_read() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
    use std::sync::Arc;
    let _g = serial();
    let nix = Nix::new();
    let paths = nix.build_fixtures(&testkit::salt(), 4);
    let mut c = TestCluster::start(Options::default());
    copy_ok(&c, &nix, 1, &paths[..1]);

    // All along, a reader fetches the first path's narinfo and NAR from every node
    // that is meant to be up, and checks the bytes.
    let urls: Vec<(u64, String)> = c.ids().into_iter().map(|id| (id, c.url(id))).collect();
    let down = Arc::new(AtomicU64::new(0));
    let rounds = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (down, rounds, stop) = (down.clone(), rounds.clone(), stop.clone());
        let hash = hash_part(&paths[0]).to_string();
        std::thread::spawn(move || {
            let (mut reads, mut failures) = (0u64, Vec::new());
            while !stop.load(SeqCst) {
                let skip = down.load(SeqCst);
                for (id, url) in urls.iter().filter(|(id, _)| *id != skip) {
                    let narinfo = http_get(&format!("{url}/{hash}.narinfo"));
                    let Some((200, text)) = narinfo else {
                        failures.push(format!("node {id}: narinfo {:?}", narinfo.map(|r| r.0)));
                        continue;
                    };
                    let ni = nix_formats::NarInfo::parse(&text).expect("a narinfo");
                    match http_get_bytes(&format!("{url}/{}", ni.url)) {
                        Some((200, b))
                            if Some(nix_formats::Hash::sha256_of(&b)) == ni.file_hash =>
                        {
                            reads += 1
                        }
                        other => failures.push(format!("node {id}: NAR {:?}", other.map(|r| r.0))),
                    }
                }
                rounds.fetch_add(1, SeqCst);
            }
            (reads, failures)
        })
    };
    // Past two more rounds of the reader, no read of a node marked down is under way.
    let settle = || {
        let r = rounds.load(SeqCst);
        wait_for(Duration::from_secs(20), "a reader round", || {
            rounds.load(SeqCst) >= r + 2
        });
    };

    for (step, id) in c.ids().into_iter().enumerate() {
        down.store(id, SeqCst);
        settle();
        c.kill(id);
        let up: Vec<u64> = c.ids().into_iter().filter(|&i| i != id).collect();
        // Reads go on from the others while this one is down, and so do writes.
        check_invariants(&c, &up, &paths[..step + 1]);
        let leader = c.wait_leader(&up, Duration::from_secs(15));
        copy_ok(&c, &nix, leader, &paths[step + 1..step + 2]);
        c.restart(id);
        wait_caught_up(&c, id, &paths[..step + 2], Duration::from_secs(20));
        down.store(0, SeqCst);
        settle();
    }
    stop.store(true, SeqCst);
    let (reads, failures) = reader.join().expect("the reader");
    assert!(failures.is_empty(), "failed reads: {failures:?}");
    assert!(reads > 0);
    c.wait_leader(&c.ids(), Duration::from_secs(20));
    check_invariants(&c, &c.ids(), &paths);
}

#[test]
fn a_dead_node_is_replaced_by_a_fresh_one() {
    let _g = serial();
    let nix = Nix::new();
    let paths = nix.build_fixtures(&testkit::salt(), 2);
    let mut c = TestCluster::start(Options {
        nodes: 4,
        voters: Some(3),
        ..Options::default()
    });
    copy_ok(&c, &nix, 1, &paths);
    c.kill(3);
    let addr = c.node(4).cluster.clone();
    cachectl_ok(&c, 1, &["cluster", "replace", "3", "4", &addr]);
    // (Its exit status says degraded until node 4 has caught up.)
    let voters = |id| {
        let out = c.cachectl(id, &["status", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
        v["voters"].clone()
    };
    wait_for(
        Duration::from_secs(10),
        "node 2 to see voters 1, 2, 4",
        || voters(2) == serde_json::json!([1, 2, 4]),
    );
    wait_for(Duration::from_secs(30), "node 4 to hold every blob", || {
        c.blob_files(4).len() == paths.len()
    });
    wait_for(Duration::from_secs(10), "a healthy status", || {
        status(&c, 4).0 == 0
    });
    check_invariants(&c, &[1, 2, 4], &paths);

    // Removing a live voter on its own: the other two carry on, with every path.
    cachectl_ok(&c, 4, &["cluster", "remove", "2"]);
    wait_for(Duration::from_secs(10), "node 1 to see voters 1, 4", || {
        voters(1) == serde_json::json!([1, 4])
    });
    check_invariants(&c, &[1, 4], &paths);
}

#[test]
fn orphans_go_after_their_grace_and_paths_keep_their_copies() {
    let _g = serial();
    let nix = Nix::new();
    let paths = nix.build_fixtures(&testkit::salt(), 1);
    let c = TestCluster::start(Options {
        orphan_grace_secs: 2,
        ..Options::default()
    });
    copy_ok(&c, &nix, 1, &paths);
    // A NAR whose narinfo never comes: copied and registered, then an orphan.
    let nar = random_nar();
    assert_eq!(put_nar(&c, 2, &nar), 200);
    let orphan = nix_formats::Hash::sha256_of(&nar).to_nix32();
    assert!(c
        .ids()
        .iter()
        .any(|&id| c.blob_files(id).iter().any(|(f, _)| *f == orphan)));
    wait_for(
        Duration::from_secs(30),
        "the orphan to be deleted everywhere",
        || {
            c.ids()
                .iter()
                .all(|&id| !c.blob_files(id).iter().any(|(f, _)| *f == orphan))
        },
    );
    // The path's blob, as old, stays on every node.
    let kept = blob_name(&c, 1, &paths[0]);
    for id in c.ids() {
        assert!(
            c.has_good_copy(id, &kept),
            "node {id} lost a copy a path needs"
        );
    }
    check_invariants(&c, &c.ids(), &paths);
}

#[test]
fn a_node_dying_at_each_step_of_an_upload_leaves_nothing_half_done() {
    let _g = serial();
    let nix = Nix::new();
    for step in [
        "mid-body",
        "after-ingest",
        "after-copy",
        "after-register",
        "before-path",
        "after-path",
    ] {
        let paths = nix.build_fixtures(&testkit::salt(), 1);
        let mut c = TestCluster::start(Options::default());
        // Node 2 dies when an upload through it reaches `step`.
        c.kill(2);
        c.launch_with(2, &[("CAIRN_FAILPOINT", step)]);
        c.wait_healthy(2);
        c.wait_leader(&c.ids(), Duration::from_secs(20));
        let out = c.nix_copy(&nix, 2, &paths);
        assert!(
            !out.status.success(),
            "{step}: the upload through the dying node was acknowledged"
        );
        wait_for(Duration::from_secs(10), "the node to die", || c.reap(2));
        c.wait_leader(&[1, 3], Duration::from_secs(20));
        // What the survivors show is all or nothing, and never fewer than two copies.
        let visible = narinfo_status(&c, 1, &paths[0]) == 200;
        assert_eq!(visible, narinfo_status(&c, 3, &paths[0]) == 200, "{step}");
        if visible {
            check_invariants(&c, &[1, 3], &paths);
        }
        // Restarted without the failpoint, it keeps nothing half-received, and the
        // same upload goes through.
        let staging = c.node(2).data.join("cache/staging");
        if step == "mid-body" {
            let left = std::fs::read_dir(&staging).map(|d| d.count()).unwrap_or(0);
            assert!(left > 0, "the crash left the upload's staging file");
        }
        c.restart(2);
        assert_eq!(
            std::fs::read_dir(&staging).map(|d| d.count()).ok(),
            Some(0),
            "{step}"
        );
        c.wait_leader(&c.ids(), Duration::from_secs(20));
        copy_ok(&c, &nix, 2, &paths);
        check_invariants(&c, &c.ids(), &paths);
    }
}

/// `cachectl` against node `id`, which must succeed: its stdout.
fn cachectl_ok(c: &TestCluster, id: u64, args: &[&str]) -> String {
    let out = c.cachectl(id, args);
    assert!(
        out.status.success(),
        "cachectl {args:?} on node {id}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn gc_keeps_pinned_closures_deletes_the_rest_everywhere_and_a_deleted_path_can_come_back() {
    let _g = serial();
    let nix = Nix::new();
    // A chain a2 → a1 → a0 (each names the one before) and a chain b1 → b0.
    let a = nix.build_fixtures(&testkit::salt(), 3);
    let b = nix.build_fixtures(&testkit::salt(), 2);
    let c = TestCluster::start(Options {
        orphan_grace_secs: 2,
        ..Options::default()
    });
    copy_ok(&c, &nix, 1, &a);
    copy_ok(&c, &nix, 1, &b);
    wait_three_copies(&c, 5);

    // Without retention settings a pass deletes nothing.
    let v: serde_json::Value =
        serde_json::from_str(&cachectl_ok(&c, 2, &["gc", "--json"])).unwrap();
    assert_eq!(
        (v["planned"].as_u64(), v["deleted"].as_u64()),
        (Some(0), Some(0)),
        "{v}"
    );

    cachectl_ok(&c, 2, &["pin", "add", &a[1], "--reason", "release 1"]);
    let pins = cachectl_ok(&c, 3, &["pin", "list"]);
    assert!(
        pins.contains(hash_part(&a[1])) && pins.contains("release 1"),
        "{pins}"
    );
    cachectl_ok(&c, 3, &["retention", "set", "--max-age", "0"]);

    // Everything older than a second may go, but a1 is pinned and a0 in its closure.
    let doomed: Vec<String> = vec![a[2].clone(), b[0].clone(), b[1].clone()];
    let mut dry = serde_json::Value::Null;
    wait_for(Duration::from_secs(10), "a plan with three victims", || {
        dry = serde_json::from_str(&cachectl_ok(&c, 1, &["gc", "--dry-run", "--json"])).unwrap();
        dry["planned"] == 3
    });
    let mut planned: Vec<String> = dry["victims"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    planned.sort();
    let mut want: Vec<String> = doomed.iter().map(|p| hash_part(p).to_string()).collect();
    want.sort();
    assert_eq!(planned, want, "{dry}");
    assert_eq!(dry["deleted"], 0);
    check_invariants(&c, &c.ids(), &[a.clone(), b.clone()].concat());

    let doomed_blobs: Vec<String> = doomed.iter().map(|p| blob_name(&c, 1, p)).collect();
    let text = cachectl_ok(&c, 3, &["gc"]);
    assert!(text.contains("deleted 3 of 5 paths"), "{text}");
    assert_eq!(c.metric(3, "cairn_gc_paths_deleted_total"), Some(3));
    for id in c.ids() {
        wait_for(
            Duration::from_secs(10),
            "the deletions on every node",
            || doomed.iter().all(|p| narinfo_status(&c, id, p) == 404),
        );
    }
    // Invariant 6: the pinned path's closure is whole on every node.
    check_invariants(&c, &c.ids(), &a[..2]);
    // The deleted paths' blobs go from every node once the grace has passed; the
    // kept ones stay.
    wait_for(
        Duration::from_secs(30),
        "the deleted paths' blobs to go",
        || {
            c.ids().iter().all(|&id| {
                let files: Vec<String> = c.blob_files(id).into_iter().map(|(f, _)| f).collect();
                doomed_blobs.iter().all(|d| !files.contains(d))
            })
        },
    );
    for id in c.ids() {
        for p in &a[..2] {
            assert!(
                c.has_good_copy(id, &blob_name(&c, 1, p)),
                "node {id} lost {p}"
            );
        }
    }

    // A deleted path uploaded again is a path like any other.
    copy_ok(&c, &nix, 2, &b);
    check_invariants(&c, &c.ids(), &b);

    // Unpinned, the whole chain goes (a2's deletion went before; now a1 and a0).
    cachectl_ok(&c, 1, &["pin", "remove", &a[1]]);
    assert!(
        !c.cachectl(1, &["pin", "remove", &a[1]]).status.success(),
        "no pin left"
    );
    let v: serde_json::Value =
        serde_json::from_str(&cachectl_ok(&c, 1, &["gc", "--dry-run", "--json"])).unwrap();
    let victims: Vec<&str> = v["victims"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(
        victims.contains(&hash_part(&a[0])) && victims.contains(&hash_part(&a[1])),
        "{v}"
    );
}

#[test]
fn the_embedded_default_is_a_cluster_of_one_with_gc_and_grows_into_a_cluster() {
    let _g = serial();
    let nix = Nix::new();
    // A chain a2 → a1 → a0.
    let a = nix.build_fixtures(&testkit::salt(), 3);
    // Node 1 without a [cluster] section, as `cairnd` runs out of the box; node 2 a
    // fresh node waiting to be added.
    let mut c = TestCluster::spawn(Options {
        nodes: 2,
        voters: Some(1),
        orphan_grace_secs: 2,
        solo_first: true,
        ..Options::default()
    });
    copy_ok(&c, &nix, 1, &a);
    let v: serde_json::Value =
        serde_json::from_str(&cachectl_ok(&c, 1, &["status", "--json"])).unwrap();
    assert_eq!(
        (&v["leader"], &v["voters"], &v["nodes"][0]["role"]),
        (
            &serde_json::json!(1),
            &serde_json::json!([1]),
            &serde_json::json!("leader")
        ),
        "{v}"
    );
    assert_eq!(status(&c, 1).0, 0, "healthy: {}", status(&c, 1).1);

    // Pins, retention and GC, as on a cluster.
    cachectl_ok(&c, 1, &["pin", "add", &a[1], "--reason", "release"]);
    cachectl_ok(&c, 1, &["retention", "set", "--max-age", "0"]);
    wait_for(Duration::from_secs(10), "a plan with one victim", || {
        let dry: serde_json::Value =
            serde_json::from_str(&cachectl_ok(&c, 1, &["gc", "--dry-run", "--json"])).unwrap();
        dry["planned"] == 1 && dry["victims"][0] == hash_part(&a[2])
    });
    let text = cachectl_ok(&c, 1, &["gc"]);
    assert!(text.contains("deleted 1 of 3 paths"), "{text}");
    let kept = blob_name(&c, 1, &a[0]);
    let kept_files = c.blob_files(1).len();
    assert_eq!(narinfo_status(&c, 1, &a[2]), 404);
    wait_for(
        Duration::from_secs(30),
        "the deleted path's blob to go",
        || c.blob_files(1).len() == kept_files - 1,
    );
    assert!(
        c.has_good_copy(1, &kept),
        "the pinned closure keeps its blobs"
    );

    // A restart keeps every record and takes uploads at once (no election to wait for).
    c.kill(1);
    c.restart(1);
    assert_eq!(narinfo_status(&c, 1, &a[0]), 200);
    assert_eq!(narinfo_status(&c, 1, &a[2]), 404);
    let b = nix.build_fixtures(&testkit::salt(), 1);
    copy_ok(&c, &nix, 1, &b);
    let kept: Vec<String> = [&a[..2], &b[..]].concat();
    check_invariants(&c, &[1], &kept);

    // Grown: given a [cluster] section and restarted, it adds node 2, which gets
    // every path and copy, and both serve them.
    c.give_cluster_section(1);
    c.kill(1);
    c.restart(1);
    c.wait_leader(&[1], Duration::from_secs(20));
    let addr = c.node(2).cluster.clone();
    cachectl_ok(&c, 1, &["cluster", "add", "2", &addr]);
    wait_caught_up(&c, 2, &kept, Duration::from_secs(30));
    wait_for(Duration::from_secs(30), "node 2 to hold every blob", || {
        c.blob_files(2).len() == kept.len()
    });
    let v: serde_json::Value =
        serde_json::from_str(&cachectl_ok(&c, 2, &["status", "--json"])).unwrap();
    assert_eq!(v["voters"], serde_json::json!([1, 2]), "{v}");
    check_invariants(&c, &[1, 2], &kept);
    // Writes through the new node reach the old one.
    let d = nix.build_fixtures(&testkit::salt(), 1);
    copy_ok(&c, &nix, 2, &d);
    wait_caught_up(&c, 1, &d, Duration::from_secs(10));
    check_invariants(&c, &[1, 2], &d);
}
