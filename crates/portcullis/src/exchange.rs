//! One HTTP/1.1 exchange on a pooled backend connection: the request head and body
//! out, the response head in, and the response body decoded as it is read.
//!
//! The pool used hyper's client connection, which runs each connection as a task of
//! its own and passes every request and response through channels between that task
//! and the request's. Here the request's task does the exchange itself.
//!
//! Backends are trusted less than the gateway: a response is framed strictly
//! (RFC 9112 section 6.3). Both `Transfer-Encoding` and `Content-Length`, a transfer
//! coding other than `chunked`, differing lengths, a malformed chunk or a head larger
//! than [`MAX_HEAD`] fail the exchange, and the connection is never used again, so
//! one bad response cannot desynchronize the next.

use std::future::{poll_fn, Future};
use std::io::{self, Write};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue, InvalidHeaderName};
use http::{Method, Request, StatusCode, Version};
use http_body::{Body as HttpBody, Frame};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::proxy::{Body, BoxError};

/// The largest response head (or trailer section) a backend may send.
pub const MAX_HEAD: usize = 64 * 1024;
/// The most header fields in a response head, as hyper's default.
const MAX_HEADERS: usize = 100;
/// The longest chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 4096;
/// Room made in the read buffer before each read, to begin with; doubled while reads
/// fill it (a large body), up to [`MAX_READ_SIZE`].
const READ_SIZE: usize = 16 * 1024;
const MAX_READ_SIZE: usize = 128 * 1024;
/// Request body data up to this size is copied into the write buffer, so that a head
/// and a small body go out in one write.
const COALESCE: usize = 16 * 1024;

/// A backend connection and the bytes read from it but not yet used.
pub struct Conn {
    pub io: TcpStream,
    pub buf: BytesMut,
    /// The room to make for the next read.
    read_size: usize,
    /// Reads in a row that used less than half of it.
    short_reads: u8,
    /// Whether the read size grew since the connection last went back to the pool:
    /// the buffer may then hold (or share) a large allocation.
    grown: bool,
    /// Bounds the wait for each response (see [`Deadline`]).
    pub deadline: Deadline,
    /// Kept from one response head to the next. Boxed: a connection moves in and out
    /// of the pool, and is copied whole each time.
    scratch: Box<Scratch>,
}

/// What parsing heads on one connection keeps from one head to the next.
#[derive(Default)]
struct Scratch {
    /// Where each field lies in the head: reused, not zeroed for each head.
    spans: Vec<((u32, u32), (u32, u32))>,
    names: NameCache,
}

/// The field names of the last head parsed on a connection, in order, with the bytes
/// they came as. A backend (or a client) sends the same fields in the same order
/// message after message, and comparing bytes costs a fraction of parsing a name.
#[derive(Default)]
pub(crate) struct NameCache(Vec<(Box<[u8]>, HeaderName)>);

impl NameCache {
    /// Names kept at most, and the longest kept: enough for any usual head, and a
    /// bound on the memory (4 KB) a connection keeps between heads.
    const MAX: usize = 32;
    const MAX_LENGTH: usize = 64;

    /// The name of the `index`th field of a head, from its bytes: as
    /// `HeaderName::from_bytes` makes it.
    pub(crate) fn name(&mut self, index: usize, bytes: &[u8]) -> Result<HeaderName, InvalidHeaderName> {
        if let Some((raw, known)) = self.0.get(index) {
            if **raw == *bytes {
                return Ok(known.clone());
            }
        }
        let name = HeaderName::from_bytes(bytes)?;
        if bytes.len() > Self::MAX_LENGTH {
            // Not kept; nor is a shorter name that this one follows at this place.
            self.0.truncate(index);
            return Ok(name);
        }
        let entry = (Box::from(bytes), name.clone());
        if let Some(slot) = self.0.get_mut(index) {
            *slot = entry;
        } else if index == self.0.len() && index < Self::MAX {
            self.0.push(entry);
        }
        Ok(name)
    }
}

/// A timer kept with a connection for the deadlines of its exchanges, one after the
/// other, each later than the last. A timer made and dropped for every request costs
/// two updates of the runtime's timer wheel; this one stays set and is set again only
/// when it fires before the deadline it is asked about.
#[derive(Default)]
pub struct Deadline {
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Deadline {
    /// Ready once `due` has passed.
    pub fn poll_until(&mut self, due: Instant, cx: &mut Context<'_>) -> Poll<()> {
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        // Set to fire later (an earlier exchange's longer timeout): brought forward.
        // One set to fire earlier is set again when it fires.
        if sleep.deadline() > due {
            sleep.as_mut().reset(due);
        }
        // Outside the task's budget, as tokio's own timeout polls its timer: a busy
        // exchange must not keep its deadline from being seen.
        while std::pin::pin!(tokio::task::unconstrained(sleep.as_mut()))
            .poll(cx)
            .is_ready()
        {
            if Instant::now() >= due {
                return Poll::Ready(());
            }
            sleep.as_mut().reset(due);
        }
        Poll::Pending
    }
}

impl Conn {
    pub fn new(io: TcpStream) -> Self {
        Conn {
            io,
            buf: BytesMut::new(),
            read_size: READ_SIZE,
            short_reads: 0,
            grown: false,
            deadline: Deadline::default(),
            scratch: Box::default(),
        }
    }

    /// Ready for the next exchange with a small buffer: one that grew for a large body
    /// is not kept while the connection idles in the pool.
    pub fn rest(&mut self) {
        if self.grown {
            self.read_size = READ_SIZE;
            self.buf = BytesMut::new();
            self.grown = false;
        }
        self.short_reads = 0;
    }

