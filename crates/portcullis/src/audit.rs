//! The audit log: one JSON line per access decision (who, what, from where, which route,
//! allowed or denied and why, status, bytes, time) and one per configuration change.
//! Lines go through a bounded queue to a writer thread, so the request path never waits
//! on the disk; if the writer falls behind, the events that did not fit are counted in
//! `portcullis_audit_dropped_total` and warned about, never lost silently. The file is
//! reopened on SIGHUP, for logrotate. No token, cookie or `Authorization` value is ever
//! part of an event.

use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method};
use portcullis_config::settings::AuditSettings;
use prometheus_client::metrics::counter::Counter;
use serde::Serialize;

use crate::lines::{LineWriter, Sink};
use crate::state::Upstream;
use crate::text::{AddrText, JsonObject, Rfc3339};

/// Who the request was from, in an audit event.
#[derive(Debug, Clone)]
pub struct AuditIdentity {
    pub subject: String,
    pub email: Option<String>,
    pub groups: Vec<String>,
    /// `session` or `bearer`.
    pub method: &'static str,
    pub provider: String,
}

/// The route a request matched.
#[derive(Debug, Clone)]
pub struct AuditRoute {
    /// `namespace/name`: the route's own label, shared rather than copied.
    pub ingress: Arc<str>,
    pub rule: String,
    pub path: String,
}

/// One access decision. What the request already holds (its address, method, id and
/// endpoint) is kept as it is and only turned into text when the event is written.
#[derive(Debug, Clone)]
pub struct AccessEvent {
    pub kind: &'static str,
    pub time: SystemTime,
    pub request_id: HeaderValue,
    pub client: IpAddr,
    pub method: Method,
    pub host: String,
    pub path: String,
    pub route: Option<AuditRoute>,
    pub identity: Option<AuditIdentity>,
    /// `allow` or `deny`.
    pub decision: &'static str,
    pub reason: Option<&'static str>,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration_ms: f64,
    pub upstream: Option<Upstream>,
}

impl AccessEvent {
    /// The event as one line of the schema the README documents (Audit log), fields in
    /// that order, absent ones left out. Written field by field rather than by a
    /// derived serializer, which escaped every name and value byte by byte: that was a
    /// third of what the audit log cost a request.
    fn write_json(&self, out: &mut Vec<u8>) {
        let mut o = JsonObject::new(out);
        o.str("kind", self.kind);
        o.plain("time", Rfc3339::millis(self.time).as_bytes());
        // Request ids are printable ASCII (made so, or checked when taken from a client).
        o.str("request_id", self.request_id.to_str().unwrap_or("-"));
        o.plain("client", AddrText::ip(self.client).as_bytes());
        o.str("method", self.method.as_str());
        o.str("host", &self.host);
        o.str("path", &self.path);
        if let Some(route) = &self.route {
            o.object("route", |r| {
                r.str("ingress", &route.ingress);
                r.str("rule", &route.rule);
                r.str("path", &route.path);
            });
        }
        if let Some(identity) = &self.identity {
            o.object("identity", |i| {
                i.str("subject", &identity.subject);
                if let Some(email) = &identity.email {
                    i.str("email", email);
                }
                i.strings("groups", &identity.groups);
                i.str("method", identity.method);
                i.str("provider", &identity.provider);
            });
        }
        o.str("decision", self.decision);
        if let Some(reason) = self.reason {
            o.str("reason", reason);
        }
        o.json("status", &self.status);
        o.json("bytes_in", &self.bytes_in);
        o.json("bytes_out", &self.bytes_out);
        o.json("duration_ms", &self.duration_ms);
        match &self.upstream {
            Some(Upstream::Address(a)) => o.plain("upstream", AddrText::socket(*a).as_bytes()),
            Some(named) => o.str("upstream", &named.to_string()),
            None => {}
        }
        o.end();
    }
}

pub struct AuditLog {
    writer: Option<LineWriter>,
    dropped: Counter,
    dropped_since_warning: AtomicU64,
}

