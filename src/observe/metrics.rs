//! `apply --watch --metrics-addr ADDR:PORT`: Prometheus metrics on
//! `/metrics` and health on `/healthz`, the way kube-proxy serves them
//! (`:10249/metrics`, `:10256/healthz`).
//!
//! `/metrics` is OpenMetrics text (prometheus-client): the watch loop's own
//! counters, kept as it runs, and the datapath's, read from the pinned maps
//! at each scrape (decisions per reason, connects per service, map fill).
//! `/healthz` answers 200 once the loop has applied its initial list and
//! every cgroup program is attached to the recorded cgroup, 503 with the
//! reason otherwise; /livez 200 while the programs are attached. The server
//! (src/observe/http.rs) binds only the address given.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::Result;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::datapath::state::{CGROUP_PROGS, State};
use crate::observe::http::{self, Reply, Routes};

type Labels = Vec<(&'static str, String)>;

/// What the watch loop reports as it runs.
#[derive(Debug)]
pub struct WatchMetrics {
    events: Family<Labels, Counter>,
    change_seconds: Histogram,
    last_sync: Gauge<f64, AtomicU64>,
    objects: Family<Labels, Gauge>,
    caught_up: AtomicBool,
    /// The agent's last API error: when, why, and for how long /healthz
    /// reports it.
    api: std::sync::Mutex<Option<(std::time::Instant, String, std::time::Duration)>>,
    api_errors: Family<Labels, Counter>,
    lists: Family<Labels, Counter>,
    last_queued: Gauge<f64, AtomicU64>,
    programming: Histogram,
    not_served: Family<Labels, Counter>,
}

impl Default for WatchMetrics {
    fn default() -> Self {
        WatchMetrics {
            events: Family::default(),
            // 100 µs to about 3 s.
            change_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            last_sync: Gauge::default(),
            objects: Family::default(),
            caught_up: AtomicBool::new(false),
            api: std::sync::Mutex::new(None),
            api_errors: Family::default(),
            lists: Family::default(),
            last_queued: Gauge::default(),
            not_served: Family::default(),
            // 10 ms to about 20 min, as kube-proxy's buckets span.
            programming: Histogram::new(exponential_buckets(0.01, 2.0, 18)),
        }
    }
}

impl WatchMetrics {
    /// One event, applied or refused. `kind`: Service, EndpointSlice, or
    /// what else the stream held.
    pub fn event(&self, kind: &str, applied: bool) {
        let result = if applied { "applied" } else { "failed" };
        self.events
            .get_or_create(&vec![("kind", kind.to_string()), ("result", result.into())])
            .inc();
    }

    /// One change written, in `seconds`.
    pub fn change(&self, seconds: f64) {
        self.change_seconds.observe(seconds);
        self.last_sync.set(crate::model::time::unix_now());
    }

    /// An event arrived.
    pub fn queued(&self) {
        self.last_queued.set(crate::model::time::unix_now());
    }

    /// An endpoint change that began `seconds` ago is in the maps.
    pub fn programmed(&self, seconds: f64) {
        self.programming.observe(seconds);
    }

    /// The objects the loop holds.
    pub fn held(&self, services: usize, slices: usize) {
        for (kind, n) in [("Service", services), ("EndpointSlice", slices)] {
            self.objects
                .get_or_create(&vec![("kind", kind.to_string())])
                .set(n as i64);
        }
    }

    /// The loop has applied everything it had read, and nothing waits.
    pub fn caught_up(&self) {
        self.caught_up.store(true, Ordering::Relaxed);
    }

    /// The agent's request for `resource` failed (`why`): /healthz says so
    /// for `window` unless another error comes.
    pub fn api_error(&self, resource: &str, why: String, window: std::time::Duration) {
        self.api_errors
            .get_or_create(&vec![("resource", resource.to_string())])
            .inc();
        *self.api.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((std::time::Instant::now(), why, window));
    }

    /// The agent starts a full list of `resource` (its start, or a 410
    /// Gone).
    pub fn listed(&self, resource: &str) {
        self.lists
            .get_or_create(&vec![("resource", resource.to_string())])
            .inc();
    }

    /// Part of a Service is not served, said the first time (`reason`).
    pub fn not_served(&self, reason: &str) {
        self.not_served
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc();
    }

    fn api_trouble(&self) -> Option<String> {
        let api = self.api.lock().unwrap_or_else(|p| p.into_inner());
        api.as_ref()
            .and_then(|(at, why, window)| (at.elapsed() < *window).then(|| why.clone()))
    }

    fn register(self: &Arc<Self>, r: &mut Registry) {
        r.register(
            "netnsxl_agent_api_errors",
            "Failed requests to the API server by resource (netnsxl agent); each is retried",
            self.api_errors.clone(),
        );
        r.register(
            "netnsxl_agent_lists",
            "Full lists by resource (netnsxl agent): one at the start, one per 410 Gone",
            self.lists.clone(),
        );
        r.register(
            "netnsxl_watch_events",
            "Watch events by object kind and result (applied, or failed and changed nothing)",
            self.events.clone(),
        );
        r.register(
            "netnsxl_watch_change_duration_seconds",
            "Time to plan and write one change (a batch of waiting events)",
            self.change_seconds.clone(),
        );
        r.register(
            "netnsxl_watch_last_sync_timestamp_seconds",
            "Unix time of the last change written",
            self.last_sync.clone(),
        );
        r.register(
            "netnsxl_watch_last_queued_timestamp_seconds",
            "Unix time of the last event received (kube-proxy's sync_proxy_rules_last_queued_timestamp_seconds)",
            self.last_queued.clone(),
        );
        r.register(
            "netnsxl_network_programming_duration_seconds",
            "From an EndpointSlice's endpoints.kubernetes.io/last-change-trigger-time to its change in the maps (kube-proxy's network_programming_duration_seconds)",
            self.programming.clone(),
        );
        r.register(
            "netnsxl_watch_not_served",
            "Parts of Services not served (ExternalName, headless, SCTP ports, ipMode Proxy ingress), counted once each",
            self.not_served.clone(),
        );
        r.register(
            "netnsxl_watch_objects",
            "Kubernetes objects the watch holds, by kind",
            self.objects.clone(),
        );
    }
}

/// The datapath's counters and the maps' fill, read at each scrape.
#[derive(Debug)]
struct Datapath {
    pin_dir: PathBuf,
}

fn encode_counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    let mut fam = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        ConstCounter::new(*v).encode(fam.encode_family(labels)?)?;
    }
    Ok(())
}

