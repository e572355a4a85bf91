//! The service model: what `svc add|del|list` write to and read from the maps.
//!
//! The maps are the only record: `svc list` reads them back, so it shows what
//! the datapath uses. Write order (see the comment at the top of
//! src/bpf/netnsxl.bpf.c) keeps every connect on a whole old or whole new
//! entry: backends and slots before the master entry on add and replace, the
//! master entry first on delete.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use anyhow::{Context, Result, bail};
use libbpf_rs::{MapCore, MapFlags};
use serde::Serialize;
use tabled::Tabled;

use crate::addr::{
    BackendSpec, Proto, fmt_endpoint, from_map_addr, from_map_port, to_map_addr, to_map_port,
};
use crate::bpf::{self, NAME_LEN, backend_flags, svc_flags, types};
use crate::output::{self, Format};
use crate::state::{IdKind, State};

pub const AFFINITY_TIMEOUT_DEFAULT: u32 = 10800;
pub const AFFINITY_TIMEOUT_MAX: u32 = 86400;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SvcType {
    Clusterip,
    Externalip,
}

impl SvcType {
    fn code(self) -> u8 {
        let t = match self {
            SvcType::Clusterip => types::nxl_svc_type::NXL_TYPE_CLUSTERIP,
            SvcType::Externalip => types::nxl_svc_type::NXL_TYPE_EXTERNALIP,
        };
        t.0 as u8
    }

    fn from_code(c: u8) -> Option<SvcType> {
        [SvcType::Clusterip, SvcType::Externalip]
            .into_iter()
            .find(|t| t.code() == c)
    }

    pub fn name(self) -> &'static str {
        match self {
            SvcType::Clusterip => "clusterip",
            SvcType::Externalip => "externalip",
        }
    }
}

/// A service as `svc add` describes it, validated.
#[derive(Clone, Debug)]
pub struct ServiceSpec {
    pub name: String,
    pub svc_type: SvcType,
    pub frontend: SocketAddr,
    pub proto: Proto,
    pub backends: Vec<BackendSpec>,
    pub affinity_timeout: Option<u32>,
}

impl ServiceSpec {
    /// Check everything that can be checked without the maps.
    pub fn validate(&self) -> Result<()> {
        if self.name.len() >= NAME_LEN {
            bail!(
                "--name {:?} is {} bytes; the limit is {}",
                self.name,
                self.name.len(),
                NAME_LEN - 1
            );
        }
        if let Some(t) = self.affinity_timeout
            && (t == 0 || t > AFFINITY_TIMEOUT_MAX)
        {
            bail!(
                "--affinity-timeout {t} is out of range: Kubernetes allows 1..={AFFINITY_TIMEOUT_MAX} seconds (default {AFFINITY_TIMEOUT_DEFAULT})"
            );
        }
        if self.backends.is_empty() {
            bail!("--backend is missing: give at least one ADDR:PORT");
        }
        for (i, b) in self.backends.iter().enumerate() {
            if b.addr.is_ipv4() != self.frontend.is_ipv4() {
                bail!(
                    "--backend {}: a service is one family; the frontend {} is {}",
                    b.addr,
                    self.frontend,
                    if self.frontend.is_ipv4() {
                        "IPv4"
                    } else {
                        "IPv6"
                    }
                );
            }
            if self.backends[..i].iter().any(|o| o.addr == b.addr) {
                bail!("--backend {} is given twice", b.addr);
            }
        }
        Ok(())
    }
}

fn svc_key(addr: IpAddr, port: u16, proto: Proto, slot: u16) -> types::svc_key {
    types::svc_key {
        addr: to_map_addr(addr),
        port: to_map_port(port),
        proto: proto.number(),
        slot,
        ..Default::default()
    }
}

fn lookup<T: plain::Plain + Default>(map: &libbpf_rs::MapHandle, key: &[u8]) -> Result<Option<T>> {
    match map.lookup(key, MapFlags::ANY)? {
        Some(v) => Ok(Some(bpf::from_bytes(&v)?)),
        None => Ok(None),
    }
}

