//! What the controller writes back to the cluster, by the leader only (all replicas
//! serve traffic): `status.loadBalancer.ingress` of the Ingresses it serves, and a
//! Kubernetes Event for each rejected object. Leadership is a `coordination.k8s.io/v1`
//! Lease, taken when free or expired and renewed well before it expires; losing it
//! (or the API server) only stops the writes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{ObjectReference, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use portcullis_config::Problem;
use serde_json::json;

/// How long a lease holds without renewal.
const LEASE_SECONDS: i32 = 15;
/// How often the leader renews (and a follower looks).
const RENEW_EVERY: Duration = Duration::from_secs(5);

/// Where the addresses written to Ingress status come from.
#[derive(Debug, Clone)]
pub enum Publish {
    /// The gateway's LoadBalancer Service (`namespace/name`): its status addresses.
    Service { namespace: String, name: String },
    /// Fixed addresses (IPs or hostnames).
    Addresses(Vec<String>),
}

/// Leader election and status settings.
#[derive(Debug, Clone)]
pub struct StatusConfig {
    pub publish: Option<Publish>,
    pub lease_namespace: String,
    pub lease_name: String,
    pub identity: String,
}

/// What one compilation served and refused, for the writer.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// `namespace/name` of the served Ingresses.
    pub served: BTreeSet<(String, String)>,
    /// Problems with an Ingress as their object, new since the last outcome.
    pub new_problems: Vec<Problem>,
}

pub struct StatusWriter {
    client: Client,
    config: StatusConfig,
    leader: Arc<AtomicBool>,
}

impl StatusWriter {
    pub fn new(client: Client, config: StatusConfig) -> StatusWriter {
        StatusWriter {
            client,
            config,
            leader: Arc::default(),
        }
    }

    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    /// Keeps trying to hold the lease, forever.
    pub fn spawn_election(&self) {
        let (client, config, leader) = (self.client.clone(), self.config.clone(), self.leader.clone());
        tokio::spawn(async move {
            loop {
                let held = match try_hold(&client, &config).await {
                    Ok(held) => held,
                    Err(e) => {
                        tracing::warn!(error = %e, "leader election: cannot reach the Lease");
                        false
                    }
                };
                if held != leader.swap(held, Ordering::Relaxed) {
                    tracing::info!(identity = %config.identity, leader = held, "leadership changed");
                }
                tokio::time::sleep(RENEW_EVERY).await;
            }
        });
    }

    /// Writes status and Events for one outcome, when leading.
    pub async fn write(&self, outcome: &Outcome) {
        if !self.is_leader() {
            return;
        }
        if let Some(publish) = &self.config.publish {
            match self.addresses(publish).await {
                Ok(addresses) if !addresses.is_empty() => {
                    for (ns, name) in &outcome.served {
                        if let Err(e) = self.patch_status(ns, name, &addresses).await {
                            tracing::warn!(ingress = %format!("{ns}/{name}"), error = %e, "cannot write Ingress status");
                        }
                    }
                }
                Ok(_) => tracing::debug!("no address to publish yet"),
                Err(e) => tracing::warn!(error = %e, "cannot read the addresses to publish"),
            }
        }
        for p in &outcome.new_problems {
            if let Err(e) = self.event(p).await {
                tracing::warn!(error = %e, "cannot create an Event");
            }
        }
    }