fn encode_gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, i64)],
) -> Result<(), std::fmt::Error> {
    let mut fam = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    match rows {
        [(labels, v)] if labels.is_empty() => ConstGauge::new(*v).encode(fam)?,
        _ => {
            for (labels, v) in rows {
                ConstGauge::new(*v).encode(fam.encode_family(labels)?)?;
            }
        }
    }
    Ok(())
}

impl Collector for Datapath {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // A scrape while the pins are gone (detached) shows up = 0.
        let read = State::open(&self.pin_dir).and_then(|state| {
            let stats = crate::observe::stats::read_stats(&state)?;
            let fill = crate::observe::status::map_fill(&state)?;
            Ok((stats, fill))
        });
        let up = [(vec![], i64::from(read.is_ok()))];
        encode_gauge(
            &mut enc,
            "netnsxl_datapath_up",
            "1 when the pinned maps could be read",
            &up,
        )?;
        let Ok((stats, fill)) = read else {
            return Ok(());
        };
        let reasons: Vec<(Labels, u64)> = stats
            .reasons
            .iter()
            .map(|(r, v)| (vec![("reason", r.clone())], *v))
            .collect();
        encode_counter(
            &mut enc,
            "netnsxl_datapath_decisions",
            "Datapath decisions by reason (netnsxl stats)",
            &reasons,
        )?;
        let svc_labels = |s: &crate::observe::stats::SvcCounters| -> Labels {
            vec![
                ("service", s.name.clone()),
                ("type", s.svc_type.clone()),
                ("frontend", s.frontend.clone()),
                ("proto", s.proto.to_string()),
            ]
        };
        let translated: Vec<(Labels, u64)> = stats
            .services
            .iter()
            .map(|s| (svc_labels(s), s.translated))
            .collect();
        encode_counter(
            &mut enc,
            "netnsxl_service_translated",
            "Connects and datagrams sent to a backend, per service frontend",
            &translated,
        )?;
        let refused: Vec<(Labels, u64)> = stats
            .services
            .iter()
            .map(|s| (svc_labels(s), s.refused))
            .collect();
        encode_counter(
            &mut enc,
            "netnsxl_service_refused",
            "Connects refused for want of a usable backend, per service frontend",
            &refused,
        )?;
        let used: Vec<(Labels, i64)> = fill
            .iter()
            .map(|(m, u, _)| (vec![("map", m.clone())], *u as i64))
            .collect();
        encode_gauge(
            &mut enc,
            "netnsxl_map_entries",
            "Elements in each map",
            &used,
        )?;
        let cap: Vec<(Labels, i64)> = fill
            .iter()
            .map(|(m, _, c)| (vec![("map", m.clone())], i64::from(*c)))
            .collect();
        encode_gauge(
            &mut enc,
            "netnsxl_map_capacity",
            "Capacity of each map (attach --max-*)",
            &cap,
        )
    }
}

