//! ingress-nginx's `proxy-ssl-*` annotations: TLS and mutual TLS towards HTTPS and
//! GRPCS backends. [`from_annotations`] reads the annotations into a [`BackendTls`]
//! without its material; [`load`] fills in the trust anchors and the client
//! certificate from the Secret when the Ingress is compiled. As in ingress-nginx,
//! nothing happens without `proxy-ssl-secret`, except that `proxy-ssl-verify: on`
//! without it rejects the Ingress rather than serve it unverified.

use std::collections::BTreeMap;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::snapshot::{BackendTls, ClientCert, TlsVersions};

/// The annotations this module reads, without the prefix.
const NAMES: &[&str] = &[
    "proxy-ssl-secret",
    "proxy-ssl-verify",
    "proxy-ssl-verify-depth",
    "proxy-ssl-name",
    "proxy-ssl-server-name",
    "proxy-ssl-protocols",
    "proxy-ssl-ciphers",
];

/// An annotation (without prefix) and what is wrong with it.
pub type Finding = (&'static str, String);

/// Reads the `proxy-ssl-*` annotations. `Ok` carries the settings, if any, and
/// warnings; `Err` means the Ingress must not be served.
pub fn from_annotations<'a>(
    get: &impl Fn(&str) -> Option<&'a str>,
) -> Result<(Option<BackendTls>, Vec<Finding>), Finding> {
    let mut warnings = Vec::new();
    let on_off = |name: &'static str| -> Result<Option<bool>, Finding> {
        match get(name) {
            None => Ok(None),
            Some("on") => Ok(Some(true)),
            Some("off") => Ok(Some(false)),
            Some(other) => Err((name, format!("{other:?} is not \"on\" or \"off\""))),
        }
    };
    let verify = on_off("proxy-ssl-verify")?;
    let send_sni = on_off("proxy-ssl-server-name")?;
    let Some(secret) = get("proxy-ssl-secret") else {
        if verify == Some(true) {
            return Err((
                "proxy-ssl-verify",
                "needs proxy-ssl-secret, the Secret whose ca.crt the backend's certificate is verified against: the Ingress is rejected rather than served unverified".into(),
            ));
        }
        warnings.extend(crate::nginx::set_without(&NAMES[2..], &get, "proxy-ssl-secret"));
        return Ok((None, warnings));
    };
    crate::nginx::secret_name(secret).map_err(|e| ("proxy-ssl-secret", e))?;
    let verify_depth = match get("proxy-ssl-verify-depth") {
        None => 1,
        Some(v) => match v.parse::<u32>() {
            // ingress-nginx reads 0 as the default.
            Ok(0) => 1,
            Ok(n) => n,
            Err(_) => return Err(("proxy-ssl-verify-depth", format!("{v:?} is not a whole number"))),
        },
    };
    let server_name = match get("proxy-ssl-name") {
        None => None,
        Some(name) => Some(server_name(name).map_err(|e| ("proxy-ssl-name", e))?),
    };
    let versions = match get("proxy-ssl-protocols") {
        None => TlsVersions::default(),
        Some(v) => {
            let (versions, dropped) = protocols(v).map_err(|e| ("proxy-ssl-protocols", e))?;
            if !dropped.is_empty() {
                warnings.push((
                    "proxy-ssl-protocols",
                    format!(
                        "{} not offered: the gateway speaks only TLS 1.2 and 1.3 to backends",
                        dropped.join(", ")
                    ),
                ));
            }
            versions
        }
    };
    if let Some(ciphers) = get("proxy-ssl-ciphers") {
        let valid = ciphers
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b':' | b'_' | b'-' | b'!'));
        if !valid {
            return Err((
                "proxy-ssl-ciphers",
                format!("{ciphers:?} is not an OpenSSL cipher list (letters, digits and + : _ - !)"),
            ));
        }
        warnings.push((
            "proxy-ssl-ciphers",
            "not applied: rustls' modern cipher suites are used towards the backend".to_string(),
        ));
    }
    Ok((
        Some(BackendTls {
            secret: secret.to_string(),
            verify: verify.unwrap_or(false),
            server_name,
            send_sni: send_sni.unwrap_or(false),
            versions,
            verify_depth,
            ca: Vec::new(),
            client_cert: None,
        }),
        warnings,
    ))
}

/// `proxy-ssl-name`: a DNS name or an IP address, which rustls can verify.
fn server_name(name: &str) -> Result<String, String> {
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Ok(name.to_string());
    }
    let lower = name.to_ascii_lowercase();
    if lower.is_empty() || lower.starts_with("*.") {
        return Err(format!(
            "{name:?} must be a DNS name or an IP address (no wildcard, no nginx variables)"
        ));
    }
    crate::compile::validate_host(&lower).map_err(|e| {
        format!("{e}: the name the backend's certificate must carry, without nginx variables")
    })?;
    Ok(lower)
}

