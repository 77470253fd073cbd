//! End to end: a local Nix store served by cairnd, consumed by the real `nix` and by a
//! plain HTTP client. Covers substitution with signature checking (identity and zstd),
//! an untrusting client, every NAR URL shape and encoding, ranges, HEAD, listings, build
//! logs and every error case of the local-store serving issue.

use std::io::Read;
use std::path::Path;

use cache_server::config::{FileConfig, NarinfoCompression};
use cairn_tests::{root_config, Server, TestKey};
use nix_formats::{NarInfo, StoreDir};
use testkit::{ChrootStore, Nix};

struct Http {
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
}

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Result<Vec<u8>, String>,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8(self.body.clone().expect("complete body")).expect("utf-8 body")
    }
    fn bytes(&self) -> &[u8] {
        self.body.as_ref().expect("complete body")
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Http {
    fn new() -> Self {
        Self::with_client(reqwest::Client::builder().no_proxy().build().unwrap())
    }
    fn with_client(client: reqwest::Client) -> Self {
        Http {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            client,
        }
    }
    fn req(&self, method: reqwest::Method, url: &str, headers: &[(&str, &str)]) -> Reply {
        self.try_req(method, url, headers).expect("request sent")
    }
    /// A request whose connection may be cut before the response head arrives.
    fn try_req(
        &self,
        method: reqwest::Method,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Reply, reqwest::Error> {
        self.rt.block_on(async {
            let mut rb = self.client.request(method, url);
            for (k, v) in headers {
                rb = rb.header(*k, *v);
            }
            let resp = rb.send().await?;
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body = resp
                .bytes()
                .await
                .map(|b| b.to_vec())
                .map_err(|e| e.to_string());
            Ok(Reply {
                status,
                headers,
                body,
            })
        })
    }
    fn get(&self, url: &str) -> Reply {
        self.req(reqwest::Method::GET, url, &[])
    }
}

/// Fixture paths built with real Nix and copied into a fresh chroot store, which the
/// server then serves as `/nix/store` from its real location in a temp dir.
struct Fixture {
    nix: Nix,
    src: ChrootStore,
    paths: Vec<String>,
}

impl Fixture {
    fn new(count: usize) -> Self {
        let nix = Nix::new();
        let paths = nix.build_fixtures(&testkit::salt(), count);
        let src = ChrootStore::new();
        let uri = src.uri();
        let mut args = vec!["copy", "--no-check-sigs", "--to", uri.as_str()];
        args.extend(paths.iter().map(String::as_str));
        nix.run("nix", &args);
        Fixture { nix, src, paths }
    }

    fn root_path(&self) -> &str {
        self.paths.last().unwrap()
    }

    fn dump(&self, path: &str) -> Vec<u8> {
        let out = self
            .nix
            .cmd("nix-store")
            .args(["--store", &self.src.uri(), "--dump", path])
            .output()
            .unwrap();
        testkit::check("nix-store", &["--dump", path], &out);
        out.stdout
    }
}

fn hash_part(full: &str) -> String {
    StoreDir::default().parse_path(full).unwrap().hash_part()
}

/// `nix copy --from url --to dest path`, trusting `key`.
fn copy_from(nix: &Nix, url: &str, dest: &ChrootStore, key: &TestKey, path: &str) {
    nix.run(
        "nix",
        &[
            "copy",
            "--from",
            url,
            "--to",
            &dest.uri(),
            "--option",
            "trusted-public-keys",
            &key.public,
            path,
        ],
    );
}

/// Substitutes `path`'s closure from `url` into a fresh chroot store, both ways the
/// issue names, and checks the result against the source.
fn substitute_and_check(fx: &Fixture, url: &str, key: &TestKey) {
    let dest = ChrootStore::new();
    let dest_uri = dest.uri();
    copy_from(&fx.nix, url, &dest, key, fx.root_path());
    let src_info = fx.nix.path_info(Some(&fx.src.uri()), &[fx.root_path()]);
    let dest_info = fx.nix.path_info(Some(&dest_uri), &[fx.root_path()]);
    let summarise = |v: &serde_json::Value| {
        let mut s: Vec<(String, String, u64)> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["path"].as_str().unwrap().to_string(),
                    e["narHash"].as_str().unwrap().to_string(),
                    e["narSize"].as_u64().unwrap(),
                )
            })
            .collect();
        s.sort();
        s
    };
    assert_eq!(summarise(&src_info), summarise(&dest_info));
    assert_eq!(summarise(&dest_info).len(), fx.paths.len(), "whole closure");
    // The copies carry our signature.
    for e in dest_info.as_array().unwrap() {
        let sigs: Vec<&str> = e["signatures"]
            .as_array()
            .map(|a| a.iter().filter_map(|s| s.as_str()).collect())
            .unwrap_or_default();
        let key_name = key.public.split(':').next().unwrap();
        assert!(
            sigs.iter().any(|s| s.starts_with(&format!("{key_name}:"))),
            "{sigs:?}"
        );
    }
    fx.nix.run(
        "nix",
        &[
            "store",
            "verify",
            "--store",
            &dest_uri,
            "--trusted-public-keys",
            &key.public,
            "--sigs-needed",
            "1",
            fx.root_path(),
        ],
    );
    // Contents arrived byte for byte.
    let readme = Path::new(fx.root_path()).join("README");
    assert_eq!(
        std::fs::read(fx.src.real(readme.to_str().unwrap())).unwrap(),
        std::fs::read(dest.real(readme.to_str().unwrap())).unwrap()
    );

    // The second way: realise the path in another fresh store with us as substituter.
    let dest2 = ChrootStore::new();
    fx.nix.run(
        "nix-store",
        &[
            "--store",
            &dest2.uri(),
            "--realise",
            fx.root_path(),
            "--option",
            "substituters",
            url,
            "--option",
            "trusted-public-keys",
            &key.public,
        ],
    );
    assert!(dest2.real(fx.root_path()).join("bin/hello").is_file());
}

