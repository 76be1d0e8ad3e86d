//! External authentication: asks a route's auth service (ingress-nginx `auth-url`,
//! typically oauth2-proxy's `/oauth2/auth`) whether a request may pass, the way
//! ingress-nginx's `auth_request` subrequest does. The check carries the client's
//! headers (cookies and `Authorization` included, since that is what the auth
//! service judges) but never its body, plus `X-Original-URL`, `X-Original-Method`
//! and the forwarding headers the gateway computed. A 2xx lets the request through
//! with the `auth-response-headers` copied onto it; 401 and 403 deny (a 401 becomes
//! a redirect to `auth-signin` when one is set); anything else, an unreachable
//! service or a timeout is an error the handler answers with 500: it fails closed.
//! Nothing here logs; [`CheckError`] texts are safe to log (no headers, no cookies).

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use portcullis_config::external_auth::ExternalAuth;

use crate::proxy::{self, Body};

/// How long one check may take, connection included, unless set otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The answer's body is read (and thrown away) only so its connection can be
/// reused; a larger or slower one is dropped with its connection.
const MAX_DRAIN: usize = 64 * 1024;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// `X-Sent-From` as ingress-nginx sends it: auth services written for ingress-nginx
/// may check for this exact value.
const SENT_FROM: &str = "nginx-ingress-controller";

/// Request headers the gateway sets itself on the check; whatever the client sent
/// under these names is dropped first, so an auth service never reads a forged
/// original URL, client address or redirect target.
const GATEWAY_SET: &[&str] = &[
    "x-original-url",
    "x-original-uri",
    "x-original-method",
    "x-sent-from",
    "x-real-ip",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-proto",
    "x-forwarded-scheme",
    "x-forwarded-prefix",
    "x-forwarded-uri",
    "forwarded",
    "x-scheme",
    "x-auth-request-redirect",
];

/// The client for auth services: pooled, HTTP/1.1, TLS verified against the
/// Mozilla root store.
pub struct ExternalAuthClient {
    client: Client<HttpsConnector<HttpConnector>, Body>,
    timeout: Duration,
}

/// What a check decided.
#[derive(Debug)]
pub enum Outcome {
    /// 2xx: forward the request after applying the grant.
    Allow(Grant),
    /// 401 or 403 (or the sign-in redirect for a 401): answer with this.
    Deny(Denial),
    /// The check could not be made or its answer means nothing: answer 500.
    Error(CheckError),
}

impl Outcome {
    /// A stable label for metrics and the audit log.
    pub fn code(&self) -> &'static str {
        match self {
            Outcome::Allow(_) => "external_allow",
            Outcome::Deny(d) if d.location.is_some() => "external_signin",
            Outcome::Deny(d) if d.status == StatusCode::FORBIDDEN => "external_forbidden",
            Outcome::Deny(_) => "external_unauthorized",
            Outcome::Error(_) => "external_error",
        }
    }
}

/// What a successful check adds.
#[derive(Default)]
pub struct Grant {
    /// Every name of `auth-response-headers`, present in the answer or not.
    names: Vec<HeaderName>,
    /// Their values from the auth service's answer.
    headers: HeaderMap,
    /// The answer's `Set-Cookie` values, for the client's response.
    set_cookies: Vec<HeaderValue>,
}

impl Grant {
    /// Puts the `auth-response-headers` on the upstream request: first removes every
    /// such header the client sent (ingress-nginx's `proxy_set_header` with an empty
    /// value does the same), then adds what the auth service answered. Call it after
    /// the gateway's own identity-header stripping, which would drop names such as
    /// `X-Auth-Request-User` again.
    pub fn apply_to_upstream(&self, upstream: &mut HeaderMap) {
        for name in &self.names {
            upstream.remove(name);
        }
        for (name, value) in &self.headers {
            upstream.append(name.clone(), value.clone());
        }
    }

