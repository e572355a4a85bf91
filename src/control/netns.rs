//! The bypass list (netns cookies never translated) and `netns list`.

use anyhow::{Context, Result, bail};
use libbpf_rs::{MapCore, MapFlags};
use serde::Serialize;
use tabled::Tabled;

use crate::datapath::state::State;
use crate::output::{self, Format};
use crate::sys::netns::{NetnsRef, discover};

pub fn bypass_add(state: &State, ns: &NetnsRef) -> Result<u64> {
    let cookie = ns.cookie()?;
    state
        .bypass
        .update(&cookie.to_ne_bytes(), &1u32.to_ne_bytes(), MapFlags::ANY)
        .context("write bypass_map")?;
    sync_bypass_count(state)?;
    Ok(cookie)
}

/// The datapath looks bypass_map up only while config says it has entries.
fn sync_bypass_count(state: &State) -> Result<()> {
    let mut cfg = state.config()?;
    let n = bypassed(state).len() as u32;
    if cfg.bypass_count != n {
        cfg.bypass_count = n;
        state.write_config(&cfg)?;
    }
    Ok(())
}

pub fn bypass_del(state: &State, ns: &NetnsRef) -> Result<u64> {
    let cookie = ns.cookie()?;
    if state
        .bypass
        .lookup(&cookie.to_ne_bytes(), MapFlags::ANY)?
        .is_none()
    {
        bail!("netns {} (cookie {cookie}) is not bypassed", ns.shown());
    }
    state
        .bypass
        .delete(&cookie.to_ne_bytes())
        .context("delete from bypass_map")?;
    sync_bypass_count(state)?;
    Ok(cookie)
}

pub fn bypassed(state: &State) -> Vec<u64> {
    state
        .bypass
        .keys()
        .filter_map(|k| {
            <[u8; 8]>::try_from(k.as_slice())
                .ok()
                .map(u64::from_ne_bytes)
        })
        .collect()
}

#[derive(Serialize)]
struct ListEntry {
    cookie: u64,
    names: Vec<String>,
    pids: Vec<u32>,
    host: bool,
    bypassed: bool,
}

#[derive(Tabled)]
struct Row {
    #[tabled(rename = "COOKIE")]
    cookie: u64,
    #[tabled(rename = "NAMES")]
    names: String,
    #[tabled(rename = "PIDS")]
    pids: String,
    #[tabled(rename = "HOST")]
    host: &'static str,
    #[tabled(rename = "BYPASSED")]
    bypassed: &'static str,
}

pub fn list(state: &State, format: Format) -> Result<()> {
    let host = state.config()?.host_netns_cookie;
    let bypass = bypassed(state);
    let entries: Vec<ListEntry> = discover()
        .into_iter()
        .map(|n| ListEntry {
            cookie: n.cookie,
            host: n.cookie == host,
            bypassed: bypass.contains(&n.cookie),
            names: n.names,
            pids: n.pids,
        })
        .collect();
    let yes = |b: bool| if b { "yes" } else { "" };
    let rows: Vec<Row> = entries
        .iter()
        .map(|e| {
            let mut pids: Vec<String> = e.pids.iter().take(8).map(u32::to_string).collect();
            if e.pids.len() > 8 {
                pids.push(format!("(+{})", e.pids.len() - 8));
            }
            Row {
                cookie: e.cookie,
                names: e.names.join(" "),
                pids: pids.join(" "),
                host: yes(e.host),
                bypassed: yes(e.bypassed),
            }
        })
        .collect();
    output::print(format, &rows, &entries)
}
