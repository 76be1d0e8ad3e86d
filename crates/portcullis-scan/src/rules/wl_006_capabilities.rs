//! **What it does**: flags containers that add dangerous capabilities (high) or do not drop `ALL` (low).
//!
//! **Why it matters**: capabilities such as SYS_ADMIN, NET_ADMIN or SYS_PTRACE are most of root; the runtime's default set still includes NET_RAW (spoofing) and others no web service needs.
//!
//! **Example**: `capabilities: {add: [SYS_ADMIN]}`.
//!
//! **Fix**: drop ALL and add back only what the process needs (NET_BIND_SERVICE at most)

use crate::context::Context;
use crate::finding::{Finding, Severity};
use crate::rules::util::containers;
use crate::rules::Rule;

pub const RULE: Rule = Rule {
    id: "PC-WL-006",
    title: "Capabilities added or not dropped",
    severity: Severity::Medium,
    check,
};

const FIX: &str = "drop ALL and add back only what the process needs (NET_BIND_SERVICE at most)";

fn check(ctx: &Context<'_>, out: &mut Vec<Finding>) {
    for w in &ctx.inv.workloads {
        for c in containers(&w.spec) {
            let caps = c
                .security_context
                .as_ref()
                .and_then(|s| s.capabilities.clone())
                .unwrap_or_default();
            let added: Vec<String> = caps
                .add
                .unwrap_or_default()
                .into_iter()
                .filter(|a| a.as_str() != "NET_BIND_SERVICE")
                .collect();
            if !added.is_empty() {
                out.push(Finding::new(
                    RULE.id,
                    Severity::High,
                    w.id(),
                    &w.origin,
                    format!("container {} adds {}", c.name, added.join(", ")),
                    FIX,
                ));
            }
            if !caps
                .drop
                .unwrap_or_default()
                .iter()
                .any(|d| d.eq_ignore_ascii_case("ALL"))
            {
                out.push(Finding::new(
                    RULE.id,
                    Severity::Low,
                    w.id(),
                    &w.origin,
                    format!(
                        "container {} keeps the runtime's default capabilities (no drop: [ALL])",
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
        assert_eq!(findings(&pod("  containers: [{name: c, image: i, securityContext: {capabilities: {add: [SYS_ADMIN], drop: [ALL]}}}]\n"), "PC-WL-006").len(), 1);
        assert_eq!(
            findings(&pod("  containers: [{name: c, image: i}]\n"), "PC-WL-006").len(),
            1
        );
        assert!(findings(&pod("  containers: [{name: c, image: i, securityContext: {capabilities: {drop: [ALL], add: [NET_BIND_SERVICE]}}}]\n"), "PC-WL-006").is_empty());
    }
}
