//! Listeners and connections: accept, TLS handshake (with a deadline), HTTP/1.1 and
//! HTTP/2 on one port, limits on request heads, and graceful shutdown that stops
//! accepting, lets in-flight requests and tunnels finish, then returns.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::LazyConfigAcceptor;

use crate::h1::{self, ClientBody};
use crate::handler::{self, ClientConn, Proxy};
use crate::metrics::ListenerLabel;

/// Tells every accept loop and connection that shutdown has begun.
#[derive(Clone)]
pub struct Shutdown {
    signal: watch::Receiver<bool>,
    /// The same news for a look without a wait: a load, where a look into the watch
    /// channel takes and releases its lock (connections look twice per request).
    begun: Arc<AtomicBool>,
}

/// Begins the shutdown that every [`Shutdown`] of its pair waits for.
pub struct Stop {
    signal: watch::Sender<bool>,
    begun: Arc<AtomicBool>,
}

impl Stop {
    pub fn begin(&self) {
        // The flag first: whoever is woken by the channel then sees it set too.
        self.begun.store(true, Ordering::Release);
        self.signal.send_replace(true);
    }
}

impl Shutdown {
    pub fn new() -> (Stop, Shutdown) {
        let (signal, rx) = watch::channel(false);
        let begun = Arc::new(AtomicBool::new(false));
        (
            Stop {
                signal,
                begun: begun.clone(),
            },
            Shutdown { signal: rx, begun },
        )
    }

    pub async fn wait(&mut self) {
        let _ = self.signal.wait_for(|stop| *stop).await;
    }

    /// Whether shutdown has begun.
    pub fn has_begun(&self) -> bool {
        self.begun.load(Ordering::Acquire)
    }
}

/// Counts everything that must end before the process exits: every holder keeps a
/// clone of the sender; when all are dropped, the receiver sees the channel close.
pub struct Drain {
    pub sender: mpsc::Sender<()>,
    receiver: mpsc::Receiver<()>,
}

impl Default for Drain {
    fn default() -> Self {
        let (sender, receiver) = mpsc::channel(1);
        Drain { sender, receiver }
    }
}

impl Drain {
    /// Waits until every holder is gone, or the grace period ends. Returns whether all
    /// finished.
    pub async fn wait(self, grace: Duration) -> bool {
        let Drain { sender, mut receiver } = self;
        drop(sender);
        tokio::time::timeout(grace, receiver.recv()).await.is_ok()
    }
}

/// One gateway listener (plain HTTP or HTTPS).
pub struct Listener {
    pub name: &'static str,
    pub listener: TcpListener,
    /// HTTPS: the configuration is chosen per handshake from the ClientHello's SNI.
    pub tls: Option<Arc<crate::tls::Configs>>,
    /// Every connection starts with a PROXY protocol header from a trusted proxy.
    pub proxy_protocol: bool,
}

/// Binds an address, with a message that names what failed.
pub async fn bind(name: &str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for {name} on {addr}: {e}"))
}

/// The listening sockets a service manager handed over (systemd socket activation,
/// `LISTEN_FDS`): either none, or exactly two TCP listeners, `http` then `https`
/// (unless `LISTEN_FDNAMES` is `https:http`). The sockets outlive any one process, so a
/// new process takes over from an old one without refusing a connection.
pub fn inherited_listeners() -> anyhow::Result<Option<(TcpListener, TcpListener)>> {
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() == 0 {
        return Ok(None);
    }
    if fds.len() != 2 {
        anyhow::bail!(
            "LISTEN_FDS: expected 2 inherited sockets (http, https), got {}",
            fds.len()
        );
    }
    // systemd names every socket after its unit unless told otherwise, so any other
    // names mean the declared order.
    let (http, https) = match std::env::var("LISTEN_FDNAMES").ok().as_deref() {
        Some("https:http") => (1, 0),
        _ => (0, 1),
    };
    let mut take = |index: usize, name: &str| -> anyhow::Result<TcpListener> {
        let listener = fds
            .take_tcp_listener(index)
            .map_err(|e| anyhow::anyhow!("inherited socket {index} ({name}): {e}"))?
            .ok_or_else(|| anyhow::anyhow!("inherited socket {index} ({name}) was already taken"))?;
        listener.set_nonblocking(true)?;
        Ok(TcpListener::from_std(listener)?)
    };
    Ok(Some((take(http, "http")?, take(https, "https")?)))
}

