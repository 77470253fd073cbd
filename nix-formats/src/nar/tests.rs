//! Table tests for the NAR writer and reader: archives assembled token by token, so
//! every rejection is pinned to the one defect it names.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{symlink, PermissionsExt};

use super::*;
use crate::hash::Hash;

/// Builds an archive from its strings; `raw` adds bytes unframed.
#[derive(Default)]
struct Nar(Vec<u8>);

impl Nar {
    fn new() -> Self {
        Nar::default().s(b"nix-archive-1")
    }
    fn s(mut self, s: &[u8]) -> Self {
        self.0.extend_from_slice(&(s.len() as u64).to_le_bytes());
        self.0.extend_from_slice(s);
        self.0.resize(self.0.len() + padding(s.len() as u64), 0);
        self
    }
    fn tokens(self, tokens: &[&str]) -> Self {
        tokens.iter().fold(self, |n, t| n.s(t.as_bytes()))
    }
    fn raw(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(bytes);
        self
    }
    fn file(self, contents: &[u8]) -> Self {
        self.tokens(&["(", "type", "regular", "contents"])
            .s(contents)
            .tokens(&[")"])
    }
    fn entry(self, name: &[u8]) -> Self {
        self.tokens(&["entry", "(", "name"])
            .s(name)
            .tokens(&["node"])
    }
}

fn dir_with(names: &[&[u8]]) -> Vec<u8> {
    let mut n = Nar::new().tokens(&["(", "type", "directory"]);
    for name in names {
        n = n.entry(name).file(b"x").tokens(&[")"]);
    }
    n.tokens(&[")"]).0
}

#[test]
fn minimal_file_parses_with_offset_hash_and_size() {
    let nar = Nar::new().file(b"hello").0;
    let (summary, root) = list(&nar[..]).unwrap();
    assert_eq!(summary.nar_size, nar.len() as u64);
    assert_eq!(summary.nar_hash, Hash::sha256_of(&nar));
    // magic (8+16) + "(" "type" "regular" "contents" (4*16) + length (8)
    let ListingNode::Regular {
        size, nar_offset, ..
    } = root
    else {
        panic!("{root:?}")
    };
    assert_eq!((size, nar_offset), (5, 96));
    assert_eq!(&nar[96..101], b"hello");
    assert_eq!(
        listing_json(&root),
        r#"{"version":1,"root":{"type":"regular","size":5,"narOffset":96}}"#
    );
}

#[test]
fn listing_json_shape() {
    let nar = Nar::new()
        .tokens(&["(", "type", "directory"])
        .entry(b"bin")
        .tokens(&["(", "type", "directory"])
        .entry(b"sh")
        .tokens(&["(", "type", "regular", "executable", "", "contents"])
        .s(b"#!")
        .tokens(&[")", ")", ")", ")"])
        .entry(b"empty")
        .tokens(&["(", "type", "directory", ")", ")"])
        .entry(b"link")
        .tokens(&["(", "type", "symlink", "target", "bin/sh", ")", ")"])
        .tokens(&[")"])
        .0;
    let (_, root) = list(&nar[..]).unwrap();
    let want = serde_json::json!({"version": 1, "root": {"type": "directory", "entries": {
        "bin": {"type": "directory", "entries": {
            "sh": {"type": "regular", "size": 2, "executable": true, "narOffset": 400}}},
        "empty": {"type": "directory", "entries": {}},
        "link": {"type": "symlink", "target": "bin/sh"}}}});
    let got: serde_json::Value = serde_json::from_str(&listing_json(&root)).unwrap();
    assert_eq!(got, want);
    assert_eq!(&nar[400..402], b"#!");
}

