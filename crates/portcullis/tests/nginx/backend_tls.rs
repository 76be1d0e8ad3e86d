//! `proxy-ssl-*`: TLS and mutual TLS to HTTPS backends, through the real gateway, with
//! real TLS backends on 127.0.0.1:0 that say which SNI and client certificate they saw.

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine;
use http::{Response, StatusCode};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

use super::{concat, nginx_ingress};
use crate::support::backend::full;
use crate::support::client::http_get;
use crate::support::{service, Gateway, Pki};

/// An HTTPS backend (HTTP/1.1 or HTTP/2 by ALPN) answering `sni=NAME client_cert=BOOL`,
/// and ` h2` when spoken to over HTTP/2; with `clients`, it refuses handshakes without
/// a client certificate signed by that CA. Aborted on drop.
struct TlsBackend {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsBackend {
    async fn start(pki: &Pki, names: &[&str], clients: Option<&Pki>) -> TlsBackend {
        let (crt, key) = pki.leaf(names);
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(crt.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match clients {
            Some(clients) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(clients.ca_der()).unwrap();
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(chain, key).unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // A refused handshake is what some tests expect.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let (_, conn) = tls.get_ref();
                    let text = format!(
                        "sni={} client_cert={}",
                        conn.server_name().unwrap_or("-"),
                        conn.peer_certificates().is_some_and(|c| !c.is_empty())
                    );
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let h2 = if req.version() == http::Version::HTTP_2 {
                            " h2"
                        } else {
                            ""
                        };
                        let text = format!("{text}{h2}");
                        async move { Ok::<_, std::convert::Infallible>(Response::new(full(text))) }
                    });
                    let _ =
                        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                            .serve_connection(TokioIo::new(tls), svc)
                            .await;
                });
            }
        });
        TlsBackend { addr, task }
    }
}

fn pem(der: &CertificateDer<'_>) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}

/// An Opaque Secret in `ns` with these keys.
fn secret(name: &str, data: &[(&str, &str)]) -> String {
    let mut y = format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: ns}}\nstringData:\n"
    );
    for (k, v) in data {
        y.push_str(&format!("  {k}: |\n"));
        for line in v.lines() {
            y.push_str(&format!("    {line}\n"));
        }
    }
    y
}

/// Verification against ca.crt with the Service's name or proxy-ssl-name, SNI only when
/// asked, client certificates presented, failures answered 502 and logged, and
/// `proxy-ssl-verify: off` encrypting without verifying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_tls_verifies_and_presents_client_certificates() {
    let backends = Pki::new();
    let stranger = Pki::new();
    let clients = Pki::new();
    let good = TlsBackend::start(&backends, &["web.ns.svc"], None).await;
    let foreign = TlsBackend::start(&stranger, &["foreign.ns.svc"], None).await;
    let mutual = TlsBackend::start(&backends, &["mutual.ns.svc"], Some(&clients)).await;
    let ca = pem(&backends.ca_der());
    let (client_crt, client_key) = clients.leaf(&["gateway"]);
    let https = ("backend-protocol", "HTTPS");
    let verify = ("proxy-ssl-verify", "on");
    let ing = |name: &str, host: &str, svc: &str, extra: &[(&str, &str)]| {
        let mut a = vec![https, ("proxy-ssl-secret", "ns/backend-ca")];
        a.extend_from_slice(extra);
        nginx_ingress(name, false, &a, host, &[("/", svc)])
    };
    let mtls = |name: &str, host: &str, secret: &str| {
        nginx_ingress(
            name,
            false,
            &[https, verify, ("proxy-ssl-secret", secret)],
            host,
            &[("/", "mutual")],
        )
    };
    let gw = Gateway::start(
        &concat(&[
            secret("backend-ca", &[("ca.crt", &ca)]),
            secret(
                "backend-mtls",
                &[
                    ("ca.crt", &ca),
                    ("tls.crt", &client_crt),
                    ("tls.key", &client_key),
                ],
            ),
            service("ns", "web", &[good.addr]),
            // The same backend under another name: its certificate does not say web3.
            service("ns", "web3", &[good.addr]),
            service("ns", "foreign", &[foreign.addr]),
            service("ns", "mutual", &[mutual.addr]),
            ing("verified", "verified.test", "web", &[verify]),
            ing("stranger", "stranger.test", "foreign", &[verify]),
            ing("wrong-name", "wrong-name.test", "web3", &[verify]),
            ing(
                "named",
                "named.test",
                "web3",
                &[
                    verify,
                    ("proxy-ssl-name", "web.ns.svc"),
                    ("proxy-ssl-server-name", "on"),
                    ("proxy-ssl-protocols", "TLSv1.2 TLSv1.3"),
                ],
            ),
            ing(
                "unverified",
                "unverified.test",
                "foreign",
                &[("proxy-ssl-verify", "off")],
            ),
            mtls("mtls", "mtls.test", "ns/backend-mtls"),
            mtls("no-client-cert", "no-client-cert.test", "ns/backend-ca"),
            nginx_ingress(
                "grpcs",
                false,
                &[
                    ("backend-protocol", "GRPCS"),
                    verify,
                    ("proxy-ssl-secret", "ns/backend-ca"),
                ],
                "grpcs.test",
                &[("/", "web")],
            ),
        ]),
        "ingressClass: nginx\n",
    );

    let r = http_get(gw.http, "verified.test", "/").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // proxy-ssl-server-name is off by default, as in ingress-nginx: no SNI. HTTPS
    // speaks HTTP/2 when the backend offers it by ALPN.
    assert_eq!(r.text(), "sni=- client_cert=false h2");

    let r = http_get(gw.http, "stranger.test", "/").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert!(gw.wait_for_log("backend TLS handshake failed"), "{}", gw.logs());

    let r = http_get(gw.http, "wrong-name.test", "/").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());

    let r = http_get(gw.http, "named.test", "/").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.text(), "sni=web.ns.svc client_cert=false h2");

    let r = http_get(gw.http, "unverified.test", "/").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    let r = http_get(gw.http, "mtls.test", "/").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.text(), "sni=- client_cert=true h2");

    let r = http_get(gw.http, "no-client-cert.test", "/").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());

    // GRPCS: HTTP/2 over the same verified TLS.
    let r = http_get(gw.http, "grpcs.test", "/").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.text(), "sni=- client_cert=false h2");

    // The refused handshakes left the endpoint in rotation for the routes that work.
    let r = http_get(gw.http, "verified.test", "/").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

