//! Real Nix as the oracle: our archives equal `nix-store --dump`, our listings equal
//! `nix nar ls`, our NarHash/NarSize equal what Nix recorded, and narinfos written by
//! `nix copy --to file://` parse and render back byte for byte.
//!
//! Needs `nix-store` on PATH (Debian's nix-bin, root, single-user). Without it these
//! tests fail; they never pass silently. The developer's Nix configuration is kept out:
//! every command gets a fresh `NIX_CONF_DIR` and `HOME`.

mod common;

use std::collections::hash_map::RandomState;
use std::fs;
use std::hash::{BuildHasher, Hasher};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Command, Stdio};

use nix_formats::nar;
use nix_formats::{Hash, NarInfo};
use tempfile::TempDir;

/// Isolated Nix: a throwaway configuration and home for every command.
struct Nix {
    dir: TempDir,
}

impl Nix {
    fn new() -> Self {
        let found = Command::new("nix-store")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "these tests need the real nix: `nix-store` is not on PATH \
             (install nix-bin: apt-get install nix-bin)"
        );
        let dir = tempfile::tempdir().unwrap();
        // build-users-group is empty because we build as root without a nixbld group.
        fs::write(
            dir.path().join("nix.conf"),
            "sandbox = false\nsubstituters =\nexperimental-features = nix-command\n\
             build-users-group =\n",
        )
        .unwrap();
        Nix { dir }
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("NIX_CONF_DIR", self.dir.path())
            .env("HOME", self.dir.path())
            .env("XDG_CACHE_HOME", self.dir.path().join("cache"))
            .env_remove("NIX_CONFIG")
            .env_remove("NIX_REMOTE")
            .env_remove("NIX_PATH");
        c
    }

    /// Runs a command to success and returns its stdout.
    fn run(&self, program: &str, args: &[&str]) -> Vec<u8> {
        let out = self.cmd(program).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{program} {} failed ({}):\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    fn run_str(&self, program: &str, args: &[&str]) -> String {
        String::from_utf8(self.run(program, args)).unwrap()
    }

    fn dump(&self, path: &Path) -> Vec<u8> {
        self.run("nix-store", &["--dump", path.to_str().unwrap()])
    }

    /// Builds two fresh store paths (new each run, thanks to the salt): `a` has every
    /// kind of entry, `b` refers to `a` and to itself. Returns their paths.
    fn build_fixtures(&self) -> Vec<String> {
        let salt = format!("{:016x}", RandomState::new().build_hasher().finish());
        let expr = self.dir.path().join("fixtures.nix");
        fs::write(&expr, FIXTURES_NIX).unwrap();
        let out = self.run_str(
            "nix-build",
            &[
                expr.to_str().unwrap(),
                "--no-out-link",
                "--argstr",
                "salt",
                &salt,
            ],
        );
        let paths: Vec<String> = out.lines().map(str::to_string).collect();
        assert_eq!(paths.len(), 2, "{out}");
        paths
    }
}

const FIXTURES_NIX: &str = r#"
{ salt }:
let
  sh = name: deps: cmd: derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" cmd ];
    PATH = "/usr/bin:/bin";
    SALT = salt;
    DEPS = deps;
  };
  a = sh "nix-formats-a" [ ] ''
    mkdir -p $out/bin $out/share/empty $out/B
    echo "hi $SALT" > $out/f
    ln -s f $out/l
    ln -s /nonexistent $out/dangling
    printf '#!/bin/sh\necho hi\n' > $out/bin/hello
    chmod +x $out/bin/hello
    : > $out/empty-file
    head -c 100000 /dev/urandom > $out/share/random.bin
  '';
  b = sh "nix-formats-b" [ a ] ''
    mkdir -p $out
    echo "$DEPS" > $out/deps
    ln -s $out/deps $out/self
  '';
in [ a b ]
"#;

#[test]
fn dump_matches_nix_store_dump() {
    let nix = Nix::new();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("fixture");
    common::fixture_tree(&root);

    // Oddities Nix archives as raw bytes: a Latin-1 name and symlink target.
    let odd = tmp.path().join("odd");
    fs::create_dir(&odd).unwrap();
    fs::write(odd.join(std::ffi::OsStr::from_bytes(b"caf\xe9")), b"x").unwrap();
    symlink(std::ffi::OsStr::from_bytes(b"\xff\xfe"), odd.join("l")).unwrap();

    let top_link = tmp.path().join("top-link");
    symlink("fixture", &top_link).unwrap();

    for path in [
        root.clone(),
        root.join("sizes/s100000"),
        root.join("exec"),
        root.join("link-dangling"),
        root.join("empty-dir"),
        top_link,
        odd,
    ] {
        let want = nix.dump(&path);
        let mut ours = Vec::new();
        let n = nar::dump_path(&path, &mut ours).unwrap();
        assert_eq!(n, ours.len() as u64);
        assert!(
            ours == want,
            "{} differs from nix-store --dump",
            path.display()
        );
        let summary = nar::validate(&want[..]).unwrap();
        assert_eq!(summary.nar_hash, Hash::sha256_of(&want));
    }
}

