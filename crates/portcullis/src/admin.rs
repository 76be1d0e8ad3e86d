//! The admin listener: `/healthz` (the process is up), `/readyz` (a configuration has
//! been published and shutdown has not begun) and `/metrics` (Prometheus text). It
//! binds to loopback by default and never serves routes.

use std::convert::Infallible;
use std::sync::Arc;

use http::{header, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::proxy::{self, Body};
use crate::server::Shutdown;
use crate::state::Gateway;

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut r = Response::new(proxy::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

async fn handle(gateway: Arc<Gateway>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let text = "text/plain; charset=utf-8";
    Ok(match req.uri().path() {
        "/healthz" => respond(StatusCode::OK, text, "ok\n".into()),
        "/readyz" if gateway.is_ready() => respond(StatusCode::OK, text, "ready\n".into()),
        "/readyz" => respond(StatusCode::SERVICE_UNAVAILABLE, text, "not ready\n".into()),
        "/metrics" => respond(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            gateway.metrics.encode(),
        ),
        _ => respond(
            StatusCode::NOT_FOUND,
            text,
            "not found: try /healthz, /readyz, /metrics\n".into(),
        ),
    })
}

/// Serves the admin endpoints until shutdown.
pub async fn serve(gateway: Arc<Gateway>, listener: TcpListener, mut shutdown: Shutdown) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(_) => continue,
            },
            () = shutdown.wait() => return,
        };
        let gateway = gateway.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(gateway.clone(), req));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