/// What is wrong, the archive, and whether the error names that defect.
type Rejection = (&'static str, Vec<u8>, fn(&NarReadError) -> bool);

#[test]
fn rejects_malformed_archives() {
    use NarReadError as E;
    let file = |n: Nar| n.file(b"x").0;
    let sym = |target: &[u8]| {
        Nar::new()
            .tokens(&["(", "type", "symlink", "target"])
            .s(target)
            .tokens(&[")"])
            .0
    };
    let mut bad_pad = Nar::new().file(b"x").0;
    bad_pad[24 + 8 + 1] = 1; // padding of "("
    let mut bad_contents_pad = Nar::new().file(b"x").0;
    bad_contents_pad[96 + 1] = 1;
    let mut huge_name = Nar::new()
        .tokens(&["(", "type", "directory", "entry", "(", "name"])
        .0;
    huge_name.extend_from_slice(&u64::MAX.to_le_bytes());
    let mut huge_token = Nar::new().tokens(&["(", "type"]).0;
    huge_token.extend_from_slice(&(1u64 << 40).to_le_bytes());
    let mut huge_contents = Nar::new().tokens(&["(", "type", "regular", "contents"]).0;
    huge_contents.extend_from_slice(&(1u64 << 62).to_le_bytes());
    let long_name = vec![b'a'; MAX_STRING_LEN as usize + 1];

    let cases: Vec<Rejection> = vec![
        ("empty input", vec![], |e| matches!(e, E::Truncated)),
        (
            "wrong magic",
            file(Nar::default().s(b"nix-archive-2")),
            |e| matches!(e, E::BadMagic),
        ),
        (
            "magic length",
            file(Nar::default().s(b"nix-archive")),
            |e| matches!(e, E::BadMagic),
        ),
        ("not a NAR", b"\x1f\x8b\x08\x00 gzip, say".to_vec(), |e| {
            matches!(e, E::BadMagic)
        }),
        (
            "unknown type",
            Nar::new().tokens(&["(", "type", "fifo", ")"]).0,
            |e| matches!(e, E::Malformed(_)),
        ),
        (
            "missing (",
            Nar::new().tokens(&["type", "regular"]).0,
            |e| matches!(e, E::Malformed(_)),
        ),
        (
            "executable marker with a value",
            Nar::new()
                .tokens(&["(", "type", "regular", "executable", "yes", "contents"])
                .s(b"")
                .tokens(&[")"])
                .0,
            |e| matches!(e, E::Malformed(_)),
        ),
        (
            "executable after contents (Nix never writes it)",
            Nar::new()
                .tokens(&["(", "type", "regular", "contents"])
                .s(b"")
                .tokens(&["executable", "", ")"])
                .0,
            |e| matches!(e, E::Malformed(_)),
        ),
        (
            "regular without contents",
            Nar::new().tokens(&["(", "type", "regular", ")"]).0,
            |e| matches!(e, E::Malformed(_)),
        ),
        (
            "unknown token in a directory",
            Nar::new()
                .tokens(&["(", "type", "directory", "entries", ")"])
                .0,
            |e| matches!(e, E::Malformed(_)),
        ),
        ("unsorted", dir_with(&[b"b", b"a"]), |e| {
            matches!(e, E::Unsorted)
        }),
        ("duplicate", dir_with(&[b"a", b"a"]), |e| {
            matches!(e, E::Unsorted)
        }),
        ("upper case sorts first", dir_with(&[b"a", b"B"]), |e| {
            matches!(e, E::Unsorted)
        }),
        ("empty name", dir_with(&[b""]), |e| matches!(e, E::BadName)),
        ("dot", dir_with(&[b"."]), |e| matches!(e, E::BadName)),
        ("dot dot", dir_with(&[b".."]), |e| matches!(e, E::BadName)),
        ("slash", dir_with(&[b"a/b"]), |e| matches!(e, E::BadName)),
        ("NUL", dir_with(&[b"a\0b"]), |e| matches!(e, E::BadName)),
        ("name too long", dir_with(&[&long_name]), |e| {
            matches!(e, E::TooLong)
        }),
        ("hostile name length", huge_name, |e| {
            matches!(e, E::TooLong)
        }),
        ("hostile token length", huge_token, |e| {
            matches!(e, E::Malformed(_))
        }),
        ("hostile contents length", huge_contents, |e| {
            matches!(e, E::Truncated)
        }),
        ("empty symlink target", sym(b""), |e| {
            matches!(e, E::BadTarget)
        }),
        ("NUL in symlink target", sym(b"a\0"), |e| {
            matches!(e, E::BadTarget)
        }),
        ("nonzero padding", bad_pad, |e| matches!(e, E::BadPadding)),
        ("nonzero contents padding", bad_contents_pad, |e| {
            matches!(e, E::BadPadding)
        }),
        ("trailing byte", Nar::new().file(b"x").raw(b"\0").0, |e| {
            matches!(e, E::TrailingData)
        }),
        (
            "second archive appended",
            Nar::new().file(b"x").raw(&Nar::new().file(b"y").0).0,
            |e| matches!(e, E::TrailingData),
        ),
        (
            "directory not closed",
            Nar::new().tokens(&["(", "type", "directory"]).0,
            |e| matches!(e, E::Truncated),
        ),
    ];
    for (what, nar, ok) in cases {
        let v = validate(&nar[..]).expect_err(what);
        assert!(ok(&v), "{what}: validate gave {v:?}");
        let l = list(&nar[..]).expect_err(what);
        assert!(ok(&l), "{what}: list gave {l:?}");
    }
}

#[test]
fn every_truncation_is_rejected() {
    let nar = Nar::new()
        .tokens(&["(", "type", "directory"])
        .entry(b"a")
        .file(b"0123456789")
        .tokens(&[")"])
        .entry(b"b")
        .tokens(&["(", "type", "symlink", "target", "a", ")", ")", ")"])
        .0;
    validate(&nar[..]).unwrap();
    for len in 0..nar.len() {
        let err = validate(&nar[..len]).expect_err("prefix must fail");
        assert!(matches!(err, NarReadError::Truncated), "{len}: {err:?}");
    }
}

fn nested(depth: usize) -> Vec<u8> {
    let mut n = Nar::new();
    for _ in 0..depth {
        n = n.tokens(&["(", "type", "directory"]).entry(b"d");
    }
    n = n.file(b"deep");
    for _ in 0..depth {
        n = n.tokens(&[")", ")"]);
    }
    n.0
}

#[test]
fn nesting_is_capped() {
    // The deepest allowed listing drops and serialises on a test thread's stack.
    let (_, root) = list(&nested(MAX_DEPTH)[..]).unwrap();
    assert!(listing_json(&root).contains(r#""size":4"#));
    drop(root);
    let err = validate(&nested(MAX_DEPTH + 1)[..]).unwrap_err();
    assert!(matches!(err, NarReadError::TooDeep), "{err:?}");
}

#[test]
fn names_compare_as_bytes() {
    // Byte order, not locale or Unicode order: "B" < "a" < "a-b" < "ab" < "é".
    let names: [&[u8]; 5] = [b"B", b"a", b"a-b", b"ab", "é".as_bytes()];
    validate(&dir_with(&names)[..]).unwrap();
    // Non-UTF-8 names are valid archives (Nix writes them) but have no JSON listing.
    let latin1 = dir_with(&[b"caf\xe9"]);
    validate(&latin1[..]).unwrap();
    assert!(matches!(list(&latin1[..]), Err(NarReadError::NonUtf8)));
}

#[test]
fn reader_events_and_contents() {
    let nar = Nar::new()
        .tokens(&["(", "type", "directory"])
        .entry(b"a")
        .file(b"first file")
        .tokens(&[")"])
        .entry(b"b")
        .file(b"second")
        .tokens(&[")", ")"])
        .0;
    let mut r = NarReader::new(&nar[..]);
    assert_eq!(
        r.next_event().unwrap(),
        Some(NarEvent::Node {
            name: None,
            node: NarNode::Directory
        })
    );
    let Some(NarEvent::Node {
        name: Some(name),
        node: NarNode::Regular { size: 10, .. },
    }) = r.next_event().unwrap()
    else {
        panic!("expected file a")
    };
    assert_eq!(name, b"a");
    // Read part of a, then move on: the rest is skipped (and hashed).
    let mut buf = [0u8; 5];
    assert_eq!(r.read_contents(&mut buf).unwrap(), 5);
    assert_eq!(&buf, b"first");
    let Some(NarEvent::Node {
        node: NarNode::Regular { size: 6, .. },
        ..
    }) = r.next_event().unwrap()
    else {
        panic!("expected file b")
    };
    let mut contents = Vec::new();
    io::copy(&mut r.contents(), &mut contents).unwrap();
    assert_eq!(contents, b"second");
    assert_eq!(r.read_contents(&mut buf).unwrap(), 0);
    assert_eq!(r.next_event().unwrap(), Some(NarEvent::EndDirectory));
    assert_eq!(r.next_event().unwrap(), None);
    assert_eq!(r.next_event().unwrap(), None);
    assert_eq!(r.position(), nar.len() as u64);
    let summary = r.finish().unwrap();
    assert_eq!(summary.nar_hash, Hash::sha256_of(&nar));
}

#[test]
fn reader_is_poisoned_after_an_error() {
    let nar = dir_with(&[b"b", b"a"]);
    let mut r = NarReader::new(&nar[..]);
    loop {
        match r.next_event() {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("unsorted archive accepted"),
            Err(e) => {
                assert!(matches!(e, NarReadError::Unsorted));
                break;
            }
        }
    }
    assert!(matches!(r.next_event(), Err(NarReadError::Poisoned)));
    assert!(matches!(r.finish(), Err(NarReadError::Poisoned)));
}

fn dump(path: &std::path::Path) -> Vec<u8> {
    let mut out = Vec::new();
    let n = dump_path(path, &mut out).unwrap();
    assert_eq!(n, out.len() as u64);
    out
}

#[test]
fn writer_table() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path();
    let mode = |name: &str, mode: u32| {
        fs::set_permissions(p.join(name), fs::Permissions::from_mode(mode)).unwrap()
    };

    fs::write(p.join("plain"), b"hello").unwrap();
    mode("plain", 0o644);
    assert_eq!(dump(&p.join("plain")), Nar::new().file(b"hello").0);

    // Only the owner's x bit counts, as in Nix's dumpPath.
    for (m, exec) in [(0o744, true), (0o500, true), (0o654, false), (0o645, false)] {
        fs::write(p.join("x"), b"").unwrap();
        mode("x", m);
        let kind: &[&str] = if exec {
            &["(", "type", "regular", "executable", "", "contents"]
        } else {
            &["(", "type", "regular", "contents"]
        };
        let want = Nar::new().tokens(kind).s(b"").tokens(&[")"]).0;
        assert_eq!(dump(&p.join("x")), want, "mode {m:o}");
    }

    // A top-level symlink is archived as a link, not followed; dangling is fine.
    symlink("does/not/exist", p.join("dangling")).unwrap();
    let want = Nar::new()
        .tokens(&["(", "type", "symlink", "target", "does/not/exist", ")"])
        .0;
    assert_eq!(dump(&p.join("dangling")), want);

    // Entries in byte order of their names.
    let d = p.join("d");
    fs::create_dir(&d).unwrap();
    for name in ["a-b", "B", "a", "ab"] {
        fs::write(d.join(name), b"x").unwrap();
        fs::set_permissions(d.join(name), fs::Permissions::from_mode(0o444)).unwrap();
    }
    assert_eq!(dump(&d), dir_with(&[b"B", b"a", b"a-b", b"ab"]));

    let empty = p.join("empty");
    fs::create_dir(&empty).unwrap();
    assert_eq!(
        dump(&empty),
        Nar::new().tokens(&["(", "type", "directory", ")"]).0
    );
}

#[test]
fn writer_rejects_sockets_and_missing_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let err = dump_path(&sock, &mut Vec::new()).unwrap_err();
    assert!(matches!(err, NarWriteError::UnsupportedType(ref p) if *p == sock));
    let missing = tmp.path().join("missing");
    let err = dump_path(&missing, &mut Vec::new()).unwrap_err();
    assert!(matches!(err, NarWriteError::Io { ref path, .. } if *path == missing));
}

/// Records the largest single write and can refuse writes after a budget.
struct Probe {
    max_write: usize,
    total: usize,
    budget: usize,
}

#[derive(Debug)]
struct Refused;
impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("refused")
    }
}
impl std::error::Error for Refused {}

