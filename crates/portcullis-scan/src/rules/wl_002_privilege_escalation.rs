//! **What it does**: flags containers that do not set `allowPrivilegeEscalation: false` (unset means allowed).
//!
//! **Why it matters**: setuid binaries and file capabilities can then raise the process's privileges inside the container, a step in most container escapes.
//!
//! **Example**: a container without a securityContext.
//!
//! **Fix**: set securityContext.allowPrivilegeEscalation: false

use crate::context::Context;
use crate::finding::{Finding, Severity};
use crate::rules::util::container_findings;
use crate::rules::Rule;

pub const RULE: Rule = Rule {
    id: "PC-WL-002",
    title: "Container may gain privileges (allowPrivilegeEscalation)",
    severity: Severity::Medium,
    check,
};

const FIX: &str = "set securityContext.allowPrivilegeEscalation: false";

fn check(ctx: &Context<'_>, out: &mut Vec<Finding>) {
    container_findings(ctx, out, &RULE, FIX, |_, c| {
        let allowed = c
            .security_context
            .as_ref()
            .and_then(|s| s.allow_privilege_escalation);
        (allowed != Some(false)).then(|| {
            format!(
                "container {} may gain privileges (allowPrivilegeEscalation is not false)",
                c.name
            )
        })
    });
}

#[cfg(test)]
mod tests {
    use crate::rules::test_support::{findings, pod};

    #[test]
    fn fixture() {
        assert_eq!(
            findings(&pod("  containers: [{name: c, image: i}]\n"), "PC-WL-002").len(),
            1
        );
        assert!(findings(
            &pod("  containers: [{name: c, image: i, securityContext: {allowPrivilegeEscalation: false}}]\n"),
            "PC-WL-002"
        )
        .is_empty());
    }
}
