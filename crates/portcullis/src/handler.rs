//! The request path, top to bottom, as plain function calls:
//! load snapshot once -> check framing -> host -> normalize path -> match route ->
//! redirect to HTTPS -> (authenticate, authorize: later) -> limits -> pick endpoint ->
//! forward upstream -> response -> access log and metrics.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use portcullis_config::client_auth::{escaped_pem, CertNames, VerifyClient};
use portcullis_config::path;
use portcullis_config::routes::{normalize_host, HostMatch, Route};
use portcullis_config::snapshot::{Affinity, AffinityMode, AuthMode, BackendId, BackendProtocol};

use std::sync::atomic::{AtomicU64, Ordering};

use crate::audit::{AccessEvent, AuditIdentity, AuditRoute};
use crate::auth::external::{Grant, Outcome};
use crate::auth::{Auth, Decision, Identity, RequestFacts};
use crate::exchange;
use crate::h1::{ClientBody, UpgradeSlot};
use crate::limits::{ConcurrencyLimiter, GlobalLimiter, RateLimiter, Slot};
use crate::metrics::{IngressLabel, IngressName, UpstreamErrorLabels};
use crate::pool::UpstreamBody;
use crate::proxy::{self, Attempt, Body, ReadTimeout, UpstreamError, UpstreamFailure, Upstreams};
use crate::state::{Gateway, Runtime, Upstream};
use crate::sticky::Balance;
use portcullis_config::policy;
use portcullis_config::snapshot::RateLimitKey;

/// The gateway's own endpoints live under this prefix on every host; never forwarded.
pub const RESERVED_PREFIX: &str = "/.portcullis/";

/// What the handler knows about the client connection.
pub struct ClientConn {
    pub peer: SocketAddr,
    pub tls: bool,
    /// Held by everything that must finish before shutdown completes.
    pub drain: tokio::sync::mpsc::Sender<()>,
    /// The TLS server name (SNI) the client asked for, lowercase.
    pub server_name: Option<String>,
    /// The certificate chain the client presented, leaf first. NOT verified against
    /// any CA at the handshake (only the client's possession of the key is): every
    /// route that uses it verifies it against its own CA.
    pub client_chain: Option<Arc<crate::tls::ClientChain>>,
    /// The peer's address as a header value, made once per connection: it goes into
    /// `X-Forwarded-For` and `X-Real-IP` of every request.
    peer_ip: HeaderValue,
}

impl ClientConn {
    pub fn new(
        peer: SocketAddr,
        tls: bool,
        drain: tokio::sync::mpsc::Sender<()>,
        server_name: Option<String>,
        client_chain: Option<Arc<crate::tls::ClientChain>>,
    ) -> Self {
        ClientConn {
            peer,
            tls,
            drain,
            server_name,
            client_chain,
            peer_ip: ip_value(peer.ip()),
        }
    }
}

