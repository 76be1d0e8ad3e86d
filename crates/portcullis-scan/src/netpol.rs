//! `portcullis netpol`: the NetworkPolicies that close what the scan found. A default
//! deny of ingress in every namespace that runs workloads, plus, for each Service an
//! Ingress or HTTPRoute sends traffic to, a policy admitting the gateway's pods to the
//! Service's pods on the ports the Service targets. Applying them and scanning again
//! leaves no network-policy finding.
//!
//! Output is YAML whose values are written as JSON (valid YAML), so no label or name
//! can change the structure of what is printed.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use crate::inventory::Inventory;

/// Where the gateway's pods run, to admit them.
#[derive(Debug, Clone)]
pub struct GatewayPods {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
}

impl Default for GatewayPods {
    fn default() -> Self {
        GatewayPods {
            namespace: "portcullis".into(),
            labels: [("app.kubernetes.io/name".to_string(), "portcullis".to_string())].into(),
        }
    }
}

/// The policies, as a multi-document YAML text.
pub fn network_policies(inv: &Inventory, gateway: &GatewayPods) -> String {
    let mut docs: Vec<Value> = Vec::new();
    let namespaces: BTreeSet<&str> = inv
        .workloads
        .iter()
        .filter(|w| !w.static_pod && w.spec.host_network != Some(true))
        .map(|w| w.namespace.as_str())
        .collect();
    for ns in &namespaces {
        docs.push(json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "default-deny-ingress", "namespace": ns, "labels": {"app.kubernetes.io/managed-by": "portcullis-netpol"}},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
        }));
    }
    // Services the gateway sends traffic to.
    let mut targets: BTreeSet<(String, String)> = BTreeSet::new();
    for ing in &inv.ingresses {
        let spec = ing.value.spec.clone().unwrap_or_default();
        let rules = spec
            .rules
            .iter()
            .flatten()
            .flat_map(|r| r.http.iter().flat_map(|h| h.paths.iter()));
        for b in rules.map(|p| &p.backend).chain(spec.default_backend.iter()) {
            if let Some(s) = &b.service {
                targets.insert((ing.namespace().to_string(), s.name.clone()));
            }
        }
    }
    for r in &inv.routes {
        let (route_ns, _) = crate::inventory::json_name(&r.value);
        for rule in r.value["spec"]["rules"].as_array().into_iter().flatten() {
            for b in rule["backendRefs"].as_array().into_iter().flatten() {
                if let Some(name) = b["name"].as_str() {
                    let ns = b["namespace"].as_str().unwrap_or(route_ns.as_str());
                    targets.insert((ns.to_string(), name.to_string()));
                }
            }
        }
    }
    for (ns, name) in targets {
        let Some(service) = inv
            .services
            .iter()
            .find(|s| s.namespace() == ns && s.name() == name)
        else {
            continue;
        };
        let spec = service.value.spec.clone().unwrap_or_default();
        let Some(selector) = spec.selector.filter(|s| !s.is_empty()) else {
            continue;
        };
        let ports: Vec<Value> = spec
            .ports
            .iter()
            .flatten()
            .map(|p| {
                let port = match &p.target_port {
                    Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => json!(n),
                    Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s)) => json!(s),
                    None => json!(p.port),
                };
                json!({"port": port, "protocol": p.protocol.clone().unwrap_or_else(|| "TCP".into())})
            })
            .collect();
        docs.push(json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": format!("allow-portcullis-to-{name}"), "namespace": ns, "labels": {"app.kubernetes.io/managed-by": "portcullis-netpol"}},
            "spec": {
                "podSelector": {"matchLabels": selector},
                "policyTypes": ["Ingress"],
                "ingress": [{
                    "from": [{
                        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": gateway.namespace}},
                        "podSelector": {"matchLabels": gateway.labels},
                    }],
                    "ports": ports,
                }],
            },
        }));
    }
    let mut out = String::new();
    for d in docs {
        out.push_str("---\n");
        if let Value::Object(map) = d {
            for (k, v) in map {
                out.push_str(&format!("{k}: {v}\n"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: c, image: i}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {selector: {app: web}, ports: [{port: 80, targetPort: http}]}\n---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: web, namespace: shop}\nspec: {defaultBackend: {service: {name: web, port: {number: 80}}}}\n---\napiVersion: batch/v1\nkind: Job\nmetadata: {name: migrate, namespace: shop}\nspec: {template: {metadata: {labels: {job: m}}, spec: {restartPolicy: Never, containers: [{name: c, image: i}]}}}\n";

    #[test]
    fn applying_the_policies_closes_the_network_findings() {
        let mut before = Inventory::default();
        before.add_text("app.yaml", APP);
        let net = |inv: &Inventory| {
            crate::scan(inv, &crate::Options::default())
                .findings
                .into_iter()
                .filter(|f| f.rule.starts_with("PC-NET"))
                .count()
        };
        assert!(net(&before) >= 2);
        let policies = network_policies(&before, &GatewayPods::default());
        assert!(
            policies.contains("allow-portcullis-to-web") && policies.contains("\"http\""),
            "{policies}"
        );
        let mut after = Inventory::default();
        after.add_text("app.yaml", APP);
        after.add_text("netpol.yaml", &policies);
        assert!(after.problems.is_empty(), "{:?}", after.problems);
        assert_eq!(net(&after), 0);
        // Untrusted label values cannot change the document's structure.
        let evil = APP
            .replace(
                "app: web}}\n    spec",
                "app: \"web\\n  kind: ClusterRole\"}}\n    spec",
            )
            .replace(
                "selector: {app: web}, ports",
                "selector: {app: \"web\\n  kind: ClusterRole\"}, ports",
            );
        let mut inv = Inventory::default();
        inv.add_text("app.yaml", &evil);
        let text = network_policies(&inv, &GatewayPods::default());
        let mut check = Inventory::default();
        check.add_text("netpol.yaml", &text);
        assert!(check.problems.is_empty());
        assert!(check.other_kinds.is_empty() && check.cluster_roles.is_empty());
    }
}
