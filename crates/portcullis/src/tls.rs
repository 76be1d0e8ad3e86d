//! The HTTPS listener's TLS: rustls with the ring provider only, TLS 1.2 and 1.3 with
//! forward-secret AEAD suites, ALPN h2 and http/1.1, and certificates chosen by SNI
//! from the current snapshot on every handshake (so certificates rotate on reload
//! without a restart). A host with routes that ask for client certificates
//! (`auth-tls-secret`) gets a configuration that requests one, trusting the union of
//! those routes' CAs; every other host is never asked (no CertificateRequest).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use portcullis_config::routes::HostMatch;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::UnixTime;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore};
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

/// Builds an HTTPS listener configuration, asking for client certificates with
/// `client_auth`.
fn build(
    gateway: Arc<Gateway>,
    client_auth: Option<Arc<dyn ClientCertVerifier>>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match gateway.settings.tls.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(provider).with_protocol_versions(versions)?;
    let builder = match client_auth {
        None => builder.with_no_client_auth(),
        Some(verifier) => builder.with_client_cert_verifier(verifier),
    };
    let mut config = builder.with_cert_resolver(Arc::new(SniResolver { gateway }));
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

/// The HTTPS listener's configurations: the shared one, and per set of client
/// certificate routes one that asks for a certificate, built once per snapshot.
pub struct Configs {
    gateway: Arc<Gateway>,
    base: Arc<ServerConfig>,
    cache: Mutex<Cache>,
}

/// What handshakes need from one snapshot, worked out once per generation so that a
/// handshake for a host without client certificates costs a look at a short list.
struct Cache {
    generation: u64,
    /// The routes with `auth-tls-secret`: their hosts and CAs.
    routes: Vec<(HostMatch, Vec<CertificateDer<'static>>)>,
    /// Keyed by the matching routes' host patterns: bounded by the snapshot's hosts,
    /// not by the SNI names clients make up.
    configs: HashMap<String, Arc<ServerConfig>>,
}

impl Configs {
    pub fn new(gateway: Arc<Gateway>) -> Result<Configs, rustls::Error> {
        Ok(Configs {
            base: build(gateway.clone(), None)?,
            gateway,
            cache: Mutex::new(Cache {
                generation: u64::MAX,
                routes: Vec::new(),
                configs: HashMap::new(),
            }),
        })
    }

    /// The configuration for a handshake with this SNI name (lowercase).
    pub fn for_server_name(&self, name: Option<&str>) -> Arc<ServerConfig> {
        let runtime = self.gateway.runtime();
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.generation != runtime.generation {
            let routes = runtime
                .snapshot
                .routes
                .routes()
                .filter_map(|(_, r)| Some((r.host.clone(), r.options.client_auth.as_ref()?.ca.clone())))
                .collect();
            *cache = Cache {
                generation: runtime.generation,
                routes,
                configs: HashMap::new(),
            };
        }
        let mut hosts = Vec::new();
        let mut cas: Vec<CertificateDer<'static>> = Vec::new();
        for (host, ca) in &cache.routes {
            // Without SNI only catch-all routes can be meant.
            let matches = match name {
                Some(name) => host.matches(name),
                None => *host == HostMatch::Any,
            };
            if matches {
                hosts.push(host.to_string());
                cas.extend(
                    ca.iter()
                        .filter(|c| !cas.contains(c))
                        .cloned()
                        .collect::<Vec<_>>(),
                );
            }
        }
        if hosts.is_empty() {
            return self.base.clone();
        }
        hosts.sort_unstable();
        hosts.dedup();
        let key = hosts.join(" ");
        if let Some(config) = cache.configs.get(&key) {
            return config.clone();
        }
        let config = match client_auth_config(self.gateway.clone(), cas) {
            Ok(config) => config,
            Err(e) => {
                // The CAs were checked when the snapshot was compiled, so this is not
                // expected; the routes still refuse clients without a certificate.
                tracing::warn!(hosts = %key, error = %e, "cannot build the client certificate TLS configuration: no certificate is asked for");
                self.base.clone()
            }
        };
        cache.configs.insert(key, config.clone());
        config
    }
}

fn client_auth_config(
    gateway: Arc<Gateway>,
    cas: Vec<CertificateDer<'static>>,
) -> Result<Arc<ServerConfig>, String> {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots.add(ca).map_err(|e| e.to_string())?;
    }
    let inner = WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| e.to_string())?;
    build(gateway, Some(Arc::new(AnyChain { inner }))).map_err(|e| e.to_string())
}

