//! The blob store on real files: ingest of real NARs in every compression, every way an
//! upload can be wrong, and that nothing is left behind when it is.

mod common;

use std::fs;
use std::io::{self, Read};

use common::{blob_files, compress, fixture_nar, noise, staging_files, COMPRESSED};
use nix_formats::Hash;
use proptest::prelude::*;
use store::blobs::{AfterStore, BlobError, BlobStore, Compression, Ingested};

const MAX: u64 = 1 << 30;

fn open() -> (tempfile::TempDir, BlobStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(&dir.path().join("cache"), 0).unwrap();
    (dir, store)
}

/// Asserts the store holds no blob and nothing in staging.
#[track_caller]
fn assert_empty(store: &BlobStore) {
    assert_eq!(
        staging_files(store),
        Vec::<std::path::PathBuf>::new(),
        "staging"
    );
    assert_eq!(blob_files(store), Vec::<std::path::PathBuf>::new(), "blobs");
}

/// Ingests `body` and expects it to fail; checks nothing was left behind.
#[track_caller]
fn ingest_err(store: &BlobStore, body: &[u8], c: Compression) -> BlobError {
    let before = blob_files(store);
    let err = store
        .ingest(body, c, None, MAX)
        .expect_err("the upload must be refused");
    assert!(staging_files(store).is_empty(), "staging after {err:?}");
    assert_eq!(blob_files(store), before, "blobs after {err:?}");
    err
}

#[test]
fn compression_names_and_extensions() {
    for c in Compression::ALL {
        assert_eq!(Compression::from_name(c.name()), Some(c));
        assert_eq!(Compression::from_ext(c.ext()), Some(c));
    }
    let names: Vec<_> = Compression::ALL.iter().map(|c| c.name()).collect();
    assert_eq!(names, ["none", "zstd", "xz", "bzip2"]);
    let exts: Vec<_> = Compression::ALL.iter().map(|c| c.ext()).collect();
    assert_eq!(exts, ["", ".zst", ".xz", ".bz2"]);
    assert_eq!(Compression::from_name("gzip"), None);
    assert_eq!(Compression::from_ext(".gz"), None);
}

#[test]
fn ingest_round_trips_every_compression() {
    let (_dir, store) = open();
    let nar = fixture_nar(300_000);
    let nar_hash = Hash::sha256_of(&nar);
    for c in Compression::ALL {
        let body = compress(c, &nar);
        let file_hash = Hash::sha256_of(&body);
        let got = store.ingest(&body[..], c, Some(&file_hash), MAX).unwrap();
        assert_eq!(
            got,
            Ingested {
                file_hash: file_hash.clone(),
                file_size: body.len() as u64,
                nar_hash: nar_hash.clone(),
                nar_size: nar.len() as u64,
                compression: c,
            },
            "{c:?}"
        );
        let path = store.blob_path(&file_hash);
        let name = file_hash.to_nix32();
        assert_eq!(
            path,
            store.root().join("blobs").join(&name[..2]).join(&name),
            "layout"
        );
        assert_eq!(fs::read(&path).unwrap(), body, "stored as uploaded: {c:?}");
        assert!(store.contains(&file_hash));
        let (mut file, len) = store.open_blob(&file_hash).unwrap().unwrap();
        assert_eq!(len, body.len() as u64);
        let mut back = Vec::new();
        file.read_to_end(&mut back).unwrap();
        assert_eq!(back, body);
    }
    assert!(staging_files(&store).is_empty());
    assert_eq!(blob_files(&store).len(), 4);
}

#[test]
fn ingest_without_expected_hash_reports_it() {
    let (_dir, store) = open();
    let nar = fixture_nar(10_000);
    let body = compress(Compression::Zstd, &nar);
    let got = store
        .ingest(&body[..], Compression::Zstd, None, MAX)
        .unwrap();
    assert_eq!(got.file_hash, Hash::sha256_of(&body));
    assert_eq!(got.nar_hash, Hash::sha256_of(&nar));
}

