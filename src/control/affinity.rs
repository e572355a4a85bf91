//! `affinity dump`: the per-netns session affinity entries.

use anyhow::Result;
use libbpf_rs::{MapCore, MapFlags};
use nix::time::{ClockId, clock_gettime};
use serde::Serialize;
use tabled::Tabled;

use crate::bpf::{self, types};
use crate::datapath::state::State;
use crate::model::addr::{Proto, fmt_endpoint, from_map_addr, from_map_port};
use crate::output::{self, Format};

#[derive(Serialize)]
pub struct AffinityView {
    pub netns_cookie: u64,
    /// A name under /run/netns, when the netns has one.
    pub netns: Option<String>,
    /// A process in that netns, when it has no name.
    pub pid: Option<u32>,
    pub service: String,
    pub frontend: String,
    pub proto: Option<Proto>,
    pub backend: Option<String>,
    pub expires_in_s: u64,
}

#[derive(Tabled)]
struct Row {
    #[tabled(rename = "NETNS COOKIE")]
    cookie: u64,
    #[tabled(rename = "NETNS")]
    netns: String,
    #[tabled(rename = "SERVICE")]
    service: String,
    #[tabled(rename = "FRONTEND")]
    frontend: String,
    #[tabled(rename = "BACKEND")]
    backend: String,
    #[tabled(rename = "EXPIRES IN")]
    expires: String,
}

/// Now on the clock bpf_ktime_get_ns() reads (CLOCK_MONOTONIC).
fn monotonic_ns() -> Result<u64> {
    let t = clock_gettime(ClockId::CLOCK_MONOTONIC)?;
    Ok(t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
}

/// Every live entry (expired ones are never used again and are left out).
pub fn read_all(state: &State) -> Result<Vec<AffinityView>> {
    let now = monotonic_ns()?;
    let known: std::collections::HashMap<u64, crate::sys::netns::NetnsInfo> =
        crate::sys::netns::discover()
            .into_iter()
            .map(|n| (n.cookie, n))
            .collect();
    let mut out = Vec::new();
    for k in state.affinity.keys() {
        let key: types::affinity_key = bpf::from_bytes(&k)?;
        let Some(v) = state.affinity.lookup(&k, MapFlags::ANY)? else {
            continue;
        };
        let val: types::affinity_value = bpf::from_bytes(&v)?;
        let meta: Option<types::svc_meta> = state
            .meta
            .lookup(&key.svc_id.to_ne_bytes(), MapFlags::ANY)?
            .map(|m| bpf::from_bytes(&m))
            .transpose()?;
        let timeout_ns = meta.map_or(0, |m| u64::from(m.affinity_timeout) * 1_000_000_000);
        let age = now.saturating_sub(val.last_used_ns);
        if age >= timeout_ns {
            continue;
        }
        let backend: Option<types::backend_value> = state
            .backend
            .lookup(&val.backend_id.to_ne_bytes(), MapFlags::ANY)?
            .map(|b| bpf::from_bytes(&b))
            .transpose()?;
        out.push(AffinityView {
            netns_cookie: key.netns_cookie,
            netns: known
                .get(&key.netns_cookie)
                .and_then(|n| n.names.first().cloned()),
            pid: known
                .get(&key.netns_cookie)
                .filter(|n| n.names.is_empty())
                .and_then(|n| n.pids.first().copied()),
            service: meta.map(|m| bpf::from_cstr(&m.name)).unwrap_or_default(),
            frontend: meta.map_or_else(
                || format!("service {} (gone)", key.svc_id),
                |m| {
                    fmt_endpoint(
                        from_map_addr(m.frontend_addr),
                        from_map_port(m.frontend_port),
                    )
                },
            ),
            proto: meta.and_then(|m| Proto::from_number(m.proto).ok()),
            backend: backend
                .filter(|b| b.svc_id == key.svc_id)
                .map(|b| fmt_endpoint(from_map_addr(b.addr), from_map_port(b.port))),
            expires_in_s: (timeout_ns - age).div_ceil(1_000_000_000),
        });
    }
    out.sort_by(|a, b| (a.netns_cookie, &a.frontend).cmp(&(b.netns_cookie, &b.frontend)));
    Ok(out)
}

pub fn dump(state: &State, format: Format) -> Result<()> {
    let entries = read_all(state)?;
    let rows: Vec<Row> = entries
        .iter()
        .map(|e| Row {
            cookie: e.netns_cookie,
            netns: e
                .netns
                .clone()
                .or_else(|| e.pid.map(|p| format!("pid {p}")))
                .unwrap_or_else(|| "-".into()),
            service: e.service.clone(),
            frontend: match e.proto {
                Some(p) => format!("{}/{p}", e.frontend),
                None => e.frontend.clone(),
            },
            backend: e
                .backend
                .clone()
                .unwrap_or_else(|| "(gone: picks again)".into()),
            expires: format!("{}s", e.expires_in_s),
        })
        .collect();
    output::print(format, &rows, &entries)
}

/// Delete the entries of one service and/or one client netns (all without
/// filters). Returns how many went.
pub fn flush(state: &State, svc_id: Option<u32>, netns_cookie: Option<u64>) -> Result<usize> {
    let mut n = 0;
    for k in state.affinity.keys() {
        let key: types::affinity_key = bpf::from_bytes(&k)?;
        if svc_id.is_some_and(|id| id != key.svc_id)
            || netns_cookie.is_some_and(|c| c != key.netns_cookie)
        {
            continue;
        }
        if state.affinity.delete(&k).is_ok() {
            n += 1;
        }
    }
    Ok(n)
}
