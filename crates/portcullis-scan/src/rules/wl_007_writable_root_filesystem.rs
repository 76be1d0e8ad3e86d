//! **What it does**: flags containers without `readOnlyRootFilesystem: true`.
//!
//! **Why it matters**: an attacker who gets code execution can drop tools and modify binaries; a read-only root makes that much harder and changes visible.
//!
//! **Example**: a container without securityContext.readOnlyRootFilesystem.
//!
//! **Fix**: set readOnlyRootFilesystem: true and mount emptyDir volumes where the app writes

use crate::context::Context;
use crate::finding::{Finding, Severity};
use crate::rules::util::container_findings;
use crate::rules::Rule;

pub const RULE: Rule = Rule {
    id: "PC-WL-007",
    title: "Writable root filesystem",
    severity: Severity::Low,
    check,
};

const FIX: &str = "set readOnlyRootFilesystem: true and mount emptyDir volumes where the app writes";

fn check(ctx: &Context<'_>, out: &mut Vec<Finding>) {
    container_findings(ctx, out, &RULE, FIX, |_, c| {
        let read_only = c
            .security_context
            .as_ref()
            .and_then(|s| s.read_only_root_filesystem);
        (read_only != Some(true)).then(|| format!("container {} has a writable root filesystem", c.name))
    });
}

#[cfg(test)]
mod tests {
    use crate::rules::test_support::{findings, pod};

    #[test]
    fn fixture() {
        assert_eq!(
            findings(&pod("  containers: [{name: c, image: i}]\n"), "PC-WL-007").len(),
            1
        );
        assert!(findings(
            &pod("  containers: [{name: c, image: i, securityContext: {readOnlyRootFilesystem: true}}]\n"),
            "PC-WL-007"
        )
        .is_empty());
    }
}
