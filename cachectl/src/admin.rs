//! What the admin subcommands (`token`, `gc`, `pin`, `retention`) share: the server and
//! token flags, the request that sends a token and turns a non-2xx answer into an error,
//! and the one-thread runtime they run on.

use std::future::Future;

use anyhow::{bail, Context};

/// Where the admin API is, and the admin token for it.
#[derive(clap::Args)]
pub struct Conn {
    /// The cache's base URL (any node of a cluster).
    #[arg(long, env = "CAIRN_URL", default_value = "http://127.0.0.1:5000")]
    server: String,
    /// An admin token (prefer the environment variable to the flag: flags show up in `ps`).
    #[arg(long, env = "CAIRN_TOKEN", hide_env_values = true)]
    token: String,
}

impl Conn {
    /// The base URL without a trailing slash.
    pub fn base(&self) -> &str {
        self.server.trim_end_matches('/')
    }

    /// Sends `rb` with the token; the body of a 2xx answer, else an error with the
    /// server's one-line reason.
    pub async fn send(&self, rb: reqwest::RequestBuilder) -> anyhow::Result<String> {
        admin_send(rb, self.base(), &self.token).await
    }
}

/// Sends an admin API request with `token`; the body of a 2xx answer, else an error
/// with the server's one-line reason.
pub async fn admin_send(
    rb: reqwest::RequestBuilder,
    base: &str,
    token: &str,
) -> anyhow::Result<String> {
    let resp = rb
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("cannot reach {base}"))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("{base} answered {status}: {}", text.trim());
    }
    Ok(text)
}

/// Runs `f` to completion on a current-thread runtime.
pub fn block_on<F: Future>(f: F) -> anyhow::Result<F::Output> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f))
}
