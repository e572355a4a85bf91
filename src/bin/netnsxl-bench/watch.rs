//! The watch loop's table: `apply --watch` fed N Services and N
//! EndpointSlices as kubectl's initial list, then single MODIFIED slices.
//!
//! - initial list: from the first byte written to the change line that
//!   names the last event (the loop batches what is waiting);
//! - per event: MODIFIED EndpointSlices sent one at a time, each waiting for
//!   its change line. Processing is the loop's CPU time (user + system,
//!   from /proc) over them, divided by their number: what the loop spends
//!   per event, whatever the machine does meanwhile. The wall time per
//!   event (p50) also holds the pipe, the scheduler and the loop's 1 ms
//!   wait for a following event;
//! - memory: the loop's resident anonymous memory (heap and stacks; the
//!   program's code pages are file-backed and shared) after the list, less
//!   before any event, per object held.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// One size's figures.
#[derive(Debug, Default)]
pub struct WatchResult {
    pub n: usize,
    pub initial_s: f64,
    /// The loop's CPU time (user + system) until the list was applied.
    pub list_cpu_s: f64,
    pub changes: usize,
    pub event_cpu_ms: f64,
    pub event_wall_p50_ms: f64,
    pub events: usize,
    pub rss_base_kib: u64,
    pub rss_kib: u64,
}

impl WatchResult {
    /// Its row of the table: size, list time and CPU, changes, per-event
    /// CPU and wall, memory and per object.
    fn row(&self) -> String {
        format!(
            "| {} + {} | {:.2} s | {:.2} s | {} | {:.3} ms (over {}) | {:.2} ms | {:.1} MiB | {:.0} B |",
            self.n,
            self.n,
            self.initial_s,
            self.list_cpu_s,
            self.changes,
            self.event_cpu_ms,
            self.events,
            self.event_wall_p50_ms,
            self.rss_kib as f64 / 1024.0,
            self.bytes_per_object()
        )
    }

    pub fn bytes_per_object(&self) -> f64 {
        (self.rss_kib.saturating_sub(self.rss_base_kib) * 1024) as f64 / (2 * self.n) as f64
    }
}

fn service(i: usize) -> String {
    let ip = super::vip(i);
    format!(
        r#"{{"type":"ADDED","object":{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"s{i}","namespace":"bench","resourceVersion":"{i}","uid":"00000000-0000-0000-0000-{i:012}","creationTimestamp":"2026-12-02T00:00:00Z"}},"spec":{{"type":"ClusterIP","clusterIP":"{ip}","clusterIPs":["{ip}"],"ipFamilies":["IPv4"],"ipFamilyPolicy":"SingleStack","internalTrafficPolicy":"Cluster","sessionAffinity":"None","ports":[{{"name":"http","port":80,"protocol":"TCP","targetPort":8080}}]}},"status":{{"loadBalancer":{{}}}}}}}}"#
    )
}

fn slice(kind: &str, i: usize, endpoints: &[&str]) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|a| {
            format!(
                r#"{{"addresses":["{a}"],"conditions":{{"ready":true,"serving":true,"terminating":false}},"nodeName":"node-b","targetRef":{{"kind":"Pod","name":"s{i}-pod","namespace":"bench"}}}}"#
            )
        })
        .collect();
    format!(
        r#"{{"type":"{kind}","object":{{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{{"name":"s{i}-abcde","namespace":"bench","labels":{{"kubernetes.io/service-name":"s{i}","endpointslice.kubernetes.io/managed-by":"endpointslice-controller.k8s.io"}},"generateName":"s{i}-"}},"addressType":"IPv4","ports":[{{"name":"http","port":8080,"protocol":"TCP"}}],"endpoints":[{}]}}}}"#,
        eps.join(",")
    )
}

const BACKENDS: [&str; 3] = ["203.0.113.1", "203.0.113.2", "203.0.113.3"];

/// `events` MODIFIED EndpointSlices of random Services among `n`, their
/// backends alternating between two and three (the same sequence each run).
fn single_events(n: usize, events: usize) -> impl Iterator<Item = String> {
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    (0..events).map(move |k| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let i = 1 + (seed % n as u64) as usize;
        let eps: &[&str] = if k % 2 == 0 {
            &BACKENDS[..2]
        } else {
            &BACKENDS
        };
        slice("MODIFIED", i, eps)
    })
}