/// The audit log's file, or stdout for `-`.
struct AuditFile {
    path: String,
}

impl Sink for AuditFile {
    fn open(&mut self) -> std::io::Result<Box<dyn Write + Send>> {
        if self.path == "-" {
            return Ok(Box::new(std::io::stdout()));
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        Ok(Box::new(file))
    }

    fn failed(&self, error: &std::io::Error) {
        tracing::error!(path = %self.path, %error, "cannot write the audit log");
    }
}

impl AuditLog {
    /// A log that writes nothing (auditLog.enabled: false).
    pub fn disabled(dropped: Counter) -> AuditLog {
        AuditLog {
            writer: None,
            dropped,
            dropped_since_warning: AtomicU64::new(0),
        }
    }

    /// Opens the sink and starts the writer thread.
    pub fn start(settings: &AuditSettings, dropped: Counter) -> std::io::Result<AuditLog> {
        if !settings.enabled {
            return Ok(AuditLog::disabled(dropped));
        }
        let sink = AuditFile {
            path: settings.path.clone(),
        };
        Ok(AuditLog {
            writer: Some(LineWriter::start("portcullis-audit", sink)?),
            dropped,
            dropped_since_warning: AtomicU64::new(0),
        })
    }

    /// Whether events are written at all (building them can be skipped otherwise).
    pub fn is_enabled(&self) -> bool {
        self.writer.is_some()
    }

    /// Queues one event; never waits.
    pub fn record<T: Serialize>(&self, event: &T) {
        if !self.is_enabled() {
            return;
        }
        if let Ok(mut line) = serde_json::to_vec(event) {
            line.push(b'\n');
            self.push(line);
        }
    }

    /// Queues one access event; never waits.
    pub fn record_access(&self, event: &AccessEvent) {
        if !self.is_enabled() {
            return;
        }
        // Room for a typical event, so that writing it does not grow the buffer twice.
        let mut line = Vec::with_capacity(512);
        event.write_json(&mut line);
        line.push(b'\n');
        self.push(line);
    }

    fn push(&self, line: Vec<u8>) {
        let Some(writer) = &self.writer else { return };
        if writer.push(line) {
            return;
        }
        self.dropped.inc();
        // One warning per thousand dropped events: loud, not a flood.
        if self
            .dropped_since_warning
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(1000)
        {
            tracing::warn!(
                dropped_total = self.dropped.get(),
                "audit log writer is behind: events dropped"
            );
        }
    }

    /// Reopens the file before the next write (SIGHUP, after logrotate moved it).
    pub fn reopen(&self) {
        if let Some(writer) = &self.writer {
            writer.reopen();
        }
    }

    /// Waits (up to `timeout`) until every event recorded so far is written: at
    /// shutdown, so the last requests' events are not lost with the process.
    pub fn flush(&self, timeout: Duration) -> bool {
        self.writer.as_ref().is_none_or(|w| w.flush(timeout))
    }
}

/// RFC 3339 UTC time with milliseconds.
pub fn timestamp() -> String {
    Rfc3339::millis(SystemTime::now()).as_str().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339() {
        let t = timestamp();
        // Always three digits of milliseconds, so that lines sort and align.
        assert!(
            t.starts_with("20")
                && t.len() == 24
                && &t[10..11] == "T"
                && &t[19..20] == "."
                && t.ends_with('Z'),
            "{t}"
        );
    }

    fn event() -> AccessEvent {
        AccessEvent {
            kind: "access",
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_707_602_326),
            request_id: HeaderValue::from_static("dc1d79c57171c21a0000000000000002"),
            client: IpAddr::from([10, 1, 22, 3]),
            method: Method::GET,
            host: "admins.test".into(),
            path: "/con\"sole".into(),
            route: Some(AuditRoute {
                ingress: "ns/admins".into(),
                rule: "spec.rules[0].http.paths[0]".into(),
                path: "/".into(),
            }),
            identity: Some(AuditIdentity {
                subject: "alice".into(),
                email: Some("alice@example.com".into()),
                groups: vec!["admins".into(), "dev".into()],
                method: "session",
                provider: "test".into(),
            }),
            decision: "deny",
            reason: Some("group_not_allowed"),
            status: 403,
            bytes_in: 0,
            bytes_out: 12,
            duration_ms: 1.16,
            upstream: Some(Upstream::Address(std::net::SocketAddr::from((
                [127, 0, 0, 1],
                38741,
            )))),
        }
    }

