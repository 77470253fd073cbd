//! Our keys and signatures against the real `nix` (Debian's nix-bin 2.8.0): keys move in
//! both directions, and signatures made by either side verify on the other.
//!
//! Without `nix` these tests fail (install nix-bin); they never pass vacuously.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix_formats::Hash;
use serde_json::Value;
use signer::{PublicKey, SecretKey, Signer, TrustedKeys};
use tempfile::TempDir;
use testkit::Nix;

/// Two tiny store paths, `b` referring to `a` and to itself, unique to this run.
fn build_pair(nix: &Nix, dir: &Path) -> (String, String) {
    let expr = format!(
        r#"
        let
          sh = name: cmd: derivation {{
            inherit name;
            system = builtins.currentSystem;
            builder = "/bin/sh";
            args = [ "-c" cmd ];
            PATH = "/usr/bin:/bin";
            SALT = "{salt}";
          }};
          a = sh "a" "mkdir -p $out; echo hi > $out/f";
          b = sh "b" "mkdir -p $out; echo ${{a}} > $out/ref; echo $out > $out/self";
        in [ a b ]
        "#,
        salt = testkit::salt()
    );
    let file = dir.join("pair.nix");
    fs::write(&file, expr).unwrap();
    let out = nix.run("nix-build", &[file.to_str().unwrap(), "--no-out-link"]);
    let paths: Vec<&str> = out.lines().collect();
    assert_eq!(paths.len(), 2, "nix-build printed {out:?}");
    (paths[0].to_string(), paths[1].to_string())
}

/// `nix path-info --json` of one path.
fn path_info(nix: &Nix, store: Option<&str>, path: &str) -> Value {
    let mut args = vec!["path-info", "--json"];
    if let Some(store) = store {
        args.extend(["--store", store]);
    }
    args.push(path);
    let v: Value = serde_json::from_str(&nix.run("nix", &args)).unwrap();
    v.as_array()
        .and_then(|a| a.first())
        .cloned()
        .unwrap_or_else(|| panic!("no path info for {path}: {v}"))
}

/// The narinfo fingerprint, built from `nix path-info --json` by hand so this test does
/// not lean on nix-formats' narinfo code: `1;<path>;<narHash as sha256:nix32>;<narSize>;
/// <references, full paths, sorted, comma-joined>`. Nix prints `narHash` as SRI or as
/// `sha256:nix32` depending on its version; both parse.
fn fingerprint(info: &Value) -> String {
    let path = info["path"].as_str().expect("path");
    let nar_hash: Hash = info["narHash"]
        .as_str()
        .expect("narHash")
        .parse()
        .expect("narHash parses");
    let nar_size = info["narSize"].as_u64().expect("narSize");
    let mut refs: Vec<&str> = info["references"]
        .as_array()
        .expect("references")
        .iter()
        .map(|r| r.as_str().expect("reference"))
        .collect();
    refs.sort_unstable();
    format!(
        "1;{path};{};{nar_size};{}",
        nar_hash.to_nix32_string(),
        refs.join(",")
    )
}

