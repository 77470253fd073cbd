//! Uploads end to end: stock `nix copy --to http://…` (xz and zstd) authenticated by a
//! token in netrc, then a fresh store substituting everything from cairnd with signature
//! checking on; the 401/403 cases; and every kind of bad upload, each answered with a
//! 4xx/5xx and leaving no file or record behind.

use std::io::Write;
use std::path::{Path, PathBuf};

use cache_server::config::FileConfig;
use cairn_tests::{Server, TestKey};
use nix_formats::{Hash, NarInfo, StoreDir};
use testkit::Nix;

const PUSH: &str = "cairn_push_token_for_tests_0123456789abcdef";
const READ: &str = "cairn_read_token_for_tests_0123456789abcdef";

struct Setup {
    nix: Nix,
    key: TestKey,
    server: Server,
    paths: Vec<String>,
    _secrets: tempfile::TempDir,
}

/// A cache-store-only server (the local store is not served, so every hit below comes
/// from what was uploaded) with a push and a read token, and fixture paths to upload.
fn setup(count: usize, tweak: impl FnOnce(&mut FileConfig)) -> Setup {
    let nix = Nix::new();
    let paths = nix.build_fixtures(&testkit::salt(), count);
    let key = TestKey::new("cairn-upload-1");
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
    let server = Server::start(cfg);
    Setup {
        nix,
        key,
        server,
        paths,
        _secrets: secrets,
    }
}

impl Setup {
    fn netrc(&self, token: &str) -> PathBuf {
        let p = self
            .server
            .data
            .path()
            .join(format!("netrc-{}", &token[6..10]));
        let mut f = std::fs::File::create(&p).unwrap();
        writeln!(f, "machine 127.0.0.1 login ci password {token}").unwrap();
        p
    }

    /// `nix copy --to` the whole fixture closure; returns the command's output.
    fn copy_to(&self, query: &str, token: Option<&str>) -> std::process::Output {
        let url = format!("{}{query}", self.server.url());
        let mut cmd = self.nix.cmd("nix");
        cmd.args(["copy", "--to", &url]);
        if let Some(t) = token {
            cmd.args(["--option", "netrc-file", self.netrc(t).to_str().unwrap()]);
        }
        cmd.args(&self.paths).output().unwrap()
    }

    /// Substitutes the closure into a fresh store from a separate Nix client, as another
    /// machine would: the uploading client's narinfo cache remembers the narinfos it
    /// sent (unsigned), so it must not be the one checking the cache's signatures.
    fn substitute_all(&self) {
        let root = self.paths.last().unwrap();
        let (dest, got) = cairn_tests::substitute(&self.server.url(), &self.key.public, root);
        assert_eq!(got.as_array().unwrap().len(), self.paths.len());
        let want = self.nix.path_info(None, &[root]);
        let hashes = |v: &serde_json::Value| {
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
        };
        assert_eq!(hashes(&got), hashes(&want));
        assert!(dest.real(root).join("bin/hello").is_file());
    }

    fn blobs_and_staging(&self) -> (usize, usize) {
        let count = |p: PathBuf| walk(&p);
        let cache = self.server.data.path().join("cache");
        (count(cache.join("blobs")), count(cache.join("staging")))
    }
}

fn walk(p: &Path) -> usize {
    match std::fs::read_dir(p) {
        Ok(rd) => rd
            .map(|e| {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    walk(&e.path())
                } else {
                    1
                }
            })
            .sum(),
        Err(_) => 0,
    }
}

#[test]
fn nix_copy_to_with_xz_then_substitute() {
    let s = setup(3, |_| {});
    let out = s.copy_to("", Some(PUSH));
    testkit::check("nix copy --to", &[], &out);
    let r = http_get(&format!(
        "{}/{}.narinfo",
        s.server.url(),
        hash_part(s.paths.last().unwrap())
    ));
    assert!(r.contains("Compression: xz\n"), "{r}");
    assert!(r.contains(".nar.xz\n"), "{r}");
    s.substitute_all();
}

