//! A Kubernetes API server test double speaking the real list/watch protocol: `list`
//! responses for the paths it is given (`{"kind": "PodList", "items": [...]}`), watches
//! (`?watch=true`) that stream the events a test pushes as JSON lines
//! (`{"type": "ADDED", "object": {...}}`), 404 with a `Status` for anything else, and a
//! record of every path requested. Loopback, port 0.

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
    /// Watch events pushed to open watches: (path, JSON line).
    events: tokio::sync::broadcast::Sender<(String, String)>,
    /// Writes received: (method, path, body).
    pub writes: Arc<Mutex<Vec<(String, String, serde_json::Value)>>>,
    /// Objects held by path (Leases), as created, replaced or put by the test.
    pub stored: Arc<Mutex<HashMap<String, serde_json::Value>>>,
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
        KubeApi::start_with_delay(lists, None).await
    }

    /// As `start`, but the list of `delayed.0` answers only after `delayed.1`.
    pub async fn start_with_delay(
        lists: Vec<(&str, &str, Vec<serde_json::Value>)>,
        delayed: Option<(&str, std::time::Duration)>,
    ) -> KubeApi {
        let delayed = delayed.map(|(p, d)| (p.to_string(), d));
        let (events, _) = tokio::sync::broadcast::channel::<(String, String)>(256);
        let events_tx = events.clone();
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
        let writes: Arc<Mutex<Vec<(String, String, serde_json::Value)>>> = Arc::default();
        let writes_log = writes.clone();
        // Objects created or replaced through the double (Leases), by path.
        let stored: Arc<Mutex<HashMap<String, serde_json::Value>>> = Arc::default();
        let stored_handle = stored.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (bodies, log) = (bodies.clone(), log.clone());
                let events = events_tx.clone();
                let delayed = delayed.clone();
                let (writes_log, stored) = (writes_log.clone(), stored.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let method = req.method().clone();
                        let (writes_log, stored) = (writes_log.clone(), stored.clone());
                        let path = req.uri().path().to_string();
                        let watch = req.uri().query().is_some_and(|q| q.contains("watch=true"));
                        let selector = Selector::from_query(req.uri().query());
                        log.lock()
                            .unwrap()
                            .push(format!("{path}{}", if watch { "?watch" } else { "" }));
                        let body = bodies.get(&path).cloned();
                        let mut subscription = events.subscribe();
                        let delayed = delayed.clone();
                        async move {
                            if method != http::Method::GET || path.contains("/leases/") {
                                return Ok(write(method, path, req, &writes_log, &stored).await);
                            }
                            let response: Response<Body> = match body {
                                Some(_) if watch => {
                                    let stream = async_stream(move |tx| async move {
                                        while let Ok((p, line)) = subscription.recv().await {
                                            if p == path
                                                && selector.keeps_event(&line)
                                                && tx.send(Bytes::from(format!("{line}\n"))).await.is_err()
                                            {
                                                return;
                                            }
                                        }
                                    });
                                    Response::new(stream)
                                }
                                Some(body) => {
                                    if let Some((p, d)) = &delayed {
                                        if *p == path {
                                            tokio::time::sleep(*d).await;
                                        }
                                    }
                                    Response::new(full(selector.filter_list(&body)))
                                }
                                None => {
                                    let status = serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": format!("{path} not found")});
                                    let mut r = Response::new(full(status.to_string()));
                                    *r.status_mut() = StatusCode::NOT_FOUND;
                                    r
                                }
                            };
                            Ok::<_, std::convert::Infallible>(response)
                        }
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
            writes,
            stored: stored_handle,
            events,
            task,
            kubeconfig,
        }
    }

    /// Sends a watch event (`ADDED`, `MODIFIED`, `DELETED`) to the watches of `path`.
    pub fn push(&self, path: &str, kind: &str, object: serde_json::Value) {
        let line = serde_json::json!({"type": kind, "object": object}).to_string();
        let _ = self.events.send((path.to_string(), line));
    }
}

type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, std::convert::Infallible>;

fn conflict() -> Response<Body> {
    let status = serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409,
        "message": "the object has been modified; please apply your changes to the latest version and try again"});
    let mut r = Response::new(full(status.to_string()));
    *r.status_mut() = StatusCode::CONFLICT;
    r
}

