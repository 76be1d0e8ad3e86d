//! The audit log: one JSON line per access decision (who, what, from where, which route,
//! allowed or denied and why, status, bytes, time) and one per configuration change.
//! Lines go through a bounded queue to a writer thread, so the request path never waits
//! on the disk; if the writer falls behind, the events that did not fit are counted in
//! `portcullis_audit_dropped_total` and warned about, never lost silently. The file is
//! reopened on SIGHUP, for logrotate. No token, cookie or `Authorization` value is ever
//! part of an event.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method};
use portcullis_config::settings::AuditSettings;
use prometheus_client::metrics::counter::Counter;
use serde::Serialize;

use crate::state::{AddrText, Upstream};

/// Events waiting for the writer before new ones are dropped (and counted).
const QUEUE: usize = 65_536;

/// The writer waits this long after each write before it takes the next batch. Under
/// load the queue fills meanwhile and goes out in one write, and a sender never has
/// to wake a parked writer (a futex call and a context switch for every event, which
/// made the audit log cost more CPU than the request it records).
const BATCH_INTERVAL: Duration = Duration::from_millis(20);

/// What the writer thread is sent.
enum Message {
    Line(Vec<u8>),
    /// Write everything queued before this, then say so.
    Flush(std::sync::mpsc::Sender<()>),
}

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
        o.plain("time", &Rfc3339::new(self.time).text);
        // Request ids are printable ASCII (made so, or checked when taken from a client).
        o.str("request_id", self.request_id.to_str().unwrap_or("-"));
        match self.client {
            IpAddr::V4(v4) => o.plain("client", AddrText::ipv4(v4).as_bytes()),
            IpAddr::V6(v6) => o.str("client", &v6.to_string()),
        }
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
        o.number("status", &self.status);
        o.number("bytes_in", &self.bytes_in);
        o.number("bytes_out", &self.bytes_out);
        o.number("duration_ms", &self.duration_ms);
        match &self.upstream {
            Some(Upstream::Address(SocketAddr::V4(a))) => {
                o.plain("upstream", AddrText::socket_v4(a).as_bytes())
            }
            Some(other) => o.str("upstream", &other.to_string()),
            None => {}
        }
        o.end();
    }
}

/// A JSON object written member by member. Names are the schema's own, plain ASCII
/// written as they are; values are escaped exactly as serde_json escapes them.
struct JsonObject<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> JsonObject<'a> {
    fn new(out: &'a mut Vec<u8>) -> JsonObject<'a> {
        out.push(b'{');
        JsonObject { out, first: true }
    }

    fn name(&mut self, name: &str) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    fn str(&mut self, name: &str, value: &str) {
        self.name(name);
        json_string(self.out, value);
    }

    /// A string value known to need no escaping (digits and punctuation).
    fn plain(&mut self, name: &str, value: &[u8]) {
        self.name(name);
        self.out.push(b'"');
        self.out.extend_from_slice(value);
        self.out.push(b'"');
    }

    fn number<N: Serialize>(&mut self, name: &str, value: &N) {
        self.name(name);
        // serde_json's own number formats (integers, shortest round-trip floats).
        // Writing to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *self.out, value);
    }

    fn strings(&mut self, name: &str, values: &[String]) {
        self.name(name);
        self.out.push(b'[');
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            json_string(self.out, v);
        }
        self.out.push(b']');
    }

    fn object(&mut self, name: &str, members: impl FnOnce(&mut JsonObject<'_>)) {
        self.name(name);
        let mut inner = JsonObject::new(self.out);
        members(&mut inner);
        inner.end();
    }

    fn end(self) {
        self.out.push(b'}');
    }
}

/// A JSON string: copied as it is when nothing in it needs escaping (the usual case),
/// otherwise escaped by serde_json.
fn json_string(out: &mut Vec<u8>, value: &str) {
    let bytes = value.as_bytes();
    // A fold without an early exit, which the compiler turns into wide compares.
    let needs_escaping = bytes
        .iter()
        .fold(false, |any, &b| any | (b < 0x20) | (b == b'"') | (b == b'\\'));
    if !needs_escaping {
        out.push(b'"');
        out.extend_from_slice(bytes);
        out.push(b'"');
    } else {
        // Writing to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, value);
    }
}

