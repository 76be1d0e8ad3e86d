//! **What it does**: reports whether the kube-apiserver uses OpenID Connect (`--oidc-issuer-url`) or a webhook (`--authentication-token-webhook-config-file`, `--authentication-config`) for people.
//!
//! **Why it matters**: without a third-party identity provider, people authenticate with long-lived client certificates or static tokens, which cannot be revoked one by one and leave with the employee.
//!
//! **Example**: a kube-apiserver without `--oidc-issuer-url`.
//!
//! **Fix**: configure --oidc-issuer-url (or structured authentication) against your identity provider

use crate::context::Context;
use crate::finding::{Finding, Severity};
use crate::rules::util::flag;
use crate::rules::Rule;

pub const RULE: Rule = Rule {
    id: "PC-CP-004",
    title: "How people authenticate to the API server",
    severity: Severity::Info,
    check,
};

fn check(ctx: &Context<'_>, out: &mut Vec<Finding>) {
    for (w, c) in crate::rules::util::api_servers(ctx) {
        let oidc = flag(c, "oidc-issuer-url");
        let webhook =
            flag(c, "authentication-token-webhook-config-file").or(flag(c, "authentication-config"));
        let message = match (oidc, webhook) {
            (Some(issuer), _) => format!("people authenticate with OpenID Connect ({issuer})"),
            (None, Some(_)) => {
                "people authenticate through an authentication webhook or structured configuration"
                    .to_string()
            }
            (None, None) => {
                "no OpenID Connect or webhook authentication: people use client certificates or static tokens"
                    .to_string()
            }
        };
        out.push(Finding::new(
            RULE.id,
            RULE.severity,
            w.id(),
            &w.origin,
            message,
            "configure --oidc-issuer-url against your identity provider",
        ));
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::test_support::{apiserver, findings};

    #[test]
    fn fixture() {
        assert!(findings(&apiserver(""), "PC-CP-004")[0]
            .message
            .contains("no OpenID Connect"));
        assert!(
            findings(&apiserver(", --oidc-issuer-url=https://idp"), "PC-CP-004")[0]
                .message
                .contains("https://idp")
        );
    }
}
