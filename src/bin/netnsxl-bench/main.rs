//! netnsxl-bench: netnsxl against no translation, kube-proxy's iptables
//! layout and kube-proxy's nftables layout, on one machine, in one run.
//!
//! Topology, the same for every system: a client in a pod netns, a node netns
//! that routes between the pod and a backend netns. Each system has its own
//! pod and node pair (so iptables and nftables rules, loaded only inside
//! their own node netns, never see the others' traffic); all share the
//! backend netns and its servers.
//!
//! ```text
//!   pod-plain --- node-plain ---+
//!   pod-ipt   --- node-ipt   ---+--- backend (203.0.113.1-3)
//!   pod-nft   --- node-nft   ---+
//! ```
//!
//! Systems: direct (the client connects to a backend address; nothing
//! attached), netnsxl (the pod-plain client runs in the attached cgroup and
//! connects to a VIP; with and without affinity; and "miss", a connect to a
//! backend address from the attached cgroup), iptables (kube-proxy's
//! KUBE-SERVICES / KUBE-SVC / KUBE-SEP chains, loaded with iptables-restore)
//! and nftables (kube-proxy's nftables mode: a verdict map keyed by address,
//! protocol and port, loaded with nft -f).
//!
//! Blocks of connects are interleaved system by system, round after round
//! (A B C A B C ...), so drift of the machine cancels; the table reports
//! medians over rounds. Everything the benchmark creates is removed on exit,
//! also when it fails.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use serde::{Deserialize, Serialize};

#[derive(Parser)]
#[command(
    name = "netnsxl-bench",
    about = "Benchmark netnsxl against kube-proxy's layouts"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Internal: one block of connects from a cgroup and netns.
    Client(ClientArgs),
    /// This build's datapath against a baseline netnsxl binary (an earlier
    /// commit's), both attached in one run, warm loops interleaved.
    Ab(ab::AbArgs),
}

#[derive(Args, Clone)]
struct RunArgs {
    /// Numbers of services.
    #[arg(long, value_delimiter = ',', default_value = "1,1000,10000,100000")]
    sizes: Vec<usize>,
    /// Rounds of interleaved blocks per size.
    #[arg(long, default_value_t = 15)]
    rounds: usize,
    /// Connects per block.
    #[arg(long, default_value_t = 500)]
    connects: u32,
    /// Largest size iptables is loaded at (beyond it iptables-restore and the
    /// linear rule walk take too long to be practical).
    #[arg(long, default_value_t = 10000)]
    max_iptables: usize,
    /// Largest size nftables is loaded at.
    #[arg(long, default_value_t = 10000)]
    max_nft: usize,
    /// Where to write the Markdown results and the plot.
    #[arg(long, default_value = "bench")]
    out: PathBuf,
    /// Pairs (one VIP and one direct connection) of the alternating
    /// measurement per size, in client processes of 1,000. A p50 of a few
    /// thousand connections moves by about 1 µs from run to run here; 30,000
    /// pairs resolve the 1 % the ratio target asks for.
    #[arg(long, default_value_t = 30000)]
    alt_pairs: u32,
    /// Rounds of the warm connect loops per size.
    #[arg(long, default_value_t = 7)]
    warm_rounds: usize,
    /// Connects per warm loop.
    #[arg(long, default_value_t = 20000)]
    warm_connects: u32,
    /// Numbers of Services (each with one EndpointSlice) the watch loop is
    /// measured with.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,10000,100000")]
    watch_sizes: Vec<usize>,
    /// Single MODIFIED EndpointSlices per watch size.
    #[arg(long, default_value_t = 1000)]
    watch_events: usize,
    /// Only the watch loop's table (no datapath, no iptables), written to
    /// watch.md.
    #[arg(long)]
    only_watch: bool,
}

#[derive(Args)]
struct ClientArgs {
    #[arg(long)]
    netns: String,
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// tcp or udp; warm also udp-one (every datagram from one socket).
    #[arg(long, default_value = "tcp")]
    proto: String,
    /// Targets: `vips:N:PORT` (VIP 1..N of 198.18.0.0/15) or a comma list
    /// of ADDR:PORT.
    #[arg(long)]
    targets: String,
    #[arg(long)]
    count: u32,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// blocks: `count` connections, timed together; alternate: `count`
    /// pairs of one connection to --targets and one to --direct, in
    /// alternating order, each timed; warm: `count` non-blocking connects,
    /// each closed at once (the hooks run; nothing waits for a handshake).
    #[arg(long, value_enum, default_value_t = Mode::Blocks)]
    mode: Mode,
    /// alternate: the direct targets (ADDR:PORT list).
    #[arg(long)]
    direct: Option<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Blocks,
    Alternate,
    Warm,
}

/// What an alternating client saw: every connection's time (connect +
/// getpeername + request/response + close) and its close() alone, in µs.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
struct Alternation {
    vip_us: Vec<f64>,
    direct_us: Vec<f64>,
    vip_close_us: Vec<f64>,
    direct_close_us: Vec<f64>,
    failed: u32,
    first_error: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
struct Block {
    ok: u32,
    failed: u32,
    wall_us: u64,
    p50_us: f64,
    p99_us: f64,
    first_error: Option<String>,
}

impl Block {
    fn rate(&self) -> f64 {
        self.ok as f64 / (self.wall_us as f64 / 1e6)
    }
}

// ---------------------------------------------------------------------------
// The client

/// VIP number `i` (1-based) of the benchmark's service range.
fn vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i as u32)
}

const BACKENDS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(203, 0, 113, 1),
    Ipv4Addr::new(203, 0, 113, 2),
    Ipv4Addr::new(203, 0, 113, 3),
];
const BE_PORT: u16 = 8080;
const BE_UDP_PORT: u16 = 8053;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
}

/// Picks the next target.
type Picker = Box<dyn Fn(&mut Rng) -> SocketAddr>;

fn parse_targets(spec: &str) -> Result<Picker> {
    if let Some(rest) = spec.strip_prefix("vips:") {
        let (n, port) = rest.split_once(':').context("vips:N:PORT")?;
        let n: usize = n.parse()?;
        let port: u16 = port.parse()?;
        return Ok(Box::new(move |r: &mut Rng| {
            SocketAddr::V4(SocketAddrV4::new(vip(1 + (r.next() as usize % n)), port))
        }));
    }
    let list: Vec<SocketAddr> = spec
        .split(',')
        .map(|s| s.parse().with_context(|| format!("target {s}")))
        .collect::<Result<_>>()?;
    Ok(Box::new(move |r: &mut Rng| {
        list[r.next() as usize % list.len()]
    }))
}

fn enter(netns: &str, cgroup: Option<&Path>) -> Result<()> {
    if let Some(cg) = cgroup {
        fs::write(cg.join("cgroup.procs"), std::process::id().to_string())
            .with_context(|| format!("join {}", cg.display()))?;
    }
    let f = fs::File::open(Path::new("/run/netns").join(netns))?;
    nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
    Ok(())
}

/// One short connection; returns how long its close() took.
fn one_tcp(to: SocketAddr) -> std::io::Result<Duration> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.peer_addr()?; // getpeername(), as clients and libraries do
    s.write_all(b"ping\n")?;
    let mut buf = Vec::with_capacity(64);
    s.read_to_end(&mut buf)?;
    // The server closed first; close with a reset so neither side keeps a
    // TIME_WAIT socket. Otherwise a later connect through a NAT that maps a
    // reused source port to the same backend meets the server's TIME_WAIT
    // entry and waits: that would measure port reuse, not translation.
    nix::sys::socket::setsockopt(
        &s,
        nix::sys::socket::sockopt::Linger,
        &libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    )?;
    let t = Instant::now();
    drop(s);
    Ok(t.elapsed())
}

