//! The published configuration: one [`ArcSwap`] holding the current [`Runtime`]. A
//! request loads it once and uses that one snapshot from start to end; a reload builds
//! a whole new Runtime and swaps it in atomically, so in-flight requests never see a
//! half-applied change. The last good Runtime stays when a reload fails entirely.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use portcullis_config::snapshot::{BackendId, BackendTarget};
use portcullis_config::{Compiled, Manifests, Problem, Settings, Snapshot};
use rustls::sign::CertifiedKey;

use crate::metrics::{Metrics, SeverityLabel};
use crate::sticky::{rendezvous, StickyKey};

/// A snapshot plus what serving it needs at run time.
pub struct Runtime {
    pub snapshot: Snapshot,
    /// Served when no Ingress certificate matches the SNI name.
    pub default_certificate: Arc<CertifiedKey>,
    /// Round-robin position per backend.
    cursors: Vec<AtomicUsize>,
    pub generation: u64,
}

/// Where one request goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Upstream {
    Address(std::net::SocketAddr),
    Named { host: String, port: u16 },
}

impl Upstream {
    /// `address:port` as a URI authority, without the formatting machinery: it is built
    /// for every request sent upstream.
    pub fn authority(&self) -> Result<http::uri::Authority, http::uri::InvalidUri> {
        match self {
            Upstream::Address(a) => {
                http::uri::Authority::try_from(crate::text::AddrText::socket(*a).as_str())
            }
            named => http::uri::Authority::try_from(named.to_string()),
        }
    }
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Upstream::Address(a) => write!(f, "{a}"),
            Upstream::Named { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        // A large configuration takes a while to free (about 20 ms for 10,000 Ingresses,
        // bench scenario 7's compile-stats, with glibc's malloc): not on a thread that serves
        // requests. The last holder may be a request that began before a reload.
        // (spawn_blocking panics only if no thread can be made at all.)
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let snapshot = std::mem::take(&mut self.snapshot);
            handle.spawn_blocking(move || drop(snapshot));
        }
    }
}

impl Runtime {
    pub fn new(snapshot: Snapshot, generated_default: &Arc<CertifiedKey>, generation: u64) -> Self {
        let default_certificate = snapshot
            .certificates
            .default
            .as_ref()
            .map(|c| c.key.clone())
            .unwrap_or_else(|| generated_default.clone());
        let cursors = snapshot.backends.iter().map(|_| AtomicUsize::new(0)).collect();
        Runtime {
            snapshot,
            default_certificate,
            cursors,
            generation,
        }
    }

    /// The next endpoint of a backend, round robin, skipping endpoints ejected after
    /// failing (unless all are), with the number of endpoints (how many distinct ones a
    /// retry can reach). `Err` carries why there is none.
    pub fn pick(&self, id: BackendId, ejections: &Ejections) -> Result<(Upstream, usize), String> {
        let backend = self.snapshot.backend(id);
        match &backend.target {
            BackendTarget::Endpoints(endpoints) if !endpoints.is_empty() => {
                let len = endpoints.len();
                let start = self.cursors[id.0].fetch_add(1, Ordering::Relaxed);
                let healthy = (0..len)
                    .map(|k| endpoints[(start + k) % len])
                    .find(|e| !ejections.is_ejected(e));
                let chosen = healthy.unwrap_or(endpoints[start % len]);
                Ok((Upstream::Address(chosen), len))
            }
            BackendTarget::Endpoints(_) => Err(format!("Service {backend} has no ready endpoints")),
            BackendTarget::External { host, port } => Ok((
                Upstream::Named {
                    host: host.clone(),
                    port: *port,
                },
                1,
            )),
            BackendTarget::Unavailable(reason) => Err(reason.clone()),
        }
    }

