//! A full blob disk, for real: a 4 MiB tmpfs. Needs root to mount it (CI runs the tests
//! as root); without root the test fails and says so, rather than passing untested.

mod common;

use std::path::Path;
use std::process::Command;

use common::{blob_files, compress, fixture_nar, staging_files};
use nix_formats::Hash;
use store::blobs::{BlobError, BlobStore, Compression};

const TMPFS_BYTES: u64 = 4 << 20;

/// A tmpfs mounted on a temp dir, unmounted on drop (also when the test panics).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount() -> Self {
        let uid = Command::new("id")
            .arg("-u")
            .output()
            .expect("running id -u");
        let uid = String::from_utf8_lossy(&uid.stdout).trim().to_string();
        assert_eq!(
            uid, "0",
            "this test mounts a small tmpfs to fill a disk and needs root \
             (run `sudo -E cargo test -p store --test full_disk`); it is not skipped \
             because a skipped test would pass without checking anything"
        );
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={TMPFS_BYTES}")])
            .arg("tmpfs")
            .arg(dir.path())
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "mount -t tmpfs failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Something still holds a file open: detach it so the temp dir can go.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

#[test]
fn a_full_disk_refuses_uploads_and_leaves_nothing_behind() {
    let fs = Tmpfs::mount();
    // Bodies are built off the tmpfs: 6 MiB of incompressible NAR cannot fit in 4 MiB.
    let big_nar = fixture_nar(6 << 20);
    let small_nar = fixture_nar(10_000);
    let root = fs.path().join("cache");

    {
        let store = BlobStore::open(&root, 0).unwrap();
        // Refused up front, before a byte of the body is read.
        match store.check_space(big_nar.len() as u64) {
            Err(BlobError::InsufficientStorage { needed, available }) => {
                assert_eq!(needed, big_nar.len() as u64);
                assert!(available <= TMPFS_BYTES, "{available}");
            }
            other => panic!("check_space on a 4 MiB disk: {other:?}"),
        }
        store.check_space(small_nar.len() as u64).unwrap();

        // Without a declared size the write itself hits ENOSPC.
        for c in [Compression::None, Compression::Zstd] {
            let body = compress(c, &big_nar);
            let err = store.ingest(&body[..], c, None, u64::MAX).unwrap_err();
            assert!(
                matches!(err, BlobError::InsufficientStorage { .. }),
                "{c:?}: {err:?}"
            );
            assert!(staging_files(&store).is_empty(), "{c:?}: staging");
            assert!(blob_files(&store).is_empty(), "{c:?}: blobs");
        }

        // The space came back: a small upload fits.
        let body = compress(Compression::Zstd, &small_nar);
        let got = store
            .ingest(&body[..], Compression::Zstd, None, u64::MAX)
            .unwrap();
        assert_eq!(got.file_hash, Hash::sha256_of(&body));
        assert!(store.contains(&got.file_hash));
        store.remove(&got.file_hash).unwrap();
    }

    // With 3 MiB reserved, a 2.5 MiB upload fits the disk but not above the reserve:
    // refused mid-stream, again with nothing left behind.
    let store = BlobStore::open(&root, 3 << 20).unwrap();
    let body = compress(Compression::None, &fixture_nar(5 << 19));
    assert!(matches!(
        store.check_space(body.len() as u64),
        Err(BlobError::InsufficientStorage { .. })
    ));
    let err = store
        .ingest(&body[..], Compression::None, None, u64::MAX)
        .unwrap_err();
    assert!(
        matches!(err, BlobError::InsufficientStorage { .. }),
        "{err:?}"
    );
    assert!(staging_files(&store).is_empty());
    assert!(blob_files(&store).is_empty());
}