#[test]
fn nix_copy_to_with_zstd_then_substitute() {
    let s = setup(3, |_| {});
    let out = s.copy_to("?compression=zstd", Some(PUSH));
    testkit::check("nix copy --to ?compression=zstd", &[], &out);
    let r = http_get(&format!(
        "{}/{}.narinfo",
        s.server.url(),
        hash_part(s.paths.last().unwrap())
    ));
    assert!(r.contains("Compression: zstd\n"), "{r}");
    assert!(r.contains("URL: nar/") && r.contains(".nar.zst\n"), "{r}");
    s.substitute_all();
    // Uploading again is a no-op that succeeds.
    let out = s.copy_to("?compression=zstd", Some(PUSH));
    testkit::check("nix copy --to (again)", &[], &out);
}

#[test]
fn uploads_need_a_push_token() {
    let s = setup(1, |_| {});
    let out = s.copy_to("", None);
    assert!(!out.status.success(), "upload without a token must fail");
    let out = s.copy_to("", Some(READ));
    assert!(!out.status.success(), "upload with a read token must fail");
    let url = format!("{}/nar/{}.nar", s.server.url(), "0".repeat(52));
    assert_eq!(put(&url, None, b"x".to_vec(), &[]).0, 401);
    assert_eq!(put(&url, Some(READ), b"x".to_vec(), &[]).0, 403);
    assert_eq!(put(&url, Some("cairn_wrong"), b"x".to_vec(), &[]).0, 401);
    assert_eq!(s.blobs_and_staging(), (0, 0));
    // Reads stay public.
    let r = http_status(&format!("{}/nix-cache-info", s.server.url()));
    assert_eq!(r, 200);
}

#[test]
fn a_private_cache_needs_a_read_token() {
    let s = setup(1, |c| c.private = Some(true));
    let u = format!("{}/{}.narinfo", s.server.url(), "0".repeat(32));
    assert_eq!(http_status(&u), 401);
    assert_eq!(status_with(&u, READ), 404);
    assert_eq!(status_with(&u, PUSH), 404);
}

/// One NAR of a fixture path, compressed with zstd, with its hashes.
struct Nar {
    path: String,
    nar: Vec<u8>,
    zst: Vec<u8>,
    file_hash: Hash,
    nar_hash: Hash,
}

fn nar_of(nix: &Nix, path: &str) -> Nar {
    let out = nix
        .cmd("nix-store")
        .args(["--dump", path])
        .output()
        .unwrap();
    let nar = out.stdout;
    let zst = zstd::encode_all(&nar[..], 3).unwrap();
    Nar {
        path: path.to_string(),
        file_hash: Hash::sha256_of(&zst),
        nar_hash: Hash::sha256_of(&nar),
        nar,
        zst,
    }
}

fn narinfo_for(n: &Nar, refs: &str) -> String {
    format!(
        "StorePath: {}\nURL: nar/{}.nar.zst\nCompression: zstd\nFileHash: {}\nFileSize: {}\nNarHash: {}\nNarSize: {}\nReferences: {refs}\n",
        n.path,
        n.file_hash.to_nix32(),
        n.file_hash,
        n.zst.len(),
        n.nar_hash,
        n.nar.len()
    )
}

