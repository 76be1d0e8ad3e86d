//! **What it does**: flags environment variables filled from Secrets (`secretKeyRef`, `envFrom.secretRef`) and literal values whose names look like credentials.
//!
//! **Why it matters**: environment variables leak: into crash reports, `/proc/*/environ`, child processes, and logs of tools that print their environment. A literal credential in a manifest also sits in version control.
//!
//! **Example**: `env: [{name: DB_PASSWORD, value: hunter2}]`.
//!
//! **Fix**: mount Secrets as files (a volume) and read them there; never write credentials in manifests

use crate::context::Context;
use crate::finding::{Finding, Severity};
use crate::rules::util::containers;
use crate::rules::Rule;

pub const RULE: Rule = Rule {
    id: "PC-WL-010",
    title: "Secret in an environment variable",
    severity: Severity::Low,
    check,
};

const FIX: &str =
    "mount Secrets as files (a volume) and read them there; never write credentials in manifests";

fn check(ctx: &Context<'_>, out: &mut Vec<Finding>) {
    for w in &ctx.inv.workloads {
        for c in containers(&w.spec) {
            for e in c.env.iter().flatten() {
                let from_secret = e.value_from.as_ref().is_some_and(|v| v.secret_key_ref.is_some());
                let upper = e.name.to_ascii_uppercase();
                let looks_secret = ["PASSWORD", "PASSWD", "SECRET", "TOKEN", "API_KEY", "PRIVATE_KEY"]
                    .iter()
                    .any(|k| upper.contains(k));
                if e.value.as_ref().is_some_and(|v| !v.is_empty()) && looks_secret {
                    out.push(Finding::new(
                        RULE.id,
                        Severity::High,
                        w.id(),
                        &w.origin,
                        format!("container {} has a literal credential in {}", c.name, e.name),
                        FIX,
                    ));
                } else if from_secret {
                    out.push(Finding::new(
                        RULE.id,
                        RULE.severity,
                        w.id(),
                        &w.origin,
                        format!("container {} reads a Secret into {}", c.name, e.name),
                        FIX,
                    ));
                }
            }
            for f in c.env_from.iter().flatten().filter(|f| f.secret_ref.is_some()) {
                let name = f.secret_ref.as_ref().map(|s| s.name.clone()).unwrap_or_default();
                out.push(Finding::new(
                    RULE.id,
                    RULE.severity,
                    w.id(),
                    &w.origin,
                    format!("container {} loads Secret {name} into its environment", c.name),
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
        let f = findings(&pod("  containers: [{name: c, image: i, env: [{name: DB_PASSWORD, value: hunter2}, {name: T, valueFrom: {secretKeyRef: {name: s, key: k}}}]}]\n"), "PC-WL-010");
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].severity, crate::finding::Severity::High);
        assert!(findings(
            &pod("  containers: [{name: c, image: i, env: [{name: MODE, value: prod}]}]\n"),
            "PC-WL-010"
        )
        .is_empty());
    }
}