/// `proxy-ssl-protocols`: the TLS versions to offer, and the older ones named that are
/// not offered. Only older ones is an error: there would be nothing to offer.
fn protocols(value: &str) -> Result<(TlsVersions, Vec<&str>), String> {
    let mut versions = TlsVersions {
        tls12: false,
        tls13: false,
    };
    let mut dropped = Vec::new();
    for token in value.split_ascii_whitespace() {
        match token {
            "TLSv1.2" => versions.tls12 = true,
            "TLSv1.3" => versions.tls13 = true,
            "SSLv2" | "SSLv3" | "TLSv1" | "TLSv1.1" => dropped.push(token),
            other => {
                return Err(format!(
                    "{other:?} is not one of SSLv2, SSLv3, TLSv1, TLSv1.1, TLSv1.2, TLSv1.3"
                ))
            }
        }
    }
    if !versions.tls12 && !versions.tls13 {
        return Err(format!(
            "{value:?} names no protocol the gateway speaks: SSLv3, TLS 1.0 and TLS 1.1 are insecure and not supported; use TLSv1.2 and/or TLSv1.3"
        ));
    }
    Ok((versions, dropped))
}

/// The Secret's name once its namespace, if written, is checked to be the Ingress's
/// (ingress-nginx refuses Secrets of other namespaces too).
pub fn secret_name<'a>(namespace: &str, secret: &'a str) -> Result<&'a str, String> {
    match secret.split_once('/') {
        Some((ns, name)) if ns == namespace && !name.is_empty() => Ok(name),
        Some((ns, _)) => Err(format!(
            "Secret {secret} is in namespace {ns:?}, not the Ingress's namespace {namespace:?}: Secrets of other namespaces are not used"
        )),
        None => Ok(secret),
    }
}

/// Fills in the trust anchors (`ca.crt`, required) and the client certificate
/// (`tls.crt` with `tls.key`, optional) from the Secret's keys. The error names the
/// Secret as `namespace/name`.
pub fn load(full_name: &str, data: &BTreeMap<String, Vec<u8>>, tls: &mut BackendTls) -> Result<(), String> {
    let (ca, _) = crate::tls::ca_certificates(
        full_name,
        data,
        "the CA certificates the backend's certificate is verified against",
    )?;
    tls.ca = ca;
    tls.client_cert = match (data.get("tls.crt"), data.get("tls.key")) {
        (None, None) => None,
        (Some(_), None) => return Err(format!("Secret {full_name} has tls.crt but no tls.key")),
        (None, Some(_)) => return Err(format!("Secret {full_name} has tls.key but no tls.crt")),
        (Some(crt), Some(key)) => Some(client_cert(full_name, crt, key)?),
    };
    Ok(())
}