/// A missing Secret and verification without one reject the Ingress; the rest serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_tls_without_its_secret_is_not_served() {
    let backends = Pki::new();
    let good = TlsBackend::start(&backends, &["web.ns.svc"], None).await;
    let gw = Gateway::start(
        &concat(&[
            service("ns", "web", &[good.addr]),
            nginx_ingress(
                "missing",
                false,
                &[
                    ("backend-protocol", "HTTPS"),
                    ("proxy-ssl-secret", "ns/nope"),
                    ("proxy-ssl-verify", "on"),
                ],
                "missing.test",
                &[("/", "web")],
            ),
            nginx_ingress(
                "unanchored",
                false,
                &[("backend-protocol", "HTTPS"), ("proxy-ssl-verify", "on")],
                "unanchored.test",
                &[("/", "web")],
            ),
            nginx_ingress(
                "plain",
                false,
                &[("backend-protocol", "HTTPS")],
                "plain.test",
                &[("/", "web")],
            ),
        ]),
        "ingressClass: nginx\n",
    );
    assert_eq!(
        http_get(gw.http, "missing.test", "/").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        http_get(gw.http, "unanchored.test", "/").await.status,
        StatusCode::NOT_FOUND
    );
    // Without proxy-ssl-* the default, encrypt-only path is unchanged.
    assert_eq!(http_get(gw.http, "plain.test", "/").await.status, StatusCode::OK);
    assert!(gw.wait_for_log("Secret ns/nope not found"), "{}", gw.logs());
}

/// `ssl-passthrough`: a TLS connection whose SNI names the Ingress's host reaches the
/// backend unterminated (the backend's own certificate and SNI), while other hosts on
/// the same listener are terminated by the gateway as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_passthrough_relays_tls_by_sni() {
    let pki = Pki::new();
    let backend = TlsBackend::start(&pki, &["pass.test"], None).await;
    let web = crate::support::backend::Backend::named("web").await;
    let gw = Gateway::start(
        &concat(&[
            service("ns", "pass", &[backend.addr]),
            service("ns", "web", &[web.addr]),
            pki.tls_secret("ns", "term-tls", &["term.test"]),
            nginx_ingress(
                "pass",
                false,
                &[("ssl-passthrough", "true")],
                "pass.test",
                &[("/", "pass")],
            ),
            format!(
                "{}  tls:\n  - hosts: [term.test]\n    secretName: term-tls\n",
                nginx_ingress("term", false, &[], "term.test", &[("/", "web")])
            ),
        ]),
        "ingressClass: nginx\n",
    );
    let r = crate::support::client::https_get(gw.https, &pki, "pass.test", "/").await;
    assert_eq!(
        r.text(),
        "sni=pass.test client_cert=false",
        "the backend terminated TLS"
    );
    let r = crate::support::client::https_get(gw.https, &pki, "term.test", "/x").await;
    assert_eq!(
        r.text(),
        "web /x",
        "other hosts are still terminated by the gateway"
    );
    assert!(
        gw.wait_for_log("ssl-passthrough connection done"),
        "{}",
        gw.logs()
    );
}
