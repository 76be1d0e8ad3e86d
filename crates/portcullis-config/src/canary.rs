//! ingress-nginx's canary Ingresses. An Ingress with `canary: "true"` serves no routes
//! of its own: each of its host+path pairs lends its backend to the route of another
//! (the main) Ingress with the same host and path, and the canary-* annotations say
//! which requests go there. This module parses those annotations into typed
//! [`CanaryRules`] and decides per request, in the order of ingress-nginx's balancer
//! (`route_to_alternative_balancer` in `balancer.lua`): the header, then the cookie,
//! then the weight. IO-free: the caller supplies the random draw.

use std::collections::BTreeMap;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::nginx::{annotation, parse_bool, Finding, Support, PREFIX};
use crate::problem::Severity;
use crate::routes::Route;
use crate::snapshot::{BackendTarget, CanaryHeader, CanaryHeaderValue, CanaryRules, RouteOptions, Snapshot};

/// The canary annotations, without the prefix; `canary` itself first.
pub const ANNOTATIONS: [&str; 7] = [
    "canary",
    "canary-by-header",
    "canary-by-header-value",
    "canary-by-header-pattern",
    "canary-by-cookie",
    "canary-weight",
    "canary-weight-total",
];

/// Whether the Ingress says `canary: "true"`, read straight from the annotations (the
/// compiler needs to know before it judges the paths).
pub fn is_canary(annotations: Option<&BTreeMap<String, String>>) -> bool {
    annotations
        .and_then(|m| m.get(&format!("{PREFIX}canary")))
        .and_then(|v| parse_bool(v.trim()))
        == Some(true)
}

