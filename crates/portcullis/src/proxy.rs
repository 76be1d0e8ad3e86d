//! Talking to backends: pooled hyper clients per backend protocol, the header rules of
//! a reverse proxy (hop-by-hop removal, forwarding headers, identity stripping), body
//! wrappers for size limits and read timeouts, and WebSocket/Upgrade tunnels.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use portcullis_config::snapshot::{BackendProtocol, BackendTls};
use portcullis_config::Settings;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::DigitallySignedStruct;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::time::{Instant, Sleep};

use crate::pool::{Pool, SendError, UpstreamBody};
use crate::state::Upstream;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every request and response the gateway produces.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A body from bytes (local responses).
pub fn full(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> Body {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

type TlsClient = Client<HttpsConnector<HttpConnector>, Body>;

/// One attempt at a request: encoded for [`Pool`], to an endpoint address, or for one
/// of hyper-util's clients.
pub enum Attempt {
    Pooled(SocketAddr, crate::exchange::Outgoing),
    Request(http::Request<Body>),
}

/// Pooled clients, one per way of speaking to a backend.
pub struct Upstreams {
    /// Plain HTTP/1.1 to endpoint addresses: most requests.
    pool: Pool,
    /// Plain HTTP/1.1 to names (ExternalName Services).
    http1: Client<HttpConnector, Body>,
    h2c: Client<HttpConnector, Body>,
    https: TlsClient,
    h2_tls: TlsClient,
    /// Routes with `proxy-ssl-*` annotations: one pool per distinct TLS configuration
    /// and server name, built on first use. Keyed by content rather than by `Arc`, so a
    /// reload that leaves the configuration alone keeps its connections.
    configured: std::sync::Mutex<std::collections::HashMap<TlsPoolKey, TlsClient>>,
    tcp: HttpConnector,
    pool_idle_timeout: Duration,
}

#[derive(PartialEq, Eq, Hash)]
struct TlsPoolKey {
    tls: Arc<BackendTls>,
    server_name: String,
    h2_only: bool,
}

/// More distinct configurations than this means old ones (rotated Secrets) pile up:
/// the cache is emptied and rebuilt from what is still in use.
const MAX_CONFIGURED_POOLS: usize = 256;

impl Upstreams {
    pub fn new(settings: &Settings) -> Result<Self, rustls::Error> {
        let mut tcp = HttpConnector::new();
        tcp.set_connect_timeout(Some(settings.timeouts.connect.0));
        tcp.set_nodelay(true);
        tcp.set_keepalive(Some(Duration::from_secs(60)));
        tcp.enforce_http(false);
        let builder = |h2_only: bool| {
            let mut b = Client::builder(TokioExecutor::new());
            b.pool_idle_timeout(settings.timeouts.upstream_idle.0)
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .pool_max_idle_per_host(256)
                .http2_only(h2_only);
            b
        };
        // hyper-rustls sets ALPN from the versions enabled below.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
            .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls.clone())
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(tcp.clone());
        let h2_tls = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http2()
            .wrap_connector(tcp.clone());
        Ok(Upstreams {
            pool: Pool::new(
                settings.timeouts.connect.0,
                settings.timeouts.read.0,
                settings.timeouts.upstream_idle.0,
                256,
            ),
            http1: builder(false).build(tcp.clone()),
            h2c: builder(true).build(tcp.clone()),
            https: builder(false).build(https),
            h2_tls: builder(true).build(h2_tls),
            configured: std::sync::Mutex::default(),
            tcp,
            pool_idle_timeout: settings.timeouts.upstream_idle.0,
        })
    }

    /// Sends a request over TLS configured by the route's `proxy-ssl-*` annotations.
    /// `service_name` (`SERVICE.NAMESPACE.svc`) is the name verified when the route
    /// sets no `proxy-ssl-name`. Fails only if the configuration cannot be built, which
    /// the compiler's checks should have made impossible.
    pub fn send_tls(
        &self,
        protocol: BackendProtocol,
        tls: &Arc<BackendTls>,
        service_name: &str,
        request: http::Request<Body>,
    ) -> Result<hyper_util::client::legacy::ResponseFuture, rustls::Error> {
        let key = TlsPoolKey {
            tls: tls.clone(),
            server_name: tls
                .server_name
                .clone()
                .unwrap_or_else(|| service_name.to_string()),
            h2_only: protocol.is_h2_only(),
        };
        let mut pools = self.configured.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = pools.get(&key) {
            return Ok(client.request(request));
        }
        let client = self.configured_client(&key)?;
        if pools.len() >= MAX_CONFIGURED_POOLS {
            pools.clear();
        }
        let future = client.request(request);
        pools.insert(key, client);
        Ok(future)
    }

    fn configured_client(&self, key: &TlsPoolKey) -> Result<TlsClient, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = &key.tls;
        let mut versions: Vec<&'static rustls::SupportedProtocolVersion> = Vec::new();
        if tls.versions.tls13 {
            versions.push(&rustls::version::TLS13);
        }
        if tls.versions.tls12 {
            versions.push(&rustls::version::TLS12);
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)?;
        let builder = if tls.verify {
            let mut roots = rustls::RootCertStore::empty();
            for cert in &tls.ca {
                roots.add(cert.clone())?;
            }
            let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider.clone(),
            )
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(DepthLimited {
                    inner,
                    ca: tls.ca.clone(),
                    depth: tls.verify_depth,
                }))
        } else {
            // proxy-ssl-verify: off, as ingress-nginx: encrypted, the client
            // certificate presented, the backend's certificate not checked.
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
        };
        let mut config = match &tls.client_cert {
            Some(cert) => builder.with_client_auth_cert(cert.chain.clone(), cert.key.clone_key())?,
            None => builder.with_no_client_auth(),
        };
        // nginx's proxy_ssl_server_name off (the default) sends no SNI; the name is
        // still what the certificate is verified against.
        config.enable_sni = tls.send_sni;
        let name = ServerName::try_from(key.server_name.clone())
            .map_err(|e| rustls::Error::General(format!("server name {:?}: {e}", key.server_name)))?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_only()
            .with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name));
        let connector = if key.h2_only {
            connector.enable_http2().wrap_connector(self.tcp.clone())
        } else {
            connector.enable_all_versions().wrap_connector(self.tcp.clone())
        };
        let mut b = Client::builder(TokioExecutor::new());
        b.pool_idle_timeout(self.pool_idle_timeout)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_max_idle_per_host(256)
            .http2_only(key.h2_only);
        Ok(b.build(connector))
    }

    /// The endpoint address whose connections [`Pool`] keeps, when a request for
    /// `upstream` goes there; its URI is then in origin form.
    pub fn pooled(protocol: BackendProtocol, upstream: &Upstream) -> Option<SocketAddr> {
        match (protocol, upstream) {
            (BackendProtocol::Http, Upstream::Address(addr)) => Some(*addr),
            _ => None,
        }
    }

    /// Sends one attempt: on [`Pool`], or on the hyper-util client for its protocol.
    /// Its response head must come `within` that long, connecting included.
    pub async fn send(
        &self,
        protocol: BackendProtocol,
        attempt: Attempt,
        within: Duration,
    ) -> Result<http::Response<UpstreamBody>, UpstreamError> {
        let request = match attempt {
            // The request carries `Host`: the handler sets it on every request.
            Attempt::Pooled(addr, mut outgoing) => {
                outgoing.answer_within = Some(within);
                return self.pool.send_encoded(addr, outgoing).await.map_err(|e| match e {
                    SendError::NoAnswer(within) => UpstreamError::NoAnswer(within),
                    e => UpstreamError::Pooled(e),
                });
            }
            Attempt::Request(request) => request,
        };
        let sent = match protocol {
            BackendProtocol::Http => self.http1.request(request),
            BackendProtocol::H2c | BackendProtocol::Grpc => self.h2c.request(request),
            BackendProtocol::Https => self.https.request(request),
            BackendProtocol::Grpcs => self.h2_tls.request(request),
        };
        unpooled(sent, within).await
    }
}