    /// The headers taken from the auth service's answer.
    pub fn upstream_headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// `Set-Cookie` values to add to the client's response (oauth2-proxy refreshes
    /// its session cookie this way).
    pub fn set_cookies(&self) -> &[HeaderValue] {
        &self.set_cookies
    }
}

/// A refusal to send to the client.
pub struct Denial {
    /// 401, 403, or 302 for the sign-in redirect.
    pub status: StatusCode,
    /// The sign-in URL with the redirect parameter, for 302.
    pub location: Option<String>,
    /// The auth service's `WWW-Authenticate` challenges on a plain 401, which nginx's
    /// `auth_request` passes on too.
    pub www_authenticate: Vec<HeaderValue>,
    /// The auth service's `Set-Cookie` values: on the sign-in redirect always (as
    /// ingress-nginx's sign-in location adds them), on 401/403 only with
    /// `auth-always-set-cookie`.
    pub set_cookies: Vec<HeaderValue>,
}

impl Denial {
    /// The response for the client.
    pub fn into_response(self) -> Response<Body> {
        let mut r = text_response(self.status);
        if let Some(v) = self.location.and_then(|l| HeaderValue::from_str(&l).ok()) {
            r.headers_mut().insert(header::LOCATION, v);
        }
        for v in self.www_authenticate {
            r.headers_mut().append(header::WWW_AUTHENTICATE, v);
        }
        for v in self.set_cookies {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
        r
    }
}

/// Header names only: the values are tokens and cookies as often as not.
impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grant")
            .field("names", &self.names)
            .field("answered", &self.headers.keys().collect::<Vec<_>>())
            .field("set_cookies", &self.set_cookies.len())
            .finish()
    }
}

/// Without cookie values, which may be session tokens.
impl std::fmt::Debug for Denial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Denial")
            .field("status", &self.status)
            .field("location", &self.location)
            .field("www_authenticate", &self.www_authenticate)
            .field("set_cookies", &self.set_cookies.len())
            .finish()
    }
}

/// Why a check failed. The texts name the failure, never a header or a cookie.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// No connection, TLS failure, or the connection broke before an answer.
    #[error("auth service unreachable: {0}")]
    Unreachable(String),
    /// No answer within the timeout.
    #[error("auth service did not answer within {0:?}")]
    Timeout(Duration),
    /// An answer other than 2xx, 401 or 403 (nginx's `auth_request` treats these as
    /// errors too).
    #[error("auth service answered {0}, which is neither 2xx, 401 nor 403")]
    UnexpectedStatus(StatusCode),
    /// The check request could not be built from this client request (an original
    /// URL that is not a valid header value).
    #[error("cannot build the auth request: {0}")]
    Request(&'static str),
}

