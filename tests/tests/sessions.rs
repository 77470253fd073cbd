//! Upload sessions (docs/api.md) spoken by hand over HTTP, for what `cachectl` never does
//! on purpose: parts at the wrong offset, parts cut short or running past the NAR, two
//! parts at once, a restart between parts, a whole that does not verify, and the checks
//! done at creation. Build logs uploaded with `PUT /log/<drv>` too. The path uploaded
//! is a real one (`nix-store --add`), so the end of the story is a separate Nix client
//! substituting it with the cache's key trusted.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use cache_server::config::FileConfig;
use cairn_tests::{Server, TestKey};
use serde_json::{json, Value};
use testkit::Nix;

const PUSH: &str = "cairn_push_token_for_session_tests_0123456789";
const READ: &str = "cairn_read_token_for_session_tests_0123456789";
const PART: u64 = 1 << 20;

struct Fixture {
    nix: Nix,
    key: TestKey,
    secrets: tempfile::TempDir,
    data: tempfile::TempDir,
}

/// A path in the machine's store whose NAR is `size`-ish bytes of incompressible data.
struct Added {
    path: String,
    nar: Vec<u8>,
    info: Value,
}

fn fixture() -> Fixture {
    Fixture {
        nix: Nix::new(),
        key: TestKey::new("cairn-sessions-1"),
        secrets: tempfile::tempdir().unwrap(),
        data: tempfile::tempdir().unwrap(),
    }
}

impl Fixture {
    /// A server on this fixture's data directory (so a second one is a restart),
    /// serving only its cache store.
    fn server(&self, tweak: impl FnOnce(&mut FileConfig)) -> Server {
        let mut cfg = FileConfig {
            data_dir: Some(self.data.path().to_path_buf()),
            serve_local_store: Some(false),
            sign_key_paths: vec![self.key.secret_file.clone()],
            tokens: vec![
                cairn_tests::token_file(self.secrets.path(), "ci", PUSH, &["push"]),
                cairn_tests::token_file(self.secrets.path(), "reader", READ, &["read"]),
            ],
            upload_part_bytes: Some(PART),
            ..Default::default()
        };
        tweak(&mut cfg);
        Server::start(cfg)
    }

    /// Adds a directory with one file of `size` pseudo-random bytes to the store.
    fn add(&self, size: usize) -> Added {
        let dir = tempfile::tempdir().unwrap();
        let root = dir
            .path()
            .join(format!("session-fixture-{}", testkit::salt()));
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("data"), noise(size)).unwrap();
        let path = self
            .nix
            .run("nix-store", &["--add", root.to_str().unwrap()])
            .trim()
            .to_string();
        let nar = self
            .nix
            .cmd("nix-store")
            .args(["--dump", &path])
            .output()
            .unwrap()
            .stdout;
        let info = self.nix.path_info(None, &[&path])[0].clone();
        assert_eq!(info["narSize"].as_u64(), Some(nar.len() as u64));
        Added { path, nar, info }
    }

    /// A separate Nix client substitutes `path` from `server` with the key trusted.
    fn substitute(&self, server: &Server, a: &Added) {
        let (_dest, got) = cairn_tests::substitute(&server.url(), &self.key.public, &a.path);
        assert_eq!(got[0]["narHash"], a.info["narHash"]);
    }
}

/// xorshift: bytes zstd cannot shrink, so compressed sizes track NAR sizes.
fn noise(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ rand_seed();
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn rand_seed() -> u64 {
    u64::from_str_radix(&testkit::salt(), 16).unwrap()
}

/// Status and body (JSON when it parses, else the text as a string).
async fn answer(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v)
}

fn create_body(a: &Added) -> Value {
    json!({
        "store_path": a.path,
        "nar_hash": a.info["narHash"],
        "nar_size": a.info["narSize"],
        "references": a.info["references"],
        "compression": "zstd",
    })
}

