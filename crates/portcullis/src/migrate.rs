//! `portcullis migrate`: what happens to each Ingress written for ingress-nginx when
//! Portcullis takes over its class. Every `nginx.ingress.kubernetes.io/` annotation gets
//! its status from the one table the gateway itself uses ([`nginx::ANNOTATIONS`]), and
//! each Ingress gets the Problems and the verdict of a real compilation, so the report
//! can never promise something the gateway would not do. Pure: the caller reads and
//! compiles the manifests; this module only sorts the outcome per Ingress and renders it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use k8s_openapi::api::networking::v1::Ingress;
use portcullis_config::compile::LEGACY_CLASS_ANNOTATION;
use portcullis_config::manifest::Object;
use portcullis_config::nginx::{self, Support};
use portcullis_config::{Compiled, Manifests, Problem, Settings};
use serde::Serialize;

/// The class ingress-nginx installs by default; its Ingresses are reported even when
/// another class is being served, since they are the ones to migrate.
const NGINX_CLASS: &str = "nginx";
/// Longest annotation value shown in the table; snippets can run for pages.
const MAX_VALUE_CHARS: usize = 60;

/// Output format of `portcullis migrate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One block per Ingress, for people.
    Table,
    /// The whole report as JSON, for scripts (stable field names).
    Json,
}

/// What makes `portcullis migrate` exit 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum FailOn {
    /// An Ingress would not be served.
    #[default]
    Rejected,
    /// Also: an annotation is supported only with a difference, or ignored.
    Differs,
}

/// How the report was read, where that changes what the Problems mean.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Secrets were not read (`--cluster` never reads them): a TLS Secret that is named
    /// but absent is not a problem of the Ingress, and certificates go unchecked.
    pub secrets_unread: bool,
}

/// How Portcullis treats one annotation, as [`nginx::Support`] says, plus the cases only
/// the annotation's value or name decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Supported,
    Differs,
    Rejected,
    /// A rejected annotation set to its off value (e.g. `enable-modsecurity: "false"`),
    /// which asks for nothing: the compilation does not reject the Ingress for it.
    Off,
    Ignored,
    Refused,
    /// Not in ingress-nginx's documentation (a typo, or a newer annotation).
    Unknown,
}

impl Status {
    /// The words of the table.
    pub fn label(self) -> &'static str {
        match self {
            Status::Supported => "supported",
            Status::Differs => "supported with a difference",
            Status::Rejected => "not supported: the Ingress is not served",
            Status::Off => "not supported, but off: no effect",
            Status::Ignored => "not supported: ignored (served with a warning)",
            Status::Refused => "refused: snippet",
            Status::Unknown => "unknown: ignored",
        }
    }

    /// Whether the Ingress behaves otherwise than under ingress-nginx because of it.
    fn differs(self) -> bool {
        matches!(self, Status::Differs | Status::Ignored | Status::Unknown)
    }
}

/// Whether `portcullis serve --ingress-class CLASS` would serve the Ingress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Served,
    ServedWithWarnings,
    NotServed,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Served => "served",
            Verdict::ServedWithWarnings => "served with warnings",
            Verdict::NotServed => "not served",
        }
    }
}

/// A Problem of the compilation, without the object (the Ingress it is listed under).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// `error` or `warning`.
    pub severity: String,
    /// Dotted path of the field at fault; empty for the whole Ingress.
    pub field: String,
    pub message: String,
}

impl From<&Problem> for Finding {
    fn from(p: &Problem) -> Self {
        Finding {
            severity: p.severity.to_string(),
            field: p.field.clone(),
            message: p.message.clone(),
        }
    }
}

/// One `nginx.ingress.kubernetes.io/` annotation of an Ingress.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AnnotationReport {
    /// The full key, prefix included.
    pub name: String,
    /// The value as written, never truncated here.
    pub value: String,
    pub status: Status,
    /// How the behaviour differs, or why it is not supported.
    pub note: Option<String>,
    /// The `portcullis.dev/` annotation (or feature) that replaces it, if any.
    pub portcullis: Option<String>,
    /// Problems the compilation found in this annotation (an invalid value, say).
    pub problems: Vec<Finding>,
}

