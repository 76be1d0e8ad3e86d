//! **What it does**: flags Roles and ClusterRoles that grant get, list or watch on Secrets.
//!
//! **Why it matters**: Secrets hold credentials for everything else: reading them is usually one step from taking over the workloads or the cluster. list and watch return every Secret of the scope.
//!
//! **Example**: `resources: [secrets], verbs: [get, list]`.
//!
//! **Fix**: grant access to the named Secrets only (resourceNames), or none

use crate::context::Context;
use crate::finding::{Finding, Severity};
use crate::rules::util::roles;
use crate::rules::Rule;

pub const RULE: Rule = Rule {
    id: "PC-RBAC-003",
    title: "Role that can read Secrets",
    severity: Severity::High,
    check,
};

fn check(ctx: &Context<'_>, out: &mut Vec<Finding>) {
    for (object, origin, rights) in roles(ctx) {
        if rights.read_secrets {
            out.push(Finding::new(
                RULE.id,
                RULE.severity,
                object,
                origin,
                "Role that can read Secrets",
                "grant access to the named Secrets only (resourceNames), or none",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::test_support::findings;

    #[test]
    fn fires_on_secret_readers() {
        let role = |res: &str, verbs: &str| {
            format!("apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: r, namespace: ns}}\nrules: [{{apiGroups: [''], resources: [{res}], verbs: [{verbs}]}}]\n")
        };
        assert_eq!(findings(&role("secrets", "list"), "PC-RBAC-003").len(), 1);
        assert_eq!(findings(&role("'*'", "get"), "PC-RBAC-003").len(), 1);
        assert!(findings(&role("configmaps", "get"), "PC-RBAC-003").is_empty());
        assert!(findings(&role("secrets", "create"), "PC-RBAC-003").is_empty());
    }
}
