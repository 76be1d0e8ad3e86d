//! The common HTTP/1.1 request, served without hyper.
//!
//! Most requests through an entry point are HTTP/1.1 requests without a body: a GET
//! of a page, an API read. For those this lane reads the head, calls the handler and
//! writes the response itself, on the connection's own task, with no per-request
//! timer, channel or allocation beyond the request's own. Every other request (a body,
//! `Expect`, an upgrade, HTTP/1.0, a head that does not parse, is larger than 8 KiB or
//! has more than 100 fields) goes to hyper, with the bytes read so far, exactly as
//! they came; hyper keeps the connection until it is next idle, and answers malformed
//! requests with its own errors.
//!
//! What the lane keeps to, as hyper does:
//! - a head must be complete within the header timeout of the end of the previous
//!   response (or of the connection's start); a head trickled in pieces is parsed
//!   again only once an empty line may have come;
//! - a connection that closes while its request is in flight cancels the request
//!   (no half-close), unless a pipelined request waits: the client's answers are then
//!   written before its end is read;
//! - pipelined requests are answered in order;
//! - a response is framed by the length its body knows, the `Content-Length` it
//!   carries, or else chunked; HEAD, 204 and 304 responses have no body;
//! - a response body that fails or ends short closes the connection, so a client never
//!   takes a cut response for a whole one;
//! - at shutdown the request in flight is answered with `Connection: close`, and a
//!   client that has sent nothing yet gets the header timeout to send its request.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::SystemTime;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as HttpBody;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::exchange::NameCache;
use crate::h1::{ClientBody, ClientStream, Handler, Timing, Transport};
use crate::proxy::Body;
use crate::server::Shutdown;

/// Heads longer than this go to hyper (whose limit, the configured one, is at least
/// this).
pub const MAX_HEAD: usize = 8 * 1024;
/// As hyper's limit: more fields than this go to hyper, which answers 431.
const MAX_FIELDS: usize = 100;
/// Room in a request's map beyond its own fields, for what the handler may add to it
/// (`X-Forwarded-Prefix`, `Host`, an auth service's fields; the forwarding fields proper
/// are kept beside the map). Less room measured no cheaper: 64 more instructions per
/// request with 2.
const FORWARDING_FIELDS: usize = 5;
/// Response data up to this size is copied behind the head and sent in one write;
/// larger data is written from where it lies.
const COPY_LIMIT: usize = 16 * 1024;

/// Why the lane let go of the connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A request the lane does not serve has begun: it is in the stream's unread bytes,
    /// for hyper.
    Handoff,
    /// Idle for the park time with nothing read: the lane's buffers can go.
    Park,
    /// The connection has ended (closed by either side, an error, shutdown).
    Done,
}

/// What the lane did with a connection.
pub struct Served {
    pub outcome: Outcome,
    /// Requests answered.
    pub requests: u64,
}

/// Serves requests on `stream` until one needs hyper, the connection is idle for
/// `timing.park_after`, or it ends. `served` says whether the client was served
/// before (a connection shut down before its first request gets the header timeout
/// for that request to arrive); `head_by`, when the next head must be complete (by
/// default, a header timeout from now).
pub async fn serve<T, S>(
    stream: &mut ClientStream<T>,
    service: &S,
    timing: Timing,
    shutdown: &mut Shutdown,
    served: bool,
    head_by: Option<Instant>,
    peer: SocketAddr,
) -> Served
where
    T: Transport,
    S: Handler,
{
    let mut lane = Lane {
        stream,
        shutdown: shutdown.clone(),
        buf: BytesMut::new(),
        out: BytesMut::new(),
        spans: Vec::new(),
        names: NameCache::default(),
        checked: 0,
        requests: 0,
        drained: false,
        stopping: false,
    };
    let head_by = head_by.unwrap_or_else(|| Instant::now() + timing.header_timeout);
    let outcome = lane.run(service, timing, shutdown, served, head_by, peer).await;
    if outcome == Outcome::Handoff && !lane.buf.is_empty() {
        let rest = lane.buf.split().freeze();
        lane.stream.unread(rest);
    }
    if outcome == Outcome::Done {
        // Closed as hyper closes: the TLS close_notify, then the socket, bounded.
        let _ = tokio::time::timeout(timing.header_timeout, lane.stream.shutdown()).await;
    }
    Served {
        outcome,
        requests: lane.requests,
    }
}

