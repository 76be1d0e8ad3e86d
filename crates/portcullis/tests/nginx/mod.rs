//! Ingresses written for ingress-nginx, served unchanged through the real gateway with
//! `ingressClass: nginx`: one check per supported `nginx.ingress.kubernetes.io/`
//! annotation, the refused and unsupported ones, and (in `compare`) the subtle ones
//! side by side with nginx itself.

mod affinity;
mod backend_tls;
mod canary;
mod compare;
mod errors;
mod headers;
mod migrate;
mod mtls;

use std::time::Duration;

use http::StatusCode;

use crate::support::backend::Backend;
use crate::support::client::{self, http_get, request, send_h1};
use crate::support::{service, Gateway, Pki};

/// An Ingress as ingress-nginx users write them: class `nginx` (in the spec, or with
/// `legacy` in the old annotation), `ImplementationSpecific` paths.
pub fn nginx_ingress(
    name: &str,
    legacy: bool,
    annotations: &[(&str, &str)],
    host: &str,
    paths: &[(&str, &str)],
) -> String {
    let mut y = format!("---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {name}\n  namespace: ns\n  annotations:\n");
    if legacy {
        y.push_str("    kubernetes.io/ingress.class: nginx\n");
    }
    for (k, v) in annotations {
        y.push_str(&format!("    nginx.ingress.kubernetes.io/{k}: '{v}'\n"));
    }
    y.push_str("spec:\n");
    if !legacy {
        y.push_str("  ingressClassName: nginx\n");
    }
    y.push_str(&format!("  rules:\n  - host: {host}\n    http:\n      paths:\n"));
    for (path, svc) in paths {
        y.push_str(&format!(
            "      - path: '{path}'\n        pathType: ImplementationSpecific\n        backend:\n          service: {{name: {svc}, port: {{number: 80}}}}\n"
        ));
    }
    y
}

fn concat(parts: &[String]) -> String {
    parts.concat()
}

async fn get_with(
    gw: &Gateway,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> client::Reply {
    let stream = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    let mut send = client::h1(stream).await;
    let mut req = request(method, host, path, "");
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    send_h1(&mut send, req).await.unwrap()
}

/// Class selection, regex paths, `rewrite-target` with groups, `x-forwarded-prefix`,
/// `upstream-vhost`, and the Ingresses of other classes left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_nginx_class_regex_paths_and_rewrites() {
    let web = Backend::named("web").await;
    let api = Backend::named("api").await;
    let gw = Gateway::start(
        &concat(&[
            service("ns", "web", &[web.addr]),
            service("ns", "api", &[api.addr]),
            nginx_ingress(
                "rewrite",
                true,
                &[("rewrite-target", "/$2"), ("x-forwarded-prefix", "/something")],
                "rw.test",
                &[("/something(/|$)(.*)", "web")],
            ),
            nginx_ingress(
                "regex",
                false,
                &[("use-regex", "true"), ("upstream-vhost", "api.internal")],
                "rw.test",
                &[("/api/v[0-9]+/", "api")],
            ),
            nginx_ingress("plain", false, &[], "rw.test", &[("/", "web")]),
            // Another class: not ours to serve.
            "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: other, namespace: ns}\nspec:\n  ingressClassName: traefik\n  rules:\n  - host: other.test\n    http:\n      paths:\n      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}\n".to_string(),
        ]),
        "ingressClass: nginx\n",
    );
    let at = |path: &'static str| http_get(gw.http, "rw.test", path);
    assert_eq!(at("/something").await.text(), "web /");
    assert_eq!(at("/something/").await.text(), "web /");
    assert_eq!(at("/something/new?x=1").await.text(), "web /new?x=1");
    assert_eq!(
        at("/SomeThing/a/b").await.text(),
        "web /a/b",
        "case-insensitive as ~*"
    );
    assert_eq!(
        at("/somethingelse").await.text(),
        "web /somethingelse",
        "falls to the plain /"
    );
    let seen = web.requests();
    assert_eq!(seen[0].headers["x-forwarded-prefix"], "/something");
    assert_eq!(seen[0].headers["x-forwarded-host"], "rw.test");
    assert!(
        !seen[4].headers.contains_key("x-forwarded-prefix"),
        "only on its Ingress"
    );

    assert_eq!(
        at("/api/v2/users").await.text(),
        "api /api/v2/users",
        "no rewrite"
    );
    assert_eq!(at("/api/vX/users").await.text(), "web /api/vX/users");
    let seen = api.requests();
    assert_eq!(seen[0].headers["host"], "api.internal");
    assert_eq!(seen[0].headers["x-forwarded-host"], "rw.test");

    assert_eq!(
        http_get(gw.http, "other.test", "/").await.status,
        StatusCode::NOT_FOUND
    );
}

