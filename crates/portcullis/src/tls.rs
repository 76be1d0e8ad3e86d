//! The HTTPS listener's TLS: rustls with the ring provider only, TLS 1.2 and 1.3 with
//! forward-secret AEAD suites, ALPN h2 and http/1.1, and certificates chosen by SNI
//! from the current snapshot on every handshake (so certificates rotate on reload
//! without a restart).

use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use portcullis_config::settings::TlsVersion;

use crate::state::Gateway;

/// Chooses the certificate for a handshake from the current snapshot.
#[derive(Debug)]
struct SniResolver {
    gateway: Arc<Gateway>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gateway")
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let runtime = self.gateway.runtime();
        if let Some(name) = hello.server_name() {
            let name = name.to_ascii_lowercase();
            if let Some(cert) = runtime.snapshot.certificates.for_server_name(&name) {
                return Some(cert.key.clone());
            }
        }
        Some(runtime.default_certificate.clone())
    }
}

/// Builds the HTTPS listener's configuration.
pub fn server_config(gateway: Arc<Gateway>) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match gateway.settings.tls.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { gateway }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // rustls' cipher suite order (AES-256-GCM, ChaCha20, AES-128-GCM), not the client's: every suite on
    // offer is strong, but a server order is what auditors (and testssl.sh) expect.
    config.ignore_client_order = true;
    // Resumption: a session cache for TLS 1.2 ids and rotating ticket keys for both.
    config.session_storage = ServerSessionMemoryCache::new(20_000);
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok(Arc::new(config))
}

/// A self-signed certificate for when no default certificate is configured, so that
/// hosts without a valid certificate are still served over TLS (never in the clear).
pub fn generate_default_certificate() -> Result<Arc<CertifiedKey>, String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params = rcgen::CertificateParams::new(vec!["portcullis-default.invalid".to_string()])
        .map_err(|e| e.to_string())?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        "Portcullis default certificate (self-signed)",
    );
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing_key = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(CertifiedKey::new(
        vec![CertificateDer::from(cert.der().to_vec())],
        signing_key,
    )))
}