/// Creates, replaces and patches: recorded, and answered as the API server would.
async fn write(
    method: http::Method,
    path: String,
    req: Request<Incoming>,
    writes: &Mutex<Vec<(String, String, serde_json::Value)>>,
    stored: &Mutex<HashMap<String, serde_json::Value>>,
) -> Response<Body> {
    use http_body_util::BodyExt;
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    writes
        .lock()
        .unwrap()
        .push((method.to_string(), path.clone(), value.clone()));
    let respond = |status: StatusCode, v: &serde_json::Value| {
        let mut r = Response::new(full(v.to_string()));
        *r.status_mut() = status;
        r
    };
    match method {
        http::Method::GET => match stored.lock().unwrap().get(&path) {
            Some(v) => respond(StatusCode::OK, v),
            None => respond(
                StatusCode::NOT_FOUND,
                &serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
            ),
        },
        http::Method::POST => {
            value["metadata"]["resourceVersion"] = "1".into();
            if let Some(name) = value["metadata"]["name"].as_str() {
                let mut stored = stored.lock().unwrap();
                let key = format!("{path}/{name}");
                // Create refuses an existing object, as the API server does.
                if stored.contains_key(&key) {
                    return conflict();
                }
                stored.insert(key, value.clone());
            }
            respond(StatusCode::CREATED, &value)
        }
        http::Method::PUT => {
            // Replace is a compare-and-swap on resourceVersion.
            let mut stored = stored.lock().unwrap();
            let current = stored
                .get(&path)
                .map(|v| v["metadata"]["resourceVersion"].clone());
            if let Some(current) = current {
                if current != value["metadata"]["resourceVersion"] {
                    return conflict();
                }
                let next = current.as_str().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) + 1;
                value["metadata"]["resourceVersion"] = next.to_string().into();
            }
            stored.insert(path, value.clone());
            respond(StatusCode::OK, &value)
        }
        _ => {
            // A status patch: answer with the object (name and namespace from the path).
            let parts: Vec<&str> = path.split('/').collect();
            let find = |after: &str| {
                parts
                    .iter()
                    .position(|p| *p == after)
                    .and_then(|i| parts.get(i + 1))
                    .copied()
            };
            let object = serde_json::json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "metadata": {"name": find("ingresses"), "namespace": find("namespaces")}});
            respond(StatusCode::OK, &object)
        }
    }
}

fn full(text: impl Into<Bytes>) -> Body {
    use http_body_util::BodyExt;
    Full::new(text.into()).boxed_unsync()
}

/// A streaming body fed by a task through a channel.
fn async_stream<F, Fut>(producer: F) -> Body
where
    F: FnOnce(tokio::sync::mpsc::Sender<Bytes>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use http_body_util::BodyExt;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    tokio::spawn(producer(tx));
    let stream = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|o| o.map(|b| Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(b))))
    });
    http_body_util::StreamBody::new(stream).boxed_unsync()
}

/// The `labelSelector` (`k=v`) and `fieldSelector` (`type=X`, `type!=X`) of a list or
/// watch, applied the way the API server applies them, so that watches of one kind
/// with different selectors see different objects.
#[derive(Default, Clone)]
struct Selector {
    labels: Vec<(String, String)>,
    /// (field path, value, equal)
    fields: Vec<(String, String, bool)>,
}

impl Selector {
    fn from_query(query: Option<&str>) -> Selector {
        let mut s = Selector::default();
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let terms = v.split(',').map(str::to_string).collect::<Vec<_>>();
            for term in terms {
                match k.as_ref() {
                    "labelSelector" => {
                        if let Some((a, b)) = term.split_once('=') {
                            s.labels.push((a.to_string(), b.to_string()));
                        }
                    }
                    "fieldSelector" => {
                        if let Some((a, b)) = term.split_once("!=") {
                            s.fields.push((a.to_string(), b.to_string(), false));
                        } else if let Some((a, b)) = term.split_once('=') {
                            s.fields.push((a.to_string(), b.to_string(), true));
                        }
                    }
                    _ => {}
                }
            }
        }
        s
    }

    fn keeps(&self, object: &serde_json::Value) -> bool {
        let labels_ok = self
            .labels
            .iter()
            .all(|(k, v)| object["metadata"]["labels"][k.as_str()].as_str() == Some(v.as_str()));
        let fields_ok = self.fields.iter().all(|(path, v, equal)| {
            let actual = path
                .split('.')
                .fold(object, |o, part| &o[part])
                .as_str()
                .unwrap_or("");
            (actual == v) == *equal
        });
        labels_ok && fields_ok
    }

    fn filter_list(&self, body: &str) -> String {
        if self.labels.is_empty() && self.fields.is_empty() {
            return body.to_string();
        }
        let Ok(mut list) = serde_json::from_str::<serde_json::Value>(body) else {
            return body.to_string();
        };
        if let Some(items) = list["items"].as_array_mut() {
            items.retain(|o| self.keeps(o));
        }
        list.to_string()
    }

    fn keeps_event(&self, line: &str) -> bool {
        if self.labels.is_empty() && self.fields.is_empty() {
            return true;
        }
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(event) if event["type"] == "BOOKMARK" || event["type"] == "ERROR" => true,
            Ok(event) => self.keeps(&event["object"]),
            Err(_) => true,
        }
    }
}
