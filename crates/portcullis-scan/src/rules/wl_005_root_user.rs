//! **What it does**: flags containers that neither set `runAsNonRoot: true` nor a non-zero `runAsUser` (container or pod level), or that set `runAsUser: 0`.
//!
//! **Why it matters**: root in a container is root on the node as soon as anything else goes wrong (a writable hostPath, a kernel bug, a capability).
//!
//! **Example**: no securityContext, and an image whose USER is root.
//!
//! **Fix**: set runAsNonRoot: true and a non-zero runAsUser

use crate::context::Context;
use crate::finding::{Finding, Severity};
use crate::rules::util::container_findings;
use crate::rules::Rule;

pub const RULE: Rule = Rule {
    id: "PC-WL-005",
    title: "Container may run as root",
    severity: Severity::Medium,
    check,
};

const FIX: &str = "set runAsNonRoot: true and a non-zero runAsUser";

fn check(ctx: &Context<'_>, out: &mut Vec<Finding>) {
    container_findings(ctx, out, &RULE, FIX, |w, c| {
        let pod = w.spec.security_context.as_ref();
        let own = c.security_context.as_ref();
        let user = own
            .and_then(|s| s.run_as_user)
            .or(pod.and_then(|s| s.run_as_user));
        let non_root = own
            .and_then(|s| s.run_as_non_root)
            .or(pod.and_then(|s| s.run_as_non_root))
            == Some(true);
        match user {
            Some(0) => Some(format!("container {} runs as root (runAsUser: 0)", c.name)),
            None if !non_root => Some(format!(
                "container {} may run as root (no runAsNonRoot or runAsUser)",
                c.name
            )),
            _ => None,
        }
    });
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
