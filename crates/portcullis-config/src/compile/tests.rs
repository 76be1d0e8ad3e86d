use super::*;
use crate::routes::RouteId;

const NOW: i64 = 1_800_000_000; // 2027-01-15

fn compile_text(yaml: &str) -> Compiled {
    compile_with(yaml, &Settings::default())
}

fn compile_with(yaml: &str, settings: &Settings) -> Compiled {
    let mut m = Manifests::default();
    m.add_text("test.yaml", yaml);
    compile(&m, settings, NOW)
}

fn ingress(name: &str, extra_meta: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {name}\n  namespace: ns\n{extra_meta}spec:\n  ingressClassName: portcullis\n{spec}"
    )
}

fn rule(host: &str, path: &str, path_type: &str, service: &str) -> String {
    format!(
        "  - host: {host}\n    http:\n      paths:\n      - path: {path}\n        pathType: {path_type}\n        backend:\n          service: {{name: {service}, port: {{number: 80}}}}\n"
    )
}

fn service(name: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: ns}}\nspec:\n  ports: [{{name: http, port: 80, targetPort: web}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-abc\n  namespace: ns\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n- addresses: [10.0.0.1]\n  conditions: {{ready: true}}\n- addresses: [10.0.0.2]\n  conditions: {{ready: false}}\n- addresses: [10.0.0.3]\n"
    )
}

fn served_service(c: &Compiled, host: &str, path: &str) -> Option<String> {
    let id: RouteId = c.snapshot.lookup(host, path)?;
    let route = c.snapshot.routes.route(id);
    Some(c.snapshot.backend(route.backend).service.clone())
}

fn messages(c: &Compiled) -> Vec<String> {
    c.problems.iter().map(|p| p.to_string()).collect()
}

#[test]
fn resolves_endpoints_through_named_target_ports() {
    let yaml = format!(
        "{}{}",
        service("web"),
        ingress(
            "i",
            "",
            &format!("  rules:\n{}", rule("a.com", "/", "Prefix", "web"))
        )
    );
    let c = compile_text(&yaml);
    let id = c.snapshot.lookup("a.com", "/x").unwrap();
    let backend = c.snapshot.backend(c.snapshot.routes.route(id).backend);
    // Ready and unset-ready endpoints, on the slice port named like the Service port.
    assert_eq!(
        backend.target,
        BackendTarget::Endpoints(vec![
            "10.0.0.1:8080".parse().unwrap(),
            "10.0.0.3:8080".parse().unwrap()
        ])
    );
    assert_eq!(c.snapshot.stats.ingresses_served, 1);
}

#[test]
fn ports_by_name_and_external_names() {
    let yaml = format!(
        "{}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: ext, namespace: ns}}\nspec: {{type: ExternalName, externalName: api.example.org, ports: [{{name: https, port: 443}}]}}\n{}",
        service("web"),
        ingress(
            "i",
            "",
            "  rules:\n  - host: a.com\n    http:\n      paths:\n      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {name: http}}}}\n      - {path: /ext, pathType: Prefix, backend: {service: {name: ext, port: {name: https}}}}\n"
        )
    );
    let c = compile_text(&yaml);
    let at = |p: &str| {
        let id = c.snapshot.lookup("a.com", p).unwrap();
        c.snapshot
            .backend(c.snapshot.routes.route(id).backend)
            .target
            .clone()
    };
    assert!(matches!(at("/"), BackendTarget::Endpoints(e) if e.len() == 2));
    assert_eq!(
        at("/ext/x"),
        BackendTarget::External {
            host: "api.example.org".into(),
            port: 443
        }
    );
}

