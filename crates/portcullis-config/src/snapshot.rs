//! The compiled, immutable configuration the gateway serves from. Built by
//! [`crate::compile`], published whole, never changed in place.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::sign::CertifiedKey;

use crate::routes::{parent_domain, RouteId, RouteTable};

/// Index of a backend in [`Snapshot::backends`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendId(pub usize);

/// How the gateway speaks to a backend (`portcullis.dev/backend-protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum BackendProtocol {
    /// HTTP/1.1 over TCP (the default).
    #[default]
    Http,
    /// HTTP/1.1 or HTTP/2 (by ALPN) over TLS.
    Https,
    /// HTTP/2 over TCP with prior knowledge.
    H2c,
    /// gRPC: HTTP/2 over TCP with prior knowledge.
    Grpc,
    /// gRPC over TLS.
    Grpcs,
}

impl BackendProtocol {
    pub fn is_tls(self) -> bool {
        matches!(self, BackendProtocol::Https | BackendProtocol::Grpcs)
    }

    /// Whether only HTTP/2 may be spoken.
    pub fn is_h2_only(self) -> bool {
        matches!(
            self,
            BackendProtocol::H2c | BackendProtocol::Grpc | BackendProtocol::Grpcs
        )
    }
}

impl fmt::Display for BackendProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendProtocol::Http => "HTTP",
            BackendProtocol::Https => "HTTPS",
            BackendProtocol::H2c => "H2C",
            BackendProtocol::Grpc => "GRPC",
            BackendProtocol::Grpcs => "GRPCS",
        })
    }
}

/// Who must a request prove to be (`portcullis.dev/auth`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AuthMode {
    /// No authentication (the default; `check` points such routes out).
    #[default]
    None,
    /// Browser login with the named provider; bearer tokens are accepted too.
    Oidc { provider: String },
    /// Bearer tokens from the named provider only.
    Jwt { provider: String },
}

impl AuthMode {
    pub fn provider(&self) -> Option<&str> {
        match self {
            AuthMode::None => None,
            AuthMode::Oidc { provider } | AuthMode::Jwt { provider } => Some(provider),
        }
    }
}

impl fmt::Display for AuthMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthMode::None => f.write_str("none"),
            AuthMode::Oidc { provider } => write!(f, "oidc (provider {provider})"),
            AuthMode::Jwt { provider } => write!(f, "jwt (provider {provider})"),
        }
    }
}

/// What a rate limit counts by (`portcullis.dev/rate-limit-key`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RateLimitKey {
    /// The client address (the default).
    #[default]
    Client,
    /// The authenticated subject (needs `auth`).
    User,
}

/// A token bucket: `rate` requests per `per`, with bursts of up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub rate: u32,
    pub per: Duration,
    pub burst: u32,
    pub key: RateLimitKey,
}

impl RateLimit {
    /// Tokens added per second.
    pub fn per_second(&self) -> f64 {
        f64::from(self.rate) / self.per.as_secs_f64()
    }
}