    /// [`Runtime::pick`] for sticky sessions: the endpoint the client's cookie names
    /// while it is ready and not ejected (or ejected, when `keep_ejected`: persistent
    /// mode); otherwise the next endpoint round robin, with the value of the new cookie
    /// that names it.
    pub fn pick_sticky(
        &self,
        id: BackendId,
        ejections: &Ejections,
        key: &StickyKey,
        cookie: Option<&str>,
        keep_ejected: bool,
    ) -> Result<(Upstream, usize, Option<String>), String> {
        let backend = self.snapshot.backend(id);
        let BackendTarget::Endpoints(endpoints) = &backend.target else {
            // An ExternalName has one name to go to: nothing to stick to.
            return self.pick(id, ejections).map(|(u, n)| (u, n, None));
        };
        let name = backend.to_string();
        let named = cookie.and_then(|c| key.endpoint_for(&name, endpoints, c));
        if let Some(endpoint) = named.filter(|e| keep_ejected || !ejections.is_ejected(e)) {
            return Ok((Upstream::Address(endpoint), endpoints.len(), None));
        }
        let (upstream, len) = self.pick(id, ejections)?;
        let value = match &upstream {
            Upstream::Address(a) => Some(key.cookie_value(&name, *a)),
            Upstream::Named { .. } => None,
        };
        Ok((upstream, len, value))
    }

    /// [`Runtime::pick`] for `upstream-hash-by`: the endpoint that rendezvous hashing of
    /// `key` gives among the ready endpoints not ejected (among all, if all are).
    pub fn pick_hashed(
        &self,
        id: BackendId,
        ejections: &Ejections,
        key: &[u8],
    ) -> Result<(Upstream, usize), String> {
        let backend = self.snapshot.backend(id);
        match &backend.target {
            BackendTarget::Endpoints(endpoints) => {
                let chosen = rendezvous(key, endpoints, |e| ejections.is_ejected(e))
                    .or_else(|| rendezvous(key, endpoints, |_| false));
                match chosen {
                    Some(e) => Ok((Upstream::Address(e), endpoints.len())),
                    None => self.pick(id, ejections),
                }
            }
            _ => self.pick(id, ejections),
        }
    }
}

/// Endpoints that recently refused or timed out a connection are skipped for a while
/// (passive health checking); they come back on their own when the time is up. Kept
/// across reloads, since endpoints outlive snapshots.
#[derive(Default)]
pub struct Ejections {
    until: std::sync::RwLock<std::collections::HashMap<std::net::SocketAddr, std::time::Instant>>,
    /// Fast path: no lock at all while nothing is ejected.
    count: AtomicUsize,
}

/// How long a failing endpoint is left out.
pub const EJECTION: std::time::Duration = std::time::Duration::from_secs(10);

impl Ejections {
    pub fn is_ejected(&self, endpoint: &std::net::SocketAddr) -> bool {
        if self.count.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let until = self.until.read().unwrap_or_else(|e| e.into_inner());
        until
            .get(endpoint)
            .is_some_and(|t| std::time::Instant::now() < *t)
    }

    /// Leaves an endpoint out for [`EJECTION`].
    pub fn eject(&self, endpoint: std::net::SocketAddr) {
        let mut until = self.until.write().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        until.retain(|_, t| *t > now);
        until.insert(endpoint, now + EJECTION);
        self.count.store(until.len(), Ordering::Relaxed);
    }
}

/// State shared by every listener and request.
pub struct Gateway {
    pub settings: Settings,
    current: ArcSwap<Runtime>,
    generated_default: Arc<CertifiedKey>,
    generation: AtomicU64,
    ready: AtomicBool,
    pub metrics: Metrics,
    pub audit: crate::audit::AuditLog,
    pub ejections: Ejections,
    /// Port of the HTTPS listener, for redirects.
    pub https_port: std::sync::atomic::AtomicU16,
}

impl Gateway {
    /// Fails when the audit log cannot be opened.
    pub fn new(settings: Settings, generated_default: Arc<CertifiedKey>) -> std::io::Result<Self> {
        let empty = Runtime::new(Snapshot::default(), &generated_default, 0);
        let https_port = settings.listen.https.port();
        let metrics = Metrics::new();
        let audit = crate::audit::AuditLog::start(&settings.audit_log, metrics.audit_dropped.clone())?;
        Ok(Gateway {
            settings,
            current: ArcSwap::from_pointee(empty),
            generated_default,
            generation: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            metrics,
            audit,
            ejections: Ejections::default(),
            https_port: std::sync::atomic::AtomicU16::new(https_port),
        })
    }

