//! **What it does**: flags `LoadBalancer` Services.
//!
//! **Why it matters**: each one is a separate public entry point with its own address,
//! outside the gateway's TLS, authentication and audit log. Many of them is exactly the
//! sprawl that makes access control hard to reason about.
//!
//! **Example**: `spec.type: LoadBalancer` on Service `shop/frontend-external`.
//!
//! **Fix**: make the Service `ClusterIP` and route to it through an Ingress served by
//! Portcullis (the one LoadBalancer of the cluster; annotate that one with
//! `portcullis.dev/ignore: PC-EXP-001 the single entry point`).

use crate::context::Context;
use crate::finding::{Finding, Severity};
use crate::rules::Rule;

pub const RULE: Rule = Rule {
    id: "PC-EXP-001",
    title: "LoadBalancer Service: a public entry point outside the gateway",
    severity: Severity::High,
    check,
};

fn check(ctx: &Context<'_>, out: &mut Vec<Finding>) {
    for s in &ctx.inv.services {
        if s.value.spec.as_ref().and_then(|s| s.type_.as_deref()) != Some("LoadBalancer") {
            continue;
        }
        let backends = ctx.backends(s.namespace(), s.name());
        let reach: Vec<String> = backends.iter().map(|i| ctx.inv.workloads[*i].id()).collect();
        out.push(Finding::new(
            RULE.id,
            RULE.severity,
            format!("Service {}/{}", s.namespace(), s.name()),
            &s.origin,
            format!(
                "LoadBalancer Service exposes {} directly",
                if reach.is_empty() {
                    "its endpoints".to_string()
                } else {
                    reach.join(", ")
                }
            ),
            "make it type ClusterIP and route to it through an Ingress served by Portcullis",
        ));
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::test_support::findings;

    #[test]
    fn fires_on_load_balancers_only() {
        let svc = |t: &str| {
            format!("apiVersion: v1\nkind: Service\nmetadata: {{name: s, namespace: ns}}\nspec: {{type: {t}, selector: {{app: p}}, ports: [{{port: 80}}]}}\n---\n{}", crate::rules::test_support::pod("  containers: [{name: c, image: i}]\n"))
        };
        let f = findings(&svc("LoadBalancer"), "PC-EXP-001");
        assert_eq!(f.len(), 1);
        assert!(f[0].message.contains("Pod ns/p"), "{f:?}");
        assert!(findings(&svc("ClusterIP"), "PC-EXP-001").is_empty());
    }
}