/// An address as a header value (an address's text is always a valid one).
fn ip_value(ip: IpAddr) -> HeaderValue {
    HeaderValue::from_str(crate::text::AddrText::ip(ip).as_str())
        .unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// A request's id (see [`RequestIds`]), kept as the header value it is sent as, both
/// to the backend and back to the client.
struct RequestId(HeaderValue);

impl RequestId {
    fn as_str(&self) -> &str {
        // Only printable ASCII is ever made into an id.
        self.0.to_str().unwrap_or("-")
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Header names the gateway sets on every request: as constants, since a string name
/// is parsed again on every insert.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Shared by every request.
pub struct Proxy {
    pub gateway: Arc<Gateway>,
    pub upstreams: Upstreams,
    pub auth: Auth,
    /// For `nginx.ingress.kubernetes.io/auth-url` checks.
    external_auth: crate::auth::external::ExternalAuthClient,
    rate_limiter: RateLimiter,
    global_limiter: Option<GlobalLimiter>,
    connections: Arc<ConcurrencyLimiter>,
    /// Open client connections per client address (`limits.maxConnectionsPerClient`).
    client_connections: Arc<ConcurrencyLimiter>,
    request_ids: RequestIds,
    /// `Strict-Transport-Security` for HTTPS answers, made once.
    hsts: Option<HeaderValue>,
    /// Keys the values of sticky-session cookies (`affinity: cookie`).
    sticky_key: crate::sticky::StickyKey,
}

impl Proxy {
    pub fn new(
        gateway: Arc<Gateway>,
        auth: Auth,
        global_limiter: Option<GlobalLimiter>,
    ) -> Result<Self, rustls::Error> {
        let upstreams = Upstreams::new(&gateway.settings)?;
        let hsts = hsts_value(&gateway.settings.tls);
        let sticky_key = match auth.sticky_secret() {
            Some(secret) => crate::sticky::StickyKey::derived(secret),
            None => crate::sticky::StickyKey::random(),
        };
        Ok(Proxy {
            global_limiter,
            gateway,
            upstreams,
            auth,
            external_auth: crate::auth::external::ExternalAuthClient::new()?,
            rate_limiter: RateLimiter::default(),
            connections: Arc::default(),
            client_connections: Arc::default(),
            request_ids: RequestIds::new(),
            hsts,
            sticky_key,
        })
    }

    /// A slot for one more connection from `client`, held for the connection's life;
    /// `None` once the client holds `limits.maxConnectionsPerClient`.
    pub fn admit_connection(&self, client: IpAddr) -> Option<Option<Slot>> {
        match self.gateway.settings.limits.max_connections_per_client {
            0 => Some(None),
            max => self.client_connections.acquire("", client, max).map(Some),
        }
    }
}

/// A request the gateway answers itself.
struct Refusal {
    status: StatusCode,
    /// Stable label for metrics and the audit log.
    reason: &'static str,
    message: String,
    /// Close the connection afterwards (framing errors: the stream can't be trusted).
    close: bool,
    location: Option<String>,
    /// Seconds, for 429.
    retry_after: Option<u64>,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        let reason = match status {
            StatusCode::NOT_FOUND => "no_route",
            StatusCode::PERMANENT_REDIRECT => "https_required",
            StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
            StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT => "upstream_failed",
            StatusCode::SERVICE_UNAVAILABLE => "no_endpoints",
            StatusCode::FORBIDDEN => "forbidden",
            StatusCode::TOO_MANY_REQUESTS => "rate_limited",
            StatusCode::REQUEST_TIMEOUT => "client_timeout",
            _ => "bad_request",
        };
        Refusal {
            status,
            reason,
            message: message.into(),
            close: false,
            location: None,
            retry_after: None,
        }
    }
}

/// What the access log and the audit log say about a request, filled in as it goes.
/// The text fields are filled only when `detailed`: a request that neither log
/// records costs no copies of them.
struct Record {
    detailed: bool,
    client: IpAddr,
    host: String,
    path: String,
    ingress: Option<IngressName>,
    route: Option<AuditRoute>,
    backend: Option<BackendId>,
    upstream: Option<Upstream>,
    detail: Option<String>,
    identity: Option<AuditIdentity>,
    /// (`allow` | `deny` | `redirect`, reason); unset means the backend answered.
    decision: Option<(&'static str, &'static str)>,
    /// The request body's size so far; made only for a request with a body.
    bytes_in: Option<Arc<AtomicU64>>,
    /// Held until the response body is done (max-connections).
    slot: Option<Slot>,
    /// The matched route's `custom-headers`, for the gateway's own answers too.
    custom_headers: Option<Arc<portcullis_config::custom_headers::CustomHeaders>>,
}

/// Entry point for every request on the HTTP and HTTPS listeners.
pub async fn handle(
    proxy: Arc<Proxy>,
    conn: Arc<ClientConn>,
    req: Request<ClientBody>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let runtime = proxy.gateway.runtime();
    let request_id = proxy.request_ids.for_request(req.headers());
    let method = req.method().clone();
    let version = req.version();
    let client = client_address(
        conn.peer.ip(),
        req.headers(),
        &proxy.gateway.settings.trusted_proxies,
    );
    let access_log = crate::logging::access_enabled();
    let detailed = proxy.gateway.audit.is_enabled() || access_log;
    let mut record = Record {
        detailed,
        client,
        host: String::new(),
        path: String::new(),
        ingress: None,
        route: None,
        backend: None,
        upstream: None,
        detail: None,
        identity: None,
        decision: None,
        bytes_in: None,
        slot: None,
        custom_headers: None,
    };

    // Not boxed here: both protocols box this whole future once (server.rs).
    let mut response = match serve(&proxy, &runtime, &conn, req, &request_id, &mut record).await {
        Ok(response) => response,
        Err(refusal) => {
            record.detail.get_or_insert_with(|| refusal.message.clone());
            let decision = if refusal.status.is_redirection() {
                "redirect"
            } else {
                "deny"
            };
            record.decision.get_or_insert((decision, refusal.reason));
            local_response(refusal, request_id.as_str())
        }
    };
    // On every response of a matched route, proxied or the gateway's own (a denial, a
    // redirect, a login page, an error), as ingress-nginx's `more_set_headers`, which
    // also marks the pages nginx makes itself: e.g. a framing policy always holds.
    if let Some(custom) = &record.custom_headers {
        set_custom_headers(response.headers_mut(), custom);
    }
    finish_headers(&proxy, &conn, &mut response, &request_id);

    let status = response.status();
    let (decision, reason) = record.decision.unwrap_or(("allow", "allowed"));
    let ingress = record.ingress.take().unwrap_or_else(IngressName::none);
    proxy.gateway.metrics.record_request(
        ingress,
        status.as_u16(),
        (decision, reason),
        started.elapsed().as_secs_f64(),
    );
    if !detailed && record.slot.is_none() {
        return Ok(response);
    }
    if access_log {
        crate::logging::access(&crate::logging::Access {
            request_id: request_id.as_str(),
            client: record.client,
            tls: conn.tls,
            version,
            method: &method,
            host: &record.host,
            path: &record.path,
            status: status.as_u16(),
            duration_ms: started.elapsed().as_secs_f64() * 1000.0,
            ingress: record.route.as_ref().map_or("-", |r| &*r.ingress),
            backend: record.backend.map(|id| runtime.snapshot.backend(id)),
            upstream: record.upstream.as_ref(),
            user: record.identity.as_ref().map_or("-", |i| i.subject.as_str()),
            auth: record.identity.as_ref().map_or("-", |i| i.method),
            detail: record.detail.as_deref().unwrap_or(""),
        });
    }
    if !proxy.gateway.audit.is_enabled() && record.slot.is_none() {
        return Ok(response);
    }
    let event = proxy.gateway.audit.is_enabled().then(|| AccessEvent {
        kind: "access",
        time: std::time::SystemTime::now(),
        request_id: request_id.0.clone(),
        client: record.client,
        method,
        host: record.host,
        path: record.path,
        route: record.route,
        identity: record.identity,
        decision,
        reason: (decision != "allow").then_some(reason),
        status: status.as_u16(),
        bytes_in: 0,
        bytes_out: 0,
        duration_ms: 0.0,
        upstream: record.upstream,
    });
    // The audit event is written when the response body is done, with its size; the
    // connection slot (max-connections) is released then too.
    let (parts, body) = response.into_parts();
    let body = Audited {
        inner: body,
        pending: Some(Pending {
            gateway: proxy.gateway.clone(),
            event,
            started,
            bytes_in: record.bytes_in,
            bytes_out: 0,
            _slot: record.slot,
        }),
    };
    Ok(Response::from_parts(parts, body.boxed_unsync()))
}

/// A response body that writes the request's audit event when it is dropped (fully
/// sent, or abandoned by the client), with the bytes that went each way.
struct Audited {
    inner: Body,
    pending: Option<Pending>,
}

struct Pending {
    gateway: Arc<Gateway>,
    event: Option<AccessEvent>,
    started: Instant,
    bytes_in: Option<Arc<AtomicU64>>,
    bytes_out: u64,
    _slot: Option<Slot>,
}

impl http_body::Body for Audited {
    type Data = bytes::Bytes;
    type Error = proxy::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled {
            if let (Some(p), Some(data)) = (this.pending.as_mut(), frame.data_ref()) {
                p.bytes_out += data.len() as u64;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Audited {
    fn drop(&mut self) {
        if let Some(p) = self.pending.take() {
            if let Some(mut event) = p.event {
                event.bytes_in = p.bytes_in.map_or(0, |n| n.load(Ordering::Relaxed));
                event.bytes_out = p.bytes_out;
                event.duration_ms = p.started.elapsed().as_secs_f64() * 1000.0;
                p.gateway.audit.record_access(&event);
            }
        }
    }
}

/// The client's address: the socket peer, unless the peer is a trusted proxy; then the
/// rightmost `X-Forwarded-For` hop that is not a trusted proxy (hops to its left were
/// written by the client and prove nothing). An unreadable hop ends the walk at the
/// peer.
pub fn client_address(peer: IpAddr, headers: &http::HeaderMap, trusted: &[ipnet::IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) if is_trusted(&ip) => client = ip,
            Ok(ip) => return ip,
            Err(_) => return peer,
        }
    }
    client
}

async fn serve(
    proxy: &Proxy,
    runtime: &Runtime,
    conn: &ClientConn,
    mut req: Request<ClientBody>,
    request_id: &RequestId,
    record: &mut Record,
) -> Result<Response<Body>, Refusal> {
    check_framing(&req)?;
    let target_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if target_len as u64 > proxy.gateway.settings.limits.max_uri_size.0 {
        return Err(Refusal::new(
            StatusCode::URI_TOO_LONG,
            format!("the request target is {target_len} bytes, more than limits.maxUriSize"),
        ));
    }

    let authority = request_authority(&req)?;
    let authority = authority.as_str();
    let host = normalize_host(authority);
    if record.detailed {
        record.host = host.clone().into_owned();
    }

    let path = path::normalize(req.uri().path())
        .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, format!("bad request path: {e}")))?;
    if record.detailed {
        record.path = path.to_string();
    }
    // Routing, authorization and the reserved prefix decide on the path without its
    // `;parameters`, as many backends read it; the backend gets `path` itself.
    let matched = path::without_parameters(&path)
        .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, format!("bad request path: {e}")))?;

    // The client's own target when normalizing changed nothing, as nearly always:
    // shared, not copied. (An absolute-form `http://h?q` has a target without a path.)
    let unchanged = match (&path, req.uri().path_and_query()) {
        (Cow::Borrowed(_), Some(original)) if original.as_str().starts_with('/') => Some(original),
        _ => None,
    };
    let target = match (unchanged, req.uri().query()) {
        (Some(original), _) => Cow::Borrowed(original.as_str()),
        (None, Some(q)) => Cow::Owned(format!("{path}?{q}")),
        (None, None) => Cow::Owned(path.to_string()),
    };
    let upgrade_protocol = proxy::upgrade_requested(req.headers());
    let upgrade = upgrade_protocol.is_some();
    // What authentication looks at, for the gateway's endpoints and for routes.
    let facts = RequestFacts {
        method: req.method(),
        headers: req.headers(),
        host: &host,
        authority,
        target: &target,
        upgrade,
    };

    if matched.starts_with(RESERVED_PREFIX) {
        if !crate::auth::ENDPOINTS.contains(&matched.as_ref()) {
            return Err(Refusal::new(StatusCode::NOT_FOUND, "no such gateway endpoint"));
        }
        if matched == crate::auth::JWKS_PATH {
            return Ok(proxy.auth.jwks());
        }
        if !conn.tls {
            return Err(redirect_to_https(proxy, &host, &path, req.uri()));
        }
        let provider_for = |p: &str| {
            let id = runtime.snapshot.lookup(&host, p)?;
            runtime
                .snapshot
                .routes
                .route(id)
                .options
                .auth
                .provider()
                .map(str::to_string)
        };
        let (response, reason) = Box::pin(proxy.auth.endpoint(
            &matched,
            req.uri().query(),
            &facts,
            provider_for,
        ))
        .await;
        record.detail = Some(reason);
        return Ok(response);
    }

    let route = runtime
        .snapshot
        .lookup(&host, &matched)
        .map(|id| runtime.snapshot.routes.route(id));
    if let Some(route) = route {
        record.ingress = Some(IngressName(route.ingress.label().clone()));
        record.custom_headers.clone_from(&route.options.custom_headers);
        if record.detailed {
            record.route = Some(AuditRoute {
                ingress: route.ingress.label().clone(),
                rule: route.field.clone(),
                path: route.path.clone(),
            });
        }
    }

    // Client certificates (auth-tls-*) first, as ingress-nginx checks them for the
    // server before any location; on plain HTTP after the redirect to HTTPS below.
    let mut client_cert = None;
    if let (true, Some(route)) = (conn.tls, route) {
        client_cert = check_client_cert(conn, route, &host, record)?;
    }

    // Answers ingress-nginx gives before any access check (its rewrite phase).
    if let Some(route) = route {
        if let Some(response) = answer_early(conn, route, &req, authority, &matched) {
            record.decision = Some(("redirect", "annotation"));
            return Ok(response);
        }
    }
    let authenticated = route.is_some_and(|r| r.options.auth != AuthMode::None);
    if !conn.tls && (authenticated || wants_https(runtime, route, &host)) {
        return Err(redirect_to_https(proxy, &host, &path, req.uri()));
    }
    let route =
        route.ok_or_else(|| Refusal::new(StatusCode::NOT_FOUND, "no route for this host and path"))?;
    if !conn.tls {
        client_cert = check_client_cert(conn, route, &host, record)?;
    }
    let upstream_target = match (&route.options.rewrite_target, &route.regex, unchanged) {
        (Some(rewrite), Some(regex), _) => {
            http::uri::PathAndQuery::try_from(rewritten(rewrite, regex, &matched, req.uri().query())?)
        }
        (_, _, Some(original)) => Ok(original.clone()),
        (_, _, None) => http::uri::PathAndQuery::try_from(target.as_ref()),
    }
    .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, format!("cannot build upstream URI: {e}")))?;
    let cors_origin = route.options.cors.as_ref().and_then(|cors| {
        let origin = req.headers().get(header::ORIGIN).and_then(|v| v.to_str().ok());
        cors.allow_origin(origin).map(str::to_string)
    });

    // Who may pass, from where, how often: address rules first, they need no identity.
    // Only routes with limits need it, made once for all of them.
    let route_key_text = std::sync::OnceLock::new();
    let route_key = || {
        route_key_text
            .get_or_init(|| format!("{}{}{}", route.ingress, route.host, route.path))
            .as_str()
    };
    if let Err(denial) = policy::check_source(&route.options.policy, record.client) {
        return Err(forbidden(record, &denial));
    }
    if let Some(limit) = route.options.rate_limit.filter(|l| l.key == RateLimitKey::Client) {
        Box::pin(rate_limit(
            proxy,
            record,
            route_key(),
            &record.client.to_string(),
            &limit,
        ))
        .await?;
    }

    if let Some(max) = route.options.max_body_size {
        if content_length(&req).is_some_and(|n| n > max) {
            return Err(Refusal::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body larger than {max} bytes"),
            ));
        }
    }

    // ingress-nginx's auth-url: the auth service decides before anything else does.
    let grant = match &route.options.external_auth {
        None => None,
        Some(external) => {
            let scheme = if conn.tls { "https" } else { "http" };
            let original_url = format!("{scheme}://{authority}{target}");
            let outcome = Box::pin(proxy.external_auth.check(
                external,
                req.method(),
                req.headers(),
                &original_url,
                record.client,
            ))
            .await;
            let code = outcome.code();
            match outcome {
                Outcome::Allow(grant) => Some(grant),
                Outcome::Deny(denial) => {
                    let decision = if denial.location.is_some() {
                        "redirect"
                    } else {
                        "deny"
                    };
                    record.decision = Some((decision, code));
                    return Ok(denial.into_response());
                }
                Outcome::Error(error) => {
                    tracing::warn!(ingress = %route.ingress, auth_url = %external.url, error = %error, "external authentication failed: denied");
                    record.detail = Some(error.to_string());
                    record.decision = Some(("deny", code));
                    return Ok(error.response());
                }
            }
        }
    };

    // ingress-nginx's auth-type: basic, against the users of the route's Secret.
    if let Some(basic) = &route.options.basic_auth {
        let credentials = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| portcullis_config::htpasswd::basic_credentials(v.as_bytes()));
        let user = match credentials {
            Some((user, password)) => {
                let users = basic.users.clone();
                // bcrypt costs milliseconds of CPU: off the request threads.
                let checked =
                    tokio::task::spawn_blocking(move || users.verify(&user, &password).then_some(user));
                checked.await.ok().flatten()
            }
            None => None,
        };
        match user {
            Some(user) => {
                record.identity = Some(AuditIdentity {
                    subject: user,
                    email: None,
                    groups: Vec::new(),
                    method: "basic",
                    provider: format!("secret {}/{}", route.ingress.namespace, basic.secret),
                })
            }
            None => {
                record.decision = Some(("deny", "basic_auth"));
                let realm = HeaderValue::from_str(&format!("Basic realm=\"{}\"", basic.realm))
                    .unwrap_or_else(|_| HeaderValue::from_static("Basic"));
                let mut response = local_response(
                    Refusal::new(StatusCode::UNAUTHORIZED, "a user name and password are required"),
                    request_id.as_str(),
                );
                response.headers_mut().insert(header::WWW_AUTHENTICATE, realm);
                return Ok(response);
            }
        }
    }

    let (identity, set_cookies) = match &route.options.auth {
        AuthMode::None => (None, Vec::new()),
        // Boxed, as every rarely taken await below: a future is as large as its largest
        // await, and hyper keeps one per connection, idle or not.
        mode => match Box::pin(proxy.auth.authenticate(mode, &facts)).await {
            Decision::Allow {
                identity,
                set_cookies,
            } => {
                if record.detailed {
                    record.identity = Some(AuditIdentity {
                        subject: identity.subject.clone(),
                        email: identity.email.clone().filter(|_| identity.email_verified),
                        groups: identity.groups.clone(),
                        method: identity.method.as_str(),
                        provider: identity.provider.clone(),
                    });
                }
                (Some(identity), set_cookies)
            }
            Decision::Respond {
                response,
                code,
                reason,
            } => {
                record.detail = Some(reason);
                let decision = if response.status().is_redirection() {
                    "redirect"
                } else {
                    "deny"
                };
                record.decision = Some((decision, code));
                return Ok(response);
            }
        },
    };

    if let Some(identity) = &identity {
        // The subject (a copy of the claims) is made only for routes whose rules read it.
        if route.options.policy.needs_identity() {
            if let Err(denial) = policy::check_subject(&route.options.policy, &identity.subject()) {
                return Err(forbidden(record, &denial));
            }
        }
        if let Some(limit) = route.options.rate_limit.filter(|l| l.key == RateLimitKey::User) {
            let key = format!("{}\u{0}{}", identity.provider, identity.subject);
            Box::pin(rate_limit(proxy, record, route_key(), &key, &limit)).await?;
        }
    }
    if let Some(max) = route.options.max_connections {
        match proxy.connections.acquire(route_key(), record.client, max) {
            Some(slot) => record.slot = Some(slot),
            None => {
                proxy
                    .gateway
                    .metrics
                    .rate_limited
                    .get_or_create(&IngressLabel {
                        ingress: IngressName(route.ingress.label().clone()),
                    })
                    .inc();
                let mut refusal = Refusal::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!("more than {max} requests at once from this address"),
                );
                refusal.reason = "too_many_connections";
                return Err(refusal);
            }
        }
    }

    // A canary Ingress may take the request: its route carries the main route's settings
    // (already applied above) and the canary's backend.
    let route = portcullis_config::canary::choose(&runtime.snapshot, route, req.headers(), canary_roll);
    // ingress-nginx's `default-backend` serves a route whose Service has no ready
    // endpoints; the X- headers still describe the Service the route names.
    let primary = runtime.snapshot.backend(route.backend);
    let error_page = route
        .fallback
        .map(|_| ErrorPage::new(route, primary, req.headers(), req.uri(), request_id.as_str()));
    let fallback_route;
    let (route, serving_fallback) = match route.fallback.filter(|_| !can_serve(primary)) {
        Some(fallback) => {
            fallback_route = Route {
                backend: fallback,
                fallback: None,
                ..route.clone()
            };
            (&fallback_route, true)
        }
        None => (route, false),
    };
    record.backend = Some(route.backend);
    // Sticky sessions and hashing read the request before it is handed on.
    let balance = crate::sticky::Balance::for_request(
        route.options.affinity.as_ref(),
        req.headers(),
        req.uri().path_and_query().map_or("/", |p| p.as_str()),
        record.client,
    );
    let client_upgrade = upgrade_protocol
        .filter(|_| req.version() == Version::HTTP_11)
        .and_then(|protocol| Some((protocol, UpgradeSlot::take(&mut req)?)));
    let mut outgoing = Outgoing::new(
        proxy,
        conn,
        req,
        authority,
        upstream_target,
        request_id,
        route,
        client_upgrade.is_some(),
        identity.as_deref(),
        grant.as_ref(),
        record,
    );
    if let Some(page) = error_page.as_ref().filter(|_| serving_fallback) {
        // The page's fields replace some of the forwarding ones: all in the map first.
        if let Some(forwarding) = outgoing.forwarding.take() {
            forwarding.insert_into(&mut outgoing.headers);
        }
        page.set_headers(&mut outgoing.headers, StatusCode::SERVICE_UNAVAILABLE, false);
    }
    // Kept only when an error may be intercepted: the request to the default backend
    // carries the client's headers as cleaned for the route.
    let intercept = match (route.fallback, error_page) {
        (Some(fallback), Some(page)) if !route.options.custom_http_errors.is_empty() => {
            Some((fallback, page, outgoing.headers()))
        }
        _ => None,
    };

    if let Some(facts) = &client_cert {
        facts.set_headers(&mut outgoing.headers);
    }

    let (response, upstream, new_cookie) = forward(proxy, runtime, route, outgoing, &balance, record).await?;
    record.upstream = Some(upstream);
    let response = match intercept {
        Some((fallback, page, headers))
            if route
                .options
                .custom_http_errors
                .contains(&response.status().as_u16()) =>
        {
            // Dropping the response discards its body unread (the connection is
            // closed rather than drained): the client gets only the error page.
            let status = response.status();
            drop(response);
            // Boxed: its own `forward` would otherwise double the size of every
            // request's future, intercepted or not.
            Box::pin(custom_error(
                proxy,
                runtime,
                route,
                fallback,
                page.request(headers, status),
                record,
            ))
            .await?
        }
        _ => response,
    };
    let mut response = relay_response(response, route, conn, client_upgrade);
    // Only when the endpoint changed: a session keeps its cookie, as in ingress-nginx.
    if let (Some(value), Some(Affinity::Cookie(sticky)), Balance::Sticky { user_agent, .. }) =
        (new_cookie, &route.options.affinity, &balance)
    {
        let cookie = crate::sticky::set_cookie(
            sticky,
            &value,
            &route.path,
            conn.tls,
            user_agent.as_deref(),
            jiff::Timestamp::now().as_second(),
        );
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            response.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    if let (Some(cors), Some(origin)) = (&route.options.cors, &cors_origin) {
        set_cors_headers(response.headers_mut(), cors, origin);
    }
    for cookie in grant.iter().flat_map(|g| g.set_cookies()) {
        response.headers_mut().append(header::SET_COOKIE, cookie.clone());
    }
    for cookie in set_cookies {
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            response.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    Ok(response)
}

/// A route's `custom-headers`. `insert`, as ingress-nginx's `more_set_headers`: the
/// Ingress's value replaces the backend's, so a backend cannot weaken e.g. a
/// Content-Security-Policy.
fn set_custom_headers(
    headers: &mut http::HeaderMap,
    custom: &portcullis_config::custom_headers::CustomHeaders,
) {
    for (name, value) in &custom.headers {
        headers.insert(name.clone(), value.clone());
    }
}

/// What the backend is told about the client certificate of a route with
/// `auth-tls-secret`, in ingress-nginx's headers.
struct ClientCertFacts {
    /// `SUCCESS` or `NONE` (a failed verification never reaches the backend).
    verify: &'static str,
    subject: Option<String>,
    issuer: Option<String>,
    /// URL-escaped PEM, with `auth-tls-pass-certificate-to-upstream`.
    cert: Option<String>,
}

impl ClientCertFacts {
    fn set_headers(&self, headers: &mut http::HeaderMap) {
        headers.insert("ssl-client-verify", HeaderValue::from_static(self.verify));
        for (name, value) in [
            ("ssl-client-subject-dn", &self.subject),
            ("ssl-client-issuer-dn", &self.issuer),
            ("ssl-client-cert", &self.cert),
        ] {
            if let Some(v) = value.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
                headers.insert(name, v);
            }
        }
    }
}

