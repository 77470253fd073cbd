//! `cachectl push` and `cachectl uploader` end to end against an in-process cairnd that
//! serves only what was uploaded: a pushed closure substitutes into a fresh store with
//! signatures checked by a separate Nix client; a second push sends nothing; a bad
//! token fails loudly; the uploader drains what a real post-build-hook queued, moves
//! refused entries aside, and survives a SIGKILL mid-NAR, resuming where it stopped.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use cache_server::config::FileConfig;
use cairn_tests::{Server, TestKey};
use nix_formats::Hash;
use serde_json::Value;
use testkit::Nix;

const PUSH: &str = "cairn_push_token_for_push_tests_0123456789ab";
const READ: &str = "cairn_read_token_for_push_tests_0123456789ab";

struct Setup {
    nix: Nix,
    key: TestKey,
    server: Server,
    secrets: tempfile::TempDir,
}

/// A server that serves only its cache store (this machine's /nix/store holds every
/// path we push, so serving it would hide whether the upload worked), with a push and
/// a read token.
fn setup(tweak: impl FnOnce(&mut FileConfig)) -> Setup {
    let key = TestKey::new("cairn-push-1");
    let secrets = tempfile::tempdir().unwrap();
    let mut cfg = FileConfig {
        serve_local_store: Some(false),
        sign_key_paths: vec![key.secret_file.clone()],
        tokens: vec![
            cairn_tests::token_file(secrets.path(), "ci", PUSH, &["push"]),
            cairn_tests::token_file(secrets.path(), "reader", READ, &["read"]),
        ],
        ..Default::default()
    };
    tweak(&mut cfg);
    Setup {
        nix: Nix::new(),
        key,
        server: Server::start(cfg),
        secrets,
    }
}

impl Setup {
    fn token(&self, name: &str) -> PathBuf {
        self.secrets.path().join(name)
    }

    /// cachectl with the environment cleaned of anything that would change its mind.
    fn cachectl(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(cairn_tests::cachectl_bin());
        for var in [
            "CAIRN_TOKEN",
            "CAIRN_URL",
            "CAIRN_QUEUE_DIR",
            "CAIRN_LOG",
            "http_proxy",
            "https_proxy",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "all_proxy",
        ] {
            cmd.env_remove(var);
        }
        cmd.args(args);
        cmd
    }

    fn push(&self, token: &str, paths: &[&str]) -> Output {
        let url = self.server.url();
        let token = self.token(token);
        let mut args = vec![
            "push",
            "--cache",
            &url,
            "--token-file",
            token.to_str().unwrap(),
            "--json",
        ];
        args.extend(paths);
        self.cachectl(&args).output().unwrap()
    }

    fn uploader(&self, queue: &Path, extra: &[&str]) -> Command {
        self.uploader_to(&self.server.url(), queue, extra)
    }

    fn uploader_to(&self, url: &str, queue: &Path, extra: &[&str]) -> Command {
        let url = url.to_string();
        let token = self.token("ci");
        let mut args = vec![
            "uploader",
            "--queue",
            queue.to_str().unwrap(),
            "--cache",
            &url,
            "--token-file",
            token.to_str().unwrap(),
        ];
        args.extend(extra);
        self.cachectl(&args)
    }

