//! Integration harness: RAII guards for everything a test creates.
//!
//! Every guard has a unique name (pid + counter) and removes what it made on
//! drop, also when the test panics. Nothing here touches a cgroup, netns or
//! pin it did not create. Sockets under test belong to child processes
//! (netnsxl-probe) that join the test cgroup themselves; the test process
//! never moves itself.

#![allow(dead_code)]

mod guards;
pub use guards::*;

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

pub const NETNSXL: &str = env!("CARGO_BIN_EXE_netnsxl");
pub const PROBE: &str = env!("CARGO_BIN_EXE_netnsxl-probe");

/// Integration tests load BPF and create namespaces: they are marked
/// `#[ignore = "needs root ..."]` so a plain `cargo test` lists them as
/// ignored, and `make test` runs them with `--include-ignored`. Run that way
/// without root, each fails here with the reason instead of passing unrun.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test loads BPF and creates namespaces: run it as root (make test)"
    );
}

/// Whether the running kernel has an optional feature, as attach probes it.
/// Tests expect the behaviour of the kernel they run on and print which.
pub fn kernel_has(id: netnsxl::datapath::features::Id) -> bool {
    static PROBED: std::sync::OnceLock<netnsxl::datapath::features::Probed> =
        std::sync::OnceLock::new();
    PROBED
        .get_or_init(netnsxl::datapath::features::probe)
        .has(id)
}

/// The errno connect() gets from a frontend with no usable backend:
/// ECONNREFUSED with bpf_set_retval (5.18), EPERM without.
pub fn refused_errno() -> i32 {
    if kernel_has(netnsxl::datapath::features::Id::SetRetval) {
        libc::ECONNREFUSED
    } else {
        eprintln!("kernel lacks bpf_set_retval: expecting EPERM for a frontend with no backend");
        libc::EPERM
    }
}

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A pin dir of its own under bpffs; detached and removed on drop.
pub struct PinDir {
    pub path: PathBuf,
}

