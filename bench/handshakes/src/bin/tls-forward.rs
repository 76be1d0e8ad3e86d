//! The floor of bench/run.sh's scenario 1: TLS termination and nothing else.
//!
//!   tls-forward --listen IP:PORT --origin IP:PORT --cert PEM --key PEM
//!
//! Each client connection gets a TLS handshake (HTTP/1.1 by ALPN) and one TCP connection
//! to the origin; from then on the decrypted bytes go to the origin as they are, and the
//! origin's bytes back encrypted. No HTTP: no parsing, routing, header rewriting or
//! connection pooling, and the origin's response goes out unchanged (smaller than a
//! proxy's, which adds headers). Per request it makes Portcullis's system calls: two
//! reads and two writes. So its CPU per request is about the least a TLS-terminating
//! proxy pays on the machine, and the gap between it and a proxy is, roughly, what that
//! proxy's HTTP work costs. Roughly, because the kernel's share also depends on how often
//! writes find their reader asleep, which differs with each program's timing. One
//! thread, like the proxies it is compared with. Not a proxy: it trusts the client to
//! speak HTTP.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};

const USAGE: &str = "usage: tls-forward --listen IP:PORT --origin IP:PORT --cert PEM --key PEM";

struct Args {
    listen: SocketAddr,
    origin: SocketAddr,
    cert: String,
    key: String,
}

fn parse_args() -> Result<Args, String> {
    let (mut listen, mut origin, mut cert, mut key) = (None, None, None, None);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let addr = |v: &str| v.parse::<SocketAddr>().map_err(|e| format!("{flag}: {v:?}: {e}"));
        match flag.as_str() {
            "--listen" => listen = Some(addr(&value)?),
            "--origin" => origin = Some(addr(&value)?),
            "--cert" => cert = Some(value),
            "--key" => key = Some(value),
            _ => return Err(format!("unknown argument {flag:?}")),
        }
    }
    Ok(Args {
        listen: listen.ok_or("--listen must be given")?,
        origin: origin.ok_or("--origin must be given")?,
        cert: cert.ok_or("--cert must be given")?,
        key: key.ok_or("--key must be given")?,
    })
}

fn server_config(args: &Args) -> Result<rustls::ServerConfig, String> {
    let chain = CertificateDer::pem_file_iter(&args.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", args.cert))?;
    let key = PrivateKeyDer::from_pem_file(&args.key).map_err(|e| format!("{}: {e}", args.key))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("{}: {e}", args.cert))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let started = parse_args().and_then(|args| Ok((server_config(&args)?, args)));
    let (config, args) = match started {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = match TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("listen on {}: {e}", args.listen);
            std::process::exit(1);
        }
    };
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(e) => {
                // Out of file descriptors, say: the load generator sees the refusals. A
                // pause, so that retrying does not spin on the measured CPU.
                eprintln!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let origin = args.origin;
        tokio::spawn(async move {
            let _ = client.set_nodelay(true);
            let Ok(mut tls) = acceptor.accept(client).await else {
                return;
            };
            let mut backend = match TcpStream::connect(origin).await {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("connect to {origin}: {e}");
                    return;
                }
            };
            let _ = backend.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut tls, &mut backend).await;
        });
    }
}
