//! Open-loop load of new TLS connections, one HTTP/1.1 request each (bench/run.sh's
//! scenario 3f).
//!
//!   portcullis-bench-handshakes --addr IP:PORT --host NAME --rate N --seconds S
//!                               [--path /] [--timeout-ms 10000]
//!
//! Connection `i` is due at `i / rate` seconds after the start, whatever happened to the
//! ones before it, so a slow server gets the same load as a fast one. Each connection's
//! latency runs from when it was due to the last byte of its response: the TCP connect,
//! a full handshake (resumption is off), the request and the response, plus any delay in
//! starting it (that delay is reported too, as the generator's own lag). wrk, a closed
//! loop, waits for each answer before the next request, so its latency leaves out the
//! time a slow server makes the next request wait; and h2load's request log starts after
//! the handshake.
//!
//! Certificates are not checked (like wrk and h2load), but the server's handshake
//! signature is, so the client does a real client's cryptography. Prints one JSON line.
//! Connections that fail or time out are counted in `errors`, not in the percentiles:
//! a run with errors is not a latency figure.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;

struct Args {
    addr: SocketAddr,
    host: String,
    path: String,
    rate: u32,
    seconds: u32,
    timeout: Duration,
}

const USAGE: &str = "usage: portcullis-bench-handshakes --addr IP:PORT --host NAME --rate N --seconds S [--path /] [--timeout-ms 10000]";

fn parse_args() -> Result<Args, String> {
    let mut addr = None;
    let mut host = None;
    let mut path = "/".to_string();
    let mut rate = None;
    let mut seconds = None;
    let mut timeout_ms: u64 = 10_000;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |v: String| v.parse::<u64>().map_err(|e| format!("{flag}: {v:?}: {e}"));
        match flag.as_str() {
            "--addr" => {
                let v = value()?;
                addr = Some(v.parse().map_err(|e| format!("--addr: {v:?}: {e}"))?);
            }
            "--host" => host = Some(value()?),
            "--path" => path = value()?,
            "--rate" => rate = Some(number(value()?)?),
            "--seconds" => seconds = Some(number(value()?)?),
            "--timeout-ms" => timeout_ms = number(value()?)?,
            _ => return Err(format!("unknown argument {flag:?}")),
        }
    }
    let positive = |name: &str, v: Option<u64>| match v {
        Some(v) if v > 0 => u32::try_from(v).map_err(|_| format!("{name}: {v} is too large")),
        _ => Err(format!("{name} must be given, above 0")),
    };
    Ok(Args {
        addr: addr.ok_or("--addr must be given")?,
        host: host.ok_or("--host must be given")?,
        path,
        rate: positive("--rate", rate)?,
        seconds: positive("--seconds", seconds)?,
        timeout: Duration::from_millis(timeout_ms),
    })
}

/// Accepts any certificate; checks the handshake's signatures with it.
#[derive(Debug)]
struct Unchecked(Arc<CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A response head: where it ends, its status and its Content-Length (if any).
struct Head {
    end: usize,
    status: u16,
    length: Option<usize>,
}

/// The response head, once `buf` holds all of it.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4) else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| "response head is not UTF-8".to_string())?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line: {status_line:?}"))?;
    let mut length = None;
    for (name, value) in lines.filter_map(|l| l.split_once(':')) {
        if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err("chunked responses are not read by this tool".into());
        }
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .trim()
                    .parse()
                    .map_err(|_| format!("bad Content-Length: {value:?}"))?,
            );
        }
    }
    Ok(Some(Head { end, status, length }))
}

/// One connection: connect, handshake, one request, the whole response.
async fn exchange(
    args: &Args,
    connector: &TlsConnector,
    name: ServerName<'static>,
    request: &[u8],
) -> Result<(), String> {
    let tcp = TcpStream::connect(args.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tls.write_all(request).await.map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = tls.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        buf.extend_from_slice(&chunk[..n]);
        let closed = n == 0;
        match parse_head(&buf)? {
            None if closed => return Err("closed before the response".into()),
            None => {}
            Some(head) if !(200..300).contains(&head.status) => {
                return Err(format!("status {}", head.status))
            }
            Some(head) => match head.length {
                Some(len) if head.end.checked_add(len).is_some_and(|end| buf.len() >= end) => return Ok(()),
                Some(_) if closed => return Err("closed before the end of the body".into()),
                // No length: the body ends when the server closes.
                None if closed => return Ok(()),
                _ => {}
            },
        }
    }
}

