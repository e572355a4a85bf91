//! `apply --watch`: keep the maps in step with a Kubernetes watch stream.
//!
//! Its input is what `netnsxl agent`'s watchers produce
//! (src/agent.rs), or streams of what `kubectl get services -A
//! --watch -o json --output-watch-events` (and endpointslices) prints:
//! `{"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR, "object": {...}}`, one
//! after another.
//!
//! - **Incremental.** Every object is checked and reduced once, when its
//!   event arrives, and kept in memory. An event re-plans only the Service
//!   it touches (a slice touches the Service its
//!   `kubernetes.io/service-name` label names), reading from the maps only
//!   that Service's elements, and writes only what differs, in the write
//!   engine's order (src/control/store.rs).
//! - **Batched.** The events already waiting when one is taken (up to
//!   [`BATCH_EVENTS`], or [`BATCH_TIME`] after the first) are one change: the
//!   initial list is a few large applies, and a burst of endpoint changes
//!   costs one write per Service.
//! - **A bad event changes nothing.** An object that fails its checks keeps
//!   its last good version, and its services keep serving it; the error
//!   names the event, the object, the field and the fix, and the loop goes
//!   on. A batch that cannot be written is undone and its events are applied
//!   one by one, so only the bad one is refused.
//! - **Deletes only what the stream deletes.** A Service's frontends go when
//!   the stream deletes it or changes it so that it no longer has them;
//!   silence, however long, and the end of the stream delete nothing.
//!   Services whose objects vanished while no watch ran are removed from an
//!   exact source: `apply --prune` of a full `kubectl get` list, which the
//!   unit and the DaemonSet run before the watch.
//! - **No gap on a restart.** A restarted watch first sees each Service
//!   before its slices (kubectl lists Services, then EndpointSlices). Until
//!   a Service's first slice event, a frontend the maps already serve keeps
//!   the backends it has, instead of dropping to none for the seconds the
//!   list takes.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use crate::bpf::types;
use crate::control::apply::{ApplyOpts, Identity};
use crate::control::store::{self, Current, Ids, Tx};
use crate::datapath::maps::{self, MapId};
use crate::datapath::state::State;
use crate::model::manifest::{self, Entry, K8sObject, K8sService, K8sSlice};
use crate::model::service;
use crate::model::topology::Place;

/// Most events one change takes.
pub const BATCH_EVENTS: usize = 1000;
/// How long a change waits for more events after its first.
pub const BATCH_TIME: Duration = Duration::from_millis(100);

/// How long a change waits for the reader to finish parsing a next event
/// (one event alone waits this long once).
const GRACE: Duration = Duration::from_millis(1);

/// (namespace, name) of an object.
type Key = (String, String);

/// One decoded event.
enum Change {
    Service(Key, Option<K8sService>),
    /// (namespace, slice name), the slice or None when it goes.
    Slice(Key, Option<K8sSlice>),
    /// This node's Node object, with its zone label ("" without): every
    /// Service is planned again when the zone changes (topology hints).
    Zone(String),
    /// A full list of EndpointSlices is in (the agent's watcher): every
    /// Service's slices are known now, none keeps what the maps served.
    SlicesListed,
}

/// One decoded event (see [`Input::of`]).
pub struct Event {
    n: usize,
    /// An EndpointSlice's `endpoints.kubernetes.io/last-change-trigger-time`
    /// (Unix seconds): when the change it carries began, for the network
    /// programming latency.
    trigger: Option<f64>,
    /// The object's kind, for metrics.
    kind: String,
    /// "MODIFIED EndpointSlice shop/web-a", for messages.
    what: String,
    change: Change,
}

impl Event {
    /// The kind a full list names it under, and its key.
    fn listed(&self) -> Option<(Listed, &Key)> {
        match &self.change {
            Change::Service(k, _) => Some((Listed::Service, k)),
            Change::Slice(k, _) => Some((Listed::EndpointSlice, k)),
            Change::Zone(_) | Change::SlicesListed => None,
        }
    }
}

