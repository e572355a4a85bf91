//! netnsxl: Kubernetes-style service translation in BPF cgroup hooks, aware
//! of the network namespace of every socket.
//!
//! This file parses the command line, dispatches, and prints errors.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand};

use netnsxl::addr::{BackendSpec, Proto, parse_endpoint, parse_ip};
use netnsxl::output::Format;
use netnsxl::service::{AFFINITY_TIMEOUT_DEFAULT, ServiceSpec, SvcType};
use netnsxl::state::State;
use netnsxl::{affinity, attach, service, sys};

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
    Attach(AttachArgs),
    /// Detach the programs and remove every pin of the attachment.
    Detach,
    /// Show the attachment: cgroup, programs, netns cookies, map fill.
    Status(OutputArgs),
    /// Add, delete and list services.
    #[command(subcommand)]
    Svc(SvcCmd),
    /// Session affinity entries, per client netns.
    #[command(subcommand)]
    Affinity(AffinityCmd),
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
}

#[derive(Args)]
struct OutputArgs {
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(Subcommand)]
enum SvcCmd {
    /// Add a service (or with --replace swap the backends of one).
    Add(SvcAddArgs),
    /// Delete a service by its frontend.
    Del(FrontendArgs),
    /// List the services as the maps hold them.
    List(OutputArgs),
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Affinity {
    None,
    ClientIp,
}

#[derive(Args)]
struct SvcAddArgs {
    #[arg(long = "type", value_enum)]
    svc_type: SvcType,
    #[command(flatten)]
    frontend: FrontendArgs,
    /// A backend ADDR:PORT[,local][,terminating] (repeatable).
    #[arg(long = "backend", value_name = "ADDR:PORT")]
    backends: Vec<String>,
    /// NAMESPACE/NAME, for people reading svc list.
    #[arg(long, default_value = "")]
    name: String,
    #[arg(long, value_enum, default_value_t = Affinity::None)]
    session_affinity: Affinity,
    /// Seconds a client netns sticks to its backend (1..=86400).
    #[arg(long, value_name = "SECS")]
    affinity_timeout: Option<u32>,
    /// Replace the backends of an existing frontend.
    #[arg(long)]
    replace: bool,
}

#[derive(Args)]
struct FrontendArgs {
    /// ADDR:PORT, or [ADDR]:PORT for IPv6.
    #[arg(long, value_name = "ADDR:PORT")]
    frontend: String,
    #[arg(long, value_enum, default_value_t = Proto::Tcp)]
    proto: Proto,
}

#[derive(Subcommand)]
enum AffinityCmd {
    /// Show every live affinity entry.
    Dump(OutputArgs),
}

fn main() -> ExitCode {
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

fn run(cli: Cli) -> Result<()> {
    let pin_dir = cli.pin_dir.as_path();
    match cli.cmd {
        Cmd::Attach(a) => {
            let node_ips = a
                .node_ips
                .iter()
                .map(|s| parse_ip("--node-ip", s))
                .collect::<Result<Vec<_>>>()?;
            attach::attach(
                pin_dir,
                &attach::AttachOpts {
                    cgroup: a.cgroup,
                    host_netns: a.host_netns,
                    node_ips,
                },
            )
        }
        Cmd::Detach => attach::detach(pin_dir),
        Cmd::Status(o) => attach::status(pin_dir, o.format),
        Cmd::Svc(SvcCmd::Add(a)) => svc_add(pin_dir, a),
        Cmd::Svc(SvcCmd::Del(f)) => {
            let frontend = parse_endpoint("--frontend", &f.frontend)?;
            let (state, _lock) = open_for_change(pin_dir)?;
            service::del(&state, frontend, f.proto)?;
            println!("deleted {frontend}/{}", f.proto);
            Ok(())
        }
        Cmd::Svc(SvcCmd::List(o)) => service::list(&State::open(pin_dir)?, o.format),
        Cmd::Affinity(AffinityCmd::Dump(o)) => affinity::dump(&State::open(pin_dir)?, o.format),
    }
}

/// Open the state for a command that changes it, holding the state lock.
fn open_for_change(pin_dir: &Path) -> Result<(State, sys::StateLock)> {
    sys::require_privileges()?;
    let state = State::open(pin_dir)?;
    let lock = sys::StateLock::take(pin_dir)?;
    Ok((state, lock))
}

fn svc_add(pin_dir: &Path, a: SvcAddArgs) -> Result<()> {
    let frontend = parse_endpoint("--frontend", &a.frontend.frontend)?;
    let backends = a
        .backends
        .iter()
        .map(|b| BackendSpec::parse(b))
        .collect::<Result<Vec<_>>>()?;
    let affinity_timeout = match (a.session_affinity, a.affinity_timeout) {
        (Affinity::ClientIp, t) => Some(t.unwrap_or(AFFINITY_TIMEOUT_DEFAULT)),
        (Affinity::None, None) => None,
        (Affinity::None, Some(_)) => {
            bail!("--affinity-timeout needs --session-affinity client-ip")
        }
    };
    let spec = ServiceSpec {
        name: a.name,
        svc_type: a.svc_type,
        frontend,
        proto: a.frontend.proto,
        backends,
        affinity_timeout,
    };
    spec.validate()?;
    let (state, _lock) = open_for_change(pin_dir)?;
    service::add(&state, &spec, a.replace)?;
    println!(
        "{} {} {frontend}/{} -> {} backends",
        if a.replace { "set" } else { "added" },
        spec.svc_type.name(),
        spec.proto,
        spec.backends.len()
    );
    Ok(())
}
