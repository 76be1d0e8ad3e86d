//! Manifests in, one validated [`Snapshot`] out, with every Problem found on the way.
//!
//! Each Ingress is validated whole before any of it is served: an Ingress with an
//! error is rejected alone and the rest still compile. Ingresses are then applied
//! oldest first (by `creationTimestamp`, then namespace/name), so when two claim the
//! same host and path the older one keeps it, and the result never depends on file
//! or watch order.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Secret, Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::annotations;
use crate::manifest::{Manifests, Object};
use crate::path;
use crate::problem::{Origin, Problem};
use crate::routes::{HostMatch, IngressKey, PathType, Route, RouteTable};
use crate::settings::Settings;
use crate::snapshot::{
    Backend, BackendId, BackendTarget, Canary, Certificate, CertificateStore, RouteOptions, Snapshot, Stats,
};
use crate::tls;

/// Annotation that makes an IngressClass the cluster default.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";
/// The class annotation that predates `spec.ingressClassName`.
pub const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
/// Label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// A certificate expiring sooner than this gets a warning.
const EXPIRY_WARNING_SECONDS: i64 = 14 * 24 * 3600;

/// The outcome of a compilation: always a snapshot (possibly empty), and the problems.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub snapshot: Snapshot,
    pub problems: Vec<Problem>,
}

impl Compiled {
    pub fn error_count(&self) -> usize {
        self.problems.iter().filter(|p| p.is_error()).count()
    }
}

/// Compiles manifests. `now` is Unix seconds (certificates are checked against it).
pub fn compile(manifests: &Manifests, settings: &Settings, now: i64) -> Compiled {
    let mut c = Compiler::new(manifests, settings, now);
    c.run();
    let mut problems = c.problems;
    problems.sort_by(|a, b| {
        (&a.object, &a.field)
            .cmp(&(&b.object, &b.field))
            .then(a.severity.cmp(&b.severity))
    });
    let mut all = manifests.problems.clone();
    all.extend(problems);
    Compiled {
        snapshot: Snapshot {
            routes: c.table,
            backends: c.backends,
            certificates: c.certificates,
            tls_hosts: c.tls_hosts,
            tls_wildcards: c.tls_wildcards,
            referenced_secrets: c.referenced_secrets,
            passthrough: c
                .passthrough
                .into_iter()
                .map(|(host, (id, _))| (host, id))
                .collect(),
            stats: c.stats,
        },
        problems: all,
    }
}

/// A backend as an Ingress names it.
#[derive(Debug, Clone)]
struct BackendRef {
    service: String,
    /// Port number or name, as written.
    port: PortRef,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum PortRef {
    Number(i32),
    Name(String),
}

impl std::fmt::Display for PortRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PortRef::Number(n) => write!(f, "{n}"),
            PortRef::Name(n) => f.write_str(n),
        }
    }
}

struct PlannedPath {
    host: String,
    path: String,
    path_type: PathType,
    field: String,
    backend: BackendRef,
    regex: Option<regex::Regex>,
}

struct PlannedTls {
    hosts: Vec<String>,
    secret: Option<String>,
    field: String,
}

/// An Ingress that passed validation, ready to be applied.
struct IngressPlan<'a> {
    object: &'a Object<Ingress>,
    key: IngressKey,
    options: Arc<RouteOptions>,
    paths: Vec<PlannedPath>,
    default_backend: Option<BackendRef>,
    tls: Vec<PlannedTls>,
}

struct Compiler<'a> {
    m: &'a Manifests,
    settings: &'a Settings,
    now: i64,
    problems: Vec<Problem>,
    services: HashMap<(&'a str, &'a str), &'a Object<Service>>,
    slices: HashMap<(&'a str, &'a str), Vec<&'a Object<EndpointSlice>>>,
    secrets: HashMap<(&'a str, &'a str), &'a Object<Secret>>,
    config_maps: HashMap<(&'a str, &'a str), &'a Object<k8s_openapi::api::core::v1::ConfigMap>>,
    backends: Vec<Backend>,
    /// By namespace, Service, port, and whether the cluster IP is used (`service-upstream`).
    backend_ids: HashMap<(String, String, PortRef, bool), BackendId>,
    warned_backends: HashSet<(IngressKey, BackendId)>,
    loaded_certs: HashMap<(String, String), Option<Arc<Certificate>>>,
    table: RouteTable,
    certificates: CertificateStore,
    tls_hosts: HashSet<String>,
    tls_wildcards: HashSet<String>,
    /// `ssl-passthrough` hosts, with the Ingress that claimed each first.
    passthrough: HashMap<String, (BackendId, IngressKey)>,
    referenced_secrets: HashMap<(String, String), Vec<u8>>,
    stats: Stats,
}

