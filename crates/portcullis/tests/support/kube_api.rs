//! A Kubernetes API server test double: serves `list` responses for the paths it is
//! given (the real JSON shapes: `{"kind": "PodList", "items": [...]}`), 404 with a
//! `Status` for anything else, and records every path requested. Loopback, port 0.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

pub struct KubeApi {
    pub addr: SocketAddr,
    pub requested: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
    pub kubeconfig: tempfile::NamedTempFile,
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl KubeApi {
    /// `lists`: path (e.g. `/api/v1/pods`) -> (list kind, items).
    pub async fn start(lists: Vec<(&str, &str, Vec<serde_json::Value>)>) -> KubeApi {
        let mut bodies: HashMap<String, String> = HashMap::new();
        for (path, kind, items) in lists {
            let body = serde_json::json!({
                "apiVersion": "v1",
                "kind": kind,
                "metadata": {"resourceVersion": "1"},
                "items": items,
            });
            bodies.insert(path.to_string(), body.to_string());
        }
        let bodies = Arc::new(bodies);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requested: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = requested.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (bodies, log) = (bodies.clone(), log.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let path = req.uri().path().to_string();
                        log.lock().unwrap().push(path.clone());
                        let response = match bodies.get(&path) {
                            Some(body) => Response::new(Full::new(Bytes::from(body.clone()))),
                            None => {
                                let status = serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": format!("{path} not found")});
                                let mut r = Response::new(Full::new(Bytes::from(status.to_string())));
                                *r.status_mut() = StatusCode::NOT_FOUND;
                                r
                            }
                        };
                        async move { Ok::<_, std::convert::Infallible>(response) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        let mut kubeconfig = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(
            &mut kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters: [{{name: t, cluster: {{server: 'http://{addr}'}}}}]\nusers: [{{name: t, user: {{token: test-token}}}}]\ncontexts: [{{name: t, context: {{cluster: t, user: t}}}}]\ncurrent-context: t\n"
            )
            .as_bytes(),
        )
        .unwrap();
        KubeApi {
            addr,
            requested,
            task,
            kubeconfig,
        }
    }
}