/// One Ingress written for ingress-nginx.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressReport {
    pub namespace: String,
    pub name: String,
    /// `file:line` it was read from, or `cluster`.
    pub origin: String,
    /// `spec.ingressClassName`, else the legacy annotation.
    pub class: Option<String>,
    pub verdict: Verdict,
    pub annotations: Vec<AnnotationReport>,
    /// Problems about the Ingress outside its ingress-nginx annotations.
    pub problems: Vec<Finding>,
}

impl IngressReport {
    /// Served as ingress-nginx serves it. Warnings do not count: ingress-nginx serves a
    /// host without TLS or a Service without endpoints the same way.
    fn as_is(&self) -> bool {
        self.verdict != Verdict::NotServed && !self.annotations.iter().any(|a| a.status.differs())
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub ingresses: usize,
    /// Served, every annotation supported exactly (or off).
    pub served_as_is: usize,
    /// Served, with an annotation that behaves otherwise or is ignored.
    pub served_with_differences: usize,
    pub not_served: usize,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Bumped when a field changes meaning or disappears.
    pub schema_version: u32,
    /// The class compiled for, as `portcullis serve --ingress-class` would.
    pub ingress_class: String,
    pub summary: Summary,
    pub ingresses: Vec<IngressReport>,
    /// Ingress documents that could not be read (a removed apiVersion, a field of the
    /// wrong type, a duplicate): they would not be served either.
    pub unreadable: Vec<String>,
    /// What the reader should know about how the report was made.
    pub notes: Vec<String>,
}

impl Report {
    /// Whether `portcullis migrate --fail-on FAIL_ON` exits 1.
    pub fn fails(&self, fail_on: FailOn) -> bool {
        let rejected = self.summary.not_served > 0 || !self.unreadable.is_empty();
        match fail_on {
            FailOn::Rejected => rejected,
            FailOn::Differs => {
                rejected
                    || self
                        .ingresses
                        .iter()
                        .flat_map(|i| &i.annotations)
                        .any(|a| a.status.differs())
            }
        }
    }
}

/// Builds the report from the manifests and their compilation with `settings`.
pub fn report(manifests: &Manifests, compiled: &Compiled, settings: &Settings, options: Options) -> Report {
    let ours = settings.ingress_class.as_str();
    let mut ingresses: Vec<IngressReport> = manifests
        .ingresses
        .iter()
        .filter(|i| is_nginx(i, ours))
        .map(|i| ingress_report(i, manifests, compiled, settings, options))
        .collect();
    ingresses.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut summary = Summary {
        ingresses: ingresses.len(),
        ..Summary::default()
    };
    for i in &ingresses {
        match i.verdict {
            Verdict::NotServed => summary.not_served += 1,
            _ if i.as_is() => summary.served_as_is += 1,
            _ => summary.served_with_differences += 1,
        }
    }
    let mut notes = Vec::new();
    if options.secrets_unread {
        notes.push("Secrets are never read from the cluster: TLS certificates were not checked".to_string());
    }
    let unreadable = manifests
        .problems
        .iter()
        .filter(|p| p.object.as_ref().is_some_and(|o| o.kind == "Ingress"))
        .map(Problem::to_string)
        .collect();
    Report {
        schema_version: 1,
        ingress_class: ours.to_string(),
        summary,
        ingresses,
        unreadable,
        notes,
    }
}

fn class_of(ingress: &Object<Ingress>) -> Option<&str> {
    let spec = ingress
        .value
        .spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.as_deref());
    spec.or(ingress.annotation(LEGACY_CLASS_ANNOTATION))
}

/// Written for ingress-nginx: it uses its annotations, or its class.
fn is_nginx(ingress: &Object<Ingress>, ours: &str) -> bool {
    let annotated = ingress
        .value
        .metadata
        .annotations
        .iter()
        .flatten()
        .any(|(k, _)| k.starts_with(nginx::PREFIX));
    annotated || class_of(ingress).is_some_and(|c| c == NGINX_CLASS || c == ours)
}

fn annotation_field(key: &str) -> String {
    format!("metadata.annotations[\"{key}\"]")
}

