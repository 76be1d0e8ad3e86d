//! **What it does**: flags Gateway API listeners that speak plain HTTP (or TCP/UDP).
//!
//! **Why it matters**: like an Ingress host without TLS, every request and credential
//! for the routes attached to it crosses the network in the clear.
//!
//! **Example**: `listeners: [{name: http, port: 80, protocol: HTTP}]` with no HTTPS
//! listener for the same routes.
//!
//! **Fix**: add an HTTPS listener with `tls.certificateRefs`, and redirect HTTP to it
//! (an HTTPRoute with a `RequestRedirect` filter) or remove the HTTP listener.

use crate::context::Context;
use crate::finding::{Finding, Severity};
use crate::rules::Rule;

pub const RULE: Rule = Rule {
    id: "PC-EXP-009",
    title: "Gateway listener without TLS",
    severity: Severity::High,
    check,
};

fn check(ctx: &Context<'_>, out: &mut Vec<Finding>) {
    for g in &ctx.inv.gateways {
        let (ns, name) = crate::inventory::json_name(&g.value);
        for l in g.value["spec"]["listeners"].as_array().into_iter().flatten() {
            let protocol = l["protocol"].as_str().unwrap_or("HTTP");
            if !matches!(protocol, "HTTPS" | "TLS") {
                out.push(Finding::new(
                    RULE.id,
                    RULE.severity,
                    format!("Gateway {ns}/{name}"),
                    &g.origin,
                    format!(
                        "listener {} serves {protocol} on port {} without TLS",
                        l["name"].as_str().unwrap_or("?"),
                        l["port"].as_u64().unwrap_or(0)
                    ),
                    "add an HTTPS listener with tls.certificateRefs and redirect HTTP to it",
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::test_support::findings;

    #[test]
    fn fires_on_plain_listeners() {
        let g = |p: &str| {
            format!("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: g, namespace: ns}}\nspec: {{gatewayClassName: c, listeners: [{{name: l, port: 443, protocol: {p}}}]}}\n")
        };
        assert_eq!(findings(&g("HTTP"), "PC-EXP-009").len(), 1);
        assert!(findings(&g("HTTPS"), "PC-EXP-009").is_empty());
    }
}