impl Write for Probe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.total + buf.len() > self.budget {
            return Err(io::Error::other(Refused));
        }
        self.max_write = self.max_write.max(buf.len());
        self.total += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn writer_streams_in_bounded_chunks_and_passes_output_errors_through() {
    let tmp = tempfile::tempdir().unwrap();
    let big = tmp.path().join("big");
    fs::write(&big, vec![0xa5u8; 3 << 20]).unwrap();
    let mut probe = Probe {
        max_write: 0,
        total: 0,
        budget: usize::MAX,
    };
    let n = dump_path(&big, &mut probe).unwrap();
    assert_eq!(n as usize, probe.total);
    assert!(probe.max_write <= 64 * 1024, "{}", probe.max_write);

    // The caller's own error comes back untouched, so it can tell it apart.
    let mut probe = Probe {
        max_write: 0,
        total: 0,
        budget: 100_000,
    };
    let err = dump_path(&big, &mut probe).unwrap_err();
    let NarWriteError::Output(io) = err else {
        panic!("{err:?}")
    };
    assert!(io.get_ref().is_some_and(|e| e.is::<Refused>()));
}

/// Takes the contents of files from `min` bytes up (recording where they fell in the
/// stream), or hands them back when `hand_back` is set.
struct Taker {
    out: Vec<u8>,
    min: u64,
    hand_back: bool,
    taken: Vec<(usize, u64)>,
}

