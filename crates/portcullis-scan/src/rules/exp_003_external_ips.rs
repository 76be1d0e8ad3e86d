//! **What it does**: flags Services with `externalIPs`.
//!
//! **Why it matters**: kube-proxy routes traffic for those addresses to the Service on
//! every node, an entry point most inventories miss (and a known interception vector,
//! CVE-2020-8554).
//!
//! **Example**: `spec.externalIPs: [203.0.113.10]`.
//!
//! **Fix**: remove `externalIPs`; expose the Service through the gateway instead, and
//! block the field with an admission policy.

use crate::context::Context;
use crate::finding::{Finding, Severity};
use crate::rules::Rule;

pub const RULE: Rule = Rule {
    id: "PC-EXP-003",
    title: "Service with externalIPs",
    severity: Severity::High,
    check,
};

fn check(ctx: &Context<'_>, out: &mut Vec<Finding>) {
    for s in &ctx.inv.services {
        let ips = s
            .value
            .spec
            .as_ref()
            .and_then(|s| s.external_ips.clone())
            .unwrap_or_default();
        if !ips.is_empty() {
            out.push(Finding::new(
                RULE.id,
                RULE.severity,
                format!("Service {}/{}", s.namespace(), s.name()),
                &s.origin,
                format!(
                    "externalIPs {} are routed to this Service on every node",
                    ips.join(", ")
                ),
                "remove externalIPs and expose the Service through an Ingress",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::test_support::findings;

    #[test]
    fn fires_on_external_ips() {
        let yes = "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: ns}\nspec: {externalIPs: [203.0.113.10], ports: [{port: 80}]}\n";
        assert_eq!(findings(yes, "PC-EXP-003").len(), 1);
        let no = "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: ns}\nspec: {ports: [{port: 80}]}\n";
        assert!(findings(no, "PC-EXP-003").is_empty());
    }
}