/// `permanent-redirect`, `temporal-redirect` (+ `-code`), `app-root`, `ssl-redirect`
/// and `force-ssl-redirect`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_nginx_redirects() {
    let pki = Pki::new();
    let web = Backend::named("web").await;
    let gw = Gateway::start(
        &concat(&[
            service("ns", "web", &[web.addr]),
            pki.tls_secret("ns", "tls", &["tls.test"]),
            nginx_ingress(
                "moved",
                false,
                &[("permanent-redirect", "https://new.example/landing")],
                "moved.test",
                &[("/", "web")],
            ),
            nginx_ingress(
                "temp",
                false,
                &[
                    ("temporal-redirect", "https://maint.example/"),
                    ("temporal-redirect-code", "307"),
                ],
                "temp.test",
                &[("/", "web")],
            ),
            nginx_ingress(
                "root",
                false,
                &[("app-root", "/app1")],
                "root.test",
                &[("/", "web")],
            ),
            nginx_ingress(
                "forced",
                false,
                &[("force-ssl-redirect", "true")],
                "forced.test",
                &[("/", "web")],
            ),
            format!(
                "{}  tls:\n  - hosts: [tls.test]\n    secretName: tls\n",
                nginx_ingress(
                    "optout",
                    false,
                    &[("ssl-redirect", "false")],
                    "tls.test",
                    &[("/", "web")]
                )
            ),
        ]),
        "ingressClass: nginx\n",
    );
    let r = http_get(gw.http, "moved.test", "/anything?q=1").await;
    assert_eq!(r.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(r.header("location"), "https://new.example/landing");
    let r = http_get(gw.http, "temp.test", "/x").await;
    assert_eq!(r.status, StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(r.header("location"), "https://maint.example/");

    let r = http_get(gw.http, "root.test", "/").await;
    assert_eq!(r.status, StatusCode::FOUND);
    assert_eq!(r.header("location"), "http://root.test/app1");
    assert_eq!(http_get(gw.http, "root.test", "/app1").await.text(), "web /app1");

    let r = http_get(gw.http, "forced.test", "/p?q=1").await;
    assert_eq!(
        r.status,
        StatusCode::PERMANENT_REDIRECT,
        "no TLS section, redirected anyway"
    );
    assert_eq!(
        r.header("location"),
        format!("https://forced.test:{}/p?q=1", gw.https.port())
    );
    let r = http_get(gw.http, "tls.test", "/plain").await;
    assert_eq!(r.text(), "web /plain", "ssl-redirect: false keeps plain HTTP");
    assert!(web
        .requests()
        .iter()
        .all(|s| !s.path_and_query.contains("anything")));
}

/// `enable-cors` and the `cors-*` annotations: preflights answered by the gateway,
/// headers on proxied responses, unknown origins left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_nginx_cors() {
    let web = Backend::named("web").await;
    let gw = Gateway::start(
        &concat(&[
            service("ns", "web", &[web.addr]),
            nginx_ingress(
                "cors",
                false,
                &[
                    ("enable-cors", "true"),
                    (
                        "cors-allow-origin",
                        "https://app.example.com, https://*.example.org",
                    ),
                    ("cors-allow-methods", "GET, POST"),
                    ("cors-allow-headers", "X-Custom,Content-Type"),
                    ("cors-expose-headers", "X-Total"),
                    ("cors-allow-credentials", "false"),
                    ("cors-max-age", "600"),
                ],
                "cors.test",
                &[("/", "web")],
            ),
            nginx_ingress(
                "open",
                false,
                &[("enable-cors", "true")],
                "open.test",
                &[("/", "web")],
            ),
        ]),
        "ingressClass: nginx\n",
    );
    let origin = [
        ("origin", "https://app.example.com"),
        ("access-control-request-method", "POST"),
    ];
    let r = get_with(&gw, "cors.test", "OPTIONS", "/api", &origin).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(r.header("access-control-allow-origin"), "https://app.example.com");
    assert_eq!(r.header("access-control-allow-methods"), "GET, POST");
    assert_eq!(r.header("access-control-allow-headers"), "X-Custom, Content-Type");
    assert_eq!(r.header("access-control-expose-headers"), "X-Total");
    assert_eq!(r.header("access-control-max-age"), "600");
    assert_eq!(r.header("access-control-allow-credentials"), "");
    assert!(web.requests().is_empty(), "preflights never reach the backend");

    let r = get_with(
        &gw,
        "cors.test",
        "GET",
        "/api",
        &[("origin", "https://a.b.example.org")],
    )
    .await;
    assert_eq!(r.text(), "web /api");
    assert_eq!(r.header("access-control-allow-origin"), "https://a.b.example.org");

    let r = get_with(
        &gw,
        "cors.test",
        "OPTIONS",
        "/api",
        &[("origin", "https://evil.example")],
    )
    .await;
    assert_eq!(
        r.text(),
        "web /api",
        "an unknown origin's OPTIONS is the backend's to answer"
    );
    assert_eq!(r.header("access-control-allow-origin"), "");

    let r = get_with(&gw, "open.test", "GET", "/", &[]).await;
    assert_eq!(r.header("access-control-allow-origin"), "*");
    assert_eq!(r.header("access-control-allow-credentials"), "true");
    assert_eq!(
        r.header("access-control-allow-methods"),
        "GET, PUT, POST, DELETE, PATCH, OPTIONS"
    );
    assert_eq!(r.header("access-control-max-age"), "1728000");
}

