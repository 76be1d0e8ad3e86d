//! The logs, on stderr, as text or JSON. The gateway's own messages are formatted by
//! tracing; the access log, a line for every request, is written by hand in the same
//! two formats (tracing's formatter spent 41,000 instructions on each of its lines,
//! as much as the rest of the request). In the gateway (`serve`, `controller`) every
//! line goes through one [`LineWriter`](crate::lines::LineWriter), in order, so that no
//! request ever waits on stderr, a pipe that a container runtime may read late.

use std::io::{IsTerminal, Write};
use std::net::IpAddr;
use std::sync::{LazyLock, OnceLock};
use std::time::{Duration, SystemTime};

use http::{Method, Version};
use portcullis_config::snapshot::Backend;
use prometheus_client::metrics::counter::Counter;

use crate::lines::{LineWriter, Sink};
use crate::state::Upstream;
use crate::text::{debug_string, AddrText, JsonObject, Rfc3339};

/// The access log's tracing target: `RUST_LOG=info,portcullis::access=off` turns it off.
pub const ACCESS: &str = "portcullis::access";

/// Also the `--log-format` option's values.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

struct Logs {
    /// None when not batched: lines go straight to stderr.
    writer: Option<LineWriter>,
    format: Format,
}

static LOGS: OnceLock<Logs> = OnceLock::new();

/// All lines dropped, for `portcullis_log_dropped_total`.
static DROPPED_TOTAL: LazyLock<Counter> = LazyLock::new(Counter::default);

/// The counter of dropped log lines, for the metrics registry.
pub fn dropped_total() -> Counter {
    DROPPED_TOTAL.clone()
}

/// Sets up the logs: the filter from `RUST_LOG` (default `info`) and the format.
/// `batched`: through the writer thread (the gateway); otherwise straight to stderr, so
/// that a command's logs and its other output on stderr stay in order. Colours only
/// when stderr is a terminal and `NO_COLOR` is unset, never into a file or a pipe.
pub fn init(format: Format, batched: bool) {
    let writer = batched
        .then(|| LineWriter::start("portcullis-logs", StderrSink { format, reported: 0 }).ok())
        .flatten();
    let _ = LOGS.set(Logs { writer, format });
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(|| Queued);
    match format {
        Format::Json => builder.json().flatten_event(true).init(),
        Format::Text => builder.init(),
    }
}

/// Writes every line logged so far (up to 5 s): before the process exits.
pub fn flush() {
    if let Some(writer) = LOGS.get().and_then(|l| l.writer.as_ref()) {
        writer.flush(Duration::from_secs(5));
    }
}

fn push(line: Vec<u8>) {
    push_to(LOGS.get(), line);
}

fn push_to(logs: Option<&Logs>, line: Vec<u8>) {
    match logs.and_then(|l| l.writer.as_ref()) {
        Some(writer) => {
            if !writer.push(line) {
                DROPPED_TOTAL.inc();
            }
        }
        // Not batched (a command, a test, or no thread could be started): at once.
        None => {
            let _ = std::io::stderr().write_all(&line);
        }
    }
}

/// What tracing writes each formatted line to: the queue.
struct Queued;

impl Write for Queued {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // tracing hands over one whole line per call.
        push(buf.to_vec());
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct StderrSink {
    format: Format,
    /// `portcullis_log_dropped_total` when the last warning about drops was written.
    reported: u64,
}

impl Sink for StderrSink {
    fn open(&mut self) -> std::io::Result<Box<dyn Write + Send>> {
        Ok(Box::new(std::io::stderr()))
    }

    /// Nowhere left to say it.
    fn failed(&self, _: &std::io::Error) {}

