//! `cachectl hook` as Nix's post-build-hook: a real `nix-build` queues its outputs
//! through a wrapper script; the hook exits 0 whatever is wrong with its queue or its
//! environment; and a hundred calls each return quickly (a sanity bound only: the real
//! latency figure is measured by bench/).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use testkit::Nix;

fn hook(queue: &Path, out_paths: Option<&str>, extra: &[&str]) -> Output {
    let mut cmd = Command::new(cairn_tests::cachectl_bin());
    cmd.arg("hook").arg("--queue").arg(queue).args(extra);
    cmd.env_remove("OUT_PATHS").env_remove("CAIRN_QUEUE_DIR");
    if let Some(p) = out_paths {
        cmd.env("OUT_PATHS", p);
    }
    cmd.env(
        "DRV_PATH",
        "/nix/store/00000000000000000000000000000000-x.drv",
    );
    cmd.output().expect("run cachectl hook")
}

fn hook_without_drv(queue: &Path, out_paths: Option<&str>) -> Output {
    let mut cmd = Command::new(cairn_tests::cachectl_bin());
    cmd.arg("hook").arg("--queue").arg(queue);
    cmd.env_remove("OUT_PATHS").env_remove("DRV_PATH");
    if let Some(p) = out_paths {
        cmd.env("OUT_PATHS", p);
    }
    cmd.output().expect("run cachectl hook")
}

/// The queue's entries (oldest first) as JSON.
fn entries(queue: &Path) -> Vec<(String, serde_json::Value)> {
    let mut names: Vec<String> = std::fs::read_dir(queue)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".json") && !n.starts_with('.'))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let v = serde_json::from_slice(&std::fs::read(queue.join(&n)).unwrap()).unwrap();
            (n, v)
        })
        .collect()
}

const HOOKED_NIX: &str = r#"
{ salt }:
derivation {
  name = "hooked";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  outputs = [ "out" "doc" ];
  args = [ "-c" "echo $SALT > $out; echo doc $SALT > $doc" ];
  SALT = salt;
}
"#;

#[test]
fn post_build_hook_queues_the_outputs_of_a_real_build() {
    let nix = Nix::new();
    let dir = tempfile::tempdir().unwrap();
    let queue = dir.path().join("queue");
    let stamp = dir.path().join("started");
    let wrapper = dir.path().join("post-build-hook");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ndate +%s%N > '{}'\nexec '{}' hook --queue '{}'\n",
            stamp.display(),
            cairn_tests::cachectl_bin().display(),
            queue.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let expr = dir.path().join("hooked.nix");
    std::fs::write(&expr, HOOKED_NIX).unwrap();

    let out = nix.run(
        "nix-build",
        &[
            expr.to_str().unwrap(),
            "--no-out-link",
            "--argstr",
            "salt",
            &testkit::salt(),
            "--option",
            "post-build-hook",
            wrapper.to_str().unwrap(),
        ],
    );
    let out_path = out.trim();
    let drv = nix.run("nix-store", &["--query", "--deriver", out_path]);
    let outputs = nix.run("nix-store", &["--query", "--outputs", drv.trim()]);

    let got = entries(&queue);
    assert_eq!(got.len(), 1, "one build, one entry: {got:?}");
    let entry = &got[0].1;
    assert_eq!(entry["drv_path"].as_str(), Some(drv.trim()));
    // Nix 2.8.0 passes OUT_PATHS empty (NixOS/nix#6446); the uploader then reads the
    // outputs from the derivation. Other versions pass every output.
    let mut queued: Vec<&str> = entry["out_paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    if !queued.is_empty() {
        queued.sort();
        let mut want: Vec<&str> = outputs.lines().collect();
        want.sort();
        assert_eq!(queued, want, "every output of the derivation is queued");
    }

    // From the wrapper's start to the entry's last write: the hook's own time, give or
    // take the rename and the directory fsync.
    let started: u128 = std::fs::read_to_string(&stamp)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let written = std::fs::metadata(queue.join(&got[0].0))
        .unwrap()
        .modified()
        .unwrap()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let took = Duration::from_nanos(written.saturating_sub(started) as u64);
    assert!(took < Duration::from_secs(1), "the hook took {took:?}");
}

#[test]
fn the_hook_always_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    // A queue "directory" below a regular file can be created by nobody, root included.
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "x").unwrap();
    let broken = blocker.join("queue");
    let out = hook(
        &broken,
        Some("/nix/store/00000000000000000000000000000000-a"),
        &[],
    );
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot queue"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");

    let queue = dir.path().join("queue");
    for paths in [None, Some(""), Some("   ")] {
        let out = hook_without_drv(&queue, paths);
        assert!(out.status.success(), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("nothing queued"));
    }
    let out = hook(&queue, Some("/nix/store/x"), &["--no-such-flag"]);
    assert!(
        out.status.success(),
        "a mistyped hook command still exits 0: {out:?}"
    );
    assert!(!queue.exists() || entries(&queue).is_empty());
}

#[test]
fn a_hundred_hook_calls_each_return_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let queue = dir.path().join("queue");
    let start = SystemTime::now();
    let mut slowest = Duration::ZERO;
    for i in 0..100 {
        let paths = format!("/nix/store/{i:032}-a /nix/store/{i:032}-b");
        let t = Instant::now();
        let out = hook(&queue, Some(&paths), &[]);
        slowest = slowest.max(t.elapsed());
        assert!(out.status.success() && out.stderr.is_empty(), "{out:?}");
    }
    // A sanity bound for a loaded 2-core machine, not the latency target.
    assert!(
        slowest < Duration::from_secs(1),
        "slowest hook call took {slowest:?}"
    );
    let got = entries(&queue);
    assert_eq!(got.len(), 100);
    for (i, (_, e)) in got.iter().enumerate() {
        let first = e["out_paths"][0].as_str().unwrap();
        assert_eq!(
            first,
            format!("/nix/store/{i:032}-a"),
            "entries sort in call order"
        );
        assert!(
            e["queued_at"].as_u64().unwrap() >= start.duration_since(UNIX_EPOCH).unwrap().as_secs()
        );
    }
}
