//! attach, detach, status: the lifetime of one attachment.

use std::fs;
use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result, anyhow, bail};
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, PrintLevel, ProgramInput};

use crate::bpf::{self, LAYOUT_VERSION, NetnsxlSkelBuilder, types};
use crate::datapath::features::{self, Id};
use crate::datapath::state::{CGROUP_PROGS, ITER_PROGS, MAPS, Pins, State};
use crate::model::addr::to_map_addr;
use crate::sys;

pub struct AttachOpts {
    pub cgroup: PathBuf,
    pub host_netns: Option<PathBuf>,
    pub node_ips: Vec<IpAddr>,
    pub node_port_range: (u16, u16),
    pub capacity: Capacity,
    /// This node's topology.kubernetes.io/zone ("" when not known).
    pub zone: String,
}

/// Map sizes, fixed at attach (`--max-*`).
#[derive(Clone, Copy, Debug)]
pub struct Capacity {
    pub services: u32,
    pub backends: u32,
    pub affinity: u32,
    /// Slots of rev_tcp_map: open translated TCP sockets (a power of two).
    pub tcp_sockets: u32,
}

impl Default for Capacity {
    fn default() -> Capacity {
        use types::nxl_limits as L;
        Capacity {
            services: L::NXL_DEFAULT_MAX_SERVICES.0,
            backends: L::NXL_DEFAULT_MAX_BACKENDS.0,
            affinity: L::NXL_DEFAULT_MAX_AFFINITY.0,
            tcp_sockets: L::NXL_DEFAULT_TCP_SLOTS.0,
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
        if !(16..=1 << 24).contains(&self.tcp_sockets) || !self.tcp_sockets.is_power_of_two() {
            bail!(
                "--max-tcp-sockets {} is not a power of two in 16..=16777216: use e.g. {}",
                self.tcp_sockets,
                self.tcp_sockets
                    .clamp(16, 1 << 24)
                    .next_power_of_two()
                    .min(1 << 24)
            );
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

/// With this variable set, attach asks the verifier for its statistics and
/// prints one line per program on standard error: how many instructions it
/// processed (the kernel stops at 1,000,000) and how long it took. A guard
/// on the datapath's load cost (see `every_program_verifies_well_below_the_limit`).
pub const VERIFIER_STATS_ENV: &str = "NETNSXL_VERIFIER_STATS";

/// One program's verification, as the verifier summed it up.
#[derive(Debug, PartialEq, Eq)]
pub struct VerifierStat {
    pub prog: String,
    pub insns: u64,
    /// Absent on kernels whose log has no "verification time" line.
    pub usec: Option<u64>,
}

/// The verifier's summary of each program in a libbpf log of log level 4:
/// `prog 'NAME': -- BEGIN PROG LOAD LOG --`, `verification time N usec`,
/// `processed N insns (limit ...) ...`, `-- END PROG LOAD LOG --`.
fn verifier_stats(log: &str) -> Vec<VerifierStat> {
    let number_after = |line: &str, word: &str| -> Option<u64> {
        let rest = line.strip_prefix(word)?.trim_start();
        rest.split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
    };
    let mut out = Vec::new();
    let mut cur: Option<VerifierStat> = None;
    for line in log.lines() {
        let line = line.trim();
        if let Some(at) = line.find("prog '")
            && let Some(rest) = line.get(at + 6..)
            && let Some((name, tail)) = rest.split_once('\'')
            && tail.contains("BEGIN PROG LOAD LOG")
        {
            cur = Some(VerifierStat {
                prog: name.to_string(),
                insns: 0,
                usec: None,
            });
        } else if let Some(c) = cur.as_mut() {
            if let Some(n) = number_after(line, "processed") {
                c.insns = n;
            } else if let Some(n) = number_after(line, "verification time") {
                c.usec = Some(n);
            } else if line.contains("END PROG LOAD LOG") {
                out.extend(cur.take());
            }
        }
    }
    out
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
            let _ = remove_pins(self.pins, true);
        }
    }
}

/// Detach and unpin the links first, then the maps, then the dirs (the pin
/// dir itself too with `root`).
fn remove_pins(pins: &Pins, root: bool) -> Result<()> {
    for prog in CGROUP_PROGS.iter().chain(ITER_PROGS) {
        let p = pins.link(prog);
        if let Ok(meta) = p.symlink_metadata() {
            // The last reference to a link is released asynchronously after
            // its pin goes; BPF_LINK_DETACH detaches the program right now,
            // so the command returns only when nothing is attached.
            // (Iterator links are attached to nothing: unpinning is enough.)
            // A link in place of a pin is removed, never followed: it could
            // name another attachment's link.
            if CGROUP_PROGS.contains(prog)
                && !meta.file_type().is_symlink()
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
        if p.symlink_metadata().is_ok() {
            fs::remove_file(&p).with_context(|| format!("remove map pin {}", p.display()))?;
        }
    }
    for d in [
        pins.links_dir(),
        pins.maps_dir(),
        pins.root.join(sys::pindir::WATCH_DIR),
        pins.root.join(sys::pindir::TRACERS_DIR),
        pins.journal(),
        pins.root.clone(),
    ] {
        if d.exists() && (root || d != pins.root) {
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
    let pin_dir = &sys::pindir::normalize(pin_dir)?;
    sys::ensure_bpffs(pin_dir)?;
    let (cgroup, cgroup_id) = sys::check_cgroup2_dir(&opts.cgroup)?;
    let existed = pin_dir.exists();
    let (pin_dir, dir) = sys::pindir::checked(pin_dir, sys::pindir::Missing::Create)?;
    let pin_dir = pin_dir.as_path();
    let _lock = sys::StateLock::on(dir, pin_dir)?;
    let pins = Pins::new(pin_dir);
    // A pin dir this attach created goes again if the attach fails.
    let mut cleanup = PinCleanup {
        pins: &pins,
        armed: !existed,
    };

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
                cleanup.armed = false;
                // A zone given again is the node's zone from now on.
                if !opts.zone.is_empty() && bpf::from_cstr(&cfg.zone) != opts.zone {
                    let mut cfg = cfg;
                    cfg.zone = bpf::to_cstr(&opts.zone);
                    state.write_config(&cfg)?;
                    println!("zone {}", opts.zone);
                }
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
        // An interrupted attach: nothing was ever usable; start again
        // (in the same, locked, pin dir).
        drop(state);
        remove_pins(&pins, false)?;
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
    open.maps
        .rodata_data
        .as_deref_mut()
        .context("the BPF object has no .rodata")?
        .nxl_tcp_slot_mask = cap.tcp_sockets - 1;
    open.maps
        .rodata_data
        .as_deref_mut()
        .context("the BPF object has no .rodata")?
        .nxl_count_stride = cap.services + 1;
    open.progs
        .nxl_probe_init_cookie
        .set_autoload(probed.has(Id::InitCookieTc));
    open.progs.nxl_bench_empty.set_autoload(false);
    open.maps
        .svc_map
        .set_max_entries(cap.svc_entries()?)
        .context("size svc_map")?;
    open.maps
        .meta_map
        .set_max_entries(cap.services)
        .context("size meta_map")?;
    // Per CPU, indexed by service id 1..=services.
    let cpus = libbpf_rs::num_possible_cpus().context("count possible CPUs")? as u32;
    open.maps
        .svc_count_map
        .set_max_entries(
            (cap.services + 1)
                .checked_mul(cpus)
                .context("--max-services times possible CPUs is over 2^32")?,
        )
        .context("size svc_count_map")?;
    open.maps
        .svc_refused_map
        .set_max_entries(cap.services)
        .context("size svc_refused_map")?;
    open.maps
        .rev_tcp_map
        .set_max_entries(cap.tcp_sockets)
        .context("size rev_tcp_map")?;
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
    let stats = std::env::var_os(VERIFIER_STATS_ENV).is_some();
    if stats {
        for mut p in open.open_object_mut().progs_mut() {
            p.set_log_level(4);
        }
    }
    let skel = open.load().map_err(|e| {
        anyhow!(
            "load the BPF object on kernel {}: {e}\nlast lines of the libbpf/verifier log:\n{}",
            probed.kernel_release,
            libbpf_log_tail(25)
        )
    })?;
    if stats {
        let log = LIBBPF_LOG.lock().map(|l| l.concat()).unwrap_or_default();
        for v in verifier_stats(&log) {
            let time = v
                .usec
                .map(|u| format!(" in {:.1} ms", u as f64 / 1000.0))
                .unwrap_or_default();
            eprintln!(
                "verifier: {}: {} instructions processed{time}",
                v.prog, v.insns
            );
        }
    }

    let (init_cookie, cookie_from_bpf) = probe_init_cookie(&skel, probed.has(Id::InitCookieTc))?;
    let host_cookie = host_cookie.unwrap_or(init_cookie);

    cleanup.armed = true;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(pins.maps_dir())
        .with_context(|| format!("create {}", pins.maps_dir().display()))?;
    fs::DirBuilder::new()
        .mode(0o700)
        .create(pins.links_dir())
        .with_context(|| format!("create {}", pins.links_dir().display()))?;

    // Pin every map of the object that the pin layout names (MAPS, one
    // table); the object's own sections (.rodata, .bss) stay unpinned.
    let mut pinned = Vec::new();
    for map in skel.object().maps() {
        let name = map.name().to_string_lossy().into_owned();
        if !MAPS.contains(&name.as_str()) {
            continue;
        }
        let path = pins.map(&name);
        // MapImpl::pin needs &mut; pin through a handle on the same map.
        let mut handle = libbpf_rs::MapHandle::try_from(&map).context("map handle")?;
        handle
            .pin(&path)
            .with_context(|| format!("pin map {}", path.display()))?;
        pinned.push(name);
    }
    if let Some(missing) = MAPS.iter().find(|m| !pinned.iter().any(|p| p == *m)) {
        bail!("internal error: the BPF object has no map {missing}");
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
        zone: bpf::to_cstr(&opts.zone),
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
    // Programs by name (CGROUP_PROGS and ITER_PROGS are the one table).
    let prog = |name: &str| {
        skel.object()
            .progs_mut()
            .find(|p| p.name() == name)
            .with_context(|| format!("internal error: the BPF object has no program {name}"))
    };
    for name in CGROUP_PROGS {
        let mut link: Link = prog(name)?
            .attach_cgroup(cg.as_raw_fd())
            .with_context(|| format!("attach {name} to {}", cgroup.display()))?;
        let path = pins.link(name);
        link.pin(&path)
            .with_context(|| format!("pin link {}", path.display()))?;
    }
    for name in ITER_PROGS {
        let mut link: Link = prog(name)?
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
    // Checked (and never created) before anything is removed.
    let (pin_dir, dir) = sys::pindir::checked(pin_dir, sys::pindir::Missing::Refuse)?;
    let pin_dir = pin_dir.as_path();
    let _lock = sys::StateLock::on(dir, pin_dir)?;
    let pins = Pins::new(pin_dir);
    remove_pins(&pins, true)?;
    println!("detached; removed {}", pin_dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_stats_are_read_from_the_libbpf_log() {
        // As libbpf 1.x prints a successful load at log level 4 (6.18), and
        // a kernel whose log has no verification time.
        let log = "libbpf: prog 'nxl_connect4': -- BEGIN PROG LOAD LOG --\n\
                   func#0 @0\n\
                   verification time 8145 usec\n\
                   stack depth 120+0\n\
                   processed 8927 insns (limit 1000000) max_states_per_insn 10 total_states 439 peak_states 405 mark_read 0\n\
                   -- END PROG LOAD LOG --\n\
                   libbpf: map 'x': created\n\
                   libbpf: prog 'nxl_recvmsg4': -- BEGIN PROG LOAD LOG --\n\
                   processed 2701 insns (limit 1000000) max_states_per_insn 5\n\
                   -- END PROG LOAD LOG --\n";
        assert_eq!(
            verifier_stats(log),
            vec![
                VerifierStat {
                    prog: "nxl_connect4".into(),
                    insns: 8927,
                    usec: Some(8145)
                },
                VerifierStat {
                    prog: "nxl_recvmsg4".into(),
                    insns: 2701,
                    usec: None
                },
            ]
        );
        assert!(
            verifier_stats("prog 'x': -- BEGIN PROG LOAD LOG --\nprocessed 5 insns").is_empty()
        );
    }
}
