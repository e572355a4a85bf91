//! netnsxl: Kubernetes-style service translation in BPF cgroup hooks, aware
//! of the network namespace of every socket.
//!
//! This file parses the command line, dispatches, and prints errors.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand};

use netnsxl::bpf;
use netnsxl::control::{affinity, apply, netns, redirect, service};
use netnsxl::datapath::loader as attach;
use netnsxl::datapath::state::State;
use netnsxl::model::addr::{BackendSpec, Proto, parse_ip};
use netnsxl::model::redirect::{RedirectBackend, RedirectSpec};
use netnsxl::model::service::{
    AFFINITY_TIMEOUT_DEFAULT, FrontendSpec, NODE_PORT_RANGE_DEFAULT, ServiceSpec, SvcType,
};
use netnsxl::model::topology::{Place, Topology, TrafficDist};
use netnsxl::observe::status;
use netnsxl::output::Format;
use netnsxl::sys;
use netnsxl::sys::netns::NetnsRef;

#[derive(Parser)]
#[command(name = "netnsxl", version, about, long_about = None)]
struct Cli {
    /// Where the attachment's maps and links are pinned (one attachment per dir).
    #[arg(
        long,
        global = true,
        env = "NETNSXL_PIN_DIR",
        default_value = "/sys/fs/bpf/netnsxl"
    )]
    pin_dir: PathBuf,

    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load the datapath and attach it to a cgroup v2 directory.
    #[command(
        after_help = "Example:\n  netnsxl attach --cgroup /sys/fs/cgroup/unified/kubepods --node-ip 198.51.100.1"
    )]
    Attach(AttachArgs),
    /// Detach the programs and remove every pin of the attachment.
    #[command(after_help = "Example:\n  netnsxl --pin-dir /sys/fs/bpf/netnsxl detach")]
    Detach,
    /// Show the attachment: cgroup, programs, netns cookies, map fill.
    #[command(after_help = "Example:\n  netnsxl status -o json")]
    Status(OutputArgs),
    /// Add, delete and list services.
    #[command(subcommand)]
    #[command(
        after_help = "Example:\n  netnsxl svc add --type clusterip --frontend 198.51.100.10:80 --backend 203.0.113.10:8080"
    )]
    Svc(SvcCmd),
    /// Session affinity entries, per client netns.
    #[command(subcommand)]
    #[command(after_help = "Example:\n  netnsxl affinity dump -o json")]
    Affinity(AffinityCmd),
    /// Network namespaces: list them, exempt some from translation.
    #[command(subcommand)]
    #[command(after_help = "Example:\n  netnsxl netns bypass add debug-shell")]
    Netns(NetnsCmd),
    /// Local redirects: a frontend's connects go to backends on this node
    /// first (Cilium's Local Redirect Policy), e.g. to a node-local DNS cache.
    #[command(subcommand)]
    #[command(
        after_help = "Example:\n  netnsxl redirect add --frontend 198.51.100.10:53 --proto udp --backend 192.0.2.53:53,netns=dns-cache --skip-from-backend"
    )]
    Redirect(RedirectCmd),
    /// Node addresses.
    #[command(subcommand)]
    #[command(after_help = "Example:\n  netnsxl node refresh --node-ip 198.51.100.1")]
    Node(NodeCmd),
    /// Make the services what a file says: netnsxl's format, or Kubernetes
    /// Services and EndpointSlices as kubectl get -o json prints them.
    #[command(
        after_help = "Example:\n  kubectl get services,endpointslices -A -o json | netnsxl apply -f - --prune --dry-run"
    )]
    Apply(ApplyArgs),
    /// The node agent: attach (idempotent), then keep the maps in step with
    /// the API server's Services, EndpointSlices and this node's Node, with
    /// an in-process client that resumes its watches. Runs until killed.
    #[command(
        after_help = "Example:\n  netnsxl agent --cgroup /sys/fs/cgroup/kubepods.slice --node-name \"$NODE_NAME\""
    )]
    Agent(AgentArgs),
    /// Datapath counters: per reason and per service, summed over CPUs.
    #[command(after_help = "Example:\n  netnsxl stats --watch 5")]
    Stats {
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Print rates every SECS seconds until Ctrl-C.
        #[arg(long, value_name = "SECS")]
        watch: Option<u64>,
    },
    /// Print a shell completion script (bash, zsh or fish).
    #[command(after_help = "Example:\n  netnsxl completions bash > /etc/bash_completion.d/netnsxl")]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) on standard output.
    #[command(after_help = "Example:\n  netnsxl man | man -l -")]
    Man,
    /// Stream translation decisions live until Ctrl-C.
    #[command(
        after_help = "Example:\n  netnsxl trace --frontend 198.51.100.10:80 --netns pod-a -o json"
    )]
    Trace {
        /// Only decisions about this frontend (ADDR:PORT, or :PORT).
        #[arg(long, value_name = "ADDR:PORT")]
        frontend: Option<String>,
        /// Only this protocol (with --frontend).
        #[arg(long, value_enum)]
        proto: Option<Proto>,
        /// Only sockets of this netns (a name under /run/netns).
        #[arg(long)]
        netns: Option<String>,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Forget tracers that were killed without cleaning up (status warns
        /// about them), then exit.
        #[arg(long)]
        reset: bool,
    },
}

