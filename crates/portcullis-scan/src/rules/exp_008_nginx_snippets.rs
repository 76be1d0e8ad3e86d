//! **What it does**: flags ingress-nginx snippet annotations (`configuration-snippet`,
//! `server-snippet`, `auth-snippet`, `stream-snippet`, `modsecurity-snippet`).
//!
//! **Why it matters**: a snippet is raw nginx configuration templated into the
//! controller's config: whoever may edit an Ingress can read the controller's secrets
//! or change other tenants' routing (CVE-2021-25742, CVE-2025-1974 "IngressNightmare").
//!
//! **Example**: `nginx.ingress.kubernetes.io/configuration-snippet: more_set_headers ...`.
//!
//! **Fix**: replace the snippet with typed annotations; Portcullis refuses snippets.

use crate::context::Context;
use crate::finding::{Finding, Severity};
use crate::rules::Rule;

pub const RULE: Rule = Rule {
    id: "PC-EXP-008",
    title: "ingress-nginx snippet annotation (configuration injection)",
    severity: Severity::High,
    check,
};

const SNIPPETS: &[&str] = &[
    "configuration-snippet",
    "server-snippet",
    "auth-snippet",
    "stream-snippet",
    "modsecurity-snippet",
];

fn check(ctx: &Context<'_>, out: &mut Vec<Finding>) {
    for ing in &ctx.inv.ingresses {
        for key in ing.value.metadata.annotations.iter().flatten().map(|(k, _)| k) {
            let Some(name) = key.strip_prefix("nginx.ingress.kubernetes.io/") else {
                continue;
            };
            if SNIPPETS.contains(&name) {
                out.push(Finding::new(
                    RULE.id,
                    RULE.severity,
                    format!("Ingress {}/{}", ing.namespace(), ing.name()),
                    &ing.origin,
                    format!("{key} templates raw proxy configuration"),
                    "replace the snippet with typed annotations; Portcullis refuses snippets",
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::test_support::findings;

    #[test]
    fn fires_on_snippets() {
        let y = |a: &str| {
            format!("apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: i, namespace: ns, annotations: {{{a}: x}}}}\nspec: {{}}\n")
        };
        assert_eq!(
            findings(&y("nginx.ingress.kubernetes.io/server-snippet"), "PC-EXP-008").len(),
            1
        );
        assert!(findings(&y("nginx.ingress.kubernetes.io/rewrite-target"), "PC-EXP-008").is_empty());
    }
}
