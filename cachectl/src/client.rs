//! The cache's push API as `push` and `uploader` use it (docs/api.md): which paths are
//! missing, and upload sessions. Every failure is classified once, here, as worth
//! retrying or not, so callers never look at status codes.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};

/// Longest server reason kept in an error message.
const MAX_REASON: usize = 200;

/// Why a request failed, and whether trying again can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The cache is unreachable, failing (5xx) or busy with the same session (409).
    Transient,
    /// The cache refuses our token (401, 403): no entry is at fault.
    Auth,
    /// The cache refuses this request for good (other 4xx, an unusable answer).
    Permanent,
}

#[derive(Debug, Clone)]
pub struct ClientError {
    pub kind: ErrorKind,
    pub message: String,
    /// The HTTP status, when the cache answered.
    pub status: Option<u16>,
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ClientError {}

impl ClientError {
    pub fn permanent(message: impl Into<String>) -> Self {
        ClientError {
            kind: ErrorKind::Permanent,
            message: message.into(),
            status: None,
        }
    }

    pub fn transient(message: impl Into<String>) -> Self {
        ClientError {
            kind: ErrorKind::Transient,
            message: message.into(),
            status: None,
        }
    }

    pub fn is_transient(&self) -> bool {
        self.kind == ErrorKind::Transient
    }

    /// A connection-level failure (no answer at all): always worth retrying.
    fn from_reqwest(what: &str, e: &reqwest::Error) -> Self {
        // reqwest's own message is terse ("error sending request"); its sources say why.
        let mut message = format!("{what}: {e}");
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        if e.is_decode() {
            return ClientError::permanent(message);
        }
        ClientError::transient(message)
    }

    fn from_status(what: &str, status: StatusCode, body: &str) -> Self {
        let reason = one_line(body);
        let message = if reason.is_empty() {
            format!("{what}: the cache answered {status}")
        } else {
            format!("{what}: the cache answered {status}: {reason}")
        };
        let kind = if status.is_server_error()
            || status == StatusCode::CONFLICT
            || status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT
        {
            ErrorKind::Transient
        } else if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            ErrorKind::Auth
        } else {
            ErrorKind::Permanent
        };
        ClientError {
            kind,
            message,
            status: Some(status.as_u16()),
        }
    }
}

/// The first line of a server's answer, trimmed and capped, for an error message.
fn one_line(body: &str) -> String {
    let line = body.lines().map(str::trim).find(|l| !l.is_empty());
    let mut line = line.unwrap_or_default().to_string();
    if line.len() > MAX_REASON {
        let mut end = MAX_REASON;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
        line.push('…');
    }
    line
}

/// `POST /api/v1/uploads`.
#[derive(Debug, Serialize)]
pub struct CreateUpload {
    pub store_path: String,
    pub nar_hash: String,
    pub nar_size: u64,
    pub references: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deriver: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    pub sigs: Vec<String>,
    pub compression: &'static str,
}

/// The create answer: either the cache has the path already, or a session to send to.
#[derive(Debug, Deserialize)]
pub struct Session {
    pub id: Option<String>,
    pub complete: bool,
    #[serde(default)]
    pub nar_offset: u64,
    #[serde(default)]
    pub part_size: u64,
    /// The cache lets sessions of paths referencing this one be created now (it
    /// records theirs after this one's); caches that do not say so get paths strictly
    /// after their references.
    #[serde(default)]
    pub early_dependents: bool,
}

/// The answer to one part.
#[derive(Debug, Deserialize)]
pub struct PartAnswer {
    pub nar_offset: u64,
    pub complete: bool,
}

#[derive(Serialize)]
struct MissingRequest<'a> {
    paths: &'a [String],
}

#[derive(Deserialize)]
struct MissingAnswer {
    missing: Vec<String>,
}

/// Most paths asked about in one `missing` request (the server takes up to 100 000).
pub const MISSING_BATCH: usize = 2000;