#[derive(Args)]
struct ApplyArgs {
    /// The file, or - for standard input. With --watch, repeat it to
    /// follow several streams at once (kubectl watches one resource type
    /// per command).
    #[arg(short = 'f', long = "filename", value_name = "FILE", required = true)]
    files: Vec<String>,
    /// Print what would change (added, changed, removed) and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Delete the services the file does not name.
    #[arg(long)]
    prune: bool,
    /// Read Kubernetes watch streams (kubectl get services -A --watch -o
    /// json --output-watch-events, and one of endpointslices) and keep the
    /// maps in step, one change per event, until the streams end.
    #[arg(long, conflicts_with_all = ["dry_run", "prune"])]
    watch: bool,
    /// With --watch: serve Prometheus metrics on http://ADDR:PORT/metrics
    /// and health on /healthz (200 once the initial list is applied and the
    /// programs are attached to the recorded cgroup, else 503 and why).
    /// Binds only this address, e.g. 127.0.0.1:10264.
    #[arg(long, value_name = "ADDR:PORT", requires = "watch")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// No progress bar (it is shown only on a terminal, for 1,000 services
    /// or more).
    #[arg(short, long)]
    quiet: bool,
    /// Also destroy TCP sockets connected to removed backends (UDP ones
    /// always are).
    #[arg(long)]
    destroy_tcp: bool,
    /// This node's name: EndpointSlice endpoints with this nodeName are local
    /// (default: the hostname).
    #[arg(long, value_name = "NAME")]
    node_name: Option<String>,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(Args)]
struct AgentArgs {
    #[command(flatten)]
    attach: AttachArgs,
    /// The API server's URL, over what KUBECONFIG or the pod's service
    /// account (KUBERNETES_SERVICE_HOST/PORT) say: for nodes where no one
    /// translates the kubernetes ClusterIP before netnsxl has its list.
    #[arg(long, value_name = "URL", env = "NETNSXL_API_SERVER")]
    api_server: Option<String>,
    /// This node's name as the API knows it (default: the hostname).
    #[arg(long, value_name = "NAME", env = "NODE_NAME")]
    node_name: Option<String>,
    /// Serve /metrics (and /healthz, /livez) here; port 0 turns it off.
    /// Loopback by default, as kube-proxy's metrics; not kube-proxy's
    /// 10249, so both can run on one node.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:10264")]
    metrics_addr: std::net::SocketAddr,
    /// Serve /healthz and /livez (nothing that names a service) here, for
    /// the kubelet's probes; port 0 turns it off. Not kube-proxy's 10256.
    #[arg(long, value_name = "ADDR:PORT", default_value = "0.0.0.0:10265")]
    health_addr: std::net::SocketAddr,
    /// Also destroy TCP sockets connected to removed backends (UDP ones
    /// always are).
    #[arg(long)]
    destroy_tcp: bool,
}

