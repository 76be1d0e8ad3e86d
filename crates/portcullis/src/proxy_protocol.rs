//! The PROXY protocol (v1 text or v2 binary, as HAProxy specifies it): a load balancer
//! that terminates TCP states the client's address in a header before the first byte of
//! TLS or HTTP. Accepted only from peers in `trustedProxies`, on listeners that opt in;
//! there, a connection without a valid header is closed.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ppp::{v1, v2, HeaderResult, PartialResult};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Larger than any v1 header (107 bytes) and a v2 header with modest TLVs.
const MAX_HEADER: usize = 4096;

/// Reads the header at the start of `stream` and consumes exactly its bytes. Returns
/// the client address it names, or `None` for a LOCAL/UNKNOWN header (health checks
/// from the load balancer itself).
pub async fn read_header(stream: &mut TcpStream, timeout: Duration) -> Result<Option<SocketAddr>, String> {
    tokio::time::timeout(timeout, read(stream))
        .await
        .map_err(|_| "no PROXY protocol header in time".to_string())?
}

async fn read(stream: &mut TcpStream) -> Result<Option<SocketAddr>, String> {
    let mut buf = vec![0u8; MAX_HEADER];
    loop {
        let n = stream.peek(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before a PROXY protocol header".into());
        }
        let parsed = HeaderResult::parse(&buf[..n]);
        if parsed.is_incomplete() {
            if n == buf.len() {
                return Err("PROXY protocol header too long".into());
            }
            // The rest of the header is still on its way.
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        let (len, source) = match parsed {
            HeaderResult::V1(Ok(h)) => (
                h.header.len(),
                match h.addresses {
                    v1::Addresses::Tcp4(a) => {
                        Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
                    }
                    v1::Addresses::Tcp6(a) => {
                        Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
                    }
                    v1::Addresses::Unknown => None,
                },
            ),
            HeaderResult::V2(Ok(h)) => (
                h.len(),
                match (h.command, h.addresses) {
                    (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                        Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
                    }
                    (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                        Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
                    }
                    _ => None,
                },
            ),
            HeaderResult::V1(Err(e)) => return Err(format!("bad PROXY protocol v1 header: {e}")),
            HeaderResult::V2(Err(e)) => return Err(format!("bad PROXY protocol v2 header: {e}")),
        };
        let mut header = vec![0u8; len];
        stream.read_exact(&mut header).await.map_err(|e| e.to_string())?;
        return Ok(source);
    }
}