/// `proxy-body-size`, `proxy-read-timeout`, `limit-rps` with `limit-burst-multiplier`,
/// `limit-connections`, `whitelist-source-range`/`allowlist-source-range`,
/// `denylist-source-range` and the accepted buffering annotations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_nginx_limits_timeouts_and_source_ranges() {
    let web = Backend::named("web").await;
    let hanging = Backend::hanging().await;
    let slow = Backend::slow(Duration::from_millis(800)).await;
    let gw = Gateway::start(
        &concat(&[
            service("ns", "web", &[web.addr]),
            service("ns", "hanging", &[hanging.addr]),
            service("ns", "slow", &[slow.addr]),
            nginx_ingress(
                "body",
                false,
                &[
                    ("proxy-body-size", "1k"),
                    ("proxy-buffering", "off"),
                    ("client-body-buffer-size", "16k"),
                    // Accepted with their stated differences: the route is served.
                    ("proxy-connect-timeout", "5"),
                    ("proxy-send-timeout", "60"),
                    ("load-balance", "ewma"),
                    ("backend-protocol", "HTTP"),
                ],
                "body.test",
                &[("/", "web")],
            ),
            nginx_ingress(
                "timeout",
                false,
                &[("proxy-read-timeout", "1")],
                "timeout.test",
                &[("/", "hanging")],
            ),
            nginx_ingress(
                "rps",
                false,
                &[("limit-rps", "1"), ("limit-burst-multiplier", "2")],
                "rps.test",
                &[("/", "web")],
            ),
            nginx_ingress(
                "conns",
                false,
                &[("limit-connections", "1")],
                "conns.test",
                &[("/", "slow")],
            ),
            nginx_ingress(
                "allow",
                false,
                &[("whitelist-source-range", "10.0.0.0/8")],
                "allow.test",
                &[("/", "web")],
            ),
            nginx_ingress(
                "allow2",
                false,
                &[("allowlist-source-range", "127.0.0.1/32")],
                "allow2.test",
                &[("/", "web")],
            ),
            nginx_ingress(
                "deny",
                false,
                &[("denylist-source-range", "127.0.0.0/8")],
                "deny.test",
                &[("/", "web")],
            ),
        ]),
        "ingressClass: nginx\n",
    );
    let stream = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    let mut send = client::h1(stream).await;
    let big = "x".repeat(2048);
    let r = send_h1(&mut send, request("POST", "body.test", "/", &big))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    let stream = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    let mut send = client::h1(stream).await;
    let r = send_h1(&mut send, request("POST", "body.test", "/", "small"))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);

    let started = std::time::Instant::now();
    assert_eq!(
        http_get(gw.http, "timeout.test", "/").await.status,
        StatusCode::GATEWAY_TIMEOUT
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // 1/s with a burst of 2: two pass at once, the third is limited.
    let replies = futures_util::future::join_all((0..3).map(|_| http_get(gw.http, "rps.test", "/"))).await;
    let limited = replies
        .iter()
        .filter(|r| r.status == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!(
        limited,
        1,
        "{:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );

    let both = futures_util::future::join(http_get(gw.http, "conns.test", "/"), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        http_get(gw.http, "conns.test", "/").await
    })
    .await;
    assert_eq!(
        (both.0.status, both.1.status),
        (StatusCode::OK, StatusCode::TOO_MANY_REQUESTS)
    );

    assert_eq!(
        http_get(gw.http, "allow.test", "/").await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(http_get(gw.http, "allow2.test", "/").await.status, StatusCode::OK);
    assert_eq!(
        http_get(gw.http, "deny.test", "/").await.status,
        StatusCode::FORBIDDEN
    );
}

/// Snippets and unsupported access controls reject their Ingress (and only it);
/// unknown annotations are served with a warning that names them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_nginx_snippets_are_refused_and_unknown_annotations_warned() {
    let web = Backend::named("web").await;
    let gw = Gateway::start(
        &concat(&[
            service("ns", "web", &[web.addr]),
            nginx_ingress(
                "snippet",
                false,
                &[("configuration-snippet", "more_set_headers \"X-Injected: 1\";")],
                "snippet.test",
                &[("/", "web")],
            ),
            nginx_ingress(
                "waf",
                false,
                &[("enable-modsecurity", "true")],
                "mtls.test",
                &[("/", "web")],
            ),
            nginx_ingress(
                "ignored",
                false,
                &[("server-alias", "alias.test"), ("made-up-annotation", "1")],
                "ignored.test",
                &[("/", "web")],
            ),
        ]),
        "ingressClass: nginx\n",
    );
    assert_eq!(
        http_get(gw.http, "snippet.test", "/").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        http_get(gw.http, "mtls.test", "/").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        http_get(gw.http, "ignored.test", "/").await.status,
        StatusCode::OK
    );

    let (code, out) = crate::support::check_with(&gw.manifests_dir(), &["--ingress-class", "nginx"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("Ingress ns/snippet metadata.annotations[\"nginx.ingress.kubernetes.io/configuration-snippet\"]: snippets are raw nginx configuration"), "{out}");
    assert!(
        out.contains("Ingress ns/waf metadata.annotations[\"nginx.ingress.kubernetes.io/enable-modsecurity\"]: ModSecurity is not part of Portcullis"),
        "{out}"
    );
    assert!(out.contains("warning: Ingress ns/ignored metadata.annotations[\"nginx.ingress.kubernetes.io/made-up-annotation\"]: is not an ingress-nginx annotation Portcullis knows"), "{out}");
    assert!(out.contains("warning: Ingress ns/ignored metadata.annotations[\"nginx.ingress.kubernetes.io/server-alias\"]: not supported"), "{out}");
}

/// An oauth2-proxy stand-in: `session=good` passes with the user's identity in
/// `X-Auth-Request-*` headers and a refreshed cookie; anything else gets 401.
pub async fn auth_service() -> Backend {
    Backend::start(|req: http::Request<hyper::body::Incoming>| async move {
        let cookie = req
            .headers()
            .get("cookie")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let mut r = http::Response::new(crate::support::backend::full(""));
        if cookie.contains("session=good") {
            let h = r.headers_mut();
            h.insert("x-auth-request-user", "alice".parse().unwrap());
            h.insert("x-auth-request-email", "alice@example.com".parse().unwrap());
            h.insert("x-not-listed", "leak".parse().unwrap());
            h.insert("set-cookie", "session=good; Path=/; HttpOnly".parse().unwrap());
        } else if cookie.contains("session=banned") {
            *r.status_mut() = StatusCode::FORBIDDEN;
        } else {
            *r.status_mut() = StatusCode::UNAUTHORIZED;
        }
        r
    })
    .await
}

/// A backend that answers with the identity headers it was given.
pub async fn whoami() -> Backend {
    Backend::start(|req: http::Request<hyper::body::Incoming>| async move {
        let h = |n: &str| {
            req.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_string()
        };
        http::Response::new(crate::support::backend::full(format!(
            "user={} email={} unlisted={}",
            h("x-auth-request-user"),
            h("x-auth-request-email"),
            h("x-not-listed")
        )))
    })
    .await
}

/// `auth-url`, `auth-signin`, `auth-response-headers`: the oauth2-proxy setup, failing
/// closed when the auth service is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_nginx_external_auth() {
    let auth = auth_service().await;
    let app = whoami().await;
    let down = crate::support::backend::refused_addr().await;
    let url = format!("http://{}/oauth2/auth", auth.addr);
    let gw = Gateway::start(
        &concat(&[
            service("ns", "app", &[app.addr]),
            nginx_ingress(
                "guarded",
                false,
                &[
                    ("auth-url", &url),
                    (
                        "auth-signin",
                        "https://auth.test/oauth2/start?rd=$escaped_request_uri",
                    ),
                    (
                        "auth-response-headers",
                        "X-Auth-Request-User, X-Auth-Request-Email",
                    ),
                    ("auth-method", "GET"),
                ],
                "app.test",
                &[("/", "app")],
            ),
            nginx_ingress(
                "down",
                false,
                &[("auth-url", &format!("http://{down}/oauth2/auth"))],
                "down.test",
                &[("/", "app")],
            ),
        ]),
        "ingressClass: nginx\n",
    );
    let r = get_with(&gw, "app.test", "GET", "/reports?q=1", &[]).await;
    assert_eq!(r.status, StatusCode::FOUND);
    assert_eq!(
        r.header("location"),
        "https://auth.test/oauth2/start?rd=%2Freports%3Fq%3D1"
    );
    let r = get_with(
        &gw,
        "app.test",
        "GET",
        "/reports",
        &[("cookie", "session=good"), ("x-auth-request-user", "mallory")],
    )
    .await;
    assert_eq!(r.text(), "user=alice email=alice@example.com unlisted=-");
    assert_eq!(r.header("set-cookie"), "session=good; Path=/; HttpOnly");
    let r = get_with(&gw, "app.test", "GET", "/", &[("cookie", "session=banned")]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let checks = auth.requests();
    assert_eq!(checks.len(), 3);
    assert_eq!(checks[0].path_and_query, "/oauth2/auth");
    assert_eq!(checks[0].method, "GET", "auth-method");
    assert_eq!(checks[0].headers["x-original-url"], "http://app.test/reports?q=1");
    assert_eq!(checks[0].headers["x-original-method"], "GET");
    assert_eq!(
        app.requests().len(),
        1,
        "only the allowed request reached the app"
    );

    let r = get_with(&gw, "down.test", "GET", "/", &[("cookie", "session=good")]).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "fails closed");
    assert_eq!(app.requests().len(), 1);
}

/// Users made with Apache's `htpasswd` (`-nbB -C 5`, `-nbm`, `-nbs`): alice's password
/// is `correct horse`, carol's `p@ss word`, dave's `hunter2`.
pub const HTPASSWD: &str = "alice:$2y$05$gM42lr3zztrgpV0P6BHlv.iZGtgF/NMMd2NYG09aUrUvhNS.EFjMW\ncarol:$apr1$Epf7gp3Y$vF95d1ApmWu2g4r/be.sQ1\ndave:{SHA}87u9ZqY9S/F0eUBXjsPQEDUw4h0=\n";

/// The requests both basic-auth tests send: (Authorization header or none).
pub fn basic_cases() -> Vec<Option<String>> {
    use base64::Engine;
    let basic = |user_password: &str| {
        Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_password)
        ))
    };
    vec![
        None,
        basic("alice:correct horse"),
        basic("carol:p@ss word"),
        basic("dave:hunter2"),
        basic("alice:wrong"),
        basic("mallory:correct horse"),
        basic("alice"),
        Some("Bearer abc".to_string()),
    ]
}