/// What one change did, for its line in the log.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
    pub unchanged: usize,
}

/// What the loop reports as it goes (to metrics).
pub enum Progress<'a> {
    /// One event: its object's kind (Service, EndpointSlice, or what the
    /// stream said), and whether it applied.
    Event { kind: &'a str, applied: bool },
    /// One change written, in `seconds`.
    Change { seconds: f64 },
    /// The objects held after a change.
    Held { services: usize, slices: usize },
    /// Everything read is applied and nothing waits: the initial list is in.
    CaughtUp,
    /// An event arrived (kube-proxy's "last queued").
    Queued,
    /// A change that began `seconds` ago (its EndpointSlice's trigger time)
    /// is in the maps now: the network programming latency.
    Programmed { seconds: f64 },
    /// Part of a Service is not served (ExternalName, headless, SCTP,
    /// ipMode Proxy...), reported the first time it is seen.
    NotServed { reason: &'a str },
}

/// How a watch ended.
#[derive(Debug, Default)]
pub struct Summary {
    pub events: usize,
    pub failed: usize,
    pub changes: usize,
}

/// The objects a watch holds, and what their services were written as.
#[derive(Default)]
pub struct Objects {
    services: HashMap<Key, K8sService>,
    slices: HashMap<Key, K8sSlice>,
    /// (namespace, Service name) -> names of its slices.
    by_service: HashMap<Key, BTreeSet<String>>,
    /// Services that had a slice event since the watch started.
    slices_seen: HashSet<Key>,
    /// The frontends (identities) each Service was last written with.
    produced: HashMap<Key, Vec<Identity>>,
    /// This node's name and zone (attach --zone, or its Node object).
    node: String,
    zone: String,
    /// The stream sent this node's Node object: its zone is the one to keep.
    zone_from_stream: bool,
}

/// How to put one object back as it was.
enum Undo {
    Service(Key, Option<K8sService>),
    /// The slice as it was, and the Services it marked as having had a
    /// slice event.
    Slice(Key, Option<K8sSlice>, Vec<Key>),
    Zone(String),
    /// The Services SlicesListed marked.
    Marked(Vec<Key>),
}

impl Objects {
    fn set_slice(&mut self, key: Key, new: Option<K8sSlice>) -> Option<K8sSlice> {
        let old = self.slices.remove(&key);
        if let Some(o) = &old {
            let owner = (key.0.clone(), o.service.to_string());
            if let Some(set) = self.by_service.get_mut(&owner) {
                set.remove(&key.1);
                if set.is_empty() {
                    self.by_service.remove(&owner);
                }
            }
        }
        if let Some(n) = new {
            self.by_service
                .entry((key.0.clone(), n.service.to_string()))
                .or_default()
                .insert(key.1.clone());
            self.slices.insert(key, n);
        }
        old
    }

    /// The deletions a full list of `kind` implies: every object of that
    /// kind held (or, for Services, written by an earlier run) that the
    /// list did not name. After a slice list, every Service's slices are
    /// known.
    fn gone_from_list(&self, kind: Listed, seen: &HashSet<Key>, n: usize) -> Vec<Event> {
        let held: BTreeSet<&Key> = match kind {
            Listed::Service => self.services.keys().chain(self.produced.keys()).collect(),
            Listed::EndpointSlice => self.slices.keys().collect(),
        };
        let mut out: Vec<Event> = held
            .into_iter()
            .filter(|k| !seen.contains(*k))
            .map(|k| Event {
                n,
                trigger: None,
                kind: kind.kind().to_string(),
                what: format!("{} {}/{} (gone from a new list)", kind.kind(), k.0, k.1),
                change: match kind {
                    Listed::Service => Change::Service(k.clone(), None),
                    Listed::EndpointSlice => Change::Slice(k.clone(), None),
                },
            })
            .collect();
        if kind == Listed::EndpointSlice {
            out.push(Event {
                n,
                trigger: None,
                kind: kind.kind().to_string(),
                what: "EndpointSlice list complete".to_string(),
                change: Change::SlicesListed,
            });
        }
        out
    }

    /// Apply one change; returns how to undo it and the Services it touches.
    fn apply(&mut self, change: &Change, touched: &mut BTreeSet<Key>) -> Undo {
        match change {
            Change::Service(key, new) => {
                touched.insert(key.clone());
                let old = match new {
                    Some(s) => self.services.insert(key.clone(), s.clone()),
                    None => self.services.remove(key),
                };
                Undo::Service(key.clone(), old)
            }
            Change::Slice(key, new) => {
                let old = self.set_slice(key.clone(), new.clone());
                let mut marked = Vec::new();
                for s in old.iter().chain(new.iter()) {
                    let owner = (key.0.clone(), s.service.to_string());
                    if self.slices_seen.insert(owner.clone()) {
                        marked.push(owner.clone());
                    }
                    touched.insert(owner);
                }
                Undo::Slice(key.clone(), old, marked)
            }
            Change::Zone(zone) => {
                if *zone != self.zone {
                    touched.extend(self.services.keys().cloned());
                }
                self.zone_from_stream = true;
                Undo::Zone(std::mem::replace(&mut self.zone, zone.clone()))
            }
            Change::SlicesListed => {
                let mut marked = Vec::new();
                for key in self.services.keys() {
                    if self.slices_seen.insert(key.clone()) {
                        marked.push(key.clone());
                        touched.insert(key.clone());
                    }
                }
                Undo::Marked(marked)
            }
        }
    }

    fn undo(&mut self, undo: Undo) {
        match undo {
            Undo::Service(key, old) => {
                match old {
                    Some(s) => self.services.insert(key, s),
                    None => self.services.remove(&key),
                };
            }
            Undo::Slice(key, old, marked) => {
                self.set_slice(key, old);
                for m in marked {
                    self.slices_seen.remove(&m);
                }
            }
            Undo::Zone(zone) => self.zone = zone,
            Undo::Marked(marked) => {
                for m in marked {
                    self.slices_seen.remove(&m);
                }
            }
        }
    }

    /// The services a Service and its slices describe now.
    fn entries(&self, key: &Key) -> Result<Vec<Entry>> {
        let Some(svc) = self.services.get(key) else {
            return Ok(Vec::new());
        };
        let slices: Vec<&K8sSlice> = self
            .by_service
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|name| self.slices.get(&(key.0.clone(), name.clone())))
            .collect();
        let place = Place {
            node: &self.node,
            zone: &self.zone,
        };
        manifest::k8s_entries(svc, &slices, place)
    }
}