/// Per-route settings, from the Ingress's annotations with the config file's defaults
/// filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteOptions {
    /// Plain-HTTP requests for a TLS host get 308 to HTTPS. Default true.
    pub ssl_redirect: bool,
    /// Largest request body; `None` is unlimited.
    pub max_body_size: Option<u64>,
    pub backend_protocol: BackendProtocol,
    /// Backend response headers, and each read of its body, must arrive within this.
    pub read_timeout: Duration,
    pub auth: AuthMode,
    /// Send the backend a short-lived JWT signed by the gateway saying who called
    /// (`portcullis.dev/identity-assertion`).
    pub identity_assertion: bool,
    /// Who may pass, and from where.
    pub policy: crate::policy::Policy,
    pub rate_limit: Option<RateLimit>,
    /// Concurrent requests per client address on this route.
    pub max_connections: Option<u32>,
    /// Plain HTTP redirects to HTTPS even when the host has no TLS
    /// (`nginx.ingress.kubernetes.io/force-ssl-redirect`).
    pub force_ssl_redirect: bool,
    /// Every request is answered with this redirect (`permanent-redirect`,
    /// `temporal-redirect`).
    pub redirect: Option<Redirect>,
    /// Requests for `/` are redirected here (`app-root`).
    pub app_root: Option<String>,
    /// The Ingress's paths are regular expressions (`use-regex`, `rewrite-target`).
    pub regex_paths: bool,
    /// The upstream path replaces the request's (`rewrite-target`).
    pub rewrite_target: Option<crate::rewrite::RewriteTarget>,
    /// Sent to the backend as `X-Forwarded-Prefix` (`x-forwarded-prefix`).
    pub forwarded_prefix: Option<String>,
    /// Sent to the backend as `Host` instead of the client's (`upstream-vhost`).
    pub upstream_host: Option<String>,
    /// Preflight answers and CORS response headers (`enable-cors`).
    pub cors: Option<crate::cors::Cors>,
    /// Every request is first checked with an auth service (`auth-url`).
    pub external_auth: Option<crate::external_auth::ExternalAuth>,
    /// Every request needs a user and password from an htpasswd Secret
    /// (`auth-type: basic`).
    pub basic_auth: Option<BasicAuth>,
    /// Requests go to the Service's cluster IP, not its endpoints (`service-upstream`).
    pub service_upstream: bool,
    /// TLS connections for the Ingress's hosts are relayed unterminated to its backend
    /// (`ssl-passthrough`).
    pub ssl_passthrough: bool,
    /// `www.HOST` and `HOST` redirect to each other (`from-to-www-redirect`).
    pub www_redirect: bool,
    /// Requests are redirected to the same scheme, port and URI on this host (the
    /// routes `from-to-www-redirect` adds).
    pub host_redirect: Option<String>,
    /// Verification of, and client certificates towards, an HTTPS or GRPCS backend
    /// (`proxy-ssl-secret` and the other `proxy-ssl-*` annotations).
    pub backend_tls: Option<Arc<BackendTls>>,
    /// Client certificate authentication on this Ingress's routes (`auth-tls-secret`
    /// and the other `auth-tls-*` annotations).
    pub client_auth: Option<Arc<crate::client_auth::ClientAuth>>,
    /// Response headers set on every proxied response, replacing the backend's
    /// (`custom-headers`, read from a ConfigMap by the compiler). Default none.
    pub custom_headers: Option<Arc<crate::custom_headers::CustomHeaders>>,
    /// This Ingress is a canary (`canary: "true"`): it serves no routes of its own but
    /// lends its backends to the main Ingress's routes with the same host and path.
    pub canary: Option<CanaryRules>,
    /// Which endpoint a request goes to, when not round robin (`affinity: cookie`,
    /// `upstream-hash-by`).
    pub affinity: Option<Affinity>,
    /// ingress-nginx's `default-backend`: a Service in the Ingress's namespace that
    /// serves the route when its own Service has no ready endpoints, and answers in
    /// place of the statuses in `custom_http_errors`. The compiler resolves it into
    /// [`crate::routes::Route::fallback`]. Default none.
    pub default_backend: Option<String>,
    /// ingress-nginx's `custom-http-errors`: backend statuses (400 to 599, sorted, no
    /// duplicates) replaced by the default backend's answer. Empty by default; without
    /// a default backend they have no effect.
    pub custom_http_errors: Vec<u16>,
}

/// Which requests go to a canary instead of the main backend, from ingress-nginx's
/// `canary-by-header`, `canary-by-cookie` and `canary-weight` annotations, tried in
/// that order (see [`crate::canary`]).
#[derive(Debug, Clone)]
pub struct CanaryRules {
    /// `canary-by-header`, with how its value is judged.
    pub header: Option<CanaryHeader>,
    /// `canary-by-cookie`: the cookie's name; `always` and `never` decide.
    pub cookie: Option<String>,
    /// `canary-weight`: requests out of [`CanaryRules::weight_total`] sent to the canary.
    pub weight: u32,
    /// `canary-weight-total`; 100 unless set above 100, as ingress-nginx reads it.
    pub weight_total: u32,
}

impl PartialEq for CanaryRules {
    fn eq(&self, other: &Self) -> bool {
        self.header == other.header
            && self.cookie == other.cookie
            && self.weight == other.weight
            && self.weight_total == other.weight_total
    }
}

/// `canary-by-header` and what the header's value must be.
#[derive(Debug, Clone, PartialEq)]
pub struct CanaryHeader {
    pub name: http::HeaderName,
    pub value: CanaryHeaderValue,
}

