//! Property tests: random trees written to disk, archived by `dump_path`, must read back
//! (events, contents, listing, hash, size) as the tree they came from and equal an
//! archive serialised straight from the model; random narinfos must survive
//! render → parse → render.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use nix_formats::nar::{self, ListingNode, NarEvent, NarNode, NarReader};
use nix_formats::{Hash, HashAlgo, NarInfo, StoreDir, StorePath};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tree {
    File { executable: bool, contents: Vec<u8> },
    Link(String),
    Dir(BTreeMap<String, Tree>),
}

fn entry_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-zA-Z0-9._+-]{1,12}",
        1 => "[a-zé€ 𝄞]{1,4}",
    ]
    .prop_filter("not . or ..", |n| n != "." && n != "..")
}

fn tree() -> impl Strategy<Value = Tree> {
    let contents = prop_oneof![
        8 => vec(any::<u8>(), 0..64),
        // Across the writer's 64 KiB chunks.
        1 => vec(any::<u8>(), 60_000..140_000),
    ];
    let leaf = prop_oneof![
        (any::<bool>(), contents).prop_map(|(executable, contents)| Tree::File {
            executable,
            contents
        }),
        "[a-z./]{1,20}".prop_map(Tree::Link),
    ];
    leaf.prop_recursive(4, 48, 8, |inner| {
        btree_map(entry_name(), inner, 0..8).prop_map(Tree::Dir)
    })
}

fn write_tree(path: &Path, tree: &Tree) {
    match tree {
        Tree::File {
            executable,
            contents,
        } => {
            fs::write(path, contents).unwrap();
            let mode = if *executable { 0o755 } else { 0o644 };
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
        }
        Tree::Link(target) => symlink(target, path).unwrap(),
        Tree::Dir(entries) => {
            fs::create_dir(path).unwrap();
            for (name, child) in entries {
                write_tree(&path.join(name), child);
            }
        }
    }
}

/// The archive of a model tree, serialised independently of the writer.
fn model_nar(tree: &Tree) -> Vec<u8> {
    fn s(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        out.extend_from_slice(bytes);
        out.resize(out.len().div_ceil(8) * 8, 0);
    }
    fn node(out: &mut Vec<u8>, tree: &Tree) {
        s(out, b"(");
        s(out, b"type");
        match tree {
            Tree::File {
                executable,
                contents,
            } => {
                s(out, b"regular");
                if *executable {
                    s(out, b"executable");
                    s(out, b"");
                }
                s(out, b"contents");
                s(out, contents);
            }
            Tree::Link(target) => {
                s(out, b"symlink");
                s(out, b"target");
                s(out, target.as_bytes());
            }
            Tree::Dir(entries) => {
                s(out, b"directory");
                // BTreeMap<String> iterates in byte order, Nix's order.
                for (name, child) in entries {
                    for t in [&b"entry"[..], b"(", b"name", name.as_bytes(), b"node"] {
                        s(out, t);
                    }
                    node(out, child);
                    s(out, b")");
                }
            }
        }
        s(out, b")");
    }
    let mut out = Vec::new();
    s(&mut out, b"nix-archive-1");
    node(&mut out, tree);
    out
}

/// Rebuilds the tree from reader events, reading every file's contents.
fn restore(nar: &[u8]) -> Tree {
    let mut reader = NarReader::new(nar);
    let mut open: Vec<(Option<String>, BTreeMap<String, Tree>)> = Vec::new();
    let mut root = None;
    while let Some(event) = reader.next_event().unwrap() {
        let (name, node) = match event {
            NarEvent::Node {
                name,
                node: NarNode::Directory,
            } => {
                open.push((name.map(|n| String::from_utf8(n).unwrap()), BTreeMap::new()));
                continue;
            }
            NarEvent::Node { name, node } => {
                let node = match node {
                    NarNode::Regular {
                        executable, size, ..
                    } => {
                        let mut contents = Vec::new();
                        std::io::copy(&mut reader.contents(), &mut contents).unwrap();
                        assert_eq!(contents.len() as u64, size);
                        Tree::File {
                            executable,
                            contents,
                        }
                    }
                    NarNode::Symlink { target } => Tree::Link(String::from_utf8(target).unwrap()),
                    NarNode::Directory => unreachable!(),
                };
                (name.map(|n| String::from_utf8(n).unwrap()), node)
            }
            NarEvent::EndDirectory => {
                let (name, entries) = open.pop().unwrap();
                (name, Tree::Dir(entries))
            }
        };
        match open.last_mut() {
            Some((_, entries)) => {
                entries.insert(name.unwrap(), node);
            }
            None => root = Some(node),
        }
    }
    reader.finish().unwrap();
    root.unwrap()
}

