//! Health checks: an HTTP `GET` over the worker's socket, answered 2xx in
//! time, by the worker's own user (a socket in a directory the worker
//! writes could be a link to anything).

use std::{path::PathBuf, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::UnixStream,
};

/// How a worker is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthProbe {
    /// The worker's socket, on the host.
    pub socket: PathBuf,
    /// The Unix user that must answer.
    pub uid: u32,
    /// The request path, such as `/healthz`.
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Failures in a row that restart the worker.
    pub failures: u32,
}

/// One check: `Ok` on a 2xx answer, else why not.
pub async fn check(probe: &HealthProbe) -> Result<(), String> {
    tokio::time::timeout(probe.timeout, ask(probe))
        .await
        .map_err(|_| format!("no answer within {} ms", probe.timeout.as_millis()))?
}

async fn ask(probe: &HealthProbe) -> Result<(), String> {
    let mut stream =
        UnixStream::connect(&probe.socket).await.map_err(|e| format!("cannot connect: {e}"))?;
    let peer = stream.peer_cred().map_err(|e| format!("cannot tell who answers: {e}"))?.uid();
    if peer != probe.uid {
        return Err(format!("the socket is answered by user {peer}, not the worker's"));
    }
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: worker\r\nUser-Agent: bulkhead-health\r\nConnection: close\r\n\r\n",
        probe.path
    );
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("cannot ask: {e}"))?;
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 4096 {
        let n = stream.read(&mut buf).await.map_err(|e| format!("cannot read the answer: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let status = line.split_whitespace().nth(1).and_then(|s| s.parse::<u16>().ok());
    match status {
        Some(200..=299) => Ok(()),
        Some(status) => Err(format!("answered {status}")),
        None => Err("answered something other than HTTP".to_owned()),
    }
}
