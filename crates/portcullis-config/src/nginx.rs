//! ingress-nginx's `nginx.ingress.kubernetes.io/*` annotations, so that an Ingress
//! written for ingress-nginx behaves the same here. Every annotation ingress-nginx
//! documents is in [`ANNOTATIONS`] with how Portcullis treats it; the supported ones
//! are parsed into typed [`RouteOptions`] values, never pasted into configuration
//! (ingress-nginx's injection CVEs came from templating these strings into nginx.conf).
//!
//! What is not supported is never silently dropped: an annotation whose absence would
//! let through a request ingress-nginx refuses (authentication, client certificates, a
//! WAF) or that cannot work without it rejects the Ingress; snippets are refused for
//! good; the rest is served with a warning that names the annotation.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::cors::{Cors, CorsAnnotations};
use crate::problem::Severity;
use crate::rewrite::RewriteTarget;
use crate::snapshot::{BackendProtocol, RateLimit, RateLimitKey, Redirect, RouteOptions};
use crate::units::{parse_byte_size, parse_duration};

pub const PREFIX: &str = "nginx.ingress.kubernetes.io/";

/// How Portcullis treats one ingress-nginx annotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// Parsed and applied with ingress-nginx's documented behaviour.
    Exact,
    /// Parsed and applied; the text says how the behaviour differs.
    Differs(&'static str),
    /// Not supported, and serving without it would let through requests that
    /// ingress-nginx refuses, or could not work: the Ingress is rejected.
    Rejected(&'static str),
    /// Not supported; serving without it is safe. A warning says what is lost.
    Ignored(&'static str),
    /// Raw nginx configuration: refused for good, the Ingress is rejected.
    Refused,
}

/// One documented ingress-nginx annotation.
#[derive(Debug, Clone, Copy)]
pub struct Annotation {
    /// Without the prefix, e.g. `rewrite-target`.
    pub name: &'static str,
    pub support: Support,
    /// The `portcullis.dev/` equivalent (or the feature that replaces it), if any.
    pub portcullis: Option<&'static str>,
}

const fn a(name: &'static str, support: Support, portcullis: Option<&'static str>) -> Annotation {
    Annotation {
        name,
        support,
        portcullis,
    }
}

use Support::{Differs, Exact, Ignored, Refused, Rejected};

const STREAMS: Support = Differs("Portcullis streams request and response bodies and never buffers them to disk: accepted and validated, no effect");
const EXTERNAL: Support = Exact;
const EXTERNAL_CACHE: Support = Differs("every request is checked with the auth service: answers are not cached and connections to it are pooled by the gateway");
const EXTERNAL_SAFER: Support = Differs("the gateway writes the redirect parameter itself: nginx variables in the value are not expanded, $escaped_request_uri and similar become the request's URL; the certificate of an https auth-url is verified");
const MTLS: Support = Differs("applies to this Ingress's routes only, not to the whole host as in ingress-nginx (another Ingress on the same host is not asked for a certificate, and a certificate from another Ingress's CA does not pass); the Secret must be in the Ingress's namespace and hold ca.crt (in controller mode the gateway reads only Secrets of type kubernetes.io/tls, so ca.crt must sit beside tls.crt and tls.key); a request whose Host is such a route but whose TLS server name (SNI) differs is answered 421, so a reused HTTP/2 connection cannot skip the check");
const MTLS_VERIFY: Support = Differs("on (the default), off and optional as in ingress-nginx; optional_no_ca acts as optional: a certificate not issued by the CA in auth-tls-secret is refused (400), never passed on unverified");
const MTLS_DEPTH: Support = Differs("depth N accepts at most N intermediate certificates between the client's and the CA in auth-tls-secret, as nginx with OpenSSL 3; counted to the nearest certificate of ca.crt, as every certificate there is trusted; 0 is refused");
const MTLS_CN: Support = Differs("a regular expression (Rust regex syntax, no look-around) matched against the subject DN in RFC 2253 form (e.g. CN=client1,O=Org), as ingress-nginx matches $ssl_client_s_dn; no match answers 403");
const COOKIE_VALUE: Support = Differs("the cookie value is a keyed hash (HMAC-SHA256) of the backend and endpoint, not ingress-nginx's random key, so a session stays on its endpoint while that endpoint is ready: scaling up does not move existing sessions; a cookie set by ingress-nginx is not recognised and is replaced on the first request; the HMAC key is derived from the first oidc.sessionKeys entry when set, so every replica recognises the cookie, otherwise it is random per process and a client switching replicas (or after a restart) is pinned anew");
const WAF: Support = Rejected(
    "ModSecurity is not part of Portcullis: an Ingress that relies on a WAF is not served without one",
);
const BACKEND_TLS: Support = Differs(
    "applies only with proxy-ssl-secret and backend-protocol HTTPS or GRPCS; the Secret must be in the Ingress's namespace and hold ca.crt (in controller mode the gateway reads only Secrets of type kubernetes.io/tls, so ca.crt must sit beside tls.crt and tls.key); with proxy-ssl-verify off (the default, as ingress-nginx) the backend's certificate is not verified but the client certificate in tls.crt/tls.key is still presented; proxy-ssl-verify: on without proxy-ssl-secret rejects the Ingress; a failed verification answers 502",
);

const CUSTOM_HEADERS: Support = Differs(
    "the ConfigMap must be in the Ingress's namespace (in controller mode the gateway reads only ConfigMaps labelled portcullis.dev/custom-headers: \"true\"); there is no global-allowed-response-headers list: every entry must be a valid HTTP header, and hop-by-hop and framing headers (Connection, Keep-Alive, TE, Trailer, Upgrade, Transfer-Encoding, Content-Length, Content-Encoding) and Set-Cookie are refused; the headers replace the backend's on proxied responses and are set on the gateway's own answers for the route too (denials, errors); a missing or invalid ConfigMap rejects the Ingress rather than serving it without its (often security) headers",
);

/// Every annotation ingress-nginx documents, in the order of its documentation.
pub const ANNOTATIONS: &[Annotation] = &[
    a("app-root", Exact, None),
    a("affinity", COOKIE_VALUE, None),
    a("affinity-mode", Differs("balanced: a session whose endpoint is ejected after failing to connect (for 10 s) moves to another endpoint with a new cookie, even without session-cookie-change-on-failure; persistent (and persistent-drainable, which acts as persistent: only ready endpoints are seen) keeps it on its endpoint while that endpoint is ready"), None),
    a("affinity-canary-behavior", Ignored("a session is not kept on the canary: the canary rules decide each request, and the sticky cookie then picks the endpoint within the chosen backend"), None),
    a("auth-realm", Exact, None),
    a("auth-secret", Differs("the Secret must be in the Ingress's namespace; in controller mode it must carry the label portcullis.dev/basic-auth: \"true\" (the gateway reads no other Secrets); bcrypt, $apr1$ and {SHA} entries only"), Some("portcullis.dev/auth")),
    a("auth-secret-type", Exact, None),
    a("auth-type", Differs("basic only; digest is not supported (the Ingress is rejected)"), Some("portcullis.dev/auth")),
    a("auth-tls-secret", MTLS, None),
    a("auth-tls-verify-depth", MTLS_DEPTH, None),
    a("auth-tls-verify-client", MTLS_VERIFY, None),
    a("auth-tls-error-page", Exact, None),
    a("auth-tls-pass-certificate-to-upstream", Exact, None),
    a("auth-tls-match-cn", MTLS_CN, None),
    a("auth-url", EXTERNAL, Some("portcullis.dev/auth: oidc")),
    a("auth-cache-key", EXTERNAL_CACHE, None),
    a("auth-cache-duration", EXTERNAL_CACHE, None),
    a("auth-keepalive", EXTERNAL_CACHE, None),
    a("auth-keepalive-share-vars", EXTERNAL_CACHE, None),
    a("auth-keepalive-requests", EXTERNAL_CACHE, None),
    a("auth-keepalive-timeout", EXTERNAL_CACHE, None),
    a("auth-proxy-set-headers", Rejected("extra headers for the auth service from a ConfigMap are not supported"), None),
    a("auth-method", EXTERNAL, None),
    a("auth-signin", EXTERNAL_SAFER, Some("portcullis.dev/auth: oidc")),
    a("auth-signin-redirect-param", EXTERNAL, None),
    a("auth-request-redirect", EXTERNAL, None),
    a("auth-response-headers", EXTERNAL, None),
    a("auth-always-set-cookie", EXTERNAL, None),
    a("auth-snippet", Refused, None),
    a("enable-global-auth", Ignored("there is no global external authentication in Portcullis: every route says its own portcullis.dev/auth"), None),
    a("backend-protocol", Differs("AUTO_HTTP is HTTP; FCGI is not supported (the Ingress is rejected)"), Some("portcullis.dev/backend-protocol")),
    a("canary", Differs("the canary Ingress must be in the same namespace as the main Ingress (ingress-nginx takes any namespace's: a tenant could take another's traffic); a canary path with no main route, or a second canary for one route, is an error; its other annotations are ignored with a warning, as ingress-nginx ignores them (snippets are still refused)"), None),
    a("canary-by-header", Exact, None),
    a("canary-by-header-value", Exact, None),
    a("canary-by-header-pattern", Differs("Rust regular expression syntax (no look-around or backreferences: such a pattern rejects the canary Ingress); matched anywhere in the value and case-sensitive, as ingress-nginx does"), None),
    a("canary-by-cookie", Exact, None),
    a("canary-weight", Exact, None),
    a("canary-weight-total", Exact, None),
    a("client-body-buffer-size", STREAMS, None),
    a("configuration-snippet", Refused, None),
    a("custom-http-errors", Differs("applies only with default-backend (there is no global default backend; without it a warning says error responses are passed unchanged); the intercepted response's body is discarded and the default backend gets GET / without a body over plain HTTP, as ingress-nginx's error location sends it (ingress-nginx keeps the request's method and resends a buffered body) with X-Code, X-Format, X-Original-URI, X-Namespace, X-Ingress-Name, X-Service-Name, X-Service-Port and X-Request-ID; the client gets the default backend's status, headers and body"), None),
    a("custom-headers", CUSTOM_HEADERS, None),
    a("default-backend", Differs("the Service must be in the Ingress's namespace and its first port is used, as ingress-nginx does; it serves the route's requests (unchanged, with X-Code: 503 and the other X- headers) while the route's Service has no ready endpoints, or is missing; a Service that does not exist or has no ports is an error and the route answers 503 instead"), None),
    a("enable-cors", Exact, None),
    a("cors-allow-origin", Exact, None),
    a("cors-allow-methods", Exact, None),
    a("cors-allow-headers", Exact, None),
    a("cors-expose-headers", Exact, None),
    a("cors-allow-credentials", Exact, None),
    a("cors-max-age", Exact, None),
    a("force-ssl-redirect", Exact, None),
    a("from-to-www-redirect", Differs("the 308 keeps the port the request came to; the certificate for the other name is whichever covers it, or the default one"), None),
    a("http2-push-preload", Ignored("HTTP/2 server push is obsolete (browsers removed it)"), None),
    a("limit-connections", Differs("over the limit the answer is 429 Too Many Requests (ingress-nginx answers 503)"), Some("portcullis.dev/max-connections")),
    a("limit-rps", Differs("a token bucket of limit-rps × limit-burst-multiplier per client address; over the limit the answer is 429 with Retry-After (ingress-nginx answers 503); with limit-rpm also set, only limit-rps applies"), Some("portcullis.dev/rate-limit: N/s")),
    a("limit-rpm", Differs("a token bucket of limit-rpm × limit-burst-multiplier per client address; over the limit the answer is 429 with Retry-After (ingress-nginx answers 503)"), Some("portcullis.dev/rate-limit: N/m")),
    a("limit-burst-multiplier", Exact, Some("portcullis.dev/rate-limit-burst")),
    a("limit-rate-after", Ignored("response bandwidth is not limited"), None),
    a("limit-rate", Ignored("response bandwidth is not limited"), None),
    a("limit-whitelist", Ignored("no address is exempt from limit-rps, limit-rpm and limit-connections"), None),
    a("limit-allowlist", Ignored("no address is exempt from limit-rps, limit-rpm and limit-connections"), None),
    a("permanent-redirect", Exact, None),
    a("permanent-redirect-code", Exact, None),
    a("temporal-redirect", Exact, None),
    a("temporal-redirect-code", Exact, None),
    a("preserve-trailing-slash", Ignored("the HTTPS redirect always keeps the path as requested"), None),
    a("proxy-body-size", Exact, Some("portcullis.dev/max-body-size")),
    a("proxy-cookie-domain", Ignored("Set-Cookie domains from the backend are passed unchanged"), None),
    a("proxy-cookie-path", Ignored("Set-Cookie paths from the backend are passed unchanged"), None),
    a("proxy-connect-timeout", Differs("accepted and validated; every backend connection is bounded by the config file's timeouts.connect"), None),
    a("proxy-send-timeout", Differs("accepted and validated; a stalled request body is bounded by the config file's timeouts.clientBody"), None),
    a("proxy-read-timeout", Exact, Some("portcullis.dev/proxy-read-timeout")),
    a("proxy-next-upstream", Differs("only requests without a body that could not connect are sent to another endpoint"), None),
    a("proxy-next-upstream-timeout", Differs("only requests without a body that could not connect are sent to another endpoint"), None),
    a("proxy-next-upstream-tries", Differs("only requests without a body that could not connect are sent to another endpoint"), None),
    a("proxy-request-buffering", STREAMS, None),
    a("proxy-redirect-from", Ignored("Location headers from the backend are passed unchanged"), None),
    a("proxy-redirect-to", Ignored("Location headers from the backend are passed unchanged"), None),
    a("proxy-http-version", Differs("HTTP/1.1 to HTTP backends always; HTTP/2 for GRPC, GRPCS and H2C"), None),
    a("proxy-ssl-ciphers", Differs("validated, not applied: rustls' modern cipher suites are always used towards backends (a warning says so)"), None),
    a("proxy-ssl-name", Differs("verified against the backend's certificate and, with proxy-ssl-server-name: on, sent as SNI; without it the name is the Service's SERVICE.NAMESPACE.svc (nginx's default, $proxy_host, is ingress-nginx's internal upstream name); no nginx variables"), None),
    a("proxy-ssl-protocols", Differs("only TLSv1.2 and TLSv1.3 are offered (the default is both); SSLv2, SSLv3, TLSv1 and TLSv1.1 are dropped with a warning, and a value naming only those rejects the Ingress"), None),
    a("proxy-ssl-verify", BACKEND_TLS, None),
    a("proxy-ssl-verify-depth", Differs("depth N accepts at most N intermediate certificates between the backend's and ca.crt, as nginx with OpenSSL 3; counted to the nearest certificate of ca.crt, as every certificate there is trusted; a longer chain fails the handshake (502)"), None),
    a("proxy-ssl-server-name", Exact, None),
    a("proxy-ssl-secret", BACKEND_TLS, None),
    a("enable-rewrite-log", Ignored("rewrites are not logged separately; the access log has the request"), None),
    a("rewrite-target", Differs("ingress-nginx also turns the paths of every other Ingress on the same host into regular expressions; Portcullis does so only for this Ingress's paths"), None),
    a("satisfy", Rejected("satisfy changes how several access checks combine, and the checks it combines are not supported"), None),
    a("server-alias", Ignored("the aliases are not served; add them as hosts of the Ingress"), None),
    a("server-snippet", Refused, None),
    a("service-upstream", Exact, None),
    a("session-cookie-change-on-failure", Differs("only a request without a body that could not connect is sent to another endpoint, which then gets the new cookie"), None),
    a("session-cookie-conditional-samesite-none", Exact, None),
    a("session-cookie-domain", Exact, None),
    a("session-cookie-expires", Exact, None),
    a("session-cookie-max-age", Exact, None),
    a("session-cookie-name", Exact, None),
    a("session-cookie-path", Differs("required when the paths are regular expressions (use-regex or rewrite-target): without it the Ingress is rejected, where ingress-nginx would set the regular expression as the cookie's path"), None),
    a("session-cookie-samesite", Exact, None),
    a("session-cookie-secure", Exact, None),
    a("ssl-redirect", Exact, Some("portcullis.dev/ssl-redirect")),
    a("ssl-passthrough", Differs("HTTPS connections whose SNI names one of the Ingress's hosts are relayed unterminated, as TCP, to the backend of the host's first path, and so skip every HTTP-level annotation (as in ingress-nginx); plain HTTP to the host is still served by its rules; wildcard and host-less rules cannot be passed through"), None),
    a("stream-snippet", Refused, None),
    a("upstream-hash-by", Differs("rendezvous hashing over the ready endpoints instead of nginx's ketama ring, so the same key may land on another endpoint than under ingress-nginx (but always the same one here, on every replica); only $request_uri, $remote_addr, $http_NAME and $cookie_NAME, with text between them, are accepted: other variables reject the Ingress"), None),
    a("x-forwarded-prefix", Exact, None),
    a("load-balance", Differs("requests are always balanced round robin over the ready endpoints"), None),
    a("upstream-vhost", Exact, None),
    a("denylist-source-range", Exact, Some("portcullis.dev/deny-source-ranges")),
    a("whitelist-source-range", Exact, Some("portcullis.dev/allow-source-ranges")),
    a("allowlist-source-range", Exact, Some("portcullis.dev/allow-source-ranges")),
    a("proxy-buffering", STREAMS, None),
    a("proxy-buffers-number", STREAMS, None),
    a("proxy-buffer-size", STREAMS, None),
    a("proxy-busy-buffers-size", STREAMS, None),
    a("proxy-max-temp-file-size", STREAMS, None),
    a("ssl-ciphers", Differs("TLS versions and cipher suites are set for the whole gateway (tls.minVersion; modern suites only)"), None),
    a("ssl-prefer-server-ciphers", Differs("the server's cipher order is always preferred"), None),
    a("connection-proxy-header", Differs("the Connection header to backends is managed by the gateway"), None),
    a("enable-access-log", Differs("the access log and the audit log are configured for the whole gateway"), None),
    a("enable-opentelemetry", Ignored("tracing spans are not exported"), None),
    a("opentelemetry-trust-incoming-span", Ignored("tracing spans are not exported"), None),
    a("enable-modsecurity", WAF, None),
    a("enable-owasp-core-rules", WAF, None),
    a("modsecurity-transaction-id", WAF, None),
    a("modsecurity-snippet", Refused, None),
    a("mirror-request-body", Ignored("requests are not mirrored"), None),
    a("mirror-target", Ignored("requests are not mirrored"), None),
    a("mirror-host", Ignored("requests are not mirrored"), None),
    a("use-regex", Differs("paths are matched as ingress-nginx does (case-insensitive, anchored at the start, longest pattern first) but only this Ingress's paths become regular expressions, not every path on the host"), None),
];

/// The documented annotation called `name` (without the prefix).
pub fn annotation(name: &str) -> Option<&'static Annotation> {
    ANNOTATIONS.iter().find(|a| a.name == name)
}

/// Whether the Ingress's paths are regular expressions (`use-regex: "true"` or a
/// `rewrite-target`), read straight from the annotations.
pub fn wants_regex(annotations: Option<&BTreeMap<String, String>>) -> bool {
    let get = |name: &str| annotations.and_then(|m| m.get(&format!("{PREFIX}{name}")));
    get("rewrite-target").is_some() || get("use-regex").and_then(|v| parse_bool(v.trim())) == Some(true)
}

/// What parsing one Ingress's ingress-nginx annotations found: (annotation name without
/// prefix, severity, message).
pub type Finding = (String, Severity, String);

/// Applies the ingress-nginx annotations of one Ingress to `options`. Errors mean the
/// Ingress must not be served.
pub fn apply(annotations: &BTreeMap<String, String>, options: &mut RouteOptions) -> Vec<Finding> {
    // A canary Ingress only lends its backends to the main Ingress's routes, whose
    // annotations apply: ingress-nginx ignores the canary's others.
    let (is_canary, mut findings) = crate::canary::apply(annotations, options);
    if is_canary {
        return findings;
    }
    let mut error = |name: &str, message: String| findings.push((name.to_string(), Severity::Error, message));
    let get = |name: &str| annotations.get(&format!("{PREFIX}{name}")).map(|v| v.trim());
    let mut warnings = Vec::new();
    for (key, value) in annotations {
        let Some(name) = key.strip_prefix(PREFIX) else {
            continue;
        };
        let value = value.trim();
        let Some(known) = annotation(name) else {
            warnings.push((
                name.to_string(),
                "is not an ingress-nginx annotation Portcullis knows: ignored".to_string(),
            ));
            continue;
        };
        match known.support {
            Refused => error(
                name,
                "snippets are raw nginx configuration and are never accepted (they were the source of ingress-nginx's injection CVEs): the Ingress is rejected; use the typed annotations instead, e.g. portcullis.dev/ or the supported nginx.ingress.kubernetes.io/ ones".to_string(),
            ),
            Rejected(_) if is_off(name, value) => {}
            Rejected(why) => error(name, format!("{why}: the Ingress is rejected rather than served without it")),
            Ignored(why) => warnings.push((name.to_string(), format!("not supported: {why}"))),
            Exact | Differs(_) => {
                if let Err(message) = single(name, value, options) {
                    error(name, message);
                }
            }
        }
    }

    // Annotations that only mean something together.
    match error_pages(get("default-backend"), get("custom-http-errors")) {
        Ok((backend, codes, warning)) => {
            options.default_backend = backend;
            options.custom_http_errors = codes;
            warnings.extend(warning);
        }
        Err((name, message)) => error(name, message),
    }

    let redirect = redirect(
        get("temporal-redirect"),
        get("temporal-redirect-code"),
        302,
        307,
        "temporal-redirect",
    )
    .transpose()
    .or_else(|| {
        redirect(
            get("permanent-redirect"),
            get("permanent-redirect-code"),
            301,
            308,
            "permanent-redirect",
        )
        .transpose()
    });
    match redirect {
        Some(Ok((r, warning))) => {
            options.redirect = Some(r);
            if let Some(w) = warning {
                warnings.push(w);
            }
        }
        Some(Err((name, message))) => error(name, message),
        None => {}
    }

    if let Some(target) = get("rewrite-target") {
        match RewriteTarget::parse(target) {
            Ok(t) => {
                options.rewrite_target = Some(t);
                options.regex_paths = true;
            }
            Err(e) => error("rewrite-target", e),
        }
    }

    // After rewrite-target, which also makes the paths regular expressions.
    let (affinity, found) = crate::affinity::parse(get, options.regex_paths);
    options.affinity = affinity;
    for (name, severity, message) in found {
        match severity {
            Severity::Error => error(name, message),
            _ => warnings.push((name.to_string(), message)),
        }
    }

    if let Some(v) = get("custom-headers") {
        match crate::custom_headers::CustomHeaders::parse(v) {
            Ok(h) => options.custom_headers = Some(std::sync::Arc::new(h)),
            Err(e) => error("custom-headers", e),
        }
    }

    match basic_auth(&get) {
        Ok(basic) => options.basic_auth = basic,
        Err((name, e)) => error(name, e),
    }

    match crate::backend_tls::from_annotations(&get) {
        Ok((tls, found)) => {
            options.backend_tls = tls.map(std::sync::Arc::new);
            warnings.extend(found.into_iter().map(|(n, m)| (n.to_string(), m)));
        }
        Err((name, e)) => error(name, e),
    }

    match crate::client_auth::from_annotations(&get) {
        Ok((auth, found)) => {
            options.client_auth = auth.map(std::sync::Arc::new);
            warnings.extend(found.into_iter().map(|(n, m)| (n.to_string(), m)));
        }
        Err((name, e)) => error(name, e),
    }

    // Snippets and the other refused names are already reported from the table.
    let external = |name: &str| {
        get(name).filter(|_| !matches!(annotation(name).map(|a| a.support), Some(Refused | Rejected(_))))
    };
    match crate::external_auth::ExternalAuth::from_annotations(external) {
        Ok(external) => options.external_auth = external,
        Err(e) => error(e.annotation, e.reason),
    }

    let cors_values = CorsAnnotations {
        allow_origin: get("cors-allow-origin"),
        allow_methods: get("cors-allow-methods"),
        allow_headers: get("cors-allow-headers"),
        allow_credentials: get("cors-allow-credentials"),
        expose_headers: get("cors-expose-headers"),
        max_age: get("cors-max-age"),
    };
    match get("enable-cors").map(parse_bool) {
        Some(Some(true)) => match Cors::parse(cors_values) {
            Ok(c) => options.cors = Some(c),
            Err((name, e)) => error(name, e),
        },
        Some(Some(false)) | None => {
            for name in [
                "cors-allow-origin",
                "cors-allow-methods",
                "cors-allow-headers",
                "cors-allow-credentials",
                "cors-expose-headers",
                "cors-max-age",
            ] {
                if get(name).is_some() {
                    warnings.push((
                        name.to_string(),
                        "has no effect without enable-cors: \"true\"".to_string(),
                    ));
                }
            }
        }
        Some(None) => {}
    }

    let multiplier = match get("limit-burst-multiplier") {
        None => 5,
        Some(v) => match v.parse::<u32>() {
            Ok(n) if n > 0 => n,
            _ => {
                error(
                    "limit-burst-multiplier",
                    format!("{v:?} is not a whole number above zero"),
                );
                5
            }
        },
    };
    let rate = |name: &'static str, per: u64| -> Option<Result<RateLimit, (&'static str, String)>> {
        let v = get(name)?;
        Some(match v.parse::<u32>() {
            Ok(n) if n > 0 => Ok(RateLimit {
                rate: n,
                per: Duration::from_secs(per),
                burst: n.saturating_mul(multiplier),
                key: RateLimitKey::Client,
            }),
            _ => Err((name, format!("{v:?} is not a whole number above zero"))),
        })
    };
    let rps = rate("limit-rps", 1);
    let rpm = rate("limit-rpm", 60);
    if rps.is_some() && rpm.is_some() {
        warnings.push((
            "limit-rpm".to_string(),
            "limit-rps is also set: only limit-rps applies (ingress-nginx applies both)".to_string(),
        ));
    }
    match rps.or(rpm) {
        Some(Ok(limit)) => options.rate_limit = Some(limit),
        Some(Err((name, e))) => error(name, e),
        None => {}
    }

    if get("allowlist-source-range").is_some() && get("whitelist-source-range").is_some() {
        warnings.push((
            "whitelist-source-range".to_string(),
            "allowlist-source-range is also set and wins".to_string(),
        ));
    }
    if let Some(v) = get("allowlist-source-range").or(get("whitelist-source-range")) {
        match crate::annotations::ranges(v) {
            Ok(r) => options.policy.allow_source_ranges = r,
            Err(e) => error(
                if get("allowlist-source-range").is_some() {
                    "allowlist-source-range"
                } else {
                    "whitelist-source-range"
                },
                e,
            ),
        }
    }

    findings.extend(warnings.into_iter().map(|(n, m)| (n, Severity::Warning, m)));
    findings
}

