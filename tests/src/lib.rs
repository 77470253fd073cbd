//! The harness of Cairn's end-to-end tests: a `cairnd` running in-process on
//! `127.0.0.1:0` with its own runtime, so tests can drive it with the real `nix` binary
//! from ordinary synchronous code. The tests themselves are in `tests/`.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub mod cluster;

use cache_server::config::{Config, FileConfig};
use cache_server::{AppState, Listener};
use tempfile::TempDir;

/// A key pair written to files, as an operator would have it.
pub struct TestKey {
    pub secret_file: PathBuf,
    pub public: String,
    _dir: TempDir,
}

impl TestKey {
    pub fn new(name: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let key = signer::SecretKey::generate(name).expect("valid key name");
        let secret_file = dir.path().join("key.sec");
        std::fs::write(&secret_file, key.to_file_text()).expect("write key");
        std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600))
            .expect("chmod key");
        TestKey {
            secret_file,
            public: key.public().to_string(),
            _dir: dir,
        }
    }
}

/// A running server; stops when dropped.
pub struct Server {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    pub data: TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    scheme: &'static str,
}

impl Server {
    /// Starts a server with `file` (its `data_dir` is set to a fresh temp dir unless
    /// given), TLS from `tls` when set.
    pub fn start(mut file: FileConfig) -> Self {
        let data = tempfile::tempdir().expect("temp dir");
        if file.data_dir.is_none() {
            file.data_dir = Some(data.path().to_path_buf());
        }
        let config = Config::resolve(file, |_| None).expect("valid config");
        let tls = config.tls.clone();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let (keyring, _) = cache_server::keys::load_keyring(&config).expect("keys");
        let node = runtime
            .block_on(cache_server::raft_node::start(&config))
            .expect("raft node")
            .node;
        let state = AppState::with_node(config, keyring, node).expect("state");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let acceptor = tls.map(|(c, k)| cache_server::serve::tls_acceptor(&c, &k).expect("tls"));
        let scheme = if acceptor.is_some() { "https" } else { "http" };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = cache_server::app(state.clone());
        let thread = std::thread::spawn(move || {
            runtime.block_on(cache_server::serve(
                vec![Listener::Tcp(listener, acceptor)],
                app,
                0,
                async {
                    let _ = stopped.await;
                },
                Duration::from_secs(2),
            ));
        });
        Server {
            addr,
            state,
            data,
            stop: Some(stop),
            thread: Some(thread),
            scheme,
        }
    }

    /// Serves the store kept under `root` (a chroot store) as `/nix/store`.
    pub fn for_root(root: &Path, key: Option<&TestKey>) -> Self {
        Self::start(root_config(root, key))
    }

    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }
}

/// The config of a server for the store under `root`, signing with `key` (or not at all).
pub fn root_config(root: &Path, key: Option<&TestKey>) -> FileConfig {
    FileConfig {
        real_nix_store: Some(root.join("nix/store")),
        sign_key_paths: key.map(|k| vec![k.secret_file.clone()]).unwrap_or_default(),
        no_signing: Some(key.is_none()),
        ..Default::default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The `cachectl` binary of this build (`target/<profile>/cachectl`, next to the test
/// executable's `deps/`). `cargo test --workspace` builds it; alone,
/// `cargo test -p cairn-tests` needs `cargo build -p cachectl` first.
pub fn cachectl_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("cachectl");
    assert!(
        bin.is_file(),
        "{} is missing: build it with `cargo build -p cachectl`",
        bin.display()
    );
    bin
}

/// Whether this process runs as root (the owner of `/proc/self`).
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A private single-threaded runtime, for driving async HTTP from a synchronous test.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// An HTTP client that ignores proxy settings (the server is on loopback).
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("http client")
}

/// A token written to a 0600 file under `dir`, as a `[[tokens]]` config entry.
pub fn token_file(
    dir: &Path,
    name: &str,
    text: &str,
    scopes: &[&str],
) -> cache_server::auth::TokenFile {
    let p = dir.join(name);
    std::fs::write(&p, format!("{text}\n")).expect("write token");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod token");
    cache_server::auth::TokenFile {
        name: name.to_string(),
        secret_file: p,
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
    }
}

/// Polls `cond` every 20 ms until it holds; panics naming `what` after `timeout`.
pub fn wait_for(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Copies `root`'s closure from the cache at `url` into a fresh chroot store with a
/// separate Nix client (its own narinfo cache) that trusts only `public_key`, with
/// signature checking on; returns that store and `nix path-info --json --recursive` of
/// `root` in it.
pub fn substitute(
    url: &str,
    public_key: &str,
    root: &str,
) -> (testkit::ChrootStore, serde_json::Value) {
    let dest = testkit::ChrootStore::new();
    let client = testkit::Nix::new();
    client.run(
        "nix",
        &[
            "copy",
            "--from",
            url,
            "--to",
            &dest.uri(),
            "--option",
            "trusted-public-keys",
            public_key,
            root,
        ],
    );
    let info = client.path_info(Some(&dest.uri()), &[root]);
    (dest, info)
}

/// A TCP proxy on `127.0.0.1:0` in front of `target` that forwards what clients send at
/// most `bytes_per_sec` (answers pass at full speed): a real, slow network link, so a
/// test can act in the middle of an upload. Stops when dropped.
pub struct SlowLink {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SlowLink {
    pub fn start(target: SocketAddr, bytes_per_sec: u64) -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                loop {
                    tokio::select! {
                        _ = &mut stopped => break,
                        accepted = listener.accept() => {
                            let Ok((client, _)) = accepted else { continue };
                            tokio::spawn(relay(client, target, bytes_per_sec));
                        }
                    }
                }
            });
        });
        SlowLink {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for SlowLink {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn relay(client: tokio::net::TcpStream, target: SocketAddr, bytes_per_sec: u64) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(server) = tokio::net::TcpStream::connect(target).await else {
        return;
    };
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut server_rx, mut server_tx) = server.into_split();
    let up = async move {
        // 10 slices a second, each at most a tenth of the rate.
        let slice = (bytes_per_sec / 10).max(1) as usize;
        let mut buf = vec![0u8; slice];
        loop {
            let n = match client_rx.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if server_tx.write_all(&buf[..n]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = server_tx.shutdown().await;
    };
    let down = async move {
        let _ = tokio::io::copy(&mut server_rx, &mut client_tx).await;
        let _ = client_tx.shutdown().await;
    };
    tokio::join!(up, down);
}
