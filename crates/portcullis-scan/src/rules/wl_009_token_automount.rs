//! **What it does**: flags pods that do not set `automountServiceAccountToken: false` (on the pod or its ServiceAccount).
//!
//! **Why it matters**: most applications never call the Kubernetes API, yet every pod gets a token by default; a compromised pod then acts with its service account's rights.
//!
//! **Example**: a Deployment without automountServiceAccountToken.
//!
//! **Fix**: set automountServiceAccountToken: false on the pod (or the ServiceAccount) unless it calls the API

use crate::context::Context;
use crate::finding::{Finding, Severity};
use crate::rules::Rule;

pub const RULE: Rule = Rule {
    id: "PC-WL-009",
    title: "Service account token mounted by default",
    severity: Severity::Low,
    check,
};

const FIX: &str =
    "set automountServiceAccountToken: false on the pod (or the ServiceAccount) unless it calls the API";

fn check(ctx: &Context<'_>, out: &mut Vec<Finding>) {
    for w in &ctx.inv.workloads {
        let sa_off = ctx.inv.service_accounts.iter().any(|s| {
            s.namespace() == w.namespace
                && s.name() == w.service_account()
                && s.value.automount_service_account_token == Some(false)
        });
        let pod_setting = w.spec.automount_service_account_token;
        if pod_setting == Some(true) || (pod_setting.is_none() && !sa_off) {
            out.push(Finding::new(
                RULE.id,
                RULE.severity,
                w.id(),
                &w.origin,
                format!("pods get service account {} token mounted", w.service_account()),
                FIX,
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::test_support::{findings, pod};

    #[test]
    fn fixture() {
        assert_eq!(
            findings(&pod("  containers: [{name: c, image: i}]\n"), "PC-WL-009").len(),
            1
        );
        assert!(findings(
            &pod("  automountServiceAccountToken: false\n  containers: [{name: c, image: i}]\n"),
            "PC-WL-009"
        )
        .is_empty());
        let sa = "---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: default, namespace: ns}\nautomountServiceAccountToken: false\n";
        assert!(findings(
            &format!("{}{sa}", pod("  containers: [{name: c, image: i}]\n")),
            "PC-WL-009"
        )
        .is_empty());
    }
}
