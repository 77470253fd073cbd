//! The cache database on real files: round trips of every record, token bookkeeping,
//! persistence across reopen, the file format, and errors that keep detail to the log.

use std::error::Error as _;
use std::path::Path;

use nix_formats::{Hash, StorePath};
use store::blobs::Compression;
use store::meta::{BlobRecord, CacheDb, MetaError, PathRecord, Scope, TokenRecord, SCHEMA_VERSION};

fn path(n: u8, name: &str) -> StorePath {
    StorePath::new([n; 20], name).unwrap()
}

fn blob(n: u8) -> BlobRecord {
    BlobRecord {
        file_hash: Hash::sha256_of(&[n, 1]),
        file_size: 1000 + n as u64,
        compression: Compression::Zstd,
        nar_hash: Hash::sha256_of(&[n, 2]),
        nar_size: 5000 + n as u64,
        created: 1_700_000_000 + n as u64,
    }
}

fn path_record(n: u8) -> PathRecord {
    PathRecord {
        store_path: path(n, &format!("pkg-{n}")),
        url_file_hash: Hash::sha256_of(&[n, 1]),
        nar_hash: Hash::sha256_of(&[n, 2]),
        nar_size: 5000 + n as u64,
        references: vec![path(n, &format!("pkg-{n}")), path(200, "glibc-2.39")],
        deriver: Some(path(100 + n, &format!("pkg-{n}.drv"))),
        system: Some("x86_64-linux".into()),
        sigs: vec!["cache.example-1:c2lnbmF0dXJl".into()],
        ca: None,
        registered: 1_700_000_100 + n as u64,
    }
}

fn token(id: &str, secret: u8, created: u64) -> TokenRecord {
    TokenRecord {
        id: id.into(),
        name: format!("token {id}"),
        secret_hash: [secret; 32],
        scopes: vec![Scope::Read, Scope::Push],
        expires: Some(created + 3600),
        created,
        revoked: false,
    }
}

fn open(dir: &Path) -> CacheDb {
    CacheDb::open(&dir.join("cache.redb")).unwrap()
}

#[test]
fn blobs_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    assert_eq!(db.get_blob(&blob(1).file_hash).unwrap(), None);
    for n in 1..=3 {
        db.put_blob(&blob(n)).unwrap();
    }
    for n in 1..=3 {
        assert_eq!(db.get_blob(&blob(n).file_hash).unwrap(), Some(blob(n)));
    }
    // A put replaces.
    let mut changed = blob(2);
    changed.compression = Compression::Xz;
    db.put_blob(&changed).unwrap();
    assert_eq!(db.get_blob(&changed.file_hash).unwrap(), Some(changed));
}

#[test]
fn paths_round_trip_and_missing() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    assert_eq!(db.path_count().unwrap(), 0);
    let a = path_record(1);
    let mut b = path_record(2);
    b.deriver = None;
    b.system = None;
    b.references.clear();
    b.ca = Some("fixed:r:sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s".into());
    db.put_path(&a).unwrap();
    db.put_path(&b).unwrap();
    let ha = a.store_path.hash_part();
    let hb = b.store_path.hash_part();
    assert_eq!(db.get_path(&ha).unwrap(), Some(a.clone()));
    assert_eq!(db.get_path(&hb).unwrap(), Some(b.clone()));
    assert!(db.has_path(&ha).unwrap());
    let absent = path(9, "absent").hash_part();
    assert!(!db.has_path(&absent).unwrap());
    assert_eq!(db.get_path(&absent).unwrap(), None);
    assert_eq!(db.get_path("not a hash part").unwrap(), None);
    assert_eq!(db.path_count().unwrap(), 2);

    let other = path(10, "other").hash_part();
    assert_eq!(
        db.missing(&[&absent, &ha, &other, &hb]).unwrap(),
        vec![absent.clone(), other.clone()],
        "missing keeps the order given"
    );
    assert_eq!(db.missing(&[]).unwrap(), Vec::<String>::new());

    // Re-registering a path replaces it and does not count twice.
    let mut a2 = a.clone();
    a2.sigs.push("other-1:c2ln".into());
    db.put_path(&a2).unwrap();
    assert_eq!(db.get_path(&ha).unwrap(), Some(a2));
    assert_eq!(db.path_count().unwrap(), 2);
}

