//! Operability (issue 6): exact counters, trace events of a known sequence of
//! connects, completions and man page, and the error messages people meet
//! on a node.
//!
//! The lab: a node netns plays the host (`--host-netns`), one pod hangs off
//! it on a veth, two backends listen on the node's loopback addresses.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

struct Lab {
    node: Netns,
    pod: Netns,
    cg: Cgroup,
    pins: PinDir,
    _servers: Vec<Server>,
}

impl Lab {
    fn new() -> Lab {
        let (node, pod) = (Netns::new(), Netns::new());
        veth(&node, "198.51.100.1/28", &pod, "198.51.100.2/28");
        pod.ip(&["route", "add", "default", "via", "198.51.100.1"]);
        let mut servers = Vec::new();
        for i in 1..=2 {
            node.add_lo_addr(&format!("203.0.113.{i}/32"));
            servers.push(Server::start(
                Some(&node),
                "tcp",
                &format!("203.0.113.{i}:8080"),
                &format!("be-{i}"),
            ));
        }
        let (cg, pins) = (Cgroup::new(), PinDir::new());
        let lab = Lab {
            node,
            pod,
            cg,
            pins,
            _servers: servers,
        };
        let host = lab.node.path();
        lab.cli()
            .attach(&lab.cg, &["--host-netns", host.to_str().unwrap()]);
        let cli = lab.cli();
        cli.ok(&[
            "svc",
            "add",
            "--type",
            "clusterip",
            "--frontend",
            "198.18.20.1:80",
            "--name",
            "shop/web",
            "--backend",
            "203.0.113.1:8080",
            "--backend",
            "203.0.113.2:8080",
        ]);
        cli.ok(&[
            "svc",
            "add",
            "--type",
            "clusterip",
            "--frontend",
            "198.18.20.2:80",
        ]);
        cli.ok(&[
            "svc",
            "add",
            "--type",
            "clusterip",
            "--frontend",
            "198.18.20.3:80",
            "--backend",
            "203.0.113.1:8080",
            "--session-affinity",
            "client-ip",
        ]);
        // Not a node address: pods only.
        cli.ok(&[
            "svc",
            "add",
            "--type",
            "externalip",
            "--frontend",
            "203.0.113.50:80",
            "--backend",
            "203.0.113.2:8080",
        ]);
        lab
    }

    fn cli(&self) -> Cli<'_> {
        Cli { pins: &self.pins }
    }

    fn pod(&self) -> From<'_> {
        From::pod(&self.cg, &self.pod)
    }

    fn host(&self) -> From<'_> {
        From::pod(&self.cg, &self.node)
    }

    /// The known sequence: 5 translated (each with a getpeername), 3
    /// refused, 4 with affinity (1 miss, 3 hits), 1 ExternalIP from the host.
    fn traffic(&self) {
        for a in probe(self.pod(), "tcp", false, "198.18.20.1:80", 5) {
            assert!(a.ok, "{a:?}");
        }
        for a in probe(self.pod(), "tcp", false, "198.18.20.2:80", 3) {
            assert_eq!(a.errno, Some(libc::ECONNREFUSED), "{a:?}");
        }
        for a in probe(self.pod(), "tcp", false, "198.18.20.3:80", 4) {
            assert!(a.ok, "{a:?}");
        }
        // From the host netns the ExternalIP is left alone; nothing answers
        // there (the node has no route to it), which is the point.
        let a = probe(self.host(), "tcp", false, "203.0.113.50:80", 1).remove(0);
        assert!(!a.ok, "{a:?}");
    }
}

