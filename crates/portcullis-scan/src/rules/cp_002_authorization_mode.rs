//! **What it does**: flags a kube-apiserver whose `--authorization-mode` is missing, includes `AlwaysAllow`, or lacks `RBAC`.
//!
//! **Why it matters**: without RBAC every authenticated identity may do anything; with AlwaysAllow, every request is allowed.
//!
//! **Example**: `--authorization-mode=AlwaysAllow`.
//!
//! **Fix**: set --authorization-mode=Node,RBAC

use crate::context::Context;
use crate::finding::{Finding, Severity};
use crate::rules::util::flag;
use crate::rules::Rule;

pub const RULE: Rule = Rule {
    id: "PC-CP-002",
    title: "API server authorization without RBAC",
    severity: Severity::Critical,
    check,
};

fn check(ctx: &Context<'_>, out: &mut Vec<Finding>) {
    for (w, c) in crate::rules::util::api_servers(ctx) {
        let mode = flag(c, "authorization-mode").unwrap_or("AlwaysAllow");
        let modes: Vec<&str> = mode.split(',').collect();
        if modes.contains(&"AlwaysAllow") || !modes.contains(&"RBAC") {
            out.push(Finding::new(
                RULE.id,
                RULE.severity,
                w.id(),
                &w.origin,
                format!("authorization mode is {mode}"),
                "set --authorization-mode=Node,RBAC",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::test_support::{apiserver, findings};

    #[test]
    fn fixture() {
        assert_eq!(findings(&apiserver(""), "PC-CP-002").len(), 1);
        assert_eq!(
            findings(&apiserver(", --authorization-mode=AlwaysAllow"), "PC-CP-002").len(),
            1
        );
        assert!(findings(&apiserver(", '--authorization-mode=Node,RBAC'"), "PC-CP-002").is_empty());
    }
}
