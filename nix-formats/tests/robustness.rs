//! Fuzz-style robustness, bounded so it runs with the other tests: mutations of the
//! golden archives and narinfos (the seed corpus), token soup that follows the NAR
//! grammar loosely, and plain garbage. Nothing may panic, and what is accepted must make
//! sense:
//!
//! - an accepted archive hashes to the sha256 of its bytes, `list` agrees with
//!   `validate`, and it is canonical: restored to disk and dumped again, it gives back the
//!   same bytes (so one tree has one NarHash);
//! - an accepted narinfo survives render → parse unchanged.
//!
//! `CAIRN_FUZZ_SEED=<n>` replays another run; failures print the seed and case.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use nix_formats::nar::{self, NarEvent, NarNode, NarReadError, NarReader};
use nix_formats::{Hash, NarInfo};

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        let seed = std::env::var("CAIRN_FUZZ_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x5eed_cafe_f00d_d00d);
        Rng(seed | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn seed_nars() -> Vec<Vec<u8>> {
    [
        "fixture.nar",
        "golden-a.nar",
        "golden-b.nar",
        "added.txt.nar",
    ]
    .iter()
    .map(|n| fs::read(common::golden(n)).unwrap())
    .collect()
}

/// One random edit, biased towards the places a parser can go wrong: length fields
/// (aligned u64s), padding, and the end of the input.
fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    let len = v.len();
    // Stacked edits can leave too little for the word-aligned ones; then insert.
    let op = if len < 16 { 3 } else { rng.below(8) };
    match op {
        0 => {
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
        }
        1 => {
            let interesting = [
                0,
                1,
                7,
                8,
                9,
                13,
                4096,
                4097,
                1 << 32,
                u64::MAX,
                u64::MAX / 2,
                len as u64,
            ];
            let at = rng.below(len / 8) * 8;
            let value = *rng.pick(&interesting);
            v[at..at + 8].copy_from_slice(&value.to_le_bytes());
        }
        2 => v.truncate(rng.below(len)),
        3 => {
            let at = rng.below(len + 1);
            let n = 1 + rng.below(16);
            let junk: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            v.splice(at..at, junk);
        }
        4 => {
            let at = rng.below(len);
            let end = (at + 1 + rng.below(64)).min(len);
            v.drain(at..end);
        }
        5 => {
            // Copy an aligned block elsewhere: whole tokens, shuffled structure.
            let from = rng.below(len / 8) * 8;
            let n = 8 * (1 + rng.below(8));
            let block: Vec<u8> = v[from..(from + n).min(len)].to_vec();
            let to = rng.below(len / 8) * 8;
            v.splice(to..to, block);
        }
        6 => v.extend((0..1 + rng.below(9)).map(|_| rng.next() as u8)),
        _ => {
            // Swap two aligned words.
            let (a, b) = (rng.below(len / 8) * 8, rng.below(len / 8) * 8);
            for k in 0..8 {
                v.swap(a + k, b + k);
            }
        }
    }
    v
}

/// Writes an accepted archive out as files, the way `nix-store --restore` would.
fn restore(nar: &[u8], root: &Path) {
    let mut reader = NarReader::new(nar);
    let mut dirs: Vec<PathBuf> = Vec::new();
    while let Some(event) = reader.next_event().unwrap() {
        let NarEvent::Node { name, node } = event else {
            dirs.pop();
            continue;
        };
        let path = match (dirs.last(), name) {
            (Some(dir), Some(name)) => dir.join(OsStr::from_bytes(&name)),
            _ => root.to_path_buf(),
        };
        match node {
            NarNode::Regular { executable, .. } => {
                let mut f = fs::File::create(&path).unwrap();
                std::io::copy(&mut reader.contents(), &mut f).unwrap();
                let mode = if executable { 0o755 } else { 0o644 };
                fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            }
            NarNode::Symlink { target } => symlink(OsStr::from_bytes(&target), &path).unwrap(),
            NarNode::Directory => {
                fs::create_dir(&path).unwrap();
                dirs.push(path);
            }
        }
    }
    reader.finish().unwrap();
}

/// Checks one candidate archive; returns whether it was accepted.
fn check_nar(nar: &[u8], restores_left: &mut usize, what: &dyn Fn() -> String) -> bool {
    let validated = nar::validate(nar);
    let listed = nar::list(nar);
    let summary = match (validated, listed) {
        (Err(_), Err(_)) => return false,
        (Ok(s), Ok((l, _))) => {
            assert_eq!(s, l, "{}", what());
            s
        }
        (Ok(s), Err(NarReadError::NonUtf8)) => s,
        (v, l) => panic!("validate and list disagree: {v:?} / {l:?}\n{}", what()),
    };
    assert_eq!(summary.nar_size, nar.len() as u64, "{}", what());
    assert_eq!(summary.nar_hash, Hash::sha256_of(nar), "{}", what());
    if *restores_left > 0 {
        *restores_left -= 1;
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        restore(nar, &root);
        let mut again = Vec::new();
        nar::dump_path(&root, &mut again).unwrap();
        assert!(again == nar, "accepted a non-canonical archive\n{}", what());
    }
    true
}

#[test]
fn mutated_archives() {
    let mut rng = Rng::new();
    let seed = rng.0;
    let seeds = seed_nars();
    let (mut accepted, mut restores_left) = (0, 300);
    for case in 0..4000 {
        let base = rng.pick(&seeds).clone();
        // Sometimes stack edits, to get past the first check that fails.
        let mut nar = mutate(&mut rng, &base);
        for _ in 0..rng.below(3) {
            if !nar.is_empty() {
                nar = mutate(&mut rng, &nar);
            }
        }
        let what = || format!("seed {seed:#x}, case {case}");
        if check_nar(&nar, &mut restores_left, &what) {
            accepted += 1;
        }
    }
    // Edits inside file contents keep an archive valid; make sure some did, so the
    // acceptance checks above ran.
    assert!(accepted > 100, "only {accepted} mutants were valid");
}

fn put(nar: &mut Vec<u8>, s: &[u8]) {
    nar.extend_from_slice(&(s.len() as u64).to_le_bytes());
    nar.extend_from_slice(s);
    nar.resize(nar.len().div_ceil(8) * 8, 0);
}

#[test]
fn token_soup() {
    let vocabulary: &[&[u8]] = &[
        b"(",
        b")",
        b"type",
        b"regular",
        b"symlink",
        b"directory",
        b"executable",
        b"",
        b"contents",
        b"target",
        b"entry",
        b"name",
        b"node",
        b"a",
        b"b",
        b".",
        b"x/y",
        b"nix-archive-1",
    ];
    let mut rng = Rng::new();
    let seed = rng.0;
    let mut restores_left = 300;
    for case in 0..3000 {
        let mut nar = Vec::new();
        let tokens = 1 + rng.below(40);
        put(&mut nar, b"nix-archive-1");
        // A plausible start makes the soup reach deeper states.
        if rng.below(4) > 0 {
            for t in [&b"("[..], b"type", b"directory"] {
                put(&mut nar, t);
            }
        }
        for _ in 0..tokens {
            put(&mut nar, rng.pick::<&[u8]>(vocabulary));
        }
        let what = || format!("seed {seed:#x}, case {case}");
        check_nar(&nar, &mut restores_left, &what);
    }
}

#[test]
fn garbage() {
    let mut rng = Rng::new();
    for _ in 0..2000 {
        let len = rng.below(256);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if rng.below(2) == 0 {
            // With a valid magic, so the garbage reaches the parser proper.
            let mut nar = (13u64).to_le_bytes().to_vec();
            nar.extend_from_slice(b"nix-archive-1\0\0\0");
            nar.append(&mut bytes);
            bytes = nar;
        }
        // The smallest archive (an empty file) is 112 bytes.
        assert!(nar::validate(&bytes[..]).is_err());
        let _ = nar::list(&bytes[..]);
        let _ = NarInfo::parse(&String::from_utf8_lossy(&bytes));
    }
}

fn mutate_text(rng: &mut Rng, text: &str) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    match rng.below(8) {
        0..=2 => {
            let mut bytes = mutate(rng, text.as_bytes());
            if rng.below(2) == 0 {
                // Keep it ASCII-ish so more mutants get past UTF-8 and into the parser.
                bytes.retain(|b| b.is_ascii());
            }
            return String::from_utf8_lossy(&bytes).into_owned();
        }
        3 => {
            let i = rng.below(lines.len());
            let line = lines[i].clone();
            lines.insert(rng.below(lines.len() + 1), line);
        }
        4 => {
            lines.remove(rng.below(lines.len()));
        }
        5 => {
            let (a, b) = (rng.below(lines.len()), rng.below(lines.len()));
            lines.swap(a, b);
        }
        6 => {
            let i = rng.below(lines.len());
            let replacement = *rng.pick(&[": ", ":", " : ", ":  ", "", ": \n"]);
            lines[i] = lines[i].replacen(": ", replacement, 1);
        }
        _ => {
            let i = rng.below(lines.len());
            let cut = rng.below(lines[i].len() + 1);
            if lines[i].is_char_boundary(cut) {
                lines[i].truncate(cut);
            }
        }
    }
    let mut out = lines.join("\n");
    if rng.below(8) > 0 {
        out.push('\n');
    }
    out
}

#[test]
fn mutated_narinfos() {
    let seeds: Vec<String> = fs::read_dir(common::golden(""))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "narinfo"))
        .map(|p| fs::read_to_string(p).unwrap())
        .collect();
    assert_eq!(seeds.len(), 4);
    let mut rng = Rng::new();
    let seed = rng.0;
    let mut accepted = 0;
    for case in 0..4000 {
        let base = rng.pick(&seeds).clone();
        let mut text = mutate_text(&mut rng, &base);
        if rng.below(3) == 0 && !text.is_empty() {
            text = mutate_text(&mut rng, &text);
        }
        if let Ok(ni) = NarInfo::parse(&text) {
            accepted += 1;
            let rendered = ni.render();
            let again = NarInfo::parse(&rendered)
                .unwrap_or_else(|e| panic!("seed {seed:#x} case {case}: {e}\n{rendered}"));
            assert_eq!(again, ni, "seed {seed:#x} case {case}\n{text}");
            assert_eq!(again.render(), rendered);
        }
    }
    assert!(accepted > 100, "only {accepted} mutants parsed");
}