struct Lane<'a, T> {
    stream: &'a mut ClientStream<T>,
    /// Looked at before each response: the response in flight when shutdown begins
    /// is the last.
    shutdown: Shutdown,
    /// What the client sent and is not answered yet.
    buf: BytesMut,
    /// The response being written: its head, and small data copied behind it.
    out: BytesMut,
    /// Where the fields of the head being parsed lie.
    spans: Vec<(Span, Span)>,
    /// The field names of the last request.
    names: NameCache,
    /// How much of `buf` was parsed without finding the end of a head.
    checked: usize,
    requests: u64,
    /// The last read left room unfilled.
    drained: bool,
    /// Shutting down: the next response is the last.
    stopping: bool,
}

/// Where some bytes lie in a head: start and end.
type Span = (u16, u16);

/// A request head, taken whole from the buffer. (Returned once per request and moved
/// straight into the handler: boxing it would cost an allocation for nothing.)
#[allow(clippy::large_enum_variant)]
enum Parsed {
    Request(Request<ClientBody>, Shape),
    /// Not complete yet.
    Partial,
    /// For hyper.
    Hyper,
}

/// What the response needs to know about its request.
#[derive(Clone, Copy)]
struct Shape {
    head: bool,
    close: bool,
}

/// What woke an idle lane.
enum Wake {
    Read(usize),
    Timer,
    Stop,
}