impl PinDir {
    pub fn new() -> PinDir {
        let path = Path::new(netnsxl::sys::BPFFS_DEFAULT).join(unique("netnsxl-test-"));
        // Mounts bpffs at /sys/fs/bpf when nothing is there, as attach does.
        netnsxl::sys::ensure_bpffs(&path).expect("bpffs at /sys/fs/bpf");
        PinDir { path }
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if self.path.exists() {
            let _ = Command::new(NETNSXL)
                .arg("--pin-dir")
                .arg(&self.path)
                .arg("detach")
                .output();
        }
        if self.path.exists() {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// An empty tmpfs of the test's own, mounted on a fresh temp dir; unmounted
/// and removed on drop. Stands for "a directory that is not cgroup v2"
/// without pointing at any path of the machine's.
pub struct Tmpfs(TempDir);

impl Tmpfs {
    pub fn new() -> Tmpfs {
        let dir = tempdir();
        nix::mount::mount(
            Some("none"),
            &*dir,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=64k"),
        )
        .unwrap_or_else(|e| panic!("mount a tmpfs on {}: {e}", dir.display()));
        Tmpfs(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&*self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A netnsxl-probe server, killed by pid on drop (Reaped).
pub struct Server {
    _child: Reaped,
    pub addr: String,
}

impl Server {
    /// Serve `reply` on `listen` (port 0: any free port) in `netns` (None: the
    /// initial netns). Returns once the socket is bound.
    pub fn start(netns: Option<&Netns>, proto: &str, listen: &str, reply: &str) -> Server {
        Server::start_with(netns, proto, listen, reply, &[])
    }

    /// The same, with more `serve` options (e.g. --keep-open).
    pub fn start_with(
        netns: Option<&Netns>,
        proto: &str,
        listen: &str,
        reply: &str,
        extra: &[&str],
    ) -> Server {
        let mut cmd = Command::new(PROBE);
        cmd.args([
            "serve", "--proto", proto, "--listen", listen, "--reply", reply,
        ]);
        cmd.args(extra);
        if let Some(ns) = netns {
            cmd.args(["--netns", &ns.name]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn netnsxl-probe serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("read the server's ready line");
        let mut server = Server {
            _child: Reaped(child),
            addr: String::new(),
        };
        let Some(addr) = line.trim().strip_prefix("ready ") else {
            panic!("server on {listen} did not start: {line:?}");
        };
        server.addr = addr.to_string();
        server
    }

    pub fn port(&self) -> u16 {
        self.addr.rsplit_once(':').unwrap().1.parse().unwrap()
    }
}

/// One attempt as netnsxl-probe connect reports it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Attempt {
    pub ok: bool,
    pub reply: Option<String>,
    pub peer: Option<String>,
    pub errno: Option<i32>,
    pub error: Option<String>,
    pub netns_cookie: u64,
    pub elapsed_us: u64,
    pub start_unix_us: u64,
}

/// Now, in microseconds since the Unix epoch (what probes report).
pub fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// Where a probe client runs.
#[derive(Clone, Copy)]
pub struct From<'a> {
    pub cgroup: Option<&'a Cgroup>,
    pub netns: Option<&'a Netns>,
}

impl<'a> From<'a> {
    pub fn pod(cgroup: &'a Cgroup, netns: &'a Netns) -> From<'a> {
        From {
            cgroup: Some(cgroup),
            netns: Some(netns),
        }
    }
}

/// Connect `count` times (each on a new socket) and return what each saw.
pub fn probe(
    from: From<'_>,
    proto: &str,
    unconnected: bool,
    target: &str,
    count: u32,
) -> Vec<Attempt> {
    probe_with(from, proto, unconnected, target, count, &[])
}

/// The same, with more `connect` options (e.g. --keep-all).
pub fn probe_with(
    from: From<'_>,
    proto: &str,
    unconnected: bool,
    target: &str,
    count: u32,
    extra: &[&str],
) -> Vec<Attempt> {
    let mut cmd = Command::new(PROBE);
    cmd.args([
        "connect",
        "--proto",
        proto,
        "--count",
        &count.to_string(),
        "--timeout-ms",
        "2000",
    ]);
    if unconnected {
        cmd.arg("--unconnected");
    }
    cmd.args(extra);
    if let Some(cg) = from.cgroup {
        cmd.arg("--cgroup").arg(&cg.path);
    }
    if let Some(ns) = from.netns {
        cmd.args(["--netns", &ns.name]);
    }
    cmd.arg(target);
    let out = run_ok(&mut cmd);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("probe line {l:?}: {e}")))
        .collect()
}

/// The one reply of a single successful attempt.
pub fn reply_of(from: From<'_>, proto: &str, target: &str) -> String {
    let a = probe(from, proto, false, target, 1).remove(0);
    assert!(a.ok, "connect to {target} failed: {a:?}");
    a.reply.unwrap()
}

/// A netnsxl-probe client holding one connected socket (`connect --hold`),
/// driven line by line; killed by pid on drop.
pub struct Held {
    _child: Reaped,
    stdin: std::process::ChildStdin,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Held {
    pub fn start(from: From<'_>, proto: &str, target: &str) -> (Held, Attempt) {
        let mut cmd = Command::new(PROBE);
        cmd.args([
            "connect",
            "--proto",
            proto,
            "--hold",
            "--timeout-ms",
            "1000",
        ]);
        if let Some(cg) = from.cgroup {
            cmd.arg("--cgroup").arg(&cg.path);
        }
        if let Some(ns) = from.netns {
            cmd.args(["--netns", &ns.name]);
        }
        let mut child = cmd
            .arg(target)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn netnsxl-probe connect --hold");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut h = Held {
            _child: Reaped(child),
            stdin,
            lines,
        };
        let first = h.read();
        (h, first)
    }

    fn read(&mut self) -> Attempt {
        let l = self
            .lines
            .next()
            .expect("the held probe printed a line")
            .expect("read the held probe");
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("probe line {l:?}: {e}"))
    }

    /// `send`, `recv` or `reconnect`.
    pub fn step(&mut self, cmd: &str) -> Attempt {
        use std::io::Write;
        writeln!(self.stdin, "{cmd}").expect("write to the held probe");
        self.read()
    }
}

/// Copy an executable to run it from there. The copy is written by a `cp`
/// process, not by this one: a descriptor this process held open for
/// writing would be inherited by any child another test thread forks
/// meanwhile, and exec of the copy would fail with ETXTBSY until that child
/// execs.
pub fn copy_executable(from: &str, to: &Path) {
    let out = Command::new("cp")
        .arg(from)
        .arg(to)
        .output()
        .expect("run cp");
    assert!(
        out.status.success(),
        "cp {from} {}: {}",
        to.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// netnsxl with a pin dir of the test's own.
pub struct Cli<'a> {
    pub pins: &'a PinDir,
}

impl Cli<'_> {
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(NETNSXL);
        cmd.arg("--pin-dir").arg(&self.pins.path).args(args);
        cmd
    }

    /// Run and require success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        String::from_utf8(run_ok(&mut self.cmd(args)).stdout).unwrap()
    }

