//! **What it does**: flags containers that neither set `runAsNonRoot: true` nor a non-zero `runAsUser` (container or pod level), or that set `runAsUser: 0`.
//!
//! **Why it matters**: root in a container is root on the node as soon as anything else goes wrong (a writable hostPath, a kernel bug, a capability).
//!
//! **Example**: no securityContext, and an image whose USER is root.
//!
//! **Fix**: set runAsNonRoot: true and a non-zero runAsUser

use crate::context::Context;
use crate::finding::{Finding, Severity};
use crate::rules::util::containers;
use crate::rules::Rule;

pub const RULE: Rule = Rule {
    id: "PC-WL-005",
    title: "Container may run as root",
    severity: Severity::Medium,
    check,
};

const FIX: &str = "set runAsNonRoot: true and a non-zero runAsUser";

fn check(ctx: &Context<'_>, out: &mut Vec<Finding>) {
    for w in &ctx.inv.workloads {
        let pod = w.spec.security_context.clone().unwrap_or_default();
        for c in containers(&w.spec) {
            let sc = c.security_context.clone().unwrap_or_default();
            let user = sc.run_as_user.or(pod.run_as_user);
            let non_root = sc.run_as_non_root.or(pod.run_as_non_root) == Some(true);
            if user == Some(0) {
                out.push(Finding::new(
                    RULE.id,
                    RULE.severity,
                    w.id(),
                    &w.origin,
                    format!("container {} runs as root (runAsUser: 0)", c.name),
                    FIX,
                ));
            } else if !non_root && user.is_none() {
                out.push(Finding::new(
                    RULE.id,
                    RULE.severity,
                    w.id(),
                    &w.origin,
                    format!(
                        "container {} may run as root (no runAsNonRoot or runAsUser)",
                        c.name
                    ),
                    FIX,
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::test_support::{findings, pod};

    #[test]
    fn fixture() {
        assert_eq!(
            findings(&pod("  containers: [{name: c, image: i}]\n"), "PC-WL-005").len(),
            1
        );
        assert_eq!(findings(&pod("  securityContext: {runAsNonRoot: true}\n  containers: [{name: c, image: i, securityContext: {runAsUser: 0}}]\n"), "PC-WL-005").len(), 1);
        assert!(findings(
            &pod("  securityContext: {runAsNonRoot: true}\n  containers: [{name: c, image: i}]\n"),
            "PC-WL-005"
        )
        .is_empty());
        assert!(findings(
            &pod("  containers: [{name: c, image: i, securityContext: {runAsUser: 1000}}]\n"),
            "PC-WL-005"
        )
        .is_empty());
    }
}
