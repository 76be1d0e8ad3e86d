//! **What it does**: flags NetworkPolicies whose pod selector matches no workload in
//! their namespace.
//!
//! **Why it matters**: the policy protects nothing, usually because of a typo in a
//! label, while its author believes the pods are isolated.
//!
//! **Example**: `podSelector: {matchLabels: {app: fronted}}` for pods labelled `frontend`.
//!
//! **Fix**: correct the selector (check with `kubectl get pods -l ...`) or delete the policy.

use crate::context::Context;
use crate::finding::{Finding, Severity};
use crate::rules::Rule;
use crate::selector;

pub const RULE: Rule = Rule {
    id: "PC-NET-003",
    title: "NetworkPolicy that selects no pod",
    severity: Severity::Low,
    check,
};

fn check(ctx: &Context<'_>, out: &mut Vec<Finding>) {
    for p in &ctx.inv.network_policies {
        let spec = p.value.spec.clone().unwrap_or_default();
        let pod_selector = spec.pod_selector.unwrap_or_default();
        let in_namespace: Vec<_> = ctx
            .inv
            .workloads
            .iter()
            .filter(|w| w.namespace == p.namespace())
            .collect();
        // Without workloads in the scan, nothing can be said.
        if in_namespace.is_empty() || selector::is_empty(&pod_selector) {
            continue;
        }
        if !in_namespace
            .iter()
            .any(|w| selector::selects(&pod_selector, &w.labels))
        {
            out.push(Finding::new(
                RULE.id,
                RULE.severity,
                format!("NetworkPolicy {}/{}", p.namespace(), p.name()),
                &p.origin,
                "its pod selector matches no workload in the namespace: it protects nothing",
                "fix the selector's labels or delete the policy",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::test_support::{findings, pod};

    #[test]
    fn fires_when_nothing_matches() {
        let p = pod("  containers: [{name: c, image: i}]\n");
        let pol = |l: &str| {
            format!("---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: n, namespace: ns}}\nspec: {{podSelector: {{matchLabels: {{app: {l}}}}}}}\n")
        };
        assert_eq!(findings(&format!("{p}{}", pol("typo")), "PC-NET-003").len(), 1);
        assert!(findings(&format!("{p}{}", pol("p")), "PC-NET-003").is_empty());
    }
}
