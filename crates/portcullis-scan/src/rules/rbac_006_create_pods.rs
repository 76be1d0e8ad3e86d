//! **What it does**: flags Roles and ClusterRoles that grant create on pods.
//!
//! **Why it matters**: creating a pod lets the holder run as any service account of the namespace and mount its Secrets; without admission controls, also privileged pods on any node.
//!
//! **Example**: `resources: [pods], verbs: [create]`.
//!
//! **Fix**: let controllers (Deployments) create pods; bind pod creation only to CI identities with admission policies in place

use crate::context::Context;
use crate::finding::{Finding, Severity};
use crate::rules::util::roles;
use crate::rules::Rule;

pub const RULE: Rule = Rule {
    id: "PC-RBAC-006",
    title: "Role that can create pods",
    severity: Severity::Medium,
    check,
};

fn check(ctx: &Context<'_>, out: &mut Vec<Finding>) {
    for (object, origin, rights) in roles(ctx) {
        if rights.create_pods {
            out.push(Finding::new(RULE.id, RULE.severity, object, origin, "Role that can create pods", "let controllers (Deployments) create pods; bind pod creation only to CI identities with admission policies in place"));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::test_support::findings;

    #[test]
    fn fires_on_pod_creation() {
        let role = |verbs: &str| {
            format!("apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: r, namespace: ns}}\nrules: [{{apiGroups: [''], resources: [pods], verbs: [{verbs}]}}]\n")
        };
        assert_eq!(findings(&role("create"), "PC-RBAC-006").len(), 1);
        assert!(findings(&role("get, list"), "PC-RBAC-006").is_empty());
    }
}