    /// The line consumers parse: every field, in this order, with these names.
    #[test]
    fn an_access_event_is_one_line_of_documented_json() {
        let mut line = Vec::new();
        event().write_json(&mut line);
        let line = String::from_utf8(line).expect("UTF-8");
        assert_eq!(
            line,
            r#"{"kind":"access","time":"2026-11-26T15:40:02.326Z","request_id":"dc1d79c57171c21a0000000000000002","client":"10.1.22.3","method":"GET","host":"admins.test","path":"/con\"sole","route":{"ingress":"ns/admins","rule":"spec.rules[0].http.paths[0]","path":"/"},"identity":{"subject":"alice","email":"alice@example.com","groups":["admins","dev"],"method":"session","provider":"test"},"decision":"deny","reason":"group_not_allowed","status":403,"bytes_in":0,"bytes_out":12,"duration_ms":1.16,"upstream":"127.0.0.1:38741"}"#
        );
    }

    #[test]
    fn optional_fields_are_left_out_and_other_values_written_in_full() {
        let json = |e: &AccessEvent| {
            let mut line = Vec::new();
            e.write_json(&mut line);
            serde_json::from_slice::<serde_json::Value>(&line).expect("valid JSON")
        };
        let mut e = event();
        e.client = "2001:db8::7".parse().expect("IPv6");
        e.upstream = Some(Upstream::Named {
            host: "api.example.com".into(),
            port: 8443,
        });
        e.method = Method::from_bytes(b"PROPFIND").expect("method");
        // Escaping, control characters and non-ASCII text survive the round trip.
        e.host = "caf\u{e9}.test".into();
        e.path = "/a\\b\u{1}c\"d\n".into();
        e.duration_ms = 2.0;
        let line = json(&e);
        assert_eq!(line["client"], "2001:db8::7");
        assert_eq!(line["upstream"], "api.example.com:8443");
        assert_eq!(line["method"], "PROPFIND");
        assert_eq!(line["host"], "caf\u{e9}.test");
        assert_eq!(line["path"], "/a\\b\u{1}c\"d\n");
        assert_eq!(line["duration_ms"], 2.0);
        (e.route, e.identity, e.reason, e.upstream) = (None, None, None, None);
        let line = json(&e);
        for absent in ["route", "identity", "reason", "upstream"] {
            assert!(line.get(absent).is_none(), "{absent} in {line}");
        }
        assert_eq!(line["status"], 403);
    }

    #[test]
    fn a_full_queue_counts_what_it_drops() {
        let log = AuditLog {
            writer: Some(LineWriter::unread(1)),
            dropped: Counter::default(),
            dropped_since_warning: AtomicU64::new(0),
        };
        log.record(&"one");
        log.record_access(&event());
        log.record(&"three");
        assert_eq!(log.dropped.get(), 2);
    }

    #[test]
    fn flush_waits_until_every_recorded_event_is_written() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("audit.log");
        let settings = AuditSettings {
            enabled: true,
            path: path.display().to_string(),
        };
        let log = AuditLog::start(&settings, Counter::default()).expect("audit log");
        for i in 0..1000 {
            log.record(&serde_json::json!({ "n": i }));
        }
        assert!(log.flush(Duration::from_secs(10)));
        let written = std::fs::read_to_string(&path).expect("audit file");
        assert_eq!(written.lines().count(), 1000);
        assert_eq!(written.lines().last(), Some(r#"{"n":999}"#));
    }
}