#[test]
fn nix_substitutes_a_closure_identity() {
    let fx = Fixture::new(4);
    let key = TestKey::new("cairn-test-1");
    let server = Server::for_root(fx.src.root(), Some(&key));
    substitute_and_check(&fx, &server.url(), &key);
    let metrics = Http::new().get(&format!("{}/metrics", server.url())).text();
    assert!(
        metrics.contains("cairn_http_requests_total{route=\"nar\",status=\"200\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("cairn_nar_bytes_total{encoding=\"identity\"}"));
}

#[test]
fn nix_substitutes_a_closure_zstd() {
    let fx = Fixture::new(3);
    let key = TestKey::new("cairn-test-1");
    let mut cfg = root_config(fx.src.root(), Some(&key));
    cfg.narinfo_compression = Some(NarinfoCompression::Zstd);
    let server = Server::start(cfg);
    let http = Http::new();
    let ni = http.get(&format!(
        "{}/{}.narinfo",
        server.url(),
        hash_part(fx.root_path())
    ));
    assert!(ni.text().contains("Compression: zstd\n"), "{}", ni.text());
    assert!(ni.text().contains(".nar.zst?hash="), "{}", ni.text());
    substitute_and_check(&fx, &server.url(), &key);
    // A second client is served the compressed variant from disk.
    substitute_and_check(&fx, &server.url(), &key);
    let metrics = http.get(&format!("{}/metrics", server.url())).text();
    let hits: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("cairn_variant_cache_hits_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(hits >= 3, "{metrics}");
}

/// A NAR larger than cairnd's zstd frame (1 MiB) is compressed as several frames; Nix
/// must read them back as the one archive (and so must any zstd decoder).
#[test]
fn nix_substitutes_a_nar_compressed_as_several_zstd_frames() {
    let nix = Nix::new();
    let expr = format!(
        r#"derivation {{
          name = "several-frames";
          system = builtins.currentSystem;
          builder = "/bin/sh";
          PATH = "/usr/bin:/bin";
          args = [ "-c" "mkdir $out && seq 1 500000 > $out/numbers && head -c 300000 /dev/urandom > $out/noise && echo {}" ];
        }}"#,
        testkit::salt()
    );
    let path = nix.run("nix-build", &["--no-out-link", "-E", &expr]);
    let path = path.trim();
    let src = ChrootStore::new();
    nix.run(
        "nix",
        &["copy", "--no-check-sigs", "--to", &src.uri(), path],
    );
    let key = TestKey::new("cairn-test-1");
    let mut cfg = root_config(src.root(), Some(&key));
    cfg.narinfo_compression = Some(NarinfoCompression::Zstd);
    let server = Server::start(cfg);
    let http = Http::new();
    let ni = http.get(&format!("{}/{}.narinfo", server.url(), hash_part(path)));
    let info = NarInfo::parse(&ni.text()).unwrap();
    assert!(info.nar_size > 3 << 20, "{}", ni.text());
    let body = http.get(&format!("{}/{}", server.url(), info.url));
    let mut frames = 0;
    let mut rest = body.bytes();
    while !rest.is_empty() {
        let n = zstd::zstd_safe::find_frame_compressed_size(rest).expect("whole zstd frames");
        rest = &rest[n..];
        frames += 1;
    }
    assert!(
        frames >= 3,
        "{frames} frame(s) for {} NAR bytes",
        info.nar_size
    );
    let nar = zstd::decode_all(body.bytes()).unwrap();
    let mut want = Vec::new();
    nix_formats::nar::dump_path(&src.real(path), &mut want).unwrap();
    assert!(nar == want, "the decoded frames are not the path's NAR");

    let dest = ChrootStore::new();
    copy_from(&nix, &server.url(), &dest, &key, path);
    let got = nix.path_info(Some(&dest.uri()), &[path]);
    let had = nix.path_info(Some(&src.uri()), &[path]);
    assert_eq!(got[0]["narHash"], had[0]["narHash"], "{got}");
    assert_eq!(
        std::fs::read(dest.real(path).join("numbers")).unwrap(),
        std::fs::read(src.real(path).join("numbers")).unwrap()
    );
}

