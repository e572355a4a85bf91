//! netnsxl-probe: see a service the way a pod sees it.
//!
//! `connect` opens a socket as a process of a cgroup inside a netns (the
//! cgroup is joined first, then the netns: `ip netns exec` would hide
//! /sys/fs/cgroup), talks to an address and prints one JSON line per attempt:
//! the reply, the peer `getpeername()` or `recvfrom()` reported, the errno,
//! the netns cookie. `serve` answers every TCP connection or UDP datagram
//! with a fixed text, from inside a netns. The tests and the demo use both.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use netnsxl::model::addr::{Proto, parse_endpoint};
use nix::sched::{CloneFlags, setns};
use serde::Serialize;

#[derive(Parser)]
#[command(
    name = "netnsxl-probe",
    version,
    about = "See a service the way a pod sees it"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Connect (or send) to ADDR:PORT from a cgroup and netns; print what came back.
    Connect(ConnectArgs),
    /// Answer every connection or datagram with --reply.
    Serve(ServeArgs),
    /// One unconnected UDP socket keeps many datagrams in flight, as a
    /// resolver or a QUIC client does: each round sends --in-flight
    /// datagrams to the targets in turn, then reads the replies. One JSON
    /// line per round.
    Burst(BurstArgs),
}

#[derive(Args)]
struct BurstArgs {
    #[command(flatten)]
    place: Place,
    /// Datagrams sent per round before the first reply is read.
    #[arg(long, default_value_t = 32)]
    in_flight: u32,
    /// Rounds, all on the same socket.
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// Before each round after the first, wait for a line on stdin (EOF
    /// ends): the caller changes something between rounds.
    #[arg(long)]
    wait: bool,
    /// How long a round waits for its last reply.
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
    /// Where to send: ADDR:PORT or [ADDR]:PORT, one or more. An IPv6
    /// target (a v4-mapped one included) makes the socket IPv6.
    #[arg(required = true)]
    targets: Vec<String>,
}

#[derive(Serialize)]
struct Round {
    /// Datagrams sent this round.
    sent: u32,
    /// Each reply: the source recvfrom() reported and the text.
    replies: Vec<BurstReply>,
    /// Why a send or the reads stopped early.
    error: Option<String>,
}

#[derive(Serialize)]
struct BurstReply {
    from: String,
    reply: String,
}

#[derive(Args)]
struct Place {
    /// Join this cgroup v2 directory before opening the socket.
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// Enter this netns: a name under /run/netns or a path.
    #[arg(long)]
    netns: Option<String>,
}

#[derive(Args)]
struct ConnectArgs {
    #[command(flatten)]
    place: Place,
    #[arg(long, value_enum, default_value_t = Proto::Tcp)]
    proto: Proto,
    /// UDP: sendto() without connect(), and report recvfrom()'s source.
    #[arg(long)]
    unconnected: bool,
    /// How many attempts, each on a new socket.
    #[arg(long, default_value_t = 1)]
    count: u32,
    /// The request sent on each attempt.
    #[arg(long, default_value = "ping\n")]
    send: String,
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
    /// Keep one connected socket (TCP needs serve --keep-open); after the first exchange, read
    /// commands from stdin: `send` (send and receive again), `recv` (only
    /// receive: a socket aborted meanwhile reports its error) or
    /// `reconnect` (connect() the same socket again, then send and
    /// receive). One JSON line each; ends at EOF.
    #[arg(long)]
    hold: bool,
    /// TCP: keep every attempt's socket open until the last attempt is
    /// done (each reports the peer getpeername() gave right after connect).
    #[arg(long)]
    keep_all: bool,
    /// Where to connect: ADDR:PORT or [ADDR]:PORT.
    target: String,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    place: Place,
    #[arg(long, value_enum, default_value_t = Proto::Tcp)]
    proto: Proto,
    #[arg(long)]
    listen: String,
    #[arg(long)]
    reply: String,
    /// TCP: answer every request on a connection until the client closes it
    /// (default: one reply, then close).
    #[arg(long)]
    keep_open: bool,
}

#[derive(Serialize)]
struct Attempt {
    ok: bool,
    reply: Option<String>,
    /// getpeername() for connected sockets, recvfrom()'s source otherwise.
    peer: Option<String>,
    errno: Option<i32>,
    error: Option<String>,
    netns_cookie: u64,
    elapsed_us: u128,
    /// When the attempt started, in microseconds since the Unix epoch.
    start_unix_us: u128,
}

fn unix_us() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros())
}

fn attempt_of(
    res: std::io::Result<(String, SocketAddr)>,
    cookie: u64,
    start: Instant,
    start_unix_us: u128,
) -> Attempt {
    let elapsed_us = start.elapsed().as_micros();
    match res {
        Ok((reply, peer)) => Attempt {
            ok: true,
            reply: Some(reply),
            peer: Some(peer.to_string()),
            errno: None,
            error: None,
            netns_cookie: cookie,
            elapsed_us,
            start_unix_us,
        },
        Err(e) => Attempt {
            ok: false,
            reply: None,
            peer: None,
            errno: e.raw_os_error(),
            error: Some(e.to_string()),
            netns_cookie: cookie,
            elapsed_us,
            start_unix_us,
        },
    }
}