/// The response of one of hyper-util's clients, as the pool's, if it comes `within`.
pub async fn unpooled(
    sent: hyper_util::client::legacy::ResponseFuture,
    within: Duration,
) -> Result<http::Response<UpstreamBody>, UpstreamError> {
    match tokio::time::timeout(within, sent).await {
        Ok(sent) => sent
            .map(|r| r.map(UpstreamBody::unpooled))
            .map_err(UpstreamError::Client),
        Err(_) => Err(UpstreamError::NoAnswer(within)),
    }
}

/// Why a request got no response from the backend.
#[derive(Debug)]
pub enum UpstreamError {
    Client(hyper_util::client::legacy::Error),
    Pooled(SendError),
    /// No response head within the route's read timeout, connecting included.
    NoAnswer(Duration),
}

impl UpstreamError {
    fn is_connect(&self) -> bool {
        match self {
            UpstreamError::Client(e) => e.is_connect(),
            UpstreamError::Pooled(e) => matches!(e, SendError::Connect(_)),
            UpstreamError::NoAnswer(_) => false,
        }
    }

    fn inner(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            UpstreamError::Client(e) => Some(e),
            UpstreamError::Pooled(e) => Some(e),
            UpstreamError::NoAnswer(_) => None,
        }
    }
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.inner() {
            Some(inner) => std::fmt::Display::fmt(inner, f),
            None => f.write_str("no response in time"),
        }
    }
}

