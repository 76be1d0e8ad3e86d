//! `portcullis-scan`: every way into a cluster and what is exposed, unencrypted or
//! unprotected, from manifests read through `portcullis-config` (so the scanner and the
//! gateway never disagree about an object). Pure: text in, a report out.
#![forbid(unsafe_code)]

pub mod context;
pub mod exposure;
pub mod finding;
pub mod inventory;
pub mod netpol;
pub mod output;
pub mod rules;
pub mod selector;

pub use finding::{Finding, Severity};
pub use inventory::Inventory;

use context::{Context, EntryPoint};

/// The annotation that suppresses a finding on its object: `RULE-ID reason`.
pub const IGNORE_ANNOTATION: &str = "portcullis.dev/ignore";

/// A suppression from an `--ignore` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suppression {
    pub rule: String,
    /// `Kind namespace/name`, or every object when absent.
    pub object: Option<String>,
    pub reason: String,
}

/// How a scan runs.
#[derive(Debug, Clone)]
pub struct Options {
    pub suppressions: Vec<Suppression>,
    /// Honour `portcullis.dev/ignore` annotations. Off for CI gates where the people
    /// who deploy must not be able to exempt themselves.
    pub annotation_suppressions: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            suppressions: Vec::new(),
            annotation_suppressions: true,
        }
    }
}

/// The result of a scan.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub summary: exposure::Summary,
    pub entry_points: Vec<EntryPoint>,
    /// Sorted by severity, then rule, then object.
    pub findings: Vec<Finding>,
    /// Findings suppressed, with the reason.
    pub suppressed: Vec<(Finding, String)>,
    /// Files or documents that could not be read (the rest was scanned).
    pub unreadable: Vec<String>,
    pub objects: usize,
    pub other_kinds: std::collections::BTreeMap<String, usize>,
}

/// Whether a file is a Helm chart template (under `templates/` next to a `Chart.yaml`):
/// not a manifest until rendered (`helm template ... | portcullis scan -`).
pub fn is_helm_template(path: &std::path::Path) -> bool {
    path.ancestors().any(|dir| {
        dir.file_name().is_some_and(|n| n == "templates")
            && dir.parent().is_some_and(|p| p.join("Chart.yaml").is_file())
    })
}

/// Parses an `--ignore` file: one `RULE-ID [Kind namespace/name] # reason` per line; a
/// reason is required.
pub fn parse_ignore_file(text: &str) -> Result<Vec<Suppression>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (what, reason) = line
            .split_once('#')
            .map(|(w, r)| (w.trim(), r.trim()))
            .filter(|(_, r)| !r.is_empty())
            .ok_or_else(|| format!("line {}: a suppression needs a reason after #", i + 1))?;
        let (rule, object) = match what.split_once(char::is_whitespace) {
            Some((r, o)) => (r.trim(), Some(o.trim().to_string())),
            None => (what, None),
        };
        if !rules::ALL.iter().any(|r| r.id == rule) {
            return Err(format!("line {}: {rule:?} is not a rule id", i + 1));
        }
        out.push(Suppression {
            rule: rule.to_string(),
            object,
            reason: reason.to_string(),
        });
    }
    Ok(out)
}

/// Runs every rule.
pub fn scan(inv: &Inventory, options: &Options) -> Report {
    let ctx = Context::new(inv);
    let mut all = Vec::new();
    for rule in rules::ALL {
        (rule.check)(&ctx, &mut all);
    }
    let annotations = object_annotations(inv);
    let mut findings = Vec::new();
    let mut suppressed = Vec::new();
    for f in all {
        let by_file = options
            .suppressions
            .iter()
            .find(|s| s.rule == f.rule && s.object.as_ref().is_none_or(|o| *o == f.object))
            .map(|s| s.reason.clone());
        let by_annotation = options
            .annotation_suppressions
            .then(|| annotations.get(&f.object))
            .flatten()
            .and_then(|a| {
                a.lines()
                    .chain(a.split(';'))
                    .filter_map(|l| l.trim().split_once(char::is_whitespace))
                    .find(|(rule, _)| *rule == f.rule)
                    .map(|(_, reason)| format!("annotation: {}", reason.trim()))
            });
        match by_file.or(by_annotation) {
            Some(reason) => suppressed.push((f, reason)),
            None => findings.push(f),
        }
    }
    findings.sort_by(|a, b| {
        (a.severity, a.rule, &a.object, &a.message).cmp(&(b.severity, b.rule, &b.object, &b.message))
    });
    findings.dedup();
    let objects = inv.workloads.len()
        + inv.services.len()
        + inv.ingresses.len()
        + inv.network_policies.len()
        + inv.roles.len()
        + inv.cluster_roles.len()
        + inv.role_bindings.len()
        + inv.cluster_role_bindings.len()
        + inv.service_accounts.len()
        + inv.namespaces.len();
    Report {
        summary: exposure::summary(&ctx.entry_points),
        entry_points: ctx.entry_points.clone(),
        findings,
        suppressed,
        unreadable: inv.problems.iter().map(|p| p.to_string()).collect(),
        objects,
        other_kinds: inv.other_kinds.clone(),
    }
}

/// `portcullis.dev/ignore` of each object, by the name findings use.
fn object_annotations(inv: &Inventory) -> std::collections::HashMap<String, String> {
    let mut out = std::collections::HashMap::new();
    let mut add = |object: String, value: Option<&str>| {
        if let Some(v) = value {
            out.insert(object, v.to_string());
        }
    };
    for s in &inv.services {
        add(
            format!("Service {}/{}", s.namespace(), s.name()),
            s.annotation(IGNORE_ANNOTATION),
        );
    }
    for i in &inv.ingresses {
        add(
            format!("Ingress {}/{}", i.namespace(), i.name()),
            i.annotation(IGNORE_ANNOTATION),
        );
    }
    for p in &inv.network_policies {
        add(
            format!("NetworkPolicy {}/{}", p.namespace(), p.name()),
            p.annotation(IGNORE_ANNOTATION),
        );
    }
    for w in &inv.workloads {
        add(w.id(), w.annotations.get(IGNORE_ANNOTATION).map(String::as_str));
    }
    for r in &inv.cluster_roles {
        add(
            format!("ClusterRole {}", r.name()),
            r.annotation(IGNORE_ANNOTATION),
        );
    }
    for r in &inv.roles {
        add(
            format!("Role {}/{}", r.namespace(), r.name()),
            r.annotation(IGNORE_ANNOTATION),
        );
    }
    for b in &inv.cluster_role_bindings {
        add(
            format!("ClusterRoleBinding {}", b.name()),
            b.annotation(IGNORE_ANNOTATION),
        );
    }
    for b in &inv.role_bindings {
        add(
            format!("RoleBinding {}/{}", b.namespace(), b.name()),
            b.annotation(IGNORE_ANNOTATION),
        );
    }
    out
}