fn ingress_report(
    ingress: &Object<Ingress>,
    manifests: &Manifests,
    compiled: &Compiled,
    settings: &Settings,
    options: Options,
) -> IngressReport {
    let oref = ingress.object_ref();
    let mut problems: Vec<Problem> = compiled
        .problems
        .iter()
        .filter(|p| p.object.as_ref() == Some(&oref))
        .filter(|p| !(options.secrets_unread && unread_secret(ingress, manifests, &p.field)))
        .cloned()
        .collect();
    let served = compiled
        .snapshot
        .routes
        .routes()
        .any(|(_, r)| r.ingress.namespace == ingress.namespace() && r.ingress.name == ingress.name());
    let verdict = if !served {
        if problems.is_empty() {
            // Silence with no route means the compilation passed it over for its class
            // (a rejected Ingress always has an error): say so, and still check its
            // annotations, which is what the reader came for.
            problems.push(class_problem(ingress, manifests, settings));
            let (_, found) = portcullis_config::annotations::route_options(
                &oref,
                ingress.value.metadata.annotations.as_ref(),
                settings,
            );
            problems.extend(found);
        }
        Verdict::NotServed
    } else if problems.is_empty() {
        Verdict::Served
    } else {
        Verdict::ServedWithWarnings
    };

    let mut annotations = Vec::new();
    for (key, value) in ingress.value.metadata.annotations.iter().flatten() {
        let Some(name) = key.strip_prefix(nginx::PREFIX) else {
            continue;
        };
        let field = annotation_field(key);
        let (mine, rest): (Vec<Problem>, Vec<Problem>) = problems.into_iter().partition(|p| p.field == field);
        problems = rest;
        let known = nginx::annotation(name);
        let (status, note) = match known.map(|a| a.support) {
            None => (Status::Unknown, None),
            Some(Support::Exact) => (Status::Supported, None),
            Some(Support::Differs(why)) => (Status::Differs, Some(why)),
            Some(Support::Rejected(why)) if mine.iter().any(Problem::is_error) => {
                (Status::Rejected, Some(why))
            }
            Some(Support::Rejected(why)) => (Status::Off, Some(why)),
            Some(Support::Ignored(why)) => (Status::Ignored, Some(why)),
            Some(Support::Refused) => (Status::Refused, None),
        };
        annotations.push(AnnotationReport {
            name: key.clone(),
            value: value.clone(),
            status,
            note: note.map(str::to_string),
            portcullis: known.and_then(|a| a.portcullis).map(str::to_string),
            problems: mine.iter().map(Finding::from).collect(),
        });
    }
    IngressReport {
        namespace: ingress.namespace().to_string(),
        name: ingress.name().to_string(),
        origin: origin(ingress),
        class: class_of(ingress).map(str::to_string),
        verdict,
        annotations,
        problems: problems.iter().map(Finding::from).collect(),
    }
}

fn origin(ingress: &Object<Ingress>) -> String {
    let o = &ingress.origin;
    match o.line {
        // Objects listed from the API server have no line.
        Some(line) if line > 0 => format!("{}:{line}", o.file),
        _ => o.file.clone(),
    }
}

/// Why the compilation did not pick the Ingress up.
fn class_problem(ingress: &Object<Ingress>, manifests: &Manifests, settings: &Settings) -> Problem {
    let ours = &settings.ingress_class;
    let message = match class_of(ingress) {
        Some(class) => format!(
            "its class is {class:?}, not {ours:?}: `portcullis serve --ingress-class {ours}` leaves it to another controller"
        ),
        None if manifests.ingress_classes.iter().any(|c| c.name() == ours) => format!(
            "it has no class and the IngressClass {ours:?} is not the default: set spec.ingressClassName: {ours}"
        ),
        None => format!(
            "it has no class, and no IngressClass {ours:?} marked default (ingressclass.kubernetes.io/is-default-class: \"true\") was read: set spec.ingressClassName: {ours}"
        ),
    };
    Problem::error(Some(ingress.object_ref()), "spec.ingressClassName", message)
}

/// Whether `field` is `spec.tls[i].secretName` for a Secret the Ingress names but that
/// was never read, so its absence says nothing.
fn unread_secret(ingress: &Object<Ingress>, manifests: &Manifests, field: &str) -> bool {
    let Some(index) = field
        .strip_prefix("spec.tls[")
        .and_then(|rest| rest.strip_suffix("].secretName"))
        .and_then(|i| i.parse::<usize>().ok())
    else {
        return false;
    };
    let named = ingress
        .value
        .spec
        .as_ref()
        .and_then(|s| s.tls.as_ref())
        .and_then(|tls| tls.get(index))
        .and_then(|t| t.secret_name.as_deref())
        .filter(|n| !n.is_empty());
    named.is_some_and(|name| {
        !manifests
            .secrets
            .iter()
            .any(|s| s.namespace() == ingress.namespace() && s.name() == name)
    })
}

