//! Sticky sessions and consistent hashing at request time (ingress-nginx's
//! `affinity: cookie` and `upstream-hash-by`): what a request brings that decides its
//! endpoint, the cookie value that names an endpoint, rendezvous hashing, and the
//! `Set-Cookie` header. The endpoint choice itself is [`crate::state::Runtime`]'s.
//!
//! The cookie value is an HMAC of the backend and endpoint address under a key only
//! the gateway holds, so a cookie reveals nothing about the cluster's addresses and
//! cannot be forged to aim at a chosen endpoint: the gateway recognises a cookie by
//! computing the value of each ready endpoint and comparing. Those values are computed
//! once per list of endpoints, not on every request.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use portcullis_config::snapshot::{Affinity, HashPart, SameSite, StickyCookie};
use ring::hmac;

/// The key of sticky-session cookie values, and the values it gave each backend's
/// endpoints.
pub struct StickyKey {
    key: hmac::Key,
    /// By backend name: recognising a cookie is then one lookup instead of an HMAC per
    /// endpoint on every request.
    tables: Mutex<HashMap<String, Arc<Table>>>,
}

/// The cookie values of one backend's endpoints, valid while the list is the same.
struct Table {
    endpoints: Vec<SocketAddr>,
    values: HashMap<Tag, SocketAddr>,
}

/// The 128 bits of HMAC a cookie value shows in hex.
type Tag = [u8; 16];

/// Backends remembered at most; past it, the tables start over.
const TABLES: usize = 1024;

impl StickyKey {
    /// A key of this process only, when no shared secret is configured. Replicas of
    /// the gateway then each have their own, so a client that reaches another replica
    /// gets a new cookie there, and a restart re-pins every session once.
    pub fn random() -> Self {
        let rng = ring::rand::SystemRandom::new();
        match hmac::Key::generate(hmac::HMAC_SHA256, &rng) {
            Ok(key) => StickyKey::new(key),
            // Only if the OS has no randomness to give, when TLS cannot work either:
            // the key then only hides endpoint addresses less well.
            Err(_) => {
                let seed = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                tracing::warn!("no system randomness: sticky-session cookies use a clock-derived key");
                StickyKey::new(hmac::Key::new(
                    hmac::HMAC_SHA256,
                    &[&seed.to_le_bytes()[..], &std::process::id().to_le_bytes()].concat(),
                ))
            }
        }
    }

    /// A key derived from a secret every replica shares (the first `oidc.sessionKeys`
    /// entry), so a cookie set by one replica is recognised by all. The derivation
    /// keeps the session key itself from being used for a second purpose; rotating
    /// that key moves each session to a new endpoint once.
    pub fn derived(secret: &[u8]) -> Self {
        let outer = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let derived = hmac::sign(&outer, b"portcullis sticky-session cookies v1");
        StickyKey::new(hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()))
    }

    fn new(key: hmac::Key) -> Self {
        StickyKey {
            key,
            tables: Mutex::default(),
        }
    }

    /// The cookie value that names `endpoint` of `backend` (`namespace/service:port`):
    /// 128 bits of HMAC-SHA256 in hex, so different Services' cookies never collide.
    pub fn cookie_value(&self, backend: &str, endpoint: SocketAddr) -> String {
        use std::fmt::Write;
        self.tag(backend, endpoint)
            .iter()
            .fold(String::with_capacity(32), |mut hex, b| {
                let _ = write!(hex, "{b:02x}");
                hex
            })
    }

    fn tag(&self, backend: &str, endpoint: SocketAddr) -> Tag {
        let mac = hmac::sign(&self.key, format!("{backend}\u{0}{endpoint}").as_bytes());
        let mut tag = [0u8; 16];
        tag.copy_from_slice(&mac.as_ref()[..16]);
        tag
    }

    /// The endpoint among `endpoints` that `value` names, if any (an endpoint no longer
    /// ready, another process's cookie or a forged value name none).
    pub fn endpoint_for(&self, backend: &str, endpoints: &[SocketAddr], value: &str) -> Option<SocketAddr> {
        let tag = parse_tag(value)?;
        self.table(backend, endpoints).values.get(&tag).copied()
    }

    /// The values of `endpoints`, made again when the backend's list changed.
    fn table(&self, backend: &str, endpoints: &[SocketAddr]) -> Arc<Table> {
        let lock = || self.tables.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(table) = lock().get(backend).filter(|t| t.endpoints == endpoints) {
            return table.clone();
        }
        let table = Arc::new(Table {
            endpoints: endpoints.to_vec(),
            values: endpoints.iter().map(|e| (self.tag(backend, *e), *e)).collect(),
        });
        let mut tables = lock();
        if tables.len() >= TABLES && !tables.contains_key(backend) {
            tables.clear();
        }
        tables.insert(backend.to_string(), table.clone());
        table
    }
}