#[test]
fn missing_services_and_ports_serve_503_with_a_warning() {
    let yaml = format!(
        "{}{}",
        service("web"),
        ingress(
            "i",
            "",
            "  rules:\n  - host: a.com\n    http:\n      paths:\n      - {path: /a, pathType: Prefix, backend: {service: {name: nope, port: {number: 80}}}}\n      - {path: /b, pathType: Prefix, backend: {service: {name: web, port: {number: 81}}}}\n"
        )
    );
    let c = compile_text(&yaml);
    assert_eq!(c.error_count(), 0, "{:?}", messages(&c));
    let m = messages(&c).join("\n");
    assert!(
        m.contains("spec.rules[0].http.paths[0].service: Service ns/nope not found: requests get 503"),
        "{m}"
    );
    assert!(m.contains("Service ns/web has no port 81"), "{m}");
    assert!(c.snapshot.lookup("a.com", "/a").is_some());
}

#[test]
fn a_bad_ingress_is_rejected_alone_with_every_problem() {
    let bad = ingress(
        "bad",
        "  annotations: {portcullis.dev/max-body-size: huge}\n",
        "  rules:\n  - host: -x-\n    http:\n      paths:\n      - {path: /a, pathType: Sideways, backend: {service: {name: web, port: {number: 80}}}}\n      - {path: /b, pathType: Prefix, backend: {resource: {kind: Bucket, name: b}}}\n",
    );
    let good = ingress(
        "good",
        "",
        &format!("  rules:\n{}", rule("b.com", "/", "Prefix", "web")),
    );
    let c = compile_text(&format!("{}{bad}{good}", service("web")));
    let m = messages(&c);
    assert_eq!(c.error_count(), 4, "{m:?}");
    for expected in [
        "Ingress ns/bad metadata.annotations[\"portcullis.dev/max-body-size\"]",
        "Ingress ns/bad spec.rules[0].host: \"-x-\" is not a valid DNS name",
        "Ingress ns/bad spec.rules[0].http.paths[0].pathType",
        "Ingress ns/bad spec.rules[0].http.paths[1].backend.resource: resource backends are not supported",
    ] {
        assert!(
            m.iter().any(|p| p.contains(expected)),
            "missing {expected}: {m:?}"
        );
    }
    assert_eq!(c.snapshot.stats.ingresses_rejected, 1);
    assert_eq!(served_service(&c, "b.com", "/"), Some("web".into()));
    assert_eq!(served_service(&c, "-x-", "/a"), None);
}

#[test]
fn paths_must_be_normalized_and_literal() {
    for (path, expected) in [
        ("/a//b", "is not in normalized form"),
        ("/a/../b", "is not in normalized form"),
        ("/tf(/|$)(.*)", "regular expressions are not supported"),
        ("/%2F", "encoded slash"),
        ("relative", "must start with /"),
    ] {
        let c = compile_text(&format!(
            "{}{}",
            service("web"),
            ingress(
                "i",
                "",
                &format!(
                    "  rules:\n{}",
                    rule("a.com", &format!("\"{path}\""), "Prefix", "web")
                )
            )
        ));
        let m = messages(&c).join("\n");
        assert!(m.contains(expected), "{path}: {m}");
        assert_eq!(c.snapshot.stats.ingresses_rejected, 1);
    }
}

#[test]
fn non_ascii_paths_match_their_percent_encoded_form() {
    let c = compile_text(&format!(
        "{}{}",
        service("web"),
        ingress(
            "i",
            "",
            &format!("  rules:\n{}", rule("a.com", "/café", "Prefix", "web"))
        )
    ));
    assert_eq!(c.snapshot.stats.ingresses_rejected, 0, "{:?}", messages(&c));
    for request in ["/caf%C3%A9", "/caf%c3%a9/menu", "/café"] {
        let normalized = crate::path::normalize(request).unwrap();
        assert!(c.snapshot.lookup("a.com", &normalized).is_some(), "{request}");
    }
    assert!(c.snapshot.lookup("a.com", "/cafe").is_none());
}

