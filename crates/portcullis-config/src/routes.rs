//! The route table and its matching rules, exactly as the Kubernetes Ingress
//! documentation specifies them. IO-free: a (host, normalized path) in, a route out.
//!
//! Hosts: an exact host beats a wildcard (`*.example.com` matches exactly one extra
//! label), which beats rules without a host. Paths: an `Exact` path matches only
//! itself; a `Prefix` path matches element-wise (`/foo` matches `/foo`, `/foo/` and
//! `/foo/bar`, never `/foobar`; trailing slashes are ignored on both sides). The longest
//! match wins, and `Exact` beats `Prefix` of the same length. Host tiers are tried in
//! order of specificity and the first tier with a matching path wins (as Gateway API
//! precedence orders them); when nothing matches, `spec.defaultBackend` serves.
//!
//! Lookup costs one hash probe per path segment, whatever the size of the table.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::snapshot::{BackendId, RouteOptions};

/// Index of a route in [`RouteTable::routes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteId(pub usize);

/// `pathType` of an Ingress path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PathType {
    Exact,
    Prefix,
    /// Matched as `Prefix`, as this implementation documents.
    ImplementationSpecific,
}

impl PathType {
    /// How the path is matched.
    pub fn is_exact(self) -> bool {
        self == PathType::Exact
    }
}

impl fmt::Display for PathType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathType::Exact => "Exact",
            PathType::Prefix => "Prefix",
            PathType::ImplementationSpecific => "ImplementationSpecific",
        })
    }
}

/// Which hosts a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostMatch {
    /// `app.example.com`
    Exact(String),
    /// `*.example.com`, stored as `example.com`.
    Wildcard(String),
    /// A rule without `host`.
    Any,
}

impl HostMatch {
    /// Parses a validated Ingress host.
    pub fn parse(host: &str) -> HostMatch {
        match host.strip_prefix("*.") {
            Some(suffix) => HostMatch::Wildcard(suffix.to_string()),
            None if host.is_empty() => HostMatch::Any,
            None => HostMatch::Exact(host.to_string()),
        }
    }

    /// Whether this pattern matches a (lower-case, port-less) request host.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Exact(h) => h == host,
            HostMatch::Wildcard(suffix) => parent_domain(host) == Some(suffix.as_str()),
            HostMatch::Any => true,
        }
    }
}

impl fmt::Display for HostMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostMatch::Exact(h) => f.write_str(h),
            HostMatch::Wildcard(s) => write!(f, "*.{s}"),
            HostMatch::Any => f.write_str("*"),
        }
    }
}

/// `bar.foo.com` -> `foo.com`; a single label has no parent.
pub fn parent_domain(host: &str) -> Option<&str> {
    host.split_once('.')
        .map(|(_, rest)| rest)
        .filter(|r| !r.is_empty())
}

/// Lower-cases a request's host and removes the port and a trailing dot. Borrowed
/// when it is lower-case already, as nearly every client sends it.
pub fn normalize_host(authority: &str) -> std::borrow::Cow<'_, str> {
    // Byte scans: this runs for every request, on a few bytes, where the general
    // string searchers cost more than the search.
    let bytes = authority.as_bytes();
    let end = if bytes.first() == Some(&b'[') {
        // IPv6 literal: keep the brackets, drop the port.
        bytes
            .iter()
            .position(|&b| b == b']')
            .map_or(bytes.len(), |i| i + 1)
    } else {
        bytes.iter().rposition(|&b| b == b':').unwrap_or(bytes.len())
    };
    let mut host = &authority[..end];
    while let Some(shorter) = host.strip_suffix('.') {
        host = shorter;
    }
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

/// Who an Ingress is. Made only by [`IngressKey::new`], so the label always agrees
/// with the namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IngressKey {
    pub namespace: String,
    pub name: String,
    /// `namespace/name`, built once: metrics and logs name the Ingress of every
    /// request, and cloning this costs no allocation.
    label: Arc<str>,
}

impl IngressKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        let (namespace, name) = (namespace.into(), name.into());
        let label = format!("{namespace}/{name}").into();
        IngressKey {
            namespace,
            name,
            label,
        }
    }

    /// `namespace/name`.
    pub fn label(&self) -> &Arc<str> {
        &self.label
    }
}

impl fmt::Display for IngressKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label)
    }
}