/// Input arriving in tiny reads (as network chunks do) changes nothing.
#[test]
fn ingest_from_a_trickling_body() {
    struct Trickle<'a>(&'a [u8]);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.0.len()).min(7);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }
    let (_dir, store) = open();
    let nar = fixture_nar(50_000);
    for c in Compression::ALL {
        let body = compress(c, &nar);
        let got = store.ingest(Trickle(&body), c, None, MAX).unwrap();
        assert_eq!(got.file_hash, Hash::sha256_of(&body), "{c:?}");
        assert_eq!(got.nar_hash, Hash::sha256_of(&nar), "{c:?}");
    }
}

/// Nix (and parallel compressors) may write several streams or frames back to back.
#[test]
fn concatenated_streams_are_one_upload() {
    let (_dir, store) = open();
    let nar = fixture_nar(100_000);
    let (a, b) = nar.split_at(nar.len() / 3);
    for c in COMPRESSED {
        let mut body = compress(c, a);
        if c == Compression::Xz {
            // Stream padding between xz streams is valid.
            body.extend_from_slice(&[0; 4]);
        }
        body.extend(compress(c, b));
        let got = store.ingest(&body[..], c, None, MAX).unwrap();
        assert_eq!(got.file_hash, Hash::sha256_of(&body), "{c:?}");
        assert_eq!(got.nar_hash, Hash::sha256_of(&nar), "{c:?}");
        assert_eq!(got.file_size, body.len() as u64);
    }
}

#[test]
fn wrong_expected_hash_is_refused_and_leaves_nothing() {
    let (_dir, store) = open();
    let nar = fixture_nar(10_000);
    for c in Compression::ALL {
        let body = compress(c, &nar);
        let wrong = Hash::sha256_of(b"something else");
        let err = store.ingest(&body[..], c, Some(&wrong), MAX).unwrap_err();
        match err {
            BlobError::FileHashMismatch { expected, actual } => {
                assert_eq!(expected, wrong);
                assert_eq!(actual, Hash::sha256_of(&body));
            }
            other => panic!("{c:?}: {other:?}"),
        }
        assert!(!store.contains(&Hash::sha256_of(&body)));
    }
    assert_empty(&store);
}

#[test]
fn truncated_bodies_are_refused() {
    let (_dir, store) = open();
    let nar = fixture_nar(50_000);
    for c in COMPRESSED {
        let body = compress(c, &nar);
        for cut in [0, 1, body.len() / 2, body.len() - 1] {
            let err = ingest_err(&store, &body[..cut], c);
            assert!(
                matches!(err, BlobError::Decompress(_)),
                "{c:?} cut at {cut}: {err:?}"
            );
        }
    }
    for cut in [0, 8, nar.len() / 2, nar.len() - 1] {
        let err = ingest_err(&store, &nar[..cut], Compression::None);
        assert!(
            matches!(&err, BlobError::NotANar(r) if r.contains("truncated")),
            "cut at {cut}: {err:?}"
        );
    }
    assert_empty(&store);
}

#[test]
fn garbage_is_refused() {
    let (_dir, store) = open();
    let garbage = noise(7, 64 * 1024);
    let err = ingest_err(&store, &garbage, Compression::None);
    assert!(matches!(err, BlobError::NotANar(_)), "{err:?}");
    for c in COMPRESSED {
        let err = ingest_err(&store, &garbage, c);
        assert!(matches!(err, BlobError::Decompress(_)), "{c:?}: {err:?}");
    }
    assert_empty(&store);
}

#[test]
fn valid_compression_of_something_else_is_not_a_nar() {
    let (_dir, store) = open();
    for c in COMPRESSED {
        let body = compress(c, b"hello, this is not an archive at all");
        let err = ingest_err(&store, &body, c);
        assert!(
            matches!(&err, BlobError::NotANar(r) if r.contains("magic")),
            "{c:?}: {err:?}"
        );
    }
    assert_empty(&store);
}