/// An authenticated client of one cache. Not `Debug`: it holds the token.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    pub fn new(base: &str, token: String) -> Result<Self> {
        let base = base.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!("the cache URL must start with http:// or https://, not {base:?}");
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .tcp_keepalive(Duration::from_secs(30))
            .user_agent(concat!("cachectl/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot set up the HTTP client")?;
        Ok(Client { http, base, token })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    async fn answer<T: serde::de::DeserializeOwned>(
        what: &str,
        sent: Result<reqwest::Response, reqwest::Error>,
    ) -> Result<T, ClientError> {
        let resp = sent.map_err(|e| ClientError::from_reqwest(what, &e))?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(ClientError::from_status(what, status, &body));
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ClientError::from_reqwest(what, &e))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| ClientError::permanent(format!("{what}: unexpected answer: {e}")))
    }

    /// Which of `paths` (one request, at most [`MISSING_BATCH`]) the cache lacks.
    pub async fn missing(&self, paths: &[String]) -> Result<Vec<String>, ClientError> {
        let sent = self
            .http
            .post(format!("{}/api/v1/missing", self.base))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(120))
            .json(&MissingRequest { paths })
            .send()
            .await;
        let answer: MissingAnswer = Self::answer("asking which paths are missing", sent).await?;
        Ok(answer.missing)
    }

    /// Creates an upload session, or finds the one an earlier attempt left.
    pub async fn create_upload(&self, req: &CreateUpload) -> Result<Session, ClientError> {
        let sent = self
            .http
            .post(format!("{}/api/v1/uploads", self.base))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(120))
            .json(req)
            .send()
            .await;
        let session: Session = Self::answer("creating an upload session", sent).await?;
        if !session.complete && (session.id.is_none() || session.part_size == 0) {
            return Err(ClientError::permanent(
                "creating an upload session: the answer has no session id or part size",
            ));
        }
        Ok(session)
    }

    /// Sends NAR bytes from `nar_offset` on, as complete zstd frames in `body`.
    pub async fn put_part(
        &self,
        id: &str,
        nar_offset: u64,
        body: reqwest::Body,
    ) -> Result<PartAnswer, ClientError> {
        let sent = self
            .http
            .put(format!("{}/api/v1/uploads/{id}", self.base))
            .query(&[("nar_offset", nar_offset)])
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_TYPE, "application/zstd")
            .body(body)
            .send()
            .await;
        match Self::answer("sending a part", sent).await {
            // The session is gone (the cache restarted and forgot a one-part session,
            // or it expired): creating it again starts over, so it is worth a retry.
            Err(e) if e.status == Some(404) => Err(ClientError {
                kind: ErrorKind::Transient,
                ..e
            }),
            other => other,
        }
    }
}

/// The token from a file (first line, trimmed) or from `CAIRN_TOKEN`.
pub fn load_token(file: Option<&Path>, env: Option<String>) -> Result<String> {
    let token = match (file, env) {
        (Some(f), _) => {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read the token file {}", f.display()))?;
            text.lines().next().unwrap_or_default().trim().to_string()
        }
        (None, Some(t)) => t.trim().to_string(),
        (None, None) => bail!("no token: pass --token-file or set CAIRN_TOKEN"),
    };
    if token.is_empty() {
        bail!("the token is empty");
    }
    Ok(token)
}

/// Exponential backoff with jitter: `base * 2^attempt`, capped, ±25 %.
pub fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.min(16));
    let d = exp.min(cap);
    let jitter = rand::random::<f64>() * 0.5 + 0.75;
    d.mul_f64(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let e = |s: u16| ClientError::from_status("x", StatusCode::from_u16(s).unwrap(), "").kind;
        assert_eq!(e(500), ErrorKind::Transient);
        assert_eq!(e(503), ErrorKind::Transient);
        assert_eq!(e(507), ErrorKind::Transient);
        assert_eq!(e(409), ErrorKind::Transient);
        assert_eq!(e(401), ErrorKind::Auth);
        assert_eq!(e(403), ErrorKind::Auth);
        assert_eq!(e(400), ErrorKind::Permanent);
        assert_eq!(e(413), ErrorKind::Permanent);
        assert_eq!(e(404), ErrorKind::Permanent);
    }

    #[test]
    fn reasons_are_one_short_line() {
        let long = format!("\n  rejected: {}\nsecond line", "é".repeat(300));
        let err = ClientError::from_status("sending", StatusCode::BAD_REQUEST, &long);
        assert!(!err.message.contains('\n'));
        assert!(err
            .message
            .starts_with("sending: the cache answered 400 Bad Request: rejected: "));
        assert!(err.message.len() < 300);
        let err = ClientError::from_status("sending", StatusCode::BAD_GATEWAY, "");
        assert_eq!(err.message, "sending: the cache answered 502 Bad Gateway");
    }

    #[test]
    fn backoff_grows_to_the_cap() {
        let base = Duration::from_secs(1);
        let cap = Duration::from_secs(60);
        let b0 = backoff(0, base, cap);
        assert!(b0 >= Duration::from_millis(750) && b0 <= Duration::from_millis(1250));
        let b3 = backoff(3, base, cap);
        assert!(b3 >= Duration::from_secs(6) && b3 <= Duration::from_secs(10));
        assert!(backoff(40, base, cap) <= Duration::from_secs(75));
    }

    #[test]
    fn tokens() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t");
        std::fs::write(&f, "  secret \nrest\n").unwrap();
        assert_eq!(load_token(Some(&f), Some("env".into())).unwrap(), "secret");
        assert_eq!(load_token(None, Some("env\n".into())).unwrap(), "env");
        assert!(load_token(None, None).is_err());
        assert!(load_token(None, Some(" ".into())).is_err());
        let err = load_token(Some(&dir.path().join("nope")), None).unwrap_err();
        assert!(err.to_string().contains("nope"));
    }
}
