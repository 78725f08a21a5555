//! A real HTTP upstream for gateway tests, in the test process: it records
//! every request exactly as it arrived, so a test can assert what the
//! upstream received and not only what the client saw.
//!
//! Paths: `/sse` streams three events 300 ms apart; `/hang` never answers;
//! `/leak` answers with a card number and an e-mail address; anything else
//! answers 200 with what it received as JSON.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::{Request, Response, body::Frame, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    /// Every value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect()
    }
}

pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Body = BoxBody<Bytes, Infallible>;

async fn answer(
    request: Request<hyper::body::Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes().to_vec()).unwrap_or_default();
    let record = Seen {
        version: format!("{:?}", parts.version),
        method: parts.method.to_string(),
        target: parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (n.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned())
            })
            .collect(),
        body,
    };
    seen.lock().unwrap().push(record.clone());
    match parts.uri.path() {
        "/hang" | "/slow/hang" => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Response::new(Full::new(Bytes::new()).boxed())
        }
        path if path.ends_with("/sse") => {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
            tokio::spawn(async move {
                for i in 0..3 {
                    let event = Bytes::from(format!("data: event {i}\n\n"));
                    if tx.send(Ok(Frame::data(event))).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            });
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|frame| (frame, rx))
            });
            let mut response = Response::new(StreamBody::new(stream).boxed());
            response.headers_mut().insert("content-type", "text/event-stream".parse().unwrap());
            response
        }
        path if path.ends_with("/leak") => {
            let leak = json!({"answer": "card 4111 1111 1111 1111, mail ada@example.com"});
            let mut response = Response::new(Full::new(Bytes::from(leak.to_string())).boxed());
            response.headers_mut().insert("content-type", "application/json".parse().unwrap());
            response
        }
        _ => {
            let echo: Value = json!({
                "method": record.method,
                "target": record.target,
                "tenant": record.header("x-bulkhead-tenant"),
            });
            let mut response = Response::new(Full::new(Bytes::from(echo.to_string())).boxed());
            response.headers_mut().insert("content-type", "application/json".parse().unwrap());
            response
        }
    }
}

impl Upstream {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let seen = Arc::clone(&recorded);
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let seen = Arc::clone(&seen);
                        async move { Ok::<_, Infallible>(answer(request, seen).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, seen, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn forget(&self) {
        self.seen.lock().unwrap().clear();
    }
}