/// The service the maps hold under `idk`, if its metadata agrees, with
/// the Kubernetes Service it was written from (None: not from Kubernetes).
fn owner_of(cur: &mut Current, idk: &Identity) -> Result<Option<(u32, Option<Key>)>> {
    let Some(m) = cur.svc_get(&store::svc_key(idk.0, idk.1, idk.2, 0))? else {
        return Ok(None);
    };
    cur.load_service(m.svc_id)?;
    Ok(match cur.spec(m.svc_id)? {
        Some(spec) if service::identity_key(&spec, &cur.node_addrs) == *idk => {
            let key = spec
                .from_kubernetes
                .then(|| service_key(&spec.name))
                .flatten();
            Some((m.svc_id, key))
        }
        _ => None,
    })
}

/// The Service ("namespace/name:port") a Kubernetes service's name names.
fn service_key(name: &str) -> Option<Key> {
    let (ns, rest) = name.split_once('/')?;
    let (name, _port) = rest.split_once(':')?;
    Some((ns.to_string(), name.to_string()))
}

/// Write what the touched Services describe now, as one change.
fn write(
    state: &State,
    objects: &Objects,
    touched: &BTreeSet<Key>,
    opts: &ApplyOpts,
) -> Result<(Counts, HashMap<Key, Vec<Identity>>)> {
    let _lock = crate::sys::StateLock::take(&state.pins.root)?;
    store::repair_if_interrupted(state)?;
    let mut cur = Current::lazy(state)?;
    let node_addrs = cur.node_addrs.clone();
    let cfg = state.config()?;

    let mut plans: Vec<(&Key, Vec<Entry>)> = Vec::with_capacity(touched.len());
    let mut frontends: HashMap<(std::net::IpAddr, u16, crate::model::addr::Proto), String> =
        HashMap::new();
    for key in touched {
        let entries = objects.entries(key)?;
        for e in &entries {
            service::check_against_config(&e.spec, &cfg)
                .map_err(|err| anyhow!("{}: {}", e.source, manifest::file_terms(&err)))?;
            for f in service::expand(&e.spec, &node_addrs) {
                if let Some(other) =
                    frontends.insert((f.ip, f.port, e.spec.proto), e.source.clone())
                {
                    bail!(
                        "{}: frontend {}/{} is also given by {other}; a frontend belongs to one service",
                        e.source,
                        f.display(),
                        e.spec.proto
                    );
                }
            }
        }
        plans.push((key, entries));
    }

    // What the maps hold under every identity involved, old and new: a
    // frontend this Service had, or one the maps hold for it (by name) or
    // for no Service (written by hand, which apply takes over too). One
    // another Service holds is a conflict.
    let mut tx = Tx::default();
    let mut have: HashMap<Identity, u32> = HashMap::new();
    for (key, entries) in &plans {
        let produced = objects.produced.get(*key);
        let old = produced.into_iter().flatten().map(|i| (*i, None));
        let new = entries.iter().map(|e| {
            (
                service::identity_key(&e.spec, &node_addrs),
                Some(e.source.as_str()),
            )
        });
        for (idk, source) in old.chain(new) {
            if have.contains_key(&idk) {
                continue;
            }
            let Some((id, owner)) = owner_of(&mut cur, &idk)? else {
                continue;
            };
            if let Some((ons, oname)) = &owner
                && (ons, oname) != (&key.0, &key.1)
                && !produced.is_some_and(|p| p.contains(&idk))
            {
                bail!(
                    "{}: frontend {}/{} belongs to Service {ons}/{oname} already; a frontend belongs to one Service",
                    source.unwrap_or("a frontend"),
                    service::Frontend {
                        ip: idk.0,
                        port: idk.1,
                        flags: 0
                    }
                    .display(),
                    idk.2
                );
            }
            have.insert(idk, id);
            tx.release(id);
        }
    }

    let mut counts = Counts::default();
    let mut produced = HashMap::new();
    let mut fresh_backends = 0u32;
    let mut new_services = 0u32;
    for (key, entries) in &mut plans {
        let ids: Vec<Identity> = entries
            .iter()
            .map(|e| service::identity_key(&e.spec, &node_addrs))
            .collect();
        // Frontends the Service no longer has.
        for idk in objects.produced.get(*key).into_iter().flatten() {
            if ids.contains(idk) {
                continue;
            }
            if let Some(&id) = have.get(idk)
                && cur.spec(id)?.is_some_and(|s| s.from_kubernetes)
            {
                store::plan_delete(&mut cur, &mut tx, id)?;
                counts.removed += 1;
            }
        }
        // Until its first slice, a restarted watch keeps what the maps serve.
        let carry = !objects.slices_seen.contains(*key);
        for (e, idk) in entries.iter_mut().zip(&ids) {
            match have.get(idk) {
                Some(&id) => {
                    if carry
                        && e.spec.backends.is_empty()
                        && let Some(old) = cur.spec(id)?
                        && old.proto == e.spec.proto
                    {
                        e.spec.backends = old.backends;
                    }
                    fresh_backends += store::fresh_backends(&e.spec, cur.backends_of(id));
                }
                None => {
                    new_services += 1;
                    fresh_backends += e.spec.backends.len() as u32;
                }
            }
        }
        produced.insert((*key).clone(), ids);
    }
    let mut svc_ids = maps::alloc_svc_ids(state, new_services, true)?.into_iter();
    let mut ids = Ids::alloc(state, fresh_backends)?;
    for (_, entries) in &plans {
        for e in entries {
            let idk = service::identity_key(&e.spec, &node_addrs);
            let (svc_id, existed) = match have.get(&idk) {
                Some(&id) => (id, true),
                None => (
                    svc_ids
                        .next()
                        .context("internal error: fewer service ids than new services")?,
                    false,
                ),
            };
            let changed = store::plan_write(&mut cur, &mut tx, &e.spec, svc_id, &mut ids)
                .map_err(|err| anyhow!("{}: {err:#}", e.source))?;
            match (existed, changed) {
                (false, _) => counts.added += 1,
                (true, true) => counts.changed += 1,
                (true, false) => counts.unchanged += 1,
            }
        }
    }
    let done = store::execute(state, tx)?;
    // A zone from this node's Node object is the node's zone from now on
    // (svc list shows it, a later apply starts from it).
    if objects.zone_from_stream && crate::bpf::from_cstr(&cfg.zone) != objects.zone {
        let mut cfg = state.config()?;
        cfg.zone = crate::bpf::to_cstr(&objects.zone);
        state.write_config(&cfg)?;
    }
    crate::control::stale::after_change(state, &done, opts.destroy_tcp)?;
    Ok((counts, produced))
}