    async fn addresses(&self, publish: &Publish) -> Result<Vec<serde_json::Value>, kube::Error> {
        Ok(match publish {
            Publish::Addresses(list) => list
                .iter()
                .map(|a| {
                    if a.parse::<std::net::IpAddr>().is_ok() {
                        json!({"ip": a})
                    } else {
                        json!({"hostname": a})
                    }
                })
                .collect(),
            Publish::Service { namespace, name } => {
                let svc = Api::<Service>::namespaced(self.client.clone(), namespace)
                    .get(name)
                    .await?;
                svc.status
                    .and_then(|s| s.load_balancer)
                    .and_then(|lb| lb.ingress)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|i| match (i.ip, i.hostname) {
                        (Some(ip), _) => json!({"ip": ip}),
                        (None, Some(h)) => json!({"hostname": h}),
                        _ => json!({}),
                    })
                    .collect()
            }
        })
    }

    async fn patch_status(
        &self,
        ns: &str,
        name: &str,
        addresses: &[serde_json::Value],
    ) -> Result<(), kube::Error> {
        let api = Api::<Ingress>::namespaced(self.client.clone(), ns);
        let patch = json!({"status": {"loadBalancer": {"ingress": addresses}}});
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }

    async fn event(&self, p: &Problem) -> Result<(), kube::Error> {
        let Some(object) = &p.object else { return Ok(()) };
        let ns = object.namespace.clone().unwrap_or_else(|| "default".into());
        let now = MicroTime(jiff::Timestamp::now());
        let event = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}.", object.name)),
                namespace: Some(ns.clone()),
                ..ObjectMeta::default()
            },
            event_time: Some(now),
            action: Some("Compile".into()),
            reason: Some(if p.is_error() { "Rejected" } else { "Warning" }.into()),
            note: Some(
                format!("{} {}", p.field, p.message)
                    .trim()
                    .chars()
                    .take(1000)
                    .collect(),
            ),
            type_: Some(if p.is_error() { "Warning" } else { "Normal" }.into()),
            reporting_controller: Some("portcullis.dev/ingress-controller".into()),
            reporting_instance: Some(self.config.identity.clone()),
            regarding: Some(ObjectReference {
                api_version: Some("networking.k8s.io/v1".into()),
                kind: Some(object.kind.clone()),
                name: Some(object.name.clone()),
                namespace: Some(ns.clone()),
                ..ObjectReference::default()
            }),
            ..Event::default()
        };
        Api::<Event>::namespaced(self.client.clone(), &ns)
            .create(&PostParams::default(), &event)
            .await?;
        Ok(())
    }
}

/// One round of the election: true when this identity holds the lease afterwards.
async fn try_hold(client: &Client, config: &StatusConfig) -> Result<bool, kube::Error> {
    let api = Api::<Lease>::namespaced(client.clone(), &config.lease_namespace);
    let now = jiff::Timestamp::now();
    let spec = |transitions: i32, acquired: Option<MicroTime>| LeaseSpec {
        holder_identity: Some(config.identity.clone()),
        lease_duration_seconds: Some(LEASE_SECONDS),
        renew_time: Some(MicroTime(now)),
        acquire_time: acquired.or(Some(MicroTime(now))),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    };
    match api.get_opt(&config.lease_name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(config.lease_name.clone()),
                    namespace: Some(config.lease_namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(spec(0, None)),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        Some(mut lease) => {
            let current = lease.spec.clone().unwrap_or_default();
            let holder = current.holder_identity.clone().unwrap_or_default();
            let expired = current.renew_time.as_ref().is_none_or(|t| {
                let seconds = i64::from(current.lease_duration_seconds.unwrap_or(LEASE_SECONDS));
                now.as_second() > t.0.as_second() + seconds
            });
            if holder != config.identity && !expired {
                return Ok(false);
            }
            let transitions = current.lease_transitions.unwrap_or(0) + i32::from(holder != config.identity);
            let acquired = if holder == config.identity {
                current.acquire_time
            } else {
                None
            };
            lease.spec = Some(spec(transitions, acquired));
            // The resourceVersion in metadata makes this a compare-and-swap: of two
            // replicas racing for an expired lease, one gets 409.
            match api
                .replace(&config.lease_name, &PostParams::default(), &lease)
                .await
            {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

/// The Ingresses a snapshot serves.
pub fn served(snapshot: &portcullis_config::Snapshot) -> BTreeSet<(String, String)> {
    snapshot
        .routes
        .routes()
        .map(|(_, r)| (r.ingress.namespace.clone(), r.ingress.name.clone()))
        .collect()
}

/// Problems about Ingresses that were not in the previous set.
pub fn new_ingress_problems(now: &[Problem], before: &[Problem]) -> Vec<Problem> {
    let seen: BTreeMap<String, ()> = before
        .iter()
        .map(|p| {
            (
                Problem {
                    origin: None,
                    ..p.clone()
                }
                .to_string(),
                (),
            )
        })
        .collect();
    now.iter()
        .filter(|p| p.object.as_ref().is_some_and(|o| o.kind == "Ingress"))
        .filter(|p| {
            !seen.contains_key(
                &Problem {
                    origin: None,
                    ..(*p).clone()
                }
                .to_string(),
            )
        })
        .cloned()
        .collect()
}
