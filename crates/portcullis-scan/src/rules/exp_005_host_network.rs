//! **What it does**: flags pods that use the node's network namespace.
//!
//! **Why it matters**: every port the pod listens on is open on the node, NetworkPolicies
//! do not apply to it, and it can see the node's traffic and loopback services.
//!
//! **Example**: `spec.hostNetwork: true`.
//!
//! **Fix**: remove `hostNetwork` unless the pod is node infrastructure (CNI, kube-proxy),
//! and expose it through a Service and the gateway.

use crate::context::Context;
use crate::finding::{Finding, Severity};
use crate::rules::Rule;

pub const RULE: Rule = Rule {
    id: "PC-EXP-005",
    title: "Pod on the host network",
    severity: Severity::High,
    check,
};

fn check(ctx: &Context<'_>, out: &mut Vec<Finding>) {
    for w in ctx
        .inv
        .workloads
        .iter()
        .filter(|w| w.spec.host_network == Some(true) && !w.static_pod)
    {
        out.push(Finding::new(
            RULE.id,
            RULE.severity,
            w.id(),
            &w.origin,
            "uses the node's network: its ports open on the node and NetworkPolicies do not apply",
            "remove hostNetwork; expose the pod through a Service and the gateway",
        ));
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::test_support::{findings, pod};

    #[test]
    fn fires_on_host_network() {
        assert_eq!(
            findings(
                &pod("  hostNetwork: true\n  containers: [{name: c, image: i}]\n"),
                "PC-EXP-005"
            )
            .len(),
            1
        );
        assert!(findings(&pod("  containers: [{name: c, image: i}]\n"), "PC-EXP-005").is_empty());
    }
}
