//! `cachectl keygen` as a user runs it: files, modes, refusal to overwrite, and a key
//! that the real `nix` signs and verifies with.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use signer::{PublicKey, SecretKey};
use testkit::Nix;

const CACHECTL: &str = env!("CARGO_BIN_EXE_cachectl");

/// Runs cachectl under `umask 000`, so that modes come from cachectl, not the umask.
fn cachectl(args: &[&str]) -> Output {
    Command::new("/bin/sh")
        .arg("-c")
        .arg(r#"umask 000; exec "$0" "$@""#)
        .arg(CACHECTL)
        .args(args)
        .output()
        .expect("run cachectl")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "cachectl failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn keygen_writes_a_private_secret_and_prints_the_public_key() {
    let dir = tempfile::tempdir().unwrap();
    let (sk, pk) = (dir.path().join("k.sec"), dir.path().join("k.pub"));
    let stdout = ok(&cachectl(&[
        "keygen",
        "cache.example.org-1",
        sk.to_str().unwrap(),
        pk.to_str().unwrap(),
    ]));

    assert_eq!(mode(&sk), 0o600);
    assert_eq!(mode(&pk), 0o644);
    let secret = SecretKey::load(&sk).unwrap();
    let public = PublicKey::load(&pk).unwrap();
    assert_eq!(secret.name(), "cache.example.org-1");
    assert_eq!(secret.public(), public);
    assert_eq!(stdout, format!("{public}\n"));
    assert!(!stdout.contains(secret.to_file_text().split_once(':').unwrap().1));
    assert_eq!(entries(dir.path()), ["k.pub", "k.sec"]);
}

#[test]
fn keygen_refuses_to_overwrite_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let (sk, pk) = (dir.path().join("k.sec"), dir.path().join("k.pub"));
    let args = ["keygen", "k-1", sk.to_str().unwrap(), pk.to_str().unwrap()];
    ok(&cachectl(&args));
    let (old_sk, old_pk) = (fs::read(&sk).unwrap(), fs::read(&pk).unwrap());

    let out = cachectl(&args);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(sk.to_str().unwrap()) && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        (fs::read(&sk).unwrap(), fs::read(&pk).unwrap()),
        (old_sk.clone(), old_pk)
    );

    let forced = [&args[..], &["--force"]].concat();
    let stdout = ok(&cachectl(&forced));
    assert_ne!(fs::read(&sk).unwrap(), old_sk);
    assert_eq!(mode(&sk), 0o600);
    assert_eq!(stdout.trim(), PublicKey::load(&pk).unwrap().to_string());
    assert_eq!(entries(dir.path()), ["k.pub", "k.sec"]);
}

#[test]
fn keygen_writes_nothing_when_only_the_public_file_exists() {
    let dir = tempfile::tempdir().unwrap();
    let (sk, pk) = (dir.path().join("k.sec"), dir.path().join("k.pub"));
    fs::write(&pk, "something else").unwrap();
    let out = cachectl(&["keygen", "k-1", sk.to_str().unwrap(), pk.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(pk.to_str().unwrap()));
    assert!(!sk.exists());
    assert_eq!(fs::read_to_string(&pk).unwrap(), "something else");
    assert_eq!(entries(dir.path()), ["k.pub"]);
}

#[test]
fn keygen_rejects_bad_names_and_same_files() {
    let dir = tempfile::tempdir().unwrap();
    let (sk, pk) = (dir.path().join("k.sec"), dir.path().join("k.pub"));
    for name in ["", "a:b", "a b"] {
        let out = cachectl(&["keygen", name, sk.to_str().unwrap(), pk.to_str().unwrap()]);
        assert!(!out.status.success(), "{name:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("key name"));
    }
    let out = cachectl(&["keygen", "k", sk.to_str().unwrap(), sk.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(entries(dir.path()).is_empty());
}

#[test]
fn keygen_json() {
    let dir = tempfile::tempdir().unwrap();
    let (sk, pk) = (dir.path().join("k.sec"), dir.path().join("k.pub"));
    let stdout = ok(&cachectl(&[
        "keygen",
        "k-2",
        sk.to_str().unwrap(),
        pk.to_str().unwrap(),
        "--json",
    ]));
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["name"], "k-2");
    assert_eq!(v["public_key"], PublicKey::load(&pk).unwrap().to_string());
    assert_eq!(v["secret_file"], sk.to_str().unwrap());
    assert_eq!(v["public_file"], pk.to_str().unwrap());
}

#[test]
fn help_describes_what_exists() {
    let help = ok(&cachectl(&["--help"]));
    assert!(help.contains("keygen"), "{help}");
    let help = ok(&cachectl(&["keygen", "--help"]));
    assert!(help.contains("--force") && help.contains("0600"), "{help}");
    assert!(!cachectl(&[]).status.success());
}

#[test]
fn keygen_key_works_with_nix() {
    let nix = Nix::new();
    let dir = tempfile::tempdir().unwrap();
    let (sk, pk) = (dir.path().join("k.sec"), dir.path().join("k.pub"));
    let public = ok(&cachectl(&[
        "keygen",
        "cachectl-e2e-1",
        sk.to_str().unwrap(),
        pk.to_str().unwrap(),
    ]));
    let public = public.trim();
    let path = nix.build_fixtures(&testkit::salt(), 1).pop().unwrap();

    let verify = |trusted: &str| {
        nix.cmd("nix")
            .args([
                "store",
                "verify",
                "--trusted-public-keys",
                trusted,
                "--sigs-needed",
                "1",
                &path,
            ])
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(!verify(public), "verified before signing");
    nix.run(
        "nix",
        &["store", "sign", "--key-file", sk.to_str().unwrap(), &path],
    );
    assert!(
        verify(public),
        "nix rejects the signature of a cachectl key"
    );
    // The public key file is what an operator pastes into trusted-public-keys.
    assert!(verify(fs::read_to_string(&pk).unwrap().trim()));
}
