//! **What it does**: flags Roles and ClusterRoles that grant get or create on nodes/proxy.
//!
//! **Why it matters**: nodes/proxy reaches the kubelet API, which can run commands in any pod of the node, bypassing audit of pods/exec.
//!
//! **Example**: `resources: [nodes/proxy], verbs: [get]`.
//!
//! **Fix**: remove nodes/proxy; use metrics endpoints that do not go through the kubelet API

use crate::context::Context;
use crate::finding::{Finding, Severity};
use crate::rules::util::roles;
use crate::rules::Rule;

pub const RULE: Rule = Rule {
    id: "PC-RBAC-007",
    title: "Role with access to nodes/proxy",
    severity: Severity::Critical,
    check,
};

fn check(ctx: &Context<'_>, out: &mut Vec<Finding>) {
    for (object, origin, rights) in roles(ctx) {
        if rights.nodes_proxy {
            out.push(Finding::new(
                RULE.id,
                RULE.severity,
                object,
                origin,
                "Role with access to nodes/proxy",
                "remove nodes/proxy; use metrics endpoints that do not go through the kubelet API",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::test_support::findings;

    #[test]
    fn fires_on_nodes_proxy() {
        let role = |res: &str| {
            format!("apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {{name: r}}\nrules: [{{apiGroups: [''], resources: [{res}], verbs: [get]}}]\n")
        };
        assert_eq!(findings(&role("nodes/proxy"), "PC-RBAC-007").len(), 1);
        assert!(findings(&role("nodes"), "PC-RBAC-007").is_empty());
    }
}
