//! Report formats: a table for people (exposure first, then findings by severity),
//! JSON with a stable shape, and SARIF 2.1.0 for code-scanning tools.

use std::fmt::Write;

use serde_json::json;

use crate::finding::Severity;
use crate::rules;
use crate::Report;

pub fn table(report: &Report) -> String {
    let mut out = String::new();
    let s = &report.summary;
    let _ = writeln!(
        out,
        "This cluster has {} entry points; {} reach workloads without TLS; {} without authentication; {} reach workloads no NetworkPolicy isolates.",
        s.entry_points, s.without_tls, s.without_auth, s.without_network_policy
    );
    if !report.entry_points.is_empty() {
        let _ = writeln!(out, "\nENTRY POINTS");
        let rows: Vec<[String; 6]> = report
            .entry_points
            .iter()
            .map(|p| {
                [
                    p.kind.to_string(),
                    p.via.clone(),
                    p.ports.join(","),
                    if p.workloads.is_empty() {
                        "-".into()
                    } else {
                        p.workloads.join(", ")
                    },
                    format!("tls={} auth={}", yes(p.tls), yes(p.auth)),
                    format!("isolated={}", yes(p.network_policy)),
                ]
            })
            .collect();
        let widths: Vec<usize> = (0..6)
            .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
            .collect();
        for r in rows {
            let line: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
            let _ = writeln!(out, "  {}", line.join("  ").trim_end());
        }
    }
    for severity in [
        Severity::Critical,
        Severity::High,
        Severity::Medium,
        Severity::Low,
        Severity::Info,
    ] {
        let group: Vec<_> = report
            .findings
            .iter()
            .filter(|f| f.severity == severity)
            .collect();
        if group.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\n{} ({})", severity.to_string().to_uppercase(), group.len());
        for f in group {
            let place = match f.line {
                Some(l) => format!("{}:{l}", f.file),
                None => f.file.clone(),
            };
            let _ = writeln!(
                out,
                "  {} {}: {}  [{}]\n      fix: {}",
                f.rule, f.object, f.message, place, f.fix
            );
        }
    }
    if !report.suppressed.is_empty() {
        let _ = writeln!(out, "\n{} findings suppressed", report.suppressed.len());
    }
    for u in &report.unreadable {
        let _ = writeln!(out, "\nnot read: {u}");
    }
    let count = |s: Severity| report.findings.iter().filter(|f| f.severity == s).count();
    let _ = writeln!(
        out,
        "\n{} objects scanned: {} critical, {} high, {} medium, {} low, {} info",
        report.objects,
        count(Severity::Critical),
        count(Severity::High),
        count(Severity::Medium),
        count(Severity::Low),
        count(Severity::Info)
    );
    out
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// The JSON report (schema version 1): `summary`, `entryPoints`, `findings`,
/// `suppressed`, `unreadable`, `objects`.
pub fn json(report: &Report) -> String {
    let value = json!({
        "schemaVersion": 1,
        "summary": report.summary,
        "entryPoints": report.entry_points,
        "findings": report.findings,
        "suppressed": report.suppressed.iter().map(|(f, reason)| json!({"finding": f, "reason": reason})).collect::<Vec<_>>(),
        "unreadable": report.unreadable,
        "objects": report.objects,
    });
    serde_json::to_string_pretty(&value).unwrap_or_default()
}

/// SARIF 2.1.0, one result per finding with its file and line.
pub fn sarif(report: &Report) -> String {
    let level = |s: Severity| match s {
        Severity::Critical | Severity::High => "error",
        Severity::Medium => "warning",
        Severity::Low | Severity::Info => "note",
    };
    let rules: Vec<_> = rules::ALL
        .iter()
        .map(|r| {
            json!({
                "id": r.id,
                "name": r.id,
                "shortDescription": {"text": r.title},
                "defaultConfiguration": {"level": level(r.severity)},
                "properties": {"severity": r.severity},
            })
        })
        .collect();
    let results: Vec<_> = report
        .findings
        .iter()
        .map(|f| {
            let mut location = json!({"physicalLocation": {"artifactLocation": {"uri": f.file}}});
            if let Some(line) = f.line {
                location["physicalLocation"]["region"] = json!({"startLine": line});
            }
            json!({
                "ruleId": f.rule,
                "level": level(f.severity),
                "message": {"text": format!("{}: {} Fix: {}", f.object, f.message, f.fix)},
                "locations": [location],
                "properties": {"severity": f.severity, "object": f.object},
            })
        })
        .collect();
    let value = json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "portcullis", "informationUri": "https://portcullis.dev", "rules": rules}},
            "results": results,
        }],
    });
    serde_json::to_string_pretty(&value).unwrap_or_default()
}
