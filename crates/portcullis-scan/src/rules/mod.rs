//! The rules, one per file. Each file's docs say what the rule does, why it matters, an
//! example, and the fix; each has fixture tests that must fire and must not.

use crate::context::Context;
use crate::finding::{Finding, Severity};

mod api_001_removed_api;
mod cp_001_anonymous_auth;
mod cp_002_authorization_mode;
mod cp_003_audit_log;
mod cp_004_external_authentication;
mod exp_001_load_balancer;
mod exp_002_node_port;
mod exp_003_external_ips;
mod exp_004_host_port;
mod exp_005_host_network;
mod exp_006_ingress_without_tls;
mod exp_007_route_without_auth;
mod exp_008_nginx_snippets;
mod exp_009_gateway_listener_without_tls;
mod net_001_no_default_deny;
mod net_002_pod_without_policy;
mod net_003_policy_selects_nothing;
mod rbac_001_wildcard;
mod rbac_002_cluster_admin_binding;
mod rbac_003_read_secrets;
mod rbac_004_escalation;
mod rbac_005_exec;
mod rbac_006_create_pods;
mod rbac_007_nodes_proxy;
mod rbac_008_public_bindings;
mod rbac_009_exposed_takeover;
mod rbac_010_workload_takeover_rights;
mod wl_001_privileged;
mod wl_002_privilege_escalation;
mod wl_003_host_namespaces;
mod wl_004_host_path;
mod wl_005_root_user;
mod wl_006_capabilities;
mod wl_007_writable_root_filesystem;
mod wl_008_seccomp;
mod wl_009_token_automount;
mod wl_010_secrets_in_env;

/// A posture rule.
pub struct Rule {
    /// Stable id, used in reports, `--ignore` files and `portcullis.dev/ignore`.
    pub id: &'static str,
    pub title: &'static str,
    pub severity: Severity,
    pub check: fn(&Context<'_>, &mut Vec<Finding>),
}

/// Every rule, in report order.
pub const ALL: &[&Rule] = &[
    &rbac_009_exposed_takeover::RULE,
    &exp_001_load_balancer::RULE,
    &exp_002_node_port::RULE,
    &exp_003_external_ips::RULE,
    &exp_004_host_port::RULE,
    &exp_005_host_network::RULE,
    &exp_006_ingress_without_tls::RULE,
    &exp_007_route_without_auth::RULE,
    &exp_008_nginx_snippets::RULE,
    &exp_009_gateway_listener_without_tls::RULE,
    &net_001_no_default_deny::RULE,
    &net_002_pod_without_policy::RULE,
    &net_003_policy_selects_nothing::RULE,
    &rbac_001_wildcard::RULE,
    &rbac_002_cluster_admin_binding::RULE,
    &rbac_003_read_secrets::RULE,
    &rbac_004_escalation::RULE,
    &rbac_005_exec::RULE,
    &rbac_006_create_pods::RULE,
    &rbac_007_nodes_proxy::RULE,
    &rbac_008_public_bindings::RULE,
    &rbac_010_workload_takeover_rights::RULE,
    &wl_001_privileged::RULE,
    &wl_002_privilege_escalation::RULE,
    &wl_003_host_namespaces::RULE,
    &wl_004_host_path::RULE,
    &wl_005_root_user::RULE,
    &wl_006_capabilities::RULE,
    &wl_007_writable_root_filesystem::RULE,
    &wl_008_seccomp::RULE,
    &wl_009_token_automount::RULE,
    &wl_010_secrets_in_env::RULE,
    &cp_001_anonymous_auth::RULE,
    &cp_002_authorization_mode::RULE,
    &cp_003_audit_log::RULE,
    &cp_004_external_authentication::RULE,
    &api_001_removed_api::RULE,
];

/// Shared helpers for rules.
pub(crate) mod util {
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use portcullis_config::Origin;

    use crate::context::{Context, Rights};

