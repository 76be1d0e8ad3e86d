//! ingress-nginx's sticky sessions (`affinity: cookie` with `affinity-mode` and the
//! `session-cookie-*` annotations) and consistent hashing (`upstream-hash-by`), parsed
//! into a typed [`Affinity`]. Every value is checked here, because the cookie's
//! attributes end up in a `Set-Cookie` header and the hash key names request values:
//! nothing is passed through as text the gateway would have to interpret later.

use crate::nginx::parse_bool;
use crate::problem::Severity;
use crate::snapshot::{Affinity, AffinityMode, HashPart, SameSite, StickyCookie};

/// (annotation name without prefix, severity, message), as [`crate::nginx::Finding`].
pub type Finding = (&'static str, Severity, String);

/// The annotations that only mean something with `affinity: cookie`.
const COOKIE_ANNOTATIONS: &[&str] = &[
    "affinity-mode",
    "session-cookie-name",
    "session-cookie-path",
    "session-cookie-domain",
    "session-cookie-max-age",
    "session-cookie-expires",
    "session-cookie-samesite",
    "session-cookie-conditional-samesite-none",
    "session-cookie-secure",
    "session-cookie-change-on-failure",
];

/// Reads the affinity annotations through `get` (name without prefix, trimmed value).
/// `regex_paths`: the Ingress's paths are regular expressions, so the route's path
/// cannot serve as the cookie's `Path`.
pub fn parse<'a>(
    get: impl Fn(&str) -> Option<&'a str>,
    regex_paths: bool,
) -> (Option<Affinity>, Vec<Finding>) {
    let mut findings = Vec::new();
    let hash_by = get("upstream-hash-by");
    let cookie = match get("affinity") {
        None => {
            for &name in COOKIE_ANNOTATIONS {
                if get(name).is_some() {
                    findings.push((
                        name,
                        Severity::Warning,
                        "has no effect without affinity: \"cookie\"".to_string(),
                    ));
                }
            }
            None
        }
        // ingress-nginx only knows cookie affinity; anything else would silently
        // balance round robin there, which an owner asking for stickiness did not want.
        Some("cookie") => match sticky_cookie(&get, regex_paths) {
            Ok(c) => Some(c),
            Err((name, message)) => {
                findings.push((name, Severity::Error, message));
                return (None, findings);
            }
        },
        Some(other) => {
            findings.push((
                "affinity",
                Severity::Error,
                format!("{other:?} is not supported: only \"cookie\""),
            ));
            return (None, findings);
        }
    };
    if let Some(cookie) = cookie {
        if hash_by.is_some() {
            findings.push((
                "upstream-hash-by",
                Severity::Warning,
                "affinity: cookie is also set and wins, as in ingress-nginx".to_string(),
            ));
        }
        return (Some(Affinity::Cookie(cookie)), findings);
    }
    match hash_by.map(hash_key) {
        None => (None, findings),
        Some(Ok(parts)) => (Some(Affinity::Hash(parts)), findings),
        Some(Err(message)) => {
            findings.push(("upstream-hash-by", Severity::Error, message));
            (None, findings)
        }
    }
}

