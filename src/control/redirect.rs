//! Local redirects (`redirect add|del|list`, a file's `redirects:`), as
//! Cilium's Local Redirect Policy with skipRedirectFromBackend.
//!
//! A redirect is one element of redirect_map, keyed by its frontend: the
//! datapath looks it up before any service on a port whose port_map bits
//! say a redirect uses it, so it takes precedence over a service on the same
//! frontend and deleting it restores the service. With
//! --skip-from-backend, redirect_skip_map holds (netns cookie, frontend) for
//! each backend's netns, and sockets of those netns are left to the service
//! (or to the address itself).
//!
//! A backend's netns is the one the user named (`netns=NAME`) or the netns
//! on this node whose interfaces own the backend's address. A cookie is
//! never reused: when the pod behind a backend is replaced, `refresh` (run
//! by `node refresh` and `apply`) finds the new netns and rebinds.
//!
//! Write order, so that a racing connect sees the old or the new redirect:
//! new skip entries, the port bit, the redirect element, then the skip
//! entries no longer needed; a delete removes the element first.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use anyhow::{Context, Result, anyhow, bail};
use libbpf_rs::{MapCore, MapFlags};
use serde::Serialize;
use tabled::Tabled;

use crate::bpf::{self, types};
use crate::datapath::maps::{self, MapId};
use crate::datapath::state::State;
use crate::model::addr::{Proto, from_map_addr, from_map_port, to_map_addr, to_map_port};
use crate::model::redirect::{RedirectBackend, RedirectSpec};
use crate::output::{self, Format};
use crate::sys::netns::{NetnsInfo, NetnsRef, find};

/// The redirect_map key of a frontend.
pub fn key_of(frontend: SocketAddr, proto: Proto) -> types::svc_key {
    crate::control::store::svc_key(frontend.ip(), frontend.port(), proto, 0)
}

fn skip_key(cookie: u64, k: &types::svc_key) -> types::redirect_skip_key {
    types::redirect_skip_key {
        netns_cookie: cookie,
        addr: k.addr,
        port: k.port,
        proto: k.proto,
        ..Default::default()
    }
}

/// Every redirect the maps hold.
pub fn read_all(state: &State) -> Result<Vec<(types::svc_key, types::redirect_value)>> {
    let mut out: Vec<(types::svc_key, types::redirect_value)> = Vec::new();
    for k in state.redirect.keys() {
        let Some(v) = state
            .redirect
            .lookup(&k, MapFlags::ANY)
            .context("read redirect_map")?
        else {
            continue;
        };
        out.push((bpf::from_bytes(&k)?, bpf::from_bytes(&v)?));
    }
    out.sort_by_key(|(k, _)| (k.addr, k.port, k.proto));
    Ok(out)
}

fn get(state: &State, key: &types::svc_key) -> Result<Option<types::redirect_value>> {
    state
        .redirect
        .lookup(bpf::bytes(key), MapFlags::ANY)
        .context("read redirect_map")?
        .map(|v| bpf::from_bytes(&v))
        .transpose()
}

/// Every netns on this node, found once, with the addresses of its
/// interfaces (entered lazily: only when a backend is found by address).
struct Netns {
    all: Option<Vec<(NetnsInfo, Vec<IpAddr>)>>,
}

impl Netns {
    fn new() -> Netns {
        Netns { all: None }
    }

    fn scan(&mut self) -> &[(NetnsInfo, Vec<IpAddr>)] {
        self.all.get_or_insert_with(|| {
            find()
                .into_iter()
                .filter_map(|mut n| {
                    let (cookie, addrs) = crate::sys::in_netns(&n.path, || {
                        Ok((
                            crate::sys::current_netns_cookie()?,
                            crate::sys::interface_addrs()?,
                        ))
                    })
                    .ok()?;
                    n.cookie = cookie;
                    Some((n, addrs))
                })
                .collect()
        })
    }