    /// Every Role and ClusterRole with what its rules allow.
    pub fn roles<'a>(ctx: &'a Context<'_>) -> Vec<(String, &'a Origin, Rights)> {
        let mut out = Vec::new();
        for r in &ctx.inv.cluster_roles {
            let mut rights = Rights::default();
            for rule in r.value.rules.iter().flatten() {
                rights.add_rule(rule);
            }
            out.push((format!("ClusterRole {}", r.name()), &r.origin, rights));
        }
        for r in &ctx.inv.roles {
            let mut rights = Rights::default();
            for rule in r.value.rules.iter().flatten() {
                rights.add_rule(rule);
            }
            out.push((format!("Role {}/{}", r.namespace(), r.name()), &r.origin, rights));
        }
        out
    }

    /// Whether the pod's containers get a service account token: automounted (unless
    /// turned off), or mounted explicitly through a projected volume.
    pub fn mounts_token(spec: &PodSpec) -> bool {
        let projected = spec.volumes.iter().flatten().any(|v| {
            v.projected.as_ref().is_some_and(|p| {
                p.sources
                    .iter()
                    .flatten()
                    .any(|s| s.service_account_token.is_some())
            })
        });
        projected || spec.automount_service_account_token != Some(false)
    }

    /// Every container of a pod: init, regular and ephemeral.
    pub fn containers(spec: &PodSpec) -> impl Iterator<Item = &Container> {
        spec.init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter())
    }

    /// Asks `judge` about every container of every workload; each message it returns
    /// becomes a finding of `rule`, at the rule's severity, on that workload.
    pub fn container_findings(
        ctx: &Context<'_>,
        out: &mut Vec<crate::finding::Finding>,
        rule: &super::Rule,
        fix: &str,
        judge: impl Fn(&crate::inventory::Workload, &Container) -> Option<String>,
    ) {
        for w in &ctx.inv.workloads {
            for c in containers(&w.spec) {
                if let Some(message) = judge(w, c) {
                    out.push(crate::finding::Finding::new(
                        rule.id,
                        rule.severity,
                        w.id(),
                        &w.origin,
                        message,
                        fix,
                    ));
                }
            }
        }
    }

    /// kube-apiserver containers (of static pods or any workload running it).
    pub fn api_servers<'a>(ctx: &'a Context<'_>) -> Vec<(&'a crate::inventory::Workload, &'a Container)> {
        let mut out = Vec::new();
        for w in &ctx.inv.workloads {
            for c in &w.spec.containers {
                let runs = c
                    .command
                    .iter()
                    .flatten()
                    .chain(c.args.iter().flatten())
                    .next()
                    .is_some_and(|first| first.ends_with("kube-apiserver"));
                if runs {
                    out.push((w, c));
                }
            }
        }
        out
    }

    /// Flags of the kube-apiserver command line, as `--name=value` or `--name value`.
    pub fn flag<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
        let args: Vec<&String> = c
            .command
            .iter()
            .flatten()
            .chain(c.args.iter().flatten())
            .collect();
        let prefix = format!("--{name}=");
        for (i, a) in args.iter().enumerate() {
            if let Some(v) = a.strip_prefix(&prefix) {
                return Some(v);
            }
            if a.as_str() == format!("--{name}") {
                return args.get(i + 1).map(|s| s.as_str());
            }
        }
        None
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use crate::finding::Finding;

    /// A static kube-apiserver pod running with these extra flags (each `, --flag`).
    pub fn apiserver(flags: &str) -> String {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: kube-apiserver, namespace: kube-system, labels: {{component: kube-apiserver, tier: control-plane}}}}\nspec:\n  hostNetwork: true\n  containers:\n  - name: kube-apiserver\n    image: registry.k8s.io/kube-apiserver:v1.31.0\n    command: [kube-apiserver, --etcd-servers=https://127.0.0.1:2379{flags}]\n")
    }

    /// Scans YAML and returns the findings of one rule.
    pub fn findings(yaml: &str, rule: &str) -> Vec<Finding> {
        let mut inv = crate::Inventory::default();
        inv.add_text("fixture.yaml", yaml);
        assert!(inv.problems.is_empty(), "{:?}", inv.problems);
        crate::scan(&inv, &crate::Options::default())
            .findings
            .into_iter()
            .filter(|f| f.rule == rule)
            .collect()
    }

    pub fn pod(spec: &str) -> String {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: p, namespace: ns, labels: {{app: p}}}}\nspec:\n{spec}")
    }
}
