//! A TCP proxy in front of a real server (PostgreSQL, Redis) that a test
//! can stop and start again on the same port: an outage of that server for
//! whatever connects through the proxy, and for nothing else sharing it.

use std::net::SocketAddr;

use tokio::{
    io::copy_bidirectional,
    net::{TcpListener, TcpStream},
    task::{JoinHandle, JoinSet},
};

#[derive(Debug)]
pub struct TcpProxy {
    pub addr: SocketAddr,
    upstream: SocketAddr,
    task: JoinHandle<()>,
}

impl TcpProxy {
    /// Proxies `addr` (port 0 picks one) to `upstream`.
    pub async fn start(addr: SocketAddr, upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let task = tokio::spawn(async move {
            // Dropped with the task: every connection ends with the proxy.
            let mut connections = JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                connections.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self { addr, upstream, task }
    }

    /// Closes the port and every connection through it.
    pub async fn stop(mut self) -> Stopped {
        self.task.abort();
        let _ = (&mut self.task).await;
        Stopped { addr: self.addr, upstream: self.upstream }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A stopped proxy, to start again on the same port.
#[derive(Debug)]
pub struct Stopped {
    pub addr: SocketAddr,
    upstream: SocketAddr,
}

impl Stopped {
    pub async fn restart(self) -> TcpProxy {
        TcpProxy::start(self.addr, self.upstream).await
    }
}