#[test]
fn bad_uploads_are_refused_and_leave_nothing() {
    let s = setup(2, |_| {});
    let u = s.server.url();
    let dep = nar_of(&s.nix, &s.paths[0]);
    let top = nar_of(&s.nix, &s.paths[1]);
    let nar_url = |n: &Nar| format!("{u}/nar/{}.nar.zst", n.file_hash.to_nix32());
    let info_url = |n: &Nar| format!("{u}/{}.narinfo", hash_part(&n.path));

    // Bytes that do not hash to the URL (a valid NAR, but another one).
    let (st, body) = put(&nar_url(&top), Some(PUSH), dep.zst.clone(), &[]);
    assert_eq!(st, 400, "{body}");
    assert!(body.contains("FileHash"), "{body}");
    // A body that is not a NAR (zstd of other bytes), at its own hash.
    let junk = zstd::encode_all(&b"hello, not a NAR"[..], 3).unwrap();
    let junk_url = format!("{u}/nar/{}.nar.zst", Hash::sha256_of(&junk).to_nix32());
    let (st, body) = put(&junk_url, Some(PUSH), junk, &[]);
    assert_eq!(st, 400, "{body}");
    // A body that does not decompress.
    let raw = b"plainly not zstd".to_vec();
    let raw_url = format!("{u}/nar/{}.nar.zst", Hash::sha256_of(&raw).to_nix32());
    assert_eq!(put(&raw_url, Some(PUSH), raw, &[]).0, 400);
    // A bad URL.
    assert_eq!(
        put(&format!("{u}/nar/abc.nar.gz"), Some(PUSH), vec![1], &[]).0,
        400
    );
    // Refused before a byte of a large body is read: the client still gets the status,
    // not a reset connection.
    let (st, body) = put(&nar_url(&top), None, vec![0; 4 << 20], &[]);
    assert_eq!(st, 401, "{body}");
    // A truncated upload: Content-Length promises more than arrives.
    truncated_put(
        &nar_url(&top),
        PUSH,
        &top.zst[..top.zst.len() / 2],
        top.zst.len(),
    );
    cairn_tests::wait_for(
        std::time::Duration::from_secs(10),
        "the truncated upload is cleaned up",
        || s.blobs_and_staging() == (0, 0),
    );
    // HEAD does not claim a NAR that is not there.
    assert_eq!(head_status(&nar_url(&top)), 404);

    // Now the real NARs, which succeed; HEAD then says so.
    assert_eq!(put(&nar_url(&dep), Some(PUSH), dep.zst.clone(), &[]).0, 200);
    assert_eq!(
        put(
            &nar_url(&top),
            Some(PUSH),
            top.zst.clone(),
            &[("content-encoding", "identity")]
        )
        .0,
        200
    );
    assert_eq!(head_status(&nar_url(&top)), 200);
    assert_eq!(s.blobs_and_staging(), (2, 0));
    // Sending a stored NAR again is answered at once, whole body or not.
    assert_eq!(put(&nar_url(&top), Some(PUSH), top.zst.clone(), &[]).0, 200);
    assert_eq!(s.blobs_and_staging(), (2, 0));

    let dep_base = Path::new(&dep.path)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let good = narinfo_for(&top, &dep_base);
    let cases: Vec<(&str, String, u16)> = vec![
        (
            "wrong NarHash",
            good.replace(&top.nar_hash.to_string(), &dep.nar_hash.to_string()),
            400,
        ),
        (
            "wrong NarSize",
            good.replace(&format!("NarSize: {}", top.nar.len()), "NarSize: 12"),
            400,
        ),
        (
            "unknown reference",
            narinfo_for(&top, &format!("{}-nope", "1".repeat(32))),
            400,
        ),
        ("reference not yet uploaded", good.clone(), 400),
        (
            "duplicate field",
            format!("{good}NarSize: {}\n", top.nar.len()),
            400,
        ),
        ("unknown field", format!("{good}Frobnicate: yes\n"), 400),
        ("not a narinfo", "hello".to_string(), 400),
        (
            "too large",
            format!("{good}Sig: {}\n", "x".repeat(1 << 20)),
            413,
        ),
    ];
    for (what, text, want) in cases {
        let (st, body) = put(&info_url(&top), Some(PUSH), text.into_bytes(), &[]);
        assert_eq!(st, want, "{what}: {body}");
        assert!(
            !body.is_empty() && body.lines().count() == 1,
            "{what}: one-line reason, got {body:?}"
        );
        assert_eq!(http_status(&info_url(&top)), 404, "{what} left a record");
    }
    // StorePath that does not match the URL it is sent to.
    let (st, _) = put(&info_url(&dep), Some(PUSH), good.clone().into_bytes(), &[]);
    assert_eq!(st, 400);

    // The dependency first, then the path: accepted, served, signed by us.
    assert_eq!(
        put(
            &info_url(&dep),
            Some(PUSH),
            narinfo_for(&dep, "").into_bytes(),
            &[]
        )
        .0,
        200
    );
    let signed_by_nix = good.clone();
    assert_eq!(
        put(&info_url(&top), Some(PUSH), signed_by_nix.into_bytes(), &[]).0,
        200
    );
    let served = NarInfo::parse(&http_get(&info_url(&top))).unwrap();
    assert_eq!(served.nar_hash, top.nar_hash);
    let pk = signer::PublicKey::parse(&s.key.public).unwrap();
    assert!(served
        .sigs
        .iter()
        .any(|sig| pk.verify(&served.fingerprint(), sig)));
    // The stored bytes come back as they went in; a plain .nar request gets the NAR.
    assert_eq!(http_bytes(&nar_url(&top)), top.zst);
    assert_eq!(
        http_bytes(&format!("{u}/nar/{}.nar", top.file_hash.to_nix32())),
        top.nar
    );
}