/// The frontends of the Kubernetes services the maps hold, by Service, from
/// their names ("namespace/name:port"), so that a restarted watch removes
/// the frontends a Service lost, and the whole of a Service deleted, before
/// it ever saw them. Names cut at the name limit are left to `apply --prune`.
fn held_services(state: &State) -> Result<HashMap<Key, Vec<Identity>>> {
    let node_addrs = state.node_addrs()?;
    let mut out: HashMap<Key, Vec<Identity>> = HashMap::new();
    for (_, meta) in maps::read::<u32, types::svc_meta>(state, MapId::Meta)? {
        if meta.origin != types::nxl_origin::NXL_ORIGIN_KUBERNETES.0 as u16 {
            continue;
        }
        let Ok(spec) = service::spec_from(&meta, &[]) else {
            continue;
        };
        let Some((ns, rest)) = spec.name.split_once('/') else {
            continue;
        };
        let Some((name, _port)) = rest.split_once(':') else {
            continue;
        };
        out.entry((ns.to_string(), name.to_string()))
            .or_default()
            .push(service::identity_key(&spec, &node_addrs));
    }
    Ok(out)
}

/// Decode one event. Ok(None): nothing to do (a bookmark, another kind).
fn decode(
    ev: &Value,
    n: usize,
    node_name: &str,
) -> std::result::Result<Option<Event>, (String, String)> {
    let ty = ev["type"].as_str().unwrap_or_default();
    let obj = &ev["object"];
    let head = obj
        .as_object()
        .ok_or_else(|| anyhow!("object is missing or not a mapping"))
        .and_then(|o| manifest::k8s_identity(o, "object"));
    let what = match &head {
        Ok((kind, ns, name)) => format!("{ty} {kind} {ns}/{name}"),
        Err(_) => ty.to_string(),
    };
    let kind_of = match &head {
        Ok((kind, _, _)) => kind.clone(),
        Err(_) => "unknown".to_string(),
    };
    let fail = |e: String| (kind_of.clone(), format!("event {n} ({what}): {e}"));
    match ty {
        "BOOKMARK" => return Ok(None),
        "ERROR" => return Err(fail(format!("the API server sent an error: {obj}"))),
        "ADDED" | "MODIFIED" | "DELETED" => {}
        other => {
            return Err(fail(format!(
                "type {other:?} is not one of ADDED, MODIFIED, DELETED, BOOKMARK, ERROR; event skipped"
            )));
        }
    }
    let (kind, ns, name) = head.map_err(|e| fail(format!("{e:#}")))?;
    let kind_name = kind.clone();
    let key = (ns, name);
    let change = if ty == "DELETED" {
        match kind_name.as_str() {
            "Service" => Change::Service(key, None),
            "EndpointSlice" => Change::Slice(key, None),
            _ => return Ok(None),
        }
    } else {
        match manifest::k8s_object(obj, "object", node_name) {
            Ok(K8sObject::Service(s)) => Change::Service(key, Some(s)),
            // A slice that lost its service label belongs to none now.
            Ok(K8sObject::Slice(s)) => Change::Slice(key, s),
            Ok(K8sObject::Node { name, zone }) if name == node_name => Change::Zone(zone),
            Ok(K8sObject::Node { .. } | K8sObject::Other(_)) => return Ok(None),
            Err(e) => {
                return Err(fail(format!(
                    "{e:#}; the object keeps its last good version"
                )));
            }
        }
    };
    let trigger =
        obj["metadata"]["annotations"]["endpoints.kubernetes.io/last-change-trigger-time"]
            .as_str()
            .and_then(crate::model::time::rfc3339_unix);
    Ok(Some(Event {
        n,
        trigger,
        kind,
        what,
        change,
    }))
}

