//! Keep-alive HTTP/1.1 connections to backend endpoints, for the common case: plain
//! HTTP to a Service's endpoint addresses.
//!
//! hyper-util's general client serves every other case (TLS, HTTP/2, names to
//! resolve). For this one it does more than needed on every request: an absolute URI
//! to parse for the pool key, a task per connection, channels between that task and
//! the request's, and its pool's bookkeeping. Here the key is the endpoint's address,
//! the request's own task does the exchange ([`crate::exchange`]), and a connection
//! goes back to the pool when the response body ends.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::exchange::{self, Conn, Decoder, ExchangeError, Outgoing, Step, Upload};
use crate::proxy::{Body, BoxError};

/// Idle connections by endpoint. Looked up twice per request, with a fast hash: the
/// keys are endpoint addresses from the configuration, not chosen by clients.
type IdleMap = HashMap<SocketAddr, Vec<Idle>, foldhash::fast::RandomState>;
/// Why a request sent through the pool got no response.
#[derive(Debug)]
pub enum SendError {
    /// No connection to the endpoint could be made (refused, unreachable, timed out).
    Connect(std::io::Error),
    /// The connection failed, the backend broke the protocol, or the request body
    /// failed, before the response head arrived.
    Exchange(ExchangeError),
    /// No response head within the request's `answer_within`, connecting included.
    NoAnswer(Duration),
}

/// Idle connections per endpoint address, most recently used last.
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    idle: Mutex<IdleMap>,
    connect_timeout: Duration,
    /// How long the rest of a request body may go without moving (see [`Uploading`]).
    send_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    /// Whether the task that closes connections idle for too long is running.
    sweeping: AtomicBool,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// TCP keep-alive probes start after this long without traffic, so that a backend
/// that vanished (a deleted node) is noticed on idle connections.
const KEEPALIVE_PROBE: Duration = Duration::from_secs(60);

/// The backend's side of a connection that switched protocols (a 101), in the
/// response's extensions for the tunnel to take.
#[derive(Clone)]
pub struct Switched(Arc<Mutex<Option<exchange::Switched>>>);

impl Switched {
    /// The connection, the first time it is asked for.
    pub fn take(&self) -> Option<exchange::Switched> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl Pool {
    /// `idle_timeout` closes connections unused for that long; at most `max_idle`
    /// are kept per endpoint. `send_timeout` bounds a request body that neither the
    /// client sends nor the backend reads, once the backend has answered.
    pub fn new(
        connect_timeout: Duration,
        send_timeout: Duration,
        idle_timeout: Duration,
        max_idle: usize,
    ) -> Self {
        Pool {
            inner: Arc::new(Inner {
                idle: Mutex::default(),
                connect_timeout,
                send_timeout,
                idle_timeout,
                max_idle,
                sweeping: AtomicBool::new(false),
            }),
        }
    }

    /// Sends `request` (origin-form URI, `Host` set) to `addr` on an idle connection,
    /// or a new one. When an idle connection goes unanswered (the backend closed it
    /// meanwhile), a request without a body and with an idempotent method goes again
    /// on another, as nginx does with its cached connections; so does any request none
    /// of which had been written.
    pub async fn send(
        &self,
        addr: SocketAddr,
        request: Request<Body>,
    ) -> Result<Response<UpstreamBody>, SendError> {
        let outgoing = Outgoing::new(request).map_err(SendError::Exchange)?;
        self.send_encoded(addr, outgoing).await
    }

    /// [`Pool::send`] for a request already encoded.
    pub async fn send_encoded(
        &self,
        addr: SocketAddr,
        mut outgoing: Outgoing,
    ) -> Result<Response<UpstreamBody>, SendError> {
        // One reading of the clock for the deadline and the first checkout.
        let mut now = Instant::now();
        let due = outgoing.answer_within.map(|within| (now + within, within));
        loop {
            let (mut conn, reused) = match self.inner.checkout(addr, now) {
                Some(conn) => (conn, true),
                // Boxed: new connections are the rare case, and their future would
                // otherwise take room in every request's.
                None => match due {
                    Some((due, within)) => {
                        match Box::pin(tokio::time::timeout_at(due, self.inner.connect(addr))).await {
                            Ok(conn) => (conn?, false),
                            Err(_) => return Err(SendError::NoAnswer(within)),
                        }
                    }
                    None => (Box::pin(self.inner.connect(addr)).await?, false),
                },
            };
            // The connection's own timer bounds the wait; the exchange has the rest of
            // the connection meanwhile.
            let mut deadline = std::mem::take(&mut conn.deadline);
            let answer = {
                let mut exchange = std::pin::pin!(exchange::exchange(&mut conn, &mut outgoing));
                std::future::poll_fn(|cx| match exchange.as_mut().poll(cx) {
                    Poll::Ready(answer) => Poll::Ready(Ok(answer)),
                    Poll::Pending => match due {
                        Some((due, within)) => deadline.poll_until(due, cx).map(|()| Err(within)),
                        None => Poll::Pending,
                    },
                })
                .await
            };
            conn.deadline = deadline;
            let (head, upload) = match answer {
                Ok(Ok(answer)) => answer,
                Ok(Err(ExchangeError::Unanswered(_))) if reused && outgoing.repeatable() => {
                    now = Instant::now();
                    continue;
                }
                Ok(Err(e)) => return Err(SendError::Exchange(e)),
                Err(within) => return Err(SendError::NoAnswer(within)),
            };
            let mut response = Response::new(());
            *response.status_mut() = head.status;
            *response.version_mut() = head.version;
            *response.headers_mut() = head.headers;
            if head.status == StatusCode::SWITCHING_PROTOCOLS {
                let switched = Switched(Arc::new(Mutex::new(Some(exchange::Switched::new(conn)))));
                response.extensions_mut().insert(switched);
                return Ok(response.map(|()| UpstreamBody::empty()));
            }
            let upload = match upload {
                Some(upload) => {
                    match Uploading::spawn(&conn, upload, outgoing.stall.unwrap_or(self.inner.send_timeout)) {
                        Ok(uploading) => Some(uploading),
                        Err(e) => return Err(SendError::Exchange(ExchangeError::Io(e))),
                    }
                }
                None => None,
            };
            let lease = head.reusable.then(|| Lease {
                pool: self.inner.clone(),
                addr,
            });
            let mut body = UpstreamBody(Kind::Own {
                conn: Some(conn),
                decoder: head.body,
                upload,
                lease,
            });
            // Without a body (a 204, a 304, an answer to HEAD) and with all of the
            // request sent, the connection goes back now.
            if head.body.is_done() {
                body.settle();
            }
            return Ok(response.map(|()| body));
        }
    }

    /// Idle connections to `addr` (tests).
    pub fn idle(&self, addr: SocketAddr) -> usize {
        self.inner.lock().get(&addr).map_or(0, Vec::len)
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, IdleMap> {
        // The map holds no invariant a panicking holder could break.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently used idle connection to `addr` that is still open and has
    /// not been idle too long at `now`. Those passed over are closed.
    fn checkout(&self, addr: SocketAddr, now: Instant) -> Option<Conn> {
        let mut idle = self.lock();
        let list = idle.get_mut(&addr)?;
        while let Some(entry) = list.pop() {
            if now.duration_since(entry.since) >= self.idle_timeout {
                // The rest went idle earlier still.
                list.clear();
                return None;
            }
            if entry.conn.is_open() {
                return Some(entry.conn);
            }
        }
        None
    }

    async fn connect(&self, addr: SocketAddr) -> Result<Conn, SendError> {
        let stream =
            match tokio::time::timeout(self.connect_timeout, tokio::net::TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return Err(SendError::Connect(e)),
                Err(_) => {
                    return Err(SendError::Connect(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("connect timed out after {:?}", self.connect_timeout),
                    )))
                }
            };
        // The connection works without them: a failure here is no reason to give up
        // on the endpoint.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::warn!(endpoint = %addr, error = %e, "TCP_NODELAY not set on backend connection");
        }
        let keepalive = socket2::TcpKeepalive::new().with_time(KEEPALIVE_PROBE);
        if let Err(e) = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive) {
            tracing::warn!(endpoint = %addr, error = %e, "TCP keep-alive not set on backend connection");
        }
        Ok(Conn::new(stream))
    }