#[derive(Args)]
struct AttachArgs {
    /// The cgroup v2 directory whose sockets are translated.
    #[arg(long)]
    cgroup: PathBuf,
    /// The netns treated as the host's (default: the initial netns).
    #[arg(long, value_name = "PATH")]
    host_netns: Option<PathBuf>,
    /// An extra node address (repeatable), besides the host netns' own.
    #[arg(long = "node-ip", value_name = "ADDR")]
    node_ips: Vec<String>,
    /// Ports NodePorts may use.
    #[arg(long, value_name = "A-B", default_value = "30000-32767")]
    node_port_range: String,
    /// Services the maps hold (the service map holds max-services +
    /// max-backends frontend entries: a master per frontend, a slot per backend).
    #[arg(long, value_name = "N", default_value_t = attach::Capacity::default().services)]
    max_services: u32,
    /// Backends the maps hold, over all services.
    #[arg(long, value_name = "N", default_value_t = attach::Capacity::default().backends)]
    max_backends: u32,
    /// Affinity entries (client netns, service) kept before the least
    /// recently used goes.
    #[arg(long, value_name = "N", default_value_t = attach::Capacity::default().affinity)]
    max_affinity: u32,
    /// Open translated TCP sockets whose getpeername() shows the frontend
    /// (32 bytes each, preallocated; a power of two). A socket that finds
    /// no room shows its backend and is counted as tcp_unrecorded.
    #[arg(long, value_name = "N", default_value_t = attach::Capacity::default().tcp_sockets)]
    max_tcp_sockets: u32,
    /// This node's zone (its topology.kubernetes.io/zone label): services
    /// whose endpoints carry zone hints use the ones for this zone.
    #[arg(long, value_name = "ZONE", default_value = "")]
    zone: String,
}

#[derive(Args)]
struct OutputArgs {
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(Subcommand)]
enum SvcCmd {
    /// Add a service (or with --replace change one).
    #[command(
        after_help = "Example:\n  netnsxl svc add --type nodeport --frontend :30080 --backend 203.0.113.10:8080,local --session-affinity client-ip"
    )]
    Add(SvcAddArgs),
    /// Delete a service by its frontend.
    #[command(
        after_help = "Example:\n  netnsxl svc del --frontend 198.51.100.10:80 --proto udp --destroy-tcp"
    )]
    Del(FrontendArgs),
    /// List the services as the maps hold them.
    #[command(after_help = "Example:\n  netnsxl svc list -o json > services.json")]
    List(OutputArgs),
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Affinity {
    None,
    ClientIp,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Policy {
    Cluster,
    Local,
}

#[derive(Args)]
struct SvcAddArgs {
    #[arg(long = "type", value_enum)]
    svc_type: SvcType,
    /// ADDR:PORT, [ADDR]:PORT for IPv6; :PORT (or [::]:PORT) for a NodePort
    /// or a HostPort on every node address.
    #[arg(long, value_name = "ADDR:PORT")]
    frontend: Option<String>,
    #[arg(long, value_enum, default_value_t = Proto::Tcp)]
    proto: Proto,
    /// A NodePort's port (same as --frontend :PORT), or a LoadBalancer's NodePort.
    #[arg(long, value_name = "PORT")]
    node_port: Option<u16>,
    /// A backend ADDR:PORT[,local][,terminating][,zone=ZONE][,node=NODE]
    /// (repeatable; none: every connect is refused, as for a service without
    /// ready endpoints). zone and node are where it runs, for
    /// --traffic-distribution.
    #[arg(long = "backend", value_name = "ADDR:PORT")]
    backends: Vec<String>,
    /// Keep traffic close, as Kubernetes' spec.trafficDistribution:
    /// prefer-same-zone (or prefer-close) uses the backends of this node's
    /// zone (attach --zone), prefer-same-node those of this node (local or
    /// node=NODE), when every active backend says where it runs and one
    /// matches; otherwise all.
    #[arg(long, value_name = "DIST", value_parser = parse_traffic_dist)]
    traffic_distribution: Option<TrafficDist>,
    /// This node's name, for node=NODE (default: the hostname).
    #[arg(long, value_name = "NAME")]
    node_name: Option<String>,
    /// NAMESPACE/NAME, for people reading svc list.
    #[arg(long, default_value = "")]
    name: String,
    #[arg(long, value_enum, default_value_t = Affinity::None)]
    session_affinity: Affinity,
    /// Seconds a client netns sticks to its backend (1..=86400).
    #[arg(long, value_name = "SECS")]
    affinity_timeout: Option<u32>,
    /// local: ClusterIP frontends use node-local backends only.
    #[arg(long, value_enum, default_value_t = Policy::Cluster)]
    internal_traffic_policy: Policy,
    /// Recorded and listed; on-node clients are routed by the cluster policy.
    #[arg(long, value_enum, default_value_t = Policy::Cluster)]
    external_traffic_policy: Policy,
    /// Replace an existing service on this frontend.
    #[arg(long)]
    replace: bool,
    /// Also destroy TCP sockets connected to backends --replace removes
    /// (UDP ones always are).
    #[arg(long)]
    destroy_tcp: bool,
}

#[derive(Args)]
struct FrontendArgs {
    /// ADDR:PORT, [ADDR]:PORT for IPv6, :PORT for a NodePort.
    #[arg(long, value_name = "ADDR:PORT")]
    frontend: String,
    #[arg(long, value_enum, default_value_t = Proto::Tcp)]
    proto: Proto,
    /// Also destroy TCP sockets connected to the service's backends (UDP
    /// ones always are).
    #[arg(long)]
    destroy_tcp: bool,
}

#[derive(Subcommand)]
enum AffinityCmd {
    /// Show every live affinity entry.
    #[command(after_help = "Example:\n  netnsxl affinity dump")]
    Dump(OutputArgs),
    /// Delete entries: of one service, of one client netns, or all.
    #[command(
        after_help = "Example:\n  netnsxl affinity flush --frontend 198.51.100.10:80 --netns pod-a"
    )]
    Flush {
        #[arg(long, value_name = "ADDR:PORT")]
        frontend: Option<String>,
        #[arg(long, value_enum, default_value_t = Proto::Tcp)]
        proto: Proto,
        /// A netns name under /run/netns.
        #[arg(long)]
        netns: Option<String>,
    },
}