    /// A second handle on the same socket (a duplicated descriptor): written by one
    /// task while another reads the original.
    pub fn duplicate(&self) -> io::Result<TcpStream> {
        let socket = socket2::SockRef::from(&self.io).try_clone()?;
        TcpStream::from_std(std::net::TcpStream::from(socket))
    }

    /// Whether an idle connection can take a request: the backend has neither closed
    /// it nor sent anything unasked. Reads at most one byte, and only if one is there.
    pub fn is_open(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

/// Why an exchange failed.
#[derive(Debug)]
pub enum ExchangeError {
    /// The connection closed or failed before any of the response arrived. On a
    /// reused connection the backend may have closed it while it sat idle.
    Unanswered(io::Error),
    /// The connection failed after the response began.
    Io(io::Error),
    /// The backend broke HTTP/1.1.
    Protocol(String),
    /// The client's request body failed (it went away, was too large, or paused too
    /// long).
    Body(BoxError),
}

impl std::fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExchangeError::Unanswered(_) => {
                f.write_str("the backend closed the connection without answering")
            }
            ExchangeError::Io(_) => f.write_str("the backend connection failed"),
            ExchangeError::Protocol(what) => write!(f, "the backend broke HTTP/1.1: {what}"),
            ExchangeError::Body(_) => f.write_str("the request body failed"),
        }
    }
}

impl std::error::Error for ExchangeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ExchangeError::Unanswered(e) | ExchangeError::Io(e) => Some(e),
            ExchangeError::Protocol(_) => None,
            ExchangeError::Body(e) => Some(e.as_ref()),
        }
    }
}

fn protocol(what: impl Into<String>) -> ExchangeError {
    ExchangeError::Protocol(what.into())
}

/// How a request body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delimit {
    Length(u64),
    Chunked,
    /// Not yet known: a `GET`, `HEAD`, `OPTIONS` or `TRACE` whose body's length is not
    /// known. Its first frame decides: an end means no body (and no chunked framing to
    /// surprise a backend that expects none on these), data means chunked.
    Undecided,
}

/// A request ready to go: its head encoded, and its body if it has one.
pub struct Outgoing {
    /// The head, up to and including the empty line; for an `Undecided` body, up to
    /// the last field, the framing and the empty line still to come.
    head: Vec<u8>,
    body: Option<(Body, Delimit)>,
    method: Method,
    /// Whether the request may be sent again on another connection when one went
    /// unanswered: it has no body and repeating it is harmless (RFC 9110 9.2.2).
    repeatable: bool,
    /// The last connection went unanswered before any of the request was written or
    /// any of its body taken: it can go on another, whatever it is.
    untouched: bool,
    /// How long the rest of the body may go without moving once the backend has
    /// answered (the route's read timeout); the pool's own when `None`.
    pub stall: Option<Duration>,
    /// How long the backend may take to answer, connecting included (the route's
    /// read timeout); no bound when `None`.
    pub answer_within: Option<Duration>,
}

impl Outgoing {
    /// Encodes `request` (origin-form URI, `Host` set, hop-by-hop headers removed).
    /// A body of known length goes with `Content-Length`, any other with chunked
    /// transfer coding; a `Transfer-Encoding` header in `request` is not sent.
    pub fn new(request: Request<Body>) -> Result<Self, ExchangeError> {
        let (parts, body) = request.into_parts();
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        Self::encode(&parts.method, target, &parts.headers, [], body)
    }

    /// Encodes a request from its parts, which stay the caller's (to send again on
    /// another endpoint, without copying them into a `Request` for each attempt);
    /// `more` are fields kept beside the map, written after its own.
    pub fn encode<'a>(
        method: &Method,
        target: &str,
        headers: &HeaderMap,
        more: impl IntoIterator<Item = (HeaderName, &'a HeaderValue)>,
        body: Body,
    ) -> Result<Self, ExchangeError> {
        let mut head = Vec::with_capacity(512);
        head.extend_from_slice(method.as_str().as_bytes());
        head.push(b' ');
        head.extend_from_slice(target.as_bytes());
        head.extend_from_slice(b" HTTP/1.1\r\n");
        let mut declared = None;
        for (name, value) in headers {
            if name == header::TRANSFER_ENCODING {
                continue;
            }
            // Sent once, as one number, below: `5, 5` or a repeated field is one
            // length, which some backends would refuse to read as one.
            if name == header::CONTENT_LENGTH {
                let length = content_length(value).ok_or_else(|| {
                    ExchangeError::Body("the request's Content-Length is not a length".into())
                })?;
                if declared.replace(length).is_some_and(|d| d != length) {
                    return Err(ExchangeError::Body(
                        "the request has differing Content-Lengths".into(),
                    ));
                }
                continue;
            }
            push_field(&mut head, name, value);
        }
        for (name, value) in more {
            push_field(&mut head, &name, value);
        }
        if let Some(length) = declared {
            push_length(&mut head, length);
        }
        let delimit = match (declared, body.size_hint().exact()) {
            (Some(0), _) | (None, Some(0)) if body.is_end_stream() => None,
            (Some(length), _) => Some(Delimit::Length(length)),
            (None, _) if body.is_end_stream() => None,
            (None, Some(length)) => {
                push_length(&mut head, length);
                Some(Delimit::Length(length))
            }
            (None, None) if method.is_safe() => Some(Delimit::Undecided),
            (None, None) => {
                head.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Some(Delimit::Chunked)
            }
        };
        if delimit != Some(Delimit::Undecided) {
            head.extend_from_slice(b"\r\n");
        }
        Ok(Outgoing {
            head,
            repeatable: delimit.is_none() && method.is_idempotent(),
            untouched: false,
            stall: None,
            answer_within: None,
            body: delimit.map(|d| (body, d)),
            method: method.clone(),
        })
    }

