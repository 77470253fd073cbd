//! Real clusters for the cluster tests: every node a `cairnd` process of this build.
//!
//! As root (CI), each node runs in a network namespace of its own (`ip netns`), joined
//! to a bridge in the test's namespace by a veth pair: node `i` is `10.X.Y.i`, ports
//! 5000 (public) and 5001 (cluster), and the test reaches every node through the
//! bridge (`10.X.Y.254`). Partitions are nftables rules inside the nodes' namespaces,
//! so the test itself always sees every node. Without root, nodes share loopback with
//! ports of their own, and the partition tests cannot run (they say so).
//!
//! Nodes log to `<dir>/node-<i>.log`; a failing test prints their tails.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::TestKey;

pub const ADMIN: &str = "cairn_cluster_admin_token_0123456789abcdef";
pub const PUSH: &str = "cairn_cluster_push_token_0123456789abcdef";
pub const SECRET: &str = "cluster-secret-for-tests-0123456789abcdef";

/// How to run the cluster.
#[derive(Debug, Clone)]
pub struct Options {
    pub nodes: u64,
    /// Nodes `cluster init` makes voters (the first ones); the rest start fresh, for
    /// `cluster add`. Default: all.
    pub voters: Option<u64>,
    /// Raft entries between snapshots.
    pub snapshot_logs: u64,
    pub repair_interval_secs: u64,
    pub orphan_grace_secs: u64,
    /// Node 1 starts on the embedded default's terms: no `[cluster]` section (a cluster
    /// of one), until [`TestCluster::give_cluster_section`].
    pub solo_first: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            nodes: 3,
            voters: None,
            snapshot_logs: 10_000,
            repair_interval_secs: 1,
            orphan_grace_secs: 86_400,
            solo_first: false,
        }
    }
}

/// One node's process and files.
pub struct NodeProc {
    pub id: u64,
    pub public: String,
    pub cluster: String,
    pub data: PathBuf,
    config: PathBuf,
    /// The config with its `[cluster]` section (what `config` holds unless the node
    /// started as a cluster of one).
    full_config: String,
    log: PathBuf,
    ns: Option<String>,
    child: Option<Child>,
}