impl CheckError {
    /// The 500 the client gets.
    pub fn response(&self) -> Response<Body> {
        text_response(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl ExternalAuthClient {
    /// A client whose checks time out after [`DEFAULT_TIMEOUT`].
    pub fn new() -> Result<ExternalAuthClient, rustls::Error> {
        ExternalAuthClient::with_timeout(DEFAULT_TIMEOUT)
    }

    /// A client whose checks, connection included, time out after `timeout`.
    pub fn with_timeout(timeout: Duration) -> Result<ExternalAuthClient, rustls::Error> {
        // Unlike ingress-nginx (proxy_ssl_verify off), an https auth-url is verified:
        // its answer decides who gets in.
        let tls = crate::tls::public_client_config()?;
        let mut tcp = HttpConnector::new();
        tcp.set_connect_timeout(Some(timeout));
        tcp.set_nodelay(true);
        tcp.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        Ok(ExternalAuthClient {
            client: Client::builder(TokioExecutor::new()).build(https),
            timeout,
        })
    }

    /// Asks `cfg`'s auth service about the request with `method` and `headers`. `original_url` is the
    /// request as the client addressed it (`scheme://host/path?query`, normalized),
    /// `client_ip` the client's address as the gateway determined it (trusted
    /// proxies applied).
    pub async fn check(
        &self,
        cfg: &ExternalAuth,
        method: &http::Method,
        headers: &HeaderMap,
        original_url: &str,
        client_ip: IpAddr,
    ) -> Outcome {
        let request = match auth_request(cfg, method, headers, original_url, client_ip) {
            Ok(r) => r,
            Err(e) => return Outcome::Error(e),
        };
        let response = match tokio::time::timeout(self.timeout, self.client.request(request)).await {
            Err(_) => return Outcome::Error(CheckError::Timeout(self.timeout)),
            Ok(Err(e)) => return Outcome::Error(CheckError::Unreachable(error_chain(&e))),
            Ok(Ok(r)) => r,
        };
        let (parts, body) = response.into_parts();
        // The decision does not wait for the body; reading it lets the pool reuse
        // the connection.
        tokio::spawn(async move {
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, Limited::new(body, MAX_DRAIN).collect()).await;
        });
        interpret(cfg, parts.status, &parts.headers, original_url)
    }
}

/// The check request: the client's headers minus body, hop-by-hop, host, the
/// gateway's own cookies and anything the gateway sets itself; then the headers
/// ingress-nginx's auth location sets (`nginx.tmpl`, `location = /_external-auth-*`).
fn auth_request(
    cfg: &ExternalAuth,
    method: &http::Method,
    client_headers: &HeaderMap,
    original_url: &str,
    client_ip: IpAddr,
) -> Result<Request<Body>, CheckError> {
    let mut headers = client_headers.clone();
    proxy::remove_hop_by_hop(&mut headers);
    // proxy_pass_request_body off; proxy_set_header Content-Length "".
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::EXPECT);
    // The client's Host names the app; the client library sets the auth service's.
    headers.remove(header::HOST);
    for name in GATEWAY_SET {
        headers.remove(*name);
    }
    proxy::strip_identity_headers(&mut headers);
    proxy::prepare_cookies(&mut headers, true);

    let value =
        |text: &str, what: &'static str| HeaderValue::from_str(text).map_err(|_| CheckError::Request(what));
    let original: http::Uri = original_url
        .parse()
        .map_err(|_| CheckError::Request("the original URL is not a valid URI"))?;
    let request_uri = original.path_and_query().map_or("/", |p| p.as_str());
    let set = |headers: &mut HeaderMap, name: &'static str, v: HeaderValue| {
        headers.insert(HeaderName::from_static(name), v);
    };
    set(
        &mut headers,
        "x-original-url",
        value(original_url, "original URL")?,
    );
    set(
        &mut headers,
        "x-original-method",
        value(method.as_str(), "method")?,
    );
    // ingress-nginx sends these two only when auth-method is set; always sending
    // them costs nothing and spares auth services that guess.
    set(&mut headers, "x-original-uri", value(request_uri, "request URI")?);
    if let Some(scheme) = original.scheme_str() {
        set(&mut headers, "x-scheme", value(scheme, "scheme")?);
    }
    set(&mut headers, "x-sent-from", HeaderValue::from_static(SENT_FROM));
    let ip = value(&client_ip.to_string(), "client address")?;
    set(&mut headers, "x-real-ip", ip.clone());
    set(&mut headers, "x-forwarded-for", ip);
    if let Some(host) = original.authority() {
        set(&mut headers, "x-forwarded-host", value(host.as_str(), "host")?);
    }
    // ingress-nginx clears X-Forwarded-Proto on the check (kubernetes/ingress-nginx
    // #3405: it made auth services redirect); it is among GATEWAY_SET, never set.
    let redirect = match &cfg.request_redirect {
        Some(fixed) => fixed.clone(),
        None => value(request_uri, "request URI")?,
    };
    set(&mut headers, "x-auth-request-redirect", redirect);

