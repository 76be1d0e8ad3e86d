//! **What it does**: flags bindings whose subjects are `system:anonymous`,
//! `system:unauthenticated` or `system:authenticated`.
//!
//! **Why it matters**: the permissions go to everyone who can reach the API server
//! (anonymous), or to every identity of the cluster and, on some managed platforms, to
//! any account of the cloud provider (authenticated).
//!
//! **Example**: a ClusterRoleBinding of `view` to Group `system:authenticated`.
//!
//! **Fix**: bind to named users, groups or service accounts.

use crate::context::{Context, PUBLIC_GROUPS};
use crate::finding::{Finding, Severity};
use crate::rules::Rule;

pub const RULE: Rule = Rule {
    id: "PC-RBAC-008",
    title: "Binding to anonymous or all authenticated users",
    severity: Severity::Critical,
    check,
};

fn public(s: &Option<Vec<k8s_openapi::api::rbac::v1::Subject>>) -> Vec<String> {
    s.iter()
        .flatten()
        .filter(|s| PUBLIC_GROUPS.contains(&s.name.as_str()))
        .map(|s| s.name.clone())
        .collect()
}

fn check(ctx: &Context<'_>, out: &mut Vec<Finding>) {
    let fix = "bind to named users, groups or service accounts";
    for b in &ctx.inv.cluster_role_bindings {
        let who = public(&b.value.subjects);
        if !who.is_empty() {
            out.push(Finding::new(
                RULE.id,
                RULE.severity,
                format!("ClusterRoleBinding {}", b.name()),
                &b.origin,
                format!(
                    "grants ClusterRole {} to {}",
                    b.value.role_ref.name,
                    who.join(", ")
                ),
                fix,
            ));
        }
    }
    for b in &ctx.inv.role_bindings {
        let who = public(&b.value.subjects);
        if !who.is_empty() {
            out.push(Finding::new(
                RULE.id,
                RULE.severity,
                format!("RoleBinding {}/{}", b.namespace(), b.name()),
                &b.origin,
                format!(
                    "grants {} {} to {}",
                    b.value.role_ref.kind,
                    b.value.role_ref.name,
                    who.join(", ")
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
    fn fires_on_public_subjects() {
        let b = |who: &str| {
            format!("apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: b}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}}\nsubjects: [{{kind: Group, name: '{who}', apiGroup: rbac.authorization.k8s.io}}]\n")
        };
        assert_eq!(findings(&b("system:authenticated"), "PC-RBAC-008").len(), 1);
        assert_eq!(findings(&b("system:anonymous"), "PC-RBAC-008").len(), 1);
        assert!(findings(&b("dev-team"), "PC-RBAC-008").is_empty());
    }
}
