//! Clients for tests: TLS with a chosen SNI name and ALPN, HTTP/1.1 and HTTP/2 over
//! it, and raw sockets for malformed requests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::Pki;

/// Trusts the test CA.
pub fn trusting(pki: &Pki, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(pki.ca_der()).unwrap();
    let mut c = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(c)
}

/// Accepts any certificate, to look at what the server presents.
pub fn inspecting(alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut c = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(c)
}

#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

pub async fn tls(
    addr: SocketAddr,
    sni: &str,
    config: Arc<ClientConfig>,
) -> Result<TlsStream<TcpStream>, std::io::Error> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_string()).unwrap();
    tokio_rustls::TlsConnector::from(config).connect(name, tcp).await
}

/// DNS names in the certificate the server presented.
pub fn presented_names(stream: &TlsStream<TcpStream>) -> Vec<String> {
    let certs = stream.get_ref().1.peer_certificates().unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(certs[0].as_ref()).unwrap();
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push(d.to_string());
            }
        }
    }
    names
}

pub type H1 = hyper::client::conn::http1::SendRequest<Full<Bytes>>;
pub type H2 = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

pub async fn h1<S>(io: S) -> H1
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    send
}

pub async fn h2<S>(io: S) -> H2
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

/// A collected response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
}

pub fn request(method: &str, host: &str, path: &str, body: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", host)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

pub async fn send_h1(send: &mut H1, req: Request<Full<Bytes>>) -> Result<Reply, hyper::Error> {
    send.ready().await?;
    let res = send.send_request(req).await?;
    collect(res).await
}

pub async fn send_h2(send: &mut H2, method: &str, url: &str) -> Result<Reply, hyper::Error> {
    let req = Request::builder()
        .method(method)
        .uri(url)
        .version(Version::HTTP_2)
        .body(Full::new(Bytes::new()))
        .unwrap();
    send.ready().await?;
    let res = send.send_request(req).await?;
    collect(res).await
}

async fn collect(res: http::Response<hyper::body::Incoming>) -> Result<Reply, hyper::Error> {
    let (parts, body) = res.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Reply {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body,
    })
}

/// One HTTPS GET on a fresh connection (HTTP/1.1), trusting the test CA.
pub async fn https_get(addr: SocketAddr, pki: &Pki, host: &str, path: &str) -> Reply {
    let stream = tls(addr, host, trusting(pki, &[b"http/1.1"])).await.unwrap();
    let mut send = h1(stream).await;
    send_h1(&mut send, request("GET", host, path, "")).await.unwrap()
}

/// One plain-HTTP GET on a fresh connection.
pub async fn http_get(addr: SocketAddr, host: &str, path: &str) -> Reply {
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut send = h1(stream).await;
    send_h1(&mut send, request("GET", host, path, "")).await.unwrap()
}

/// A plain-HTTP GET on a new connection, reporting failures instead of panicking.
pub async fn try_http_get(addr: SocketAddr, host: &str, path: &str) -> Result<Reply, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    send_h1(&mut send, request("GET", host, path, ""))
        .await
        .map_err(|e| format!("request: {e}"))
}

/// Writes raw bytes and reads until the server closes (or 5 s pass).
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> (String, bool) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(0)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => break true,
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

pub fn empty_body() -> Empty<Bytes> {
    Empty::new()
}

/// One plain-HTTP GET from a chosen local address (127.0.0.x), with extra headers.
pub async fn http_get_from(
    local: &str,
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{local}:0").parse().unwrap()).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let mut send = h1(stream).await;
    let mut req = request("GET", host, path, "");
    for (k, v) in headers {
        req.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    send_h1(&mut send, req).await.unwrap()
}