#[test]
fn nix_substitutes_a_closure_xz() {
    let fx = Fixture::new(2);
    let key = TestKey::new("cairn-test-1");
    let mut cfg = root_config(fx.src.root(), Some(&key));
    cfg.narinfo_compression = Some(NarinfoCompression::Xz);
    let server = Server::start(cfg);
    substitute_and_check(&fx, &server.url(), &key);
}

#[test]
fn a_client_that_does_not_trust_the_key_refuses() {
    let fx = Fixture::new(2);
    let key = TestKey::new("cairn-test-1");
    let other = TestKey::new("someone-else-1");
    let server = Server::for_root(fx.src.root(), Some(&key));
    let dest = ChrootStore::new();
    let out = fx
        .nix
        .cmd("nix")
        .args([
            "copy",
            "--from",
            &server.url(),
            "--to",
            &dest.uri(),
            "--option",
            "trusted-public-keys",
            &other.public,
            fx.root_path(),
        ])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "copy must fail without a trusted signature"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("signature"), "{stderr}");
    assert!(!dest.real(fx.root_path()).exists());
}

#[test]
fn narinfo_is_signed_and_matches_nix() {
    let fx = Fixture::new(2);
    let key = TestKey::new("cairn-test-1");
    let key2 = TestKey::new("cairn-test-2");
    let mut cfg = root_config(fx.src.root(), Some(&key));
    cfg.sign_key_paths.push(key2.secret_file.clone());
    let server = Server::start(cfg);
    let http = Http::new();
    let info = fx.nix.path_info(Some(&fx.src.uri()), &[fx.root_path()]);
    for entry in info.as_array().unwrap() {
        let full = entry["path"].as_str().unwrap();
        let url = format!("{}/{}.narinfo", server.url(), hash_part(full));
        let r = http.get(&url);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("text/x-nix-narinfo"));
        let ni = NarInfo::parse(&r.text()).unwrap();
        assert_eq!(StoreDir::default().display(&ni.store_path), full);
        let nix_hash: nix_formats::Hash = entry["narHash"].as_str().unwrap().parse().unwrap();
        assert_eq!(ni.nar_hash, nix_hash);
        assert_eq!(ni.nar_size, entry["narSize"].as_u64().unwrap());
        // Two keys, two signatures, in order, both valid.
        assert_eq!(ni.sigs.len(), 2, "{:?}", ni.sigs);
        for (sig, k) in ni.sigs.iter().zip([&key, &key2]) {
            let pk = signer::PublicKey::parse(&k.public).unwrap();
            assert!(pk.verify(&ni.fingerprint(), sig), "{sig}");
        }
        // HEAD answers the same status with no body.
        let h = http.req(reqwest::Method::HEAD, &url, &[]);
        assert_eq!(h.status, 200);
        assert!(h.bytes().is_empty());
    }
    let ci = http.get(&format!("{}/nix-cache-info", server.url()));
    assert_eq!(
        ci.text(),
        "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n"
    );
    let landing = http.get(&format!("{}/", server.url())).text();
    assert!(landing.contains(&key.public) && landing.contains(&key2.public));
    assert!(landing.contains("trusted-public-keys"));
    // A hit costs no signing the second time.
    let metrics = http.get(&format!("{}/metrics", server.url())).text();
    assert!(
        metrics.contains("cairn_signatures_cached_total "),
        "{metrics}"
    );
}

