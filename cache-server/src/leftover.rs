//! Reading what a handler left of a request body.
//!
//! A handler that answers an upload without reading all of it (a 413 from the
//! Content-Length, a 401, a NAR already stored) leaves body bytes in flight. If the
//! connection were closed on them, the kernel would answer the client's data with a
//! reset, and a reset discards whatever the client had not read yet, our answer
//! included: the client would see "broken pipe" or "connection reset" instead of the
//! status that explains it. So the answer goes out at once and the rest of the body is
//! read and dropped behind it, up to a bound in bytes and time; past the bound the
//! connection is closed as before.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body::{Body as _, Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::oneshot;

/// At most this much of a left body is read to keep the connection polite.
const DRAIN_BYTES: u64 = 64 << 20;
/// And for at most this long.
const DRAIN_TIME: Duration = Duration::from_secs(30);

/// Middleware: gives the handler a body that hands itself back when dropped unfinished,
/// and reads that rest in the background once the response is on its way.
pub async fn read_leftovers(req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS)
        || req.body().is_end_stream()
    {
        return next.run(req).await;
    }
    // A client waiting for "100 Continue" has sent nothing yet; if the handler never
    // asked for the body, reading it now would invite the client to send it all.
    let expects_continue = req
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let (back, mut rest) = oneshot::channel();
    let req = req.map(|body| {
        Body::new(Tracked {
            body: Some(body),
            polled: false,
            back: Some(back),
        })
    });
    let resp = next.run(req).await;
    // The handler has finished with its request: what it left is here by now.
    if let Ok((body, polled)) = rest.try_recv() {
        if polled || !expects_continue {
            tokio::spawn(drain(body));
        }
    }
    resp
}

async fn drain(body: Body) {
    let mut stream = body.into_data_stream();
    let mut read = 0u64;
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while let Some(Ok(chunk)) = stream.next().await {
            read += chunk.len() as u64;
            if read > DRAIN_BYTES {
                break;
            }
        }
    })
    .await;
    tracing::debug!(bytes = read, "read the rest of an answered request body");
}

/// A request body that, dropped before its end, sends what is left (and whether anyone
/// read from it) back to [`read_leftovers`].
struct Tracked {
    /// `None` once the body has ended.
    body: Option<Body>,
    polled: bool,
    back: Option<oneshot::Sender<(Body, bool)>>,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        self.polled = true;
        let Some(body) = self.body.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = Pin::new(body).poll_frame(cx);
        if matches!(frame, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            // Ended, or broke off: nothing left worth reading.
            self.body = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        match &self.body {
            Some(b) => b.size_hint(),
            None => SizeHint::with_exact(0),
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let (Some(body), Some(back)) = (self.body.take(), self.back.take()) {
            if !body.is_end_stream() {
                let _ = back.send((body, self.polled));
            }
        }
    }
}
