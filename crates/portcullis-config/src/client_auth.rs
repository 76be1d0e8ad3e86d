//! ingress-nginx's `auth-tls-*` annotations: client certificate authentication, applied
//! to the Ingress's own routes only (ingress-nginx applies it to the whole host, so one
//! Ingress's setting leaks onto every other Ingress sharing the host; here it does
//! not). [`from_annotations`] reads the annotations into a [`ClientAuth`] without its
//! CA; [`load`] fills in the CA from the Secret when the Ingress is compiled. The
//! gateway verifies each certificate against the route's own CA on every request, so
//! a certificate from another Ingress's CA on the same host does not pass.

use std::collections::BTreeMap;

use rustls_pki_types::CertificateDer;

/// What happens to a client without a valid certificate (`auth-tls-verify-client`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyClient {
    /// A valid certificate is required (`on`, the default).
    On,
    /// A certificate is asked for; without one the request passes, with an invalid
    /// one it is refused (`optional`, and `optional_no_ca`, see the annotation table).
    Optional,
}

/// Client certificate authentication for one Ingress's routes.
#[derive(Debug, Clone)]
pub struct ClientAuth {
    /// The Secret's name, in the Ingress's namespace (`auth-tls-secret`).
    pub secret: String,
    pub verify: VerifyClient,
    /// `auth-tls-verify-depth`; 1 unless set: the most intermediate certificates a
    /// client's chain may need (enforced by the gateway's `tls::verify_for_route`).
    pub verify_depth: u32,
    /// Send the certificate, URL-escaped PEM, in `ssl-client-cert`
    /// (`auth-tls-pass-certificate-to-upstream`).
    pub pass_certificate: bool,
    /// Where a client without a valid certificate is redirected instead of the 400
    /// (`auth-tls-error-page`).
    pub error_page: Option<String>,
    /// The subject DN must match (`auth-tls-match-cn`), else 403 as in ingress-nginx.
    pub match_cn: Option<regex::Regex>,
    /// The CA certificates from the Secret's `ca.crt`.
    pub ca: Vec<CertificateDer<'static>>,
    /// Verifies a client chain against `ca`; built once when the Secret is read, so a
    /// request does not rebuild the trust anchors. `None` until then: nobody passes.
    pub verifier: Option<std::sync::Arc<dyn rustls::server::danger::ClientCertVerifier>>,
}

impl PartialEq for ClientAuth {
    fn eq(&self, other: &Self) -> bool {
        self.secret == other.secret
            && self.verify == other.verify
            && self.verify_depth == other.verify_depth
            && self.pass_certificate == other.pass_certificate
            && self.error_page == other.error_page
            && self.match_cn.as_ref().map(regex::Regex::as_str)
                == other.match_cn.as_ref().map(regex::Regex::as_str)
            && self.ca == other.ca
    }
}

/// The annotations this module reads, without the prefix; the secret first.
pub const NAMES: &[&str] = &[
    "auth-tls-secret",
    "auth-tls-verify-client",
    "auth-tls-verify-depth",
    "auth-tls-error-page",
    "auth-tls-pass-certificate-to-upstream",
    "auth-tls-match-cn",
];

