//! **What it does**: flags Roles and ClusterRoles that grant the escalate, bind or impersonate verbs.
//!
//! **Why it matters**: each lets the holder obtain permissions it does not have: write roles with more rights, bind itself to cluster-admin, or act as another user.
//!
//! **Example**: `verbs: [impersonate], resources: [users, groups]`.
//!
//! **Fix**: remove escalate, bind and impersonate; grant the specific permissions needed instead

use crate::context::Context;
use crate::finding::{Finding, Severity};
use crate::rules::util::roles;
use crate::rules::Rule;

pub const RULE: Rule = Rule {
    id: "PC-RBAC-004",
    title: "Role that can escalate, bind or impersonate",
    severity: Severity::Critical,
    check,
};

fn check(ctx: &Context<'_>, out: &mut Vec<Finding>) {
    for (object, origin, rights) in roles(ctx) {
        if rights.escalate {
            out.push(Finding::new(
                RULE.id,
                RULE.severity,
                object,
                origin,
                "Role that can escalate, bind or impersonate",
                "remove escalate, bind and impersonate; grant the specific permissions needed instead",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::test_support::findings;

    #[test]
    fn fires_on_escalation_verbs() {
        let role = |verbs: &str| {
            format!("apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {{name: r}}\nrules: [{{apiGroups: [''], resources: [users], verbs: [{verbs}]}}]\n")
        };
        assert_eq!(findings(&role("impersonate"), "PC-RBAC-004").len(), 1);
        assert_eq!(findings(&role("bind"), "PC-RBAC-004").len(), 1);
        assert!(findings(&role("get"), "PC-RBAC-004").is_empty());
    }
}