/// Warnings for the annotations among `names` that are set although `secret`, which
/// they all depend on, is not (ingress-nginx ignores them too).
pub(crate) fn set_without<'a>(
    names: &[&'static str],
    get: &impl Fn(&str) -> Option<&'a str>,
    secret: &str,
) -> Vec<(&'static str, String)> {
    names
        .iter()
        .filter(|name| get(name).is_some())
        .map(|name| {
            (
                *name,
                format!("has no effect without {secret} (as in ingress-nginx)"),
            )
        })
        .collect()
}

/// A Secret named by an annotation: `NAME` or `NAMESPACE/NAME` as DNS names allow.
pub(crate) fn secret_name(secret: &str) -> Result<(), String> {
    let ok = !secret.is_empty()
        && secret.len() <= 253 + 64
        && secret
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b'/'))
        && secret.matches('/').count() <= 1;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{secret:?} is not a Secret name (NAMESPACE/NAME, in the Ingress's namespace)"
        ))
    }
}

/// ingress-nginx reads booleans with Go's `strconv.ParseBool`.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

fn bool_value(v: &str) -> Result<bool, String> {
    parse_bool(v).ok_or_else(|| format!("{v:?} is not \"true\" or \"false\""))
}

/// Whether a rejected annotation is set to its off value, which asks for nothing.
fn is_off(name: &str, value: &str) -> bool {
    match name {
        "enable-modsecurity" | "enable-owasp-core-rules" => parse_bool(value) == Some(false),
        _ => false,
    }
}

