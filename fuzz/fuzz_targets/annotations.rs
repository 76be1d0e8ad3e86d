//! The Ingress annotation parsers (`annotations::route_options`,
//! `annotations::nginx_annotations`) and the unit parsers they use, fed arbitrary
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
//! - authenticated routes keep `ssl_redirect`.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use portcullis_config::annotations::{nginx_annotations, route_options, NGINX_PREFIX, PREFIX};
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

const NGINX: &[&str] = &[
    "auth-url",
    "whitelist-source-range",
    "configuration-snippet",
    "rewrite-target",
    "limit-rps",
    "ssl-redirect",
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
            Key::Nginx(i) => format!("{NGINX_PREFIX}{}", NGINX[usize::from(*i) % NGINX.len()]),
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

    for p in nginx_annotations(&object, Some(&map)) {
        let _ = p.to_string();
    }

    let unknown_ours = map.keys().any(|k| {
        k.strip_prefix(PREFIX)
            .is_some_and(|name| !KNOWN.contains(&name))
    });
    match route_options(&object, Some(&map), settings) {
        Ok(o) => {
            assert!(!unknown_ours, "an unknown {PREFIX} annotation was accepted: {map:?}");
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
        Err(problems) => {
            assert!(!problems.is_empty(), "Err with no problems");
            for p in &problems {
                assert!(p.is_error(), "a warning rejected the Ingress: {p}");
                let _ = p.to_string();
            }
        }
    }
});