    fn put(self: &Arc<Self>, addr: SocketAddr, mut conn: Conn) {
        conn.rest();
        {
            let mut idle = self.lock();
            let list = idle.entry(addr).or_default();
            if list.len() >= self.max_idle {
                return;
            }
            list.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
        if !self.sweeping.load(Ordering::Relaxed) {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                if !self.sweeping.swap(true, Ordering::Relaxed) {
                    runtime.spawn(sweep(Arc::downgrade(self)));
                }
            }
        }
    }
}

/// Closes connections idle for longer than the idle timeout, or closed by their
/// backend, and forgets endpoints with none left, until the pool is dropped.
async fn sweep(pool: Weak<Inner>) {
    let Some(period) = pool
        .upgrade()
        .map(|p| (p.idle_timeout / 2).clamp(Duration::from_millis(100), Duration::from_secs(10)))
    else {
        return;
    };
    loop {
        tokio::time::sleep(period).await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        let now = Instant::now();
        pool.lock().retain(|_, list| {
            list.retain(|c| now.duration_since(c.since) < pool.idle_timeout && c.conn.is_open());
            !list.is_empty()
        });
    }
}

/// Where a connection goes back once its response has been read.
struct Lease {
    pool: Arc<Inner>,
    addr: SocketAddr,
}

/// A backend's response body. Read to its end, the connection goes back to the pool
/// (if the backend keeps it open). Dropped before that, it goes back only if the rest
/// of the body has already arrived; otherwise it is closed.
pub struct UpstreamBody(Kind);

enum Kind {
    /// From one of hyper-util's clients, which pool their own connections.
    Hyper(Incoming),
    /// From [`Pool`]: decoded here, from the connection itself.
    Own {
        /// `None` once the body has ended or failed.
        conn: Option<Conn>,
        decoder: Decoder,
        /// The rest of a request body the backend is still reading (after a 2xx).
        upload: Option<Uploading>,
        /// `None` when the connection must not be reused.
        lease: Option<Lease>,
    },
}

impl UpstreamBody {
    /// A body whose connection some other pool looks after.
    pub fn unpooled(inner: Incoming) -> Self {
        UpstreamBody(Kind::Hyper(inner))
    }

    fn empty() -> Self {
        UpstreamBody(Kind::Own {
            conn: None,
            decoder: Decoder::Done,
            upload: None,
            lease: None,
        })
    }

    /// Decodes what is already buffered, without reading, and discards it; if that
    /// reaches the end of the body, the connection goes back to the pool, and
    /// otherwise it is closed.
    fn settle(&mut self) {
        let Kind::Own {
            conn,
            decoder,
            upload,
            lease,
        } = &mut self.0
        else {
            return;
        };
        if upload.as_mut().is_some_and(|up| !up.finished()) {
            // Half a request is still on its way.
            *conn = None;
            return;
        }
        *upload = None;
        let Some(c) = conn.as_mut() else { return };
        loop {
            match decoder.decode(&mut c.buf) {
                Ok(Step::Data(_)) => {}
                Ok(Step::Trailers(_)) | Ok(Step::End) => break,
                Ok(Step::More) | Err(_) => {
                    *conn = None;
                    return;
                }
            }
        }
        release(conn, upload, lease);
    }
}

/// The rest of a request body after a 2xx, sent by a task of its own on a duplicate of
/// the connection's socket while the response is read from the original. Sent from
/// the response body's own polls instead, it would stop whenever the client stops
/// reading the response, and a client that reads nothing until it has sent all of its
/// body would wait forever on a backend that answers as it reads.
struct Uploading(tokio::sync::oneshot::Receiver<Result<(), ExchangeError>>);