impl std::error::Error for UpstreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner().and_then(|e| e.source())
    }
}

/// Backend TLS encrypts and checks handshake signatures, but does not verify the
/// backend's certificate chain: in-cluster backends use private CAs that the gateway
/// has not been given (ingress-nginx's default, `proxy-ssl-verify: off`, likewise).
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The web PKI's verification of a backend's certificate against `proxy-ssl-trusted-
/// certificate`, and `proxy-ssl-verify-depth` on top: at most `depth` intermediate
/// certificates between the backend's and the CA's, as nginx's `proxy_ssl_verify_depth`
/// with OpenSSL 3.
#[derive(Debug)]
struct DepthLimited {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    ca: Vec<CertificateDer<'static>>,
    depth: u32,
}

impl ServerCertVerifier for DepthLimited {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        let allowed = crate::tls::max_intermediates(self.depth);
        if intermediates.len() > allowed
            && !crate::tls::short_path_exists(
                end_entity,
                intermediates,
                &self.ca,
                webpki::KeyUsage::server_auth(),
                allowed,
            )
        {
            return Err(rustls::Error::General(format!(
                "certificate chain too long (proxy-ssl-verify-depth {})",
                self.depth
            )));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Headers that describe one connection, never forwarded (RFC 9110 section 7.6.1).
/// As `HeaderName`s, not strings: a string name is parsed on every lookup.
const HOP_BY_HOP_LEN: usize = 9;
static HOP_BY_HOP: [HeaderName; HOP_BY_HOP_LEN] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The position of `name` (lowercase, as `HeaderName::as_str` gives it) in
/// [`HOP_BY_HOP`]: one string match instead of nine `HeaderName` comparisons per header.
fn hop_by_hop_index(name: &str) -> Option<usize> {
    Some(match name {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "proxy-authenticate" => 3,
        "proxy-authorization" => 4,
        "te" => 5,
        "trailer" => 6,
        "transfer-encoding" => 7,
        "upgrade" => 8,
        _ => return None,
    })
}

/// Removes hop-by-hop headers, including every header the `Connection` header names.
/// Allocates nothing in the usual case (`Connection: keep-alive` or `close`): every
/// message through the gateway, request and response, goes through here.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // One pass to find the fixed set: a removal (or a lookup of `Connection`) costs a
    // hash, and most messages carry one of them at most.
    let mut present = [false; HOP_BY_HOP_LEN];
    for key in headers.keys() {
        if let Some(i) = hop_by_hop_index(key.as_str()) {
            present[i] = true;
        }
    }
    // Names Connection lists beyond its options and the fixed hop-by-hop set.
    // Read as bytes: a value with a byte that is not text still names its fields.
    if present[0] {
        let mut listed: Vec<HeaderName> = Vec::new();
        for token in headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
        {
            let fixed = token.eq_ignore_ascii_case(b"close")
                || HOP_BY_HOP
                    .iter()
                    .any(|h| token.eq_ignore_ascii_case(h.as_str().as_bytes()));
            if !fixed {
                if let Ok(name) = HeaderName::from_bytes(token) {
                    listed.push(name);
                }
            }
        }
        for name in listed {
            headers.remove(name);
        }
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
        headers.remove(name);
    }
}

/// Identity headers only the gateway may set; whatever a client sends under these
/// names (in any case, with `_` or `-`) is dropped.
const IDENTITY_PREFIXES: &[&str] = &[
    // ingress-nginx's client certificate headers (auth-tls-*): a backend may trust
    // them on any route, so a client never gets to send its own.
    "ssl-client-",
    "x-portcullis-",
    "x-auth-request-",
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-groups",
    "x-forwarded-preferred-username",
    "x-remote-user",
    "remote-user",
];

/// Drops identity headers a client tried to supply.
pub fn strip_identity_headers(headers: &mut HeaderMap) {
    // Names are lowercase already; `_` and `-` count as the same character.
    let forged = |name: &HeaderName| {
        let name = name.as_str().as_bytes();
        IDENTITY_PREFIXES.iter().any(|prefix| {
            name.len() >= prefix.len()
                && name
                    .iter()
                    .zip(prefix.as_bytes())
                    .all(|(&n, &p)| n == p || (n == b'_' && p == b'-'))
        })
    };
    if !headers.keys().any(forged) {
        return;
    }
    let doomed: Vec<HeaderName> = headers.keys().filter(|k| forged(k)).cloned().collect();
    for name in doomed {
        headers.remove(name);
    }
}

/// The gateway's own cookies (session, login) start with this.
const OURS: &[u8] = b"__Host-portcullis-";

/// The client's cookies as a backend (or an auth service) gets them: without the
/// gateway's own, and in one field when `join` (HTTP/1.1; see [`join_cookies`]). One
/// lookup when there is nothing to change, as for most requests.
pub fn prepare_cookies(headers: &mut HeaderMap, join: bool) {
    let cookies = headers.get_all(header::COOKIE);
    let several = cookies.iter().nth(1).is_some();
    let mentions_ours = cookies
        .iter()
        .any(|v| v.as_bytes().windows(OURS.len()).any(|w| w == OURS));
    if mentions_ours {
        drop_gateway_cookies(headers);
    } else if join && several {
        join_cookies(headers);
    }
}

/// Rewrites the cookies without the gateway's own, in one field (none if nothing is
/// left).
fn drop_gateway_cookies(headers: &mut HeaderMap) {
    let mut kept = String::new();
    let pairs = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|c| !c.is_empty() && !c.as_bytes().starts_with(OURS));
    for pair in pairs {
        if !kept.is_empty() {
            kept.push_str("; ");
        }
        kept.push_str(pair);
    }
    headers.remove(header::COOKIE);
    if !kept.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&kept) {
            headers.insert(header::COOKIE, v);
        }
    }
}

