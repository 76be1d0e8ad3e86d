//! **What it does**: flags Roles and ClusterRoles with `*` in verbs or resources.
//!
//! **Why it matters**: a wildcard grants every current and future verb or resource
//! (including ones added by CRDs later), so nobody can say what the role allows.
//!
//! **Example**: `rules: [{apiGroups: ['*'], resources: ['*'], verbs: ['*']}]`.
//!
//! **Fix**: list the resources and verbs the workload needs.

use crate::context::Context;
use crate::finding::{Finding, Severity};
use crate::rules::Rule;

pub const RULE: Rule = Rule {
    id: "PC-RBAC-001",
    title: "Role with wildcard verbs or resources",
    severity: Severity::High,
    check,
};

fn wildcard(rules: &Option<Vec<k8s_openapi::api::rbac::v1::PolicyRule>>) -> bool {
    rules
        .iter()
        .flatten()
        .any(|r| r.verbs.iter().any(|v| v == "*") || r.resources.iter().flatten().any(|x| x == "*"))
}

fn check(ctx: &Context<'_>, out: &mut Vec<Finding>) {
    let fix = "list the resources and verbs needed instead of *";
    for r in ctx.inv.cluster_roles.iter().filter(|r| wildcard(&r.value.rules)) {
        let object = format!("ClusterRole {}", r.name());
        out.push(Finding::new(
            RULE.id,
            RULE.severity,
            object,
            &r.origin,
            "grants * verbs or resources",
            fix,
        ));
    }
    for r in ctx.inv.roles.iter().filter(|r| wildcard(&r.value.rules)) {
        let object = format!("Role {}/{}", r.namespace(), r.name());
        out.push(Finding::new(
            RULE.id,
            RULE.severity,
            object,
            &r.origin,
            "grants * verbs or resources",
            fix,
        ));
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::test_support::findings;

    #[test]
    fn fires_on_wildcards() {
        let role = |res: &str, verbs: &str| {
            format!("apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {{name: r}}\nrules: [{{apiGroups: [''], resources: [{res}], verbs: [{verbs}]}}]\n")
        };
        assert_eq!(findings(&role("'*'", "get"), "PC-RBAC-001").len(), 1);
        assert_eq!(findings(&role("pods", "'*'"), "PC-RBAC-001").len(), 1);
        assert!(findings(&role("pods", "get"), "PC-RBAC-001").is_empty());
    }
}
