//! The exposure map: every way into the cluster, the workloads behind it, its ports,
//! and whether TLS, authentication and a NetworkPolicy stand in the way.

use crate::context::{Context, EntryPoint};

/// ingress-nginx annotations that put authentication in front of a route.
pub const NGINX_AUTH: &[&str] = &[
    "nginx.ingress.kubernetes.io/auth-url",
    "nginx.ingress.kubernetes.io/auth-type",
];

pub fn entry_points(ctx: &Context<'_>) -> Vec<EntryPoint> {
    let inv = ctx.inv;
    let mut out = Vec::new();
    let names = |idx: &[usize]| idx.iter().map(|i| inv.workloads[*i].id()).collect::<Vec<_>>();
    let isolated = |idx: &[usize]| !idx.is_empty() && idx.iter().all(|i| ctx.isolated.contains(i));
    for s in &inv.services {
        let spec = s.value.spec.clone().unwrap_or_default();
        let backends = ctx.backends(s.namespace(), s.name());
        let via = format!("Service {}/{}", s.namespace(), s.name());
        let ports = spec.ports.clone().unwrap_or_default();
        let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
        if kind == "LoadBalancer" || kind == "NodePort" {
            out.push(EntryPoint {
                kind: if kind == "LoadBalancer" {
                    "LoadBalancer"
                } else {
                    "NodePort"
                },
                via: via.clone(),
                ports: ports
                    .iter()
                    .map(|p| match p.node_port {
                        Some(n) => {
                            format!("{}/{} (node {n})", p.port, p.protocol.as_deref().unwrap_or("TCP"))
                        }
                        None => format!("{}/{}", p.port, p.protocol.as_deref().unwrap_or("TCP")),
                    })
                    .collect(),
                workloads: names(backends),
                tls: false,
                auth: false,
                network_policy: isolated(backends),
            });
        }
        if spec.external_ips.as_ref().is_some_and(|e| !e.is_empty()) {
            out.push(EntryPoint {
                kind: "externalIPs",
                via,
                ports: spec
                    .external_ips
                    .iter()
                    .flatten()
                    .flat_map(|ip| ports.iter().map(move |p| format!("{ip}:{}", p.port)))
                    .collect(),
                workloads: names(backends),
                tls: false,
                auth: false,
                network_policy: isolated(backends),
            });
        }
    }
    for (i, w) in inv.workloads.iter().enumerate() {
        let host_ports: Vec<String> = w
            .spec
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                p.host_port
                    .map(|h| format!("{h}/{}", p.protocol.as_deref().unwrap_or("TCP")))
            })
            .collect();
        if !host_ports.is_empty() {
            out.push(EntryPoint {
                kind: "hostPort",
                via: w.id(),
                ports: host_ports,
                workloads: vec![w.id()],
                tls: false,
                auth: false,
                network_policy: ctx.isolated.contains(&i),
            });
        }
        if w.spec.host_network == Some(true) {
            out.push(EntryPoint {
                kind: "hostNetwork",
                via: w.id(),
                ports: w
                    .spec
                    .containers
                    .iter()
                    .flat_map(|c| c.ports.iter().flatten())
                    .map(|p| format!("{}/{}", p.container_port, p.protocol.as_deref().unwrap_or("TCP")))
                    .collect(),
                workloads: vec![w.id()],
                // NetworkPolicies do not apply to host-network pods.
                tls: false,
                auth: false,
                network_policy: false,
            });
        }
    }
    for ing in &inv.ingresses {
        let spec = ing.value.spec.clone().unwrap_or_default();
        let tls_hosts: Vec<String> = spec
            .tls
            .iter()
            .flatten()
            .flat_map(|t| t.hosts.clone().unwrap_or_default())
            .collect();
        let annotations = ing.value.metadata.annotations.clone().unwrap_or_default();
        let auth = annotations
            .get("portcullis.dev/auth")
            .is_some_and(|a| a != "none")
            || NGINX_AUTH.iter().any(|k| annotations.contains_key(*k));
        for rule in spec.rules.iter().flatten() {
            let host = rule.host.clone().unwrap_or_default();
            for p in rule.http.iter().flat_map(|h| h.paths.iter()) {
                let Some(service) = p.backend.service.as_ref() else {
                    continue;
                };
                let backends = ctx.backends(ing.namespace(), &service.name);
                out.push(EntryPoint {
                    kind: "Ingress",
                    via: format!(
                        "Ingress {}/{} {}{}",
                        ing.namespace(),
                        ing.name(),
                        if host.is_empty() { "*" } else { &host },
                        p.path.as_deref().unwrap_or("/")
                    ),
                    ports: vec![if tls_hosts.contains(&host) {
                        "443".into()
                    } else {
                        "80".into()
                    }],
                    workloads: names(backends),
                    tls: !host.is_empty() && tls_hosts.contains(&host),
                    auth,
                    network_policy: isolated(backends),
                });
            }
        }
        if let Some(service) = spec.default_backend.as_ref().and_then(|b| b.service.as_ref()) {
            let backends = ctx.backends(ing.namespace(), &service.name);
            out.push(EntryPoint {
                kind: "Ingress",
                via: format!("Ingress {}/{} (default backend)", ing.namespace(), ing.name()),
                ports: vec!["80".into()],
                workloads: names(backends),
                tls: false,
                auth,
                network_policy: isolated(backends),
            });
        }
    }
    for g in &inv.gateways {
        let (ns, name) = crate::inventory::json_name(&g.value);
        // Routes attached to this Gateway: parentRefs name it (in the route's namespace
        // unless the ref says otherwise).
        let mut backends: Vec<usize> = Vec::new();
        for r in &inv.routes {
            let (route_ns, _) = crate::inventory::json_name(&r.value);
            let attached = r.value["spec"]["parentRefs"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| {
                    p["name"].as_str() == Some(name.as_str())
                        && p["namespace"].as_str().unwrap_or(route_ns.as_str()) == ns
                });
            if !attached {
                continue;
            }
            for rule in r.value["spec"]["rules"].as_array().into_iter().flatten() {
                for b in rule["backendRefs"].as_array().into_iter().flatten() {
                    let kind = b["kind"].as_str().unwrap_or("Service");
                    let service_ns = b["namespace"].as_str().unwrap_or(route_ns.as_str());
                    if let (Some(service), "Service") = (b["name"].as_str(), kind) {
                        backends.extend_from_slice(ctx.backends(service_ns, service));
                    }
                }
            }
        }
        backends.sort_unstable();
        backends.dedup();
        for l in g.value["spec"]["listeners"].as_array().into_iter().flatten() {
            let protocol = l["protocol"].as_str().unwrap_or("HTTP");
            out.push(EntryPoint {
                kind: "Gateway",
                via: format!(
                    "Gateway {ns}/{name} listener {}",
                    l["name"].as_str().unwrap_or("?")
                ),
                ports: vec![format!("{}/{protocol}", l["port"].as_u64().unwrap_or(0))],
                workloads: names(&backends),
                tls: matches!(protocol, "HTTPS" | "TLS"),
                auth: false,
                network_policy: isolated(&backends),
            });
        }
    }
    out
}

/// "this cluster has N entry points; M reach workloads without TLS; K without auth".
#[derive(Debug, Clone, Copy, serde::Serialize, PartialEq, Eq)]
pub struct Summary {
    pub entry_points: usize,
    pub without_tls: usize,
    pub without_auth: usize,
    pub without_network_policy: usize,
}

pub fn summary(points: &[EntryPoint]) -> Summary {
    let reach = |p: &&EntryPoint| !p.workloads.is_empty() || p.kind != "Ingress";
    Summary {
        entry_points: points.len(),
        without_tls: points.iter().filter(reach).filter(|p| !p.tls).count(),
        without_auth: points.iter().filter(reach).filter(|p| !p.auth).count(),
        without_network_policy: points.iter().filter(|p| !p.network_policy).count(),
    }
}