    /// Whether the request may go again on another connection after one went
    /// unanswered.
    pub fn repeatable(&self) -> bool {
        self.repeatable || self.untouched
    }
}

fn push_length(out: &mut Vec<u8>, length: u64) {
    // Writing to a Vec cannot fail.
    let _ = write!(out, "content-length: {length}\r\n");
}

fn push_field(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// A response head: what it says, how its body is delimited, and whether the
/// connection can carry another exchange once the body has been read.
pub struct Head {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Decoder,
    pub reusable: bool,
}

/// Sends `outgoing` on `conn` and reads the response head.
///
/// The request body is sent while the response is awaited, since a backend may answer
/// before it has read all of it. After a 2xx, the rest of the body is still to send,
/// alongside the response body: the [`Upload`] returned. After any other answer (a
/// 413, a redirect, an error) the rest is not sent and the connection is not reused.
pub async fn exchange(
    conn: &mut Conn,
    outgoing: &mut Outgoing,
) -> Result<(Head, Option<Upload>), ExchangeError> {
    let head_request = outgoing.method == Method::HEAD;
    let mut reading = Reading::default();
    outgoing.untouched = false;
    let Some((body, delimit)) = outgoing.body.take() else {
        conn.io
            .write_all(&outgoing.head)
            .await
            .map_err(ExchangeError::Unanswered)?;
        let head = poll_fn(|cx| poll_head(conn, cx, head_request, &mut reading)).await?;
        return Ok((refuse_tunnel(head, &outgoing.method)?, None));
    };
    let mut upload = Upload {
        out: std::mem::take(&mut outgoing.head),
        written: 0,
        body,
        delimit,
        sent: 0,
        ended: false,
        progress: 0,
    };
    // `Some` while uploading; then whether all of the request went out.
    let mut uploaded = None;
    let head = poll_fn(|cx| {
        if uploaded.is_none() {
            match upload.poll(&conn.io, cx) {
                Poll::Ready(Ok(())) => uploaded = Some(true),
                Poll::Ready(Err(ExchangeError::Body(e))) => return Poll::Ready(Err(ExchangeError::Body(e))),
                // The backend may have answered and stopped reading: its answer, if
                // there is one, is the outcome.
                Poll::Ready(Err(_)) => uploaded = Some(false),
                Poll::Pending => {}
            }
        }
        poll_head(conn, cx, head_request, &mut reading)
    })
    .await;
    let head = match head {
        Ok(head) => head,
        // Nothing went (an undecided head waits for the body's first frame, which may
        // take longer than a reused connection stays open): all of it goes back.
        Err(e @ ExchangeError::Unanswered(_)) if upload.progress == 0 => {
            outgoing.head = upload.out;
            outgoing.body = Some((upload.body, upload.delimit));
            outgoing.untouched = true;
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    let mut head = refuse_tunnel(head, &outgoing.method)?;
    let upload = match uploaded {
        Some(complete) => {
            head.reusable &= complete;
            None
        }
        None if head.status.is_success() => Some(upload),
        None => {
            head.reusable = false;
            None
        }
    };
    Ok((head, upload))
}

/// A 2xx answer to `CONNECT` would make the connection a tunnel; the gateway does
/// not relay those.
fn refuse_tunnel(head: Head, method: &Method) -> Result<Head, ExchangeError> {
    if *method == Method::CONNECT && head.status.is_success() {
        return Err(protocol("a tunnel opened for CONNECT"));
    }
    Ok(head)
}

/// The part of a request body still to send, with what has been encoded but not yet
/// written.
pub struct Upload {
    out: Vec<u8>,
    /// How much of `out` has been written.
    written: usize,
    body: Body,
    delimit: Delimit,
    /// Body bytes taken from `body`.
    sent: u64,
    /// Whether all of the request is in `out`.
    ended: bool,
    /// Grows with every byte written and every frame taken: whether the upload moves.
    progress: u64,
}

impl Upload {
    /// Writes what it can; ready once all of the request is written. Frames ready at
    /// once are gathered, up to [`COALESCE`] bytes, into one write.
    pub fn poll(&mut self, io: &TcpStream, cx: &mut Context<'_>) -> Poll<Result<(), ExchangeError>> {
        loop {
            // An undecided head waits for the first frame: sent without its end, it
            // would leave a backend waiting on its header timeout.
            if self.delimit != Delimit::Undecided {
                while self.written < self.out.len() {
                    ready!(io.poll_write_ready(cx)).map_err(ExchangeError::Io)?;
                    match io.try_write(&self.out[self.written..]) {
                        Ok(n) => {
                            self.written += n;
                            self.progress += n as u64;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Poll::Ready(Err(ExchangeError::Io(e))),
                    }
                }
                self.out.clear();
                self.written = 0;
                if self.ended {
                    return Poll::Ready(Ok(()));
                }
            }
            // `out` may already hold an undecided head, of any size: the limit is on
            // what is added to it.
            let start = self.out.len();
            while !self.ended && self.out.len() - start < COALESCE {
                let frame = match Pin::new(&mut self.body).poll_frame(cx) {
                    Poll::Ready(frame) => frame,
                    // Nothing new (an undecided head adds nothing until it is decided).
                    Poll::Pending if self.out.len() == start => return Poll::Pending,
                    Poll::Pending => break,
                };
                self.progress += 1;
                match frame {
                    None => self.end()?,
                    Some(Err(e)) => return Poll::Ready(Err(ExchangeError::Body(e))),
                    Some(Ok(frame)) => self.encode(frame)?,
                }
            }
        }
    }

    /// Grows whenever the upload moves: bytes written, frames taken.
    pub fn progress(&self) -> u64 {
        self.progress
    }

    fn encode(&mut self, frame: Frame<Bytes>) -> Result<(), ExchangeError> {
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                let Ok(trailers) = frame.into_trailers() else {
                    return Ok(());
                };
                match self.delimit {
                    Delimit::Chunked => {
                        self.out.extend_from_slice(b"0\r\n");
                        for (name, value) in &trailers {
                            push_field(&mut self.out, name, value);
                        }
                        self.out.extend_from_slice(b"\r\n");
                        self.ended = true;
                    }
                    Delimit::Undecided => self.end()?,
                    // Trailers cannot follow a body of declared length.
                    Delimit::Length(_) => {}
                }
                return Ok(());
            }
        };
        if data.is_empty() {
            return Ok(());
        }
        self.sent += data.len() as u64;
        if self.delimit == Delimit::Undecided {
            self.out.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
            self.delimit = Delimit::Chunked;
        }
        match self.delimit {
            Delimit::Length(length) => {
                if self.sent > length {
                    return Err(ExchangeError::Body(
                        "the request body is longer than its Content-Length".into(),
                    ));
                }
                self.out.extend_from_slice(&data);
                // All of it: the end of the stream may come later, and is not needed.
                self.ended = self.sent == length;
            }
            _ => {
                // Writing to a Vec cannot fail.
                let _ = write!(self.out, "{:x}\r\n", data.len());
                self.out.extend_from_slice(&data);
                self.out.extend_from_slice(b"\r\n");
            }
        }
        Ok(())
    }

    /// The body ended.
    fn end(&mut self) -> Result<(), ExchangeError> {
        match self.delimit {
            Delimit::Length(length) if self.sent != length => {
                return Err(ExchangeError::Body(
                    "the request body is shorter than its Content-Length".into(),
                ))
            }
            Delimit::Length(_) => {}
            Delimit::Chunked => self.out.extend_from_slice(b"0\r\n\r\n"),
            // No body after all: the head ends here, and goes.
            Delimit::Undecided => {
                self.out.extend_from_slice(b"\r\n");
                self.delimit = Delimit::Length(0);
            }
        }
        self.ended = true;
        Ok(())
    }
}

/// Where reading a response head stands.
struct Reading {
    /// Nothing of a response has arrived yet.
    unanswered: bool,
    /// How much of the buffer is known to hold no end of a head. A head that comes in
    /// many small reads is parsed again only once an empty line has arrived, not after
    /// every read: otherwise a backend trickling a 64 KiB head a byte at a time would
    /// cost 2 billion bytes of parsing.
    checked: usize,
}

impl Default for Reading {
    fn default() -> Self {
        Reading {
            unanswered: true,
            checked: 0,
        }
    }
}

/// Whether `buf` may hold a whole head: on a first look (most heads arrive in one
/// read), or when an empty line (LF or CRLF after an LF) ends after its first
/// `checked` bytes.
pub(crate) fn may_end_head(buf: &[u8], checked: usize) -> bool {
    if checked == 0 {
        return true;
    }
    let from = checked.saturating_sub(2);
    buf[from..].iter().enumerate().any(|(i, &b)| {
        let at = from + i;
        b == b'\n'
            && at >= 1
            && (buf[at - 1] == b'\n' || (at >= 2 && buf[at - 1] == b'\r' && buf[at - 2] == b'\n'))
    })
}

/// Reads until a final response head is complete, skipping interim (1xx) responses
/// other than 101.
fn poll_head(
    conn: &mut Conn,
    cx: &mut Context<'_>,
    head_request: bool,
    reading: &mut Reading,
) -> Poll<Result<Head, ExchangeError>> {
    loop {
        if !conn.buf.is_empty() {
            reading.unanswered = false;
            if may_end_head(&conn.buf, reading.checked) {
                if let Some(head) = parse_head(&mut conn.buf, &mut conn.scratch, head_request)? {
                    reading.checked = 0;
                    if head.status.is_informational() && head.status != StatusCode::SWITCHING_PROTOCOLS {
                        continue;
                    }
                    return Poll::Ready(Ok(head));
                }
            }
            reading.checked = conn.buf.len();
            if conn.buf.len() >= MAX_HEAD {
                return Poll::Ready(Err(protocol(format!(
                    "a response head larger than {MAX_HEAD} bytes"
                ))));
            }
        }
        match ready!(poll_read(conn, cx)) {
            Ok(0) if reading.unanswered => {
                return Poll::Ready(Err(ExchangeError::Unanswered(
                    io::ErrorKind::UnexpectedEof.into(),
                )))
            }
            Ok(0) => {
                return Poll::Ready(Err(protocol(
                    "the connection closed in the middle of the response head",
                )))
            }
            Ok(_) => {}
            Err(e) if reading.unanswered => return Poll::Ready(Err(ExchangeError::Unanswered(e))),
            Err(e) => return Poll::Ready(Err(ExchangeError::Io(e))),
        }
    }
}

/// Where `part`, a slice a parser returned from the head at address `start`, lies in
/// the head's first `length` bytes: start and end offsets (an empty part: nowhere in
/// particular, `(0, 0)`). `None` if it lies outside.
pub(crate) fn span_in(start: usize, length: usize, part: &[u8]) -> Option<(usize, usize)> {
    if part.is_empty() {
        return Some((0, 0));
    }
    let offset = (part.as_ptr() as usize).checked_sub(start)?;
    (offset + part.len() <= length).then_some((offset, offset + part.len()))
}

/// Parses a response head at the start of `buf` and takes it out, or returns `None`
/// if it is not complete yet.
fn parse_head(
    buf: &mut BytesMut,
    scratch: &mut Scratch,
    head_request: bool,
) -> Result<Option<Head>, ExchangeError> {
    let mut fields = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let length = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(protocol(format!("more than {MAX_HEADERS} header fields")))
        }
        Err(e) => return Err(protocol(format!("a malformed response head ({e})"))),
    };
    let status = response
        .code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or_else(|| protocol("a status code outside 100-999"))?;
    let version = match response.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    // Where each field lies in the head, so that values can share its bytes.
    let start = buf.as_ptr() as usize;
    let span = |s: &[u8]| span_in(start, length, s).map(|(from, to)| (from as u32, to as u32));
    let spans = &mut scratch.spans;
    spans.clear();
    for field in response.headers.iter() {
        spans.push(
            span(field.name.as_bytes())
                .zip(span(field.value))
                .ok_or_else(|| protocol("a response head the parser placed outside itself"))?,
        );
    }
    let count = spans.len();
    let head = buf.split_to(length).freeze();
    let mut headers = HeaderMap::with_capacity(count);
    // What framing and persistence need, noted on the way.
    let mut framing = Framing::default();
    for (index, &((name_start, name_end), (value_start, value_end))) in spans.iter().enumerate() {
        let name = &head[name_start as usize..name_end as usize];
        let name = scratch
            .names
            .name(index, name)
            .map_err(|_| protocol(format!("a bad header name {:?}", String::from_utf8_lossy(name))))?;
        let value = HeaderValue::from_maybe_shared(head.slice(value_start as usize..value_end as usize))
            .map_err(|_| protocol(format!("a bad value for header {name}")))?;
        if framing.note(&name, &value)? {
            headers.append(name, value);
        }
    }
    if framing.repeated_length {
        if let Some(length) = framing.length {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        }
    }
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    let body = if switching {
        Decoder::Done
    } else {
        framing.decoder(status, version, head_request)?
    };
    // `close` wins over `keep-alive` in either version (RFC 9112 section 9.3).
    let keep_alive = match version {
        Version::HTTP_11 => !framing.close,
        _ => framing.keep_alive && !framing.close,
    };
    // A bodiless response with a coding that could not be decoded was let through,
    // but a backend that names one may also send a body nobody reads: not reused.
    let reusable =
        keep_alive && !switching && !matches!(body, Decoder::Close) && framing.bad_coding.is_none();
    Ok(Some(Head {
        status,
        version,
        headers,
        body,
        reusable,
    }))
}

