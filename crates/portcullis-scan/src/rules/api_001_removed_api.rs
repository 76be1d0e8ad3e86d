//! **What it does**: flags objects written with an `apiVersion` that Kubernetes has
//! removed, naming the release that removed it.
//!
//! **Why it matters**: the API server refuses them: the next apply fails, or an
//! upgrade leaves the workload behind (`extensions/v1beta1` Ingresses, still common in
//! old charts, stopped working in 1.22).
//!
//! **Example**: `apiVersion: extensions/v1beta1` `kind: Ingress`.
//!
//! **Fix**: move to the current version (`networking.k8s.io/v1` for Ingress, `apps/v1`
//! for workloads, `batch/v1` for CronJob...), adjusting changed fields.

use crate::context::Context;
use crate::finding::{Finding, Severity};
use crate::rules::Rule;

pub const RULE: Rule = Rule {
    id: "PC-API-001",
    title: "Removed apiVersion",
    severity: Severity::High,
    check,
};

fn check(ctx: &Context<'_>, out: &mut Vec<Finding>) {
    for r in &ctx.inv.removed_apis {
        out.push(Finding::new(
            RULE.id,
            RULE.severity,
            format!("{} {}", r.kind, r.name),
            &r.origin,
            format!(
                "{} {} was removed in Kubernetes {}",
                r.api_version, r.kind, r.removed_in
            ),
            "move to the current API version of the kind",
        ));
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::test_support::findings;

    #[test]
    fn fires_on_removed_versions() {
        let f = findings(
            "apiVersion: extensions/v1beta1\nkind: Ingress\nmetadata: {name: old}\n",
            "PC-API-001",
        );
        assert_eq!(f.len(), 1);
        assert!(f[0].message.contains("1.22"), "{f:?}");
        assert!(findings(
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: new}\nspec: {}\n",
            "PC-API-001"
        )
        .is_empty());
    }
}
