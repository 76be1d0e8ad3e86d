//! The subtle annotations side by side with nginx itself (Debian's `nginx`): the
//! Ingresses go to Portcullis, and the nginx configuration ingress-nginx would
//! generate for them goes to a real nginx; the same requests must get the same
//! answers from both.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{concat, nginx_ingress};
use crate::support::backend::Backend;
use crate::support::client::try_http_get;
use crate::support::{service, Gateway};

/// nginx on a loopback port the kernel picked for the test (bound on port 0, then
/// released for nginx to bind: nginx has no way to report a port it chose); stopped on
/// drop.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts nginx with `servers` (server blocks whose `listen` is `LISTEN`).
    fn start(servers: &str) -> Nginx {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().display().to_string();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {p}/nginx.pid;\nerror_log {p}/error.log warn;\nevents {{ worker_connections 64; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {p}/body;\n  proxy_temp_path {p}/proxy;\n  fastcgi_temp_path {p}/fastcgi;\n  uwsgi_temp_path {p}/uwsgi;\n  scgi_temp_path {p}/scgi;\n{}\n}}\n",
            servers.replace("LISTEN", &format!("listen {addr}"))
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        drop(listener);
        let binary = ["/usr/sbin/nginx", "nginx"]
            .into_iter()
            .find(|b| std::path::Path::new(b).exists())
            .unwrap_or("nginx");
        let child = Command::new(binary)
            .args(["-p", &p, "-c"])
            .arg(dir.path().join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx must be installed (Debian package nginx; .ci/run installs it)");
        Nginx {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (status, Location, body) of a plain-HTTP GET.
async fn answer(addr: SocketAddr, host: &str, path: &str) -> (u16, String, String) {
    for _ in 0..50 {
        match try_http_get(addr, host, path).await {
            Ok(r) => return (r.status.as_u16(), r.header("location").to_string(), r.text()),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    panic!("{addr} never answered {path}");
}

/// `rewrite-target` with capture groups, `use-regex` paths ordered by length, the
/// case-insensitive match and the query-string rules of nginx's `rewrite`, plus the
/// redirect annotations: the answers must be identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrites_and_regex_paths_match_nginx() {
    let web = Backend::named("web").await;
    let api = Backend::named("api").await;
    let gw = Gateway::start(
        &concat(&[
            service("ns", "web", &[web.addr]),
            service("ns", "api", &[api.addr]),
            nginx_ingress(
                "strip",
                false,
                &[("rewrite-target", "/$2")],
                "rw.test",
                &[("/something(/|$)(.*)", "web")],
            ),
            nginx_ingress(
                "api",
                false,
                &[("rewrite-target", "/v2/$1?from=gw"), ("use-regex", "true")],
                "rw.test",
                &[("/api/(users|teams)/?(.*)", "api")],
            ),
            nginx_ingress(
                "whole",
                false,
                &[("rewrite-target", "/")],
                "rw.test",
                &[("/flat", "web")],
            ),
            nginx_ingress(
                "regex",
                false,
                &[("use-regex", "true")],
                "rw.test",
                &[("/static/.+\\.(css|js)$", "api")],
            ),
            nginx_ingress(
                "moved",
                false,
                &[
                    ("permanent-redirect", "https://new.example/x"),
                    ("permanent-redirect-code", "308"),
                ],
                "moved.test",
                &[("/", "web")],
            ),
            nginx_ingress(
                "root",
                false,
                &[("app-root", "/app1")],
                "root.test",
                &[("/", "web")],
            ),
        ]),
        "ingressClass: nginx\n",
    );
    // What ingress-nginx generates for those Ingresses: one server per host; with
    // regexes on a host, every location becomes `~* "^PATH"`, longest first, and a
    // rewrite-target becomes `rewrite "(?i)PATH" TARGET break;`.
    let (w, a) = (web.addr, api.addr);
    let nginx = Nginx::start(&format!(
        r#"
  server {{
    LISTEN;
    server_name rw.test;
    location ~* "^/api/(users|teams)/?(.*)" {{ rewrite "(?i)/api/(users|teams)/?(.*)" /v2/$1?from=gw break; proxy_pass http://{a}; }}
    location ~* "^/something(/|$)(.*)" {{ rewrite "(?i)/something(/|$)(.*)" /$2 break; proxy_pass http://{w}; }}
    location ~* "^/static/.+\.(css|js)$" {{ proxy_pass http://{a}; }}
    location ~* "^/flat" {{ rewrite "(?i)/flat" / break; proxy_pass http://{w}; }}
  }}
  server {{
    LISTEN;
    server_name moved.test;
    location ~* "^/" {{ return 308 https://new.example/x; }}
  }}
  server {{
    LISTEN;
    server_name root.test;
    if ($uri = /) {{ return 302 $scheme://$http_host/app1; }}
    location / {{ proxy_pass http://{w}; }}
  }}
"#
    ));
    let cases = [
        ("rw.test", "/something"),
        ("rw.test", "/something/"),
        ("rw.test", "/something/new"),
        ("rw.test", "/SOMETHING/New/Deep?q=1&r=2"),
        ("rw.test", "/something-else"),
        ("rw.test", "/api/users"),
        ("rw.test", "/api/teams/42?page=3"),
        ("rw.test", "/API/Users/7"),
        ("rw.test", "/api/groups/1"),
        ("rw.test", "/static/app.js"),
        ("rw.test", "/static/app.json"),
        ("rw.test", "/static/css/site.CSS"),
        ("rw.test", "/flat/anything/below?x=y"),
        ("rw.test", "/flatter"),
        ("rw.test", "/nothing"),
        ("moved.test", "/a/b?c=d"),
        ("root.test", "/"),
        ("root.test", "/app1/page"),
    ];
    let mut differences = Vec::new();
    for (host, path) in cases {
        let ours = answer(gw.http, host, path).await;
        let theirs = answer(nginx.addr, host, path).await;
        // Error pages and redirect bodies are each server's own: compare the body of
        // proxied answers only.
        let normalize = |(status, location, body): (u16, String, String), port: u16| {
            let body = if status == 200 { body } else { String::new() };
            (status, location.replace(&port.to_string(), "PORT"), body)
        };
        let ours_normalized = normalize(ours, gw.http.port());
        let theirs_normalized = normalize(theirs, nginx.addr.port());
        if ours_normalized != theirs_normalized {
            differences.push(format!(
                "{host}{path}: portcullis {ours_normalized:?}, nginx {theirs_normalized:?}"
            ));
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));
}

/// (status, Location up to the redirect parameter, Set-Cookie, WWW-Authenticate, body
/// of a 200) of a GET with extra headers.
async fn answer_with(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String, String, String) {
    for _ in 0..50 {
        let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut send = crate::support::client::h1(stream).await;
        let mut req = crate::support::client::request("GET", host, path, "");
        for (k, v) in headers {
            req.headers_mut().insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let r = crate::support::client::send_h1(&mut send, req).await.unwrap();
        let location = r.header("location");
        let location = location
            .split_once("rd=")
            .map_or(location, |(before, _)| before)
            .to_string();
        let body = if r.status == http::StatusCode::OK {
            r.text()
        } else {
            String::new()
        };
        return (
            r.status.as_u16(),
            location,
            r.header("set-cookie").to_string(),
            r.header("www-authenticate").to_string(),
            body,
        );
    }
    panic!("{addr} never answered {path}");
}

/// `auth-url` with `auth-signin` and `auth-response-headers`, as oauth2-proxy users
/// configure it, against nginx's `auth_request` set up the way ingress-nginx's template
/// does: which requests pass, which headers the app gets (forged ones dropped), which
/// cookie the browser gets, where a 401 sends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_auth_matches_nginx_auth_request() {
    let auth = super::auth_service().await;
    let app = super::whoami().await;
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
                        "X-Auth-Request-User,X-Auth-Request-Email",
                    ),
                ],
                "app.test",
                &[("/", "app")],
            ),
        ]),
        "ingressClass: nginx\n",
    );
    let (auth_addr, app_addr) = (auth.addr, app.addr);
    let nginx = Nginx::start(&format!(
        r#"
  server {{
    LISTEN;
    server_name app.test;
    location = /_external-auth {{
      internal;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-URL $scheme://$http_host$request_uri;
      proxy_set_header X-Original-Method $request_method;
      proxy_pass http://{auth_addr}/oauth2/auth;
    }}
    location @signin {{ return 302 https://auth.test/oauth2/start?rd=$request_uri; }}
    location / {{
      auth_request /_external-auth;
      auth_request_set $auth_cookie $upstream_http_set_cookie;
      add_header Set-Cookie $auth_cookie;
      auth_request_set $h0 $upstream_http_x_auth_request_user;
      proxy_set_header X-Auth-Request-User $h0;
      auth_request_set $h1 $upstream_http_x_auth_request_email;
      proxy_set_header X-Auth-Request-Email $h1;
      error_page 401 = @signin;
      proxy_pass http://{app_addr};
    }}
  }}
"#
    ));
    let cases: &[(&str, &[(&str, &str)])] = &[
        ("/reports?q=1", &[]),
        ("/reports", &[("cookie", "session=good")]),
        (
            "/reports",
            &[("cookie", "session=good"), ("x-auth-request-user", "mallory")],
        ),
        (
            "/",
            &[
                ("cookie", "session=good; other=1"),
                ("x-auth-request-email", "root@evil"),
            ],
        ),
        ("/admin", &[("cookie", "session=banned")]),
        (
            "/admin",
            &[("cookie", "session=bad"), ("x-auth-request-user", "mallory")],
        ),
    ];
    let mut differences = Vec::new();
    for (path, headers) in cases {
        let ours = answer_with(gw.http, "app.test", path, headers).await;
        let theirs = answer_with(nginx.addr, "app.test", path, headers).await;
        if ours != theirs {
            differences.push(format!(
                "{path} {headers:?}: portcullis {ours:?}, nginx {theirs:?}"
            ));
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));
}

/// `auth-type: basic` against nginx's `auth_basic` with the same htpasswd file (bcrypt,
/// `$apr1$`, `{SHA}`): the same requests pass, the same get 401 with the same challenge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_matches_nginx_auth_basic() {
    let web = crate::support::backend::Backend::named("web").await;
    let indented: String = super::HTPASSWD.lines().map(|l| format!("    {l}\n")).collect();
    let gw = Gateway::start(
        &concat(&[
            service("ns", "web", &[web.addr]),
            format!("---\napiVersion: v1\nkind: Secret\nmetadata: {{name: htpasswd, namespace: ns}}\nstringData:\n  auth: |\n{indented}"),
            nginx_ingress(
                "basic",
                false,
                &[("auth-type", "basic"), ("auth-secret", "htpasswd"), ("auth-realm", "Staff only")],
                "basic.test",
                &[("/", "web")],
            ),
        ]),
        "ingressClass: nginx\n",
    );
    let users = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(users.path(), super::HTPASSWD).unwrap();
    let nginx = Nginx::start(&format!(
        "  server {{\n    LISTEN;\n    server_name basic.test;\n    location / {{\n      auth_basic \"Staff only\";\n      auth_basic_user_file {};\n      proxy_pass http://{};\n    }}\n  }}\n",
        users.path().display(),
        web.addr
    ));
    let mut differences = Vec::new();
    for case in super::basic_cases() {
        let headers: Vec<(&str, &str)> = case.iter().map(|v| ("authorization", v.as_str())).collect();
        let ours = answer_with(gw.http, "basic.test", "/x", &headers).await;
        let theirs = answer_with(nginx.addr, "basic.test", "/x", &headers).await;
        if ours != theirs {
            differences.push(format!("{case:?}: portcullis {ours:?}, nginx {theirs:?}"));
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));
}

/// Canary precedence (header, then cookie, then weight) against nginx configured with
/// the rules of ingress-nginx's balancer written as `map`s: the same requests must
/// reach the same backend. Weights 0 and 100 keep it deterministic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_precedence_matches_nginx() {
    let stable = crate::support::backend::Backend::named("stable").await;
    let preview = crate::support::backend::Backend::named("preview").await;
    let gw = Gateway::start(
        &concat(&[
            service("ns", "stable", &[stable.addr]),
            service("ns", "preview", &[preview.addr]),
            nginx_ingress("main", false, &[], "one.test", &[("/", "stable")]),
            nginx_ingress(
                "one-canary",
                false,
                &[
                    ("canary", "true"),
                    ("canary-by-header", "X-Canary"),
                    ("canary-by-cookie", "canary"),
                    ("canary-weight", "0"),
                ],
                "one.test",
                &[("/", "preview")],
            ),
            nginx_ingress("main2", false, &[], "two.test", &[("/", "stable")]),
            nginx_ingress(
                "two-canary",
                false,
                &[
                    ("canary", "true"),
                    ("canary-by-header", "X-Version"),
                    ("canary-by-header-value", "v2"),
                    ("canary-by-cookie", "beta"),
                    ("canary-weight", "100"),
                ],
                "two.test",
                &[("/", "preview")],
            ),
        ]),
        "ingressClass: nginx\n",
    );
    let (s, p) = (stable.addr, preview.addr);
    let nginx = Nginx::start(&format!(
        r#"
  upstream stable {{ server {s}; }}
  upstream preview {{ server {p}; }}
  # one.test: canary-by-header X-Canary (always/never), canary-by-cookie canary, weight 0.
  map $http_x_canary $one_header {{ always preview; never stable; default ""; }}
  map $cookie_canary $one_cookie {{ always preview; never stable; default ""; }}
  map "$one_header|$one_cookie" $one {{ ~^preview preview; ~^stable stable; "~^\|preview" preview; default stable; }}
  # two.test: canary-by-header X-Version with value v2 (other values fall through),
  # canary-by-cookie beta, weight 100.
  map $http_x_version $two_header {{ v2 preview; default ""; }}
  map $cookie_beta $two_cookie {{ always preview; never stable; default ""; }}
  map "$two_header|$two_cookie" $two {{ ~^preview preview; "~^\|stable" stable; default preview; }}
  server {{ LISTEN; server_name one.test; location / {{ proxy_pass http://$one; }} }}
  server {{ LISTEN; server_name two.test; location / {{ proxy_pass http://$two; }} }}
"#
    ));
    let cases: &[(&str, &[(&str, &str)])] = &[
        ("one.test", &[]),
        ("one.test", &[("x-canary", "always")]),
        ("one.test", &[("x-canary", "never")]),
        ("one.test", &[("x-canary", "other")]),
        ("one.test", &[("cookie", "canary=always")]),
        ("one.test", &[("cookie", "canary=never")]),
        ("one.test", &[("x-canary", "never"), ("cookie", "canary=always")]),
        ("one.test", &[("x-canary", "other"), ("cookie", "canary=always")]),
        ("one.test", &[("x-canary", "always"), ("cookie", "canary=never")]),
        ("two.test", &[]),
        ("two.test", &[("x-version", "v2")]),
        ("two.test", &[("x-version", "v1"), ("cookie", "beta=never")]),
        ("two.test", &[("x-version", "never")]),
        ("two.test", &[("cookie", "beta=never")]),
        ("two.test", &[("x-version", "v2"), ("cookie", "beta=never")]),
        ("two.test", &[("cookie", "other=1; beta=always")]),
    ];
    let mut differences = Vec::new();
    for (host, headers) in cases {
        let ours = answer_with(gw.http, host, "/p", headers).await;
        let theirs = answer_with(nginx.addr, host, "/p", headers).await;
        if ours != theirs {
            differences.push(format!(
                "{host} {headers:?}: portcullis {ours:?}, nginx {theirs:?}"
            ));
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));
}