    let mut request = Request::new(proxy::empty());
    *request.method_mut() = cfg.method.clone();
    *request.uri_mut() = cfg.url.clone();
    *request.headers_mut() = headers;
    Ok(request)
}

/// Reads the auth service's answer as nginx's `auth_request` and ingress-nginx's
/// sign-in location do.
fn interpret(cfg: &ExternalAuth, status: StatusCode, answer: &HeaderMap, original_url: &str) -> Outcome {
    let set_cookies: Vec<HeaderValue> = answer.get_all(header::SET_COOKIE).iter().cloned().collect();
    if status.is_success() {
        let mut headers = HeaderMap::new();
        for name in &cfg.response_headers {
            for v in answer.get_all(name) {
                headers.append(name.clone(), v.clone());
            }
        }
        return Outcome::Allow(Grant {
            names: cfg.response_headers.clone(),
            headers,
            set_cookies,
        });
    }
    let denied_cookies = if cfg.always_set_cookie {
        set_cookies.clone()
    } else {
        Vec::new()
    };
    match status {
        StatusCode::UNAUTHORIZED => match &cfg.signin {
            Some(signin) => Outcome::Deny(Denial {
                status: StatusCode::FOUND,
                location: Some(signin.location(original_url)),
                www_authenticate: Vec::new(),
                set_cookies,
            }),
            None => Outcome::Deny(Denial {
                status,
                location: None,
                www_authenticate: answer.get_all(header::WWW_AUTHENTICATE).iter().cloned().collect(),
                set_cookies: denied_cookies,
            }),
        },
        StatusCode::FORBIDDEN => Outcome::Deny(Denial {
            status,
            location: None,
            www_authenticate: Vec::new(),
            set_cookies: denied_cookies,
        }),
        other => Outcome::Error(CheckError::UnexpectedStatus(other)),
    }
}