impl Uploading {
    fn spawn(conn: &Conn, mut upload: Upload, stall: Duration) -> std::io::Result<Self> {
        let io = conn.duplicate()?;
        let (done, outcome) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let sent = finish_upload(&io, &mut upload, stall).await;
            if sent.is_err() {
                // Whatever of the body the backend waits for will not come: it sees
                // the end of the request stream instead.
                let _ = socket2::SockRef::from(&io).shutdown(std::net::Shutdown::Write);
            }
            let _ = done.send(sent);
        });
        Ok(Uploading(outcome))
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ExchangeError>> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|sent| sent.unwrap_or_else(|_| Err(ExchangeError::Protocol("the upload task ended".into()))))
    }

    /// Whether all of the body went out.
    fn finished(&mut self) -> bool {
        matches!(self.0.try_recv(), Ok(Ok(())))
    }
}

/// Sends the rest of `upload`; fails once it has not moved for `stall`.
async fn finish_upload(
    io: &tokio::net::TcpStream,
    upload: &mut Upload,
    stall: Duration,
) -> Result<(), ExchangeError> {
    let mut deadline = std::pin::pin!(tokio::time::sleep(stall));
    std::future::poll_fn(|cx| {
        let before = upload.progress();
        if let Poll::Ready(sent) = upload.poll(io, cx) {
            return Poll::Ready(sent);
        }
        if upload.progress() != before {
            deadline.as_mut().reset(Instant::now() + stall);
        }
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(ExchangeError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the request body moved neither way for {stall:?}"),
            )))),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// Gives the connection back to its pool if it may be reused, all of the request was
/// sent and nothing more came on it; otherwise closes it.
fn release(conn: &mut Option<Conn>, upload: &mut Option<Uploading>, lease: &mut Option<Lease>) {
    let (Some(conn), Some(lease)) = (conn.take(), lease.take()) else {
        return;
    };
    if upload.as_mut().is_some_and(|up| !up.finished()) {
        return;
    }
    // Bytes after the end of the response are not an answer to anything.
    if conn.buf.is_empty() {
        lease.pool.put(lease.addr, conn);
    }
}

impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let (conn, decoder, upload, lease) = match &mut self.0 {
            Kind::Hyper(inner) => return Pin::new(inner).poll_frame(cx).map_err(BoxError::from),
            Kind::Own {
                conn,
                decoder,
                upload,
                lease,
            } => (conn, decoder, upload, lease),
        };
        loop {
            let Some(c) = conn.as_mut() else {
                return Poll::Ready(None);
            };
            if let Some(up) = upload.as_mut() {
                match up.poll(cx) {
                    Poll::Ready(Ok(())) => *upload = None,
                    // The backend has part of a request it will wait on: the response
                    // cannot end well.
                    Poll::Ready(Err(e @ ExchangeError::Body(_))) => {
                        *conn = None;
                        return Poll::Ready(Some(Err(e.into())));
                    }
                    // The backend stopped reading; its response goes on.
                    Poll::Ready(Err(_)) => {
                        *upload = None;
                        *lease = None;
                    }
                    Poll::Pending => {}
                }
            }
            let step = match decoder.decode(&mut c.buf) {
                Ok(step) => step,
                Err(e) => {
                    *conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            };
            match step {
                Step::Data(data) => {
                    if decoder.is_done() {
                        release(conn, upload, lease);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Step::Trailers(trailers) => {
                    release(conn, upload, lease);
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                Step::End => {
                    release(conn, upload, lease);
                    return Poll::Ready(None);
                }
                Step::More => match std::task::ready!(exchange::poll_read(c, cx)) {
                    Ok(0) if *decoder == Decoder::Close => {
                        *decoder = Decoder::Done;
                        *conn = None;
                        return Poll::Ready(None);
                    }
                    Ok(0) => {
                        *conn = None;
                        let e = ExchangeError::Protocol(
                            "the connection closed before the end of the body".into(),
                        );
                        return Poll::Ready(Some(Err(e.into())));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        *conn = None;
                        return Poll::Ready(Some(Err(ExchangeError::Io(e).into())));
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Hyper(inner) => inner.is_end_stream(),
            Kind::Own { conn, decoder, .. } => conn.is_none() || decoder.is_done(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Hyper(inner) => inner.size_hint(),
            Kind::Own { conn: None, .. } => SizeHint::with_exact(0),
            Kind::Own { decoder, .. } => decoder
                .remaining()
                .map_or_else(SizeHint::default, SizeHint::with_exact),
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // Often dropped without the poll that would have found the end (a body read
        // to its length, trailers), or unread.
        self.settle();
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(_) => f.write_str("connection failed"),
            SendError::Exchange(_) => f.write_str("request failed"),
            SendError::NoAnswer(within) => write!(f, "no response within {within:?}"),
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendError::Connect(e) => Some(e),
            SendError::Exchange(e) => Some(e),
            SendError::NoAnswer(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;
    use http_body_util::BodyExt;
    use std::sync::atomic::AtomicUsize;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A backend on loopback that answers every request on a connection with
    /// `answer(n)` (n counts requests on that connection from 0), then closes the
    /// connection if `close_after` requests were served. Returns its address and the
    /// number of connections it accepted.
    async fn backend(
        answer: fn(usize) -> &'static [u8],
        close_after: usize,
    ) -> (SocketAddr, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    for n in 0..close_after {
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(k) => head.extend_from_slice(&buf[..k]),
                            }
                        }
                        head.clear();
                        if s.write_all(answer(n)).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, accepted, task)
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

    fn get(path: &str) -> Request<Body> {
        Request::builder()
            .uri(path)
            .header(header::HOST, "backend.test")
            .body(crate::proxy::empty())
            .unwrap()
    }

    fn pool() -> Pool {
        Pool::new(
            Duration::from_secs(2),
            Duration::from_secs(5),
            Duration::from_secs(30),
            4,
        )
    }

    async fn text(response: Response<UpstreamBody>) -> String {
        let body = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    /// Until `n` connections to `addr` are idle, for at most a second.
    async fn wait_idle(pool: &Pool, addr: SocketAddr, n: usize) {
        for _ in 0..200 {
            if pool.idle(addr) == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(pool.idle(addr), n);
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_response_is_read() {
        let (addr, accepted, _task) = backend(|_| OK, usize::MAX).await;
        let pool = pool();
        for i in 0..5 {
            let response = pool.send(addr, get(&format!("/{i}"))).await.unwrap();
            assert_eq!(pool.idle(addr), 0, "lent while its body is unread");
            assert_eq!(text(response).await, "ok");
            assert_eq!(pool.idle(addr), 1, "back once read");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_body_dropped_unread_closes_its_connection() {
        let (addr, accepted, _task) =
            backend(|_| b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", usize::MAX).await;
        let pool = pool();
        let response = pool.send(addr, get("/")).await.unwrap();
        drop(response);
        assert_eq!(pool.idle(addr), 0);
        // The next request needs a connection of its own.
        let response = pool.send(addr, get("/")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_small_body_dropped_unread_is_read_off_and_its_connection_reused() {
        let (addr, accepted, _task) = backend(
            |_| b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789",
            usize::MAX,
        )
        .await;
        let pool = pool();
        for _ in 0..3 {
            let response = pool.send(addr, get("/")).await.unwrap();
            drop(response);
            wait_idle(&pool, addr, 1).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_body_ending_in_trailers_gives_the_connection_back() {
        let (addr, accepted, _task) = backend(
            |_| b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n2\r\nok\r\n0\r\nx-sum: 1\r\n\r\n",
            usize::MAX,
        )
        .await;
        let pool = pool();
        for _ in 0..3 {
            let mut body = pool.send(addr, get("/")).await.unwrap().into_body();
            // As hyper's servers do: no poll after the trailers.
            loop {
                let frame = body.frame().await.unwrap().unwrap();
                if frame.is_trailers() {
                    break;
                }
            }
            wait_idle(&pool, addr, 1).await;
            drop(body);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn bodiless_responses_give_the_connection_back_without_a_read() {
        let (addr, accepted, _task) = backend(
            |n| match n % 2 {
                0 => b"HTTP/1.1 204 No Content\r\n\r\n",
                _ => b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            },
            usize::MAX,
        )
        .await;
        let pool = pool();
        for _ in 0..4 {
            drop(pool.send(addr, get("/")).await.unwrap());
            assert_eq!(pool.idle(addr), 1);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn connections_the_backend_closes_are_not_reused() {
        // `Connection: close` and HTTP/1.0 without keep-alive: never pooled.
        let (addr, accepted, _task) = backend(
            |n| match n % 2 {
                0 => b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
                _ => b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
            },
            usize::MAX,
        )
        .await;
        let pool = pool();
        assert_eq!(text(pool.send(addr, get("/")).await.unwrap()).await, "ok");
        assert_eq!(pool.idle(addr), 0);
        assert_eq!(accepted.load(Ordering::SeqCst), 1);

        // A backend that closes after one exchange without saying so: the closed
        // connection is skipped, or, if its close has not been seen yet, the request
        // goes unanswered on it and is sent again on a new one. Either way every
        // request is answered.
        let (addr, accepted, _task) = backend(|_| OK, 1).await;
        for i in 0..20 {
            let response = pool.send(addr, get("/")).await;
            assert_eq!(text(response.unwrap()).await, "ok", "request {i}");
            if i % 2 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 20);
    }

    #[tokio::test]
    async fn idle_connections_are_closed_after_the_idle_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let closed = Arc::new(tokio::sync::Notify::new());
        let notify = closed.clone();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            s.write_all(OK).await.unwrap();
            // The pool's side closing is what ends this read.
            while !matches!(s.read(&mut buf).await, Ok(0) | Err(_)) {}
            notify.notify_one();
        });
        let pool = Pool::new(
            Duration::from_secs(2),
            Duration::from_secs(5),
            Duration::from_millis(200),
            4,
        );
        let started = Instant::now();
        assert_eq!(text(pool.send(addr, get("/")).await.unwrap()).await, "ok");
        assert_eq!(pool.idle(addr), 1);
        tokio::time::timeout(Duration::from_secs(5), closed.notified())
            .await
            .expect("the idle connection was closed");
        let idle_for = started.elapsed();
        assert!(idle_for >= Duration::from_millis(200), "{idle_for:?}");
        assert_eq!(pool.idle(addr), 0);
    }

    #[tokio::test]
    async fn at_most_max_idle_connections_are_kept() {
        let (addr, accepted, _task) = backend(|_| OK, usize::MAX).await;
        let pool = pool();
        let mut open = Vec::new();
        for _ in 0..6 {
            open.push(pool.send(addr, get("/")).await.unwrap());
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 6);
        for response in open {
            assert_eq!(text(response).await, "ok");
        }
        assert_eq!(pool.idle(addr), 4);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let addr = {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            listener.local_addr().unwrap()
        };
        let Err(err) = pool().send(addr, get("/")).await else {
            panic!("a closed port answered");
        };
        assert!(
            matches!(err, SendError::Connect(ref e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
            "{err:?}"
        );
        let err = crate::proxy::UpstreamError::Pooled(err);
        assert_eq!(
            crate::proxy::UpstreamFailure::classify(&err),
            crate::proxy::UpstreamFailure::Connect
        );
    }

    /// A backend that serves one connection with a script: for each exchange, it reads
    /// until what it has read contains `until`, then writes the answer, and closes
    /// after the last. What it read comes back through the channel.
    async fn scripted(
        script: Vec<(&'static [u8], &'static [u8])>,
    ) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (seen, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            for (until, answer) in script {
                let mut read = Vec::new();
                let mut buf = [0u8; 4096];
                while !read.windows(until.len()).any(|w| w == until) {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => read.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = seen.send(read);
                if s.write_all(answer).await.is_err() {
                    return;
                }
            }
        });
        (addr, rx)
    }

    /// A body of unknown length, fed through the sender.
    fn streamed() -> (tokio::sync::mpsc::UnboundedSender<Bytes>, Body) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok::<_, BoxError>(Frame::data(b)), rx))
        });
        (tx, http_body_util::StreamBody::new(stream).boxed_unsync())
    }

    fn post(body: Body) -> Request<Body> {
        Request::builder()
            .method("POST")
            .uri("/upload")
            .header(header::HOST, "backend.test")
            .body(body)
            .unwrap()
    }

    #[tokio::test]
    async fn chunked_bodies_are_decoded_with_extensions_and_trailers() {
        let answer: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
            5;name=value\r\nhello\r\n1 ; x\r\n \r\n0000000000000000005 \r\nworld\r\n0\r\nx-sum: 10\r\n\r\n";
        let (addr, _seen) = scripted(vec![(b"\r\n\r\n", answer), (b"\r\n\r\n", OK)]).await;
        let pool = pool();
        let response = pool.send(addr, get("/")).await.unwrap();
        let collected = response.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["x-sum"], "10");
        assert_eq!(collected.to_bytes(), "hello world");
        assert_eq!(pool.idle(addr), 1, "reused after the trailers");
        assert_eq!(text(pool.send(addr, get("/")).await.unwrap()).await, "ok");
    }

    #[tokio::test]
    async fn ambiguous_or_broken_framing_fails_and_the_connection_is_dropped() {
        let cases: &[(&str, &[u8])] = &[
            ("both framings", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"),
            ("a coding other than chunked", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nok"),
            ("chunked twice", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n"),
            ("chunked not last", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n"),
            ("differing lengths in a list", b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\nok"),
            ("differing lengths", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok"),
            ("a signed length", b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok"),
            ("a bad status line", b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok"),
            ("a space before the colon", b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok"),
            ("a bad chunk size", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n"),
            ("a chunk size too long", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\nok\r\n0\r\n\r\n"),
            ("a bare LF after a chunk size", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\nok\r\n0\r\n\r\n"),
            ("chunk data too long", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokk\r\n0\r\n\r\n"),
            ("a control character in an extension", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;a\x01\r\nok\r\n0\r\n\r\n"),
            ("a body cut short", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"),
            ("a head cut short", b"HTTP/1.1 200 OK\r\nContent-Le"),
            ("chunked in HTTP/1.0", b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"),
            ("a bare CR after a chunk size", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\r\nok\r\n0\r\n\r\n"),
            ("a bare LF between trailers", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\na: 1\nb: 2\r\n\r\n"),
            ("a bare LF in the trailers", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx: 1\n\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
        ];
        for (case, answer) in cases {
            let (addr, _seen) = scripted(vec![(b"\r\n\r\n", answer)]).await;
            let pool = pool();
            let outcome = match pool.send(addr, get("/")).await {
                Ok(response) => response
                    .into_body()
                    .collect()
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                Err(e) => Err(std::error::Error::source(&e)
                    .map(ToString::to_string)
                    .unwrap_or_default()),
            };
            let error = outcome.expect_err(case);
            assert!(error.contains("HTTP/1.1"), "{case}: {error}");
            assert_eq!(pool.idle(addr), 0, "{case}: reused");
        }
    }

    #[tokio::test]
    async fn lengths_repeated_alike_and_interim_responses_are_accepted() {
        let answer: &[u8] = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n\
            HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\nContent-Length: 2\r\n\r\nok";
        let (addr, _seen) = scripted(vec![(b"\r\n\r\n", answer)]).await;
        let response = pool().send(addr, get("/")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            response.headers().get("link").is_none(),
            "the 103's fields are not the response's"
        );
        let lengths: Vec<_> = response
            .headers()
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .collect();
        assert_eq!(lengths, ["2"], "relayed as one number");
        assert_eq!(text(response).await, "ok");
    }

    #[tokio::test]
    async fn a_repeated_request_length_goes_as_one_number() {
        let (addr, mut seen) = scripted(vec![(b"ok", OK)]).await;
        let mut request = post(crate::proxy::full("ok"));
        request
            .headers_mut()
            .insert(header::CONTENT_LENGTH, http::HeaderValue::from_static("2, 2"));
        request
            .headers_mut()
            .append(header::CONTENT_LENGTH, http::HeaderValue::from_static("2"));
        assert_eq!(text(pool().send(addr, request).await.unwrap()).await, "ok");
        let sent = String::from_utf8(seen.recv().await.unwrap()).unwrap();
        assert_eq!(
            sent,
            "POST /upload HTTP/1.1\r\nhost: backend.test\r\ncontent-length: 2\r\n\r\nok"
        );
    }

    #[tokio::test]
    async fn a_body_without_length_runs_to_the_close() {
        let (addr, _seen) = scripted(vec![(b"\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\nuntil the end")]).await;
        let pool = pool();
        let response = pool.send(addr, get("/")).await.unwrap();
        assert_eq!(text(response).await, "until the end");
        assert_eq!(pool.idle(addr), 0);
    }

    #[tokio::test]
    async fn request_bodies_go_with_their_length_or_chunked() {
        let (addr, mut seen) = scripted(vec![
            (b"\r\n\r\nhello", OK),
            (b"0\r\n\r\n", OK),
            (b"\r\n\r\n", OK),
        ])
        .await;
        let pool = pool();
        assert_eq!(
            text(pool.send(addr, post(crate::proxy::full("hello"))).await.unwrap()).await,
            "ok"
        );
        let first = String::from_utf8(seen.recv().await.unwrap()).unwrap();
        assert!(first.starts_with("POST /upload HTTP/1.1\r\n"), "{first}");
        assert!(first.contains("\r\ncontent-length: 5\r\n"), "{first}");
        assert!(!first.contains("transfer-encoding"), "{first}");

        let (tx, body) = streamed();
        tx.send(Bytes::from_static(b"hello ")).unwrap();
        tx.send(Bytes::from_static(b"world")).unwrap();
        drop(tx);
        let mut request = post(body);
        // Whatever the client said, the gateway frames what it sends.
        request
            .headers_mut()
            .insert(header::TRANSFER_ENCODING, "gzip".parse().unwrap());
        assert_eq!(text(pool.send(addr, request).await.unwrap()).await, "ok");
        let second = String::from_utf8(seen.recv().await.unwrap()).unwrap();
        assert!(second.contains("\r\ntransfer-encoding: chunked\r\n"), "{second}");
        assert!(!second.contains("gzip"), "{second}");
        assert!(
            second.ends_with("\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n"),
            "{second:?}"
        );

        // A body shorter than its Content-Length is the client's failure, and the
        // connection, with half a request on it, is not used again.
        let mut request = post(crate::proxy::full("abc"));
        request
            .headers_mut()
            .insert(header::CONTENT_LENGTH, http::HeaderValue::from_static("5"));
        let Err(err) = pool.send(addr, request).await else {
            panic!("a short body was sent");
        };
        let err = crate::proxy::UpstreamError::Pooled(err);
        assert_eq!(
            crate::proxy::UpstreamFailure::classify(&err),
            crate::proxy::UpstreamFailure::ClientBody
        );
        assert_eq!(pool.idle(addr), 0);
    }

    #[tokio::test]
    async fn an_early_answer_ends_the_upload_and_the_connection() {
        // The backend answers after the head, keeps the connection open and never
        // reads the body, which the client has not finished sending.
        let (addr, _seen) = scripted(vec![(
            b"\r\n\r\n",
            b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 3\r\n\r\nbig",
        )])
        .await;
        let (tx, body) = streamed();
        tx.send(Bytes::from(vec![b'x'; 64 * 1024])).unwrap();
        let pool = pool();
        let response = tokio::time::timeout(Duration::from_secs(5), pool.send(addr, post(body)))
            .await
            .expect("answered while the upload was unfinished")
            .unwrap();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(text(response).await, "big");
        assert_eq!(pool.idle(addr), 0, "half a request is still on it");
        drop(tx);
    }

    #[tokio::test]
    async fn an_unanswered_reused_connection_is_retried_only_when_harmless() {
        // Each connection answers its first request and closes on reading the second,
        // as a backend that times out idle connections at the wrong moment does.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    let _ = s.write_all(OK).await;
                    let _ = s.read(&mut buf).await;
                });
            }
        });
        let pool = pool();
        assert_eq!(text(pool.send(addr, get("/")).await.unwrap()).await, "ok");
        assert_eq!(
            text(pool.send(addr, get("/")).await.unwrap()).await,
            "ok",
            "a GET goes again"
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 2);

        let Err(err) = pool.send(addr, post(crate::proxy::full("once"))).await else {
            panic!("a POST on a closing connection was answered");
        };
        assert!(
            matches!(err, SendError::Exchange(ExchangeError::Unanswered(_))),
            "a POST is not repeated: {err:?}"
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_switch_hands_over_what_came_after_the_head() {
        let (addr, _seen) = scripted(vec![(
            b"\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: test\r\nConnection: upgrade\r\n\r\nfirst words",
        )])
        .await;
        let mut response = pool().send(addr, get("/")).await.unwrap();
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        let mut io = crate::proxy::switched(&mut response).await.unwrap();
        let mut got = vec![0u8; 11];
        io.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"first words");
    }

    /// A request whose body the test feeds, and the sender feeding it.
    fn streamed_put() -> (tokio::sync::mpsc::UnboundedSender<Bytes>, Request<Body>) {
        let (tx, body) = streamed();
        let mut request = post(body);
        *request.method_mut() = http::Method::PUT;
        (tx, request)
    }

    #[tokio::test]
    async fn a_request_with_a_body_is_not_sent_again() {
        // The first exchange leaves an idle connection; the backend closes it on
        // reading the next request, without answering.
        let (addr, _seen) = scripted(vec![(b"\r\n\r\n", OK), (b"\r\n\r\n", b"")]).await;
        let pool = pool();
        assert_eq!(text(pool.send(addr, get("/")).await.unwrap()).await, "ok");
        assert_eq!(pool.idle(addr), 1);
        // A PUT is idempotent, but its body is gone once sent.
        let (tx, request) = streamed_put();
        tx.send(Bytes::from_static(b"data")).unwrap();
        drop(tx);
        let sent = tokio::time::timeout(Duration::from_secs(5), pool.send(addr, request)).await;
        let Ok(Err(err)) = sent else {
            panic!("answered or hung: {sent:?}", sent = sent.map(|r| r.map(|_| ())));
        };
        assert!(
            matches!(err, SendError::Exchange(ExchangeError::Unanswered(_))),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_backend_may_answer_2xx_while_the_upload_goes_on() {
        // Full duplex: the head and a first chunk right away, the rest once the whole
        // request body has arrived.
        let (addr, mut seen) = scripted(vec![
            (
                b"\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n",
            ),
            (b"0\r\n\r\n", b"4\r\nlast\r\n0\r\n\r\n"),
            (b"\r\n\r\n", OK),
        ])
        .await;
        let pool = pool();
        let (tx, request) = streamed_put();
        tx.send(Bytes::from_static(b"one ")).unwrap();
        let response = pool.send(addr, request).await.unwrap();
        let mut body = response.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "first");
        tx.send(Bytes::from_static(b"two")).unwrap();
        drop(tx);
        assert_eq!(body.collect().await.unwrap().to_bytes(), "last");
        seen.recv().await.unwrap();
        let upload = String::from_utf8(seen.recv().await.unwrap()).unwrap();
        assert!(upload.ends_with("3\r\ntwo\r\n0\r\n\r\n"), "{upload:?}");
        assert_eq!(pool.idle(addr), 1, "both directions ended: reusable");
        assert_eq!(text(pool.send(addr, get("/")).await.unwrap()).await, "ok");
    }

    #[tokio::test]
    async fn the_upload_goes_on_while_the_client_is_not_reading_the_response() {
        // The backend answers at once and reads the whole body before it ends the
        // response; the client reads nothing of the response until it has sent all.
        let (addr, mut seen) = scripted(vec![
            (
                b"\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n",
            ),
            (b"0\r\n\r\n", b"4\r\nlast\r\n0\r\n\r\n"),
        ])
        .await;
        let pool = pool();
        let (tx, request) = streamed_put();
        tx.send(Bytes::from_static(b"one ")).unwrap();
        let response = pool.send(addr, request).await.unwrap();
        tx.send(Bytes::from_static(b"two")).unwrap();
        drop(tx);
        seen.recv().await.unwrap();
        let upload = tokio::time::timeout(Duration::from_secs(5), seen.recv())
            .await
            .expect("the upload stalled while the response was not read")
            .unwrap();
        assert!(String::from_utf8(upload)
            .unwrap()
            .ends_with("3\r\ntwo\r\n0\r\n\r\n"));
        assert_eq!(text(response).await, "firstlast");
        assert_eq!(pool.idle(addr), 1, "both directions ended: reusable");
    }

    #[tokio::test]
    async fn an_upload_the_backend_stops_reading_is_cut_off() {
        // The backend answers and then reads nothing; the client keeps sending.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let backend = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await
                .unwrap();
            // Until the gateway gives up on the rest of the body: end of stream.
            tokio::time::sleep(Duration::from_secs(10)).await;
            s
        });
        // The request's own bound (a route's read timeout) over the pool's.
        let pool = Pool::new(
            Duration::from_secs(2),
            Duration::from_secs(60),
            Duration::from_secs(30),
            4,
        );
        let (tx, request) = streamed_put();
        tx.send(Bytes::from_static(b"start")).unwrap();
        let mut outgoing = Outgoing::new(request).unwrap();
        outgoing.stall = Some(Duration::from_millis(300));
        let response = pool.send_encoded(addr, outgoing).await.unwrap();
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        // Far more than the socket buffers hold.
        for _ in 0..256 {
            if tx.send(chunk.clone()).is_err() {
                break;
            }
        }
        assert_eq!(text(response).await, "ok");
        assert_eq!(pool.idle(addr), 0, "half a request on it: closed");
        tokio::time::timeout(Duration::from_secs(5), async {
            while !tx.is_closed() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the stalled upload was not dropped");
        backend.abort();
    }

    /// A GET whose body is not known yet, with a field of `padding` bytes.
    fn undecided_get(padding: usize) -> (tokio::sync::mpsc::UnboundedSender<Bytes>, Request<Body>) {
        let (tx, body) = streamed();
        let request = Request::builder()
            .uri("/")
            .header(header::HOST, "backend.test")
            .header("x-pad", "p".repeat(padding))
            .body(body)
            .unwrap();
        (tx, request)
    }

    /// Reads one request up to the end of its chunked body.
    async fn read_chunked_request(s: &mut TcpStream) -> Vec<u8> {
        let mut buf = vec![0u8; 4096];
        let mut read = Vec::new();
        while !read.ends_with(b"0\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&read));
            read.extend_from_slice(&buf[..n]);
        }
        read
    }

    // On two threads, so that a send that spins cannot stop the test's own timeout.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_undecided_head_waits_for_the_first_frame() {
        // Small, and larger than the coalescing limit (which once made it spin).
        for padding in [1, 20_000] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (tx, request) = undecided_get(padding);
            let pool = pool();
            let sent = tokio::spawn(async move { text(pool.send(addr, request).await.unwrap()).await });
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let early = tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await;
            assert!(
                early.is_err(),
                "a head without its end went before the body was known"
            );
            tx.send(Bytes::from_static(b"x")).unwrap();
            drop(tx);
            let read = tokio::time::timeout(Duration::from_secs(5), read_chunked_request(&mut s))
                .await
                .expect("the request never came");
            let expected = format!(
                "GET / HTTP/1.1\r\nhost: backend.test\r\nx-pad: {}\r\ntransfer-encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
                "p".repeat(padding)
            );
            assert_eq!(String::from_utf8(read).unwrap(), expected, "padding {padding}");
            s.write_all(OK).await.unwrap();
            assert_eq!(sent.await.unwrap(), "ok");
        }
    }

    #[tokio::test]
    async fn an_undecided_request_goes_on_a_new_connection_if_its_pooled_one_closes() {
        // The backend closes its idle connection while the request waits for its
        // body's first frame, before any of it was written.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let backend = tokio::spawn(async move {
            let (mut first, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let _ = first.read(&mut buf).await.unwrap();
            first.write_all(OK).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(first);
            let (mut second, _) = listener.accept().await.unwrap();
            let read = read_chunked_request(&mut second).await;
            second.write_all(OK).await.unwrap();
            read
        });
        let pool = pool();
        assert_eq!(text(pool.send(addr, get("/")).await.unwrap()).await, "ok");
        assert_eq!(pool.idle(addr), 1);
        let (tx, request) = undecided_get(1);
        let feed = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            tx.send(Bytes::from_static(b"x")).unwrap();
        });
        assert_eq!(text(pool.send(addr, request).await.unwrap()).await, "ok");
        feed.await.unwrap();
        let read = String::from_utf8(backend.await.unwrap()).unwrap();
        assert!(read.starts_with("GET / HTTP/1.1\r\n"), "{read}");
        assert!(read.ends_with("1\r\nx\r\n0\r\n\r\n"), "{read}");
    }

    #[tokio::test]
    async fn heads_trickled_in_pieces_are_read_once_whole() {
        let answers: [&[u8]; 3] = [
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Long: aaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\nok",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
        ];
        for answer in answers {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await.unwrap();
                for piece in answer.chunks(3) {
                    s.write_all(piece).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                let _ = s.read(&mut buf).await;
            });
            let response = pool().send(addr, get("/")).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{answer:?}");
            assert_eq!(text(response).await, "ok", "{answer:?}");
        }
    }

    #[tokio::test]
    async fn bodiless_answers_ignore_their_length_and_keep_the_connection() {
        let (addr, _seen) = scripted(vec![
            (b"\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"),
            (
                b"\r\n\r\n",
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1000\r\n\r\n",
            ),
            (b"\r\n\r\n", OK),
        ])
        .await;
        let pool = pool();
        let mut head = get("/");
        *head.method_mut() = http::Method::HEAD;
        let response = pool.send(addr, head).await.unwrap();
        assert_eq!(response.headers()[header::CONTENT_LENGTH], "1000");
        assert_eq!(text(response).await, "");
        assert_eq!(text(pool.send(addr, get("/")).await.unwrap()).await, "");
        assert_eq!(text(pool.send(addr, get("/")).await.unwrap()).await, "ok");
    }

    #[tokio::test]
    async fn bytes_after_a_response_keep_its_connection_out_of_the_pool() {
        let (addr, _seen) = scripted(vec![(
            b"\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nforged",
        )])
        .await;
        let pool = pool();
        let response = pool.send(addr, get("/")).await.unwrap();
        // Read at its own pace: the extra bytes have arrived with the response.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(text(response).await, "ok");
        assert_eq!(pool.idle(addr), 0);
    }

    #[tokio::test]
    async fn a_tunnel_for_connect_is_refused() {
        let (addr, _seen) = scripted(vec![(
            b"\r\n\r\n",
            b"HTTP/1.1 200 Connection established\r\n\r\n",
        )])
        .await;
        let request = Request::builder()
            .method(http::Method::CONNECT)
            .uri("/")
            .header(header::HOST, "backend.test")
            .body(crate::proxy::empty())
            .unwrap();
        let Err(err) = pool().send(addr, request).await else {
            panic!("a CONNECT tunnel was relayed");
        };
        assert!(
            matches!(err, SendError::Exchange(ExchangeError::Protocol(_))),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_get_whose_body_turns_out_empty_goes_without_framing() {
        let (addr, mut seen) = scripted(vec![(b"\r\n\r\n", OK)]).await;
        let (tx, body) = streamed();
        drop(tx);
        let request = Request::builder()
            .uri("/")
            .header(header::HOST, "backend.test")
            .body(body)
            .unwrap();
        assert_eq!(text(pool().send(addr, request).await.unwrap()).await, "ok");
        let head = String::from_utf8(seen.recv().await.unwrap()).unwrap();
        assert_eq!(head, "GET / HTTP/1.1\r\nhost: backend.test\r\n\r\n");
    }
    /// A backend on one connection that answers its n-th request after `delays[n]`,
    /// or never once past the end of `delays`.
    async fn slow_backend(delays: Vec<Duration>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            for n in 0.. {
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => head.extend_from_slice(&buf[..k]),
                    }
                }
                head.clear();
                let Some(delay) = delays.get(n) else {
                    // Holds the connection open, unanswered.
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    return;
                };
                tokio::time::sleep(*delay).await;
                if s.write_all(OK).await.is_err() {
                    return;
                }
            }
        });
        addr
    }

    async fn send_within(pool: &Pool, addr: SocketAddr, within: Duration) -> Result<String, SendError> {
        let mut outgoing = Outgoing::new(get("/")).unwrap();
        outgoing.answer_within = Some(within);
        Ok(text(pool.send_encoded(addr, outgoing).await?).await)
    }

    #[tokio::test]
    async fn a_backend_that_does_not_answer_in_time_gets_no_answer() {
        let addr = slow_backend(vec![]).await;
        let pool = pool();
        let started = Instant::now();
        let sent = send_within(&pool, addr, Duration::from_millis(200)).await;
        assert!(
            matches!(sent, Err(SendError::NoAnswer(d)) if d == Duration::from_millis(200)),
            "{sent:?}"
        );
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_secs(2),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn a_connection_timer_left_set_by_a_longer_timeout_still_bounds_a_shorter_one() {
        // The first exchange leaves the connection's timer set a minute out.
        let addr = slow_backend(vec![Duration::ZERO]).await;
        let pool = pool();
        let first = send_within(&pool, addr, Duration::from_secs(60)).await;
        assert_eq!(first.unwrap(), "ok");
        assert_eq!(pool.idle(addr), 1);
        let started = Instant::now();
        let second = send_within(&pool, addr, Duration::from_millis(200)).await;
        assert!(matches!(second, Err(SendError::NoAnswer(_))), "{second:?}");
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(2),
            "waited {took:?}: the timer was not brought forward"
        );
    }

    #[tokio::test]
    async fn a_connection_timer_that_fires_early_does_not_end_a_longer_wait() {
        // The first exchange leaves the timer set 100 ms out; the second may take a
        // second and is answered after 400 ms, past the first's deadline.
        let addr = slow_backend(vec![Duration::ZERO, Duration::from_millis(400)]).await;
        let pool = pool();
        assert_eq!(
            send_within(&pool, addr, Duration::from_millis(100))
                .await
                .unwrap(),
            "ok"
        );
        let second = send_within(&pool, addr, Duration::from_secs(1)).await;
        assert_eq!(second.unwrap(), "ok");
    }

    #[tokio::test]
    async fn a_connect_that_does_not_finish_in_time_gets_no_answer() {
        // A listener whose backlog is full leaves further connects waiting for the
        // SYN to be answered (Linux drops it rather than refusing).
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(0).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut held = Vec::new();
        for _ in 0..8 {
            match tokio::time::timeout(Duration::from_millis(100), TcpStream::connect(addr)).await {
                Ok(Ok(s)) => held.push(s),
                _ => break,
            }
        }
        let pool = Pool::new(
            Duration::from_secs(10),
            Duration::from_secs(5),
            Duration::from_secs(30),
            4,
        );
        let started = Instant::now();
        let sent = send_within(&pool, addr, Duration::from_millis(300)).await;
        assert!(matches!(sent, Err(SendError::NoAnswer(_))), "{sent:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        drop(listener);
    }
}
