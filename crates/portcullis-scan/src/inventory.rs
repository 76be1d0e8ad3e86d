//! Everything a scan looks at, read from the same YAML documents the gateway reads
//! (through `portcullis-config`), so the scanner and the gateway never disagree about
//! an object. Workloads of every kind are reduced to their pod template.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Namespace, Pod, PodSpec, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use portcullis_config::manifest::Document;
use portcullis_config::{Origin, Problem};
use serde::de::DeserializeOwned;

/// A document whose apiVersion no longer exists.
#[derive(Debug, Clone)]
pub struct RemovedApi {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub removed_in: &'static str,
    pub origin: Origin,
}

/// An object and where it was read.
#[derive(Debug, Clone)]
pub struct Item<T> {
    pub value: T,
    pub origin: Origin,
}

impl<T: k8s_openapi::Metadata<Ty = ObjectMeta>> Item<T> {
    pub fn namespace(&self) -> &str {
        self.value.metadata().namespace.as_deref().unwrap_or("default")
    }
    pub fn name(&self) -> &str {
        self.value.metadata().name.as_deref().unwrap_or_default()
    }
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.value
            .metadata()
            .annotations
            .as_ref()?
            .get(key)
            .map(String::as_str)
    }
}

/// Namespace and name of a Gateway API object kept as JSON.
pub fn json_name(v: &serde_json::Value) -> (String, String) {
    let meta = &v["metadata"];
    (
        meta["namespace"].as_str().unwrap_or("default").to_string(),
        meta["name"].as_str().unwrap_or_default().to_string(),
    )
}

/// A pod, or a controller that makes pods, seen through its pod template.
#[derive(Debug, Clone)]
pub struct Workload {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    /// Labels of the pods it makes.
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub spec: PodSpec,
    pub origin: Origin,
    /// A static pod of the control plane (its file sits in a manifests directory and it
    /// runs in kube-system without a controller).
    pub static_pod: bool,
}

impl Workload {
    pub fn id(&self) -> String {
        format!("{} {}/{}", self.kind, self.namespace, self.name)
    }

    /// The service account its pods run as.
    pub fn service_account(&self) -> &str {
        self.spec
            .service_account_name
            .as_deref()
            .filter(|s| !s.is_empty())
            .unwrap_or("default")
    }
}

/// All objects of a scan.
#[derive(Debug, Default)]
pub struct Inventory {
    pub workloads: Vec<Workload>,
    pub services: Vec<Item<Service>>,
    pub ingresses: Vec<Item<Ingress>>,
    pub network_policies: Vec<Item<NetworkPolicy>>,
    pub roles: Vec<Item<Role>>,
    pub cluster_roles: Vec<Item<ClusterRole>>,
    pub role_bindings: Vec<Item<RoleBinding>>,
    pub cluster_role_bindings: Vec<Item<ClusterRoleBinding>>,
    pub service_accounts: Vec<Item<ServiceAccount>>,
    pub namespaces: Vec<Item<Namespace>>,
    /// Gateway API objects (not in k8s-openapi), kept as JSON: Gateways, and routes
    /// (HTTPRoute, GRPCRoute).
    pub gateways: Vec<Item<serde_json::Value>>,
    pub routes: Vec<Item<serde_json::Value>>,
    /// Documents whose apiVersion Kubernetes has removed.
    pub removed_apis: Vec<RemovedApi>,
    /// Kinds not looked at, counted.
    pub other_kinds: BTreeMap<String, usize>,
    /// Files or documents that could not be read.
    pub problems: Vec<Problem>,
    /// The raw documents, for the gateway's own view of Ingresses.
    pub manifests: portcullis_config::Manifests,
}

impl Inventory {
    /// Adds one file's text (`-` for stdin).
    pub fn add_text(&mut self, file: &str, text: &str) {
        let (documents, problems) = portcullis_config::manifest::parse_documents(file, text);
        self.problems.extend(problems);
        self.manifests.add_documents(file, documents.clone());
        for doc in documents {
            let origin = Origin {
                file: file.to_string(),
                line: Some(doc.line),
            };
            self.add(doc, origin);
        }
    }

    /// Adds everything of another inventory (files and a cluster scanned together).
    pub fn merge(&mut self, other: Inventory) {
        self.workloads.extend(other.workloads);
        self.services.extend(other.services);
        self.ingresses.extend(other.ingresses);
        self.network_policies.extend(other.network_policies);
        self.roles.extend(other.roles);
        self.cluster_roles.extend(other.cluster_roles);
        self.role_bindings.extend(other.role_bindings);
        self.cluster_role_bindings.extend(other.cluster_role_bindings);
        self.service_accounts.extend(other.service_accounts);
        self.namespaces.extend(other.namespaces);
        self.gateways.extend(other.gateways);
        self.routes.extend(other.routes);
        self.removed_apis.extend(other.removed_apis);
        self.problems.extend(other.problems);
        for (k, n) in other.other_kinds {
            *self.other_kinds.entry(k).or_default() += n;
        }
        // Without this, `--cluster` would leave the gateway's view of the objects
        // (what `portcullis migrate` compiles) empty.
        self.manifests.merge(other.manifests);
    }

