//! Keep-alive HTTP/1.1 connections to backend endpoints, for the common case: plain
//! HTTP to a Service's endpoint addresses.
//!
//! hyper-util's general client serves every other case (TLS, HTTP/2, names to
//! resolve). For this one it does more than needed on every request: an absolute URI
//! to parse for the pool key, a task spawned to wait until the connection is ready
//! again, and its pool's bookkeeping. Here the key is the endpoint's address, and a
//! connection goes back to the pool when the response body ends, which is when hyper
//! is ready for the next request on it; only when it is not yet ready does a task wait
//! for it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{Builder, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use crate::proxy::Body;

/// Idle connections by endpoint. Looked up twice per request, with a fast hash: the
/// keys are endpoint addresses from the configuration, not chosen by clients.
type IdleMap = HashMap<SocketAddr, Vec<Idle>, foldhash::fast::RandomState>;
/// Why a request sent through the pool got no response.
#[derive(Debug)]
pub enum SendError {
    /// No connection to the endpoint could be made (refused, unreachable, timed out).
    Connect(std::io::Error),
    /// The connection failed, or the backend broke the protocol, before the response
    /// head arrived.
    Exchange(hyper::Error),
}

/// Idle connections per endpoint address, most recently used last.
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    idle: Mutex<IdleMap>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    builder: Builder,
    /// Whether the task that closes connections idle for too long is running.
    sweeping: AtomicBool,
}

struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

/// TCP keep-alive probes start after this long without traffic, so that a backend
/// that vanished (a deleted node) is noticed on idle connections.
const KEEPALIVE_PROBE: Duration = Duration::from_secs(60);

impl Pool {
    /// `idle_timeout` closes connections unused for that long; at most `max_idle`
    /// are kept per endpoint.
    pub fn new(connect_timeout: Duration, idle_timeout: Duration, max_idle: usize) -> Self {
        Pool {
            inner: Arc::new(Inner {
                idle: Mutex::default(),
                connect_timeout,
                idle_timeout,
                max_idle,
                builder: Builder::new(),
                sweeping: AtomicBool::new(false),
            }),
        }
    }

    /// Sends `request` (origin-form URI, `Host` set) to `addr` on an idle connection,
    /// or a new one. A request that an idle connection could not take (the backend
    /// closed it meanwhile) was never written, and goes on another connection.
    pub async fn send(
        &self,
        addr: SocketAddr,
        mut request: Request<Body>,
    ) -> Result<Response<UpstreamBody>, SendError> {
        loop {
            let (mut sender, reused) = match self.inner.checkout(addr) {
                Some(sender) => (sender, true),
                None => (self.inner.connect(addr).await?, false),
            };
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let lease = reusable(&response).then(|| Lease {
                        pool: self.inner.clone(),
                        addr,
                        sender,
                    });
                    return Ok(response.map(|inner| UpstreamBody { inner, lease }));
                }
                Err(mut failed) => match failed.take_message() {
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(SendError::Exchange(failed.into_error())),
                },
            }
        }
    }

    /// Idle connections to `addr` (tests).
    pub fn idle(&self, addr: SocketAddr) -> usize {
        self.inner.lock().get(&addr).map_or(0, Vec::len)
    }
}

/// Whether the connection may carry another request once this response is read: not
/// after a protocol switch, nor when the backend said it closes.
fn reusable(response: &Response<Incoming>) -> bool {
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        return false;
    }
    let has = |token| crate::proxy::connection_has(response.headers(), token);
    match response.version() {
        Version::HTTP_11 => !has("close"),
        Version::HTTP_10 => has("keep-alive"),
        _ => false,
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, IdleMap> {
        // The map holds no invariant a panicking holder could break.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently used idle connection to `addr` that is still open and has
    /// not been idle too long. Those passed over are closed.
    fn checkout(&self, addr: SocketAddr) -> Option<SendRequest<Body>> {
        let mut idle = self.lock();
        let list = idle.get_mut(&addr)?;
        let now = Instant::now();
        while let Some(entry) = list.pop() {
            if now.duration_since(entry.since) >= self.idle_timeout {
                // The rest went idle earlier still.
                list.clear();
                return None;
            }
            if !entry.sender.is_closed() {
                return Some(entry.sender);
            }
        }
        None
    }

    async fn connect(&self, addr: SocketAddr) -> Result<SendRequest<Body>, SendError> {
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
        let (sender, connection) = self
            .builder
            .handshake(TokioIo::new(stream))
            .await
            .map_err(SendError::Exchange)?;
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(endpoint = %addr, error = %e, "backend connection ended");
            }
        });
        Ok(sender)
    }

    fn put(self: &Arc<Self>, addr: SocketAddr, sender: SendRequest<Body>) {
        {
            let mut idle = self.lock();
            let list = idle.entry(addr).or_default();
            if list.len() >= self.max_idle {
                return;
            }
            list.push(Idle {
                sender,
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

/// Closes connections idle for longer than the idle timeout, and forgets endpoints
/// with none left, until the pool is dropped.
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
            list.retain(|c| now.duration_since(c.since) < pool.idle_timeout && !c.sender.is_closed());
            !list.is_empty()
        });
    }
}

/// A connection lent to one exchange, back to the pool when the response has been read.
struct Lease {
    pool: Arc<Inner>,
    addr: SocketAddr,
    sender: SendRequest<Body>,
}

impl Lease {
    fn release(self) {
        let Lease {
            pool,
            addr,
            mut sender,
        } = self;
        if sender.is_closed() {
            return;
        }
        if sender.is_ready() {
            pool.put(addr, sender);
            return;
        }
        // hyper has not yet seen the end of the exchange on its side.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if sender.ready().await.is_ok() {
                    pool.put(addr, sender);
                }
            });
        }
    }
}

/// A backend's response body. When it has been read to its end, the connection goes
/// back to the pool. Dropped before that, the connection goes back only if hyper could
/// read off the rest of the response, which it does when the rest has already arrived;
/// otherwise hyper closes it.
pub struct UpstreamBody {
    inner: Incoming,
    lease: Option<Lease>,
}

impl UpstreamBody {
    /// A body whose connection some other pool looks after.
    pub fn unpooled(inner: Incoming) -> Self {
        UpstreamBody { inner, lease: None }
    }

    fn finish(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.release();
        }
    }
}

impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let frame = std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            // Trailers end a body too; after them, readers stop asking.
            None => this.finish(),
            Some(Ok(f)) if f.is_trailers() || this.inner.is_end_stream() => this.finish(),
            Some(Ok(_)) => {}
            Some(Err(_)) => this.lease = None,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // Often dropped without the poll that would have found the end (no body, or
        // one read to its length), or unread: hyper decides, and the lease waits for
        // hyper to be ready or to close.
        self.finish();
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(_) => f.write_str("connection failed"),
            SendError::Exchange(_) => f.write_str("request failed"),
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendError::Connect(e) => Some(e),
            SendError::Exchange(e) => Some(e),
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
    use tokio::net::TcpListener;

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
        Pool::new(Duration::from_secs(2), Duration::from_secs(30), 4)
    }

    async fn text(response: Response<UpstreamBody>) -> String {
        let body = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    /// Until `n` connections to `addr` are idle: at once when hyper was ready as the
    /// body ended, through the lease's task otherwise.
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
        // connection is skipped, or the request comes back unsent and goes on a new
        // one. Either way every request is answered.
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
        let pool = Pool::new(Duration::from_secs(2), Duration::from_millis(200), 4);
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
}