#[test]
fn tokens_round_trip_and_revoke() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    assert!(db.tokens().unwrap().is_empty());
    let t1 = token("aaaa1111", 1, 200);
    let t2 = token("bbbb2222", 2, 100);
    db.put_token(&t1).unwrap();
    db.put_token(&t2).unwrap();
    assert_eq!(db.token_by_secret_hash(&[1; 32]).unwrap(), Some(t1.clone()));
    assert_eq!(db.token_by_secret_hash(&[2; 32]).unwrap(), Some(t2.clone()));
    assert_eq!(db.token_by_secret_hash(&[3; 32]).unwrap(), None);
    assert_eq!(
        db.tokens().unwrap(),
        vec![t2.clone(), t1.clone()],
        "oldest first"
    );

    assert!(db.revoke_token("aaaa1111").unwrap());
    let revoked = db.token_by_secret_hash(&[1; 32]).unwrap().unwrap();
    assert!(revoked.revoked);
    assert_eq!(
        TokenRecord {
            revoked: false,
            ..revoked
        },
        t1,
        "revoking changes nothing else"
    );
    assert!(
        db.revoke_token("aaaa1111").unwrap(),
        "revoking twice is fine"
    );
    assert!(!db.revoke_token("nope").unwrap());
    assert!(!db.token_by_secret_hash(&[2; 32]).unwrap().unwrap().revoked);
}

#[test]
fn token_ids_and_secrets_stay_one_to_one() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    db.put_token(&token("id1", 1, 10)).unwrap();

    // The same id with a new secret replaces the token: the old secret is dead.
    let rotated = token("id1", 2, 20);
    db.put_token(&rotated).unwrap();
    assert_eq!(db.token_by_secret_hash(&[1; 32]).unwrap(), None);
    assert_eq!(db.tokens().unwrap(), vec![rotated.clone()]);

    // The same secret under a new id: the old id no longer names anything.
    let renamed = token("id2", 2, 30);
    db.put_token(&renamed).unwrap();
    assert_eq!(db.tokens().unwrap(), vec![renamed.clone()]);
    assert!(!db.revoke_token("id1").unwrap());
    assert!(db.revoke_token("id2").unwrap());
}

#[test]
fn everything_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = open(dir.path());
        db.put_blob(&blob(1)).unwrap();
        db.put_path(&path_record(1)).unwrap();
        db.put_token(&token("keep", 7, 1)).unwrap();
        db.revoke_token("keep").unwrap();
    }
    let db = open(dir.path());
    assert_eq!(db.get_blob(&blob(1).file_hash).unwrap(), Some(blob(1)));
    let h = path_record(1).store_path.hash_part();
    assert_eq!(db.get_path(&h).unwrap(), Some(path_record(1)));
    assert!(db.has_path(&h).unwrap());
    assert!(db.missing(&[h.as_str()]).unwrap().is_empty());
    let other = path_record(2).store_path.hash_part();
    assert!(!db.has_path(&other).unwrap());
    assert_eq!(db.path_count().unwrap(), 1);
    let t = db.token_by_secret_hash(&[7; 32]).unwrap().unwrap();
    assert_eq!(t.id, "keep");
    assert!(t.revoked);
}

#[test]
fn a_database_has_one_owner() {
    let dir = tempfile::tempdir().unwrap();
    let _db = open(dir.path());
    let err = CacheDb::open(&dir.path().join("cache.redb")).unwrap_err();
    assert!(matches!(err, MetaError::InUse), "{err:?}");
}

/// The JSON of a record is the file format: this pins it.
#[test]
fn record_format_is_stable() {
    let rec = path_record(1);
    let sp = rec.store_path.to_string();
    let drv = rec.deriver.as_ref().unwrap().to_string();
    let glibc = path(200, "glibc-2.39").to_string();
    let json = format!(
        concat!(
            r#"{{"store_path":"{sp}","url_file_hash":"{fh}","nar_hash":"{nh}","nar_size":5001,"#,
            r#""references":["{sp}","{glibc}"],"deriver":"{drv}","system":"x86_64-linux","#,
            r#""sigs":["cache.example-1:c2lnbmF0dXJl"],"ca":null,"registered":1700000101}}"#
        ),
        sp = sp,
        fh = rec.url_file_hash.to_nix32_string(),
        nh = rec.nar_hash.to_nix32_string(),
        glibc = glibc,
        drv = drv,
    );
    assert_eq!(serde_json::to_string(&rec).unwrap(), json);
    assert_eq!(serde_json::from_str::<PathRecord>(&json).unwrap(), rec);
    assert!(
        json.contains("sha256:"),
        "hashes are stored as sha256:nix32"
    );

    // Optional fields may be absent.
    let minimal = format!(
        r#"{{"store_path":"{sp}","url_file_hash":"{fh}","nar_hash":"{fh}","nar_size":1,"references":[],"sigs":[],"registered":2}}"#,
        fh = rec.url_file_hash.to_nix32_string(),
    );
    let m: PathRecord = serde_json::from_str(&minimal).unwrap();
    assert_eq!((m.deriver, m.system, m.ca), (None, None, None));

    let b = blob(1);
    assert_eq!(
        serde_json::to_string(&b).unwrap(),
        format!(
            r#"{{"file_hash":"{}","file_size":1001,"compression":"zstd","nar_hash":"{}","nar_size":5001,"created":1700000001}}"#,
            b.file_hash, b.nar_hash
        )
    );
    let t = token("abc", 0xab, 5);
    assert_eq!(
        serde_json::to_string(&t).unwrap(),
        format!(
            r#"{{"id":"abc","name":"token abc","secret_hash":"{}","scopes":["read","push"],"expires":3605,"created":5,"revoked":false}}"#,
            "ab".repeat(32)
        )
    );
    assert_eq!(
        serde_json::from_str::<TokenRecord>(&serde_json::to_string(&t).unwrap()).unwrap(),
        t
    );
}