/// ingress-nginx's client certificate authentication (`auth-tls-*`), for this route
/// only: the chain is verified against the route's own CA, not the union the
/// handshake asked with, so another Ingress's CA on the same host does not pass.
fn check_client_cert(
    conn: &ClientConn,
    route: &Route,
    host: &str,
    record: &mut Record,
) -> Result<Option<ClientCertFacts>, Refusal> {
    let Some(auth) = &route.options.client_auth else {
        return Ok(None);
    };
    // The handshake asked for a certificate only if its SNI named a host with such
    // routes; a connection opened for another host (HTTP/2 reuses connections across
    // hosts sharing a certificate) must not skip the check. Catch-all routes are asked
    // for on every handshake.
    if conn.tls && route.host != HostMatch::Any && conn.server_name.as_deref() != Some(host) {
        let mut refusal = Refusal::new(
            StatusCode::MISDIRECTED_REQUEST,
            format!("this host requires a client certificate: open a new connection with the TLS server name (SNI) {host}"),
        );
        refusal.reason = "misdirected";
        record.decision = Some(("deny", "misdirected"));
        return Err(refusal);
    }
    let fail = |record: &mut Record, status: StatusCode, message: &str, detail: String| {
        record.decision = Some(("deny", "client_certificate"));
        record.detail = Some(detail);
        let mut refusal = Refusal::new(status, message);
        refusal.reason = "client_certificate";
        if let Some(page) = auth
            .error_page
            .as_ref()
            .filter(|_| status == StatusCode::BAD_REQUEST)
        {
            refusal.status = StatusCode::FOUND;
            refusal.location = Some(page.clone());
        }
        refusal
    };
    let chain = conn.client_chain.as_deref().filter(|c| !c.certs.is_empty());
    let Some(chain) = chain else {
        if auth.verify == VerifyClient::On {
            return Err(fail(
                record,
                StatusCode::BAD_REQUEST,
                "No required SSL certificate was sent",
                "no client certificate".to_string(),
            ));
        }
        return Ok(Some(ClientCertFacts {
            verify: "NONE",
            subject: None,
            issuer: None,
            cert: None,
        }));
    };
    if let Err(reason) = crate::tls::verify_for_route(chain, auth) {
        return Err(fail(
            record,
            StatusCode::BAD_REQUEST,
            "The SSL certificate error",
            format!("client certificate not verified: {reason}"),
        ));
    }
    let leaf = &chain.certs[0];
    let Some(names) = CertNames::of(leaf.as_ref()) else {
        return Err(fail(
            record,
            StatusCode::BAD_REQUEST,
            "The SSL certificate error",
            "client certificate names cannot be read".to_string(),
        ));
    };
    if let Some(pattern) = &auth.match_cn {
        if !pattern.is_match(&names.subject) {
            return Err(fail(
                record,
                StatusCode::FORBIDDEN,
                "client certificate unauthorized",
                format!("subject {} does not match auth-tls-match-cn", names.subject),
            ));
        }
    }
    record.identity = Some(AuditIdentity {
        subject: names.subject.clone(),
        email: None,
        groups: Vec::new(),
        method: "client_certificate",
        provider: format!(
            "secret {}/{}",
            route.ingress.namespace,
            auth.secret.rsplit('/').next().unwrap_or_default()
        ),
    });
    Ok(Some(ClientCertFacts {
        verify: "SUCCESS",
        cert: auth.pass_certificate.then(|| escaped_pem(leaf.as_ref())),
        subject: Some(names.subject),
        issuer: Some(names.issuer),
    }))
}