impl<T: Transport> Lane<'_, T> {
    async fn run<S: Handler>(
        &mut self,
        service: &S,
        timing: Timing,
        shutdown: &mut Shutdown,
        served: bool,
        mut head_by: Instant,
        peer: SocketAddr,
    ) -> Outcome {
        // One timer for the whole connection, set again only when it fires: while
        // requests come, it fires once per park time, not once per request.
        let timer = tokio::time::sleep(timing.park_after);
        tokio::pin!(timer);
        let mut requests_when_armed = 0;
        // When the head begun in the buffer must be complete.
        let mut head_deadline: Option<Instant> = None;
        let stop = shutdown.wait();
        tokio::pin!(stop);
        let mut stop_seen = false;
        // Once polled, the shutdown signal wakes this task when it comes; until then
        // a look at the flag is enough.
        let mut stop_polled = false;
        loop {
            match self.parse() {
                Parsed::Request(req, shape) => {
                    head_deadline = None;
                    match self.answer(service, req, shape).await {
                        Ok(true) => {
                            self.requests += 1;
                            // The next head is due within the header timeout of the
                            // end of this response, as hyper counts it.
                            head_by = Instant::now() + timing.header_timeout;
                            continue;
                        }
                        Ok(false) => {
                            self.requests += 1;
                            return Outcome::Done;
                        }
                        Err(e) => {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                            return Outcome::Done;
                        }
                    }
                }
                Parsed::Hyper => return Outcome::Handoff,
                Parsed::Partial => {}
            }
            if !self.buf.is_empty() && head_deadline.is_none() {
                head_deadline = Some(head_by);
                if timer.deadline() > head_by {
                    timer.as_mut().reset(head_by);
                }
            }
            let wake = poll_fn(|cx| {
                match self.poll_read(cx) {
                    Poll::Ready(read) => return Poll::Ready(read.map(Wake::Read)),
                    Poll::Pending => {}
                }
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Ok(Wake::Timer));
                }
                if !stop_seen && (!stop_polled || self.shutdown.has_begun()) {
                    stop_polled = true;
                    if stop.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Ok(Wake::Stop));
                    }
                }
                Poll::Pending
            })
            .await;
            match wake {
                Ok(Wake::Read(0)) => return Outcome::Done,
                Ok(Wake::Read(_)) => {}
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                    return Outcome::Done;
                }
                Ok(Wake::Timer) => {
                    let now = Instant::now();
                    if let Some(deadline) = head_deadline {
                        if now >= deadline {
                            tracing::debug!(%peer, "request head not complete within the header timeout");
                            return Outcome::Done;
                        }
                        timer.as_mut().reset(deadline.min(now + timing.park_after));
                    } else if self.buf.is_empty() && self.requests == requests_when_armed {
                        return Outcome::Park;
                    } else {
                        requests_when_armed = self.requests;
                        timer.as_mut().reset(now + timing.park_after);
                    }
                }
                Ok(Wake::Stop) => {
                    stop_seen = true;
                    if self.buf.is_empty() && (served || self.requests > 0) {
                        return Outcome::Done;
                    }
                    // A connection accepted just now has its first request on the
                    // way; closing it as idle would fail that request, so it gets
                    // until the header timeout to arrive (bounded by the shutdown
                    // grace like everything else). A head already begun keeps its
                    // deadline. Either way, its response is the last.
                    self.stopping = true;
                    if head_deadline.is_none() {
                        let deadline = Instant::now() + timing.header_timeout;
                        head_deadline = Some(deadline);
                        timer.as_mut().reset(deadline);
                    }
                }
            }
        }
    }

    /// Reads what the client sent into the buffer.
    ///
    /// After a read from the transport that left room unfilled, everything the client
    /// had sent was taken (the socket, and the TLS layer's plaintext), so the next read
    /// waits for the socket's readiness first: asking the TLS layer costs far more, and
    /// the lane asks after every response and while every request is in flight. (Bytes
    /// put back in front of the transport say nothing of what it holds: after the
    /// first bytes read to tell HTTP/1 from HTTP/2, the rest of a request may wait in
    /// the TLS layer with nothing more to come on the socket.)
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.drained {
            ready!(self.stream.poll_readable(cx))?;
        }
        if self.buf.capacity() - self.buf.len() < 1024 {
            // Takes the old room back when the last request's head is gone.
            self.buf.reserve(MAX_HEAD);
        }
        let room = self.buf.capacity() - self.buf.len();
        let from_transport = !self.stream.has_unread();
        let read = std::pin::pin!(tokio::io::AsyncReadExt::read_buf(
            &mut *self.stream,
            &mut self.buf
        ));
        let n = ready!(read.poll(cx))?;
        self.drained = from_transport && n > 0 && n < room;
        Poll::Ready(Ok(n))
    }

    /// Ready when the client has closed the connection (or it failed) while its
    /// request is in flight. What else it sends (a pipelined request) waits in the
    /// buffer, up to the head limit. Once a pipelined request waits, the client is no
    /// longer watched, as hyper does: a client that sends its requests and then
    /// closes its side still gets the answer in flight.
    fn poll_client(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.buf.is_empty() {
            return Poll::Pending;
        }
        while self.buf.len() < MAX_HEAD {
            match self.poll_read(cx) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => break,
            }
        }
        Poll::Pending
    }

    /// Takes the next request head out of the buffer, if it is complete and one this
    /// lane serves.
    fn parse(&mut self) -> Parsed {
        if self.buf.is_empty() {
            return Parsed::Partial;
        }
        // A head trickled in small pieces is parsed again only once an empty line may
        // have come, not after every read. (What follows a complete head, pipelined
        // requests, may make the buffer as long as it likes.)
        if !crate::exchange::may_end_head(&self.buf, self.checked) {
            self.checked = self.buf.len();
            return self.incomplete();
        }
        let mut fields = [const { MaybeUninit::uninit() }; MAX_FIELDS];
        let mut request = httparse::Request::new(&mut []);
        let length = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
            &mut request,
            &self.buf,
            &mut fields,
        ) {
            Ok(httparse::Status::Complete(length)) => length,
            Ok(httparse::Status::Partial) => {
                self.checked = self.buf.len();
                return self.incomplete();
            }
            // Too long, too many fields, malformed: hyper answers.
            _ => return Parsed::Hyper,
        };
        if length > MAX_HEAD || request.version != Some(1) {
            return Parsed::Hyper;
        }
        let (Some(method), Some(target)) = (request.method, request.path) else {
            return Parsed::Hyper;
        };
        if !target.starts_with('/') || method == "CONNECT" {
            return Parsed::Hyper;
        }
        let Ok(method) = Method::from_bytes(method.as_bytes()) else {
            return Parsed::Hyper;
        };
        let start = self.buf.as_ptr() as usize;
        let span = |s: &[u8]| -> Option<Span> {
            crate::exchange::span_in(start, length, s).map(|(from, to)| (from as u16, to as u16))
        };
        let Some(target) = span(target.as_bytes()) else {
            return Parsed::Hyper;
        };
        let mut shape = Shape {
            head: method == Method::HEAD,
            close: false,
        };
        // Where each field lies in the head (which is under 64 KiB), so that values
        // can share its bytes; kept from one request to the next, not zeroed for each.
        self.spans.clear();
        for field in request.headers.iter() {
            let name = field.name.as_bytes();
            if simple_field(name, field.value, &mut shape).is_none() {
                return Parsed::Hyper;
            }
            let Some(spans) = span(name).zip(span(field.value)) else {
                return Parsed::Hyper;
            };
            self.spans.push(spans);
        }
        let count = self.spans.len();
        let head = self.buf.split_to(length).freeze();
        self.checked = 0;
        let Ok(uri) = Uri::from_maybe_shared(head.slice(usize::from(target.0)..usize::from(target.1))) else {
            // hyper answers 400; the head goes back in front for it.
            self.unread_head(head);
            return Parsed::Hyper;
        };
        // With room for the forwarding fields the handler adds (growing the map later
        // would hash every field again).
        let mut headers = HeaderMap::with_capacity(count + FORWARDING_FIELDS);
        for (index, &((name_start, name_end), (value_start, value_end))) in self.spans.iter().enumerate() {
            let name = self
                .names
                .name(index, &head[usize::from(name_start)..usize::from(name_end)]);
            let value =
                HeaderValue::from_maybe_shared(head.slice(usize::from(value_start)..usize::from(value_end)));
            let (Ok(name), Ok(value)) = (name, value) else {
                self.unread_head(head);
                return Parsed::Hyper;
            };
            headers.append(name, value);
        }
        let mut req = Request::new(ClientBody::empty());
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = headers;
        Parsed::Request(req, shape)
    }

    /// A head not complete yet: hyper's once it is longer than the lane takes.
    fn incomplete(&self) -> Parsed {
        if self.buf.len() >= MAX_HEAD {
            Parsed::Hyper
        } else {
            Parsed::Partial
        }
    }

    /// Gives a head taken out of the buffer, and what followed it, back to the stream
    /// for hyper.
    fn unread_head(&mut self, head: Bytes) {
        let rest = self.buf.split().freeze();
        self.stream.unread(rest);
        self.stream.unread(head);
    }

    /// Calls the handler and writes its response. Returns whether the connection stays
    /// open.
    async fn answer<S: Handler>(
        &mut self,
        service: &S,
        req: Request<ClientBody>,
        shape: Shape,
    ) -> io::Result<bool> {
        let mut pending = service.call(req);
        // While the handler works, the client is watched: a client that closes cancels
        // its request, as hyper does.
        let response = poll_fn(|cx| {
            if let Poll::Ready(response) = Pin::new(&mut pending).poll(cx) {
                return Poll::Ready(Some(response));
            }
            self.poll_client(cx).map(|()| None)
        })
        .await;
        drop(pending);
        let Some(Ok(response)) = response else {
            return Err(client_gone());
        };
        let keep_alive = self.write_response(response, shape).await?;
        Ok(keep_alive)
    }

    /// Writes a response, head and body. Returns whether the connection stays open.
    async fn write_response(&mut self, response: Response<Body>, shape: Shape) -> io::Result<bool> {
        let (parts, mut body) = response.into_parts();
        let status = parts.status;
        let mut close = shape.close
            || self.stopping
            || self.shutdown.has_begun()
            || status.is_informational()
            || crate::proxy::connection_has(&parts.headers, "close");
        let no_content = status.is_informational() || status == StatusCode::NO_CONTENT;
        let framing = if no_content || status == StatusCode::NOT_MODIFIED {
            Framing::None
        } else if shape.head {
            // No body; the length it would have, when only the body knows it (a local
            // answer; a backend's answer to HEAD carries its own field).
            match body.size_hint().exact() {
                Some(length) if length > 0 && !parts.headers.contains_key(header::CONTENT_LENGTH) => {
                    Framing::Announced(length)
                }
                _ => Framing::None,
            }
        } else if let Some(length) = body.size_hint().exact() {
            Framing::Length(length)
        } else if let Some(length) = single_length(&parts.headers) {
            Framing::Length(length)
        } else {
            Framing::Chunked
        };
        self.encode_head(status, &parts.headers, framing, no_content, close);
        if matches!(framing, Framing::None | Framing::Announced(_)) {
            drop(body);
            self.flush_out(&mut Bytes::new(), b"").await?;
            return Ok(!close);
        }
        let mut left = match framing {
            Framing::Length(length) => length,
            _ => 0,
        };
        loop {
            // The head waits for the first data, to go out with it, unless that data
            // is not ready: then what there is goes now (a stream's head must not wait
            // for its first event).
            let frame = match poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    if !self.out.is_empty() {
                        self.flush_out(&mut Bytes::new(), b"").await?;
                    }
                    // Meanwhile the client is watched, as while the handler works.
                    let frame = poll_fn(|cx| {
                        if let Poll::Ready(frame) = Pin::new(&mut body).poll_frame(cx) {
                            return Poll::Ready(Some(frame));
                        }
                        self.poll_client(cx).map(|()| None)
                    })
                    .await;
                    match frame {
                        Some(frame) => frame,
                        None => return Err(client_gone()),
                    }
                }
            };
            match frame {
                None => break,
                Some(Err(e)) => {
                    // The client must not take what was sent for the whole response.
                    self.flush_out(&mut Bytes::new(), b"").await?;
                    return Err(io::Error::other(format!("the response body failed: {e}")));
                }
                Some(Ok(frame)) => {
                    // Trailers are not sent: the lane serves no request that asked
                    // for them (`TE: trailers` goes to hyper).
                    let Ok(mut data) = frame.into_data() else { continue };
                    if data.is_empty() {
                        continue;
                    }
                    let tail: &'static [u8] = match framing {
                        Framing::Length(_) => {
                            if data.len() as u64 > left {
                                data.truncate(left as usize);
                                close = true;
                                left = 0;
                                self.write_data(data, b"").await?;
                                break;
                            }
                            left -= data.len() as u64;
                            b""
                        }
                        _ => {
                            let _ = write!(self.out, "{:x}\r\n", data.len());
                            b"\r\n"
                        }
                    };
                    self.write_data(data, tail).await?;
                    if body.is_end_stream() {
                        break;
                    }
                }
            }
        }
        match framing {
            Framing::Chunked => self.out.put_slice(b"0\r\n\r\n"),
            Framing::Length(_) if left > 0 => {
                self.flush_out(&mut Bytes::new(), b"").await?;
                return Err(io::Error::other(format!(
                    "the response body ended {left} bytes short of its length"
                )));
            }
            _ => {}
        }
        drop(body);
        self.flush_out(&mut Bytes::new(), b"").await?;
        Ok(!close)
    }

    /// Sends `data` (then `tail`) behind what is in `out`: copied when small, so that a
    /// head and a small body go out in one write.
    async fn write_data(&mut self, mut data: Bytes, tail: &'static [u8]) -> io::Result<()> {
        if self.out.len() + data.len() <= COPY_LIMIT {
            self.out.put_slice(&data);
            self.out.put_slice(tail);
            return Ok(());
        }
        self.flush_out(&mut data, tail).await
    }

    /// Writes `out`, `data` and `tail`, in order and whole, and flushes.
    async fn flush_out(&mut self, data: &mut Bytes, tail: &'static [u8]) -> io::Result<()> {
        let mut tail = tail;
        let Lane { stream, out, .. } = self;
        poll_fn(|cx| {
            while !(out.is_empty() && data.is_empty() && tail.is_empty()) {
                // Most responses are all in `out`: one buffer, and on plain TCP one
                // send(2) rather than a writev(2) of three.
                let n = if data.is_empty() && tail.is_empty() {
                    ready!(Pin::new(&mut **stream).poll_write(cx, out))?
                } else {
                    let parts = [IoSlice::new(out), IoSlice::new(data), IoSlice::new(tail)];
                    ready!(Pin::new(&mut **stream).poll_write_vectored(cx, &parts))?
                };
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                let mut n = n;
                for part in [
                    &mut *out as &mut dyn Buf,
                    data as &mut dyn Buf,
                    &mut tail as &mut dyn Buf,
                ] {
                    let taken = n.min(part.remaining());
                    part.advance(taken);
                    n -= taken;
                }
            }
            Pin::new(&mut **stream).poll_flush(cx)
        })
        .await?;
        out.clear();
        Ok(())
    }

    fn encode_head(
        &mut self,
        status: StatusCode,
        headers: &HeaderMap,
        framing: Framing,
        no_content: bool,
        close: bool,
    ) {
        let out = &mut self.out;
        out.reserve(256);
        out.put_slice(b"HTTP/1.1 ");
        out.put_slice(status.as_str().as_bytes());
        out.put_u8(b' ');
        out.put_slice(status.canonical_reason().unwrap_or("").as_bytes());
        out.put_slice(b"\r\n");
        let framed_here = matches!(framing, Framing::Length(_) | Framing::Chunked);
        // Noted on the way rather than looked up.
        let mut dated = false;
        for (name, value) in headers {
            dated |= name == header::DATE;
            // The lane frames the body itself; and 1xx and 204 carry no length.
            if name == header::TRANSFER_ENCODING
                || (name == header::CONTENT_LENGTH && (framed_here || no_content))
                || (name == header::CONNECTION && close)
            {
                continue;
            }
            out.put_slice(name.as_str().as_bytes());
            out.put_slice(b": ");
            out.put_slice(value.as_bytes());
            out.put_slice(b"\r\n");
        }
        match framing {
            Framing::Length(length) | Framing::Announced(length) => {
                out.put_slice(b"content-length: ");
                out.put_slice(itoa::Buffer::new().format(length).as_bytes());
                out.put_slice(b"\r\n");
            }
            Framing::Chunked => out.put_slice(b"transfer-encoding: chunked\r\n"),
            Framing::None => {}
        }
        if close {
            out.put_slice(b"connection: close\r\n");
        }
        if !dated {
            out.put_slice(b"date: ");
            put_date(out);
            out.put_slice(b"\r\n");
        }
        out.put_slice(b"\r\n");
    }
}

