//! The Ingress annotation parsers (`annotations::route_options`, which applies
//! ingress-nginx's annotations through `nginx::apply`, and the rewrite, regex, CORS and
//! unit parsers they use), fed arbitrary
//! key/value maps. Keys are drawn mostly from the real annotation names (so the value
//! parsers get exercised), sometimes from arbitrary text.
//!
//! Checks: no panics, and the options returned on success keep the invariants the
//! gateway relies on:
//! - an unknown `portcullis.dev/*` key always rejects the Ingress;
//! - `max_body_size` is never `Some(0)` (0 means unlimited, i.e. `None`);
//! - `read_timeout` is never zero;
//! - a rate limit has rate > 0, burst > 0 and a period of 1s or 60s;
//! - `max_connections` is never `Some(0)`;
//! - identity rules, `rate-limit-key: user` and `identity-assertion` only come with auth;
//! - authenticated routes keep `ssl_redirect`;
//! - a snippet always rejects the Ingress;
//! - redirects are absolute http(s) URLs without `$`, rewrites start with `/`, and
//!   header values taken from annotations (upstream-vhost, x-forwarded-prefix) hold
//!   no whitespace or control characters.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use portcullis_config::annotations::{route_options, PREFIX};
use portcullis_config::nginx::{Support, ANNOTATIONS, PREFIX as NGINX_PREFIX};
use portcullis_config::rewrite::{path_regex, RewriteTarget};
use portcullis_config::snapshot::{AuthMode, RateLimitKey};
use portcullis_config::units::{parse_byte_size, parse_duration};
use portcullis_config::{ObjectRef, Settings};

/// Every `portcullis.dev/` name `route_options` handles.
const KNOWN: &[&str] = &[
    "ssl-redirect",
    "max-body-size",
    "backend-protocol",
    "proxy-read-timeout",
    "auth",
    "auth-provider",
    "allow-groups",
    "allow-emails",
    "allow-email-domains",
    "require-claims",
    "allow-source-ranges",
    "deny-source-ranges",
    "rate-limit",
    "rate-limit-burst",
    "rate-limit-key",
    "max-connections",
    "identity-assertion",
];

#[derive(Debug, Arbitrary)]
enum Key {
    Known(u8),
    Nginx(u8),
    /// `portcullis.dev/` + arbitrary text.
    Ours(String),
    Raw(String),
}