/// The error and its causes ("connection refused" sits a few sources down).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn text_response(status: StatusCode) -> Response<Body> {
    let body = format!(
        "{} {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let mut r = Response::new(proxy::full(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    use http_body_util::Full;
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;

    use super::*;

    /// What the auth server saw of one check.
    #[derive(Debug, Clone)]
    struct Seen {
        method: http::Method,
        uri: String,
        headers: HeaderMap,
        body: Bytes,
    }

    type Answer = Arc<dyn Fn(&Seen) -> Response<Full<Bytes>> + Send + Sync>;

    /// A real HTTP/1.1 auth server on 127.0.0.1, port 0; stopped when dropped.
    struct AuthServer {
        addr: SocketAddr,
        seen: Arc<Mutex<Vec<Seen>>>,
        task: JoinHandle<()>,
    }

    impl Drop for AuthServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl AuthServer {
        async fn start(
            answer: impl Fn(&Seen) -> Response<Full<Bytes>> + Send + Sync + 'static,
        ) -> AuthServer {
            Self::start_slow(Duration::ZERO, answer).await
        }

        async fn start_slow(
            delay: Duration,
            answer: impl Fn(&Seen) -> Response<Full<Bytes>> + Send + Sync + 'static,
        ) -> AuthServer {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
            let answer: Answer = Arc::new(answer);
            let log = seen.clone();
            let task = tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let (log, answer) = (log.clone(), answer.clone());
                    tokio::spawn(async move {
                        let service = service_fn(move |req: Request<Incoming>| {
                            let (log, answer) = (log.clone(), answer.clone());
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                                let seen = Seen {
                                    method: parts.method,
                                    uri: parts.uri.to_string(),
                                    headers: parts.headers,
                                    body,
                                };
                                log.lock().unwrap().push(seen.clone());
                                tokio::time::sleep(delay).await;
                                Ok::<_, std::convert::Infallible>(answer(&seen))
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
            AuthServer { addr, seen, task }
        }

        fn url(&self, path: &str) -> String {
            format!("http://{}{path}", self.addr)
        }

        fn seen(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }
    }

    fn answer(status: u16, headers: &[(&str, &str)]) -> Response<Full<Bytes>> {
        let mut r = Response::new(Full::new(Bytes::from_static(b"auth says hi")));
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        for (k, v) in headers {
            r.headers_mut().append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        r
    }

    fn config(pairs: &[(&str, &str)]) -> ExternalAuth {
        let map: BTreeMap<&str, &str> = pairs.iter().copied().collect();
        ExternalAuth::from_annotations(|k| map.get(k).copied())
            .unwrap()
            .unwrap()
    }

    /// A browser's POST with a body, a session cookie of the auth service, a
    /// gateway cookie, forged forwarding and identity headers.
    fn client_request() -> http::request::Parts {
        let (parts, ()) = Request::builder()
            .method("POST")
            .uri("/app/items?page=2")
            .header("host", "app.example.com")
            .header("cookie", "_oauth2_proxy=sealed-session")
            .header("cookie", "__Host-portcullis-session=gateway-only")
            .header("authorization", "Bearer client-token")
            .header("content-type", "application/json")
            .header("content-length", "17")
            .header("x-forwarded-for", "6.6.6.6")
            .header("x-forwarded-proto", "http")
            .header("x-original-url", "https://evil.example/")
            .header("x-auth-request-user", "admin")
            .header("x-user", "forged")
            .header("x-request-id", "req-1")
            .header("connection", "keep-alive, x-hop")
            .header("x-hop", "1")
            .body(())
            .unwrap()
            .into_parts();
        parts
    }

    const ORIGINAL: &str = "https://app.example.com/app/items?page=2";
    const CLIENT_IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 7));

    async fn check(cfg: &ExternalAuth) -> Outcome {
        ExternalAuthClient::new()
            .unwrap()
            .check(
                cfg,
                &client_request().method,
                &client_request().headers,
                ORIGINAL,
                CLIENT_IP,
            )
            .await
    }

    #[tokio::test]
    async fn allow_copies_the_listed_response_headers_and_drops_forged_ones() {
        let server = AuthServer::start(|_| {
            answer(
                202,
                &[
                    ("x-auth-request-user", "alice"),
                    ("x-auth-request-email", "alice@example.com"),
                    ("x-auth-request-groups", "admins"),
                    ("x-unlisted", "not copied"),
                    ("set-cookie", "_oauth2_proxy=refreshed; Path=/; Secure; HttpOnly"),
                ],
            )
        })
        .await;
        let cfg = config(&[
            ("auth-url", &server.url("/oauth2/auth")),
            (
                "auth-response-headers",
                "X-Auth-Request-User, X-Auth-Request-Email, X-User",
            ),
        ]);
        let Outcome::Allow(grant) = check(&cfg).await else {
            panic!("expected allow");
        };
        let mut upstream = client_request().headers;
        grant.apply_to_upstream(&mut upstream);
        assert_eq!(upstream["x-auth-request-user"], "alice");
        assert_eq!(upstream["x-auth-request-email"], "alice@example.com");
        // Listed but absent from the answer: the client's copy is gone all the same.
        assert!(!upstream.contains_key("x-user"));
        assert!(!upstream.contains_key("x-unlisted"));
        assert!(!upstream.contains_key("x-auth-request-groups"));
        assert_eq!(upstream.get_all("x-auth-request-user").iter().count(), 1);
        assert_eq!(
            grant.set_cookies(),
            ["_oauth2_proxy=refreshed; Path=/; Secure; HttpOnly"]
        );
        assert_eq!(server.seen().len(), 1);
    }

    #[tokio::test]
    async fn the_check_carries_what_ingress_nginx_sends_and_no_body() {
        let server = AuthServer::start(|_| answer(200, &[])).await;
        let cfg = config(&[("auth-url", &server.url("/oauth2/auth?allowed_groups=admins"))]);
        assert!(matches!(check(&cfg).await, Outcome::Allow(_)));
        let seen = server.seen();
        let s = &seen[0];
        assert_eq!(s.method, http::Method::GET);
        assert_eq!(s.uri, "/oauth2/auth?allowed_groups=admins");
        assert!(s.body.is_empty());
        assert!(s.headers.get("content-length").is_none_or(|v| v == "0"));
        let h = |name: &str| s.headers.get(name).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(h("host").as_deref(), Some(server.addr.to_string().as_str()));
        assert_eq!(h("x-original-url").as_deref(), Some(ORIGINAL));
        assert_eq!(h("x-original-method").as_deref(), Some("POST"));
        assert_eq!(h("x-original-uri").as_deref(), Some("/app/items?page=2"));
        assert_eq!(h("x-auth-request-redirect").as_deref(), Some("/app/items?page=2"));
        assert_eq!(h("x-sent-from").as_deref(), Some("nginx-ingress-controller"));
        assert_eq!(h("x-real-ip").as_deref(), Some("203.0.113.7"));
        assert_eq!(h("x-forwarded-for").as_deref(), Some("203.0.113.7"));
        assert_eq!(h("x-forwarded-host").as_deref(), Some("app.example.com"));
        assert_eq!(h("x-scheme").as_deref(), Some("https"));
        assert_eq!(h("x-forwarded-proto"), None);
        // What the auth service judges passes through; the gateway's cookie does not.
        assert_eq!(h("cookie").as_deref(), Some("_oauth2_proxy=sealed-session"));
        assert_eq!(h("authorization").as_deref(), Some("Bearer client-token"));
        assert_eq!(h("x-request-id").as_deref(), Some("req-1"));
        assert_eq!(h("content-type").as_deref(), Some("application/json"));
        // Forged identity and hop-by-hop headers do not.
        assert_eq!(h("x-auth-request-user"), None);
        assert_eq!(h("x-hop"), None);
    }

    #[tokio::test]
    async fn auth_method_and_request_redirect_are_honoured() {
        let server = AuthServer::start(|_| answer(204, &[])).await;
        let cfg = config(&[
            ("auth-url", &server.url("/verify")),
            ("auth-method", "POST"),
            ("auth-request-redirect", "https://app.example.com/"),
        ]);
        assert!(matches!(check(&cfg).await, Outcome::Allow(_)));
        let s = &server.seen()[0];
        assert_eq!(s.method, http::Method::POST);
        assert!(s.body.is_empty());
        assert!(s.headers.get("content-length").is_none_or(|v| v == "0"));
        assert_eq!(s.headers["x-auth-request-redirect"], "https://app.example.com/");
    }

    #[tokio::test]
    async fn unauthorized_with_signin_redirects_with_rd() {
        let server = AuthServer::start(|_| {
            answer(
                401,
                &[
                    ("www-authenticate", "Basic realm=x"),
                    ("set-cookie", "_oauth2_proxy_csrf=abc; Path=/"),
                ],
            )
        })
        .await;
        let cfg = config(&[
            ("auth-url", &server.url("/oauth2/auth")),
            ("auth-signin", "https://auth.example.com/oauth2/start"),
        ]);
        let outcome = check(&cfg).await;
        assert_eq!(outcome.code(), "external_signin");
        let Outcome::Deny(denial) = outcome else {
            panic!("expected deny");
        };
        let r = denial.into_response();
        assert_eq!(r.status(), StatusCode::FOUND);
        assert_eq!(
            r.headers()["location"],
            "https://auth.example.com/oauth2/start?rd=https%3A%2F%2Fapp.example.com%2Fapp%2Fitems%3Fpage%3D2"
        );
        assert_eq!(r.headers()["set-cookie"], "_oauth2_proxy_csrf=abc; Path=/");
        assert!(!r.headers().contains_key("www-authenticate"));
    }

    #[tokio::test]
    async fn unauthorized_and_forbidden_pass_through_without_signin() {
        let server = AuthServer::start(|seen| {
            let status = if seen.uri.contains("forbid") { 403 } else { 401 };
            answer(
                status,
                &[
                    ("www-authenticate", "Bearer realm=\"api\""),
                    ("set-cookie", "a=b"),
                ],
            )
        })
        .await;
        let cfg = config(&[("auth-url", &server.url("/check"))]);
        let outcome = check(&cfg).await;
        assert_eq!(outcome.code(), "external_unauthorized");
        let Outcome::Deny(d) = outcome else {
            panic!("expected deny");
        };
        let r = d.into_response();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"api\"");
        assert!(!r.headers().contains_key("set-cookie"));
        assert!(!r.headers().contains_key("location"));

        // 403 stays 403 even with a sign-in URL: only 401 means "log in".
        let cfg = config(&[
            ("auth-url", &server.url("/forbid")),
            ("auth-signin", "/oauth2/start"),
            ("auth-always-set-cookie", "true"),
        ]);
        let outcome = check(&cfg).await;
        assert_eq!(outcome.code(), "external_forbidden");
        let Outcome::Deny(d) = outcome else {
            panic!("expected deny");
        };
        let r = d.into_response();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(r.headers()["set-cookie"], "a=b");
        assert!(!r.headers().contains_key("location"));
    }

    #[tokio::test]
    async fn other_answers_fail_closed() {
        for status in [500, 502, 302, 404, 400] {
            let server = AuthServer::start(move |_| answer(status, &[("location", "/elsewhere")])).await;
            let cfg = config(&[
                ("auth-url", &server.url("/check")),
                ("auth-signin", "/oauth2/start"),
            ]);
            match check(&cfg).await {
                Outcome::Error(e @ CheckError::UnexpectedStatus(_)) => {
                    assert_eq!(e.response().status(), StatusCode::INTERNAL_SERVER_ERROR)
                }
                other => panic!("{status}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn an_unreachable_auth_service_fails_closed() {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap().port()
        };
        let cfg = config(&[("auth-url", &format!("http://127.0.0.1:{port}/check"))]);
        let outcome = check(&cfg).await;
        assert_eq!(outcome.code(), "external_error");
        let Outcome::Error(e @ CheckError::Unreachable(_)) = outcome else {
            panic!("expected unreachable");
        };
        assert_eq!(e.response().status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(e.to_string().contains("refused"), "{e}");
    }

    #[tokio::test]
    async fn a_slow_auth_service_times_out_and_fails_closed() {
        let server = AuthServer::start_slow(Duration::from_secs(5), |_| answer(200, &[])).await;
        let cfg = config(&[("auth-url", &server.url("/slow"))]);
        let client = ExternalAuthClient::with_timeout(Duration::from_millis(200)).unwrap();
        let started = std::time::Instant::now();
        let outcome = client
            .check(
                &cfg,
                &client_request().method,
                &client_request().headers,
                ORIGINAL,
                CLIENT_IP,
            )
            .await;
        assert!(
            matches!(outcome, Outcome::Error(CheckError::Timeout(_))),
            "{outcome:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn errors_and_debug_output_never_show_client_secrets() {
        let server = AuthServer::start(|_| answer(503, &[])).await;
        let cfg = config(&[("auth-url", &server.url("/check"))]);
        let outcome = check(&cfg).await;
        let shown = format!(
            "{outcome:?} {}",
            match &outcome {
                Outcome::Error(e) => e.to_string(),
                _ => panic!("expected error"),
            }
        );
        for secret in ["sealed-session", "client-token", "gateway-only"] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }

    #[test]
    fn a_bad_original_url_is_an_error_not_a_pass() {
        let cfg = config(&[("auth-url", "http://127.0.0.1:9/check")]);
        let e = auth_request(
            &cfg,
            &client_request().method,
            &client_request().headers,
            "https://app.example.com/a b",
            CLIENT_IP,
        )
        .unwrap_err();
        assert!(matches!(e, CheckError::Request(_)));
    }
}