/// How connections are served. A TLS client that named its protocol with ALPN is served
/// with it directly; otherwise (plain HTTP, and TLS clients without ALPN) the first bytes
/// tell HTTP/2's preface from HTTP/1.
struct Builders {
    http1: hyper::server::conn::http1::Builder,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
    timing: h1::Timing,
}

/// A listener's connection gauges.
#[derive(Clone)]
struct Gauges {
    active: Gauge,
    parked: Gauge,
}

/// One open connection in `portcullis_active_connections`, for as long as it lives.
struct Active(Gauge);

impl Active {
    fn new(gauge: Gauge) -> Self {
        gauge.inc();
        Active(gauge)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// How long an HTTP/1 keep-alive connection stays idle before its buffers go back.
const PARK_AFTER: Duration = Duration::from_secs(1);

impl Builders {
    fn new(settings: &portcullis_config::Settings) -> Self {
        let header_timeout = settings.timeouts.client_header.0;
        let max_buf_size = usize::try_from(settings.limits.max_header_size.0)
            .unwrap_or(64 << 10)
            .max(8192);
        let max_header_list = u32::try_from(settings.limits.max_header_size.0).unwrap_or(65536);
        let mut http1 = hyper::server::conn::http1::Builder::new();
        // Both limits: hyper checks its buffer's size only while a head is incomplete,
        // so a head that arrives in one large read could pass `max_buf_size` alone.
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .max_buf_size(max_buf_size)
            .max_header_size(max_buf_size);
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(250)
            .max_header_list_size(max_header_list)
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20));
        Builders {
            http1,
            http2,
            timing: h1::Timing {
                park_after: PARK_AFTER,
                header_timeout,
            },
        }
    }
}

/// What ALPN settled on, if anything.
#[derive(Clone, Copy)]
enum Negotiated {
    Http1,
    Http2,
    Unknown,
}

impl Negotiated {
    fn from_alpn(alpn: Option<&[u8]>) -> Self {
        match alpn {
            Some(b"h2") => Negotiated::Http2,
            Some(b"http/1.1") => Negotiated::Http1,
            _ => Negotiated::Unknown,
        }
    }
}

