//! HTTP/2 abuse on a raw socket: Rapid Reset (CVE-2023-44487), MadeYouReset
//! (CVE-2025-8671), CONTINUATION floods (CVE-2024-27316 class) and stream floods.
//! Frames are written by hand so the client can do what no well-behaved library would.

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::backend::Backend;
use crate::support::client::http_get;
use crate::support::{web_gateway, Gateway};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const GOAWAY: u8 = 7;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PROTOCOL_ERROR: u32 = 0x1;
const ENHANCE_YOUR_CALM: u32 = 0xb;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = u32::try_from(payload.len()).unwrap();
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// HPACK "literal header field without indexing, new name" for short strings.
fn literal(block: &mut Vec<u8>, name: &str, value: &str) {
    assert!(name.len() < 127 && value.len() < 127);
    block.push(0x00);
    block.push(u8::try_from(name.len()).unwrap());
    block.extend_from_slice(name.as_bytes());
    block.push(u8::try_from(value.len()).unwrap());
    block.extend_from_slice(value.as_bytes());
}

fn request_block(host: &str, path: &str, method: &str) -> Vec<u8> {
    let mut block = Vec::new();
    literal(&mut block, ":method", method);
    literal(&mut block, ":scheme", "http");
    literal(&mut block, ":authority", host);
    literal(&mut block, ":path", path);
    block
}

/// What the server sent back on one connection, read until it closed.
#[derive(Debug, Default)]
struct Seen {
    settings: Vec<(u16, u32)>,
    responses: usize,
    resets: usize,
    goaway: Option<u32>,
    bytes: usize,
}

/// Reads frames until the server closes the connection or `within` passes.
async fn read_frames(mut rd: tokio::net::tcp::OwnedReadHalf, within: Duration) -> (Seen, bool) {
    let mut seen = Seen::default();
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let n = match tokio::time::timeout_at(deadline, rd.read(&mut chunk)).await {
            Err(_) => return (seen, false),
            Ok(Ok(0) | Err(_)) => return (seen, true),
            Ok(Ok(n)) => n,
        };
        seen.bytes += n;
        buf.extend_from_slice(&chunk[..n]);
        while buf.len() >= 9 {
            let len = usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            let payload = &buf[9..9 + len];
            match buf[3] {
                SETTINGS if buf[4] & 1 == 0 => {
                    for s in payload.chunks_exact(6) {
                        let id = u16::from_be_bytes([s[0], s[1]]);
                        let value = u32::from_be_bytes([s[2], s[3], s[4], s[5]]);
                        seen.settings.push((id, value));
                    }
                }
                HEADERS => seen.responses += 1,
                RST_STREAM => seen.resets += 1,
                GOAWAY if payload.len() >= 8 => {
                    seen.goaway = Some(u32::from_be_bytes([
                        payload[4], payload[5], payload[6], payload[7],
                    ]));
                }
                _ => {}
            }
            buf.drain(..9 + len);
        }
    }
}

/// Opens a prior-knowledge HTTP/2 connection (h2c) and sends the preface.
async fn open(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut hello = PREFACE.to_vec();
    frame(&mut hello, SETTINGS, 0, 0, &[]);
    s.write_all(&hello).await.unwrap();
    s
}

async fn target() -> (Backend, Gateway) {
    web_gateway("h2.test", "").await
}