#[test]
fn bad_stored_text_is_refused() {
    let sp = path(1, "pkg").to_string();
    let h = Hash::sha256_of(b"x").to_nix32_string();
    let path_json = |store_path: &str, file_hash: &str| {
        format!(
            r#"{{"store_path":"{store_path}","url_file_hash":"{file_hash}","nar_hash":"{h}","nar_size":1,"references":[],"sigs":[],"registered":2}}"#
        )
    };
    serde_json::from_str::<PathRecord>(&path_json(&sp, &h)).expect("the control parses");
    for bad in [
        path_json("not-a-store-path", &h),
        path_json(&sp, "sha256:x"),
        path_json(&sp, "nohash"),
    ] {
        assert!(serde_json::from_str::<PathRecord>(&bad).is_err(), "{bad}");
    }

    let token_json = |secret: &str, scope: &str| {
        format!(
            r#"{{"id":"a","name":"b","secret_hash":"{secret}","scopes":["{scope}"],"created":1,"revoked":false}}"#
        )
    };
    let good = "00".repeat(32);
    serde_json::from_str::<TokenRecord>(&token_json(&good, "admin")).expect("the control parses");
    for bad in [
        token_json(&"zz".repeat(32), "admin"),
        token_json("00", "admin"),
        token_json(&good, "root"),
    ] {
        assert!(serde_json::from_str::<TokenRecord>(&bad).is_err(), "{bad}");
    }
}

#[test]
fn token_debug_leaves_the_secret_hash_out() {
    let t = token("visible-id", 0xcd, 1);
    let debug = format!("{t:?}");
    assert!(debug.contains("visible-id"));
    assert!(!debug.contains(&"cd".repeat(8)), "{debug}");
    assert!(!debug.contains("205"), "{debug}"); // 0xcd as a decimal array element
}

#[test]
fn scopes_have_names() {
    for s in Scope::ALL {
        assert_eq!(Scope::from_name(s.name()), Some(s));
    }
    assert_eq!(Scope::from_name("root"), None);
}

/// Client-facing text is short and fixed; the detail is in `source()` for the log.
#[test]
fn errors_keep_detail_out_of_their_text() {
    let dir = tempfile::tempdir().unwrap();
    let secret_dir = dir.path().join("secret-location");
    std::fs::create_dir(&secret_dir).unwrap();
    // A directory is no database file.
    let err = CacheDb::open(&secret_dir).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, MetaError::Open(_)), "{err:?}");
    assert!(!text.contains("secret-location"), "{text}");
    assert!(!text.to_lowercase().contains("directory"), "{text}");
    assert!(err.source().is_some(), "the detail is kept for the log");
}

/// Reaches under `CacheDb` with redb itself, as a damaged or newer file would look.
#[test]
fn corrupt_records_and_newer_formats_are_errors() {
    use redb::{Database, TableDefinition};
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cache.redb");
    let rec = path_record(1);
    let h = rec.store_path.hash_part();
    {
        let db = CacheDb::open(&file).unwrap();
        db.put_path(&rec).unwrap();
    }
    {
        let db = Database::create(&file).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut t = tx
                .open_table(TableDefinition::<&str, &[u8]>::new("paths"))
                .unwrap();
            t.insert(h.as_str(), b"{not json".as_slice()).unwrap();
        }
        tx.commit().unwrap();
    }
    let db = CacheDb::open(&file).unwrap();
    assert!(db.has_path(&h).unwrap());
    let err = db.get_path(&h).unwrap_err();
    assert!(
        matches!(err, MetaError::Corrupt { table: "path", .. }),
        "{err:?}"
    );
    drop(db);

    {
        let db = Database::create(&file).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut t = tx
                .open_table(TableDefinition::<&str, u64>::new("meta"))
                .unwrap();
            t.insert("schema", SCHEMA_VERSION + 1).unwrap();
        }
        tx.commit().unwrap();
    }
    let err = CacheDb::open(&file).unwrap_err();
    assert!(
        matches!(err, MetaError::Schema { found, supported } if found == SCHEMA_VERSION + 1 && supported == SCHEMA_VERSION),
        "{err:?}"
    );
}
