//! `default-backend` and `custom-http-errors`: the default backend serves a route
//! without ready endpoints and answers in place of the listed backend errors, told
//! about the original request by ingress-nginx's `X-Code` family of headers.

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use super::{concat, get_with, nginx_ingress};
use crate::support::backend::{full, Backend};
use crate::support::{service, Gateway};

/// Answers `/missing` with 404 and `/boom` with 500, each with a body of its own.
async fn app() -> Backend {
    Backend::start(|req: Request<Incoming>| async move {
        let status = match req.uri().path() {
            "/missing" => StatusCode::NOT_FOUND,
            "/boom" => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::OK,
        };
        let mut r = Response::new(full(format!("app says {}", status.as_u16())));
        *r.status_mut() = status;
        r.headers_mut().insert("x-from", "app".parse().unwrap());
        r
    })
    .await
}

/// An error-page service: a 404 becomes 410 Gone, so the test sees whose status the
/// client got; anything else is answered with the code it was given.
async fn error_pages() -> Backend {
    Backend::start(|req: Request<Incoming>| async move {
        let code = req
            .headers()
            .get("x-code")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_string();
        let status = match code.as_str() {
            "404" => StatusCode::GONE,
            other => other.parse().unwrap_or(StatusCode::OK),
        };
        let mut r = Response::new(full(format!("error page {code} for {}", req.uri())));
        *r.status_mut() = status;
        r.headers_mut().insert("x-from", "errors".parse().unwrap());
        r
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_http_errors_are_answered_by_the_default_backend() {
    let app = app().await;
    let errors = error_pages().await;
    let gw = Gateway::start(
        &concat(&[
            service("ns", "app", &[app.addr]),
            service("ns", "errors", &[errors.addr]),
            nginx_ingress(
                "site",
                false,
                &[("default-backend", "errors"), ("custom-http-errors", "404, 503")],
                "site.test",
                &[("/", "app")],
            ),
        ]),
        "ingressClass: nginx\n",
    );

    let r = get_with(
        &gw,
        "site.test",
        "GET",
        "/missing?q=1",
        &[("accept", "text/html")],
    )
    .await;
    assert_eq!(r.status, StatusCode::GONE, "the default backend's status");
    assert_eq!(r.text(), "error page 404 for /");
    assert_eq!(
        r.header("x-from"),
        "errors",
        "none of the backend's response is kept"
    );
    let sent = &app.requests()[0];
    let seen = &errors.requests()[0];
    assert_eq!((seen.method.as_str(), seen.path_and_query.as_str()), ("GET", "/"));
    let h = |name: &str| seen.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
    assert_eq!(h("x-code"), "404");
    assert_eq!(h("x-format"), "text/html");
    assert_eq!(h("x-original-uri"), "/missing?q=1");
    assert_eq!(h("x-namespace"), "ns");
    assert_eq!(h("x-ingress-name"), "site");
    assert_eq!(h("x-service-name"), "app");
    assert_eq!(h("x-service-port"), "80");
    assert_eq!(h("x-request-id"), sent.headers["x-request-id"].to_str().unwrap());
    assert!(!h("x-request-id").is_empty());

    // A request with a body: the error page is still fetched with a bodiless GET.
    let r = get_with(
        &gw,
        "site.test",
        "POST",
        "/missing",
        &[("content-type", "text/plain")],
    )
    .await;
    assert_eq!(r.status, StatusCode::GONE);
    let seen = &errors.requests()[1];
    assert_eq!(seen.method, "GET");
    assert!(!seen.headers.contains_key("content-type"));

    // A status not listed passes unchanged, and so do successes.
    let r = get_with(&gw, "site.test", "GET", "/boom", &[]).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(r.text(), "app says 500");
    let r = get_with(&gw, "site.test", "GET", "/fine", &[]).await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "app says 200"));
    assert_eq!(errors.requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_backend_serves_a_route_without_endpoints() {
    let app = app().await;
    let errors = error_pages().await;
    let gw = Gateway::start(
        &concat(&[
            service("ns", "app", &[app.addr]),
            service("ns", "empty", &[]),
            service("ns", "errors", &[errors.addr]),
            nginx_ingress(
                "down",
                false,
                &[("default-backend", "errors")],
                "down.test",
                &[("/", "empty")],
            ),
            nginx_ingress("plain", false, &[], "plain.test", &[("/", "empty")]),
        ]),
        "ingressClass: nginx\n",
    );
    let r = get_with(
        &gw,
        "down.test",
        "GET",
        "/page?x=1",
        &[("accept", "application/json")],
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "what the default backend answered"
    );
    assert_eq!(r.text(), "error page 503 for /page?x=1", "the request as it came");
    let seen = &errors.requests()[0];
    let h = |name: &str| seen.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
    assert_eq!(h("x-code"), "503");
    assert_eq!(h("x-format"), "application/json");
    assert_eq!(h("x-service-name"), "empty");
    assert_eq!(h("x-ingress-name"), "down");
    // Without the annotation the gateway answers 503 itself.
    let r = get_with(&gw, "plain.test", "GET", "/page", &[]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(errors.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_default_backend_is_an_error_and_errors_pass_unchanged() {
    let app = app().await;
    let gw = Gateway::start(
        &concat(&[
            service("ns", "app", &[app.addr]),
            nginx_ingress(
                "lost",
                false,
                &[("default-backend", "nowhere"), ("custom-http-errors", "404")],
                "lost.test",
                &[("/", "app")],
            ),
            nginx_ingress(
                "alone",
                false,
                &[("custom-http-errors", "404")],
                "alone.test",
                &[("/", "app")],
            ),
        ]),
        "ingressClass: nginx\n",
    );
    for host in ["lost.test", "alone.test"] {
        let r = get_with(&gw, host, "GET", "/missing", &[]).await;
        assert_eq!(
            (r.status, r.text().as_str()),
            (StatusCode::NOT_FOUND, "app says 404"),
            "{host}"
        );
    }
    let (code, out) = crate::support::check_with(&gw.manifests_dir(), &["--ingress-class", "nginx"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("error: Ingress ns/lost metadata.annotations[\"nginx.ingress.kubernetes.io/default-backend\"]: Service ns/nowhere not found"), "{out}");
    assert!(out.contains("warning: Ingress ns/alone metadata.annotations[\"nginx.ingress.kubernetes.io/custom-http-errors\"]: has no effect without default-backend"), "{out}");
}
