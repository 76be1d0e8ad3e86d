//! `custom-headers`: the response headers of a ConfigMap in the Ingress's namespace
//! are set on every response of its routes, replacing the backend's, and on the
//! gateway's own answers for them (denials, redirects, errors); a missing, foreign or invalid
//! ConfigMap rejects the Ingress.

use http::StatusCode;

use super::{concat, get_with, nginx_ingress};
use crate::support::backend::Backend;
use crate::support::{service, Gateway};

fn config_map(namespace: &str, name: &str, data: &[(&str, &str)]) -> String {
    let mut y = format!(
        "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: {namespace}}}\ndata:\n"
    );
    for (k, v) in data {
        y.push_str(&format!("  {k}: \"{v}\"\n"));
    }
    y
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_nginx_custom_headers() {
    let web = Backend::named("web").await;
    let gw = Gateway::start(
        &concat(&[
            service("ns", "web", &[web.addr]),
            config_map(
                "ns",
                "security",
                &[
                    ("Content-Security-Policy", "default-src 'self'"),
                    ("X-Backend", "overridden"),
                ],
            ),
            config_map("ns", "cookies", &[("Set-Cookie", "a=b")]),
            config_map("other", "security", &[("X-A", "b")]),
            nginx_ingress(
                "headers",
                false,
                &[("custom-headers", "ns/security")],
                "h.test",
                &[("/", "web")],
            ),
            nginx_ingress("plain", false, &[], "plain.test", &[("/", "web")]),
            service("ns", "empty", &[]),
            nginx_ingress(
                "denied",
                false,
                &[
                    ("custom-headers", "security"),
                    ("whitelist-source-range", "10.0.0.0/8"),
                ],
                "denied.test",
                &[("/", "web")],
            ),
            nginx_ingress(
                "down",
                false,
                &[("custom-headers", "security")],
                "down.test",
                &[("/", "empty")],
            ),
            nginx_ingress(
                "moved",
                false,
                &[
                    ("custom-headers", "security"),
                    ("permanent-redirect", "https://elsewhere.test/"),
                ],
                "moved.test",
                &[("/", "web")],
            ),
            nginx_ingress(
                "missing",
                false,
                &[("custom-headers", "nope")],
                "missing.test",
                &[("/", "web")],
            ),
            nginx_ingress(
                "cookies",
                false,
                &[("custom-headers", "cookies")],
                "cookies.test",
                &[("/", "web")],
            ),
            nginx_ingress(
                "foreign",
                false,
                &[("custom-headers", "other/security")],
                "foreign.test",
                &[("/", "web")],
            ),
        ]),
        "ingressClass: nginx\n",
    );
    let r = get_with(&gw, "h.test", "GET", "/x", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "web /x");
    assert_eq!(r.header("content-security-policy"), "default-src 'self'");
    assert_eq!(
        r.header("x-backend"),
        "overridden",
        "the Ingress's value replaces the backend's"
    );

    let r = get_with(&gw, "plain.test", "GET", "/", &[]).await;
    assert_eq!(r.header("x-backend"), "web");
    assert_eq!(r.header("content-security-policy"), "");

    // The gateway's own answers for the route carry them too, as nginx's pages do.
    for (host, status) in [
        ("denied.test", StatusCode::FORBIDDEN),
        ("down.test", StatusCode::SERVICE_UNAVAILABLE),
        ("moved.test", StatusCode::MOVED_PERMANENTLY),
    ] {
        let r = get_with(&gw, host, "GET", "/", &[]).await;
        assert_eq!(r.status, status, "{host}");
        assert_eq!(
            r.header("content-security-policy"),
            "default-src 'self'",
            "{host}"
        );
    }
    // Not on answers for other routes, nor when no route matched.
    let r = get_with(&gw, "nowhere.test", "GET", "/", &[]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.header("content-security-policy"), "");

    for host in ["missing.test", "cookies.test", "foreign.test"] {
        let r = get_with(&gw, host, "GET", "/", &[]).await;
        assert_eq!(
            r.status,
            StatusCode::NOT_FOUND,
            "{host} is not served without its headers"
        );
    }
    let (_, out) = crate::support::check_with(&gw.manifests_dir(), &["--ingress-class", "nginx"]);
    let field = "metadata.annotations[\"nginx.ingress.kubernetes.io/custom-headers\"]";
    for want in [
        format!("Ingress ns/missing {field}: ConfigMap ns/nope not found"),
        format!(
            "Ingress ns/cookies {field}: ConfigMap ns/cookies: Set-Cookie may not be set by custom-headers"
        ),
        format!("Ingress ns/foreign {field}: ConfigMap other/security is not in the Ingress's namespace"),
    ] {
        assert!(out.contains(&want), "{want}\n{out}");
    }
}

/// In controller mode the gateway reads a custom-headers ConfigMap only when its owner
/// labelled it `portcullis.dev/custom-headers: "true"`; an Ingress naming another
/// ConfigMap is not served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_reads_only_labelled_custom_headers_config_maps() {
    use serde_json::json;
    let web = Backend::named("web").await;
    let ingress = |name: &str, host: &str, config_map: &str| {
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": name, "namespace": "ns", "resourceVersion": "2", "annotations": {
                "nginx.ingress.kubernetes.io/custom-headers": config_map}},
            "spec": {"ingressClassName": "nginx", "rules": [{"host": host, "http": {"paths": [
                {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}})
    };
    let config_map = |name: &str, labelled: bool| {
        let labels = if labelled {
            json!({"portcullis.dev/custom-headers": "true"})
        } else {
            json!({})
        };
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "ns", "labels": labels},
            "data": {"X-Frame-Options": "DENY"}})
    };
    let (api, gw) = super::nginx_controller(
        web.addr,
        vec![
            ingress("labelled", "a.test", "opted-in"),
            ingress("other", "b.test", "private"),
        ],
        vec![],
        vec![config_map("opted-in", true), config_map("private", false)],
    )
    .await;
    let r = get_with(&gw, "a.test", "GET", "/", &[]).await;
    assert_eq!(r.text(), "web /");
    assert_eq!(r.header("x-frame-options"), "DENY");
    assert_eq!(
        get_with(&gw, "b.test", "GET", "/", &[]).await.status,
        StatusCode::NOT_FOUND,
        "the unlabelled ConfigMap was never read"
    );
    assert!(
        gw.logs().contains("ConfigMap ns/private not found"),
        "{}",
        gw.logs()
    );
    let requested = api.requested.lock().unwrap().clone();
    assert!(
        requested
            .iter()
            .all(|p| !p.contains("configmaps") || p.starts_with("/api/v1/configmaps")),
        "{requested:?}"
    );
}
