//! Per-Ingress settings from `portcullis.dev/*` annotations, each parsed into a typed
//! value. An annotation under `portcullis.dev/` that this version does not know is an
//! error that rejects the Ingress: a misspelled or not-yet-supported security setting
//! must never silently leave a route open.

use std::collections::BTreeMap;

use crate::policy::Policy;
use crate::problem::{ObjectRef, Problem};
use crate::settings::Settings;
use crate::snapshot::{AuthMode, BackendProtocol, RateLimit, RateLimitKey, RouteOptions};
use crate::units::{parse_byte_size, parse_duration};

pub const PREFIX: &str = "portcullis.dev/";

/// Every annotation this version understands, with what it takes.
pub const KNOWN: &[(&str, &str)] = &[
    (
        "ssl-redirect",
        "\"true\" (default) or \"false\": redirect plain HTTP to HTTPS for hosts with TLS",
    ),
    (
        "max-body-size",
        "largest request body, like 10m; \"0\" is unlimited",
    ),
    ("backend-protocol", "HTTP (default), HTTPS, H2C, GRPC or GRPCS"),
    (
        "proxy-read-timeout",
        "time to wait for the backend's response headers and between body reads, like 60s",
    ),
    (
        "auth",
        "\"none\" (the default); oidc and jwt arrive with authentication support",
    ),
];

fn field(key: &str) -> String {
    format!("metadata.annotations[\"{PREFIX}{key}\"]")
}