/// Parses the canary annotations of one Ingress into `options.canary`. Returns whether
/// the Ingress is (or claims to be) a canary, in which case these findings are all
/// there is to say about its ingress-nginx annotations: ingress-nginx ignores the
/// others on a canary, because requests sent to the canary are handled with the main
/// Ingress's settings.
pub fn apply(annotations: &BTreeMap<String, String>, options: &mut RouteOptions) -> (bool, Vec<Finding>) {
    let get = |name: &str| annotations.get(&format!("{PREFIX}{name}")).map(|v| v.trim());
    let mut findings: Vec<Finding> = Vec::new();
    let mut error = |name: &str, message: String| findings.push((name.to_string(), Severity::Error, message));
    let mut warnings: Vec<(&str, String)> = Vec::new();
    match get("canary").map(|v| (v, parse_bool(v))) {
        None | Some((_, Some(false))) => {
            for name in &ANNOTATIONS[1..] {
                if get(name).is_some() {
                    warnings.push((name, "has no effect without canary: \"true\"".to_string()));
                }
            }
            return (false, with_warnings(findings, warnings));
        }
        Some((v, None)) => {
            error("canary", format!("{v:?} is not \"true\" or \"false\""));
            return (true, findings);
        }
        Some((_, Some(true))) => {}
    }

    let non_empty = |name: &str| get(name).filter(|v| !v.is_empty());
    let header = match non_empty("canary-by-header") {
        None => {
            for name in ["canary-by-header-value", "canary-by-header-pattern"] {
                if non_empty(name).is_some() {
                    warnings.push((name, "has no effect without canary-by-header".to_string()));
                }
            }
            None
        }
        Some(name) => {
            let value = match (
                non_empty("canary-by-header-value"),
                non_empty("canary-by-header-pattern"),
            ) {
                (Some(value), pattern) => {
                    if pattern.is_some() {
                        warnings.push((
                            "canary-by-header-pattern",
                            "canary-by-header-value is also set and wins: the pattern is not used"
                                .to_string(),
                        ));
                    }
                    match HeaderValue::from_str(value) {
                        Ok(v) => Some(CanaryHeaderValue::Exact(v)),
                        Err(_) => {
                            error(
                                "canary-by-header-value",
                                format!("{value:?} is not a valid header value"),
                            );
                            None
                        }
                    }
                }
                (None, Some(pattern)) => match header_pattern(pattern) {
                    Ok(re) => Some(CanaryHeaderValue::Pattern(re)),
                    Err(e) => {
                        error("canary-by-header-pattern", e);
                        None
                    }
                },
                (None, None) => Some(CanaryHeaderValue::AlwaysNever),
            };
            match HeaderName::from_bytes(name.as_bytes()) {
                Ok(name) => value.map(|value| CanaryHeader { name, value }),
                Err(_) => {
                    error("canary-by-header", format!("{name:?} is not a valid header name"));
                    None
                }
            }
        }
    };

    let cookie = non_empty("canary-by-cookie").and_then(|name| {
        if name.bytes().all(is_cookie_name_byte) {
            Some(name.to_string())
        } else {
            error("canary-by-cookie", format!("{name:?} is not a valid cookie name"));
            None
        }
    });

    let weight_total = match get("canary-weight-total").map(str::parse::<u32>) {
        None => 100,
        Some(Ok(n)) if n > 100 => n,
        Some(Ok(n)) if n > 0 => {
            // ingress-nginx's balancer only uses a total above 100; keeping that makes
            // the same annotations split traffic the same way.
            warnings.push((
                "canary-weight-total",
                format!("{n} is below 100, and ingress-nginx then uses 100: canary-weight is out of 100"),
            ));
            100
        }
        Some(_) => {
            error(
                "canary-weight-total",
                "is not a whole number above zero".to_string(),
            );
            100
        }
    };
    let weight = match get("canary-weight").map(str::parse::<u32>) {
        None => 0,
        Some(Ok(n)) => {
            if n > weight_total {
                warnings.push((
                    "canary-weight",
                    format!(
                        "{n} is more than the total of {weight_total}: every request that no header or cookie decides goes to the canary"
                    ),
                ));
            }
            n
        }
        Some(Err(_)) => {
            error(
                "canary-weight",
                format!("is not a whole number from 0 to {weight_total}"),
            );
            0
        }
    };

    for key in annotations.keys() {
        let Some(name) = key.strip_prefix(PREFIX) else {
            continue;
        };
        if ANNOTATIONS.contains(&name) {
            continue;
        }
        if annotation(name).is_some_and(|a| a.support == Support::Refused) {
            // Ignored or not, raw nginx configuration is never accepted.
            error(
                name,
                "snippets are raw nginx configuration and are never accepted: the canary Ingress is rejected"
                    .to_string(),
            );
        } else {
            warnings.push((
                name,
                "is ignored on a canary Ingress, as ingress-nginx does: requests sent to the canary are handled with the main Ingress's annotations".to_string(),
            ));
        }
    }

    options.canary = Some(CanaryRules {
        header,
        cookie,
        weight,
        weight_total,
    });
    (true, with_warnings(findings, warnings))
}

fn with_warnings(mut findings: Vec<Finding>, warnings: Vec<(&str, String)>) -> Vec<Finding> {
    findings.extend(
        warnings
            .into_iter()
            .map(|(n, m)| (n.to_string(), Severity::Warning, m)),
    );
    findings
}

/// `canary-by-header-pattern`: unanchored and case-sensitive, as ingress-nginx's
/// `ngx.re.match` without options; size-limited like path regexes, since the pattern
/// is user input run on every request.
fn header_pattern(pattern: &str) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .dfa_size_limit(1 << 20)
        .nest_limit(50)
        .build()
        .map_err(|e| {
            let e = e.to_string();
            let last = e.lines().last().unwrap_or(&e).trim().to_string();
            format!("{pattern:?} is not a valid regular expression: {last}")
        })
}

/// RFC 6265 `cookie-name`: a token.
fn is_cookie_name_byte(b: u8) -> bool {
    b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b)
}

