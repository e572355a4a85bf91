//! Stale sockets: when a backend goes, sockets netnsxl connected to it are
//! destroyed with `bpf_sock_destroy` (kernel 6.5+), so their owners see
//! ECONNABORTED and reconnect to a live backend (Cilium does the same for
//! UDP: a connected UDP socket otherwise keeps sending to a dead address).
//!
//! A socket iterator walks the sockets of the netns it is created in, so the
//! pinned iterator is read once in every netns that can be found (the
//! initial one, names under /run/netns, and /proc/*/ns/net). The BPF side
//! only destroys a socket connected to a doomed backend whose
//! reverse-translation entry says netnsxl sent it there.

use std::collections::HashSet;

use anyhow::{Context, Result};
use libbpf_rs::{MapCore, MapFlags};

use crate::bpf::{self, MAX_DOOMED, types};
use crate::datapath::iter::{netns_paths, run_iter};
use crate::datapath::state::State;
use crate::model::addr::{Doomed, Proto, to_map_addr, to_map_port};

fn key(d: &Doomed) -> types::doomed_key {
    types::doomed_key {
        addr: to_map_addr(d.addr.ip()),
        port: to_map_port(d.addr.port()),
        proto: d.proto.number(),
        ..Default::default()
    }
}

/// The doomed backends no service uses any more (a backend address another
/// service still has is alive: its sockets stay).
pub fn unused(state: &State, doomed: &[Doomed]) -> Result<Vec<Doomed>> {
    if doomed.is_empty() {
        return Ok(Vec::new());
    }
    let alive: HashSet<([u8; 16], u16)> =
        crate::datapath::state::read_map::<u32, types::backend_value>(&state.backend)?
            .into_iter()
            .map(|(_, b)| (b.addr, b.port))
            .collect();
    let mut seen = HashSet::new();
    Ok(doomed
        .iter()
        .filter(|d| !alive.contains(&(to_map_addr(d.addr.ip()), to_map_port(d.addr.port()))))
        .filter(|d| seen.insert(**d))
        .copied()
        .collect())
}

/// Destroy the sockets connected to `doomed` backends: UDP always, TCP when
/// `tcp`. Returns how many sockets were destroyed.
pub fn destroy(state: &State, doomed: &[Doomed], tcp: bool) -> Result<usize> {
    let doomed: Vec<&Doomed> = doomed
        .iter()
        .filter(|d| tcp || d.proto == Proto::Udp)
        .collect();
    if doomed.is_empty() {
        return Ok(0);
    }
    let feats = state.config()?.features;
    if feats & crate::datapath::features::bits::RECORDED != 0
        && feats & crate::datapath::features::bits::SOCK_DESTROY == 0
    {
        eprintln!(
            "netnsxl: stale sockets were not closed: this kernel lacks bpf_sock_destroy (6.5); sockets connected to {} removed backend(s) stay open until their owners close them",
            doomed.len()
        );
        return Ok(0);
    }
    let spaces = netns_paths();
    let mut destroyed = 0;
    for chunk in doomed.chunks(MAX_DOOMED) {
        for d in chunk {
            state
                .doomed
                .update(bpf::bytes(&key(d)), &1u32.to_ne_bytes(), MapFlags::ANY)
                .context("write doomed_map")?;
        }
        let mut progs = Vec::new();
        if chunk.iter().any(|d| d.proto == Proto::Udp) {
            progs.push("nxl_destroy_udp");
        }
        if chunk.iter().any(|d| d.proto == Proto::Tcp) {
            progs.push("nxl_destroy_tcp");
        }
        let mut res = Ok(());
        'walk: for prog in progs {
            for ns in &spaces {
                match run_iter(state.pins.link(prog), ns.clone()) {
                    Ok(n) => destroyed += n,
                    // A netns that went away meanwhile has no sockets left.
                    Err(_) if !crate::sys::is_ns_file(ns) => {}
                    Err(e) => {
                        res = Err(e.context(format!("in netns {}", ns.display())));
                        break 'walk;
                    }
                }
            }
        }
        for d in chunk {
            let _ = state.doomed.delete(bpf::bytes(&key(d)));
        }
        res?;
    }
    Ok(destroyed)
}

/// After a change: destroy the sockets of the backends it removed that no
/// service uses any more.
pub fn after_change(state: &State, done: &crate::control::store::Done, tcp: bool) -> Result<usize> {
    let wanted: Vec<Doomed> = done
        .doomed
        .iter()
        .filter(|d| tcp || d.proto == Proto::Udp)
        .copied()
        .collect();
    let gone = unused(state, &wanted)?;
    destroy(state, &gone, tcp)
}