/// Name "service map full" errors after the option that raises the limit.
fn update(map: &libbpf_rs::MapHandle, what: &str, key: &[u8], value: &[u8]) -> Result<()> {
    map.update(key, value, MapFlags::ANY).map_err(|e| {
        if e.kind() == libbpf_rs::ErrorKind::TooBig {
            anyhow::anyhow!(
                "{what} full ({} entries); raise its size at attach",
                map.max_entries()
            )
        } else {
            anyhow::Error::new(e).context(format!("write {what}"))
        }
    })
}

/// Every backend of a service, by id.
fn backends_of(state: &State, svc_id: u32) -> Result<Vec<(u32, types::backend_value)>> {
    let mut out = Vec::new();
    for k in state.backend.keys() {
        let Ok(id) = <[u8; 4]>::try_from(k.as_slice()).map(u32::from_ne_bytes) else {
            continue;
        };
        if let Some(v) = lookup::<types::backend_value>(&state.backend, &k)?
            && v.svc_id == svc_id
        {
            out.push((id, v));
        }
    }
    out.sort_by_key(|(id, _)| *id);
    Ok(out)
}

/// The backends new connections may use: the active ones, or the terminating
/// ones when no active one is left (Kubernetes' serving-terminating fallback).
fn usable(backends: &[(u32, types::backend_value)]) -> (Vec<u32>, bool) {
    let active: Vec<u32> = backends
        .iter()
        .filter(|(_, b)| b.flags & backend_flags::TERMINATING == 0)
        .map(|(id, _)| *id)
        .collect();
    if !active.is_empty() {
        return (active, false);
    }
    (
        backends.iter().map(|(id, _)| *id).collect(),
        !backends.is_empty(),
    )
}

/// Add a service, or with `replace` swap the backend set of an existing one.
pub fn add(state: &State, spec: &ServiceSpec, replace: bool) -> Result<()> {
    spec.validate()?;
    let fe_ip = spec.frontend.ip();
    let fe_port = spec.frontend.port();
    let master_key = svc_key(fe_ip, fe_port, spec.proto, 0);
    let existing: Option<types::svc_value> = lookup(&state.svc, bpf::bytes(&master_key))?;
    if existing.is_some() && !replace {
        bail!(
            "--frontend {}/{} exists already; use --replace to swap its backends, or svc del it first",
            spec.frontend,
            spec.proto
        );
    }

    let (svc_id, old_count, old_backends) = match existing {
        Some(m) => (m.svc_id, m.count, backends_of(state, m.svc_id)?),
        None => (state.alloc_ids(IdKind::Service, 1)?, 0, Vec::new()),
    };

    // Keep the id of every backend that stays, so affinity to it survives.
    let fresh = spec
        .backends
        .iter()
        .filter(|b| !old_backends.iter().any(|(_, o)| same_backend(o, b)))
        .count() as u32;
    let mut next_id = if fresh > 0 {
        state.alloc_ids(IdKind::Backend, fresh)?
    } else {
        0
    };
    let mut new_backends = Vec::with_capacity(spec.backends.len());
    for b in &spec.backends {
        let id = match old_backends.iter().find(|(_, o)| same_backend(o, b)) {
            Some((id, _)) => *id,
            None => {
                let id = next_id;
                next_id += 1;
                id
            }
        };
        let mut flags = 0;
        if b.terminating {
            flags |= backend_flags::TERMINATING;
        }
        if b.local {
            flags |= backend_flags::LOCAL;
        }
        new_backends.push((
            id,
            types::backend_value {
                addr: to_map_addr(b.addr.ip()),
                port: to_map_port(b.addr.port()),
                flags,
                svc_id,
                ..Default::default()
            },
        ));
    }

    let meta = types::svc_meta {
        name: bpf::to_cstr(&spec.name),
        frontend_addr: to_map_addr(fe_ip),
        frontend_port: to_map_port(fe_port),
        proto: spec.proto.number(),
        r#type: spec.svc_type.code(),
        affinity_timeout: spec.affinity_timeout.unwrap_or(0),
        ..Default::default()
    };
    update(
        &state.meta,
        "service metadata map",
        &svc_id.to_ne_bytes(),
        bpf::bytes(&meta),
    )?;
    for (id, b) in &new_backends {
        update(
            &state.backend,
            "backend map",
            &id.to_ne_bytes(),
            bpf::bytes(b),
        )?;
    }

    let (slots, fallback) = usable(&new_backends);
    let mut flags = 0u8;
    if spec.affinity_timeout.is_some() {
        flags |= svc_flags::AFFINITY;
    }
    if fallback {
        flags |= svc_flags::FALLBACK;
    }
    if spec.svc_type == SvcType::Externalip && !state.is_node_addr(to_map_addr(fe_ip))? {
        // The seed's rule: a non-local ExternalIP is not translated from the
        // host netns; the host reaches the real address.
        flags |= svc_flags::SKIP_HOST;
    }
    for (i, id) in slots.iter().enumerate() {
        let key = svc_key(fe_ip, fe_port, spec.proto, i as u16 + 1);
        let val = types::svc_value {
            svc_id,
            backend_id: *id,
            ..Default::default()
        };
        update(
            &state.svc,
            "service map",
            bpf::bytes(&key),
            bpf::bytes(&val),
        )?;
    }
    let master = types::svc_value {
        svc_id,
        count: slots.len() as u16,
        flags,
        affinity_timeout: spec.affinity_timeout.unwrap_or(0),
        ..Default::default()
    };
    update(
        &state.svc,
        "service map",
        bpf::bytes(&master_key),
        bpf::bytes(&master),
    )?;

    // Only now is the old set unreachable for new lookups: drop its leftovers.
    for slot in slots.len() as u16 + 1..=old_count {
        let key = svc_key(fe_ip, fe_port, spec.proto, slot);
        let _ = state.svc.delete(bpf::bytes(&key));
    }
    let removed: Vec<u32> = old_backends
        .iter()
        .filter(|(id, _)| !new_backends.iter().any(|(n, _)| n == id))
        .map(|(id, _)| *id)
        .collect();
    for id in &removed {
        let _ = state.backend.delete(&id.to_ne_bytes());
    }
    let affinity_on = spec.affinity_timeout.is_some();
    if existing.is_some() && (!removed.is_empty() || !affinity_on) {
        purge_affinity(state, svc_id, |bid| affinity_on && !removed.contains(&bid))?;
    }
    Ok(())
}