#[test]
fn older_ingress_wins_a_conflict_then_namespace_and_name() {
    let newer = ingress(
        "newer",
        "  creationTimestamp: \"2024-05-01T00:00:00Z\"\n",
        &format!("  rules:\n{}", rule("a.com", "/x", "Prefix", "new")),
    );
    let older = ingress(
        "older",
        "  creationTimestamp: \"2023-01-01T00:00:00Z\"\n",
        &format!("  rules:\n{}", rule("a.com", "/x/", "Prefix", "old")),
    );
    for yaml in [format!("{newer}{older}"), format!("{older}{newer}")] {
        let c = compile_text(&yaml);
        assert_eq!(served_service(&c, "a.com", "/x/y"), Some("old".into()));
        let m = messages(&c).join("\n");
        assert!(
            m.contains("error: Ingress ns/newer spec.rules[0].http.paths[0]: host a.com path /x (Prefix) is already served by Ingress ns/older"),
            "{m}"
        );
    }
    // Without timestamps, namespace/name decides: "a" before "b".
    let a = ingress(
        "a",
        "",
        &format!("  rules:\n{}", rule("a.com", "/", "Prefix", "sa")),
    );
    let b = ingress(
        "b",
        "",
        &format!("  rules:\n{}", rule("a.com", "/", "Prefix", "sb")),
    );
    for yaml in [format!("{a}{b}"), format!("{b}{a}")] {
        assert_eq!(
            served_service(&compile_text(&yaml), "a.com", "/"),
            Some("sa".into())
        );
    }
}

#[test]
fn default_backends_and_conflicts() {
    let a = ingress(
        "a",
        "",
        "  defaultBackend: {service: {name: fallback, port: {number: 80}}}\n",
    );
    let b = ingress(
        "b",
        "",
        "  defaultBackend: {service: {name: other, port: {number: 80}}}\n",
    );
    let c = compile_text(&format!("{a}{b}"));
    assert_eq!(
        served_service(&c, "any.host", "/whatever"),
        Some("fallback".into())
    );
    assert!(messages(&c)
        .join("\n")
        .contains("Ingress ns/b spec.defaultBackend: Ingress ns/a already provides the default backend"));
}

#[test]
fn ingress_class_selection() {
    let mk = |name: &str, class: &str| {
        format!("---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: {name}, namespace: ns{class}}}\nspec:\n  rules:\n{}", rule(&format!("{name}.com"), "/", "Prefix", name))
    };
    let yaml = format!(
        "{}{}{}{}",
        "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: byspec, namespace: ns}\nspec:\n  ingressClassName: portcullis\n  rules:\n  - host: byspec.com\n    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: s, port: {number: 80}}}}]}\n",
        mk("legacy", ", annotations: {kubernetes.io/ingress.class: portcullis}"),
        mk("other", ", annotations: {kubernetes.io/ingress.class: nginx}"),
        mk("classless", ""),
    );
    let c = compile_text(&yaml);
    assert!(served_service(&c, "byspec.com", "/").is_some());
    assert!(served_service(&c, "legacy.com", "/").is_some());
    assert!(served_service(&c, "other.com", "/").is_none());
    assert!(served_service(&c, "classless.com", "/").is_none());
    assert_eq!(c.snapshot.stats.ingresses_other_class, 2);

    let default_class = "---\napiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata:\n  name: portcullis\n  annotations: {ingressclass.kubernetes.io/is-default-class: \"true\"}\nspec: {controller: portcullis.dev/ingress-controller}\n";
    let c = compile_text(&format!("{yaml}{default_class}"));
    assert!(served_service(&c, "classless.com", "/").is_some());
    assert!(served_service(&c, "other.com", "/").is_none());

    let settings = Settings {
        ingress_class: "nginx".into(),
        ..Settings::default()
    };
    let c = compile_with(&yaml, &settings);
    assert!(served_service(&c, "other.com", "/").is_some());
    assert!(served_service(&c, "byspec.com", "/").is_none());
}

fn tls_secret(name: &str, hosts: &[&str], not_after_year: i32) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>()).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(not_after_year, 1, 1);
    let cert = params.self_signed(&key).unwrap();
    secret_yaml(name, &cert.pem(), &key.serialize_pem())
}