/// The nearest-rank percentile (`permille` thousandths), in integers so that p99.9 of
/// 1,000 samples is the 999th; JSON `null` when nothing succeeded.
fn percentile(sorted: &[f64], permille: usize) -> String {
    if sorted.is_empty() {
        return "null".into();
    }
    let rank = (permille * sorted.len()).div_ceil(1000);
    format!("{:.3}", sorted[rank.clamp(1, sorted.len()) - 1])
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = match parse_args() {
        Ok(a) => Arc::new(a),
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.dangerous()
                .with_custom_certificate_verifier(Arc::new(Unchecked(provider)))
                .with_no_client_auth()
        });
    let mut config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("TLS client configuration: {e}");
            std::process::exit(2);
        }
    };
    // Every connection a full handshake.
    config.resumption = Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = TlsConnector::from(Arc::new(config));
    let name = match ServerName::try_from(args.host.clone()) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("--host {:?}: {e}", args.host);
            std::process::exit(2);
        }
    };
    let request: Arc<[u8]> = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        args.path, args.host
    )
    .into_bytes()
    .into();

    let total = u64::from(args.rate) * u64::from(args.seconds);
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    let mut latencies_ms = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    let mut errors = 0u64;
    let mut first_error: Option<String> = None;
    let mut max_lag = Duration::ZERO;
    let mut record = |done: Result<Result<f64, String>, tokio::task::JoinError>| match done {
        Ok(Ok(ms)) => latencies_ms.push(ms),
        Ok(Err(e)) => {
            errors += 1;
            first_error.get_or_insert(e);
        }
        Err(e) => {
            errors += 1;
            first_error.get_or_insert(format!("task: {e}"));
        }
    };
    // tokio's timer ticks in milliseconds: every tick starts all connections now due.
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut started = 0u64;
    while started < total {
        tick.tick().await;
        let now = Instant::now();
        while started < total {
            let since_start = u128::from(started) * 1_000_000_000 / u128::from(args.rate);
            let due = start + Duration::from_nanos(u64::try_from(since_start).unwrap_or(u64::MAX));
            if due > now {
                break;
            }
            max_lag = max_lag.max(now - due);
            let (args, connector, name, request) =
                (args.clone(), connector.clone(), name.clone(), request.clone());
            tasks.spawn(async move {
                match tokio::time::timeout(args.timeout, exchange(&args, &connector, name, &request)).await {
                    Ok(Ok(())) => Ok(due.elapsed().as_secs_f64() * 1000.0),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(format!("no response within {:?}", args.timeout)),
                }
            });
            started += 1;
        }
        while let Some(done) = tasks.try_join_next() {
            record(done);
        }
    }
    while let Some(done) = tasks.join_next().await {
        record(done);
    }
    let wall = start.elapsed().as_secs_f64();
    latencies_ms.sort_by(f64::total_cmp);
    let ok = latencies_ms.len();
    let mean = if ok == 0 {
        "null".to_string()
    } else {
        format!("{:.3}", latencies_ms.iter().sum::<f64>() / ok as f64)
    };
    let first_error = first_error.as_deref().map_or("null".to_string(), json_string);
    println!(
        "{{\"requests\": {ok}, \"errors\": {errors}, \"rate\": {}, \"rps\": {:.2}, \"wall_s\": {wall:.3}, \
         \"mean_ms\": {mean}, \"p50_ms\": {}, \"p90_ms\": {}, \"p99_ms\": {}, \"p999_ms\": {}, \
         \"max_ms\": {}, \"max_start_lag_ms\": {:.3}, \"first_error\": {first_error}}}",
        args.rate,
        ok as f64 / wall,
        percentile(&latencies_ms, 500),
        percentile(&latencies_ms, 900),
        percentile(&latencies_ms, 990),
        percentile(&latencies_ms, 999),
        percentile(&latencies_ms, 1000),
        max_lag.as_secs_f64() * 1000.0,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_is_read_once_complete() {
        let full = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nServer: x\r\n\r\nok\n";
        let head = parse_head(full).expect("valid").expect("complete");
        assert_eq!(
            (head.end, head.status, head.length),
            (full.len() - 3, 200, Some(3))
        );
        assert!(parse_head(&full[..20]).expect("valid so far").is_none());
    }

    #[test]
    fn heads_it_cannot_read_are_errors() {
        assert!(parse_head(b"HTTP/1.1 OK\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 500), "50.000");
        assert_eq!(percentile(&v, 990), "99.000");
        assert_eq!(percentile(&v, 1000), "100.000");
        assert_eq!(percentile(&[], 990), "null");
        let v: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(percentile(&v, 999), "999.000");
    }
}
