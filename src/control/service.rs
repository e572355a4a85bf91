//! Service commands: add, del, find, node refresh, list.

use std::net::IpAddr;

use anyhow::{Result, bail};
use serde::Serialize;
use tabled::Tabled;

use crate::bpf::{backend_flags, svc_flags};
use crate::control::store::{self, Current, Tx};
use crate::datapath::maps::Maps;
use crate::datapath::state::State;
use crate::model::addr::{Proto, fmt_endpoint, from_map_addr, from_map_port};
use crate::model::service::*;
use crate::output::{self, Format};

/// Add a service, or with `replace` swap the spec (backends, flags) of an
/// existing one.
pub fn add(maps: &dyn Maps, spec: &ServiceSpec, replace: bool) -> Result<store::Done> {
    spec.validate()?;
    check_against_config(spec, &crate::datapath::maps::config(maps)?)?;
    store::repair_if_interrupted(maps)?;
    let node_addrs = crate::datapath::maps::node_addrs(maps)?;
    let (ip, port, proto) = identity_key(spec, &node_addrs);
    let primary = Frontend { ip, port, flags: 0 };
    let mut cur = Current::scoped(maps, &primary, proto)?;
    let existing = cur.master(&primary, proto)?;
    let svc_id = match existing {
        Some(_) if !replace => bail!(
            "--frontend {}/{} exists already; use --replace to change it, or svc del it first",
            spec.frontend.display(),
            spec.proto
        ),
        Some(m) => m.svc_id,
        None => 0,
    };
    // Refuse a taken frontend before allocating ids.
    store::check_conflicts(&mut cur, &Tx::default(), spec, svc_id)?;
    let fresh = store::fresh_backends(spec, cur.backends_of(svc_id));
    let svc_id = if svc_id == 0 {
        store::new_svc_id(maps)?
    } else {
        svc_id
    };
    let mut ids = store::Ids::alloc(maps, fresh)?;
    let mut tx = Tx::default();
    store::plan_write(&mut cur, &mut tx, spec, svc_id, &mut ids)?;
    store::execute(maps, tx)
}

/// The service a `--frontend` names, if any.
pub fn find(maps: &dyn Maps, frontend: &FrontendSpec, proto: Proto) -> Result<Option<u32>> {
    let id = identity(frontend);
    let mut cur = Current::scoped(maps, &id, proto)?;
    Ok(cur.master(&id, proto)?.map(|m| m.svc_id))
}

/// Delete a service: its frontends' master entries first, so no new
/// connection finds it, then slots, backends, affinity and metadata.
pub fn del(maps: &dyn Maps, frontend: &FrontendSpec, proto: Proto) -> Result<store::Done> {
    // A del that died half way is finished by the repair: then this one is
    // done too.
    if let Some(r) = store::repair_if_interrupted(maps)?
        && r.deleted
            .iter()
            .any(|(f, p)| *p == proto && identity(f) == identity(frontend))
    {
        return Ok(r.done);
    }
    let id = identity(frontend);
    let mut cur = Current::scoped(maps, &id, proto)?;
    let Some(m) = cur.master(&id, proto)? else {
        bail!(
            "--frontend {}/{proto}: no such service (svc list shows them)",
            frontend.display()
        );
    };
    let mut tx = Tx::default();
    store::plan_delete(&mut cur, &mut tx, m.svc_id)?;
    store::execute(maps, tx)
}

/// Re-read the node addresses and rewrite every service whose frontends
/// depend on them (NodePort, HostPort, ExternalIP's host rule).
pub fn refresh_node_addrs(state: &State, new_addrs: &[IpAddr]) -> Result<usize> {
    store::repair_if_interrupted(state)?;
    let mut cur = Current::full(state)?;
    let old_addrs = cur.node_addrs.clone();
    let mut plans = Vec::new();
    for svc_id in cur.metas.keys().copied().collect::<Vec<_>>() {
        if let Some(spec) = cur.spec(svc_id)?
            && expand(&spec, &old_addrs) != expand(&spec, new_addrs)
        {
            plans.push((svc_id, spec));
        }
    }
    crate::datapath::loader::write_node_addrs(state, new_addrs)?;
    cur.node_addrs = new_addrs.to_vec();
    let mut tx = Tx::default();
    let mut ids = store::Ids::alloc(state, 0)?;
    for (svc_id, spec) in &plans {
        store::plan_write(&mut cur, &mut tx, spec, *svc_id, &mut ids)?;
    }
    store::execute(state, tx)?;
    Ok(plans.len())
}