/// A non-blocking connect, closed at once: the connect and release hooks
/// run, and the client never waits for the network.
fn warm_tcp(to: SocketAddr) -> std::io::Result<()> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrStorage, connect, socket};
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    match connect(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(to),
    ) {
        Ok(()) | Err(nix::errno::Errno::EINPROGRESS) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// One datagram from a new non-blocking UDP socket, closed at once: the
/// sendmsg hook runs (and creates the socket's reverse-translation
/// storage on a hit); nothing waits for the reply.
fn warm_udp(to: SocketAddr) -> std::io::Result<()> {
    let s = UdpSocket::bind("0.0.0.0:0")?;
    s.set_nonblocking(true)?;
    s.send_to(b"ping\n", to)?;
    Ok(())
}

fn alternate(a: &ClientArgs) -> Result<()> {
    let vips = parse_targets(&a.targets)?;
    let direct = parse_targets(a.direct.as_deref().context("--direct")?)?;
    let mut rng = Rng(a.seed.max(1).wrapping_mul(0x9E3779B97F4A7C15) | 1);
    let mut out = Alternation::default();
    for i in 0..a.count {
        // VIP first on even pairs, direct first on odd ones.
        for k in 0..2 {
            let is_vip = (i + k) % 2 == 0;
            let to = if is_vip {
                vips(&mut rng)
            } else {
                direct(&mut rng)
            };
            let t = Instant::now();
            match one_tcp(to) {
                Ok(close) => {
                    let us = t.elapsed().as_nanos() as f64 / 1000.0;
                    let close = close.as_nanos() as f64 / 1000.0;
                    if is_vip {
                        out.vip_us.push(us);
                        out.vip_close_us.push(close);
                    } else {
                        out.direct_us.push(us);
                        out.direct_close_us.push(close);
                    }
                }
                Err(e) => {
                    out.failed += 1;
                    out.first_error.get_or_insert_with(|| format!("{to}: {e}"));
                }
            }
        }
    }
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}

fn warm(a: &ClientArgs) -> Result<()> {
    let pick = parse_targets(&a.targets)?;
    let mut rng = Rng(a.seed.max(1).wrapping_mul(0x9E3779B97F4A7C15) | 1);
    let mut out = Block::default();
    let start = Instant::now();
    // udp-one: one socket sends every datagram (a resolver's socket).
    let one = if a.proto == "udp-one" {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.set_nonblocking(true)?;
        Some(s)
    } else {
        None
    };
    for _ in 0..a.count {
        let to = pick(&mut rng);
        let res = match (&one, a.proto.as_str()) {
            (Some(s), _) => s.send_to(b"ping\n", to).map(|_| ()),
            (None, "udp") => warm_udp(to),
            _ => warm_tcp(to),
        };
        match res {
            Ok(()) => out.ok += 1,
            Err(e) => {
                out.failed += 1;
                out.first_error.get_or_insert_with(|| format!("{to}: {e}"));
            }
        }
    }
    out.wall_us = start.elapsed().as_micros() as u64;
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}

fn one_udp(sock: &UdpSocket, to: SocketAddr) -> std::io::Result<()> {
    sock.send_to(b"ping\n", to)?;
    let mut buf = [0u8; 64];
    sock.recv_from(&mut buf)?;
    Ok(())
}

/// The last CPU for clients, the first for servers (when there are two or
/// more), so a client and its server never fight for one CPU and runs
/// vary less.
fn pin_to(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn client(a: ClientArgs) -> Result<()> {
    pin_to(cpus() - 1);
    enter(&a.netns, a.cgroup.as_deref())?;
    match a.mode {
        Mode::Alternate => return alternate(&a),
        Mode::Warm => return warm(&a),
        Mode::Blocks => {}
    }
    let pick = parse_targets(&a.targets)?;
    let mut rng = Rng(a.seed.max(1).wrapping_mul(0x9E3779B97F4A7C15) | 1);
    let udp = if a.proto == "udp" {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        Some(s)
    } else {
        None
    };
    let mut lat = Vec::with_capacity(a.count as usize);
    let mut out = Block::default();
    let start = Instant::now();
    for _ in 0..a.count {
        let to = pick(&mut rng);
        let t = Instant::now();
        let r = match &udp {
            Some(s) => one_udp(s, to),
            None => one_tcp(to).map(|_| ()),
        };
        match r {
            Ok(()) => {
                out.ok += 1;
                lat.push(t.elapsed().as_nanos() as f64 / 1000.0);
            }
            Err(e) => {
                out.failed += 1;
                out.first_error.get_or_insert_with(|| format!("{to}: {e}"));
            }
        }
    }
    out.wall_us = start.elapsed().as_micros() as u64;
    lat.sort_by(f64::total_cmp);
    let q = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0.0)
    };
    out.p50_us = q(0.5);
    out.p99_us = q(0.99);
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}

// ---------------------------------------------------------------------------
// Guards: everything the benchmark creates goes away on drop. Netns, veth,
// cgroups and processes are the integration tests' own guards (one file).

mod ab;
#[path = "../../../tests/common/guards.rs"]
mod guards;
mod watch;
use guards::{Cgroup, Netns, Reaped, sh, try_veth};

/// Run `prog args` inside a netns with `stdin` as its input; returns the
/// wall time.
fn in_ns_with_input(ns: &str, prog: &str, args: &[&str], input: &Path) -> Result<Duration> {
    let t = Instant::now();
    let out = Command::new("ip")
        .args(["netns", "exec", ns, prog])
        .args(args)
        .stdin(fs::File::open(input)?)
        .output()?;
    if !out.status.success() {
        bail!(
            "{prog} in {ns}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(t.elapsed())
}

/// Detaches and removes the pin dir.
struct Attachment {
    netnsxl: PathBuf,
    pins: PathBuf,
}

impl Attachment {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.netnsxl);
        c.arg("--pin-dir").arg(&self.pins).args(args);
        c
    }
    fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.cmd(args).output()?;
        if !out.status.success() {
            bail!(
                "netnsxl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if self.pins.exists() {
            let _ = self.cmd(&["detach"]).output();
        }
    }
}

/// A directory of the benchmark's files, removed on drop.
struct RmDir(PathBuf);

impl Drop for RmDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Puts kernel.bpf_stats_enabled back as it was.
struct BpfStats(String);

impl BpfStats {
    fn enable() -> Result<BpfStats> {
        let p = "/proc/sys/kernel/bpf_stats_enabled";
        let old = fs::read_to_string(p)?.trim().to_string();
        fs::write(p, "1")?;
        Ok(BpfStats(old))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = fs::write("/proc/sys/kernel/bpf_stats_enabled", &self.0);
    }
}

// ---------------------------------------------------------------------------
// The lab

struct Lab {
    tag: String,
    backend: Netns,
    /// (pod, node) per system family: plain (direct and netnsxl), ipt, nft.
    pairs: Vec<(Netns, Netns)>,
    cg: Cgroup,
    /// A sibling cgroup with nothing attached: direct, iptables and nftables
    /// clients run there, so every client is in a fresh cgroup of its own
    /// kind and only the attached programs differ.
    plain_cg: Cgroup,
    /// A sibling cgroup with only the do-nothing nxl_bench_empty program.
    empty_cg: Cgroup,
    _servers: Vec<Reaped>,
}

const PLAIN: usize = 0;
const IPT: usize = 1;
const NFT: usize = 2;

impl Lab {
    fn new(probe: &Path) -> Result<Lab> {
        let tag = format!("nxb{}", std::process::id() % 100_000);
        let backend = Netns::try_create(&format!("{tag}-be-"))?;
        for b in BACKENDS {
            backend.try_add_addr(&format!("{b}/32"), "lo")?;
        }
        let mut pairs = Vec::new();
        for (k, name) in ["plain", "ipt", "nft"].iter().enumerate() {
            let pod = Netns::try_create(&format!("{tag}-pod-{name}-"))?;
            let node = Netns::try_create(&format!("{tag}-node-{name}-"))?;
            let base = 16 * k as u8;
            try_veth(
                &pod,
                &format!("198.51.100.{}/28", base + 2),
                &node,
                &format!("198.51.100.{}/28", base + 1),
            )?;
            pod.try_ip(&[
                "route",
                "add",
                "default",
                "via",
                &format!("198.51.100.{}", base + 1),
            ])?;
            let lbase = 48 + 16 * k as u8;
            try_veth(
                &node,
                &format!("198.51.100.{}/28", lbase + 1),
                &backend,
                &format!("198.51.100.{}/28", lbase + 2),
            )?;
            node.try_ip(&[
                "route",
                "add",
                "203.0.113.0/24",
                "via",
                &format!("198.51.100.{}", lbase + 2),
            ])?;
            backend.try_ip(&[
                "route",
                "add",
                &format!("198.51.100.{base}/28"),
                "via",
                &format!("198.51.100.{}", lbase + 1),
            ])?;
            node.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
            pairs.push((pod, node));
        }
        let cg = Cgroup::try_create(&format!("{tag}-bench-"))?;
        let plain_cg = Cgroup::try_create(&format!("{tag}-plain-"))?;
        let empty_cg = Cgroup::try_create(&format!("{tag}-empty-"))?;

        let mut servers = Vec::new();
        let mut start = |args: Vec<String>| -> Result<()> {
            let mut child = Command::new("taskset")
                .args(["-c", "0"])
                .arg(probe)
                .args(&args)
                .stdout(Stdio::piped())
                .spawn()?;
            let mut line = [0u8; 64];
            let n = child.stdout.take().unwrap().read(&mut line)?;
            if !String::from_utf8_lossy(&line[..n]).starts_with("ready") {
                bail!("backend server {args:?} did not start");
            }
            servers.push(Reaped(child));
            Ok(())
        };
        start(vec![
            "serve".into(),
            "--netns".into(),
            backend.name.clone(),
            "--proto".into(),
            "tcp".into(),
            "--listen".into(),
            format!("0.0.0.0:{BE_PORT}"),
            "--reply".into(),
            "pong".into(),
        ])?;
        for b in BACKENDS {
            start(vec![
                "serve".into(),
                "--netns".into(),
                backend.name.clone(),
                "--proto".into(),
                "udp".into(),
                "--listen".into(),
                format!("{b}:{BE_UDP_PORT}"),
                "--reply".into(),
                "pong".into(),
            ])?;
        }
        Ok(Lab {
            tag,
            backend,
            pairs,
            cg,
            plain_cg,
            empty_cg,
            _servers: servers,
        })
    }
}

// ---------------------------------------------------------------------------
// Rule sets