/// Asks for a client certificate naming the CAs of the host's routes, and checks that
/// the client holds the certificate's key, but accepts any chain: each route verifies
/// the chain against its own CA (see [`verify_for_route`]), so a certificate from one
/// Ingress's CA does not pass on another's route, and a wrong certificate is answered
/// with ingress-nginx's 400 instead of a failed handshake.
#[derive(Debug)]
struct AnyChain {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for AnyChain {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The certificate chain a client presented (leaf first), and what each route's CA
/// made of it.
pub struct ClientChain {
    pub certs: Vec<CertificateDer<'static>>,
    /// Verdicts by CA verifier and verify depth: a connection's chain is verified once
    /// per CA (and again after [`VERDICT_TTL`]), not on every request.
    verdicts: Mutex<Vec<Verdict>>,
}

struct Verdict {
    verifier: Arc<dyn ClientCertVerifier>,
    depth: u32,
    at: std::time::Instant,
    result: Result<(), String>,
}

/// Verdicts kept per connection (one per CA its requests were checked against).
const VERDICTS: usize = 8;
/// A verdict is used this long: nginx verifies once per handshake and then bounds the
/// connection's life; a connection here may live for days, so a certificate that
/// expires while it is open stops passing within this time.
const VERDICT_TTL: std::time::Duration = std::time::Duration::from_secs(60);

impl ClientChain {
    pub fn new(certs: Vec<CertificateDer<'static>>) -> Self {
        ClientChain {
            certs,
            verdicts: Mutex::default(),
        }
    }
}

/// Verifies a client's chain against one route's CA, at most `auth-tls-verify-depth`
/// deep. The error is the reason nginx would give in `ssl-client-verify: FAILED:reason`.
pub fn verify_for_route(
    chain: &ClientChain,
    auth: &portcullis_config::client_auth::ClientAuth,
) -> Result<(), String> {
    let verifier = auth.verifier.as_ref().ok_or("no CA to verify against")?;
    let mut verdicts = chain.verdicts.lock().unwrap_or_else(|e| e.into_inner());
    verdicts.retain(|v| v.at.elapsed() < VERDICT_TTL);
    let known = verdicts
        .iter()
        .find(|v| Arc::ptr_eq(&v.verifier, verifier) && v.depth == auth.verify_depth);
    if let Some(v) = known {
        return v.result.clone();
    }
    let result = verify_chain(&chain.certs, verifier.as_ref(), auth);
    if verdicts.len() < VERDICTS {
        verdicts.push(Verdict {
            verifier: verifier.clone(),
            depth: auth.verify_depth,
            at: std::time::Instant::now(),
            result: result.clone(),
        });
    }
    result
}

fn verify_chain(
    chain: &[CertificateDer<'static>],
    verifier: &dyn ClientCertVerifier,
    auth: &portcullis_config::client_auth::ClientAuth,
) -> Result<(), String> {
    let (leaf, intermediates) = chain.split_first().ok_or("no certificate")?;
    verifier
        .verify_client_cert(leaf, intermediates, UnixTime::now())
        .map_err(|e| e.to_string())?;
    let allowed = max_intermediates(auth.verify_depth);
    if intermediates.len() > allowed
        && !short_path_exists(
            leaf,
            intermediates,
            &auth.ca,
            webpki::KeyUsage::client_auth(),
            allowed,
        )
    {
        return Err(format!(
            "certificate chain too long (auth-tls-verify-depth {})",
            auth.verify_depth
        ));
    }
    Ok(())
}

/// nginx's verify depth N (OpenSSL's) allows N certificates between the peer's own and
/// a trusted CA certificate: depth 1, the default, accepts one intermediate CA.
/// (`openssl verify -verify_depth 1` with OpenSSL 3.0 accepts leaf, intermediate, root
/// and refuses a second intermediate.)
pub fn max_intermediates(depth: u32) -> usize {
    usize::try_from(depth).unwrap_or(usize::MAX)
}

/// Whether `leaf` chains to one of `ca` through at most `max` of `intermediates`. For
/// a chain that already verified, when the peer sent more certificates than that: the
/// path search goes on past longer paths to find a short one, whatever their order.
pub fn short_path_exists(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    ca: &[CertificateDer<'_>],
    usage: webpki::KeyUsage,
    max: usize,
) -> bool {
    let Ok(cert) = webpki::EndEntityCert::try_from(leaf) else {
        return false;
    };
    let anchors: Vec<_> = ca
        .iter()
        .filter_map(|c| webpki::anchor_from_trusted_cert(c).ok())
        .collect();
    let algorithms = rustls::crypto::ring::default_provider()
        .signature_verification_algorithms
        .all;
    let short_enough = |path: &webpki::VerifiedPath<'_>| {
        if path.intermediate_certificates().count() <= max {
            Ok(())
        } else {
            Err(webpki::Error::MaximumPathDepthExceeded)
        }
    };
    cert.verify_for_usage(
        algorithms,
        &anchors,
        intermediates,
        UnixTime::now(),
        usage,
        None,
        Some(&short_enough),
    )
    .is_ok()
}

/// A TLS client configuration that verifies servers against the public web PKI (the
/// Mozilla roots): for the identity providers and `auth-url` services the gateway calls.
pub fn public_client_config() -> Result<rustls::ClientConfig, rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    Ok(
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use portcullis_config::client_auth::{ClientAuth, VerifyClient};

    pub(crate) type Issuer = rcgen::CertifiedIssuer<'static, rcgen::KeyPair>;

    /// A CA named `name`, self-signed or signed by `parent` (also for backend TLS tests).
    pub(crate) fn ca(name: &str, parent: Option<&Issuer>) -> Issuer {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        match parent {
            None => rcgen::CertifiedIssuer::self_signed(params, key).unwrap(),
            Some(parent) => rcgen::CertifiedIssuer::signed_by(params, key, parent).unwrap(),
        }
    }

    fn client(issuer: &Issuer) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "alice");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = rcgen::KeyPair::generate().unwrap();
        params.signed_by(&key, issuer).unwrap().der().clone()
    }

