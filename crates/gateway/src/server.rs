//! Accepting clients: HTTP/1.1 and HTTP/2 (h2c) on one listener, with the
//! header-read timeout and header cap applied before any phase runs, and a
//! graceful stop that lets requests in flight finish.

use std::{convert::Infallible, sync::Arc, time::Duration};

use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use tokio::{net::TcpListener, sync::watch};

use crate::{Gateway, framing::Inspected};

/// How long a stop waits for requests in flight.
const DRAIN_FOR: Duration = Duration::from_secs(10);

impl Gateway {
    /// Serves clients from `listener` until `stopping` turns true.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        mut stopping: watch::Receiver<bool>,
    ) {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.settings.header_read_timeout)
            .max_buf_size(self.settings.max_header_bytes.max(8192));
        builder.http2().timer(TokioTimer::new()).max_header_list_size(
            u32::try_from(self.settings.max_header_bytes).unwrap_or(u32::MAX),
        );
        let graceful = GracefulShutdown::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(accepted) => accepted,
                        Err(error) => {
                            // Out of file descriptors, say: wait rather than spin.
                            tracing::warn!(%error, "cannot accept a gateway connection");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let (stream, verdicts) =
                        Inspected::new(TokioIo::new(stream), self.settings.max_header_bytes);
                    let gateway = Arc::clone(&self);
                    let service = service_fn(move |request| {
                        let gateway = Arc::clone(&gateway);
                        let verdict = verdicts.next();
                        async move { Ok::<_, Infallible>(gateway.handle(request, peer, verdict).await) }
                    });
                    let connection = builder.serve_connection_with_upgrades(stream, service);
                    let connection = graceful.watch(connection.into_owned());
                    tokio::spawn(async move {
                        if let Err(error) = connection.await {
                            tracing::debug!(%error, "gateway connection ended");
                        }
                    });
                }
                _ = async { let _ = stopping.wait_for(|stop| *stop).await; } => break,
            }
        }
        drop(listener);
        if tokio::time::timeout(DRAIN_FOR, graceful.shutdown()).await.is_err() {
            tracing::warn!("gateway requests still in flight after {DRAIN_FOR:?}; stopped anyway");
        }
    }
}
