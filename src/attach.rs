//! attach, detach, status: the lifetime of one attachment.

use std::fs;
use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result, anyhow, bail};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, PrintLevel, ProgramInput};
use serde::Serialize;
use tabled::Tabled;

use crate::addr::to_map_addr;
use crate::bpf::{self, LAYOUT_VERSION, NetnsxlSkelBuilder, types};
use crate::features::{self, Feature, Id};
use crate::output::{self, Format};
use crate::state::{CGROUP_PROGS, ITER_PROGS, MAPS, Pins, State};
use crate::sys;

pub struct AttachOpts {
    pub cgroup: PathBuf,
    pub host_netns: Option<PathBuf>,
    pub node_ips: Vec<IpAddr>,
    pub node_port_range: (u16, u16),
    pub capacity: Capacity,
}

/// Map sizes, fixed at attach (`--max-*`).
#[derive(Clone, Copy, Debug)]
pub struct Capacity {
    pub services: u32,
    pub backends: u32,
    pub affinity: u32,
}

impl Default for Capacity {
    fn default() -> Capacity {
        use types::nxl_limits as L;
        Capacity {
            services: L::NXL_DEFAULT_MAX_SERVICES.0,
            backends: L::NXL_DEFAULT_MAX_BACKENDS.0,
            affinity: L::NXL_DEFAULT_MAX_AFFINITY.0,
        }
    }
}

impl Capacity {
    /// svc_map holds a master entry per frontend and a slot per (frontend,
    /// backend): a ClusterIP with 3 backends uses 4.
    pub fn svc_entries(&self) -> Result<u32> {
        self.services
            .checked_add(self.backends)
            .filter(|n| *n <= 1 << 26)
            .context("--max-services plus --max-backends may be at most 67108864")
    }

    pub fn check(&self) -> Result<()> {
        for (opt, v) in [
            ("--max-services", self.services),
            ("--max-backends", self.backends),
            ("--max-affinity", self.affinity),
        ] {
            if !(1..=1 << 24).contains(&v) {
                bail!("{opt} {v} is out of range: use 1..=16777216");
            }
        }
        self.svc_entries().map(|_| ())
    }
}

static LIBBPF_LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn capture_libbpf_log(_level: PrintLevel, msg: String) {
    if let Ok(mut log) = LIBBPF_LOG.lock() {
        log.push(msg);
    }
}

/// The last lines libbpf printed (the verifier log's tail on a rejection).
fn libbpf_log_tail(n: usize) -> String {
    let log = LIBBPF_LOG.lock().map(|l| l.concat()).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Removes what a failed attach pinned, unless disarmed.
struct PinCleanup<'a> {
    pins: &'a Pins,
    armed: bool,
}

impl Drop for PinCleanup<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = remove_pins(self.pins);
        }
    }
}

/// Detach and unpin the links first, then the maps, then the dirs.
fn remove_pins(pins: &Pins) -> Result<()> {
    for prog in CGROUP_PROGS.iter().chain(ITER_PROGS) {
        let p = pins.link(prog);
        if p.exists() {
            // The last reference to a link is released asynchronously after
            // its pin goes; BPF_LINK_DETACH detaches the program right now,
            // so the command returns only when nothing is attached.
            // (Iterator links are attached to nothing: unpinning is enough.)
            if CGROUP_PROGS.contains(prog)
                && let Ok(link) = Link::open(&p)
            {
                link.detach()
                    .with_context(|| format!("detach link {}", p.display()))?;
            }
            fs::remove_file(&p).with_context(|| format!("remove link pin {}", p.display()))?;
        }
    }
    for map in MAPS {
        let p = pins.map(map);
        if p.exists() {
            fs::remove_file(&p).with_context(|| format!("remove map pin {}", p.display()))?;
        }
    }
    for d in [pins.links_dir(), pins.maps_dir(), pins.root.clone()] {
        if d.exists() {
            fs::remove_dir(&d).with_context(|| {
                format!(
                    "remove {}: it holds files netnsxl did not create",
                    d.display()
                )
            })?;
        }
    }
    Ok(())
}

fn same_netns_as_init() -> bool {
    let ino = |p: &str| fs::metadata(p).map(|m| (m.dev(), m.ino())).ok();
    let me = ino("/proc/self/ns/net");
    me.is_some() && me == ino("/proc/1/ns/net")
}

