//! Cairn's HTTP service: the Nix binary cache protocol over a local Nix store, with
//! on-the-fly signing and compression, metrics and health. Library first: `router` builds
//! the axum app from an [`AppState`], `serve` runs it on listeners the caller bound (tests
//! bind `127.0.0.1:0`); the `cairnd` binary only parses flags, sets up tracing and binds.

pub mod api;
pub mod auth;
pub mod catalog;
pub mod config;
pub mod error;
pub mod gc;
pub mod internal;
pub mod keys;
mod landing;
mod leftover;
mod logs;
pub mod metrics;
mod nar_stream;
mod narinfo_cache;
pub mod raft_node;
pub mod replication;
pub mod routes;
pub mod serve;
pub mod sessions;
pub mod state;
pub mod upload;
pub mod variants;
pub mod zerocopy;
mod zstd_frames;

pub use config::{Config, FileConfig};
pub use error::ServerError;
pub use routes::{app, router, App};
pub use serve::{serve, Listener};
pub use state::AppState;