/// The tag a cookie value shows: exactly 32 lowercase hex digits, as `cookie_value`
/// writes them.
fn parse_tag(value: &str) -> Option<Tag> {
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    let bytes = value.as_bytes();
    if bytes.len() != 32 {
        return None;
    }
    let mut tag = [0u8; 16];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        tag[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(tag)
}

/// What a request brings to the endpoint choice, read before the request is handed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    Sticky {
        /// The sticky cookie's value, if the client sent one.
        cookie: Option<String>,
        /// For `session-cookie-conditional-samesite-none`.
        user_agent: Option<String>,
    },
    /// The `upstream-hash-by` key's bytes.
    Hash(Vec<u8>),
}

impl Balance {
    /// `target`: the request target as the client sent it (`$request_uri`); `client`:
    /// the client address after `trustedProxies` (`$remote_addr`).
    pub fn for_request(
        affinity: Option<&Affinity>,
        headers: &http::HeaderMap,
        target: &str,
        client: IpAddr,
    ) -> Balance {
        match affinity {
            None => Balance::RoundRobin,
            Some(Affinity::Cookie(c)) => Balance::Sticky {
                cookie: cookie(headers, &c.name),
                user_agent: headers
                    .get(http::header::USER_AGENT)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
            },
            Some(Affinity::Hash(parts)) => Balance::Hash(hash_key(parts, headers, target, client)),
        }
    }
}

