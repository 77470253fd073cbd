//! Accepting connections: TCP (optionally TLS) and unix sockets, each connection served
//! by hyper (HTTP/1.1 and HTTP/2), with a per-listener cap on new connections per second
//! and graceful shutdown.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio_rustls::TlsAcceptor;

use crate::routes::App;
use crate::zerocopy::SendfileIo;

/// A bound listener.
pub enum Listener {
    Tcp(TcpListener, Option<TlsAcceptor>),
    Unix(UnixListener, PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} holds no PEM certificate")]
    NoCert(PathBuf),
    #[error("{0} holds no PEM private key")]
    NoKey(PathBuf),
    #[error("TLS certificate and key do not work together: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A TLS acceptor from PEM files, offering HTTP/2 and HTTP/1.1.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| TlsError::Read {
            path: p.to_path_buf(),
            source,
        })
    };
    let cert_pem = read(cert)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::Read {
            path: cert.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCert(cert.to_path_buf()));
    }
    let key_pem = read(key)?;
    let key_der = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|source| TlsError::Read {
            path: key.to_path_buf(),
            source,
        })?
        .ok_or_else(|| TlsError::NoKey(key.to_path_buf()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Limits how many connections a listener accepts per second.
struct RateLimit {
    per_second: usize,
    window: Instant,
    count: usize,
}

impl RateLimit {
    fn new(per_second: usize) -> Self {
        RateLimit {
            per_second,
            window: Instant::now(),
            count: 0,
        }
    }

    async fn wait(&mut self) {
        if self.per_second == 0 {
            return;
        }
        let now = Instant::now();
        if now.duration_since(self.window) >= Duration::from_secs(1) {
            self.window = now;
            self.count = 0;
        }
        if self.count >= self.per_second {
            tokio::time::sleep_until((self.window + Duration::from_secs(1)).into()).await;
            self.window = Instant::now();
            self.count = 0;
        }
        self.count += 1;
    }
}

/// Serves `app` on every listener until `shutdown` resolves, then lets open
/// connections finish (up to `grace`).
pub async fn serve(
    listeners: Vec<Listener>,
    app: App,
    max_connection_rate: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) {
    let graceful = Arc::new(GracefulShutdown::new());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for listener in listeners {
        let app = app.clone();
        let graceful = graceful.clone();
        let mut stop = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            let mut limit = RateLimit::new(max_connection_rate);
            loop {
                limit.wait().await;
                tokio::select! {
                    _ = stop.changed() => break,
                    accepted = accept(&listener) => match accepted {
                        Ok(conn) => spawn_conn(conn, app.clone(), &graceful),
                        Err(e) => {
                            // Usually EMFILE: back off instead of spinning.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            }
            if let Listener::Unix(_, path) = &listener {
                let _ = std::fs::remove_file(path);
            }
        }));
    }
    shutdown.await;
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    let graceful = Arc::try_unwrap(graceful).unwrap_or_else(|_| GracefulShutdown::new());
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the grace period; closing them");
    }
}

enum Conn {
    Tcp(tokio::net::TcpStream, Option<TlsAcceptor>),
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &Listener) -> std::io::Result<Conn> {
    match listener {
        Listener::Tcp(l, tls) => {
            let (stream, _) = l.accept().await?;
            let _ = stream.set_nodelay(true);
            Ok(Conn::Tcp(stream, tls.clone()))
        }
        Listener::Unix(l, _) => Ok(Conn::Unix(l.accept().await?.0)),
    }
}

fn spawn_conn(conn: Conn, app: App, graceful: &GracefulShutdown) {
    match conn {
        Conn::Tcp(stream, None) => drive(SendfileIo::new(stream), app.zerocopy(), graceful),
        Conn::Unix(stream) => drive(SendfileIo::new(stream), app.zerocopy(), graceful),
        Conn::Tcp(stream, Some(tls)) => {
            let watcher = graceful.watcher();
            tokio::spawn(async move {
                let stream =
                    match tokio::time::timeout(Duration::from_secs(10), tls.accept(stream)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                let builder = auto::Builder::new(TokioExecutor::new());
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), app);
                let _ = watcher.watch(conn.into_owned()).await;
            });
        }
    }
}

fn drive<S>(stream: S, app: App, graceful: &GracefulShutdown)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), app)
        .into_owned();
    let fut = graceful.watch(conn);
    tokio::spawn(async move {
        if let Err(e) = fut.await {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    });
}