/// RFC 3339 in UTC with milliseconds, `2026-11-27T04:15:06.123Z`, written by hand:
/// the audit log stamps every request.
struct Rfc3339 {
    text: [u8; 24],
}

impl Rfc3339 {
    fn new(time: SystemTime) -> Rfc3339 {
        // Before 1970 only with a broken clock; after 9999 never.
        let since = time.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs().min(253_402_300_799);
        let (year, month, day) = civil_from_days(secs / 86_400);
        let of_day = secs % 86_400;
        let mut text = *b"0000-00-00T00:00:00.000Z";
        let mut put = |at: usize, width: usize, mut n: u64| {
            for i in (at..at + width).rev() {
                text[i] = b'0' + (n % 10) as u8;
                n /= 10;
            }
        };
        put(0, 4, year);
        put(5, 2, month);
        put(8, 2, day);
        put(11, 2, of_day / 3600);
        put(14, 2, of_day / 60 % 60);
        put(17, 2, of_day % 60);
        put(20, 3, since.subsec_millis().into());
        Rfc3339 { text }
    }

    fn as_str(&self) -> &str {
        // Digits and ASCII punctuation only.
        std::str::from_utf8(&self.text).unwrap_or_default()
    }
}

/// Year, month, day of a day counted from 1970-01-01 (the proleptic Gregorian
/// calendar; Howard Hinnant's `civil_from_days`, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    // Months counted from March, so that February's leap day comes last.
    let m = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * m + 2) / 5 + 1;
    let month = if m < 10 { m + 3 } else { m - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

pub struct AuditLog {
    queue: Option<SyncSender<Message>>,
    reopen: Arc<AtomicBool>,
    dropped: Counter,
    dropped_since_warning: AtomicU64,
}

impl AuditLog {
    /// A log that writes nothing (auditLog.enabled: false).
    pub fn disabled(dropped: Counter) -> AuditLog {
        AuditLog {
            queue: None,
            reopen: Arc::default(),
            dropped,
            dropped_since_warning: AtomicU64::new(0),
        }
    }

    /// Opens the sink and starts the writer thread.
    pub fn start(settings: &AuditSettings, dropped: Counter) -> std::io::Result<AuditLog> {
        if !settings.enabled {
            return Ok(AuditLog::disabled(dropped));
        }
        let path = settings.path.clone();
        let sink = open(&path)?;
        let (tx, rx) = sync_channel(QUEUE);
        let reopen = Arc::new(AtomicBool::new(false));
        let flag = reopen.clone();
        std::thread::Builder::new()
            .name("portcullis-audit".into())
            .spawn(move || write_loop(rx, sink, path, flag))?;
        Ok(AuditLog {
            queue: Some(tx),
            reopen,
            dropped,
            dropped_since_warning: AtomicU64::new(0),
        })
    }

    /// Whether events are written at all (building them can be skipped otherwise).
    pub fn is_enabled(&self) -> bool {
        self.queue.is_some()
    }

    /// Queues one event; never waits.
    pub fn record<T: Serialize>(&self, event: &T) {
        if self.queue.is_none() {
            return;
        }
        if let Ok(line) = serde_json::to_vec(event) {
            self.queue_line(line);
        }
    }

    /// Queues one access event; never waits.
    pub fn record_access(&self, event: &AccessEvent) {
        if self.queue.is_none() {
            return;
        }
        // Room for a typical event, so that writing it does not grow the buffer twice.
        let mut line = Vec::with_capacity(512);
        event.write_json(&mut line);
        self.queue_line(line);
    }

    fn queue_line(&self, line: Vec<u8>) {
        let Some(queue) = &self.queue else { return };
        match queue.try_send(Message::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.inc();
                // One warning per thousand dropped events: loud, not a flood.
                if self.dropped_since_warning.fetch_add(1, Ordering::Relaxed) % 1000 == 0 {
                    tracing::warn!(
                        dropped_total = self.dropped.get(),
                        "audit log writer is behind: events dropped"
                    );
                }
            }
        }
    }

    /// Reopens the file before the next write (SIGHUP, after logrotate moved it).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Relaxed);
    }

    /// Waits (up to `timeout`) until every event recorded so far is written: at
    /// shutdown, so the last requests' events are not lost with the process.
    pub fn flush(&self, timeout: Duration) -> bool {
        let Some(queue) = &self.queue else { return true };
        let (done, written) = std::sync::mpsc::channel();
        // Blocks only while the queue is full, which the writer is emptying.
        queue.send(Message::Flush(done)).is_ok() && written.recv_timeout(timeout).is_ok()
    }
}