/// How the value of the canary header is judged.
#[derive(Debug, Clone)]
pub enum CanaryHeaderValue {
    /// `always` sends the request to the canary, `never` to the main backend.
    AlwaysNever,
    /// `canary-by-header-value`: exactly this value sends it to the canary.
    Exact(http::HeaderValue),
    /// `canary-by-header-pattern`: a value this (unanchored) regex matches sends it to
    /// the canary.
    Pattern(regex::Regex),
}

impl PartialEq for CanaryHeaderValue {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::AlwaysNever, Self::AlwaysNever) => true,
            (Self::Exact(a), Self::Exact(b)) => a == b,
            (Self::Pattern(a), Self::Pattern(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

/// A canary attached to a main route: the route copied with the canary Ingress's
/// backend, so that a request sent to the canary is handled with the main route's
/// settings (as ingress-nginx does) but forwarded to the canary's Service.
#[derive(Debug, Clone)]
pub struct Canary {
    pub rules: CanaryRules,
    /// `ingress`, `field` and `backend` are the canary Ingress's; the rest the main
    /// route's.
    pub route: crate::routes::Route,
}

/// HTTP basic authentication against the users of a Secret.
#[derive(Debug, Clone)]
pub struct BasicAuth {
    /// Sent in `WWW-Authenticate: Basic realm="..."` (`auth-realm`).
    pub realm: String,
    /// The Secret's name, in the Ingress's namespace (`auth-secret`).
    pub secret: String,
    /// `auth-secret-type: auth-map`: one key per user; else the `auth` key holds an
    /// htpasswd file.
    pub map: bool,
    /// Filled in from the Secret when the Ingress is compiled; until then nobody.
    pub users: Arc<crate::htpasswd::Htpasswd>,
}

impl PartialEq for BasicAuth {
    fn eq(&self, other: &Self) -> bool {
        self.realm == other.realm
            && self.secret == other.secret
            && self.map == other.map
            && Arc::ptr_eq(&self.users, &other.users)
    }
}

/// TLS towards an HTTPS or GRPCS backend: the material of a rustls `ClientConfig`,
/// from ingress-nginx's `proxy-ssl-*` annotations and the Secret they name. Equal
/// values mean the same client configuration, so the gateway keeps one connection pool
/// per distinct value, across reloads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackendTls {
    /// The Secret's name, in the Ingress's namespace (`proxy-ssl-secret`).
    pub secret: String,
    /// Verify the backend's certificate chain against [`Self::ca`] and its name against
    /// [`Self::server_name`] (`proxy-ssl-verify: on`). Default false, as ingress-nginx.
    pub verify: bool,
    /// The name the certificate must carry, and the SNI when [`Self::send_sni`]
    /// (`proxy-ssl-name`). `None`: the Service's DNS name, `SERVICE.NAMESPACE.svc`.
    pub server_name: Option<String>,
    /// Send the server name in the TLS SNI extension (`proxy-ssl-server-name: on`).
    /// Default false, as ingress-nginx.
    pub send_sni: bool,
    /// TLS versions offered (`proxy-ssl-protocols`). Default both 1.2 and 1.3.
    pub versions: TlsVersions,
    /// `proxy-ssl-verify-depth` (default 1): the most intermediate certificates the
    /// backend's chain may need (enforced by the gateway's backend TLS verifier).
    pub verify_depth: u32,
    /// Trust anchors from `ca.crt`, DER. Filled in from the Secret when the Ingress is
    /// compiled; until then empty, which trusts nothing.
    pub ca: Vec<rustls_pki_types::CertificateDer<'static>>,
    /// `tls.crt` and `tls.key`, when the Secret has them: presented to the backend.
    pub client_cert: Option<ClientCert>,
}

/// The TLS versions offered to a backend; at least one is true.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TlsVersions {
    pub tls12: bool,
    pub tls13: bool,
}

impl Default for TlsVersions {
    fn default() -> Self {
        TlsVersions {
            tls12: true,
            tls13: true,
        }
    }
}

/// A client certificate chain and its private key, checked to match at compile time.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientCert {
    pub chain: Vec<rustls_pki_types::CertificateDer<'static>>,
    pub key: Arc<rustls_pki_types::PrivateKeyDer<'static>>,
}