fn htpasswd_secret(name: &str) -> String {
    let indented: String = HTPASSWD.lines().map(|l| format!("    {l}\n")).collect();
    format!("---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: ns}}\ntype: Opaque\nstringData:\n  auth: |\n{indented}")
}

/// `auth-type: basic` with `auth-secret` (file and map forms) and `auth-realm`; a
/// missing Secret rejects the Ingress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_nginx_basic_auth() {
    let web = Backend::named("web").await;
    let gw = Gateway::start(
        &concat(&[
            service("ns", "web", &[web.addr]),
            htpasswd_secret("htpasswd"),
            "---\napiVersion: v1\nkind: Secret\nmetadata: {name: users, namespace: ns}\nstringData:\n  dave: '{SHA}87u9ZqY9S/F0eUBXjsPQEDUw4h0='\n".to_string(),
            nginx_ingress(
                "file",
                false,
                &[("auth-type", "basic"), ("auth-secret", "htpasswd"), ("auth-realm", "Staff only")],
                "basic.test",
                &[("/", "web")],
            ),
            nginx_ingress(
                "map",
                false,
                &[("auth-type", "basic"), ("auth-secret", "users"), ("auth-secret-type", "auth-map")],
                "map.test",
                &[("/", "web")],
            ),
            nginx_ingress(
                "missing",
                false,
                &[("auth-type", "basic"), ("auth-secret", "nope")],
                "missing.test",
                &[("/", "web")],
            ),
        ]),
        "ingressClass: nginx\n",
    );
    let expected = [401, 200, 200, 200, 401, 401, 401, 401];
    for (case, want) in basic_cases().into_iter().zip(expected) {
        let headers: Vec<(&str, &str)> = case.iter().map(|v| ("authorization", v.as_str())).collect();
        let r = get_with(&gw, "basic.test", "GET", "/x", &headers).await;
        assert_eq!(r.status.as_u16(), want, "{case:?}");
        if want == 401 {
            assert_eq!(r.header("www-authenticate"), "Basic realm=\"Staff only\"");
        }
    }
    let dave = &basic_cases()[3];
    let alice = &basic_cases()[1];
    fn with(v: &Option<String>) -> Vec<(&'static str, &str)> {
        vec![("authorization", v.as_deref().unwrap_or(""))]
    }
    assert_eq!(
        get_with(&gw, "map.test", "GET", "/", &with(dave)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get_with(&gw, "map.test", "GET", "/", &with(alice)).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        http_get(gw.http, "missing.test", "/").await.status,
        StatusCode::NOT_FOUND
    );
    let (_, out) = crate::support::check_with(&gw.manifests_dir(), &["--ingress-class", "nginx"]);
    assert!(out.contains("Ingress ns/missing metadata.annotations[\"nginx.ingress.kubernetes.io/auth-secret\"]: Secret ns/nope not found"), "{out}");
    assert!(
        !gw.logs().contains("correct horse") && !gw.logs().contains("$2y$"),
        "no password or hash in the logs"
    );
}