#[derive(Subcommand)]
enum RedirectCmd {
    /// Redirect a frontend (or replace its redirect).
    #[command(
        after_help = "Example:\n  netnsxl redirect add --frontend 198.51.100.10:53 --proto udp --backend 192.0.2.53:53 --skip-from-backend --name kube-system/node-local-dns"
    )]
    Add(RedirectAddArgs),
    /// Delete a redirect: the frontend's service (or its address) answers again.
    #[command(
        after_help = "Example:\n  netnsxl redirect del --frontend 198.51.100.10:53 --proto udp"
    )]
    Del {
        #[arg(long, value_name = "ADDR:PORT")]
        frontend: String,
        #[arg(long, value_enum, default_value_t = Proto::Tcp)]
        proto: Proto,
    },
    /// Every redirect, with each backend's netns name and cookie.
    #[command(after_help = "Example:\n  netnsxl redirect list -o json")]
    List(OutputArgs),
}

#[derive(Args)]
struct RedirectAddArgs {
    /// The address:port whose connects are redirected (a service's, or any).
    #[arg(long, value_name = "ADDR:PORT")]
    frontend: String,
    #[arg(long, value_enum, default_value_t = Proto::Tcp)]
    proto: Proto,
    /// A backend on this node, ADDR:PORT[,netns=NAME] (repeatable, at most 8).
    /// Its netns is NAME under /run/netns, or the netns that has ADDR.
    #[arg(long = "backend", value_name = "ADDR:PORT")]
    backends: Vec<String>,
    /// Leave alone the sockets of the backends' own netns: they reach the
    /// service on the frontend (or its address), as a cache forwarding to
    /// the service it caches must.
    #[arg(long)]
    skip_from_backend: bool,
    /// NAMESPACE/NAME, for people reading redirect list.
    #[arg(long, default_value = "")]
    name: String,
}

#[derive(Subcommand)]
enum NetnsCmd {
    /// Every netns that can be found, with its cookie.
    #[command(after_help = "Example:\n  netnsxl netns list -o json")]
    List(OutputArgs),
    /// Sockets of a bypassed netns are never translated.
    #[command(subcommand)]
    #[command(after_help = "Example:\n  netnsxl netns bypass del --pid 4242")]
    Bypass(BypassCmd),
}