    /// Run and require success; returns (stdout, stderr).
    pub fn ok_with_stderr(&self, args: &[&str]) -> (String, String) {
        let out = run_ok(&mut self.cmd(args));
        (
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    }

    /// Run and require failure; returns (exit code, stderr).
    pub fn fails(&self, args: &[&str]) -> (i32, String) {
        let out = self.cmd(args).output().expect("run netnsxl");
        assert!(
            !out.status.success(),
            "netnsxl {args:?} should have failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8(out.stderr).unwrap(),
        )
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut full = args.to_vec();
        full.extend_from_slice(&["-o", "json"]);
        serde_json::from_str(&self.ok(&full)).expect("netnsxl printed JSON")
    }

    pub fn attach(&self, cgroup: &Cgroup, extra: &[&str]) -> String {
        let cg = cgroup.path.to_str().unwrap();
        let mut args = vec!["attach", "--cgroup", cg];
        args.extend_from_slice(extra);
        self.ok(&args)
    }
}

/// One backend a lab serves: an address on the node's loopback and the
/// name its servers answer with.
pub struct Backend {
    pub ip: &'static str,
    pub name: String,
}

/// The shared topology of the integration tests, built step by step:
///
/// - a node netns (it stands for the host: `attach --host-netns` points at
///   it, and backends live on its loopback);
/// - `pods` pod netns, pod i joined to the node by a veth in
///   198.51.100.16i/28 (node .16i+1, pod .16i+2; with `ipv6`, also
///   2001:db8:i+1::/64, node ::1, pod ::2), routed through the node;
/// - servers for each backend, protocol and port;
/// - a cgroup and a pin dir of its own, attached unless told not to.
pub struct LabBuilder {
    pods: usize,
    ipv6: bool,
    backends: Vec<Backend>,
    protos: Vec<&'static str>,
    port: u16,
    attach: bool,
    host_netns: bool,
    attach_extra: Vec<String>,
}

pub struct Lab {
    pub node: Netns,
    pub pods: Vec<Netns>,
    pub cg: Cgroup,
    pub pins: PinDir,
    pub servers: Vec<Server>,
}

impl Lab {
    pub fn build() -> LabBuilder {
        LabBuilder {
            pods: 1,
            ipv6: false,
            backends: Vec::new(),
            protos: vec!["tcp"],
            port: 8080,
            attach: true,
            host_netns: true,
            attach_extra: Vec::new(),
        }
    }

    pub fn cli(&self) -> Cli<'_> {
        Cli { pins: &self.pins }
    }

    /// A client in pod i (and in the lab's cgroup).
    pub fn pod(&self, i: usize) -> From<'_> {
        From::pod(&self.cg, &self.pods[i])
    }

    /// `svc list -o json`, as an array.
    pub fn list(&self) -> Vec<Value> {
        self.cli()
            .json(&["svc", "list"])
            .as_array()
            .expect("svc list prints an array")
            .clone()
    }

    /// What `n` TCP connects from pod 0 to `target` got back: each reply,
    /// or "errno N".
    pub fn replies(&self, target: &str, n: u32) -> BTreeSet<String> {
        probe(self.pod(0), "tcp", false, target, n)
            .into_iter()
            .map(|a| {
                a.reply
                    .unwrap_or_else(|| format!("errno {}", a.errno.unwrap_or(0)))
            })
            .collect()
    }

    /// A client in the node netns (the host, for netnsxl).
    pub fn host(&self) -> From<'_> {
        From::pod(&self.cg, &self.node)
    }

    /// Servers on the node for `addrs`, answering `backend-1`, `backend-2`...
    pub fn serve(&self, addrs: &[&str], proto: &str, port: u16) -> Vec<Server> {
        addrs
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let listen = if a.contains(':') {
                    format!("[{a}]:{port}")
                } else {
                    format!("{a}:{port}")
                };
                Server::start(
                    Some(&self.node),
                    proto,
                    &listen,
                    &format!("backend-{}", i + 1),
                )
            })
            .collect()
    }
}