fn secret_yaml(name: &str, crt: &str, key: &str) -> String {
    let indent = |s: &str| s.lines().map(|l| format!("    {l}\n")).collect::<String>();
    format!(
        "---\napiVersion: v1\nkind: Secret\ntype: kubernetes.io/tls\nmetadata: {{name: {name}, namespace: ns}}\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(crt),
        indent(key)
    )
}

fn tls_ingress(name: &str, host: &str, secret: &str) -> String {
    ingress(
        name,
        "",
        &format!(
            "  tls:\n  - hosts: [{host}]\n    secretName: {secret}\n  rules:\n{}",
            rule(host, "/", "Prefix", "web")
        ),
    )
}

#[test]
fn certificates_are_checked_at_load() {
    let yaml = [
        tls_secret("good", &["a.com"], 2030),
        tls_ingress("ia", "a.com", "good"),
        tls_secret("wild", &["*.w.com"], 2030),
        tls_ingress("iw", "x.w.com", "wild"),
        tls_secret("expired", &["b.com"], 2021),
        tls_ingress("ib", "b.com", "expired"),
        tls_secret("other-names", &["z.com"], 2030),
        tls_ingress("ic", "c.com", "other-names"),
        tls_ingress("id", "d.com", "missing"),
    ]
    .concat();
    let c = compile_text(&yaml);
    let m = messages(&c).join("\n");
    assert!(c.snapshot.certificates.for_server_name("a.com").is_some());
    assert!(c.snapshot.certificates.for_server_name("x.w.com").is_some());
    assert!(
        m.contains("Secret ns/expired data: the certificate expired on"),
        "{m}"
    );
    assert!(
        m.contains(
            "Ingress ns/ic spec.tls[0].hosts: the certificate in Secret ns/other-names does not cover c.com"
        ),
        "{m}"
    );
    assert!(
        m.contains("Ingress ns/id spec.tls[0].secretName: Secret ns/missing not found"),
        "{m}"
    );
    for host in ["b.com", "c.com", "d.com"] {
        assert!(c.snapshot.certificates.for_server_name(host).is_none(), "{host}");
        // Still a TLS host: plain HTTP redirects, never silently unencrypted.
        assert!(c.snapshot.host_has_tls(host), "{host}");
    }
    let route = c.snapshot.routes.route(c.snapshot.lookup("d.com", "/").unwrap());
    assert!(route.tls);
    // All Ingresses still serve their routes.
    assert_eq!(c.snapshot.stats.ingresses_served, 5);
}