/// One connected socket, driven by commands on stdin (--hold).
enum Held {
    Udp(UdpSocket),
    Tcp(Option<TcpStream>),
}

#[derive(Clone, Copy)]
enum Step {
    Send,
    Recv,
    Reconnect,
}

impl Held {
    fn exchange(
        &mut self,
        a: &ConnectArgs,
        target: SocketAddr,
        step: Step,
    ) -> std::io::Result<(String, SocketAddr)> {
        let timeout = Duration::from_millis(a.timeout_ms);
        let mut buf = [0u8; 2048];
        match self {
            Held::Udp(s) => {
                if let Step::Reconnect = step {
                    s.connect(target)?;
                }
                if !matches!(step, Step::Recv) {
                    s.send(a.send.as_bytes())?;
                }
                let n = s.recv(&mut buf)?;
                Ok((
                    String::from_utf8_lossy(&buf[..n]).into_owned(),
                    s.peer_addr()?,
                ))
            }
            Held::Tcp(conn) => {
                // TCP cannot connect a socket twice: reconnect opens a new one.
                if let Step::Reconnect = step {
                    let c = TcpStream::connect_timeout(&target, timeout)?;
                    c.set_read_timeout(Some(timeout))?;
                    *conn = Some(c);
                }
                let c = conn
                    .as_mut()
                    .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOTCONN))?;
                if !matches!(step, Step::Recv) {
                    c.write_all(a.send.as_bytes())?;
                }
                let n = c.read(&mut buf)?;
                if n == 0 {
                    return Err(std::io::Error::other("connection closed by the peer"));
                }
                Ok((
                    String::from_utf8_lossy(&buf[..n]).into_owned(),
                    c.peer_addr()?,
                ))
            }
        }
    }
}

fn hold(a: &ConnectArgs, target: SocketAddr, cookie: u64) -> Result<()> {
    use std::io::BufRead;
    let mut held = match a.proto {
        Proto::Udp => {
            let bind: SocketAddr = if target.is_ipv4() {
                "0.0.0.0:0".parse()?
            } else {
                "[::]:0".parse()?
            };
            let s = UdpSocket::bind(bind)?;
            s.set_read_timeout(Some(Duration::from_millis(a.timeout_ms)))?;
            Held::Udp(s)
        }
        Proto::Tcp => Held::Tcp(None),
    };
    let mut out = std::io::stdout().lock();
    let mut step = |st: Step, out: &mut std::io::StdoutLock| -> Result<()> {
        let (start, t) = (Instant::now(), unix_us());
        let r = attempt_of(held.exchange(a, target, st), cookie, start, t);
        writeln!(out, "{}", serde_json::to_string(&r)?)?;
        out.flush()?;
        Ok(())
    };
    step(Step::Reconnect, &mut out)?;
    for line in std::io::stdin().lock().lines() {
        match line?.trim() {
            "send" => step(Step::Send, &mut out)?,
            "recv" => step(Step::Recv, &mut out)?,
            "reconnect" => step(Step::Reconnect, &mut out)?,
            other => anyhow::bail!("--hold: unknown command {other:?}: send, recv or reconnect"),
        }
    }
    Ok(())
}

fn enter(place: &Place) -> Result<()> {
    if let Some(cg) = &place.cgroup {
        let procs = cg.join("cgroup.procs");
        fs::write(&procs, std::process::id().to_string())
            .with_context(|| format!("join cgroup {}", procs.display()))?;
    }
    if let Some(ns) = &place.netns {
        let path = if ns.contains('/') {
            PathBuf::from(ns)
        } else {
            PathBuf::from(netnsxl::sys::netns::NETNS_RUN_DIR).join(ns)
        };
        let f = File::open(&path).with_context(|| format!("open netns {}", path.display()))?;
        setns(f.as_fd(), CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("enter netns {}", path.display()))?;
    }
    Ok(())
}

fn attempt(a: &ConnectArgs, target: SocketAddr, cookie: u64, kept: &mut Vec<TcpStream>) -> Attempt {
    let start = Instant::now();
    let start_unix_us = unix_us();
    let timeout = Duration::from_millis(a.timeout_ms);
    let res: std::io::Result<(String, SocketAddr)> = match (a.proto, a.unconnected) {
        (Proto::Tcp, _) => (|| {
            let mut s = TcpStream::connect_timeout(&target, timeout)?;
            s.set_read_timeout(Some(timeout))?;
            let peer = s.peer_addr()?;
            if a.keep_all {
                kept.push(s);
                return Ok((String::new(), peer));
            }
            s.write_all(a.send.as_bytes())?;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf)?;
            Ok((String::from_utf8_lossy(&buf).into_owned(), peer))
        })(),
        (Proto::Udp, unconnected) => (|| {
            let bind: SocketAddr = if target.is_ipv4() {
                "0.0.0.0:0".parse().unwrap()
            } else {
                "[::]:0".parse().unwrap()
            };
            let s = UdpSocket::bind(bind)?;
            s.set_read_timeout(Some(timeout))?;
            let mut buf = [0u8; 2048];
            if !unconnected {
                s.connect(target)?;
                s.send(a.send.as_bytes())?;
                let n = s.recv(&mut buf)?;
                Ok((
                    String::from_utf8_lossy(&buf[..n]).into_owned(),
                    s.peer_addr()?,
                ))
            } else {
                s.send_to(a.send.as_bytes(), target)?;
                let (n, from) = s.recv_from(&mut buf)?;
                Ok((String::from_utf8_lossy(&buf[..n]).into_owned(), from))
            }
        })(),
    };
    attempt_of(res, cookie, start, start_unix_us)
}