/// A set of replies, to compare with `Lab::replies`.
pub fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// A Kubernetes List of `items`, written to `dir/name`; its path.
pub fn k8s_list_file(dir: &Path, name: &str, items: &[Value]) -> String {
    let f = dir.join(name);
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
    fs::write(&f, list.to_string()).expect("write the list");
    f.to_str().unwrap().to_string()
}

impl LabBuilder {
    /// Two backends on the node, be-1 at 203.0.113.1 and be-2 at
    /// 203.0.113.2, serving TCP on 8080.
    pub fn two_backends(self) -> Self {
        self.backends(
            (1..=2)
                .map(|i| Backend {
                    ip: ["203.0.113.1", "203.0.113.2"][i - 1],
                    name: format!("be-{i}"),
                })
                .collect(),
            &["tcp"],
            8080,
        )
    }

    pub fn pods(mut self, n: usize) -> Self {
        self.pods = n;
        self
    }

    pub fn ipv6(mut self) -> Self {
        self.ipv6 = true;
        self
    }

    /// Backends on the node's loopback, served with `protos` on `port`.
    pub fn backends(mut self, backends: Vec<Backend>, protos: &[&'static str], port: u16) -> Self {
        self.backends = backends;
        self.protos = protos.to_vec();
        self.port = port;
        self
    }

    /// Addresses on the node's loopback with no server (tests start their
    /// own with `Lab::serve`).
    pub fn node_addrs(mut self, ips: &[&'static str]) -> Self {
        self.backends = ips
            .iter()
            .map(|ip| Backend {
                ip,
                name: String::new(),
            })
            .collect();
        self.protos = Vec::new();
        self
    }

    /// Leave attaching to the test.
    pub fn unattached(mut self) -> Self {
        self.attach = false;
        self
    }

    /// Attach without --host-netns: the initial netns is the host.
    pub fn initial_netns_is_host(mut self) -> Self {
        self.host_netns = false;
        self
    }

    pub fn attach_args(mut self, extra: &[&str]) -> Self {
        self.attach_extra = extra.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn up(self) -> Lab {
        let node = Netns::new();
        let mut pods = Vec::new();
        for i in 0..self.pods {
            let pod = Netns::new();
            let base = 16 * i as u32;
            let gw = format!("198.51.100.{}", base + 1);
            let (node_if, pod_if) = veth(
                &node,
                &format!("{gw}/28"),
                &pod,
                &format!("198.51.100.{}/28", base + 2),
            );
            pod.ip(&["route", "add", "default", "via", &gw]);
            if self.ipv6 {
                let net = format!("2001:db8:{}", i + 1);
                node.add_addr(&format!("{net}::1/64"), &node_if);
                pod.add_addr(&format!("{net}::2/64"), &pod_if);
                pod.ip(&["-6", "route", "add", "default", "via", &format!("{net}::1")]);
            }
            pods.push(pod);
        }
        let mut servers = Vec::new();
        for b in &self.backends {
            let v6 = b.ip.contains(':');
            node.add_lo_addr(&format!("{}/{}", b.ip, if v6 { 128 } else { 32 }));
            for proto in &self.protos {
                let listen = if v6 {
                    format!("[{}]:{}", b.ip, self.port)
                } else {
                    format!("{}:{}", b.ip, self.port)
                };
                servers.push(Server::start(Some(&node), proto, &listen, &b.name));
            }
        }
        let lab = Lab {
            node,
            pods,
            cg: Cgroup::new(),
            pins: PinDir::new(),
            servers,
        };
        if self.attach {
            let host = lab.node.path();
            let mut args: Vec<&str> = Vec::new();
            if self.host_netns {
                args.extend(["--host-netns", host.to_str().unwrap()]);
            }
            args.extend(self.attach_extra.iter().map(String::as_str));
            lab.cli().attach(&lab.cg, &args);
        }
        lab
    }
}

/// A tracer started, then stopped with SIGINT; its events, one JSON line
/// each.
pub fn trace_during(lab: &Lab, extra: &[&str], f: impl FnOnce()) -> Vec<Value> {
    let mut args = vec!["trace", "-o", "json"];
    args.extend_from_slice(extra);
    let mut tracer = Reaped(
        lab.cli()
            .cmd(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let child = &mut tracer.0;
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.starts_with("tracing"), "{line}");
    f();
    // The events are in the ring once the connects returned; the tracer
    // drains it once more when it stops.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "trace exits 0 on Ctrl-C: {status:?}");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A Service in namespace shop, as the API server has it: one TCP port
/// named http with targetPort 8080.
pub fn service(name: &str, ip: &str, port: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "shop", "managedFields": [{"manager": "kubectl"}]},
        "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
                 "ports": [{"name": "http", "port": port, "protocol": "TCP", "targetPort": 8080}]}
    })
}

/// An EndpointSlice of Service `service` in namespace shop, its endpoints
/// ready on node-b, port http 8080.
pub fn slice(name: &str, service: &str, addrs: &[&str]) -> Value {
    let endpoints: Vec<Value> = addrs
        .iter()
        .map(|a| json!({"addresses": [a], "conditions": {"ready": true}, "nodeName": "node-b"}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "shop", "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints
    })
}

/// A free TCP port on loopback (nothing else binds there in between).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A command line of deploy/, expanded: argv (argv[0] is the image's and
/// the unit's /usr/local/bin/netnsxl), its environment, and the loopback
/// addresses its metrics and health listen on.
pub struct Deployed {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub metrics: std::net::SocketAddr,
    pub health: std::net::SocketAddr,
}

/// deploy/'s own command lines, pointed at the lab: the DaemonSet's
/// container command (its `$(VAR)`s expanded from its env, nodeName from
/// the downward API) and the unit's ExecStart (`${VAR}` from its
/// Environment= lines). `over` replaces env values; the default ports
/// 10264 and 10265 become free loopback ports, returned as (metrics,
/// health).
pub fn deploy_argv(which: &str, over: &[(&str, &str)]) -> Deployed {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut env: Vec<(String, String)> = Vec::new();
    let argv: Vec<String> = if which == "daemonset" {
        let text = std::fs::read_to_string(format!("{root}/deploy/daemonset.yaml")).unwrap();
        let ds = serde_yaml_ng::Deserializer::from_str(&text)
            .map(|d| <serde_json::Value as serde::Deserialize>::deserialize(d).unwrap())
            .find(|d| d["kind"] == "DaemonSet")
            .expect("a DaemonSet in deploy/daemonset.yaml");
        let c = &ds["spec"]["template"]["spec"]["containers"][0];
        for e in c["env"].as_array().unwrap() {
            let v = match (&e["value"], &e["valueFrom"]["fieldRef"]["fieldPath"]) {
                (serde_json::Value::String(v), _) => v.clone(),
                (_, f) if f == "spec.nodeName" => "node-a".to_string(),
                other => panic!("an env source the test does not know: {other:?}"),
            };
            env.push((e["name"].as_str().unwrap().to_string(), v));
        }
        c["command"]
            .as_array()
            .into_iter()
            .chain(c["args"].as_array())
            .flatten()
            .map(|a| a.as_str().unwrap().to_string())
            .collect()
    } else {
        let text = std::fs::read_to_string(format!("{root}/deploy/netnsxl.service")).unwrap();
        let mut exec = None;
        for line in text.lines() {
            if let Some(kv) = line.strip_prefix("Environment=") {
                let (k, v) = kv.split_once('=').unwrap();
                env.push((k.to_string(), v.replace("%H", "node-a")));
            } else if let Some(cmd) = line.strip_prefix("ExecStart=") {
                exec = Some(cmd.to_string());
            }
        }
        exec.expect("an ExecStart= line")
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    for (k, v) in over {
        match env.iter_mut().find(|(n, _)| n == k) {
            Some(e) => e.1 = v.to_string(),
            None => env.push((k.to_string(), v.to_string())),
        }
    }
    let metrics: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let health: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let argv: Vec<String> = argv
        .into_iter()
        .map(|mut a| {
            for (k, v) in &env {
                a = a
                    .replace(&format!("$({k})"), v)
                    .replace(&format!("${{{k}}}"), v);
            }
            match a.parse::<std::net::SocketAddr>().map(|s| s.port()) {
                Ok(10264) => metrics.to_string(),
                Ok(10265) => health.to_string(),
                _ => a,
            }
        })
        .collect();
    assert_eq!(argv[0], "/usr/local/bin/netnsxl", "{argv:?}");
    assert!(
        !argv.iter().any(|a| a.contains('$')),
        "unexpanded: {argv:?}"
    );
    Deployed {
        argv,
        env,
        metrics,
        health,
    }
}

/// Poll `f` every 100 ms until it holds or `limit` passes.
pub fn eventually(limit: std::time::Duration, mut f: impl FnMut() -> bool) -> bool {
    let t = std::time::Instant::now();
    while t.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    f()
}