impl<'a> Compiler<'a> {
    fn new(m: &'a Manifests, settings: &'a Settings, now: i64) -> Self {
        let mut services = HashMap::new();
        for s in &m.services {
            services.insert((s.namespace(), s.name()), s);
        }
        let mut slices: HashMap<(&str, &str), Vec<&Object<EndpointSlice>>> = HashMap::new();
        for s in &m.endpoint_slices {
            let label = s
                .value
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL));
            if let Some(service) = label {
                slices
                    .entry((s.namespace(), service.as_str()))
                    .or_default()
                    .push(s);
            }
        }
        let mut secrets = HashMap::new();
        for s in &m.secrets {
            secrets.insert((s.namespace(), s.name()), s);
        }
        let mut config_maps = HashMap::new();
        for c in &m.config_maps {
            config_maps.insert((c.namespace(), c.name()), c);
        }
        Compiler {
            m,
            settings,
            now,
            problems: Vec::new(),
            services,
            slices,
            secrets,
            config_maps,
            backends: Vec::new(),
            backend_ids: HashMap::new(),
            warned_backends: HashSet::new(),
            loaded_certs: HashMap::new(),
            table: RouteTable::default(),
            certificates: CertificateStore::default(),
            tls_hosts: HashSet::new(),
            tls_wildcards: HashSet::new(),
            passthrough: HashMap::new(),
            referenced_secrets: HashMap::new(),
            stats: Stats {
                services: m.services.len(),
                endpoint_slices: m.endpoint_slices.len(),
                secrets: m.secrets.len(),
                ignored: m.ignored.clone(),
                ..Stats::default()
            },
        }
    }

    fn run(&mut self) {
        self.warn_slices_without_service();
        let mut selected = self.select_ingresses();
        selected.sort_by(|a, b| {
            let ta = a.value.metadata.creation_timestamp.as_ref();
            let tb = b.value.metadata.creation_timestamp.as_ref();
            (ta.is_none(), ta, a.namespace(), a.name()).cmp(&(tb.is_none(), tb, b.namespace(), b.name()))
        });
        let mut plans = Vec::new();
        for ingress in selected {
            let (plan, problems) = self.plan(ingress);
            if problems.iter().any(Problem::is_error) {
                self.stats.ingresses_rejected += 1;
            }
            let origin = ingress.origin.clone();
            self.problems
                .extend(problems.into_iter().map(|p| p.at(Some(origin.clone()))));
            plans.extend(plan);
        }
        self.stats.ingresses_served = plans.len();
        // Canaries attach to the routes of the others, so they come after all of them
        // whatever their age; among themselves the oldest canary of a route wins.
        let (canaries, plans): (Vec<_>, Vec<_>) = plans.into_iter().partition(|p| p.options.canary.is_some());
        for plan in &plans {
            self.apply_tls(plan);
        }
        for plan in &plans {
            self.apply_routes(plan);
        }
        for plan in &plans {
            self.apply_www_redirects(plan);
            self.apply_passthrough(plan);
        }
        self.load_default_certificate();
        self.resolve_config_secrets();
        let (tls_hosts, tls_wildcards) = (&self.tls_hosts, &self.tls_wildcards);
        for route in self.table.routes_mut() {
            route.tls = match &route.host {
                HostMatch::Exact(h) => {
                    tls_hosts.contains(h)
                        || crate::routes::parent_domain(h).is_some_and(|p| tls_wildcards.contains(p))
                }
                HostMatch::Wildcard(s) => tls_wildcards.contains(s),
                HostMatch::Any => false,
            };
        }
        // After the TLS flags are set, since a canary copies its main route.
        for plan in &canaries {
            self.apply_canary(plan);
        }
        self.warn_plain_http(&plans);
    }

    /// Picks the Ingresses of our class (or class-less ones, if our class is the default).
    fn select_ingresses(&mut self) -> Vec<&'a Object<Ingress>> {
        let ours = self.settings.ingress_class.as_str();
        let our_class = self.m.ingress_classes.iter().find(|c| c.name() == ours);
        let default_class = our_class.is_some_and(|c| c.annotation(DEFAULT_CLASS_ANNOTATION) == Some("true"));
        let mut selected = Vec::new();
        for ingress in &self.m.ingresses {
            let spec_class = ingress
                .value
                .spec
                .as_ref()
                .and_then(|s| s.ingress_class_name.as_deref());
            let legacy_class = ingress.annotation(LEGACY_CLASS_ANNOTATION);
            if let (Some(s), Some(l)) = (spec_class, legacy_class) {
                if s != l {
                    self.problems.push(
                        Problem::warning(
                            Some(ingress.object_ref()),
                            format!("metadata.annotations[\"{LEGACY_CLASS_ANNOTATION}\"]"),
                            format!(
                                "says {l:?} but spec.ingressClassName says {s:?}; spec.ingressClassName wins"
                            ),
                        )
                        .at(Some(ingress.origin.clone())),
                    );
                }
            }
            let served = match spec_class.or(legacy_class) {
                Some(class) => class == ours,
                None => default_class,
            };
            if served {
                selected.push(ingress);
            } else {
                self.stats.ingresses_other_class += 1;
            }
        }
        selected
    }

    /// Validates one Ingress completely: the plan, if it has no errors, and every
    /// problem found (warnings too).
    fn plan(&self, object: &'a Object<Ingress>) -> (Option<IngressPlan<'a>>, Vec<Problem>) {
        let oref = object.object_ref();
        let mut problems = Vec::new();
        let (options, found) =
            annotations::route_options(&oref, object.value.metadata.annotations.as_ref(), self.settings);
        problems.extend(found);
        let options = options.and_then(|mut o| {
            if let Some(basic) = &mut o.basic_auth {
                let field = format!("metadata.annotations[\"{}auth-secret\"]", crate::nginx::PREFIX);
                match self.basic_auth_users(object.namespace(), basic) {
                    Ok(users) => basic.users = Arc::new(users),
                    Err(message) => {
                        problems.push(Problem::error(Some(oref.clone()), field, message));
                        return None;
                    }
                }
            }
            if let Some(tls) = &mut o.backend_tls {
                let field = format!(
                    "metadata.annotations[\"{}proxy-ssl-secret\"]",
                    crate::nginx::PREFIX
                );
                match self.backend_tls_material(object.namespace(), Arc::make_mut(tls)) {
                    Ok(()) if !o.backend_protocol.is_tls() => problems.push(Problem::warning(
                        Some(oref.clone()),
                        field,
                        format!(
                            "has no effect: the backend protocol is {}, not HTTPS or GRPCS",
                            o.backend_protocol
                        ),
                    )),
                    Ok(()) => {}
                    Err(message) => {
                        problems.push(Problem::error(Some(oref.clone()), field, message));
                        return None;
                    }
                }
            }
            if let Some(auth) = &mut o.client_auth {
                let field = format!(
                    "metadata.annotations[\"{}auth-tls-secret\"]",
                    crate::nginx::PREFIX
                );
                if let Err(message) = self.client_auth_ca(object.namespace(), Arc::make_mut(auth)) {
                    problems.push(Problem::error(Some(oref.clone()), field, message));
                    return None;
                }
            }
            if let Some(headers) = &mut o.custom_headers {
                let field = format!("metadata.annotations[\"{}custom-headers\"]", crate::nginx::PREFIX);
                if let Err(message) = self.custom_headers(object.namespace(), Arc::make_mut(headers)) {
                    problems.push(Problem::error(Some(oref.clone()), field, message));
                    return None;
                }
            }
            Some(Arc::new(o))
        });
        let regex_paths = match &options {
            Some(o) => o.regex_paths,
            None => crate::nginx::wants_regex(object.value.metadata.annotations.as_ref()),
        };
        let canary = crate::canary::is_canary(object.value.metadata.annotations.as_ref());
        if canary {
            for key in object.value.metadata.annotations.iter().flatten().map(|(k, _)| k) {
                if key.starts_with(annotations::PREFIX) {
                    problems.push(Problem::warning(
                        Some(oref.clone()),
                        format!("metadata.annotations[\"{key}\"]"),
                        "is ignored on a canary Ingress: requests sent to the canary are handled with the main Ingress's settings",
                    ));
                }
            }
            if object
                .value
                .spec
                .as_ref()
                .and_then(|s| s.tls.as_ref())
                .is_some_and(|t| !t.is_empty())
            {
                problems.push(Problem::warning(
                    Some(oref.clone()),
                    "spec.tls",
                    "is ignored on a canary Ingress: the main Ingress's TLS applies",
                ));
            }
        }
        let mut err = |field: String, message: String| {
            problems.push(Problem::error(Some(oref.clone()), field, message))
        };
        let spec = object.value.spec.clone().unwrap_or_default();
        let mut paths = Vec::new();
        for (ri, rule) in spec.rules.iter().flatten().enumerate() {
            let host = rule.host.clone().unwrap_or_default();
            if let Err(m) = validate_host(&host) {
                err(format!("spec.rules[{ri}].host"), m);
            }
            let Some(http) = &rule.http else { continue };
            for (pi, p) in http.paths.iter().enumerate() {
                let field = format!("spec.rules[{ri}].http.paths[{pi}]");
                let path_type = match p.path_type.as_str() {
                    "Exact" => PathType::Exact,
                    "Prefix" => PathType::Prefix,
                    "ImplementationSpecific" => PathType::ImplementationSpecific,
                    other => {
                        err(
                            format!("{field}.pathType"),
                            format!("{other:?} is not Exact, Prefix or ImplementationSpecific"),
                        );
                        continue;
                    }
                };
                let written = p.path.as_deref().unwrap_or("/");
                let checked = if canary {
                    // Only a key to find the main route by, which may be a regex
                    // whatever the canary's own use-regex says.
                    validate_path(written).map(|path| (path, None)).or_else(|e| {
                        crate::rewrite::path_regex(written)
                            .map(|_| (written.to_string(), None))
                            .map_err(|_| e)
                    })
                } else if regex_paths {
                    crate::rewrite::path_regex(written).map(|re| (written.to_string(), Some(re)))
                } else {
                    validate_path(written).map(|path| (path, None))
                };
                let (path_text, regex) = match checked {
                    Ok(checked) => checked,
                    Err(m) => {
                        err(format!("{field}.path"), m);
                        continue;
                    }
                };
                match backend_ref(&p.backend) {
                    Ok(backend) => paths.push(PlannedPath {
                        host: host.clone(),
                        path: path_text,
                        regex,
                        path_type,
                        field,
                        backend,
                    }),
                    Err((sub, m)) => err(format!("{field}.backend{sub}"), m),
                }
            }
        }
        let default_backend = match &spec.default_backend {
            Some(b) => match backend_ref(b) {
                Ok(b) => Some(b),
                Err((sub, m)) => {
                    err(format!("spec.defaultBackend{sub}"), m);
                    None
                }
            },
            None => None,
        };
        let rule_hosts: BTreeSet<String> = paths
            .iter()
            .map(|p| p.host.clone())
            .filter(|h| !h.is_empty())
            .collect();
        let mut tls = Vec::new();
        for (ti, t) in spec.tls.iter().flatten().enumerate() {
            let field = format!("spec.tls[{ti}]");
            let mut hosts = t.hosts.clone().unwrap_or_default();
            for (hi, h) in hosts.iter().enumerate() {
                if h.is_empty() {
                    err(format!("{field}.hosts[{hi}]"), "must not be empty".into());
                } else if let Err(m) = validate_host(h) {
                    err(format!("{field}.hosts[{hi}]"), m);
                }
            }
            if hosts.is_empty() {
                // "Defaults to the wildcard host setting of the load balancer": here, the
                // hosts this Ingress routes.
                hosts = rule_hosts.iter().cloned().collect();
            }
            tls.push(PlannedTls {
                hosts,
                secret: t.secret_name.clone().filter(|s| !s.is_empty()),
                field,
            });
        }
        let has_errors = problems.iter().any(Problem::is_error);
        if paths.is_empty() && default_backend.is_none() && !has_errors {
            problems.push(Problem::warning(
                Some(oref.clone()),
                "spec",
                "has no rules with paths and no defaultBackend: it serves nothing",
            ));
            return (None, problems);
        }
        let plan = match options {
            Some(options) if !has_errors => Some(IngressPlan {
                object,
                key: IngressKey::new(object.namespace(), object.name()),
                options,
                paths,
                default_backend,
                tls,
            }),
            _ => None,
        };
        (plan, problems)
    }

    /// The users of a basic-auth Secret in the Ingress's namespace.
    fn basic_auth_users(
        &self,
        namespace: &str,
        basic: &crate::snapshot::BasicAuth,
    ) -> Result<crate::htpasswd::Htpasswd, String> {
        let secret = self.secrets.get(&(namespace, basic.secret.as_str())).ok_or_else(|| {
            format!(
                "Secret {namespace}/{} not found (in controller mode the gateway only reads Secrets labelled portcullis.dev/basic-auth: \"true\"): the Ingress is rejected rather than served unprotected",
                basic.secret
            )
        })?;
        let data = crate::tls::secret_data(&secret.value);
        let parsed = if basic.map {
            crate::htpasswd::Htpasswd::from_map(data.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
        } else {
            let file = data.get("auth").ok_or_else(|| {
                format!(
                    "Secret {namespace}/{} has no key \"auth\" (an htpasswd file)",
                    basic.secret
                )
            })?;
            crate::htpasswd::Htpasswd::parse(file)
        };
        parsed.map_err(|e| format!("Secret {namespace}/{}: {e}", basic.secret))
    }

    /// The trust anchors and client certificate of a `proxy-ssl-secret` in the
    /// Ingress's namespace.
    fn backend_tls_material(
        &self,
        namespace: &str,
        tls: &mut crate::snapshot::BackendTls,
    ) -> Result<(), String> {
        let name = crate::backend_tls::secret_name(namespace, &tls.secret)?;
        let secret = self.secrets.get(&(namespace, name)).ok_or_else(|| {
            format!(
                "Secret {namespace}/{name} not found (in controller mode the gateway reads only Secrets of type kubernetes.io/tls): the Ingress is rejected rather than served without it"
            )
        })?;
        let data = crate::tls::secret_data(&secret.value);
        crate::backend_tls::load(&format!("{namespace}/{name}"), &data, tls)
    }

    /// The CA of `auth-tls-secret`, from a Secret of the Ingress's namespace only, as
    /// [`Self::backend_tls_material`] does.
    fn client_auth_ca(
        &self,
        namespace: &str,
        auth: &mut crate::client_auth::ClientAuth,
    ) -> Result<(), String> {
        let name = crate::backend_tls::secret_name(namespace, &auth.secret)?;
        let secret = self.secrets.get(&(namespace, name)).ok_or_else(|| {
            format!(
                "Secret {namespace}/{name} not found (in controller mode the gateway reads only Secrets of type kubernetes.io/tls): the Ingress is rejected rather than served without client certificate checks"
            )
        })?;
        let data = crate::tls::secret_data(&secret.value);
        crate::client_auth::load(&format!("{namespace}/{name}"), &data, auth)
    }

    /// The headers of a `custom-headers` ConfigMap in the Ingress's namespace. A
    /// missing ConfigMap rejects the Ingress: its headers are often security headers
    /// (Content-Security-Policy, Strict-Transport-Security), so it is not served
    /// without them.
    fn custom_headers(
        &self,
        namespace: &str,
        headers: &mut crate::custom_headers::CustomHeaders,
    ) -> Result<(), String> {
        let name = headers.config_map_name(namespace)?.to_string();
        let config_map = self.config_maps.get(&(namespace, name.as_str())).ok_or_else(|| {
            format!(
                "ConfigMap {namespace}/{name} not found (in controller mode the gateway only reads ConfigMaps labelled portcullis.dev/custom-headers: \"true\"): the Ingress is rejected rather than served without its response headers"
            )
        })?;
        headers.load(&format!("{namespace}/{name}"), &config_map.value)
    }

    fn problem(&mut self, plan: &IngressPlan, problem: Problem) {
        self.problems.push(problem.at(Some(plan.object.origin.clone())));
    }

    fn apply_routes(&mut self, plan: &IngressPlan) {
        let oref = plan.object.object_ref();
        let fallback = self.fallback(plan);
        for p in &plan.paths {
            let backend = self.backend(plan, &p.backend, &p.field);
            let route = Route {
                ingress: plan.key.clone(),
                host: HostMatch::parse(&p.host),
                path: p.path.clone(),
                path_type: p.path_type,
                field: p.field.clone(),
                backend,
                options: plan.options.clone(),
                tls: false,
                regex: p.regex.clone(),
                canary: None,
                fallback,
            };
            let (host, path, path_type) = (route.host.clone(), route.path.clone(), route.path_type);
            if let Err(conflict) = self.table.insert(route) {
                let winner = self.table.route(conflict.0);
                let who = if winner.ingress == plan.key {
                    format!("duplicates {} of this Ingress", winner.field)
                } else {
                    format!(
                        "is already served by Ingress {} ({}), which is older",
                        winner.ingress, winner.field
                    )
                };
                let message = format!("host {host} path {path} ({path_type}) {who}: this path is not served");
                self.problem(plan, Problem::error(Some(oref.clone()), p.field.clone(), message));
            }
        }
        if let Some(b) = &plan.default_backend {
            let backend = self.backend(plan, b, "spec.defaultBackend");
            let route = Route {
                ingress: plan.key.clone(),
                host: HostMatch::Any,
                path: "/".to_string(),
                path_type: PathType::Prefix,
                field: "spec.defaultBackend".to_string(),
                backend,
                options: plan.options.clone(),
                tls: false,
                regex: None,
                canary: None,
                fallback,
            };
            if let Err(conflict) = self.table.set_default(route) {
                let winner = self.table.route(conflict.0).ingress.clone();
                let message = format!(
                    "Ingress {winner} already provides the default backend and is older: this one is not used"
                );
                self.problem(plan, Problem::error(Some(oref), "spec.defaultBackend", message));
            }
        }
    }

    /// ingress-nginx's `ssl-passthrough`: each exact host of the Ingress relays its TLS
    /// connections to the backend of its first path; the oldest Ingress claims a host.
    fn apply_passthrough(&mut self, plan: &IngressPlan) {
        if !plan.options.ssl_passthrough {
            return;
        }
        let oref = plan.object.object_ref();
        let mut seen = BTreeSet::new();
        for p in &plan.paths {
            if !seen.insert(p.host.clone()) {
                continue;
            }
            if p.host.is_empty() || p.host.starts_with('*') {
                let message = "ssl-passthrough needs an exact host: a TLS connection is matched by its SNI alone, so this rule is not passed through";
                self.problem(
                    plan,
                    Problem::warning(Some(oref.clone()), p.field.clone(), message),
                );
                continue;
            }
            if let Some((_, owner)) = self.passthrough.get(&p.host) {
                let message = format!(
                    "host {} is already passed through to Ingress {owner}, which is older: this Ingress's TLS connections are not passed through",
                    p.host
                );
                self.problem(plan, Problem::error(Some(oref.clone()), p.field.clone(), message));
                continue;
            }
            let backend = self.backend(plan, &p.backend, &p.field);
            self.passthrough
                .insert(p.host.clone(), (backend, plan.key.clone()));
        }
    }

    /// ingress-nginx's `from-to-www-redirect`: `www.HOST` redirects to `HOST` (and the
    /// other way round), unless some Ingress serves that name itself.
    fn apply_www_redirects(&mut self, plan: &IngressPlan) {
        if !plan.options.www_redirect {
            return;
        }
        let hosts: BTreeSet<&String> = plan.paths.iter().map(|p| &p.host).collect();
        for host in hosts {
            if host.is_empty() || host.starts_with('*') {
                continue;
            }
            let other = match host.strip_prefix("www.") {
                Some(bare) => bare.to_string(),
                None => format!("www.{host}"),
            };
            if self.table.serves_host(&other) {
                continue;
            }
            let mut options = (*plan.options).clone();
            options.host_redirect = Some(host.clone());
            let backend = plan
                .paths
                .first()
                .map(|p| self.backend(plan, &p.backend, &p.field));
            let Some(backend) = backend else { continue };
            let route = Route {
                ingress: plan.key.clone(),
                host: HostMatch::Exact(other),
                path: "/".to_string(),
                path_type: PathType::Prefix,
                field: format!(
                    "metadata.annotations[\"{}from-to-www-redirect\"]",
                    crate::nginx::PREFIX
                ),
                backend,
                options: Arc::new(options),
                tls: false,
                regex: None,
                canary: None,
                fallback: None,
            };
            let _ = self.table.insert(route);
        }
    }

    /// Attaches each host+path of a canary Ingress to the main route with the same host,
    /// path and path type, and its defaultBackend to the default route.
    fn apply_canary(&mut self, plan: &IngressPlan) {
        let Some(rules) = plan.options.canary.clone() else {
            return;
        };
        let oref = plan.object.object_ref();
        let targets = plan
            .paths
            .iter()
            .map(|p| {
                let host = HostMatch::parse(&p.host);
                let id = self.table.find(&host, &p.path, p.path_type);
                let what = format!("host {host} path {} ({})", p.path, p.path_type);
                (id, what, p.field.clone(), &p.backend)
            })
            .chain(plan.default_backend.iter().map(|b| {
                let what = "the default backend".to_string();
                (
                    self.table.default_route(),
                    what,
                    "spec.defaultBackend".to_string(),
                    b,
                )
            }))
            .collect::<Vec<_>>();
        for (id, what, field, backend) in targets {
            let Some(id) = id else {
                let message = format!(
                    "{what} is served by no other Ingress: a canary only takes requests of a main Ingress with the same host and path, so this path is not served"
                );
                self.problem(plan, Problem::error(Some(oref.clone()), field, message));
                continue;
            };
            let main = self.table.route(id);
            let refusal = if main.ingress.namespace != plan.key.namespace {
                Some(format!(
                    "{what} is served by Ingress {} in another namespace: a canary only takes requests of an Ingress in its own namespace, so this path is not used",
                    main.ingress
                ))
            } else {
                main.canary.as_ref().map(|c| {
                    format!(
                        "{what} of Ingress {} already has the canary Ingress {} ({}), which is older: this one is not used for it",
                        main.ingress, c.route.ingress, c.route.field
                    )
                })
            };
            if let Some(message) = refusal {
                self.problem(plan, Problem::error(Some(oref.clone()), field, message));
                continue;
            }
            let backend = self.backend(plan, backend, &field);
            let main = self.table.route(id);
            let route = Route {
                ingress: plan.key.clone(),
                field,
                backend,
                canary: None,
                ..main.clone()
            };
            self.table.route_mut(id).canary = Some(Box::new(Canary {
                rules: rules.clone(),
                route,
            }));
        }
    }

    /// The backend of `default-backend`: the Service's first port, as ingress-nginx
    /// takes (`Spec.Ports[0]` in its controller), since the annotation names no port.
    /// Always its endpoints, whatever `service-upstream` says, as ingress-nginx does.
    fn fallback(&mut self, plan: &IngressPlan) -> Option<BackendId> {
        let name = plan.options.default_backend.as_deref()?;
        let ns = plan.key.namespace.clone();
        let field = format!(
            "metadata.annotations[\"{}default-backend\"]",
            crate::nginx::PREFIX
        );
        let first_port = self.services.get(&(ns.as_str(), name)).map(|s| {
            s.value
                .spec
                .as_ref()
                .and_then(|spec| spec.ports.as_ref())
                .and_then(|ports| ports.first())
                .map(|p| p.port)
        });
        let problem = match first_port {
            Some(Some(port)) => {
                let b = BackendRef {
                    service: name.to_string(),
                    port: PortRef::Number(port),
                };
                let id = self.backend_id(&ns, &b, false);
                if let BackendTarget::Endpoints(e) = &self.backends[id.0].target {
                    if e.is_empty() && self.warned_backends.insert((plan.key.clone(), id)) {
                        let message = format!(
                            "Service {ns}/{name} has no ready endpoints: routes without endpoints get 503 and backend errors pass unchanged"
                        );
                        self.problem(plan, Problem::warning(Some(plan.object.object_ref()), field, message));
                    }
                }
                return Some(id);
            }
            Some(None) => format!(
                "Service {ns}/{name} has no ports: routes without endpoints get 503 and backend errors pass unchanged"
            ),
            None => format!(
                "Service {ns}/{name} not found: routes without endpoints get 503 and backend errors pass unchanged"
            ),
        };
        self.problem(
            plan,
            Problem::error(Some(plan.object.object_ref()), field, problem),
        );
        None
    }

    /// Resolves a Service port to a backend, once per (namespace, service, port).
    fn backend_id(&mut self, ns: &str, b: &BackendRef, cluster_ip: bool) -> BackendId {
        let key = (ns.to_string(), b.service.clone(), b.port.clone(), cluster_ip);
        if let Some(id) = self.backend_ids.get(&key) {
            return *id;
        }
        let target = self.resolve(ns, b, cluster_ip);
        let id = BackendId(self.backends.len());
        self.backends.push(Backend {
            namespace: ns.to_string(),
            service: b.service.clone(),
            port: b.port.to_string(),
            target,
        });
        self.backend_ids.insert(key, id);
        id
    }

    /// [`Self::backend_id`], with a warning on the Ingress when the backend cannot serve.
    fn backend(&mut self, plan: &IngressPlan, b: &BackendRef, field: &str) -> BackendId {
        let ns = plan.key.namespace.clone();
        let id = self.backend_id(&ns, b, plan.options.service_upstream);
        if self.warned_backends.insert((plan.key.clone(), id)) {
            // A canary without endpoints takes nothing (see crate::canary::choose).
            let outcome = if plan.options.canary.is_some() {
                "the main backend gets the canary's requests"
            } else if plan.options.default_backend.is_some() {
                "requests go to the default-backend Service"
            } else {
                "requests get 503"
            };
            let warning = match &self.backends[id.0].target {
                BackendTarget::Unavailable(reason) => Some(format!("{reason}: {outcome}")),
                BackendTarget::Endpoints(e) if e.is_empty() => Some(format!(
                    "Service {}/{} has no ready endpoints: {outcome}",
                    self.backends[id.0].namespace, b.service
                )),
                _ => None,
            };
            if let Some(message) = warning {
                let oref = plan.object.object_ref();
                self.problem(
                    plan,
                    Problem::warning(Some(oref), format!("{field}.service"), message),
                );
            }
        }
        id
    }

    /// Where requests for a Service port go: its ready endpoints, or its cluster IP and
    /// port when `cluster_ip` (ingress-nginx's `service-upstream`).
    fn resolve(&self, ns: &str, b: &BackendRef, cluster_ip: bool) -> BackendTarget {
        let Some(service) = self.services.get(&(ns, b.service.as_str())) else {
            return BackendTarget::Unavailable(format!("Service {ns}/{} not found", b.service));
        };
        let spec = service.value.spec.clone().unwrap_or_default();
        let ports = spec.ports.unwrap_or_default();
        let port = ports.iter().find(|p| match &b.port {
            PortRef::Number(n) => p.port == *n,
            PortRef::Name(name) => p.name.as_deref() == Some(name.as_str()),
        });
        if spec.type_.as_deref() == Some("ExternalName") {
            let host = spec.external_name.unwrap_or_default();
            let number = match (&b.port, port) {
                (_, Some(p)) => p.port,
                (PortRef::Number(n), None) => *n,
                (PortRef::Name(name), None) => {
                    return BackendTarget::Unavailable(format!(
                        "ExternalName Service {ns}/{} has no port named {name:?}",
                        b.service
                    ))
                }
            };
            return match u16::try_from(number) {
                Ok(port) if !host.is_empty() && port != 0 => BackendTarget::External { host, port },
                _ => BackendTarget::Unavailable(format!(
                    "ExternalName Service {ns}/{} has no externalName or a bad port",
                    b.service
                )),
            };
        }
        let Some(port) = port else {
            return BackendTarget::Unavailable(format!("Service {ns}/{} has no port {}", b.service, b.port));
        };
        if cluster_ip {
            let ip = spec
                .cluster_ip
                .as_deref()
                .and_then(|ip| ip.parse::<IpAddr>().ok());
            return match (ip, u16::try_from(port.port)) {
                (Some(ip), Ok(p)) if p != 0 => BackendTarget::Endpoints(vec![SocketAddr::new(ip, p)]),
                _ => BackendTarget::Unavailable(format!(
                    "Service {ns}/{} has no cluster IP (service-upstream needs one; headless Services have none)",
                    b.service
                )),
            };
        }
        let mut addresses = BTreeSet::new();
        for slice in self.slices.get(&(ns, b.service.as_str())).into_iter().flatten() {
            let slice = &slice.value;
            if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
                continue;
            }
            let Some(target_port) = slice_port(slice, port) else {
                continue;
            };
            for endpoint in slice.endpoints.iter().flatten() {
                let ready = endpoint.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                if !ready {
                    continue;
                }
                for address in &endpoint.addresses {
                    if let Ok(ip) = address.parse::<IpAddr>() {
                        addresses.insert(SocketAddr::new(ip, target_port));
                    }
                }
            }
        }
        BackendTarget::Endpoints(addresses.into_iter().collect())
    }

    fn warn_slices_without_service(&mut self) {
        for slice in &self.m.endpoint_slices {
            let label = slice
                .value
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL));
            if label.is_none() {
                self.problems.push(
                    Problem::warning(
                        Some(slice.object_ref()),
                        format!("metadata.labels[\"{SERVICE_NAME_LABEL}\"]"),
                        "missing: the slice belongs to no Service and is not used",
                    )
                    .at(Some(slice.origin.clone())),
                );
            }
        }
    }

    fn apply_tls(&mut self, plan: &IngressPlan) {
        let oref = plan.object.object_ref();
        for t in &plan.tls {
            for host in &t.hosts {
                match HostMatch::parse(host) {
                    HostMatch::Wildcard(s) => self.tls_wildcards.insert(s),
                    HostMatch::Exact(h) => self.tls_hosts.insert(h),
                    HostMatch::Any => false,
                };
            }
            let Some(secret_name) = &t.secret else {
                let message = format!(
                    "no secretName: {} served with the default certificate",
                    t.hosts.join(", ")
                );
                self.problem(
                    plan,
                    Problem::warning(Some(oref.clone()), format!("{}.secretName", t.field), message),
                );
                continue;
            };
            let Some(cert) = self.certificate(plan, secret_name, &format!("{}.secretName", t.field)) else {
                continue;
            };
            for host in &t.hosts {
                if !tls::covers(&cert.names, host) {
                    let message = format!(
                        "the certificate in Secret {}/{secret_name} does not cover {host} (it names {}): {host} is served with the default certificate",
                        plan.key.namespace,
                        cert.names.join(", ")
                    );
                    self.problem(
                        plan,
                        Problem::error(Some(oref.clone()), format!("{}.hosts", t.field), message),
                    );
                    continue;
                }
                let slot = match HostMatch::parse(host) {
                    HostMatch::Wildcard(s) => self.certificates.wildcard.entry(s),
                    HostMatch::Exact(h) => self.certificates.exact.entry(h),
                    HostMatch::Any => continue,
                };
                match slot {
                    std::collections::hash_map::Entry::Vacant(e) => {
                        e.insert(cert.clone());
                    }
                    std::collections::hash_map::Entry::Occupied(e) if e.get().secret != cert.secret => {
                        let message = format!(
                            "{host} already uses the certificate of Secret {} from an older Ingress: Secret {} is not used for it",
                            e.get().secret, cert.secret
                        );
                        self.problem(
                            plan,
                            Problem::warning(Some(oref.clone()), t.field.clone(), message),
                        );
                    }
                    std::collections::hash_map::Entry::Occupied(_) => {}
                }
            }
        }
    }

    /// Loads and checks a TLS Secret once; Problems go on the Ingress (not found) or
    /// the Secret (invalid).
    fn certificate(
        &mut self,
        plan: &IngressPlan,
        secret_name: &str,
        field: &str,
    ) -> Option<Arc<Certificate>> {
        let ns = plan.key.namespace.clone();
        let key = (ns.clone(), secret_name.to_string());
        if let Some(loaded) = self.loaded_certs.get(&key) {
            return loaded.clone();
        }
        let Some(secret) = self.secrets.get(&(ns.as_str(), secret_name)).copied() else {
            let message = format!(
                "Secret {ns}/{secret_name} not found: its hosts are served with the default certificate"
            );
            self.problem(
                plan,
                Problem::error(Some(plan.object.object_ref()), field, message),
            );
            self.loaded_certs.insert(key, None);
            return None;
        };
        let loaded = self.load_secret(secret);
        self.loaded_certs.insert(key, loaded.clone());
        loaded
    }

    fn load_secret(&mut self, secret: &Object<Secret>) -> Option<Arc<Certificate>> {
        let name = format!("{}/{}", secret.namespace(), secret.name());
        let oref = secret.object_ref();
        let origin: Option<Origin> = Some(secret.origin.clone());
        if let Some(t) = secret.value.type_.as_deref() {
            if t != "kubernetes.io/tls" {
                self.problems.push(
                    Problem::warning(
                        Some(oref.clone()),
                        "type",
                        format!("is {t:?}, expected kubernetes.io/tls"),
                    )
                    .at(origin.clone()),
                );
            }
        }
        match tls::load_certificate(&name, &secret.value, self.now) {
            Ok(cert) => {
                if cert.not_after - self.now < EXPIRY_WARNING_SECONDS {
                    let days = (cert.not_after - self.now) / 86400;
                    self.problems.push(
                        Problem::warning(
                            Some(oref),
                            "data[\"tls.crt\"]",
                            format!("the certificate expires in {days} days"),
                        )
                        .at(origin),
                    );
                }
                Some(Arc::new(cert))
            }
            Err(message) => {
                self.problems
                    .push(Problem::error(Some(oref), "data", message).at(origin));
                None
            }
        }
    }

    fn load_default_certificate(&mut self) {
        let Some(name) = self.settings.tls.default_certificate.clone() else {
            return;
        };
        let Some((ns, n)) = crate::split_namespaced(&name) else {
            return;
        };
        match self.secrets.get(&(ns, n)).copied() {
            Some(secret) => self.certificates.default = self.load_secret(secret),
            None => self.problems.push(Problem::error(
                None,
                "config tls.defaultCertificate",
                format!("Secret {name} not found: a self-signed certificate is served instead"),
            )),
        }
    }

    /// Reads the Secret keys the config file refers to; a missing one is an error.
    fn resolve_config_secrets(&mut self) {
        let Some(oidc) = &self.settings.oidc else { return };
        let sources = oidc
            .providers
            .iter()
            .filter_map(|p| {
                p.client_secret
                    .as_ref()
                    .map(|s| (format!("oidc.providers[{}].clientSecret", p.name), s))
            })
            .chain(
                oidc.session_keys
                    .iter()
                    .map(|s| ("oidc.sessionKeys".to_string(), s)),
            );
        for (field, source) in sources {
            let crate::settings::SecretSource::Secret { secret, key } = source else {
                continue;
            };
            let Some((ns, name)) = crate::split_namespaced(secret) else {
                continue;
            };
            let value = self.secrets.get(&(ns, name)).and_then(|s| {
                let v = &s.value;
                v.string_data
                    .as_ref()
                    .and_then(|d| d.get(key))
                    .map(|s| s.as_bytes().to_vec())
                    .or_else(|| v.data.as_ref().and_then(|d| d.get(key)).map(|b| b.0.clone()))
            });
            match value {
                Some(v) => {
                    self.referenced_secrets.insert((secret.clone(), key.clone()), v);
                }
                None => self.problems.push(Problem::error(
                    None,
                    format!("config {field}"),
                    format!("Secret {secret} with key {key:?} not found among the manifests"),
                )),
            }
        }
    }

    fn warn_plain_http(&mut self, plans: &[IngressPlan]) {
        for plan in plans {
            let mut hosts = BTreeSet::new();
            for p in &plan.paths {
                if !p.host.is_empty() {
                    hosts.insert(p.host.as_str());
                }
            }
            for host in hosts {
                let covered = match HostMatch::parse(host) {
                    HostMatch::Exact(h) => {
                        self.tls_hosts.contains(&h)
                            || crate::routes::parent_domain(&h)
                                .is_some_and(|p| self.tls_wildcards.contains(p))
                    }
                    HostMatch::Wildcard(s) => self.tls_wildcards.contains(&s),
                    HostMatch::Any => true,
                };
                if !covered {
                    let message = format!("{host} has no spec.tls entry: it is also served over plain HTTP");
                    self.problem(
                        plan,
                        Problem::warning(Some(plan.object.object_ref()), "spec.tls", message),
                    );
                }
            }
        }
    }
}

