//! **What it does**: flags workloads (exposed or not) whose service account holds
//! cluster-takeover rights: cluster-admin, wildcards, escalate/bind/impersonate, reading
//! Secrets, pods/exec, creating pods, nodes/proxy (directly or through a binding to
//! everyone), unless its pods do not mount the token.
//!
//! **Why it matters**: any compromise of those pods (a dependency, an SSRF, a debug
//! endpoint) hands over the token and with it the cluster. When an entry point reaches
//! the workload, `PC-RBAC-009` reports it as critical; this rule covers the rest.
//!
//! **Example**: a CronJob running as a service account bound to `cluster-admin`.
//!
//! **Fix**: give the workload its own service account with only what it needs, or
//! `automountServiceAccountToken: false` when it never calls the API.

use crate::context::Context;
use crate::finding::{Finding, Severity};
use crate::rules::Rule;

pub const RULE: Rule = Rule {
    id: "PC-RBAC-010",
    title: "Workload whose service account can take over the cluster",
    severity: Severity::High,
    check,
};

fn check(ctx: &Context<'_>, out: &mut Vec<Finding>) {
    for w in &ctx.inv.workloads {
        let id = w.id();
        let exposed = ctx.entry_points.iter().any(|p| p.workloads.contains(&id));
        if exposed || w.static_pod || !crate::rules::util::mounts_token(&w.spec) {
            continue;
        }
        let rights = ctx.rights_of(w).takeover();
        if !rights.is_empty() {
            out.push(Finding::new(
                RULE.id,
                RULE.severity,
                id,
                &w.origin,
                format!(
                    "its service account {}/{} has {}",
                    w.namespace,
                    w.service_account(),
                    rights.join(", ")
                ),
                "give it its own service account with only what it needs, or no token",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::test_support::findings;

    #[test]
    fn fires_for_unexposed_workloads_with_takeover_rights() {
        let job = "apiVersion: batch/v1\nkind: Job\nmetadata: {name: j, namespace: ns}\nspec: {template: {spec: {serviceAccountName: robot, restartPolicy: Never, containers: [{name: c, image: i}]}}}\n";
        let role = "---\napiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: r, namespace: ns}\nrules: [{apiGroups: [''], resources: [secrets], verbs: [list]}]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: b, namespace: ns}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: r}\nsubjects: [{kind: ServiceAccount, name: robot}]\n";
        let f = findings(&format!("{job}{role}"), "PC-RBAC-010");
        assert_eq!(f.len(), 1);
        assert!(f[0].message.contains("read Secrets"), "{f:?}");
        assert!(findings(job, "PC-RBAC-010").is_empty());
        let no_token = job.replace(
            "restartPolicy: Never",
            "restartPolicy: Never, automountServiceAccountToken: false",
        );
        assert!(findings(&format!("{no_token}{role}"), "PC-RBAC-010").is_empty());
    }
}