/// The fields of a response head that decide how its body is delimited and whether
/// the connection stays open.
#[derive(Default)]
struct Framing {
    chunked: bool,
    transfer_encoding: bool,
    length: Option<u64>,
    /// The length came as a list or in more than one field: relayed as one number.
    repeated_length: bool,
    close: bool,
    keep_alive: bool,
    /// A Transfer-Encoding that cannot be decoded, and why.
    bad_coding: Option<String>,
}

impl Framing {
    /// Notes one field; returns whether it goes into the head's map. Framing and the
    /// connection's persistence are this connection's own and never relayed: a valid
    /// `Transfer-Encoding`, and a `Connection` that says only `keep-alive` or `close`,
    /// are left out here rather than removed later (a `Connection` naming other
    /// fields stays, for those to be removed with it).
    fn note(&mut self, name: &HeaderName, value: &HeaderValue) -> Result<bool, ExchangeError> {
        if *name == header::CONTENT_LENGTH {
            let length = content_length(value).ok_or_else(|| protocol("a bad Content-Length"))?;
            self.repeated_length |= self.length.is_some() || value.as_bytes().contains(&b',');
            if self.length.replace(length).is_some_and(|l| l != length) {
                return Err(protocol("differing Content-Lengths"));
            }
        } else if *name == header::TRANSFER_ENCODING {
            self.transfer_encoding = true;
            // Refused only if there is a body to decode (see `decoder`): a HEAD, 204
            // or 304 response may name codings it does not apply.
            let Ok(text) = value.to_str() else {
                self.bad_coding = Some("a Transfer-Encoding that is not text".into());
                return Ok(false);
            };
            for coding in text.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                // chunked, once, and last: any other coding would reach the client
                // undone, since Transfer-Encoding is not relayed.
                if self.chunked || !coding.eq_ignore_ascii_case("chunked") {
                    self.bad_coding = Some(format!("Transfer-Encoding {text:?}: only chunked is relayed"));
                }
                self.chunked = true;
            }
            return Ok(false);
        } else if *name == header::CONNECTION {
            let mut relay = false;
            for token in value.as_bytes().split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                let close = token.eq_ignore_ascii_case(b"close");
                let keep_alive = token.eq_ignore_ascii_case(b"keep-alive");
                self.close |= close;
                self.keep_alive |= keep_alive;
                relay |= !(close || keep_alive || token.is_empty());
            }
            return Ok(relay);
        }
        Ok(true)
    }

    /// How the body of a response with this status is delimited (RFC 9112 6.3).
    fn decoder(
        &self,
        status: StatusCode,
        version: Version,
        head_request: bool,
    ) -> Result<Decoder, ExchangeError> {
        if head_request
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Ok(Decoder::Done);
        }
        if self.transfer_encoding {
            if let Some(why) = &self.bad_coding {
                return Err(protocol(why.clone()));
            }
            if version == Version::HTTP_10 {
                return Err(protocol("Transfer-Encoding in an HTTP/1.0 response"));
            }
            if self.length.is_some() {
                return Err(protocol("both Transfer-Encoding and Content-Length"));
            }
            if !self.chunked {
                return Err(protocol("an empty Transfer-Encoding"));
            }
            return Ok(Decoder::Chunked(Chunk::Size));
        }
        Ok(match self.length {
            Some(0) => Decoder::Done,
            Some(length) => Decoder::Length(length),
            None => Decoder::Close,
        })
    }
}