fn same_backend(o: &types::backend_value, b: &BackendSpec) -> bool {
    o.addr == to_map_addr(b.addr.ip()) && o.port == to_map_port(b.addr.port())
}

/// Drop the affinity entries of a service whose backend fails `keep`.
fn purge_affinity(state: &State, svc_id: u32, keep: impl Fn(u32) -> bool) -> Result<()> {
    for k in state.affinity.keys() {
        let Ok(key) = bpf::from_bytes::<types::affinity_key>(&k) else {
            continue;
        };
        if key.svc_id != svc_id {
            continue;
        }
        if let Some(v) = lookup::<types::affinity_value>(&state.affinity, &k)?
            && !keep(v.backend_id)
        {
            let _ = state.affinity.delete(&k);
        }
    }
    Ok(())
}

/// Delete a service: its master entry first, so no new connection finds it.
pub fn del(state: &State, frontend: SocketAddr, proto: Proto) -> Result<()> {
    let master_key = svc_key(frontend.ip(), frontend.port(), proto, 0);
    let Some(master): Option<types::svc_value> = lookup(&state.svc, bpf::bytes(&master_key))?
    else {
        bail!("--frontend {frontend}/{proto}: no such service (svc list shows them)");
    };
    state
        .svc
        .delete(bpf::bytes(&master_key))
        .context("delete the service's master entry")?;
    for slot in 1..=master.count {
        let key = svc_key(frontend.ip(), frontend.port(), proto, slot);
        let _ = state.svc.delete(bpf::bytes(&key));
    }
    for (id, _) in backends_of(state, master.svc_id)? {
        let _ = state.backend.delete(&id.to_ne_bytes());
    }
    purge_affinity(state, master.svc_id, |_| false)?;
    state
        .meta
        .delete(&master.svc_id.to_ne_bytes())
        .context("delete the service's metadata")?;
    Ok(())
}

#[derive(Serialize, Clone)]
pub struct BackendView {
    pub id: u32,
    pub addr: String,
    pub terminating: bool,
    pub local: bool,
}

