//! `netnsxl agent`: the node agent as one process. It follows Services,
//! EndpointSlices and this node's Node through an in-process Kubernetes
//! client (kube-rs' watcher) and feeds the same loop as `apply --watch`
//! (src/control/watch.rs), so everything that loop guarantees holds here:
//! a bad object keeps its last good version, events are batched, a restart
//! never drops a live service, nothing is pruned by timing.
//!
//! - **Resumes, never relists by itself.** A watch the API server closes
//!   (every 5-10 minutes by default) is resumed from its resourceVersion,
//!   kept current by bookmarks. Only a 410 Gone (the version is too old)
//!   or a restart of the agent lists again.
//! - **A list is exact.** A list is framed by `Input::ListStart` and
//!   `Input::ListDone`: whatever of that kind the loop held (or an earlier
//!   run wrote) and the list lacks is deleted, so an object deleted while
//!   no watch ran does not survive the relist.
//! - **Losing the API server changes nothing.** Errors are retried with a
//!   backoff (0.5 s doubling to 8 s, with jitter); the maps keep their last
//!   state and the datapath serves it; /healthz says 503 and why until the
//!   errors stop.
//! - **kube-proxy's selection.** Services and EndpointSlices labelled
//!   `service.kubernetes.io/service-proxy-name` (another proxy's) or
//!   `service.kubernetes.io/headless` are not asked for, with the label
//!   selector kube-proxy uses.
//! - The Node is read with a GET (RBAC `get` on nodes, as before) at the
//!   start and at every relist of Services: its zone label drives topology
//!   hints and changes rarely.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ApiResource};
use kube::runtime::utils::Backoff;
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};

use crate::control::apply::ApplyOpts;
use crate::control::watch::{self, BATCH_EVENTS, Input, Listed, Progress};
use crate::datapath::state::State;
use crate::observe::http;
use crate::observe::metrics::{self, WatchMetrics};

/// kube-proxy's label selector for Services and EndpointSlices.
pub const LABEL_SELECTOR: &str =
    "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

/// How long after the last API error /healthz still reports it: longer
/// than the longest backoff, so a server that stays down stays reported.
const TROUBLE_WINDOW: Duration = Duration::from_secs(15);

/// What `netnsxl agent` is given.
pub struct AgentOpts {
    /// The API server's URL, over what the kubeconfig or the in-cluster
    /// environment says.
    pub api_server: Option<String>,
    pub apply: ApplyOpts,
    /// /metrics, /healthz, /livez.
    pub metrics_addr: Option<SocketAddr>,
    /// /healthz and /livez only.
    pub health_addr: Option<SocketAddr>,
}

/// Where the client's configuration comes from: `KUBECONFIG` (or
/// ~/.kube/config) first, as kubectl, then the pod's service account;
/// `--api-server` replaces the address either gives, or stands alone
/// (no credentials) when there is neither.
async fn client(api_server: Option<&str>) -> Result<kube::Client> {
    let url = api_server
        .map(|u| {
            u.parse::<::http::Uri>().map_err(|e| {
                anyhow!("--api-server {u:?} is not a URL ({e}): use e.g. https://192.0.2.10:6443")
            })
        })
        .transpose()?;
    let mut cfg = match (kube::Config::infer().await, &url) {
        (Ok(c), _) => c,
        (Err(_), Some(u)) => kube::Config::new(u.clone()),
        (Err(e), None) => {
            return Err(anyhow!(
                "find the API server: {e}; set KUBECONFIG, run in a pod with a service account, or give --api-server"
            ));
        }
    };
    if let Some(u) = url {
        cfg.cluster_url = u;
    }
    // A watch idle for longer than this is dropped and resumed.
    cfg.read_timeout = Some(Duration::from_secs(330));
    cfg.connect_timeout = Some(Duration::from_secs(10));
    kube::Client::try_from(cfg).context("build the Kubernetes client")
}

/// 0.5 s doubling to 8 s, with up to 25 % jitter so nodes do not retry in
/// step; reset after a success.
struct Retry {
    next: Duration,
    seed: u64,
}

impl Retry {
    const FIRST: Duration = Duration::from_millis(500);
    const MOST: Duration = Duration::from_secs(8);

    fn new() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.subsec_nanos() as u64 | 1);
        Retry {
            next: Self::FIRST,
            seed,
        }
    }
}

impl Iterator for Retry {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        // xorshift: jitter only, nothing depends on its quality.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let base = self.next;
        self.next = (self.next * 2).min(Self::MOST);
        let jitter = base.mul_f64((self.seed % 1000) as f64 / 4000.0);
        Some(base + jitter)
    }
}

