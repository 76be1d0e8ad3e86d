//! Kubernetes mode's source of configuration: watches Ingresses, IngressClasses,
//! Services, EndpointSlices, `kubernetes.io/tls` Secrets and the opted-in basic-auth
//! Secrets and custom-headers ConfigMaps (in the watched namespaces, or all), keeps the latest version of each object, and compiles them with the same
//! compiler as file mode, so the two can never disagree. The first snapshot is
//! published only once every initial list has completed (readiness stays false until
//! then); afterwards every change recompiles, debounced, and swaps atomically. Watches
//! that expire or break are resumed by re-listing (kube-runtime's watcher), with
//! backoff, so an API server restart leaves no gap.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource, ResourceExt};
use portcullis_config::manifest::Document;
use portcullis_config::{Manifests, Problem};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Notify;

use crate::state::Gateway;

/// Changes arriving within this window are compiled together.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// The latest objects of every watched kind, by kind then `namespace/name` (in order, as
/// compilations read them). Shared, so that a compilation's snapshot of them holds the
/// lock only to take references; the copying happens in the compilation's blocking task.
#[derive(Default)]
struct Stores {
    objects: BTreeMap<&'static str, BTreeMap<String, Arc<serde_json::Value>>>,
    /// Watches (kind and namespace) whose initial list has not completed yet.
    pending: std::collections::BTreeSet<String>,
}

/// Starts the watches; returns once the first snapshot is published. The watches go on
/// publishing in the background.
pub async fn start(
    gateway: Arc<Gateway>,
    namespaces: Vec<String>,
    status: crate::status::StatusConfig,
) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the API server (in-cluster config or KUBECONFIG): {e}"))?;
    let stores: Arc<Mutex<Stores>> = Arc::default();
    let changed = Arc::new(Notify::new());
    let scopes: Vec<Option<String>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.into_iter().map(Some).collect()
    };
    for ns in &scopes {
        spawn_watch::<Ingress>(
            &client,
            ns.as_deref(),
            watcher::Config::default(),
            &stores,
            &changed,
        );
        spawn_watch::<Service>(
            &client,
            ns.as_deref(),
            watcher::Config::default(),
            &stores,
            &changed,
        );
        spawn_watch::<EndpointSlice>(
            &client,
            ns.as_deref(),
            watcher::Config::default(),
            &stores,
            &changed,
        );
        // Only TLS Secrets, and the htpasswd Secrets of ingress-nginx's basic auth that
        // their owners opted in by label: the gateway has no business reading the rest.
        let tls = watcher::Config::default().fields("type=kubernetes.io/tls");
        spawn_watch::<Secret>(&client, ns.as_deref(), tls, &stores, &changed);
        let basic_auth = watcher::Config::default()
            .labels(&format!("{BASIC_AUTH_LABEL}=true"))
            .fields("type!=kubernetes.io/tls");
        let api: Api<Secret> = match ns.as_deref() {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        run_watch(
            api,
            basic_auth,
            "Secret (basic auth)",
            ns.as_deref().unwrap_or("*"),
            &stores,
            &changed,
        );
        // Only the ConfigMaps of ingress-nginx's custom-headers that their owners opted
        // in by label, as for basic auth: other ConfigMaps may hold anything.
        let custom_headers = watcher::Config::default().labels(&format!("{CUSTOM_HEADERS_LABEL}=true"));
        let api: Api<ConfigMap> = match ns.as_deref() {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        run_watch(
            api,
            custom_headers,
            "ConfigMap (custom headers)",
            ns.as_deref().unwrap_or("*"),
            &stores,
            &changed,
        );
    }
    // Cluster-scoped.
    let classes: Api<IngressClass> = Api::all(client.clone());
    run_watch(
        classes,
        watcher::Config::default(),
        "IngressClass",
        "*",
        &stores,
        &changed,
    );

    let writer = Arc::new(crate::status::StatusWriter::new(client.clone(), status));
    writer.spawn_election();
    let latest: Arc<Mutex<crate::status::Outcome>> = Arc::default();
    // Status is rewritten now and then too, so a new leader catches up without a change.
    {
        let (writer, latest) = (writer.clone(), latest.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(30)).await;
                let served = latest.lock().unwrap_or_else(|e| e.into_inner()).served.clone();
                writer
                    .write(&crate::status::Outcome {
                        served,
                        new_problems: Vec::new(),
                    })
                    .await;
            }
        });
    }
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(compile_loop(gateway, stores, changed, first_tx, writer, latest));
    first_rx
        .await
        .map_err(|_| anyhow::anyhow!("the configuration loop stopped before the first snapshot"))
}

/// The label that lets the controller read an htpasswd Secret (`auth-type: basic`).
pub const BASIC_AUTH_LABEL: &str = "portcullis.dev/basic-auth";

/// The label that lets the controller read a ConfigMap of response headers
/// (`custom-headers`).
pub const CUSTOM_HEADERS_LABEL: &str = "portcullis.dev/custom-headers";

fn key(namespace: Option<&str>, name: &str) -> String {
    format!("{}/{name}", namespace.unwrap_or(""))
}