#[derive(Serialize, Clone)]
pub struct ServiceView {
    pub svc_id: u32,
    pub name: String,
    #[serde(rename = "type")]
    pub svc_type: String,
    pub frontend: String,
    pub proto: Proto,
    pub backends: Vec<BackendView>,
    pub affinity_timeout: Option<u32>,
    /// "ok", or what an interrupted command left and how to repair it.
    pub state: String,
}

/// Read every service back from the maps.
pub fn read_all(state: &State) -> Result<Vec<ServiceView>> {
    let mut by_svc: HashMap<u32, Vec<(u32, types::backend_value)>> = HashMap::new();
    for k in state.backend.keys() {
        let Ok(id) = <[u8; 4]>::try_from(k.as_slice()).map(u32::from_ne_bytes) else {
            continue;
        };
        if let Some(v) = lookup::<types::backend_value>(&state.backend, &k)? {
            by_svc.entry(v.svc_id).or_default().push((id, v));
        }
    }
    let mut out = Vec::new();
    for k in state.meta.keys() {
        let Ok(svc_id) = <[u8; 4]>::try_from(k.as_slice()).map(u32::from_ne_bytes) else {
            continue;
        };
        let Some(meta) = lookup::<types::svc_meta>(&state.meta, &k)? else {
            continue;
        };
        let proto = Proto::from_number(meta.proto)?;
        let fe_ip = from_map_addr(meta.frontend_addr);
        let fe_port = from_map_port(meta.frontend_port);
        let master_key = svc_key(fe_ip, fe_port, proto, 0);
        let master: Option<types::svc_value> = lookup(&state.svc, bpf::bytes(&master_key))?;
        let frontend = fmt_endpoint(fe_ip, fe_port);
        let svc_state = match master {
            Some(m) if m.svc_id == svc_id => "ok".to_string(),
            _ => format!(
                "incomplete: an add or del was interrupted; repair with svc add --replace --frontend {frontend} or svc del --frontend {frontend}"
            ),
        };
        let mut backends = by_svc.remove(&svc_id).unwrap_or_default();
        backends.sort_by_key(|(id, _)| *id);
        out.push(ServiceView {
            svc_id,
            name: bpf::from_cstr(&meta.name),
            svc_type: SvcType::from_code(meta.r#type).map_or_else(
                || format!("unknown({})", meta.r#type),
                |t| t.name().to_string(),
            ),
            frontend,
            proto,
            backends: backends
                .into_iter()
                .map(|(id, b)| BackendView {
                    id,
                    addr: fmt_endpoint(from_map_addr(b.addr), from_map_port(b.port)),
                    terminating: b.flags & backend_flags::TERMINATING != 0,
                    local: b.flags & backend_flags::LOCAL != 0,
                })
                .collect(),
            affinity_timeout: (meta.affinity_timeout != 0).then_some(meta.affinity_timeout),
            state: svc_state,
        });
    }
    out.sort_by(|a, b| (&a.frontend, a.proto.to_string()).cmp(&(&b.frontend, b.proto.to_string())));
    Ok(out)
}

#[derive(Tabled)]
struct SvcRow {
    #[tabled(rename = "NAME")]
    name: String,
    #[tabled(rename = "TYPE")]
    svc_type: String,
    #[tabled(rename = "FRONTEND")]
    frontend: String,
    #[tabled(rename = "PROTO")]
    proto: String,
    #[tabled(rename = "BACKENDS")]
    backends: String,
    #[tabled(rename = "AFFINITY")]
    affinity: String,
    #[tabled(rename = "STATE")]
    state: String,
}

pub fn list(state: &State, format: Format) -> Result<()> {
    let services = read_all(state)?;
    let rows: Vec<SvcRow> = services
        .iter()
        .map(|s| SvcRow {
            name: s.name.clone(),
            svc_type: s.svc_type.clone(),
            frontend: s.frontend.clone(),
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
                    t
                })
                .collect::<Vec<_>>()
                .join(" "),
            affinity: s
                .affinity_timeout
                .map_or_else(|| "-".to_string(), |t| format!("client-ip {t}s")),
            state: s.state.clone(),
        })
        .collect();
    output::print(format, &rows, &services)
}
