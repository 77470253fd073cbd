//! Real Nix is the oracle: the files `nix copy --to file://…` writes, in every
//! compression it offers, ingest cleanly, and what the blob store computes equals the
//! FileHash, FileSize, NarHash and NarSize in the narinfos Nix wrote beside them.

use std::fs;

use nix_formats::NarInfo;
use store::blobs::{BlobStore, Compression};
use testkit::Nix;

#[test]
fn ingest_agrees_with_nix_copy_to_a_file_cache() {
    let nix = Nix::new();
    let paths = nix.build_fixtures(&testkit::salt(), 2);
    let tmp = tempfile::tempdir().unwrap();
    let store = BlobStore::open(&tmp.path().join("blobs"), 0).unwrap();

    for (i, params) in [
        "compression=xz",
        "compression=xz&parallel-compression=true",
        "compression=zstd",
        "compression=bzip2",
        "compression=none",
    ]
    .into_iter()
    .enumerate()
    {
        let dir = tmp.path().join(format!("cache-{i}"));
        let to = format!("file://{}?{params}", dir.display());
        let mut args = vec!["copy", "--to", to.as_str()];
        args.extend(paths.iter().map(String::as_str));
        nix.run("nix", &args);

        let mut seen = 0;
        for entry in fs::read_dir(&dir).unwrap() {
            let file = entry.unwrap().path();
            if file.extension().is_none_or(|e| e != "narinfo") {
                continue;
            }
            seen += 1;
            let ni = NarInfo::parse(&fs::read_to_string(&file).unwrap()).unwrap();
            let compression = Compression::from_name(&ni.compression)
                .unwrap_or_else(|| panic!("{params}: Compression {}", ni.compression));
            assert!(
                params.starts_with(&format!("compression={}", compression.name())),
                "{params}: Nix wrote {compression:?}"
            );
            assert!(
                ni.url.ends_with(&format!(".nar{}", compression.ext())),
                "{}",
                ni.url
            );
            let body = fs::File::open(dir.join(&ni.url)).unwrap();
            let expected = ni.file_hash.clone().expect("nix writes FileHash");
            let got = store
                .ingest(body, compression, Some(&expected), u64::MAX)
                .unwrap_or_else(|e| panic!("{params} {}: {e}", ni.url));
            assert_eq!(got.file_hash, expected, "{params}");
            assert_eq!(Some(got.file_size), ni.file_size, "{params}");
            assert_eq!(got.nar_hash, ni.nar_hash, "{params}");
            assert_eq!(got.nar_size, ni.nar_size, "{params}");
            assert_eq!(got.compression, compression);
            assert_eq!(
                fs::read(store.blob_path(&got.file_hash)).unwrap(),
                fs::read(dir.join(&ni.url)).unwrap(),
                "stored as Nix wrote it"
            );
        }
        assert!(seen >= paths.len(), "{params}: {seen} narinfos");
    }
    assert!(fs::read_dir(store.staging_dir()).unwrap().next().is_none());
}