/// The identity headers backends read (the oauth2-proxy / ingress-nginx convention).
/// The email is passed only when the provider verified it.
pub fn set_identity_headers(headers: &mut HeaderMap, identity: &crate::auth::Identity) {
    let values = identity
        .upstream_headers
        .0
        .get_or_init(|| identity_headers(identity));
    for (name, value) in values {
        headers.insert(name.clone(), value.clone());
    }
}

/// An identity's headers, made when first sent and then reused: a session's identity is
/// shared by every request of the session.
#[derive(Debug, Default)]
pub struct UpstreamHeaders(std::sync::OnceLock<Vec<(HeaderName, HeaderValue)>>);

/// A copy starts empty: whoever clones an identity may change it before it is sent.
impl Clone for UpstreamHeaders {
    fn clone(&self) -> Self {
        UpstreamHeaders::default()
    }
}

impl PartialEq for UpstreamHeaders {
    /// Derived from the identity's other fields: never a difference of its own.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

fn identity_headers(identity: &crate::auth::Identity) -> Vec<(HeaderName, HeaderValue)> {
    const USER: HeaderName = HeaderName::from_static("x-auth-request-user");
    const EMAIL: HeaderName = HeaderName::from_static("x-auth-request-email");
    const GROUPS: HeaderName = HeaderName::from_static("x-auth-request-groups");
    const PREFERRED_USERNAME: HeaderName = HeaderName::from_static("x-auth-request-preferred-username");
    let mut out = Vec::with_capacity(4);
    let mut set = |name: HeaderName, value: &str| {
        let clean: std::borrow::Cow<str> = if value.chars().any(char::is_control) {
            value
                .chars()
                .filter(|c| !c.is_control())
                .collect::<String>()
                .into()
        } else {
            value.into()
        };
        if let Ok(v) = HeaderValue::from_str(&clean) {
            out.push((name, v));
        }
    };
    set(USER, &identity.subject);
    if let (Some(email), true) = (&identity.email, identity.email_verified) {
        set(EMAIL, email);
    }
    if !identity.groups.is_empty() {
        set(GROUPS, &identity.groups.join(","));
    }
    if let Some(name) = &identity.name {
        set(PREFERRED_USERNAME, name);
    }
    out
}

/// Whether the `Connection` header lists `token` (any case, any of its fields).
pub fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    // As bytes, as `remove_hop_by_hop` reads it.
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Whether a request asks for a protocol upgrade (WebSocket and the like).
pub fn upgrade_requested(headers: &HeaderMap) -> Option<HeaderValue> {
    if connection_has(headers, "upgrade") {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

/// HTTP/2 clients may split `cookie` across several fields; an HTTP/1.1 backend
/// expects one (RFC 9113 section 8.2.3).
fn join_cookies(headers: &mut HeaderMap) {
    if headers.get_all(header::COOKIE).iter().nth(1).is_none() {
        return;
    }
    let joined: Vec<u8> = headers
        .get_all(header::COOKIE)
        .iter()
        .map(|v| v.as_bytes())
        .collect::<Vec<_>>()
        .join(&b"; "[..]);
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

/// Counts the bytes of a request body as they pass (for the audit log).
pub struct Counted<B> {
    inner: B,
    count: Arc<std::sync::atomic::AtomicU64>,
}

impl<B> Counted<B> {
    pub fn new(inner: B, count: Arc<std::sync::atomic::AtomicU64>) -> Self {
        Counted { inner, count }
    }
}

impl<B> HttpBody for Counted<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.count
                        .fetch_add(d.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Fails a body when its sender sends nothing for `timeout` while it is being waited
/// for (nginx's `proxy_read_timeout` and `client_body_timeout`: the time between two
/// reads, not the whole transfer). Time the reader spends not asking (backpressure
/// from a slow receiver on the other side) does not count.
pub struct ReadTimeout<B> {
    inner: B,
    timeout: Duration,
    sender: Sender,
    /// Made at the first poll that finds nothing: most small bodies never wait.
    sleep: Option<Pin<Box<Sleep>>>,
    /// The timer runs from the first poll that found nothing.
    armed: bool,
}

impl<B> ReadTimeout<B> {
    pub fn new(inner: B, timeout: Duration, sender: Sender) -> Self {
        ReadTimeout {
            inner,
            timeout,
            sender,
            sleep: None,
            armed: false,
        }
    }
}

/// Who sends the body a [`ReadTimeout`] watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    Backend,
    Client,
}

/// The sender stopped sending in the middle of a body.
#[derive(Debug, thiserror::Error)]
#[error("the {} sent nothing for {after:?}", match .sender { Sender::Backend => "backend", Sender::Client => "client" })]
pub struct ReadTimedOut {
    pub sender: Sender,
    pub after: Duration,
}

impl<B> HttpBody for ReadTimeout<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.armed = false;
                Poll::Ready(frame.map(|r| r.map_err(Into::into)))
            }
            Poll::Pending => {
                if !this.armed {
                    this.armed = true;
                    let deadline = Instant::now() + this.timeout;
                    match this.sleep.as_mut() {
                        Some(sleep) => sleep.as_mut().reset(deadline),
                        None => this.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                }
                let Some(sleep) = this.sleep.as_mut() else {
                    return Poll::Pending; // armed above
                };
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(ReadTimedOut {
                        sender: this.sender,
                        after: this.timeout,
                    })))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Why forwarding failed, for the status code and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// Could not connect (refused, unreachable): 502.
    Connect,
    /// Connecting or the response took too long: 504.
    Timeout,
    /// The request body was larger than allowed: 413.
    BodyTooLarge,
    /// The client's request body failed (client went away): 400.
    ClientBody,
    /// The client paused its request body for longer than `timeouts.clientBody`: 408.
    ClientTimeout,
    /// The backend broke the protocol or closed early: 502.
    Protocol,
    /// The TLS handshake failed over certificates: the backend's did not verify, or
    /// the backend refused ours (an alert). 502; the endpoint is not ejected, since it
    /// is reachable and other routes may not verify it.
    Tls,
}

impl UpstreamFailure {
    pub fn classify(err: &UpstreamError) -> Self {
        let mut source = err.inner();
        let mut timed_out = false;
        let mut too_large = false;
        let mut body_error = false;
        let mut client_timeout = false;
        let mut tls = false;
        while let Some(e) = source {
            client_timeout |= e
                .downcast_ref::<ReadTimedOut>()
                .is_some_and(|t| t.sender == Sender::Client);
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                timed_out |= io.kind() == std::io::ErrorKind::TimedOut;
                tls |= certificate_failure(io);
            }
            too_large |= e.is::<http_body_util::LengthLimitError>();
            if let Some(h) = e.downcast_ref::<hyper::Error>() {
                body_error |= h.is_body_write_aborted() || h.is_user();
            }
            body_error |= matches!(
                e.downcast_ref::<crate::exchange::ExchangeError>(),
                Some(crate::exchange::ExchangeError::Body(_))
            );
            timed_out |= e.to_string().contains("timed out");
            source = e.source();
        }
        if too_large {
            UpstreamFailure::BodyTooLarge
        } else if client_timeout {
            UpstreamFailure::ClientTimeout
        } else if tls {
            UpstreamFailure::Tls
        } else if err.is_connect() && timed_out {
            UpstreamFailure::Timeout
        } else if err.is_connect() {
            UpstreamFailure::Connect
        } else if body_error {
            UpstreamFailure::ClientBody
        } else {
            UpstreamFailure::Protocol
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            UpstreamFailure::Connect => "connect",
            UpstreamFailure::Timeout => "timeout",
            UpstreamFailure::BodyTooLarge => "body_too_large",
            UpstreamFailure::ClientBody => "client_body",
            UpstreamFailure::ClientTimeout => "client_timeout",
            UpstreamFailure::Protocol => "protocol",
            UpstreamFailure::Tls => "tls",
        }
    }
}

/// Whether an I/O error is a TLS handshake that failed over certificates. io::Error's
/// source() skips the error it wraps, and the rustls error sits inside two of them
/// (tokio-rustls wraps it, hyper-rustls wraps that), so the wrapped ones are opened.
fn certificate_failure(io: &std::io::Error) -> bool {
    let mut inner = io.get_ref();
    while let Some(e) = inner {
        if let Some(t) = e.downcast_ref::<rustls::Error>() {
            return matches!(
                t,
                rustls::Error::InvalidCertificate(_) | rustls::Error::AlertReceived(_)
            );
        }
        inner = e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref);
    }
    false
}