    fn after_batch(&mut self) -> Option<Vec<u8>> {
        let total = DROPPED_TOTAL.get();
        let dropped = total - self.reported;
        self.reported = total;
        (dropped > 0).then(|| {
            let message = format!("{dropped} log lines dropped: stderr was not read fast enough");
            warning(self.format, SystemTime::now(), &message)
        })
    }
}

/// A warning line of the logging module's own, as tracing would write it.
fn warning(format: Format, now: SystemTime, message: &str) -> Vec<u8> {
    let mut line = Vec::new();
    match format {
        Format::Text => {
            line.extend_from_slice(Rfc3339::micros(now).as_bytes());
            line.extend_from_slice(b"  WARN portcullis::logging: ");
            line.extend_from_slice(message.as_bytes());
        }
        Format::Json => {
            let mut o = JsonObject::new(&mut line);
            o.plain("timestamp", Rfc3339::micros(now).as_bytes());
            o.str("level", "WARN");
            o.str("message", message);
            o.str("target", "portcullis::logging");
            o.end();
        }
    }
    line.push(b'\n');
    line
}

/// Whether the access log is on (`RUST_LOG` decides, at target [`ACCESS`]).
pub fn access_enabled() -> bool {
    tracing::enabled!(target: ACCESS, tracing::Level::INFO)
}

/// One request, for the access log.
pub struct Access<'a> {
    pub request_id: &'a str,
    pub client: IpAddr,
    pub tls: bool,
    pub version: Version,
    pub method: &'a Method,
    pub host: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub duration_ms: f64,
    pub ingress: &'a str,
    pub backend: Option<&'a Backend>,
    pub upstream: Option<&'a Upstream>,
    /// The authenticated subject.
    pub user: &'a str,
    /// `session` or `bearer`.
    pub auth: &'a str,
    /// Why the gateway refused or failed.
    pub detail: &'a str,
}

/// Writes one access-log line; never waits.
pub fn access(request: &Access<'_>) {
    let logs = LOGS.get();
    let format = logs.map_or(Format::Text, |l| l.format);
    // Room for a typical line, so that writing it does not grow the buffer.
    let mut line = Vec::with_capacity(512);
    request.write(format, SystemTime::now(), &mut line);
    push_to(logs, line);
}