/// One line, at most [`MAX_VALUE_CHARS`] characters: snippets span many lines.
fn one_line(value: &str) -> String {
    let flat = value.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= MAX_VALUE_CHARS {
        return flat;
    }
    let mut cut: String = flat.chars().take(MAX_VALUE_CHARS - 1).collect();
    cut.push('…');
    cut
}

/// The report for people: one block per Ingress, then the summary line.
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    for i in &report.ingresses {
        let _ = write!(out, "Ingress {}/{}", i.namespace, i.name);
        if !i.origin.is_empty() {
            let _ = write!(out, " ({})", i.origin);
        }
        let _ = writeln!(out, ": {}", i.verdict.label());
        let width = i
            .annotations
            .iter()
            .map(|a| a.status.label().len())
            .max()
            .unwrap_or(0);
        for a in &i.annotations {
            let name = a.name.strip_prefix(nginx::PREFIX).unwrap_or(&a.name);
            let _ = writeln!(
                out,
                "  {:width$}  {name}: {}",
                a.status.label(),
                one_line(&a.value)
            );
            if let Some(note) = &a.note {
                let _ = writeln!(out, "      {note}");
            }
            if let Some(p) = &a.portcullis {
                let _ = writeln!(out, "      use instead: {p}");
            }
            // For the other statuses the compilation's message only repeats the note.
            if matches!(a.status, Status::Supported | Status::Differs | Status::Refused) {
                for p in &a.problems {
                    let _ = writeln!(out, "      {}: {}", p.severity, p.message);
                }
            }
        }
        for p in &i.problems {
            let _ = write!(out, "  {}: ", p.severity);
            if !p.field.is_empty() {
                let _ = write!(out, "{}: ", p.field);
            }
            let _ = writeln!(out, "{}", p.message);
        }
        out.push('\n');
    }
    for p in &report.unreadable {
        let _ = writeln!(out, "not read: {p}");
    }
    for note in &report.notes {
        let _ = writeln!(out, "note: {note}");
    }
    let s = &report.summary;
    let _ = writeln!(
        out,
        "{} Ingresses: {} served as is, {} served with differences, {} not served",
        s.ingresses, s.served_as_is, s.served_with_differences, s.not_served
    );
    out
}

/// The report for scripts.
pub fn json(report: &Report) -> String {
    // Only strings, numbers and derived structs: serialization cannot fail.
    serde_json::to_string_pretty(report).unwrap_or_default()
}