#[test]
fn stats_count_exactly_what_happened() {
    if !require_root() {
        return;
    }
    let lab = Lab::new();
    let zero = lab.cli().json(&["stats"]);
    assert!(
        zero["reasons"]
            .as_object()
            .unwrap()
            .values()
            .all(|v| v == 0),
        "{zero}"
    );
    lab.traffic();
    let st = lab.cli().json(&["stats"]);
    let r = &st["reasons"];
    assert_eq!(r["translated"], 9, "5 + 4: {st}");
    assert_eq!(r["refused"], 3, "{st}");
    assert_eq!(r["affinity_miss"], 1, "{st}");
    assert_eq!(r["affinity_hit"], 3, "{st}");
    assert_eq!(r["affinity_replaced"], 0, "{st}");
    assert_eq!(r["host_skipped"], 1, "{st}");
    assert_eq!(r["pod_skipped"], 0, "{st}");
    assert_eq!(r["bypassed"], 0, "{st}");
    assert_eq!(
        r["reversed"], 9,
        "a getpeername per translated connect: {st}"
    );
    let svc = |fe: &str| {
        st["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["frontend"] == fe)
            .cloned()
            .unwrap_or_else(|| panic!("no counters for {fe}: {st}"))
    };
    let web = svc("198.18.20.1:80");
    assert_eq!(
        (web["translated"].as_u64(), web["refused"].as_u64()),
        (Some(5), Some(0))
    );
    assert_eq!(web["name"], "shop/web");
    let none = svc("198.18.20.2:80");
    assert_eq!(
        (none["translated"].as_u64(), none["refused"].as_u64()),
        (Some(0), Some(3))
    );
    assert_eq!(svc("198.18.20.3:80")["translated"], 4);

    // A bypassed netns is counted as such.
    lab.cli().ok(&["netns", "bypass", "add", &lab.pod.name]);
    let a = probe(lab.pod(), "tcp", false, "198.18.20.1:80", 1).remove(0);
    assert!(!a.ok, "untranslated VIP from the pod goes nowhere: {a:?}");
    lab.cli().ok(&["netns", "bypass", "del", &lab.pod.name]);
    assert_eq!(lab.cli().json(&["stats"])["reasons"]["bypassed"], 1);

    // The table names every counter.
    let table = lab.cli().ok(&["stats"]);
    for name in [
        "translated",
        "refused",
        "affinity_hit",
        "host_skipped",
        "reversed",
        "shop/web",
    ] {
        assert!(table.contains(name), "{name} in {table}");
    }
    // A deleted service's counters go with it.
    lab.cli()
        .ok(&["svc", "del", "--frontend", "198.18.20.2:80"]);
    let st = lab.cli().json(&["stats"]);
    assert!(
        !st["services"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["frontend"] == "198.18.20.2:80")
    );
}

/// A tracer started, then stopped with SIGINT; its events, one JSON line
/// each.
fn trace_during(lab: &Lab, extra: &[&str], f: impl FnOnce()) -> Vec<Value> {
    let mut args = vec!["trace", "-o", "json"];
    args.extend_from_slice(extra);
    let mut child = lab
        .cli()
        .cmd(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.starts_with("tracing"), "{line}");
    f();
    std::thread::sleep(Duration::from_millis(300));
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

fn tracers(lab: &Lab) -> u32 {
    netnsxl::state::State::open(&lab.pins.path)
        .unwrap()
        .config()
        .unwrap()
        .tracers
}

#[test]
fn trace_shows_the_decisions_of_a_known_sequence() {
    if !require_root() {
        return;
    }
    let lab = Lab::new();
    assert_eq!(tracers(&lab), 0);
    let events = trace_during(&lab, &[], || lab.traffic());
    assert_eq!(tracers(&lab), 0, "the tracer took itself off");
    let of = |verdict: &str, hook: &str| -> Vec<&Value> {
        events
            .iter()
            .filter(|e| e["verdict"] == verdict && e["hook"] == hook)
            .collect()
    };
    let translated = of("translated", "connect4");
    assert_eq!(translated.len(), 9, "{events:#?}");
    let web: Vec<&&Value> = translated
        .iter()
        .filter(|e| e["original"] == "198.18.20.1:80")
        .collect();
    assert_eq!(web.len(), 5);
    for e in &web {
        assert!(
            ["203.0.113.1:8080", "203.0.113.2:8080"].contains(&e["translated"].as_str().unwrap()),
            "{e}"
        );
        assert_eq!(e["netns"], lab.pod.name.as_str());
        assert_eq!(e["comm"], "netnsxl-probe");
        assert_eq!(e["proto"], "tcp");
        assert!(e["pid"].as_u64().unwrap() > 0);
        assert!(e["time"].as_str().unwrap().ends_with('Z'));
    }
    let refused = of("refused", "connect4");
    assert_eq!(refused.len(), 3);
    assert!(
        refused
            .iter()
            .all(|e| e["original"] == "198.18.20.2:80" && e["translated"].is_null())
    );
    let skipped = of("host_skipped", "connect4");
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0]["netns"], lab.node.name.as_str());
    let reversed = of("reversed", "getpeername4");
    assert_eq!(reversed.len(), 9);
    assert_eq!(events.len(), 9 + 3 + 1 + 9, "nothing else: {events:#?}");

    // Filters: one frontend, one netns.
    let only = trace_during(&lab, &["--frontend", "198.18.20.2:80"], || lab.traffic());
    assert_eq!(only.len(), 3, "{only:#?}");
    assert!(only.iter().all(|e| e["verdict"] == "refused"));
    let host = trace_during(&lab, &["--netns", &lab.node.name], || lab.traffic());
    assert_eq!(host.len(), 1, "{host:#?}");
    assert_eq!(host[0]["verdict"], "host_skipped");
}

