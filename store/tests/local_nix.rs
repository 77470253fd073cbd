//! The local store reader against a real Nix store: what we read from Nix's database
//! equals what `nix path-info --json` reports.

use std::path::Path;

use nix_formats::{Hash, StoreDir};
use store::{LocalStore, LocalStoreConfig};
use testkit::{ChrootStore, Nix};

fn json_hash(v: &serde_json::Value) -> Hash {
    v["narHash"].as_str().unwrap().parse().unwrap()
}

#[test]
fn reads_what_nix_registered() {
    let nix = Nix::new();
    let paths = nix.build_fixtures(&testkit::salt(), 3);
    // Copy into a chroot store so the test sees a database nothing else writes to, and
    // so the logical /nix/store differs from the physical location.
    let chroot = ChrootStore::new();
    let mut args = vec!["copy", "--no-check-sigs", "--to"];
    let uri = chroot.uri();
    args.push(&uri);
    args.extend(paths.iter().map(String::as_str));
    nix.run("nix", &args);

    let store = LocalStore::open(LocalStoreConfig::under_root(chroot.root())).unwrap();
    let info = nix.path_info(Some(&uri), &[paths.last().unwrap()]);
    let list = info.as_array().unwrap();
    assert_eq!(list.len(), 3, "closure of the last fixture");
    for entry in list {
        let full = entry["path"].as_str().unwrap();
        let sp = StoreDir::default().parse_path(full).unwrap();
        let ours = store
            .query_by_hash_part(&sp.hash_part())
            .unwrap()
            .expect("path is registered");
        assert_eq!(ours.path, sp);
        assert_eq!(ours.nar_hash, json_hash(entry));
        assert_eq!(ours.nar_size, entry["narSize"].as_u64().unwrap());
        let refs: Vec<String> = ours
            .references
            .iter()
            .map(|r| StoreDir::default().display(r))
            .collect();
        let want: Vec<String> = entry["references"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_string())
            .collect();
        assert_eq!(refs, want);
        assert_eq!(
            ours.deriver.map(|d| StoreDir::default().display(&d)),
            entry["deriver"].as_str().map(str::to_string)
        );
        assert!(store.real_path(&sp).starts_with(chroot.root()));
        assert!(store.real_path(&sp).join("README").is_file());
        assert_eq!(
            store.query_path(&sp).unwrap().unwrap().nar_hash,
            ours.nar_hash
        );
    }
}

#[test]
fn unknown_and_malformed_hash_parts_are_absent() {
    let store = LocalStore::open(LocalStoreConfig::under_root(Path::new("/"))).unwrap();
    for h in [
        "00000000000000000000000000000000",
        "0000000000000000000000000000000",
        "e0000000000000000000000000000000",
        "../../../../etc/passwd/../../../",
        "",
    ] {
        assert!(store.query_by_hash_part(h).unwrap().is_none(), "{h:?}");
    }
}

#[test]
fn open_fails_cleanly_for_a_missing_database() {
    let dir = tempfile::tempdir().unwrap();
    let err = LocalStore::open(LocalStoreConfig::under_root(dir.path()))
        .err()
        .expect("no database there");
    assert!(err.to_string().contains("db.sqlite"), "{err}");
}

/// Misses are answered from an in-memory set kept current by watching the database:
/// a path Nix registers is found by the very next lookup, a path Nix deletes is gone
/// from the very next lookup, and signatures added later show at once.
#[test]
fn changes_nix_commits_are_seen_by_the_next_lookup() {
    let nix = Nix::new();
    let paths = nix.build_fixtures(&testkit::salt(), 2);
    let chroot = ChrootStore::new();
    let uri = chroot.uri();
    nix.run("nix", &["copy", "--no-check-sigs", "--to", &uri, &paths[0]]);
    let store = LocalStore::open(LocalStoreConfig::under_root(chroot.root())).unwrap();
    let hash_of = |p: &str| StoreDir::default().parse_path(p).unwrap().hash_part();
    let top = hash_of(&paths[1]);
    assert!(store.query_by_hash_part(&top).unwrap().is_none());
    let g0 = store.generation().expect("inotify is available here");
    assert_eq!(store.generation(), Some(g0), "no change, same generation");

    // Registered: found at once, no waiting.
    nix.run("nix", &["copy", "--no-check-sigs", "--to", &uri, &paths[1]]);
    assert!(store.query_by_hash_part(&top).unwrap().is_some());
    assert_ne!(store.generation(), Some(g0));

    // Signed later: the next lookup carries the signature.
    let key_dir = tempfile::tempdir().unwrap();
    let sk = key_dir.path().join("sk");
    let out = nix
        .cmd("nix-store")
        .args(["--generate-binary-cache-key", "watch-test-1"])
        .arg(&sk)
        .arg(key_dir.path().join("pk"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let g1 = store.generation();
    nix.run(
        "nix",
        &[
            "store",
            "sign",
            "--store",
            &uri,
            "--key-file",
            sk.to_str().unwrap(),
            &paths[1],
        ],
    );
    assert_ne!(store.generation(), g1);
    let info = store.query_by_hash_part(&top).unwrap().unwrap();
    assert!(
        info.sigs.iter().any(|s| s.starts_with("watch-test-1:")),
        "{:?}",
        info.sigs
    );

    // Deleted: gone at once.
    nix.run("nix-store", &["--store", &uri, "--delete", &paths[1]]);
    assert!(store.query_by_hash_part(&top).unwrap().is_none());
    assert!(store
        .query_by_hash_part(&hash_of(&paths[0]))
        .unwrap()
        .is_some());
}
