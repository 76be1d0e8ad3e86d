//! What `portcullis check` and `portcullis routes` print: every Problem, the route
//! table, and the explanation of one URL. Plain text for people, stable for scripts.

use std::fmt::Write;

use portcullis_config::path;
use portcullis_config::policy;
use portcullis_config::routes::normalize_host;
use portcullis_config::snapshot::{BackendTarget, Snapshot};
use portcullis_config::Compiled;

/// The `check` report: every problem, then a summary line.
pub fn check(compiled: &Compiled, source: &str, object_count: usize) -> String {
    let mut out = String::new();
    for p in &compiled.problems {
        let _ = writeln!(out, "{p}");
    }
    let open: Vec<String> = compiled
        .snapshot
        .routes
        .routes()
        .filter(|(_, r)| !r.options.authenticates())
        .map(|(_, r)| format!("{}{} ({})", r.host, r.path, r.ingress))
        .collect();
    if !open.is_empty() {
        let _ = writeln!(
            out,
            "note: {} routes without authentication (no portcullis.dev/auth, auth-url or basic auth): {}",
            open.len(),
            open.join(", ")
        );
    }
    let s = &compiled.snapshot.stats;
    let errors = compiled.error_count();
    let warnings = compiled.problems.len() - errors;
    let ignored: usize = s.ignored.values().sum();
    let _ = writeln!(
        out,
        "{source}: {object_count} objects read ({ignored} of other kinds ignored); {} Ingresses served, {} rejected, {} of other classes; {} routes; {errors} {}, {warnings} {}",
        s.ingresses_served,
        s.ingresses_rejected,
        s.ingresses_other_class,
        compiled.snapshot.routes.len(),
        plural(errors, "error", "errors"),
        plural(warnings, "warning", "warnings"),
    );
    out
}

fn plural(n: usize, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 {
        one
    } else {
        many
    }
}

fn endpoints(target: &BackendTarget) -> String {
    match target {
        BackendTarget::Endpoints(e) if e.is_empty() => "none ready (503)".into(),
        BackendTarget::Endpoints(e) => e.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(","),
        BackendTarget::External { host, port } => format!("{host}:{port} (ExternalName)"),
        BackendTarget::Unavailable(reason) => format!("unavailable: {reason} (503)"),
    }
}