/// Accepts connections until shutdown.
pub async fn serve(proxy: Arc<Proxy>, listener: Listener, mut shutdown: Shutdown, drain: mpsc::Sender<()>) {
    let settings = &proxy.gateway.settings;
    let handshake_timeout = settings.timeouts.client_header.0;
    let builders = Arc::new(Builders::new(settings));
    // Looked up once: the label is the listener's.
    let label = ListenerLabel {
        listener: listener.name,
    };
    let metrics = &proxy.gateway.metrics;
    let gauges = Gauges {
        active: metrics.active_connections.get_or_create(&label).clone(),
        parked: metrics.parked_connections.get_or_create(&label).clone(),
    };
    loop {
        let accepted = tokio::select! {
            accepted = listener.listener.accept() => accepted,
            () = shutdown.wait() => break,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: pause rather than spin.
                tracing::warn!(listener = listener.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let conn = Arc::new(ClientConn::new(
            peer,
            listener.tls.is_some(),
            drain.clone(),
            None,
            None,
        ));
        let task = connection(
            proxy.clone(),
            builders.clone(),
            listener.tls.clone(),
            stream,
            conn,
            shutdown.clone(),
            handshake_timeout,
            listener.name,
            listener.proxy_protocol,
            gauges.clone(),
        );
        tokio::spawn(task);
    }
    tracing::info!(listener = listener.name, "stopped accepting");
}

#[allow(clippy::too_many_arguments)]
async fn connection(
    proxy: Arc<Proxy>,
    builders: Arc<Builders>,
    tls: Option<Arc<crate::tls::Configs>>,
    mut stream: TcpStream,
    mut conn: Arc<ClientConn>,
    shutdown: Shutdown,
    handshake_timeout: Duration,
    listener: &'static str,
    proxy_protocol: bool,
    gauges: Gauges,
) {
    let _active = Active::new(gauges.active);
    if proxy_protocol {
        let trusted = &proxy.gateway.settings.trusted_proxies;
        if !trusted.iter().any(|n| n.contains(&conn.peer.ip())) {
            tracing::warn!(peer = %conn.peer, listener, "PROXY protocol connection from a peer not in trustedProxies: closed");
            return;
        }
        match Box::pin(crate::proxy_protocol::read_header(&mut stream, handshake_timeout)).await {
            Ok(Some(client)) => {
                conn = Arc::new(ClientConn::new(client, conn.tls, conn.drain.clone(), None, None))
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(peer = %conn.peer, listener, error = %e, "PROXY protocol header refused: connection closed");
                return;
            }
        }
    }
    let peer = conn.peer;
    let Some(_slot) = proxy.admit_connection(peer.ip()) else {
        tracing::debug!(%peer, listener, "connection refused: limits.maxConnectionsPerClient reached");
        proxy
            .gateway
            .metrics
            .refused_connections
            .get_or_create(&ListenerLabel { listener })
            .inc();
        return;
    };
    if tls.is_some() {
        // Every step before serving is boxed: the task keeps room for its largest step
        // for as long as the connection lives, and these are done after the handshake.
        if let Some(target) = Box::pin(passthrough_target(&proxy, &stream, handshake_timeout)).await {
            Box::pin(relay(&proxy, stream, target, &conn)).await;
            return;
        }
    }
    match tls {
        None => {
            serve_http(
                proxy,
                &builders,
                Negotiated::Unknown,
                stream,
                conn,
                shutdown,
                gauges.parked,
            )
            .await
        }
        Some(configs) => {
            // Taken apart in a `let`: a value matched on across the await below would
            // keep room for the whole handshake in the task for the connection's life.
            let (stream, server_name, client_chain) = match Box::pin(tokio::time::timeout(
                handshake_timeout,
                handshake(&configs, stream),
            ))
            .await
            {
                Ok(Ok(done)) => done,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let conn = Arc::new(ClientConn::new(
                conn.peer,
                true,
                conn.drain.clone(),
                server_name,
                client_chain,
            ));
            let protocol = Negotiated::from_alpn(stream.get_ref().1.alpn_protocol());
            // Boxed: every async function the stream passes through keeps a copy of
            // what it was given for as long as it runs; a pointer costs 8 bytes each.
            serve_http(
                proxy,
                &builders,
                protocol,
                Box::new(stream),
                conn,
                shutdown,
                gauges.parked,
            )
            .await
        }
    }
}

/// Where a TLS connection goes unterminated (ingress-nginx's `ssl-passthrough`): the
/// SNI of its ClientHello, read with `peek` so that the bytes stay for whoever handles
/// the connection, names a passthrough host. `None`: the gateway terminates it.
async fn passthrough_target(
    proxy: &Proxy,
    stream: &TcpStream,
    within: Duration,
) -> Option<(String, Result<crate::state::Upstream, String>)> {
    let runtime = proxy.gateway.runtime();
    if runtime.snapshot.passthrough.is_empty() {
        return None;
    }
    let deadline = tokio::time::Instant::now() + within;
    // A ClientHello fits in one TLS record; one larger is not ours to route.
    let mut buf = vec![0u8; 16 * 1024 + 5];
    let sni = loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return None,
        };
        let mut acceptor = rustls::server::Acceptor::default();
        let mut bytes = &buf[..n];
        while !bytes.is_empty() {
            if acceptor.read_tls(&mut bytes).is_err() {
                return None;
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => break accepted.client_hello().server_name().map(str::to_ascii_lowercase),
            // More of the ClientHello is on its way.
            Ok(None) if n < buf.len() && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            // Not TLS, or too large: the handshake reports it as usual.
            _ => return None,
        }
    }?;
    let backend = *runtime.snapshot.passthrough.get(&sni)?;
    let upstream = runtime.pick(backend, &proxy.gateway.ejections).map(|(u, _)| u);
    Some((sni, upstream))
}

/// Relays a passed-through TLS connection to its backend, byte for byte.
async fn relay(
    proxy: &Proxy,
    mut client: TcpStream,
    (sni, upstream): (String, Result<crate::state::Upstream, String>),
    conn: &ClientConn,
) {
    let peer = conn.peer;
    let upstream = match upstream {
        Ok(u) => u,
        Err(reason) => {
            tracing::warn!(%peer, sni, reason, "ssl-passthrough: no endpoint to relay to; connection closed");
            return;
        }
    };
    let within = proxy.gateway.settings.timeouts.connect.0;
    let connected = match &upstream {
        crate::state::Upstream::Address(a) => tokio::time::timeout(within, TcpStream::connect(*a)).await,
        crate::state::Upstream::Named { host, port } => {
            tokio::time::timeout(within, TcpStream::connect((host.as_str(), *port))).await
        }
    };
    let mut backend = match connected {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            tracing::warn!(%peer, sni, %upstream, error = %e, "ssl-passthrough: backend refused; connection closed");
            return;
        }
        Err(_) => {
            tracing::warn!(%peer, sni, %upstream, "ssl-passthrough: backend connect timed out; connection closed");
            return;
        }
    };
    match tokio::io::copy_bidirectional(&mut client, &mut backend).await {
        Ok((up, down)) => {
            tracing::info!(%peer, sni, %upstream, bytes_in = up, bytes_out = down, "ssl-passthrough connection done")
        }
        Err(e) => tracing::debug!(%peer, sni, %upstream, error = %e, "ssl-passthrough connection ended"),
    }
}

type Handshake = (
    tokio_rustls::server::TlsStream<h1::TlsSocket>,
    Option<String>,
    Option<Arc<crate::tls::ClientChain>>,
);

/// Reads the ClientHello first, so that the SNI name chooses the configuration (and so
/// whether a client certificate is asked for), then completes the handshake. Returns
/// the SNI name (lowercase) and the client's certificate chain, if it sent one.
async fn handshake(configs: &crate::tls::Configs, stream: TcpStream) -> std::io::Result<Handshake> {
    let stream = h1::TlsSocket(stream);
    let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await?;
    let server_name = start.client_hello().server_name().map(str::to_ascii_lowercase);
    let config = configs.for_server_name(server_name.as_deref());
    let stream = start.into_stream(config).await?;
    let client_chain = stream
        .get_ref()
        .1
        .peer_certificates()
        .filter(|c| !c.is_empty())
        .map(|c| {
            Arc::new(crate::tls::ClientChain::new(
                c.iter().map(|c| c.clone().into_owned()).collect(),
            ))
        });
    Ok((stream, server_name, client_chain))
}

async fn serve_http<I: h1::Transport>(
    proxy: Arc<Proxy>,
    builders: &Builders,
    protocol: Negotiated,
    mut io: I,
    conn: Arc<ClientConn>,
    shutdown: Shutdown,
    parked: Gauge,
) {
    let peer = conn.peer;
    let timing = builders.timing;
    let (http2, unread) = match protocol {
        Negotiated::Http1 => (false, Bytes::new()),
        Negotiated::Http2 => (true, Bytes::new()),
        Negotiated::Unknown => match sniff(&mut io, timing.header_timeout).await {
            Ok(sniffed) => sniffed,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "no request");
                return;
            }
        },
    };
    if http2 {
        // Told when the first request arrives.
        let first_request = Arc::new(tokio::sync::Notify::new());
        let arrived = first_request.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            arrived.notify_one();
            // Boxed: h2 moves each stream's future several times before it runs (3.9k
            // instructions of memcpy per request when the whole future was inline).
            boxed(|| handler::handle(proxy.clone(), conn.clone(), req.map(ClientBody::new)))
        });
        let io = TokioIo::new(h1::ClientStream::new(io, unread));
        // Made and boxed outside this future, which would otherwise keep room for it.
        let connection = boxed(|| builders.http2.serve_connection(io, service));
        let served = Served {
            shutdown,
            header_timeout: timing.header_timeout,
            first_request,
            peer,
        };
        return served.drive(connection, |c| c.graceful_shutdown()).await;
    }
    // Boxed: hyper keeps the request's future only while it is in flight, and taking a
    // connection back from hyper needs a future that can move.
    let service = service_fn(move |req| boxed(|| handler::handle(proxy.clone(), conn.clone(), req)));
    h1::serve(
        &builders.http1,
        io,
        unread,
        service,
        timing,
        shutdown,
        peer,
        parked,
    )
    .await;
}