#[test]
fn a_key_that_does_not_match_its_certificate_is_refused() {
    let key = rcgen::KeyPair::generate().unwrap();
    let other = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["a.com".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let yaml = format!(
        "{}{}",
        secret_yaml("s", &cert.pem(), &other.serialize_pem()),
        tls_ingress("i", "a.com", "s")
    );
    let m = messages(&compile_text(&yaml)).join("\n");
    assert!(
        m.contains("Secret ns/s data: tls.key does not match the certificate in tls.crt"),
        "{m}"
    );
    let yaml = format!(
        "{}{}",
        secret_yaml("s", "not pem", &key.serialize_pem()),
        tls_ingress("i", "a.com", "s")
    );
    let m = messages(&compile_text(&yaml)).join("\n");
    assert!(
        m.contains("Secret ns/s data: tls.crt holds no PEM certificate"),
        "{m}"
    );
}

#[test]
fn hosts_without_tls_are_pointed_out() {
    let c = compile_text(&format!(
        "{}{}",
        service("web"),
        ingress(
            "i",
            "",
            &format!("  rules:\n{}", rule("plain.com", "/", "Prefix", "web"))
        )
    ));
    assert!(messages(&c)
        .join("\n")
        .contains("warning: Ingress ns/i spec.tls: plain.com has no spec.tls entry"));
    assert!(
        !c.snapshot
            .routes
            .route(c.snapshot.lookup("plain.com", "/").unwrap())
            .tls
    );
}

#[test]
fn unknown_portcullis_annotations_reject_the_ingress() {
    let c = compile_text(&ingress(
        "i",
        "  annotations: {portcullis.dev/allow-group: admins}\n",
        &format!("  rules:\n{}", rule("a.com", "/", "Prefix", "web")),
    ));
    assert_eq!(c.snapshot.stats.ingresses_rejected, 1);
    assert!(c.snapshot.lookup("a.com", "/").is_none());
}

#[test]
fn compilation_is_deterministic_whatever_the_input_order() {
    let docs = [
        service("web"),
        tls_ingress("x", "a.com", "missing"),
        ingress(
            "y",
            "",
            &format!(
                "  rules:\n{}{}",
                rule("a.com", "/", "Prefix", "web"),
                rule("\"*.b.com\"", "/p", "Exact", "web")
            ),
        ),
        ingress(
            "z",
            "",
            &format!("  rules:\n{}", rule("a.com", "/", "Prefix", "other")),
        ),
    ];
    let forward = compile_text(&docs.concat());
    let backward = compile_text(&docs.iter().rev().cloned().collect::<String>());
    let without_origin = |c: &Compiled| {
        c.problems
            .iter()
            .map(|p| {
                Problem {
                    origin: None,
                    ..p.clone()
                }
                .to_string()
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(without_origin(&forward), without_origin(&backward));
    assert_eq!(forward.error_count(), 3, "{:?}", messages(&forward));
    assert_eq!(
        served_service(&forward, "a.com", "/"),
        served_service(&backward, "a.com", "/")
    );
}

/// Every file of the shared corpus of real manifests reads without a YAML error, and the
/// one Ingress in it (a regex path written for ingress-nginx) is explained, not served.
#[test]
fn real_world_corpus() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus");
    let mut files = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                files.push(p);
            }
        }
    }
    if files.is_empty() {
        eprintln!("corpus not found at {}: skipped", root.display());
        return;
    }
    let mut m = Manifests::default();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        m.add_text(&f.display().to_string(), &text);
    }
    // Two of the projects both define Service default/frontend: that is the only kind
    // of problem allowed; no document fails to parse.
    let unreadable: Vec<_> = m
        .problems
        .iter()
        .filter(|p| !p.message.contains("defined more than once"))
        .collect();
    assert!(unreadable.is_empty(), "{unreadable:?}");
    assert!(m.services.len() >= 10);
    let settings = Settings::default();
    let c = compile(&m, &settings, NOW);
    assert_eq!(c.snapshot.stats.ingresses_other_class, 1);
}

#[test]
fn ingress_nginx_access_annotations_fail_closed() {
    let guarded = ingress(
        "guarded",
        "  annotations: {nginx.ingress.kubernetes.io/auth-tls-secret: ns/ca, nginx.ingress.kubernetes.io/auth-tls-verify-client: \"on\"}\n",
        &format!("  rules:\n{}", rule("a.com", "/", "Prefix", "web")),
    );
    let rewritten = ingress(
        "rewritten",
        "  annotations: {nginx.ingress.kubernetes.io/limit-rate: \"100\", nginx.ingress.kubernetes.io/proxy-buffering: \"on\"}\n",
        &format!("  rules:\n{}", rule("b.com", "/", "Prefix", "web")),
    );
    let c = compile_text(&format!("{}{guarded}{rewritten}", service("web")));
    assert!(
        c.snapshot.lookup("a.com", "/").is_none(),
        "never served without its auth"
    );
    assert!(c.snapshot.lookup("b.com", "/").is_some());
    let m = messages(&c).join("\n");
    assert!(m.contains("error: Ingress ns/guarded metadata.annotations[\"nginx.ingress.kubernetes.io/auth-tls-secret\"]: Secret ns/ca not found"), "{m}");
    assert!(m.contains("warning: Ingress ns/rewritten metadata.annotations[\"nginx.ingress.kubernetes.io/limit-rate\"]: not supported"), "{m}");
    assert!(
        !m.contains("proxy-buffering"),
        "supported with a documented difference: {m}"
    );
    assert_eq!(c.snapshot.stats.ingresses_rejected, 1);
    assert_eq!(c.snapshot.stats.ingresses_served, 1);
}

