//! Backends for tests, in-process on 127.0.0.1:0: each records what it received and
//! stops when dropped.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// What a backend received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path_and_query: String,
    pub version: http::Version,
    pub headers: HeaderMap,
}

/// A backend task; aborted on drop.
pub struct Backend {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// An HTTP/1.1 and h2c server running `handler` for every request.
    pub async fn start<F, Fut>(handler: F) -> Backend
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Backend::serve(listener, handler)
    }

    /// `named`, on a chosen address (e.g. another loopback IP with the same port).
    pub async fn start_on(addr: SocketAddr, name: &'static str) -> Backend {
        let listener = TcpListener::bind(addr).await.unwrap();
        Backend::serve(listener, move |req: Request<Incoming>| async move {
            let path = req
                .uri()
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default();
            let mut r = Response::new(full(format!("{name} {path}")));
            r.headers_mut().insert("x-backend", name.parse().unwrap());
            r
        })
    }

    fn serve<F, Fut>(listener: TcpListener, handler: F) -> Backend
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let handler = Arc::new(handler);
        let log = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let handler = handler.clone();
                let log = log.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        log.lock().unwrap().push(Seen {
                            method: req.method().to_string(),
                            path_and_query: req
                                .uri()
                                .path_and_query()
                                .map(|p| p.to_string())
                                .unwrap_or_default(),
                            version: req.version(),
                            headers: req.headers().clone(),
                        });
                        let handler = handler.clone();
                        async move { Ok::<_, Infallible>(handler(req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Backend { addr, seen, task }
    }

    /// Answers `NAME PATH` with header `x-backend: NAME`, after reading the body.
    pub async fn named(name: &'static str) -> Backend {
        Backend::start(move |req: Request<Incoming>| async move {
            let path = req
                .uri()
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default();
            let _ = req.into_body().collect().await;
            let mut r = Response::new(full(format!("{name} {path}")));
            r.headers_mut().insert("x-backend", name.parse().unwrap());
            r
        })
        .await
    }

    /// GET streams `size` bytes in 64 KiB chunks; POST answers the number of bytes
    /// received, reading them as they come.
    pub async fn bulk(size: u64) -> Backend {
        Backend::start(move |req: Request<Incoming>| async move {
            if req.method() == http::Method::POST {
                let mut body = req.into_body();
                let mut total = 0u64;
                while let Some(frame) = body.frame().await {
                    match frame {
                        Ok(f) => total += f.data_ref().map_or(0, |d| d.len() as u64),
                        Err(_) => break,
                    }
                }
                return Response::new(full(total.to_string()));
            }
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let count = size / chunk.len() as u64;
            let stream = futures_util::stream::iter(
                (0..count).map(move |_| Ok::<_, BoxError>(Frame::data(chunk.clone()))),
            );
            Response::new(StreamBody::new(stream).boxed_unsync())
        })
        .await
    }

    /// Never answers.
    pub async fn hanging() -> Backend {
        Backend::start(|_req| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Response::new(full(""))
        })
        .await
    }

    /// Answers after a delay.
    pub async fn slow(delay: Duration) -> Backend {
        Backend::start(move |_req| async move {
            tokio::time::sleep(delay).await;
            Response::new(full("slow done"))
        })
        .await
    }

    /// A gRPC-style answer: a body, then trailers `grpc-status: 0`.
    pub async fn grpc() -> Backend {
        Backend::start(|req: Request<Incoming>| async move {
            let version = format!("{:?}", req.version());
            let _ = req.into_body().collect().await;
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            let frames = vec![
                Ok::<_, BoxError>(Frame::data(Bytes::from(format!("grpc over {version}")))),
                Ok(Frame::trailers(trailers)),
            ];
            let mut r = Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync());
            r.headers_mut()
                .insert("content-type", "application/grpc".parse().unwrap());
            r
        })
        .await
    }

    /// A WebSocket server that echoes every message.
    pub async fn websocket_echo() -> Backend {
        use futures_util::{SinkExt, StreamExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    while let Some(Ok(msg)) = ws.next().await {
                        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Backend {
            addr,
            seen: Arc::default(),
            task,
        }
    }
}

/// An address where nothing listens (connections are refused). A loopback address no
/// test binds, so a port freed here can never be taken by another test's server.
pub async fn refused_addr() -> SocketAddr {
    "127.3.2.1:1".parse().unwrap()
}

pub fn status_text(status: StatusCode, text: &str) -> Response<Body> {
    let mut r = Response::new(full(text.to_string()));
    *r.status_mut() = status;
    r
}