impl CanaryRules {
    /// Whether a request goes to the canary: the header, then the cookie, then the
    /// weight, as ingress-nginx's balancer decides. `roll(total)` must return a
    /// uniformly random number from 1 to `total`; it is only called when the weight
    /// decides and is neither 0 nor the whole total.
    pub fn wants_canary(&self, headers: &HeaderMap, roll: impl FnOnce(u32) -> u32) -> bool {
        if let Some(header) = &self.header {
            if let Some(value) = headers.get(&header.name) {
                match &header.value {
                    CanaryHeaderValue::Exact(wanted) if value == wanted => return true,
                    CanaryHeaderValue::Pattern(re) if value.to_str().is_ok_and(|v| re.is_match(v)) => {
                        return true
                    }
                    CanaryHeaderValue::AlwaysNever => match value.as_bytes() {
                        b"always" => return true,
                        b"never" => return false,
                        _ => {}
                    },
                    // Any other value falls through to the cookie and the weight.
                    _ => {}
                }
            }
        }
        if let Some(name) = &self.cookie {
            match cookie(headers, name) {
                Some(b"always") => return true,
                Some(b"never") => return false,
                _ => {}
            }
        }
        match self.weight {
            0 => false,
            w if w >= self.weight_total => true,
            w => roll(self.weight_total) <= w,
        }
    }
}

/// What `portcullis routes` says about a canary: which requests it takes.
impl std::fmt::Display for CanaryRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(h) = &self.header {
            match &h.value {
                CanaryHeaderValue::AlwaysNever => write!(f, "header {}: always|never, ", h.name)?,
                CanaryHeaderValue::Exact(v) => write!(f, "header {} = {:?}, ", h.name, v)?,
                CanaryHeaderValue::Pattern(re) => write!(f, "header {} ~ {:?}, ", h.name, re.as_str())?,
            }
        }
        if let Some(c) = &self.cookie {
            write!(f, "cookie {c}: always|never, ")?;
        }
        write!(f, "weight {} of {}", self.weight, self.weight_total)
    }
}

/// The value of the first cookie called `name` in the request's Cookie headers. The
/// name is compared without regard to case, as nginx's `$cookie_NAME` does.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let at = pair.iter().position(|b| *b == b'=')?;
            let (n, v) = (&pair[..at], &pair[at + 1..]);
            n.eq_ignore_ascii_case(name.as_bytes()).then_some(v)
        })
}

