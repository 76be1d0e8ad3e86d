//! ingress-nginx canary Ingresses through the real gateway: a canary Ingress lends its
//! backend to the main Ingress's route with the same host and path, and its header,
//! cookie and weight annotations decide, in that order, which requests it gets.

use http::StatusCode;

use super::{concat, get_with, nginx_ingress};
use crate::support::backend::Backend;
use crate::support::client::{self, request, send_h1};
use crate::support::{service, Gateway};

/// A canary Ingress for `host` `/` sending to the Service `svc`.
fn canary(name: &str, annotations: &[(&str, &str)], host: &str, svc: &str) -> String {
    let mut all = vec![("canary", "true")];
    all.extend_from_slice(annotations);
    nginx_ingress(name, false, &all, host, &[("/", svc)])
}

/// The main Ingress for `host` `/`, to the Service `main`.
fn main_ingress(name: &str, host: &str) -> String {
    nginx_ingress(name, false, &[], host, &[("/", "main")])
}

/// Which backend answered `GET /` on `host` with these headers.
async fn served_by(gw: &Gateway, host: &str, headers: &[(&str, &str)]) -> String {
    let r = get_with(gw, host, "GET", "/", headers).await;
    assert_eq!(r.status, StatusCode::OK, "{host} {headers:?}: {}", r.text());
    r.header("x-backend").to_string()
}

/// How many of `n` requests on one connection the canary answered.
async fn canary_share(gw: &Gateway, host: &str, n: usize) -> usize {
    let stream = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    let mut send = client::h1(stream).await;
    let mut to_canary = 0;
    for _ in 0..n {
        let r = send_h1(&mut send, request("GET", host, "/", "")).await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        if r.header("x-backend") == "canary" {
            to_canary += 1;
        }
    }
    to_canary
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_by_header_cookie_and_weight() {
    let main = Backend::named("main").await;
    let canary_backend = Backend::named("canary").await;
    let mut manifests = vec![
        service("ns", "main", &[main.addr]),
        service("ns", "canary", &[canary_backend.addr]),
    ];
    for host in [
        "hdr.test",
        "val.test",
        "pat.test",
        "w0.test",
        "w100.test",
        "w30.test",
        "gone.test",
    ] {
        manifests.push(main_ingress(&format!("main-{}", &host[..host.len() - 5]), host));
    }
    manifests.extend([
        canary(
            "c-hdr",
            &[("canary-by-header", "X-Canary"), ("canary-by-cookie", "canary")],
            "hdr.test",
            "canary",
        ),
        canary(
            "c-val",
            &[
                ("canary-by-header", "x-version"),
                ("canary-by-header-value", "v2"),
                ("canary-weight", "0"),
            ],
            "val.test",
            "canary",
        ),
        canary(
            "c-pat",
            &[
                ("canary-by-header", "x-region"),
                ("canary-by-header-pattern", "^eu-"),
            ],
            "pat.test",
            "canary",
        ),
        canary("c-w0", &[("canary-weight", "0")], "w0.test", "canary"),
        canary("c-w100", &[("canary-weight", "100")], "w100.test", "canary"),
        canary("c-w30", &[("canary-weight", "30")], "w30.test", "canary"),
        // A canary whose Service does not exist takes nothing, as in ingress-nginx.
        canary(
            "c-gone",
            &[("canary-weight", "100")],
            "gone.test",
            "no-such-service",
        ),
        // No main Ingress for this host: the canary serves nothing.
        canary("c-orphan", &[("canary-weight", "100")], "orphan.test", "canary"),
    ]);
    let gw = Gateway::start(&concat(&manifests), "ingressClass: nginx\n");

    // canary-by-header: always and never decide; other values fall through to the
    // cookie, then to the weight (0 here).
    assert_eq!(served_by(&gw, "hdr.test", &[]).await, "main");
    assert_eq!(
        served_by(&gw, "hdr.test", &[("x-canary", "always")]).await,
        "canary"
    );
    assert_eq!(served_by(&gw, "hdr.test", &[("x-canary", "never")]).await, "main");
    assert_eq!(served_by(&gw, "hdr.test", &[("x-canary", "yes")]).await, "main");
    // canary-by-cookie, after the header.
    assert_eq!(
        served_by(&gw, "hdr.test", &[("cookie", "a=1; canary=always")]).await,
        "canary"
    );
    assert_eq!(
        served_by(&gw, "hdr.test", &[("cookie", "canary=never")]).await,
        "main"
    );
    assert_eq!(
        served_by(
            &gw,
            "hdr.test",
            &[("x-canary", "never"), ("cookie", "canary=always")]
        )
        .await,
        "main",
        "the header is tried before the cookie"
    );
    assert_eq!(
        served_by(
            &gw,
            "hdr.test",
            &[("x-canary", "other"), ("cookie", "canary=always")]
        )
        .await,
        "canary",
        "an undecided header falls through to the cookie"
    );

    // canary-by-header-value: exactly that value; always and never are other values.
    assert_eq!(served_by(&gw, "val.test", &[("x-version", "v2")]).await, "canary");
    assert_eq!(served_by(&gw, "val.test", &[("x-version", "v1")]).await, "main");
    assert_eq!(
        served_by(&gw, "val.test", &[("x-version", "always")]).await,
        "main"
    );

    // canary-by-header-pattern.
    assert_eq!(
        served_by(&gw, "pat.test", &[("x-region", "eu-west-1")]).await,
        "canary"
    );
    assert_eq!(
        served_by(&gw, "pat.test", &[("x-region", "us-east-1")]).await,
        "main"
    );

    // Weights 0 and 100 are deterministic; 30 is about 30%.
    assert_eq!(canary_share(&gw, "w0.test", 50).await, 0);
    assert_eq!(canary_share(&gw, "w100.test", 50).await, 50);
    let share = canary_share(&gw, "w30.test", 1000).await;
    // The mean is 300 with a standard deviation of about 14.5: ±70 is almost 5.
    assert!((230..=370).contains(&share), "{share} of 1000 went to the canary");

    assert_eq!(served_by(&gw, "gone.test", &[]).await, "main");
    let r = get_with(&gw, "orphan.test", "GET", "/", &[]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "a canary creates no routes");

    // The canary's backend got the request with the path as sent.
    let seen = canary_backend.requests();
    assert_eq!(seen[0].path_and_query, "/");
}

#[test]
fn canary_problems_are_reported_by_check() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = concat(&[
        main_ingress("main", "app.test"),
        canary("first", &[("canary-weight", "10")], "app.test", "canary"),
        canary("second", &[("canary-weight", "20")], "app.test", "canary"),
        canary("orphan", &[("canary-weight", "20")], "nothing.test", "canary"),
    ]);
    std::fs::write(dir.path().join("all.yaml"), manifests).unwrap();
    let (code, out) = crate::support::check_with(dir.path(), &["--ingress-class", "nginx"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("already has the canary Ingress ns/first"), "{out}");
    assert!(out.contains("is served by no other Ingress"), "{out}");
    assert!(
        !out.contains("ns/main") || !out.contains("already served by"),
        "{out}"
    );
}
