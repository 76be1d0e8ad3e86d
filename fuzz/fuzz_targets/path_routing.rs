//! Request path normalization (`path::normalize`) and route matching
//! (`Snapshot::lookup`) against a small fixed snapshot, compiled once from the
//! embedded manifests below (exact, wildcard and host-less rules; Exact, Prefix and
//! ImplementationSpecific paths; a default backend).
//!
//! Properties, for every fuzzed (host, path):
//! 1. `normalize` never panics; when it accepts a path, the result is in normal form:
//!    it starts with `/`, has no empty, `.` or `..` segment except a final empty one,
//!    no backslash or NUL, and every `%` starts an upper-case escape of a reserved byte
//!    (never `/`, `\`, NUL or an unreserved character).
//! 2. Idempotence: `normalize(normalize(p)) == normalize(p)`.
//! 3. Routing a raw path (normalize, then look up) picks the same route as routing its
//!    normalized form.
//! 4. Equivalent spellings route the same: the normalized path re-spelled with `./`,
//!    `//`, `x/../` segments (dots optionally percent-encoded), percent-encoded
//!    unreserved characters and lower-case hex normalizes back to exactly the same
//!    path, hence the same route.
//! 5. The route table agrees with a brute-force reading of the Ingress rules (host
//!    tiers exact > wildcard > any, Exact before Prefix, longest element-wise prefix,
//!    then the default backend).
#![no_main]

use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use portcullis_config::path::normalize;
use portcullis_config::routes::{normalize_host, parent_domain, HostMatch, PathType, RouteId};
use portcullis_config::{compile, Manifests, Settings, Snapshot};