/// The gateway still answers, and its memory did not balloon.
async fn still_healthy(gw: &Gateway, baseline_kib: u64) {
    assert_eq!(
        http_get(gw.http, "h2.test", "/after").await.status,
        StatusCode::OK
    );
    let (rss, _) = gw.memory_kib();
    assert!(
        rss < baseline_kib + 64 * 1024,
        "RSS grew from {baseline_kib} KiB to {rss} KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_is_cut_off_with_enhance_your_calm() {
    let (web, gw) = target().await;
    assert_eq!(http_get(gw.http, "h2.test", "/warm").await.status, StatusCode::OK);
    let (baseline, _) = gw.memory_kib();

    let (rd, mut wr) = open(gw.http).await.into_split();
    let reader = tokio::spawn(read_frames(rd, Duration::from_secs(10)));
    // 20,000 requests, each cancelled the moment it is sent.
    let block = request_block("h2.test", "/reset", "GET");
    let mut sent = 0u32;
    for batch in 0..200u32 {
        let mut out = Vec::new();
        for i in 0..100u32 {
            let stream = 2 * (batch * 100 + i) + 1;
            frame(&mut out, HEADERS, END_HEADERS | END_STREAM, stream, &block);
            frame(&mut out, RST_STREAM, 0, stream, &8u32.to_be_bytes());
        }
        if wr.write_all(&out).await.is_err() {
            break;
        }
        sent += 100;
    }
    let (seen, closed) = reader.await.unwrap();
    eprintln!("{seen:?}");
    assert!(closed, "connection still open after {sent} resets: {seen:?}");
    assert_eq!(seen.goaway, Some(ENHANCE_YOUR_CALM), "{seen:?}");
    let reached = web
        .requests()
        .iter()
        .filter(|r| r.path_and_query == "/reset")
        .count();
    assert!(
        reached < 1_000,
        "{reached} cancelled requests reached the backend"
    );
    still_healthy(&gw, baseline).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_you_reset_is_cut_off() {
    let (_web, gw) = target().await;
    assert_eq!(http_get(gw.http, "h2.test", "/warm").await.status, StatusCode::OK);
    let (baseline, _) = gw.memory_kib();

    // Each kind of stream makes the *server* reset it (or the connection), which
    // Rapid Reset limits on client resets alone do not count.
    let mut too_long = request_block("h2.test", "/upload", "POST");
    literal(&mut too_long, "content-length", "1");
    let complete = request_block("h2.test", "/closed", "GET");
    let mut malformed = request_block("h2.test", "/malformed", "GET");
    literal(&mut malformed, "X-Upper", "1");
    type Primitive<'a> = (&'a str, &'a dyn Fn(&mut Vec<u8>, u32), u32);
    let primitives: [Primitive; 3] = [
        // More body than the content-length: a stream error, RST_STREAM each time.
        (
            "body longer than content-length",
            &|out, stream| {
                frame(out, HEADERS, END_HEADERS, stream, &too_long);
                frame(out, DATA, END_STREAM, stream, b"too long");
            },
            ENHANCE_YOUR_CALM,
        ),
        // DATA on a stream the client already closed: the connection goes at once.
        (
            "DATA after END_STREAM",
            &|out, stream| {
                frame(out, HEADERS, END_HEADERS | END_STREAM, stream, &complete);
                frame(out, DATA, 0, stream, b"late");
            },
            PROTOCOL_ERROR,
        ),
        // A malformed request (upper-case header name): the connection goes at once.
        (
            "malformed header block",
            &|out, stream| frame(out, HEADERS, END_HEADERS | END_STREAM, stream, &malformed),
            PROTOCOL_ERROR,
        ),
    ];
    for (name, primitive, reason) in primitives {
        let (rd, mut wr) = open(gw.http).await.into_split();
        let reader = tokio::spawn(read_frames(rd, Duration::from_secs(10)));
        for batch in 0..200u32 {
            let mut out = Vec::new();
            for i in 0..100u32 {
                primitive(&mut out, 2 * (batch * 100 + i) + 1);
            }
            if wr.write_all(&out).await.is_err() {
                break;
            }
        }
        let (seen, closed) = reader.await.unwrap();
        eprintln!("{name}: {seen:?}");
        assert!(closed, "{name}: connection still open: {seen:?}");
        assert_eq!(seen.goaway, Some(reason), "{name}: {seen:?}");
        assert!(seen.resets <= 2_000, "{name}: {seen:?}");
    }
    still_healthy(&gw, baseline).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_floods_are_bounded() {
    let (web, gw) = target().await;
    assert_eq!(http_get(gw.http, "h2.test", "/warm").await.status, StatusCode::OK);
    let (baseline, _) = gw.memory_kib();

    let (rd, mut wr) = open(gw.http).await.into_split();
    let reader = tokio::spawn(read_frames(rd, Duration::from_secs(10)));
    // A header block that never ends: up to 64 MiB of CONTINUATION frames.
    let mut head = Vec::new();
    frame(
        &mut head,
        HEADERS,
        END_STREAM,
        1,
        &request_block("h2.test", "/flood", "GET"),
    );
    let mut written = 0usize;
    if wr.write_all(&head).await.is_ok() {
        let mut junk = Vec::new();
        for i in 0..100 {
            literal(&mut junk, &format!("x-flood-{i}"), &"v".repeat(100));
        }
        let mut out = Vec::new();
        for _ in 0..40 {
            frame(&mut out, CONTINUATION, 0, 1, &junk);
        }
        while written < 64 << 20 {
            if wr.write_all(&out).await.is_err() {
                break;
            }
            written += out.len();
        }
    }
    let (seen, closed) = reader.await.unwrap();
    assert!(
        closed,
        "connection open after {written} bytes of CONTINUATION: {seen:?}"
    );
    assert!(
        written < 64 << 20,
        "the gateway read all 64 MiB of one header block"
    );
    assert!(web.requests().iter().all(|r| r.path_and_query != "/flood"));
    still_healthy(&gw, baseline).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_beyond_the_advertised_limit_are_refused() {
    let (web, gw) = target().await;
    let (rd, mut wr) = open(gw.http).await.into_split();
    let reader = tokio::spawn(read_frames(rd, Duration::from_secs(3)));
    // 1,000 uploads that never send their body: every one stays open.
    let block = request_block("h2.test", "/hold", "POST");
    let mut out = Vec::new();
    for i in 0..1_000u32 {
        frame(&mut out, HEADERS, END_HEADERS, 2 * i + 1, &block);
    }
    // One byte of body on the first, so the backend sees at least that request.
    frame(&mut out, DATA, 0, 1, b"x");
    wr.write_all(&out).await.unwrap();
    let (seen, _) = reader.await.unwrap();
    eprintln!("{seen:?}");
    let limit = seen
        .settings
        .iter()
        .find(|(id, _)| *id == SETTINGS_MAX_CONCURRENT_STREAMS)
        .map(|(_, v)| *v);
    assert_eq!(limit, Some(250), "{seen:?}");
    // Every stream past the limit is refused on its own (REFUSED_STREAM); the 250
    // within it stay usable.
    assert!(
        seen.resets >= 750,
        "streams past the limit were not refused: {seen:?}"
    );
    let held = web.requests().len();
    assert!(held <= 250, "{held} requests reached the backend");
    drop(wr);
    assert_eq!(
        http_get(gw.http, "h2.test", "/after").await.status,
        StatusCode::OK
    );
}