/// The backend's side of a response that switched protocols: from the pool's own
/// connection, or from hyper-util's.
pub fn switched(
    response: &mut http::Response<UpstreamBody>,
) -> impl std::future::Future<Output = Result<crate::h1::Upgraded, BoxError>> + Send + 'static {
    let own = response.extensions_mut().remove::<crate::pool::Switched>();
    let hyper = own.is_none().then(|| hyper::upgrade::on(response));
    async move {
        if let Some(own) = own {
            let io = own.take().ok_or("the backend connection was already taken")?;
            return Ok(Box::new(io) as crate::h1::Upgraded);
        }
        match hyper {
            Some(upgrade) => {
                Ok(Box::new(hyper_util::rt::TokioIo::new(upgrade.await?)) as crate::h1::Upgraded)
            }
            None => Err("no backend connection to switch".into()),
        }
    }
}

/// Joins a client connection and a backend connection after both switched protocols,
/// and copies bytes both ways until either side closes. The drain guard keeps
/// graceful shutdown waiting for the tunnel.
pub fn spawn_tunnel(
    client: tokio::sync::oneshot::Receiver<crate::h1::Upgraded>,
    backend: impl std::future::Future<Output = Result<crate::h1::Upgraded, BoxError>> + Send + 'static,
    drain: tokio::sync::mpsc::Sender<()>,
) {
    tokio::spawn(async move {
        let _drain = drain;
        let client = async {
            client
                .await
                .map_err(|_| "the client connection closed before switching".into())
        };
        match tokio::try_join!(client, backend) {
            Ok((mut client, mut backend)) => {
                if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut backend).await {
                    tracing::debug!(error = %e, "upgraded connection ended");
                }
            }
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hop_by_hop_index_follows_the_list() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name.as_str()), Some(i), "{name}");
        }
        assert_eq!(hop_by_hop_index("content-length"), None);
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, X-Secret, close, Upgrade"),
        );
        h.append("connection", HeaderValue::from_static("x-other-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-other-secret", HeaderValue::from_static("1"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
        // A byte that is not text elsewhere in the value does not hide a name.
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_bytes(b"X-Internal, \x80").unwrap(),
        );
        h.insert("x-internal", HeaderValue::from_static("secret"));
        remove_hop_by_hop(&mut h);
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn identity_headers_from_clients_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert("x-auth-request-user", HeaderValue::from_static("admin"));
        h.insert("x-portcullis-email", HeaderValue::from_static("a@b"));
        h.insert("remote-user", HeaderValue::from_static("root"));
        h.insert(
            "x_auth_request_email",
            HeaderValue::from_static("root@example.com"),
        );
        h.insert("X-AUTH-REQUEST-GROUPS", HeaderValue::from_static("admins"));
        h.insert("x-other", HeaderValue::from_static("ok"));
        strip_identity_headers(&mut h);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn gateway_cookies_never_reach_backends() {
        let mut h = HeaderMap::new();
        h.append(
            "cookie",
            HeaderValue::from_static("a=1; __Host-portcullis-session=secret"),
        );
        h.append(
            "cookie",
            HeaderValue::from_static("__Host-portcullis-session.1=more; b=2"),
        );
        prepare_cookies(&mut h, false);
        assert_eq!(h.get("cookie").unwrap(), "a=1; b=2");
        let mut h = HeaderMap::new();
        h.append("cookie", HeaderValue::from_static("__Host-portcullis-login=x"));
        prepare_cookies(&mut h, false);
        assert!(!h.contains_key("cookie"));
        // Without a cookie of ours, the headers are left exactly as they came.
        let mut h = HeaderMap::new();
        h.append("cookie", HeaderValue::from_static("a=1;b=2"));
        h.append("cookie", HeaderValue::from_static("portcullis-session=theirs"));
        prepare_cookies(&mut h, false);
        let left: Vec<_> = h.get_all("cookie").iter().collect();
        assert_eq!(left, ["a=1;b=2", "portcullis-session=theirs"]);
        // A value that is not visible ASCII and carries ours is dropped whole.
        let mut h = HeaderMap::new();
        h.append(
            "cookie",
            HeaderValue::from_bytes(b"a=\xff; __Host-portcullis-session=s").unwrap(),
        );
        prepare_cookies(&mut h, false);
        assert!(!h.contains_key("cookie"));
    }

    #[test]
    fn identity_headers_are_clean_and_made_once() {
        let identity = crate::auth::Identity {
            provider: "corp".into(),
            subject: "ali\r\nce".into(),
            email: Some("alice@example.com".into()),
            email_verified: false,
            groups: vec!["dev".into(), "ops".into()],
            name: Some("Alice\u{7f}".into()),
            claims: Default::default(),
            method: crate::auth::AuthMethod::Session,
            upstream_headers: Default::default(),
        };
        for _ in 0..2 {
            let mut h = HeaderMap::new();
            h.insert("x-auth-request-user", HeaderValue::from_static("forged"));
            set_identity_headers(&mut h, &identity);
            assert_eq!(h["x-auth-request-user"], "alice");
            assert_eq!(h.get_all("x-auth-request-user").iter().count(), 1);
            assert_eq!(h["x-auth-request-groups"], "dev,ops");
            assert_eq!(h["x-auth-request-preferred-username"], "Alice");
            // Unverified: not passed on.
            assert!(!h.contains_key("x-auth-request-email"));
        }
        assert_eq!(identity.upstream_headers.0.get().map(Vec::len), Some(3));
        // A copy may be changed before it is sent: it makes its own.
        let mut other = identity.clone();
        other.subject = "bob".into();
        let mut h = HeaderMap::new();
        set_identity_headers(&mut h, &other);
        assert_eq!(h["x-auth-request-user"], "bob");
    }

    #[test]
    fn backend_chains_are_held_to_proxy_ssl_verify_depth() {
        use crate::tls::tests::ca;
        let root = ca("root", None);
        let middle = ca("middle", Some(&root));
        let lower = ca("lower", Some(&middle));
        let params = rcgen::CertificateParams::new(vec!["app.ns.svc".to_string()]).unwrap();
        let leaf = params
            .signed_by(&rcgen::KeyPair::generate().unwrap(), &lower)
            .unwrap()
            .der()
            .clone();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = |depth: u32| {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(root.der().clone()).unwrap();
            DepthLimited {
                inner: rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider.clone(),
                )
                .build()
                .unwrap(),
                ca: vec![root.der().clone()],
                depth,
            }
        };
        let name = ServerName::try_from("app.ns.svc").unwrap();
        let verify = |depth: u32, name: &ServerName<'_>| {
            verifier(depth)
                .verify_server_cert(
                    &leaf,
                    &[lower.der().clone(), middle.der().clone()],
                    name,
                    &[],
                    UnixTime::now(),
                )
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        assert_eq!(verify(2, &name), Ok(()));
        let refused = verify(1, &name).unwrap_err();
        assert!(
            refused.contains("certificate chain too long (proxy-ssl-verify-depth 1)"),
            "{refused}"
        );
        // The name is still checked first.
        let wrong = ServerName::try_from("db.ns.svc").unwrap();
        assert!(!verify(2, &wrong).unwrap_err().contains("too long"));
    }

    #[test]
    fn upgrades_need_both_headers() {
        let mut h = HeaderMap::new();
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        assert!(upgrade_requested(&h).is_none());
        h.insert("connection", HeaderValue::from_static("keep-alive, Upgrade"));
        assert_eq!(upgrade_requested(&h), Some(HeaderValue::from_static("websocket")));
    }

    #[test]
    fn cookies_are_joined_for_http1() {
        let mut h = HeaderMap::new();
        h.append("cookie", HeaderValue::from_static("a=1"));
        h.append("cookie", HeaderValue::from_static("b=2"));
        join_cookies(&mut h);
        assert_eq!(h.get("cookie").unwrap(), "a=1; b=2");
        // As the handler prepares them: joined for HTTP/1.1, left split for HTTP/2,
        // and without the gateway's own either way.
        let split = || {
            let mut h = HeaderMap::new();
            h.append("cookie", HeaderValue::from_static("a=1"));
            h.append("cookie", HeaderValue::from_static("b=2"));
            h
        };
        let mut h = split();
        prepare_cookies(&mut h, true);
        assert_eq!(h.get_all("cookie").iter().collect::<Vec<_>>(), ["a=1; b=2"]);
        let mut h = split();
        prepare_cookies(&mut h, false);
        assert_eq!(h.get_all("cookie").iter().collect::<Vec<_>>(), ["a=1", "b=2"]);
        for join in [true, false] {
            let mut h = split();
            h.append("cookie", HeaderValue::from_static("__Host-portcullis-session=s"));
            prepare_cookies(&mut h, join);
            assert_eq!(h.get_all("cookie").iter().collect::<Vec<_>>(), ["a=1; b=2"]);
        }
    }
}