/// The length a `Content-Length` value gives (every element alike, if it is a list),
/// or `None` if one is not a number or they differ.
pub(crate) fn content_length(value: &HeaderValue) -> Option<u64> {
    let mut length = None;
    for part in value.as_bytes().split(|&b| b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        if length.replace(n).is_some_and(|previous| previous != n) {
            return None;
        }
    }
    length
}

/// Where a response body stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoder {
    /// This many bytes remain.
    Length(u64),
    /// Chunked transfer coding.
    Chunked(Chunk),
    /// Until the backend closes the connection.
    Close,
    /// The body has ended.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// A chunk-size line is next.
    Size,
    /// This much of a chunk's data remains.
    Data(u64),
    /// The CRLF after a chunk's data is next.
    DataEnd,
    /// The trailer section (after the last chunk) is next; the first `checked` bytes
    /// of the buffer hold no end of it, and are not searched again.
    Trailers { checked: u32 },
}

/// What decoding the buffered bytes gave.
pub enum Step {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
    /// More bytes must be read first.
    More,
}

impl Decoder {
    pub fn is_done(&self) -> bool {
        *self == Decoder::Done
    }

    /// Decodes what `buf` holds, taking the bytes it uses out of it.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Step, ExchangeError> {
        loop {
            match *self {
                Decoder::Done => return Ok(Step::End),
                Decoder::Close if buf.is_empty() => return Ok(Step::More),
                Decoder::Close => return Ok(Step::Data(buf.split().freeze())),
                Decoder::Length(remaining) => {
                    let Some((data, left)) = take(buf, remaining) else {
                        return Ok(Step::More);
                    };
                    *self = if left == 0 {
                        Decoder::Done
                    } else {
                        Decoder::Length(left)
                    };
                    return Ok(Step::Data(data));
                }
                Decoder::Chunked(Chunk::Data(remaining)) => {
                    let Some((data, left)) = take(buf, remaining) else {
                        return Ok(Step::More);
                    };
                    *self = Decoder::Chunked(if left == 0 {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left)
                    });
                    return Ok(Step::Data(data));
                }
                Decoder::Chunked(Chunk::DataEnd) => {
                    if buf.len() < 2 {
                        return Ok(Step::More);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(protocol("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    *self = Decoder::Chunked(Chunk::Size);
                }
                Decoder::Chunked(Chunk::Size) => {
                    let end = buf.iter().position(|&b| b == b'\n');
                    if end.unwrap_or(buf.len()) > MAX_CHUNK_LINE {
                        return Err(protocol("a chunk-size line too long"));
                    }
                    let Some(end) = end else {
                        return Ok(Step::More);
                    };
                    let size = chunk_size(&buf[..end])?;
                    buf.advance(end + 1);
                    *self = Decoder::Chunked(match size {
                        0 => Chunk::Trailers { checked: 0 },
                        n => Chunk::Data(n),
                    });
                }
                Decoder::Chunked(Chunk::Trailers { checked }) => {
                    if buf.len() < 2 {
                        return Ok(Step::More);
                    }
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        *self = Decoder::Done;
                        return Ok(Step::End);
                    }
                    let from = (checked as usize).saturating_sub(3);
                    let Some(end) = buf[from..].windows(4).position(|w| w == b"\r\n\r\n") else {
                        if buf.len() > MAX_HEAD {
                            return Err(protocol(format!("trailers larger than {MAX_HEAD} bytes")));
                        }
                        // At most MAX_HEAD + one read, which fits.
                        let checked = u32::try_from(buf.len()).unwrap_or(u32::MAX);
                        *self = Decoder::Chunked(Chunk::Trailers { checked });
                        return Ok(Step::More);
                    };
                    let section = buf.split_to(from + end + 4);
                    *self = Decoder::Done;
                    return trailers(&section).map(Step::Trailers);
                }
            }
        }
    }

