//! Reads: the request line and headers, and for HTTP/1.1 the raw bytes of
//! each request head. Refuses the shapes that let a request mean one thing
//! to the gateway and another to an upstream (request smuggling), or name
//! its host twice: an absolute-form target, two Host headers, two
//! Content-Length headers, Content-Length with Transfer-Encoding.
//!
//! hyper refuses most malformed messages itself, but it quietly repairs
//! two smuggling shapes (identical Content-Lengths merged; Content-Length
//! dropped beside Transfer-Encoding), so the request it hands over no
//! longer shows them. [`Inspected`] watches the bytes hyper reads and
//! notes, head by head, which ones had those shapes; the request path
//! takes the notes in order ([`Verdicts`]) and refuses those requests.

use std::{
    collections::VecDeque,
    io,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use http::{Request, Version, header};
use hyper::rt::{Read, ReadBufCursor, Write};

use crate::error::{Code, Phase, Refusal};

fn refuse(reason: &'static str) -> Refusal {
    Refusal::new(Phase::Framing, Code::BadRequest, reason)
}

/// What the inspector found in one request head, if anything.
pub type Verdict = Option<&'static str>;

/// Verdicts on one connection's request heads, in order.
#[derive(Debug, Clone, Default)]
pub struct Verdicts(Arc<Mutex<VecDeque<Verdict>>>);

impl Verdicts {
    fn push(&self, verdict: Verdict) {
        if let Ok(mut queue) = self.0.lock() {
            queue.push_back(verdict);
        }
    }

    /// The verdict on the next request of the connection (HTTP/1.1
    /// requests are answered in the order they came).
    pub fn next(&self) -> Verdict {
        self.0.lock().ok().and_then(|mut queue| queue.pop_front()).flatten()
    }
}

pub fn check<B>(request: &Request<B>, verdict: Verdict) -> Result<(), Refusal> {
    if let Some(reason) = verdict {
        return Err(refuse(reason));
    }
    let headers = request.headers();
    if request.version() < Version::HTTP_2 && request.uri().authority().is_some() {
        // An absolute-form target names a host besides the Host header.
        return Err(refuse("absolute-form request target"));
    }
    if headers.get_all(header::HOST).iter().count() > 1 {
        return Err(refuse("two Host headers"));
    }
    let lengths = headers.get_all(header::CONTENT_LENGTH).iter().count();
    if lengths > 1 {
        return Err(refuse("two Content-Length headers"));
    }
    if lengths == 1 && headers.contains_key(header::TRANSFER_ENCODING) {
        return Err(refuse("Content-Length and Transfer-Encoding together"));
    }
    Ok(())
}

/// Where the inspector is in the byte stream.
#[derive(Debug)]
enum State {
    /// Collecting a request head until its blank line.
    Head(Vec<u8>),
    /// Skipping a body of known length.
    Body(u64),
    /// Reading a chunk-size line.
    ChunkSize(Vec<u8>),
    /// Skipping chunk data, then its CRLF.
    ChunkData(u64),
    /// Skipping trailers until the blank line.
    Trailers(Vec<u8>),
    /// No more HTTP/1.1 heads to read (HTTP/2, an upgrade, a stream hyper
    /// will refuse anyway).
    Off,
}

/// An HTTP/1.1 client connection whose request heads are inspected as
/// hyper reads them.
#[derive(Debug)]
pub struct Inspected<T> {
    inner: T,
    state: State,
    verdicts: Verdicts,
    max_head: usize,
}

impl<T> Inspected<T> {
    pub fn new(inner: T, max_head: usize) -> (Self, Verdicts) {
        let verdicts = Verdicts::default();
        let state = State::Head(Vec::new());
        (Self { inner, state, verdicts: verdicts.clone(), max_head }, verdicts)
    }

    fn observe(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let state = std::mem::replace(&mut self.state, State::Off);
            self.state = match state {
                State::Off => return,
                State::Head(mut head) => {
                    let end = find_blank_line(&head, bytes);
                    let taken = end.unwrap_or(bytes.len());
                    let (mine, rest) = bytes.split_at(taken);
                    bytes = rest;
                    if head.len() + mine.len() > self.max_head {
                        State::Off
                    } else if end.is_none() {
                        head.extend_from_slice(mine);
                        State::Head(head)
                    } else if head.is_empty() {
                        // The usual case: the whole head came in one read.
                        self.finish_head(mine)
                    } else {
                        head.extend_from_slice(mine);
                        self.finish_head(&head)
                    }
                }
                State::Body(left) => {
                    let taken = left.min(bytes.len() as u64);
                    bytes = &bytes[taken as usize..];
                    if left == taken { State::Head(Vec::new()) } else { State::Body(left - taken) }
                }
                State::ChunkSize(mut line) => match bytes.iter().position(|b| *b == b'\n') {
                    None => {
                        line.extend_from_slice(bytes);
                        bytes = &[];
                        if line.len() > 1024 { State::Off } else { State::ChunkSize(line) }
                    }
                    Some(at) => {
                        line.extend_from_slice(&bytes[..at]);
                        bytes = &bytes[at + 1..];
                        match chunk_size(&line) {
                            Some(0) => State::Trailers(Vec::new()),
                            // The data, then its CRLF.
                            Some(size) => State::ChunkData(size.saturating_add(2)),
                            None => State::Off,
                        }
                    }
                },
                State::ChunkData(left) => {
                    let taken = left.min(bytes.len() as u64);
                    bytes = &bytes[taken as usize..];
                    if left == taken {
                        State::ChunkSize(Vec::new())
                    } else {
                        State::ChunkData(left - taken)
                    }
                }
                State::Trailers(mut seen) => {
                    // The trailer section ends with an empty line; with no
                    // trailers that is the very next CRLF.
                    seen.extend_from_slice(bytes);
                    let end = if seen.starts_with(b"\r\n") {
                        Some(2)
                    } else {
                        seen.windows(4).position(|w| w == b"\r\n\r\n").map(|at| at + 4)
                    };
                    match end {
                        Some(end) => {
                            let rest = seen.split_off(end);
                            self.state = State::Head(Vec::new());
                            self.observe(&rest);
                            return;
                        }
                        None if seen.len() > self.max_head => State::Off,
                        None => {
                            bytes = &[];
                            State::Trailers(seen)
                        }
                    }
                }
            };
        }
    }

    /// Notes the verdict on a complete head and says what follows it.
    fn finish_head(&mut self, head: &[u8]) -> State {
        if head.starts_with(b"PRI * HTTP/2.0") {
            return State::Off;
        }
        let (mut lengths, mut length, mut chunked, mut upgrade) = (0, None, false, false);
        for line in head.split(|b| *b == b'\n').skip(1) {
            let Some(colon) = line.iter().position(|b| *b == b':') else { continue };
            let name = &line[..colon];
            if name.eq_ignore_ascii_case(b"content-length") {
                lengths += 1;
                length = std::str::from_utf8(&line[colon + 1..])
                    .ok()
                    .and_then(|value| value.trim().parse::<u64>().ok());
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                chunked = true;
            } else if name.eq_ignore_ascii_case(b"upgrade") {
                upgrade = true;
            }
        }
        let verdict = match (lengths, chunked) {
            (2.., _) => Some("two Content-Length headers"),
            (1, true) => Some("Content-Length and Transfer-Encoding together"),
            _ => None,
        };
        self.verdicts.push(verdict);
        if verdict.is_some() || upgrade {
            // hyper closes the connection after such a request, or hands
            // it over to a tunnel: no further heads to read.
            return State::Off;
        }
        match (chunked, length) {
            (true, _) => State::ChunkSize(Vec::new()),
            (false, Some(0)) | (false, None) => State::Head(Vec::new()),
            (false, Some(length)) => State::Body(length),
        }
    }
}