fn signatures(info: &Value) -> Vec<String> {
    info["signatures"]
        .as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// A key pair from `nix-store --generate-binary-cache-key`.
fn nix_keygen(nix: &Nix, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (sk, pk) = (
        dir.join(format!("{name}.sec")),
        dir.join(format!("{name}.pub")),
    );
    nix.run(
        "nix-store",
        &[
            "--generate-binary-cache-key",
            name,
            sk.to_str().unwrap(),
            pk.to_str().unwrap(),
        ],
    );
    (sk, pk)
}

/// Writes our secret key as `cachectl keygen` would: mode 0600, Nix's text.
fn write_our_key(dir: &Path, key: &SecretKey) -> PathBuf {
    let path = dir.join(format!("{}.sec", key.name()));
    fs::write(&path, key.to_file_text()).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// Runs `nix store verify` and says whether it succeeded.
fn nix_verifies(
    nix: &Nix,
    store: Option<&str>,
    trusted: &str,
    sigs_needed: u32,
    path: &str,
) -> bool {
    let sigs_needed = sigs_needed.to_string();
    let mut args = vec![
        "store",
        "verify",
        "--trusted-public-keys",
        trusted,
        "--sigs-needed",
        &sigs_needed,
    ];
    if let Some(store) = store {
        args.extend(["--store", store]);
    }
    args.push(path);
    let out = nix.cmd("nix").args(&args).output().expect("spawn nix");
    out.status.success()
}

#[test]
fn nix_generated_key_loads() {
    let nix = Nix::new();
    let dir = TempDir::new().unwrap();
    let (sk_file, pk_file) = nix_keygen(&nix, dir.path(), "nix-made-1");

    let sk = SecretKey::load(&sk_file).expect("our loader accepts nix's secret key file");
    let pk = PublicKey::load(&pk_file).expect("our loader accepts nix's public key file");
    assert_eq!(sk.name(), "nix-made-1");
    assert_eq!(sk.public(), pk);
    assert_eq!(
        sk.public().to_string(),
        fs::read_to_string(&pk_file).unwrap().trim()
    );
    // Our text form is Nix's, byte for byte.
    assert_eq!(
        sk.to_file_text(),
        fs::read_to_string(&sk_file).unwrap().trim()
    );
}

#[test]
fn our_key_signs_in_nix() {
    let nix = Nix::new();
    let dir = TempDir::new().unwrap();
    let ours = SecretKey::generate("cairn-test-1").unwrap();
    let sk_file = write_our_key(dir.path(), &ours);
    let (a, b) = build_pair(&nix, dir.path());

    for path in [&a, &b] {
        let trusted = ours.public().to_string();
        // Locally built paths are "ultimately trusted", but --sigs-needed ignores that:
        // before signing, verification must fail.
        assert!(!nix_verifies(&nix, None, &trusted, 1, path));

        nix.run(
            "nix",
            &[
                "store",
                "sign",
                "--key-file",
                sk_file.to_str().unwrap(),
                path,
            ],
        );
        let info = path_info(&nix, None, path);
        let sigs = signatures(&info);
        let nix_sig = sigs
            .iter()
            .find(|s| s.starts_with("cairn-test-1:"))
            .unwrap_or_else(|| panic!("no signature by our key in {info}"));
        // ed25519 is deterministic: equal lines mean equal keys and equal fingerprints.
        assert_eq!(*nix_sig, ours.sign(&fingerprint(&info)));
        assert!(ours.public().verify(&fingerprint(&info), nix_sig));

        assert!(
            nix_verifies(&nix, None, &trusted, 1, path),
            "nix rejects our key's signature on {path}"
        );
        let stranger = SecretKey::generate("cairn-test-1")
            .unwrap()
            .public()
            .to_string();
        assert!(!nix_verifies(&nix, None, &stranger, 1, path));
    }
}

#[test]
fn nix_signatures_verify_with_our_public_key() {
    let nix = Nix::new();
    let dir = TempDir::new().unwrap();
    let (sk_file, pk_file) = nix_keygen(&nix, dir.path(), "nix-made-2");
    let pk = PublicKey::load(&pk_file).unwrap();
    let sk = SecretKey::load(&sk_file).unwrap();
    let trusted: TrustedKeys = [pk.clone()].into_iter().collect();
    let (a, b) = build_pair(&nix, dir.path());

    for path in [&a, &b] {
        nix.run(
            "nix",
            &[
                "store",
                "sign",
                "--key-file",
                sk_file.to_str().unwrap(),
                path,
            ],
        );
        let info = path_info(&nix, None, path);
        let fp = fingerprint(&info);
        let sigs = signatures(&info);
        let sig = sigs
            .iter()
            .find(|s| s.starts_with("nix-made-2:"))
            .unwrap_or_else(|| panic!("nix did not sign {path}: {info}"));
        assert!(
            pk.verify(&fp, sig),
            "nix's signature does not verify over {fp:?}"
        );
        assert_eq!(trusted.valid_signatures(&fp, &sigs), vec![sig.clone()]);
        assert_eq!(sk.sign(&fp), *sig);

        let tampered = fp.replacen(';', ";x", 2);
        assert!(!pk.verify(&tampered, sig));
    }
    // b refers to a, so its fingerprint exercises the references field.
    let fp_b = fingerprint(&path_info(&nix, None, &b));
    assert!(
        fp_b.ends_with(&format!(";{}", {
            let mut refs = [a.clone(), b.clone()];
            refs.sort();
            refs.join(",")
        })),
        "{fp_b}"
    );
}

#[test]
fn nix_accepts_our_signatures() {
    let nix = Nix::new();
    let dir = TempDir::new().unwrap();
    let (k2, k1) = (
        SecretKey::generate("cairn-rot-2").unwrap(),
        SecretKey::generate("cairn-rot-1").unwrap(),
    );
    let signer = Signer::new(vec![k2.clone(), k1.clone()], 8).unwrap();
    let (a, b) = build_pair(&nix, dir.path());

    // A file:// binary cache holding both paths, unsigned, then our Sig lines added to
    // its narinfos: nix must accept signatures we computed over a fingerprint we built.
    let cache_dir = dir.path().join("cache");
    let cache = format!("file://{}", cache_dir.display());
    nix.run("nix", &["copy", "--to", &cache, &a, &b]);
    for path in [&a, &b] {
        let info = path_info(&nix, None, path);
        let hash_part = &path["/nix/store/".len()..][..32];
        let narinfo = cache_dir.join(format!("{hash_part}.narinfo"));
        let mut text = fs::read_to_string(&narinfo).unwrap();
        assert!(!text.contains("Sig:"), "{text}");
        for sig in signer.sign(&fingerprint(&info)) {
            text.push_str(&format!("Sig: {sig}\n"));
        }
        fs::write(&narinfo, text).unwrap();
    }

    // A fresh Nix (fresh narinfo disk cache) reads the edited narinfos.
    let reader = Nix::new();
    let (pk2, pk1) = (k2.public().to_string(), k1.public().to_string());
    let both = format!("{pk2} {pk1}");
    let stranger = SecretKey::generate("cairn-rot-1")
        .unwrap()
        .public()
        .to_string();
    for path in [&a, &b] {
        let info = path_info(&reader, Some(&cache), path);
        assert_eq!(signatures(&info).len(), 2, "{info}");
        for trusted in [&pk2, &pk1] {
            assert!(
                nix_verifies(&reader, Some(&cache), trusted, 1, path),
                "nix rejects our signature of {path} with {trusted}"
            );
        }
        assert!(nix_verifies(&reader, Some(&cache), &both, 2, path));
        assert!(!nix_verifies(&reader, Some(&cache), &stranger, 1, path));
    }
}