async fn create(url: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
    let mut req = cairn_tests::http_client()
        .post(format!("{url}/api/v1/uploads"))
        .json(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    answer(req.send().await.unwrap()).await
}

async fn put_part(url: &str, id: &str, offset: u64, body: Vec<u8>) -> (u16, Value) {
    let resp = cairn_tests::http_client()
        .put(format!("{url}/api/v1/uploads/{id}?nar_offset={offset}"))
        .bearer_auth(PUSH)
        .body(body)
        .send()
        .await
        .unwrap();
    answer(resp).await
}

async fn look(url: &str, id: &str) -> (u16, Value) {
    let resp = cairn_tests::http_client()
        .get(format!("{url}/api/v1/uploads/{id}"))
        .bearer_auth(PUSH)
        .send()
        .await
        .unwrap();
    answer(resp).await
}

/// `DELETE /api/v1/uploads/<id>`: the status.
async fn abort(url: &str, id: &str) -> u16 {
    cairn_tests::http_client()
        .delete(format!("{url}/api/v1/uploads/{id}"))
        .bearer_auth(PUSH)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn get_status(url: &str) -> u16 {
    cairn_tests::http_client()
        .get(url)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn frame(nar: &[u8]) -> Vec<u8> {
    zstd::bulk::compress(nar, 1).unwrap()
}

fn narinfo_url(server: &Server, path: &str) -> String {
    let base = path.trim_start_matches("/nix/store/");
    format!("{}/{}.narinfo", server.url(), &base[..32])
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn parts_survive_mistakes_and_a_restart_then_the_path_substitutes() {
    let f = fixture();
    let a = f.add(3 * PART as usize + 12345);
    let nar_size = a.nar.len() as u64;
    let rt = cairn_tests::rt();
    let server = f.server(|_| {});
    let url = server.url();
    let id = rt.block_on(async {
        let (st, s) = create(&url, Some(PUSH), &create_body(&a)).await;
        assert_eq!(st, 200, "{s}");
        assert_eq!(s["complete"], false);
        assert_eq!(s["nar_offset"], 0);
        assert_eq!(s["part_size"], PART);
        let id = s["id"].as_str().unwrap().to_string();

        let (st, v) = put_part(&url, &id, 0, frame(&a.nar[..PART as usize])).await;
        assert_eq!((st, &v["nar_offset"]), (200, &json!(PART)), "{v}");

        // The same part again, at an offset the session has passed: 409 and where it is.
        let (st, v) = put_part(&url, &id, 0, frame(&a.nar[..PART as usize])).await;
        assert_eq!((st, &v["nar_offset"]), (409, &json!(PART)), "{v}");

        // A frame cut short: refused, the session stays where it was. (This part's
        // frame does not declare its size, unlike cachectl's: the server counts its NAR
        // bytes by decompressing it.)
        let whole = zstd::encode_all(&a.nar[PART as usize..2 * PART as usize], 1).unwrap();
        let (st, v) = put_part(&url, &id, PART, whole[..whole.len() / 2].to_vec()).await;
        assert_eq!(st, 400, "{v}");
        assert!(v.as_str().unwrap().contains("zstd frames"), "{v}");
        // Not a zstd frame at all.
        let (st, _) = put_part(&url, &id, PART, b"not zstd at all".to_vec()).await;
        assert_eq!(st, 400);
        let (st, v) = look(&url, &id).await;
        assert_eq!((st, &v["nar_offset"]), (200, &json!(PART)), "{v}");
        // A part with no query offset.
        let resp = cairn_tests::http_client()
            .put(format!("{url}/api/v1/uploads/{id}"))
            .bearer_auth(PUSH)
            .body(whole.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 400);
        // Parts need a push token.
        let resp = cairn_tests::http_client()
            .put(format!("{url}/api/v1/uploads/{id}?nar_offset={PART}"))
            .bearer_auth(READ)
            .body(whole.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 403);

        let (st, v) = put_part(&url, &id, PART, whole).await;
        assert_eq!((st, &v["nar_offset"]), (200, &json!(2 * PART)), "{v}");
        id
    });
    let session_dir = server.state.blobs.sessions_dir().join(&id);
    assert!(session_dir.join("data").is_file());
    drop(server);

    // A restart: the session and its two parts are still there.
    let server = f.server(|_| {});
    let url = server.url();
    rt.block_on(async {
        let (st, s) = create(&url, Some(PUSH), &create_body(&a)).await;
        assert_eq!(st, 200, "{s}");
        assert_eq!(
            s["id"],
            json!(id),
            "creating again resumes the same session"
        );
        assert_eq!(s["nar_offset"], json!(2 * PART));

        // Two parts at once: the second finds the session busy.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(2);
        let third = frame(&a.nar[2 * PART as usize..3 * PART as usize]);
        let slow = tokio::spawn({
            let url = url.clone();
            let id = id.clone();
            async move {
                let body = reqwest::Body::wrap_stream(tokio_stream_of(rx));
                let resp = cairn_tests::http_client()
                    .put(format!("{url}/api/v1/uploads/{id}?nar_offset={}", 2 * PART))
                    .bearer_auth(PUSH)
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                answer(resp).await
            }
        });
        tx.send(Ok(Bytes::copy_from_slice(&third[..1000])))
            .await
            .unwrap();
        // Once the server is receiving the first part, a second one is refused.
        let mut busy = false;
        for _ in 0..500 {
            let (st, v) = look(&url, &id).await;
            assert_eq!(st, 200, "{v}");
            if v["busy"] == json!(true) {
                busy = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(busy, "the session never showed the part in flight");
        let (st, v) = put_part(&url, &id, 2 * PART, third.clone()).await;
        assert_eq!((st, &v["nar_offset"]), (409, &json!(2 * PART)), "{v}");
        tx.send(Ok(Bytes::copy_from_slice(&third[1000..])))
            .await
            .unwrap();
        drop(tx);
        let (st, v) = slow.await.unwrap();
        assert_eq!((st, &v["nar_offset"]), (200, &json!(3 * PART)), "{v}");

        // The last part with bytes past the declared NarSize: refused, nothing lost.
        let mut too_much = a.nar[3 * PART as usize..].to_vec();
        too_much.extend_from_slice(b"0123456789");
        let (st, v) = put_part(&url, &id, 3 * PART, frame(&too_much)).await;
        assert_eq!(st, 400, "{v}");
        assert!(v.as_str().unwrap().contains("more NAR bytes"), "{v}");
        assert_eq!(get_status(&narinfo_url(&server, &a.path)).await, 404);

        let (st, v) = put_part(&url, &id, 3 * PART, frame(&a.nar[3 * PART as usize..])).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["complete"], true);
        assert_eq!(v["nar_offset"], json!(nar_size));
        assert!(v["file_hash"].as_str().unwrap().starts_with("sha256:"));

        let (st, _) = look(&url, &id).await;
        assert_eq!(st, 404, "a finished session is gone");
        assert_eq!(get_status(&narinfo_url(&server, &a.path)).await, 200);
        let (st, s) = create(&url, Some(PUSH), &create_body(&a)).await;
        assert_eq!((st, &s["complete"]), (200, &json!(true)), "{s}");
    });
    assert!(!session_dir.exists(), "the session's files are gone");
    f.substitute(&server, &a);
}

fn tokio_stream_of(
    mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[test]
fn a_whole_that_does_not_verify_leaves_nothing() {
    let f = fixture();
    let small = f.add(200_000);
    let big = f.add(2 * PART as usize + 777);
    let other = f.add(1000);
    let server = f.server(|_| {});
    let url = server.url();
    let blobs_dir = server.state.blobs.root().join("blobs");
    cairn_tests::rt().block_on(async {
        // One part, declared with another path's NarHash.
        let mut body = create_body(&small);
        body["nar_hash"] = other.info["narHash"].clone();
        let (st, s) = create(&url, Some(PUSH), &body).await;
        assert_eq!(st, 200, "{s}");
        let id = s["id"].as_str().unwrap();
        let (st, v) = put_part(&url, id, 0, frame(&small.nar)).await;
        assert_eq!(st, 400, "{v}");
        assert!(v.as_str().unwrap().contains("NarHash"), "{v}");
        assert_eq!(look(&url, id).await.0, 404, "the session is gone");

        // Several parts, declared with a NarHash the whole does not have.
        let mut body = create_body(&big);
        body["nar_hash"] = other.info["narHash"].clone();
        let (st, s) = create(&url, Some(PUSH), &body).await;
        assert_eq!(st, 200, "{s}");
        let id = s["id"].as_str().unwrap();
        let mut at = 0usize;
        let mut last = (0, Value::Null);
        while at < big.nar.len() {
            let end = (at + PART as usize).min(big.nar.len());
            last = put_part(&url, id, at as u64, frame(&big.nar[at..end])).await;
            at = end;
        }
        assert_eq!(last.0, 400, "{}", last.1);
        assert!(last.1.as_str().unwrap().contains("NarHash"), "{}", last.1);
        assert_eq!(look(&url, id).await.0, 404);

        // One part whose frame structure is whole but whose last byte is wrong: its
        // header says how much it holds, so it is taken as a part; the whole, decompressed
        // and verified at the end, is refused and the session goes.
        let (st, s) = create(&url, Some(PUSH), &create_body(&small)).await;
        assert_eq!(st, 200, "{s}");
        let id = s["id"].as_str().unwrap();
        let mut bad = frame(&small.nar);
        *bad.last_mut().unwrap() ^= 0x55;
        let (st, v) = put_part(&url, id, 0, bad).await;
        assert_eq!(st, 400, "{v}");
        assert_eq!(look(&url, id).await.0, 404, "the session is gone");

        // A NAR that is not one: a valid zstd frame of garbage, in one part.
        let mut body = create_body(&other);
        body["nar_size"] = json!(1000);
        let (_, s) = create(&url, Some(PUSH), &body).await;
        let id = s["id"].as_str().unwrap();
        let (st, v) = put_part(&url, id, 0, frame(&noise(1000))).await;
        assert_eq!(st, 400, "{v}");
        assert!(v.as_str().unwrap().contains("not a valid NAR"), "{v}");

        for a in [&small, &big, &other] {
            assert_eq!(get_status(&narinfo_url(&server, &a.path)).await, 404);
        }
    });
    assert_eq!(
        files_under(&blobs_dir),
        Vec::<PathBuf>::new(),
        "no blob kept"
    );
    assert_eq!(
        files_under(&server.state.blobs.sessions_dir()),
        Vec::<PathBuf>::new(),
        "no session files kept"
    );
    assert_eq!(server.state.catalog.path_count().unwrap(), 0);
}

#[test]
fn creating_checks_everything_before_a_byte_is_sent() {
    let f = fixture();
    let dep = f.add(1000);
    let server = f.server(|c| c.max_nar_upload_bytes = Some(10 << 20));
    let url = server.url();
    cairn_tests::rt().block_on(async {
        let body = create_body(&dep);
        assert_eq!(create(&url, None, &body).await.0, 401);
        assert_eq!(create(&url, Some(READ), &body).await.0, 403);

        let mut b = body.clone();
        b["store_path"] = json!("/gnu/store/00000000000000000000000000000000-x");
        let (st, v) = create(&url, Some(PUSH), &b).await;
        assert_eq!(st, 400, "{v}");

        let mut b = body.clone();
        b["references"] = json!(["/nix/store/00000000000000000000000000000000-not-here"]);
        let (st, v) = create(&url, Some(PUSH), &b).await;
        assert_eq!(st, 400, "{v}");
        assert!(
            v.as_str().unwrap().contains("neither in the cache nor"),
            "{v}"
        );

        let mut b = body.clone();
        b["nar_size"] = json!(11 << 20);
        assert_eq!(create(&url, Some(PUSH), &b).await.0, 413);

        let mut b = body.clone();
        b["nar_hash"] = json!("sha256:tooshort");
        assert_eq!(create(&url, Some(PUSH), &b).await.0, 400);

        let mut b = body.clone();
        b["compression"] = json!("gzip");
        assert_eq!(create(&url, Some(PUSH), &b).await.0, 400);

        let mut b = body.clone();
        b["unknown_field"] = json!(1);
        let (st, _) = create(&url, Some(PUSH), &b).await;
        assert!((400..500).contains(&st), "{st}");

        // Abort: the session and its bytes are gone.
        let (_, s) = create(&url, Some(PUSH), &body).await;
        let id = s["id"].as_str().unwrap();
        assert_eq!(abort(&url, id).await, 204);
        assert_eq!(look(&url, id).await.0, 404);
        assert_eq!(put_part(&url, id, 0, frame(&dep.nar)).await.0, 404);
    });
    assert_eq!(server.state.catalog.path_count().unwrap(), 0);
}

/// Waits (10 s at most) until `dir` holds `n` files.
async fn until_files(dir: &Path, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while files_under(dir).len() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "{} file(s) under {}, waited for {n}",
            files_under(dir).len(),
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Opens a session for `reference` (which must allow early dependents), then one for
/// `dependent` declaring it as its reference: both ids, and the dependent's request.
async fn declare_both(url: &str, reference: &Added, dependent: &Added) -> (String, String, Value) {
    let (st, r) = create(url, Some(PUSH), &create_body(reference)).await;
    assert_eq!((st, &r["early_dependents"]), (200, &json!(true)), "{r}");
    let mut body = create_body(dependent);
    body["references"] = json!([reference.path]);
    let (st, d) = create(url, Some(PUSH), &body).await;
    assert_eq!(st, 200, "{d}");
    let id = |v: &Value| v["id"].as_str().unwrap().to_string();
    (id(&r), id(&d), body)
}

/// Sends `a`'s whole NAR as the one part of session `id`, in a task of its own.
fn spawn_part(url: &str, id: String, a: &Added) -> tokio::task::JoinHandle<(u16, Value)> {
    let (url, nar) = (url.to_string(), frame(&a.nar));
    tokio::spawn(async move { put_part(&url, &id, 0, nar).await })
}

/// A path may be declared while a reference is still being uploaded in a session that
/// allowed early dependents: its own NAR is verified and stored, then its path waits
/// until the reference is recorded, and never shows before it. A reference whose
/// session ends without it fails the wait (503, nothing recorded).
#[test]
fn a_dependent_waits_for_a_reference_still_being_uploaded() {
    let f = fixture();
    let (a, b, c, d) = (f.add(3000), f.add(2000), f.add(1000), f.add(500));
    let server = f.server(|_| {});
    let url = server.url();
    let blobs_dir = server.state.blobs.root().join("blobs");
    cairn_tests::rt().block_on(async {
        let (a_id, b_id, _) = declare_both(&url, &a, &b).await;
        // B's whole NAR first: verified and stored, its path held back.
        let b_put = spawn_part(&url, b_id, &b);
        until_files(&blobs_dir, 1).await;
        assert_eq!(get_status(&narinfo_url(&server, &b.path)).await, 404);
        assert!(!b_put.is_finished(), "B was recorded before its reference");

        // A arrives: A is recorded, then B.
        let (st, v) = put_part(&url, &a_id, 0, frame(&a.nar)).await;
        assert_eq!((st, &v["complete"]), (200, &json!(true)), "{v}");
        let (st, v) = b_put.await.unwrap();
        assert_eq!((st, &v["complete"]), (200, &json!(true)), "{v}");
        for p in [&a.path, &b.path] {
            assert_eq!(get_status(&narinfo_url(&server, p)).await, 200);
        }

        // C waits on D, whose session is then aborted: C's path is refused.
        let (d_id, c_id, body) = declare_both(&url, &d, &c).await;
        let c_put = spawn_part(&url, c_id, &c);
        until_files(&blobs_dir, 3).await;
        assert_eq!(abort(&url, &d_id).await, 204);
        let (st, v) = c_put.await.unwrap();
        assert_eq!(st, 503, "{v}");
        assert!(v.to_string().contains("neither in the cache nor"), "{v}");
        for p in [&c.path, &d.path] {
            assert_eq!(get_status(&narinfo_url(&server, p)).await, 404);
        }
        // With D gone, declaring C again is refused at once.
        assert_eq!(create(&url, Some(PUSH), &body).await.0, 400);
    });
    assert_eq!(server.state.catalog.path_count().unwrap(), 2);
    // Nix takes B and its declared reference A from the cache.
    let (_dest, got) = cairn_tests::substitute(&server.url(), &f.key.public, &b.path);
    for x in [&a, &b] {
        let info = got
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["path"] == x.info["path"]);
        assert_eq!(
            info.expect("substituted")["narHash"],
            x.info["narHash"],
            "{got}"
        );
    }
}

#[test]
fn build_logs_upload_and_serve() {
    let f = fixture();
    let server = f.server(|c| c.max_log_bytes = Some(1 << 20));
    let url = server.url();
    let drv = "0123456789abcdfghijklmnpqrsvwxyz-hello-2.12.drv";
    let log_url = format!("{url}/log/{drv}");
    let text = "building hello\nchecking for gcc... yes\nall done\n";
    cairn_tests::rt().block_on(async {
        assert_eq!(get_status(&log_url).await, 404);
        let put = |token: Option<&'static str>, body: Vec<u8>| {
            let mut req = cairn_tests::http_client().put(&log_url).body(body);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            req.send()
        };
        assert_eq!(put(None, text.into()).await.unwrap().status(), 401);
        assert_eq!(put(Some(READ), text.into()).await.unwrap().status(), 403);
        assert_eq!(put(Some(PUSH), text.into()).await.unwrap().status(), 200);
        let got = cairn_tests::http_client()
            .get(&log_url)
            .send()
            .await
            .unwrap();
        assert_eq!(got.status(), 200);
        assert_eq!(got.text().await.unwrap(), text);

        // Compressed in transit, stored and served as text; a newer log replaces it.
        let newer = format!("{text}rebuilt\n");
        let resp = cairn_tests::http_client()
            .put(&log_url)
            .bearer_auth(PUSH)
            .header("Content-Encoding", "zstd")
            .body(zstd::bulk::compress(newer.as_bytes(), 3).unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let got = cairn_tests::http_client()
            .get(&log_url)
            .send()
            .await
            .unwrap();
        assert_eq!(got.text().await.unwrap(), newer);

        assert_eq!(
            put(Some(PUSH), vec![b'x'; (1 << 20) + 1])
                .await
                .unwrap()
                .status(),
            413
        );
        let resp = cairn_tests::http_client()
            .put(format!("{url}/log/not-a-store-path.drv"))
            .bearer_auth(PUSH)
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
        let resp = cairn_tests::http_client()
            .put(format!(
                "{url}/log/0123456789abcdfghijklmnpqrsvwxyz-hello-2.12"
            ))
            .bearer_auth(PUSH)
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "logs belong to .drv files");
    });
    let logs = files_under(&f.data.path().join("logs"));
    assert_eq!(logs.len(), 1, "{logs:?}");
}