/// An annotation (without prefix) and what is wrong with it.
pub type Finding = (&'static str, String);

/// Reads the `auth-tls-*` annotations. `Ok` carries the settings, if any, and
/// warnings; `Err` means the Ingress must not be served.
pub fn from_annotations<'a>(
    get: &impl Fn(&str) -> Option<&'a str>,
) -> Result<(Option<ClientAuth>, Vec<Finding>), Finding> {
    let mut warnings = Vec::new();
    let verify = match get("auth-tls-verify-client") {
        None | Some("on") => Some(VerifyClient::On),
        Some("optional" | "optional_no_ca") => Some(VerifyClient::Optional),
        Some("off") => None,
        Some(other) => {
            return Err((
                "auth-tls-verify-client",
                format!("{other:?} is not one of on, off, optional, optional_no_ca"),
            ))
        }
    };
    let Some(secret) = get("auth-tls-secret") else {
        // Asking for a certificate without saying which CA issues them would be served
        // with no check at all: refused, as proxy-ssl-verify without its Secret is.
        if get("auth-tls-verify-client").is_some_and(|v| v != "off") {
            return Err((
                "auth-tls-verify-client",
                "needs auth-tls-secret, the Secret whose ca.crt client certificates are verified against: the Ingress is rejected rather than served without client certificate checks".into(),
            ));
        }
        warnings.extend(crate::nginx::set_without(&NAMES[2..], &get, "auth-tls-secret"));
        return Ok((None, warnings));
    };
    crate::nginx::secret_name(secret).map_err(|e| ("auth-tls-secret", e))?;
    let verify_depth = match get("auth-tls-verify-depth") {
        None => 1,
        Some(v) => match v.parse::<u32>() {
            Ok(n) if n > 0 => n,
            _ => {
                return Err((
                    "auth-tls-verify-depth",
                    format!("{v:?} is not a whole number above zero"),
                ))
            }
        },
    };
    let pass_certificate = match get("auth-tls-pass-certificate-to-upstream") {
        None => false,
        Some(v) => crate::nginx::parse_bool(v).ok_or((
            "auth-tls-pass-certificate-to-upstream",
            format!("{v:?} is not \"true\" or \"false\""),
        ))?,
    };
    let error_page = match get("auth-tls-error-page").filter(|v| !v.is_empty()) {
        None => None,
        Some(url) => {
            let valid = crate::nginx::absolute_http_url(url);
            if !valid {
                return Err((
                    "auth-tls-error-page",
                    format!("{url:?} is not an absolute http or https URL (no nginx variables)"),
                ));
            }
            Some(url.to_string())
        }
    };
    let match_cn = match get("auth-tls-match-cn").filter(|v| !v.is_empty()) {
        None => None,
        Some(pattern) => Some(
            regex::RegexBuilder::new(pattern)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| {
                    (
                        "auth-tls-match-cn",
                        format!("{pattern:?} is not a regular expression: {e}"),
                    )
                })?,
        ),
    };
    let Some(verify) = verify else {
        // `off` asks for no certificate: nothing to check, nothing to send upstream.
        for &name in &NAMES[2..] {
            if get(name).is_some() {
                warnings.push((name, "has no effect with auth-tls-verify-client: off".to_string()));
            }
        }
        return Ok((None, warnings));
    };
    Ok((
        Some(ClientAuth {
            secret: secret.to_string(),
            verify,
            verify_depth,
            pass_certificate,
            error_page,
            match_cn,
            ca: Vec::new(),
            verifier: None,
        }),
        warnings,
    ))
}

/// Fills in the CA (`ca.crt`, required) from the Secret's keys. The error names the
/// Secret as `namespace/name`.
pub fn load(full_name: &str, data: &BTreeMap<String, Vec<u8>>, auth: &mut ClientAuth) -> Result<(), String> {
    let (ca, roots) = crate::tls::ca_certificates(
        full_name,
        data,
        "the CA certificates client certificates are verified against",
    )?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        std::sync::Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| format!("Secret {full_name}: ca.crt cannot verify client certificates: {e}"))?;
    auth.ca = ca;
    auth.verifier = Some(verifier);
    Ok(())
}

/// The subject and issuer of a client certificate as nginx writes them
/// (`$ssl_client_s_dn`, `$ssl_client_i_dn`: RFC 2253, last RDN first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertNames {
    pub subject: String,
    pub issuer: String,
}

impl CertNames {
    /// `None` when the certificate cannot be parsed (it was verified, so that means a
    /// certificate the parser does not understand; the caller fails closed).
    pub fn of(der: &[u8]) -> Option<CertNames> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        Some(CertNames {
            subject: rfc2253(cert.subject())?,
            issuer: rfc2253(cert.issuer())?,
        })
    }
}

fn rfc2253(name: &x509_parser::x509::X509Name<'_>) -> Option<String> {
    let mut rdns = Vec::new();
    let all: Vec<_> = name.iter().collect();
    for rdn in all.into_iter().rev() {
        let mut parts = Vec::new();
        for attr in rdn.iter() {
            let oid = attr.attr_type().to_id_string();
            let key = match oid.as_str() {
                "2.5.4.3" => "CN",
                "2.5.4.6" => "C",
                "2.5.4.7" => "L",
                "2.5.4.8" => "ST",
                "2.5.4.10" => "O",
                "2.5.4.11" => "OU",
                "2.5.4.9" => "street",
                "0.9.2342.19200300.100.1.25" => "DC",
                "0.9.2342.19200300.100.1.1" => "UID",
                "1.2.840.113549.1.9.1" => "emailAddress",
                _ => oid.as_str(),
            }
            .to_string();
            let value = attr.as_str().ok()?;
            parts.push(format!("{key}={}", escape_dn_value(value)));
        }
        rdns.push(parts.join("+"));
    }
    Some(rdns.join(","))
}