impl Backoff for Retry {
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// What the watcher tasks share.
struct Shared {
    tx: SyncSender<Input>,
    node_name: String,
    /// Events numbered as they arrive, over every kind.
    n: AtomicUsize,
    metrics: Arc<WatchMetrics>,
    /// The last API error and when, for /healthz.
    trouble: Mutex<Option<(Instant, String)>>,
}

impl Shared {
    /// Hand one input to the loop; false when the loop is gone.
    fn send(&self, input: Input) -> bool {
        use std::sync::mpsc::TrySendError;
        match self.tx.try_send(input) {
            Ok(()) => true,
            Err(TrySendError::Disconnected(_)) => false,
            // The channel is bounded: a full one holds this watcher back,
            // which is the point; block_in_place lets the runtime's other
            // tasks run meanwhile.
            Err(TrySendError::Full(input)) => {
                tokio::task::block_in_place(|| self.tx.send(input).is_ok())
            }
        }
    }

    fn event(&self, ty: &str, object: Value) -> bool {
        let n = self.n.fetch_add(1, Ordering::Relaxed) + 1;
        let ev = json!({"type": ty, "object": object});
        self.send(Input::of(&ev, n, &self.node_name))
    }

    fn failed(&self, what: &str, e: &dyn std::fmt::Display) {
        let mut t = self.trouble.lock().unwrap_or_else(|p| p.into_inner());
        let first = t.is_none();
        let since = t.as_ref().map_or_else(Instant::now, |(s, _)| *s);
        let msg = format!("requests to the API server fail ({what}): {e}");
        if first {
            eprintln!("netnsxl: {msg}; retrying, the maps keep their last state");
        }
        self.metrics.api_error(what, msg.clone(), TROUBLE_WINDOW);
        *t = Some((since, msg));
    }

    fn succeeded(&self) {
        let mut t = self.trouble.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((since, _)) = t.take() {
            eprintln!(
                "netnsxl: the API server answers again (after {:.0} s of errors)",
                since.elapsed().as_secs_f64()
            );
        }
    }
}

/// An object as the API server sent it: its JSON as a plain Value (the
/// loop's decoder reads that), and the little of its metadata the watcher
/// needs (resourceVersion, name, namespace). Cheaper than DynamicObject,
/// whose flattened fields make serde buffer every object twice.
#[derive(Clone, Debug)]
struct Raw {
    meta: ObjectMeta,
    body: Value,
}

impl<'de> serde::Deserialize<'de> for Raw {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let body = Value::deserialize(d)?;
        let m = &body["metadata"];
        let text = |k: &str| m[k].as_str().map(str::to_string);
        let meta = ObjectMeta {
            name: text("name"),
            namespace: text("namespace"),
            resource_version: text("resourceVersion"),
            ..ObjectMeta::default()
        };
        Ok(Raw { meta, body })
    }
}

impl kube::Resource for Raw {
    type DynamicType = ApiResource;
    type Scope = kube::core::DynamicResourceScope;

    fn kind(dt: &ApiResource) -> Cow<'_, str> {
        dt.kind.as_str().into()
    }
    fn group(dt: &ApiResource) -> Cow<'_, str> {
        dt.group.as_str().into()
    }
    fn version(dt: &ApiResource) -> Cow<'_, str> {
        dt.version.as_str().into()
    }
    fn api_version(dt: &ApiResource) -> Cow<'_, str> {
        dt.api_version.as_str().into()
    }
    fn plural(dt: &ApiResource) -> Cow<'_, str> {
        dt.plural.as_str().into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.meta
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.meta
    }
}

/// An object as the loop's decoder takes it: with apiVersion and kind
/// (list items come without them).
fn object_value(obj: Raw, ar: &ApiResource) -> Value {
    let mut v = obj.body;
    if let Value::Object(m) = &mut v {
        m.insert("apiVersion".into(), Value::String(ar.api_version.clone()));
        m.insert("kind".into(), Value::String(ar.kind.clone()));
    }
    v
}