/// Applies an annotation that stands alone; the grouped ones are handled by [`apply`].
fn single(name: &str, value: &str, options: &mut RouteOptions) -> Result<(), String> {
    match name {
        "ssl-redirect" => options.ssl_redirect = bool_value(value)?,
        "force-ssl-redirect" => options.force_ssl_redirect = bool_value(value)?,
        "service-upstream" => options.service_upstream = bool_value(value)?,
        "ssl-passthrough" => options.ssl_passthrough = bool_value(value)?,
        "from-to-www-redirect" => options.www_redirect = bool_value(value)?,
        "use-regex" => options.regex_paths |= bool_value(value)?,
        "app-root" => {
            if !value.starts_with('/') || value.starts_with("//") {
                return Err(format!("{value:?} must be a path starting with /"));
            }
            let path = crate::compile::validate_path(value)?;
            options.app_root = Some(path);
        }
        "x-forwarded-prefix" => {
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_graphic()) || value.contains('$') {
                return Err(format!(
                    "{value:?} must be a path prefix like /app (no spaces, no nginx variables)"
                ));
            }
            options.forwarded_prefix = Some(value.to_string());
        }
        "upstream-vhost" => {
            let host =
                value.rsplit_once(':').map_or(
                    value,
                    |(h, port)| {
                        if port.parse::<u16>().is_ok() {
                            h
                        } else {
                            value
                        }
                    },
                );
            crate::compile::validate_host(host)
                .map_err(|e| format!("{e} (a host name, optionally with :port, no nginx variables)"))?;
            if host.starts_with('*') {
                return Err(format!("{value:?} must be a host name, not a wildcard"));
            }
            options.upstream_host = Some(value.to_ascii_lowercase());
        }
        "proxy-body-size" => options.max_body_size = parse_byte_size(value).map(|n| (n != 0).then_some(n))?,
        "proxy-read-timeout" => match parse_duration(value)? {
            d if d.is_zero() => return Err("must be more than zero".into()),
            d => options.read_timeout = d,
        },
        "proxy-connect-timeout" | "proxy-send-timeout" | "proxy-next-upstream-timeout" => {
            parse_duration(value)?;
        }
        "client-body-buffer-size"
        | "proxy-buffer-size"
        | "proxy-busy-buffers-size"
        | "proxy-max-temp-file-size" => {
            parse_byte_size(value)?;
        }
        "proxy-buffering" | "proxy-request-buffering" => match value {
            "on" | "off" => {}
            _ => return Err(format!("{value:?} is not \"on\" or \"off\"")),
        },
        "proxy-buffers-number" | "proxy-next-upstream-tries" => {
            value
                .parse::<u32>()
                .map_err(|_| format!("{value:?} is not a whole number"))?;
        }
        "backend-protocol" => {
            options.backend_protocol = match value.to_ascii_uppercase().as_str() {
                "HTTP" | "AUTO_HTTP" => BackendProtocol::Http,
                "HTTPS" => BackendProtocol::Https,
                "GRPC" => BackendProtocol::Grpc,
                "GRPCS" => BackendProtocol::Grpcs,
                "H2C" => BackendProtocol::H2c,
                "FCGI" => return Err("FastCGI backends are not supported: the Ingress is rejected".into()),
                _ => {
                    return Err(format!(
                        "{value:?} is not one of HTTP, HTTPS, GRPC, GRPCS, AUTO_HTTP"
                    ))
                }
            }
        }
        "load-balance" => match value {
            "round_robin" | "ewma" => {}
            _ => return Err(format!("{value:?} is not round_robin or ewma")),
        },
        "limit-connections" => match value.parse::<u32>() {
            Ok(n) if n > 0 => options.max_connections = Some(n),
            _ => return Err(format!("{value:?} is not a whole number above zero")),
        },
        "denylist-source-range" => {
            options.policy.deny_source_ranges = crate::annotations::ranges(value)?;
        }
        "proxy-http-version" => match value {
            "1.0" | "1.1" => {}
            _ => return Err(format!("{value:?} is not 1.0 or 1.1")),
        },
        "proxy-next-upstream"
        | "ssl-ciphers"
        | "ssl-prefer-server-ciphers"
        | "connection-proxy-header"
        | "enable-access-log" => {}
        // Handled together with their siblings in `apply`.
        _ => {}
    }
    Ok(())
}

