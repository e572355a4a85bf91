//! `status`: the health of one attachment.

use std::fs;
use std::path::Path;

use anyhow::Result;
use libbpf_rs::{Link, MapCore};
use serde::Serialize;
use tabled::Tabled;

use crate::bpf;
use crate::datapath::features::{self, Feature};
use crate::datapath::maps::MapId;
use crate::datapath::state::{CGROUP_PROGS, ITER_PROGS, State};
use crate::output::{self, Format};
use crate::sys;

#[derive(Serialize)]
struct ProgStatus {
    name: String,
    /// "cgroup" (attached to the cgroup) or "iterator" (socket iterator link).
    kind: &'static str,
    prog_id: Option<u32>,
    link_id: Option<u32>,
    attached_to_cgroup: bool,
    run_cnt: Option<u64>,
    run_time_ns: Option<u64>,
    avg_ns: Option<u64>,
}

#[derive(Serialize)]
struct MapStatus {
    name: String,
    used: usize,
    /// None for socket-local storage (it grows and shrinks with sockets).
    capacity: Option<u32>,
}

#[derive(Serialize)]
struct Status {
    pin_dir: String,
    cgroup: String,
    cgroup_id: u64,
    layout_version: u32,
    /// This node's topology.kubernetes.io/zone ("" when unknown).
    zone: String,
    host_netns_cookie: u64,
    init_netns_cookie: u64,
    node_addrs: Vec<String>,
    bpf_stats_enabled: bool,
    /// Where bpffs (holding the pins) and cgroup2 are mounted.
    bpffs_mount: Option<String>,
    cgroup2_mount: Option<String>,
    /// Running `netnsxl trace`s (events are sent only while > 0).
    tracers: u32,
    programs: Vec<ProgStatus>,
    maps: Vec<MapStatus>,
    /// Where init_netns_cookie came from: "bpf_get_netns_cookie(NULL)",
    /// "SO_NETNS_COOKIE" (read in the initial netns), or "not recorded".
    init_netns_cookie_source: &'static str,
    kernel_release: String,
    features: Vec<Feature>,
    /// How sockets connected to a removed backend are closed, as attach
    /// recorded it.
    stale_sockets: &'static str,
    /// Everything that needs attention; empty when healthy.
    warnings: Vec<String>,
}

/// The mount point of the bpffs that holds `p`.
fn bpffs_mount_of(p: &Path) -> Option<String> {
    let mounts = sys::mounts().ok()?;
    mounts
        .iter()
        .filter(|m| m.fstype == "bpf" && p.starts_with(&m.point))
        .max_by_key(|m| m.point.as_os_str().len())
        .map(|m| m.point.display().to_string())
}

#[derive(Tabled)]
struct Row {
    #[tabled(rename = "item")]
    item: String,
    #[tabled(rename = "value")]
    value: String,
}

/// UDP sockets that hold reverse-translation state (socket-local storage,
/// which user space cannot list), in every netns netnsxl can find, counted by
/// the pinned socket iterator (one byte per socket).
pub fn udp_revnat_sockets(state: &State) -> Result<usize> {
    crate::datapath::iter::read_everywhere(state, "nxl_count_udp")
}

/// Open TCP sockets netnsxl translated: the held slots of rev_tcp_map.
pub fn tcp_revnat_sockets(state: &State) -> Result<usize> {
    Ok(crate::datapath::state::read_raw(&state.rev_tcp)?
        .iter()
        .filter(|(_, v)| v.get(..8).is_some_and(|c| c != [0; 8]))
        .count())
}

/// Sockets that hold reverse-translation state, UDP and TCP.
pub fn revnat_entries(state: &State) -> Result<usize> {
    Ok(udp_revnat_sockets(state)? + tcp_revnat_sockets(state)?)
}

/// (map, elements, capacity) of the maps the control plane fills.
pub fn map_fill(state: &State) -> Result<Vec<(String, usize, u32)>> {
    let mut out = Vec::new();
    for id in [
        MapId::Svc,
        MapId::Backend,
        MapId::Member,
        MapId::Meta,
        MapId::Affinity,
        MapId::NodeAddr,
        MapId::Bypass,
        MapId::Doomed,
    ] {
        let map = state.handle(id);
        out.push((id.name().to_string(), map.keys().count(), map.max_entries()));
    }
    Ok(out)
}