/// Parses a client certificate and checks that the key is supported and matches it.
fn client_cert(full_name: &str, crt: &[u8], key: &[u8]) -> Result<ClientCert, String> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(crt)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("Secret {full_name}: tls.crt is not valid PEM: {e}"))?;
    if chain.is_empty() {
        return Err(format!("Secret {full_name}: tls.crt holds no PEM certificate"));
    }
    let key = PrivateKeyDer::from_pem_slice(key)
        .map_err(|e| format!("Secret {full_name}: tls.key holds no usable PEM private key: {e}"))?;
    let signing = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| {
            format!(
                "Secret {full_name}: tls.key is not a supported key (RSA, ECDSA P-256/P-384 or Ed25519): {e}"
            )
        })?;
    let certified = rustls::sign::CertifiedKey::new(chain.clone(), signing);
    if let Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) =
        certified.keys_match()
    {
        return Err(format!(
            "Secret {full_name}: tls.key does not match the certificate in tls.crt"
        ));
    }
    Ok(ClientCert {
        chain,
        key: Arc::new(key),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<(Option<BackendTls>, Vec<Finding>), Finding> {
        let map: BTreeMap<&str, &str> = pairs.iter().copied().collect();
        from_annotations(&|name: &str| map.get(name).copied())
    }

    #[test]
    fn nothing_without_a_secret_but_verify_on_rejects() {
        assert_eq!(parse(&[]).unwrap(), (None, vec![]));
        assert_eq!(parse(&[("proxy-ssl-verify", "off")]).unwrap(), (None, vec![]));
        let (tls, warnings) = parse(&[("proxy-ssl-name", "a.example")]).unwrap();
        assert!(tls.is_none());
        assert_eq!(warnings[0].0, "proxy-ssl-name");
        let (name, why) = parse(&[("proxy-ssl-verify", "on")]).unwrap_err();
        assert_eq!(name, "proxy-ssl-verify");
        assert!(why.contains("proxy-ssl-secret"), "{why}");
    }

    #[test]
    fn defaults_follow_ingress_nginx() {
        let (tls, warnings) = parse(&[("proxy-ssl-secret", "ns/ca")]).unwrap();
        assert!(warnings.is_empty());
        let tls = tls.unwrap();
        assert_eq!(tls.secret, "ns/ca");
        assert!(!tls.verify && !tls.send_sni);
        assert_eq!(tls.server_name, None);
        assert_eq!(tls.verify_depth, 1);
        assert_eq!(tls.versions, TlsVersions::default());
    }

    #[test]
    fn typed_values() {
        let (tls, warnings) = parse(&[
            ("proxy-ssl-secret", "ns/ca"),
            ("proxy-ssl-verify", "on"),
            ("proxy-ssl-verify-depth", "3"),
            ("proxy-ssl-name", "Backend.NS.svc"),
            ("proxy-ssl-server-name", "on"),
            ("proxy-ssl-protocols", "TLSv1.1 TLSv1.3"),
            ("proxy-ssl-ciphers", "HIGH:!aNULL:!MD5"),
        ])
        .unwrap();
        let tls = tls.unwrap();
        assert!(tls.verify && tls.send_sni);
        assert_eq!(tls.verify_depth, 3);
        assert_eq!(tls.server_name.as_deref(), Some("backend.ns.svc"));
        assert_eq!(
            tls.versions,
            TlsVersions {
                tls12: false,
                tls13: true
            }
        );
        let warned: Vec<&str> = warnings.iter().map(|w| w.0).collect();
        assert_eq!(warned, vec!["proxy-ssl-protocols", "proxy-ssl-ciphers"]);
        assert!(warnings[0].1.contains("TLSv1.1"));
    }

    #[test]
    fn invalid_values_name_the_annotation() {
        for (name, value) in [
            ("proxy-ssl-verify", "yes"),
            ("proxy-ssl-server-name", "true"),
            ("proxy-ssl-verify-depth", "-1"),
            ("proxy-ssl-name", "$proxy_host"),
            ("proxy-ssl-name", "*.example.com"),
            ("proxy-ssl-protocols", "TLSv1 TLSv1.1"),
            ("proxy-ssl-protocols", "SSLv3"),
            ("proxy-ssl-protocols", "TLSv1.2 TLSv9"),
            ("proxy-ssl-ciphers", "HIGH; evil"),
            ("proxy-ssl-secret", "a/b/c"),
            ("proxy-ssl-secret", "Bad Name"),
        ] {
            let mut pairs = vec![(name, value)];
            if name != "proxy-ssl-secret" {
                pairs.push(("proxy-ssl-secret", "ns/ca"));
            }
            let (found, _) = parse(&pairs).unwrap_err();
            assert_eq!(found, name, "{name}={value}");
        }
    }

    #[test]
    fn secrets_of_other_namespaces_are_refused() {
        assert_eq!(secret_name("ns", "ns/ca"), Ok("ca"));
        assert_eq!(secret_name("ns", "ca"), Ok("ca"));
        assert!(secret_name("ns", "other/ca").unwrap_err().contains("other"));
    }

    fn pki() -> (String, String, String) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let issuer =
            rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["client".to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        (issuer.pem(), leaf.pem(), key.serialize_pem())
    }

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn the_secret_supplies_anchors_and_the_client_certificate() {
        let (ca, crt, key) = pki();
        let mut tls = parse(&[("proxy-ssl-secret", "ns/ca")]).unwrap().0.unwrap();
        load("ns/ca", &data(&[("ca.crt", &ca)]), &mut tls).unwrap();
        assert_eq!(tls.ca.len(), 1);
        assert!(tls.client_cert.is_none());
        load(
            "ns/ca",
            &data(&[("ca.crt", &ca), ("tls.crt", &crt), ("tls.key", &key)]),
            &mut tls,
        )
        .unwrap();
        assert_eq!(tls.client_cert.as_ref().unwrap().chain.len(), 1);
        // The key never reaches a log.
        assert!(!format!("{tls:?}").contains("PRIVATE"));
    }

    #[test]
    fn bad_secrets_are_errors_naming_the_secret() {
        let (ca, crt, _) = pki();
        let (_, _, other_key) = pki();
        for (pairs, expect) in [
            (vec![], "no ca.crt"),
            (vec![("ca.crt", "not pem")], "no PEM certificate"),
            (
                vec![(
                    "ca.crt",
                    "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                )],
                "ca.crt",
            ),
            (
                vec![("ca.crt", ca.as_str()), ("tls.crt", crt.as_str())],
                "no tls.key",
            ),
            (
                vec![
                    ("ca.crt", ca.as_str()),
                    ("tls.crt", crt.as_str()),
                    ("tls.key", other_key.as_str()),
                ],
                "does not match",
            ),
            (
                vec![
                    ("ca.crt", ca.as_str()),
                    ("tls.crt", crt.as_str()),
                    ("tls.key", "junk"),
                ],
                "tls.key",
            ),
        ] {
            let mut tls = parse(&[("proxy-ssl-secret", "ns/ca")]).unwrap().0.unwrap();
            let e = load("ns/ca", &data(&pairs), &mut tls).unwrap_err();
            assert!(e.contains("ns/ca") && e.contains(expect), "{e}");
        }
    }
}
