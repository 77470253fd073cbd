//! Our output against files real Nix wrote (see `tests/golden/README.md`): archives,
//! listings and narinfos, with no `nix` binary needed.

mod common;

use std::fs;

use nix_formats::nar::{self, ListingNode};
use nix_formats::NarInfo;

#[test]
fn fixture_tree_dumps_to_nix_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("fixture");
    common::fixture_tree(&root);
    let mut ours = Vec::new();
    nar::dump_path(&root, &mut ours).unwrap();
    let nix = fs::read(common::golden("fixture.nar")).unwrap();
    assert!(ours == nix, "dump_path differs from nix-store --dump");
}

/// Our `.ls` document is byte for byte `{"version":1,"root":` + what `nix nar ls --json
/// -R` prints + `}`, field order included.
#[test]
fn listings_match_nix() {
    for name in ["fixture", "golden-a"] {
        let nar = fs::read(common::golden(&format!("{name}.nar"))).unwrap();
        let (summary, root) = nar::list(&nar[..]).unwrap();
        assert_eq!(summary.nar_size, nar.len() as u64);
        let nix = fs::read_to_string(common::golden(&format!("{name}.ls.json"))).unwrap();
        assert_eq!(
            nar::listing_json(&root),
            format!("{{\"version\":1,\"root\":{}}}", nix.trim_end()),
            "{name}"
        );
        // Every narOffset points at the file's bytes.
        if name == "fixture" {
            let ListingNode::Directory { entries } = &root else {
                panic!("root is a directory")
            };
            let ListingNode::Directory { entries: sizes } = &entries["sizes"] else {
                panic!("sizes is a directory")
            };
            for (file, node) in sizes {
                let ListingNode::Regular {
                    size, nar_offset, ..
                } = *node
                else {
                    panic!("{file}")
                };
                let at = &nar[nar_offset as usize..(nar_offset + size) as usize];
                assert_eq!(at, common::pattern(size as usize), "{file}");
            }
        }
    }
}

#[test]
fn narinfos_round_trip_and_hash_their_nars() {
    let (mut seen, mut hashed) = (0, 0);
    for entry in fs::read_dir(common::golden("")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "narinfo") {
            continue;
        }
        seen += 1;
        let text = fs::read_to_string(&path).unwrap();
        let ni = NarInfo::parse(&text).unwrap();
        assert_eq!(ni.render(), text, "{}", path.display());
        assert_eq!(
            path.file_stem().unwrap().to_str().unwrap(),
            ni.store_path.hash_part()
        );
        // Where we kept the archive, its hash and size are the narinfo's.
        let nar = common::golden(&format!("{}.nar", ni.store_path.name()));
        if nar.exists() {
            hashed += 1;
            let summary = nar::validate(fs::File::open(&nar).unwrap()).unwrap();
            assert_eq!(summary.nar_hash, ni.nar_hash, "{}", nar.display());
            assert_eq!(summary.nar_size, ni.nar_size, "{}", nar.display());
        }
    }
    assert_eq!((seen, hashed), (4, 3));
}