    /// The current runtime; load once per request.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.current.load_full()
    }

    /// Publishes a compilation: logs each Problem once (those not in `previous`), swaps
    /// the snapshot in, and marks the gateway ready. Its work grows with the
    /// configuration and its problems (logging the new ones, the audit event's diff of
    /// Ingresses, the new runtime): call it off the threads that serve requests, as
    /// [`compile_and_publish`] does.
    pub fn publish(&self, compiled: Compiled, previous: &[Problem]) {
        // Thousands of problems are possible (a namespace of Ingresses whose Secret is
        // missing): a set, not a scan of the list for each.
        let known: std::collections::HashSet<&Problem> = previous.iter().collect();
        for problem in compiled.problems.iter().filter(|p| !known.contains(p)) {
            if problem.is_error() {
                tracing::error!(problem = %problem, "configuration problem");
            } else {
                tracing::warn!(problem = %problem, "configuration problem");
            }
        }
        let errors = compiled.error_count() as i64;
        let warnings = compiled.problems.len() as i64 - errors;
        let m = &self.metrics.config_problems;
        m.get_or_create(&SeverityLabel { severity: "error" }).set(errors);
        m.get_or_create(&SeverityLabel { severity: "warning" })
            .set(warnings);
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let stats = &compiled.snapshot.stats;
        tracing::info!(
            generation,
            routes = compiled.snapshot.routes.len(),
            ingresses = stats.ingresses_served,
            rejected = stats.ingresses_rejected,
            errors,
            warnings,
            "configuration published"
        );
        let ingresses = |s: &Snapshot| {
            s.routes
                .routes()
                .map(|(_, r)| r.ingress.to_string())
                .collect::<std::collections::BTreeSet<_>>()
        };
        let before = ingresses(&self.current.load().snapshot);
        let after = ingresses(&compiled.snapshot);
        self.audit.record(&serde_json::json!({
            "kind": "config",
            "time": crate::audit::timestamp(),
            "generation": generation,
            "routes": compiled.snapshot.routes.len(),
            "ingresses": stats.ingresses_served,
            "rejected": stats.ingresses_rejected,
            "added": after.difference(&before).collect::<Vec<_>>(),
            "removed": before.difference(&after).collect::<Vec<_>>(),
            "problems": compiled.problems.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        }));
        self.current.store(Arc::new(Runtime::new(
            compiled.snapshot,
            &self.generated_default,
            generation,
        )));
        self.ready.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Readiness goes false at shutdown so load balancers stop sending traffic.
    pub fn set_not_ready(&self) {
        self.ready.store(false, Ordering::Release);
    }
}

/// Builds the manifests (`manifests` may copy them from somewhere), compiles and
/// publishes them, in one blocking task: all of it grows with the configuration, and
/// none of it may hold up the threads that serve requests. `inspect` sees the result
/// and the previous problems before it is published (the controller's status). Returns
/// the new problems, for the next call's `previous`. Err if the task panicked: the
/// configuration in service stays.
pub async fn compile_and_publish<T: Send + 'static>(
    gateway: &Arc<Gateway>,
    manifests: impl FnOnce() -> Manifests + Send + 'static,
    previous: Arc<[Problem]>,
    inspect: impl FnOnce(&Compiled, &[Problem]) -> T + Send + 'static,
) -> Result<(Arc<[Problem]>, T), tokio::task::JoinError> {
    let gateway = gateway.clone();
    tokio::task::spawn_blocking(move || {
        let compiled = portcullis_config::compile(&manifests(), &gateway.settings, crate::auth::now());
        let problems: Arc<[Problem]> = compiled.problems.clone().into();
        let seen = inspect(&compiled, &previous);
        gateway.publish(compiled, &previous);
        (problems, seen)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_authorities_are_address_and_port() {
        for text in ["10.0.0.1:80", "0.0.0.0:0", "255.255.255.255:65535", "[::1]:8443"] {
            let upstream = Upstream::Address(text.parse().expect("address"));
            assert_eq!(upstream.authority().expect("authority").as_str(), text);
        }
    }
}
