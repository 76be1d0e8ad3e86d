//! Authorization: who may pass a route, and from where. Pure decisions on typed
//! policies, so `portcullis routes --explain` and the gateway can never disagree.
//!
//! Several rules on one Ingress all apply (AND); the values listed within one rule are
//! alternatives (OR). For `require-claims`, pairs naming the same claim are alternatives
//! and different claims are all required. Emails count only when the provider marked
//! them verified.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

/// Access rules of a route (from `portcullis.dev/allow-*`, `require-claims`,
/// `*-source-ranges`). Empty rules allow everyone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub allow_groups: Vec<String>,
    /// Lower case.
    pub allow_emails: Vec<String>,
    /// Lower case, exact domains (no subdomains).
    pub allow_email_domains: Vec<String>,
    /// Claim name -> accepted values.
    pub require_claims: BTreeMap<String, Vec<String>>,
    pub allow_source_ranges: Vec<IpNet>,
    pub deny_source_ranges: Vec<IpNet>,
}

impl Policy {
    /// Whether any rule needs to know who the caller is.
    pub fn needs_identity(&self) -> bool {
        !(self.allow_groups.is_empty()
            && self.allow_emails.is_empty()
            && self.allow_email_domains.is_empty()
            && self.require_claims.is_empty())
    }
}

/// Who is asking, as far as authorization cares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subject {
    pub email: Option<String>,
    pub email_verified: bool,
    pub groups: Vec<String>,
    /// Claims a policy may require, values as strings (arrays flattened).
    pub claims: BTreeMap<String, Vec<String>>,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// The client address is in a deny range, or outside every allow range.
    SourceRange,
    GroupNotAllowed,
    EmailNotAllowed,
    EmailDomainNotAllowed,
    /// The named claim is missing or has none of the accepted values.
    ClaimMismatch(String),
}

impl Denial {
    /// A stable label for metrics and the audit log.
    pub fn reason(&self) -> &'static str {
        match self {
            Denial::SourceRange => "source_range",
            Denial::GroupNotAllowed => "group_not_allowed",
            Denial::EmailNotAllowed => "email_not_allowed",
            Denial::EmailDomainNotAllowed => "email_domain_not_allowed",
            Denial::ClaimMismatch(_) => "claim_mismatch",
        }
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denial::SourceRange => f.write_str("the client address is not allowed"),
            Denial::GroupNotAllowed => f.write_str("not in an allowed group"),
            Denial::EmailNotAllowed => f.write_str("the (verified) email is not allowed"),
            Denial::EmailDomainNotAllowed => f.write_str("the (verified) email's domain is not allowed"),
            Denial::ClaimMismatch(c) => write!(f, "claim {c} does not have a required value"),
        }
    }
}

/// The client address check: deny ranges first, then allow ranges when there are any.
pub fn check_source(policy: &Policy, client: IpAddr) -> Result<(), Denial> {
    let client = canonical(client);
    if policy.deny_source_ranges.iter().any(|n| n.contains(&client)) {
        return Err(Denial::SourceRange);
    }
    if !policy.allow_source_ranges.is_empty()
        && !policy.allow_source_ranges.iter().any(|n| n.contains(&client))
    {
        return Err(Denial::SourceRange);
    }
    Ok(())
}

/// `::ffff:10.1.2.3` is `10.1.2.3`: dual-stack sockets report IPv4 clients that way.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The identity check. Call only for authenticated requests.
pub fn check_subject(policy: &Policy, s: &Subject) -> Result<(), Denial> {
    if !policy.allow_groups.is_empty() && !s.groups.iter().any(|g| policy.allow_groups.contains(g)) {
        return Err(Denial::GroupNotAllowed);
    }
    let verified = verified_email(s);
    if !policy.allow_emails.is_empty() && !verified.as_ref().is_some_and(|e| policy.allow_emails.contains(e))
    {
        return Err(Denial::EmailNotAllowed);
    }
    if !policy.allow_email_domains.is_empty() {
        let domain = verified.as_deref().and_then(email_domain);
        if !domain.is_some_and(|d| policy.allow_email_domains.iter().any(|a| a == d)) {
            return Err(Denial::EmailDomainNotAllowed);
        }
    }
    for (claim, accepted) in &policy.require_claims {
        let values = s.claims.get(claim).map(Vec::as_slice).unwrap_or_default();
        if !values.iter().any(|v| accepted.contains(v)) {
            return Err(Denial::ClaimMismatch(claim.clone()));
        }
    }
    Ok(())
}

fn verified_email(s: &Subject) -> Option<String> {
    s.email
        .as_ref()
        .filter(|_| s.email_verified)
        .map(|e| e.to_ascii_lowercase())
}