/// One served path of one Ingress rule (or an Ingress's default backend).
#[derive(Debug, Clone)]
pub struct Route {
    pub ingress: IngressKey,
    pub host: HostMatch,
    /// The path as written in the Ingress (`/` for a default backend).
    pub path: String,
    pub path_type: PathType,
    /// Where in the Ingress it is: `spec.rules[0].http.paths[1]` or `spec.defaultBackend`.
    pub field: String,
    pub backend: BackendId,
    pub options: Arc<RouteOptions>,
    /// The host is named in some served Ingress's `spec.tls`: plain HTTP redirects.
    pub tls: bool,
    /// The path as a regular expression (`nginx.ingress.kubernetes.io/use-regex` or
    /// `rewrite-target`); see [`crate::rewrite::path_regex`].
    pub regex: Option<regex::Regex>,
    /// A canary Ingress that takes some of this route's requests; see
    /// [`crate::canary`]. Boxed: a canary holds a route of its own.
    pub canary: Option<Box<crate::snapshot::Canary>>,
    /// The backend of the Ingress's `nginx.ingress.kubernetes.io/default-backend`
    /// Service (its first port, as ingress-nginx takes): it serves the route while
    /// `backend` has no ready endpoints and answers the `custom-http-errors`.
    pub fallback: Option<BackendId>,
}

/// Hosts and paths to routes. Looked up several times per request (a prefix path once
/// per segment), with a fast hash: the keys come from the configuration, so a client
/// choosing what to look up cannot crowd a bucket.
type Map<V> = HashMap<String, V, foldhash::fast::RandomState>;

#[derive(Debug, Clone, Default)]
struct PathTable {
    exact: Map<RouteId>,
    /// Prefix paths without trailing slashes; the root is the empty string.
    prefix: Map<RouteId>,
    /// Regular-expression paths, longest pattern first (ties in insertion order), as
    /// ingress-nginx orders its `location ~*` blocks.
    regex: Vec<RegexPath>,
}

#[derive(Debug, Clone)]
struct RegexPath {
    pattern: String,
    regex: regex::Regex,
    id: RouteId,
}

impl PathTable {
    fn lookup(&self, path: &str) -> Option<RouteId> {
        let plain = self.lookup_plain(path);
        if self.regex.is_empty() {
            return plain.map(|(id, _)| id);
        }
        // A regex beats a plain match whose path is not longer than its pattern, the
        // order ingress-nginx gives the locations of a host that uses regexes.
        let plain_len = plain.map_or(0, |(_, len)| len);
        self.regex
            .iter()
            .take_while(|r| r.pattern.len() >= plain_len)
            .find(|r| r.regex.is_match(path))
            .map(|r| r.id)
            .or(plain.map(|(id, _)| id))
    }

    /// The exact or prefix match and the length of the path it matched on.
    fn lookup_plain(&self, path: &str) -> Option<(RouteId, usize)> {
        if let Some(id) = self.exact.get(path) {
            return Some((*id, path.len()));
        }
        if self.prefix.is_empty() {
            return None;
        }
        let mut key = path.trim_end_matches('/');
        loop {
            if let Some(id) = self.prefix.get(key) {
                return Some((*id, key.len().max(1)));
            }
            match key.rfind('/') {
                Some(i) => key = &key[..i],
                None => return None,
            }
        }
    }

    fn slot(&mut self, path_type: PathType) -> &mut Map<RouteId> {
        if path_type.is_exact() {
            &mut self.exact
        } else {
            &mut self.prefix
        }
    }
}

/// The key a path is stored under: Prefix paths lose their trailing slashes.
fn path_key(path: &str, path_type: PathType) -> String {
    if path_type.is_exact() {
        path.to_string()
    } else {
        path.trim_end_matches('/').to_string()
    }
}

/// All routes of a snapshot, indexed for lookup.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    exact_hosts: Map<PathTable>,
    wildcard_hosts: Map<PathTable>,
    any_host: PathTable,
    default_route: Option<RouteId>,
}

/// A route could not be added because an earlier one holds the same host and path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conflict(pub RouteId);

