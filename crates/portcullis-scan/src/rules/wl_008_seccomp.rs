//! **What it does**: flags containers with no seccomp profile (`RuntimeDefault` or `Localhost`) at pod or container level, or with `Unconfined`.
//!
//! **Why it matters**: without seccomp every system call of the kernel is reachable from the container, including the rarely used ones most kernel exploits need.
//!
//! **Example**: no securityContext.seccompProfile.
//!
//! **Fix**: set securityContext.seccompProfile.type: RuntimeDefault on the pod

use crate::context::Context;
use crate::finding::{Finding, Severity};
use crate::rules::util::container_findings;
use crate::rules::Rule;

pub const RULE: Rule = Rule {
    id: "PC-WL-008",
    title: "No seccomp profile",
    severity: Severity::Low,
    check,
};

const FIX: &str = "set securityContext.seccompProfile.type: RuntimeDefault on the pod";

fn check(ctx: &Context<'_>, out: &mut Vec<Finding>) {
    container_findings(ctx, out, &RULE, FIX, |w, c| {
        let own = c
            .security_context
            .as_ref()
            .and_then(|s| s.seccomp_profile.as_ref());
        let pod = w
            .spec
            .security_context
            .as_ref()
            .and_then(|s| s.seccomp_profile.as_ref());
        match own.or(pod).map(|p| p.type_.as_str()) {
            Some("RuntimeDefault" | "Localhost") => None,
            Some(other) => Some(format!("container {} runs with seccomp {other}", c.name)),
            None => Some(format!("container {} has no seccomp profile", c.name)),
        }
    });
}

#[cfg(test)]
mod tests {
    use crate::rules::test_support::{findings, pod};

    #[test]
    fn fixture() {
        assert_eq!(
            findings(&pod("  containers: [{name: c, image: i}]\n"), "PC-WL-008").len(),
            1
        );
        assert!(findings(&pod("  securityContext: {seccompProfile: {type: RuntimeDefault}}\n  containers: [{name: c, image: i}]\n"), "PC-WL-008").is_empty());
        assert_eq!(findings(&pod("  securityContext: {seccompProfile: {type: RuntimeDefault}}\n  containers: [{name: c, image: i, securityContext: {seccompProfile: {type: Unconfined}}}]\n"), "PC-WL-008").len(), 1);
    }
}