#[test]
fn nginx_regex_paths_route_and_invalid_regexes_name_the_path() {
    let regex = ingress(
        "regex",
        "  annotations: {nginx.ingress.kubernetes.io/rewrite-target: /$2}\n",
        &format!(
            "  rules:\n{}",
            rule("a.com", "/api(/|$)(.*)", "ImplementationSpecific", "web")
        ),
    );
    let broken = ingress(
        "broken",
        "  annotations: {nginx.ingress.kubernetes.io/use-regex: \"true\"}\n",
        &format!(
            "  rules:\n{}",
            rule("b.com", "/(unclosed", "ImplementationSpecific", "web")
        ),
    );
    let c = compile_text(&format!("{}{regex}{broken}", service("web")));
    let id = c.snapshot.lookup("a.com", "/API/users").expect("regex route");
    assert_eq!(c.snapshot.routes.route(id).path, "/api(/|$)(.*)");
    assert!(c.snapshot.lookup("a.com", "/apis").is_none());
    let m = messages(&c).join("\n");
    assert!(
        m.contains("error: Ingress ns/broken spec.rules[0].http.paths[0].path: \"/(unclosed\" is not a valid regular expression"),
        "{m}"
    );
}

#[test]
fn proxy_ssl_secret_resolves_in_the_ingress_namespace_and_fails_closed() {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = params.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap();
    let indent = |s: &str| s.lines().map(|l| format!("    {l}\n")).collect::<String>();
    let ca_secret = |name: &str, ca: &str| {
        format!(
            "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: ns}}\nstringData:\n  ca.crt: |\n{}",
            indent(ca)
        )
    };
    let tls_ing = |name: &str, host: &str, secret: &str, protocol: &str| {
        ingress(
            name,
            &format!("  annotations: {{nginx.ingress.kubernetes.io/proxy-ssl-secret: \"{secret}\", nginx.ingress.kubernetes.io/proxy-ssl-verify: \"on\", nginx.ingress.kubernetes.io/backend-protocol: {protocol}}}\n"),
            &format!("  rules:\n{}", rule(host, "/", "Prefix", "web")),
        )
    };
    let yaml = [
        service("web"),
        ca_secret("good", &ca.pem()),
        ca_secret("junk", "not a certificate"),
        tls_ing("ok", "a.com", "ns/good", "HTTPS"),
        tls_ing("missing", "b.com", "ns/nope", "HTTPS"),
        tls_ing("foreign", "c.com", "other/good", "HTTPS"),
        tls_ing("unparsable", "d.com", "junk", "HTTPS"),
        tls_ing("plain", "e.com", "good", "HTTP"),
    ]
    .concat();
    let c = compile_text(&yaml);
    let m = messages(&c).join("\n");
    let id = c.snapshot.lookup("a.com", "/").expect("served");
    let tls = c.snapshot.routes.route(id).options.backend_tls.clone().unwrap();
    assert!(tls.verify);
    assert_eq!(tls.ca.len(), 1);
    for host in ["b.com", "c.com", "d.com"] {
        assert!(
            c.snapshot.lookup(host, "/").is_none(),
            "{host} must not be served: {m}"
        );
    }
    let field = "metadata.annotations[\"nginx.ingress.kubernetes.io/proxy-ssl-secret\"]";
    assert!(
        m.contains(&format!(
            "error: Ingress ns/missing {field}: Secret ns/nope not found"
        )),
        "{m}"
    );
    assert!(
        m.contains(&format!(
            "error: Ingress ns/foreign {field}: Secret other/good is in namespace"
        )),
        "{m}"
    );
    assert!(
        m.contains(&format!(
            "error: Ingress ns/unparsable {field}: Secret ns/junk: ca.crt"
        )),
        "{m}"
    );
    assert!(c.snapshot.lookup("e.com", "/").is_some());
    assert!(
        m.contains(&format!(
            "warning: Ingress ns/plain {field}: has no effect: the backend protocol is HTTP"
        )),
        "{m}"
    );
}