const FIXTURE: &str = r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: app, namespace: shop, creationTimestamp: "2025-01-01T00:00:00Z"}
spec:
  ingressClassName: portcullis
  rules:
  - host: app.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
      - {path: /api, pathType: Prefix, backend: {service: {name: api, port: {number: 80}}}}
      - {path: /api/v1/, pathType: Prefix, backend: {service: {name: api-v1, port: {number: 80}}}}
      - {path: /api/v1/users, pathType: Exact, backend: {service: {name: users, port: {number: 80}}}}
      - {path: /foo, pathType: Exact, backend: {service: {name: foo-exact, port: {number: 80}}}}
      - {path: /foo, pathType: Prefix, backend: {service: {name: foo-prefix, port: {number: 80}}}}
      - {path: "/caf\u00e9", pathType: Prefix, backend: {service: {name: cafe, port: {number: 80}}}}
      - {path: /a%20b, pathType: Exact, backend: {service: {name: space, port: {number: 80}}}}
      - {path: /static, pathType: ImplementationSpecific, backend: {service: {name: static, port: {number: 80}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: wild, namespace: shop, creationTimestamp: "2025-01-02T00:00:00Z"}
spec:
  ingressClassName: portcullis
  rules:
  - host: "*.example.com"
    http:
      paths:
      - {path: /api, pathType: Prefix, backend: {service: {name: wild-api, port: {number: 80}}}}
      - {path: /only, pathType: Exact, backend: {service: {name: wild-only, port: {number: 80}}}}
      - {path: /~user/, pathType: Prefix, backend: {service: {name: wild-user, port: {number: 80}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: any, namespace: ops, creationTimestamp: "2025-01-03T00:00:00Z"}
spec:
  ingressClassName: portcullis
  defaultBackend: {service: {name: fallback, port: {number: 80}}}
  rules:
  - http:
      paths:
      - {path: /healthz, pathType: Exact, backend: {service: {name: health, port: {number: 80}}}}
      - {path: /public, pathType: Prefix, backend: {service: {name: public, port: {number: 80}}}}
      - {path: /public/a.b/c, pathType: Prefix, backend: {service: {name: deep, port: {number: 80}}}}
"#;

/// Routes the fixture must produce (everything above, including the default).
const FIXTURE_ROUTES: usize = 16;

fn snapshot() -> &'static Snapshot {
    static SNAPSHOT: OnceLock<Snapshot> = OnceLock::new();
    SNAPSHOT.get_or_init(|| {
        let mut m = Manifests::default();
        m.add_text("fixture.yaml", FIXTURE);
        let compiled = compile(&m, &Settings::default(), 1_767_225_600);
        assert_eq!(compiled.error_count(), 0, "fixture: {:#?}", compiled.problems);
        assert_eq!(
            compiled.snapshot.routes.len(),
            FIXTURE_ROUTES,
            "fixture: {:#?}",
            compiled.problems
        );
        compiled.snapshot
    })
}

const HOSTS: &[&str] = &[
    "app.example.com",
    "APP.Example.com.:8443",
    "x.example.com",
    "a.b.example.com",
    "example.com",
    "other.org",
    "[::1]:443",
];

/// A change to the spelling of a normalized path that must not change its meaning.
#[derive(Debug, Arbitrary)]
enum Respell {
    /// `./` before segment n.
    Dot(u8),
    /// An empty segment (`//`) before segment n.
    Empty(u8),
    /// `x/../` before segment n; which `x`, and whether to spell `..` as `%2e%2E`.
    Climb(u8, u8, bool),
    /// Percent-encode the m-th unreserved character of segment n (lower-case hex if set).
    Encode(u8, u8, bool),
    /// Lower-case the hex digits of the escapes in segment n.
    LowerHex(u8),
}

/// The input, read from bytes so that seeds can be written by hand:
/// `<selector><path>\n<respell bytes>` where the selector byte picks a host from
/// `HOSTS`; with its top bit set the input is `<selector><host>\n<path>\n<respell>`
/// instead and the host is normalized with `normalize_host`. The respell bytes are
/// read with `arbitrary` as a list of [`Respell`].
struct Input {
    host: String,
    path: String,
    respell: Vec<Respell>,
}

impl Input {
    fn read(data: &[u8]) -> Option<Input> {
        let (&selector, rest) = data.split_first()?;
        let mut lines = rest.splitn(3, |b| *b == b'\n');
        let host = if selector & 0x80 != 0 {
            normalize_host(std::str::from_utf8(lines.next()?).ok()?)
        } else {
            normalize_host(HOSTS[usize::from(selector) % HOSTS.len()])
        };
        let path = std::str::from_utf8(lines.next()?).ok()?.to_string();
        let ops = lines.next().unwrap_or_default();
        let respell = Unstructured::new(ops).arbitrary().unwrap_or_default();
        Some(Input { host, path, respell })
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn is_upper_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'A'..=b'F').contains(&b)
}

/// Property 1.
fn check_normal_form(raw: &str, n: &str) {
    let b = n.as_bytes();
    assert_eq!(b.first(), Some(&b'/'), "{raw:?} -> {n:?}");
    assert!(!n.contains('\\') && !n.contains('\0'), "{raw:?} -> {n:?}");
    let segments: Vec<&str> = n[1..].split('/').collect();
    for (i, s) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        assert!(
            !(s.is_empty() && !last) && *s != "." && *s != "..",
            "{raw:?} -> {n:?}: segment {i} is {s:?}"
        );
    }
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            assert!(
                i + 2 < b.len() && is_upper_hex(b[i + 1]) && is_upper_hex(b[i + 2]),
                "{raw:?} -> {n:?}: bad escape at {i}"
            );
            let v = u8::from_str_radix(&n[i + 1..i + 3], 16).unwrap();
            assert!(
                v != 0 && v != b'/' && v != b'\\' && !is_unreserved(v),
                "{raw:?} -> {n:?}: escape of {v:#04x} left in place"
            );
            i += 3;
        } else {
            i += 1;
        }
    }
}

/// Property 5: the rules read one by one, without the table's indexes.
fn reference(s: &Snapshot, host: &str, path: &str) -> Option<RouteId> {
    let routes: Vec<_> = s.routes.routes().collect();
    let tiers: [&dyn Fn(&HostMatch) -> bool; 3] = [
        &|h| matches!(h, HostMatch::Exact(e) if e == host),
        &|h| matches!(h, HostMatch::Wildcard(w) if parent_domain(host) == Some(w.as_str())),
        &|h| matches!(h, HostMatch::Any),
    ];
    let request = path.trim_end_matches('/');
    for in_tier in tiers {
        let candidates = routes
            .iter()
            .filter(|(_, r)| in_tier(&r.host) && r.field != "spec.defaultBackend");
        let mut best: Option<(usize, RouteId)> = None;
        for (id, r) in candidates {
            if r.path_type == PathType::Exact {
                if r.path == path {
                    return Some(*id);
                }
                continue;
            }
            let key = r.path.trim_end_matches('/');
            let matches = request == key
                || (request.starts_with(key) && request.as_bytes().get(key.len()) == Some(&b'/'));
            if matches && best.is_none_or(|(len, _)| key.len() > len) {
                best = Some((key.len(), *id));
            }
        }
        if let Some((_, id)) = best {
            return Some(id);
        }
    }
    routes
        .iter()
        .find(|(_, r)| r.field == "spec.defaultBackend")
        .map(|(id, _)| *id)
}

