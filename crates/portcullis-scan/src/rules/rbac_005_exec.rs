//! **What it does**: flags Roles and ClusterRoles that grant create on pods/exec or pods/attach.
//!
//! **Why it matters**: a shell in any pod of the scope means that pod's service account, secrets and network position.
//!
//! **Example**: `resources: [pods/exec], verbs: [create]`.
//!
//! **Fix**: remove pods/exec and pods/attach; use a break-glass role bound on demand

use crate::context::Context;
use crate::finding::{Finding, Severity};
use crate::rules::util::roles;
use crate::rules::Rule;

pub const RULE: Rule = Rule {
    id: "PC-RBAC-005",
    title: "Role that can exec into or attach to pods",
    severity: Severity::High,
    check,
};

fn check(ctx: &Context<'_>, out: &mut Vec<Finding>) {
    for (object, origin, rights) in roles(ctx) {
        if rights.exec {
            out.push(Finding::new(
                RULE.id,
                RULE.severity,
                object,
                origin,
                "Role that can exec into or attach to pods",
                "remove pods/exec and pods/attach; use a break-glass role bound on demand",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::test_support::findings;

    #[test]
    fn fires_on_exec_and_attach() {
        let role = |res: &str| {
            format!("apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: r, namespace: ns}}\nrules: [{{apiGroups: [''], resources: [{res}], verbs: [create]}}]\n")
        };
        assert_eq!(findings(&role("pods/exec"), "PC-RBAC-005").len(), 1);
        assert_eq!(findings(&role("pods/attach"), "PC-RBAC-005").len(), 1);
        assert!(findings(&role("pods/log"), "PC-RBAC-005").is_empty());
    }
}
