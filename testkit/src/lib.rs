//! Helpers for tests that use the real `nix` binary (Debian's `nix-bin`, run as root in
//! single-user mode). Every helper keeps the developer's own Nix configuration out by
//! pointing `NIX_CONF_DIR` at a fresh directory and passing options explicitly.
//!
//! A missing `nix` is a test failure with a clear message, never a silent pass.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use tempfile::TempDir;

/// The isolated Nix configuration every test uses.
pub struct Nix {
    conf: TempDir,
}

fn require_nix() {
    static CHECKED: OnceLock<()> = OnceLock::new();
    CHECKED.get_or_init(|| {
        let ok = Command::new("nix-store")
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(
            ok,
            "the real nix binary is required: install it with `apt-get install nix-bin` \
             (scripts/test does this)"
        );
    });
}

impl Default for Nix {
    fn default() -> Self {
        Self::new()
    }
}

impl Nix {
    pub fn new() -> Self {
        require_nix();
        let conf = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            conf.path().join("nix.conf"),
            "sandbox = false\nsubstituters =\nexperimental-features = nix-command\n\
             require-sigs = true\nbuild-users-group =\nfsync-metadata = false\n",
        )
        .expect("write nix.conf");
        Nix { conf }
    }

    /// A command for one of Nix's programs with the isolated configuration.
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("NIX_CONF_DIR", self.conf.path())
            .env_remove("NIX_CONFIG")
            .env_remove("NIX_REMOTE")
            .env("HOME", self.conf.path())
            .env("XDG_CACHE_HOME", self.conf.path().join("cache"));
        c
    }

    /// Runs a command, panicking with its stderr when it fails; returns stdout.
    pub fn run(&self, program: &str, args: &[&str]) -> String {
        let out = self.cmd(program).args(args).output().expect("spawn nix");
        check(program, args, &out);
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// Builds `count` fixture derivations into the machine's store: a chain where each
    /// depends on the one before (so closures have references), each with a regular
    /// file, an executable, a symlink, a nested directory and one larger file. `salt`
    /// makes the paths unique to a test run. Returns the output paths, roots last.
    pub fn build_fixtures(&self, salt: &str, count: usize) -> Vec<String> {
        let dir = tempfile::tempdir().expect("temp dir");
        let expr = dir.path().join("fixtures.nix");
        std::fs::write(&expr, FIXTURES_NIX).expect("write expression");
        let out = self.run(
            "nix-build",
            &[
                expr.to_str().unwrap(),
                "--no-out-link",
                "--argstr",
                "salt",
                salt,
                "--arg",
                "count",
                &count.to_string(),
            ],
        );
        out.lines().map(str::to_string).collect()
    }

    /// `nix path-info --json` of paths, in the store `store` (None for the default).
    pub fn path_info(&self, store: Option<&str>, paths: &[&str]) -> serde_json::Value {
        let mut args = vec!["path-info", "--json", "--recursive"];
        if let Some(s) = store {
            args.extend(["--store", s]);
        }
        args.extend(paths);
        serde_json::from_str(&self.run("nix", &args)).expect("path-info json")
    }
}

/// Panics with the command line and stderr when `out` is a failure.
pub fn check(program: &str, args: &[&str], out: &Output) {
    assert!(
        out.status.success(),
        "{program} {} failed ({}):\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A random word for salting fixture derivations.
pub fn salt() -> String {
    use rand::Rng;
    let n: u64 = rand::thread_rng().gen();
    format!("{n:016x}")
}

/// A fresh chroot store (`local?root=DIR`): a client's empty Nix store in a temp dir.
pub struct ChrootStore {
    pub dir: TempDir,
}

impl ChrootStore {
    pub fn new() -> Self {
        ChrootStore {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// The store URI for `--store` / `--to`.
    pub fn uri(&self) -> String {
        self.dir.path().display().to_string()
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Where a path of this store is physically.
    pub fn real(&self, full_path: &str) -> PathBuf {
        self.dir.path().join(full_path.trim_start_matches('/'))
    }
}

impl Default for ChrootStore {
    fn default() -> Self {
        Self::new()
    }
}

const FIXTURES_NIX: &str = r#"
{ salt, count }:
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
  fixture = i:
    let prev = if i == 0 then [ ] else [ (fixture (i - 1)) ];
    in sh "fixture-${toString i}" prev ''
      mkdir -p $out/bin $out/share/empty $out/share/doc
      echo "fixture ${toString i} $SALT" > $out/README
      printf '#!/bin/sh\necho fixture ${toString i}\n' > $out/bin/hello
      chmod +x $out/bin/hello
      ln -s ../README $out/share/doc/README
      ln -s /nonexistent $out/share/dangling
      : > $out/share/empty-file
      head -c ${toString (100000 + 4099 * i)} /dev/urandom > $out/share/random.bin
      echo "$DEPS" > $out/deps
    '';
in map fixture (builtins.genList (i: i) count)
"#;