#[test]
fn completions_and_man_page_are_generated() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(NETNSXL)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        for sub in ["attach", "apply", "svc", "trace", "stats"] {
            assert!(text.contains(sub), "{shell} completion lacks {sub}");
        }
    }
    let out = Command::new(NETNSXL).arg("man").output().unwrap();
    assert!(out.status.success());
    let man = String::from_utf8(out.stdout).unwrap();
    assert!(
        man.contains(".TH netnsxl 1"),
        "{}",
        &man[..200.min(man.len())]
    );
    assert!(man.contains("attach") && man.contains("apply"));
    // Every subcommand's --help ends with an example.
    for args in [
        vec!["attach"],
        vec!["svc", "add"],
        vec!["svc", "del"],
        vec!["apply"],
        vec!["trace"],
        vec!["stats"],
        vec!["netns", "bypass", "add"],
        vec!["affinity", "flush"],
    ] {
        let mut a = args.clone();
        a.push("--help");
        let out = Command::new(NETNSXL).args(&a).output().unwrap();
        let help = String::from_utf8(out.stdout).unwrap();
        let tail: Vec<&str> = help.trim_end().lines().rev().take(2).collect();
        assert_eq!(tail[1], "Example:", "{args:?}: {help}");
        assert!(
            tail[0].trim_start().starts_with("netnsxl") || tail[0].contains("| netnsxl"),
            "{args:?}: {help}"
        );
    }
}

fn fails_with(args: &[&str], want: &[&str]) -> (i32, String) {
    let out = Command::new(NETNSXL).args(args).output().unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(!out.status.success(), "{args:?} should fail");
    for w in want {
        assert!(err.contains(w), "{args:?}: want {w:?} in {err:?}");
    }
    assert_eq!(err.trim().lines().count(), 1, "{args:?}: one line: {err}");
    (out.status.code().unwrap_or(-1), err)
}

