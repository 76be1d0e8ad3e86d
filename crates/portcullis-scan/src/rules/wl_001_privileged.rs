//! **What it does**: flags containers with `securityContext.privileged: true`.
//!
//! **Why it matters**: a privileged container has every capability and the host's devices: escaping to the node is a matter of mounting its disk.
//!
//! **Example**: `securityContext: {privileged: true}`.
//!
//! **Fix**: remove privileged; grant the one capability needed, if any

use crate::context::Context;
use crate::finding::{Finding, Severity};
use crate::rules::util::container_findings;
use crate::rules::Rule;

pub const RULE: Rule = Rule {
    id: "PC-WL-001",
    title: "Privileged container",
    severity: Severity::Critical,
    check,
};

const FIX: &str = "remove privileged; grant the one capability needed, if any";

fn check(ctx: &Context<'_>, out: &mut Vec<Finding>) {
    container_findings(ctx, out, &RULE, FIX, |_, c| {
        let privileged = c.security_context.as_ref().and_then(|s| s.privileged);
        (privileged == Some(true)).then(|| format!("container {} is privileged", c.name))
    });
}

#[cfg(test)]
mod tests {
    use crate::rules::test_support::{findings, pod};

    #[test]
    fn fixture() {
        assert_eq!(
            findings(
                &pod("  containers: [{name: c, image: i, securityContext: {privileged: true}}]\n"),
                "PC-WL-001"
            )
            .len(),
            1
        );
        assert!(findings(&pod("  containers: [{name: c, image: i}]\n"), "PC-WL-001").is_empty());
    }
}
