//! Where Cairn's bytes live. For now: the local Nix store, read-only (Harmonia mode).
//! Cairn's own blob store joins this crate with uploads.

pub mod local;

pub use local::{LocalStore, LocalStoreConfig, PathInfo, StoreError};