impl std::hash::Hash for ClientCert {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.chain.hash(state);
        self.key.secret_der().hash(state);
    }
}

/// The key is left out: secrets never reach a log.
impl fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCert")
            .field("chain", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl RouteOptions {
    /// Whether the route asks who is calling: `portcullis.dev/auth`, or ingress-nginx's
    /// `auth-url` or basic authentication.
    pub fn authenticates(&self) -> bool {
        self.auth != AuthMode::None || self.external_auth.is_some() || self.basic_auth.is_some()
    }
}

/// How requests of one route choose among the backend's ready endpoints instead of
/// round robin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Affinity {
    /// Sticky sessions: a cookie names the endpoint (`affinity: cookie`).
    Cookie(StickyCookie),
    /// Consistent hashing of request values (`upstream-hash-by`): the same values go
    /// to the same endpoint while it is ready.
    Hash(Vec<HashPart>),
}

/// The sticky-session cookie and when it changes (`session-cookie-*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StickyCookie {
    pub mode: AffinityMode,
    /// Default `INGRESSCOOKIE`, as ingress-nginx.
    pub name: String,
    /// `None`: the route's path, as ingress-nginx (which uses the matched location).
    pub path: Option<String>,
    /// `Domain` attribute; `None` leaves it out (the cookie is host-only).
    pub domain: Option<String>,
    /// `Max-Age` in seconds; `None` leaves it out (a browser-session cookie).
    pub max_age: Option<u64>,
    /// `Expires`, as seconds from when the cookie is set; `None` leaves it out.
    pub expires: Option<u64>,
    /// `SameSite` attribute; `None` leaves it out.
    pub same_site: Option<SameSite>,
    /// Leave out `SameSite=None` for browsers known to reject such cookies
    /// (`session-cookie-conditional-samesite-none`).
    pub conditional_same_site_none: bool,
    /// `Secure` attribute; `None`: set when the request came over HTTPS.
    pub secure: Option<bool>,
    /// When the cookie's endpoint fails to connect, choose another and set a new
    /// cookie (`session-cookie-change-on-failure`).
    pub change_on_failure: bool,
}

impl StickyCookie {
    /// ingress-nginx's defaults for `affinity: cookie` alone.
    pub fn new() -> Self {
        StickyCookie {
            mode: AffinityMode::Balanced,
            name: "INGRESSCOOKIE".to_string(),
            path: None,
            domain: None,
            max_age: None,
            expires: None,
            same_site: None,
            conditional_same_site_none: false,
            secure: None,
            change_on_failure: false,
        }
    }
}

impl Default for StickyCookie {
    fn default() -> Self {
        Self::new()
    }
}

/// How sticky a session is (`affinity-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AffinityMode {
    /// The default: a session whose endpoint is ejected after failing moves to
    /// another endpoint (with a new cookie).
    #[default]
    Balanced,
    /// A session stays on its endpoint while the endpoint is ready, even while it is
    /// ejected after failing (unless `change_on_failure`).
    Persistent,
}

/// The cookie `SameSite` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    Strict,
    Lax,
    None,
}

impl fmt::Display for SameSite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SameSite::Strict => "Strict",
            SameSite::Lax => "Lax",
            SameSite::None => "None",
        })
    }
}

/// One piece of an `upstream-hash-by` key, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashPart {
    /// Text between variables, taken as written.
    Text(String),
    /// `$request_uri`: the request target as the client sent it (path and query).
    RequestUri,
    /// `$remote_addr`: the client address (after `trustedProxies`).
    RemoteAddr,
    /// `$http_NAME`: a request header, named in lower case with `_` as `-`.
    Header(String),
    /// `$cookie_NAME`: a request cookie's value.
    Cookie(String),
}

/// A redirect the gateway answers with instead of proxying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// 301, 302, 303, 307 or 308.
    pub code: u16,
    /// An absolute http(s) URL.
    pub location: String,
}