#[test]
fn default_backend_is_the_first_port_of_a_service_in_the_namespace() {
    let errors_service = "---\napiVersion: v1\nkind: Service\nmetadata: {name: errors, namespace: ns}\nspec:\n  ports: [{name: page, port: 8080}, {name: other, port: 9090}]\n";
    let annotated = |name: &str, backend: &str, host: &str| {
        ingress(
            name,
            &format!("  annotations: {{nginx.ingress.kubernetes.io/default-backend: {backend}, nginx.ingress.kubernetes.io/custom-http-errors: \"404,503\"}}\n"),
            &format!("  rules:\n{}", rule(host, "/", "Prefix", "web")),
        )
    };
    let c = compile_text(&format!(
        "{}{errors_service}{}{}",
        service("web"),
        annotated("good", "errors", "a.com"),
        annotated("missing", "nowhere", "b.com")
    ));
    let route = c.snapshot.routes.route(c.snapshot.lookup("a.com", "/").unwrap());
    let fallback = c.snapshot.backend(route.fallback.expect("resolved"));
    assert_eq!(
        (fallback.service.as_str(), fallback.port.as_str()),
        ("errors", "8080")
    );
    assert_eq!(route.options.custom_http_errors, vec![404, 503]);
    // A missing default backend is an error, but the routes are still served.
    let route = c.snapshot.routes.route(c.snapshot.lookup("b.com", "/").unwrap());
    assert!(route.fallback.is_none());
    let m = messages(&c).join("\n");
    assert!(m.contains("error: Ingress ns/missing metadata.annotations[\"nginx.ingress.kubernetes.io/default-backend\"]: Service ns/nowhere not found"), "{m}");
    assert!(m.contains("Service ns/errors has no ready endpoints"), "{m}");
}

#[test]
fn custom_headers_come_from_a_configmap_of_the_ingress_namespace_or_reject() {
    let with = |name: &str, host: &str, reference: &str| {
        ingress(
            name,
            &format!("  annotations: {{nginx.ingress.kubernetes.io/custom-headers: {reference}}}\n"),
            &format!("  rules:\n{}", rule(host, "/", "Prefix", "web")),
        )
    };
    let config_maps = "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: hdrs, namespace: ns}\ndata: {X-Frame-Options: DENY}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: bad, namespace: ns}\ndata: {Set-Cookie: a=b}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: hdrs, namespace: other}\ndata: {X-A: b}\n";
    let c = compile_text(&format!(
        "{}{}{}{}{}{config_maps}",
        service("web"),
        with("good", "a.com", "ns/hdrs"),
        with("missing", "b.com", "ns/nope"),
        with("bad", "c.com", "bad"),
        with("elsewhere", "d.com", "other/hdrs"),
    ));
    let id = c.snapshot.lookup("a.com", "/").unwrap();
    let headers = c
        .snapshot
        .routes
        .route(id)
        .options
        .custom_headers
        .clone()
        .unwrap();
    assert_eq!(headers.headers.len(), 1);
    assert_eq!(headers.headers[0].0, "x-frame-options");
    assert_eq!(headers.headers[0].1, "DENY");
    for host in ["b.com", "c.com", "d.com"] {
        assert!(
            c.snapshot.lookup(host, "/").is_none(),
            "{host} is never served without its headers"
        );
    }
    let m = messages(&c).join("\n");
    let field = "metadata.annotations[\"nginx.ingress.kubernetes.io/custom-headers\"]";
    assert!(
        m.contains(&format!(
            "error: Ingress ns/missing {field}: ConfigMap ns/nope not found"
        )),
        "{m}"
    );
    assert!(
        m.contains(&format!(
            "error: Ingress ns/bad {field}: ConfigMap ns/bad: Set-Cookie may not be set"
        )),
        "{m}"
    );
    assert!(
        m.contains(&format!(
            "error: Ingress ns/elsewhere {field}: ConfigMap other/hdrs is not in the Ingress's namespace"
        )),
        "{m}"
    );
}