fn sticky_cookie<'a>(
    get: &impl Fn(&str) -> Option<&'a str>,
    regex_paths: bool,
) -> Result<StickyCookie, (&'static str, String)> {
    let mut cookie = StickyCookie::new();
    let bool_of = |name: &'static str| -> Result<Option<bool>, (&'static str, String)> {
        get(name)
            .map(|v| parse_bool(v).ok_or((name, format!("{v:?} is not \"true\" or \"false\""))))
            .transpose()
    };
    cookie.mode = match get("affinity-mode") {
        None | Some("balanced") => AffinityMode::Balanced,
        // persistent-drainable keeps sessions on endpoints that are terminating but
        // still serving; the gateway only ever sees ready endpoints, so it can do no
        // more than persistent does.
        Some("persistent" | "persistent-drainable") => AffinityMode::Persistent,
        Some(other) => {
            return Err((
                "affinity-mode",
                format!("{other:?} is not balanced, persistent or persistent-drainable"),
            ))
        }
    };
    if let Some(name) = get("session-cookie-name") {
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err((
                "session-cookie-name",
                format!("{name:?} is not a cookie name (letters, digits and !#$%&'*+-.^_`|~ only)"),
            ));
        }
        cookie.name = name.to_string();
    }
    match get("session-cookie-path") {
        Some(path) => {
            let valid = path.starts_with('/')
                && !path.contains(['$', ';'])
                && path.bytes().all(|b| b.is_ascii_graphic());
            if !valid {
                return Err((
                    "session-cookie-path",
                    format!("{path:?} is not a cookie path: it must start with / and hold no spaces, ; or nginx variables"),
                ));
            }
            cookie.path = Some(path.to_string());
        }
        // ingress-nginx would put the regular expression itself in the cookie's Path,
        // which no browser matches: its documentation says the annotation is required.
        None if regex_paths => {
            return Err((
                "session-cookie-path",
                "missing: with use-regex (or rewrite-target) the Ingress's paths are regular expressions, so the cookie needs an explicit path such as /".to_string(),
            ))
        }
        None => {}
    }
    if let Some(domain) = get("session-cookie-domain") {
        let name = domain.strip_prefix('.').unwrap_or(domain).to_ascii_lowercase();
        let valid = !name.is_empty()
            && !name.starts_with('*')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            && crate::compile::validate_host(&name).is_ok();
        if !valid {
            return Err((
                "session-cookie-domain",
                format!("{domain:?} is not a domain name"),
            ));
        }
        cookie.domain = Some(name);
    }
    for (name, slot) in [
        ("session-cookie-max-age", &mut cookie.max_age),
        ("session-cookie-expires", &mut cookie.expires),
    ] {
        if let Some(v) = get(name) {
            let seconds = v
                .parse::<u64>()
                .map_err(|_| (name, format!("{v:?} is not a whole number of seconds")))?;
            *slot = Some(seconds);
        }
    }
    if let Some(v) = get("session-cookie-samesite") {
        cookie.same_site = Some(match v.to_ascii_lowercase().as_str() {
            "strict" => SameSite::Strict,
            "lax" => SameSite::Lax,
            "none" => SameSite::None,
            _ => {
                return Err((
                    "session-cookie-samesite",
                    format!("{v:?} is not None, Lax or Strict"),
                ))
            }
        });
    }
    cookie.conditional_same_site_none = bool_of("session-cookie-conditional-samesite-none")?.unwrap_or(false);
    cookie.secure = bool_of("session-cookie-secure")?;
    cookie.change_on_failure = bool_of("session-cookie-change-on-failure")?.unwrap_or(false);
    Ok(cookie)
}

/// RFC 6265 cookie names are RFC 9110 tokens.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// An `upstream-hash-by` value: text and the variables `$request_uri`, `$remote_addr`,
/// `$http_NAME` and `$cookie_NAME` (also as `${name}`). Any other nginx variable is
/// refused rather than hashed as an empty string, which would send every request to
/// one endpoint.
pub fn hash_key(value: &str) -> Result<Vec<HashPart>, String> {
    const WHICH: &str = "only $request_uri, $remote_addr, $http_NAME and $cookie_NAME are supported";
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut rest = value;
    while let Some(c) = rest.chars().next() {
        if c != '$' {
            if !c.is_ascii_graphic() {
                return Err(format!("{value:?} holds a space or a control character; {WHICH}"));
            }
            text.push(c);
            rest = &rest[c.len_utf8()..];
            continue;
        }
        let (name, after) = match rest[1..].strip_prefix('{') {
            Some(braced) => match braced.split_once('}') {
                Some((name, after)) => (name, after),
                None => return Err(format!("{value:?} has an unclosed ${{")),
            },
            None => {
                let body = &rest[1..];
                let end = body
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(body.len());
                (&body[..end], &body[end..])
            }
        };
        let part = if name == "request_uri" {
            HashPart::RequestUri
        } else if name == "remote_addr" {
            HashPart::RemoteAddr
        } else if let Some(header) = name
            .strip_prefix("http_")
            .filter(|h| !h.is_empty() && valid_var(h))
        {
            HashPart::Header(header.to_ascii_lowercase().replace('_', "-"))
        } else if let Some(cookie) = name
            .strip_prefix("cookie_")
            .filter(|c| !c.is_empty() && valid_var(c))
        {
            HashPart::Cookie(cookie.to_string())
        } else {
            return Err(format!("${name} is not supported: {WHICH}"));
        };
        if !text.is_empty() {
            parts.push(HashPart::Text(std::mem::take(&mut text)));
        }
        parts.push(part);
        rest = after;
    }
    if !text.is_empty() {
        parts.push(HashPart::Text(text));
    }
    if !parts.iter().any(|p| !matches!(p, HashPart::Text(_))) {
        return Err(format!(
            "{value:?} names no request value, so every request would go to one endpoint; {WHICH}"
        ));
    }
    Ok(parts)
}