impl Default for RouteOptions {
    fn default() -> Self {
        RouteOptions {
            ssl_redirect: true,
            max_body_size: Some(64 << 20),
            backend_protocol: BackendProtocol::Http,
            read_timeout: Duration::from_secs(60),
            auth: AuthMode::None,
            identity_assertion: false,
            policy: crate::policy::Policy::default(),
            rate_limit: None,
            max_connections: None,
            force_ssl_redirect: false,
            redirect: None,
            app_root: None,
            regex_paths: false,
            rewrite_target: None,
            forwarded_prefix: None,
            upstream_host: None,
            cors: None,
            external_auth: None,
            basic_auth: None,
            service_upstream: false,
            ssl_passthrough: false,
            www_redirect: false,
            host_redirect: None,
            backend_tls: None,
            client_auth: None,
            custom_headers: None,
            canary: None,
            affinity: None,
            default_backend: None,
            custom_http_errors: Vec::new(),
        }
    }
}

/// Where a backend's requests go.
#[derive(Debug, Clone, PartialEq)]
pub enum BackendTarget {
    /// Ready endpoint addresses from EndpointSlices. Empty: no ready endpoint (503).
    Endpoints(Vec<SocketAddr>),
    /// An `ExternalName` Service: a DNS name resolved when connecting.
    External { host: String, port: u16 },
    /// The Service or its port does not exist (503, with this reason in the log).
    Unavailable(String),
}

/// A Service port that routes point at.
#[derive(Debug, Clone, PartialEq)]
pub struct Backend {
    pub namespace: String,
    pub service: String,
    /// The port as the Ingress named it: a number or a port name.
    pub port: String,
    pub target: BackendTarget,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.namespace, self.service, self.port)
    }
}

/// A certificate loaded from a `kubernetes.io/tls` Secret and checked.
#[derive(Debug, Clone)]
pub struct Certificate {
    /// `namespace/name` of the Secret.
    pub secret: String,
    pub key: Arc<CertifiedKey>,
    /// DNS names and IP addresses in the certificate's subjectAltName.
    pub names: Vec<String>,
    /// Unix seconds.
    pub not_after: i64,
}

/// Certificates by SNI name.
#[derive(Debug, Clone, Default)]
pub struct CertificateStore {
    pub exact: HashMap<String, Arc<Certificate>>,
    /// `*.example.com` entries, by `example.com`.
    pub wildcard: HashMap<String, Arc<Certificate>>,
    /// `tls.defaultCertificate` from the config file, when it names a valid Secret.
    pub default: Option<Arc<Certificate>>,
}

impl CertificateStore {
    /// The certificate for an SNI name (lower case), if an Ingress declared one. The
    /// caller falls back to the default certificate.
    pub fn for_server_name(&self, name: &str) -> Option<&Arc<Certificate>> {
        self.exact
            .get(name)
            .or_else(|| parent_domain(name).and_then(|p| self.wildcard.get(p)))
    }
}

/// Counts for `portcullis check` and the logs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    pub ingresses_served: usize,
    pub ingresses_rejected: usize,
    /// Ingresses of another IngressClass (or class-less without a default class).
    pub ingresses_other_class: usize,
    pub services: usize,
    pub endpoint_slices: usize,
    pub secrets: usize,
    pub ignored: BTreeMap<String, usize>,
}

/// Everything a request needs, compiled and validated.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub routes: RouteTable,
    pub backends: Vec<Backend>,
    pub certificates: CertificateStore,
    /// Hosts named in `spec.tls` of served Ingresses: exact names.
    pub tls_hosts: std::collections::HashSet<String>,
    /// `*.example.com` entries of `spec.tls`, by `example.com`.
    pub tls_wildcards: std::collections::HashSet<String>,
    /// Values of the Secrets the config file refers to (`{secret: NS/NAME, key: K}`),
    /// by `NS/NAME` and key.
    pub referenced_secrets: HashMap<(String, String), Vec<u8>>,
    /// Hosts whose TLS connections go unterminated to a backend (`ssl-passthrough`).
    pub passthrough: HashMap<String, BackendId>,
    pub stats: Stats,
}

impl Snapshot {
    pub fn backend(&self, id: BackendId) -> &Backend {
        &self.backends[id.0]
    }

    /// Whether some served Ingress declares TLS for this (normalized) host.
    pub fn host_has_tls(&self, host: &str) -> bool {
        self.tls_hosts.contains(host) || parent_domain(host).is_some_and(|p| self.tls_wildcards.contains(p))
    }

    /// Route lookup; see [`RouteTable::lookup`].
    pub fn lookup(&self, host: &str, path: &str) -> Option<RouteId> {
        self.routes.lookup(host, path)
    }
}