#[test]
fn trailing_data_is_refused() {
    let (_dir, store) = open();
    let nar = fixture_nar(10_000);
    let trailing = b"trailing garbage".as_slice();

    // After the archive, inside the (de)compressed stream.
    let with_tail = [nar.as_slice(), trailing].concat();
    for c in Compression::ALL {
        let err = ingest_err(&store, &compress(c, &with_tail), c);
        assert!(
            matches!(&err, BlobError::NotANar(r) if r.contains("trailing")),
            "{c:?}: {err:?}"
        );
    }
    // A second valid stream that decompresses to more bytes.
    for c in COMPRESSED {
        let body = [compress(c, &nar), compress(c, trailing)].concat();
        let err = ingest_err(&store, &body, c);
        assert!(
            matches!(&err, BlobError::NotANar(r) if r.contains("trailing")),
            "{c:?}: {err:?}"
        );
    }
    // Raw bytes after the end of the compressed stream.
    for c in COMPRESSED {
        let body = [compress(c, &nar), trailing.to_vec()].concat();
        let err = ingest_err(&store, &body, c);
        assert!(matches!(err, BlobError::Decompress(_)), "{c:?}: {err:?}");
    }
    assert_empty(&store);
}

/// Counts what the store pulled from the body.
struct Counting<R> {
    inner: R,
    pulled: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pulled += n as u64;
        Ok(n)
    }
}

#[test]
fn max_bytes_stops_reading_at_once() {
    let (_dir, store) = open();
    let nar = fixture_nar(200_000);
    for c in Compression::ALL {
        let body = compress(c, &nar);
        let len = body.len() as u64;
        let max = len / 2;
        let mut counting = Counting {
            inner: &body[..],
            pulled: 0,
        };
        let err = store.ingest(&mut counting, c, None, max).unwrap_err();
        assert!(
            matches!(err, BlobError::TooLarge { max: m } if m == max),
            "{c:?}: {err:?}"
        );
        assert!(
            counting.pulled <= max + 1,
            "{c:?}: pulled {} bytes with a cap of {max}",
            counting.pulled
        );
        assert_empty(&store);

        // One byte short of the body: still too large. Exactly the body: fine.
        let err = store.ingest(&body[..], c, None, len - 1).unwrap_err();
        assert!(matches!(err, BlobError::TooLarge { .. }), "{c:?}: {err:?}");
        assert_empty(&store);
        let got = store.ingest(&body[..], c, None, len).unwrap();
        assert_eq!(got.file_size, len);
        store.remove(&got.file_hash).unwrap();
    }
}

#[test]
fn a_failing_body_is_a_body_error_and_leaves_nothing() {
    struct Breaks<'a> {
        data: &'a [u8],
        after: usize,
    }
    impl Read for Breaks<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.after == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "client left",
                ));
            }
            let n = buf.len().min(self.after).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            self.after -= n;
            Ok(n)
        }
    }
    let (_dir, store) = open();
    let nar = fixture_nar(300_000);
    for c in Compression::ALL {
        let body = compress(c, &nar);
        let breaks = Breaks {
            data: &body,
            after: body.len() / 2,
        };
        let err = store.ingest(breaks, c, None, MAX).unwrap_err();
        assert!(
            matches!(&err, BlobError::Body(e) if e.kind() == io::ErrorKind::ConnectionReset),
            "{c:?}: {err:?}"
        );
        assert_empty(&store);
    }
}

/// A replica is checked by its FileHash alone: the bytes a peer verified arrive whole
/// and are stored; any changed byte, missing byte or extra byte changes the hash and
/// leaves nothing behind.
#[test]
fn a_replica_is_stored_when_its_bytes_hash_right_and_refused_otherwise() {
    let (_dir, store) = open();
    let nar = fixture_nar(50_000);
    let nar_hash = Hash::sha256_of(&nar);
    let expected = || store::blobs::ExpectedNar {
        nar_hash: &nar_hash,
        nar_size: nar.len() as u64,
    };
    let body = compress(Compression::Zstd, &nar);
    let file_hash = Hash::sha256_of(&body);

    let mut flipped = body.clone();
    flipped[body.len() / 2] ^= 0x01;
    let mut longer = body.clone();
    longer.push(0);
    for (what, bad) in [
        ("a flipped byte", &flipped[..]),
        ("a missing byte", &body[..body.len() - 1]),
        ("an extra byte", &longer[..]),
    ] {
        let err = store
            .ingest_replica(
                bad,
                Compression::Zstd,
                &file_hash,
                expected(),
                MAX,
                AfterStore::KeepCached,
            )
            .expect_err(what);
        match err {
            BlobError::FileHashMismatch { expected, actual } => {
                assert_eq!(expected, file_hash, "{what}");
                assert_eq!(actual, Hash::sha256_of(bad), "{what}");
            }
            other => panic!("{what}: {other:?}"),
        }
        assert_empty(&store);
    }

    let got = store
        .ingest_replica(
            &body[..],
            Compression::Zstd,
            &file_hash,
            expected(),
            MAX,
            AfterStore::DropCached,
        )
        .unwrap();
    assert_eq!(
        got,
        Ingested {
            file_hash: file_hash.clone(),
            file_size: body.len() as u64,
            nar_hash: nar_hash.clone(),
            nar_size: nar.len() as u64,
            compression: Compression::Zstd,
        }
    );
    assert_eq!(fs::read(store.blob_path(&file_hash)).unwrap(), body);
    assert!(staging_files(&store).is_empty());
    // The cap holds for copies too.
    let err = store
        .ingest_replica(
            &body[..],
            Compression::Zstd,
            &file_hash,
            expected(),
            100,
            AfterStore::KeepCached,
        )
        .unwrap_err();
    assert!(matches!(err, BlobError::TooLarge { max: 100 }), "{err:?}");
}