/// The EndpointSlice port for a Service port: the slice port of the same name (the
/// EndpointSlice controller names them after the Service's ports), else a numeric
/// `targetPort`, else the Service port itself.
fn slice_port(slice: &EndpointSlice, port: &ServicePort) -> Option<u16> {
    let wanted = port.name.as_deref().unwrap_or_default();
    let from_slice = slice
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref().unwrap_or_default() == wanted)
        .and_then(|p| p.port);
    let number = match (from_slice, &port.target_port) {
        (Some(n), _) => n,
        (None, Some(IntOrString::Int(n))) => *n,
        (None, None) => port.port,
        (None, Some(IntOrString::String(_))) => return None,
    };
    u16::try_from(number).ok().filter(|n| *n != 0)
}

fn backend_ref(b: &IngressBackend) -> Result<BackendRef, (String, String)> {
    if b.resource.is_some() {
        return Err((
            ".resource".into(),
            "resource backends are not supported: use a Service backend".into(),
        ));
    }
    let Some(service) = &b.service else {
        return Err((".service".into(), "missing: a backend needs a Service".into()));
    };
    if service.name.is_empty() {
        return Err((".service.name".into(), "must not be empty".into()));
    }
    let port = service.port.as_ref();
    let port = match (port.and_then(|p| p.number), port.and_then(|p| p.name.clone())) {
        (Some(n), None) if (1..=65535).contains(&n) => PortRef::Number(n),
        (Some(n), None) => return Err((".service.port.number".into(), format!("{n} is not a port number"))),
        (None, Some(name)) if !name.is_empty() => PortRef::Name(name),
        (Some(_), Some(_)) => {
            return Err((
                ".service.port".into(),
                "set either number or name, not both".into(),
            ))
        }
        _ => return Err((".service.port".into(), "missing: set number or name".into())),
    };
    Ok(BackendRef {
        service: service.name.clone(),
        port,
    })
}