/// The annotations of `report` by status, for tests and summaries.
pub fn statuses(report: &Report) -> BTreeMap<String, Status> {
    report
        .ingresses
        .iter()
        .flat_map(|i| i.annotations.iter().map(|a| (a.name.clone(), a.status)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ingress(name: &str, class: Option<&str>, annotations: &[(&str, &str)]) -> String {
        let mut text = format!(
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {name}\n  namespace: shop\n"
        );
        if !annotations.is_empty() {
            text.push_str("  annotations:\n");
            for (k, v) in annotations {
                let _ = writeln!(text, "    {k}: {}", serde_json::Value::from(*v));
            }
        }
        text.push_str("spec:\n");
        if let Some(c) = class {
            let _ = writeln!(text, "  ingressClassName: {c}");
        }
        text.push_str(
            "  rules:\n  - http:\n      paths:\n      - path: /\n        pathType: Prefix\n        backend: {service: {name: web, port: {number: 80}}}\n",
        );
        text
    }

    const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec:\n  ports: [{port: 80}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  namespace: shop\n  labels: {kubernetes.io/service-name: web}\naddressType: IPv4\nports: [{port: 80}]\nendpoints: [{addresses: [10.0.0.1], conditions: {ready: true}}]\n";

    fn run(documents: &[String], options: Options) -> Report {
        let mut manifests = Manifests::default();
        let mut text = documents.join("---\n");
        text.push_str("---\n");
        text.push_str(SERVICE);
        manifests.add_text("m.yaml", &text);
        let settings = Settings {
            ingress_class: "nginx".into(),
            ..Settings::default()
        };
        let compiled = portcullis_config::compile(&manifests, &settings, 1_700_000_000);
        report(&manifests, &compiled, &settings, options)
    }

    fn only(report: &Report, name: &str) -> IngressReport {
        report
            .ingresses
            .iter()
            .find(|i| i.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("no Ingress {name} in {report:#?}"))
    }

    #[test]
    fn an_ingress_of_exact_annotations_is_served_as_is() {
        let r = run(
            &[ingress(
                "web",
                Some("nginx"),
                &[
                    ("nginx.ingress.kubernetes.io/proxy-body-size", "8m"),
                    ("nginx.ingress.kubernetes.io/ssl-redirect", "false"),
                ],
            )],
            Options::default(),
        );
        let web = only(&r, "web");
        assert_eq!(web.verdict, Verdict::Served, "{web:#?}");
        assert!(web.annotations.iter().all(|a| a.status == Status::Supported));
        assert_eq!(
            web.annotations[0].portcullis.as_deref(),
            Some("portcullis.dev/max-body-size")
        );
        assert_eq!(
            r.summary,
            Summary {
                ingresses: 1,
                served_as_is: 1,
                served_with_differences: 0,
                not_served: 0
            }
        );
        assert!(!r.fails(FailOn::Rejected));
        assert!(!r.fails(FailOn::Differs));
    }

    #[test]
    fn every_status_appears_with_its_words() {
        let p = |n: &str| format!("nginx.ingress.kubernetes.io/{n}");
        let r = run(
            &[
                ingress(
                    "differs",
                    Some("nginx"),
                    &[
                        (&p("rewrite-target"), "/$1"),
                        (&p("server-alias"), "www.example.com"),
                        (&p("no-such-thing"), "1"),
                        (&p("enable-modsecurity"), "false"),
                    ],
                ),
                ingress("rejected", Some("nginx"), &[(&p("satisfy"), "any")]),
                ingress(
                    "refused",
                    Some("nginx"),
                    &[(&p("configuration-snippet"), "more_set_headers \"X: y\";")],
                ),
            ],
            Options::default(),
        );
        let s = statuses(&r);
        assert_eq!(s[&p("rewrite-target")], Status::Differs);
        assert_eq!(s[&p("server-alias")], Status::Ignored);
        assert_eq!(s[&p("no-such-thing")], Status::Unknown);
        assert_eq!(s[&p("enable-modsecurity")], Status::Off);
        assert_eq!(s[&p("satisfy")], Status::Rejected);
        assert_eq!(s[&p("configuration-snippet")], Status::Refused);
        assert_eq!(only(&r, "differs").verdict, Verdict::ServedWithWarnings);
        assert_eq!(only(&r, "rejected").verdict, Verdict::NotServed);
        let refused = only(&r, "refused");
        assert_eq!(refused.verdict, Verdict::NotServed);
        assert!(refused.annotations[0].problems[0].message.contains("snippets"));

        let text = table(&r);
        // Each annotation's line: its status (padded to the block's longest), its name
        // and value.
        for (status, rest) in [
            ("supported with a difference", "rewrite-target: /$1"),
            (
                "not supported: ignored (served with a warning)",
                "server-alias: www.example.com",
            ),
            ("not supported: the Ingress is not served", "satisfy: any"),
            ("not supported, but off: no effect", "enable-modsecurity: false"),
            (
                "refused: snippet",
                "configuration-snippet: more_set_headers \"X: y\";",
            ),
            ("unknown: ignored", "no-such-thing: 1"),
        ] {
            assert!(
                text.lines()
                    .any(|l| l.starts_with(&format!("  {status} ")) && l.ends_with(&format!("  {rest}"))),
                "{status:?} {rest:?} not in\n{text}"
            );
        }
        assert!(text.ends_with("3 Ingresses: 0 served as is, 1 served with differences, 2 not served\n"));
        assert!(r.fails(FailOn::Rejected));
    }

    #[test]
    fn differences_fail_only_when_asked() {
        let r = run(
            &[ingress(
                "web",
                Some("nginx"),
                &[("nginx.ingress.kubernetes.io/affinity", "cookie")],
            )],
            Options::default(),
        );
        assert_eq!(r.summary.served_with_differences, 1);
        assert!(!r.fails(FailOn::Rejected));
        assert!(r.fails(FailOn::Differs));
    }

    #[test]
    fn invalid_values_and_other_problems_are_attached_to_their_ingress() {
        let mut missing = ingress(
            "missing",
            Some("nginx"),
            &[("nginx.ingress.kubernetes.io/proxy-body-size", "lots")],
        );
        missing = missing.replace("name: web,", "name: gone,");
        let r = run(&[missing], Options::default());
        let i = only(&r, "missing");
        assert_eq!(i.verdict, Verdict::NotServed);
        let a = &i.annotations[0];
        assert_eq!(a.status, Status::Supported);
        assert_eq!(a.problems.len(), 1, "{a:#?}");
        assert_eq!(a.problems[0].severity, "error");
        assert!(table(&r).contains("      error: "), "{}", table(&r));
    }

    #[test]
    fn ingresses_of_another_class_or_none_say_why_they_are_not_served() {
        let r = run(
            &[
                ingress(
                    "classless",
                    None,
                    &[("nginx.ingress.kubernetes.io/server-snippet", "x")],
                ),
                ingress("plain", Some("traefik"), &[]),
                ingress(
                    "other",
                    Some("traefik"),
                    &[("nginx.ingress.kubernetes.io/app-root", "/a")],
                ),
            ],
            Options::default(),
        );
        // Neither nginx annotations nor class nginx: not ingress-nginx's business.
        assert!(r.ingresses.iter().all(|i| i.name != "plain"));
        let classless = only(&r, "classless");
        assert_eq!(classless.verdict, Verdict::NotServed);
        assert_eq!(classless.problems[0].field, "spec.ingressClassName");
        assert!(classless.problems[0].message.contains("no class"));
        // The annotations are still checked.
        assert_eq!(classless.annotations[0].status, Status::Refused);
        assert!(!classless.annotations[0].problems.is_empty());
        assert!(only(&r, "other").problems[0].message.contains("\"traefik\""));
    }

    #[test]
    fn secrets_not_read_from_the_cluster_are_not_problems() {
        let tls = ingress("web", Some("nginx"), &[]).replace(
            "spec:\n",
            "spec:\n  tls: [{hosts: [shop.example.com], secretName: shop-tls}]\n",
        );
        let files = run(std::slice::from_ref(&tls), Options::default());
        assert!(only(&files, "web")
            .problems
            .iter()
            .any(|p| p.field == "spec.tls[0].secretName"));
        let cluster = run(&[tls], Options { secrets_unread: true });
        assert_eq!(only(&cluster, "web").verdict, Verdict::Served);
        assert_eq!(cluster.notes.len(), 1);
    }

    #[test]
    fn an_ingress_that_cannot_be_read_fails_the_report() {
        let old = "apiVersion: extensions/v1beta1\nkind: Ingress\nmetadata: {name: old, namespace: shop}\n"
            .to_string();
        let r = run(&[old], Options::default());
        assert!(r.ingresses.is_empty());
        assert!(r.unreadable[0].contains("removed in Kubernetes 1.22"), "{r:#?}");
        assert!(r.fails(FailOn::Rejected));
        assert!(table(&r).contains("not read: error: Ingress shop/old"));
    }

    #[test]
    fn json_has_stable_field_names() {
        let r = run(
            &[ingress(
                "web",
                Some("nginx"),
                &[("nginx.ingress.kubernetes.io/limit-rps", "10")],
            )],
            Options::default(),
        );
        let v: serde_json::Value = serde_json::from_str(&json(&r)).expect("valid JSON");
        assert_eq!(v["schemaVersion"], 1);
        assert_eq!(v["ingressClass"], "nginx");
        assert_eq!(v["summary"]["servedWithDifferences"], 1);
        let i = &v["ingresses"][0];
        assert_eq!(i["namespace"], "shop");
        assert_eq!(i["name"], "web");
        assert_eq!(i["class"], "nginx");
        assert_eq!(i["verdict"], "served");
        let a = &i["annotations"][0];
        assert_eq!(a["name"], "nginx.ingress.kubernetes.io/limit-rps");
        assert_eq!(a["value"], "10");
        assert_eq!(a["status"], "differs");
        assert_eq!(a["portcullis"], "portcullis.dev/rate-limit: N/s");
        assert!(a["note"].as_str().is_some_and(|n| n.contains("429")));
        assert!(a["problems"].as_array().is_some_and(Vec::is_empty));
    }

    #[test]
    fn long_values_are_cut_to_one_line() {
        let long = format!("line one\n{}", "x".repeat(100));
        let shown = one_line(&long);
        assert!(!shown.contains('\n'));
        assert_eq!(shown.chars().count(), MAX_VALUE_CHARS);
        assert!(shown.starts_with("line one x") && shown.ends_with('…'));
    }
}