/// Checks a listing against the model, and that each narOffset points at the contents.
fn check_listing(listing: &ListingNode, tree: &Tree, nar: &[u8]) {
    match (listing, tree) {
        (
            ListingNode::Regular {
                size,
                executable,
                nar_offset,
            },
            Tree::File {
                executable: e,
                contents,
            },
        ) => {
            assert_eq!((*size, executable), (contents.len() as u64, e));
            let at = *nar_offset as usize;
            assert_eq!(&nar[at..at + contents.len()], &contents[..]);
        }
        (ListingNode::Symlink { target }, Tree::Link(t)) => assert_eq!(target, t),
        (ListingNode::Directory { entries }, Tree::Dir(model)) => {
            assert_eq!(
                entries.keys().collect::<Vec<_>>(),
                model.keys().collect::<Vec<_>>()
            );
            for (name, child) in entries {
                check_listing(child, &model[name], nar);
            }
        }
        other => panic!("listing and model differ: {other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn dumped_trees_read_back(tree in tree()) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        write_tree(&root, &tree);

        let mut nar = Vec::new();
        let written = nar::dump_path(&root, &mut nar).unwrap();
        prop_assert_eq!(written, nar.len() as u64);
        prop_assert!(nar == model_nar(&tree), "writer differs from the model");

        let summary = nar::validate(&nar[..]).unwrap();
        prop_assert_eq!(summary.nar_size, written);
        prop_assert_eq!(&summary.nar_hash, &Hash::sha256_of(&nar));

        let (listed, listing) = nar::list(&nar[..]).unwrap();
        prop_assert_eq!(listed, summary);
        check_listing(&listing, &tree, &nar);
        let json: serde_json::Value = serde_json::from_str(&nar::listing_json(&listing)).unwrap();
        prop_assert_eq!(&json["version"], 1);

        prop_assert_eq!(restore(&nar), tree);
    }
}

fn store_path(name: impl Strategy<Value = String>) -> impl Strategy<Value = StorePath> {
    (any::<[u8; 20]>(), name).prop_map(|(d, n)| StorePath::new(d, &n).unwrap())
}

fn pkg_name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9+_?=-][a-zA-Z0-9+._?=-]{0,40}"
}

fn hash(algo: HashAlgo) -> impl Strategy<Value = Hash> {
    vec(any::<u8>(), algo.digest_len()).prop_map(move |d| Hash::new(algo, &d).unwrap())
}

fn any_hash() -> impl Strategy<Value = Hash> {
    prop_oneof![
        hash(HashAlgo::Sha256),
        hash(HashAlgo::Sha1),
        hash(HashAlgo::Sha512),
        hash(HashAlgo::Md5)
    ]
}

/// A value Nix could write: one line, not empty.
fn value() -> impl Strategy<Value = String> {
    "[^\n]{1,60}"
}

fn narinfo() -> impl Strategy<Value = NarInfo> {
    let dir = prop_oneof![Just("/nix/store".to_string()), "(/[a-z0-9._-]{1,8}){1,3}"];
    let ca = (
        prop_oneof![
            Just("text"),
            Just("fixed"),
            Just("fixed:r"),
            Just("fixed:git")
        ],
        any_hash(),
    )
        .prop_map(|(m, h)| format!("{m}:{h}"));
    let sig = ("[a-z0-9.-]{1,20}", vec(any::<u8>(), 64)).prop_map(|(k, s)| {
        use base64::Engine;
        format!(
            "{k}:{}",
            base64::engine::general_purpose::STANDARD.encode(s)
        )
    });
    (
        (
            dir,
            store_path(pkg_name()),
            value(),
            value(),
            proptest::option::of(any_hash()),
            proptest::option::of(any::<u64>()),
            hash(HashAlgo::Sha256),
        ),
        (
            1..u64::MAX,
            vec(store_path(pkg_name()), 0..6),
            proptest::option::of(store_path(pkg_name().prop_map(|n| format!("{n}.drv")))),
            proptest::option::of(value()),
            vec(sig, 0..3),
            proptest::option::of(ca),
        ),
    )
        .prop_map(
            |(
                (dir, store_path, url, compression, file_hash, file_size, nar_hash),
                (nar_size, references, deriver, system, sigs, ca),
            )| NarInfo {
                store_dir: StoreDir::new(&dir).unwrap(),
                store_path,
                url,
                compression,
                file_hash,
                file_size,
                nar_hash,
                nar_size,
                references,
                deriver,
                system,
                sigs,
                ca,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn narinfo_render_parse_render(ni in narinfo()) {
        let text = ni.render();
        let parsed = NarInfo::parse(&text).unwrap();
        prop_assert_eq!(&parsed, &ni);
        prop_assert_eq!(parsed.render(), text);
        prop_assert_eq!(parsed.fingerprint(), ni.fingerprint());
    }
}
