//! HTTP/1.1 client connections that give their buffers back while idle.
//!
//! A connection starts in the direct lane (`direct`), which serves the common request
//! (no body, no upgrade) itself; the first request that needs more goes to hyper, with
//! the connection, until hyper is next idle. What follows is about hyper's part.
//!
//! hyper keeps, for the whole life of an HTTP/1 connection, an 8 KiB read buffer, an
//! 8 KiB write buffer and the last request's header map, idle or not. Here a keep-alive
//! connection that has been idle for a while is taken back from hyper between two
//! messages ("parked"): only the socket and its TLS state stay until the client sends
//! again. Then a new hyper connection takes over, fed first with any bytes the old one
//! had already read.
//!
//! A connection is taken back only when hyper is provably between messages: every
//! request body was read to its end, hyper has dropped every response body, nothing it
//! wrote is still waiting for the socket, and hyper, asked to stop, stops at once (it
//! does that only when idle). Anything else (a request body left unread, an upgrade, a
//! write the client is not reading) leaves hyper in charge until the connection ends.

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{header, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::direct;
use crate::proxy::Body;
use crate::server::Shutdown;

/// A client's transport: plain TCP or TLS over TCP.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Ready when the client has sent something (or closed).
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl Transport for TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }
}

impl Transport for Box<tokio_rustls::server::TlsStream<TlsSocket>> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_ref().0 .0.poll_read_ready(cx)
    }
}

/// The TCP socket under a client's TLS. rustls hands its records over as one vectored
/// write, nearly always of a single buffer: that one goes by `send(2)`, whose path
/// through the kernel is shorter than `writev(2)`'s (no iovec to import, no file
/// position lock, no VFS checks).
pub struct TlsSocket(pub TcpStream);

impl AsyncRead for TlsSocket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsSocket {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match bufs {
            [one] => Pin::new(&mut self.0).poll_write(cx, one),
            _ => Pin::new(&mut self.0).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// What hyper is doing with one connection, as far as parking needs to know.
#[derive(Default)]
struct Tracker {
    /// Request bodies not yet read to their end, and responses hyper has not finished.
    open: AtomicUsize,
    /// The request bodies among them: their end may come in another task (whoever
    /// reads them), with nothing to wake the connection.
    bodies: AtomicUsize,
    /// A 101 went out: this connection is never parked. (`upgrade` says as much, but
    /// behind a lock that `parkable` should not take on every poll.)
    switching: AtomicBool,
    /// Requests begun by the current hyper connection.
    requests: AtomicU64,
    /// Whether the current hyper connection has read anything.
    read_any: AtomicBool,
    /// A request body was dropped before its end. hyper then drains it or closes the
    /// connection; which one cannot be seen from outside, so this hyper connection is
    /// never parked.
    unread_body: AtomicBool,
    /// The last write or flush hyper asked for could not complete: its write buffer
    /// holds bytes that must not be lost.
    write_blocked: AtomicBool,
    /// A 101 went out: the socket goes to the tunnel once hyper lets go of it.
    upgrade: Mutex<Option<oneshot::Sender<Upgraded>>>,
}

impl Tracker {
    fn begin(self: &Arc<Self>) -> Open {
        self.open.fetch_add(1, Relaxed);
        Open(self.clone(), false)
    }

    fn begin_body(self: &Arc<Self>) -> Open {
        self.bodies.fetch_add(1, Relaxed);
        self.open.fetch_add(1, Relaxed);
        Open(self.clone(), true)
    }

    /// Whether hyper, asked to stop now, would stop between two messages with nothing
    /// left to write. After a request, hyper is idle once everything is done; before
    /// any, only if it has read nothing (not half a head).
    fn parkable(&self) -> bool {
        (self.requests.load(Relaxed) > 0 || !self.read_any.load(Relaxed))
            && self.open.load(Relaxed) == 0
            && !self.switching.load(Relaxed)
            && !self.unread_body.load(Relaxed)
            && !self.write_blocked.load(Relaxed)
    }
}

/// One request body (`true`) or response hyper still has.
struct Open(Arc<Tracker>, bool);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Relaxed);
        if self.1 {
            self.0.bodies.fetch_sub(1, Relaxed);
        }
    }
}

/// A request body as the handler sees it: hyper's, and on HTTP/1 a note of whether it
/// was read to its end.
pub struct ClientBody {
    /// None: a request without a body, served without hyper.
    inner: Option<Incoming>,
    open: Option<Open>,
}

impl ClientBody {
    /// A body nothing needs to watch (HTTP/2: each stream ends on its own).
    pub fn new(inner: Incoming) -> Self {
        ClientBody {
            inner: Some(inner),
            open: None,
        }
    }

    /// No body at all.
    pub fn empty() -> Self {
        ClientBody {
            inner: None,
            open: None,
        }
    }

    fn tracked(inner: Incoming, tracker: &Arc<Tracker>) -> Self {
        let open = (!inner.is_end_stream()).then(|| tracker.begin_body());
        ClientBody {
            inner: Some(inner),
            open,
        }
    }
}

impl Drop for ClientBody {
    fn drop(&mut self) {
        if let Some(open) = &self.open {
            open.0.unread_body.store(true, Relaxed);
        }
    }
}