/// The route table, one line per route, in table order.
pub fn routes(snapshot: &Snapshot) -> String {
    let mut rows = vec![[
        "HOST".to_string(),
        "PATH".into(),
        "TYPE".into(),
        "TLS".into(),
        "BACKEND".into(),
        "ENDPOINTS".into(),
        "INGRESS".into(),
    ]];
    let mut sorted: Vec<_> = snapshot.routes.routes().collect();
    sorted.sort_by(|(_, a), (_, b)| (a.host.to_string(), &a.path).cmp(&(b.host.to_string(), &b.path)));
    for (_, r) in sorted {
        let backend = snapshot.backend(r.backend);
        rows.push([
            if r.field == "spec.defaultBackend" {
                "(default backend)".into()
            } else {
                r.host.to_string()
            },
            r.path.clone(),
            r.path_type.to_string(),
            if r.tls { "yes" } else { "no" }.into(),
            format!("{backend} {}", r.options.backend_protocol),
            endpoints(&backend.target),
            r.ingress.to_string(),
        ]);
        if let Some(canary) = &r.canary {
            let c = &canary.route;
            let backend = snapshot.backend(c.backend);
            rows.push([
                "  (canary)".into(),
                c.path.clone(),
                c.path_type.to_string(),
                if c.tls { "yes" } else { "no" }.into(),
                format!("{backend} {}", c.options.backend_protocol),
                endpoints(&backend.target),
                format!("{} ({})", c.ingress, canary.rules),
            ]);
        }
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

/// Explains which route, backend and policy a URL gets, and what would happen.
/// Who and where a request is from, for `routes --explain`.
#[derive(Debug, Default)]
pub struct Caller {
    /// `--as`: the caller's (verified) email; unset means no credentials.
    pub email: Option<String>,
    pub groups: Vec<String>,
    pub claims: Vec<(String, String)>,
    /// `--from`: the client address.
    pub from: Option<std::net::IpAddr>,
}

pub fn explain(snapshot: &Snapshot, url: &str, caller: &Caller) -> Result<String, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let scheme = uri.scheme_str().unwrap_or("https");
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{url:?} has no host: write it as https://HOST/PATH"))?;
    let host = normalize_host(authority.as_str());
    let mut out = String::new();
    let _ = writeln!(
        out,
        "request:  {scheme}://{host}{}",
        uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let path = match path::normalize(uri.path()) {
        Ok(p) => p.into_owned(),
        Err(e) => {
            let _ = writeln!(out, "decision: 400 Bad Request: {e}");
            return Ok(out);
        }
    };
    let _ = writeln!(out, "path:     {path} (normalized)");
    let Some(id) = snapshot.lookup(&host, &path) else {
        let redirect = scheme == "http" && snapshot.host_has_tls(&host);
        let _ = writeln!(out, "route:    none");
        let _ = writeln!(
            out,
            "decision: {}",
            if redirect {
                "308 redirect to HTTPS (the host has TLS)"
            } else {
                "404 Not Found"
            }
        );
        return Ok(out);
    };
    let r = snapshot.routes.route(id);
    let backend = snapshot.backend(r.backend);
    let _ = writeln!(
        out,
        "route:    Ingress {} {}: host {} path {} ({})",
        r.ingress, r.field, r.host, r.path, r.path_type
    );
    let _ = writeln!(
        out,
        "backend:  {backend} via {} -> {}",
        r.options.backend_protocol,
        endpoints(&backend.target)
    );
    if let Some(canary) = &r.canary {
        let c = snapshot.backend(canary.route.backend);
        let _ = writeln!(
            out,
            "canary:   Ingress {} {}: {c} -> {}; takes requests by {} (while it has ready endpoints)",
            canary.route.ingress,
            canary.route.field,
            endpoints(&c.target),
            canary.rules
        );
    }
    let tls = r.tls || snapshot.host_has_tls(&host);
    let cert = snapshot
        .certificates
        .for_server_name(&host)
        .map(|c| format!("certificate from Secret {}", c.secret))
        .unwrap_or_else(|| "default certificate".into());
    let _ = writeln!(
        out,
        "tls:      {}",
        if tls {
            format!(
                "yes, {cert}; plain HTTP {}",
                if r.options.ssl_redirect {
                    "redirects to HTTPS"
                } else {
                    "is served too (ssl-redirect: false)"
                }
            )
        } else {
            format!("no spec.tls for this host: served on plain HTTP and on HTTPS with the {cert}")
        }
    );
    let body = r
        .options
        .max_body_size
        .map_or("unlimited".to_string(), |n| format!("{n} bytes"));
    let assertion = if r.options.identity_assertion {
        "; identity assertion sent"
    } else {
        ""
    };
    let _ = writeln!(
        out,
        "policy:   authentication {}{assertion}; max body {body}; read timeout {:?}",
        r.options.auth, r.options.read_timeout
    );
    if let Some(external) = &r.options.external_auth {
        let _ = writeln!(
            out,
            "auth-url: every request is checked with {} first",
            external.url
        );
    }
    if let Some(basic) = &r.options.basic_auth {
        let _ = writeln!(
            out,
            "basic:    users of Secret {}/{}",
            r.ingress.namespace, basic.secret
        );
    }
    let authenticated = r.options.auth != portcullis_config::snapshot::AuthMode::None;
    let p = &r.options.policy;
    if !p.allow_source_ranges.is_empty() || !p.deny_source_ranges.is_empty() {
        let list = |v: &[ipnet::IpNet]| v.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ");
        let _ = writeln!(
            out,
            "sources:  allow [{}], deny [{}]",
            list(&p.allow_source_ranges),
            list(&p.deny_source_ranges)
        );
    }
    if p.needs_identity() {
        let mut rules = Vec::new();
        if !p.allow_groups.is_empty() {
            rules.push(format!("group in [{}]", p.allow_groups.join(", ")));
        }
        if !p.allow_emails.is_empty() {
            rules.push(format!("verified email in [{}]", p.allow_emails.join(", ")));
        }
        if !p.allow_email_domains.is_empty() {
            rules.push(format!(
                "verified email domain in [{}]",
                p.allow_email_domains.join(", ")
            ));
        }
        for (claim, values) in &p.require_claims {
            rules.push(format!("claim {claim} in [{}]", values.join(", ")));
        }
        let _ = writeln!(out, "allow:    {}", rules.join(" AND "));
    }
    if let Some(limit) = &r.options.rate_limit {
        let _ = writeln!(
            out,
            "limits:   {}/{}s per {}, burst {}",
            limit.rate,
            limit.per.as_secs(),
            match limit.key {
                portcullis_config::snapshot::RateLimitKey::Client => "client address",
                portcullis_config::snapshot::RateLimitKey::User => "user",
            },
            limit.burst
        );
    }
    let source = caller.from.map(|ip| policy::check_source(p, ip));
    let subject = caller.email.as_ref().map(|email| {
        let mut claims: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for (k, v) in &caller.claims {
            claims.entry(k.clone()).or_default().push(v.clone());
        }
        policy::Subject {
            email: Some(email.clone()),
            email_verified: true,
            groups: caller.groups.clone(),
            claims,
        }
    });
    let decision = if scheme == "http" && (authenticated || tls && r.options.ssl_redirect) {
        "308 redirect to HTTPS".to_string()
    } else if let Some(Err(denial)) = source {
        format!("403 Forbidden: {denial}")
    } else if authenticated && subject.is_none() {
        "401 (API clients) or a login redirect (browsers on oidc routes) without credentials; pass --as EMAIL [--groups a,b] to see the decision for a user".into()
    } else if let Some(Err(denial)) = subject.as_ref().map(|s| policy::check_subject(p, s)) {
        format!("403 Forbidden: {denial}")
    } else {
        match &backend.target {
            BackendTarget::Endpoints(e) if e.is_empty() => {
                "503 Service Unavailable (no ready endpoints)".into()
            }
            BackendTarget::Unavailable(reason) => format!("503 Service Unavailable ({reason})"),
            _ if caller.from.is_none() && !p.allow_source_ranges.is_empty() => {
                "forwarded to the backend if the client address is allowed (pass --from IP)".into()
            }
            _ => "forwarded to the backend".into(),
        }
    };
    let _ = writeln!(out, "decision: {decision}");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_config::{Manifests, Settings};

    fn snapshot() -> Snapshot {
        let mut m = Manifests::default();
        m.add_text(
            "m.yaml",
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: admin\n  namespace: ops\n  annotations:\n    portcullis.dev/auth: oidc\n    portcullis.dev/allow-groups: admins\n    portcullis.dev/allow-source-ranges: 10.0.0.0/8\nspec:\n  ingressClassName: portcullis\n  rules:\n  - host: admin.example.com\n    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: admin, port: {number: 80}}}}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: admin, namespace: ops}\nspec: {ports: [{port: 80}]}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: admin-1, namespace: ops, labels: {kubernetes.io/service-name: admin}}\naddressType: IPv4\nports: [{port: 8080}]\nendpoints: [{addresses: [10.9.9.9]}]\n",
        );
        let settings = Settings::from_yaml(
            "oidc: {providers: [{name: corp, issuer: 'https://idp.example.com', clientId: c}], sessionKeys: [{env: K}]}",
        )
        .unwrap();
        portcullis_config::compile(&m, &settings, 1_800_000_000).snapshot
    }

    fn decision(caller: Caller) -> String {
        let text = explain(&snapshot(), "https://admin.example.com/x", &caller).unwrap();
        text.lines().last().unwrap().to_string()
    }

    #[test]
    fn routes_and_explain_show_a_canary_and_its_rules() {
        let ingress = |name: &str, annotations: &str, svc: &str| {
            format!("---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {name}\n  namespace: ns\n  annotations: {{{annotations}}}\nspec:\n  ingressClassName: portcullis\n  rules:\n  - host: a.test\n    http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: {svc}, port: {{number: 80}}}}}}}}]}}\n")
        };
        let mut m = Manifests::default();
        m.add_text(
            "m.yaml",
            &[
                ingress("main", "", "web"),
                ingress(
                    "beta",
                    "nginx.ingress.kubernetes.io/canary: 'true', nginx.ingress.kubernetes.io/canary-by-header: x-beta, nginx.ingress.kubernetes.io/canary-weight: '5'",
                    "web-v2",
                ),
            ]
            .concat(),
        );
        let snapshot = portcullis_config::compile(&m, &Settings::default(), 1_800_000_000).snapshot;
        let table = routes(&snapshot);
        let row = table.lines().find(|l| l.contains("(canary)")).unwrap_or_default();
        assert!(
            row.contains("ns/web-v2:80")
                && row.contains("ns/beta (header x-beta: always|never, weight 5 of 100)"),
            "{table}"
        );
        let text = explain(&snapshot, "https://a.test/", &Caller::default()).unwrap();
        assert!(
            text.contains("canary:   Ingress ns/beta spec.rules[0].http.paths[0]: ns/web-v2:80"),
            "{text}"
        );
    }

    #[test]
    fn explain_decides_as_the_given_user_and_address() {
        let ip = |s: &str| Some(s.parse().unwrap());
        let admin = || Caller {
            email: Some("a@example.com".into()),
            groups: vec!["admins".into()],
            from: ip("10.1.1.1"),
            ..Caller::default()
        };
        assert_eq!(decision(admin()), "decision: forwarded to the backend");
        assert!(decision(Caller {
            groups: vec!["dev".into()],
            ..admin()
        })
        .contains("403 Forbidden: not in an allowed group"));
        assert!(decision(Caller {
            from: ip("192.0.2.1"),
            ..admin()
        })
        .contains("403 Forbidden: the client address"));
        assert!(decision(Caller {
            email: None,
            ..admin()
        })
        .contains("401"));
    }
}