/// The first cookie called `name`; nginx's `$cookie_NAME` also takes the first.
fn cookie(headers: &http::HeaderMap, name: &str) -> Option<String> {
    crate::auth::session::cookie_pairs(headers)
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// The bytes an `upstream-hash-by` key stands for. An absent header or cookie is empty,
/// as in nginx, so such requests share one endpoint.
pub fn hash_key(parts: &[HashPart], headers: &http::HeaderMap, target: &str, client: IpAddr) -> Vec<u8> {
    let mut key = Vec::new();
    for part in parts {
        match part {
            HashPart::Text(t) => key.extend_from_slice(t.as_bytes()),
            HashPart::RequestUri => key.extend_from_slice(target.as_bytes()),
            HashPart::RemoteAddr => key.extend_from_slice(client.to_string().as_bytes()),
            HashPart::Header(name) => {
                // nginx joins repeated headers with ", " for $http_NAME.
                let values: Vec<&[u8]> = headers
                    .get_all(name.as_str())
                    .iter()
                    .map(|v| v.as_bytes())
                    .collect();
                key.extend_from_slice(&values.join(&b", "[..]));
            }
            HashPart::Cookie(name) => {
                if let Some(v) = cookie(headers, name) {
                    key.extend_from_slice(v.as_bytes());
                }
            }
        }
    }
    key
}

/// Rendezvous (highest random weight) hashing: each endpoint scores SHA-256 of the key
/// and its address; the highest score among those not skipped wins. When an endpoint
/// goes, only its keys move, and every replica of the gateway agrees without sharing
/// state.
pub fn rendezvous(
    key: &[u8],
    endpoints: &[SocketAddr],
    skip: impl Fn(&SocketAddr) -> bool,
) -> Option<SocketAddr> {
    endpoints
        .iter()
        .filter(|e| !skip(e))
        .max_by_key(|e| {
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
            ctx.update(key);
            ctx.update(&[0]);
            ctx.update(e.to_string().as_bytes());
            let digest = ctx.finish();
            let mut score = [0u8; 8];
            score.copy_from_slice(&digest.as_ref()[..8]);
            (u64::from_be_bytes(score), **e)
        })
        .copied()
}

/// Whether a browser accepts `SameSite=None` cookies: the clients Chromium lists as
/// rejecting them, matched as ingress-nginx's `same_site.lua` does.
pub fn same_site_none_compatible(user_agent: &str) -> bool {
    let has = |s: &str| user_agent.contains(s);
    !(has("Chrome/4")
        || has("Chrome/5")
        || has("Chrome/6")
        || has("CPU iPhone OS 12")
        || has("iPad; CPU OS 12")
        || (has("Macintosh") && has("Intel Mac OS X 10_14") && has("Safari") && !has("Chrome")))
}

/// The `Set-Cookie` value for a new sticky cookie, with ingress-nginx's attributes:
/// always `HttpOnly`; `Path` the annotation's or the route's; `Secure` as annotated or
/// when the request came over HTTPS; `Expires` `now` plus the annotated seconds.
pub fn set_cookie(
    cookie: &StickyCookie,
    value: &str,
    route_path: &str,
    tls: bool,
    user_agent: Option<&str>,
    now: i64,
) -> String {
    let path = cookie.path.as_deref().unwrap_or(route_path);
    let mut out = format!("{}={value}; Path={path}", cookie.name);
    if let Some(domain) = &cookie.domain {
        out.push_str(&format!("; Domain={domain}"));
    }
    if let Some(seconds) = cookie.expires {
        let at = i64::try_from(seconds).map_or(i64::MAX, |s| now.saturating_add(s));
        let at = jiff::Timestamp::from_second(at).unwrap_or(jiff::Timestamp::MAX);
        if let Ok(date) = jiff::fmt::rfc2822::DateTimePrinter::new().timestamp_to_rfc9110_string(&at) {
            out.push_str(&format!("; Expires={date}"));
        }
    }
    if let Some(seconds) = cookie.max_age {
        out.push_str(&format!("; Max-Age={seconds}"));
    }
    if cookie.secure.unwrap_or(tls) {
        out.push_str("; Secure");
    }
    out.push_str("; HttpOnly");
    let same_site = cookie.same_site.filter(|s| {
        !(*s == SameSite::None
            && cookie.conditional_same_site_none
            && !same_site_none_compatible(user_agent.unwrap_or("")))
    });
    if let Some(s) = same_site {
        out.push_str(&format!("; SameSite={s}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: u16) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8 + 1], 8080)))
            .collect()
    }

    #[test]
    fn cookie_values_name_one_endpoint_and_hide_its_address() {
        let key = StickyKey::random();
        let endpoints = addrs(5);
        for e in &endpoints {
            let v = key.cookie_value("ns/web:80", *e);
            assert_eq!(v.len(), 32);
            assert!(!v.contains("10.0.0"));
            assert_eq!(key.endpoint_for("ns/web:80", &endpoints, &v), Some(*e));
            // Another Service's cookie, or another process's, names nothing here.
            assert_eq!(key.endpoint_for("ns/api:80", &endpoints, &v), None);
            assert_eq!(
                StickyKey::random().endpoint_for("ns/web:80", &endpoints, &v),
                None
            );
        }
        // Replicas sharing a session key agree; another secret does not.
        let shared = StickyKey::derived(b"session key");
        let v = shared.cookie_value("ns/web:80", endpoints[2]);
        let other_replica = StickyKey::derived(b"session key");
        assert_eq!(
            other_replica.endpoint_for("ns/web:80", &endpoints, &v),
            Some(endpoints[2])
        );
        let other_secret = StickyKey::derived(b"another key");
        assert_eq!(other_secret.endpoint_for("ns/web:80", &endpoints, &v), None);
        let gone = key.cookie_value("ns/web:80", endpoints[0]);
        assert_eq!(key.endpoint_for("ns/web:80", &endpoints[1..], &gone), None);
        assert_eq!(key.endpoint_for("ns/web:80", &endpoints, "forged"), None);
        // Only the exact form names an endpoint.
        let v = key.cookie_value("ns/web:80", endpoints[1]);
        assert_eq!(key.endpoint_for("ns/web:80", &endpoints, &v), Some(endpoints[1]));
        for other in [
            v.to_uppercase(),
            format!("{v}0"),
            v[1..].to_string(),
            format!("+{}", &v[1..]),
        ] {
            assert_eq!(key.endpoint_for("ns/web:80", &endpoints, &other), None, "{other}");
        }
    }

    #[test]
    fn cookie_values_are_computed_once_per_list_of_endpoints() {
        let key = StickyKey::random();
        let endpoints = addrs(50);
        let first = key.table("ns/web:80", &endpoints);
        assert!(Arc::ptr_eq(&first, &key.table("ns/web:80", &endpoints)));
        assert_eq!(first.values.len(), 50);
        // A changed list (an endpoint added, removed or replaced) makes a new table.
        let mut changed = endpoints.clone();
        changed[7] = SocketAddr::from(([10, 9, 9, 9], 8080));
        let second = key.table("ns/web:80", &changed);
        assert!(!Arc::ptr_eq(&first, &second));
        let moved = key.cookie_value("ns/web:80", changed[7]);
        assert_eq!(key.endpoint_for("ns/web:80", &changed, &moved), Some(changed[7]));
        assert_eq!(key.endpoint_for("ns/web:80", &endpoints, &moved), None);
        // Each backend has its own table, and their number stays bounded.
        for i in 0..TABLES + 10 {
            key.table(&format!("ns/svc{i}:80"), &endpoints[..1]);
        }
        assert!(key.tables.lock().unwrap().len() <= TABLES);
    }

    #[test]
    fn rendezvous_is_stable_spread_and_moves_only_the_removed_keys() {
        let endpoints = addrs(4);
        let mut counts = std::collections::HashMap::new();
        let mut before = Vec::new();
        for i in 0..4000 {
            let key = format!("user-{i}");
            let e = rendezvous(key.as_bytes(), &endpoints, |_| false).unwrap();
            assert_eq!(rendezvous(key.as_bytes(), &endpoints, |_| false), Some(e));
            *counts.entry(e).or_insert(0) += 1;
            before.push(e);
        }
        for e in &endpoints {
            let n = counts[e];
            assert!((800..1200).contains(&n), "{e}: {n} of 4000");
        }
        // Skipping (or removing) one endpoint moves only its own keys.
        for (i, was) in before.iter().enumerate() {
            let key = format!("user-{i}");
            let now = rendezvous(key.as_bytes(), &endpoints, |e| *e == endpoints[0]).unwrap();
            if *was != endpoints[0] {
                assert_eq!(now, *was);
            } else {
                assert_ne!(now, endpoints[0]);
            }
        }
        assert_eq!(rendezvous(b"k", &endpoints, |_| true), None);
    }

    #[test]
    fn hash_keys_read_the_request() {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-user", "alice".parse().unwrap());
        headers.insert(http::header::COOKIE, "a=1; sid=xyz".parse().unwrap());
        let parts =
            portcullis_config::affinity::hash_key("$remote_addr|$http_x_user|$cookie_sid|$request_uri")
                .unwrap();
        let key = hash_key(&parts, &headers, "/p?q=1", IpAddr::from([192, 0, 2, 7]));
        assert_eq!(key, b"192.0.2.7|alice|xyz|/p?q=1");
        let key = hash_key(&parts, &http::HeaderMap::new(), "/", IpAddr::from([192, 0, 2, 7]));
        assert_eq!(key, b"192.0.2.7|||/");
    }

    #[test]
    fn cookie_attributes_as_ingress_nginx_sets_them() {
        let mut c = StickyCookie::new();
        assert_eq!(
            set_cookie(&c, "v", "/app", false, None, 0),
            "INGRESSCOOKIE=v; Path=/app; HttpOnly"
        );
        assert_eq!(
            set_cookie(&c, "v", "/", true, None, 0),
            "INGRESSCOOKIE=v; Path=/; Secure; HttpOnly"
        );
        c.name = "route".into();
        c.path = Some("/".into());
        c.domain = Some("example.com".into());
        c.expires = Some(172800);
        c.max_age = Some(172800);
        c.secure = Some(true);
        c.same_site = Some(SameSite::None);
        assert_eq!(
            set_cookie(&c, "v", "/app", false, None, 1),
            "route=v; Path=/; Domain=example.com; Expires=Sat, 03 Jan 1970 00:00:01 GMT; Max-Age=172800; Secure; HttpOnly; SameSite=None"
        );
        c.secure = Some(false);
        c.expires = None;
        c.max_age = None;
        c.domain = None;
        c.conditional_same_site_none = true;
        let old_chrome = "Mozilla/5.0 (X11) AppleWebKit/537.36 Chrome/62.0.3202.94 Safari/537.36";
        let new_chrome = "Mozilla/5.0 (X11) AppleWebKit/537.36 Chrome/120.0.0.0 Safari/537.36";
        assert_eq!(
            set_cookie(&c, "v", "/", true, Some(old_chrome), 0),
            "route=v; Path=/; HttpOnly"
        );
        assert_eq!(
            set_cookie(&c, "v", "/", true, Some(new_chrome), 0),
            "route=v; Path=/; HttpOnly; SameSite=None"
        );
        // Far-future expiry is clamped rather than dropped.
        c.expires = Some(u64::MAX);
        let far = set_cookie(&c, "v", "/", true, None, 0);
        assert!(far.contains("Expires=Thu, 30 Dec 9999"), "{far}");
    }

    #[test]
    fn same_site_none_incompatible_clients() {
        assert!(!same_site_none_compatible(
            "Mozilla/5.0 (iPhone; CPU iPhone OS 12_0 like Mac OS X) AppleWebKit/605.1.15 Safari/604.1"
        ));
        assert!(!same_site_none_compatible(
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/13.1 Safari/605.1.15"
        ));
        assert!(same_site_none_compatible(
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 Version/17.0 Safari/605.1.15"
        ));
        assert!(same_site_none_compatible(""));
    }
}

#[cfg(test)]
mod runtime_tests {
    //! The endpoint choice of [`Runtime::pick_sticky`] and [`Runtime::pick_hashed`].
    use super::StickyKey;
    use crate::state::{Ejections, Runtime, Upstream};
    use portcullis_config::snapshot::{Backend, BackendId, BackendTarget};
    use portcullis_config::Snapshot;

    fn runtime(endpoints: &[std::net::SocketAddr]) -> Runtime {
        let snapshot = Snapshot {
            backends: vec![Backend {
                namespace: "ns".into(),
                service: "web".into(),
                port: "80".into(),
                target: BackendTarget::Endpoints(endpoints.to_vec()),
            }],
            ..Snapshot::default()
        };
        let cert = crate::tls::generate_default_certificate().unwrap();
        Runtime::new(snapshot, &cert, 1)
    }

    fn addrs() -> Vec<std::net::SocketAddr> {
        (1..=3)
            .map(|i| std::net::SocketAddr::from(([10, 0, 0, i], 80)))
            .collect()
    }

    #[test]
    fn sticky_cookies_keep_their_endpoint_and_new_ones_are_set_only_on_change() {
        let endpoints = addrs();
        let rt = runtime(&endpoints);
        let key = StickyKey::random();
        let ejections = Ejections::default();
        let id = BackendId(0);
        let (first, _, cookie) = rt.pick_sticky(id, &ejections, &key, None, false).unwrap();
        let cookie = cookie.expect("a new session gets a cookie");
        for _ in 0..10 {
            let (again, n, new) = rt
                .pick_sticky(id, &ejections, &key, Some(&cookie), false)
                .unwrap();
            assert_eq!((again.clone(), n, new), (first.clone(), 3, None));
        }
        // Unknown or forged: round robin, with a cookie for the endpoint chosen.
        let (other, _, new) = rt.pick_sticky(id, &ejections, &key, Some("0123"), false).unwrap();
        let Upstream::Address(a) = other else {
            unreachable!()
        };
        assert_eq!(new, Some(key.cookie_value("ns/web:80", a)));
    }

    #[test]
    fn an_ejected_endpoint_moves_balanced_sessions_but_not_persistent_ones() {
        let endpoints = addrs();
        let rt = runtime(&endpoints);
        let key = StickyKey::random();
        let ejections = Ejections::default();
        let id = BackendId(0);
        let cookie = key.cookie_value("ns/web:80", endpoints[1]);
        ejections.eject(endpoints[1]);
        // Persistent (keep_ejected): stays, no new cookie.
        let (u, _, new) = rt.pick_sticky(id, &ejections, &key, Some(&cookie), true).unwrap();
        assert_eq!((u, new), (Upstream::Address(endpoints[1]), None));
        // Balanced: another endpoint, and a cookie naming it.
        let (u, _, new) = rt
            .pick_sticky(id, &ejections, &key, Some(&cookie), false)
            .unwrap();
        let Upstream::Address(a) = u else { unreachable!() };
        assert_ne!(a, endpoints[1]);
        assert_eq!(new, Some(key.cookie_value("ns/web:80", a)));
        // An endpoint gone from the snapshot moves the session in either mode.
        let rt = runtime(&[endpoints[0], endpoints[2]]);
        let (_, _, new) = rt
            .pick_sticky(id, &Ejections::default(), &key, Some(&cookie), true)
            .unwrap();
        assert!(new.is_some());
    }

    #[test]
    fn hashing_skips_ejected_endpoints_and_comes_back() {
        let endpoints = addrs();
        let rt = runtime(&endpoints);
        let ejections = Ejections::default();
        let id = BackendId(0);
        let (home, n) = rt.pick_hashed(id, &ejections, b"alice").unwrap();
        assert_eq!(n, 3);
        assert_eq!(rt.pick_hashed(id, &ejections, b"alice").unwrap().0, home);
        let Upstream::Address(a) = home else {
            unreachable!()
        };
        ejections.eject(a);
        assert_ne!(rt.pick_hashed(id, &ejections, b"alice").unwrap().0, home);
        // All ejected: the key's own endpoint still, rather than none.
        for e in &endpoints {
            ejections.eject(*e);
        }
        assert_eq!(rt.pick_hashed(id, &ejections, b"alice").unwrap().0, home);
    }
}