    /// The bytes still expected, when known.
    pub fn remaining(&self) -> Option<u64> {
        match self {
            Decoder::Length(n) => Some(*n),
            Decoder::Done => Some(0),
            _ => None,
        }
    }
}

/// Up to `limit` bytes from the front of `buf`, and how many of `limit` are left;
/// `None` if `buf` is empty.
fn take(buf: &mut BytesMut, limit: u64) -> Option<(Bytes, u64)> {
    if buf.is_empty() {
        return None;
    }
    let n = usize::try_from(limit).map_or(buf.len(), |limit| limit.min(buf.len()));
    Some((buf.split_to(n).freeze(), limit - n as u64))
}

/// The size a chunk-size line gives: hex digits, then optional extensions, then CRLF
/// (`line` is everything before the LF). Leading zeros and blanks before the CRLF are
/// accepted, as hyper and nginx accept them; a bare LF, a size over 16 significant hex
/// digits or a control character in an extension is an error.
fn chunk_size(line: &[u8]) -> Result<u64, ExchangeError> {
    let line = line
        .strip_suffix(b"\r")
        .ok_or_else(|| protocol("a chunk-size line ending in a bare LF"))?;
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let significant = line[..digits].iter().skip_while(|&&b| b == b'0').count();
    if digits == 0 || significant > 16 {
        return Err(protocol("a bad chunk size"));
    }
    let rest = &line[digits..];
    let blanks = rest.iter().take_while(|&&b| b == b' ' || b == b'\t').count();
    let extension = &rest[blanks..];
    if !extension.is_empty() && !extension.starts_with(b";") {
        return Err(protocol("a bad chunk size"));
    }
    if extension.iter().any(|&b| b.is_ascii_control() && b != b'\t') {
        return Err(protocol("a control character in a chunk extension"));
    }
    let size = line[..digits].iter().fold(0u64, |n, &d| {
        let digit = (d as char).to_digit(16).unwrap_or(0);
        (n << 4) | u64::from(digit)
    });
    Ok(size)
}