/// The redirects and CORS preflight answers of ingress-nginx's annotations, which it
/// gives before checking addresses or credentials.
fn answer_early(
    conn: &ClientConn,
    route: &Route,
    req: &Request<ClientBody>,
    authority: &str,
    matched: &str,
) -> Option<Response<Body>> {
    let options = &route.options;
    if let Some(cors) = &options.cors {
        if req.method() == Method::OPTIONS {
            let origin = req.headers().get(header::ORIGIN).and_then(|v| v.to_str().ok());
            if let Some(allowed) = cors.allow_origin(origin) {
                let mut response = Response::new(proxy::empty());
                *response.status_mut() = StatusCode::NO_CONTENT;
                let h = response.headers_mut();
                set_cors_headers(h, cors, allowed);
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain charset=UTF-8"),
                );
                h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
                return Some(response);
            }
        }
    }
    let location = match (&options.redirect, &options.app_root) {
        _ if options.host_redirect.is_some() => {
            let scheme = if conn.tls { "https" } else { "http" };
            let host = options.host_redirect.as_deref().unwrap_or_default();
            let port = authority
                .rsplit_once(':')
                .filter(|(_, p)| p.parse::<u16>().is_ok())
                .map(|(_, p)| format!(":{p}"))
                .unwrap_or_default();
            let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
            Some((308, format!("{scheme}://{host}{port}{target}")))
        }
        (Some(redirect), _) => Some((redirect.code, redirect.location.clone())),
        (None, Some(root)) if matched == "/" => {
            let scheme = if conn.tls { "https" } else { "http" };
            Some((302, format!("{scheme}://{authority}{root}")))
        }
        _ => None,
    }?;
    let (code, location) = location;
    let mut response = Response::new(proxy::empty());
    *response.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::FOUND);
    let value = HeaderValue::from_str(&location).ok()?;
    response.headers_mut().insert(header::LOCATION, value);
    Some(response)
}

