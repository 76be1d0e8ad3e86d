//! `portcullis scan --cluster`: the same inventory, listed from the API server (in-cluster
//! configuration or `KUBECONFIG`), read-only. Secrets are never read. Pods made by a
//! controller are skipped (their controller is scanned), and a kind the credentials may
//! not list is reported, not fatal. IngressClasses and EndpointSlices are listed too, so
//! that `portcullis migrate --cluster` compiles what the gateway would see.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass, NetworkPolicy};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ApiResource, DynamicObject, ListParams};
use kube::{Api, Client};
use portcullis_scan::Inventory;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Kinds whose pods (or children) are scanned through the controller instead.
const CONTROLLERS: &[&str] = &[
    "ReplicaSet",
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "Job",
    "CronJob",
];

fn made_by_controller(meta: &ObjectMeta) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && CONTROLLERS.contains(&o.kind.as_str()))
}

/// Lists one kind in every namespace (or, for cluster-scoped kinds, the cluster).
async fn list<K>(client: &Client, inv: &mut Inventory, source: &str)
where
    K: kube::Resource<DynamicType = ()>
        + k8s_openapi::Resource
        + k8s_openapi::Metadata<Ty = ObjectMeta>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let api: Api<K> = Api::all(client.clone());
    add(
        api.list(&ListParams::default()).await.map(|l| l.items),
        inv,
        source,
        <K as k8s_openapi::Resource>::KIND,
    );
}

fn add<K>(items: Result<Vec<K>, kube::Error>, inv: &mut Inventory, source: &str, kind: &str)
where
    K: k8s_openapi::Metadata<Ty = ObjectMeta> + Serialize,
{
    match items {
        Ok(items) => {
            for item in items.into_iter().filter(|i| !made_by_controller(i.metadata())) {
                if let Ok(value) = serde_json::to_value(&item) {
                    inv.add_object(value, source);
                }
            }
        }
        Err(e) => inv.problems.push(portcullis_config::Problem::error(
            None,
            "",
            format!("cannot list {kind} from the API server: {e}"),
        )),
    }
}

/// Lists everything the scan looks at.
pub async fn read_cluster() -> anyhow::Result<Inventory> {
    let client = Client::try_default()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the cluster (in-cluster config or KUBECONFIG): {e}"))?;
    let source = "cluster";
    let mut inv = Inventory::default();
    list::<Pod>(&client, &mut inv, source).await;
    list::<Deployment>(&client, &mut inv, source).await;
    list::<StatefulSet>(&client, &mut inv, source).await;
    list::<DaemonSet>(&client, &mut inv, source).await;
    list::<ReplicaSet>(&client, &mut inv, source).await;
    list::<Job>(&client, &mut inv, source).await;
    list::<CronJob>(&client, &mut inv, source).await;
    list::<Service>(&client, &mut inv, source).await;
    list::<Ingress>(&client, &mut inv, source).await;
    // What the gateway needs to decide which Ingresses it serves (the default class)
    // and whether their backends are ready, for `portcullis migrate --cluster`.
    list::<IngressClass>(&client, &mut inv, source).await;
    list::<EndpointSlice>(&client, &mut inv, source).await;
    list::<NetworkPolicy>(&client, &mut inv, source).await;
    list::<Role>(&client, &mut inv, source).await;
    list::<RoleBinding>(&client, &mut inv, source).await;
    list::<ServiceAccount>(&client, &mut inv, source).await;
    list::<ClusterRole>(&client, &mut inv, source).await;
    list::<ClusterRoleBinding>(&client, &mut inv, source).await;
    list::<Namespace>(&client, &mut inv, source).await;
    // Gateway API, when the cluster has it (a 404 means it does not).
    for (kind, plural) in [
        ("Gateway", "gateways"),
        ("HTTPRoute", "httproutes"),
        ("GRPCRoute", "grpcroutes"),
    ] {
        let resource = ApiResource {
            group: "gateway.networking.k8s.io".into(),
            version: "v1".into(),
            api_version: "gateway.networking.k8s.io/v1".into(),
            kind: kind.into(),
            plural: plural.into(),
        };
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        match api.list(&ListParams::default()).await {
            Ok(list) => {
                for item in list.items {
                    if let Ok(mut value) = serde_json::to_value(&item) {
                        value["apiVersion"] = "gateway.networking.k8s.io/v1".into();
                        value["kind"] = kind.into();
                        inv.add_object(value, source);
                    }
                }
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => inv.problems.push(portcullis_config::Problem::warning(
                None,
                "",
                format!("cannot list {kind} from the API server: {e}"),
            )),
        }
    }
    Ok(inv)
}