/// 503 and why when a program is not attached to the recorded cgroup.
fn attached(pin_dir: &std::path::Path) -> std::result::Result<(), String> {
    let state = State::open(pin_dir).map_err(|e| format!("cannot open the pinned state: {e:#}"))?;
    let cgroup_id = state
        .config()
        .map_err(|e| format!("cannot read config_map: {e:#}"))?
        .cgroup_id;
    let missing: Vec<&str> = CGROUP_PROGS
        .iter()
        .copied()
        .filter(|p| !crate::observe::status::link_attached(&state, cgroup_id, p))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "not attached to the recorded cgroup: {} (run netnsxl status; netnsxl attach repairs it)",
            missing.join(", ")
        ));
    }
    Ok(())
}

/// /healthz (readiness): 200 "ok" once the initial list is applied, the
/// API server answers (for the agent) and every program is attached; else
/// 503 and why.
fn health(pin_dir: &std::path::Path, watch: &WatchMetrics) -> Reply {
    if !watch.caught_up.load(Ordering::Relaxed) {
        return Reply::text(503, "the watch has not applied its initial list yet\n");
    }
    if let Some(why) = watch.api_trouble() {
        return Reply::text(
            503,
            format!("{why}; the maps keep their last state and the datapath serves it\n"),
        );
    }
    match attached(pin_dir) {
        Ok(()) => Reply::text(200, "ok\n"),
        Err(why) => Reply::text(503, format!("{why}\n")),
    }
}

/// /livez (liveness): 200 while every program is attached, whatever the
/// API server does: restarting the agent would not bring it back.
fn live(pin_dir: &std::path::Path) -> Reply {
    match attached(pin_dir) {
        Ok(()) => Reply::text(200, "ok\n"),
        Err(why) => Reply::text(503, format!("{why}\n")),
    }
}

/// The routes of the health listener: /healthz and /livez, nothing that
/// names a service (it listens where the kubelet's probes reach it).
pub fn health_routes(pin_dir: PathBuf, watch: Arc<WatchMetrics>) -> Routes {
    Arc::new(move |path: &str| match path {
        "/healthz" => health(&pin_dir, &watch),
        "/livez" => live(&pin_dir),
        _ => Reply::text(404, "not found: GET /healthz or /livez\n"),
    })
}

/// The routes of the metrics listener: /metrics, and /healthz and /livez
/// as on the health listener.
pub fn metrics_routes(pin_dir: PathBuf, watch: Arc<WatchMetrics>) -> Routes {
    let mut registry = Registry::default();
    watch.register(&mut registry);
    registry.register_collector(Box::new(Datapath {
        pin_dir: pin_dir.clone(),
    }));
    let health = health_routes(pin_dir, watch);
    Arc::new(move |path: &str| match path {
        "/metrics" => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, &registry) {
                Ok(()) => Reply {
                    code: 200,
                    content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    body,
                },
                Err(e) => Reply::text(500, format!("encode: {e}\n")),
            }
        }
        "/healthz" | "/livez" => health(path),
        _ => Reply::text(404, "not found: GET /metrics, /healthz or /livez\n"),
    })
}

/// `apply --watch --metrics-addr`: bind now (a bad address fails the
/// command), serve from a thread of its own.
pub fn serve(addr: SocketAddr, pin_dir: PathBuf, watch: Arc<WatchMetrics>) -> Result<()> {
    let l = http::bind(addr, "--metrics-addr")?;
    http::serve_on_thread(vec![(l, metrics_routes(pin_dir, watch))])
}