/// Parses the annotations of one Ingress, ingress-nginx's first and then Portcullis's
/// own (which win where both say something). Returns the options, or `None` when there
/// are errors, and every Problem, warnings included.
pub fn route_options(
    object: &ObjectRef,
    annotations: Option<&BTreeMap<String, String>>,
    settings: &Settings,
) -> (Option<RouteOptions>, Vec<Problem>) {
    let mut options = RouteOptions {
        ssl_redirect: true,
        max_body_size: non_zero(settings.limits.max_body_size.0),
        backend_protocol: BackendProtocol::Http,
        read_timeout: settings.timeouts.read.0,
        auth: AuthMode::None,
        identity_assertion: false,
        policy: Policy::default(),
        rate_limit: None,
        max_connections: None,
        ..RouteOptions::default()
    };
    let mut problems = Vec::new();
    if let Some(map) = annotations {
        for (name, severity, message) in crate::nginx::apply(map, &mut options) {
            let field = format!("metadata.annotations[\"{}{name}\"]", crate::nginx::PREFIX);
            problems.push(match severity {
                crate::problem::Severity::Error => Problem::error(Some(object.clone()), field, message),
                _ => Problem::warning(Some(object.clone()), field, message),
            });
        }
    }
    let mut auth = None;
    let mut rate: Option<(u32, std::time::Duration)> = None;
    let mut burst: Option<u32> = None;
    let mut rate_key = RateLimitKey::Client;
    let mut auth_provider = None;
    let mut bad =
        |key: &str, message: String| problems.push(Problem::error(Some(object.clone()), field(key), message));
    for (full_key, value) in annotations.into_iter().flatten() {
        let Some(key) = full_key.strip_prefix(PREFIX) else {
            continue;
        };
        let value = value.trim();
        match key {
            "ssl-redirect" => match value {
                "true" => options.ssl_redirect = true,
                "false" => options.ssl_redirect = false,
                _ => bad(key, format!("{value:?} is not \"true\" or \"false\"")),
            },
            "max-body-size" => match parse_byte_size(value) {
                Ok(n) => options.max_body_size = non_zero(n),
                Err(e) => bad(key, e),
            },
            "backend-protocol" => match value.to_ascii_uppercase().as_str() {
                "HTTP" => options.backend_protocol = BackendProtocol::Http,
                "HTTPS" => options.backend_protocol = BackendProtocol::Https,
                "H2C" => options.backend_protocol = BackendProtocol::H2c,
                "GRPC" => options.backend_protocol = BackendProtocol::Grpc,
                "GRPCS" => options.backend_protocol = BackendProtocol::Grpcs,
                _ => bad(
                    key,
                    format!("{value:?} is not one of HTTP, HTTPS, H2C, GRPC, GRPCS"),
                ),
            },
            "proxy-read-timeout" => match parse_duration(value) {
                Ok(d) if !d.is_zero() => options.read_timeout = d,
                Ok(_) => bad(key, "must be more than zero".to_string()),
                Err(e) => bad(key, e),
            },
            "auth" => match value {
                "none" | "oidc" | "jwt" => auth = Some(value.to_string()),
                _ => bad(key, format!("{value:?} is not one of none, oidc, jwt")),
            },
            "auth-provider" => auth_provider = Some(value.to_string()),
            "allow-groups" => match list(value) {
                Ok(v) => options.policy.allow_groups = v,
                Err(e) => bad(key, e),
            },
            "allow-emails" => match list(value) {
                Ok(v) if v.iter().all(|e| e.matches('@').count() == 1) => {
                    options.policy.allow_emails = v.iter().map(|e| e.to_ascii_lowercase()).collect()
                }
                Ok(_) => bad(key, "every entry must be an email address (one @)".into()),
                Err(e) => bad(key, e),
            },
            "allow-email-domains" => {
                match list(value).map(|v| v.iter().map(|d| d.to_ascii_lowercase()).collect::<Vec<_>>()) {
                    Ok(v)
                        if v.iter()
                            .all(|d| crate::compile::validate_host(d).is_ok() && !d.starts_with('*')) =>
                    {
                        options.policy.allow_email_domains = v
                    }
                    Ok(_) => bad(
                        key,
                        "every entry must be a domain name like example.com (no @, no wildcard)".into(),
                    ),
                    Err(e) => bad(key, e),
                }
            }
            "require-claims" => match claims(value) {
                Ok(c) => options.policy.require_claims = c,
                Err(e) => bad(key, e),
            },
            "allow-source-ranges" => match ranges(value) {
                Ok(r) => options.policy.allow_source_ranges = r,
                Err(e) => bad(key, e),
            },
            "deny-source-ranges" => match ranges(value) {
                Ok(r) => options.policy.deny_source_ranges = r,
                Err(e) => bad(key, e),
            },
            "rate-limit" => match parse_rate(value) {
                Ok(r) => rate = Some(r),
                Err(e) => bad(key, e),
            },
            "rate-limit-burst" => match value.parse::<u32>() {
                Ok(n) if n > 0 => burst = Some(n),
                _ => bad(key, format!("{value:?} is not a whole number above zero")),
            },
            "rate-limit-key" => match value {
                "client" => rate_key = RateLimitKey::Client,
                "user" => rate_key = RateLimitKey::User,
                _ => bad(key, format!("{value:?} is not client or user")),
            },
            "max-connections" => match value.parse::<u32>() {
                Ok(n) if n > 0 => options.max_connections = Some(n),
                _ => bad(key, format!("{value:?} is not a whole number above zero")),
            },
            "identity-assertion" => match value {
                "true" => options.identity_assertion = true,
                "false" => options.identity_assertion = false,
                _ => bad(key, format!("{value:?} is not \"true\" or \"false\"")),
            },
            _ => {
                let known: Vec<&str> = KNOWN.iter().map(|(k, _)| *k).collect();
                bad(
                    key,
                    format!(
                        "unknown annotation: the Ingress is rejected so that a misspelled setting never goes unnoticed (known: {})",
                        known.join(", ")
                    ),
                )
            }
        }
    }
    match resolve_auth(auth.as_deref(), auth_provider.as_deref(), settings) {
        Ok(mode) => options.auth = mode,
        Err((key, message)) => problems.push(Problem::error(Some(object.clone()), field(key), message)),
    }
    if let Some((n, per)) = rate {
        let one_second = (f64::from(n) / per.as_secs_f64()).ceil() as u32;
        options.rate_limit = Some(RateLimit {
            rate: n,
            per,
            burst: burst.unwrap_or(one_second.max(1)),
            key: rate_key,
        });
    } else if burst.is_some() || rate_key == RateLimitKey::User {
        problems.push(Problem::error(
            Some(object.clone()),
            field("rate-limit"),
            "missing: rate-limit-burst and rate-limit-key need a rate-limit",
        ));
    }
    if options.auth == AuthMode::None {
        if options.policy.needs_identity() {
            problems.push(Problem::error(
                Some(object.clone()),
                field("auth"),
                "allow-groups, allow-emails, allow-email-domains and require-claims need an authenticated caller: set portcullis.dev/auth (the Ingress is rejected rather than served to everyone)",
            ));
        }
        if rate_key == RateLimitKey::User {
            problems.push(Problem::error(
                Some(object.clone()),
                field("rate-limit-key"),
                "\"user\" needs portcullis.dev/auth",
            ));
        }
    }
    if options.identity_assertion && options.auth == AuthMode::None {
        problems.push(Problem::error(
            Some(object.clone()),
            field("identity-assertion"),
            "asserts an identity, but the route has no authentication (portcullis.dev/auth)",
        ));
    }
    if options.auth != AuthMode::None && !options.ssl_redirect {
        problems.push(Problem::error(
            Some(object.clone()),
            field("ssl-redirect"),
            "authenticated routes are HTTPS only: \"false\" would send sessions and tokens in the clear",
        ));
    }
    let options = (!problems.iter().any(Problem::is_error)).then_some(options);
    (options, problems)
}