/// Makes a value on the heap, out of any async function's state, and in place: a
/// future is as large as its largest state (a request's, several KB), and
/// `Box::pin(make())` would copy all of it from the stack though it starts with only
/// its arguments (about 500 instructions per request).
#[inline(never)]
fn boxed<T>(make: impl FnOnce() -> T) -> Pin<Box<T>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}

/// Reads until the first bytes tell HTTP/2's connection preface from HTTP/1, as
/// hyper-util's `auto` does; returns whether it is HTTP/2, and the bytes read.
async fn sniff<I: AsyncRead + Unpin>(io: &mut I, within: Duration) -> std::io::Result<(bool, Bytes)> {
    const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut buf = [0u8; 24];
    let mut n = 0;
    let read = async {
        while n < PREFACE.len() {
            let got = io.read(&mut buf[n..]).await?;
            n += got;
            if got == 0 || buf[..n] != PREFACE[..n] {
                break;
            }
        }
        Ok::<_, std::io::Error>(())
    };
    match tokio::time::timeout(within, read).await {
        Ok(read) => read?,
        Err(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "nothing sent within the header timeout",
            ))
        }
    }
    Ok((buf[..n] == PREFACE[..], Bytes::copy_from_slice(&buf[..n])))
}

/// Runs one HTTP/2 connection to its end, and through a graceful shutdown (`h1::run`
/// does the same for HTTP/1, which it also parks).
struct Served {
    shutdown: Shutdown,
    header_timeout: Duration,
    first_request: Arc<tokio::sync::Notify>,
    peer: SocketAddr,
}