fn set_cors_headers(headers: &mut http::HeaderMap, cors: &portcullis_config::cors::Cors, origin: &str) {
    for (name, value) in cors.headers(origin) {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    }
}

/// The upstream path and query of a `rewrite-target` route: the path regex's groups
/// put into the target, normalized again like every request path.
fn rewritten(
    rewrite: &portcullis_config::rewrite::RewriteTarget,
    regex: &regex::Regex,
    matched: &str,
    query: Option<&str>,
) -> Result<String, Refusal> {
    let groups: Vec<Option<&str>> = match regex.captures(matched) {
        Some(c) => c.iter().map(|m| m.map(|m| m.as_str())).collect(),
        None => vec![Some(matched)],
    };
    let target = rewrite.apply(&groups, query);
    let (new_path, new_query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target.as_str(), None),
    };
    let normalized = path::normalize(new_path).map_err(|e| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            format!("the rewritten path is refused: {e}"),
        )
    })?;
    Ok(match new_query {
        Some(q) => format!("{normalized}?{q}"),
        None => normalized.into_owned(),
    })
}

/// 403 for a policy denial.
fn forbidden(record: &mut Record, denial: &policy::Denial) -> Refusal {
    record.decision = Some(("deny", denial.reason()));
    let mut refusal = Refusal::new(StatusCode::FORBIDDEN, denial.to_string());
    refusal.reason = denial.reason();
    refusal
}

/// 429 with `Retry-After` when the bucket for `key` on this route is empty.
async fn rate_limit(
    proxy: &Proxy,
    record: &Record,
    route_key: &str,
    key: &str,
    limit: &portcullis_config::snapshot::RateLimit,
) -> Result<(), Refusal> {
    let global = match &proxy.global_limiter {
        Some(g) => g.check(route_key, key, limit).await,
        None => None,
    };
    let outcome = match global {
        Some(outcome) => outcome,
        None => proxy.rate_limiter.check(route_key, key, limit),
    };
    match outcome {
        Ok(()) => Ok(()),
        Err(wait) => {
            proxy
                .gateway
                .metrics
                .rate_limited
                .get_or_create(&IngressLabel {
                    ingress: record.ingress.clone().unwrap_or_else(IngressName::none),
                })
                .inc();
            let mut refusal = Refusal::new(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded");
            refusal.retry_after = Some(wait.as_secs().max(1));
            Err(refusal)
        }
    }
}

/// Requests whose framing two parsers could read differently are refused, and the
/// connection closed (request smuggling).
fn check_framing(req: &Request<ClientBody>) -> Result<(), Refusal> {
    let h = req.headers();
    // One pass over the fields rather than a lookup for each question: requests
    // carry few fields.
    let (mut hosts, mut length, mut coded) = (0, false, false);
    for name in h.iter().map(|(name, _)| name) {
        if name == header::HOST {
            hosts += 1;
        } else if name == header::CONTENT_LENGTH {
            length = true;
        } else if name == header::TRANSFER_ENCODING {
            coded = true;
        }
    }
    if coded && length {
        return Err(Refusal {
            close: true,
            ..Refusal::new(
                StatusCode::BAD_REQUEST,
                "both Content-Length and Transfer-Encoding are present",
            )
        });
    }
    if hosts > 1 {
        return Err(Refusal {
            close: true,
            ..Refusal::new(StatusCode::BAD_REQUEST, "more than one Host header")
        });
    }
    if !coded {
        return Ok(());
    }
    // hyper only checks that the final coding is chunked; anything else before it
    // (`chunked, chunked`, `gzip, chunked`) is a coding we do not apply and a framing
    // another parser may read differently (RFC 9112 section 6.1).
    let mut codings = h
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii);
    let only_chunked = match (codings.next(), codings.next()) {
        (None, _) => true,
        (Some(first), None) => first.eq_ignore_ascii_case(b"chunked"),
        _ => false,
    };
    if !only_chunked {
        return Err(Refusal {
            close: true,
            ..Refusal::new(
                StatusCode::BAD_REQUEST,
                "Transfer-Encoding other than a single `chunked`",
            )
        });
    }
    Ok(())
}

/// The request's authority: the URI's (HTTP/2, absolute-form) or the Host header.
fn request_authority(req: &Request<ClientBody>) -> Result<http::uri::Authority, Refusal> {
    let authority = match req.uri().authority() {
        Some(a) => Some(a.clone()),
        // Parsed where it lies once copied: one allocation, not a string and a copy.
        None => req
            .headers()
            .get(header::HOST)
            .map(|h| bytes::Bytes::copy_from_slice(h.as_bytes()))
            .and_then(|h| http::uri::Authority::from_maybe_shared(h).ok()),
    };
    // A host names no user (RFC 9110 section 7.2; RFC 9113 section 8.3.1).
    authority
        .filter(|a| !a.as_str().contains('@'))
        .ok_or_else(|| Refusal::new(StatusCode::BAD_REQUEST, "missing or invalid Host"))
}

/// Plain HTTP for a host named in any served Ingress's `spec.tls` is redirected,
/// whichever route matched (a host-less rule or the default backend included), unless
/// that route opted out with `ssl-redirect: "false"`.
fn wants_https(runtime: &Runtime, route: Option<&Route>, host: &str) -> bool {
    let tls_host = runtime.snapshot.host_has_tls(host);
    match route {
        Some(route) => {
            route.options.force_ssl_redirect || ((tls_host || route.tls) && route.options.ssl_redirect)
        }
        None => tls_host,
    }
}

fn redirect_to_https(proxy: &Proxy, host: &str, path: &str, uri: &Uri) -> Refusal {
    let port = proxy
        .gateway
        .https_port
        .load(std::sync::atomic::Ordering::Relaxed);
    let port = if port == 443 {
        String::new()
    } else {
        format!(":{port}")
    };
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    Refusal {
        location: Some(format!("https://{host}{port}{path}{query}")),
        ..Refusal::new(StatusCode::PERMANENT_REDIRECT, "this host is served over HTTPS")
    }
}

fn content_length(req: &Request<ClientBody>) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Whether a backend has somewhere to send requests.
fn can_serve(backend: &portcullis_config::snapshot::Backend) -> bool {
    use portcullis_config::snapshot::BackendTarget;
    match &backend.target {
        BackendTarget::Endpoints(e) => !e.is_empty(),
        BackendTarget::External { .. } => true,
        BackendTarget::Unavailable(_) => false,
    }
}

/// What ingress-nginx tells its default backend about a request it serves in place of
/// the route's Service (the `X-Code` family of headers of its custom error pages).
struct ErrorPage {
    accept: Option<HeaderValue>,
    original_uri: String,
    namespace: String,
    ingress: String,
    service: String,
    port: String,
    request_id: String,
}

impl ErrorPage {
    fn new(
        route: &Route,
        primary: &portcullis_config::snapshot::Backend,
        headers: &http::HeaderMap,
        uri: &Uri,
        request_id: &str,
    ) -> Self {
        ErrorPage {
            accept: headers.get(header::ACCEPT).cloned(),
            original_uri: uri.path_and_query().map_or("/", |p| p.as_str()).to_string(),
            namespace: route.ingress.namespace.clone(),
            ingress: route.ingress.name.clone(),
            service: primary.service.clone(),
            port: primary.port.clone(),
            request_id: request_id.to_string(),
        }
    }