#[test]
fn a_full_disk_answers_507_and_keeps_nothing() {
    if !cairn_tests::is_root() {
        panic!("this test mounts a tmpfs and must run as root (scripts/test does in CI)");
    }
    let mnt = tempfile::tempdir().unwrap();
    let _mount = Tmpfs::mount(mnt.path(), "6m");
    let s = setup(1, |c| {
        c.data_dir = Some(mnt.path().join("data"));
        c.reserve_bytes = Some(1 << 20);
    });
    let u = s.server.url();
    // Declared too large: refused before the body is read.
    // A valid 16 MiB NAR (one file of incompressible bytes): only the disk can stop it.
    let big = {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("big");
        let mut data = vec![0u8; 16 << 20];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for b in data.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        std::fs::write(&file, &data).unwrap();
        let mut nar = Vec::new();
        nix_formats::nar::dump_path(&file, &mut nar).unwrap();
        nar
    };
    let big_url = format!("{u}/nar/{}.nar", Hash::sha256_of(&big).to_nix32());
    let answer = head_only_put(&big_url, PUSH, big.len());
    assert!(answer.starts_with("HTTP/1.1 507"), "{answer}");
    // Not declared (chunked): fills the disk mid-way, then is cleaned up. The server
    // may answer 507 and close while the client is still sending, so the client can
    // see a reset instead of the answer; what matters is that nothing stays behind.
    let st = chunked_put(&big_url, PUSH, &big);
    assert!(st == 507 || st == 0, "status {st}");
    let staged = || {
        walk(&mnt.path().join("data/cache/staging")) + walk(&mnt.path().join("data/cache/blobs"))
    };
    cairn_tests::wait_for(
        std::time::Duration::from_secs(10),
        "the failed upload is cleaned up",
        || staged() == 0,
    );
    // And the cache still works afterwards.
    let n = nar_of(&s.nix, &s.paths[0]);
    let url = format!("{u}/nar/{}.nar.zst", n.file_hash.to_nix32());
    assert_eq!(put(&url, Some(PUSH), n.zst.clone(), &[]).0, 200);
    drop(s);
}

// ---- small HTTP helpers (blocking, on a private runtime) ----

fn hash_part(full: &str) -> String {
    StoreDir::default().parse_path(full).unwrap().hash_part()
}

fn http_get(url: &str) -> String {
    cairn_tests::rt().block_on(async {
        cairn_tests::http_client()
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    })
}

fn http_bytes(url: &str) -> Vec<u8> {
    cairn_tests::rt().block_on(async {
        let r = cairn_tests::http_client().get(url).send().await.unwrap();
        assert_eq!(r.status(), 200, "{url}");
        r.bytes().await.unwrap().to_vec()
    })
}

fn http_status(url: &str) -> u16 {
    cairn_tests::rt().block_on(async {
        cairn_tests::http_client()
            .get(url)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    })
}

fn status_with(url: &str, token: &str) -> u16 {
    cairn_tests::rt().block_on(async {
        cairn_tests::http_client()
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    })
}

fn head_status(url: &str) -> u16 {
    cairn_tests::rt().block_on(async {
        cairn_tests::http_client()
            .head(url)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    })
}

