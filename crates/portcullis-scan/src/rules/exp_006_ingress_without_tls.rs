//! **What it does**: flags Ingress hosts that no `spec.tls` entry covers.
//!
//! **Why it matters**: requests, cookies and credentials for that host cross the network
//! in the clear.
//!
//! **Example**: a rule for `shop.example.com` and no `spec.tls`.
//!
//! **Fix**: add `spec.tls: [{hosts: [shop.example.com], secretName: shop-tls}]` (with a
//! certificate from cert-manager, say); Portcullis then redirects plain HTTP to HTTPS.

use crate::context::Context;
use crate::finding::{Finding, Severity};
use crate::rules::Rule;

pub const RULE: Rule = Rule {
    id: "PC-EXP-006",
    title: "Ingress host without TLS",
    severity: Severity::High,
    check,
};

fn check(ctx: &Context<'_>, out: &mut Vec<Finding>) {
    for ing in &ctx.inv.ingresses {
        let spec = ing.value.spec.clone().unwrap_or_default();
        let tls: Vec<String> = spec
            .tls
            .iter()
            .flatten()
            .flat_map(|t| t.hosts.clone().unwrap_or_default())
            .collect();
        let mut hosts: Vec<String> = spec
            .rules
            .iter()
            .flatten()
            .map(|r| r.host.clone().unwrap_or_default())
            .collect();
        hosts.sort();
        hosts.dedup();
        for host in hosts {
            let covered = tls.iter().any(|t| portcullis_config::tls::name_covers(t, &host));
            if !covered {
                let shown = if host.is_empty() {
                    "the rules without a host".to_string()
                } else {
                    host.clone()
                };
                out.push(Finding::new(
                    RULE.id,
                    RULE.severity,
                    format!("Ingress {}/{}", ing.namespace(), ing.name()),
                    &ing.origin,
                    format!("{shown}: served without TLS"),
                    "add a spec.tls entry with a certificate Secret for the host",
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::test_support::findings;

    fn ingress(tls: &str) -> String {
        format!("apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: i, namespace: ns}}\nspec:\n{tls}  rules:\n  - host: shop.example.com\n    http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: s, port: {{number: 80}}}}}}}}]}}\n")
    }

    #[test]
    fn fires_without_tls() {
        assert_eq!(findings(&ingress(""), "PC-EXP-006").len(), 1);
        assert!(findings(
            &ingress("  tls: [{hosts: [shop.example.com], secretName: t}]\n"),
            "PC-EXP-006"
        )
        .is_empty());
        assert!(findings(
            &ingress("  tls: [{hosts: ['*.example.com'], secretName: t}]\n"),
            "PC-EXP-006"
        )
        .is_empty());
    }
}