#[derive(Subcommand)]
enum BypassCmd {
    #[command(after_help = "Example:\n  netnsxl netns bypass add debug-shell")]
    Add(NetnsSel),
    #[command(after_help = "Example:\n  netnsxl netns bypass del debug-shell")]
    Del(NetnsSel),
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct NetnsSel {
    /// A name under /run/netns.
    name: Option<String>,
    #[arg(long)]
    pid: Option<u32>,
    #[arg(long)]
    path: Option<PathBuf>,
}

impl NetnsSel {
    fn to_ref(&self) -> NetnsRef {
        match (&self.name, self.pid, &self.path) {
            (Some(n), _, _) => NetnsRef::Name(n.clone()),
            (_, Some(p), _) => NetnsRef::Pid(p),
            (_, _, Some(p)) => NetnsRef::Path(p.clone()),
            _ => unreachable!("clap requires one"),
        }
    }
}

#[derive(Subcommand)]
enum NodeCmd {
    /// Re-read the host netns' addresses and rewrite the frontends that use them.
    #[command(after_help = "Example:\n  netnsxl node refresh --host-netns /proc/1/ns/net")]
    Refresh {
        #[arg(long = "node-ip", value_name = "ADDR")]
        node_ips: Vec<String>,
        /// The host netns (default: the initial netns).
        #[arg(long, value_name = "PATH")]
        host_netns: Option<PathBuf>,
        /// Set this node's zone ("" for none); apply and svc add choose
        /// topology-hinted backends with it from then on.
        #[arg(long, value_name = "ZONE")]
        zone: Option<String>,
    },
}

fn main() -> ExitCode {
    // A reader that stops early (`svc list | head -1`) ends netnsxl quietly,
    // as it does any Unix filter, instead of a panic on EPIPE.
    // SAFETY: called first thing, before any other thread exists; SIG_DFL
    // is a valid disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netnsxl: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Usage errors on one line, exit code 2; --help and --version as clap prints them.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    let text = e.render().to_string();
    let line: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("For more information") && !l.starts_with("Usage:")
        })
        .collect();
    eprintln!("netnsxl: {}", line.join(" ").trim_start_matches("error: "));
    ExitCode::from(2)
}

fn parse_ips(ips: &[String]) -> Result<Vec<std::net::IpAddr>> {
    ips.iter().map(|s| parse_ip("--node-ip", s)).collect()
}

fn parse_port_range(s: &str) -> Result<(u16, u16)> {
    let parsed = s
        .split_once('-')
        .and_then(|(a, b)| Some((a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?)));
    match parsed {
        Some((a, b)) if a >= 1 && a <= b => Ok((a, b)),
        _ => bail!(
            "--node-port-range {s:?}: write A-B with 1 <= A <= B <= 65535, e.g. {}-{}",
            NODE_PORT_RANGE_DEFAULT.0,
            NODE_PORT_RANGE_DEFAULT.1
        ),
    }
}