impl NodeProc {
    pub fn url(&self) -> String {
        format!("http://{}", self.public)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

struct Netns {
    bridge: String,
    prefix: String,
    namespaces: Vec<String>,
}

/// A running cluster; every process and namespace goes when it is dropped.
pub struct TestCluster {
    pub dir: TempDir,
    pub key: TestKey,
    pub nodes: Vec<NodeProc>,
    net: Option<Netns>,
    opts: Options,
}

fn sh(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn must(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().expect("spawn");
    assert!(
        out.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `cairnd` binary of this build, beside `cachectl`.
pub fn cairnd_bin() -> PathBuf {
    let bin = crate::cachectl_bin().with_file_name("cairnd");
    assert!(
        bin.is_file(),
        "{} is missing: build it with `cargo build -p cache-server`",
        bin.display()
    );
    bin
}

/// Whether nodes can get network namespaces of their own (root with `ip` and `nft`).
pub fn have_netns() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        crate::is_root() && sh("ip", &["netns", "list"]) && sh("nft", &["--version"])
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl TestCluster {
    /// Starts `opts.nodes` nodes and forms the cluster with `cachectl cluster init` on
    /// node 1; returns once every node knows the leader.
    pub fn start(opts: Options) -> Self {
        let c = Self::spawn(opts);
        c.init();
        c
    }

    /// Starts the processes without forming a cluster.
    pub fn spawn(opts: Options) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let key = TestKey::new("cairn-cluster-1");
        let secret = dir.path().join("cluster-secret");
        write_private(&secret, SECRET);
        let tokens_dir = dir.path().join("tokens");
        std::fs::create_dir_all(&tokens_dir).unwrap();
        let admin = crate::token_file(&tokens_dir, "admin", ADMIN, &["admin"]);
        let push = crate::token_file(&tokens_dir, "ci", PUSH, &["push"]);
        let net = have_netns().then(|| Netns::create(opts.nodes));
        let mut nodes = Vec::new();
        for id in 1..=opts.nodes {
            let (public, cluster, ns) = match &net {
                Some(n) => {
                    let ip = format!("{}.{id}", n.prefix);
                    (
                        format!("{ip}:5000"),
                        format!("{ip}:5001"),
                        Some(n.namespaces[id as usize - 1].clone()),
                    )
                }
                None => (
                    format!("127.0.0.1:{}", free_port()),
                    format!("127.0.0.1:{}", free_port()),
                    None,
                ),
            };
            nodes.push(NodeProc {
                id,
                public,
                cluster,
                data: dir.path().join(format!("node-{id}")),
                config: dir.path().join(format!("node-{id}.toml")),
                full_config: String::new(),
                log: dir.path().join(format!("node-{id}.log")),
                ns,
                child: None,
            });
        }
        let addrs: Vec<(u64, String)> = nodes.iter().map(|n| (n.id, n.cluster.clone())).collect();
        for n in &mut nodes {
            let mut peers = String::new();
            let voters = opts.voters.unwrap_or(opts.nodes);
            for (id, addr) in &addrs {
                if *id != n.id && *id <= voters {
                    peers.push_str(&format!(
                        "[[cluster.peers]]\nnode_id = {id}\naddr = \"{addr}\"\n"
                    ));
                }
            }
            let text = format!(
                r#"bind = "{public}"
data_dir = "{data}"
serve_local_store = false
sign_key_paths = ["{key}"]
workers = 2

[[tokens]]
name = "admin"
secret_file = "{admin}"
scopes = ["admin"]

[[tokens]]
name = "ci"
secret_file = "{push}"
scopes = ["push"]

[cluster]
node_id = {id}
listen = "{cluster}"
secret_file = "{secret}"
heartbeat_ms = 100
election_timeout_ms = [600, 1200]
snapshot_logs = {snap}
repair_interval_secs = {repair}
orphan_grace_secs = {grace}

{peers}"#,
                public = n.public,
                data = n.data.display(),
                key = key.secret_file.display(),
                admin = admin.secret_file.display(),
                push = push.secret_file.display(),
                id = n.id,
                cluster = n.cluster,
                secret = secret.display(),
                snap = opts.snapshot_logs,
                repair = opts.repair_interval_secs,
                grace = opts.orphan_grace_secs,
            );
            // A cluster of one keeps the tuning keys, without a listener or peers.
            let solo = opts.solo_first && n.id == 1;
            let written = match text.split_once("[cluster]") {
                Some((before, section)) if solo => {
                    let own = ["node_id =", "listen =", "secret_file ="];
                    let kept: Vec<&str> = section
                        .lines()
                        .filter(|l| !own.iter().any(|k| l.starts_with(k)))
                        .collect();
                    format!("{before}[cluster]{}\n", kept.join("\n"))
                }
                _ => text.clone(),
            };
            std::fs::write(&n.config, written).unwrap();
            n.full_config = text;
        }
        let mut c = TestCluster {
            dir,
            key,
            nodes,
            net,
            opts,
        };
        for id in 1..=c.opts.nodes {
            c.launch(id);
        }
        for id in 1..=c.opts.nodes {
            c.wait_healthy(id);
        }
        c
    }

    pub fn node(&self, id: u64) -> &NodeProc {
        &self.nodes[id as usize - 1]
    }

    pub fn url(&self, id: u64) -> String {
        self.node(id).url()
    }

    pub fn ids(&self) -> Vec<u64> {
        (1..=self.opts.nodes).collect()
    }

    /// Whether partitions can be made (nodes in namespaces).
    pub fn can_partition(&self) -> bool {
        self.net.is_some()
    }

    fn launch(&mut self, id: u64) {
        self.launch_with(id, &[]);
    }

    /// Starts node `id` with extra environment variables (a failpoint, say).
    pub fn launch_with(&mut self, id: u64, env: &[(&str, &str)]) {
        let bin = cairnd_bin();
        let n = &mut self.nodes[id as usize - 1];
        assert!(n.child.is_none(), "node {id} is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)
            .unwrap();
        let mut cmd = match &n.ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        cmd.arg("--config")
            .arg(&n.config)
            .env("RUST_LOG", "info,openraft=warn")
            .env_remove("CONFIG_FILE")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        n.child = Some(cmd.spawn().expect("spawn cairnd"));
    }

    /// Waits until node `id` answers `/health`.
    pub fn wait_healthy(&self, id: u64) {
        let url = format!("{}/health", self.url(id));
        crate::wait_for(
            Duration::from_secs(20),
            &format!("node {id} to answer /health"),
            || http_get(&url).is_some_and(|(s, _)| s == 200),
        );
    }

    /// Gives node `id` (started as a cluster of one) its `[cluster]` section; takes
    /// effect at its next start.
    pub fn give_cluster_section(&self, id: u64) {
        let n = self.node(id);
        std::fs::write(&n.config, &n.full_config).unwrap();
    }

    /// `cachectl cluster init` on node 1, then waits for every node to know a leader.
    pub fn init(&self) {
        let out = self.cachectl(1, &["cluster", "init"]);
        assert!(
            out.status.success(),
            "cluster init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let voters: Vec<u64> = (1..=self.opts.voters.unwrap_or(self.opts.nodes)).collect();
        self.wait_leader(&voters, Duration::from_secs(20));
    }

    /// Runs `cachectl` against node `id` with the admin token.
    pub fn cachectl(&self, id: u64, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(crate::cachectl_bin());
        let (sub, rest) = args.split_first().expect("a subcommand");
        cmd.arg(sub);
        if *sub == "status" || *sub == "push" {
            cmd.args(["--cache", &self.url(id)]);
        } else {
            cmd.args(["--server", &self.url(id)]);
        }
        cmd.args(rest)
            .env("CAIRN_TOKEN", ADMIN)
            .env_remove("CAIRN_URL")
            .output()
            .expect("run cachectl")
    }

    /// Reaps node `id` if its process has exited (a failpoint fired); true if it had.
    pub fn reap(&mut self, id: u64) -> bool {
        let n = &mut self.nodes[id as usize - 1];
        match n.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(_))) => {
                n.child = None;
                true
            }
            _ => false,
        }
    }

    /// SIGKILLs node `id` and reaps it.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.nodes[id as usize - 1].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP / SIGCONT of node `id` (the `cairnd` process itself, inside `ip netns exec`
    /// it is the same process: `ip` execs it).
    pub fn signal(&self, id: u64, sig: &str) {
        let pid = self.node(id).pid().expect("node is running");
        must("kill", &[&format!("-{sig}"), &pid.to_string()]);
    }

    /// Starts node `id` again on its data directory and waits for `/health`.
    pub fn restart(&mut self, id: u64) {
        self.launch(id);
        self.wait_healthy(id);
    }

    /// Cuts every link between nodes of different groups (the test keeps reaching all).
    pub fn partition(&self, groups: &[&[u64]]) {
        let net = self
            .net
            .as_ref()
            .expect("partitions need network namespaces");
        for g in groups {
            for &id in *g {
                let ns = &net.namespaces[id as usize - 1];
                clear_rules(ns);
                let mut rules = String::from(
                    "table inet cairntest {\n chain in { type filter hook input priority 0; policy accept;\n",
                );
                let others: Vec<u64> = self.ids().into_iter().filter(|o| !g.contains(o)).collect();
                for o in &others {
                    rules.push_str(&format!("  ip saddr {}.{o} drop\n", net.prefix));
                }
                rules.push_str(
                    " }\n chain out { type filter hook output priority 0; policy accept;\n",
                );
                for o in &others {
                    rules.push_str(&format!("  ip daddr {}.{o} drop\n", net.prefix));
                }
                rules.push_str(" }\n}\n");
                let file = self.dir.path().join(format!("nft-{id}.conf"));
                std::fs::write(&file, rules).unwrap();
                must(
                    "ip",
                    &["netns", "exec", ns, "nft", "-f", file.to_str().unwrap()],
                );
            }
        }
    }

    /// Removes every partition rule.
    pub fn heal(&self) {
        if let Some(net) = &self.net {
            for ns in &net.namespaces {
                clear_rules(ns);
            }
        }
    }

    /// Flips one byte in the middle of node `id`'s copy of the blob `name`.
    pub fn flip_byte(&self, id: u64, name: &str) {
        use std::io::{Read, Seek, SeekFrom};
        let (_, p) = self
            .blob_files(id)
            .into_iter()
            .find(|(f, _)| f == name)
            .expect("node holds the blob");
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        let len = f.metadata().unwrap().len();
        let mut b = [0u8; 1];
        f.seek(SeekFrom::Start(len / 2)).unwrap();
        f.read_exact(&mut b).unwrap();
        f.seek(SeekFrom::Start(len / 2)).unwrap();
        f.write_all(&[b[0] ^ 0x5a]).unwrap();
        f.sync_all().unwrap();
    }

    /// Whether node `id` holds a good copy (hashing to its name) of the blob `name`.
    pub fn has_good_copy(&self, id: u64, name: &str) -> bool {
        self.blob_files(id).into_iter().any(|(f, p)| {
            f == name
                && std::fs::read(&p)
                    .is_ok_and(|b| nix_formats::Hash::sha256_of(&b).to_nix32() == name)
        })
    }

    /// A Raft figure of node `id` from its `/metrics` (None when it does not answer).
    pub fn metric(&self, id: u64, name: &str) -> Option<u64> {
        let (status, body) = http_get(&format!("{}/metrics", self.url(id)))?;
        if status != 200 {
            return None;
        }
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// The cluster id in node `id`'s identity file (None before it joined).
    pub fn cluster_id(&self, id: u64) -> Option<String> {
        let text = std::fs::read_to_string(self.node(id).data.join("raft/cluster-id")).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v["cluster_id"].as_str().map(str::to_string)
    }

    /// The status code node `id`'s cluster listener answers `GET /internal/v1/status`
    /// with, sent with bearer `secret`, target node `target` and cluster id `cluster`
    /// (each header left out when None); 0 when it does not answer.
    pub fn internal_status(
        &self,
        id: u64,
        secret: Option<&str>,
        target: Option<u64>,
        cluster: Option<&str>,
    ) -> u16 {
        let url = format!("http://{}/internal/v1/status", self.node(id).cluster);
        let mut rb = crate::http_client()
            .get(url)
            .timeout(Duration::from_secs(3));
        if let Some(secret) = secret {
            rb = rb.bearer_auth(secret);
        }
        if let Some(target) = target {
            rb = rb.header("cairn-target-node", target.to_string());
        }
        if let Some(cluster) = cluster {
            rb = rb.header("cairn-cluster", cluster);
        }
        crate::rt().block_on(async { rb.send().await.map_or(0, |r| r.status().as_u16()) })
    }

    /// The node among `among` that says it leads, if exactly one does.
    pub fn leader_among(&self, among: &[u64]) -> Option<u64> {
        let leaders: Vec<u64> = among
            .iter()
            .copied()
            .filter(|&id| self.node(id).is_running())
            .filter(|&id| self.metric(id, "cairn_raft_is_leader") == Some(1))
            .collect();
        (leaders.len() == 1).then(|| leaders[0])
    }

    /// Waits until one node of `among` leads and every other running node of `among`
    /// is in its term; returns the leader.
    pub fn wait_leader(&self, among: &[u64], timeout: Duration) -> u64 {
        let mut found = None;
        crate::wait_for(timeout, "a leader", || {
            let Some(l) = self.leader_among(among) else {
                return false;
            };
            let term = self.metric(l, "cairn_raft_term");
            let agreed = among
                .iter()
                .filter(|&&id| self.node(id).is_running())
                .all(|&id| self.metric(id, "cairn_raft_term") == term);
            found = Some(l);
            agreed
        });
        found.expect("leader")
    }

    /// A netrc for `nix copy` with the push token for every node.
    pub fn netrc(&self) -> PathBuf {
        let p = self.dir.path().join("netrc");
        let mut f = std::fs::File::create(&p).unwrap();
        for n in &self.nodes {
            let host = n.public.rsplit_once(':').unwrap().0;
            writeln!(f, "machine {host} login ci password {PUSH}").unwrap();
        }
        p
    }

    /// `nix copy --to` node `id` (zstd); true when Nix says it worked.
    pub fn nix_copy(&self, nix: &testkit::Nix, id: u64, paths: &[String]) -> std::process::Output {
        let url = format!("{}?compression=zstd", self.url(id));
        // Nix 2.8 retries a refused upload with an empty body and can wait forever.
        nix.cmd("timeout")
            .args(["120", "nix", "copy", "--to", &url, "--option", "netrc-file"])
            .arg(self.netrc())
            .args(paths)
            .output()
            .expect("run nix copy")
    }

    /// The blob files on node `id`'s disk, by file name (nix32 file hash).
    pub fn blob_files(&self, id: u64) -> Vec<(String, PathBuf)> {
        let mut out = Vec::new();
        let root = self.node(id).data.join("cache/blobs");
        for shard in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            for f in std::fs::read_dir(shard.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                out.push((f.file_name().to_string_lossy().into_owned(), f.path()));
            }
        }
        out
    }

    /// The tail of node `id`'s log.
    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.node(id).log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let ids = self.ids();
        for id in ids {
            if self.node(id).is_running() {
                // A stopped process must be continued to die cleanly.
                if let Some(pid) = self.node(id).pid() {
                    let _ = sh("kill", &["-CONT", &pid.to_string()]);
                }
                self.kill(id);
            }
            if std::thread::panicking() {
                eprintln!("--- node {id} log (tail) ---\n{}", self.log_tail(id, 40));
            }
        }
        if let Some(net) = self.net.take() {
            net.destroy();
        }
    }
}

impl Netns {
    fn create(nodes: u64) -> Self {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let pid = std::process::id();
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        // Unique per test process and cluster: 10.(100 + pid % 100).(seq % 250).0/24.
        let prefix = format!("10.{}.{}", 100 + pid % 100, seq % 250);
        let tag = format!("{}{seq}", pid % 100_000);
        let bridge = format!("cb{tag}");
        must("ip", &["link", "add", &bridge, "type", "bridge"]);
        must(
            "ip",
            &["addr", "add", &format!("{prefix}.254/24"), "dev", &bridge],
        );
        must("ip", &["link", "set", &bridge, "up"]);
        let mut namespaces = Vec::new();
        for id in 1..=nodes {
            let ns = format!("cairn-{tag}-{id}");
            let host_end = format!("cv{tag}n{id}");
            let node_end = format!("cw{tag}n{id}");
            must("ip", &["netns", "add", &ns]);
            must(
                "ip",
                &[
                    "link", "add", &host_end, "type", "veth", "peer", "name", &node_end,
                ],
            );
            must("ip", &["link", "set", &host_end, "master", &bridge]);
            must("ip", &["link", "set", &host_end, "up"]);
            must("ip", &["link", "set", &node_end, "netns", &ns]);
            let exec = |args: &[&str]| {
                let mut v = vec!["netns", "exec", ns.as_str()];
                v.extend_from_slice(args);
                must("ip", &v);
            };
            exec(&["ip", "link", "set", "lo", "up"]);
            exec(&["ip", "link", "set", &node_end, "name", "eth0"]);
            exec(&[
                "ip",
                "addr",
                "add",
                &format!("{prefix}.{id}/24"),
                "dev",
                "eth0",
            ]);
            exec(&["ip", "link", "set", "eth0", "up"]);
            namespaces.push(ns);
        }
        Netns {
            bridge,
            prefix,
            namespaces,
        }
    }

    fn destroy(self) {
        for ns in &self.namespaces {
            let _ = sh("ip", &["netns", "del", ns]);
        }
        let _ = sh("ip", &["link", "del", &self.bridge]);
    }
}

/// Drops the partition rules of namespace `ns`, if it has any.
fn clear_rules(ns: &str) {
    let _ = sh(
        "ip",
        &[
            "netns",
            "exec",
            ns,
            "nft",
            "delete",
            "table",
            "inet",
            "cairntest",
        ],
    );
}

fn write_private(path: &Path, text: &str) {
    std::fs::write(path, format!("{text}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A blocking GET with a 3 s timeout: (status, body), or None when unreachable.
pub fn http_get(url: &str) -> Option<(u16, String)> {
    let rt = crate::rt();
    rt.block_on(async {
        let resp = crate::http_client()
            .get(url)
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .ok()?;
        let status = resp.status().as_u16();
        Some((status, resp.text().await.ok()?))
    })
}

/// A blocking GET of bytes: (status, body).
pub fn http_get_bytes(url: &str) -> Option<(u16, Vec<u8>)> {
    let rt = crate::rt();
    rt.block_on(async {
        let resp = crate::http_client()
            .get(url)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .ok()?;
        let status = resp.status().as_u16();
        Some((status, resp.bytes().await.ok()?.to_vec()))
    })
}

/// Checks the design's invariants that show from outside, on every node in `on`, for
/// the store paths in `acked` (uploads that were acknowledged):
///
/// - 7: every acknowledged path has a narinfo on every node;
/// - 4: its NAR decompresses to its NarHash and NarSize;
/// - 5: the bytes served under its file hash hash to it;
/// - 1 and 2: at least two nodes (every voter of a smaller cluster) hold a file under
///   that hash on disk, and every such file hashes to its name;
/// - 6: every path it references has a narinfo on every node (its closure is whole);
/// - 3: no node counts more blobs as held in its records than it has files on disk
///   (a copy unregistered only after its file went would show as one too many).
pub fn check_invariants(c: &TestCluster, on: &[u64], acked: &[String]) {
    use nix_formats::{Hash, NarInfo};
    let status = http_get(&format!("{}/api/v1/status", c.url(on[0]))).expect("a status");
    let status: serde_json::Value = serde_json::from_str(&status.1).expect("status JSON");
    let voters = status["voters"].as_array().expect("voters").len();
    let need = voters.min(2);
    for &id in on {
        // Files listed on both sides of the status read: a copy placed and registered,
        // or unregistered and deleted, in between is in one of the two listings.
        let mut files: std::collections::HashSet<String> =
            c.blob_files(id).into_iter().map(|(name, _)| name).collect();
        let (code, text) =
            http_get(&format!("{}/api/v1/status", c.url(id))).expect("a node status");
        assert_eq!(code, 200, "status of node {id}");
        let v: serde_json::Value = serde_json::from_str(&text).expect("status JSON");
        files.extend(c.blob_files(id).into_iter().map(|(name, _)| name));
        let held = v["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .find(|n| n["id"] == id)
            .and_then(|n| n["blobs_held"].as_u64())
            .expect("the node's own line");
        assert!(
            held <= files.len() as u64,
            "invariant 3: node {id} has {held} copies registered but {} blob files",
            files.len()
        );
    }
    for path in acked {
        let hash_part = path
            .rsplit('/')
            .next()
            .and_then(|b| b.get(..32))
            .expect("a store path");
        let mut file_hash = None;
        for &id in on {
            let url = format!("{}/{hash_part}.narinfo", c.url(id));
            let (status, text) = http_get(&url).unwrap_or((0, String::new()));
            assert_eq!(
                status, 200,
                "invariant 7: node {id} lacks acknowledged {path}"
            );
            let ni = NarInfo::parse(&text).expect("a valid narinfo");
            for r in ni.references.iter().filter(|r| **r != ni.store_path) {
                let url = format!("{}/{}.narinfo", c.url(id), r.hash_part());
                assert_eq!(
                    http_get(&url).map(|(s, _)| s),
                    Some(200),
                    "invariant 6: node {id} serves {path} but not its reference {}",
                    r.hash_part()
                );
            }
            let (status, bytes) =
                http_get_bytes(&format!("{}/{}", c.url(id), ni.url)).expect("NAR answer");
            assert_eq!(status, 200, "node {id}: NAR of {path}");
            let fh = Hash::sha256_of(&bytes);
            assert_eq!(
                Some(&fh),
                ni.file_hash.as_ref(),
                "invariant 5: node {id} served bytes that do not hash to the FileHash of {path}"
            );
            let nar = zstd::decode_all(&bytes[..]).expect("a zstd NAR");
            assert_eq!(
                (Hash::sha256_of(&nar), nar.len() as u64),
                (ni.nar_hash.clone(), ni.nar_size),
                "invariant 4: node {id} NarHash/NarSize of {path}"
            );
            file_hash = Some(fh);
        }
        let Some(fh) = file_hash else { continue };
        let name = fh.to_nix32();
        let mut copies = 0;
        for id in c.ids() {
            for (file, p) in c.blob_files(id) {
                if file == name {
                    let bytes = std::fs::read(&p).unwrap();
                    assert_eq!(
                        Hash::sha256_of(&bytes).to_nix32(),
                        name,
                        "invariant 2: node {id} keeps a blob that does not hash to its name"
                    );
                    copies += 1;
                }
            }
        }
        assert!(
            copies >= need,
            "invariant 1: {path} is visible with {copies} copies ({voters} voters)"
        );
    }
}

/// Measures how long `f` takes.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let v = f();
    (v, t.elapsed())
}
