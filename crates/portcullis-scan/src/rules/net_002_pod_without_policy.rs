//! **What it does**: flags workloads that no ingress NetworkPolicy selects (taking
//! namespaces, `podSelector: {}`, `matchLabels`, `matchExpressions` and the
//! `policyTypes` defaults into account).
//!
//! **Why it matters**: such pods accept connections from anywhere in the cluster.
//! (Some scanners count a policy from another namespace, others miss `podSelector: {}`;
//! this rule does neither.)
//!
//! **Example**: a Deployment labelled `app: cart` in a namespace whose only policy
//! selects `app: frontend`.
//!
//! **Fix**: add a default-deny policy for the namespace and allow rules for the traffic
//! the pods need.

use crate::context::Context;
use crate::finding::{Finding, Severity};
use crate::rules::Rule;

pub const RULE: Rule = Rule {
    id: "PC-NET-002",
    title: "Workload selected by no ingress NetworkPolicy",
    severity: Severity::Low,
    check,
};

fn check(ctx: &Context<'_>, out: &mut Vec<Finding>) {
    for (i, w) in ctx.inv.workloads.iter().enumerate() {
        if w.static_pod || w.spec.host_network == Some(true) || ctx.isolated.contains(&i) {
            continue;
        }
        out.push(Finding::new(
            RULE.id,
            RULE.severity,
            w.id(),
            &w.origin,
            "no ingress NetworkPolicy selects its pods: they accept connections from the whole cluster",
            "cover the namespace with a default-deny policy and allow only the traffic the pods need",
        ));
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::test_support::{findings, pod};

    fn policy(selector: &str, ns: &str) -> String {
        format!("---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: n, namespace: {ns}}}\nspec: {{podSelector: {selector}, ingress: [{{}}]}}\n")
    }

    #[test]
    fn coverage_is_computed_like_the_api_server() {
        let p = pod("  containers: [{name: c, image: i}]\n");
        assert_eq!(findings(&p, "PC-NET-002").len(), 1);
        assert!(
            findings(&format!("{p}{}", policy("{}", "ns")), "PC-NET-002").is_empty(),
            "podSelector {{}} covers all"
        );
        assert!(findings(
            &format!("{p}{}", policy("{matchLabels: {app: p}}", "ns")),
            "PC-NET-002"
        )
        .is_empty());
        assert_eq!(
            findings(
                &format!("{p}{}", policy("{matchLabels: {app: q}}", "ns")),
                "PC-NET-002"
            )
            .len(),
            1
        );
        assert_eq!(
            findings(&format!("{p}{}", policy("{}", "other")), "PC-NET-002").len(),
            1,
            "another namespace's policy"
        );
        assert!(findings(
            &format!(
                "{p}{}",
                policy(
                    "{matchExpressions: [{key: app, operator: In, values: [p, q]}]}",
                    "ns"
                )
            ),
            "PC-NET-002"
        )
        .is_empty());
    }
}