impl Access<'_> {
    /// The line tracing would write for these fields (see the test), newline included.
    fn write(&self, format: Format, now: SystemTime, out: &mut Vec<u8>) {
        let client = AddrText::ip(self.client);
        let client = client.as_str();
        let backend = self.backend.map_or_else(|| "-".to_string(), Backend::to_string);
        let (address, named);
        let upstream = match self.upstream {
            Some(Upstream::Address(a)) => {
                address = AddrText::socket(*a);
                address.as_str()
            }
            Some(other) => {
                named = other.to_string();
                &named
            }
            None => "-",
        };
        // As tracing prints `?version`.
        let version = match self.version {
            Version::HTTP_09 => "HTTP/0.9",
            Version::HTTP_10 => "HTTP/1.0",
            Version::HTTP_11 => "HTTP/1.1",
            Version::HTTP_2 => "HTTP/2.0",
            Version::HTTP_3 => "HTTP/3.0",
            _ => "-",
        };
        match format {
            Format::Text => {
                out.extend_from_slice(Rfc3339::micros(now).as_bytes());
                out.extend_from_slice(b"  INFO portcullis::access:");
                // Fields logged with `%` (Display) and numbers are written as they are;
                // `&str` fields as `Debug`, quoted.
                let name = |out: &mut Vec<u8>, name: &str| {
                    out.push(b' ');
                    out.extend_from_slice(name.as_bytes());
                    out.push(b'=');
                };
                for (field, value) in [
                    ("request_id", self.request_id),
                    ("client", client),
                    ("tls", if self.tls { "true" } else { "false" }),
                    ("version", version),
                    ("method", self.method.as_str()),
                    ("host", self.host),
                    ("path", self.path),
                ] {
                    name(out, field);
                    out.extend_from_slice(value.as_bytes());
                }
                // Straight into the line (a Vec cannot fail to take them).
                let _ = write!(out, " status={} duration_ms={:?}", self.status, self.duration_ms);
                for (field, value) in [
                    ("ingress", self.ingress),
                    ("backend", &backend),
                    ("upstream", upstream),
                    ("user", self.user),
                    ("auth", self.auth),
                    ("detail", self.detail),
                ] {
                    name(out, field);
                    debug_string(out, value);
                }
            }
            Format::Json => {
                let mut o = JsonObject::new(out);
                o.plain("timestamp", Rfc3339::micros(now).as_bytes());
                o.str("level", "INFO");
                o.str("request_id", self.request_id);
                o.str("client", client);
                o.json("tls", &self.tls);
                o.str("version", version);
                o.str("method", self.method.as_str());
                o.str("host", self.host);
                o.str("path", self.path);
                o.json("status", &self.status);
                o.json("duration_ms", &self.duration_ms);
                o.str("ingress", self.ingress);
                o.str("backend", &backend);
                o.str("upstream", upstream);
                o.str("user", self.user);
                o.str("auth", self.auth);
                o.str("detail", self.detail);
                o.str("target", ACCESS);
                o.end();
            }
        }
        out.push(b'\n');
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// What a tracing subscriber of the given format writes for what `emit` logs,
    /// through tracing's own formatter.
    fn traced(format: Format, emit: impl Fn()) -> String {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = buffer.clone();
        let make = move || Captured(sink.clone());
        let builder = tracing_subscriber::fmt().with_ansi(false).with_writer(make);
        match format {
            Format::Text => tracing::subscriber::with_default(builder.finish(), emit),
            Format::Json => {
                tracing::subscriber::with_default(builder.json().flatten_event(true).finish(), emit)
            }
        }
        let text = String::from_utf8(buffer.lock().expect("buffer").clone()).expect("UTF-8");
        text
    }

    /// The access event as the handler logged it through tracing.
    fn traced_access(format: Format, access: &Access<'_>) -> String {
        traced(format, || {
            let backend = access.backend.map(|b| b.to_string());
            let upstream = access.upstream.map(|u| u.to_string());
            tracing::info!(
                target: "portcullis::access",
                request_id = %access.request_id,
                client = %access.client,
                tls = access.tls,
                version = ?access.version,
                method = %access.method,
                host = %access.host,
                path = %access.path,
                status = access.status,
                duration_ms = access.duration_ms,
                ingress = access.ingress,
                backend = backend.as_deref().unwrap_or("-"),
                upstream = upstream.as_deref().unwrap_or("-"),
                user = access.user,
                auth = access.auth,
                detail = access.detail,
            );
        })
    }

    #[test]
    fn drops_are_reported_once_each() {
        let mut sink = StderrSink {
            format: Format::Text,
            reported: DROPPED_TOTAL.get(),
        };
        assert!(sink.after_batch().is_none());
        DROPPED_TOTAL.inc_by(3);
        let line = String::from_utf8(sink.after_batch().expect("a warning")).expect("UTF-8");
        assert!(line.contains("3 log lines dropped"), "{line}");
        assert!(sink.after_batch().is_none(), "said once");
    }

    #[test]
    fn the_dropped_lines_warning_is_what_tracing_writes() {
        let message = "3 log lines dropped: stderr was not read fast enough";
        for format in [Format::Text, Format::Json] {
            let ours = String::from_utf8(warning(format, SystemTime::now(), message)).expect("UTF-8");
            let theirs = traced(
                format,
                || tracing::warn!(target: "portcullis::logging", "{message}"),
            );
            assert_eq!(masked(&ours, format), masked(&theirs, format), "{format:?}");
        }
    }

    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("buffer").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The timestamp is the one thing that differs: it is masked.
    fn masked(line: &str, format: Format) -> String {
        let at = match format {
            Format::Text => 0,
            Format::Json => r#"{"timestamp":""#.len(),
        };
        let mut line = line.to_string();
        line.replace_range(at..at + 27, "2000-01-01T00:00:00.000000Z");
        line
    }

    #[test]
    fn access_lines_are_what_tracing_writes() {
        let backend = Backend {
            namespace: "shop".into(),
            service: "web".into(),
            port: "http".into(),
            target: portcullis_config::snapshot::BackendTarget::Endpoints(Vec::new()),
        };
        let address = Upstream::Address("10.0.3.7:8080".parse().expect("address"));
        let named = Upstream::Named {
            host: "api.example.com".into(),
            port: 443,
        };
        let method = Method::from_bytes(b"PATCH").expect("method");
        let plain = Access {
            request_id: "7916ca67a66978450000000000000001",
            client: IpAddr::from([192, 168, 10, 200]),
            tls: true,
            version: Version::HTTP_2,
            method: &Method::GET,
            host: "api.localhost",
            path: "/v1/hello",
            status: 200,
            duration_ms: 1.785404,
            ingress: "demo/api",
            backend: Some(&backend),
            upstream: Some(&address),
            user: "-",
            auth: "-",
            detail: "",
        };
        let unusual = Access {
            client: "2001:db8::1".parse().expect("IPv6"),
            tls: false,
            version: Version::HTTP_10,
            method: &method,
            status: 502,
            duration_ms: 3.0,
            ingress: "-",
            backend: None,
            upstream: Some(&named),
            user: "alice \"the admin\" caf\u{e9}",
            auth: "session",
            detail: "could not connect to backend: Connection refused\n(os error 111)\\",
            ..plain
        };
        let refused = Access {
            upstream: None,
            ..unusual
        };
        for access in [&plain, &unusual, &refused] {
            for format in [Format::Text, Format::Json] {
                let mut ours = Vec::new();
                access.write(format, SystemTime::now(), &mut ours);
                let ours = String::from_utf8(ours).expect("UTF-8");
                let theirs = traced_access(format, access);
                assert_eq!(masked(&ours, format), masked(&theirs, format), "{format:?}");
            }
        }
    }
}