impl RouteTable {
    /// Adds a route; the first route to claim a host+path keeps it.
    pub fn insert(&mut self, route: Route) -> Result<RouteId, Conflict> {
        let id = RouteId(self.routes.len());
        let table = match &route.host {
            HostMatch::Exact(h) => self.exact_hosts.entry(h.clone()).or_default(),
            HostMatch::Wildcard(s) => self.wildcard_hosts.entry(s.clone()).or_default(),
            HostMatch::Any => &mut self.any_host,
        };
        if let Some(regex) = &route.regex {
            if let Some(existing) = table.regex.iter().find(|r| r.pattern == route.path) {
                return Err(Conflict(existing.id));
            }
            let at = table
                .regex
                .partition_point(|r| r.pattern.len() >= route.path.len());
            table.regex.insert(
                at,
                RegexPath {
                    pattern: route.path.clone(),
                    regex: regex.clone(),
                    id,
                },
            );
            self.routes.push(route);
            return Ok(id);
        }
        let slot = table.slot(route.path_type);
        match slot.entry(path_key(&route.path, route.path_type)) {
            std::collections::hash_map::Entry::Occupied(e) => Err(Conflict(*e.get())),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(id);
                self.routes.push(route);
                Ok(id)
            }
        }
    }

    /// Sets the route for requests that match no rule; the first one set keeps it.
    pub fn set_default(&mut self, route: Route) -> Result<RouteId, Conflict> {
        if let Some(existing) = self.default_route {
            return Err(Conflict(existing));
        }
        let id = RouteId(self.routes.len());
        self.routes.push(route);
        self.default_route = Some(id);
        Ok(id)
    }

    /// Finds the route for a normalized host (see [`normalize_host`]) and a normalized
    /// path (see [`crate::path::normalize`]).
    pub fn lookup(&self, host: &str, path: &str) -> Option<RouteId> {
        if let Some(id) = self.exact_hosts.get(host).and_then(|t| t.lookup(path)) {
            return Some(id);
        }
        if let Some(parent) = parent_domain(host) {
            if let Some(id) = self.wildcard_hosts.get(parent).and_then(|t| t.lookup(path)) {
                return Some(id);
            }
        }
        self.any_host.lookup(path).or(self.default_route)
    }

    /// Whether some rule names exactly this host.
    pub fn serves_host(&self, host: &str) -> bool {
        self.exact_hosts.contains_key(host)
    }

    /// The route stored for exactly this host, path and path type (or regex pattern),
    /// without matching a request against it: how a canary finds its main route.
    pub fn find(&self, host: &HostMatch, path: &str, path_type: PathType) -> Option<RouteId> {
        let table = match host {
            HostMatch::Exact(h) => self.exact_hosts.get(h)?,
            HostMatch::Wildcard(s) => self.wildcard_hosts.get(s)?,
            HostMatch::Any => &self.any_host,
        };
        if let Some(r) = table.regex.iter().find(|r| r.pattern == path) {
            return Some(r.id);
        }
        let slot = if path_type.is_exact() {
            &table.exact
        } else {
            &table.prefix
        };
        slot.get(&path_key(path, path_type)).copied()
    }

    /// The route for requests that match no rule, if an Ingress has a defaultBackend.
    pub fn default_route(&self) -> Option<RouteId> {
        self.default_route
    }

    pub fn route(&self, id: RouteId) -> &Route {
        &self.routes[id.0]
    }

    pub fn get(&self, id: RouteId) -> Option<&Route> {
        self.routes.get(id.0)
    }

    pub fn routes(&self) -> impl Iterator<Item = (RouteId, &Route)> {
        self.routes.iter().enumerate().map(|(i, r)| (RouteId(i), r))
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    pub(crate) fn routes_mut(&mut self) -> &mut [Route] {
        &mut self.routes
    }

    pub(crate) fn route_mut(&mut self, id: RouteId) -> &mut Route {
        &mut self.routes[id.0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: &str, path: &str, path_type: PathType, tag: usize) -> Route {
        Route {
            ingress: IngressKey::new("ns", format!("r{tag}")),
            host: HostMatch::parse(host),
            path: path.into(),
            path_type,
            field: String::new(),
            backend: BackendId(tag),
            options: Arc::new(RouteOptions::default()),
            tls: false,
            regex: None,
            canary: None,
            fallback: None,
        }
    }

    /// Builds a table of (pathType, path) on any host; returns the index of the matching
    /// entry, if any.
    fn matching(paths: &[(PathType, &str)], request: &str) -> Option<usize> {
        let mut t = RouteTable::default();
        for (i, (pt, p)) in paths.iter().enumerate() {
            t.insert(route("", p, *pt, i)).unwrap();
        }
        t.lookup("example.com", request).map(|id| t.route(id).backend.0)
    }

    use PathType::{Exact, ImplementationSpecific, Prefix};

    /// The table of examples in the Kubernetes Ingress documentation ("Examples" under
    /// "Path types"), row by row.
    #[test]
    fn kubernetes_documentation_examples() {
        assert_eq!(matching(&[(Prefix, "/")], "/"), Some(0));
        assert_eq!(matching(&[(Prefix, "/")], "/anything/at/all"), Some(0));
        assert_eq!(matching(&[(Exact, "/foo")], "/foo"), Some(0));
        assert_eq!(matching(&[(Exact, "/foo")], "/bar"), None);
        assert_eq!(matching(&[(Exact, "/foo")], "/foo/"), None);
        assert_eq!(matching(&[(Exact, "/foo/")], "/foo"), None);
        assert_eq!(matching(&[(Prefix, "/foo")], "/foo"), Some(0));
        assert_eq!(matching(&[(Prefix, "/foo")], "/foo/"), Some(0));
        assert_eq!(matching(&[(Prefix, "/foo/")], "/foo"), Some(0));
        assert_eq!(matching(&[(Prefix, "/foo/")], "/foo/"), Some(0));
        assert_eq!(matching(&[(Prefix, "/aaa/bb")], "/aaa/bbb"), None);
        assert_eq!(matching(&[(Prefix, "/aaa/bbb")], "/aaa/bbb"), Some(0));
        assert_eq!(matching(&[(Prefix, "/aaa/bbb/")], "/aaa/bbb"), Some(0));
        assert_eq!(matching(&[(Prefix, "/aaa/bbb")], "/aaa/bbb/"), Some(0));
        assert_eq!(matching(&[(Prefix, "/aaa/bbb")], "/aaa/bbb/ccc"), Some(0));
        assert_eq!(matching(&[(Prefix, "/aaa/bbb")], "/aaa/bbbxyz"), None);
        assert_eq!(matching(&[(Prefix, "/"), (Prefix, "/aaa")], "/aaa/ccc"), Some(1));
        assert_eq!(
            matching(
                &[(Prefix, "/"), (Prefix, "/aaa"), (Prefix, "/aaa/bbb")],
                "/aaa/bbb"
            ),
            Some(2)
        );
        assert_eq!(
            matching(&[(Prefix, "/"), (Prefix, "/aaa"), (Prefix, "/aaa/bbb")], "/ccc"),
            Some(0)
        );
        assert_eq!(matching(&[(Prefix, "/aaa")], "/ccc"), None);
        assert_eq!(matching(&[(Prefix, "/foo"), (Exact, "/foo")], "/foo"), Some(1));
        assert_eq!(matching(&[(Exact, "/foo"), (Prefix, "/foo")], "/foo"), Some(0));
    }

    #[test]
    fn longest_match_and_exact_precedence() {
        let paths = [
            (Prefix, "/a"),
            (Prefix, "/a/b"),
            (Exact, "/a/b/c"),
            (Prefix, "/a/b/c/d"),
        ];
        assert_eq!(matching(&paths, "/a/b/c"), Some(2));
        assert_eq!(matching(&paths, "/a/b/c/"), Some(1));
        assert_eq!(matching(&paths, "/a/b/cd"), Some(1));
        assert_eq!(matching(&paths, "/a/b/c/d/e"), Some(3));
        assert_eq!(matching(&paths, "/ab"), None);
        // ImplementationSpecific is Prefix here.
        assert_eq!(matching(&[(ImplementationSpecific, "/x")], "/x/y"), Some(0));
        assert_eq!(matching(&[(ImplementationSpecific, "/x")], "/xy"), None);
    }

    #[test]
    fn host_precedence() {
        let mut t = RouteTable::default();
        t.insert(route("", "/", Prefix, 0)).unwrap();
        t.insert(route("*.foo.com", "/", Prefix, 1)).unwrap();
        t.insert(route("bar.foo.com", "/", Prefix, 2)).unwrap();
        t.insert(route("bar.foo.com", "/only", Exact, 3)).unwrap();
        let at = |h: &str, p: &str| t.lookup(h, p).map(|id| t.route(id).backend.0);
        assert_eq!(at("bar.foo.com", "/x"), Some(2));
        assert_eq!(at("bar.foo.com", "/only"), Some(3));
        assert_eq!(at("baz.foo.com", "/x"), Some(1));
        // A wildcard matches exactly one label.
        assert_eq!(at("foo.com", "/x"), Some(0));
        assert_eq!(at("a.bar.foo.com", "/x"), Some(0));
        assert_eq!(at("other.org", "/x"), Some(0));
    }

    #[test]
    fn host_tiers_fall_through_to_less_specific_hosts() {
        let mut t = RouteTable::default();
        t.insert(route("app.example.com", "/api", Prefix, 0)).unwrap();
        t.insert(route("*.example.com", "/static", Prefix, 1)).unwrap();
        let at = |h: &str, p: &str| t.lookup(h, p).map(|id| t.route(id).backend.0);
        assert_eq!(at("app.example.com", "/api/v1"), Some(0));
        assert_eq!(at("app.example.com", "/static/x.css"), Some(1));
        assert_eq!(at("app.example.com", "/other"), None);
        t.set_default(route("", "/", Prefix, 9)).unwrap();
        let at = |h: &str, p: &str| t.lookup(h, p).map(|id| t.route(id).backend.0);
        assert_eq!(at("app.example.com", "/other"), Some(9));
    }

    #[test]
    fn same_host_and_path_conflicts() {
        let mut t = RouteTable::default();
        assert!(t.insert(route("a.com", "/x", Prefix, 0)).is_ok());
        // Trailing slashes do not make a different Prefix path.
        assert_eq!(
            t.insert(route("a.com", "/x/", Prefix, 1)),
            Err(Conflict(RouteId(0)))
        );
        // Exact /x is a different path type: no conflict, and it wins for /x.
        assert!(t.insert(route("a.com", "/x", Exact, 2)).is_ok());
        assert!(t.insert(route("b.com", "/x", Prefix, 3)).is_ok());
        assert!(t.set_default(route("", "/", Prefix, 4)).is_ok());
        assert_eq!(
            t.set_default(route("", "/", Prefix, 5)),
            Err(Conflict(RouteId(3)))
        );
    }

    fn regex_route(host: &str, pattern: &str, tag: usize) -> Route {
        Route {
            regex: Some(crate::rewrite::path_regex(pattern).unwrap()),
            ..route(host, pattern, ImplementationSpecific, tag)
        }
    }

    #[test]
    fn regex_paths_take_the_longest_pattern_first_and_beat_shorter_plain_paths() {
        let mut t = RouteTable::default();
        t.insert(route("a.com", "/", Prefix, 0)).unwrap();
        t.insert(regex_route("a.com", "/api(/|$)(.*)", 1)).unwrap();
        t.insert(regex_route("a.com", "/api/v2(/|$)(.*)", 2)).unwrap();
        t.insert(route("a.com", "/api/v2/long-plain-prefix", Prefix, 3))
            .unwrap();
        let at = |p: &str| t.lookup("a.com", p).map(|id| t.route(id).backend.0);
        assert_eq!(at("/api"), Some(1));
        assert_eq!(at("/API/x"), Some(1), "case-insensitive, as ~*");
        assert_eq!(at("/api/v2/x"), Some(2));
        assert_eq!(
            at("/api/v2/long-plain-prefix/x"),
            Some(3),
            "a longer plain path wins"
        );
        assert_eq!(at("/apix"), Some(0));
        assert_eq!(at("/other"), Some(0));
        assert_eq!(
            t.insert(regex_route("a.com", "/api(/|$)(.*)", 4)),
            Err(Conflict(RouteId(1)))
        );
    }

    #[test]
    fn request_hosts_are_normalized() {
        assert_eq!(normalize_host("Example.COM:8443"), "example.com");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("[::1]:8443"), "[::1]");
        assert_eq!(normalize_host("[::1]"), "[::1]");
        assert_eq!(normalize_host("a.b"), "a.b");
        assert_eq!(normalize_host("a.b..:80"), "a.b");
        assert_eq!(normalize_host("[::1"), "[::1");
        assert_eq!(normalize_host(""), "");
        assert!(matches!(
            normalize_host("a.b:80"),
            std::borrow::Cow::Borrowed("a.b")
        ));
    }
}