#[test]
fn reingest_is_idempotent() {
    let (_dir, store) = open();
    let nar = fixture_nar(20_000);
    let body = compress(Compression::Xz, &nar);
    let first = store.ingest(&body[..], Compression::Xz, None, MAX).unwrap();
    let path = store.blob_path(&first.file_hash);
    let inode = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&path).unwrap());
    let second = store
        .ingest(&body[..], Compression::Xz, Some(&first.file_hash), MAX)
        .unwrap();
    assert_eq!(first, second);
    assert_eq!(blob_files(&store), vec![path.clone()]);
    assert!(staging_files(&store).is_empty());
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&fs::metadata(&path).unwrap()),
        inode,
        "the stored file is kept, not replaced"
    );
}

#[test]
fn remove_and_lookups_of_unknown_blobs() {
    let (_dir, store) = open();
    let unknown = Hash::sha256_of(b"never uploaded");
    assert!(!store.contains(&unknown));
    assert!(store.open_blob(&unknown).unwrap().is_none());
    store.remove(&unknown).unwrap();

    let body = compress(Compression::None, &fixture_nar(1000));
    let got = store
        .ingest(&body[..], Compression::None, None, MAX)
        .unwrap();
    assert!(store.contains(&got.file_hash));
    store.remove(&got.file_hash).unwrap();
    assert!(!store.contains(&got.file_hash));
    assert!(store.open_blob(&got.file_hash).unwrap().is_none());
    store.remove(&got.file_hash).unwrap();
}

#[test]
fn open_cleans_leftover_staging_and_keeps_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cache");
    let body = compress(Compression::Zstd, &fixture_nar(1000));
    let kept = {
        let store = BlobStore::open(&root, 0).unwrap();
        store
            .ingest(&body[..], Compression::Zstd, None, MAX)
            .unwrap()
    };
    // What a crash mid-upload leaves behind.
    fs::write(root.join("staging/upload-AbC123"), b"half an upload").unwrap();
    fs::write(root.join("staging/upload-XyZ789"), b"").unwrap();
    fs::create_dir(root.join("staging/odd")).unwrap();
    fs::write(root.join("staging/odd/file"), b"x").unwrap();

    let store = BlobStore::open(&root, 0).unwrap();
    assert_eq!(fs::read_dir(store.staging_dir()).unwrap().count(), 0);
    assert!(store.contains(&kept.file_hash));
    assert_eq!(fs::read(store.blob_path(&kept.file_hash)).unwrap(), body);
}

#[test]
fn a_root_has_one_owner_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cache");
    let first = BlobStore::open(&root, 0).unwrap();
    fs::write(root.join("staging/upload-inflight"), b"in flight").unwrap();
    let err = BlobStore::open(&root, 0).unwrap_err();
    assert!(
        matches!(&err, BlobError::Io(e) if e.kind() == io::ErrorKind::WouldBlock),
        "{err:?}"
    );
    assert!(
        root.join("staging/upload-inflight").exists(),
        "a refused open must not touch the owner's staging area"
    );
    drop(first);
    BlobStore::open(&root, 0).unwrap();
}