/// In controller mode the gateway reads an htpasswd Secret only when its owner labelled
/// it `portcullis.dev/basic-auth: "true"`; an Ingress naming another Secret is not
/// served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_reads_only_labelled_basic_auth_secrets() {
    use serde_json::json;
    let web = Backend::named("web").await;
    let ingress = |name: &str, host: &str, secret: &str| {
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": name, "namespace": "ns", "resourceVersion": "2", "annotations": {
                "nginx.ingress.kubernetes.io/auth-type": "basic",
                "nginx.ingress.kubernetes.io/auth-secret": secret}},
            "spec": {"ingressClassName": "nginx", "rules": [{"host": host, "http": {"paths": [
                {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}})
    };
    let secret = |name: &str, labelled: bool| {
        let labels = if labelled {
            json!({"portcullis.dev/basic-auth": "true"})
        } else {
            json!({})
        };
        json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": "ns", "labels": labels},
            "stringData": {"auth": HTPASSWD}})
    };
    let (_api, gw) = nginx_controller(
        web.addr,
        vec![
            ingress("labelled", "a.test", "opted-in"),
            ingress("other", "b.test", "private"),
        ],
        vec![secret("opted-in", true), secret("private", false)],
        vec![],
    )
    .await;
    let alice = basic_cases()[1].clone().unwrap();
    let r = get_with(&gw, "a.test", "GET", "/", &[("authorization", &alice)]).await;
    assert_eq!(r.text(), "web /");
    assert_eq!(
        get_with(&gw, "a.test", "GET", "/", &[]).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get_with(&gw, "b.test", "GET", "/", &[("authorization", &alice)])
            .await
            .status,
        StatusCode::NOT_FOUND,
        "the unlabelled Secret was never read"
    );
    assert!(gw.logs().contains("Secret ns/private not found"), "{}", gw.logs());
}