    /// (cookie, name) of the netns that owns `addr`; None when none does.
    fn owner(&mut self, addr: IpAddr) -> Result<Option<(u64, String)>> {
        if addr.is_loopback() {
            bail!(
                "--backend {addr}: every netns has a loopback address; name the backend's netns with netns=NAME"
            );
        }
        let owners: Vec<&(NetnsInfo, Vec<IpAddr>)> = self
            .scan()
            .iter()
            .filter(|(_, addrs)| addrs.contains(&addr))
            .collect();
        match owners.as_slice() {
            [] => Ok(None),
            [(n, _)] => Ok(Some((
                n.cookie,
                n.names.first().cloned().unwrap_or_default(),
            ))),
            many => bail!(
                "--backend {addr}: {} network namespaces have this address ({}); name the backend's with netns=NAME",
                many.len(),
                many.iter()
                    .map(|(n, _)| n
                        .names
                        .first()
                        .cloned()
                        .unwrap_or_else(|| format!("cookie {}", n.cookie)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// The datapath's form of one backend, its netns looked up now. Only a
/// redirect that skips its backends' netns needs it found.
fn backend_value(
    b: &RedirectBackend,
    ns: &mut Netns,
    required: bool,
) -> Result<types::redirect_backend> {
    let (cookie, name, by_name) = match &b.netns {
        Some(n) => (NetnsRef::Name(n.clone()).cookie()?, n.clone(), 1),
        None => match ns.owner(b.addr.ip()) {
            Ok(Some((c, n))) => (c, n, 0),
            Ok(None) | Err(_) if !required => (0, String::new(), 0),
            Err(e) => return Err(e),
            Ok(None) => bail!(
                "--backend {}: no network namespace on this node has the address {}, and --skip-from-backend needs the backend's; start the backend first, or name its netns with netns=NAME",
                b.addr,
                b.addr.ip()
            ),
        },
    };
    Ok(types::redirect_backend {
        addr: to_map_addr(b.addr.ip()),
        port: to_map_port(b.addr.port()),
        by_name,
        netns_cookie: cookie,
        netns: bpf::to_cstr(&name),
        ..Default::default()
    })
}

/// The element a spec describes, with every backend's netns found.
fn value_of(spec: &RedirectSpec, ns: &mut Netns) -> Result<types::redirect_value> {
    let mut v = types::redirect_value {
        name: bpf::to_cstr(&spec.name),
        count: spec.backends.len() as u16,
        flags: if spec.skip_from_backend {
            types::nxl_redirect_flags::NXL_RD_F_SKIP_BACKEND.0 as u8
        } else {
            0
        },
        from_file: spec.from_file.into(),
        ..Default::default()
    };
    for (i, b) in spec.backends.iter().enumerate() {
        v.be[i] = backend_value(b, ns, spec.skip_from_backend)?;
    }
    Ok(v)
}

/// The skip entries a redirect needs.
fn skips_of(k: &types::svc_key, v: &types::redirect_value) -> HashSet<Vec<u8>> {
    if v.flags & types::nxl_redirect_flags::NXL_RD_F_SKIP_BACKEND.0 as u8 == 0 {
        return HashSet::new();
    }
    v.be[..usize::from(v.count).min(v.be.len())]
        .iter()
        .filter(|b| b.netns_cookie != 0)
        .map(|b| bpf::bytes(&skip_key(b.netns_cookie, k)).to_vec())
        .collect()
}

fn redirect_bit(proto: u8) -> u32 {
    use types::nxl_port_bits as P;
    if proto == Proto::Udp.number() {
        P::NXL_PORT_REDIRECT_UDP.0
    } else {
        P::NXL_PORT_REDIRECT_TCP.0
    }
}

fn set_port_bit(state: &State, k: &types::svc_key, on: bool) -> Result<()> {
    let key = u32::from(from_map_port(k.port)).to_ne_bytes();
    let cur = maps::get::<u32>(state, MapId::Ports, &key)?.unwrap_or(0);
    let want = if on {
        cur | redirect_bit(k.proto)
    } else {
        cur & !redirect_bit(k.proto)
    };
    if want != cur {
        maps::put(state, MapId::Ports, &key, &want.to_ne_bytes())?;
    }
    Ok(())
}

fn full(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!(
        "{e}; the maps hold {} redirects of {} backends each: delete one first",
        bpf::MAX_REDIRECTS,
        bpf::REDIRECT_BACKENDS
    )
}

/// Write `v` at `k` over what is there (`old`), in the order the module
/// comment gives.
fn write(
    state: &State,
    k: &types::svc_key,
    v: &types::redirect_value,
    old: Option<&types::redirect_value>,
) -> Result<()> {
    let new_skips = skips_of(k, v);
    let old_skips = old.map(|o| skips_of(k, o)).unwrap_or_default();
    for s in new_skips.difference(&old_skips) {
        state
            .redirect_skip
            .update(s, &1u32.to_ne_bytes(), MapFlags::ANY)
            .map_err(|e| full(format!("write redirect_skip_map: {e}")))?;
    }
    set_port_bit(state, k, true)?;
    if let Err(e) = state
        .redirect
        .update(bpf::bytes(k), bpf::bytes(v), MapFlags::ANY)
    {
        // Nothing reaches the new skip entries without the element.
        for s in new_skips.difference(&old_skips) {
            let _ = state.redirect_skip.delete(s);
        }
        return Err(full(format!("write redirect_map: {e}")));
    }
    for s in old_skips.difference(&new_skips) {
        let _ = state.redirect_skip.delete(s);
    }
    Ok(())
}

/// What an add did.
pub enum Added {
    New,
    Replaced,
    Unchanged,
}

/// Add a redirect, or replace the one on its frontend.
pub fn add(state: &State, spec: &RedirectSpec) -> Result<Added> {
    spec.validate()?;
    let k = key_of(spec.frontend, spec.proto);
    let v = value_of(spec, &mut Netns::new())?;
    let old = get(state, &k)?;
    if old.is_some_and(|o| bpf::bytes(&o) == bpf::bytes(&v)) {
        return Ok(Added::Unchanged);
    }
    write(state, &k, &v, old.as_ref())?;
    Ok(if old.is_some() {
        Added::Replaced
    } else {
        Added::New
    })
}

/// Delete the redirect on a frontend; its service (if any) answers again.
pub fn del(state: &State, frontend: SocketAddr, proto: Proto) -> Result<()> {
    let k = key_of(frontend, proto);
    let Some(old) = get(state, &k)? else {
        bail!("--frontend {frontend}/{proto}: no redirect there (redirect list shows them)");
    };
    remove(state, &k, &old)
}

fn remove(state: &State, k: &types::svc_key, old: &types::redirect_value) -> Result<()> {
    state
        .redirect
        .delete(bpf::bytes(k))
        .context("delete from redirect_map")?;
    for s in skips_of(k, old) {
        let _ = state.redirect_skip.delete(&s);
    }
    let others = read_all(state)?
        .iter()
        .any(|(o, _)| o.port == k.port && o.proto == k.proto);
    if !others {
        set_port_bit(state, k, false)?;
    }
    Ok(())
}

/// Look every backend's netns up again and rebind the redirects whose
/// backends now live in another netns (a replaced pod) or in none. Returns
/// a line per change.
pub fn refresh(state: &State) -> Result<Vec<String>> {
    let mut ns = Netns::new();
    let mut out = Vec::new();
    for (k, old) in read_all(state)? {
        let mut v = old;
        let n = usize::from(v.count).min(v.be.len());
        for b in v.be[..n].iter_mut() {
            let addr = SocketAddr::new(from_map_addr(b.addr), from_map_port(b.port));
            let (cookie, name) = if b.by_name != 0 {
                let n = bpf::from_cstr(&b.netns);
                (NetnsRef::Name(n.clone()).cookie().unwrap_or(0), n)
            } else {
                match ns.owner(addr.ip()) {
                    Ok(Some((c, n))) => (c, n),
                    Ok(None) => (0, String::new()),
                    // Two netns have the address (a pod starting while
                    // its predecessor stops): keep what it has.
                    Err(e) => {
                        out.push(format!(
                            "redirect {}: backend {addr}: {e:#}; kept netns cookie {}",
                            frontend_of(&k),
                            b.netns_cookie
                        ));
                        continue;
                    }
                }
            };
            if cookie != b.netns_cookie {
                out.push(format!(
                    "redirect {}: backend {addr} netns cookie {} -> {}",
                    frontend_of(&k),
                    b.netns_cookie,
                    if cookie == 0 {
                        "none (its netns is gone)".to_string()
                    } else {
                        cookie.to_string()
                    }
                ));
                b.netns_cookie = cookie;
                b.netns = bpf::to_cstr(&name);
            }
        }
        if bpf::bytes(&v) != bpf::bytes(&old) {
            write(state, &k, &v, Some(&old))?;
        }
    }
    Ok(out)
}

fn frontend_of(k: &types::svc_key) -> String {
    let proto = Proto::from_number(k.proto).map_or_else(|_| "?".into(), |p| p.to_string());
    format!(
        "{}/{proto}",
        SocketAddr::new(from_map_addr(k.addr), from_map_port(k.port))
    )
}

/// What apply will do with a file's `redirects:`: planned (every backend's
/// netns found) before anything is written, written after the services.
#[derive(Default)]
pub struct Plan {
    writes: Vec<(
        types::svc_key,
        types::redirect_value,
        Option<types::redirect_value>,
    )>,
    removes: Vec<(types::svc_key, types::redirect_value)>,
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    pub unchanged: usize,
}

/// Plan a file's `redirects:`: add or replace each, and with --prune delete
/// the redirects a file wrote that it no longer lists (a `redirect add` one
/// stays).
pub fn plan(state: &State, specs: &[RedirectSpec], prune: bool) -> Result<Plan> {
    let mut ns = Netns::new();
    let have: BTreeMap<Vec<u8>, types::redirect_value> = read_all(state)?
        .into_iter()
        .map(|(k, v)| (bpf::bytes(&k).to_vec(), v))
        .collect();
    let mut out = Plan::default();
    let mut seen = HashSet::new();
    for s in specs {
        let k = key_of(s.frontend, s.proto);
        if !seen.insert(bpf::bytes(&k).to_vec()) {
            bail!(
                "redirects: {}/{} is given twice; a frontend has one redirect",
                s.frontend,
                s.proto
            );
        }
        let v = value_of(s, &mut ns)?;
        let shown = format!(
            "redirect {}/{} ({} backends)",
            s.frontend,
            s.proto,
            s.backends.len()
        );
        match have.get(bpf::bytes(&k)) {
            Some(o) if bpf::bytes(o) == bpf::bytes(&v) => out.unchanged += 1,
            o => {
                if o.is_some() {
                    out.changed.push(shown);
                } else {
                    out.added.push(shown);
                }
                out.writes.push((k, v, o.copied()));
            }
        }
    }
    if prune {
        for (kb, o) in &have {
            if o.from_file != 0 && !seen.contains(kb) {
                let k: types::svc_key = bpf::from_bytes(kb)?;
                out.removed.push(format!("redirect {}", frontend_of(&k)));
                out.removes.push((k, *o));
            }
        }
    }
    Ok(out)
}

impl Plan {
    pub fn write(&self, state: &State) -> Result<()> {
        for (k, v, old) in &self.writes {
            write(state, k, v, old.as_ref())?;
        }
        for (k, o) in &self.removes {
            remove(state, k, o)?;
        }
        Ok(())
    }
}

#[derive(Serialize)]
struct BackendView {
    addr: String,
    /// The netns the user named (absent: found from the address).
    #[serde(skip_serializing_if = "Option::is_none")]
    netns: Option<String>,
    netns_found: String,
    netns_cookie: u64,
    /// Whether a netns with this cookie is on the node now.
    live: bool,
}

#[derive(Serialize)]
struct RedirectView {
    name: String,
    frontend: String,
    proto: String,
    skip_from_backend: bool,
    origin: &'static str,
    backends: Vec<BackendView>,
}

#[derive(Tabled)]
struct Row {
    #[tabled(rename = "FRONTEND")]
    frontend: String,
    #[tabled(rename = "PROTO")]
    proto: String,
    #[tabled(rename = "NAME")]
    name: String,
    #[tabled(rename = "SKIP FROM BACKEND")]
    skip: &'static str,
    #[tabled(rename = "BACKENDS (NETNS, COOKIE)")]
    backends: String,
}

pub fn list(state: &State, format: Format) -> Result<()> {
    let live: HashSet<u64> = crate::sys::netns::discover()
        .iter()
        .map(|n| n.cookie)
        .collect();
    let views: Vec<RedirectView> = read_all(state)?
        .iter()
        .map(|(k, v)| RedirectView {
            name: bpf::from_cstr(&v.name),
            frontend: SocketAddr::new(from_map_addr(k.addr), from_map_port(k.port)).to_string(),
            proto: Proto::from_number(k.proto).map_or_else(|_| "?".into(), |p| p.to_string()),
            skip_from_backend: v.flags & types::nxl_redirect_flags::NXL_RD_F_SKIP_BACKEND.0 as u8
                != 0,
            origin: if v.from_file != 0 { "file" } else { "user" },
            backends: v.be[..usize::from(v.count).min(v.be.len())]
                .iter()
                .map(|b| {
                    let name = bpf::from_cstr(&b.netns);
                    BackendView {
                        addr: SocketAddr::new(from_map_addr(b.addr), from_map_port(b.port))
                            .to_string(),
                        netns: (b.by_name != 0).then(|| name.clone()),
                        netns_found: name,
                        netns_cookie: b.netns_cookie,
                        live: b.netns_cookie != 0 && live.contains(&b.netns_cookie),
                    }
                })
                .collect(),
        })
        .collect();
    let rows: Vec<Row> = views
        .iter()
        .map(|r| Row {
            frontend: r.frontend.clone(),
            proto: r.proto.clone(),
            name: if r.name.is_empty() {
                "-".into()
            } else {
                r.name.clone()
            },
            skip: if r.skip_from_backend { "yes" } else { "no" },
            backends: r
                .backends
                .iter()
                .map(|b| {
                    let ns = if b.netns_found.is_empty() {
                        "(unnamed)"
                    } else {
                        &b.netns_found
                    };
                    match (b.netns_cookie, b.live) {
                        (0, _) => format!("{} (no netns found; node refresh looks again)", b.addr),
                        (c, true) => format!("{} ({ns}, {c})", b.addr),
                        (c, false) => format!("{} ({ns}, {c}, gone)", b.addr),
                    }
                })
                .collect::<Vec<_>>()
                .join("\n"),
        })
        .collect();
    output::print(format, &rows, &views)
}
