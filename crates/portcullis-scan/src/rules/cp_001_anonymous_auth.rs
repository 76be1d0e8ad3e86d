//! **What it does**: reads the kube-apiserver static pod and flags it when `--anonymous-auth` is not `false` (the default is true).
//!
//! **Why it matters**: anonymous requests reach the API server as `system:anonymous`; any binding to that user or to `system:unauthenticated` is then open to the network.
//!
//! **Example**: a kube-apiserver command without `--anonymous-auth=false`.
//!
//! **Fix**: set --anonymous-auth=false (health checks use /livez and /readyz, which stay reachable through their own bindings)

use crate::context::Context;
use crate::finding::{Finding, Severity};
use crate::rules::util::flag;
use crate::rules::Rule;

pub const RULE: Rule = Rule {
    id: "PC-CP-001",
    title: "API server allows anonymous requests",
    severity: Severity::High,
    check,
};

fn check(ctx: &Context<'_>, out: &mut Vec<Finding>) {
    for (w, c) in crate::rules::util::api_servers(ctx) {
        if flag(c, "anonymous-auth") != Some("false") {
            out.push(Finding::new(
                RULE.id,
                RULE.severity,
                w.id(),
                &w.origin,
                "anonymous requests are allowed (--anonymous-auth is not false)",
                "set --anonymous-auth=false",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::test_support::{apiserver, findings};

    #[test]
    fn fixture() {
        assert_eq!(findings(&apiserver(""), "PC-CP-001").len(), 1);
        assert!(findings(&apiserver(", --anonymous-auth=false"), "PC-CP-001").is_empty());
    }
}