/// Apply a batch as one change. On failure nothing changed, maps or objects.
fn apply_batch(
    state: &State,
    objects: &mut Objects,
    batch: &[Event],
    opts: &ApplyOpts,
) -> Result<Counts> {
    let mut touched = BTreeSet::new();
    let mut undo = Vec::with_capacity(batch.len());
    for ev in batch {
        undo.push(objects.apply(&ev.change, &mut touched));
    }
    match write(state, objects, &touched, opts) {
        Ok((counts, produced)) => {
            for (key, ids) in produced {
                if ids.is_empty() {
                    objects.produced.remove(&key);
                } else {
                    objects.produced.insert(key, ids);
                }
            }
            Ok(counts)
        }
        Err(e) => {
            for u in undo.into_iter().rev() {
                objects.undo(u);
            }
            Err(e)
        }
    }
}

fn report(batch: &[Event], c: &Counts) {
    use std::io::Write;
    let counts = format!(
        "{} added, {} changed, {} removed, {} unchanged",
        c.added, c.changed, c.removed, c.unchanged
    );
    match batch {
        [one] => println!("event {} {}: {counts}", one.n, one.what),
        [first, .., last] => println!(
            "events {}-{} ({} events): {counts}",
            first.n,
            last.n,
            batch.len()
        ),
        [] => {}
    }
    let _ = std::io::stdout().flush();
}

