//! Prometheus metrics, served as text on the admin listener's `/metrics`.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, OnceLock, RwLock};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The `ingress` label: `namespace/name`, shared with the route's
/// [`IngressKey`](portcullis_config::routes::IngressKey), so labelling a request
/// allocates nothing.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct IngressName(pub Arc<str>);

impl IngressName {
    /// `-`: no route matched.
    pub fn none() -> Self {
        static NONE: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("-"));
        IngressName(NONE.clone())
    }
}

impl EncodeLabelValue for IngressName {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&&*self.0, encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `namespace/name` of the Ingress, or `-` when no route matched.
    pub ingress: IngressName,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IngressLabel {
    pub ingress: IngressName,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    pub ingress: IngressName,
    /// `connect`, `timeout`, `protocol`, `no_endpoints`.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub ingress: IngressName,
    /// `allow`, `deny` or `redirect`.
    pub decision: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `success` or `failure`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    pub listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SeverityLabel {
    pub severity: &'static str,
}

/// Every metric the gateway exports.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<IngressLabel, Histogram, fn() -> Histogram>,
    pub upstream_errors: Family<UpstreamErrorLabels, Counter>,
    pub reloads: Family<ResultLabel, Counter>,
    pub active_connections: Family<ListenerLabel, Gauge>,
    pub refused_connections: Family<ListenerLabel, Counter>,
    pub parked_connections: Family<ListenerLabel, Gauge>,
    pub config_problems: Family<SeverityLabel, Gauge>,
    pub decisions: Family<DecisionLabels, Counter>,
    pub rate_limited: Family<IngressLabel, Counter>,
    pub audit_dropped: Counter,
    pub redis_fallbacks: Counter,
    pub redis_up: Gauge,
    /// The series most requests update, per Ingress; see [`Metrics::record_request`].
    usual: RwLock<HashMap<IngressName, Arc<Usual>, foldhash::fast::RandomState>>,
}

/// An Ingress's series that most of its requests update, shared with the families:
/// found with one lookup on a fast hash instead of three on SipHash (each hashes a
/// whole label set). Each is made on first use, so no series appears before its first
/// request, as with the families alone.
#[derive(Default)]
struct Usual {
    duration: OnceLock<Histogram>,
    /// `requests{status="200"}`.
    ok: OnceLock<Counter>,
    /// `access_decisions{decision="allow",reason="allowed"}`.
    allowed: OnceLock<Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("portcullis");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by Ingress and status",
            requests.clone(),
        );
        let request_duration: Family<IngressLabel, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0005, 2.5, 14)));
        registry.register(
            "request_duration_seconds",
            "Time from request head to response head, by Ingress",
            request_duration.clone(),
        );
        let upstream_errors = Family::<UpstreamErrorLabels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Requests that failed at the backend, by kind",
            upstream_errors.clone(),
        );
        let reloads = Family::<ResultLabel, Counter>::default();
        registry.register("reloads", "Configuration reloads, by result", reloads.clone());
        let active_connections = Family::<ListenerLabel, Gauge>::default();
        registry.register(
            "active_connections",
            "Open client connections, by listener",
            active_connections.clone(),
        );
        let refused_connections = Family::<ListenerLabel, Counter>::default();
        registry.register(
            "refused_connections",
            "Client connections closed at once because their address already holds limits.maxConnectionsPerClient",
            refused_connections.clone(),
        );
        let parked_connections = Family::<ListenerLabel, Gauge>::default();
        registry.register(
            "parked_connections",
            "Idle HTTP/1.1 keep-alive client connections holding no HTTP buffers, by listener",
            parked_connections.clone(),
        );
        let config_problems = Family::<SeverityLabel, Gauge>::default();
        registry.register(
            "config_problems",
            "Problems in the current configuration, by severity",
            config_problems.clone(),
        );
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "access_decisions",
            "Access decisions, by Ingress, decision and reason",
            decisions.clone(),
        );
        let rate_limited = Family::<IngressLabel, Counter>::default();
        registry.register(
            "rate_limited",
            "Requests refused by a rate or connection limit, by Ingress",
            rate_limited.clone(),
        );
        let audit_dropped = Counter::default();
        registry.register(
            "audit_dropped",
            "Audit events dropped because the writer fell behind",
            audit_dropped.clone(),
        );
        registry.register(
            "log_dropped",
            "Log lines dropped because stderr was not read fast enough",
            crate::logging::dropped_total(),
        );
        let redis_fallbacks = Counter::default();
        registry.register(
            "rate_limit_redis_fallbacks",
            "Rate-limit checks counted locally because Redis did not answer",
            redis_fallbacks.clone(),
        );
        let redis_up = Gauge::default();
        registry.register(
            "rate_limit_redis_up",
            "1 while Redis answers rate-limit checks (0 while counting locally)",
            redis_up.clone(),
        );
        Metrics {
            registry,
            redis_fallbacks,
            redis_up,
            decisions,
            rate_limited,
            audit_dropped,
            requests,
            request_duration,
            upstream_errors,
            reloads,
            active_connections,
            refused_connections,
            parked_connections,
            config_problems,
            usual: RwLock::default(),
        }
    }

    /// Counts an answered request: its status, the access decision, and the time to
    /// the response head.
    pub fn record_request(
        &self,
        ingress: IngressName,
        status: u16,
        (decision, reason): (&'static str, &'static str),
        seconds: f64,
    ) {
        let usual = self.usual(&ingress);
        usual
            .duration
            .get_or_init(|| {
                self.request_duration
                    .get_or_create(&IngressLabel {
                        ingress: ingress.clone(),
                    })
                    .clone()
            })
            .observe(seconds);
        let requests = || RequestLabels {
            ingress: ingress.clone(),
            status,
        };
        if status == 200 {
            usual
                .ok
                .get_or_init(|| self.requests.get_or_create(&requests()).clone())
                .inc();
        } else {
            self.requests.get_or_create(&requests()).inc();
        }
        let decisions = || DecisionLabels {
            ingress: ingress.clone(),
            decision,
            reason,
        };
        if (decision, reason) == ("allow", "allowed") {
            usual
                .allowed
                .get_or_init(|| self.decisions.get_or_create(&decisions()).clone())
                .inc();
        } else {
            self.decisions.get_or_create(&decisions()).inc();
        }
    }

    fn usual(&self, ingress: &IngressName) -> Arc<Usual> {
        let found = self
            .usual
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(ingress)
            .cloned();
        found.unwrap_or_else(|| {
            self.usual
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .entry(ingress.clone())
                .or_default()
                .clone()
        })
    }

    /// Prometheus text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> IngressName {
        IngressName(Arc::from(text))
    }

    #[test]
    fn requests_are_counted_by_ingress_status_and_decision() {
        let metrics = Metrics::new();
        for _ in 0..3 {
            metrics.record_request(name("ns/web"), 200, ("allow", "allowed"), 0.001);
        }
        metrics.record_request(name("ns/web"), 503, ("deny", "no_endpoints"), 0.002);
        metrics.record_request(name("ns/admin"), 403, ("deny", "group_not_allowed"), 0.001);
        metrics.record_request(IngressName::none(), 404, ("deny", "no_route"), 0.001);
        let text = metrics.encode();
        for line in [
            r#"portcullis_requests_total{ingress="ns/web",status="200"} 3"#,
            r#"portcullis_requests_total{ingress="ns/web",status="503"} 1"#,
            r#"portcullis_requests_total{ingress="ns/admin",status="403"} 1"#,
            r#"portcullis_requests_total{ingress="-",status="404"} 1"#,
            r#"portcullis_access_decisions_total{ingress="ns/web",decision="allow",reason="allowed"} 3"#,
            r#"portcullis_access_decisions_total{ingress="ns/web",decision="deny",reason="no_endpoints"} 1"#,
            r#"portcullis_access_decisions_total{ingress="ns/admin",decision="deny",reason="group_not_allowed"} 1"#,
            r#"portcullis_request_duration_seconds_count{ingress="ns/web"} 4"#,
            r#"portcullis_request_duration_seconds_count{ingress="ns/admin"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
        // No series before its first request: ns/admin was never allowed nor answered 200.
        assert!(!text.contains(r#"ingress="ns/admin",status="200""#), "{text}");
        assert!(!text.contains(r#"ingress="ns/admin",decision="allow""#), "{text}");
    }
}