    /// `X-Original-URI` only for intercepted errors: ingress-nginx sets it there and
    /// not when its default backend serves a route without endpoints.
    fn set_headers(&self, headers: &mut http::HeaderMap, code: StatusCode, original_uri: bool) {
        let mut set = |name: &'static str, value: &str| {
            // Names, ports and the request id are validated text; a client's URI
            // that is not a valid header value is left out rather than mangled.
            match HeaderValue::from_str(value) {
                Ok(v) => headers.insert(name, v),
                Err(_) => headers.remove(name),
            };
        };
        set("x-code", code.as_str());
        set("x-namespace", &self.namespace);
        set("x-ingress-name", &self.ingress);
        set("x-service-name", &self.service);
        set("x-service-port", &self.port);
        set("x-request-id", &self.request_id);
        if original_uri {
            set("x-original-uri", &self.original_uri);
        }
        // The client's Accept, or nothing, as nginx's empty $http_accept sends nothing.
        match &self.accept {
            Some(accept) => headers.insert("x-format", accept.clone()),
            None => headers.remove("x-format"),
        };
    }

    /// The request for the default backend's answer to an intercepted `code`: a GET of
    /// `/` without a body, as ingress-nginx's `rewrite (.*) / break` sends (it keeps
    /// the method and resends a buffered body; request bodies here are streamed to the
    /// first backend and cannot be sent twice).
    fn request(&self, mut headers: http::HeaderMap, code: StatusCode) -> Outgoing {
        for name in [
            header::CONTENT_LENGTH,
            header::CONTENT_TYPE,
            header::CONNECTION,
            header::UPGRADE,
            header::EXPECT,
        ] {
            headers.remove(name);
        }
        // Identity assertions are addressed to the route's Service, not this one.
        headers.remove("x-portcullis-assertion");
        self.set_headers(&mut headers, code, true);
        Outgoing {
            method: Method::GET,
            path_and_query: http::uri::PathAndQuery::from_static("/"),
            headers,
            forwarding: None,
            body: None,
            bodiless: true,
        }
    }
}

/// The request to send upstream, before an endpoint is chosen.
struct Outgoing {
    method: Method,
    path_and_query: http::uri::PathAndQuery,
    headers: http::HeaderMap,
    /// Sent after `headers`, none of whose names it has.
    forwarding: Option<Forwarding>,
    /// `None` without a body, or once sent.
    body: Option<Body>,
    /// No body: safe to send again to another endpoint when a connection fails.
    bodiless: bool,
}

impl Outgoing {
    #[allow(clippy::too_many_arguments)]
    fn new(
        proxy: &Proxy,
        conn: &ClientConn,
        req: Request<ClientBody>,
        authority: &str,
        path_and_query: http::uri::PathAndQuery,
        request_id: &RequestId,
        route: &Route,
        upgrade: bool,
        identity: Option<&Identity>,
        grant: Option<&Grant>,
        record: &mut Record,
    ) -> Self {
        let (parts, body) = req.into_parts();
        let mut headers = parts.headers;
        let protocol = route.options.backend_protocol;
        // Read before the hop-by-hop fields go, and only where they are passed on.
        let upgrade_protocol = upgrade.then(|| headers.get(header::UPGRADE).cloned()).flatten();
        let wants_trailers = protocol.is_h2_only()
            && headers
                .get(header::TE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers")));
        proxy::remove_hop_by_hop(&mut headers);
        proxy::strip_identity_headers(&mut headers);
        // Room for the identity headers in one step, rather than a doubling of the map
        // for each (the forwarding fields stay out of it).
        if identity.is_some() {
            headers.reserve(4);
        }
        if let Some(grant) = grant {
            grant.apply_to_upstream(&mut headers);
        }
        if let Some(identity) = identity {
            proxy::set_identity_headers(&mut headers, identity);
            if route.options.identity_assertion {
                let backend = gateway_backend_name(route, proxy);
                if let Some(v) = proxy
                    .auth
                    .assertion(identity, &backend)
                    .and_then(|t| HeaderValue::from_str(&t).ok())
                {
                    headers.insert("x-portcullis-assertion", v);
                }
            }
        }
        if upgrade {
            if let Some(p) = upgrade_protocol {
                headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                headers.insert(header::UPGRADE, p);
            }
        }
        if wants_trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        // After the auth service's fields, which may carry cookies too: an HTTP/1.1
        // backend gets them in one field (RFC 9113 section 8.2.3).
        proxy::prepare_cookies(&mut headers, !protocol.is_h2_only());
        let forwarding = set_forwarding_headers(
            &proxy.gateway,
            conn,
            record.client,
            &mut headers,
            authority,
            request_id,
        );
        let mut set = |name: &'static str, value: &Option<String>| {
            if let Some(v) = value.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
                headers.insert(name, v);
            }
        };
        set("x-forwarded-prefix", &route.options.forwarded_prefix);
        set("host", &route.options.upstream_host);

        let bodiless = http_body::Body::is_end_stream(&body);
        // Nothing to count, time or limit without a body, nor to box.
        let body = (!bodiless).then(|| {
            let counted = proxy::Counted::new(body, record.bytes_in.get_or_insert_with(Arc::default).clone());
            let paced = proxy::ReadTimeout::new(
                counted,
                proxy.gateway.settings.timeouts.client_body.0,
                proxy::Sender::Client,
            );
            match route.options.max_body_size {
                Some(max) => http_body_util::Limited::new(paced, usize::try_from(max).unwrap_or(usize::MAX))
                    .boxed_unsync(),
                None => paced.boxed_unsync(),
            }
        });
        Outgoing {
            method: parts.method,
            path_and_query,
            headers,
            forwarding: Some(forwarding),
            body,
            bodiless,
        }
    }

    /// All of the request's fields in one map.
    fn headers(&self) -> http::HeaderMap {
        let mut headers = self.headers.clone();
        if let Some(forwarding) = &self.forwarding {
            forwarding.insert_into(&mut headers);
        }
        headers
    }

    /// The request for one attempt at one endpoint.
    /// `stall` bounds the rest of a body the backend stops reading after answering.
    fn request(
        &mut self,
        upstream: &Upstream,
        protocol: BackendProtocol,
        stall: std::time::Duration,
    ) -> Result<Attempt, Refusal> {
        let bad = |e: &dyn std::fmt::Display| {
            Refusal::new(StatusCode::BAD_REQUEST, format!("cannot build upstream URI: {e}"))
        };
        let body = if self.bodiless {
            proxy::empty()
        } else {
            self.body.take().unwrap_or_else(proxy::empty)
        };
        if let Some(addr) = Upstreams::pooled(protocol, upstream) {
            // The pool connects to the address itself (HTTP/1.1's origin form), and
            // encodes the head from the fields kept here for another attempt.
            let mut outgoing = exchange::Outgoing::encode(
                &self.method,
                self.path_and_query.as_str(),
                &self.headers,
                self.forwarding.iter().flat_map(Forwarding::fields),
                body,
            )
            .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, error_chain(&e)))?;
            outgoing.stall = Some(stall);
            return Ok(Attempt::Pooled(addr, outgoing));
        }
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(if protocol.is_tls() {
            http::uri::Scheme::HTTPS
        } else {
            http::uri::Scheme::HTTP
        });
        parts.authority = Some(upstream.authority().map_err(|e| bad(&e))?);
        parts.path_and_query = Some(self.path_and_query.clone());
        let uri = Uri::from_parts(parts).map_err(|e| bad(&e))?;
        let mut request = Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = self.headers();
        if protocol.is_h2_only() {
            *request.version_mut() = Version::HTTP_2;
        }
        Ok(Attempt::Request(request))
    }
}

/// `namespace/service` of a route's backend: the audience of its assertions.
fn gateway_backend_name(route: &Route, proxy: &Proxy) -> String {
    let runtime = proxy.gateway.runtime();
    let b = runtime.snapshot.backend(route.backend);
    format!("{}/{}", b.namespace, b.service)
}

/// Sets `Host` in `headers`, and `X-Forwarded-For` when the request brought one; returns
/// the other forwarding fields (and a new `X-Forwarded-For`), which stay out of the map.
fn set_forwarding_headers(
    gateway: &Gateway,
    conn: &ClientConn,
    client: IpAddr,
    headers: &mut http::HeaderMap,
    authority: &str,
    request_id: &RequestId,
) -> Forwarding {
    let peer = conn.peer.ip();
    let trusted = || {
        gateway
            .settings
            .trusted_proxies
            .iter()
            .any(|net| net.contains(&peer))
    };
    // A list the request brought is replaced in the map by one field: all of its lines
    // in order and then the peer, when the peer is a trusted proxy; the peer alone
    // otherwise. (Replacing only the first line would let a client's second one reach
    // the backend.) A new list is kept with the other forwarding fields.
    let forwarded_for = if headers.contains_key(X_FORWARDED_FOR) {
        let chained = trusted()
            .then(|| {
                let lines = headers
                    .get_all(X_FORWARDED_FOR)
                    .iter()
                    .map(|v| v.to_str().ok())
                    .collect::<Option<Vec<_>>>()?;
                HeaderValue::from_str(&format!("{}, {peer}", lines.join(", "))).ok()
            })
            .flatten();
        headers.insert(X_FORWARDED_FOR, chained.unwrap_or_else(|| conn.peer_ip.clone()));
        None
    } else {
        Some(conn.peer_ip.clone())
    };
    let real_ip = if client == peer {
        conn.peer_ip.clone()
    } else {
        ip_value(client)
    };
    // HTTP/1.1's authority is its Host header: reused as it is, and left in place.
    let host = match headers.get(header::HOST) {
        Some(v) if v.as_bytes() == authority.as_bytes() => Some(v.clone()),
        _ => {
            let host = HeaderValue::from_str(authority).ok();
            if let Some(host) = &host {
                headers.insert(header::HOST, host.clone());
            }
            host
        }
    };
    // What the client (or an auth server's answer) put under the names the gateway
    // sets is dropped: one pass to find it, since there is seldom any.
    let names = Forwarding::NAMES;
    if headers.keys().any(|key| names.contains(key)) {
        for name in &names {
            headers.remove(name);
        }
    }
    Forwarding {
        forwarded_for,
        real_ip,
        proto: HeaderValue::from_static(if conn.tls { "https" } else { "http" }),
        host,
        request_id: request_id.0.clone(),
    }
}