#[test]
fn listing_matches_nix_nar_ls() {
    let nix = Nix::new();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("fixture");
    common::fixture_tree(&root);
    let file = tmp.path().join("fixture.nar");
    fs::write(&file, nix.dump(&root)).unwrap();

    let listed = nix.run_str(
        "nix",
        &[
            "nar",
            "ls",
            "--json",
            "--recursive",
            file.to_str().unwrap(),
            "/",
        ],
    );
    let (_, ours) = nar::list(fs::File::open(&file).unwrap()).unwrap();
    assert_eq!(
        nar::listing_json(&ours),
        format!("{{\"version\":1,\"root\":{}}}", listed.trim_end())
    );
}

/// Store paths Nix built: our dump, hash and size of each equal Nix's own record.
#[test]
fn store_paths_hash_like_nix() {
    let nix = Nix::new();
    let paths = nix.build_fixtures();
    let mut args = vec!["path-info", "--json"];
    args.extend(paths.iter().map(String::as_str));
    let info: serde_json::Value = serde_json::from_slice(&nix.run("nix", &args)).unwrap();
    let info = info.as_array().unwrap();
    assert_eq!(info.len(), paths.len());
    for entry in info {
        let path = entry["path"].as_str().unwrap();
        let nar_hash: Hash = entry["narHash"].as_str().unwrap().parse().unwrap();
        let nar_size = entry["narSize"].as_u64().unwrap();

        let dumped = nix.dump(Path::new(path));
        let summary = nar::validate(&dumped[..]).unwrap();
        assert_eq!(summary.nar_hash, nar_hash, "{path}");
        assert_eq!(summary.nar_size, nar_size, "{path}");

        let mut ours = Vec::new();
        nar::dump_path(Path::new(path), &mut ours).unwrap();
        assert!(
            ours == dumped,
            "{path}: dump_path differs from nix-store --dump"
        );
    }
}

/// `nix copy --to file://` narinfos: parse, render back byte for byte, and agree with
/// the archives (ours and the ones Nix uploaded). Covers references (including a
/// self-reference), Deriver, Sig, and CA of an added path.
#[test]
fn nix_copy_narinfos_round_trip() {
    let nix = Nix::new();
    let mut paths = nix.build_fixtures();
    let tmp = tempfile::tempdir().unwrap();

    let added = tmp.path().join("added.txt");
    fs::write(
        &added,
        format!("{:x}\n", RandomState::new().build_hasher().finish()),
    )
    .unwrap();
    paths.push(
        nix.run_str("nix-store", &["--add", added.to_str().unwrap()])
            .trim()
            .to_string(),
    );

    let key = tmp.path().join("key.sec");
    fs::write(
        &key,
        nix.run("nix", &["key", "generate-secret", "--key-name", "test-1"]),
    )
    .unwrap();
    nix.run(
        "nix",
        &[
            "store",
            "sign",
            "--key-file",
            key.to_str().unwrap(),
            &paths[1],
        ],
    );

    for (compression, cache) in [("xz", "xz"), ("none", "plain")] {
        let dir = tmp.path().join(cache);
        let to = format!("file://{}?compression={compression}", dir.display());
        let mut args = vec!["copy", "--to", to.as_str()];
        args.extend(paths.iter().map(String::as_str));
        nix.run("nix", &args);

        let mut seen = 0;
        for entry in fs::read_dir(&dir).unwrap() {
            let file = entry.unwrap().path();
            if file.extension().is_none_or(|e| e != "narinfo") {
                continue;
            }
            seen += 1;
            let text = fs::read_to_string(&file).unwrap();
            let ni = NarInfo::parse(&text).unwrap();
            assert_eq!(ni.render(), text, "{}", file.display());
            assert_eq!(ni.compression, compression);
            let full = ni.store_dir.display(&ni.store_path);
            assert_eq!(
                file.file_stem().unwrap().to_str().unwrap(),
                ni.store_path.hash_part()
            );

            let summary = nar::validate(&nix.dump(Path::new(&full))[..]).unwrap();
            assert_eq!(summary.nar_hash, ni.nar_hash, "{full}");
            assert_eq!(summary.nar_size, ni.nar_size, "{full}");

            // FileHash/FileSize are of the file as uploaded.
            let uploaded = fs::read(dir.join(&ni.url)).unwrap();
            assert_eq!(ni.file_hash, Some(Hash::sha256_of(&uploaded)), "{full}");
            assert_eq!(ni.file_size, Some(uploaded.len() as u64), "{full}");
            if compression == "none" {
                assert_eq!(nar::validate(&uploaded[..]).unwrap(), summary);
            }

            if full == paths[1] {
                assert!(ni.references.contains(&ni.store_path), "self-reference");
                assert!(ni.deriver.is_some());
                assert_eq!(ni.sigs.len(), 1);
                assert!(ni.sigs[0].starts_with("test-1:"));
            }
            if full == paths[2] {
                assert!(ni.ca.as_deref().unwrap().starts_with("fixed:r:sha256:"));
            }
        }
        assert_eq!(seen, paths.len(), "{cache}");
    }
}
