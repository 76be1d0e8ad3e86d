//! **What it does**: joins the exposure map with RBAC: flags workloads that an entry
//! point reaches and whose service account can take over the cluster (cluster-admin,
//! wildcards, escalate/bind/impersonate, reading Secrets, pods/exec, creating pods,
//! nodes/proxy), directly or through a binding to everyone.
//!
//! **Why it matters**: this is the shortest path from the internet to the whole
//! cluster: one request-level bug in the exposed application gives the attacker the
//! service account token, and the token gives the cluster. It is the top finding.
//!
//! **Example**: a NodePort Service in front of a Deployment whose service account is
//! bound to cluster-admin.
//!
//! **Fix**: take the rights away from the exposed workload's service account (give it
//! its own, with only what it needs, or `automountServiceAccountToken: false`), and put
//! the workload behind the gateway.

use crate::context::Context;
use crate::finding::{Finding, Severity};
use crate::rules::Rule;

pub const RULE: Rule = Rule {
    id: "PC-RBAC-009",
    title: "Exposed workload whose service account can take over the cluster",
    severity: Severity::Critical,
    check,
};

fn check(ctx: &Context<'_>, out: &mut Vec<Finding>) {
    for w in &ctx.inv.workloads {
        let id = w.id();
        let doors: Vec<String> = ctx
            .entry_points
            .iter()
            .filter(|p| p.workloads.contains(&id))
            .map(|p| format!("{} ({})", p.kind, p.via))
            .collect();
        if doors.is_empty() || !crate::rules::util::mounts_token(&w.spec) {
            continue;
        }
        let rights = ctx.rights_of(w).takeover();
        if rights.is_empty() {
            continue;
        }
        out.push(Finding::new(
            RULE.id,
            RULE.severity,
            id,
            &w.origin,
            format!(
                "reachable through {} and its service account {}/{} has {}",
                doors.join(", "),
                w.namespace,
                w.service_account(),
                rights.join(", ")
            ),
            "give the workload its own service account with only what it needs (or no token), and expose it only through the gateway",
        ));
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::test_support::findings;

    const APP: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: app, namespace: ns}\nspec:\n  selector: {matchLabels: {app: a}}\n  template:\n    metadata: {labels: {app: a}}\n    spec: {serviceAccountName: robot, containers: [{name: c, image: i}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: app, namespace: ns}\nspec: {type: NodePort, selector: {app: a}, ports: [{port: 80}]}\n";
    const ADMIN: &str = "---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: b}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}\nsubjects: [{kind: ServiceAccount, name: robot, namespace: ns}]\n";

    #[test]
    fn exposure_joined_with_rights() {
        let f = findings(&format!("{APP}{ADMIN}"), "PC-RBAC-009");
        assert_eq!(f.len(), 1);
        assert!(
            f[0].message.contains("NodePort") && f[0].message.contains("cluster-admin"),
            "{f:?}"
        );
        // Not exposed: no finding from this rule (the binding is still PC-RBAC-002).
        let internal = APP.replace("type: NodePort, ", "");
        assert!(findings(&format!("{internal}{ADMIN}"), "PC-RBAC-009").is_empty());
        // Exposed but harmless account.
        assert!(findings(APP, "PC-RBAC-009").is_empty());
    }
}