/// The route a request is forwarded with: the route's canary when its rules pick it,
/// else the route itself. A canary whose Service has no ready endpoints takes nothing:
/// ingress-nginx drops the balancer of a backend without endpoints and sends its
/// requests to the main backend.
pub fn choose<'a>(
    snapshot: &Snapshot,
    route: &'a Route,
    headers: &HeaderMap,
    roll: impl FnOnce(u32) -> u32,
) -> &'a Route {
    let Some(canary) = &route.canary else {
        return route;
    };
    let available = match &snapshot.backend(canary.route.backend).target {
        BackendTarget::Endpoints(e) => !e.is_empty(),
        BackendTarget::External { .. } => true,
        BackendTarget::Unavailable(_) => false,
    };
    if available && canary.rules.wants_canary(headers, roll) {
        &canary.route
    } else {
        route
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pairs: &[(&str, &str)]) -> (bool, Option<CanaryRules>, Vec<Finding>) {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (format!("{PREFIX}{k}"), v.to_string()))
            .collect();
        let mut o = RouteOptions::default();
        let (canary, f) = apply(&map, &mut o);
        (canary, o.canary, f)
    }

    fn rules(pairs: &[(&str, &str)]) -> CanaryRules {
        let mut all = vec![("canary", "true")];
        all.extend_from_slice(pairs);
        let (is, rules, f) = run(&all);
        assert!(is);
        assert!(f.iter().all(|(_, s, _)| *s != Severity::Error), "{f:?}");
        rules.unwrap()
    }

    fn request(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn never_rolled(_: u32) -> u32 {
        panic!("the weight should not have been consulted")
    }

    #[test]
    fn header_always_and_never_decide_and_other_values_fall_through() {
        let r = rules(&[("canary-by-header", "X-Canary"), ("canary-weight", "100")]);
        assert!(r.wants_canary(&request(&[("x-canary", "always")]), never_rolled));
        assert!(!r.wants_canary(&request(&[("x-canary", "never")]), never_rolled));
        // Other values, and no header, fall through to the weight.
        assert!(r.wants_canary(&request(&[("x-canary", "maybe")]), never_rolled));
        assert!(r.wants_canary(&request(&[]), never_rolled));
    }

    #[test]
    fn header_value_must_be_equal_and_never_falls_through() {
        let r = rules(&[("canary-by-header", "x-canary"), ("canary-by-header-value", "v2")]);
        assert!(r.wants_canary(&request(&[("x-canary", "v2")]), never_rolled));
        assert!(!r.wants_canary(&request(&[("x-canary", "V2")]), never_rolled));
        assert!(!r.wants_canary(&request(&[("x-canary", "always")]), never_rolled));
        // With a value, "never" is just another value: the weight decides.
        let r = rules(&[
            ("canary-by-header", "x-canary"),
            ("canary-by-header-value", "v2"),
            ("canary-weight", "100"),
        ]);
        assert!(r.wants_canary(&request(&[("x-canary", "never")]), never_rolled));
    }

    #[test]
    fn header_pattern_matches_anywhere_and_loses_to_a_value() {
        let r = rules(&[
            ("canary-by-header", "x-region"),
            ("canary-by-header-pattern", "eu-(west|north)"),
        ]);
        assert!(r.wants_canary(&request(&[("x-region", "eu-west-1")]), never_rolled));
        assert!(r.wants_canary(&request(&[("x-region", "my-eu-north")]), never_rolled));
        assert!(!r.wants_canary(&request(&[("x-region", "us-east-1")]), never_rolled));
        let (_, r, f) = run(&[
            ("canary", "true"),
            ("canary-by-header", "x-region"),
            ("canary-by-header-value", "eu"),
            ("canary-by-header-pattern", "eu.*"),
        ]);
        assert_eq!(f[0].0, "canary-by-header-pattern");
        assert_eq!(f[0].1, Severity::Warning);
        assert!(matches!(
            r.unwrap().header.unwrap().value,
            CanaryHeaderValue::Exact(_)
        ));
    }

    #[test]
    fn cookie_comes_after_the_header_and_before_the_weight() {
        let r = rules(&[
            ("canary-by-header", "x-canary"),
            ("canary-by-cookie", "canary"),
            ("canary-weight", "100"),
        ]);
        let both = request(&[("x-canary", "always"), ("cookie", "canary=never")]);
        assert!(r.wants_canary(&both, never_rolled), "the header wins");
        let cookie_only = request(&[("cookie", "a=b; Canary=never; c=d")]);
        assert!(!r.wants_canary(&cookie_only, never_rolled));
        let other = request(&[("cookie", "canary=sometimes")]);
        assert!(
            r.wants_canary(&other, never_rolled),
            "falls through to the weight"
        );
        let r = rules(&[("canary-by-cookie", "canary")]);
        assert!(r.wants_canary(
            &request(&[("cookie", "x=1"), ("cookie", "canary=always")]),
            never_rolled
        ));
    }

    #[test]
    fn weight_is_out_of_the_total() {
        let r = rules(&[("canary-weight", "30")]);
        assert_eq!(r.weight_total, 100);
        assert!(r.wants_canary(&request(&[]), |total| {
            assert_eq!(total, 100);
            30
        }));
        assert!(!r.wants_canary(&request(&[]), |_| 31));
        assert!(!rules(&[("canary-weight", "0")]).wants_canary(&request(&[]), never_rolled));
        let r = rules(&[("canary-weight", "300"), ("canary-weight-total", "1000")]);
        assert!(r.wants_canary(&request(&[]), |total| {
            assert_eq!(total, 1000);
            300
        }));
        assert!(
            rules(&[("canary-weight", "1000"), ("canary-weight-total", "1000")])
                .wants_canary(&request(&[]), never_rolled)
        );
    }

    #[test]
    fn odd_totals_and_weights_warn_as_ingress_nginx_reads_them() {
        let (_, r, f) = run(&[
            ("canary", "true"),
            ("canary-weight", "5"),
            ("canary-weight-total", "10"),
        ]);
        assert_eq!(r.unwrap().weight_total, 100);
        assert_eq!(
            (f[0].0.as_str(), f[0].1),
            ("canary-weight-total", Severity::Warning)
        );
        let (_, r, f) = run(&[("canary", "true"), ("canary-weight", "150")]);
        assert!(r.unwrap().wants_canary(&request(&[]), never_rolled));
        assert_eq!((f[0].0.as_str(), f[0].1), ("canary-weight", Severity::Warning));
    }

    #[test]
    fn invalid_values_are_errors_naming_the_annotation() {
        for (name, value) in [
            ("canary", "yes"),
            ("canary-weight", "-1"),
            ("canary-weight", "ten"),
            ("canary-weight-total", "0"),
            ("canary-by-header", "x canary"),
            ("canary-by-header-pattern", "(unclosed"),
            ("canary-by-header-pattern", "a{1000}{1000}"),
            ("canary-by-cookie", "a=b"),
        ] {
            let mut pairs = vec![(name, value)];
            if name != "canary" {
                pairs.push(("canary", "true"));
            }
            if name == "canary-by-header-pattern" {
                pairs.push(("canary-by-header", "x-canary"));
            }
            let (is, rules, f) = run(&pairs);
            assert!(is, "{name}");
            let errors: Vec<&str> = f
                .iter()
                .filter(|(_, s, _)| *s == Severity::Error)
                .map(|(n, _, _)| n.as_str())
                .collect();
            assert_eq!(errors, vec![name], "{name}={value}: {f:?}");
            let _ = rules;
        }
        let (is, _, f) = run(&[
            ("canary", "true"),
            ("canary-by-header", "x-canary"),
            ("canary-by-header-value", "a\u{1}b"),
        ]);
        assert!(is);
        assert_eq!(f[0].0, "canary-by-header-value");
    }

    #[test]
    fn other_annotations_on_a_canary_are_ignored_with_a_warning_but_snippets_refused() {
        let (is, r, f) = run(&[
            ("canary", "true"),
            ("canary-weight", "10"),
            ("rewrite-target", "/$1"),
            ("auth-url", "http://auth.example/check"),
            ("configuration-snippet", "return 200;"),
        ]);
        assert!(is);
        assert!(r.is_some());
        let seen: Vec<(&str, Severity)> = f.iter().map(|(n, s, _)| (n.as_str(), *s)).collect();
        assert_eq!(
            seen,
            vec![
                ("configuration-snippet", Severity::Error),
                ("auth-url", Severity::Warning),
                ("rewrite-target", Severity::Warning),
            ]
        );
    }

    #[test]
    fn canary_annotations_without_canary_true_warn_and_do_nothing() {
        let (is, r, f) = run(&[("canary-weight", "50")]);
        assert!(!is && r.is_none());
        assert_eq!((f[0].0.as_str(), f[0].1), ("canary-weight", Severity::Warning));
        let (is, r, f) = run(&[("canary", "false")]);
        assert!(!is && r.is_none() && f.is_empty());
    }
}

