//! **What it does**: flags a kube-apiserver without `--audit-log-path` (or a webhook) and `--audit-policy-file`.
//!
//! **Why it matters**: without an audit log nobody can tell who read which Secret or created which binding, during an incident or after.
//!
//! **Example**: a kube-apiserver command without audit flags.
//!
//! **Fix**: set --audit-policy-file and --audit-log-path (or --audit-webhook-config-file)

use crate::context::Context;
use crate::finding::{Finding, Severity};
use crate::rules::util::flag;
use crate::rules::Rule;

pub const RULE: Rule = Rule {
    id: "PC-CP-003",
    title: "API server without an audit log",
    severity: Severity::Medium,
    check,
};

fn check(ctx: &Context<'_>, out: &mut Vec<Finding>) {
    for (w, c) in crate::rules::util::api_servers(ctx) {
        let sink = flag(c, "audit-log-path").or(flag(c, "audit-webhook-config-file"));
        if sink.is_none() || flag(c, "audit-policy-file").is_none() {
            out.push(Finding::new(
                RULE.id,
                RULE.severity,
                w.id(),
                &w.origin,
                "API requests are not audited (no audit policy or sink)",
                "set --audit-policy-file and --audit-log-path",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::test_support::{apiserver, findings};

    #[test]
    fn fixture() {
        assert_eq!(findings(&apiserver(""), "PC-CP-003").len(), 1);
        assert!(findings(
            &apiserver(", --audit-log-path=/var/log/audit.log, --audit-policy-file=/etc/audit.yaml"),
            "PC-CP-003"
        )
        .is_empty());
    }
}