/// Where in `next` the head that `head` began ends (just past its blank
/// line), looking across the boundary between the two.
fn find_blank_line(head: &[u8], next: &[u8]) -> Option<usize> {
    const BLANK: &[u8] = b"\r\n\r\n";
    // A blank line split between the two: at most three bytes of it in
    // `head`, the rest at the start of `next`.
    let carried = &head[head.len() - head.len().min(3)..];
    for from in 0..carried.len() {
        let (before, after) = BLANK.split_at(carried.len() - from);
        if carried[from..] == *before && next.starts_with(after) {
            return Some(after.len());
        }
    }
    memchr::memmem::find(next, BLANK).map(|at| at + BLANK.len())
}

fn chunk_size(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let digits = line.split(|b| *b == b';').next()?;
    let text = std::str::from_utf8(digits).ok()?.trim();
    if text.is_empty() || text.len() > 16 {
        return None;
    }
    u64::from_str_radix(text, 16).ok()
}

impl<T: Read + Unpin> Read for Inspected<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if matches!(this.state, State::Off) {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        // Read into a buffer of our own first, so the bytes can be seen.
        let mut scratch = [std::mem::MaybeUninit::<u8>::uninit(); 8192];
        let limit = buf.remaining().min(scratch.len());
        let mut local = hyper::rt::ReadBuf::uninit(&mut scratch[..limit]);
        match Pin::new(&mut this.inner).poll_read(cx, local.unfilled()) {
            Poll::Ready(Ok(())) => {
                let filled = local.filled();
                this.observe(filled);
                buf.put_slice(filled);
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<T: Write + Unpin> Write for Inspected<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdicts(stream: &[u8], split: usize) -> Vec<Verdict> {
        let (mut inspected, verdicts) = Inspected::new((), 65_536);
        for piece in stream.chunks(split.max(1)) {
            inspected.observe(piece);
        }
        let mut all = Vec::new();
        while let Ok(mut queue) = verdicts.0.lock() {
            match queue.pop_front() {
                Some(v) => all.push(v),
                None => break,
            }
        }
        all
    }

    #[test]
    fn each_head_of_a_keep_alive_stream_is_judged_however_it_is_split() {
        let stream = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\n\r\n\r\n\r\n0\r\nTrailer: t\r\n\r\nPOST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\ncontent-length: 1\r\n\r\nz";
        for split in [1, 2, 3, 5, 7, 64, 4096] {
            assert_eq!(
                verdicts(stream, split),
                [None, None, Some("two Content-Length headers")],
                "split {split}"
            );
        }
        let both = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert_eq!(verdicts(both, 3), [Some("Content-Length and Transfer-Encoding together")]);
        assert_eq!(verdicts(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 4), Vec::<Verdict>::new());
    }
}