fn spawn_watch<K>(
    client: &Client,
    ns: Option<&str>,
    config: watcher::Config,
    stores: &Arc<Mutex<Stores>>,
    changed: &Arc<Notify>,
) where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + k8s_openapi::Resource
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let api: Api<K> = match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    run_watch(
        api,
        config,
        <K as k8s_openapi::Resource>::KIND,
        ns.unwrap_or("*"),
        stores,
        changed,
    );
}

fn run_watch<K>(
    api: Api<K>,
    config: watcher::Config,
    kind: &'static str,
    scope: &str,
    stores: &Arc<Mutex<Stores>>,
    changed: &Arc<Notify>,
) where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let watch_id = format!("{kind} in {scope}");
    stores
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .pending
        .insert(watch_id.clone());
    let (stores, changed) = (stores.clone(), changed.clone());
    tokio::spawn(async move {
        let mut buffer: HashMap<String, Arc<serde_json::Value>> = HashMap::new();
        let mut events = watcher::watcher(api, config).default_backoff().boxed();
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(watch = %watch_id, error = %e, "watch failed; retrying with backoff");
                    continue;
                }
            };
            let mut s = stores.lock().unwrap_or_else(|e| e.into_inner());
            let objects = s.objects.entry(kind).or_default();
            // Keys are per watch: several namespaces of one kind share the map.
            let json = |o: &K| serde_json::to_value(o).ok().map(Arc::new);
            match event {
                Event::Init => buffer.clear(),
                Event::InitApply(o) => {
                    if let Some(v) = json(&o) {
                        buffer.insert(key(o.namespace().as_deref(), &o.name_any()), v);
                    }
                    continue;
                }
                Event::InitDone => {
                    // A re-list replaces what this watch saw before (deletions missed
                    // while disconnected disappear here).
                    let scope_prefix = if scope_is_all(&watch_id) {
                        None
                    } else {
                        Some(watch_scope(&watch_id))
                    };
                    objects.retain(|k, _| scope_prefix.as_ref().is_some_and(|p| !k.starts_with(p.as_str())));
                    objects.extend(buffer.drain());
                    s.pending.remove(&watch_id);
                }
                Event::Apply(o) => {
                    if let Some(v) = json(&o) {
                        objects.insert(key(o.namespace().as_deref(), &o.name_any()), v);
                    }
                }
                Event::Delete(o) => {
                    objects.remove(&key(o.namespace().as_deref(), &o.name_any()));
                }
            }
            drop(s);
            changed.notify_one();
        }
    });
}

fn scope_is_all(watch_id: &str) -> bool {
    watch_id.ends_with(" in *")
}

/// `namespace/` for a namespaced watch id `Kind in namespace`.
fn watch_scope(watch_id: &str) -> String {
    format!("{}/", watch_id.rsplit(" in ").next().unwrap_or(""))
}

async fn compile_loop(
    gateway: Arc<Gateway>,
    stores: Arc<Mutex<Stores>>,
    changed: Arc<Notify>,
    first: tokio::sync::oneshot::Sender<()>,
    writer: Arc<crate::status::StatusWriter>,
    latest: Arc<Mutex<crate::status::Outcome>>,
) {
    let mut first = Some(first);
    let mut previous: Arc<[Problem]> = Arc::new([]);
    loop {
        changed.notified().await;
        tokio::time::sleep(DEBOUNCE).await;
        // Under the lock, only the order and the references: copying thousands of
        // objects would hold up the watches and the thread that serves requests.
        let kinds: Vec<Vec<Arc<serde_json::Value>>> = {
            let s = stores.lock().unwrap_or_else(|e| e.into_inner());
            if !s.pending.is_empty() {
                tracing::debug!(pending = ?s.pending, "waiting for initial lists");
                continue;
            }
            s.objects
                .values()
                .map(|objects| objects.values().cloned().collect())
                .collect()
        };
        let manifests = move || {
            let mut manifests = Manifests::default();
            for docs in kinds {
                let docs = docs
                    .into_iter()
                    .map(|v| Document {
                        value: Arc::unwrap_or_clone(v),
                        line: 0,
                    })
                    .collect();
                manifests.add_documents("", docs);
            }
            manifests
        };
        let status = |compiled: &portcullis_config::Compiled, previous: &[Problem]| crate::status::Outcome {
            served: crate::status::served(&compiled.snapshot),
            new_problems: crate::status::new_ingress_problems(&compiled.problems, previous),
        };
        let (problems, outcome) = match crate::state::compile_and_publish(
            &gateway,
            manifests,
            previous.clone(),
            status,
        )
        .await
        {
            Ok(published) => published,
            Err(e) => {
                tracing::error!(error = %e, "compiling or publishing the configuration panicked; keeping the last good configuration");
                gateway
                    .metrics
                    .reloads
                    .get_or_create(&crate::metrics::ResultLabel { result: "failure" })
                    .inc();
                continue;
            }
        };
        gateway
            .metrics
            .reloads
            .get_or_create(&crate::metrics::ResultLabel { result: "success" })
            .inc();
        previous = problems;
        if let Some(tx) = first.take() {
            let _ = tx.send(());
        }
        *latest.lock().unwrap_or_else(|e| e.into_inner()) = outcome.clone();
        let writer = writer.clone();
        tokio::spawn(async move { writer.write(&outcome).await });
    }
}