    /// Adds one object read from the API server (`kubectl get -o json` form).
    pub fn add_object(&mut self, value: serde_json::Value, source: &str) {
        let origin = Origin {
            file: source.to_string(),
            line: None,
        };
        self.manifests.add_documents(
            source,
            vec![Document {
                value: value.clone(),
                line: 0,
            }],
        );
        self.add(Document { value, line: 0 }, origin);
    }

    fn add(&mut self, doc: Document, origin: Origin) {
        let value = doc.value;
        let api = value["apiVersion"].as_str().unwrap_or_default().to_string();
        let kind = value["kind"].as_str().unwrap_or_default().to_string();
        if kind == "List" {
            if let Some(items) = value["items"].as_array() {
                for item in items.clone() {
                    self.add(
                        Document {
                            value: item,
                            line: doc.line,
                        },
                        origin.clone(),
                    );
                }
            }
            return;
        }
        if let Some(removed_in) = removed_in(&api, &kind) {
            self.removed_apis.push(RemovedApi {
                name: value["metadata"]["name"].as_str().unwrap_or_default().to_string(),
                api_version: api,
                kind,
                removed_in,
                origin,
            });
            return;
        }
        match (api.as_str(), kind.as_str()) {
            ("v1", "Pod") => {
                if let Some(pod) = self.typed::<Pod>(value, &origin) {
                    let meta = pod.metadata;
                    let static_pod = meta.namespace.as_deref() == Some("kube-system")
                        && meta
                            .labels
                            .as_ref()
                            .and_then(|l| l.get("tier"))
                            .map(String::as_str)
                            == Some("control-plane");
                    self.workload("Pod", meta, pod.spec, origin, static_pod);
                }
            }
            ("apps/v1", "Deployment") => {
                if let Some(d) = self.typed::<Deployment>(value, &origin) {
                    let t = Some(d.spec.template);
                    self.template("Deployment", d.metadata, t, origin);
                }
            }
            ("apps/v1", "StatefulSet") => {
                if let Some(d) = self.typed::<StatefulSet>(value, &origin) {
                    let t = Some(d.spec.template);
                    self.template("StatefulSet", d.metadata, t, origin);
                }
            }
            ("apps/v1", "DaemonSet") => {
                if let Some(d) = self.typed::<DaemonSet>(value, &origin) {
                    let t = Some(d.spec.template);
                    self.template("DaemonSet", d.metadata, t, origin);
                }
            }
            ("apps/v1", "ReplicaSet") => {
                if let Some(d) = self.typed::<ReplicaSet>(value, &origin) {
                    let t = d.spec.template;
                    self.template("ReplicaSet", d.metadata, t, origin);
                }
            }
            ("batch/v1", "Job") => {
                if let Some(d) = self.typed::<Job>(value, &origin) {
                    let t = d.spec.map(|s| s.template);
                    self.template("Job", d.metadata, t, origin);
                }
            }
            ("batch/v1", "CronJob") => {
                if let Some(d) = self.typed::<CronJob>(value, &origin) {
                    let t = d.spec.job_template.spec.map(|s| s.template);
                    self.template("CronJob", d.metadata, t, origin);
                }
            }
            ("v1", "Service") => {
                let v = self.typed(value, &origin);
                push(&mut self.services, v, origin)
            }
            ("networking.k8s.io/v1", "Ingress") => {
                let v = self.typed(value, &origin);
                push(&mut self.ingresses, v, origin)
            }
            ("networking.k8s.io/v1", "NetworkPolicy") => {
                let v = self.typed(value, &origin);
                push(&mut self.network_policies, v, origin)
            }
            ("rbac.authorization.k8s.io/v1", "Role") => {
                let v = self.typed(value, &origin);
                push(&mut self.roles, v, origin)
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                let v = self.typed(value, &origin);
                push(&mut self.cluster_roles, v, origin)
            }
            ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
                let v = self.typed(value, &origin);
                push(&mut self.role_bindings, v, origin)
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                let v = self.typed(value, &origin);
                push(&mut self.cluster_role_bindings, v, origin)
            }
            ("v1", "ServiceAccount") => {
                let v = self.typed(value, &origin);
                push(&mut self.service_accounts, v, origin)
            }
            (api, "Gateway") if api.starts_with("gateway.networking.k8s.io/") => {
                self.gateways.push(Item { value, origin })
            }
            (api, "HTTPRoute" | "GRPCRoute") if api.starts_with("gateway.networking.k8s.io/") => {
                self.routes.push(Item { value, origin })
            }
            ("v1", "Namespace") => {
                let v = self.typed(value, &origin);
                push(&mut self.namespaces, v, origin)
            }
            _ if !kind.is_empty() => *self.other_kinds.entry(format!("{api} {kind}")).or_default() += 1,
            _ => {}
        }
    }

    fn typed<T: DeserializeOwned>(&mut self, value: serde_json::Value, origin: &Origin) -> Option<T> {
        let kind = value["kind"].as_str().unwrap_or_default().to_string();
        let name = value["metadata"]["name"].as_str().unwrap_or_default().to_string();
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(v) => Some(v),
            Err(e) => {
                self.problems.push(
                    Problem::error(
                        Some(portcullis_config::ObjectRef::new(&kind, None, &name)),
                        e.path().to_string(),
                        e.into_inner().to_string(),
                    )
                    .at(Some(origin.clone())),
                );
                None
            }
        }
    }

    fn template(
        &mut self,
        kind: &'static str,
        meta: ObjectMeta,
        template: Option<k8s_openapi::api::core::v1::PodTemplateSpec>,
        origin: Origin,
    ) {
        let Some(template) = template else { return };
        let pod_meta = template.metadata.unwrap_or_default();
        // The controller's annotations (suppressions are written there) over the pods'.
        let mut annotations = pod_meta.annotations.unwrap_or_default();
        annotations.extend(meta.annotations.clone().unwrap_or_default());
        let workload = Workload {
            kind,
            namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
            name: meta.name.clone().unwrap_or_default(),
            labels: pod_meta.labels.unwrap_or_default(),
            annotations,
            spec: template.spec.unwrap_or_default(),
            origin,
            static_pod: false,
        };
        self.workloads.push(workload);
    }

    fn workload(
        &mut self,
        kind: &'static str,
        meta: ObjectMeta,
        spec: Option<PodSpec>,
        origin: Origin,
        static_pod: bool,
    ) {
        self.workloads.push(Workload {
            kind,
            namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
            name: meta.name.clone().unwrap_or_default(),
            labels: meta.labels.unwrap_or_default(),
            annotations: meta.annotations.unwrap_or_default(),
            spec: spec.unwrap_or_default(),
            origin,
            static_pod,
        });
    }

    /// Namespaces that hold anything, and those declared.
    pub fn all_namespaces(&self) -> std::collections::BTreeSet<String> {
        let mut out: std::collections::BTreeSet<String> =
            self.workloads.iter().map(|w| w.namespace.clone()).collect();
        out.extend(self.services.iter().map(|s| s.namespace().to_string()));
        out.extend(self.namespaces.iter().map(|n| n.name().to_string()));
        out
    }
}