impl HttpBody for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let Some(inner) = &mut self.inner else {
            return Poll::Ready(None);
        };
        let frame = ready!(Pin::new(&mut *inner).poll_frame(cx));
        // hyper has read the whole body (and so stands at the next message) before it
        // hands out the last frame; a reader may stop at `is_end_stream` without asking
        // for the end.
        if frame.is_none() || inner.is_end_stream() {
            self.open = None;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or(SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

/// A response body, and the note that hyper still has it.
pub struct Answer {
    inner: Body,
    _open: Option<Open>,
}

impl HttpBody for Answer {
    type Data = Bytes;
    type Error = crate::proxy::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What `serve` runs for each request: the handler, as a hyper service whose future
/// is boxed (so it can move when hyper lets go of the connection).
pub trait Handler:
    hyper::service::Service<Request<ClientBody>, Response = Response<Body>, Error = Infallible, Future: Unpin>
{
}

impl<S> Handler for S where
    S: hyper::service::Service<
        Request<ClientBody>,
        Response = Response<Body>,
        Error = Infallible,
        Future: Unpin,
    >
{
}

/// The handler's service, with every request and response counted.
struct Tracked<S> {
    inner: S,
    tracker: Arc<Tracker>,
}

impl<S> hyper::service::Service<Request<Incoming>> for Tracked<S>
where
    S: Handler,
{
    type Response = Response<Answer>;
    type Error = Infallible;
    type Future = Answering<S::Future>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let tracker = &self.tracker;
        tracker.requests.fetch_add(1, Relaxed);
        let open = tracker.begin();
        let mut req = req.map(|body| ClientBody::tracked(body, tracker));
        if req.headers().contains_key(header::UPGRADE) {
            req.extensions_mut().insert(UpgradeSlot(tracker.clone()));
        }
        Answering {
            inner: self.inner.call(req),
            open: Some(open),
        }
    }
}

struct Answering<F> {
    inner: F,
    open: Option<Open>,
}

impl<F> Future for Answering<F>
where
    F: Future<Output = Result<Response<Body>, Infallible>> + Unpin,
{
    type Output = Result<Response<Answer>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let response = ready!(Pin::new(&mut self.inner).poll(cx));
        let open = self.open.take();
        Poll::Ready(response.map(|r| r.map(|inner| Answer { inner, _open: open })))
    }
}

/// A client connection after its 101 response: hyper has let go of it.
pub type Upgraded = Box<dyn Tunnel>;

/// Anything a tunnel can copy bytes through.
pub trait Tunnel: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Tunnel for T {}

/// Put in every HTTP/1.1 request that names an `Upgrade`; taken by the handler when the
/// backend agrees to switch protocols.
#[derive(Clone)]
pub struct UpgradeSlot(Arc<Tracker>);

impl UpgradeSlot {
    pub fn take<B>(req: &mut Request<B>) -> Option<UpgradeSlot> {
        req.extensions_mut().remove()
    }

    /// The 101 is going out: the connection will come through the receiver.
    pub fn accept(self) -> oneshot::Receiver<Upgraded> {
        let (tx, rx) = oneshot::channel();
        self.0.switching.store(true, Relaxed);
        *self.0.upgrade.lock().unwrap_or_else(PoisonError::into_inner) = Some(tx);
        rx
    }
}

/// The client's transport with bytes read ahead put back in front, and every write
/// that could not complete noted.
pub struct ClientStream<T> {
    io: T,
    unread: Bytes,
    tracker: Option<Arc<Tracker>>,
}

impl<T> ClientStream<T> {
    pub fn new(io: T, unread: Bytes) -> Self {
        ClientStream {
            io,
            unread,
            tracker: None,
        }
    }

    fn note_write<R>(&self, poll: Poll<R>) -> Poll<R> {
        if let Some(t) = &self.tracker {
            t.write_blocked.store(poll.is_pending(), Relaxed);
        }
        poll
    }

    fn note_read(&self) {
        if let Some(t) = &self.tracker {
            t.read_any.store(true, Relaxed);
        }
    }

    /// Whether bytes put back wait in front of the transport.
    pub(crate) fn has_unread(&self) -> bool {
        !self.unread.is_empty()
    }

    /// Ready when a read would find something: bytes put back, or the socket's
    /// readiness (data, or its end).
    pub(crate) fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>
    where
        T: Transport,
    {
        if self.unread.is_empty() {
            self.io.poll_read_ready(cx)
        } else {
            Poll::Ready(Ok(()))
        }
    }

    /// Puts `buf` (read but not used) back in front of what is still unread.
    pub(crate) fn unread(&mut self, buf: Bytes) {
        if buf.is_empty() {
            return;
        }
        if self.unread.is_empty() {
            self.unread = buf;
        } else {
            let mut joined = BytesMut::with_capacity(buf.len() + self.unread.len());
            joined.extend_from_slice(&buf);
            joined.extend_from_slice(&self.unread);
            self.unread = joined.freeze();
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ClientStream<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.unread.is_empty() {
            let before = buf.filled().len();
            let poll = Pin::new(&mut this.io).poll_read(cx, buf);
            if buf.filled().len() > before {
                this.note_read();
            }
            return poll;
        }
        this.note_read();
        let n = this.unread.len().min(buf.remaining());
        buf.put_slice(&this.unread[..n]);
        this.unread.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ClientStream<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write(cx, buf);
        self.note_write(poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.note_write(poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_flush(cx);
        self.note_write(poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// How long a connection stays with hyper while idle, and how long it may then wait.
#[derive(Clone, Copy)]
pub struct Timing {
    /// Idle this long (at least; at most twice this), a keep-alive connection is parked.
    pub park_after: Duration,
    /// How long a client may take to send a request's headers: hyper counts it from the
    /// end of the previous response, so it is also how long a connection may stay idle.
    pub header_timeout: Duration,
}

type Conn<T, S> = http1::Connection<TokioIo<ClientStream<T>>, Tracked<S>>;

enum Event {
    Closed(hyper::Result<()>),
    Park,
    Shutdown,
}

/// Serves HTTP/1.1 on one client connection until it closes, in the direct lane or
/// with hyper, parking it whenever it has been idle for `timing.park_after`. `unread`
/// holds bytes already read from the client (while telling HTTP/1 from HTTP/2).
/// Returns how many times the connection was parked (or hyper let go of it with the
/// next request begun).
#[allow(clippy::too_many_arguments)]
pub async fn serve<T, S>(
    builder: &http1::Builder,
    io: T,
    unread: Bytes,
    mut service: S,
    timing: Timing,
    mut shutdown: Shutdown,
    peer: SocketAddr,
    parked: Gauge,
) -> u32
where
    T: Transport,
    S: Handler + Unpin + Send + 'static,
    S::Future: Send + 'static,
{
    let tracker = Arc::new(Tracker::default());
    let mut stream = ClientStream::new(io, unread);
    stream.tracker = Some(tracker.clone());
    // Whether the client has been served before: a connection shut down before its
    // first request gets the header timeout for that request to arrive.
    let mut served = false;
    let mut parks = 0;
    // When an idle client must have started its next request. Set when a connection
    // that served a request is parked; a wake-up that brings no request (a TLS record
    // with no data, say) does not move it.
    let mut deadline = tokio::time::Instant::now();
    // When the lane's next head must be complete: after a parking, by the parked
    // deadline (a head that wakes a connection does not get a new header timeout);
    // otherwise the lane counts one from now.
    let mut head_by = None;
    loop {
        // The common request is served without hyper; hyper takes the connection
        // when a request needs it, until the connection is next idle.
        // Boxed: a parked connection's task keeps only the state of its parked wait,
        // not room for the lane's.
        let lane = Box::pin(direct::serve(
            &mut stream,
            &service,
            timing,
            &mut shutdown,
            served,
            head_by,
            peer,
        ))
        .await;
        let mut requested = lane.requests > 0;
        match lane.outcome {
            direct::Outcome::Done => return parks,
            direct::Outcome::Park => {}
            direct::Outcome::Handoff => {
                served |= requested;
                tracker.requests.store(0, Relaxed);
                tracker.read_any.store(false, Relaxed);
                tracker.write_blocked.store(false, Relaxed);
                let tracked = Tracked {
                    inner: service,
                    tracker: tracker.clone(),
                };
                // Boxed: the task keeps only a pointer while the connection is parked.
                let mut conn = start(builder, stream, tracked);
                if let Some(result) = run(&mut conn, &tracker, timing, &mut shutdown, served).await {
                    close(conn, &tracker, result, peer).await;
                    return parks;
                }
                requested |= tracker.requests.load(Relaxed) > 0;
                (stream, service) = take_back(*conn);
            }
        }
        parks += 1;
        if requested || parks == 1 {
            deadline = tokio::time::Instant::now() + timing.header_timeout.saturating_sub(timing.park_after);
        }
        served |= requested;
        if !stream.unread.is_empty() {
            // The next request has begun, most likely a park time ago (hyper lets go of
            // a connection idle that long): its head is due a header timeout after
            // that, and in no less than a park time from now.
            let left = timing
                .header_timeout
                .saturating_sub(timing.park_after)
                .max(timing.park_after);
            head_by = Some(tokio::time::Instant::now() + left);
            continue;
        }
        parked.inc();
        let woke = tokio::select! {
            ready = poll_fn(|cx| stream.io.poll_read_ready(cx)) => ready.is_ok(),
            () = tokio::time::sleep_until(deadline) => false,
            () = shutdown.wait() => false,
        };
        parked.dec();
        if !woke {
            // Idle past the keep-alive time, or shutting down: close as hyper would.
            let _ = tokio::time::timeout(timing.header_timeout, stream.io.shutdown()).await;
            return parks;
        }
        head_by = Some(deadline);
    }
}

/// A hyper connection, made on the heap and not in the caller's async state.
#[inline(never)]
fn start<T, S>(builder: &http1::Builder, stream: ClientStream<T>, service: Tracked<S>) -> Box<Conn<T, S>>
where
    T: Transport,
    S: Handler,
{
    Box::new(builder.serve_connection(TokioIo::new(stream), service))
}

/// The transport and the service back from a hyper connection that has stopped, with
/// the bytes it read and did not use put back in front.
fn take_back<T, S>(conn: Conn<T, S>) -> (ClientStream<T>, S)
where
    T: Transport,
    S: Handler,
{
    let parts = conn.into_parts();
    let mut stream = parts.io.into_inner();
    stream.unread(parts.read_buf);
    (stream, parts.service.inner)
}

/// Runs hyper until the connection ends (`Some`) or is parked (`None`: hyper stopped
/// at a message boundary with everything flushed, and the parts may be taken).
async fn run<T, S>(
    conn: &mut Conn<T, S>,
    tracker: &Tracker,
    timing: Timing,
    shutdown: &mut Shutdown,
    served: bool,
) -> Option<hyper::Result<()>>
where
    T: Transport,
    S: Handler + Unpin,
{
    let timer = tokio::time::sleep(timing.park_after);
    tokio::pin!(timer);
    // The number of requests when the park timer was last set; it is set again, not
    // on every request, but when it fires and requests came since or hyper is busy.
    let mut armed: Option<u64> = None;
    let mut may_park = true;
    let stop = shutdown.wait();
    tokio::pin!(stop);
    let mut stopping = false;
    loop {
        let event = poll_fn(|cx| {
            if let Poll::Ready(result) = conn.poll_without_shutdown(cx) {
                return Poll::Ready(Event::Closed(result));
            }
            let requests = tracker.requests.load(Relaxed);
            // The timer also runs while a request body is open: its end (read by the
            // backend's connection, after the response) may come in another task, with
            // nothing to wake this one. Whatever else keeps a connection busy ends in
            // this task's own polls.
            if may_park && (tracker.parkable() || tracker.bodies.load(Relaxed) > 0) {
                if armed.is_none() {
                    timer
                        .as_mut()
                        .reset(tokio::time::Instant::now() + timing.park_after);
                    armed = Some(requests);
                }
                while timer.as_mut().poll(cx).is_ready() {
                    if armed == Some(requests) && tracker.parkable() {
                        return Poll::Ready(Event::Park);
                    }
                    timer
                        .as_mut()
                        .reset(tokio::time::Instant::now() + timing.park_after);
                    armed = Some(requests);
                }
            }
            if !stopping && stop.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Shutdown);
            }
            Poll::Pending
        })
        .await;
        match event {
            Event::Closed(result) => return Some(result),
            Event::Park => {
                Pin::new(&mut *conn).graceful_shutdown();
                // hyper stops at once only when idle between messages; otherwise it
                // finishes what it is doing and the connection closes as usual.
                match poll_fn(|cx| Poll::Ready(conn.poll_without_shutdown(cx))).await {
                    Poll::Ready(Ok(())) if !tracker.write_blocked.load(Relaxed) => return None,
                    Poll::Ready(result) => return Some(result),
                    Poll::Pending => may_park = false,
                }
            }
            Event::Shutdown => {
                stopping = true;
                may_park = false;
                // A connection accepted just now has its first request on the way;
                // closing it as idle would fail that request, so it gets until the
                // header timeout to arrive (bounded by the shutdown grace like
                // everything else).
                if !served && tracker.requests.load(Relaxed) == 0 {
                    let arrived = tokio::time::timeout(
                        timing.header_timeout,
                        poll_fn(|cx| {
                            let polled = conn.poll_without_shutdown(cx).map(Some);
                            // Checked after polling: the request may have begun (and
                            // ended) in that very poll, with nothing left to wake us.
                            if polled.is_pending() && tracker.requests.load(Relaxed) > 0 {
                                return Poll::Ready(None);
                            }
                            polled
                        }),
                    )
                    .await;
                    if let Ok(Some(result)) = arrived {
                        return Some(result);
                    }
                }
                // Finish the request in flight, then close.
                Pin::new(&mut *conn).graceful_shutdown();
            }
        }
    }
}

/// The connection has ended: hand it to its tunnel after a 101, or close it.
async fn close<T, S>(
    mut conn: Box<Conn<T, S>>,
    tracker: &Tracker,
    result: hyper::Result<()>,
    peer: SocketAddr,
) where
    T: Transport,
    S: Handler + Unpin,
{
    // Taken on every path: dropping it tells a waiting tunnel that nothing is coming.
    let upgrade = tracker
        .upgrade
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
        return;
    }
    let Some(tunnel) = upgrade else {
        // "Done" is not "flushed": the end of a response may still be in hyper's write
        // buffer. Polled as a future, hyper flushes it, then shuts the transport down.
        if let Err(e) = poll_fn(|cx| Pin::new(&mut *conn).poll(cx)).await {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
        return;
    };
    // hyper stops after a 101 even if the socket took only part of it; what it still
    // held would be lost, and the client would read the tunnel as the rest of a head.
    if tracker.write_blocked.load(Relaxed) {
        tracing::debug!(%peer, "the client did not take the whole 101 response; connection closed");
        return;
    }
    let (mut stream, _) = take_back(*conn);
    stream.tracker = None;
    let _ = tunnel.send(Box::new(stream));
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;
    use http_body_util::BodyExt;
    use hyper::service::service_fn;
    use std::sync::Mutex as StdMutex;
    use std::time::Instant;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    async fn answer(
        mut req: Request<ClientBody>,
        seen: Arc<StdMutex<Vec<String>>>,
    ) -> Result<Response<Body>, Infallible> {
        let path = req.uri().path().to_owned();
        seen.lock().unwrap().push(path.clone());
        Ok(match path.as_str() {
            "/big" => Response::new(crate::proxy::full(vec![b'x'; 4 << 20])),
            "/body-later" => {
                // The body is read to its end in another task, after the response.
                let body = req.into_body();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let _ = body.collect().await;
                });
                Response::new(crate::proxy::full("late"))
            }
            "/stream" => {
                // Two pieces with a pause between: no length known.
                let pieces = futures_util::stream::unfold(0, |i| async move {
                    match i {
                        0 => Some((Ok(Frame::data(Bytes::from_static(b"one"))), 1)),
                        1 => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            Some((Ok(Frame::data(Bytes::from_static(b"two"))), 2))
                        }
                        _ => None,
                    }
                });
                Response::new(http_body_util::StreamBody::new(pieces).boxed_unsync())
            }
            "/broken" => {
                let pieces = futures_util::stream::iter([
                    Ok(Frame::data(Bytes::from_static(b"part"))),
                    Err(crate::proxy::BoxError::from("the backend went away")),
                ]);
                Response::new(http_body_util::StreamBody::new(pieces).boxed_unsync())
            }
            "/slow" => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                Response::new(crate::proxy::full(path))
            }
            "/switch" => {
                let Some(slot) = UpgradeSlot::take(&mut req) else {
                    return Ok(Response::new(crate::proxy::full("no slot")));
                };
                let tunnel = slot.accept();
                tokio::spawn(async move {
                    let Ok(mut io) = tunnel.await else { return };
                    let mut buf = [0u8; 64];
                    while let Ok(n) = io.read(&mut buf).await {
                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
                let mut r = Response::new(crate::proxy::empty());
                *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                r.headers_mut()
                    .insert(header::CONNECTION, http::HeaderValue::from_static("upgrade"));
                r.headers_mut()
                    .insert(header::UPGRADE, http::HeaderValue::from_static("echo"));
                r
            }
            _ => Response::new(crate::proxy::full(path)),
        })
    }

    struct Server {
        addr: SocketAddr,
        parked: Gauge,
        paths: Arc<StdMutex<Vec<String>>>,
        /// How often each closed connection was parked.
        parks: Arc<StdMutex<Vec<u32>>>,
        stop: crate::server::Stop,
    }

    impl Server {
        async fn parked_now(&self, want: i64) {
            let deadline = Instant::now() + Duration::from_secs(3);
            while self.parked.get() != want {
                assert!(
                    Instant::now() < deadline,
                    "parked connections: {} (wanted {want})",
                    self.parked.get()
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }

        /// How often the connections closed so far were parked, once `n` have closed.
        async fn parks_once_closed(&self, n: usize) -> Vec<u32> {
            let deadline = Instant::now() + Duration::from_secs(2);
            while self.parks.lock().unwrap().len() < n {
                assert!(Instant::now() < deadline, "the connection did not end");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            self.parks.lock().unwrap().clone()
        }

        fn paths(&self) -> Vec<String> {
            self.paths.lock().unwrap().clone()
        }
    }

    /// A server whose handler answers `/big` with 4 MiB, `/switch` with a 101 and an
    /// echo tunnel, and anything else with its path, without reading request bodies.
    async fn server(park_after_ms: u64, header_timeout_ms: u64) -> Server {
        server_with(park_after_ms, header_timeout_ms, false).await
    }

    /// A transport that drops NUL bytes, as TLS drops records that carry no data: the
    /// socket turns readable, and nothing reaches hyper.
    struct Noisy(TcpStream);

    impl AsyncRead for Noisy {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            loop {
                let mut raw = [0u8; 512];
                let mut got = ReadBuf::new(&mut raw);
                ready!(Pin::new(&mut self.0).poll_read(cx, &mut got))?;
                if got.filled().is_empty() {
                    return Poll::Ready(Ok(()));
                }
                let data: Vec<u8> = got.filled().iter().copied().filter(|&b| b != 0).collect();
                if !data.is_empty() {
                    buf.put_slice(&data);
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }

    impl AsyncWrite for Noisy {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    impl Transport for Noisy {
        fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.0.poll_read_ready(cx)
        }
    }

    async fn server_with(park_after_ms: u64, header_timeout_ms: u64, noisy: bool) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let parked = Gauge::default();
        let paths = Arc::new(StdMutex::new(Vec::new()));
        let (stop, shutdown) = Shutdown::new();
        let timing = Timing {
            park_after: Duration::from_millis(park_after_ms),
            header_timeout: Duration::from_millis(header_timeout_ms),
        };
        let parks = Arc::new(StdMutex::new(Vec::new()));
        let (gauge, seen, counts) = (parked.clone(), paths.clone(), parks.clone());
        tokio::spawn(async move {
            let builder = {
                let mut b = http1::Builder::new();
                b.timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(timing.header_timeout);
                Arc::new(b)
            };
            loop {
                let (stream, peer) = listener.accept().await.unwrap();
                let seen = seen.clone();
                let service = service_fn(move |req| Box::pin(answer(req, seen.clone())));
                let (builder, shutdown, gauge, counts) =
                    (builder.clone(), shutdown.clone(), gauge.clone(), counts.clone());
                tokio::spawn(async move {
                    // The same call on two transport types.
                    macro_rules! serve_on {
                        ($io:expr) => {
                            serve(
                                &builder,
                                $io,
                                Bytes::new(),
                                service,
                                timing,
                                shutdown,
                                peer,
                                gauge,
                            )
                            .await
                        };
                    }
                    let n = if noisy {
                        serve_on!(Noisy(stream))
                    } else {
                        serve_on!(stream)
                    };
                    counts.lock().unwrap().push(n);
                });
            }
        });
        Server {
            addr,
            parked,
            paths,
            parks,
            stop,
        }
    }

    /// Reads a response head, byte by byte so that nothing after it is taken.
    async fn read_head(s: &mut TcpStream) -> String {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            assert_eq!(
                s.read(&mut b).await.unwrap(),
                1,
                "closed after {:?}",
                String::from_utf8_lossy(&head)
            );
            head.push(b[0]);
        }
        String::from_utf8(head).unwrap()
    }

    /// Reads one response with a Content-Length body; returns its head and body.
    async fn response(s: &mut TcpStream) -> (String, Vec<u8>) {
        let head = read_head(s).await;
        let len = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(|v| v.parse::<usize>().unwrap())
            })
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).await.unwrap();
        (head, body)
    }

    async fn get(s: &mut TcpStream, path: &str) -> (String, Vec<u8>) {
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .await
            .unwrap();
        response(s).await
    }

    /// Whether the server closes the connection within `within`.
    async fn closes(s: &mut TcpStream, within: Duration) -> bool {
        let mut b = [0u8; 256];
        loop {
            match tokio::time::timeout(within, s.read(&mut b)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }

    #[tokio::test]
    async fn an_idle_connection_is_parked_and_serves_again() {
        let srv = server(50, 5000).await;
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        assert_eq!(get(&mut s, "/one").await.1, b"/one");
        srv.parked_now(1).await;
        let (head, body) = get(&mut s, "/two").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, b"/two");
        // And once more, through a second parking.
        srv.parked_now(1).await;
        assert_eq!(get(&mut s, "/three").await.1, b"/three");
        assert_eq!(srv.paths(), ["/one", "/two", "/three"]);
        drop(s);
        assert_eq!(srv.parks_once_closed(1).await, [2]);
    }

    #[tokio::test]
    async fn a_head_split_across_a_parking_is_read_whole() {
        let srv = server(50, 5000).await;
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        // Half of the next head arrives before the connection is parked: hyper holds
        // it when it lets go, and the new hyper connection starts with it.
        get(&mut s, "/one").await;
        s.write_all(b"GET /two HTTP/1.1\r\nHo").await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.write_all(b"st: t\r\n\r\n").await.unwrap();
        assert_eq!(response(&mut s).await.1, b"/two");
        // Half a head wakes a parked connection, which then waits for the rest.
        srv.parked_now(1).await;
        s.write_all(b"GET /three HTTP/1.1\r\nHo").await.unwrap();
        srv.parked_now(0).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.write_all(b"st: t\r\n\r\nGET /four HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(response(&mut s).await.1, b"/three");
        assert_eq!(response(&mut s).await.1, b"/four");
        assert_eq!(srv.paths(), ["/one", "/two", "/three", "/four"]);
        drop(s);
        // Idle after /two (half a head is held, not parked).
        assert_eq!(srv.parks_once_closed(1).await, [1]);
    }

    #[tokio::test]
    async fn a_slow_head_is_cut_off_at_the_header_timeout() {
        // Parking restarts hyper's clock only once per head: a client that trickles
        // one is still closed about one header timeout after it starts.
        let srv = server(50, 600).await;
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        let started = Instant::now();
        s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let mut closed = false;
        for i in 0..40 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if s.write_all(format!("X-{i}: v\r\n").as_bytes()).await.is_err() {
                closed = true;
                break;
            }
            if closes(&mut s, Duration::from_millis(1)).await {
                closed = true;
                break;
            }
        }
        assert!(closed, "still open after 4 s");
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "{:?}",
            started.elapsed()
        );
        assert!(srv.paths().is_empty());
    }

    #[tokio::test]
    async fn a_request_body_read_to_its_end_after_the_response_lets_the_connection_park() {
        let srv = server(100, 5000).await;
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        // Chunked: the end of the body is the sender's drop, which hyper does in its own
        // task; the reader sees it later, in another task.
        s.write_all(
            b"POST /body-later HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        )
        .await
        .unwrap();
        let (head, body) = response(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, b"late");
        // Nothing comes from the client after the response: the end of the body, in
        // the handler's task 300 ms later, is all that changes.
        srv.parked_now(1).await;
        assert_eq!(get(&mut s, "/next").await.1, b"/next");
        assert_eq!(srv.paths(), ["/body-later", "/next"]);
    }

    #[tokio::test]
    async fn a_request_body_left_unread_is_never_taken_for_a_request() {
        let srv = server(50, 5000).await;
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        let smuggled = b"GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n";
        s.write_all(
            format!(
                "POST /post HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
                10 + smuggled.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        s.write_all(b"0123456789").await.unwrap();
        let (head, _) = response(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        // The rest of the body, after the time it takes to park an idle connection.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = s.write_all(smuggled).await;
        closes(&mut s, Duration::from_secs(2)).await;
        assert_eq!(srv.paths(), ["/post"]);
        assert_eq!(srv.parked.get(), 0);
    }

    #[tokio::test]
    async fn a_response_the_client_has_not_read_is_not_cut() {
        let srv = server(50, 5000).await;
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        s.write_all(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        // 4 MiB does not fit in the socket buffers: hyper waits to write the rest, and
        // the connection, though nothing is in flight, is not parked.
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(srv.parked.get(), 0);
        let (_, body) = response(&mut s).await;
        assert_eq!(body.len(), 4 << 20);
        assert!(body.iter().all(|&b| b == b'x'));
        srv.parked_now(1).await;
        assert_eq!(get(&mut s, "/after").await.1, b"/after");
    }

    #[tokio::test]
    async fn a_switched_connection_goes_to_its_tunnel_with_the_bytes_sent_early() {
        let srv = server(50, 5000).await;
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        get(&mut s, "/first").await;
        srv.parked_now(1).await;
        s.write_all(b"GET /switch HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\nearly ")
            .await
            .unwrap();
        let (head, _) = response(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        s.write_all(b"late").await.unwrap();
        let mut got = Vec::new();
        while got.len() < b"early late".len() {
            let mut b = [0u8; 64];
            let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut b))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&b[..n]);
        }
        assert_eq!(got, b"early late");
    }

    #[tokio::test]
    async fn a_parked_connection_closes_at_the_keep_alive_time_and_at_shutdown() {
        let srv = server(50, 400).await;
        let mut idle = TcpStream::connect(srv.addr).await.unwrap();
        get(&mut idle, "/").await;
        srv.parked_now(1).await;
        assert!(
            closes(&mut idle, Duration::from_secs(2)).await,
            "open past the header timeout"
        );
        srv.parked_now(0).await;

        let srv = server(50, 5000).await;
        let mut idle = TcpStream::connect(srv.addr).await.unwrap();
        get(&mut idle, "/").await;
        srv.parked_now(1).await;
        srv.stop.begin();
        assert!(
            closes(&mut idle, Duration::from_secs(1)).await,
            "open after shutdown"
        );
    }

    #[tokio::test]
    async fn wake_ups_without_a_request_do_not_extend_the_keep_alive_time() {
        // Every 100 ms a byte the transport swallows (TLS does that to records without
        // data) wakes the parked connection; it still closes at the keep-alive time.
        let srv = server_with(50, 600, true).await;
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        get(&mut s, "/").await;
        srv.parked_now(1).await;
        let parked_at = Instant::now();
        let mut closed = false;
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if s.write_all(b"\0").await.is_err() || closes(&mut s, Duration::from_millis(1)).await {
                closed = true;
                break;
            }
        }
        assert!(closed, "still open after 4 s of noise");
        assert!(
            parked_at.elapsed() < Duration::from_millis(1200),
            "{:?}",
            parked_at.elapsed()
        );
    }

    #[tokio::test]
    async fn a_closing_response_is_flushed_whole() {
        // Shutdown while the socket has not taken the end of a `Connection: close`
        // response: hyper is done with the exchange, but the end must still go out.
        let srv = server(50, 5000).await;
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        s.write_all(b"GET /big HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        srv.stop.begin();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (head, body) = response(&mut s).await;
        assert!(head.to_ascii_lowercase().contains("connection: close"), "{head}");
        assert_eq!(body.len(), 4 << 20);
        assert!(closes(&mut s, Duration::from_secs(2)).await);
    }

    #[tokio::test]
    async fn a_connection_that_has_sent_nothing_is_parked() {
        let srv = server(50, 5000).await;
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        srv.parked_now(1).await;
        assert_eq!(get(&mut s, "/late").await.1, b"/late");
    }

    #[tokio::test]
    async fn a_busy_connection_is_not_parked() {
        let srv = server(100, 5000).await;
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        let until = Instant::now() + Duration::from_millis(500);
        while Instant::now() < until {
            get(&mut s, "/").await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(s);
        assert_eq!(srv.parks_once_closed(1).await, [0]);
    }

    #[tokio::test]
    async fn a_request_body_of_length_zero_does_not_keep_a_connection_unparked() {
        // The handler's view of a body: it ends where hyper's does.
        let srv = server(50, 5000).await;
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        s.write_all(b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(response(&mut s).await.1, b"/a");
        // A body of zero length is not an unread body: the connection parks.
        srv.parked_now(1).await;
    }

    /// Reads until the server closes; returns everything it sent.
    async fn until_closed(s: &mut TcpStream) -> String {
        let mut all = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut all)).await;
        assert!(
            read.is_ok(),
            "still open after {:?}",
            String::from_utf8_lossy(&all)
        );
        String::from_utf8_lossy(&all).into_owned()
    }

    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order() {
        let srv = server(1000, 5000).await;
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        s.write_all(b"GET /p1 HTTP/1.1\r\nHost: t\r\n\r\nGET /p2 HTTP/1.1\r\nHost: t\r\n\r\nGET /p3 HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        for want in ["/p1", "/p2", "/p3"] {
            let (head, body) = response(&mut s).await;
            assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
            assert!(head.contains("\r\ndate: "), "{head}");
            assert_eq!(body, want.as_bytes());
        }
    }

    #[tokio::test]
    async fn many_pipelined_requests_in_one_write_are_answered() {
        // Far more than the lane's 8 KiB head limit in one write: the limit is on one
        // head, not on what is buffered behind it.
        let srv = server(1000, 5000).await;
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        let mut burst = String::new();
        for i in 0..200 {
            burst.push_str(&format!(
                "GET /{i:03} HTTP/1.1\r\nHost: t\r\nX-Pad: {}\r\n\r\n",
                "p".repeat(100)
            ));
        }
        assert!(burst.len() > 3 * direct::MAX_HEAD);
        s.write_all(burst.as_bytes()).await.unwrap();
        for i in 0..200 {
            assert_eq!(response(&mut s).await.1, format!("/{i:03}").as_bytes());
        }
        assert_eq!(srv.paths().len(), 200);
    }

    #[tokio::test]
    async fn requests_the_direct_lane_does_not_serve_go_to_hyper_on_the_same_connection() {
        let srv = server(50, 5000).await;
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        assert_eq!(get(&mut s, "/a").await.1, b"/a");
        // A head over 8 KiB: hyper's.
        let long = "v".repeat(9000);
        s.write_all(format!("GET /b HTTP/1.1\r\nHost: t\r\nX-Long: {long}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        assert_eq!(response(&mut s).await.1, b"/b");
        // Back to the lane once hyper lets go of the idle connection.
        srv.parked_now(1).await;
        assert_eq!(get(&mut s, "/c").await.1, b"/c");
        // A malformed head gets hyper's answer.
        s.write_all(b"GET /d HTTP/1.1\r\nHost: t\r\nbad header\r\n\r\n")
            .await
            .unwrap();
        let answer = until_closed(&mut s).await;
        assert!(answer.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{answer}");
        assert_eq!(srv.parks_once_closed(1).await, [1]);
        // A body, an expectation: hyper's too (this handler reads no body, so hyper
        // keeps the connection to the end).
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        s.write_all(b"POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello")
            .await
            .unwrap();
        assert_eq!(response(&mut s).await.1, b"/e");
        s.write_all(b"PUT /f HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\nok")
            .await
            .unwrap();
        assert_eq!(response(&mut s).await.1, b"/f");
        assert_eq!(srv.paths(), ["/a", "/b", "/c", "/e", "/f"]);
    }

    #[tokio::test]
    async fn a_body_of_unknown_length_is_chunked_and_a_failed_one_is_cut_off() {
        let srv = server(1000, 5000).await;
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        s.write_all(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        while !got.ends_with(b"0\r\n\r\n") {
            let mut b = [0u8; 256];
            let n = s.read(&mut b).await.unwrap();
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&b[..n]);
        }
        let got = String::from_utf8(got).unwrap();
        let (head, body) = got.split_once("\r\n\r\n").unwrap();
        assert!(head.contains("\r\ntransfer-encoding: chunked"), "{head}");
        assert!(!head.contains("content-length"), "{head}");
        assert_eq!(body, "3\r\none\r\n3\r\ntwo\r\n0\r\n\r\n");
        // The connection goes on; a body that fails ends it with no last chunk, so the
        // client cannot take what came for the whole.
        s.write_all(b"GET /broken HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let answer = until_closed(&mut s).await;
        assert!(answer.contains("\r\n\r\n4\r\npart\r\n"), "{answer}");
        assert!(!answer.contains("0\r\n\r\n"), "{answer}");
    }

    #[tokio::test]
    async fn head_and_connection_close_are_honoured() {
        let srv = server(1000, 5000).await;
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        // The length the body would have, and no body: the next response follows at
        // once.
        s.write_all(b"HEAD /xyz HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let head = read_head(&mut s).await;
        assert!(head.contains("\r\ncontent-length: 4\r\n"), "{head}");
        s.write_all(b"GET /last HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let answer = until_closed(&mut s).await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
        assert!(answer.ends_with("\r\n\r\n/last"), "{answer}");
    }

    #[tokio::test]
    async fn at_shutdown_the_response_in_flight_is_the_last() {
        let srv = server(1000, 5000).await;
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        assert_eq!(get(&mut s, "/first").await.1, b"/first");
        s.write_all(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        srv.stop.begin();
        let answer = until_closed(&mut s).await;
        assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
        assert!(answer.ends_with("\r\n\r\n/slow"), "{answer}");
    }

    #[tokio::test]
    async fn a_client_that_leaves_cancels_its_request() {
        let srv = server(1000, 5000).await;
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        s.write_all(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(s);
        // Closed at once, not after the handler's 200 ms.
        let started = Instant::now();
        srv.parks_once_closed(1).await;
        assert!(
            started.elapsed() < Duration::from_millis(120),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_head_trickled_a_byte_at_a_time_is_read_whole() {
        let srv = server(1000, 5000).await;
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        for head in [
            &b"GET /crlf HTTP/1.1\r\nHost: t\r\n\r\n"[..],
            &b"GET /lf HTTP/1.1\nHost: t\n\n"[..],
        ] {
            for b in head {
                s.write_all(&[*b]).await.unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            response(&mut s).await;
        }
        assert_eq!(srv.paths(), ["/crlf", "/lf"]);
    }

    #[tokio::test]
    async fn the_next_head_is_due_a_header_timeout_after_the_response() {
        let srv = server(1000, 600).await;
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        get(&mut s, "/one").await;
        let answered = Instant::now();
        // Idle for most of the header timeout, then a head begun and trickled: it
        // does not get a header timeout of its own.
        tokio::time::sleep(Duration::from_millis(400)).await;
        s.write_all(b"GET /two HTTP/1.1\r\n").await.unwrap();
        let mut closed = false;
        for i in 0..40 {
            tokio::time::sleep(Duration::from_millis(25)).await;
            if s.write_all(format!("X-{i}: v\r\n").as_bytes()).await.is_err()
                || closes(&mut s, Duration::from_millis(1)).await
            {
                closed = true;
                break;
            }
        }
        assert!(closed, "still open");
        let after = answered.elapsed();
        assert!(after < Duration::from_millis(850), "{after:?}");
        assert_eq!(srv.paths(), ["/one"]);
    }

    #[tokio::test]
    async fn a_client_that_sends_its_requests_and_closes_its_side_gets_the_first_answer() {
        let srv = server(1000, 5000).await;
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        s.write_all(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\nGET /b HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        s.shutdown().await.unwrap();
        let answer = until_closed(&mut s).await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.contains("\r\n\r\n/slow"), "{answer}");
    }
}