/// `auth-type: basic` with its Secret; the users are read from the Secret when the
/// Ingress is compiled.
fn basic_auth<'a>(
    get: &impl Fn(&str) -> Option<&'a str>,
) -> Result<Option<crate::snapshot::BasicAuth>, (&'static str, String)> {
    let Some(kind) = get("auth-type") else {
        for name in ["auth-secret", "auth-secret-type", "auth-realm"] {
            if get(name).is_some() {
                return Err((
                    match name {
                        "auth-secret" => "auth-secret",
                        "auth-secret-type" => "auth-secret-type",
                        _ => "auth-realm",
                    },
                    "has no effect without auth-type: the Ingress is rejected rather than served unprotected"
                        .to_string(),
                ));
            }
        }
        return Ok(None);
    };
    if kind != "basic" {
        return Err(("auth-type", format!("{kind:?} is not supported: only \"basic\"")));
    }
    let secret = get("auth-secret").ok_or((
        "auth-secret",
        "missing: auth-type basic needs the Secret with the users".to_string(),
    ))?;
    let secret = match secret.split_once('/') {
        Some((_, name)) => name,
        None => secret,
    };
    let map = match get("auth-secret-type").unwrap_or("auth-file") {
        "auth-file" => false,
        "auth-map" => true,
        other => {
            return Err((
                "auth-secret-type",
                format!("{other:?} is not auth-file or auth-map"),
            ))
        }
    };
    let realm = get("auth-realm").unwrap_or("").to_string();
    if realm.contains(['"', '\\']) || realm.chars().any(char::is_control) {
        return Err((
            "auth-realm",
            "must not contain quotes, backslashes or control characters".to_string(),
        ));
    }
    Ok(Some(crate::snapshot::BasicAuth {
        realm,
        secret: secret.to_string(),
        map,
        users: std::sync::Arc::new(crate::htpasswd::Htpasswd::default()),
    }))
}

