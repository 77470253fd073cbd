//! The server's error type and its one exhaustive mapping to HTTP. Clients get a short
//! reason; the log gets the detail; 5xx bodies never carry paths or OS errors.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ServerError {
    /// The path, NAR, listing or log is not in this cache.
    #[error("not found")]
    NotFound,
    /// A store path hash or NAR hash in the URL is not well formed.
    #[error("malformed hash in URL")]
    BadHash,
    /// Some other part of the request is unusable.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// No credentials, or credentials we do not accept.
    #[error("authentication required")]
    Unauthorized,
    /// Valid credentials without the scope the request needs.
    #[error("this token may not do that")]
    Forbidden,
    /// An upload failed verification; the reason is safe to show the uploader.
    #[error("rejected: {0}")]
    Rejected(String),
    /// A body over its size cap.
    #[error("body larger than {0} bytes")]
    TooLarge(u64),
    /// The blob disk cannot hold the upload.
    #[error("not enough space for this upload")]
    InsufficientStorage,
    /// A `Content-Encoding` we do not speak.
    #[error("unsupported Content-Encoding")]
    UnsupportedEncoding,
    /// The cache database failed.
    #[error("cache database error")]
    Meta(#[from] store::meta::MetaError),
    /// A byte range outside the NAR; carries the NAR size for `Content-Range`.
    #[error("range not satisfiable")]
    RangeNotSatisfiable(u64),
    /// Nix's database could not be read.
    #[error("store database error")]
    Store(#[from] store::StoreError),
    /// A file of the store or of our data directory could not be read.
    #[error("I/O error")]
    Io(#[from] std::io::Error),
    /// A blocking task died (panic or runtime shutdown).
    #[error("internal task failed")]
    Task(#[from] tokio::task::JoinError),
    /// The cluster's replicated state could not be read.
    #[error("cluster state error")]
    Cluster(cluster::RaftStoreError),
    /// The cluster cannot take the write now (no quorum, too few replicas reachable);
    /// nothing was made visible. The reason is safe to show.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A stored blob failed its check as it was about to be served; it is set aside.
    #[error("not found")]
    CorruptBlob,
    /// The request conflicts with the cluster's state (a membership change refused).
    #[error("conflict: {0}")]
    Conflict(String),
}

impl ServerError {
    pub fn status(&self) -> StatusCode {
        match self {
            ServerError::NotFound | ServerError::CorruptBlob => StatusCode::NOT_FOUND,
            ServerError::BadHash | ServerError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ServerError::RangeNotSatisfiable(_) => StatusCode::RANGE_NOT_SATISFIABLE,
            ServerError::Unauthorized => StatusCode::UNAUTHORIZED,
            ServerError::Forbidden => StatusCode::FORBIDDEN,
            ServerError::Rejected(_) => StatusCode::BAD_REQUEST,
            ServerError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ServerError::InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
            ServerError::UnsupportedEncoding => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ServerError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ServerError::Conflict(_) => StatusCode::CONFLICT,
            ServerError::Store(_)
            | ServerError::Meta(_)
            | ServerError::Io(_)
            | ServerError::Cluster(_)
            | ServerError::Task(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ServerError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            // The detail (paths, OS errors) goes to the log only.
            match &self {
                ServerError::Store(e) => tracing::error!(error = %e, "store error"),
                ServerError::Io(e) => tracing::error!(error = %e, "I/O error"),
                ServerError::Task(e) => tracing::error!(error = %e, "task failed"),
                ServerError::Meta(e) => tracing::error!(error = %e, "cache database error"),
                ServerError::Cluster(e) => tracing::error!(error = %e, "cluster state error"),
                ServerError::Unavailable(reason) => tracing::warn!(%reason, "write refused"),
                ServerError::NotFound
                | ServerError::Unauthorized
                | ServerError::Forbidden
                | ServerError::Rejected(_)
                | ServerError::TooLarge(_)
                | ServerError::InsufficientStorage
                | ServerError::UnsupportedEncoding
                | ServerError::BadHash
                | ServerError::BadRequest(_)
                | ServerError::Conflict(_)
                | ServerError::CorruptBlob
                | ServerError::RangeNotSatisfiable(_) => {}
            }
        }
        let mut resp = match self {
            // The common case, without formatting anything.
            ServerError::NotFound => (status, "not found\n").into_response(),
            _ => (status, format!("{self}\n")).into_response(),
        };
        if let ServerError::Unauthorized = self {
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Basic realm=\"cairn\""),
            );
        }
        if let ServerError::RangeNotSatisfiable(size) = self {
            if let Ok(v) = format!("bytes */{size}").parse() {
                resp.headers_mut()
                    .insert(axum::http::header::CONTENT_RANGE, v);
            }
        }
        resp
    }
}