    fn narinfo_status(&self, store_path: &str) -> u16 {
        let base = store_path.trim_start_matches("/nix/store/");
        let url = format!("{}/{}.narinfo", self.server.url(), &base[..32]);
        cairn_tests::rt().block_on(async {
            cairn_tests::http_client()
                .get(&url)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    }

    /// Substitutes `root`'s closure into a fresh store from a separate Nix client with
    /// the cache's key trusted, and checks every NarHash against the local store.
    fn substitute(&self, root: &str) {
        let (_dest, got) = cairn_tests::substitute(&self.server.url(), &self.key.public, root);
        let want = self.nix.path_info(None, &[root]);
        assert_eq!(hashes(&got), hashes(&want));
    }
}

fn hashes(v: &Value) -> Vec<(String, Hash)> {
    let mut h: Vec<(String, Hash)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["path"].as_str().unwrap().to_string(),
                e["narHash"].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect();
    h.sort();
    h
}

fn summary(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "cachectl push failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not one JSON object ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn queue_entries(queue: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = match std::fs::read_dir(queue) {
        Ok(rd) => rd
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "json"))
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

#[test]
fn push_uploads_a_closure_that_a_fresh_store_substitutes() {
    let s = setup(|_| {});
    let paths = s.nix.build_fixtures(&testkit::salt(), 3);
    let root = paths.last().unwrap();

    let first = summary(&s.push("ci", &[root]));
    assert_eq!(first["considered"], 3, "{first}");
    assert_eq!(first["uploaded"], 3, "{first}");
    assert_eq!(first["already_present"], 0, "{first}");
    assert_eq!(first["failed"], 0, "{first}");
    let nar_bytes: u64 = s
        .nix
        .path_info(None, &[root])
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["narSize"].as_u64().unwrap())
        .sum();
    assert_eq!(first["nar_bytes"], nar_bytes);
    assert!(first["wire_bytes"].as_u64().unwrap() > 0);
    for p in &paths {
        assert_eq!(s.narinfo_status(p), 200, "{p}");
    }
    s.substitute(root);
}

#[test]
fn a_second_push_uploads_nothing() {
    let s = setup(|_| {});
    let paths = s.nix.build_fixtures(&testkit::salt(), 2);
    let root = paths.last().unwrap();
    assert_eq!(summary(&s.push("ci", &[root]))["uploaded"], 2);

    let again = summary(&s.push("ci", &[root]));
    assert_eq!(again["uploaded"], 0, "{again}");
    assert_eq!(again["already_present"], 2, "{again}");
    assert_eq!(again["wire_bytes"], 0, "{again}");
    assert_eq!(again["failed"], 0, "{again}");
}

