//! **What it does**: flags containers that bind a `hostPort`.
//!
//! **Why it matters**: the port opens on the node's own address, outside Services,
//! Ingresses and NetworkPolicies' usual reach.
//!
//! **Example**: `ports: [{containerPort: 8080, hostPort: 8080}]`.
//!
//! **Fix**: drop `hostPort`; put a ClusterIP Service in front and route through the gateway.

use crate::context::Context;
use crate::finding::{Finding, Severity};
use crate::rules::Rule;

pub const RULE: Rule = Rule {
    id: "PC-EXP-004",
    title: "Container with a hostPort",
    severity: Severity::Medium,
    check,
};

fn check(ctx: &Context<'_>, out: &mut Vec<Finding>) {
    for w in &ctx.inv.workloads {
        let ports: Vec<String> = w
            .spec
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| p.host_port.map(|h| h.to_string()))
            .collect();
        if !ports.is_empty() {
            out.push(Finding::new(
                RULE.id,
                RULE.severity,
                w.id(),
                &w.origin,
                format!("binds host port {} on its node", ports.join(", ")),
                "remove hostPort and reach the pods through a ClusterIP Service and the gateway",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::test_support::{findings, pod};

    #[test]
    fn fires_on_host_ports() {
        let yes = pod("  containers: [{name: c, image: i, ports: [{containerPort: 80, hostPort: 8080}]}]\n");
        assert_eq!(findings(&yes, "PC-EXP-004").len(), 1);
        let no = pod("  containers: [{name: c, image: i, ports: [{containerPort: 80}]}]\n");
        assert!(findings(&no, "PC-EXP-004").is_empty());
    }
}