fn backend_list(port: u16) -> String {
    BACKENDS
        .iter()
        .map(|b| format!("{b}:{port}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// netnsxl's file: N ClusterIPs on port 80, the same N with affinity on
/// port 83, and up to 1,000 UDP services on port 53.
fn netnsxl_file(n: usize, with_rest: bool) -> String {
    let mut s = String::with_capacity(n * 200);
    s.push('[');
    let bes = |port: u16| {
        BACKENDS
            .iter()
            .map(|b| format!("\"{b}:{port}\""))
            .collect::<Vec<_>>()
            .join(",")
    };
    let (tcp, udp) = (bes(BE_PORT), bes(BE_UDP_PORT));
    let mut first = true;
    let mut push = |line: String| {
        if !first {
            s.push(',');
        }
        first = false;
        s.push_str(&line);
        s.push('\n');
    };
    for i in 1..=n {
        push(format!(
            "{{\"type\":\"clusterip\",\"frontend\":\"{}:80\",\"backends\":[{tcp}]}}",
            vip(i)
        ));
    }
    if with_rest {
        for i in 1..=n {
            push(format!(
                "{{\"type\":\"clusterip\",\"frontend\":\"{}:83\",\"backends\":[{tcp}],\"session_affinity\":\"client-ip\"}}",
                vip(i)
            ));
        }
        for i in 1..=n.min(1000) {
            push(format!(
                "{{\"type\":\"clusterip\",\"proto\":\"udp\",\"frontend\":\"{}:53\",\"backends\":[{udp}]}}",
                vip(i)
            ));
        }
    }
    s.push(']');
    s
}

/// kube-proxy's iptables layout (nat table), as iptables-restore input.
fn iptables_rules(n: usize) -> String {
    let mut chains = String::new();
    let mut rules = String::new();
    chains.push_str(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n",
    );
    rules.push_str(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
    );
    rules.push_str("-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n");
    for i in 1..=n {
        let svc = format!("KUBE-SVC-{i:016X}");
        let _ = writeln!(chains, ":{svc} - [0:0]");
        let _ = writeln!(
            rules,
            "-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"bench/s{i}:http cluster IP\" -m tcp --dport 80 -j {svc}",
            vip(i)
        );
        let _ = writeln!(
            rules,
            "-A {svc} ! -s 198.51.100.0/24 -d {}/32 -p tcp -m tcp --dport 80 -j KUBE-MARK-MASQ",
            vip(i)
        );
        for (j, b) in BACKENDS.iter().enumerate() {
            let sep = format!("KUBE-SEP-{i:014X}{j:02X}");
            let _ = writeln!(chains, ":{sep} - [0:0]");
            let prob = match j {
                0 => Some("0.33333333349"),
                1 => Some("0.50000000000"),
                _ => None,
            };
            match prob {
                Some(p) => {
                    let _ = writeln!(
                        rules,
                        "-A {svc} -m statistic --mode random --probability {p} -j {sep}"
                    );
                }
                None => {
                    let _ = writeln!(rules, "-A {svc} -j {sep}");
                }
            }
            let _ = writeln!(rules, "-A {sep} -s {b}/32 -j KUBE-MARK-MASQ");
            let _ = writeln!(
                rules,
                "-A {sep} -p tcp -m tcp -j DNAT --to-destination {b}:{BE_PORT}"
            );
        }
    }
    chains.push_str(&rules);
    chains.push_str("COMMIT\n");
    chains
}

/// kube-proxy's nftables layout: a verdict map keyed by
/// (address . protocol . port), a chain per service picking an endpoint
/// chain with numgen, a chain per endpoint that DNATs.
fn nft_rules(n: usize) -> String {
    let mut s = String::new();
    s.push_str("table ip kube-proxy {\n");
    s.push_str("  chain mark-for-masquerade { meta mark set meta mark or 0x4000; }\n");
    for i in 1..=n {
        let _ = writeln!(
            s,
            "  chain service-{i} {{ ip daddr {} tcp dport 80 ip saddr != 198.51.100.0/24 jump mark-for-masquerade\n    numgen random mod 3 vmap {{ 0 : goto endpoint-{i}-0, 1 : goto endpoint-{i}-1, 2 : goto endpoint-{i}-2 }}; }}",
            vip(i)
        );
        for (j, b) in BACKENDS.iter().enumerate() {
            let _ = writeln!(
                s,
                "  chain endpoint-{i}-{j} {{ ip saddr {b} jump mark-for-masquerade\n    meta l4proto tcp dnat to {b}:{BE_PORT}; }}"
            );
        }
    }
    s.push_str("  map service-ips {\n    type ipv4_addr . inet_proto . inet_service : verdict\n");
    if n > 0 {
        s.push_str("    elements = {\n");
        for i in 1..=n {
            let _ = writeln!(
                s,
                "      {} . tcp . 80 : goto service-{i}{}",
                vip(i),
                if i < n { "," } else { "" }
            );
        }
        s.push_str("    }\n");
    }
    s.push_str("  }\n");
    s.push_str("  chain services { ip daddr . meta l4proto . th dport vmap @service-ips; }\n");
    s.push_str("  chain nat-prerouting { type nat hook prerouting priority dstnat; policy accept; jump services; }\n");
    s.push_str("}\n");
    s
}

// ---------------------------------------------------------------------------
// Measuring

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum System {
    Direct,
    Netnsxl,
    NetnsxlAffinity,
    NetnsxlMiss,
    Iptables,
    Nftables,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Direct => "direct (no translation)",
            System::Netnsxl => "netnsxl",
            System::NetnsxlAffinity => "netnsxl, session affinity",
            System::NetnsxlMiss => "netnsxl attached, connect to backend (miss)",
            System::Iptables => "iptables (kube-proxy layout)",
            System::Nftables => "nftables (kube-proxy layout)",
        }
    }
}

struct Runner {
    bench: PathBuf,
    lab_cg: PathBuf,
    plain_cg: PathBuf,
    /// A cgroup with only nxl_bench_empty attached.
    empty_cg: PathBuf,
}

impl Runner {
    /// One client process in `netns` and `cgroup`; its JSON line.
    fn client<T: serde::de::DeserializeOwned>(
        &self,
        netns: &str,
        cgroup: &Path,
        args: &[&str],
    ) -> Result<T> {
        let out = Command::new(&self.bench)
            .args(["client", "--netns", netns, "--cgroup"])
            .arg(cgroup)
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!("client: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// One warm loop (`client --mode warm`): `count` calls, no waiting.
    fn warm(
        &self,
        netns: &str,
        cgroup: &Path,
        proto: &str,
        targets: &str,
        count: u32,
        seed: u64,
    ) -> Result<Block> {
        self.client(
            netns,
            cgroup,
            &[
                "--mode",
                "warm",
                "--proto",
                proto,
                "--targets",
                targets,
                "--count",
                &count.to_string(),
                "--seed",
                &seed.to_string(),
            ],
        )
    }

    fn block(
        &self,
        netns: &str,
        cgroup: bool,
        proto: &str,
        targets: &str,
        count: u32,
        seed: u64,
    ) -> Result<Block> {
        let mut c = Command::new(&self.bench);
        c.args([
            "client",
            "--netns",
            netns,
            "--proto",
            proto,
            "--targets",
            targets,
        ])
        .args(["--count", &count.to_string(), "--seed", &seed.to_string()]);
        c.arg("--cgroup")
            .arg(if cgroup { &self.lab_cg } else { &self.plain_cg });
        let out = c.output()?;
        if !out.status.success() {
            bail!("client: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }
}

/// (run_cnt, run_time_ns) of each program of the attachment, by name: the
/// programs its pinned links point at.
fn prog_stats(att: &Attachment) -> Result<BTreeMap<String, (u64, u64)>> {
    let pins = netnsxl::datapath::state::Pins::new(&att.pins);
    let mut ids = BTreeMap::new();
    for name in netnsxl::datapath::state::CGROUP_PROGS {
        if let Ok(info) = libbpf_rs::Link::open(pins.link(name)).and_then(|l| l.info()) {
            ids.insert(info.prog_id, name.to_string());
        }
    }
    let mut out = BTreeMap::new();
    for p in libbpf_rs::query::ProgInfoIter::default() {
        if let Some(name) = ids.get(&p.id) {
            out.insert(name.clone(), (p.run_cnt, p.run_time_ns));
        }
    }
    Ok(out)
}

/// (run_cnt, run_time_ns) of one program, by id.
fn prog_stats_by_id(id: u32) -> (u64, u64) {
    libbpf_rs::query::ProgInfoIter::default()
        .find(|p| p.id == id)
        .map_or((0, 0), |p| (p.run_cnt, p.run_time_ns))
}

fn ns_per_call(
    before: &BTreeMap<String, (u64, u64)>,
    after: &BTreeMap<String, (u64, u64)>,
    prog: &str,
) -> Option<f64> {
    let (c0, t0) = before.get(prog).copied().unwrap_or_default();
    let (c1, t1) = after.get(prog).copied().unwrap_or_default();
    (c1 > c0).then(|| (t1 - t0) as f64 / (c1 - c0) as f64)
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// CPU time (user + system) of children that ended, in microseconds.
fn children_cpu_us() -> u64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, ru.as_mut_ptr()) };
    // SAFETY: zero-initialized and filled by getrusage.
    let ru = unsafe { ru.assume_init() };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    us(ru.ru_utime) + us(ru.ru_stime)
}

/// (wall ms, cpu ms) of one netnsxl command.
fn timed(att: &Attachment, args: &[&str]) -> Result<(f64, f64)> {
    let cpu0 = children_cpu_us();
    let t = Instant::now();
    att.ok(args)?;
    let wall = t.elapsed().as_secs_f64() * 1e3;
    Ok((wall, (children_cpu_us() - cpu0) as f64 / 1e3))
}

/// Kernel memory the maps use, from their fdinfo (memlock).
fn maps_memlock(pins: &Path) -> Result<u64> {
    let mut total = 0;
    for e in fs::read_dir(pins.join("maps"))? {
        let m = libbpf_rs::MapHandle::from_pinned_path(e?.path())?;
        use std::os::fd::AsRawFd;
        let info = fs::read_to_string(format!("/proc/self/fdinfo/{}", m.as_fd().as_raw_fd()))?;
        total += info
            .lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(total)
}

#[derive(Default, Debug)]
struct SizeResult {
    n: usize,
    rates: BTreeMap<System, Vec<Block>>,
    hooks: BTreeMap<&'static str, Vec<f64>>,
    apply_s: f64,
    apply_all_s: f64,
    iptables_s: Option<f64>,
    nft_s: Option<f64>,
    svc_add: (f64, f64),
    backend_change: (f64, f64),
    memlock_total: u64,
    services_loaded: usize,
    floor: Floor,
}

/// The datapath against its floor at one size: the alternating
/// measurement and the warm connect loops.
#[derive(Default, Debug)]
struct Floor {
    alt: Alternation,
    /// nxl_sock_release ns per call over the alternating runs (VIP and
    /// direct sockets alike).
    alt_release_ns: Vec<f64>,
    /// ns per call of the connect4 program in each warm loop, per round.
    warm: BTreeMap<&'static str, Vec<f64>>,
}

const WARM_EMPTY: &str = "empty connect4 program";
const WARM_PORT_MISS: &str = "connect4, port no frontend uses";
const WARM_ADDR_MISS: &str = "connect4, address miss on a used port";
const WARM_HIT: &str = "connect4 hit";
const WARM_RELEASE: &str = "sock_release after a translated connect";
const WARM_UDP_HIT: &str = "sendmsg4 hit, a new socket per datagram";
const WARM_UDP_ONE: &str = "sendmsg4 hit, one socket to one ClusterIP";
const WARM_UDP_MISS: &str = "sendmsg4, address miss on a used port";

/// The median of the paired differences a[i] - b[i] and its 95 %
/// confidence interval (sign-test order statistics): (low, median, high).
fn paired_diff(a: &[f64], b: &[f64]) -> (f64, f64, f64) {
    let mut d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    if d.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    d.sort_by(f64::total_cmp);
    let n = d.len() as f64;
    let half = 1.96 * n.sqrt() / 2.0;
    let at = |i: f64| d[(i.round().max(0.0) as usize).min(d.len() - 1)];
    (at(n / 2.0 - half), at((n - 1.0) / 2.0), at(n / 2.0 + half))
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(((v.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

/// The alternating measurement and the warm loops at one size.
fn measure_floor(
    lab: &Lab,
    run: &Runner,
    att: &Attachment,
    args: &RunArgs,
    n: usize,
    empty_id: u32,
) -> Result<Floor> {
    let mut f = Floor::default();
    let plain = &lab.pairs[PLAIN].0.name;
    let direct = backend_list(BE_PORT);
    let vips = format!("vips:{n}:80");
    let chunk = 1000u32;
    let mut left = args.alt_pairs;
    let mut seed = 1000u64;
    while left > 0 {
        let c = left.min(chunk);
        left -= c;
        seed += 1;
        let before = prog_stats(att)?;
        let a: Alternation = run.client(
            plain,
            &run.lab_cg,
            &[
                "--mode",
                "alternate",
                "--targets",
                &vips,
                "--direct",
                &direct,
                "--count",
                &c.to_string(),
                "--seed",
                &seed.to_string(),
            ],
        )?;
        let after = prog_stats(att)?;
        if let Some(v) = ns_per_call(&before, &after, "nxl_sock_release") {
            f.alt_release_ns.push(v);
        }
        if a.failed > 0 {
            eprintln!(
                "   alternating: {} failed, first: {:?}",
                a.failed, a.first_error
            );
        }
        f.alt.vip_us.extend(a.vip_us);
        f.alt.direct_us.extend(a.direct_us);
        f.alt.vip_close_us.extend(a.vip_close_us);
        f.alt.direct_close_us.extend(a.direct_close_us);
        f.alt.failed += a.failed;
    }

    // Warm loops, the order rotated each round.
    let port_miss: String = BACKENDS
        .iter()
        .map(|b| format!("{b}:9"))
        .collect::<Vec<_>>()
        .join(",");
    let addr_miss: String = BACKENDS
        .iter()
        .map(|b| format!("{b}:80"))
        .collect::<Vec<_>>()
        .join(",");
    let udp_vips = format!("vips:{}:53", n.min(1000));
    let udp_one = "vips:1:53".to_string();
    let udp_miss: String = BACKENDS
        .iter()
        .map(|b| format!("{b}:53"))
        .collect::<Vec<_>>()
        .join(",");
    // (name, cgroup, proto, targets, program measured)
    let loops: [(&str, &Path, &str, &str, &str); 7] = [
        (WARM_EMPTY, &run.empty_cg, "tcp", &port_miss, ""),
        (
            WARM_PORT_MISS,
            &run.lab_cg,
            "tcp",
            &port_miss,
            "nxl_connect4",
        ),
        (
            WARM_ADDR_MISS,
            &run.lab_cg,
            "tcp",
            &addr_miss,
            "nxl_connect4",
        ),
        (WARM_HIT, &run.lab_cg, "tcp", &vips, "nxl_connect4"),
        (WARM_UDP_HIT, &run.lab_cg, "udp", &udp_vips, "nxl_sendmsg4"),
        (
            WARM_UDP_ONE,
            &run.lab_cg,
            "udp-one",
            &udp_one,
            "nxl_sendmsg4",
        ),
        (WARM_UDP_MISS, &run.lab_cg, "udp", &udp_miss, "nxl_sendmsg4"),
    ];
    for round in 0..args.warm_rounds {
        for k in 0..loops.len() {
            let (name, cg, proto, targets, prog) = loops[(k + round) % loops.len()];
            seed += 1;
            let (before, e0) = (prog_stats(att)?, prog_stats_by_id(empty_id));
            let b = run.warm(plain, cg, proto, targets, args.warm_connects, seed)?;
            let (after, e1) = (prog_stats(att)?, prog_stats_by_id(empty_id));
            if b.failed > 0 {
                eprintln!("   {name}: {} failed, first: {:?}", b.failed, b.first_error);
            }
            let v = if name == WARM_EMPTY {
                (e1.0 > e0.0).then(|| (e1.1 - e0.1) as f64 / (e1.0 - e0.0) as f64)
            } else {
                ns_per_call(&before, &after, prog)
            };
            if let Some(v) = v {
                f.warm.entry(name).or_default().push(v);
            }
            if name == WARM_HIT
                && let Some(v) = ns_per_call(&before, &after, "nxl_sock_release")
            {
                f.warm.entry(WARM_RELEASE).or_default().push(v);
            }
        }
    }
    Ok(f)
}

fn run_size(
    lab: &Lab,
    run: &Runner,
    att: &Attachment,
    args: &RunArgs,
    n: usize,
    dir: &Path,
    empty_id: u32,
) -> Result<SizeResult> {
    let mut r = SizeResult {
        n,
        ..Default::default()
    };
    eprintln!("== {n} services");
    // A fresh attachment per size, so apply is timed into empty maps.
    let _ = att.ok(&["detach"]);
    let maxs = (args.sizes.iter().max().copied().unwrap_or(1) * 2 + 1100).to_string();
    let maxb = (args.sizes.iter().max().copied().unwrap_or(1) * 6 + 3300).to_string();
    let host = format!("/run/netns/{}", lab.pairs[PLAIN].1.name);
    att.ok(&[
        "attach",
        "--cgroup",
        lab.cg.path.to_str().unwrap(),
        "--host-netns",
        &host,
        "--max-services",
        &maxs,
        "--max-backends",
        &maxb,
    ])?;

    let main_file = dir.join(format!("netnsxl-{n}.json"));
    fs::write(&main_file, netnsxl_file(n, false))?;
    let t = Instant::now();
    att.ok(&["apply", "-f", main_file.to_str().unwrap()])?;
    r.apply_s = t.elapsed().as_secs_f64();
    let all_file = dir.join(format!("netnsxl-all-{n}.json"));
    fs::write(&all_file, netnsxl_file(n, true))?;
    let t = Instant::now();
    att.ok(&["apply", "-f", all_file.to_str().unwrap()])?;
    r.apply_all_s = t.elapsed().as_secs_f64();
    r.services_loaded = 2 * n + n.min(1000);
    eprintln!(
        "   netnsxl apply: {:.3} s ({} services), then {:.3} s for the affinity and UDP sets",
        r.apply_s, n, r.apply_all_s
    );

    // One svc add and one backend change at this size (process time).
    r.svc_add = timed(
        att,
        &[
            "svc",
            "add",
            "--type",
            "clusterip",
            "--frontend",
            "198.19.255.1:80",
            "--backend",
            &format!("{}:{BE_PORT}", BACKENDS[0]),
        ],
    )?;
    let v1 = format!("{}:80", vip(1));
    r.backend_change = timed(
        att,
        &[
            "svc",
            "add",
            "--type",
            "clusterip",
            "--frontend",
            &v1,
            "--replace",
            "--backend",
            &format!("{}:{BE_PORT}", BACKENDS[0]),
            "--backend",
            &format!("{}:{BE_PORT}", BACKENDS[1]),
        ],
    )?;
    let mut restore = vec![
        "svc",
        "add",
        "--type",
        "clusterip",
        "--frontend",
        v1.as_str(),
        "--replace",
    ];
    let bl: Vec<String> = BACKENDS.iter().map(|b| format!("{b}:{BE_PORT}")).collect();
    for b in &bl {
        restore.extend(["--backend", b.as_str()]);
    }
    att.ok(&restore)?;
    att.ok(&["svc", "del", "--frontend", "198.19.255.1:80"])?;
    r.memlock_total = maps_memlock(&att.pins)?;

    if n <= args.max_iptables {
        let f = dir.join(format!("iptables-{n}.rules"));
        fs::write(&f, iptables_rules(n))?;
        let d = in_ns_with_input(&lab.pairs[IPT].1.name, "iptables-restore", &[], &f)?;
        r.iptables_s = Some(d.as_secs_f64());
        eprintln!("   iptables-restore: {:.3} s", d.as_secs_f64());
    }
    if n <= args.max_nft {
        let _ = lab.pairs[NFT].1.exec(&["nft", "flush", "ruleset"]);
        let f = dir.join(format!("nft-{n}.nft"));
        fs::write(&f, nft_rules(n))?;
        let d = in_ns_with_input(&lab.pairs[NFT].1.name, "nft", &["-f", "-"], &f)?;
        r.nft_s = Some(d.as_secs_f64());
        eprintln!("   nft -f: {:.3} s", d.as_secs_f64());
    }

    let mut systems = vec![
        System::Direct,
        System::Netnsxl,
        System::NetnsxlAffinity,
        System::NetnsxlMiss,
    ];
    if r.iptables_s.is_some() {
        systems.push(System::Iptables);
    }
    if r.nft_s.is_some() {
        systems.push(System::Nftables);
    }
    let _stats = BpfStats::enable()?;
    let plain = &lab.pairs[PLAIN].0.name;
    let direct_targets = backend_list(BE_PORT);
    let v80 = format!("vips:{n}:80");
    let v83 = format!("vips:{n}:83");
    let mut seed = 1u64;
    for round in 0..args.rounds {
        // Rotate the order each round as well as interleaving.
        for k in 0..systems.len() {
            let sys = systems[(k + round) % systems.len()];
            seed += 1;
            let before = prog_stats(att)?;
            let b = match sys {
                System::Direct => {
                    run.block(plain, false, "tcp", &direct_targets, args.connects, seed)?
                }
                System::Netnsxl => run.block(plain, true, "tcp", &v80, args.connects, seed)?,
                System::NetnsxlAffinity => {
                    run.block(plain, true, "tcp", &v83, args.connects, seed)?
                }
                System::NetnsxlMiss => {
                    run.block(plain, true, "tcp", &direct_targets, args.connects, seed)?
                }
                System::Iptables => run.block(
                    &lab.pairs[IPT].0.name,
                    false,
                    "tcp",
                    &v80,
                    args.connects,
                    seed,
                )?,
                System::Nftables => run.block(
                    &lab.pairs[NFT].0.name,
                    false,
                    "tcp",
                    &v80,
                    args.connects,
                    seed,
                )?,
            };
            let after = prog_stats(att)?;
            let hook = |name: &'static str, prog: &str, r: &mut SizeResult| {
                if let Some(v) = ns_per_call(&before, &after, prog) {
                    r.hooks.entry(name).or_default().push(v);
                }
            };
            match sys {
                System::Netnsxl => {
                    hook("connect4 hit", "nxl_connect4", &mut r);
                    hook(
                        "getpeername4 (translated socket)",
                        "nxl_getpeername4",
                        &mut r,
                    );
                }
                System::NetnsxlAffinity => hook("connect4 hit, affinity", "nxl_connect4", &mut r),
                System::NetnsxlMiss => {
                    hook("connect4 miss", "nxl_connect4", &mut r);
                    hook(
                        "getpeername4 (untranslated socket)",
                        "nxl_getpeername4",
                        &mut r,
                    );
                }
                _ => {}
            }
            if b.failed > 0 {
                eprintln!(
                    "   {}: {} failed, first: {:?}",
                    sys.name(),
                    b.failed,
                    b.first_error
                );
            }
            r.rates.entry(sys).or_default().push(b);
        }
        // UDP hooks: unconnected sendto/recvfrom, hit and miss.
        let before = prog_stats(att)?;
        run.block(
            plain,
            true,
            "udp",
            &format!("vips:{}:53", n.min(1000)),
            args.connects,
            seed,
        )?;
        let mid = prog_stats(att)?;
        run.block(
            plain,
            true,
            "udp",
            &backend_list(BE_UDP_PORT),
            args.connects,
            seed,
        )?;
        let after = prog_stats(att)?;
        for (name, prog, a, b) in [
            ("sendmsg4 hit", "nxl_sendmsg4", &before, &mid),
            ("recvmsg4 (translated reply)", "nxl_recvmsg4", &before, &mid),
            ("sendmsg4 miss", "nxl_sendmsg4", &mid, &after),
            (
                "recvmsg4 (untranslated reply)",
                "nxl_recvmsg4",
                &mid,
                &after,
            ),
        ] {
            if let Some(v) = ns_per_call(a, b, prog) {
                r.hooks.entry(name).or_default().push(v);
            }
        }
        eprintln!("   round {} done", round + 1);
    }
    r.floor = measure_floor(lab, run, att, args, n, empty_id)?;
    eprintln!(
        "   alternating: VIP p50 {:.1} µs, direct p50 {:.1} µs; warm hit {:.0} ns",
        percentile(&r.floor.alt.vip_us, 0.5),
        percentile(&r.floor.alt.direct_us, 0.5),
        r.floor
            .warm
            .get(WARM_HIT)
            .map_or(f64::NAN, |v| median(v.clone()))
    );
    Ok(r)
}

// ---------------------------------------------------------------------------
// Kernel map memory

/// Kernel memory of the maps of an empty attachment at default sizes, from
/// the map definitions, as the kernel accounts it in map_mem_usage
/// (htab_map_mem_usage, array_map_mem_usage, ringbuf_map_mem_usage): what
/// is allocated at creation, per possible CPU where it is per CPU.
mod mem {
    use anyhow::{Context, Result};
    use libbpf_rs::MapType;
    use libbpf_rs::skel::{OpenSkel, SkelBuilder};

    #[derive(Clone, Debug)]
    pub struct Def {
        pub name: String,
        pub kind: MapType,
        pub key: u64,
        pub value: u64,
        pub max: u64,
        pub prealloc: bool,
        /// attach multiplies max_entries by the possible CPUs (a plain
        /// array holding one counter per service and CPU).
        pub per_cpu_entries: bool,
    }

    pub struct Model {
        /// This build's maps, from the BPF object.
        pub now: Vec<Def>,
        /// Layout 4's (before issue 14), for comparison.
        pub before: Vec<Def>,
    }

    const BPF_F_NO_PREALLOC: u32 = 1;
    /// struct htab_elem up to its key: hash node, RCU head or LRU node, hash.
    const HTAB_ELEM: u64 = 48;
    /// struct bucket: list head and lock.
    const BUCKET: u64 = 16;
    /// HASHTAB_MAP_LOCK_COUNT ints per CPU, per hash map.
    const HASHTAB_LOCKS: u64 = 8;
    const PAGE: u64 = 4096;

    fn r8(v: u64) -> u64 {
        v.div_ceil(8) * 8
    }

    pub fn bytes(d: &Def, cpus: u64) -> u64 {
        match d.kind {
            MapType::Hash | MapType::PercpuHash | MapType::LruHash | MapType::LruPercpuHash => {
                let percpu = matches!(d.kind, MapType::PercpuHash | MapType::LruPercpuHash);
                let lru = matches!(d.kind, MapType::LruHash | MapType::LruPercpuHash);
                let mut u = BUCKET * d.max.next_power_of_two() + 4 * HASHTAB_LOCKS * cpus;
                if d.prealloc {
                    let elem = HTAB_ELEM + r8(d.key) + if percpu { 8 } else { r8(d.value) };
                    let entries = d.max + if !percpu && !lru { cpus } else { 0 };
                    u += elem * entries;
                    if percpu {
                        u += r8(d.value) * cpus * entries;
                    } else if !lru {
                        u += 8 * cpus;
                    }
                }
                u
            }
            MapType::Array if d.per_cpu_entries => r8(d.value) * d.max * cpus,
            MapType::Array => r8(d.value) * d.max,
            MapType::PercpuArray => 8 * d.max + r8(d.value) * d.max * cpus,
            MapType::RingBuf => {
                let data = d.max / PAGE;
                (data + 2) * PAGE + (2 + 2 * data) * 8
            }
            // Socket storage: nothing until a socket holds some.
            _ => 0,
        }
    }

    pub fn total(defs: &[Def], cpus: u64) -> u64 {
        defs.iter().map(|d| bytes(d, cpus)).sum()
    }

    pub fn model() -> Result<Model> {
        let mut obj = std::mem::MaybeUninit::uninit();
        let open = netnsxl::bpf::NetnsxlSkelBuilder::default()
            .open(&mut obj)
            .context("open the BPF object")?;
        let now = open
            .open_object()
            .maps()
            .filter_map(|m| {
                let name = m.name().to_string_lossy().into_owned();
                netnsxl::datapath::state::MAPS
                    .contains(&name.as_str())
                    .then(|| Def {
                        kind: m.map_type(),
                        key: u64::from(m.key_size()),
                        value: u64::from(m.value_size()),
                        max: u64::from(m.max_entries()),
                        prealloc: m.map_flags() & BPF_F_NO_PREALLOC == 0,
                        per_cpu_entries: name == "svc_count_map",
                        name,
                    })
            })
            .collect();
        Ok(Model {
            now,
            before: layout4(),
        })
    }

    /// The maps of layout 4 (netnsxl before issue 14), at default sizes.
    fn layout4() -> Vec<Def> {
        use MapType::*;
        let d = |name: &str, kind, key, value, max, prealloc| Def {
            name: name.to_string(),
            kind,
            key,
            value,
            max,
            prealloc,
            per_cpu_entries: false,
        };
        vec![
            d("svc_map", Hash, 24, 112, 65536 + 262144, false),
            d("backend_map", Hash, 4, 24, 262144, false),
            d("meta_map", Hash, 4, 100, 65536, false),
            d("affinity_map", LruHash, 16, 16, 65536, true),
            d("revnat_map", SkStorage, 4, 176, 0, false),
            d("port_map", Array, 4, 4, 65536, true),
            d("stats_map", PercpuArray, 4, 8, 9, true),
            d("svc_stats_map", PercpuHash, 4, 16, 65536, true),
            d("events_map", RingBuf, 0, 0, 1 << 20, true),
            d("member_map", Hash, 8, 4, 262144, false),
            d("bypass_map", Hash, 8, 4, 4096, true),
            d("node_addr_map", Hash, 16, 4, 1024, true),
            d("doomed_map", Hash, 20, 4, 4096, true),
            d("config_map", Array, 4, 312, 1, true),
        ]
    }
}

// ---------------------------------------------------------------------------
// Report

fn fmt_rate(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else {
        format!("{:.0}", v)
    }
}

/// A table header with one column per size: `| first | N services | ...`.
fn size_columns(md: &mut String, first: &str, results: &[SizeResult]) {
    let _ = write!(md, "| {first} |");
    for r in results {
        let _ = write!(md, " {} services |", r.n);
    }
    let _ = write!(md, "\n|---|");
    for _ in results {
        let _ = write!(md, "---:|");
    }
    md.push('\n');
}

fn mib(b: u64) -> String {
    format!("{:.2} MiB", b as f64 / 1048576.0)
}

fn met(ok: bool) -> &'static str {
    if ok { "MET" } else { "NOT MET" }
}

/// The alternating measurement, the warm loops and the map memory, with
/// their verdicts.
fn report_floor(
    md: &mut String,
    verdicts: &mut Vec<String>,
    results: &[SizeResult],
    args: &RunArgs,
    model: &mem::Model,
    default_memlock: u64,
) {
    let _ = writeln!(
        md,
        "\n## Against the floor: VIP and direct connections alternated in one process\n\nOne client process (in the attached cgroup, in a pod netns) alternates one connection to a random ClusterIP of the N and one straight to a random backend, {} pairs per size in processes of 1,000, VIP first in every other pair; each connection is connect + getpeername + one request/response + close, timed alone. The direct connection runs the same hooks (a miss at the port prefilter), so the ratio is the translation's whole cost. Close is the close() call alone; sock_release is bpf_stats over both kinds of socket.\n\n| services | VIP p50 µs | VIP p99 µs | direct p50 µs | direct p99 µs | direct/VIP p50 | VIP − direct, paired median (95 % CI) | close VIP p50 µs | close direct p50 µs | close VIP − direct, paired median (95 % CI) | sock_release ns/call | failed |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        args.alt_pairs
    );
    for r in results {
        let a = &r.floor.alt;
        let (v50, d50) = (percentile(&a.vip_us, 0.5), percentile(&a.direct_us, 0.5));
        let (vc, dc) = (
            percentile(&a.vip_close_us, 0.5),
            percentile(&a.direct_close_us, 0.5),
        );
        let (cl, cm, ch) = paired_diff(&a.vip_close_us, &a.direct_close_us);
        let (tl, tm, th) = paired_diff(&a.vip_us, &a.direct_us);
        let _ = writeln!(
            md,
            "| {} | {v50:.1} | {:.1} | {d50:.1} | {:.1} | {:.3} | {tm:+.2} µs ({tl:+.2} to {th:+.2}) | {vc:.2} | {dc:.2} | {cm:+.3} µs ({cl:+.3} to {ch:+.3}) | {:.0} | {} |",
            r.n,
            percentile(&a.vip_us, 0.99),
            percentile(&a.direct_us, 0.99),
            d50 / v50,
            median(r.floor.alt_release_ns.clone()),
            a.failed
        );
        verdicts.push(format!(
            "{} direct/VIP p50 >= 0.99 at {} services (alternating): {:.3}",
            met(d50 / v50 >= 0.99),
            r.n,
            d50 / v50
        ));
        // close(): met unless the paired difference is shown to be above
        // zero (its 95 % interval lies wholly above it).
        verdicts.push(format!(
            "{} close of a translated socket costs no more than a direct one at {} services: paired median {cm:+.3} µs (95 % CI {cl:+.3} to {ch:+.3})",
            met(cl <= 0.0),
            r.n
        ));
    }

    let _ = writeln!(
        md,
        "\n## Warm connect loops (bpf_stats ns per call, median of {} rounds)\n\nA client in the pod netns makes {} non-blocking connects per loop and closes each at once, so the programs run back to back with warm caches; the loops are interleaved, their order rotated each round. The empty program is nxl_bench_empty (return 1) alone in a cgroup of its own, connecting to the same port-miss targets: what bpf_stats reports for a program that does nothing. Hits pick a random ClusterIP of the N. The UDP loops send one datagram each from a new socket (hits: to a random UDP ClusterIP of the first 1,000), or all from one socket to one ClusterIP (a resolver's socket).\n",
        args.warm_rounds, args.warm_connects
    );
    size_columns(md, "loop", results);
    let w = |r: &SizeResult, k: &str| r.floor.warm.get(k).map_or(f64::NAN, |v| median(v.clone()));
    for name in [
        WARM_EMPTY,
        WARM_PORT_MISS,
        WARM_ADDR_MISS,
        WARM_HIT,
        WARM_RELEASE,
        WARM_UDP_MISS,
        WARM_UDP_HIT,
        WARM_UDP_ONE,
    ] {
        let _ = write!(md, "| {name} |");
        for r in results {
            let _ = write!(md, " {:.0} ns |", w(r, name));
        }
        md.push('\n');
    }
    if let Some(one) = results.iter().find(|r| r.n == 1) {
        let h = w(one, WARM_HIT);
        verdicts.push(format!(
            "{} connect4 hit <= 400 ns at 1 service (warm loop): {h:.0} ns",
            met(h <= 400.0)
        ));
    }
    if let Some(big) = results
        .iter()
        .filter(|r| r.n >= 100_000)
        .max_by_key(|r| r.n)
    {
        let h = w(big, WARM_HIT);
        verdicts.push(format!(
            "{} connect4 hit <= 1.5 µs at {} services picked at random (warm loop): {h:.0} ns",
            met(h <= 1500.0),
            big.n
        ));
    }
    for r in results {
        let (e, pm, am) = (w(r, WARM_EMPTY), w(r, WARM_PORT_MISS), w(r, WARM_ADDR_MISS));
        verdicts.push(format!(
            "{} port miss within 30 ns of the empty program at {} services: {pm:.0} vs {e:.0} ns ({:+.0})",
            met(pm - e <= 30.0),
            r.n,
            pm - e
        ));
        verdicts.push(format!(
            "{} address miss on a used port <= 200 ns at {} services: {am:.0} ns",
            met(am <= 200.0),
            r.n
        ));
    }

    // Memory.
    let cpus_here = libbpf_rs::num_possible_cpus().unwrap_or(0) as u64;
    let _ = writeln!(
        md,
        "\n## Kernel map memory at default sizes\n\nFrom the map definitions (this build's BPF object, and layout 4's from before issue 14), as the kernel accounts them (map_mem_usage) for an empty attachment: buckets of every hash map, preallocated elements, arrays, per-CPU values times possible CPUs. Measured here at default sizes (memlock in fdinfo, {} possible CPUs): {} (the model says {}).\n\n| possible CPUs | layout 4 | now | change |\n|---:|---:|---:|---:|",
        cpus_here,
        mib(default_memlock),
        mib(mem::total(&model.now, cpus_here))
    );
    for cpus in [1u64, 2, 4, 8, 16, 32, 64, 128, 256] {
        let (b, n) = (
            mem::total(&model.before, cpus),
            mem::total(&model.now, cpus),
        );
        let _ = writeln!(
            md,
            "| {cpus} | {} | {} | {:+.2} MiB |",
            mib(b),
            mib(n),
            (n as f64 - b as f64) / 1048576.0
        );
    }
    let per_cpu = |defs: &[mem::Def]| (mem::total(defs, 256) - mem::total(defs, 1)) / 255;
    let _ = writeln!(
        md,
        "\nPer additional CPU: layout 4 {}, now {}.\n\n| map (now) | 2 CPUs | 64 CPUs |\n|---|---:|---:|",
        mib(per_cpu(&model.before)),
        mib(per_cpu(&model.now))
    );
    for d in &model.now {
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            d.name,
            mib(mem::bytes(d, 2)),
            mib(mem::bytes(d, 64))
        );
    }
    verdicts.push(format!(
        "{} kernel map memory grows by <= 1 MiB per additional CPU: {}",
        met(per_cpu(&model.now) <= 1 << 20),
        mib(per_cpu(&model.now))
    ));
    let (b2, n2) = (mem::total(&model.before, 2), mem::total(&model.now, 2));
    verdicts.push(format!(
        "{} kernel map memory on 2 CPUs no larger than layout 4's: {} vs {}",
        met(n2 <= b2),
        mib(n2),
        mib(b2)
    ));
}

fn report(
    results: &[SizeResult],
    args: &RunArgs,
    env: &str,
    model: &mem::Model,
    default_memlock: u64,
) -> (String, Vec<String>) {
    let mut md = String::new();
    let mut verdicts = Vec::new();
    let _ = writeln!(md, "# netnsxl benchmark\n\n{env}\n");
    let _ = writeln!(
        md,
        "Each figure is the median over {} rounds of interleaved blocks of {} connects (connect + getpeername + one request/response + close, sequential, one client) from a pod netns through a node netns to a backend netns. Ratios are to direct at the same size.\n",
        args.rounds, args.connects
    );
    let _ = writeln!(
        md,
        "## Short-connection rate\n\n| services | system | conn/s | vs direct | p50 µs | p99 µs | failed |\n|---:|---|---:|---:|---:|---:|---:|"
    );
    for r in results {
        let med = |s: System| {
            r.rates
                .get(&s)
                .map(|b| median(b.iter().map(Block::rate).collect()))
        };
        let direct = med(System::Direct).unwrap_or(f64::NAN);
        for (sys, blocks) in &r.rates {
            let rate = median(blocks.iter().map(Block::rate).collect());
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.3} | {:.1} | {:.1} | {} |",
                r.n,
                sys.name(),
                fmt_rate(rate),
                rate / direct,
                median(blocks.iter().map(|b| b.p50_us).collect()),
                median(blocks.iter().map(|b| b.p99_us).collect()),
                blocks.iter().map(|b| b.failed).sum::<u32>()
            );
        }
        if let Some(nx) = med(System::Netnsxl) {
            let ratio = nx / direct;
            verdicts.push(format!(
                "{} connect rate through netnsxl >= 0.97x direct at {} services: {:.3}x",
                if ratio >= 0.97 { "MET" } else { "NOT MET" },
                r.n,
                ratio
            ));
        }
        if r.n == 10000
            && let (Some(nx), Some(ipt)) = (med(System::Netnsxl), med(System::Iptables))
        {
            verdicts.push(format!(
                "{} netnsxl >= 2x iptables at 10,000 services: {:.2}x",
                if nx >= 2.0 * ipt { "MET" } else { "NOT MET" },
                nx / ipt
            ));
        }
    }
    let _ = writeln!(
        md,
        "\n## Datapath cost per call (bpf_stats: run_time_ns / run_cnt)\n"
    );
    let mut names: Vec<&str> = results
        .iter()
        .flat_map(|r| r.hooks.keys().copied())
        .collect();
    names.sort();
    names.dedup();
    size_columns(&mut md, "hook", results);
    for name in &names {
        let _ = write!(md, "| {name} |");
        for r in results {
            let v = r.hooks.get(name).map(|v| median(v.clone()));
            let _ = write!(md, " {} |", v.map_or("-".into(), |v| format!("{v:.0} ns")));
        }
        md.push('\n');
    }
    report_floor(
        &mut md,
        &mut verdicts,
        results,
        args,
        model,
        default_memlock,
    );
    if let Some(big) = results.iter().max_by_key(|r| r.n) {
        verdicts.push(format!(
            "{} apply of {} services <= 2 s: {:.2} s",
            if big.apply_s <= 2.0 { "MET" } else { "NOT MET" },
            big.n,
            big.apply_s
        ));
        verdicts.push(format!(
            "{} one svc add at {} services <= 10 ms process time: {:.1} ms ({:.1} ms wall)",
            if big.svc_add.1 <= 10.0 {
                "MET"
            } else {
                "NOT MET"
            },
            big.n,
            big.svc_add.1,
            big.svc_add.0
        ));
    }
    let _ = writeln!(
        md,
        "\n## Control plane\n\n| services | netnsxl apply | iptables-restore | nft -f | svc add (wall / cpu) | backend change (wall / cpu) | map memory | per added service |\n|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let opt = |v: Option<f64>| v.map_or("not loaded".to_string(), |v| format!("{v:.3} s"));
    let base = results.iter().min_by_key(|r| r.n);
    for r in results {
        let per = match base {
            Some(b) if r.services_loaded > b.services_loaded => format!(
                "{:.0} B",
                (r.memlock_total as f64 - b.memlock_total as f64)
                    / (r.services_loaded - b.services_loaded) as f64
            ),
            _ => "-".into(),
        };
        let _ = writeln!(
            md,
            "| {} | {:.3} s | {} | {} | {:.1} / {:.1} ms | {:.1} / {:.1} ms | {:.1} MiB | {per} |",
            r.n,
            r.apply_s,
            opt(r.iptables_s),
            opt(r.nft_s),
            r.svc_add.0,
            r.svc_add.1,
            r.backend_change.0,
            r.backend_change.1,
            r.memlock_total as f64 / 1048576.0
        );
    }
    let _ = writeln!(
        md,
        "\nnetnsxl apply is timed into empty maps with the N plain services; the affinity set (N more) and the UDP set (up to 1,000) are applied after it and not timed. Map memory is the memlock the kernel reports in each map's fdinfo, summed over all maps (fixed-size arrays and the preallocated LRU affinity map included); per added service is its growth from the smallest size over the services added (each size loads 2N + min(N, 1000)). svc add and backend change are one netnsxl process each (CPU = user + system). iptables is loaded up to {} services{}; nftables up to {} (nft -f of kube-proxy's chain-per-service layout took 50 s at 10,000 here and grows faster than linearly).\n",
        args.max_iptables,
        if args.sizes.iter().any(|n| *n > args.max_iptables) {
            " (beyond that iptables-restore and the per-SYN linear walk of KUBE-SERVICES are impractical)"
        } else {
            ""
        },
        args.max_nft
    );
    let _ = writeln!(md, "## Targets\n");
    for v in &verdicts {
        let _ = writeln!(md, "- {v}");
    }
    let _ = writeln!(md, "\n![connect rate against number of services](rate.svg)");
    (md, verdicts)
}

/// A line plot of the median connect rate against N (log scale), as SVG.
fn plot(results: &[SizeResult]) -> String {
    let (w, h, l, rgt, t, b) = (760.0, 420.0, 80.0, 250.0, 30.0, 50.0);
    let systems = [
        System::Direct,
        System::Netnsxl,
        System::NetnsxlAffinity,
        System::Iptables,
        System::Nftables,
    ];
    let colors = ["#444444", "#1f77b4", "#17becf", "#d62728", "#2ca02c"];
    let pts: Vec<Vec<(usize, f64)>> = systems
        .iter()
        .map(|s| {
            results
                .iter()
                .filter_map(|r| {
                    r.rates
                        .get(s)
                        .map(|bl| (r.n, median(bl.iter().map(Block::rate).collect())))
                })
                .collect()
        })
        .collect();
    let ymax = pts.iter().flatten().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let nmax = results.iter().map(|r| r.n).max().unwrap_or(1).max(10) as f64;
    let x = |n: usize| l + (((n.max(1)) as f64).log10() / nmax.log10()) * (w - l - rgt);
    let y = |v: f64| t + (1.0 - v / ymax) * (h - t - b);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    let _ = writeln!(
        s,
        "<line x1=\"{l}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/><line x1=\"{l}\" y1=\"{t}\" x2=\"{l}\" y2=\"{}\" stroke=\"black\"/>",
        h - b,
        w - rgt,
        h - b,
        h - b
    );
    for r in results {
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            x(r.n),
            h - b + 18.0,
            r.n
        );
    }
    for k in 0..=4 {
        let v = ymax * k as f64 / 4.0;
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{:.0}</text><line x1=\"{l}\" y1=\"{:.1}\" x2=\"{}\" y2=\"{:.1}\" stroke=\"#dddddd\"/>",
            l - 6.0,
            y(v) + 4.0,
            v,
            y(v),
            w - rgt,
            y(v)
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">services (log scale)</text>",
        (l + w - rgt) / 2.0,
        h - 12.0
    );
    let _ = writeln!(
        s,
        "<text x=\"16\" y=\"{}\" transform=\"rotate(-90 16 {})\" text-anchor=\"middle\">connections per second</text>",
        (t + h - b) / 2.0,
        (t + h - b) / 2.0
    );
    for (k, series) in pts.iter().enumerate() {
        if series.is_empty() {
            continue;
        }
        let path: Vec<String> = series
            .iter()
            .map(|(n, v)| format!("{:.1},{:.1}", x(*n), y(*v)))
            .collect();
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>",
            colors[k],
            path.join(" ")
        );
        for (n, v) in series {
            let _ = writeln!(
                s,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{}\"/>",
                x(*n),
                y(*v),
                colors[k]
            );
        }
        let ly = t + 20.0 * k as f64;
        let _ = writeln!(
            s,
            "<line x1=\"{}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{}\" stroke-width=\"2\"/><text x=\"{}\" y=\"{}\">{}</text>",
            w - rgt + 15.0,
            w - rgt + 35.0,
            colors[k],
            w - rgt + 40.0,
            ly + 4.0,
            systems[k].name()
        );
    }
    s.push_str("</svg>\n");
    s
}

fn environment() -> String {
    let kernel = sh("uname", &["-r"]).unwrap_or_default().trim().to_string();
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .nth(1)
        .and_then(|k| k.parse::<u64>().ok())
        .map_or(0, |k| k / 1024 / 1024);
    let date = sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
        .unwrap_or_default()
        .trim()
        .to_string();
    let ipt = sh("iptables", &["--version"])
        .unwrap_or_default()
        .trim()
        .to_string();
    let nft = sh("nft", &["--version"])
        .unwrap_or_default()
        .trim()
        .to_string();
    format!(
        "Machine: {cpu}, {cpus} CPUs, {mem} GiB; kernel {kernel}; {ipt}; {nft}. Run {date} by `make bench`."
    )
}

/// A program built next to this one (cargo build --release --bins).
fn sibling(name: &str) -> Result<PathBuf> {
    let p = std::env::current_exe()?
        .parent()
        .context("binary dir")?
        .join(name);
    if !p.exists() {
        bail!(
            "{} is missing: build with cargo build --release --bins",
            p.display()
        );
    }
    Ok(p)
}

fn run(args: RunArgs) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("netnsxl-bench creates namespaces and attaches BPF: run it as root (make bench)");
    }
    let netnsxl = sibling("netnsxl")?;
    let probe = sibling("netnsxl-probe")?;
    let lab = Lab::new(&probe)?;
    let dir = std::env::temp_dir().join(format!("{}-files", lab.tag));
    fs::create_dir_all(&dir)?;
    let _rm = RmDir(dir.clone());
    let att = Attachment {
        netnsxl,
        pins: PathBuf::from(netnsxl::sys::BPFFS_DEFAULT).join(format!("{}-bench", lab.tag)),
    };
    netnsxl::sys::ensure_bpffs(&att.pins)?;
    let runner = Runner {
        bench: std::env::current_exe()?,
        lab_cg: lab.cg.path.clone(),
        plain_cg: lab.plain_cg.path.clone(),
        empty_cg: lab.empty_cg.path.clone(),
    };

    use libbpf_rs::skel::{OpenSkel, SkelBuilder};
    // The do-nothing program, alone (no map created), in its own cgroup:
    // the bpf_stats baseline the warm loops are compared with.
    let mut obj = std::mem::MaybeUninit::uninit();
    let mut open = netnsxl::bpf::NetnsxlSkelBuilder::default()
        .open(&mut obj)
        .context("open the BPF object")?;
    for mut p in open.open_object_mut().progs_mut() {
        let keep = p.name() == "nxl_bench_empty";
        p.set_autoload(keep);
    }
    for mut m in open.open_object_mut().maps_mut() {
        m.set_autocreate(false)?;
    }
    let empty = open.load().context("load nxl_bench_empty")?;
    let empty_cg_dir = fs::File::open(&lab.empty_cg.path)?;
    let _empty_link = empty
        .progs
        .nxl_bench_empty
        .attach_cgroup(std::os::fd::AsRawFd::as_raw_fd(&empty_cg_dir))
        .context("attach nxl_bench_empty")?;
    let empty_id = libbpf_rs::Program::id_from_fd(empty.progs.nxl_bench_empty.as_fd())?;

    // Kernel map memory at default sizes, as this kernel reports it.
    att.ok(&["attach", "--cgroup", lab.cg.path.to_str().unwrap()])?;
    let default_memlock = maps_memlock(&att.pins)?;
    att.ok(&["detach"])?;
    let model = mem::model()?;
    // Sanity: every system reaches a backend before anything is measured.
    let env = environment();
    let mut results = Vec::new();
    for &n in args.sizes.iter().filter(|_| !args.only_watch) {
        if n == 0 || n > 131_000 {
            bail!("--sizes: each size must be 1..=131000 (the VIPs come from 198.18.0.0/15)");
        }
        results.push(run_size(&lab, &runner, &att, &args, n, &dir, empty_id)?);
    }
    let _ = &lab.backend;
    let mut watched = Vec::new();
    let mut agents = Vec::new();
    for &n in &args.watch_sizes {
        if n == 0 || n > 131_000 {
            bail!("--watch-sizes: each size must be 1..=131000");
        }
        // A fresh attachment with room for n services and 3n backends.
        let fresh = || -> Result<()> {
            let _ = att.ok(&["detach"]);
            att.ok(&[
                "attach",
                "--cgroup",
                lab.cg.path.to_str().unwrap(),
                "--max-services",
                &(n + 1100).to_string(),
                "--max-backends",
                &(3 * n + 3300).to_string(),
            ])
            .map(|_| ())
        };
        eprintln!("== watch loop, {n} Services + {n} EndpointSlices");
        fresh()?;
        let r = watch::measure(&att.netnsxl, &att.pins, n, args.watch_events)?;
        eprintln!("   {r:?}");
        watched.push(r);
        eprintln!("== watch loop through netnsxl agent, {n} Services + {n} EndpointSlices");
        fresh()?;
        let r = watch::measure_agent(&att.netnsxl, &att.pins, &lab.cg.path, n, args.watch_events)?;
        eprintln!("   {r:?}");
        agents.push(r);
    }
    let _ = att.ok(&["detach"]);
    let (md, verdicts) = if args.only_watch {
        let mut md = format!("# netnsxl benchmark: the watch loop\n\n{env}\n");
        let mut verdicts = Vec::new();
        watch::report(&mut md, &mut verdicts, &watched);
        watch::report_agent(&mut md, &mut verdicts, &agents);
        md.push_str("\n## Targets\n\n");
        for v in &verdicts {
            md.push_str(&format!("- {v}\n"));
        }
        (md, verdicts)
    } else {
        let (mut md, mut verdicts) = report(&results, &args, &env, &model, default_memlock);
        if !watched.is_empty() {
            let mut section = String::new();
            let mut wv = Vec::new();
            watch::report(&mut section, &mut wv, &watched);
            watch::report_agent(&mut section, &mut wv, &agents);
            let at = md.find("\n## Targets").unwrap_or(md.len());
            md.insert_str(at, &section);
            let lines: String = wv.iter().map(|v| format!("- {v}\n")).collect();
            let at = md.find("\n![connect rate").unwrap_or(md.len());
            md.insert_str(at, &lines);
            verdicts.extend(wv);
        }
        (md, verdicts)
    };
    fs::create_dir_all(&args.out)?;
    // The watch loop alone goes to a file of its own, so a short run never
    // overwrites the full results.
    let md_file = args.out.join(if args.only_watch {
        "watch.md"
    } else {
        "results.md"
    });
    fs::write(&md_file, &md)?;
    println!("{md}");
    if results.is_empty() {
        eprintln!("wrote {}", md_file.display());
    } else {
        fs::write(args.out.join("rate.svg"), plot(&results))?;
        eprintln!(
            "wrote {} and {}",
            md_file.display(),
            args.out.join("rate.svg").display()
        );
    }
    let _ = verdicts;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Some(Cmd::Client(a)) => client(a),
        Some(Cmd::Ab(a)) => ab::run(a),
        None => run(cli.run),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netnsxl-bench: {e:#}");
            ExitCode::from(1)
        }
    }
}
