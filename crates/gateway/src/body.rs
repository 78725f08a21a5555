//! Bodies the gateway streams: the boxed type every response has, and a
//! wrapper that holds what a request occupies (its in-flight slot) until
//! the body has ended, counts the bytes, and cuts a body that falls
//! silent for longer than the API's idle timeout.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use tokio::time::{Instant, Sleep};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every response body the gateway sends.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed_unsync()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

/// A body that fell silent longer than its idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("no data for {0:?}; the body was cut")]
pub struct Idle(pub Duration);

/// `inner`, with an idle timeout, a byte count and whatever `held` is
/// (a slot, a record) released when the body ends or is dropped.
///
/// The timer is made only when the body first waits, and a frame moves
/// only `last`: the timer is pushed back when it fires early, not reset
/// per frame, because a timer-wheel update per frame costs more than the
/// frame.
pub struct Tracked<B, H> {
    inner: B,
    idle: Duration,
    last: Instant,
    timer: Option<Pin<Box<Sleep>>>,
    bytes: Arc<AtomicU64>,
    held: Option<H>,
}

impl<B, H> Tracked<B, H> {
    pub fn new(inner: B, idle: Duration, bytes: Arc<AtomicU64>, held: H) -> Self {
        Self { inner, idle, last: Instant::now(), timer: None, bytes, held: Some(held) }
    }

    /// Whether the body has been silent for its idle timeout; registers
    /// the task to be woken when it would be.
    fn silent(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = self.last + self.idle;
        let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() < deadline {
            timer.as_mut().reset(deadline);
        }
        timer.as_mut().poll(cx).is_ready()
    }
}

impl<B, H> std::fmt::Debug for Tracked<B, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracked").field("idle", &self.idle).finish_non_exhaustive()
    }
}

impl<B, H> HttpBody for Tracked<B, H>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
    H: Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                this.last = Instant::now();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.held = None;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.held = None;
                Poll::Ready(None)
            }
            Poll::Pending if this.silent(cx) => {
                this.held = None;
                Poll::Ready(Some(Err(Box::new(Idle(this.idle)))))
            }
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