/// (user + system) CPU seconds and resident anonymous KiB (the heap and
/// stacks, not the program's code pages) of a process.
fn proc_usage(pid: u32) -> Result<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = stat.rsplit_once(") ").context("/proc/PID/stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as f64;
    let cpu = (f[11].parse::<f64>()? + f[12].parse::<f64>()?) / tick;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("RssAnon")?;
    Ok((cpu, rss))
}

/// Measure one size. `netnsxl` and `pins` name an attachment with room for
/// N services and 3N backends and no services yet.
pub fn measure(netnsxl: &Path, pins: &Path, n: usize, events: usize) -> Result<WatchResult> {
    let mut child = super::guards::Reaped(
        Command::new(netnsxl)
            .arg("--pin-dir")
            .arg(pins)
            .args(["apply", "-f", "-", "--watch", "--node-name", "node-a"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("start apply --watch")?,
    );
    let pid = child.0.id();
    let mut stdin = child.0.stdin.take().context("stdin")?;
    let mut lines = BufReader::new(child.0.stdout.take().context("stdout")?).lines();
    std::thread::sleep(Duration::from_millis(300));
    let (_, rss_base_kib) = proc_usage(pid)?;

    // The initial list: all Services, then all slices, as kubectl prints it.
    let mut list = String::with_capacity(n * 1400);
    for i in 1..=n {
        list.push_str(&service(i));
        list.push('\n');
    }
    for i in 1..=n {
        list.push_str(&slice("ADDED", i, &BACKENDS));
        list.push('\n');
    }
    let total = 2 * n;
    let t0 = Instant::now();
    let writer = std::thread::spawn(move || -> std::io::Result<std::process::ChildStdin> {
        stdin.write_all(list.as_bytes())?;
        stdin.flush()?;
        Ok(stdin)
    });
    let mut changes = 0;
    // The last event a change line names: "event N ..." or "events A-B ...".
    let last_of = |l: &str| -> Option<usize> {
        let rest = l
            .strip_prefix("events ")
            .and_then(|r| r.split_once('-').map(|(_, b)| b))
            .or_else(|| l.strip_prefix("event "))?;
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    loop {
        let l = lines.next().context("the watch ended during the list")??;
        changes += 1;
        if last_of(&l) == Some(total) {
            break;
        }
    }
    let initial_s = t0.elapsed().as_secs_f64();
    let mut stdin = writer.join().map_err(|_| anyhow::anyhow!("writer"))??;
    let (list_cpu_s, rss_kib) = proc_usage(pid)?;

    // Single events: one slice at a time, each waiting for its line.
    let mut walls = Vec::with_capacity(events);
    let (cpu0, _) = proc_usage(pid)?;
    for (k, ev) in single_events(n, events).enumerate() {
        let t = Instant::now();
        writeln!(stdin, "{ev}")?;
        stdin.flush()?;
        let l = lines.next().context("the watch ended")??;
        walls.push(t.elapsed().as_secs_f64() * 1e3);
        if last_of(&l) != Some(total + k + 1) {
            bail!("unexpected change line {l:?}");
        }
    }
    let (cpu1, _) = proc_usage(pid)?;
    drop(stdin);
    let status = child.0.wait()?;
    if !status.success() {
        bail!("apply --watch failed: {status}");
    }
    walls.sort_by(f64::total_cmp);
    Ok(WatchResult {
        n,
        initial_s,
        list_cpu_s,
        changes,
        event_cpu_ms: (cpu1 - cpu0) * 1e3 / events as f64,
        event_wall_p50_ms: walls[walls.len() / 2],
        events,
        rss_base_kib,
        rss_kib,
    })
}

/// The Markdown section and the targets.
pub fn report(md: &mut String, verdicts: &mut Vec<String>, results: &[WatchResult]) {
    let _ = writeln!(
        md,
        "\n## Watch loop\n\n`apply --watch` fed kubectl-shaped JSON through a pipe: N Services then N EndpointSlices (3 endpoints each) as the initial list, then MODIFIED EndpointSlices of random Services one at a time, each waiting for its change line. Processing per event is the loop's CPU time (user + system) over them; wall p50 adds the pipe, scheduling and the loop's 1 ms wait for a following event. Memory is the loop's resident anonymous memory (RssAnon: heap and stacks, not its code pages) after the list, and its growth from before the first event per object held (N Services + N slices).\n\n| services + slices | initial list | its CPU time | changes it took | per event: processing | per event: wall p50 | resident anonymous memory | per object |\n|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in results {
        let _ = writeln!(md, "{}", r.row());
    }
    let met = |ok: bool| if ok { "MET" } else { "NOT MET" };
    for r in results {
        let limit = if r.n <= 5000 { 3.0 } else { 20.0 };
        if r.n == 5000 || r.n == 100_000 {
            verdicts.push(format!(
                "{} initial list of {} Services + {} EndpointSlices through apply --watch <= {limit} s: {:.2} s",
                met(r.initial_s <= limit),
                r.n,
                r.n,
                r.initial_s
            ));
        }
        verdicts.push(format!(
            "{} one MODIFIED EndpointSlice <= 1 ms of processing after {} + {} objects: {:.3} ms",
            met(r.event_cpu_ms <= 1.0),
            r.n,
            r.n,
            r.event_cpu_ms
        ));
        verdicts.push(format!(
            "{} watch loop memory <= 2 KiB per object held at {} + {}: {:.0} B",
            met(r.bytes_per_object() <= 2048.0),
            r.n,
            r.n,
            r.bytes_per_object()
        ));
    }
}

/// The agent's figures at one size: the loop's (through the agent), and
/// the requests after closed watches.
#[derive(Debug, Default)]
pub struct AgentResult {
    pub figures: WatchResult,
    /// Watches the API server closed, and the requests that followed.
    pub closes: usize,
    pub lists: usize,
    pub watches: usize,
}

/// The object of one of [`service`] or [`slice`]'s events.
fn object(event: &str) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_str(event).expect("the bench's own JSON");
    v["object"].take()
}

/// A running `netnsxl agent` on a stand-in API server; its stdout lines.
struct RunningAgent {
    child: super::guards::Reaped,
    lines: std::sync::mpsc::Receiver<String>,
    health: std::net::SocketAddr,
}

impl RunningAgent {
    fn start(netnsxl: &Path, pins: &Path, cgroup: &Path, kubeconfig: &str) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let health: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let mut child = super::guards::Reaped(
            Command::new(netnsxl)
                .arg("--pin-dir")
                .arg(pins)
                .arg("agent")
                .arg("--cgroup")
                .arg(cgroup)
                .args(["--node-name", "node-a", "--metrics-addr", "127.0.0.1:0"])
                .arg("--health-addr")
                .arg(health.to_string())
                .env("KUBECONFIG", kubeconfig)
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(
                    std::env::temp_dir().join("netnsxl-bench-agent.err"),
                )?)
                .spawn()
                .context("start netnsxl agent")?,
        );
        let out = child.0.stdout.take().context("stdout")?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Ok(RunningAgent {
            child,
            lines,
            health,
        })
    }

    fn ready(&self) -> bool {
        use std::io::Read;
        let Ok(mut s) = std::net::TcpStream::connect(self.health) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut r = String::new();
        let _ = s.read_to_string(&mut r);
        r.starts_with("HTTP/1.1 200")
    }

    fn wait_ready(&self, limit: Duration) -> Result<()> {
        let t = Instant::now();
        while !self.ready() {
            if t.elapsed() > limit {
                bail!("the agent was not ready after {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

/// Measure the agent at one size: the initial list of N Services and N
/// EndpointSlices from a stand-in API server (until /healthz says ready),
/// single MODIFIED slices, memory, and the requests that follow 12 closed
/// watches (an hour at the API server's default of one close every 5
/// minutes). `pins` is attached to `cgroup` with room, and empty.
pub fn measure_agent(
    netnsxl: &Path,
    pins: &Path,
    cgroup: &Path,
    n: usize,
    events: usize,
) -> Result<AgentResult> {
    let dir = super::guards::tempdir();
    // The agent's own footprint: ready on an empty API server.
    let empty = netnsxl_standin::ApiServer::start();
    let base = RunningAgent::start(netnsxl, pins, cgroup, &empty.kubeconfig(&dir))?;
    base.wait_ready(Duration::from_secs(30))?;
    let (_, rss_base_kib) = proc_usage(base.child.0.id())?;
    drop(base);

    let api = netnsxl_standin::ApiServer::start();
    api.apply_all((1..=n).map(|i| object(&service(i))));
    api.apply_all((1..=n).map(|i| object(&slice("ADDED", i, &BACKENDS))));
    let t0 = Instant::now();
    let agent = RunningAgent::start(netnsxl, pins, cgroup, &api.kubeconfig(&dir))?;
    agent.wait_ready(Duration::from_secs(600))?;
    let initial_s = t0.elapsed().as_secs_f64();
    let pid = agent.child.0.id();
    let (_, rss_kib) = proc_usage(pid)?;
    let (list_cpu, _) = proc_usage(pid)?;
    let changes = agent.lines.try_iter().count();

    // Single events, each waiting for its change line.
    let mut walls = Vec::with_capacity(events);
    let (cpu0, _) = proc_usage(pid)?;
    for ev in single_events(n, events) {
        let t = Instant::now();
        api.apply(object(&ev));
        let l = agent
            .lines
            .recv_timeout(Duration::from_secs(10))
            .context("no change line from the agent")?;
        walls.push(t.elapsed().as_secs_f64() * 1e3);
        if !l.starts_with("event ") {
            bail!("unexpected change line {l:?}");
        }
    }
    let (cpu1, _) = proc_usage(pid)?;
    walls.sort_by(f64::total_cmp);

    // An hour of watch closes, compressed.
    let closes = 12;
    let lists0 = api.requests("LIST", "services") + api.requests("LIST", "endpointslices");
    let watches0 = api.requests("WATCH", "services");
    let slice_watches0 = api.requests("WATCH", "endpointslices");
    for c in 1..=closes {
        api.close_watches();
        let t = Instant::now();
        while api.requests("WATCH", "services") < watches0 + c
            || api.requests("WATCH", "endpointslices") < slice_watches0 + c
        {
            if t.elapsed() > Duration::from_secs(30) {
                bail!("the agent did not watch again after close {c}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let lists = api.requests("LIST", "services") + api.requests("LIST", "endpointslices") - lists0;
    let watches = api.requests("WATCH", "services") - watches0;
    Ok(AgentResult {
        figures: WatchResult {
            n,
            initial_s,
            list_cpu_s: list_cpu,
            changes,
            event_cpu_ms: (cpu1 - cpu0) * 1e3 / events as f64,
            event_wall_p50_ms: walls[walls.len() / 2],
            events,
            rss_base_kib,
            rss_kib,
        },
        closes,
        lists,
        watches,
    })
}

/// The agent's section, beside the pipe's at the same sizes.
pub fn report_agent(md: &mut String, verdicts: &mut Vec<String>, results: &[AgentResult]) {
    let _ = writeln!(
        md,
        "\n## Watch loop through `netnsxl agent`\n\nThe same objects served by a stand-in API server on loopback (the netnsxl-standin crate: list, then chunked watch streams with bookmarks), read by the agent's in-process client (kube-rs), measured right after the pipe at each size. The initial list runs from the agent's start to /healthz saying ready (both lists in and applied). Requests: the API server closes every watch 12 times (an hour at its default of one close every 5 minutes); the agent should resume each watch (one request per resource per close) and list nothing.\n\n| services + slices | initial list | its CPU time | changes it took | per event: processing | per event: wall p50 | resident anonymous memory | per object | closes | watches of services after them | lists after them |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in results {
        let _ = writeln!(
            md,
            "{} {} | {} | {} |",
            r.figures.row(),
            r.closes,
            r.watches,
            r.lists
        );
    }
    let met = |ok: bool| if ok { "MET" } else { "NOT MET" };
    for r in results {
        verdicts.push(format!(
            "{} agent: {} closed watches at {} + {} objects cost {} watches of services and {} lists (want {} and 0)",
            met(r.watches == r.closes && r.lists == 0),
            r.closes,
            r.figures.n,
            r.figures.n,
            r.watches,
            r.lists,
            r.closes
        ));
    }
}