const CLIMB_OVER: &[&str] = &["x", "%41b", "...", "caf\u{e9}", "a%20"];

/// Property 4: re-spells a normalized path without changing what it means.
fn respell(n: &str, edits: &[Respell]) -> String {
    // (text, is an original segment)
    let mut segs: Vec<(String, bool)> = n[1..].split('/').map(|s| (s.to_string(), true)).collect();
    let originals = segs.len();
    for e in edits {
        match *e {
            Respell::Encode(seg, nth, lower) => {
                let seg = &mut segs[usize::from(seg) % originals].0;
                let bytes = seg.as_bytes();
                // Positions of unreserved characters outside escapes.
                let mut spots = Vec::new();
                let mut i = 0;
                while i < bytes.len() {
                    if bytes[i] == b'%' {
                        i += 3;
                        continue;
                    }
                    if is_unreserved(bytes[i]) {
                        spots.push(i);
                    }
                    i += 1;
                }
                if spots.is_empty() {
                    continue;
                }
                let at = spots[usize::from(nth) % spots.len()];
                let escape = if lower {
                    format!("%{:02x}", bytes[at])
                } else {
                    format!("%{:02X}", bytes[at])
                };
                seg.replace_range(at..at + 1, &escape);
            }
            Respell::LowerHex(seg) => {
                let seg = &mut segs[usize::from(seg) % originals].0;
                let mut out = String::with_capacity(seg.len());
                let mut rest = seg.as_str();
                while let Some(p) = rest.find('%') {
                    out.push_str(&rest[..p]);
                    out.push('%');
                    out.push_str(&rest[p + 1..p + 3].to_ascii_lowercase());
                    rest = &rest[p + 3..];
                }
                out.push_str(rest);
                *seg = out;
            }
            _ => {}
        }
    }
    for e in edits {
        let (at, noise): (u8, Vec<&str>) = match *e {
            Respell::Dot(at) => (at, vec!["."]),
            Respell::Empty(at) => (at, vec![""]),
            Respell::Climb(at, over, encoded) => (
                at,
                vec![
                    CLIMB_OVER[usize::from(over) % CLIMB_OVER.len()],
                    if encoded { "%2e%2E" } else { ".." },
                ],
            ),
            _ => continue,
        };
        // Insert before an existing segment, never after the last one: a trailing
        // `.`, `..` or empty segment would add a trailing slash.
        let at = usize::from(at) % segs.len();
        for (k, s) in noise.into_iter().enumerate() {
            segs.insert(at + k, (s.to_string(), false));
        }
    }
    let mut out = String::from("/");
    out.push_str(&segs.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>().join("/"));
    out
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::read(data) else {
        return;
    };
    let s = snapshot();
    let host = input.host.as_str();
    let raw = input.path.as_str();
    let Ok(n) = normalize(raw) else {
        return;
    };
    let n = n.into_owned();
    check_normal_form(raw, &n);
    assert_eq!(normalize(&n).as_deref(), Ok(n.as_str()), "not idempotent: {raw:?} -> {n:?}");

    // 3: routing the raw path (normalize, look up) == routing its normalized form.
    let chosen = s.lookup(host, &n);
    let again = s.lookup(host, &normalize(&n).unwrap());
    assert_eq!(chosen, again, "{host} {raw:?} -> {n:?}");

    // 5
    let expected = reference(s, host, &n);
    assert_eq!(
        chosen,
        expected,
        "{host} {n:?}: table chose {:?}, rules say {:?}",
        chosen.map(|id| (&s.routes.route(id).host, &s.routes.route(id).path)),
        expected.map(|id| (&s.routes.route(id).host, &s.routes.route(id).path)),
    );

    // 4
    if input.respell.len() <= 16 {
        let variant = respell(&n, &input.respell);
        assert_eq!(
            normalize(&variant).as_deref(),
            Ok(n.as_str()),
            "{variant:?} means {n:?} but normalizes differently"
        );
        let routed = normalize(&variant).ok().and_then(|v| s.lookup(host, &v));
        assert_eq!(routed, chosen, "{variant:?} routes differently from {n:?}");
    }
});