impl Write for Taker {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl NarOutput for Taker {
    fn takes_contents(&self, size: u64) -> bool {
        size >= self.min
    }
    fn file_contents(&mut self, mut file: fs::File, size: u64) -> io::Result<Option<fs::File>> {
        if self.hand_back {
            return Ok(Some(file));
        }
        self.taken.push((self.out.len(), size));
        io::Read::read_to_end(&mut file, &mut self.out)?;
        Ok(None)
    }
}

#[test]
fn an_output_that_takes_file_contents_gets_them_in_place() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    fs::create_dir_all(root.join("sub")).unwrap();
    fs::write(root.join("big"), vec![7u8; 100_001]).unwrap();
    fs::write(root.join("small"), b"tiny").unwrap();
    fs::write(root.join("sub/also-big"), vec![9u8; 70_000]).unwrap();
    fs::write(root.join("zero"), b"").unwrap();
    let want = dump(&root);
    for hand_back in [false, true] {
        let mut t = Taker {
            out: Vec::new(),
            min: 1000,
            hand_back,
            taken: Vec::new(),
        };
        let n = dump_path_to(&root, &mut t).unwrap();
        assert_eq!(n, want.len() as u64, "the count includes taken bytes");
        assert!(t.out == want, "hand_back {hand_back}: not the same archive");
        if hand_back {
            assert!(t.taken.is_empty());
        } else {
            // Both large files, each right after its length field, nothing else.
            assert_eq!(t.taken.len(), 2, "{:?}", t.taken);
            for (at, size) in t.taken {
                assert_eq!(want[at - 8..at], size.to_le_bytes());
            }
        }
    }
}