/// Validates an Ingress host: a lower-case DNS name, optionally `*.` + DNS name; not an
/// IP address (as the Ingress API requires).
pub fn validate_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Ok(());
    }
    let name = host.strip_prefix("*.").unwrap_or(host);
    if name.parse::<IpAddr>().is_ok() {
        return Err(format!(
            "{host:?} is an IP address; Ingress hosts must be DNS names"
        ));
    }
    if name.len() > 253 || name.is_empty() {
        return Err(format!("{host:?} is not a valid DNS name"));
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "{host:?} is not a valid DNS name (lower-case letters, digits and '-', optionally starting with \"*.\")"
            ));
        }
    }
    Ok(())
}

/// RFC 3986 `pchar` and `/`, plus non-ASCII text.
fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@/%".contains(c) || (!c.is_ascii() && !c.is_control())
}

/// Validates an Ingress path: absolute, only characters valid in a URL path, and
/// already in normalized form, because it is compared with normalized request paths.
/// Returns the path to match on: non-ASCII characters percent-encoded, as requests
/// carry them (`/café` is `/caf%C3%A9`).
pub fn validate_path(p: &str) -> Result<String, String> {
    if !p.starts_with('/') {
        return Err(format!("{p:?} must start with /"));
    }
    if let Some(c) = p.chars().find(|c| !is_path_char(*c)) {
        return Err(format!(
            "{p:?} contains {c:?}, which is not valid in a URL path (regular expressions are not supported)"
        ));
    }
    let encoded: String = p.bytes().fold(String::with_capacity(p.len()), |mut out, b| {
        if b.is_ascii() {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
        out
    });
    match path::normalize(&encoded) {
        Ok(n) if n == encoded => Ok(encoded),
        Ok(n) => Err(format!(
            "{p:?} is not in normalized form: requests are matched after normalization, so write {n:?}"
        )),
        Err(e) => Err(format!("{p:?}: {e}")),
    }
}

#[cfg(test)]
mod tests;
