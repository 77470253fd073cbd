//! Nix's formats, owned by Cairn: pure, synchronous, no I/O beyond the `Read`/`Write`
//! handles and directory trees callers hand in.
//!
//! The crate named `nix-compat` on crates.io is an empty placeholder, so this is where
//! nixbase32, hashes, store paths, NAR archives, narinfo files and fingerprints live.
//! Everything here is checked against the real `nix` binary in the tests.

pub mod hash;
pub mod nar;
pub mod narinfo;
pub mod nixbase32;
pub mod store_path;

pub use hash::{Hash, HashAlgo, HashError, HashingReader, Sha256Hasher};
pub use nar::{NarReadError, NarReader, NarSummary, NarWriteError};
pub use narinfo::{NarInfo, NarInfoError};
pub use store_path::{StoreDir, StorePath, StorePathError};