/// Whether a line of `section` ends in LF alone (httparse accepts that).
fn bare_lf(section: &[u8]) -> bool {
    section
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || section[i - 1] != b'\r'))
}

/// Parses a trailer section (fields, then the empty line).
fn trailers(section: &[u8]) -> Result<HeaderMap, ExchangeError> {
    if bare_lf(section) {
        return Err(protocol("a bare LF in the trailers"));
    }
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::parse_headers(section, &mut fields) {
        Ok(httparse::Status::Complete((_, fields))) => {
            let mut map = HeaderMap::with_capacity(fields.len());
            for field in fields {
                let name = HeaderName::from_bytes(field.name.as_bytes())
                    .map_err(|_| protocol("a bad trailer name"))?;
                let value =
                    HeaderValue::from_bytes(field.value).map_err(|_| protocol("a bad trailer value"))?;
                map.append(name, value);
            }
            Ok(map)
        }
        Ok(httparse::Status::Partial) => Err(protocol("an unfinished trailer section")),
        Err(e) => Err(protocol(format!("malformed trailers ({e})"))),
    }
}

/// Reads what the connection has into its buffer; 0 when the backend has closed it.
/// Through `AsyncRead`, whose short reads tell tokio the socket is drained, so the
/// next read waits for readiness instead of costing a system call.
///
/// The room it makes adapts as hyper's does: doubled after a read that fills it, so a
/// large body takes fewer, larger reads; halved after two reads in a row that use
/// less than half.
pub fn poll_read(conn: &mut Conn, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
    if conn.buf.capacity() - conn.buf.len() < conn.read_size / 4 {
        conn.buf.reserve(conn.read_size);
    }
    let room = conn.buf.capacity() - conn.buf.len();
    let read = std::pin::pin!(tokio::io::AsyncReadExt::read_buf(&mut conn.io, &mut conn.buf));
    let n = ready!(read.poll(cx))?;
    if n >= room.min(conn.read_size) {
        conn.read_size = (conn.read_size * 2).min(MAX_READ_SIZE);
        conn.short_reads = 0;
        conn.grown = true;
    } else if n < conn.read_size / 2 && conn.read_size > READ_SIZE {
        conn.short_reads += 1;
        if conn.short_reads == 2 {
            conn.read_size /= 2;
            conn.short_reads = 0;
        }
    } else {
        conn.short_reads = 0;
    }
    Poll::Ready(Ok(n))
}

/// A backend connection after a 101: what it sent after the head, then the socket.
pub struct Switched {
    early: Bytes,
    io: TcpStream,
}

impl Switched {
    pub fn new(conn: Conn) -> Self {
        Switched {
            early: conn.buf.freeze(),
            io: conn.io,
        }
    }
}