#[test]
fn check_space_honours_the_reserve() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path(), 0).unwrap();
    store.check_space(1).unwrap();
    let free = store.available().unwrap();
    assert!(free > 0);
    match store.check_space(free + 1) {
        Err(BlobError::InsufficientStorage { needed, available }) => {
            assert_eq!(needed, free + 1);
            assert!(available <= free + 1);
        }
        other => panic!("{other:?}"),
    }
    drop(store);
    // A reserve larger than the disk leaves nothing for uploads, up front and mid-way.
    let store = BlobStore::open(dir.path(), u64::MAX).unwrap();
    assert_eq!(store.available().unwrap(), 0);
    assert!(matches!(
        store.check_space(1),
        Err(BlobError::InsufficientStorage {
            needed: 1,
            available: 0
        })
    ));
    let body = compress(Compression::None, &fixture_nar(3 << 20));
    let err = store
        .ingest(&body[..], Compression::None, None, MAX)
        .unwrap_err();
    assert!(
        matches!(err, BlobError::InsufficientStorage { .. }),
        "{err:?}"
    );
    assert_empty(&store);
}

#[test]
fn stores_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<BlobStore>();
    check::<store::meta::CacheDb>();
}

/// A valid zstd upload and its hash, shared by the corruption properties.
fn corruption_base() -> &'static (Vec<u8>, Hash) {
    static BASE: std::sync::OnceLock<(Vec<u8>, Hash)> = std::sync::OnceLock::new();
    BASE.get_or_init(|| {
        let body = compress(Compression::Zstd, &fixture_nar(20_000));
        let hash = Hash::sha256_of(&body);
        (body, hash)
    })
}

#[derive(Debug, Clone)]
enum Corruption {
    Flip { at: usize, xor: u8 },
    Truncate { at: usize },
    Insert { at: usize, bytes: Vec<u8> },
}

fn corruption() -> impl Strategy<Value = Corruption> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(at, xor)| Corruption::Flip { at, xor }),
        any::<usize>().prop_map(|at| Corruption::Truncate { at }),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..16)
        )
            .prop_map(|(at, bytes)| Corruption::Insert { at, bytes }),
    ]
}

fn apply(body: &[u8], corruptions: &[Corruption]) -> Vec<u8> {
    let mut b = body.to_vec();
    for c in corruptions {
        match c {
            Corruption::Flip { at, xor } if !b.is_empty() => {
                let i = at % b.len();
                b[i] ^= xor;
            }
            Corruption::Flip { .. } => {}
            Corruption::Truncate { at } => b.truncate(at % b.len().max(1)),
            Corruption::Insert { at, bytes } => {
                let i = at % (b.len() + 1);
                b.splice(i..i, bytes.iter().copied());
            }
        }
    }
    b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Whatever happens to an upload on the way, ingest answers (never panics), leaves
    /// nothing behind on error, and stores only bytes that hash to their name. With the
    /// original's hash expected, a changed body is always refused.
    #[test]
    fn corrupted_uploads_never_panic_or_leak(
        corruptions in proptest::collection::vec(corruption(), 1..4)
    ) {
        let (base, base_hash) = corruption_base();
        let body = apply(base, &corruptions);
        let (_dir, store) = open();

        // An Ok is possible: zstd frames carry no checksum here, so a flipped literal
        // can decode to another valid archive. It must then be stored honestly.
        if let Ok(got) = store.ingest(&body[..], Compression::Zstd, None, MAX) {
            prop_assert_eq!(&got.file_hash, &Hash::sha256_of(&body));
            prop_assert_eq!(fs::read(store.blob_path(&got.file_hash)).unwrap(), body.clone());
            store.remove(&got.file_hash).unwrap();
        }
        prop_assert!(staging_files(&store).is_empty());
        prop_assert!(blob_files(&store).is_empty());

        if body != *base {
            let err = store.ingest(&body[..], Compression::Zstd, Some(base_hash), MAX);
            prop_assert!(err.is_err(), "a changed body was accepted under the original hash");
            prop_assert!(staging_files(&store).is_empty());
            prop_assert!(blob_files(&store).is_empty());
        }
    }
}