/// Also: what Nix changes in its database shows on the very next request, although
/// narinfos are cached in memory (a signature added, a path deleted).
#[test]
fn signatures_recorded_by_nix_are_passed_through() {
    let fx = Fixture::new(1);
    let key = TestKey::new("cairn-test-1");
    let server = Server::for_root(fx.src.root(), Some(&key));
    let url = format!("{}/{}.narinfo", server.url(), hash_part(fx.root_path()));
    let before = NarInfo::parse(&Http::new().get(&url).text()).unwrap();
    assert!(!before.sigs.iter().any(|s| s.starts_with("upstream-1:")));
    let nix_key_dir = tempfile::tempdir().unwrap();
    let sk = nix_key_dir.path().join("sk");
    let pk = nix_key_dir.path().join("pk");
    fx.nix.run(
        "nix-store",
        &[
            "--generate-binary-cache-key",
            "upstream-1",
            sk.to_str().unwrap(),
            pk.to_str().unwrap(),
        ],
    );
    fx.nix.run(
        "nix",
        &[
            "store",
            "sign",
            "--store",
            &fx.src.uri(),
            "--key-file",
            sk.to_str().unwrap(),
            fx.root_path(),
        ],
    );
    let ni = NarInfo::parse(&Http::new().get(&url).text()).unwrap();
    let upstream = signer::PublicKey::parse(std::fs::read_to_string(&pk).unwrap().trim()).unwrap();
    assert!(
        ni.sigs
            .iter()
            .any(|s| s.starts_with("upstream-1:") && upstream.verify(&ni.fingerprint(), s)),
        "{:?}",
        ni.sigs
    );
    assert!(ni.sigs.iter().any(|s| s.starts_with("cairn-test-1:")));
    fx.nix.run(
        "nix-store",
        &["--store", &fx.src.uri(), "--delete", fx.root_path()],
    );
    assert_eq!(Http::new().get(&url).status, 404);
}