impl AsyncRead for Switched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.early.is_empty() {
            return Pin::new(&mut self.io).poll_read(cx, out);
        }
        let n = self.early.len().min(out.remaining());
        out.put_slice(&self.early[..n]);
        self.early.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Switched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    #[test]
    fn known_names_are_reused_and_others_parsed() {
        let mut names = NameCache::default();
        let first: Vec<_> = ["Content-Type", "X-Custom", "date"]
            .iter()
            .enumerate()
            .map(|(i, n)| names.name(i, n.as_bytes()).unwrap())
            .collect();
        assert_eq!(first, ["content-type", "x-custom", "date"]);
        // The same fields in another case, a new one in the middle, a bad one.
        assert_eq!(names.name(0, b"content-TYPE").unwrap(), header::CONTENT_TYPE);
        assert_eq!(names.name(1, b"x-other").unwrap(), "x-other");
        assert_eq!(names.name(1, b"X-OTHER").unwrap(), "x-other");
        assert!(names.name(2, b"da te").is_err());
        assert!(names.name(2, b"dat\xc5").is_err());
        assert_eq!(names.name(2, b"Date").unwrap(), header::DATE);
        // Past the end of what is kept: parsed each time, still right.
        for i in 3..(NameCache::MAX + 5) {
            let name = format!("x-field-{i}");
            assert_eq!(names.name(i, name.as_bytes()).unwrap(), name.as_str());
        }
        assert_eq!(names.0.len(), NameCache::MAX);
        // A long name is not kept, nor anything after it.
        let long = "x".repeat(NameCache::MAX_LENGTH + 1);
        assert_eq!(names.name(1, long.as_bytes()).unwrap(), long.as_str());
        assert_eq!(names.0.len(), 1);
        assert_eq!(names.name(1, long.as_bytes()).unwrap(), long.as_str());
        assert_eq!(names.0.len(), 1);
    }

    /// A small deterministic generator (xorshift), so a failure can be replayed.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    /// A decoded response's status, body and whether trailers came; or the first error.
    type Decoded = Result<(StatusCode, Vec<u8>, bool), String>;

    /// What a response decodes to when its bytes arrive in pieces, with the number of
    /// bytes left over.
    fn decode_in_pieces(wire: &[u8], rng: &mut Rng) -> (Decoded, usize) {
        let mut buf = BytesMut::new();
        let mut fed = 0;
        let mut feed = |buf: &mut BytesMut, rng: &mut Rng| {
            let n = (1 + rng.below(7)).min(wire.len() - fed);
            buf.extend_from_slice(&wire[fed..fed + n]);
            fed += n;
            n > 0
        };
        let head = loop {
            match parse_head(&mut buf, &mut Scratch::default(), false) {
                // Interim answers are skipped, as `poll_head` skips them.
                Ok(Some(head)) if head.status.is_informational() => {}
                Ok(Some(head)) => break head,
                Ok(None) if feed(&mut buf, rng) => {}
                Ok(None) => return (Err("unfinished head".into()), 0),
                Err(e) => return (Err(e.to_string()), 0),
            }
        };
        let (mut decoder, mut body, mut trailers) = (head.body, Vec::new(), false);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Step::Data(data)) => body.extend_from_slice(&data),
                Ok(Step::Trailers(_)) => trailers = true,
                Ok(Step::End) => break,
                Ok(Step::More) if feed(&mut buf, rng) => {}
                Ok(Step::More) if decoder == Decoder::Close => break,
                Ok(Step::More) => return (Err("unfinished body".into()), 0),
                Err(e) => return (Err(e.to_string()), 0),
            }
        }
        (Ok((head.status, body, trailers)), buf.len() + wire.len() - fed)
    }

    #[test]
    fn framing_and_persistence_fields_stay_with_the_connection() {
        let parse = |wire: &[u8]| {
            let mut buf = BytesMut::from(wire);
            parse_head(&mut buf, &mut Scratch::default(), false)
                .unwrap()
                .unwrap()
        };
        let head = parse(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n",
        );
        assert!(head.reusable);
        assert!(!head.headers.contains_key(header::CONNECTION));
        assert!(!head.headers.contains_key(header::TRANSFER_ENCODING));
        assert_eq!(head.headers["x-a"], "1");
        let head = parse(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
        assert!(!head.reusable);
        assert!(!head.headers.contains_key(header::CONNECTION));
        // A bodiless response may name codings it does not apply.
        let head = parse(b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!(head.status, StatusCode::NOT_MODIFIED);
        assert!(!head.reusable);
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"[..]);
        assert!(parse_head(&mut buf, &mut Scratch::default(), false).is_err());
        // `close` wins over `keep-alive`, in HTTP/1.0 too.
        let head = parse(b"HTTP/1.0 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 0\r\n\r\n");
        assert!(!head.reusable);
        // A Connection that names other fields stays, for them to go with it.
        let head = parse(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nContent-Length: 0\r\n\r\n",
        );
        assert!(head.reusable);
        assert_eq!(head.headers[header::CONNECTION], "keep-alive, X-Hop");
    }

    #[test]
    fn responses_decode_the_same_however_their_bytes_are_split() {
        let cases: &[(&[u8], &[u8], bool)] = &[
            (b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world", b"hello world", false),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n001 \r\n \r\n5\r\nworld\r\n0\r\n\r\n",
                b"hello world",
                false,
            ),
            (
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx-sum: 1\r\ny: 2\r\n\r\n",
                b"abc",
                true,
            ),
            (b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", b"", false),
            (b"HTTP/1.0 200 OK\r\n\r\nto the end", b"to the end", false),
        ];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for (wire, body, trailers) in cases {
            for round in 0..200 {
                let (decoded, left) = decode_in_pieces(wire, &mut rng);
                let (_, got, got_trailers) =
                    decoded.unwrap_or_else(|e| panic!("round {round}: {e}: {wire:?}"));
                assert_eq!(got, *body, "round {round}: {wire:?}");
                assert_eq!(got_trailers, *trailers, "round {round}: {wire:?}");
                assert_eq!(left, 0, "round {round}: bytes left over: {wire:?}");
            }
        }
    }

    #[test]
    fn mangled_responses_fail_cleanly_or_decode_within_their_bytes() {
        let wire: &[u8] =
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n\
            5;a=b\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 1\r\n\r\n";
        let bytes = b"\r\n :;0aZ\x00\x7f-,";
        let mut rng = Rng(42);
        for _ in 0..5000 {
            let mut mangled = wire.to_vec();
            for _ in 0..1 + rng.below(3) {
                match rng.below(3) {
                    0 => {
                        let i = rng.below(mangled.len());
                        mangled[i] = bytes[rng.below(bytes.len())];
                    }
                    1 => {
                        let i = rng.below(mangled.len());
                        mangled.remove(i);
                    }
                    _ => {
                        let i = rng.below(mangled.len());
                        mangled.insert(i, bytes[rng.below(bytes.len())]);
                    }
                }
            }
            // No panic, whatever comes; and the same outcome however the bytes arrive,
            // so that where a read ends can never change how a response is framed.
            let (first, first_left) = decode_in_pieces(&mangled, &mut rng);
            let (second, second_left) = decode_in_pieces(&mangled, &mut rng);
            assert_eq!(first, second, "{:?}", String::from_utf8_lossy(&mangled));
            assert_eq!(first_left, second_left, "{:?}", String::from_utf8_lossy(&mangled));
        }
    }

    #[tokio::test]
    async fn reads_grow_for_a_large_body_and_shrink_at_rest() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let body = vec![b'x'; 4 << 20];
        let sender = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(&body).await.unwrap();
        });
        let mut conn = Conn::new(TcpStream::connect(addr).await.unwrap());
        let (mut total, mut reads) = (0, 0);
        while total < 4 << 20 {
            let n = poll_fn(|cx| poll_read(&mut conn, cx)).await.unwrap();
            assert!(n > 0, "closed after {total} bytes");
            total += n;
            reads += 1;
            // Handed on, as a response body is.
            drop(conn.buf.split().freeze());
        }
        sender.await.unwrap();
        assert!(conn.read_size > READ_SIZE, "never grew: {reads} reads");
        assert!(reads < (4 << 20) / READ_SIZE, "{reads} reads of 16 KiB at most");
        conn.rest();
        assert_eq!(conn.read_size, READ_SIZE);
        assert_eq!(conn.buf.capacity(), 0, "the large buffer is not kept");
    }
}