fn escape_dn_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && matches!(c, '#' | ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        if c.is_control() {
            // Header values must not carry control characters.
            out.push_str(&format!("\\{:02X}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// The certificate as PEM, URL-escaped as nginx's `$ssl_client_escaped_cert`.
pub fn escaped_pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    let mut out = String::with_capacity(pem.len() * 2);
    for b in pem.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<(Option<ClientAuth>, Vec<Finding>), Finding> {
        let map: BTreeMap<&str, &str> = pairs.iter().copied().collect();
        from_annotations(&|name: &str| map.get(name).copied())
    }

    #[test]
    fn nothing_without_a_secret_but_verify_on_rejects() {
        assert!(parse(&[]).unwrap().0.is_none());
        assert!(parse(&[("auth-tls-verify-client", "off")]).unwrap().0.is_none());
        let (auth, warnings) = parse(&[("auth-tls-match-cn", "CN=a")]).unwrap();
        assert!(auth.is_none());
        assert_eq!(warnings[0].0, "auth-tls-match-cn");
        let (name, why) = parse(&[("auth-tls-verify-client", "on")]).unwrap_err();
        assert_eq!(name, "auth-tls-verify-client");
        assert!(why.contains("auth-tls-secret"), "{why}");
    }

    #[test]
    fn defaults_and_values() {
        let (auth, w) = parse(&[("auth-tls-secret", "ns/ca")]).unwrap();
        let auth = auth.unwrap();
        assert!(w.is_empty());
        assert_eq!(
            (
                auth.verify,
                auth.verify_depth,
                auth.pass_certificate,
                auth.error_page.as_deref()
            ),
            (VerifyClient::On, 1, false, None)
        );
        let (auth, _) = parse(&[
            ("auth-tls-secret", "ca"),
            ("auth-tls-verify-client", "optional_no_ca"),
            ("auth-tls-verify-depth", "3"),
            ("auth-tls-pass-certificate-to-upstream", "true"),
            ("auth-tls-error-page", "https://errors.example/cert"),
            ("auth-tls-match-cn", "CN=client1|CN=client2"),
        ])
        .unwrap();
        let auth = auth.unwrap();
        assert_eq!(auth.verify, VerifyClient::Optional);
        assert_eq!(auth.verify_depth, 3);
        assert!(auth.pass_certificate);
        assert!(auth.match_cn.unwrap().is_match("CN=client2,O=x"));
        assert!(
            parse(&[("auth-tls-secret", "ca"), ("auth-tls-verify-client", "off")])
                .unwrap()
                .0
                .is_none()
        );
    }

    #[test]
    fn invalid_values_name_the_annotation() {
        for (name, value) in [
            ("auth-tls-secret", "Bad Name"),
            ("auth-tls-verify-client", "sometimes"),
            ("auth-tls-verify-depth", "0"),
            ("auth-tls-verify-depth", "x"),
            ("auth-tls-pass-certificate-to-upstream", "yes"),
            ("auth-tls-error-page", "/relative"),
            ("auth-tls-error-page", "https://x/$host"),
            ("auth-tls-match-cn", "CN=(a"),
        ] {
            let mut pairs = vec![(name, value)];
            if name != "auth-tls-secret" {
                pairs.push(("auth-tls-secret", "ca"));
            }
            assert_eq!(parse(&pairs).unwrap_err().0, name, "{name}={value}");
        }
    }

    #[test]
    fn names_and_pem_as_nginx_writes_them() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Org, Inc");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "client1");
        let cert = params.self_signed(&key).unwrap();
        let names = CertNames::of(cert.der()).unwrap();
        // RFC 2253 writes the RDNs last first, whatever order rcgen chose.
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.der()).unwrap();
        let expected = if parsed.subject().to_string().starts_with("CN") {
            "O=Org\\, Inc,CN=client1"
        } else {
            "CN=client1,O=Org\\, Inc"
        };
        assert_eq!(names.subject, expected);
        assert_eq!(names.issuer, names.subject);
        let escaped = escaped_pem(cert.der());
        assert!(
            escaped.starts_with("-----BEGIN%20CERTIFICATE-----%0A"),
            "{escaped}"
        );
        assert!(!escaped.contains(['\n', ' ', '+', '/', '=']));
    }

    #[test]
    fn load_needs_a_ca() {
        let mut auth = parse(&[("auth-tls-secret", "ca")]).unwrap().0.unwrap();
        let err = load("ns/ca", &BTreeMap::new(), &mut auth).unwrap_err();
        assert!(err.contains("ca.crt"), "{err}");
    }
}