/// What the compiler does with canary Ingresses.
#[cfg(test)]
mod compile_tests {
    use super::*;
    use crate::{compile, Compiled, Manifests, Settings};
    use std::sync::Arc;

    fn service(name: &str, ns: &str) -> String {
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  ports: [{{port: 80}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: {ns}\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports: [{{port: 8080}}]\nendpoints:\n- addresses: [10.0.0.1]\n"
        )
    }

    /// An Ingress of class portcullis with one path; `stamp` orders by age.
    fn ingress(
        ns: &str,
        name: &str,
        stamp: &str,
        annotations: &[(&str, &str)],
        host: &str,
        path: &str,
        svc: &str,
    ) -> String {
        let mut y = format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {name}\n  namespace: {ns}\n  creationTimestamp: \"2026-01-0{stamp}T00:00:00Z\"\n  annotations:\n"
        );
        for (k, v) in annotations {
            y.push_str(&format!("    {PREFIX}{k}: '{v}'\n"));
        }
        y.push_str(&format!(
            "    portcullis.dev/max-body-size: 1m\nspec:\n  ingressClassName: portcullis\n  rules:\n  - host: {host}\n    http:\n      paths:\n      - path: '{path}'\n        pathType: Prefix\n        backend:\n          service: {{name: {svc}, port: {{number: 80}}}}\n"
        ));
        y
    }

