//! **What it does**: flags Ingress routes that ask for no authentication: neither
//! `portcullis.dev/auth` nor ingress-nginx's `auth-url`/`auth-type`.
//!
//! **Why it matters**: anyone who can reach the entry point reaches the backend. That
//! is right for a public website and wrong for an admin console; the scan cannot tell
//! which, so it asks.
//!
//! **Example**: an Ingress for `grafana.example.com` without annotations.
//!
//! **Fix**: add `portcullis.dev/auth: oidc` (and `allow-groups`), or, when the route is
//! public on purpose, suppress the finding with `portcullis.dev/ignore: PC-EXP-007 public site`.

use crate::context::Context;
use crate::finding::{Finding, Severity};
use crate::rules::Rule;

pub const RULE: Rule = Rule {
    id: "PC-EXP-007",
    title: "Ingress route without authentication",
    severity: Severity::Medium,
    check,
};

fn check(ctx: &Context<'_>, out: &mut Vec<Finding>) {
    for ing in &ctx.inv.ingresses {
        let annotations = ing.value.metadata.annotations.clone().unwrap_or_default();
        let auth = annotations
            .get("portcullis.dev/auth")
            .is_some_and(|a| a != "none")
            || crate::exposure::NGINX_AUTH
                .iter()
                .any(|k| annotations.contains_key(*k));
        if !auth {
            out.push(Finding::new(
                RULE.id,
                RULE.severity,
                format!("Ingress {}/{}", ing.namespace(), ing.name()),
                &ing.origin,
                "its routes need no authentication: anyone who reaches the entry point reaches the backends",
                "add portcullis.dev/auth: oidc (or jwt) and an allow rule, or suppress if the site is public on purpose",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::test_support::findings;

    fn ingress(annotations: &str) -> String {
        format!("apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: i, namespace: ns{annotations}}}\nspec: {{defaultBackend: {{service: {{name: s, port: {{number: 80}}}}}}}}\n")
    }

    #[test]
    fn fires_without_any_authentication() {
        assert_eq!(findings(&ingress(""), "PC-EXP-007").len(), 1);
        assert!(findings(
            &ingress(", annotations: {portcullis.dev/auth: oidc}"),
            "PC-EXP-007"
        )
        .is_empty());
        assert!(findings(
            &ingress(", annotations: {nginx.ingress.kubernetes.io/auth-url: 'http://a'}"),
            "PC-EXP-007"
        )
        .is_empty());
        assert_eq!(
            findings(
                &ingress(", annotations: {portcullis.dev/auth: none}"),
                "PC-EXP-007"
            )
            .len(),
            1
        );
    }
}
