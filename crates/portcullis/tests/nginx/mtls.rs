//! `auth-tls-*`: client certificate authentication through the real gateway, scoped
//! to the Ingress's own routes (ingress-nginx applies it to the whole host).

use std::sync::Arc;

use http::StatusCode;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use super::{concat, nginx_ingress};
use crate::support::backend::Backend;
use crate::support::client::{self, h1, request, send_h1, Reply};
use crate::support::{service, Gateway, Pki};

/// An Opaque Secret with `ca.crt`.
fn ca_secret(name: &str, pki: &Pki) -> String {
    let indented: String = pki.ca_pem().lines().map(|l| format!("    {l}\n")).collect();
    format!("---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: ns}}\ntype: Opaque\nstringData:\n  ca.crt: |\n{indented}")
}

/// Trusts the gateway's CA and presents `cert` if given.
fn config(server: &Pki, cert: Option<&(String, String)>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(server.ca_der()).unwrap();
    let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut c = match cert {
        None => builder.with_no_client_auth(),
        Some((crt, key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(crt.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    };
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(c)
}

/// One HTTPS request on a fresh connection with this SNI name and Host.
async fn get(
    gw: &Gateway,
    server: &Pki,
    sni: &str,
    host: &str,
    path: &str,
    cert: Option<&(String, String)>,
    headers: &[(&str, &str)],
) -> Reply {
    let stream = client::tls(gw.https, sni, config(server, cert)).await.unwrap();
    let mut send = h1(stream).await;
    let mut req = request("GET", host, path, "");
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    send_h1(&mut send, req).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_nginx_client_certificates_on_the_ingress_routes_only() {
    let server = Pki::new();
    let clients = Pki::new();
    let others = Pki::new();
    let web = Backend::named("web").await;
    let with_tls =
        |y: String| format!("{y}  tls:\n  - hosts: [mtls.test, other.test]\n    secretName: tls\n");
    let gw = Gateway::start(
        &concat(&[
            service("ns", "web", &[web.addr]),
            server.tls_secret("ns", "tls", &["mtls.test", "other.test"]),
            ca_secret("client-ca", &clients),
            ca_secret("other-ca", &others),
            with_tls(nginx_ingress(
                "strict",
                false,
                &[
                    ("auth-tls-secret", "ns/client-ca"),
                    ("auth-tls-verify-client", "on"),
                    ("auth-tls-pass-certificate-to-upstream", "true"),
                ],
                "mtls.test",
                &[("/strict", "web")],
            )),
            with_tls(nginx_ingress(
                "optional",
                false,
                &[
                    ("auth-tls-secret", "other-ca"),
                    ("auth-tls-verify-client", "optional"),
                ],
                "mtls.test",
                &[("/optional", "web")],
            )),
            with_tls(nginx_ingress(
                "named",
                false,
                &[
                    ("auth-tls-secret", "client-ca"),
                    ("auth-tls-match-cn", "CN=client1|CN=client3"),
                    ("auth-tls-error-page", "https://errors.test/certificate"),
                ],
                "mtls.test",
                &[("/named", "web")],
            )),
            with_tls(nginx_ingress(
                "open",
                false,
                &[],
                "mtls.test",
                &[("/open", "web")],
            )),
            with_tls(nginx_ingress("plain", false, &[], "other.test", &[("/", "web")])),
            nginx_ingress(
                "elsewhere",
                false,
                &[("auth-tls-secret", "ns2/client-ca")],
                "elsewhere.test",
                &[("/", "web")],
            ),
        ]),
        "ingressClass: nginx\n",
    );
    let client1 = clients.client("client1");
    let client2 = clients.client("client2");
    let stranger = others.client("client1");
    let at = |path: &'static str, cert: Option<&(String, String)>| {
        let (gw, server) = (&gw, &server);
        let cert = cert.cloned();
        async move { get(gw, server, "mtls.test", "mtls.test", path, cert.as_ref(), &[]).await }
    };

    // on: no certificate, a certificate of another CA (even one trusted by another
    // Ingress of the host), then a good one.
    let r = at("/strict", None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.text().contains("No required SSL certificate was sent"),
        "{}",
        r.text()
    );
    let r = at("/strict", Some(&stranger)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.text().contains("The SSL certificate error"), "{}", r.text());
    assert!(web.requests().is_empty());
    let r = get(
        &gw,
        &server,
        "mtls.test",
        "mtls.test",
        "/strict",
        Some(&client1),
        &[("ssl-client-subject-dn", "CN=admin")],
    )
    .await;
    assert_eq!(r.text(), "web /strict");
    let seen = &web.requests()[0].headers;
    assert_eq!(seen["ssl-client-verify"], "SUCCESS");
    assert_eq!(seen["ssl-client-subject-dn"], "CN=client1");
    assert_eq!(seen["ssl-client-issuer-dn"], "CN=portcullis test CA");
    let escaped = seen["ssl-client-cert"].to_str().unwrap();
    assert!(
        escaped.starts_with("-----BEGIN%20CERTIFICATE-----%0A"),
        "{escaped}"
    );

    // optional: without a certificate the request passes, with NONE; no PEM unless asked.
    let r = at("/optional", None).await;
    assert_eq!(r.text(), "web /optional");
    let seen = &web.requests()[1].headers;
    assert_eq!(seen["ssl-client-verify"], "NONE");
    assert!(!seen.contains_key("ssl-client-cert"));
    assert!(!seen.contains_key("ssl-client-subject-dn"));
    let r = at("/optional", Some(&stranger)).await;
    assert_eq!(r.text(), "web /optional", "the CA of this Ingress");
    assert_eq!(web.requests()[2].headers["ssl-client-verify"], "SUCCESS");
    let r = at("/optional", Some(&client1)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "another Ingress's CA");

    // match-cn (403) and the error page for a missing certificate.
    assert_eq!(at("/named", Some(&client1)).await.text(), "web /named");
    assert_eq!(at("/named", Some(&client2)).await.status, StatusCode::FORBIDDEN);
    let r = at("/named", None).await;
    assert_eq!(r.status, StatusCode::FOUND);
    assert_eq!(r.header("location"), "https://errors.test/certificate");

    // Another Ingress on the same host: no certificate needed, forged headers gone.
    let before = web.requests().len();
    let r = get(
        &gw,
        &server,
        "mtls.test",
        "mtls.test",
        "/open",
        None,
        &[
            ("ssl-client-verify", "SUCCESS"),
            ("ssl_client_subject_dn", "CN=admin"),
            ("ssl-client-cert", "forged"),
        ],
    )
    .await;
    assert_eq!(r.text(), "web /open");
    let seen = &web.requests()[before].headers;
    for name in [
        "ssl-client-verify",
        "ssl_client_subject_dn",
        "ssl-client-subject-dn",
        "ssl-client-cert",
    ] {
        assert!(!seen.contains_key(name), "{name} reached the backend: {seen:?}");
    }
    let r = get(&gw, &server, "other.test", "other.test", "/", None, &[]).await;
    assert_eq!(r.text(), "web /");

    // A connection opened for other.test (never asked for a certificate) cannot be
    // used for the client certificate routes of mtls.test.
    let r = get(
        &gw,
        &server,
        "other.test",
        "mtls.test",
        "/strict",
        Some(&client1),
        &[],
    )
    .await;
    assert_eq!(r.status, StatusCode::MISDIRECTED_REQUEST);
    let r = get(&gw, &server, "other.test", "mtls.test", "/open", None, &[]).await;
    assert_eq!(
        r.text(),
        "web /open",
        "routes without client certificates do not care"
    );

    // A CA Secret of another namespace is never used.
    let (_, out) = crate::support::check_with(&gw.manifests_dir(), &["--ingress-class", "nginx"]);
    assert!(
        out.contains("Ingress ns/elsewhere metadata.annotations[\"nginx.ingress.kubernetes.io/auth-tls-secret\"]: Secret ns2/client-ca is in namespace \"ns2\""),
        "{out}"
    );
}

/// `auth-tls-verify-depth`, as nginx with OpenSSL 3: depth N accepts N intermediate
/// certificates between the client's and the CA of `ca.crt`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_nginx_client_certificate_verify_depth() {
    let root = Pki::new();
    // The client sends its certificate, both intermediates and the root.
    let client = root.intermediate("middle").intermediate("lower").client("deep");

    let server = Pki::new();
    let web = Backend::named("web").await;
    let with_tls = |y: String| format!("{y}  tls:\n  - hosts: [mtls.test]\n    secretName: tls\n");
    let gw = Gateway::start(
        &concat(&[
            service("ns", "web", &[web.addr]),
            server.tls_secret("ns", "tls", &["mtls.test"]),
            ca_secret("root-ca", &root),
            with_tls(nginx_ingress(
                "default-depth",
                false,
                &[("auth-tls-secret", "root-ca")],
                "mtls.test",
                &[("/one", "web")],
            )),
            with_tls(nginx_ingress(
                "depth-two",
                false,
                &[("auth-tls-secret", "root-ca"), ("auth-tls-verify-depth", "2")],
                "mtls.test",
                &[("/two", "web")],
            )),
        ]),
        "ingressClass: nginx\n",
    );
    let r = get(&gw, &server, "mtls.test", "mtls.test", "/two", Some(&client), &[]).await;
    assert_eq!(r.text(), "web /two");
    let r = get(&gw, &server, "mtls.test", "mtls.test", "/one", Some(&client), &[]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.text().contains("The SSL certificate error"), "{}", r.text());
    assert!(
        gw.wait_for_log("certificate chain too long (auth-tls-verify-depth 1)"),
        "{}",
        gw.logs()
    );
    assert_eq!(web.requests().len(), 1);
}
