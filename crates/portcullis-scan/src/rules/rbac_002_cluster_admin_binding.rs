//! **What it does**: flags bindings to the `cluster-admin` ClusterRole.
//!
//! **Why it matters**: whoever holds it controls the whole cluster; a service account
//! bound to it turns any compromise of its pods into a cluster takeover.
//!
//! **Example**: a ClusterRoleBinding of `cluster-admin` to ServiceAccount `default/default`.
//!
//! **Fix**: bind a role with the permissions actually needed; keep cluster-admin for
//! people, through short-lived access.

use crate::context::Context;
use crate::finding::{Finding, Severity};
use crate::rules::Rule;

pub const RULE: Rule = Rule {
    id: "PC-RBAC-002",
    title: "Binding to cluster-admin",
    severity: Severity::Critical,
    check,
};

fn subjects(s: &Option<Vec<k8s_openapi::api::rbac::v1::Subject>>, ns: &str) -> String {
    s.iter()
        .flatten()
        .map(|s| match &s.namespace {
            Some(n) => format!("{} {n}/{}", s.kind, s.name),
            None if s.kind == "ServiceAccount" => format!("{} {ns}/{}", s.kind, s.name),
            None => format!("{} {}", s.kind, s.name),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn check(ctx: &Context<'_>, out: &mut Vec<Finding>) {
    let fix = "bind a role with only the permissions needed";
    for b in &ctx.inv.cluster_role_bindings {
        if b.value.role_ref.kind == "ClusterRole" && b.value.role_ref.name == "cluster-admin" {
            out.push(Finding::new(
                RULE.id,
                RULE.severity,
                format!("ClusterRoleBinding {}", b.name()),
                &b.origin,
                format!(
                    "grants cluster-admin to {}",
                    subjects(&b.value.subjects, "default")
                ),
                fix,
            ));
        }
    }
    for b in &ctx.inv.role_bindings {
        if b.value.role_ref.kind == "ClusterRole" && b.value.role_ref.name == "cluster-admin" {
            out.push(Finding::new(
                RULE.id,
                RULE.severity,
                format!("RoleBinding {}/{}", b.namespace(), b.name()),
                &b.origin,
                format!(
                    "grants cluster-admin in namespace {} to {}",
                    b.namespace(),
                    subjects(&b.value.subjects, b.namespace())
                ),
                fix,
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::test_support::findings;

    #[test]
    fn fires_on_cluster_admin() {
        let b = |role: &str| {
            format!("apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: b}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {role}}}\nsubjects: [{{kind: ServiceAccount, name: default, namespace: app}}]\n")
        };
        let f = findings(&b("cluster-admin"), "PC-RBAC-002");
        assert_eq!(f.len(), 1);
        assert!(f[0].message.contains("ServiceAccount app/default"), "{f:?}");
        assert!(findings(&b("view"), "PC-RBAC-002").is_empty());
    }
}