#[test]
fn nar_urls_encodings_ranges_and_listing() {
    let fx = Fixture::new(1);
    let server = Server::for_root(fx.src.root(), None);
    let http = Http::new();
    let path = fx.root_path();
    let expected = fx.dump(path);
    let r = http.get(&format!("{}/{}.narinfo", server.url(), hash_part(path)));
    let ni = NarInfo::parse(&r.text()).unwrap();
    assert_eq!(ni.compression, "none");
    let nar_url = format!("{}/{}", server.url(), ni.url);

    // Identity at the narinfo's URL.
    let r = http.get(&nar_url);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-length"),
        Some(expected.len().to_string().as_str())
    );
    assert_eq!(r.bytes(), &expected[..]);

    // zstd when asked through Accept-Encoding; the same again from the variant cache.
    for _ in 0..2 {
        let r = http.req(
            reqwest::Method::GET,
            &nar_url,
            &[("accept-encoding", "zstd")],
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-encoding"), Some("zstd"));
        let plain = zstd::decode_all(r.bytes()).unwrap();
        assert_eq!(plain, expected);
        // The fixture is mostly random bytes, so only "smaller" is certain.
        assert!(r.bytes().len() < expected.len(), "compressed");
    }

    // xz and zstd through the URL.
    let nar32 = ni.nar_hash.to_nix32();
    let h = hash_part(path);
    let r = http.get(&format!("{}/nar/{nar32}.nar.xz?hash={h}", server.url()));
    assert_eq!(r.status, 200);
    let mut plain = Vec::new();
    xz2::read::XzDecoder::new(r.bytes())
        .read_to_end(&mut plain)
        .unwrap();
    assert_eq!(plain, expected);
    let r = http.get(&format!("{}/nar/{nar32}.nar.zst?hash={h}", server.url()));
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(zstd::decode_all(r.bytes()).unwrap(), expected);

    // nix-serve's legacy URL.
    let r = http.get(&format!("{}/nar/{h}-{nar32}.nar", server.url()));
    assert_eq!(r.status, 200);
    assert_eq!(r.bytes(), &expected[..]);

    // Single byte ranges: identity, 206, Content-Range, exact bytes.
    let n = expected.len();
    for (spec, a, b) in [
        ("bytes=0-99".to_string(), 0, 99),
        // From the start to just short of the end: share/random.bin (over 64 KiB) goes
        // out whole from a mapping inside the range, which then stops in the trailer.
        (format!("bytes=0-{}", n - 2), 0, n - 2),
        (format!("bytes={}-", n - 300), n - 300, n - 1),
        ("bytes=-64".to_string(), n - 64, n - 1),
        (format!("bytes=1000-{}", n + 50), 1000, n - 1),
    ] {
        let r = http.req(
            reqwest::Method::GET,
            &nar_url,
            &[("range", spec.as_str()), ("accept-encoding", "zstd")],
        );
        assert_eq!(r.status, 206, "{spec}");
        assert_eq!(r.header("content-encoding"), None);
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes {a}-{b}/{n}").as_str())
        );
        assert_eq!(r.bytes(), &expected[a..=b], "{spec}");
    }
    let r = http.req(
        reqwest::Method::GET,
        &nar_url,
        &[("range", &format!("bytes={n}-"))],
    );
    assert_eq!(r.status, 416);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes */{n}").as_str())
    );

    // HEAD on a NAR: headers only, no production.
    let r = http.req(reqwest::Method::HEAD, &nar_url, &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some(n.to_string().as_str()));

    // .ls agrees with Nix's own listing of the archive.
    let r = http.get(&format!("{}/{h}.ls", server.url()));
    assert_eq!(r.status, 200);
    let ls: serde_json::Value = serde_json::from_slice(r.bytes()).unwrap();
    assert_eq!(ls["version"], 1);
    let root = &ls["root"];
    assert_eq!(root["type"], "directory");
    assert_eq!(
        root["entries"]["bin"]["entries"]["hello"]["executable"],
        true
    );
    assert_eq!(
        root["entries"]["share"]["entries"]["doc"]["entries"]["README"]["type"],
        "symlink"
    );
    let readme = &root["entries"]["README"];
    let off = readme["narOffset"].as_u64().unwrap() as usize;
    let size = readme["size"].as_u64().unwrap() as usize;
    let on_disk = std::fs::read(fx.src.real(&format!("{path}/README"))).unwrap();
    assert_eq!(&expected[off..off + size], &on_disk[..]);
}

#[test]
fn error_cases() {
    let fx = Fixture::new(1);
    let server = Server::for_root(fx.src.root(), None);
    let http = Http::new();
    let u = server.url();
    let path = fx.root_path();
    let h = hash_part(path);
    let ni = NarInfo::parse(&http.get(&format!("{u}/{h}.narinfo")).text()).unwrap();
    let nar32 = ni.nar_hash.to_nix32();
    let cases: Vec<(String, &[u16])> = vec![
        // Unknown but well-formed hash.
        (
            format!("{u}/00000000000000000000000000000000.narinfo"),
            &[404],
        ),
        // Malformed: wrong length, wrong alphabet.
        (
            format!("{u}/0000000000000000000000000000000.narinfo"),
            &[400],
        ),
        (
            format!("{u}/e0000000000000000000000000000000.narinfo"),
            &[400],
        ),
        (format!("{u}/u{}.ls", &h[1..]), &[400]),
        // NAR with a NarHash that does not belong to the path.
        (format!("{u}/nar/{}.nar?hash={h}", "1".repeat(52)), &[404]),
        (
            format!("{u}/nar/{nar32}.nar?hash=00000000000000000000000000000000"),
            &[404],
        ),
        (format!("{u}/nar/{nar32}.nar"), &[404]),
        (format!("{u}/nar/{nar32}.nar.bz2?hash={h}"), &[404]),
        // Path traversal in every position we parse.
        (format!("{u}/nar/..%2F..%2F..%2Fetc%2Fpasswd"), &[400, 404]),
        (
            format!("{u}/nar/{nar32}.nar?hash=..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd"),
            &[400, 404],
        ),
        (format!("{u}/..%2F..%2F..%2F..%2Fetc%2Fpasswd"), &[400, 404]),
        (format!("{u}/log/..%2F..%2F..%2Fetc%2Fpasswd"), &[400, 404]),
        (format!("{u}/log/{h}-x.drv"), &[404]),
        (format!("{u}/nope"), &[404]),
    ];
    for (url, want) in cases {
        let r = http.get(&url);
        assert!(want.contains(&r.status), "{url}: {} {:?}", r.status, r.body);
        assert!(!r.text().contains("root:"), "{url} leaked a file");
    }

    // A file that shrank after its narinfo was made: the body must break, not end cleanly.
    let big = fx.src.real(&format!("{path}/share/random.bin"));
    let nar_url = format!("{u}/{}", ni.url);
    let full = http.get(&nar_url);
    assert_eq!(full.bytes().len() as u64, ni.nar_size);
    make_writable(&big);
    std::fs::write(&big, b"short").unwrap();
    // The server notices while streaming: depending on how far the response got, the
    // connection is cut before or after the head, never ending a 200 cleanly.
    if let Ok(r) = http.try_req(reqwest::Method::GET, &nar_url, &[]) {
        assert_eq!(r.status, 200);
        assert!(r.body.is_err(), "a truncated NAR must not end cleanly");
    }
    // The same through the zstd encoder, which reads files its own way.
    let zstd = [("accept-encoding", "zstd")];
    if let Ok(r) = http.try_req(reqwest::Method::GET, &nar_url, &zstd) {
        assert_eq!(r.status, 200);
        assert!(r.body.is_err(), "a truncated zstd NAR must not end cleanly");
    }

    // A path that vanished between narinfo and NAR: 404 before any body byte.
    let real = fx.src.real(path);
    make_writable(&real);
    std::fs::remove_dir_all(&real).unwrap();
    let r = http.get(&nar_url);
    assert_eq!(r.status, 404);
    let r = http.get(&format!("{u}/{h}.ls"));
    assert_eq!(r.status, 404);
}