fn valid_var(name: &str) -> bool {
    name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn run(pairs: &[(&str, &str)], regex: bool) -> (Option<Affinity>, Vec<Finding>) {
        let map: BTreeMap<&str, &str> = pairs.iter().copied().collect();
        parse(|n| map.get(n).copied(), regex)
    }

    #[test]
    fn cookie_defaults_are_ingress_nginx_defaults() {
        let (a, f) = run(&[("affinity", "cookie")], false);
        assert!(f.is_empty(), "{f:?}");
        assert_eq!(a, Some(Affinity::Cookie(StickyCookie::new())));
        let Some(Affinity::Cookie(c)) = a else {
            unreachable!()
        };
        assert_eq!(c.name, "INGRESSCOOKIE");
        assert_eq!(c.mode, AffinityMode::Balanced);
        assert_eq!((c.path, c.secure, c.same_site), (None, None, None));
    }

    #[test]
    fn every_cookie_annotation_is_typed() {
        let (a, f) = run(
            &[
                ("affinity", "cookie"),
                ("affinity-mode", "persistent"),
                ("session-cookie-name", "route"),
                ("session-cookie-path", "/app"),
                ("session-cookie-domain", ".Example.com"),
                ("session-cookie-max-age", "172800"),
                ("session-cookie-expires", "3600"),
                ("session-cookie-samesite", "none"),
                ("session-cookie-conditional-samesite-none", "true"),
                ("session-cookie-secure", "false"),
                ("session-cookie-change-on-failure", "true"),
            ],
            true,
        );
        assert!(f.is_empty(), "{f:?}");
        assert_eq!(
            a,
            Some(Affinity::Cookie(StickyCookie {
                mode: AffinityMode::Persistent,
                name: "route".into(),
                path: Some("/app".into()),
                domain: Some("example.com".into()),
                max_age: Some(172800),
                expires: Some(3600),
                same_site: Some(SameSite::None),
                conditional_same_site_none: true,
                secure: Some(false),
                change_on_failure: true,
            }))
        );
    }

    #[test]
    fn bad_values_are_errors_naming_the_annotation() {
        for (name, value) in [
            ("affinity", "ip"),
            ("affinity-mode", "sticky"),
            ("session-cookie-name", "a b"),
            ("session-cookie-name", "a;b"),
            ("session-cookie-path", "app"),
            ("session-cookie-path", "/a;Domain=evil"),
            ("session-cookie-path", "/$uri"),
            ("session-cookie-domain", "*.example.com"),
            ("session-cookie-domain", "a b"),
            ("session-cookie-max-age", "-1"),
            ("session-cookie-expires", "tomorrow"),
            ("session-cookie-samesite", "sometimes"),
            ("session-cookie-secure", "yes"),
            ("session-cookie-change-on-failure", "on"),
        ] {
            let mut pairs = vec![("affinity", "cookie")];
            pairs.retain(|(n, _)| *n != name);
            pairs.push((name, value));
            let (a, f) = run(&pairs, false);
            assert!(a.is_none(), "{name}={value}");
            assert_eq!(f.len(), 1, "{name}={value}: {f:?}");
            assert_eq!((f[0].0, f[0].1), (name, Severity::Error), "{name}={value}");
        }
    }

    #[test]
    fn regex_paths_need_an_explicit_cookie_path() {
        let (a, f) = run(&[("affinity", "cookie")], true);
        assert!(a.is_none());
        assert_eq!((f[0].0, f[0].1), ("session-cookie-path", Severity::Error));
        let (a, f) = run(&[("affinity", "cookie"), ("session-cookie-path", "/")], true);
        assert!(f.is_empty() && a.is_some());
    }

    #[test]
    fn cookie_annotations_without_affinity_warn() {
        let (a, f) = run(&[("session-cookie-name", "route")], false);
        assert!(a.is_none());
        assert_eq!((f[0].0, f[0].1), ("session-cookie-name", Severity::Warning));
    }

    #[test]
    fn hash_keys_take_only_the_four_variables() {
        assert_eq!(hash_key("$request_uri").unwrap(), vec![HashPart::RequestUri]);
        assert_eq!(
            hash_key("$remote_addr-${http_X_User}:$cookie_session").unwrap(),
            vec![
                HashPart::RemoteAddr,
                HashPart::Text("-".into()),
                HashPart::Header("x-user".into()),
                HashPart::Text(":".into()),
                HashPart::Cookie("session".into()),
            ]
        );
        for bad in [
            "$host",
            "$arg_id",
            "$http_",
            "${request_uri",
            "constant",
            "$request_uri $host",
            "",
        ] {
            assert!(hash_key(bad).is_err(), "{bad:?}");
        }
        let (a, f) = run(&[("upstream-hash-by", "$binary_remote_addr")], false);
        assert!(a.is_none());
        assert_eq!((f[0].0, f[0].1), ("upstream-hash-by", Severity::Error));
    }

    #[test]
    fn cookie_affinity_wins_over_hashing() {
        let (a, f) = run(
            &[("affinity", "cookie"), ("upstream-hash-by", "$request_uri")],
            false,
        );
        assert!(matches!(a, Some(Affinity::Cookie(_))));
        assert_eq!((f[0].0, f[0].1), ("upstream-hash-by", Severity::Warning));
    }
}