fn put(url: &str, token: Option<&str>, body: Vec<u8>, headers: &[(&str, &str)]) -> (u16, String) {
    cairn_tests::rt().block_on(async {
        let mut rb = cairn_tests::http_client().put(url).body(body);
        if let Some(t) = token {
            rb = rb.basic_auth("ci", Some(t));
        }
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        let r = rb.send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    })
}

fn chunked_put(url: &str, token: &str, body: &[u8]) -> u16 {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    cairn_tests::rt().block_on(async {
        let stream = futures_util::stream::iter(chunks);
        cairn_tests::http_client()
            .put(url)
            .bearer_auth(token)
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    })
}

/// Sends a PUT whose Content-Length promises `claimed` bytes, sends `part`, then
/// closes the connection.
fn truncated_put(url: &str, token: &str, part: &[u8], claimed: usize) {
    let (host, path) = split_url(url);
    let mut s = std::net::TcpStream::connect(host).unwrap();
    write!(
        s,
        "PUT /{path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nContent-Length: {claimed}\r\n\r\n"
    )
    .unwrap();
    s.write_all(part).unwrap();
    s.flush().unwrap();
}

/// Sends only the head of a PUT declaring `claimed` bytes and reads the answer: a server
/// that refuses by Content-Length answers without waiting for the body.
fn head_only_put(url: &str, token: &str, claimed: usize) -> String {
    let (host, path) = split_url(url);
    let mut s = std::net::TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        s,
        "PUT /{path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nContent-Length: {claimed}\r\n\r\n"
    )
    .unwrap();
    let mut buf = [0u8; 4096];
    let n = std::io::Read::read(&mut s, &mut buf).expect("an answer before any body byte");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn split_url(url: &str) -> (&str, &str) {
    url.strip_prefix("http://")
        .unwrap()
        .split_once('/')
        .unwrap()
}

struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Self {
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs");
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A NAR of one file of `len` bytes that do not compress, and its zstd form.
fn incompressible_nar(len: usize) -> (Vec<u8>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let content: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(dir.path().join("data"), &content).unwrap();
    let mut nar = Vec::new();
    nix_formats::nar::dump_path(dir.path(), &mut nar).unwrap();
    let zst = zstd::encode_all(&nar[..], 1).unwrap();
    (nar, zst)
}

/// A large stored blob goes out whole and in ranges, byte for byte (over plain HTTP
/// that is `sendfile` from a mapping once the blob is known good); after a byte of it
/// changes on disk it never goes out again: the serve that finds it aborts the body,
/// the copy is removed, and the NAR answers 404.
#[test]
fn a_stored_blob_is_served_whole_and_never_after_it_changed() {
    let s = setup(0, |_| {});
    let (_, zst) = incompressible_nar(3 << 20);
    let hash = Hash::sha256_of(&zst);
    let url = format!("{}/nar/{}.nar.zst", s.server.url(), hash.to_nix32());
    let (st, body) = put(&url, Some(PUSH), zst.clone(), &[]);
    assert_eq!(st, 200, "{body}");
    for _ in 0..2 {
        assert!(http_bytes(&url) == zst, "whole blob, byte for byte");
    }
    let part = cairn_tests::rt().block_on(async {
        let r = cairn_tests::http_client()
            .get(&url)
            .header("Range", "bytes=1000000-1999999")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 206);
        r.bytes().await.unwrap()
    });
    assert!(
        part[..] == zst[1_000_000..2_000_000],
        "the range, byte for byte"
    );

    let n32 = hash.to_nix32();
    let stored = s
        .server
        .data
        .path()
        .join("cache/blobs")
        .join(&n32[..2])
        .join(&n32);
    let mut bytes = std::fs::read(&stored).unwrap();
    bytes[2_000_000] ^= 0x20;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&stored)
        .unwrap()
        .write_all(&bytes)
        .unwrap();
    let clean = cairn_tests::rt().block_on(async {
        match cairn_tests::http_client().get(&url).send().await {
            Ok(r) if r.status() == 200 => r.bytes().await.ok().map(|b| b.to_vec()),
            _ => None,
        }
    });
    assert!(
        clean.is_none(),
        "a changed blob was served with a clean end"
    );
    cairn_tests::wait_for(
        std::time::Duration::from_secs(10),
        "the changed copy is set aside",
        || http_status(&url) == 404,
    );
    assert!(!stored.exists());
}