    fn compiled(parts: &[String]) -> Compiled {
        let mut m = Manifests::default();
        m.add_text("t.yaml", &parts.concat());
        compile(&m, &Settings::default(), 1_800_000_000)
    }

    fn errors(c: &Compiled) -> Vec<String> {
        c.problems
            .iter()
            .filter(|p| p.is_error())
            .map(|p| p.to_string())
            .collect()
    }

    fn canary_service(c: &Compiled, host: &str) -> Option<String> {
        let route = c.snapshot.routes.route(c.snapshot.lookup(host, "/")?);
        let canary = route.canary.as_ref()?;
        Some(c.snapshot.backend(canary.route.backend).service.clone())
    }

    fn plain(ns: &str, name: &str, stamp: &str, host: &str, svc: &str) -> String {
        ingress(ns, name, stamp, &[], host, "/", svc).replace("    portcullis.dev/max-body-size: 1m\n", "")
    }

    #[test]
    fn a_canary_attaches_to_the_main_route_and_does_not_conflict() {
        // The canary is older than its main Ingress: it still attaches.
        let c = compiled(&[
            service("main", "ns"),
            service("canary", "ns"),
            ingress(
                "ns",
                "c",
                "1",
                &[("canary", "true"), ("canary-weight", "25")],
                "a.com",
                "/",
                "canary",
            ),
            plain("ns", "main", "2", "a.com", "main"),
        ]);
        assert!(errors(&c).is_empty(), "{:?}", errors(&c));
        assert_eq!(c.snapshot.routes.len(), 1, "the canary makes no route of its own");
        let route = c.snapshot.routes.route(c.snapshot.lookup("a.com", "/x").unwrap());
        assert_eq!(c.snapshot.backend(route.backend).service, "main");
        let canary = route.canary.as_ref().unwrap();
        assert_eq!(canary.rules.weight, 25);
        assert_eq!(canary.route.ingress.name, "c");
        assert_eq!(c.snapshot.backend(canary.route.backend).service, "canary");
        // The main route's settings come along, TLS flag included.
        assert!(Arc::ptr_eq(&canary.route.options, &route.options));
        // Its portcullis.dev/ annotations are pointed out as ignored.
        assert!(c.problems.iter().any(|p| !p.is_error()
            && p.to_string().contains("portcullis.dev/max-body-size")
            && p.to_string().contains("ignored on a canary")));
        // Requests pick the canary by its rules.
        let headers = HeaderMap::new();
        assert_eq!(choose(&c.snapshot, route, &headers, |_| 25).ingress.name, "c");
        assert_eq!(choose(&c.snapshot, route, &headers, |_| 26).ingress.name, "main");
    }