/// Follow one kind of object for ever.
async fn follow(client: kube::Client, ar: ApiResource, kind: Listed, sh: Arc<Shared>) {
    let api: Api<Raw> = Api::all_with(client.clone(), &ar);
    let cfg = watcher::Config::default().labels(LABEL_SELECTOR);
    let mut stream = watcher::watcher(api, cfg).backoff(Retry::new()).boxed();
    let what = kind.resource();
    while let Some(r) = stream.next().await {
        let ok = match r {
            Ok(watcher::Event::Init) => {
                sh.succeeded();
                sh.metrics.listed(kind.kind());
                if kind == Listed::Service {
                    read_node(&client, &sh).await;
                }
                sh.send(Input::ListStart(kind))
            }
            Ok(watcher::Event::InitApply(o) | watcher::Event::Apply(o)) => {
                sh.succeeded();
                sh.event("ADDED", object_value(o, &ar))
            }
            Ok(watcher::Event::Delete(o)) => {
                sh.succeeded();
                sh.event("DELETED", object_value(o, &ar))
            }
            Ok(watcher::Event::InitDone) => sh.send(Input::ListDone(kind)),
            // The API server no longer keeps the version the watch resumed
            // from: the watcher lists again. Normal, not a fault.
            Err(watcher::Error::WatchError(s)) if s.code == 410 => {
                eprintln!(
                    "netnsxl: {what}: the API server no longer has our resourceVersion (410 Gone); listing again"
                );
                true
            }
            Err(e) => {
                sh.failed(what, &e);
                true
            }
        };
        if !ok {
            return;
        }
    }
}

/// This node's Node object, for its zone label. A failure keeps the zone.
async fn read_node(client: &kube::Client, sh: &Shared) {
    let ar = ApiResource::erase::<k8s_openapi::api::core::v1::Node>(&());
    let api: Api<Raw> = Api::all_with(client.clone(), &ar);
    match api.get_opt(&sh.node_name).await {
        Ok(Some(node)) => {
            sh.event("ADDED", object_value(node, &ar));
        }
        Ok(None) => eprintln!(
            "netnsxl: no Node named {:?} (--node-name): the zone stays as it is",
            sh.node_name
        ),
        Err(e) => sh.failed("nodes", &e),
    }
}

/// Run the agent until it is killed: bind the HTTP listeners, connect, and
/// keep the maps in step.
pub fn run(state: &State, pin_dir: &Path, opts: AgentOpts) -> Result<()> {
    let watch_metrics = Arc::new(WatchMetrics::default());
    let mut listeners = Vec::new();
    if let Some(a) = opts.metrics_addr {
        listeners.push((
            http::bind(a, "--metrics-addr")?,
            metrics::metrics_routes(pin_dir.to_path_buf(), watch_metrics.clone()),
        ));
    }
    if let Some(a) = opts.health_addr {
        listeners.push((
            http::bind(a, "--health-addr")?,
            metrics::health_routes(pin_dir.to_path_buf(), watch_metrics.clone()),
        ));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("netnsxl-agent")
        .enable_all()
        .build()
        .context("start the agent's runtime")?;
    let client = rt.block_on(client(opts.api_server.as_deref()))?;
    let limits = http::Limits::for_this_process();
    for (l, routes) in listeners {
        rt.spawn(http::serve(l, routes, limits));
    }
    let (tx, rx) = std::sync::mpsc::sync_channel::<Input>(BATCH_EVENTS / 4);
    let shared = Arc::new(Shared {
        tx,
        node_name: opts.apply.node_name.clone(),
        n: AtomicUsize::new(0),
        metrics: watch_metrics.clone(),
        trouble: Mutex::new(None),
    });
    let service = ApiResource::erase::<k8s_openapi::api::core::v1::Service>(&());
    let slice = ApiResource::erase::<k8s_openapi::api::discovery::v1::EndpointSlice>(&());
    rt.spawn(follow(
        client.clone(),
        service,
        Listed::Service,
        shared.clone(),
    ));
    rt.spawn(follow(client, slice, Listed::EndpointSlice, shared.clone()));
    drop(shared);
    let mut on = |p: Progress| progress(&watch_metrics, p);
    // Ready once both first lists are in, not after the first alone.
    let lists = [Listed::Service, Listed::EndpointSlice];
    let summary = watch::run(state, rx, &opts.apply, &lists, &mut on)?;
    Err(anyhow!(
        "the watchers ended after {} events; the maps keep their last state",
        summary.events
    ))
}

/// What the watch loop reports, to the metrics (the agent's and
/// `apply --watch --metrics-addr`'s).
pub fn progress(m: &WatchMetrics, p: Progress) {
    match p {
        Progress::Event { kind, applied } => m.event(kind, applied),
        Progress::Change { seconds } => m.change(seconds),
        Progress::Held { services, slices } => m.held(services, slices),
        Progress::CaughtUp => m.caught_up(),
        Progress::Queued => m.queued(),
        Progress::Programmed { seconds } => m.programmed(seconds),
        Progress::NotServed { reason } => m.not_served(reason),
    }
}