/// Attach, or report that this cgroup is attached already.
pub fn attach(pin_dir: &Path, opts: &AttachOpts) -> Result<()> {
    sys::require_privileges()?;
    sys::ensure_bpffs(pin_dir)?;
    let (cgroup, cgroup_id) = sys::check_cgroup2_dir(&opts.cgroup)?;
    let _lock = sys::StateLock::take(pin_dir)?;
    let pins = Pins::new(pin_dir);

    if pins.exists() {
        let state = State::open_unchecked(pins.clone())?;
        let cfg = state.config()?;
        if cfg.attached != 0 && cfg.layout_version == LAYOUT_VERSION {
            if cfg.cgroup_id == cgroup_id {
                println!(
                    "already attached to {} (pin dir {})",
                    cgroup.display(),
                    pin_dir.display()
                );
                return Ok(());
            }
            bail!(
                "{} is attached to {}; run netnsxl detach first (one attachment per pin dir, or use another --pin-dir)",
                pin_dir.display(),
                bpf::from_cstr(&cfg.cgroup_path)
            );
        }
        if cfg.attached != 0 {
            bail!(
                "{} holds state of layout version {} (this netnsxl: {}); run netnsxl detach, then attach again",
                pin_dir.display(),
                cfg.layout_version,
                LAYOUT_VERSION
            );
        }
        // An interrupted attach: nothing was ever usable; start again.
        drop(state);
        remove_pins(&pins)?;
    }

    // Refuse a kernel below the floor with the missing feature's name, before
    // the loader can fail with a bare EINVAL; turn optional parts off.
    let probed = features::probe();
    if let Some(refusal) = probed.refusal() {
        bail!(refusal);
    }

    let host_cookie = match &opts.host_netns {
        Some(p) => {
            Some(sys::netns_cookie_of(p).with_context(|| format!("--host-netns {}", p.display()))?)
        }
        None => None,
    };
    let node_addrs = host_addrs(opts.host_netns.as_deref(), &opts.node_ips)?;

    libbpf_rs::set_print(Some((PrintLevel::Debug, capture_libbpf_log)));
    let mut obj = MaybeUninit::uninit();
    let mut open = NetnsxlSkelBuilder::default()
        .open(&mut obj)
        .context("open the BPF object")?;
    let cap = opts.capacity;
    cap.check()?;
    let feature_bits = probed.bits();
    open.maps
        .rodata_data
        .as_deref_mut()
        .context("the BPF object has no .rodata")?
        .nxl_features = feature_bits;
    open.progs
        .nxl_probe_init_cookie
        .set_autoload(probed.has(Id::InitCookieTc));
    open.maps
        .svc_map
        .set_max_entries(cap.svc_entries()?)
        .context("size svc_map")?;
    open.maps
        .meta_map
        .set_max_entries(cap.services)
        .context("size meta_map")?;
    open.maps
        .svc_stats_map
        .set_max_entries(cap.services)
        .context("size svc_stats_map")?;
    open.maps
        .backend_map
        .set_max_entries(cap.backends)
        .context("size backend_map")?;
    open.maps
        .member_map
        .set_max_entries(cap.backends)
        .context("size member_map")?;
    open.maps
        .affinity_map
        .set_max_entries(cap.affinity)
        .context("size affinity_map")?;
    let skel = open.load().map_err(|e| {
        anyhow!(
            "load the BPF object on kernel {}: {e}\nlast lines of the libbpf/verifier log:\n{}",
            probed.kernel_release,
            libbpf_log_tail(25)
        )
    })?;

    let (init_cookie, cookie_from_bpf) = probe_init_cookie(&skel, probed.has(Id::InitCookieTc))?;
    let host_cookie = host_cookie.unwrap_or(init_cookie);

    let mut cleanup = PinCleanup {
        pins: &pins,
        armed: true,
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(pins.maps_dir())
        .with_context(|| format!("create {}", pins.maps_dir().display()))?;
    fs::DirBuilder::new()
        .mode(0o700)
        .create(pins.links_dir())
        .with_context(|| format!("create {}", pins.links_dir().display()))?;

    let maps = &skel.maps;
    for (name, map) in [
        ("svc_map", &maps.svc_map),
        ("backend_map", &maps.backend_map),
        ("meta_map", &maps.meta_map),
        ("affinity_map", &maps.affinity_map),
        ("revnat_map", &maps.revnat_map),
        ("node_addr_map", &maps.node_addr_map),
        ("bypass_map", &maps.bypass_map),
        ("doomed_map", &maps.doomed_map),
        ("port_map", &maps.port_map),
        ("member_map", &maps.member_map),
        ("stats_map", &maps.stats_map),
        ("svc_stats_map", &maps.svc_stats_map),
        ("events_map", &maps.events_map),
        ("config_map", &maps.config_map),
    ] {
        let path = pins.map(name);
        // MapImpl::pin needs &mut; pin through a handle on the same map.
        let mut handle = libbpf_rs::MapHandle::try_from(map).context("map handle")?;
        handle
            .pin(&path)
            .with_context(|| format!("pin map {}", path.display()))?;
    }
    let state = State::open_unchecked(pins.clone())?;

    let mut cfg = types::nxl_config {
        host_netns_cookie: host_cookie,
        init_netns_cookie: init_cookie,
        cgroup_id,
        layout_version: LAYOUT_VERSION,
        next_svc_id: 1,
        next_backend_id: 1,
        attached: 0,
        node_port_min: opts.node_port_range.0,
        node_port_max: opts.node_port_range.1,
        cgroup_path: bpf::to_cstr(&cgroup.to_string_lossy()),
        bypass_count: 0,
        tracers: 0,
        features: feature_bits
            | if cookie_from_bpf {
                features::bits::INIT_COOKIE_BPF
            } else {
                0
            },
    };
    state.write_config(&cfg)?;
    write_node_addrs(&state, &node_addrs)?;

    let cg = fs::File::open(&cgroup).with_context(|| format!("open {}", cgroup.display()))?;
    let progs = &skel.progs;
    for (name, prog) in [
        ("nxl_connect4", &progs.nxl_connect4),
        ("nxl_sendmsg4", &progs.nxl_sendmsg4),
        ("nxl_recvmsg4", &progs.nxl_recvmsg4),
        ("nxl_getpeername4", &progs.nxl_getpeername4),
        ("nxl_connect6", &progs.nxl_connect6),
        ("nxl_sendmsg6", &progs.nxl_sendmsg6),
        ("nxl_recvmsg6", &progs.nxl_recvmsg6),
        ("nxl_getpeername6", &progs.nxl_getpeername6),
    ] {
        let mut link: Link = prog
            .attach_cgroup(cg.as_raw_fd())
            .with_context(|| format!("attach {name} to {}", cgroup.display()))?;
        let path = pins.link(name);
        link.pin(&path)
            .with_context(|| format!("pin link {}", path.display()))?;
    }

    for (name, prog) in [
        ("nxl_destroy_udp", &progs.nxl_destroy_udp),
        ("nxl_destroy_tcp", &progs.nxl_destroy_tcp),
        ("nxl_count_udp", &progs.nxl_count_udp),
        ("nxl_count_tcp", &progs.nxl_count_tcp),
    ] {
        let mut link: Link = prog
            .attach()
            .with_context(|| format!("create the socket iterator {name}"))?;
        let path = pins.link(name);
        link.pin(&path)
            .with_context(|| format!("pin link {}", path.display()))?;
    }

    cfg.attached = 1;
    state.write_config(&cfg)?;
    cleanup.armed = false;
    drop(cleanup);

    println!(
        "attached to {} (cgroup id {cgroup_id}); host netns cookie {host_cookie}; {} node addresses; pins in {}",
        cgroup.display(),
        node_addrs.len(),
        pin_dir.display()
    );
    println!("{}", probed.optional_summary());
    Ok(())
}

/// bpf_get_netns_cookie(NULL) as the kernel returns it, read by running the
/// probe program once (when it `loaded`), with whether it came from there;
/// falls back to SO_NETNS_COOKIE when this process is in the initial netns
/// and the kernel cannot run the probe.
fn probe_init_cookie(skel: &bpf::NetnsxlSkel<'_>, loaded: bool) -> Result<(u64, bool)> {
    if !loaded {
        return init_cookie_from_sockopt("the kernel cannot run the probe program")
            .map(|c| (c, false));
    }
    let pkt = [0u8; 64];
    let input = ProgramInput {
        data_in: Some(&pkt),
        ..Default::default()
    };
    let ran = skel.progs.nxl_probe_init_cookie.test_run(input);
    let cfg: Option<types::nxl_config> = skel
        .maps
        .config_map
        .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
        .ok()
        .flatten()
        .and_then(|v| bpf::from_bytes(&v).ok());
    match (ran, cfg) {
        (Ok(_), Some(c)) if c.init_netns_cookie != 0 => Ok((c.init_netns_cookie, true)),
        (res, _) => {
            init_cookie_from_sockopt(&format!("probe: {:?}", res.err())).map(|c| (c, false))
        }
    }
}

/// The initial netns cookie from SO_NETNS_COOKIE, which is exact only when
/// this process is in the initial netns.
fn init_cookie_from_sockopt(why: &str) -> Result<u64> {
    if same_netns_as_init() {
        sys::current_netns_cookie()
    } else {
        bail!(
            "could not read the initial netns cookie ({why}) and this process is not in the initial netns; run attach from the initial netns"
        )
    }
}

/// The node addresses: the host netns' interface addresses plus extra ones.
pub fn host_addrs(host_netns: Option<&Path>, extra: &[IpAddr]) -> Result<Vec<IpAddr>> {
    let mut addrs = match host_netns {
        Some(p) => sys::in_netns(p, sys::interface_addrs)?,
        None => sys::interface_addrs()?,
    };
    addrs.extend(extra.iter().copied());
    addrs.sort();
    addrs.dedup();
    Ok(addrs)
}

pub fn write_node_addrs(state: &State, addrs: &[IpAddr]) -> Result<()> {
    let old: Vec<Vec<u8>> = state.node_addr.keys().collect();
    for a in addrs {
        state
            .node_addr
            .update(&to_map_addr(*a), &1u32.to_ne_bytes(), MapFlags::ANY)
            .with_context(|| format!("record node address {a}"))?;
    }
    let keep: Vec<[u8; 16]> = addrs.iter().map(|a| to_map_addr(*a)).collect();
    for k in old {
        if !keep.iter().any(|n| n[..] == k[..]) {
            state
                .node_addr
                .delete(&k)
                .context("drop a stale node address")?;
        }
    }
    Ok(())
}

pub fn detach(pin_dir: &Path) -> Result<()> {
    sys::require_privileges()?;
    let _lock = sys::StateLock::take(pin_dir)?;
    let pins = Pins::new(pin_dir);
    if !pin_dir.exists() {
        bail!("not attached: {} does not exist", pin_dir.display());
    }
    remove_pins(&pins)?;
    println!("detached; removed {}", pin_dir.display());
    Ok(())
}

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

/// Sockets that hold reverse-translation state, in every netns netnsxl can
/// find, counted by the pinned socket iterators (one byte per socket).
pub fn revnat_entries(state: &State) -> Result<usize> {
    let mut n = 0;
    for prog in ["nxl_count_udp", "nxl_count_tcp"] {
        n += crate::stale::read_everywhere(state, prog)?;
    }
    Ok(n)
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
            matches!(
                info.as_ref().map(|i| &i.info),
                Some(libbpf_rs::query::LinkTypeInfo::Cgroup(c)) if c.cgroup_id == cfg.cgroup_id
            )
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

    let mut maps = Vec::new();
    for (name, map) in [
        ("svc_map", &state.svc),
        ("backend_map", &state.backend),
        ("member_map", &state.member),
        ("meta_map", &state.meta),
        ("affinity_map", &state.affinity),
        ("node_addr_map", &state.node_addr),
        ("bypass_map", &state.bypass),
        ("doomed_map", &state.doomed),
    ] {
        maps.push(MapStatus {
            name: name.to_string(),
            used: map.keys().count(),
            capacity: Some(map.max_entries()),
        });
    }
    // Socket-local storage: one element per socket that holds state; the
    // kernel frees it with the socket, so it has no capacity.
    maps.push(MapStatus {
        name: "revnat_map".to_string(),
        used: revnat_entries(&state)?,
        capacity: None,
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
        pin_dir: pin_dir.display().to_string(),
        cgroup: bpf::from_cstr(&cfg.cgroup_path),
        cgroup_id: cfg.cgroup_id,
        layout_version: cfg.layout_version,
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
    if st.tracers > 0 {
        st.warnings.push(format!(
            "{} tracer(s) registered: every decision is sent to the ring buffer (a killed trace leaves this set; run netnsxl trace --reset)",
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