fn client_gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "the client closed the connection before the end of its response",
    )
}

#[derive(Clone, Copy)]
enum Framing {
    /// No body, and no length written.
    None,
    /// No body (HEAD), and this length written.
    Announced(u64),
    Length(u64),
    Chunked,
}

/// Checks one request field: `Some` if the lane can serve a request with it, noting
/// what the response needs to know.
fn simple_field(name: &[u8], value: &[u8], shape: &mut Shape) -> Option<()> {
    // Fields that need hyper: a body (any framing but an empty one), an expectation,
    // a protocol switch, trailers.
    if name.eq_ignore_ascii_case(b"content-length") {
        return (value == b"0").then_some(());
    }
    if name.eq_ignore_ascii_case(b"transfer-encoding")
        || name.eq_ignore_ascii_case(b"expect")
        || name.eq_ignore_ascii_case(b"upgrade")
        || name.eq_ignore_ascii_case(b"te")
    {
        return None;
    }
    if name.eq_ignore_ascii_case(b"connection") {
        for token in value.split(|&b| b == b',') {
            let token = token.trim_ascii();
            if token.eq_ignore_ascii_case(b"close") {
                shape.close = true;
            } else if token.eq_ignore_ascii_case(b"upgrade") {
                return None;
            }
        }
    }
    Some(())
}

/// The response's `Content-Length`, if it has exactly one field and it is a length.
fn single_length(headers: &HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    crate::exchange::content_length(value)
}

thread_local! {
    /// The `Date` value, made once a second per thread.
    static DATE: RefCell<(u64, Bytes)> = const { RefCell::new((u64::MAX, Bytes::new())) };
}

fn put_date(out: &mut BytesMut) {
    let now = SystemTime::now();
    let second = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    DATE.with(|date| {
        let mut date = date.borrow_mut();
        if date.0 != second {
            *date = (second, Bytes::from(httpdate::fmt_http_date(now)));
        }
        out.put_slice(&date.1);
    });
}