/// The README's table of ingress-nginx annotations names every one the code knows, so
/// the two cannot drift apart silently.
#[test]
fn the_readme_lists_every_ingress_nginx_annotation() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let missing: Vec<&str> = portcullis_config::nginx::ANNOTATIONS
        .iter()
        .map(|a| a.name)
        .filter(|name| !readme.contains(&format!("| `{name}` |")))
        .collect();
    assert!(missing.is_empty(), "README.md misses {missing:?}");
}

/// `service-upstream`: requests go to the Service's cluster IP and port instead of the
/// endpoints in its EndpointSlices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_nginx_service_upstream() {
    let web = Backend::named("web").await;
    let gone = crate::support::backend::refused_addr().await;
    // The cluster IP and port reach `web`; the EndpointSlice lists an address that refuses.
    let svc = format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: ns}}\nspec:\n  clusterIP: 127.0.0.1\n  ports: [{{name: http, port: {}, targetPort: app}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  namespace: ns\n  labels: {{kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{{name: http, port: {}}}]\nendpoints:\n- addresses: [\"127.0.0.1\"]\n  conditions: {{ready: true}}\n",
        web.addr.port(),
        gone.port()
    );
    let ingress = |name: &str, host: &str, annotations: &[(&str, &str)]| {
        nginx_ingress(name, false, annotations, host, &[("/", "web")]).replace(
            "port: {number: 80}",
            &format!("port: {{number: {}}}", web.addr.port()),
        )
    };
    let gw = Gateway::start(
        &concat(&[
            svc,
            ingress("cluster-ip", "ip.test", &[("service-upstream", "true")]),
            ingress("endpoints", "ep.test", &[]),
        ]),
        "ingressClass: nginx\n",
    );
    assert_eq!(http_get(gw.http, "ip.test", "/a").await.text(), "web /a");
    assert_eq!(
        http_get(gw.http, "ep.test", "/a").await.status,
        StatusCode::BAD_GATEWAY
    );
}

/// `from-to-www-redirect`: the other name redirects with 308, keeping scheme, port and
/// URI, unless another Ingress serves that name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_nginx_from_to_www_redirect() {
    let web = Backend::named("web").await;
    let gw = Gateway::start(
        &concat(&[
            service("ns", "web", &[web.addr]),
            nginx_ingress(
                "www",
                false,
                &[("from-to-www-redirect", "true")],
                "www.shop.test",
                &[("/", "web")],
            ),
            nginx_ingress(
                "bare",
                false,
                &[("from-to-www-redirect", "true")],
                "blog.test",
                &[("/", "web")],
            ),
            nginx_ingress(
                "both",
                false,
                &[("from-to-www-redirect", "true")],
                "docs.test",
                &[("/", "web")],
            ),
            nginx_ingress("www-docs", false, &[], "www.docs.test", &[("/", "web")]),
        ]),
        "ingressClass: nginx\n",
    );
    let port = gw.http.port();
    let r = http_get(gw.http, &format!("shop.test:{port}"), "/cart?id=1").await;
    assert_eq!(r.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        r.header("location"),
        format!("http://www.shop.test:{port}/cart?id=1")
    );
    let r = http_get(gw.http, "www.blog.test", "/post").await;
    assert_eq!(r.header("location"), "http://blog.test/post");
    assert_eq!(
        http_get(gw.http, "www.shop.test", "/cart").await.text(),
        "web /cart"
    );
    assert_eq!(
        http_get(gw.http, "www.docs.test", "/x").await.text(),
        "web /x",
        "served by its own Ingress, not redirected"
    );
}

/// A controller gateway (class `nginx`) against an API double holding the `web`
/// Service and its EndpointSlice (at `web`), with these Ingresses, Secrets and
/// ConfigMaps in namespace `ns`. The double is returned too: it must outlive the gateway.
pub async fn nginx_controller(
    web: std::net::SocketAddr,
    ingresses: Vec<serde_json::Value>,
    secrets: Vec<serde_json::Value>,
    config_maps: Vec<serde_json::Value>,
) -> (crate::support::kube_api::KubeApi, Gateway) {
    use serde_json::json;
    let api = crate::support::kube_api::KubeApi::start(vec![
        ("/apis/networking.k8s.io/v1/ingresses", "IngressList", ingresses),
        (
            "/api/v1/services",
            "ServiceList",
            vec![json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "ns"},
                "spec": {"ports": [{"name": "http", "port": 80, "targetPort": web.port()}]}})],
        ),
        (
            "/apis/discovery.k8s.io/v1/endpointslices",
            "EndpointSliceList",
            vec![json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "web-1", "namespace": "ns", "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4", "ports": [{"name": "http", "port": web.port()}],
                "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}]})],
        ),
        ("/api/v1/secrets", "SecretList", secrets),
        ("/api/v1/configmaps", "ConfigMapList", config_maps),
        ("/apis/networking.k8s.io/v1/ingressclasses", "IngressClassList", vec![]),
    ])
    .await;
    let kubeconfig = api.kubeconfig.path().to_path_buf();
    let gw = tokio::task::spawn_blocking(move || {
        Gateway::controller(
            "ingressClass: nginx\n",
            &kubeconfig,
            &["--publish-status-address", "203.0.113.7"],
        )
    })
    .await
    .unwrap();
    (api, gw)
}
