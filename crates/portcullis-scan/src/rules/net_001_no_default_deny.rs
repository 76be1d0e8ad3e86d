//! **What it does**: flags namespaces that run workloads but have no default-deny ingress
//! NetworkPolicy (`podSelector: {}`, `policyTypes` including Ingress, no ingress rules).
//!
//! **Why it matters**: without it, every pod accepts connections from every other pod
//! in the cluster, so one compromised pod reaches all backends directly, around the
//! gateway's authentication.
//!
//! **Example**: namespace `shop` with Deployments and no NetworkPolicy.
//!
//! **Fix**: apply the default-deny policy that `portcullis netpol` prints, plus its allow
//! rules from the gateway to each backend.

use crate::context::Context;
use crate::finding::{Finding, Severity};
use crate::rules::Rule;

pub const RULE: Rule = Rule {
    id: "PC-NET-001",
    title: "Namespace without a default-deny ingress NetworkPolicy",
    severity: Severity::Medium,
    check,
};

fn check(ctx: &Context<'_>, out: &mut Vec<Finding>) {
    let mut seen = std::collections::BTreeSet::new();
    for w in ctx.inv.workloads.iter().filter(|w| !w.static_pod) {
        if ctx.default_deny.contains(&w.namespace) || !seen.insert(w.namespace.clone()) {
            continue;
        }
        let origin = ctx
            .inv
            .namespaces
            .iter()
            .find(|n| n.name() == w.namespace)
            .map(|n| n.origin.clone())
            .unwrap_or_else(|| w.origin.clone());
        out.push(Finding::new(
            RULE.id,
            RULE.severity,
            format!("Namespace {}", w.namespace),
            &origin,
            "no default-deny ingress NetworkPolicy: every pod accepts traffic from every other pod",
            "add a NetworkPolicy with podSelector: {} and policyTypes: [Ingress] (see portcullis netpol)",
        ));
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::test_support::{findings, pod};

    const DENY: &str = "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: ns}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n";

    #[test]
    fn default_deny_is_recognized() {
        let p = pod("  containers: [{name: c, image: i}]\n");
        assert_eq!(findings(&p, "PC-NET-001").len(), 1);
        assert!(findings(&format!("{p}{DENY}"), "PC-NET-001").is_empty());
        // Without policyTypes, Ingress is implied.
        let implied = "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: ns}\nspec: {podSelector: {}}\n";
        assert!(findings(&format!("{p}{implied}"), "PC-NET-001").is_empty());
        // A policy in another namespace does not count.
        let elsewhere = DENY.replace("namespace: ns", "namespace: other");
        assert_eq!(findings(&format!("{p}{elsewhere}"), "PC-NET-001").len(), 1);
        // Egress-only does not isolate ingress.
        let egress = "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: e, namespace: ns}\nspec: {podSelector: {}, policyTypes: [Egress]}\n";
        assert_eq!(findings(&format!("{p}{egress}"), "PC-NET-001").len(), 1);
    }
}
