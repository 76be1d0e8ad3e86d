//! What `portcullis check` and `portcullis routes` print: every Problem, the route
//! table, and the explanation of one URL. Plain text for people, stable for scripts.

use std::fmt::Write;

use portcullis_config::path;
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
        .filter(|(_, r)| r.options.auth == portcullis_config::snapshot::AuthMode::None)
        .map(|(_, r)| format!("{}{} ({})", r.host, r.path, r.ingress))
        .collect();
    if !open.is_empty() {
        let _ = writeln!(
            out,
            "note: {} routes without authentication (portcullis.dev/auth: none): {}",
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
pub fn explain(snapshot: &Snapshot, url: &str) -> Result<String, String> {
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
    let authenticated = r.options.auth != portcullis_config::snapshot::AuthMode::None;
    let decision = if scheme == "http" && (authenticated || tls && r.options.ssl_redirect) {
        "308 redirect to HTTPS".to_string()
    } else {
        match &backend.target {
            BackendTarget::Endpoints(e) if e.is_empty() => {
                "503 Service Unavailable (no ready endpoints)".into()
            }
            BackendTarget::Unavailable(reason) => format!("503 Service Unavailable ({reason})"),
            _ if authenticated => "forwarded to the backend once authenticated (else 401, or a login redirect for browsers on oidc routes)".into(),
            _ => "forwarded to the backend".into(),
        }
    };
    let _ = writeln!(out, "decision: {decision}");
    Ok(out)
}
