//! The cluster identity file: written once, refusing a directory that is not the one
//! the caller expects.

use cluster::{ClusterId, ClusterIdentity, IdentityError};

#[test]
fn init_then_open_as_the_same_node() {
    let dir = tempfile::tempdir().unwrap();
    let made = ClusterIdentity::init_new(dir.path(), 1).unwrap();
    assert_eq!(made.node_id, 1);
    assert_eq!(made.cluster_id.as_str().len(), 32);
    let opened = ClusterIdentity::open(dir.path(), 1, Some(&made.cluster_id)).unwrap();
    assert_eq!(opened, made);
    assert_eq!(ClusterIdentity::open(dir.path(), 1, None).unwrap(), made);
}

#[test]
fn two_clusters_get_different_ids() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let ia = ClusterIdentity::init_new(a.path(), 1).unwrap();
    let ib = ClusterIdentity::init_new(b.path(), 1).unwrap();
    assert_ne!(ia.cluster_id, ib.cluster_id);
}

#[test]
fn another_node_id_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    ClusterIdentity::init_new(dir.path(), 2).unwrap();
    let err = ClusterIdentity::open(dir.path(), 3, None).unwrap_err();
    assert!(
        matches!(
            err,
            IdentityError::NodeMismatch {
                found: 2,
                expected: 3
            }
        ),
        "{err:?}"
    );
}

#[test]
fn another_cluster_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let made = ClusterIdentity::init_new(dir.path(), 1).unwrap();
    let other = ClusterId::random();
    let err = ClusterIdentity::open(dir.path(), 1, Some(&other)).unwrap_err();
    match err {
        IdentityError::ClusterMismatch { found, expected } => {
            assert_eq!(found, made.cluster_id);
            assert_eq!(expected, other);
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn a_wiped_directory_is_not_the_node_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let made = ClusterIdentity::init_new(dir.path(), 1).unwrap();
    std::fs::remove_file(dir.path().join(cluster::identity::IDENTITY_FILE)).unwrap();
    let err = ClusterIdentity::open(dir.path(), 1, Some(&made.cluster_id)).unwrap_err();
    assert!(matches!(err, IdentityError::NotInitialised), "{err:?}");
}

#[test]
fn init_happens_once() {
    let dir = tempfile::tempdir().unwrap();
    let made = ClusterIdentity::init_new(dir.path(), 1).unwrap();
    let err = ClusterIdentity::init_new(dir.path(), 1).unwrap_err();
    assert!(
        matches!(&err, IdentityError::AlreadyInitialised { cluster_id, node_id: 1 } if *cluster_id == made.cluster_id),
        "{err:?}"
    );
    let err = ClusterIdentity::init_joining(dir.path(), ClusterId::random(), 4).unwrap_err();
    assert!(
        matches!(err, IdentityError::AlreadyInitialised { .. }),
        "{err:?}"
    );
    // Nothing but the identity file is left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![cluster::identity::IDENTITY_FILE]);
}

#[test]
fn a_joining_node_keeps_the_given_cluster_id() {
    let dir = tempfile::tempdir().unwrap();
    let id: ClusterId = "0123456789abcdef0123456789abcdef".parse().unwrap();
    ClusterIdentity::init_joining(dir.path(), id.clone(), 3).unwrap();
    assert_eq!(
        ClusterIdentity::open(dir.path(), 3, Some(&id))
            .unwrap()
            .cluster_id,
        id
    );
}

#[test]
fn malformed_ids_and_files_are_errors() {
    assert!("xyz".parse::<ClusterId>().is_err());
    assert!("0123456789ABCDEF0123456789ABCDEF"
        .parse::<ClusterId>()
        .is_err());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(cluster::identity::IDENTITY_FILE), b"{").unwrap();
    let err = ClusterIdentity::open(dir.path(), 1, None).unwrap_err();
    assert!(matches!(err, IdentityError::Corrupt(_)), "{err:?}");
}
