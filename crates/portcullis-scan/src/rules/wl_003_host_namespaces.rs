//! **What it does**: flags pods with `hostPID: true` or `hostIPC: true`.
//!
//! **Why it matters**: with the host's PID namespace a container sees and signals every process of the node (and reads their environment); with its IPC namespace, their shared memory.
//!
//! **Example**: `spec.hostPID: true`.
//!
//! **Fix**: remove hostPID and hostIPC

use crate::context::Context;
use crate::finding::{Finding, Severity};
use crate::rules::Rule;

pub const RULE: Rule = Rule {
    id: "PC-WL-003",
    title: "Pod shares the host's PID or IPC namespace",
    severity: Severity::High,
    check,
};

const FIX: &str = "remove hostPID and hostIPC";

fn check(ctx: &Context<'_>, out: &mut Vec<Finding>) {
    for w in &ctx.inv.workloads {
        for (on, what) in [(w.spec.host_pid, "hostPID"), (w.spec.host_ipc, "hostIPC")] {
            if on == Some(true) {
                out.push(Finding::new(
                    RULE.id,
                    RULE.severity,
                    w.id(),
                    &w.origin,
                    format!("{what} shares the node's namespace with the pod"),
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
            findings(
                &pod("  hostPID: true\n  hostIPC: true\n  containers: [{name: c, image: i}]\n"),
                "PC-WL-003"
            )
            .len(),
            2
        );
        assert!(findings(&pod("  containers: [{name: c, image: i}]\n"), "PC-WL-003").is_empty());
    }
}