/// The default-backend Service name, the custom-http-errors codes, and a warning
/// when the codes cannot apply.
#[allow(clippy::type_complexity)]
fn error_pages(
    backend: Option<&str>,
    codes: Option<&str>,
) -> Result<(Option<String>, Vec<u16>, Option<(String, String)>), (&'static str, String)> {
    let backend = match backend {
        None => None,
        // A Service name is a DNS label; a namespace prefix would reach into another
        // tenant's namespace, which ingress-nginx does not allow either.
        Some(name) if is_dns_label(name) => Some(name.to_string()),
        Some(name) => {
            return Err((
                "default-backend",
                format!("{name:?} is not a Service name (a DNS label in the Ingress's namespace)"),
            ))
        }
    };
    let mut parsed = Vec::new();
    for code in codes.into_iter().flat_map(|c| c.split(',')).map(str::trim) {
        match code.parse::<u16>() {
            Ok(n) if (400..=599).contains(&n) => parsed.push(n),
            _ => {
                return Err((
                    "custom-http-errors",
                    format!("{code:?} is not an HTTP error status from 400 to 599"),
                ))
            }
        }
    }
    parsed.sort_unstable();
    parsed.dedup();
    let warning = (!parsed.is_empty() && backend.is_none()).then(|| {
        (
            "custom-http-errors".to_string(),
            "has no effect without default-backend (Portcullis has no global default backend): the backend's error responses are passed to the client unchanged".to_string(),
        )
    });
    Ok((backend, parsed, warning))
}

