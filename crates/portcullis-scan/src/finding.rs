//! What a scan reports.

use std::fmt;

use portcullis_config::Origin;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Critical,
    High,
    Medium,
    Low,
    Info,
}

impl Severity {
    pub fn parse(s: &str) -> Option<Severity> {
        Some(match s.to_ascii_lowercase().as_str() {
            "critical" => Severity::Critical,
            "high" => Severity::High,
            "medium" => Severity::Medium,
            "low" => Severity::Low,
            "info" => Severity::Info,
            _ => return None,
        })
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Critical => "critical",
            Severity::High => "high",
            Severity::Medium => "medium",
            Severity::Low => "low",
            Severity::Info => "info",
        })
    }
}

/// One thing a careful reviewer would point out.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Finding {
    /// Stable rule id, e.g. `PC-EXP-001`.
    pub rule: &'static str,
    pub severity: Severity,
    /// `Kind namespace/name`.
    pub object: String,
    pub message: String,
    /// What to do about it.
    pub fix: String,
    pub file: String,
    pub line: Option<u64>,
}

impl Finding {
    pub fn new(
        rule: &'static str,
        severity: Severity,
        object: impl Into<String>,
        origin: &Origin,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Finding {
        Finding {
            rule,
            severity,
            object: object.into(),
            message: message.into(),
            fix: fix.into(),
            file: origin.file.clone(),
            line: origin.line,
        }
    }
}