impl Key {
    fn text(&self) -> String {
        match self {
            Key::Known(i) => format!("{PREFIX}{}", KNOWN[usize::from(*i) % KNOWN.len()]),
            Key::Nginx(i) => format!("{NGINX_PREFIX}{}", ANNOTATIONS[usize::from(*i) % ANNOTATIONS.len()].name),
            Key::Ours(s) => format!("{PREFIX}{s}"),
            Key::Raw(s) => s.clone(),
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Input {
    /// Which settings: none, one or two OIDC providers.
    settings: u8,
    pairs: Vec<(Key, String)>,
}

fn settings() -> &'static [Settings; 3] {
    static SETTINGS: OnceLock<[Settings; 3]> = OnceLock::new();
    SETTINGS.get_or_init(|| {
        let provider = |name: &str| {
            format!("  - name: {name}\n    issuer: https://{name}.example.com\n    clientId: gw\n")
        };
        let one = format!(
            "oidc:\n  providers:\n{}  sessionKeys: [{{env: FUZZ_SESSION_KEY}}]\n",
            provider("corp")
        );
        let two = format!(
            "oidc:\n  providers:\n{}{}  sessionKeys: [{{env: FUZZ_SESSION_KEY}}]\n",
            provider("corp"),
            provider("partners")
        );
        [
            Settings::default(),
            Settings::from_yaml(&one).expect("fixed settings parse"),
            Settings::from_yaml(&two).expect("fixed settings parse"),
        ]
    })
}

/// Text inputs, for hand-written seeds: `#<settings digit>` then one `key=value` per
/// line. Anything else is an [`Input`] read with `arbitrary`.
fn read(data: &[u8]) -> Option<(u8, BTreeMap<String, String>)> {
    if let Some(text) = data.strip_prefix(b"#") {
        let text = std::str::from_utf8(text).ok()?;
        let (first, rest) = text.split_once('\n').unwrap_or((text, ""));
        let which = first.trim().parse().unwrap_or(0);
        let map = rest
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        return Some((which, map));
    }
    let input: Input = Unstructured::new(data).arbitrary().ok()?;
    let map = input.pairs.iter().map(|(k, v)| (k.text(), v.clone())).collect();
    Some((input.settings, map))
}

fuzz_target!(|data: &[u8]| {
    let Some((which, map)) = read(data) else {
        return;
    };
    let settings = &settings()[usize::from(which) % 3];
    let object = ObjectRef::new("Ingress", Some("fuzz"), "target");

    // The unit parsers on their own, with every value.
    for value in map.values() {
        let _ = parse_byte_size(value);
        let _ = parse_duration(value);
    }

    for value in map.values() {
        let _ = path_regex(value).map(|re| re.is_match(value));
        if let Ok(target) = RewriteTarget::parse(value) {
            let out = target.apply(&[Some(value.as_str()), None], Some(value));
            assert!(out.starts_with('/'), "{out:?}");
        }
    }
    let snippet = map.keys().any(|k| {
        k.strip_prefix(NGINX_PREFIX)
            .and_then(portcullis_config::nginx::annotation)
            .is_some_and(|a| a.support == Support::Refused)
    });

    let unknown_ours = map.keys().any(|k| {
        k.strip_prefix(PREFIX)
            .is_some_and(|name| !KNOWN.contains(&name))
    });
    let (options, problems) = route_options(&object, Some(&map), settings);
    for p in &problems {
        let _ = p.to_string();
    }
    match options {
        Some(o) => {
            assert!(!unknown_ours, "an unknown {PREFIX} annotation was accepted: {map:?}");
            assert!(!snippet, "a snippet was accepted: {map:?}");
            assert!(!problems.iter().any(|p| p.is_error()), "options despite errors");
            if let Some(r) = &o.redirect {
                assert!(r.location.starts_with("http://") || r.location.starts_with("https://"));
                assert!(!r.location.contains('$') && (300..=308).contains(&r.code), "{r:?}");
            }
            for value in [&o.upstream_host, &o.forwarded_prefix, &o.app_root].into_iter().flatten() {
                assert!(value.bytes().all(|b| b.is_ascii_graphic()), "{value:?}");
            }
            if o.rewrite_target.is_some() {
                assert!(o.regex_paths);
            }
            assert_ne!(o.max_body_size, Some(0));
            assert!(!o.read_timeout.is_zero());
            assert_ne!(o.max_connections, Some(0));
            if let Some(rl) = &o.rate_limit {
                assert!(rl.rate > 0 && rl.burst > 0, "{rl:?}");
                assert!(
                    rl.per == Duration::from_secs(1) || rl.per == Duration::from_secs(60),
                    "{rl:?}"
                );
                assert!(rl.per_second().is_finite() && rl.per_second() > 0.0);
            }
            if o.auth == AuthMode::None {
                assert!(!o.policy.needs_identity(), "identity rules without auth: {map:?}");
                assert!(!o.identity_assertion, "identity assertion without auth: {map:?}");
                assert!(
                    o.rate_limit.is_none_or(|rl| rl.key != RateLimitKey::User),
                    "per-user rate limit without auth: {map:?}"
                );
            } else {
                assert!(o.ssl_redirect, "authenticated route without ssl-redirect: {map:?}");
                let provider = o.auth.provider().expect("auth names a provider");
                assert!(
                    settings.oidc.as_ref().and_then(|o| o.provider(provider)).is_some(),
                    "auth names unknown provider {provider:?}"
                );
            }
            let _ = o.auth.to_string();
            let _ = o.backend_protocol.to_string();
        }
        None => {
            assert!(problems.iter().any(|p| p.is_error()), "rejected without an error: {problems:?}");
        }
    }
});
