//! `apply --watch --metrics-addr ADDR:PORT`: Prometheus metrics on
//! `/metrics` and health on `/healthz`, the way kube-proxy serves them
//! (`:10249/metrics`, `:10256/healthz`).
//!
//! `/metrics` is OpenMetrics text (prometheus-client): the watch loop's own
//! counters, kept as it runs, and the datapath's, read from the pinned maps
//! at each scrape (decisions per reason, connects per service, map fill).
//! `/healthz` answers 200 once the loop has applied its initial list and
//! every cgroup program is attached to the recorded cgroup, 503 with the
//! reason otherwise. The server (tiny_http) binds only the address given.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::{Result, anyhow};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::datapath::state::{CGROUP_PROGS, State};

type Labels = Vec<(&'static str, String)>;

/// What the watch loop reports as it runs.
#[derive(Debug)]
pub struct WatchMetrics {
    events: Family<Labels, Counter>,
    change_seconds: Histogram,
    last_sync: Gauge<f64, AtomicU64>,
    objects: Family<Labels, Gauge>,
    caught_up: AtomicBool,
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
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.last_sync.set(now);
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

    fn register(self: &Arc<Self>, r: &mut Registry) {
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

/// 200 with "ok", or 503 with the reason.
fn health(pin_dir: &std::path::Path, watch: &WatchMetrics) -> (u16, String) {
    if !watch.caught_up.load(Ordering::Relaxed) {
        return (503, "the watch has not applied its initial list yet".into());
    }
    let state = match State::open(pin_dir) {
        Ok(s) => s,
        Err(e) => return (503, format!("cannot open the pinned state: {e:#}")),
    };
    let cgroup_id = match state.config() {
        Ok(c) => c.cgroup_id,
        Err(e) => return (503, format!("cannot read config_map: {e:#}")),
    };
    let missing: Vec<&str> = CGROUP_PROGS
        .iter()
        .copied()
        .filter(|p| !crate::observe::status::link_attached(&state, cgroup_id, p))
        .collect();
    if !missing.is_empty() {
        return (
            503,
            format!(
                "not attached to the recorded cgroup: {} (run netnsxl status; netnsxl attach repairs it)",
                missing.join(", ")
            ),
        );
    }
    (200, "ok".into())
}

/// Serve /metrics and /healthz on `addr` from a thread of their own. Fails
/// at once when the address cannot be bound.
pub fn serve(addr: SocketAddr, pin_dir: PathBuf, watch: Arc<WatchMetrics>) -> Result<()> {
    let server = tiny_http::Server::http(addr)
        .map_err(|e| anyhow!("--metrics-addr {addr}: cannot listen: {e}"))?;
    let mut registry = Registry::default();
    watch.register(&mut registry);
    registry.register_collector(Box::new(Datapath {
        pin_dir: pin_dir.clone(),
    }));
    std::thread::spawn(move || {
        for req in server.incoming_requests() {
            let path = req.url().split('?').next().unwrap_or("").to_string();
            let (code, body, ctype) = match (req.method(), path.as_str()) {
                (tiny_http::Method::Get, "/metrics") => {
                    let mut body = String::new();
                    match prometheus_client::encoding::text::encode(&mut body, &registry) {
                        Ok(()) => (
                            200,
                            body,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        ),
                        Err(e) => (500, format!("encode: {e}\n"), "text/plain; charset=utf-8"),
                    }
                }
                (tiny_http::Method::Get, "/healthz") => {
                    let (code, why) = health(&pin_dir, &watch);
                    (code, format!("{why}\n"), "text/plain; charset=utf-8")
                }
                _ => (
                    404,
                    "not found: GET /metrics or /healthz\n".into(),
                    "text/plain; charset=utf-8",
                ),
            };
            let mut resp = tiny_http::Response::from_string(body).with_status_code(code);
            if let Ok(h) = tiny_http::Header::from_bytes(&b"Content-Type"[..], ctype.as_bytes()) {
                resp = resp.with_header(h);
            }
            let _ = req.respond(resp);
        }
    });
    Ok(())
}