/// The provider an authenticated route uses: the one named, or the only one configured.
fn resolve_auth(
    auth: Option<&str>,
    provider: Option<&str>,
    settings: &Settings,
) -> Result<AuthMode, (&'static str, String)> {
    let names: Vec<&str> = settings
        .oidc
        .iter()
        .flat_map(|o| o.providers.iter().map(|p| p.name.as_str()))
        .collect();
    let mode = auth.unwrap_or("none");
    if mode == "none" {
        return match provider {
            Some(_) => Err((
                "auth-provider",
                "is set but auth is none: set portcullis.dev/auth too".into(),
            )),
            None => Ok(AuthMode::None),
        };
    }
    let provider = match (provider, names.as_slice()) {
        (Some(p), _) if names.contains(&p) => p.to_string(),
        (Some(p), _) => {
            return Err((
                "auth-provider",
                format!("{p:?} is not a provider in the config file (oidc.providers: {})", names.join(", ")),
            ))
        }
        (None, [only]) => only.to_string(),
        (None, []) => {
            return Err((
                "auth",
                format!("{mode:?} needs an OpenID provider, and the config file has no oidc.providers: the Ingress is rejected rather than served without authentication"),
            ))
        }
        (None, _) => {
            return Err((
                "auth-provider",
                format!("missing: several providers are configured ({})", names.join(", ")),
            ))
        }
    };
    Ok(if mode == "oidc" {
        AuthMode::Oidc { provider }
    } else {
        AuthMode::Jwt { provider }
    })
}

/// A comma-separated list with no empty entries.
fn list(value: &str) -> Result<Vec<String>, String> {
    let items: Vec<String> = value.split(',').map(|s| s.trim().to_string()).collect();
    if items.iter().any(|i| i.is_empty()) {
        return Err(format!(
            "{value:?} has an empty entry: write a comma-separated list"
        ));
    }
    Ok(items)
}

/// `claim=value` pairs, grouped by claim.
fn claims(value: &str) -> Result<std::collections::BTreeMap<String, Vec<String>>, String> {
    let mut out: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for pair in list(value)? {
        match pair.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() && !v.trim().is_empty() => out
                .entry(k.trim().to_string())
                .or_default()
                .push(v.trim().to_string()),
            _ => return Err(format!("{pair:?} is not claim=value")),
        }
    }
    Ok(out)
}

