//! Loading certificates from `kubernetes.io/tls` Secrets, with every check done at load
//! time rather than at the first handshake: the PEM parses, the key is supported and
//! matches the certificate, the certificate is valid now, and its names cover the hosts
//! it is meant to serve.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::extensions::GeneralName;

use crate::snapshot::Certificate;

/// Reads `tls.crt` and `tls.key` (from `stringData`, else `data`) and checks them.
/// `now` is Unix seconds. The error says what is wrong, for a Problem on the Secret.
pub fn load_certificate(secret_name: &str, secret: &Secret, now: i64) -> Result<Certificate, String> {
    let crt = secret_bytes(secret, "tls.crt").ok_or("has no tls.crt")?;
    let key = secret_bytes(secret, "tls.key").ok_or("has no tls.key")?;
    certificate_from_pem(secret_name, &crt, &key, now)
}

/// Builds a checked [`Certificate`] from PEM text.
pub fn certificate_from_pem(
    secret_name: &str,
    crt: &[u8],
    key: &[u8],
    now: i64,
) -> Result<Certificate, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(crt)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.crt is not valid PEM: {e}"))?;
    let leaf = chain.first().ok_or("tls.crt holds no PEM certificate")?;
    let key = PrivateKeyDer::from_pem_slice(key)
        .map_err(|e| format!("tls.key holds no usable PEM private key: {e}"))?;
    let signing_key = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("tls.key is not a supported key (RSA, ECDSA P-256/P-384 or Ed25519): {e}"))?;

    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| format!("tls.crt: the first certificate does not parse: {e}"))?;
    let not_before = parsed.validity().not_before.timestamp();
    let not_after = parsed.validity().not_after.timestamp();
    if now < not_before {
        return Err(format!(
            "the certificate is not valid yet (notBefore {})",
            parsed.validity().not_before
        ));
    }
    if now > not_after {
        return Err(format!(
            "the certificate expired on {}",
            parsed.validity().not_after
        ));
    }
    let mut names = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(n) => names.push(n.to_ascii_lowercase()),
                GeneralName::IPAddress(bytes) => {
                    if let Ok(octets) = <[u8; 4]>::try_from(*bytes) {
                        names.push(std::net::IpAddr::from(octets).to_string());
                    } else if let Ok(octets) = <[u8; 16]>::try_from(*bytes) {
                        names.push(std::net::IpAddr::from(octets).to_string());
                    }
                }
                _ => {}
            }
        }
    }
    if names.is_empty() {
        return Err(
            "the certificate has no subjectAltName DNS names (clients ignore the common name)".into(),
        );
    }
    let certified = CertifiedKey::new(chain, signing_key);
    if let Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) =
        certified.keys_match()
    {
        return Err("tls.key does not match the certificate in tls.crt".into());
    }
    Ok(Certificate {
        secret: secret_name.to_string(),
        key: Arc::new(certified),
        names,
        not_after,
    })
}

/// The CA certificates in a Secret's `ca.crt`, and the trust store they make (each one
/// checked to be usable as a trust anchor); `purpose` says what they verify, for the
/// error when the key is missing.
/// Errors name the Secret as `namespace/name`.
pub fn ca_certificates(
    full_name: &str,
    data: &std::collections::BTreeMap<String, Vec<u8>>,
    purpose: &str,
) -> Result<
    (
        Vec<rustls_pki_types::CertificateDer<'static>>,
        rustls::RootCertStore,
    ),
    String,
> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let pem = data
        .get("ca.crt")
        .ok_or_else(|| format!("Secret {full_name} has no ca.crt ({purpose})"))?;
    let ca: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("Secret {full_name}: ca.crt is not valid PEM: {e}"))?;
    if ca.is_empty() {
        return Err(format!("Secret {full_name}: ca.crt holds no PEM certificate"));
    }
    let mut roots = rustls::RootCertStore::empty();
    for (i, cert) in ca.iter().enumerate() {
        roots.add(cert.clone()).map_err(|e| {
            format!(
                "Secret {full_name}: certificate {} of ca.crt is not a usable CA: {e}",
                i + 1
            )
        })?;
    }
    Ok((ca, roots))
}

/// Every key of a Secret with its bytes; `stringData` wins over `data`, as the API
/// server merges them.
pub fn secret_data(secret: &Secret) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out: std::collections::BTreeMap<String, Vec<u8>> = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    for (k, v) in secret.string_data.iter().flatten() {
        out.insert(k.clone(), v.as_bytes().to_vec());
    }
    out
}

fn secret_bytes(secret: &Secret, key: &str) -> Option<Vec<u8>> {
    if let Some(s) = secret.string_data.as_ref().and_then(|d| d.get(key)) {
        return Some(s.as_bytes().to_vec());
    }
    secret.data.as_ref().and_then(|d| d.get(key)).map(|b| b.0.clone())
}

/// Whether a certificate name (`example.com`, `*.example.com`) covers a host pattern
/// from an Ingress (`app.example.com`, or `*.example.com` itself).
pub fn name_covers(cert_name: &str, host: &str) -> bool {
    if cert_name == host {
        return true;
    }
    match (cert_name.strip_prefix("*."), host.strip_prefix("*.")) {
        // A wildcard certificate covers exactly one extra label.
        (Some(suffix), None) => crate::routes::parent_domain(host) == Some(suffix),
        _ => false,
    }
}

/// Whether any name of the certificate covers the host.
pub fn covers(names: &[String], host: &str) -> bool {
    names.iter().any(|n| name_covers(n, host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_coverage() {
        assert!(name_covers("a.example.com", "a.example.com"));
        assert!(name_covers("*.example.com", "a.example.com"));
        assert!(name_covers("*.example.com", "*.example.com"));
        assert!(!name_covers("*.example.com", "example.com"));
        assert!(!name_covers("*.example.com", "a.b.example.com"));
        assert!(!name_covers("a.example.com", "*.example.com"));
        assert!(!name_covers("example.com", "a.example.com"));
    }
}