#[test]
fn errors_say_what_failed_and_the_fix() {
    if !require_root() {
        return;
    }
    let pins = PinDir::new();
    let p = pins.path.to_str().unwrap();
    let cg2 = netnsxl::sys::cgroup2_mount().unwrap();
    // /sys/fs/cgroup is a tmpfs here: not cgroup v2; the error says where it is.
    let (code, _) = fails_with(
        &["--pin-dir", p, "attach", "--cgroup", "/sys/fs/cgroup"],
        &[
            "/sys/fs/cgroup is not a cgroup v2 directory",
            &format!("cgroup2 is mounted at {}", cg2.display()),
        ],
    );
    assert_eq!(code, 1);
    assert!(!pins.path.exists(), "nothing pinned");
    fails_with(
        &["--pin-dir", p, "svc", "list"],
        &["not attached", "run netnsxl attach --cgroup PATH first"],
    );
    fails_with(
        &[
            "--pin-dir",
            "/tmp/not-bpffs/x",
            "attach",
            "--cgroup",
            cg2.to_str().unwrap(),
        ],
        &["is not on a bpf filesystem", "mount -t bpf bpf /sys/fs/bpf"],
    );
    // Usage errors: exit 2.
    let (code, _) = fails_with(
        &["svc", "add", "--type", "nosuch"],
        &["invalid value 'nosuch'"],
    );
    assert_eq!(code, 2);

    // bpffs absent and not mountable: in a private mount namespace whose
    // /sys/fs is an empty read-only tmpfs (nothing outside it changes).
    let script = format!(
        "umount -l /sys/fs/bpf 2>/dev/null; mount -t tmpfs -o ro,size=64k none /sys/fs && exec {NETNSXL} --pin-dir /sys/fs/bpf/x attach --cgroup /nonexistent"
    );
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("bpffs is not mounted at /sys/fs/bpf and could not be mounted")
            && err.contains("mount -t bpf bpf /sys/fs/bpf"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // The machine's own bpffs is untouched.
    assert!(netnsxl::sys::is_bpffs(std::path::Path::new("/sys/fs/bpf")));
    let _ = Instant::now();
}

#[test]
fn status_shows_health_features_and_warnings() {
    if !require_root() {
        return;
    }
    let lab = Lab::new();
    let st = lab.cli().json(&["status"]);
    assert_eq!(st["bpffs_mount"], netnsxl::sys::BPFFS_DEFAULT, "{st}");
    assert_eq!(st["cgroup2_mount"], netnsxl::sys::cgroup2_mount().unwrap().to_str().unwrap());
    assert_eq!(st["layout_version"], netnsxl::bpf::LAYOUT_VERSION);
    let features = st["features"].as_array().unwrap();
    assert_eq!(features.len(), 5);
    assert!(features.iter().all(|f| f["available"] == true), "kernel 6.18 has them all: {st}");
    assert!(st["warnings"].as_array().unwrap().is_empty(), "{st}");
    assert!(lab.cli().ok(&["status"]).contains("health"));

    // A tracer killed without cleaning up is reported, and reset.
    let mut child = lab.cli().cmd(&["trace"]).stderr(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap()).read_line(&mut line).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let st = lab.cli().json(&["status"]);
    assert_eq!(st["tracers"], 1);
    assert!(st["warnings"][0].as_str().unwrap().contains("trace --reset"), "{st}");
    lab.cli().ok(&["trace", "--reset"]);
    assert!(lab.cli().json(&["status"])["warnings"].as_array().unwrap().is_empty());

    // A map over 80 % full is a warning that names it.
    let small = Cgroup::new();
    let pins = PinDir::new();
    let cli = Cli { pins: &pins };
    cli.attach(&small, &["--max-services", "4", "--max-backends", "6"]);
    for i in 1..=4 {
        cli.ok(&["svc", "add", "--type", "clusterip", "--frontend", &format!("198.18.21.{i}:80"), "--backend", "203.0.113.1:8080"]);
    }
    let st = cli.json(&["status"]);
    let w: Vec<&str> = st["warnings"].as_array().unwrap().iter().map(|w| w.as_str().unwrap()).collect();
    assert!(w.iter().any(|w| w.starts_with("meta_map is 100% full")), "{w:?}");
    assert!(!w.iter().any(|w| w.starts_with("backend_map")), "4/6 is under 80%: {w:?}");
}
