//! Build logs uploaded with `PUT /log/<drv>` (what `nix store copy-log --to` and
//! `cachectl` send): one plain-text file per derivation under `<data>/logs`, written
//! atomically, served before the local Nix store's log of the same name.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use nix_formats::StorePath;
use store::meta::Scope;

use crate::error::ServerError;
use crate::state::AppState;
use crate::upload::{content_encoding, content_length, decode_transfer};

pub struct LogStore {
    dir: PathBuf,
}

impl LogStore {
    /// Opens (creating) the log directory, dropping half-written files of a crash.
    pub fn open(dir: PathBuf) -> io::Result<Self> {
        fs::create_dir_all(&dir)?;
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with(".tmp") {
                fs::remove_file(entry.path())?;
            }
        }
        Ok(LogStore { dir })
    }

    /// The uploaded log of `drv`, if any.
    pub async fn get(&self, drv: &StorePath) -> Result<Option<Bytes>, ServerError> {
        let file = self.dir.join(drv.base_name());
        match tokio::fs::read(&file).await {
            Ok(b) => Ok(Some(b.into())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ServerError::Io(e)),
        }
    }

    /// Stores `text` as the log of `drv`, replacing an earlier one, durably.
    fn put(&self, drv: &StorePath, text: &[u8]) -> io::Result<()> {
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp")
            .tempfile_in(&self.dir)?;
        tmp.write_all(text)?;
        tmp.as_file().sync_all()?;
        tmp.persist(self.dir.join(drv.base_name()))
            .map_err(|e| e.error)?;
        File::open(&self.dir)?.sync_all()
    }
}

/// `PUT /log/<hash>-<name>.drv` (push scope).
pub async fn put_log(
    State(s): State<Arc<AppState>>,
    Path(drv): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ServerError> {
    s.auth.check(&s.catalog, &headers, Scope::Push)?;
    let path = StorePath::from_base_name(&drv).map_err(|_| ServerError::BadHash)?;
    if !path.name().ends_with(".drv") {
        return Err(ServerError::BadRequest("logs go to /log/<hash>-<name>.drv"));
    }
    let max = s.config.max_log_bytes;
    if content_length(&headers).is_some_and(|l| l > max) {
        return Err(ServerError::TooLarge(max));
    }
    let cap = usize::try_from(max).unwrap_or(usize::MAX);
    let raw = axum::body::to_bytes(body, cap)
        .await
        .map_err(|_| ServerError::TooLarge(max))?;
    let encoding = content_encoding(&headers);
    let state = s.clone();
    tokio::task::spawn_blocking(move || -> Result<(), ServerError> {
        let mut text = Vec::new();
        decode_transfer(encoding.as_deref(), &raw[..])?
            .take(max + 1)
            .read_to_end(&mut text)
            .map_err(|_| ServerError::Rejected("the log body does not decode".into()))?;
        if text.len() as u64 > max {
            return Err(ServerError::TooLarge(max));
        }
        state.logs.put(&path, &text).map_err(|e| match e.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
                ServerError::InsufficientStorage
            }
            _ => ServerError::Io(e),
        })
    })
    .await??;
    tracing::info!(drv, "build log stored");
    Ok(StatusCode::OK.into_response())
}
