//! Stale sockets: when a backend goes, sockets netnsxl connected to it are
//! closed, so their owners see ECONNABORTED and reconnect to a live backend
//! (Cilium does the same for UDP: a connected UDP socket otherwise keeps
//! sending to a dead address).
//!
//! A socket iterator walks the sockets of the netns it is created in, so the
//! pinned iterator is read once in every netns that can be found (the
//! initial one, names under /run/netns, and /proc/*/ns/net). The BPF side
//! only picks a socket connected to a doomed backend whose
//! reverse-translation entry says netnsxl sent it there. It closes it with
//! `bpf_sock_destroy` (kernel 6.5+); before 6.5 it writes the socket's
//! addresses and cookie, and this module closes it with netlink
//! `SOCK_DESTROY` (sock_diag) in the same netns, as Cilium does there.

use std::collections::HashSet;

use anyhow::{Context, Result};
use libbpf_rs::{MapCore, MapFlags};

use crate::bpf::{self, MAX_DOOMED, types};
use crate::datapath::features::Stale as Mechanism;
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

/// The kfunc iterators write one byte per socket they closed.
fn count_bytes(b: &[u8]) -> Result<usize> {
    Ok(b.len())
}

/// The iterators without the kfunc write one nxl_stale_sock per socket to
/// close: close each with SOCK_DESTROY (in the iterator's netns).
fn destroy_listed(b: &[u8]) -> Result<usize> {
    use crate::sys::sockdiag::{Diag, Outcome, Sock};
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let size = std::mem::size_of::<types::nxl_stale_sock>();
    if b.is_empty() {
        return Ok(0);
    }
    let mut diag = Diag::open()?;
    let mut n = 0;
    for rec in b.chunks_exact(size) {
        let st: types::nxl_stale_sock = bpf::from_bytes(rec)?;
        let addr = |a: &[u8; 16]| -> IpAddr {
            if st.family == libc::AF_INET as u8 {
                IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
            } else {
                IpAddr::V6(Ipv6Addr::from(*a))
            }
        };
        let s = Sock {
            family: st.family,
            proto: st.proto,
            src: addr(&st.src_addr),
            src_port: u16::from_be(st.src_port),
            dst: addr(&st.dst_addr),
            dst_port: u16::from_be(st.dst_port),
            ifindex: st.ifindex,
            cookie: st.cookie,
        };
        match diag.destroy(&s)? {
            Outcome::Destroyed => n += 1,
            Outcome::Gone => {}
            Outcome::Unsupported => anyhow::bail!(
                "this kernel refuses netlink SOCK_DESTROY (built without CONFIG_INET_DIAG_DESTROY)"
            ),
        }
    }
    Ok(n)
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
    let how = Mechanism::of(feats);
    if how == Mechanism::None {
        eprintln!(
            "netnsxl: stale sockets were not closed: {}; sockets connected to {} removed backend(s) stay open until their owners close them",
            Mechanism::None.describe(),
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
                let then = match how {
                    Mechanism::Kfunc => count_bytes,
                    _ => destroy_listed,
                };
                match run_iter(state.pins.link(prog), ns.clone(), then) {
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
