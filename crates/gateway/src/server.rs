//! Accepting clients: HTTP/1.1 and HTTP/2 (h2c) on one listener, with the
//! header-read timeout and header cap applied before any phase runs, and a
//! graceful stop that lets requests in flight finish.
//!
//! The gateway serves on worker threads of its own, each with a
//! single-threaded runtime that keeps every connection it is handed, with
//! that connection's requests and their upstream connections (see
//! [`crate::proxy`]), on its thread. A work-stealing runtime moves a
//! request's halves between cores, and on two cores that cost more than all
//! the phases together (BENCHMARKS.md, "Gateway"). One acceptor hands each
//! new connection to the worker holding the fewest, so a burst of
//! connections does not pile onto whichever thread woke first.

use std::{
    cell::Cell,
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot, watch},
};

use crate::{Gateway, framing::Inspected, headers::Peer};

/// How long a stop waits for requests in flight.
const DRAIN_FOR: Duration = Duration::from_secs(10);

thread_local! {
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// The index of the gateway worker running the caller (0 outside one), to
/// pick that worker's share of per-thread state.
pub(crate) fn worker() -> usize {
    WORKER.with(Cell::get)
}

/// The cores this process may use, read once (the standard library reads
/// the cgroup's quota from files on every call).
pub(crate) fn cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, usize::from))
}

/// A connection handed to a worker: the socket, out of the acceptor's
/// runtime, and its peer.
type Handed = (std::net::TcpStream, SocketAddr);

/// The acceptor's end of one worker.
struct Worker {
    connections: mpsc::UnboundedSender<Handed>,
    /// Connections the worker holds open.
    open: Arc<AtomicUsize>,
    finished: oneshot::Receiver<()>,
}

impl Gateway {
    /// Serves clients from `listener` on [`crate::Settings::workers`]
    /// threads until `stopping` turns true; returns when every worker has
    /// finished its requests in flight.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        mut stopping: watch::Receiver<bool>,
    ) {
        let workers: Vec<Worker> =
            (0..self.settings.workers.max(1)).filter_map(|i| self.start_worker(i)).collect();
        if workers.is_empty() {
            tracing::error!("no gateway worker could start; the gateway does not serve");
            return;
        }
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
                    let Ok(stream) = stream.into_std() else { continue };
                    let least = workers.iter().min_by_key(|w| w.open.load(Ordering::Relaxed));
                    if let Some(worker) = least {
                        worker.open.fetch_add(1, Ordering::Relaxed);
                        let _ = worker.connections.send((stream, peer));
                    }
                }
                _ = async { let _ = stopping.wait_for(|stop| *stop).await; } => break,
            }
        }
        drop(listener);
        let mut finished = Vec::new();
        for worker in workers {
            // Closing its queue tells the worker to drain and stop.
            drop(worker.connections);
            finished.push(worker.finished);
        }
        for worker in finished {
            let _ = worker.await;
        }
    }

    /// Starts worker `index` on a thread of its own.
    fn start_worker(self: &Arc<Self>, index: usize) -> Option<Worker> {
        let (connections, queue) = mpsc::unbounded_channel();
        let (done, finished) = oneshot::channel::<()>();
        let open = Arc::new(AtomicUsize::new(0));
        let (gateway, held) = (Arc::clone(self), Arc::clone(&open));
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
        let started = runtime.and_then(|runtime| {
            std::thread::Builder::new().name(format!("bulkhead-gateway-{index}")).spawn(move || {
                WORKER.set(index);
                runtime.block_on(gateway.serve_worker(queue, held));
                drop(done);
            })
        });
        match started {
            Ok(_) => Some(Worker { connections, open, finished }),
            Err(error) => {
                tracing::error!(%error, worker = index, "cannot start a gateway worker");
                None
            }
        }
    }

    /// One worker: serves the connections it is handed on the current
    /// (single-threaded) runtime until the acceptor closes its queue, then
    /// lets requests in flight finish.
    async fn serve_worker(
        self: Arc<Self>,
        mut queue: mpsc::UnboundedReceiver<Handed>,
        open: Arc<AtomicUsize>,
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
        while let Some((stream, peer)) = queue.recv().await {
            let stream = match TcpStream::from_std(stream) {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::warn!(%error, "a gateway worker cannot take a connection");
                    open.fetch_sub(1, Ordering::Relaxed);
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let (stream, verdicts) =
                Inspected::new(TokioIo::new(stream), self.settings.max_header_bytes);
            let gateway = Arc::clone(&self);
            let peer = Arc::new(Peer::new(peer));
            let service = service_fn(move |request| {
                let (gateway, peer) = (Arc::clone(&gateway), Arc::clone(&peer));
                let verdict = verdicts.next();
                async move { Ok::<_, Infallible>(gateway.handle(request, &peer, verdict).await) }
            });
            let connection = builder.serve_connection_with_upgrades(stream, service);
            let connection = graceful.watch(connection.into_owned());
            let open = Arc::clone(&open);
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "gateway connection ended");
                }
                open.fetch_sub(1, Ordering::Relaxed);
            });
        }
        if tokio::time::timeout(DRAIN_FOR, graceful.shutdown()).await.is_err() {
            tracing::warn!("gateway requests still in flight after {DRAIN_FOR:?}; stopped anyway");
        }
    }
}