/// An RFC 1123 label, what a Service name is.
fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// An absolute http(s) URL with a host, printable, and without nginx variables.
pub(crate) fn absolute_http_url(url: &str) -> bool {
    url.parse::<http::Uri>()
        .ok()
        .filter(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some())
        .is_some()
        && !url.contains('$')
        && url.bytes().all(|b| b.is_ascii_graphic())
}

/// `(url, code)` of a redirect annotation pair. An out-of-range code falls back to the
/// default, as ingress-nginx does, with a warning.
#[allow(clippy::type_complexity)]
fn redirect(
    url: Option<&str>,
    code: Option<&str>,
    default: u16,
    max: u16,
    name: &'static str,
) -> Result<Option<(Redirect, Option<(String, String)>)>, (&'static str, String)> {
    let Some(url) = url.filter(|u| !u.is_empty()) else {
        return Ok(None);
    };
    let valid = absolute_http_url(url);
    if !valid {
        return Err((name, format!("{url:?} is not an absolute http or https URL")));
    }
    let code_name = if name == "temporal-redirect" {
        "temporal-redirect-code"
    } else {
        "permanent-redirect-code"
    };
    let (code, warning) = match code.map(|c| c.parse::<u16>()) {
        None => (default, None),
        Some(Ok(c)) if (300..=max).contains(&c) => (c, None),
        Some(_) => (
            default,
            Some((
                code_name.to_string(),
                format!(
                    "is not a redirect status from 300 to {max}: {default} is used, as ingress-nginx does"
                ),
            )),
        ),
    };
    Ok(Some((
        Redirect {
            code,
            location: url.to_string(),
        },
        warning,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pairs: &[(&str, &str)]) -> (RouteOptions, Vec<Finding>) {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (format!("{PREFIX}{k}"), v.to_string()))
            .collect();
        let mut o = RouteOptions::default();
        let f = apply(&map, &mut o);
        (o, f)
    }

    fn errors(f: &[Finding]) -> Vec<&str> {
        f.iter()
            .filter(|(_, s, _)| *s == Severity::Error)
            .map(|(n, _, _)| n.as_str())
            .collect()
    }

    #[test]
    fn every_documented_annotation_appears_once() {
        let mut names: Vec<&str> = ANNOTATIONS.iter().map(|a| a.name).collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n);
    }

    #[test]
    fn snippets_are_refused_and_say_what_to_use() {
        for s in [
            "configuration-snippet",
            "server-snippet",
            "auth-snippet",
            "stream-snippet",
            "modsecurity-snippet",
        ] {
            let (_, f) = run(&[(s, "more_set_headers \"X: y\";")]);
            assert_eq!(errors(&f), vec![s]);
            assert!(f[0].2.contains("typed annotations"));
        }
    }

    #[test]
    fn unsupported_restrictions_reject_and_the_rest_warn() {
        let (_, f) = run(&[
            ("enable-modsecurity", "true"),
            ("limit-rate", "100k"),
            ("no-such-thing", "1"),
        ]);
        assert_eq!(errors(&f), vec!["enable-modsecurity"]);
        let warned: Vec<&str> = f
            .iter()
            .filter(|(_, s, _)| *s == Severity::Warning)
            .map(|(n, _, _)| n.as_str())
            .collect();
        assert_eq!(warned, vec!["limit-rate", "no-such-thing"]);
        // Off values of rejected annotations, and of supported ones, ask for nothing.
        let (_, f) = run(&[
            ("enable-modsecurity", "false"),
            ("enable-owasp-core-rules", "false"),
            ("ssl-passthrough", "false"),
            ("canary", "false"),
            ("proxy-ssl-verify", "off"),
        ]);
        assert!(f.is_empty(), "{f:?}");
    }

    #[test]
    fn typed_values() {
        let (o, f) = run(&[
            ("ssl-redirect", "False"),
            ("force-ssl-redirect", "true"),
            ("proxy-body-size", "8M"),
            ("proxy-read-timeout", "120"),
            ("backend-protocol", "grpcs"),
            ("upstream-vhost", "internal.example.com"),
            ("x-forwarded-prefix", "/app"),
            ("limit-rps", "5"),
            ("limit-connections", "3"),
            ("whitelist-source-range", "10.0.0.0/8, 192.168.1.1"),
            ("denylist-source-range", "10.1.0.0/16"),
            ("app-root", "/app1"),
        ]);
        assert!(f.is_empty(), "{f:?}");
        assert!(!o.ssl_redirect && o.force_ssl_redirect);
        assert_eq!(o.max_body_size, Some(8 << 20));
        assert_eq!(o.read_timeout, Duration::from_secs(120));
        assert_eq!(o.backend_protocol, BackendProtocol::Grpcs);
        assert_eq!(o.upstream_host.as_deref(), Some("internal.example.com"));
        assert_eq!(o.forwarded_prefix.as_deref(), Some("/app"));
        let limit = o.rate_limit.unwrap();
        assert_eq!(
            (limit.rate, limit.burst, limit.per),
            (5, 25, Duration::from_secs(1))
        );
        assert_eq!(o.max_connections, Some(3));
        assert_eq!(o.policy.allow_source_ranges.len(), 2);
        assert_eq!(o.policy.deny_source_ranges.len(), 1);
        assert_eq!(o.app_root.as_deref(), Some("/app1"));
    }

    #[test]
    fn invalid_values_are_errors_naming_the_annotation() {
        for (name, value) in [
            ("ssl-redirect", "yes"),
            ("proxy-body-size", "lots"),
            ("proxy-read-timeout", "0"),
            ("backend-protocol", "FCGI"),
            ("upstream-vhost", "$host"),
            ("x-forwarded-prefix", "/a b"),
            ("limit-rps", "-1"),
            ("whitelist-source-range", "10.0.0.0/33"),
            ("app-root", "http://x/"),
            ("rewrite-target", "/$request_uri"),
            ("permanent-redirect", "/relative"),
            ("permanent-redirect", "https://x/$host"),
            ("proxy-buffering", "maybe"),
        ] {
            let (_, f) = run(&[(name, value)]);
            assert_eq!(errors(&f), vec![name], "{name}={value}: {f:?}");
        }
    }

    #[test]
    fn temporal_redirect_wins_and_bad_codes_fall_back_with_a_warning() {
        let (o, f) = run(&[
            ("permanent-redirect", "https://a.example/"),
            ("temporal-redirect", "https://b.example/"),
        ]);
        assert!(f.is_empty());
        assert_eq!(
            o.redirect,
            Some(Redirect {
                code: 302,
                location: "https://b.example/".into()
            })
        );
        let (o, f) = run(&[
            ("permanent-redirect", "https://a.example/"),
            ("permanent-redirect-code", "308"),
        ]);
        assert!(f.is_empty());
        assert_eq!(o.redirect.unwrap().code, 308);
        let (o, f) = run(&[
            ("permanent-redirect", "https://a.example/"),
            ("permanent-redirect-code", "200"),
        ]);
        assert_eq!(o.redirect.unwrap().code, 301);
        assert_eq!(f[0].0, "permanent-redirect-code");
        assert_eq!(f[0].1, Severity::Warning);
    }

    #[test]
    fn rewrite_target_turns_paths_into_regexes() {
        let (o, f) = run(&[("rewrite-target", "/$2")]);
        assert!(f.is_empty());
        assert!(o.regex_paths);
        assert_eq!(o.rewrite_target.unwrap().max_group(), 2);
    }

    #[test]
    fn cors_needs_enable_cors() {
        let (o, f) = run(&[("cors-allow-origin", "https://a.example")]);
        assert!(o.cors.is_none());
        assert_eq!(f[0].1, Severity::Warning);
        let (o, f) = run(&[
            ("enable-cors", "true"),
            ("cors-allow-origin", "https://a.example"),
            ("cors-max-age", "60"),
        ]);
        assert!(f.is_empty());
        assert_eq!(o.cors.unwrap().max_age, 60);
        let (_, f) = run(&[("enable-cors", "true"), ("cors-allow-origin", "a.example")]);
        assert_eq!(errors(&f), vec!["cors-allow-origin"]);
    }

    #[test]
    fn error_pages_need_a_default_backend() {
        let (o, f) = run(&[
            ("default-backend", "errors"),
            ("custom-http-errors", "503, 404,404"),
        ]);
        assert!(f.is_empty(), "{f:?}");
        assert_eq!(o.default_backend.as_deref(), Some("errors"));
        assert_eq!(o.custom_http_errors, vec![404, 503]);
        let (o, f) = run(&[("custom-http-errors", "404")]);
        assert_eq!(o.custom_http_errors, vec![404]);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].0, "custom-http-errors");
        assert_eq!(f[0].1, Severity::Warning);
        assert!(f[0].2.contains("unchanged"));
        let (o, f) = run(&[("default-backend", "errors")]);
        assert!(f.is_empty() && o.custom_http_errors.is_empty());
        for (name, value) in [
            ("custom-http-errors", "404,200"),
            ("custom-http-errors", "600"),
            ("custom-http-errors", "4o4"),
            ("custom-http-errors", ""),
            ("default-backend", "other/errors"),
            ("default-backend", "Errors"),
        ] {
            let (_, f) = run(&[(name, value)]);
            assert_eq!(errors(&f), vec![name], "{name}={value}: {f:?}");
        }
    }

    #[test]
    fn rpm_with_the_burst_multiplier() {
        let (o, _) = run(&[("limit-rpm", "60"), ("limit-burst-multiplier", "2")]);
        let l = o.rate_limit.unwrap();
        assert_eq!((l.rate, l.burst, l.per), (60, 120, Duration::from_secs(60)));
    }
}