fn push<T>(list: &mut Vec<Item<T>>, value: Option<T>, origin: Origin) {
    if let Some(value) = value {
        list.push(Item { value, origin });
    }
}

/// The Kubernetes version that removed an API version of a kind, if it was removed.
pub fn removed_in(api: &str, kind: &str) -> Option<&'static str> {
    Some(match (api, kind) {
        (
            "extensions/v1beta1",
            "Ingress" | "Deployment" | "DaemonSet" | "ReplicaSet" | "NetworkPolicy" | "PodSecurityPolicy",
        ) => "1.16 (Ingress: 1.22)",
        ("networking.k8s.io/v1beta1", "Ingress" | "IngressClass") => "1.22",
        ("apps/v1beta1" | "apps/v1beta2", _) => "1.16",
        ("rbac.authorization.k8s.io/v1beta1", _) => "1.22",
        ("batch/v1beta1", "CronJob") => "1.25",
        ("policy/v1beta1", "PodSecurityPolicy") => "1.25",
        ("policy/v1beta1", "PodDisruptionBudget") => "1.25",
        ("discovery.k8s.io/v1beta1", "EndpointSlice") => "1.25",
        ("autoscaling/v2beta1", "HorizontalPodAutoscaler") => "1.25",
        ("autoscaling/v2beta2", "HorizontalPodAutoscaler") => "1.26",
        ("flowcontrol.apiserver.k8s.io/v1beta2", _) => "1.29",
        ("admissionregistration.k8s.io/v1beta1", _) => "1.22",
        ("apiextensions.k8s.io/v1beta1", "CustomResourceDefinition") => "1.22",
        ("storage.k8s.io/v1beta1", "CSIStorageCapacity") => "1.27",
        _ => return None,
    })
}
