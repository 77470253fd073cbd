//! Helpers for the cache store tests: real NARs of real trees, real compressors, and a
//! look at what a blob store left on disk.
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use store::blobs::{BlobStore, Compression};

/// Deterministic pseudo-random bytes (splitmix64), so failures reproduce.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The NAR (as `nix-store --dump` writes it) of a tree with every node type, nesting,
/// an executable, and a file of `big` incompressible bytes.
pub fn fixture_nar(big: usize) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("out");
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::create_dir_all(root.join("share/doc")).unwrap();
    fs::write(root.join("bin/hello"), b"#!/bin/sh\necho hello\n").unwrap();
    fs::set_permissions(root.join("bin/hello"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(root.join("share/doc/README"), "hello ".repeat(5000)).unwrap();
    fs::write(root.join("share/empty"), b"").unwrap();
    fs::write(root.join("share/blob"), noise(big as u64, big)).unwrap();
    std::os::unix::fs::symlink("bin/hello", root.join("link")).unwrap();
    let mut nar = Vec::new();
    nix_formats::nar::dump_path(&root, &mut nar).unwrap();
    nar
}

pub fn compress(c: Compression, data: &[u8]) -> Vec<u8> {
    match c {
        Compression::None => data.to_vec(),
        Compression::Zstd => zstd::encode_all(data, 3).unwrap(),
        Compression::Xz => {
            let mut e = xz2::write::XzEncoder::new(Vec::new(), 6);
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        Compression::Bzip2 => {
            let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
    }
}

pub const COMPRESSED: [Compression; 3] = [Compression::Zstd, Compression::Xz, Compression::Bzip2];

/// Every regular file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for entry in entries {
        let entry = entry.unwrap();
        let path = entry.path();
        if entry.file_type().unwrap().is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

pub fn staging_files(store: &BlobStore) -> Vec<PathBuf> {
    files_under(store.staging_dir())
}

pub fn blob_files(store: &BlobStore) -> Vec<PathBuf> {
    files_under(&store.root().join("blobs"))
}