/// The forwarding fields the gateway sets on every request, kept beside its header map
/// rather than inserted (a hash and a probe each): the pool's encoder writes them
/// straight into the request head, and every other way out puts them in its map.
struct Forwarding {
    /// `X-Forwarded-For` when the request had none: the peer alone.
    forwarded_for: Option<HeaderValue>,
    real_ip: HeaderValue,
    proto: HeaderValue,
    /// The authority, when it is a valid field value (it always is: it was parsed).
    host: Option<HeaderValue>,
    request_id: HeaderValue,
}

impl Forwarding {
    /// The fields whose values in the request are dropped (`X-Forwarded-For` is
    /// extended instead).
    const NAMES: [HeaderName; 4] = [X_REAL_IP, X_FORWARDED_PROTO, X_FORWARDED_HOST, X_REQUEST_ID];

    fn fields(&self) -> impl Iterator<Item = (HeaderName, &HeaderValue)> {
        let [real_ip, proto, host, request_id] = Self::NAMES;
        [
            (X_FORWARDED_FOR, self.forwarded_for.as_ref()),
            (real_ip, Some(&self.real_ip)),
            (proto, Some(&self.proto)),
            (host, self.host.as_ref()),
            (request_id, Some(&self.request_id)),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name, value?)))
    }

    fn insert_into(&self, headers: &mut http::HeaderMap) {
        for (name, value) in self.fields() {
            headers.insert(name, value.clone());
        }
    }
}

/// Asks the default backend for the page of an error the route's backend answered
/// (`custom-http-errors`).
async fn custom_error(
    proxy: &Proxy,
    runtime: &Runtime,
    route: &Route,
    fallback: BackendId,
    outgoing: Outgoing,
    record: &mut Record,
) -> Result<Response<UpstreamBody>, Refusal> {
    // ingress-nginx's `@custom_` location proxies to `http://upstream_balancer` from
    // the server block: plain HTTP, whatever the route's backend-protocol, and without
    // the route's session affinity.
    let mut options = (*route.options).clone();
    options.backend_protocol = BackendProtocol::Http;
    options.backend_tls = None;
    options.affinity = None;
    let error_route = Route {
        backend: fallback,
        fallback: None,
        options: Arc::new(options),
        ..route.clone()
    };
    record.backend = Some(fallback);
    let (response, upstream, _) = forward(
        proxy,
        runtime,
        &error_route,
        outgoing,
        &Balance::RoundRobin,
        record,
    )
    .await?;
    record.upstream = Some(upstream);
    Ok(response)
}

/// Sends the request, trying another endpoint when a bodiless request could not
/// connect (it never reached a backend, so sending it again is safe).
async fn forward(
    proxy: &Proxy,
    runtime: &Runtime,
    route: &Route,
    mut outgoing: Outgoing,
    balance: &Balance,
    record: &mut Record,
) -> Result<(Response<UpstreamBody>, Upstream, Option<String>), Refusal> {
    let protocol = route.options.backend_protocol;
    let ingress = &route.ingress;
    let failed = |kind: &'static str| {
        proxy
            .gateway
            .metrics
            .upstream_errors
            .get_or_create(&UpstreamErrorLabels {
                ingress: IngressName(ingress.label().clone()),
                kind,
            })
            .inc();
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (upstream, endpoints, new_cookie) =
            choose(proxy, runtime, route, balance, attempt).map_err(|reason| {
                failed("no_endpoints");
                Refusal::new(StatusCode::SERVICE_UNAVAILABLE, reason)
            })?;
        let sending = outgoing.request(&upstream, protocol, route.options.read_timeout)?;
        let response = match (
            route.options.backend_tls.as_ref().filter(|_| protocol.is_tls()),
            sending,
        ) {
            (Some(tls), Attempt::Request(request)) => {
                let b = runtime.snapshot.backend(route.backend);
                let service_name = format!("{}.{}.svc", b.service, b.namespace);
                let sent = proxy
                    .upstreams
                    .send_tls(protocol, tls, &service_name, request)
                    .map_err(|e| {
                        failed("tls");
                        tracing::error!(ingress = %ingress, error = %e, "backend TLS configuration could not be built");
                        Refusal::new(StatusCode::BAD_GATEWAY, format!("backend TLS configuration failed: {e}"))
                    })?;
                proxy::unpooled(sent, route.options.read_timeout).await
            }
            // Awaited where it is made: a future held in an `Either` first is moved
            // (1.4 KB) once more.
            (_, sending) => {
                proxy
                    .upstreams
                    .send(protocol, sending, route.options.read_timeout)
                    .await
            }
        };
        match response {
            Ok(response) => return Ok((response, upstream, new_cookie)),
            Err(UpstreamError::NoAnswer(_)) => {
                failed("timeout");
                record.upstream = Some(upstream.clone());
                return Err(Refusal::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "backend {upstream} sent no response within {:?}",
                        route.options.read_timeout
                    ),
                ));
            }
            Err(err) => {
                let failure = UpstreamFailure::classify(&err);
                failed(failure.label());
                if let (UpstreamFailure::Connect | UpstreamFailure::Timeout, Upstream::Address(a)) =
                    (failure, &upstream)
                {
                    tracing::warn!(endpoint = %a, ejected_for = ?crate::state::EJECTION, "endpoint failed to connect: left out of rotation");
                    proxy.gateway.ejections.eject(*a);
                }
                record.upstream = Some(upstream.clone());
                let retry =
                    failure == UpstreamFailure::Connect && outgoing.bodiless && attempt < endpoints.min(3);
                if retry {
                    tracing::debug!(%upstream, error = %err, "connect failed; trying another endpoint");
                    continue;
                }
                // A pooled connection that the backend closed just as it was reused fails
                // before any response. An idempotent request without a body may be sent
                // again (RFC 9110 section 9.2.2), as nginx's proxy_next_upstream does.
                let resend = failure == UpstreamFailure::Protocol
                    && outgoing.bodiless
                    && outgoing.method.is_idempotent()
                    && attempt < 3;
                if resend {
                    tracing::debug!(%upstream, error = %err, "no response on the connection; sending the idempotent request again");
                    continue;
                }
                let (status, what) = match failure {
                    UpstreamFailure::Connect => (StatusCode::BAD_GATEWAY, "could not connect to"),
                    UpstreamFailure::Timeout => (StatusCode::GATEWAY_TIMEOUT, "timed out connecting to"),
                    UpstreamFailure::BodyTooLarge => {
                        // The rest of the body is still on the wire: close rather than read it.
                        return Err(Refusal {
                            close: true,
                            ..Refusal::new(StatusCode::PAYLOAD_TOO_LARGE, "request body too large")
                        });
                    }
                    UpstreamFailure::ClientBody => {
                        (StatusCode::BAD_REQUEST, "the request body failed on its way to")
                    }
                    UpstreamFailure::ClientTimeout => {
                        // The rest of the body may still come: close rather than read it.
                        return Err(Refusal {
                            close: true,
                            ..Refusal::new(
                                StatusCode::REQUEST_TIMEOUT,
                                format!("the client paused its request body to {upstream} for longer than timeouts.clientBody"),
                            )
                        });
                    }
                    UpstreamFailure::Protocol => (StatusCode::BAD_GATEWAY, "bad response from"),
                    UpstreamFailure::Tls => {
                        tracing::warn!(ingress = %ingress, %upstream, error = %error_chain(&err), "backend TLS handshake failed: certificate not verified or refused; answering 502");
                        (StatusCode::BAD_GATEWAY, "TLS handshake failed with")
                    }
                };
                return Err(Refusal::new(
                    status,
                    format!("{what} backend {upstream}: {}", error_chain(&err)),
                ));
            }
        }
    }
}