impl Served {
    /// The connection is boxed: its state is as large as its protocol needs, and the
    /// task that holds it stays small.
    async fn drive<C, E>(mut self, mut connection: Pin<Box<C>>, graceful: impl FnOnce(Pin<&mut C>))
    where
        C: std::future::Future<Output = Result<(), E>>,
        E: std::fmt::Display,
    {
        let result = tokio::select! {
            result = connection.as_mut() => result,
            () = self.shutdown.wait() => {
                // A connection accepted just now has its first request on the way;
                // closing it as idle would fail that request, so it gets until the header
                // timeout to arrive (bounded by the shutdown grace like everything else).
                let waited = tokio::select! {
                    result = connection.as_mut() => Some(result),
                    _ = tokio::time::timeout(self.header_timeout, self.first_request.notified()) => None,
                };
                match waited {
                    Some(result) => result,
                    None => {
                        // Finish the requests in flight, then close (GOAWAY on HTTP/2).
                        graceful(connection.as_mut());
                        connection.await
                    }
                }
            }
        };
        if let Err(e) = result {
            tracing::debug!(peer = %self.peer, error = %e, "connection ended with an error");
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C, naming which.
pub async fn termination_signal() -> &'static str {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return "interrupt";
            }
        };
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = tokio::signal::ctrl_c() => "interrupt",
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "interrupt"
    }
}