/// Whether the cgroup program `name`'s pinned link is attached to the
/// cgroup attach recorded.
pub fn link_attached(state: &State, cgroup_id: u64, name: &str) -> bool {
    let info = Link::open(state.pins.link(name))
        .and_then(|l| l.info())
        .ok();
    matches!(
        info.as_ref().map(|i| &i.info),
        Some(libbpf_rs::query::LinkTypeInfo::Cgroup(c)) if c.cgroup_id == cgroup_id
    )
}

pub fn status(pin_dir: &Path, format: Format) -> Result<()> {
    let state = State::open(pin_dir)?;
    let cfg = state.config()?;
    let stats_on = fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
        .map(|s| s.trim() == "1")
        .unwrap_or(false);

    let infos: Vec<libbpf_rs::query::ProgramInfo> =
        libbpf_rs::query::ProgInfoIter::default().collect();
    let mut programs = Vec::new();
    for name in CGROUP_PROGS.iter().chain(ITER_PROGS) {
        let path = state.pins.link(name);
        let info = Link::open(&path).and_then(|l| l.info()).ok();
        let prog_id = info.as_ref().map(|i| i.prog_id);
        let iter = ITER_PROGS.contains(name);
        let attached = if iter {
            info.is_some()
        } else {
            link_attached(&state, cfg.cgroup_id, name)
        };
        let pi = prog_id.and_then(|id| infos.iter().find(|p| p.id == id));
        let (run_cnt, run_time_ns) = match pi {
            Some(p) if stats_on => (Some(p.run_cnt), Some(p.run_time_ns)),
            _ => (None, None),
        };
        programs.push(ProgStatus {
            name: name.to_string(),
            kind: if iter { "iterator" } else { "cgroup" },
            prog_id,
            link_id: info.as_ref().map(|i| i.id),
            attached_to_cgroup: attached,
            run_cnt,
            run_time_ns,
            avg_ns: match (run_cnt, run_time_ns) {
                (Some(c), Some(t)) if c > 0 => Some(t / c),
                _ => None,
            },
        });
    }

    let mut maps: Vec<MapStatus> = map_fill(&state)?
        .into_iter()
        .map(|(name, used, capacity)| MapStatus {
            name,
            used,
            capacity: Some(capacity),
        })
        .collect();
    // Socket-local storage: one element per UDP socket that holds state;
    // the kernel frees it with the socket, so it has no capacity.
    maps.push(MapStatus {
        name: "revnat_map".to_string(),
        used: udp_revnat_sockets(&state)?,
        capacity: None,
    });
    maps.push(MapStatus {
        name: "rev_tcp_map".to_string(),
        used: tcp_revnat_sockets(&state)?,
        capacity: Some(state.rev_tcp.max_entries()),
    });

    let probed = features::probe();
    let st = Status {
        init_netns_cookie_source: match features::recorded(cfg.features) {
            None => "not recorded",
            Some(_) if cfg.features & features::bits::INIT_COOKIE_BPF != 0 => {
                "bpf_get_netns_cookie(NULL)"
            }
            Some(_) => "SO_NETNS_COOKIE",
        },
        kernel_release: probed.kernel_release.clone(),
        stale_sockets: features::Stale::of(cfg.features).describe(),
        pin_dir: pin_dir.display().to_string(),
        cgroup: bpf::from_cstr(&cfg.cgroup_path),
        cgroup_id: cfg.cgroup_id,
        layout_version: cfg.layout_version,
        zone: crate::bpf::from_cstr(&cfg.zone),
        host_netns_cookie: cfg.host_netns_cookie,
        init_netns_cookie: cfg.init_netns_cookie,
        node_addrs: state
            .node_addrs()?
            .iter()
            .map(ToString::to_string)
            .collect(),
        bpf_stats_enabled: stats_on,
        bpffs_mount: bpffs_mount_of(pin_dir),
        cgroup2_mount: sys::cgroup2_mount().ok().map(|m| m.display().to_string()),
        tracers: cfg.tracers,
        features: probed.features,
        warnings: Vec::new(),
        programs,
        maps,
    };
    let mut st = st;
    for p in &st.programs {
        if !p.attached_to_cgroup {
            st.warnings.push(format!(
                "{} is not attached{}; run netnsxl detach and attach again",
                p.name,
                if p.kind == "cgroup" {
                    format!(" to {}", st.cgroup)
                } else {
                    String::new()
                }
            ));
        }
    }
    for m in &st.maps {
        if let Some(cap) = m.capacity
            && cap > 0
            && m.used as f64 > 0.8 * cap as f64
        {
            st.warnings.push(format!(
                "{} is {:.0}% full ({}/{cap}); attach with larger --max-* before it fills",
                m.name,
                100.0 * m.used as f64 / cap as f64,
                m.used
            ));
        }
    }
    for f in &st.features {
        if f.required && !f.available {
            st.warnings.push(format!(
                "kernel lacks {} (Linux {}), which netnsxl needs",
                f.name, f.kernel
            ));
        }
    }
    if let Some(rec) = features::recorded(cfg.features) {
        for (id, on) in rec {
            let now = st.features.iter().any(|f| f.id == id && f.available);
            if on != now {
                st.warnings.push(format!(
                    "{id} was {} at attach and is {} now (another kernel?); run netnsxl detach and attach again",
                    if on { "on" } else { "off" },
                    if now { "available" } else { "missing" }
                ));
            }
        }
    }
    let live = sys::pindir::TracerLock::live(&state.pins.root)?;
    if st.tracers > live {
        st.warnings.push(format!(
            "{} tracer(s) registered but {live} running: decisions are sent to the ring buffer for tracers that are gone (a killed trace leaves its count); run netnsxl trace --reset",
            st.tracers
        ));
    }

    let mut rows = vec![
        Row {
            item: "pin dir".into(),
            value: st.pin_dir.clone(),
        },
        Row {
            item: "cgroup".into(),
            value: format!("{} (id {})", st.cgroup, st.cgroup_id),
        },
        Row {
            item: "layout version".into(),
            value: st.layout_version.to_string(),
        },
        Row {
            item: "zone".into(),
            value: if st.zone.is_empty() {
                "- (attach or node refresh --zone, or a Node object in apply's input)".into()
            } else {
                st.zone.clone()
            },
        },
        Row {
            item: "host netns cookie".into(),
            value: st.host_netns_cookie.to_string(),
        },
        Row {
            item: "initial netns cookie".into(),
            value: format!(
                "{} (from {})",
                st.init_netns_cookie, st.init_netns_cookie_source
            ),
        },
        Row {
            item: "node addresses".into(),
            value: st.node_addrs.join("\n"),
        },
        Row {
            item: "bpffs / cgroup2".into(),
            value: format!(
                "{} / {}",
                output::opt(&st.bpffs_mount),
                output::opt(&st.cgroup2_mount)
            ),
        },
        Row {
            item: "tracers".into(),
            value: st.tracers.to_string(),
        },
    ];
    rows.push(Row {
        item: "kernel".into(),
        value: st.kernel_release.clone(),
    });
    rows.push(Row {
        item: "stale sockets".into(),
        value: st.stale_sockets.into(),
    });
    for f in &st.features {
        rows.push(Row {
            item: format!("kernel {}+", f.kernel),
            value: match (f.available, f.required) {
                (true, _) => format!("yes {}", f.name),
                (false, true) => format!("NO  {} (required)", f.name),
                (false, false) => format!("NO  {}: {}", f.name, f.without),
            },
        });
    }
    for m in &st.maps {
        rows.push(Row {
            item: format!("map {}", m.name),
            value: match m.capacity {
                Some(c) => format!("{}/{c}", m.used),
                None => format!("{} sockets", m.used),
            },
        });
    }
    for p in &st.programs {
        let stats = match (p.run_cnt, p.run_time_ns, p.avg_ns) {
            (Some(c), Some(t), avg) => format!(
                " run_cnt {c} run_time_ns {t}{}",
                avg.map(|a| format!(" ({a} ns/run)")).unwrap_or_default()
            ),
            _ => String::new(),
        };
        rows.push(Row {
            item: format!("prog {}", p.name),
            value: format!(
                "id {} {}{stats}",
                output::opt(&p.prog_id),
                match (p.kind, p.attached_to_cgroup) {
                    ("iterator", true) => "socket iterator, pinned",
                    ("iterator", false) => "socket iterator MISSING: detach and attach again",
                    (_, true) => "attached",
                    (_, false) => "NOT ATTACHED",
                }
            ),
        });
    }
    rows.push(Row {
        item: "health".into(),
        value: if st.warnings.is_empty() {
            "ok".into()
        } else {
            st.warnings
                .iter()
                .map(|w| format!("WARNING: {w}"))
                .collect::<Vec<_>>()
                .join("\n")
        },
    });
    if !st.bpf_stats_enabled {
        rows.push(Row {
            item: "run_cnt/run_time_ns".into(),
            value: "off; sysctl kernel.bpf_stats_enabled=1 to measure".into(),
        });
    }
    output::print(format, &rows, &st)
}