#[derive(Serialize, Clone)]
pub struct BackendView {
    pub id: u32,
    pub addr: String,
    pub terminating: bool,
    pub local: bool,
    /// Left out of the cluster-wide frontends by topology hints.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub off_topology: bool,
}

/// The topology hints a service's cluster-wide frontends follow.
#[derive(Serialize, Clone)]
pub struct TopologyView {
    /// "zone" or "node".
    pub mode: crate::model::topology::Mode,
    /// The zone (this node's), or the node's name "this node".
    pub at: String,
    /// Active backends in use, of all active ones.
    pub in_use: usize,
    pub of: usize,
}

#[derive(Serialize, Clone)]
pub struct ServiceView {
    pub svc_id: u32,
    pub name: String,
    #[serde(rename = "type")]
    pub svc_type: String,
    /// The frontend as given: "198.51.100.1:80", or ":30080" for a NodePort.
    pub frontend: String,
    pub proto: Proto,
    pub node_port: Option<u16>,
    /// Every address:port it answers on; "(host netns only)" for loopback.
    pub frontends: Vec<String>,
    pub backends: Vec<BackendView>,
    pub affinity_timeout: Option<u32>,
    pub internal_traffic_policy: &'static str,
    pub external_traffic_policy: &'static str,
    /// "ok", or what an interrupted command left and how to repair it.
    pub state: String,
    /// "kubernetes" when written from Kubernetes objects, else "user".
    pub origin: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traffic_distribution: Option<&'static str>,
    /// Present while topology hints choose the backends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topology: Option<TopologyView>,
}

/// Set this node's zone (attach --zone, node refresh --zone, a Node object).
pub fn set_zone(state: &State, zone: &str) -> Result<()> {
    let mut cfg = state.config()?;
    cfg.zone = crate::bpf::to_cstr(zone);
    state.write_config(&cfg)
}

fn policy(local: bool) -> &'static str {
    if local { "local" } else { "cluster" }
}

/// Read every service back from the maps, with what a killed command left
/// behind (elements no service owns), if anything.
pub fn read_all(state: &State) -> Result<(Vec<ServiceView>, usize)> {
    let mut cur = Current::full(state)?;
    let node_addrs = cur.node_addrs.clone();
    let zone = crate::bpf::from_cstr(&state.config()?.zone);
    let mut out = Vec::new();
    let ids: Vec<u32> = cur.metas.keys().copied().collect();
    for svc_id in ids {
        let Some(spec) = cur.spec(svc_id)? else {
            continue;
        };
        let fes = expand(&spec, &node_addrs);
        let mut missing = Vec::new();
        for f in &fes {
            match cur.master(f, spec.proto)? {
                Some(m) if m.svc_id == svc_id => {}
                _ => missing.push(f.display()),
            }
        }
        let shown = spec.frontend.display();
        // What a rewrite of this very spec would change is what an
        // interrupted command left half done.
        let mut scratch = Tx::default();
        let pending = store::plan_write(
            &mut cur,
            &mut scratch,
            &spec,
            svc_id,
            &mut store::Ids::dry(0, 0),
        );
        let svc_state = if !missing.is_empty() {
            format!(
                "incomplete: frontends {} missing (a command was interrupted); repair with svc add --replace --frontend {shown}, svc del --frontend {shown}, or apply again",
                missing.join(" ")
            )
        } else if !matches!(pending, Ok(false)) {
            format!(
                "incomplete: its backend slots do not match its backends yet (a command was interrupted; connections use the previous set); repair with svc add --replace --frontend {shown} or apply again"
            )
        } else {
            "ok".to_string()
        };
        let backends = cur.backends_of(svc_id).to_vec();
        let active = || {
            backends
                .iter()
                .filter(|(_, b)| b.flags & backend_flags::TERMINATING == 0)
        };
        // Node-local frontends (iTP Local) ignore topology: shown only when
        // a frontend follows it.
        let follows = fes.iter().any(|f| f.flags & svc_flags::LOCAL_ONLY == 0);
        let topology =
            (follows && spec.topology.mode != crate::model::topology::Mode::None).then(|| {
                TopologyView {
                    mode: spec.topology.mode,
                    at: match spec.topology.mode {
                        crate::model::topology::Mode::Zone => zone.clone(),
                        _ => "this node".to_string(),
                    },
                    in_use: active()
                        .filter(|(_, b)| b.flags & backend_flags::OFF_TOPOLOGY == 0)
                        .count(),
                    of: active().count(),
                }
            });
        out.push(ServiceView {
            svc_id,
            name: spec.name.clone(),
            svc_type: spec.svc_type.name().to_string(),
            frontend: shown,
            proto: spec.proto,
            node_port: spec.node_port(),
            frontends: fes
                .iter()
                .map(|f| {
                    let mut t = f.display();
                    if f.flags & svc_flags::HOST_ONLY != 0 {
                        t.push_str(" (host netns only)");
                    }
                    if f.flags & svc_flags::SKIP_HOST != 0 {
                        t.push_str(" (pods only)");
                    }
                    t
                })
                .collect(),
            backends: backends
                .into_iter()
                .map(|(id, b)| BackendView {
                    id,
                    addr: fmt_endpoint(from_map_addr(b.addr), from_map_port(b.port)),
                    terminating: b.flags & backend_flags::TERMINATING != 0,
                    local: b.flags & backend_flags::LOCAL != 0,
                    off_topology: b.flags & backend_flags::OFF_TOPOLOGY != 0,
                })
                .collect(),
            traffic_distribution: spec.topology.distribution.name(),
            topology,
            affinity_timeout: spec.affinity_timeout,
            internal_traffic_policy: policy(spec.internal_local),
            external_traffic_policy: policy(spec.external_local),
            state: svc_state,
            origin: if spec.from_kubernetes {
                "kubernetes"
            } else {
                "user"
            },
        });
    }
    out.sort_by(|a, b| (&a.frontend, a.proto.to_string()).cmp(&(&b.frontend, b.proto.to_string())));
    // Elements of services that have no metadata: a killed command's
    // leftovers, invisible to the datapath until apply removes them.
    let strays = cur
        .svc_entries()
        .filter(|(_, v)| !cur.metas.contains_key(&v.svc_id))
        .count()
        + cur
            .backends
            .iter()
            .filter(|(id, _)| !cur.metas.contains_key(id))
            .map(|(_, b)| b.len())
            .sum::<usize>();
    Ok((out, strays))
}

