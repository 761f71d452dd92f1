//! Limits against slow or numerous clients: a deadline for a whole request body (not just for
//! the gap between two chunks), and what a connection beyond `max_connections` is told.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use hyper::body::{Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// The error of a body that was not received in full before its deadline.
#[derive(Debug, thiserror::Error)]
#[error("the request body was not received within its deadline")]
pub struct BodyDeadlineElapsed;

/// A request body that fails once its deadline passes, however steadily it trickles in.
struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<Sleep>>,
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(BodyDeadlineElapsed)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Middleware: the whole body must arrive within `limit` of the request's head.
pub async fn body_deadline(limit: Duration, request: Request, next: Next) -> Response {
    // A request without a body (a GET, most of them) has nothing to trickle: no timer.
    if axum::body::HttpBody::is_end_stream(request.body()) {
        return next.run(request).await;
    }
    let deadline = Box::pin(tokio::time::sleep_until(Instant::now() + limit));
    let request = request.map(|inner| Body::new(DeadlineBody { inner, deadline }));
    next.run(request).await
}

/// The answer to a connection beyond `max_connections`.
const TOO_MANY: &str = "{\"error\":\"too_many_connections\",\"message\":\"the server has too many open connections; retry shortly\"}";

/// Tells a connection beyond the cap to come back later (`503`, `Retry-After: 1`) and closes
/// it, reading (and discarding) what the client sent for a short while first, so that the
/// close does not reset the connection before the client read the answer.
pub async fn refuse_connection(mut stream: TcpStream) {
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{TOO_MANY}",
        TOO_MANY.len()
    );
    let refuse = async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), refuse).await;
}