fn run(cli: Cli) -> Result<()> {
    let pin_dir = cli.pin_dir.as_path();
    match cli.cmd {
        Cmd::Attach(a) => attach::attach(pin_dir, &attach_opts(a)?),
        Cmd::Agent(a) => agent_cmd(pin_dir, a),
        Cmd::Detach => attach::detach(pin_dir),
        Cmd::Status(o) => status::status(pin_dir, o.format),
        Cmd::Svc(SvcCmd::Add(a)) => svc_add(pin_dir, a),
        Cmd::Svc(SvcCmd::Del(f)) => {
            let frontend = FrontendSpec::parse(&f.frontend)?;
            let (state, _lock) = open_for_change(pin_dir)?;
            let done = service::del(&state, &frontend, f.proto)?;
            println!("deleted {}/{}", frontend.display(), f.proto);
            report_destroyed(netnsxl::control::stale::after_change(
                &state,
                &done,
                f.destroy_tcp,
            )?);
            Ok(())
        }
        Cmd::Svc(SvcCmd::List(o)) => service::list(&State::open(pin_dir)?, o.format),
        Cmd::Affinity(AffinityCmd::Dump(o)) => affinity::dump(&State::open(pin_dir)?, o.format),
        Cmd::Affinity(AffinityCmd::Flush {
            frontend,
            proto,
            netns,
        }) => {
            let frontend = frontend.as_deref().map(FrontendSpec::parse).transpose()?;
            let cookie = netns.map(|n| NetnsRef::Name(n).cookie()).transpose()?;
            let (state, _lock) = open_for_change(pin_dir)?;
            let svc_id = match frontend {
                Some(fe) => Some(service::find(&state, &fe, proto)?.ok_or_else(|| {
                    anyhow::anyhow!(
                        "--frontend {}/{proto}: no such service (svc list shows them)",
                        fe.display()
                    )
                })?),
                None => None,
            };
            let n = affinity::flush(&state, svc_id, cookie)?;
            println!("flushed {n} affinity entries");
            Ok(())
        }
        Cmd::Redirect(RedirectCmd::Add(a)) => {
            let spec = RedirectSpec {
                name: a.name,
                frontend: netnsxl::model::addr::parse_endpoint("--frontend", &a.frontend)?,
                proto: a.proto,
                backends: a
                    .backends
                    .iter()
                    .map(|b| RedirectBackend::parse(b))
                    .collect::<Result<_>>()?,
                skip_from_backend: a.skip_from_backend,
                from_file: false,
            };
            spec.validate()?;
            let (state, _lock) = open_for_change(pin_dir)?;
            let verb = match redirect::add(&state, &spec)? {
                redirect::Added::New => "added",
                redirect::Added::Replaced => "replaced",
                redirect::Added::Unchanged => "unchanged",
            };
            println!(
                "{verb} redirect {}/{} -> {} backends{}",
                spec.frontend,
                spec.proto,
                spec.backends.len(),
                if spec.skip_from_backend {
                    " (skipped from their own netns)"
                } else {
                    ""
                }
            );
            Ok(())
        }
        Cmd::Redirect(RedirectCmd::Del { frontend, proto }) => {
            let fe = netnsxl::model::addr::parse_endpoint("--frontend", &frontend)?;
            let (state, _lock) = open_for_change(pin_dir)?;
            redirect::del(&state, fe, proto)?;
            println!("deleted redirect {fe}/{proto}");
            Ok(())
        }
        Cmd::Redirect(RedirectCmd::List(o)) => redirect::list(&State::open(pin_dir)?, o.format),
        Cmd::Netns(NetnsCmd::List(o)) => netns::list(&State::open(pin_dir)?, o.format),
        Cmd::Netns(NetnsCmd::Bypass(b)) => {
            let (state, _lock) = open_for_change(pin_dir)?;
            match b {
                BypassCmd::Add(sel) => {
                    let r = sel.to_ref();
                    let c = netns::bypass_add(&state, &r)?;
                    println!(
                        "netns {} (cookie {c}) bypassed: its sockets are not translated",
                        r.shown()
                    );
                }
                BypassCmd::Del(sel) => {
                    let r = sel.to_ref();
                    let c = netns::bypass_del(&state, &r)?;
                    println!("netns {} (cookie {c}) is translated again", r.shown());
                }
            }
            Ok(())
        }
        Cmd::Apply(a) => apply_cmd(pin_dir, a),
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "netnsxl", &mut std::io::stdout());
            Ok(())
        }
        Cmd::Man => {
            use clap::CommandFactory;
            let cmd = Cli::command();
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut out)?;
            use std::io::Write;
            std::io::stdout().write_all(&out)?;
            Ok(())
        }
        Cmd::Stats { format, watch } => {
            netnsxl::observe::stats::stats(&State::open(pin_dir)?, format, watch)
        }
        Cmd::Trace {
            frontend,
            proto,
            netns,
            format,
            reset,
        } => {
            if reset {
                // Back to the tracers that are running: a killed one is
                // forgotten, a live one keeps receiving events.
                let (state, _lock) = open_for_change(pin_dir)?;
                let live = sys::pindir::TracerLock::live(&state.pins.root)?;
                let mut cfg = state.config()?;
                cfg.tracers = live;
                state.write_config(&cfg)?;
                println!("tracers reset to {live} (the running ones)");
                return Ok(());
            }
            let frontend = frontend
                .as_deref()
                .map(FrontendSpec::parse)
                .transpose()?
                .map(|f| (f, proto));
            let netns_cookie = netns.map(|n| NetnsRef::Name(n).cookie()).transpose()?;
            sys::require_privileges()?;
            let state = State::open(pin_dir)?;
            netnsxl::observe::stats::trace(
                &state,
                &netnsxl::observe::stats::TraceOpts {
                    frontend,
                    netns_cookie,
                    format,
                },
            )
        }
        Cmd::Node(NodeCmd::Refresh {
            node_ips,
            host_netns,
            zone,
        }) => {
            let extra = parse_ips(&node_ips)?;
            if let Some(z) = &zone {
                netnsxl::model::topology::check_zone("--zone", z)?;
            }
            let (state, _lock) = open_for_change(pin_dir)?;
            let addrs = attach::host_addrs(host_netns.as_deref(), &extra)?;
            let n = service::refresh_node_addrs(&state, &addrs)?;
            println!("{} node addresses; {n} services rewritten", addrs.len());
            if let Some(z) = zone {
                service::set_zone(&state, &z)?;
                println!("zone {}", if z.is_empty() { "(none)" } else { &z });
            }
            let r = redirect::refresh(&state)?;
            if !r.is_empty() {
                println!("{}", r.join("\n"));
            }
            Ok(())
        }
    }
}