fn open(path: &str) -> std::io::Result<Box<dyn Write + Send>> {
    if path == "-" {
        return Ok(Box::new(std::io::stdout()));
    }
    let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    Ok(Box::new(file))
}

/// The writer's buffer: a batch of about 180 events per write, instead of 8 KiB's 23.
const WRITE_BUFFER: usize = 64 * 1024;

fn write_loop(rx: Receiver<Message>, sink: Box<dyn Write + Send>, path: String, reopen: Arc<AtomicBool>) {
    let mut out = std::io::BufWriter::with_capacity(WRITE_BUFFER, sink);
    while let Ok(first) = rx.recv() {
        if reopen.swap(false, Ordering::Relaxed) {
            let _ = out.flush();
            match open(&path) {
                Ok(sink) => out = std::io::BufWriter::with_capacity(WRITE_BUFFER, sink),
                Err(e) => {
                    tracing::error!(path = %path, error = %e, "cannot reopen the audit log; still writing to the old file")
                }
            }
        }
        // Everything queued goes out as one batch, then one flush.
        let mut flushed = Vec::new();
        for message in std::iter::once(first).chain(std::iter::from_fn(|| rx.try_recv().ok())) {
            match message {
                Message::Line(line) => {
                    if let Err(e) = out.write_all(&line).and_then(|_| out.write_all(b"\n")) {
                        tracing::error!(error = %e, "cannot write the audit log");
                    }
                }
                Message::Flush(done) => flushed.push(done),
            }
        }
        if let Err(e) = out.flush() {
            tracing::error!(error = %e, "cannot write the audit log");
        }
        for done in flushed {
            let _ = done.send(());
        }
        std::thread::sleep(BATCH_INTERVAL);
    }
}

/// RFC 3339 UTC time with milliseconds.
pub fn timestamp() -> String {
    Rfc3339::new(SystemTime::now()).as_str().to_string()
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
            upstream: Some(Upstream::Address(SocketAddr::from(([127, 0, 0, 1], 38741)))),
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

    /// The hand-written timestamps agree with jiff's, over leap days, century years
    /// and the edges of days and years.
    #[test]
    fn timestamps_agree_with_jiff() {
        let mut seconds: Vec<u64> = vec![
            0,
            951_782_400,     // 2000-02-29
            4_107_542_400,   // 2100-02-28 (2100 is no leap year)
            4_107_628_800,   // 2100-03-01
            1_798_761_599,   // 2026-12-31T23:59:59
            253_402_207_199, // near jiff's largest timestamp
        ];
        // Every 9,999,991 s (about 116 days, and an odd time of day) up to 2500.
        seconds.extend((0..1_600u64).map(|i| i * 9_999_991));
        for (i, secs) in seconds.into_iter().enumerate() {
            let millis = (i as u64 * 37) % 1000;
            let time = SystemTime::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis);
            let expected = jiff::Timestamp::try_from(time)
                .expect("in range")
                .strftime("%Y-%m-%dT%H:%M:%S%.3fZ")
                .to_string();
            assert_eq!(Rfc3339::new(time).as_str(), expected, "{secs}.{millis:03}");
        }
    }

    #[test]
    fn a_full_queue_counts_what_it_drops() {
        let (tx, _rx) = sync_channel(1);
        let log = AuditLog {
            queue: Some(tx),
            reopen: Arc::default(),
            dropped: Counter::default(),
            dropped_since_warning: AtomicU64::new(0),
        };
        log.record(&"one");
        log.record(&"two");
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
