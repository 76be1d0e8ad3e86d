//! `portcullis echo`: a small backend that answers every request with a JSON echo of
//! what it received (method, path, query, headers, its own name), for the quickstart and
//! for anyone checking which route, backend and identity headers a request gets.
//! Credentials in `Authorization` and `Cookie` are shown only by length.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpListener;

use crate::proxy::{self, Body};

/// Largest request body the echo reads (and reports the size of).
const MAX_BODY: usize = 1 << 20;

async fn handle(
    name: Arc<str>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let mut headers = serde_json::Map::new();
    for (k, v) in &parts.headers {
        let value = match k {
            &header::AUTHORIZATION | &header::COOKIE => format!("<redacted, {} bytes>", v.len()),
            _ => String::from_utf8_lossy(v.as_bytes()).into_owned(),
        };
        match headers.get_mut(k.as_str()) {
            Some(serde_json::Value::String(existing)) => {
                existing.push_str(", ");
                existing.push_str(&value);
            }
            _ => {
                headers.insert(k.as_str().to_string(), serde_json::Value::String(value));
            }
        }
    }
    let body_bytes = match http_body_util::Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes().len().to_string(),
        Err(_) => format!("more than {MAX_BODY}"),
    };
    let echo = json!({
        "name": &*name,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "version": format!("{:?}", parts.version),
        "remote": peer.to_string(),
        "headers": headers,
        "bodyBytes": body_bytes,
    });
    let mut text = serde_json::to_string_pretty(&echo).unwrap_or_default();
    text.push('\n');
    let mut response = Response::new(proxy::full(Bytes::from(text)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = header::HeaderValue::from_str(&name) {
        response.headers_mut().insert("x-echo-name", v);
    }
    Ok(response)
}

/// Serves until the process is stopped.
pub async fn run(listener: TcpListener, name: String) -> anyhow::Result<()> {
    let name: Arc<str> = Arc::from(name);
    tracing::info!(addr = %listener.local_addr()?, name = %name, "echo backend listening");
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let name = name.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(name.clone(), peer, req));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
        });
    }
}