fn parse_traffic_dist(s: &str) -> Result<TrafficDist> {
    TrafficDist::parse("--traffic-distribution", s)
}

fn attach_opts(a: AttachArgs) -> Result<attach::AttachOpts> {
    netnsxl::model::topology::check_zone("--zone", &a.zone)?;
    Ok(attach::AttachOpts {
        zone: a.zone,
        node_ips: parse_ips(&a.node_ips)?,
        node_port_range: parse_port_range(&a.node_port_range)?,
        cgroup: a.cgroup,
        host_netns: a.host_netns,
        capacity: attach::Capacity {
            services: a.max_services,
            backends: a.max_backends,
            affinity: a.max_affinity,
            tcp_sockets: a.max_tcp_sockets,
        },
    })
}

/// `netnsxl agent`: attach (idempotent), then follow the API server.
fn agent_cmd(pin_dir: &Path, mut a: AgentArgs) -> Result<()> {
    sys::require_privileges()?;
    let node_name = node_name(a.node_name.take())?;
    // Port 0 turns a listener off.
    let on = |addr: std::net::SocketAddr| (addr.port() != 0).then_some(addr);
    let opts = netnsxl::agent::AgentOpts {
        api_server: a.api_server,
        apply: apply::ApplyOpts {
            dry_run: false,
            prune: false,
            node_name,
            destroy_tcp: a.destroy_tcp,
            quiet: true,
        },
        metrics_addr: on(a.metrics_addr),
        health_addr: on(a.health_addr),
    };
    attach::attach(pin_dir, &attach_opts(a.attach)?)?;
    let state = State::open(pin_dir)?;
    netnsxl::agent::run(&state, pin_dir, opts)
}

/// --node-name, or the hostname.
fn node_name(given: Option<String>) -> Result<String> {
    match given {
        Some(n) => Ok(n),
        None => Ok(nix::unistd::gethostname()
            .map_err(|e| anyhow::anyhow!("read the hostname for --node-name: {e}"))?
            .to_string_lossy()
            .into_owned()),
    }
}

fn apply_cmd(pin_dir: &Path, mut a: ApplyArgs) -> Result<()> {
    use std::io::Read;
    if a.watch {
        let node_name = node_name(a.node_name.take())?;
        let mut inputs: Vec<Box<dyn Read + Send>> = Vec::new();
        for f in &a.files {
            inputs.push(if f == "-" {
                Box::new(std::io::stdin())
            } else {
                Box::new(std::fs::File::open(f).map_err(|e| anyhow::anyhow!("-f {f}: {e}"))?)
            });
        }
        let opts = apply::ApplyOpts {
            dry_run: false,
            prune: false,
            node_name,
            destroy_tcp: a.destroy_tcp,
            quiet: true,
        };
        sys::require_privileges()?;
        let state = State::open(pin_dir)?;
        // The lock is taken per event, so other commands can run between.
        let metrics = std::sync::Arc::new(netnsxl::observe::metrics::WatchMetrics::default());
        if let Some(addr) = a.metrics_addr {
            netnsxl::observe::metrics::serve(addr, pin_dir.to_path_buf(), metrics.clone())?;
        }
        use netnsxl::control::watch::Progress;
        let mut on = |p: Progress| netnsxl::agent::progress(&metrics, p);
        let s = netnsxl::control::watch::watch(&state, inputs, &opts, &mut on)?;
        if s.failed > 0 {
            bail!(
                "{} of {} events could not be applied (see above); the others were",
                s.failed,
                s.events
            );
        }
        return Ok(());
    }
    let [file] = &a.files[..] else {
        bail!(
            "-f is given {} times: without --watch, apply reads one file",
            a.files.len()
        );
    };
    let text = if file == "-" {
        let mut t = String::new();
        std::io::stdin()
            .read_to_string(&mut t)
            .map_err(|e| anyhow::anyhow!("-f -: cannot read standard input: {e}"))?;
        t
    } else {
        std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("-f {file}: {e}"))?
    };
    let node_name = node_name(a.node_name.take())?;
    let opts = apply::ApplyOpts {
        dry_run: a.dry_run,
        prune: a.prune,
        node_name,
        destroy_tcp: a.destroy_tcp,
        quiet: a.quiet,
    };
    let (state, _lock) = if a.dry_run {
        (State::open(pin_dir)?, None)
    } else {
        let (s, l) = open_for_change(pin_dir)?;
        (s, Some(l))
    };
    let report = apply::apply(&state, &text, &opts).map_err(|e| {
        let shown = if file == "-" { "standard input" } else { file };
        anyhow::anyhow!("{shown}: {e:#}")
    })?;
    match a.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Table => report.print(),
    }
    Ok(())
}

