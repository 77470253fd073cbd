//! Shared by the integration tests: the fixture tree whose archive real Nix produced
//! (`tests/golden/fixture.nar`), and a deterministic byte source.

// Each test binary uses its own subset of these helpers.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

/// Where the golden files live.
pub fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

/// `len` bytes of a fixed pattern, so a file's contents (and the archive) never change.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + 7) as u8).collect()
}

fn file(path: &Path, contents: &[u8], mode: u32) {
    fs::write(path, contents).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Builds, under `root` (which must not exist), a tree with every kind of entry:
/// nested and empty directories, empty and odd-sized files, executables (and a file
/// only its group may execute, which Nix does not count), symlinks to a file, to a
/// directory and to nowhere, and names whose byte order differs from other orders.
/// File modes are set explicitly so the umask does not matter.
pub fn fixture_tree(root: &Path) {
    fs::create_dir(root).unwrap();
    for name in ["a", "B", "a-b", "a.b", "a_b", "Z", "z", "0", "ünïcode"] {
        file(&root.join(name), name.as_bytes(), 0o644);
    }
    let sizes = root.join("sizes");
    fs::create_dir(&sizes).unwrap();
    for size in [0usize, 1, 7, 8, 9, 100_000] {
        file(&sizes.join(format!("s{size}")), &pattern(size), 0o444);
    }
    file(&root.join("empty-file"), b"", 0o644);
    file(&root.join("exec"), b"#!/bin/sh\necho hi\n", 0o755);
    file(&root.join("owner-exec-only"), b"x", 0o700);
    file(&root.join("group-exec-only"), b"x", 0o654);
    fs::create_dir(root.join("empty-dir")).unwrap();
    let deep = root.join("nested/deeper/deepest");
    fs::create_dir_all(&deep).unwrap();
    file(&deep.join("leaf"), b"leaf\n", 0o444);
    file(&root.join("nested/x"), b"x", 0o555);
    symlink("a", root.join("link-to-file")).unwrap();
    symlink("nested/deeper", root.join("link-to-dir")).unwrap();
    symlink("/nonexistent/dangling", root.join("link-dangling")).unwrap();
    symlink("../../a", deep.join("link-up")).unwrap();
    file(&root.join("n".repeat(200)), b"long name", 0o644);
}