    #[test]
    fn a_canary_without_a_main_route_is_an_error_that_says_why() {
        let c = compiled(&[
            service("main", "ns"),
            service("canary", "ns"),
            plain("ns", "main", "1", "a.com", "main"),
            ingress("ns", "c", "2", &[("canary", "true")], "b.com", "/", "canary"),
            ingress("ns", "d", "3", &[("canary", "true")], "a.com", "/other", "canary"),
        ]);
        let e = errors(&c);
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].contains("ns/c")
                && e[0].contains("host b.com path /")
                && e[0].contains("served by no other Ingress"),
            "{e:?}"
        );
        assert!(e[1].contains("ns/d") && e[1].contains("path /other"), "{e:?}");
        assert!(c.snapshot.lookup("b.com", "/").is_none());
        assert!(canary_service(&c, "a.com").is_none());
    }

    #[test]
    fn the_oldest_canary_of_a_route_wins() {
        let c = compiled(&[
            service("main", "ns"),
            service("canary", "ns"),
            service("canary2", "ns"),
            plain("ns", "main", "1", "a.com", "main"),
            ingress("ns", "newer", "3", &[("canary", "true")], "a.com", "/", "canary2"),
            ingress("ns", "older", "2", &[("canary", "true")], "a.com", "/", "canary"),
        ]);
        let e = errors(&c);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].contains("ns/newer") && e[0].contains("already has the canary Ingress ns/older"),
            "{e:?}"
        );
        assert_eq!(canary_service(&c, "a.com").as_deref(), Some("canary"));
    }

    #[test]
    fn a_canary_only_takes_requests_of_its_own_namespace() {
        let c = compiled(&[
            service("main", "a"),
            service("canary", "b"),
            plain("a", "main", "1", "a.com", "main"),
            ingress(
                "b",
                "c",
                "2",
                &[("canary", "true"), ("canary-weight", "100")],
                "a.com",
                "/",
                "canary",
            ),
        ]);
        let e = errors(&c);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].contains("b/c") && e[0].contains("another namespace"),
            "{e:?}"
        );
        assert!(canary_service(&c, "a.com").is_none());
    }

    #[test]
    fn a_canary_finds_a_regex_main_route_by_its_pattern() {
        let c = compiled(&[
            service("main", "ns"),
            service("canary", "ns"),
            ingress(
                "ns",
                "main",
                "1",
                &[("use-regex", "true")],
                "a.com",
                "/api/v[0-9]+",
                "main",
            )
            .replace("    portcullis.dev/max-body-size: 1m\n", ""),
            ingress(
                "ns",
                "c",
                "2",
                &[("canary", "true")],
                "a.com",
                "/api/v[0-9]+",
                "canary",
            ),
        ]);
        assert!(errors(&c).is_empty(), "{:?}", errors(&c));
        let route = c
            .snapshot
            .routes
            .route(c.snapshot.lookup("a.com", "/api/v2/x").unwrap());
        assert!(route.canary.is_some());
    }

    #[test]
    fn a_canary_default_backend_attaches_to_the_default_route() {
        let default = |name: &str, annotations: &str, svc: &str| {
            format!("---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {name}\n  namespace: ns\n  annotations: {{{annotations}}}\nspec:\n  ingressClassName: portcullis\n  defaultBackend: {{service: {{name: {svc}, port: {{number: 80}}}}}}\n")
        };
        let canary = default("c", "nginx.ingress.kubernetes.io/canary: 'true'", "canary");
        let c = compiled(&[service("main", "ns"), service("canary", "ns"), canary.clone()]);
        let e = errors(&c);
        assert!(
            e.len() == 1 && e[0].contains("the default backend is served by no other Ingress"),
            "{e:?}"
        );
        let c = compiled(&[
            service("main", "ns"),
            service("canary", "ns"),
            default("main", "", "main"),
            canary,
        ]);
        assert!(errors(&c).is_empty(), "{:?}", errors(&c));
        assert_eq!(canary_service(&c, "any.host").as_deref(), Some("canary"));
    }

    #[test]
    fn a_canary_with_errors_is_rejected_and_the_main_route_keeps_serving() {
        let c = compiled(&[
            service("main", "ns"),
            service("canary", "ns"),
            plain("ns", "main", "1", "a.com", "main"),
            ingress(
                "ns",
                "c",
                "2",
                &[("canary", "true"), ("canary-weight", "many")],
                "a.com",
                "/",
                "canary",
            ),
        ]);
        let e = errors(&c);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].contains("canary-weight"), "{e:?}");
        assert_eq!(c.snapshot.routes.len(), 1);
        assert!(canary_service(&c, "a.com").is_none());
    }
}
