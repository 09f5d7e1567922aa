//! The router's Prometheus families (prefix `tern_router_`), registered into the registry of
//! the [`tern_telemetry::Metrics`] the router serves on /metrics (beside process resources).

use std::time::Duration;

use prometheus::{CounterVec, GaugeVec, Histogram, HistogramOpts, HistogramVec, Opts, Registry};

/// Upstream latency buckets, seconds: 50 µs to 10 s.
const LATENCY_BUCKETS_S: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];
const LAZY_LOAD_BUCKETS_S: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

pub struct RouterMetrics {
    requests: CounterVec,
    upstream_latency: HistogramVec,
    retries: CounterVec,
    node_healthy: GaugeVec,
    node_outstanding: GaugeVec,
    placements: CounterVec,
    placement_failures: CounterVec,
    evictions: CounterVec,
    lazy_load: Histogram,
    desired_models: GaugeVec,
    placement_leader: prometheus::Gauge,
}

impl RouterMetrics {
    /// Creates the families and registers them into `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<RouterMetrics> {
        let m = RouterMetrics::unregistered();
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.upstream_latency.clone()))?;
        registry.register(Box::new(m.retries.clone()))?;
        registry.register(Box::new(m.node_healthy.clone()))?;
        registry.register(Box::new(m.node_outstanding.clone()))?;
        registry.register(Box::new(m.placements.clone()))?;
        registry.register(Box::new(m.placement_failures.clone()))?;
        registry.register(Box::new(m.evictions.clone()))?;
        registry.register(Box::new(m.lazy_load.clone()))?;
        registry.register(Box::new(m.desired_models.clone()))?;
        registry.register(Box::new(m.placement_leader.clone()))?;
        Ok(m)
    }

    /// The families without a registry (tests, and the fallback if registration fails).
    pub fn unregistered() -> RouterMetrics {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            CounterVec::new(Opts::new(name, help), labels).expect("valid counter")
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            GaugeVec::new(Opts::new(name, help), labels).expect("valid gauge")
        };
        RouterMetrics {
            requests: counter(
                "tern_router_requests_total",
                "Inference requests answered by the router, by model and gRPC status code",
                &["model", "code"],
            ),
            upstream_latency: HistogramVec::new(
                HistogramOpts::new(
                    "tern_router_upstream_latency_seconds",
                    "Time from forwarding an inference request to a node to its reply, by node",
                )
                .buckets(LATENCY_BUCKETS_S.to_vec()),
                &["node"],
            )
            .expect("valid histogram"),
            retries: counter(
                "tern_router_retries_total",
                "Inference requests retried on another replica after a node failed them",
                &["model"],
            ),
            placement_leader: prometheus::Gauge::new(
                "tern_router_placement_leader",
                "1 while this router makes placement decisions (always with the memory store; with etcd, the elected leader)",
            )
            .expect("valid gauge"),
            desired_models: gauge(
                "tern_router_desired_models",
                "Models an operator pinned (--load-model, RepositoryModelLoad) or unloaded, as this router sees them (with etcd: every router's)",
                &["state"],
            ),
            node_healthy: gauge(
                "tern_router_node_healthy",
                "1 when the node is in the routing table",
                &["node"],
            ),
            node_outstanding: gauge(
                "tern_router_node_outstanding_requests",
                "Requests the router has outstanding on the node (at the last health check)",
                &["node"],
            ),
            placements: counter(
                "tern_router_placements_total",
                "Model loads the router asked of nodes (replicas, lazy loads, repository loads)",
                &["model"],
            ),
            placement_failures: counter(
                "tern_router_placement_failures_total",
                "Model loads asked of nodes that failed",
                &["model"],
            ),
            evictions: counter(
                "tern_router_evictions_total",
                "Idle models unloaded from a node to bring it back within its memory budget",
                &["model"],
            ),
            lazy_load: Histogram::with_opts(
                HistogramOpts::new(
                    "tern_router_lazy_load_duration_seconds",
                    "How long requests waited for their model to be loaded on first use",
                )
                .buckets(LAZY_LOAD_BUCKETS_S.to_vec()),
            )
            .expect("valid histogram"),
        }
    }

    /// One inference request answered with `code`; `model`: the label from
    /// [`crate::nodes::Cluster::metric_label`] ("" for names the cluster does not know).
    pub fn request(&self, model: &str, code: tonic::Code) {
        let model = if code == tonic::Code::NotFound { "" } else { model };
        self.requests.with_label_values(&[model, code_name(code)]).inc();
    }

    pub fn upstream(&self, node: &str, elapsed: Duration) {
        self.upstream_latency.with_label_values(&[node]).observe(elapsed.as_secs_f64());
    }

    pub fn retry(&self, model: &str) {
        self.retries.with_label_values(&[model]).inc();
    }

    pub fn node_health(&self, node: &str, healthy: bool, outstanding: u64) {
        self.node_healthy.with_label_values(&[node]).set(if healthy { 1.0 } else { 0.0 });
        self.node_outstanding.with_label_values(&[node]).set(outstanding as f64);
    }

    /// How many models are pinned and unloaded by operators.
    pub fn desired(&self, pinned: usize, unloaded: usize) {
        self.desired_models.with_label_values(&["pinned"]).set(pinned as f64);
        self.desired_models.with_label_values(&["unloaded"]).set(unloaded as f64);
    }

    pub fn leader(&self, leading: bool) {
        self.placement_leader.set(if leading { 1.0 } else { 0.0 });
    }

    pub fn forget_node(&self, node: &str) {
        let _ = self.node_healthy.remove_label_values(&[node]);
        let _ = self.node_outstanding.remove_label_values(&[node]);
        let _ = self.upstream_latency.remove_label_values(&[node]);
    }

    pub fn placement(&self, model: &str, ok: bool) {
        if ok {
            self.placements.with_label_values(&[model]).inc();
        } else {
            self.placement_failures.with_label_values(&[model]).inc();
        }
    }

    pub fn eviction(&self, model: &str) {
        self.evictions.with_label_values(&[model]).inc();
    }

    pub fn lazy_load(&self, elapsed: Duration) {
        self.lazy_load.observe(elapsed.as_secs_f64());
    }
}

/// gRPC status code names as grpc-go and Triton's logs spell them.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
}