/// The domain of an address with exactly one `@` and a non-empty local part.
fn email_domain(email: &str) -> Option<&str> {
    let (local, domain) = email.split_once('@')?;
    (!local.is_empty() && !domain.is_empty() && !domain.contains('@')).then_some(domain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(email: &str, verified: bool, groups: &[&str]) -> Subject {
        Subject {
            email: Some(email.to_string()),
            email_verified: verified,
            groups: groups.iter().map(|g| g.to_string()).collect(),
            claims: BTreeMap::new(),
        }
    }

    fn policy(edit: impl FnOnce(&mut Policy)) -> Policy {
        let mut p = Policy::default();
        edit(&mut p);
        p
    }

    #[test]
    fn empty_policy_allows_everyone() {
        assert_eq!(check_subject(&Policy::default(), &Subject::default()), Ok(()));
        assert_eq!(
            check_source(&Policy::default(), "203.0.113.9".parse().unwrap()),
            Ok(())
        );
        assert!(!Policy::default().needs_identity());
    }

    #[test]
    fn groups_are_alternatives() {
        let p = policy(|p| p.allow_groups = vec!["admins".into(), "sre".into()]);
        assert_eq!(
            check_subject(&p, &subject("a@x.io", true, &["dev", "sre"])),
            Ok(())
        );
        assert_eq!(
            check_subject(&p, &subject("a@x.io", true, &["dev"])),
            Err(Denial::GroupNotAllowed)
        );
        assert_eq!(
            check_subject(&p, &subject("a@x.io", true, &[])),
            Err(Denial::GroupNotAllowed)
        );
        // Group names are exact.
        assert_eq!(
            check_subject(&p, &subject("a@x.io", true, &["Admins"])),
            Err(Denial::GroupNotAllowed)
        );
    }

    #[test]
    fn emails_must_be_verified_and_match_exactly() {
        let p = policy(|p| p.allow_emails = vec!["alice@example.com".into()]);
        assert_eq!(
            check_subject(&p, &subject("Alice@Example.com", true, &[])),
            Ok(())
        );
        assert_eq!(
            check_subject(&p, &subject("alice@example.com", false, &[])),
            Err(Denial::EmailNotAllowed)
        );
        assert_eq!(
            check_subject(&p, &subject("alice@example.co", true, &[])),
            Err(Denial::EmailNotAllowed)
        );
        assert_eq!(
            check_subject(&p, &Subject::default()),
            Err(Denial::EmailNotAllowed)
        );
    }

    #[test]
    fn email_domains_are_exact_and_unforgeable() {
        let p = policy(|p| p.allow_email_domains = vec!["example.com".into()]);
        assert_eq!(check_subject(&p, &subject("bob@example.com", true, &[])), Ok(()));
        assert_eq!(check_subject(&p, &subject("bob@EXAMPLE.COM", true, &[])), Ok(()));
        let no = Err(Denial::EmailDomainNotAllowed);
        assert_eq!(check_subject(&p, &subject("bob@example.com", false, &[])), no);
        assert_eq!(check_subject(&p, &subject("bob@sub.example.com", true, &[])), no);
        assert_eq!(
            check_subject(&p, &subject("bob@example.com.evil.io", true, &[])),
            no
        );
        assert_eq!(
            check_subject(&p, &subject("a@example.com@evil.io", true, &[])),
            no
        );
        assert_eq!(
            check_subject(&p, &subject("a@evil.io@example.com", true, &[])),
            no
        );
        assert_eq!(check_subject(&p, &subject("@example.com", true, &[])), no);
        assert_eq!(check_subject(&p, &subject("example.com", true, &[])), no);
    }

    #[test]
    fn claims_same_name_or_different_names_and() {
        let p = policy(|p| {
            p.require_claims
                .insert("tenant".into(), vec!["a".into(), "b".into()]);
            p.require_claims.insert("tier".into(), vec!["gold".into()]);
        });
        let mut s = Subject::default();
        s.claims.insert("tenant".into(), vec!["b".into()]);
        assert_eq!(check_subject(&p, &s), Err(Denial::ClaimMismatch("tier".into())));
        // Array claims match by membership.
        s.claims
            .insert("tier".into(), vec!["silver".into(), "gold".into()]);
        assert_eq!(check_subject(&p, &s), Ok(()));
        s.claims.insert("tenant".into(), vec!["c".into()]);
        assert_eq!(check_subject(&p, &s), Err(Denial::ClaimMismatch("tenant".into())));
    }

    #[test]
    fn all_rules_apply_together() {
        let p = policy(|p| {
            p.allow_groups = vec!["dev".into()];
            p.allow_email_domains = vec!["example.com".into()];
        });
        assert_eq!(
            check_subject(&p, &subject("a@example.com", true, &["dev"])),
            Ok(())
        );
        assert_eq!(
            check_subject(&p, &subject("a@other.com", true, &["dev"])),
            Err(Denial::EmailDomainNotAllowed)
        );
        assert_eq!(
            check_subject(&p, &subject("a@example.com", true, &["ops"])),
            Err(Denial::GroupNotAllowed)
        );
    }

    #[test]
    fn source_ranges_deny_first_then_allow() {
        let p = policy(|p| {
            p.allow_source_ranges = vec!["10.0.0.0/8".parse().unwrap(), "2001:db8::/32".parse().unwrap()];
            p.deny_source_ranges = vec!["10.6.6.0/24".parse().unwrap()];
        });
        let at = |ip: &str| check_source(&p, ip.parse().unwrap());
        assert_eq!(at("10.1.2.3"), Ok(()));
        assert_eq!(at("::ffff:10.1.2.3"), Ok(()));
        assert_eq!(at("2001:db8::1"), Ok(()));
        assert_eq!(at("10.6.6.6"), Err(Denial::SourceRange));
        assert_eq!(at("192.0.2.1"), Err(Denial::SourceRange));
        assert_eq!(at("2001:db9::1"), Err(Denial::SourceRange));
        let deny_only = policy(|p| p.deny_source_ranges = vec!["192.0.2.0/24".parse().unwrap()]);
        assert_eq!(
            check_source(&deny_only, "192.0.2.7".parse().unwrap()),
            Err(Denial::SourceRange)
        );
        assert_eq!(check_source(&deny_only, "198.51.100.7".parse().unwrap()), Ok(()));
    }
}