/// Which kind of object a full list (the agent's watcher) is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Listed {
    Service,
    EndpointSlice,
}

impl Listed {
    /// Its Kubernetes kind.
    pub fn kind(self) -> &'static str {
        match self {
            Listed::Service => "Service",
            Listed::EndpointSlice => "EndpointSlice",
        }
    }

    /// Its resource name, as in the API's paths.
    pub fn resource(self) -> &'static str {
        match self {
            Listed::Service => "services",
            Listed::EndpointSlice => "endpointslices",
        }
    }
}

/// What the loop takes in: decoded events, and the marks of a full list.
pub enum Input {
    Event(Box<Event>),
    /// A bookmark, another kind: counted, nothing to do.
    Nothing,
    /// A refused event: its object's kind and the message.
    Refused(String, String),
    /// The stream is not JSON: the end.
    Broken(String),
    /// A full list of this kind starts: what it lacks at its end is gone.
    ListStart(Listed),
    /// The full list is in: the objects of this kind it did not name are
    /// deleted (they went while no watch ran).
    ListDone(Listed),
}

impl Input {
    /// One watch event (`{"type": ..., "object": ...}`) decoded and checked,
    /// the `n`th the loop takes.
    pub fn of(ev: &Value, n: usize, node_name: &str) -> Input {
        match decode(ev, n, node_name) {
            Ok(Some(ev)) => Input::Event(Box::new(ev)),
            Ok(None) => Input::Nothing,
            Err((kind, m)) => Input::Refused(kind, m),
        }
    }
}