fn connect(a: ConnectArgs) -> Result<()> {
    let target = parse_endpoint("target", &a.target)?;
    enter(&a.place)?;
    let cookie = netnsxl::sys::current_netns_cookie()?;
    if a.hold {
        if a.unconnected {
            anyhow::bail!("--hold keeps a connected socket: drop --unconnected");
        }
        return hold(&a, target, cookie);
    }
    let mut out = std::io::stdout().lock();
    let mut kept = Vec::new();
    for _ in 0..a.count {
        let r = attempt(&a, target, cookie, &mut kept);
        writeln!(out, "{}", serde_json::to_string(&r)?)?;
    }
    Ok(())
}

fn burst(a: BurstArgs) -> Result<()> {
    use std::io::BufRead;
    let targets = a
        .targets
        .iter()
        .map(|t| parse_endpoint("target", t))
        .collect::<Result<Vec<SocketAddr>>>()?;
    enter(&a.place)?;
    let any: SocketAddr = if targets.iter().any(SocketAddr::is_ipv6) {
        "[::]:0".parse()?
    } else {
        "0.0.0.0:0".parse()?
    };
    let s = UdpSocket::bind(any).context("bind the burst socket")?;
    let mut out = std::io::stdout().lock();
    let mut stdin = std::io::stdin().lock().lines();
    for round in 0..a.rounds {
        if round > 0 && a.wait && !matches!(stdin.next(), Some(Ok(_))) {
            break;
        }
        let mut r = Round {
            sent: 0,
            replies: Vec::new(),
            error: None,
        };
        for i in 0..a.in_flight {
            let to = targets[i as usize % targets.len()];
            match s.send_to(b"ping\n", to) {
                Ok(_) => r.sent += 1,
                Err(e) => {
                    r.error = Some(format!("send to {to}: {e}"));
                    break;
                }
            }
        }
        let deadline = Instant::now() + Duration::from_millis(a.timeout_ms);
        let mut buf = [0u8; 2048];
        while (r.replies.len() as u32) < r.sent {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            s.set_read_timeout(Some(left))?;
            match s.recv_from(&mut buf) {
                Ok((n, from)) => r.replies.push(BurstReply {
                    from: from.to_string(),
                    reply: String::from_utf8_lossy(&buf[..n]).into_owned(),
                }),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break;
                }
                Err(e) => {
                    r.error = Some(format!("recvfrom: {e}"));
                    break;
                }
            }
        }
        writeln!(out, "{}", serde_json::to_string(&r)?)?;
        out.flush()?;
    }
    Ok(())
}

fn serve(a: ServeArgs) -> Result<()> {
    // Port 0 is allowed here: the kernel picks one and ready() reports it.
    let listen: SocketAddr = a
        .listen
        .parse()
        .with_context(|| format!("--listen {:?}: write ADDR:PORT or [ADDR]:PORT", a.listen))?;
    enter(&a.place)?;
    match a.proto {
        Proto::Tcp => {
            let l = TcpListener::bind(listen).with_context(|| format!("listen on {listen}"))?;
            ready(l.local_addr()?)?;
            for conn in l.incoming() {
                let Ok(mut c) = conn else { continue };
                if a.keep_open {
                    let reply = a.reply.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 512];
                        while let Ok(n) = c.read(&mut buf) {
                            if n == 0 || c.write_all(reply.as_bytes()).is_err() {
                                break;
                            }
                        }
                    });
                    continue;
                }
                let _ = c.set_read_timeout(Some(Duration::from_millis(500)));
                let mut buf = [0u8; 512];
                let _ = c.read(&mut buf);
                let _ = c.write_all(a.reply.as_bytes());
            }
        }
        Proto::Udp => {
            let s = UdpSocket::bind(listen).with_context(|| format!("bind {listen}"))?;
            ready(s.local_addr()?)?;
            let mut buf = [0u8; 2048];
            loop {
                let Ok((_, from)) = s.recv_from(&mut buf) else {
                    continue;
                };
                let _ = s.send_to(a.reply.as_bytes(), from);
            }
        }
    }
    Ok(())
}

/// Tell whoever started us that the socket is bound, and where (port 0 in
/// --listen picks a free port).
fn ready(at: SocketAddr) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready {at}")?;
    out.flush()?;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Connect(a) => connect(a),
        Cmd::Serve(a) => serve(a),
        Cmd::Burst(a) => burst(a),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netnsxl-probe: {e:#}");
            ExitCode::from(1)
        }
    }
}
