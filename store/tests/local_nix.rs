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