/// Run the watch until every stream ends (several: e.g. one kubectl watch
/// per resource type, merged as their events come). Events that could not
/// be applied are reported and counted, never fatal; a stream that is not
/// JSON is.
pub fn watch(
    state: &State,
    inputs: Vec<Box<dyn std::io::Read + Send>>,
    opts: &ApplyOpts,
    on: &mut dyn FnMut(Progress),
) -> Result<Summary> {
    // Events are read, parsed and checked on a thread per stream, so the
    // next ones are ready (and batched) while a change is written; only
    // their compact checked form waits in the channel. Events are numbered
    // over every stream, in the order they are parsed.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Input>(BATCH_EVENTS / 4);
    let counter = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for input in inputs {
        let tx = tx.clone();
        let counter = counter.clone();
        let node_name = opts.node_name.clone();
        std::thread::spawn(move || {
            for v in serde_json::Deserializer::from_reader(input).into_iter::<Value>() {
                let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                let msg = match v {
                    Ok(v) => Input::of(&v, n, &node_name),
                    Err(e) => Input::Broken(format!("event {n}: not valid JSON: {e}")),
                };
                let end = matches!(msg, Input::Broken(_));
                if tx.send(msg).is_err() || end {
                    break;
                }
            }
        });
    }
    drop(tx);
    run(state, rx, opts, &[], on)
}