/// CIDRs (a bare address is a single host).
pub(crate) fn ranges(value: &str) -> Result<Vec<ipnet::IpNet>, String> {
    list(value)?
        .iter()
        .map(|r| {
            r.parse::<ipnet::IpNet>()
                .or_else(|_| r.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map(|n| n.trunc())
                .map_err(|_| format!("{r:?} is not a CIDR range like 10.0.0.0/8 or 2001:db8::/32"))
        })
        .collect()
}

/// `100/s`, `600/m`.
fn parse_rate(value: &str) -> Result<(u32, std::time::Duration), String> {
    let err = || format!("{value:?} is not a rate like 100/s or 600/m");
    let (n, unit) = value.split_once('/').ok_or_else(err)?;
    let n: u32 = n.trim().parse().map_err(|_| err())?;
    let per = match unit.trim() {
        "s" => std::time::Duration::from_secs(1),
        "m" => std::time::Duration::from_secs(60),
        _ => return Err(err()),
    };
    if n == 0 {
        return Err(err());
    }
    Ok((n, per))
}

fn non_zero(n: u64) -> Option<u64> {
    (n != 0).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn parse(pairs: &[(&str, &str)]) -> Result<RouteOptions, Vec<Problem>> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        match route_options(
            &ObjectRef::new("Ingress", Some("ns"), "i"),
            Some(&map),
            &Settings::default(),
        ) {
            (Some(o), _) => Ok(o),
            (None, problems) => Err(problems),
        }
    }

    #[test]
    fn defaults_come_from_settings() {
        let o = parse(&[("other.io/x", "whatever")]).unwrap();
        assert!(o.ssl_redirect);
        assert_eq!(o.max_body_size, Some(64 << 20));
        assert_eq!(o.read_timeout, Duration::from_secs(60));
    }

    #[test]
    fn typed_values() {
        let o = parse(&[
            ("portcullis.dev/ssl-redirect", "false"),
            ("portcullis.dev/max-body-size", "0"),
            ("portcullis.dev/backend-protocol", "grpc"),
            ("portcullis.dev/proxy-read-timeout", "2s"),
            ("portcullis.dev/auth", "none"),
        ])
        .unwrap();
        assert!(!o.ssl_redirect);
        assert_eq!(o.max_body_size, None);
        assert_eq!(o.backend_protocol, BackendProtocol::Grpc);
        assert_eq!(o.read_timeout, Duration::from_secs(2));
    }

    #[test]
    fn nginx_annotations_come_first_and_portcullis_ones_win() {
        let o = parse(&[
            ("nginx.ingress.kubernetes.io/proxy-body-size", "1m"),
            ("nginx.ingress.kubernetes.io/proxy-read-timeout", "5"),
            ("portcullis.dev/max-body-size", "2m"),
        ])
        .unwrap();
        assert_eq!(o.max_body_size, Some(2 << 20));
        assert_eq!(o.read_timeout, Duration::from_secs(5));
        let problems = parse(&[("nginx.ingress.kubernetes.io/enable-modsecurity", "true")]).unwrap_err();
        assert!(
            problems[0]
                .field
                .contains("nginx.ingress.kubernetes.io/enable-modsecurity"),
            "{problems:?}"
        );
    }

    fn oidc_settings() -> Settings {
        Settings::from_yaml("oidc: {providers: [{name: corp, issuer: 'https://idp.example.com', clientId: c}], sessionKeys: [{env: K}]}").unwrap()
    }

    #[test]
    fn policy_and_limits() {
        let map: BTreeMap<String, String> = [
            ("portcullis.dev/auth", "oidc"),
            ("portcullis.dev/allow-groups", "admins, sre"),
            ("portcullis.dev/allow-email-domains", "Example.com"),
            ("portcullis.dev/require-claims", "tenant=a, tenant=b, tier=gold"),
            ("portcullis.dev/allow-source-ranges", "10.0.0.0/8, 2001:db8::1"),
            ("portcullis.dev/rate-limit", "600/m"),
            ("portcullis.dev/rate-limit-key", "user"),
            ("portcullis.dev/max-connections", "20"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let o = route_options(
            &ObjectRef::new("Ingress", Some("ns"), "i"),
            Some(&map),
            &oidc_settings(),
        )
        .0
        .unwrap();
        assert_eq!(o.policy.allow_groups, ["admins", "sre"]);
        assert_eq!(o.policy.allow_email_domains, ["example.com"]);
        assert_eq!(o.policy.require_claims["tenant"], ["a", "b"]);
        assert_eq!(o.policy.allow_source_ranges[1].to_string(), "2001:db8::1/128");
        let rl = o.rate_limit.unwrap();
        assert_eq!((rl.rate, rl.burst, rl.key), (600, 10, RateLimitKey::User));
        assert_eq!(o.max_connections, Some(20));
    }

    #[test]
    fn identity_rules_without_auth_reject_the_ingress() {
        let problems = parse(&[("portcullis.dev/allow-groups", "admins")]).unwrap_err();
        assert!(
            problems[0].to_string().contains("need an authenticated caller"),
            "{problems:?}"
        );
        let problems = parse(&[
            ("portcullis.dev/allow-source-ranges", "10.0.0.0/33"),
            ("portcullis.dev/rate-limit", "fast"),
            ("portcullis.dev/require-claims", "tenant"),
            ("portcullis.dev/allow-emails", "not-an-email"),
        ])
        .unwrap_err();
        assert_eq!(problems.len(), 4, "{problems:?}");
        // Source ranges need no identity.
        assert!(parse(&[("portcullis.dev/deny-source-ranges", "192.0.2.0/24")]).is_ok());
    }

    #[test]
    fn every_bad_value_is_reported_with_its_field() {
        let problems = parse(&[
            ("portcullis.dev/ssl-redirect", "yes"),
            ("portcullis.dev/max-body-size", "big"),
            ("portcullis.dev/alow-groups", "admins"),
            ("portcullis.dev/auth", "oidc"),
        ])
        .unwrap_err();
        assert_eq!(problems.len(), 4);
        let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert!(
            text.iter()
                .any(|t| t.contains("[\"portcullis.dev/alow-groups\"]: unknown annotation")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.contains("[\"portcullis.dev/auth\"]") && t.contains("rejected")),
            "{text:?}"
        );
    }
}