/// Open the state for a command that changes it, holding the state lock.
fn open_for_change(pin_dir: &Path) -> Result<(State, sys::StateLock)> {
    sys::require_privileges()?;
    // Lock first: a detach that held it has then finished, and the state
    // opened after is the one the lock covers.
    let lock = sys::StateLock::take(pin_dir)?;
    let state = State::open(pin_dir)?;
    Ok((state, lock))
}

fn svc_add(pin_dir: &Path, a: SvcAddArgs) -> Result<()> {
    let backends = a
        .backends
        .iter()
        .map(|b| BackendSpec::parse(b))
        .collect::<Result<Vec<_>>>()?;
    let (frontend, node_port) = match (a.svc_type, a.frontend.as_deref(), a.node_port) {
        (SvcType::Nodeport, None, Some(p)) => {
            // No address to take the family from: the backends give it.
            let ipv6 = backends.first().is_some_and(|b| b.addr.is_ipv6());
            (
                FrontendSpec {
                    ip: None,
                    port: p,
                    ipv6,
                },
                None,
            )
        }
        (SvcType::Nodeport, Some(_), Some(_)) => {
            bail!("--frontend :PORT and --node-port say the same for a nodeport: give one")
        }
        (_, Some(f), np) => (FrontendSpec::parse(f)?, np),
        (_, None, _) => bail!("--frontend is missing: give ADDR:PORT (or :PORT for a nodeport)"),
    };
    if frontend.port == 0 {
        bail!("--node-port 0 is out of range: use a port in 1-65535");
    }
    let affinity_timeout = match (a.session_affinity, a.affinity_timeout) {
        (Affinity::ClientIp, t) => Some(t.unwrap_or(AFFINITY_TIMEOUT_DEFAULT)),
        (Affinity::None, None) => None,
        (Affinity::None, Some(_)) => {
            bail!("--affinity-timeout needs --session-affinity client-ip")
        }
    };
    let mut spec = ServiceSpec {
        name: a.name,
        svc_type: a.svc_type,
        frontend,
        proto: a.proto,
        node_port,
        backends,
        affinity_timeout,
        internal_local: a.internal_traffic_policy == Policy::Local,
        external_local: a.external_traffic_policy == Policy::Local,
        from_kubernetes: false,
        topology: Topology {
            distribution: a.traffic_distribution.unwrap_or_default(),
            ..Topology::default()
        },
    };
    spec.validate()?;
    let node = node_name(a.node_name)?;
    let (state, _lock) = open_for_change(pin_dir)?;
    let zone = bpf::from_cstr(&state.config()?.zone);
    spec.apply_topology(Place {
        node: &node,
        zone: &zone,
    });
    let done = service::add(&state, &spec, a.replace)?;
    println!(
        "{} {} {}/{} -> {} backends",
        if a.replace { "set" } else { "added" },
        spec.svc_type.name(),
        spec.frontend.display(),
        spec.proto,
        spec.backends.len()
    );
    report_destroyed(netnsxl::control::stale::after_change(
        &state,
        &done,
        a.destroy_tcp,
    )?);
    Ok(())
}

fn report_destroyed(n: usize) {
    if n > 0 {
        println!("destroyed {n} sockets connected to removed backends");
    }
}