    fn auth(trusted: &[&Issuer], depth: u32) -> ClientAuth {
        let ca: Vec<CertificateDer<'static>> = trusted.iter().map(|i| i.der().clone()).collect();
        let mut roots = RootCertStore::empty();
        for c in &ca {
            roots.add(c.clone()).unwrap();
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        ClientAuth {
            secret: "ca".into(),
            verify: VerifyClient::On,
            verify_depth: depth,
            pass_certificate: false,
            error_page: None,
            match_cn: None,
            ca,
            verifier: Some(verifier),
        }
    }

    #[test]
    fn client_chains_are_held_to_the_verify_depth_as_nginx_does() {
        let root = ca("root", None);
        let middle = ca("middle", Some(&root));
        let lower = ca("lower", Some(&middle));
        let other = ca("other", None);
        let leaf = client(&lower);
        let chain = |certs: &[&CertificateDer<'static>]| {
            ClientChain::new(certs.iter().map(|c| (*c).clone()).collect())
        };
        let two_deep = [&leaf, lower.der(), middle.der()];
        // Two intermediates to the root: depth 2 accepts, the default 1 refuses.
        assert_eq!(verify_for_route(&chain(&two_deep), &auth(&[&root], 2)), Ok(()));
        let refused = verify_for_route(&chain(&two_deep), &auth(&[&root], 1));
        assert_eq!(
            refused,
            Err("certificate chain too long (auth-tls-verify-depth 1)".into())
        );
        // A CA certificate the route trusts shortens the path, whatever else was sent
        // and in whatever order.
        let mixed = [&leaf, other.der(), middle.der(), lower.der(), root.der()];
        assert_eq!(
            verify_for_route(&chain(&mixed), &auth(&[&root, &middle], 1)),
            Ok(())
        );
        assert_eq!(
            verify_for_route(&chain(&[&leaf, lower.der()]), &auth(&[&middle], 1)),
            Ok(())
        );
        // Not issued under the route's CA: refused whatever the depth.
        assert!(verify_for_route(&chain(&two_deep), &auth(&[&other], 5)).is_err());
    }

    #[test]
    fn a_connection_chain_is_verified_once_per_ca() {
        let root = ca("root", None);
        let chain = ClientChain::new(vec![client(&root)]);
        let route = auth(&[&root], 1);
        let other = auth(&[&ca("other", None)], 1);
        assert_eq!(verify_for_route(&chain, &route), Ok(()));
        assert!(verify_for_route(&chain, &other).is_err());
        assert_eq!(verify_for_route(&chain, &route), Ok(()));
        assert!(verify_for_route(&chain, &other).is_err());
        assert_eq!(chain.verdicts.lock().unwrap().len(), 2);
        // Another depth on the same CA is a verdict of its own.
        let deeper = ClientAuth {
            verify_depth: 3,
            ..route.clone()
        };
        assert_eq!(verify_for_route(&chain, &deeper), Ok(()));
        assert_eq!(chain.verdicts.lock().unwrap().len(), 3);
        // An old verdict is made again (the certificate may have expired since).
        chain.verdicts.lock().unwrap()[0].at -= VERDICT_TTL;
        assert_eq!(verify_for_route(&chain, &route), Ok(()));
        let verdicts = chain.verdicts.lock().unwrap();
        assert_eq!(verdicts.len(), 3);
        assert!(verdicts.iter().all(|v| v.at.elapsed() < VERDICT_TTL));
    }
}
