//! Facts derived once per scan and shared by the rules: which workloads each Service
//! reaches, which pods NetworkPolicies isolate, the exposure map, and what each service
//! account may do.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::PolicyRule;
use serde::Serialize;

use crate::inventory::{Inventory, Item, Workload};
use crate::selector;

/// One way into the cluster.
#[derive(Debug, Clone, Serialize)]
pub struct EntryPoint {
    /// `LoadBalancer`, `NodePort`, `externalIPs`, `hostPort`, `hostNetwork`, `Ingress`.
    pub kind: &'static str,
    /// The object that opens it: `Service ns/name`, `Ingress ns/name host/path`...
    pub via: String,
    pub ports: Vec<String>,
    /// Workloads it reaches (`Kind ns/name`).
    pub workloads: Vec<String>,
    pub tls: bool,
    pub auth: bool,
    /// Every workload behind it is isolated by an ingress NetworkPolicy.
    pub network_policy: bool,
}

/// What a service account may do, by the dangerous permissions rules look for.
#[derive(Debug, Clone, Default)]
pub struct Rights {
    pub cluster_admin: bool,
    pub wildcard: bool,
    pub read_secrets: bool,
    pub escalate: bool,
    pub exec: bool,
    pub create_pods: bool,
    pub nodes_proxy: bool,
}

impl Rights {
    /// Rights that amount to taking over the cluster.
    pub fn takeover(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        let mut add = |yes: bool, what| {
            if yes {
                out.push(what)
            }
        };
        add(self.cluster_admin, "cluster-admin");
        add(self.wildcard, "wildcard permissions");
        add(self.escalate, "escalate/bind/impersonate");
        add(self.read_secrets, "read Secrets");
        add(self.exec, "pods/exec");
        add(self.create_pods, "create pods");
        add(self.nodes_proxy, "nodes/proxy");
        out
    }

    pub fn add_rule(&mut self, rule: &PolicyRule) {
        let has = |list: &Option<Vec<String>>, v: &str| list.iter().flatten().any(|x| x == v || x == "*");
        let verbs = &rule.verbs;
        let verb = |v: &str| verbs.iter().any(|x| x == v || x == "*");
        let resource = |r: &str| has(&rule.resources, r);
        if verbs.iter().any(|v| v == "*") && has(&rule.resources, "*") {
            self.wildcard = true;
        }
        if resource("secrets") && (verb("get") || verb("list") || verb("watch")) {
            self.read_secrets = true;
        }
        if verb("escalate") || verb("bind") || verb("impersonate") {
            self.escalate = true;
        }
        if (resource("pods/exec") || resource("pods/attach")) && (verb("create") || verb("get")) {
            self.exec = true;
        }
        if resource("pods") && verb("create") {
            self.create_pods = true;
        }
        if resource("nodes/proxy") && (verb("get") || verb("create")) {
            self.nodes_proxy = true;
        }
    }
}

pub struct Context<'a> {
    pub inv: &'a Inventory,
    /// Workload indexes behind each Service, by (namespace, name).
    pub service_backends: BTreeMap<(String, String), Vec<usize>>,
    /// Workload indexes isolated for ingress by some NetworkPolicy.
    pub isolated: BTreeSet<usize>,
    /// Namespaces with a default-deny ingress policy.
    pub default_deny: BTreeSet<String>,
    pub entry_points: Vec<EntryPoint>,
    /// Rights of each (namespace, service account).
    pub rights: BTreeMap<(String, String), Rights>,
    /// Rights granted to everyone (system:anonymous, system:authenticated...).
    pub public_rights: Rights,
}

/// Policy types, with the API's defaults: Ingress always, Egress when egress rules exist.
pub fn policy_types(p: &NetworkPolicy) -> (bool, bool) {
    let spec = p.spec.clone().unwrap_or_default();
    match &spec.policy_types {
        Some(types) => (
            types.iter().any(|t| t == "Ingress"),
            types.iter().any(|t| t == "Egress"),
        ),
        None => (true, spec.egress.is_some()),
    }
}

/// Whether a policy isolates pods for ingress and lets nothing in.
pub fn is_default_deny_ingress(p: &Item<NetworkPolicy>) -> bool {
    let spec = p.value.spec.clone().unwrap_or_default();
    let (ingress, _) = policy_types(&p.value);
    ingress
        && selector::is_empty(&spec.pod_selector.unwrap_or_default())
        && spec.ingress.as_ref().is_none_or(|r| r.is_empty())
}

