//! The `cairnd` binary as an operator runs it: the embedded default, a Harmonia config
//! file used unchanged, the unix socket listener and `check-config`.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CAIRND: &str = env!("CARGO_BIN_EXE_cairnd");

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for_socket(path: &Path, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(e) = child.stderr.as_mut() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("cairnd exited early ({status}): {err}");
        }
        assert!(
            Instant::now() < deadline,
            "cairnd did not open {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One HTTP/1.1 GET over a unix socket; returns (status line, body).
fn get_unix(sock: &Path, target: &str) -> (String, String) {
    let mut s = UnixStream::connect(sock).expect("connect");
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: cairn\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").expect("HTTP response");
    (head.lines().next().unwrap().to_string(), body.to_string())
}

fn write_key(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = signer::SecretKey::generate(name).expect("valid key name");
    let path = dir.join(format!("{name}.sec"));
    std::fs::write(&path, key.to_file_text()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    (path, key.public().to_string())
}

#[test]
fn embedded_default_generates_and_keeps_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("cairn.sock");
    let start = || {
        let mut child = Command::new(CAIRND)
            .current_dir(dir.path())
            .env_remove("CONFIG_FILE")
            .env_remove("SIGN_KEY_PATHS")
            .args(["--bind", &format!("unix:{}", sock.display())])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_for_socket(&sock, &mut child);
        Running(child)
    };
    let first = start();
    let pub_file = dir.path().join("cairn-data/signing-key.pub");
    let sec_file = dir.path().join("cairn-data/signing-key.sec");
    let public = std::fs::read_to_string(&pub_file)
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(
        std::fs::metadata(&sec_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let (status, body) = get_unix(&sock, "/nix-cache-info");
    assert!(status.contains("200"), "{status}");
    assert!(body.contains("StoreDir: /nix/store") && body.contains("Priority: 30"));
    let (_, landing) = get_unix(&sock, "/");
    assert!(landing.contains(&public), "landing page shows the key");
    drop(first);
    std::fs::remove_file(&sock).ok();
    // A restart reuses the key rather than making a new one.
    let mut second = start();
    assert_eq!(std::fs::read_to_string(&pub_file).unwrap().trim(), public);
    let _ = second.0.kill();
    let mut out = String::new();
    second
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(out.contains(&format!("public key: {public}")), "{out}");
}

#[test]
fn a_harmonia_config_file_works_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("harmonia.sock");
    let (key_a, pub_a) = write_key(dir.path(), "harmonia-a-1");
    let (key_b, pub_b) = write_key(dir.path(), "harmonia-b-1");
    let cfg = dir.path().join("harmonia.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"bind = "unix:{sock}"
workers = 2
max_connection_rate = 256
priority = 41
enable_compression = true
sign_key_paths = ["{key_a}"]
virtual_nix_store = "/nix/store"
daemon_socket = "/nix/var/nix/daemon-socket/socket"
"#,
            sock = sock.display(),
            key_a = key_a.display()
        ),
    )
    .unwrap();
    let mut child = Command::new(CAIRND)
        .current_dir(dir.path())
        .env("CONFIG_FILE", &cfg)
        .env("SIGN_KEY_PATHS", &key_b)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_socket(&sock, &mut child);
    let _running = Running(child);
    let (status, body) = get_unix(&sock, "/nix-cache-info");
    assert!(status.contains("200"));
    assert!(body.contains("Priority: 41"), "{body}");
    let (_, landing) = get_unix(&sock, "/");
    assert!(
        landing.contains(&pub_a) && landing.contains(&pub_b),
        "both keys sign"
    );
    let (status, _) = get_unix(&sock, "/health");
    assert!(status.contains("200"), "{status}");
}

#[test]
fn check_config_tells_good_from_bad() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = write_key(dir.path(), "k-1");
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        format!("sign_key_paths = [\"{}\"]\npriority = 10\n", key.display()),
    )
    .unwrap();
    let out = Command::new(CAIRND)
        .args(["check-config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let unknown = dir.path().join("unknown.toml");
    std::fs::write(&unknown, "bindd = \"[::]:5000\"\n").unwrap();
    let out = Command::new(CAIRND)
        .args(["check-config"])
        .arg(&unknown)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bindd"));

    // A key readable by others is refused, naming the file and not leaking the key.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(CAIRND)
        .args(["check-config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&key.display().to_string()), "{err}");
    let secret_b64 = std::fs::read_to_string(&key).unwrap();
    let secret_b64 = secret_b64.trim().split(':').nth(1).unwrap();
    assert!(!err.contains(secret_b64));
}
