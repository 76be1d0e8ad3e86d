//! The audit log: one JSON line per access decision (who, what, from where, which route,
//! allowed or denied and why, status, bytes, time) and one per configuration change.
//! Lines go through a bounded queue to a writer thread, so the request path never waits
//! on the disk; if the writer falls behind, the events that did not fit are counted in
//! `portcullis_audit_dropped_total` and warned about, never lost silently. The file is
//! reopened on SIGHUP, for logrotate. No token, cookie or `Authorization` value is ever
//! part of an event.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use portcullis_config::settings::AuditSettings;
use prometheus_client::metrics::counter::Counter;
use serde::Serialize;

/// Events waiting for the writer before new ones are dropped (and counted).
const QUEUE: usize = 65_536;

/// The writer waits this long after each write before it takes the next batch. Under
/// load the queue fills meanwhile and goes out in one write, and a sender never has
/// to wake a parked writer (a futex call and a context switch for every event, which
/// made the audit log cost more CPU than the request it records).
const BATCH_INTERVAL: Duration = Duration::from_millis(20);

/// What the writer thread is sent.
enum Message {
    Line(String),
    /// Write everything queued before this, then say so.
    Flush(std::sync::mpsc::Sender<()>),
}

/// Who the request was from, in an audit event.
#[derive(Debug, Clone, Serialize)]
pub struct AuditIdentity {
    pub subject: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    pub groups: Vec<String>,
    /// `session` or `bearer`.
    pub method: &'static str,
    pub provider: String,
}

/// The route a request matched.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRoute {
    pub ingress: String,
    pub rule: String,
    pub path: String,
}

/// One access decision.
#[derive(Debug, Clone, Serialize)]
pub struct AccessEvent {
    pub kind: &'static str,
    pub time: String,
    pub request_id: String,
    pub client: String,
    pub method: String,
    pub host: String,
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<AuditRoute>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<AuditIdentity>,
    /// `allow` or `deny`.
    pub decision: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
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
        let Some(queue) = &self.queue else { return };
        let Ok(line) = serde_json::to_string(event) else {
            return;
        };
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

fn write_loop(rx: Receiver<Message>, sink: Box<dyn Write + Send>, path: String, reopen: Arc<AtomicBool>) {
    let mut out = std::io::BufWriter::new(sink);
    while let Ok(first) = rx.recv() {
        if reopen.swap(false, Ordering::Relaxed) {
            let _ = out.flush();
            match open(&path) {
                Ok(sink) => out = std::io::BufWriter::new(sink),
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
                    if let Err(e) = out.write_all(line.as_bytes()).and_then(|_| out.write_all(b"\n")) {
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
    let now = jiff::Timestamp::now();
    now.round(jiff::Unit::Millisecond).unwrap_or(now).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339() {
        let t = timestamp();
        assert!(
            t.starts_with("20") && t.ends_with('Z') && &t[10..11] == "T",
            "{t}"
        );
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
