//! Where Cairn's bytes live:
//!
//! - [`local`]: the local Nix store, read-only (Harmonia mode): path info from Nix's
//!   SQLite database, contents from the filesystem.
//! - [`blobs`]: Cairn's own blob store, compressed NARs on disk named by FileHash,
//!   verified on the way in and written durably.
//! - [`meta`]: Cairn's own records in redb: what each blob holds, the narinfo of each
//!   uploaded path, and tokens.

pub mod blobs;
pub mod local;
pub mod meta;

pub use local::{LocalStore, LocalStoreConfig, PathInfo, StoreError};
