//! **What it does**: flags `NodePort` Services.
//!
//! **Why it matters**: a NodePort opens the same port on every node's address, reachable
//! by anything that can reach a node, and bypasses the gateway entirely.
//!
//! **Example**: `spec.type: NodePort` with `nodePort: 30080`.
//!
//! **Fix**: make the Service `ClusterIP` and expose it through an Ingress.

use crate::context::Context;
use crate::finding::{Finding, Severity};
use crate::rules::Rule;

pub const RULE: Rule = Rule {
    id: "PC-EXP-002",
    title: "NodePort Service: a port open on every node",
    severity: Severity::High,
    check,
};

fn check(ctx: &Context<'_>, out: &mut Vec<Finding>) {
    for p in ctx.entry_points.iter().filter(|p| p.kind == "NodePort") {
        let s = ctx
            .inv
            .services
            .iter()
            .find(|s| format!("Service {}/{}", s.namespace(), s.name()) == p.via);
        if let Some(s) = s {
            out.push(Finding::new(
                RULE.id,
                RULE.severity,
                p.via.clone(),
                &s.origin,
                format!("NodePort Service opens {} on every node", p.ports.join(", ")),
                "make it type ClusterIP and route to it through an Ingress served by Portcullis",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::test_support::findings;

    #[test]
    fn fires_on_node_ports_only() {
        let svc = |t: &str| {
            format!("apiVersion: v1\nkind: Service\nmetadata: {{name: s, namespace: ns}}\nspec: {{type: {t}, ports: [{{port: 80, nodePort: 30080}}]}}\n")
        };
        let f = findings(&svc("NodePort"), "PC-EXP-002");
        assert_eq!(f.len(), 1);
        assert!(f[0].message.contains("node 30080"), "{f:?}");
        assert!(findings(&svc("ClusterIP"), "PC-EXP-002").is_empty());
    }
}