/// The endpoint for one attempt, with the value of a new sticky cookie when the
/// session's endpoint changed.
fn choose(
    proxy: &Proxy,
    runtime: &Runtime,
    route: &Route,
    balance: &Balance,
    attempt: usize,
) -> Result<(Upstream, usize, Option<String>), String> {
    let ejections = &proxy.gateway.ejections;
    match (balance, &route.options.affinity) {
        (Balance::Sticky { cookie, .. }, Some(Affinity::Cookie(sticky))) => {
            // A retry follows a failed connect, which ejected the endpoint: persistent
            // sessions stay unless change-on-failure asks to move them.
            let keep_ejected =
                sticky.mode == AffinityMode::Persistent && !(sticky.change_on_failure && attempt > 1);
            runtime.pick_sticky(
                route.backend,
                ejections,
                &proxy.sticky_key,
                cookie.as_deref(),
                keep_ejected,
            )
        }
        (Balance::Hash(key), _) => runtime
            .pick_hashed(route.backend, ejections, key)
            .map(|(u, n)| (u, n, None)),
        _ => runtime.pick(route.backend, ejections).map(|(u, n)| (u, n, None)),
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// The backend's response, cleaned for the client; a 101 starts the tunnel.
fn relay_response(
    response: Response<UpstreamBody>,
    route: &Route,
    conn: &ClientConn,
    client_upgrade: Option<(HeaderValue, UpgradeSlot)>,
) -> Response<Body> {
    let (mut parts, body) = response.into_parts();
    if parts.status == StatusCode::SWITCHING_PROTOCOLS {
        if let Some((requested, client)) = client_upgrade {
            // The switch itself is passed on; the backend's other connection fields
            // (and those its Connection names) are its own, as on any response. A
            // 101 without `Upgrade` switched to what the client asked for.
            let protocol = parts.headers.get(header::UPGRADE).cloned().unwrap_or(requested);
            proxy::remove_hop_by_hop(&mut parts.headers);
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, protocol);
            let mut backend_response = Response::from_parts(parts, body);
            let backend = proxy::switched(&mut backend_response);
            proxy::spawn_tunnel(client.accept(), backend, conn.drain.clone());
            let (parts, _) = backend_response.into_parts();
            return Response::from_parts(parts, proxy::empty());
        }
        // A 101 nobody asked for cannot be relayed.
        return local_response(
            Refusal::new(StatusCode::BAD_GATEWAY, "backend switched protocols unasked"),
            "",
        );
    }
    proxy::remove_hop_by_hop(&mut parts.headers);
    let body = ReadTimeout::new(body, route.options.read_timeout, proxy::Sender::Backend).boxed_unsync();
    Response::from_parts(parts, body)
}

fn local_response(refusal: Refusal, request_id: &str) -> Response<Body> {
    let text = format!(
        "{} {}\n{}\nrequest id: {request_id}\n",
        refusal.status.as_u16(),
        refusal.status.canonical_reason().unwrap_or(""),
        public_message(&refusal)
    );
    let mut response = Response::new(proxy::full(text));
    *response.status_mut() = refusal.status;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if refusal.close {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if let Some(location) = refusal.location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        h.insert(header::LOCATION, location);
    }
    if let Some(seconds) = refusal.retry_after {
        h.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// Backend addresses and error chains stay in the log; clients get the gist.
fn public_message(refusal: &Refusal) -> &str {
    match refusal.status {
        StatusCode::BAD_GATEWAY => "the backend could not be reached or answered badly",
        StatusCode::SERVICE_UNAVAILABLE => "no backend is available for this route",
        StatusCode::GATEWAY_TIMEOUT => "the backend did not answer in time",
        StatusCode::REQUEST_TIMEOUT => "the request body stalled",
        _ => &refusal.message,
    }
}

fn finish_headers(proxy: &Proxy, conn: &ClientConn, response: &mut Response<Body>, request_id: &RequestId) {
    let h = response.headers_mut();
    // Never indexed by HTTP/2's HPACK: an id never repeats, and indexing each one
    // churns the connection's header table for nothing.
    let mut id = request_id.0.clone();
    id.set_sensitive(true);
    h.insert(X_REQUEST_ID, id);
    if let (true, Some(hsts)) = (conn.tls, &proxy.hsts) {
        // The backend's own, if it sent one.
        h.entry(header::STRICT_TRANSPORT_SECURITY)
            .or_insert_with(|| hsts.clone());
    }
}

/// The `Strict-Transport-Security` value of `tls.hsts*`, or none when `hstsMaxAge` is 0.
fn hsts_value(tls: &portcullis_config::settings::TlsSettings) -> Option<HeaderValue> {
    let max_age = tls.hsts_max_age.0.as_secs();
    let value = match (max_age, tls.hsts_include_subdomains) {
        (0, _) => return None,
        (_, true) => format!("max-age={max_age}; includeSubDomains"),
        (_, false) => format!("max-age={max_age}"),
    };
    HeaderValue::from_str(&value).ok()
}

/// Request ids: a client's `X-Request-Id` is kept when it is short and plain; otherwise
/// a new one is made from a random per-process prefix and a counter.
struct RequestIds {
    /// The prefix in hex, written once.
    prefix: [u8; 16],
    counter: std::sync::atomic::AtomicU64,
}

impl RequestIds {
    fn new() -> Self {
        let mut seed = [0u8; 8];
        // Falls back to the clock only if the OS has no randomness to give.
        let prefix = match ring_random(&mut seed) {
            Ok(()) => u64::from_le_bytes(seed),
            Err(()) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0),
        };
        RequestIds {
            prefix: hex16(prefix),
            counter: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn for_request(&self, headers: &http::HeaderMap) -> RequestId {
        if let Some(id) = headers.get(&X_REQUEST_ID) {
            let id_bytes = id.as_bytes();
            if !id_bytes.is_empty()
                && id_bytes.len() <= 128
                && id_bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
            {
                return RequestId(id.clone());
            }
        }
        let n = self.counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // 32 hex digits: the prefix, then the counter.
        let mut id = [0u8; 32];
        id[..16].copy_from_slice(&self.prefix);
        id[16..].copy_from_slice(&hex16(n));
        // Owned where it lies: its copies (the backend's field, the response's) then
        // share it without a second allocation.
        RequestId(
            HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(id))
                .unwrap_or_else(|_| HeaderValue::from_static("-")),
        )
    }
}

/// `value` as 16 lower-case hex digits.
fn hex16(value: u64) -> [u8; 16] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 16];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = HEX[(value >> (60 - 4 * i)) as usize & 15];
    }
    out
}

/// A uniformly random number from 1 to `total`, for canary weights.
fn canary_roll(total: u32) -> u32 {
    let mut bytes = [0u8; 8];
    // Without randomness from the OS, the clock's nanoseconds still split the traffic.
    let n = match ring_random(&mut bytes) {
        Ok(()) => u64::from_le_bytes(bytes),
        Err(()) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::from(d.subsec_nanos()))
            .unwrap_or(0),
    };
    // 64 random bits modulo a 32-bit total: the bias is below 2^-32.
    u32::try_from(n % u64::from(total.max(1))).map_or(total, |r| r + 1)
}

fn ring_random(buf: &mut [u8]) -> Result<(), ()> {
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(buf)
        .map_err(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_request_ids_are_the_prefix_then_the_counter_in_hex() {
        let ids = RequestIds {
            prefix: hex16(0x0123_4567_89ab_cdef),
            counter: std::sync::atomic::AtomicU64::new(0xfe),
        };
        let none = http::HeaderMap::new();
        assert_eq!(
            ids.for_request(&none).as_str(),
            "0123456789abcdef00000000000000fe"
        );
        assert_eq!(
            ids.for_request(&none).as_str(),
            "0123456789abcdef00000000000000ff"
        );
        let mut forged = http::HeaderMap::new();
        forged.insert("x-request-id", HeaderValue::from_static("abc def"));
        assert_eq!(
            ids.for_request(&forged).as_str(),
            "0123456789abcdef0000000000000100"
        );
        let mut kept = http::HeaderMap::new();
        kept.insert("x-request-id", HeaderValue::from_static("trace-1.2:3_4"));
        assert_eq!(ids.for_request(&kept).as_str(), "trace-1.2:3_4");
    }
}