impl<'a> Context<'a> {
    pub fn new(inv: &'a Inventory) -> Context<'a> {
        // Index workloads by namespace: selectors never cross namespaces.
        let mut by_namespace: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, w) in inv.workloads.iter().enumerate() {
            by_namespace.entry(w.namespace.as_str()).or_default().push(i);
        }
        let in_namespace = |ns: &str| by_namespace.get(ns).map(Vec::as_slice).unwrap_or_default();
        let mut service_backends = BTreeMap::new();
        for s in &inv.services {
            let selector = s.value.spec.as_ref().and_then(|s| s.selector.as_ref());
            let backends: Vec<usize> = in_namespace(s.namespace())
                .iter()
                .copied()
                .filter(|i| selector::service_selects(selector, &inv.workloads[*i].labels))
                .collect();
            service_backends.insert((s.namespace().to_string(), s.name().to_string()), backends);
        }
        let mut isolated = BTreeSet::new();
        for p in inv.network_policies.iter().filter(|p| policy_types(&p.value).0) {
            let pod_selector = p
                .value
                .spec
                .as_ref()
                .and_then(|s| s.pod_selector.clone())
                .unwrap_or_default();
            for i in in_namespace(p.namespace()) {
                if selector::selects(&pod_selector, &inv.workloads[*i].labels) {
                    isolated.insert(*i);
                }
            }
        }
        let default_deny = inv
            .network_policies
            .iter()
            .filter(|p| is_default_deny_ingress(p))
            .map(|p| p.namespace().to_string())
            .collect();
        let (rights, public_rights) = rbac_rights(inv);
        let mut ctx = Context {
            inv,
            service_backends,
            isolated,
            default_deny,
            entry_points: Vec::new(),
            rights,
            public_rights,
        };
        ctx.entry_points = crate::exposure::entry_points(&ctx);
        ctx
    }

    pub fn backends(&self, namespace: &str, service: &str) -> &[usize] {
        self.service_backends
            .get(&(namespace.to_string(), service.to_string()))
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    pub fn rights_of(&self, w: &Workload) -> Rights {
        let mut r = self
            .rights
            .get(&(w.namespace.clone(), w.service_account().to_string()))
            .cloned()
            .unwrap_or_default();
        let p = &self.public_rights;
        r.cluster_admin |= p.cluster_admin;
        r.wildcard |= p.wildcard;
        r.read_secrets |= p.read_secrets;
        r.escalate |= p.escalate;
        r.exec |= p.exec;
        r.create_pods |= p.create_pods;
        r.nodes_proxy |= p.nodes_proxy;
        r
    }
}

/// Groups that mean "everyone".
pub const PUBLIC_GROUPS: &[&str] = &[
    "system:anonymous",
    "system:unauthenticated",
    "system:authenticated",
];

fn rbac_rights(inv: &Inventory) -> (BTreeMap<(String, String), Rights>, Rights) {
    let cluster_roles: BTreeMap<&str, &Item<k8s_openapi::api::rbac::v1::ClusterRole>> =
        inv.cluster_roles.iter().map(|r| (r.name(), r)).collect();
    let roles: BTreeMap<(&str, &str), &Item<k8s_openapi::api::rbac::v1::Role>> =
        inv.roles.iter().map(|r| ((r.namespace(), r.name()), r)).collect();
    let role_rights = |kind: &str, name: &str, ns: &str| -> Rights {
        let mut r = Rights::default();
        if kind == "ClusterRole" && name == "cluster-admin" {
            r.cluster_admin = true;
            r.wildcard = true;
            return r;
        }
        let rules = if kind == "ClusterRole" {
            cluster_roles.get(name).and_then(|c| c.value.rules.clone())
        } else {
            roles.get(&(ns, name)).and_then(|c| c.value.rules.clone())
        };
        for rule in rules.iter().flatten() {
            r.add_rule(rule);
        }
        r
    };
    let mut out: BTreeMap<(String, String), Rights> = BTreeMap::new();
    let mut public = Rights::default();
    let mut grant =
        |subjects: &Option<Vec<k8s_openapi::api::rbac::v1::Subject>>, binding_ns: &str, r: &Rights| {
            for s in subjects.iter().flatten() {
                let target = match s.kind.as_str() {
                    "ServiceAccount" => out
                        .entry((
                            s.namespace.clone().unwrap_or_else(|| binding_ns.to_string()),
                            s.name.clone(),
                        ))
                        .or_default(),
                    "Group" if PUBLIC_GROUPS.contains(&s.name.as_str()) => &mut public,
                    "User" if s.name == "system:anonymous" => &mut public,
                    _ => continue,
                };
                target.cluster_admin |= r.cluster_admin;
                target.wildcard |= r.wildcard;
                target.read_secrets |= r.read_secrets;
                target.escalate |= r.escalate;
                target.exec |= r.exec;
                target.create_pods |= r.create_pods;
                target.nodes_proxy |= r.nodes_proxy;
            }
        };
    for b in &inv.cluster_role_bindings {
        let r = role_rights(&b.value.role_ref.kind, &b.value.role_ref.name, "");
        grant(&b.value.subjects, "default", &r);
    }
    for b in &inv.role_bindings {
        let r = role_rights(&b.value.role_ref.kind, &b.value.role_ref.name, b.namespace());
        grant(&b.value.subjects, b.namespace(), &r);
    }
    (out, public)
}