/// Apply what `rx` brings until every sender is gone. Events that could not
/// be applied are reported and counted, never fatal; `Input::Broken` is.
/// The loop is caught up (ready) once nothing waits and a first full list
/// of each kind in `lists` is in.
pub fn run(
    state: &State,
    rx: std::sync::mpsc::Receiver<Input>,
    opts: &ApplyOpts,
    lists: &[Listed],
    on: &mut dyn FnMut(Progress),
) -> Result<Summary> {
    use std::sync::mpsc::{RecvTimeoutError, TryRecvError};
    // One watcher per pin dir: two would undo each other's changes.
    let _watching = crate::sys::pindir::WatchLock::take(&state.pins.root)?;
    let mut objects = Objects {
        produced: held_services(state)?,
        node: opts.node_name.clone(),
        zone: crate::bpf::from_cstr(&state.config()?.zone),
        ..Default::default()
    };
    let mut summary = Summary::default();
    // The keys each full list under way has named so far.
    let mut listing: HashMap<Listed, HashSet<Key>> = HashMap::new();
    // The kinds whose first full list is not in yet.
    let mut awaiting: HashSet<Listed> = lists.iter().copied().collect();
    // What each Service has that is not served ("where: why"), as last
    // reported: said when it first appears, forgotten with the Service.
    let mut not_served: HashMap<Key, Vec<String>> = HashMap::new();
    let mut broken = None;
    let mut ended = false;
    while !ended && broken.is_none() {
        let mut batch = Vec::new();
        let mut started = None::<Instant>;
        loop {
            let next = if started.is_none() {
                // Nothing waits: caught up (the one place that says so),
                // then wait for the next event.
                rx.try_recv().or_else(|e| match e {
                    TryRecvError::Empty => {
                        if summary.changes > 0 && awaiting.is_empty() {
                            on(Progress::CaughtUp);
                        }
                        rx.recv().map_err(|_| TryRecvError::Disconnected)
                    }
                    d => Err(d),
                })
            } else {
                // What is waiting, and what the reader is parsing now; while
                // a full list comes in pages, the rest of the batch's time
                // (the next page is on its way).
                let grace = if listing.is_empty() {
                    GRACE
                } else {
                    BATCH_TIME.saturating_sub(started.map_or(Duration::ZERO, |t| t.elapsed()))
                };
                rx.try_recv().or_else(|e| match e {
                    TryRecvError::Empty => rx.recv_timeout(grace).map_err(|e| match e {
                        RecvTimeoutError::Timeout => TryRecvError::Empty,
                        RecvTimeoutError::Disconnected => TryRecvError::Disconnected,
                    }),
                    d => Err(d),
                })
            };
            let msg = match next {
                Ok(m) => m,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    ended = true;
                    break;
                }
            };
            let t0 = *started.get_or_insert_with(Instant::now);
            match msg {
                Input::Event(ev) => {
                    summary.events += 1;
                    on(Progress::Queued);
                    if let Some((kind, key)) = ev.listed()
                        && let Some(seen) = listing.get_mut(&kind)
                    {
                        seen.insert(key.clone());
                    }
                    batch.push(*ev);
                }
                Input::Nothing => summary.events += 1,
                Input::ListStart(kind) => {
                    listing.insert(kind, HashSet::new());
                }
                Input::ListDone(kind) => {
                    awaiting.remove(&kind);
                    let seen = listing.remove(&kind).unwrap_or_default();
                    batch.extend(objects.gone_from_list(kind, &seen, summary.events));
                }
                Input::Refused(kind, m) => {
                    summary.events += 1;
                    eprintln!("netnsxl: {m}; nothing changed");
                    summary.failed += 1;
                    on(Progress::Event {
                        kind: &kind,
                        applied: false,
                    });
                }
                Input::Broken(m) => {
                    broken = Some(m);
                    break;
                }
            }
            if batch.len() >= BATCH_EVENTS || t0.elapsed() >= BATCH_TIME {
                break;
            }
        }
        if batch.is_empty() {
            continue;
        }
        let large = batch.len() >= 100;
        let mut run = |one: &[Event], on: &mut dyn FnMut(Progress)| -> Result<()> {
            let t = Instant::now();
            let r = apply_batch(state, &mut objects, one, opts);
            if let Ok(c) = &r {
                summary.changes += 1;
                report(one, c);
                on(Progress::Change {
                    seconds: t.elapsed().as_secs_f64(),
                });
                let now = crate::model::time::unix_now();
                for ev in one {
                    on(Progress::Event {
                        kind: &ev.kind,
                        applied: true,
                    });
                    if let Some(t) = ev.trigger {
                        on(Progress::Programmed {
                            seconds: (now - t).max(0.0),
                        });
                    }
                    // What a Service has that netnsxl does not serve: said
                    // once each, never skipped silently.
                    if let Change::Service(key, svc) = &ev.change {
                        let skipped = svc.as_ref().map_or(&[][..], |s| s.skipped());
                        let before = not_served.remove(key).unwrap_or_default();
                        for what in skipped.iter().filter(|w| !before.contains(w)) {
                            eprintln!("netnsxl: not served: {what}");
                            let reason = what.rsplit(": ").next().unwrap_or(what);
                            on(Progress::NotServed { reason });
                        }
                        if !skipped.is_empty() {
                            not_served.insert(key.clone(), skipped.to_vec());
                        }
                    }
                }
            }
            r.map(|_| ())
        };
        match run(&batch, on) {
            Ok(()) => {}
            Err(e) if batch.len() == 1 => {
                let ev = &batch[0];
                eprintln!(
                    "netnsxl: event {} ({}): {e:#}; the object keeps its last good version, nothing changed",
                    ev.n, ev.what
                );
                summary.failed += 1;
                on(Progress::Event {
                    kind: &ev.kind,
                    applied: false,
                });
            }
            Err(_) => {
                // Find the bad ones: each event alone.
                for ev in batch {
                    let one = [ev];
                    if let Err(e) = run(&one, on) {
                        eprintln!(
                            "netnsxl: event {} ({}): {e:#}; the object keeps its last good version, nothing changed",
                            one[0].n, one[0].what
                        );
                        summary.failed += 1;
                        on(Progress::Event {
                            kind: &one[0].kind,
                            applied: false,
                        });
                    }
                }
            }
        }
        on(Progress::Held {
            services: objects.services.len(),
            slices: objects.slices.len(),
        });
        if large {
            // A large change (the initial list) leaves its working memory
            // free but resident; give it back, so the loop's footprint is
            // what it holds.
            // SAFETY: malloc_trim only releases free heap memory.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    }
    if let Some(b) = broken {
        bail!("{b}");
    }
    Ok(summary)
}