#[derive(Tabled)]
struct SvcRow {
    #[tabled(rename = "NAME")]
    name: String,
    #[tabled(rename = "TYPE")]
    svc_type: String,
    #[tabled(rename = "FRONTEND")]
    frontend: String,
    #[tabled(rename = "ANSWERS ON")]
    frontends: String,
    #[tabled(rename = "PROTO")]
    proto: String,
    #[tabled(rename = "BACKENDS")]
    backends: String,
    #[tabled(rename = "AFFINITY")]
    affinity: String,
    #[tabled(rename = "TOPOLOGY")]
    topology: String,
    #[tabled(rename = "STATE")]
    state: String,
}

/// A name as a terminal may show it: control characters (written by an
/// older netnsxl, which did not refuse them) escaped, never sent raw.
fn printable(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

pub fn list(state: &State, format: Format) -> Result<()> {
    let (services, strays) = read_all(state)?;
    let interrupted = state.journal_open()?;
    if strays > 0 {
        eprintln!(
            "netnsxl: warning: {strays} map elements belong to no service (left by an interrupted command); netnsxl apply removes them"
        );
    }
    if interrupted {
        eprintln!(
            "netnsxl: warning: a command was interrupted mid-change; the next svc add, svc del, node refresh or apply finishes or undoes it first"
        );
    }
    let rows: Vec<SvcRow> = services
        .iter()
        .map(|s| SvcRow {
            name: printable(&s.name),
            svc_type: s.svc_type.clone(),
            frontend: s.frontend.clone(),
            frontends: s.frontends.join("\n"),
            proto: s.proto.to_string(),
            backends: s
                .backends
                .iter()
                .map(|b| {
                    let mut t = b.addr.clone();
                    if b.local {
                        t.push_str(",local");
                    }
                    if b.terminating {
                        t.push_str(",terminating");
                    }
                    if b.off_topology {
                        t.push_str(",off-topology");
                    }
                    t
                })
                .collect::<Vec<_>>()
                .join(" "),
            affinity: s
                .affinity_timeout
                .map_or_else(|| "-".to_string(), |t| format!("client-ip {t}s")),
            topology: match (&s.topology, s.traffic_distribution) {
                (Some(t), _) => format!(
                    "{} {}, {} of {}",
                    if t.mode == crate::model::topology::Mode::Zone {
                        "zone"
                    } else {
                        "node:"
                    },
                    t.at,
                    t.in_use,
                    t.of
                ),
                (None, Some(td)) => format!("{td}: hints not used here"),
                (None, None) => "-".to_string(),
            },
            state: s.state.clone(),
        })
        .collect();
    output::print(format, &rows, &services)
}