#[test]
fn a_standalone_cache_of_an_earlier_cairn_is_taken_into_the_cluster_of_one() {
    use store::blobs::{BlobStore, Compression};
    use store::meta::{BlobRecord, CacheDb, PathRecord, Scope, TokenRecord};
    let nix = Nix::new();
    // A chain: paths[1] references paths[0].
    let paths = nix.build_fixtures(&testkit::salt(), 2);
    let data = tempfile::tempdir().unwrap();
    // What an earlier cairnd kept: blob files under cache/blobs, records in cache.redb.
    {
        let blobs = BlobStore::open(&data.path().join("cache"), 0).unwrap();
        let db = CacheDb::open(&data.path().join("cache.redb")).unwrap();
        let dep = nar_of(&nix, &paths[0]);
        let top = nar_of(&nix, &paths[1]);
        let dep_base = Path::new(&dep.path).file_name().unwrap().to_str().unwrap();
        for (n, refs) in [(&dep, String::new()), (&top, dep_base.to_string())] {
            let got = blobs
                .ingest(&n.zst[..], Compression::Zstd, Some(&n.file_hash), u64::MAX)
                .unwrap();
            db.put_blob(&BlobRecord {
                file_hash: got.file_hash.clone(),
                file_size: got.file_size,
                compression: got.compression,
                nar_hash: got.nar_hash,
                nar_size: got.nar_size,
                created: 1_700_000_000,
            })
            .unwrap();
            let ni = NarInfo::parse(&narinfo_for(n, &refs)).unwrap();
            db.put_path(&PathRecord {
                store_path: ni.store_path,
                url_file_hash: got.file_hash,
                nar_hash: ni.nar_hash,
                nar_size: ni.nar_size,
                references: ni.references,
                deriver: None,
                system: None,
                sigs: Vec::new(),
                ca: None,
                registered: 1_700_000_000,
            })
            .unwrap();
        }
        db.put_token(&TokenRecord {
            id: "t_old".into(),
            name: "old ci".into(),
            secret_hash: Hash::sha256_of(PUSH.as_bytes())
                .digest()
                .try_into()
                .unwrap(),
            scopes: vec![Scope::Push],
            expires: None,
            created: 1_700_000_000,
            revoked: false,
        })
        .unwrap();
    }
    let key = TestKey::new("cairn-upload-1");
    let server = Server::start(FileConfig {
        data_dir: Some(data.path().to_path_buf()),
        serve_local_store: Some(false),
        sign_key_paths: vec![key.secret_file.clone()],
        ..Default::default()
    });
    let u = server.url();
    assert!(!data.path().join("cache.redb").exists());
    assert!(data.path().join("cache.redb.imported").is_file());
    assert_eq!(server.state.catalog.path_count().unwrap(), 2);
    // The token still pushes (a bad narinfo gets past authentication to a 400); a token
    // the old cache did not know is refused.
    let url = format!("{u}/{}.narinfo", hash_part(&paths[0]));
    let (st, body) = put(&url, Some(PUSH), b"junk".to_vec(), &[]);
    assert_eq!(st, 400, "{body}");
    assert_eq!(put(&url, Some(READ), b"junk".to_vec(), &[]).0, 401);
    // Every path substitutes into a fresh store, signed, with its references.
    let (dest, got) = cairn_tests::substitute(&u, &key.public, &paths[1]);
    assert_eq!(got.as_array().unwrap().len(), 2, "{got}");
    assert!(dest.real(&paths[1]).exists());
    // A second start finds nothing more to import and keeps the records.
    let data_dir = data.path().to_path_buf();
    drop(server);
    let again = Server::start(FileConfig {
        data_dir: Some(data_dir),
        serve_local_store: Some(false),
        no_signing: Some(true),
        ..Default::default()
    });
    assert_eq!(again.state.catalog.path_count().unwrap(), 2);
    assert_eq!(
        http_status(&format!("{}/{}.narinfo", again.url(), hash_part(&paths[0]))),
        200
    );
}