#[test]
fn push_with_a_bad_token_fails() {
    let s = setup(|_| {});
    let paths = s.nix.build_fixtures(&testkit::salt(), 1);
    std::fs::write(s.token("bad"), "cairn_not_a_token\n").unwrap();
    for token in ["bad", "reader"] {
        let out = s.push(token, &[&paths[0]]);
        assert!(!out.status.success(), "{token}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let want = if token == "bad" { "401" } else { "403" };
        assert!(stderr.contains(want), "{token}: {stderr}");
        assert!(
            !stderr.contains("cairn_not_a_token"),
            "the token is never printed"
        );
        assert!(stderr.lines().all(|l| l.len() < 400), "{stderr}");
        assert_eq!(s.narinfo_status(&paths[0]), 404);
    }

    let out = s
        .cachectl(&["push", "--cache", &s.server.url(), &paths[0]])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no token"));
}

const TWO_OUTPUTS_NIX: &str = r#"
{ salt, size }:
derivation {
  name = "queued";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  outputs = [ "out" "doc" ];
  PATH = "/usr/bin:/bin";
  args = [ "-c" "mkdir $out; head -c ${toString size} /dev/urandom > $out/data; echo $SALT > $doc" ];
  SALT = salt;
}
"#;

/// Builds [`TWO_OUTPUTS_NIX`] with a post-build-hook that queues into `queue`; returns
/// both output paths.
fn build_with_hook(nix: &Nix, dir: &Path, queue: &Path, size: u64) -> Vec<String> {
    let wrapper = dir.join("post-build-hook");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec '{}' hook --queue '{}'\n",
            cairn_tests::cachectl_bin().display(),
            queue.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let expr = dir.join("queued.nix");
    std::fs::write(&expr, TWO_OUTPUTS_NIX).unwrap();
    let out = nix.run(
        "nix-build",
        &[
            expr.to_str().unwrap(),
            "--no-out-link",
            "--argstr",
            "salt",
            &testkit::salt(),
            "--arg",
            "size",
            &size.to_string(),
            "--option",
            "post-build-hook",
            wrapper.to_str().unwrap(),
        ],
    );
    let drv = nix.run("nix-store", &["--query", "--deriver", out.trim()]);
    let outputs = nix.run("nix-store", &["--query", "--outputs", drv.trim()]);
    outputs.lines().map(str::to_string).collect()
}

#[test]
fn uploader_drains_what_the_hook_queued_and_sets_refused_entries_aside() {
    let s = setup(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let queue = dir.path().join("queue");
    let outputs = build_with_hook(&s.nix, dir.path(), &queue, 10_000);
    assert_eq!(outputs.len(), 2);
    let fixtures = s.nix.build_fixtures(&testkit::salt(), 2);
    // An entry through the hook with OUT_PATHS, and one the cache can never take: a
    // path this store does not have.
    let hook = |paths: &str| {
        let out = s
            .cachectl(&["hook", "--queue", queue.to_str().unwrap()])
            .env("OUT_PATHS", paths)
            .env_remove("DRV_PATH")
            .output()
            .unwrap();
        assert!(out.status.success() && out.stderr.is_empty(), "{out:?}");
    };
    hook(fixtures.last().unwrap());
    hook("/nix/store/00000000000000000000000000000000-not-here");
    assert_eq!(queue_entries(&queue).len(), 3);

    let out = s
        .uploader(&queue, &["--drain", "--timeout", "120s"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {stderr}", out.status);
    assert!(queue_entries(&queue).is_empty(), "{stderr}");
    for p in outputs.iter().chain(&fixtures) {
        assert_eq!(s.narinfo_status(p), 200, "{p}");
    }
    let failed = queue_entries(&queue.join("failed"));
    assert_eq!(failed.len(), 1, "{stderr}");
    let reason = std::fs::read_to_string(format!("{}.reason", failed[0].display())).unwrap();
    assert!(reason.contains("not-here"), "{reason}");
    assert!(stderr.contains("moved to failed/"), "{stderr}");
    s.substitute(fixtures.last().unwrap());
}

#[test]
fn uploader_drain_times_out_naming_what_is_left() {
    let s = setup(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let queue = dir.path().join("queue");
    let fixtures = s.nix.build_fixtures(&testkit::salt(), 1);
    let out = s
        .cachectl(&["hook", "--queue", queue.to_str().unwrap()])
        .env("OUT_PATHS", &fixtures[0])
        .output()
        .unwrap();
    assert!(out.status.success());
    // Nothing listens here: every round fails transiently and the entry stays.
    let started = Instant::now();
    let out = s
        .cachectl(&[
            "uploader",
            "--queue",
            queue.to_str().unwrap(),
            "--cache",
            "http://127.0.0.1:9",
            "--token-file",
            s.token("ci").to_str().unwrap(),
            "--drain",
            "--timeout",
            "3s",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(started.elapsed() < Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("not drained") && last.contains(&fixtures[0]),
        "{stderr}"
    );
    assert_eq!(queue_entries(&queue).len(), 1, "the entry is kept");
}

/// The cache's answer to creating a session for `path`: creating again is how the
/// protocol reports how far an upload got.
fn session_offset(s: &Setup, info: &Value) -> u64 {
    let body = serde_json::json!({
        "store_path": info["path"],
        "nar_hash": info["narHash"],
        "nar_size": info["narSize"],
        "references": info["references"],
        "compression": "zstd",
    });
    let url = format!("{}/api/v1/uploads", s.server.url());
    let v: Value = cairn_tests::rt().block_on(async {
        cairn_tests::http_client()
            .post(&url)
            .bearer_auth(PUSH)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    if v["complete"] == true {
        // Finished already: as far as it can get.
        return info["narSize"].as_u64().unwrap();
    }
    v["nar_offset"].as_u64().unwrap_or(0)
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn uploader_killed_mid_nar_resumes_and_finishes() {
    const PART: u64 = 1 << 20;
    let s = setup(|c| c.upload_part_bytes = Some(PART));
    let dir = tempfile::tempdir().unwrap();
    let queue = dir.path().join("queue");
    // 12 MiB of random data through a 2 MiB/s link: the kill lands mid-NAR.
    let outputs = build_with_hook(&s.nix, dir.path(), &queue, 12 << 20);
    let link = cairn_tests::SlowLink::start(s.server.addr, 2 << 20);
    let big = outputs.iter().find(|p| !p.ends_with("-doc")).unwrap();
    let info = s.nix.path_info(None, &[big])[0].clone();
    let nar_size = info["narSize"].as_u64().unwrap();

    let mut first = KillOnDrop(
        s.uploader_to(&link.url(), &queue, &["--jobs", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    cairn_tests::wait_for(Duration::from_secs(120), "a few parts to arrive", || {
        session_offset(&s, &info) >= 2 * PART
    });
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let before = session_offset(&s, &info);
    assert!(
        before < nar_size,
        "killed after the end: {before} of {nar_size}"
    );
    assert_eq!(
        queue_entries(&queue).len(),
        1,
        "the entry survives the kill"
    );

    let out = s
        .uploader(&queue, &["--drain", "--timeout", "300s"])
        .env("CAIRN_LOG", "info")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {stderr}", out.status);
    assert!(queue_entries(&queue).is_empty());
    for p in &outputs {
        assert_eq!(s.narinfo_status(p), 200, "{p}");
    }
    // Resumed, not restarted: random data does not compress, so sending the whole NAR
    // again would cost at least its size on the wire.
    let wire: u64 = stderr
        .split("wire_bytes=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no wire_bytes in the log: {stderr}"));
    assert!(
        wire < nar_size - before / 2,
        "sent {wire} bytes after the kill; {before} of {nar_size} were there"
    );
    s.substitute(big);
}

#[test]
fn push_skips_paths_signed_by_an_upstream_key() {
    let s = setup(|c| c.allow_missing_references = Some(true));
    let paths = s.nix.build_fixtures(&testkit::salt(), 2);
    let (dep, root) = (&paths[0], paths.last().unwrap());
    // The dependency carries a signature of "upstream-1", as paths substituted from
    // cache.nixos.org carry cache.nixos.org-1's.
    let keys = tempfile::tempdir().unwrap();
    let (sec, public) = (keys.path().join("sec"), keys.path().join("pub"));
    s.nix.run(
        "nix-store",
        &[
            "--generate-binary-cache-key",
            "upstream-1",
            sec.to_str().unwrap(),
            public.to_str().unwrap(),
        ],
    );
    s.nix.run(
        "nix",
        &["store", "sign", "--key-file", sec.to_str().unwrap(), dep],
    );

    let url = s.server.url();
    let token = s.token("ci");
    let out = s
        .cachectl(&[
            "push",
            "--cache",
            &url,
            "--token-file",
            token.to_str().unwrap(),
            "--skip-signed-by",
            "upstream-1",
            "--json",
            root,
        ])
        .output()
        .unwrap();
    let sum = summary(&out);
    assert_eq!(sum["skipped_signed"], 1, "{sum}");
    assert_eq!(sum["uploaded"], 1, "{sum}");
    assert_eq!(
        s.narinfo_status(dep),
        404,
        "upstream's path is left to upstream"
    );
    assert_eq!(s.narinfo_status(root), 200);
}

#[test]
fn status_reports_what_the_cache_holds_and_exits_by_health() {
    let s = setup(|_| {});
    let paths = s.nix.build_fixtures(&testkit::salt(), 2);
    assert_eq!(
        summary(&s.push("ci", &[paths.last().unwrap()]))["uploaded"],
        2
    );

    let url = s.server.url();
    let out = s
        .cachectl(&["status", "--cache", &url, "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["health"], "healthy", "{v}");
    assert_eq!(v["paths"], 2, "{v}");
    assert_eq!(v["nodes"][0]["blobs_held"], 2, "{v}");
    assert!(v["stored_bytes"].as_u64().unwrap() > 0, "{v}");
    assert!(
        v["nodes"][0]["disk_free_bytes"].as_u64().unwrap() > 0,
        "{v}"
    );

    let out = s.cachectl(&["status", "--cache", &url]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("healthy") && text.contains("paths 2"),
        "{text}"
    );
    assert!(text.lines().all(|l| l.chars().count() <= 80), "{text}");

    // Nothing listening: unavailable.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let out = s.cachectl(&["status", "--cache", &dead]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