fn make_writable(p: &Path) {
    // Nix makes store paths read-only; as root we could write anyway, but be explicit.
    let _ = std::process::Command::new("chmod")
        .args(["-R", "u+w"])
        .arg(p)
        .status();
    if let Some(parent) = p.parent() {
        let _ = std::process::Command::new("chmod")
            .args(["u+w"])
            .arg(parent)
            .status();
    }
}

#[test]
fn build_logs_are_served() {
    let nix = Nix::new();
    let salt = testkit::salt();
    let dir = tempfile::tempdir().unwrap();
    let expr = dir.path().join("log.nix");
    std::fs::write(
        &expr,
        format!(
            "derivation {{ name = \"logged\"; system = builtins.currentSystem; builder = \"/bin/sh\"; \
             args = [\"-c\" \"echo hello from the build log {salt}; echo x > $out\"]; }}"
        ),
    )
    .unwrap();
    let drv = nix
        .run("nix-instantiate", &[expr.to_str().unwrap()])
        .trim()
        .to_string();
    nix.run("nix-store", &["--realise", &drv]);
    // The machine's own store: its logs are where Nix put them.
    let server = Server::start(FileConfig {
        no_signing: Some(true),
        ..Default::default()
    });
    let base = Path::new(&drv).file_name().unwrap().to_str().unwrap();
    let r = Http::new().get(&format!("{}/log/{base}", server.url()));
    assert_eq!(r.status, 200);
    assert!(
        r.text()
            .contains(&format!("hello from the build log {salt}")),
        "{}",
        r.text()
    );
}

#[test]
fn tls_serves_nix() {
    let fx = Fixture::new(2);
    let key = TestKey::new("cairn-test-1");
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let mut cfg = root_config(fx.src.root(), Some(&key));
    cfg.tls_cert_path = Some(cert_path.clone());
    cfg.tls_key_path = Some(key_path);
    let server = Server::start(cfg);
    assert!(server.url().starts_with("https://"));
    let client = reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let r = Http::with_client(client).get(&format!("{}/nix-cache-info", server.url()));
    assert_eq!(r.status, 200);
    // Real Nix over HTTPS, trusting our certificate through NIX_SSL_CERT_FILE.
    let dest = ChrootStore::new();
    let out = fx
        .nix
        .cmd("nix")
        .env("NIX_SSL_CERT_FILE", &cert_path)
        .args([
            "copy",
            "--from",
            &server.url(),
            "--to",
            &dest.uri(),
            "--option",
            "trusted-public-keys",
            &key.public,
            fx.root_path(),
        ])
        .output()
        .unwrap();
    testkit::check("nix", &["copy over https"], &out);
    assert!(dest.real(fx.root_path()).join("README").is_file());
}
