//! Operability (issue 6): exact counters, trace events of a known sequence of
//! connects, completions and man page, and the error messages people meet
//! on a node.
//!
//! The lab: a node netns plays the host (`--host-netns`), one pod hangs off
//! it on a veth, two backends listen on the node's loopback addresses.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::*;
use serde_json::Value;

/// Two backends on the node, one pod, attached, with the services the
/// counters and trace tests drive.
fn lab() -> Lab {
    let lab = Lab::build().two_backends().up();

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

/// The known sequence: 5 translated (each with a getpeername), 3
/// refused, 4 with affinity (1 miss, 3 hits), 1 ExternalIP from the host.
fn traffic(lab: &Lab) {
    for a in probe(lab.pod(0), "tcp", false, "198.18.20.1:80", 5) {
        assert!(a.ok, "{a:?}");
    }
    for a in probe(lab.pod(0), "tcp", false, "198.18.20.2:80", 3) {
        assert_eq!(a.errno, Some(refused_errno()), "{a:?}");
    }
    for a in probe(lab.pod(0), "tcp", false, "198.18.20.3:80", 4) {
        assert!(a.ok, "{a:?}");
    }
    // From the host netns the ExternalIP is left alone; nothing answers
    // there (the node has no route to it), which is the point.
    let a = probe(lab.host(), "tcp", false, "203.0.113.50:80", 1).remove(0);
    assert!(!a.ok, "{a:?}");
}

#[test]
#[ignore = "needs root (make test runs it)"]
fn a_reused_service_id_starts_its_counters_at_zero() {
    require_root();
    // Room for three services: ids are 1..=3, handed out next-fit.
    let lab = Lab::build()
        .backends(
            vec![Backend {
                ip: "203.0.113.1",
                name: "be-1".into(),
            }],
            &["tcp", "udp"],
            8080,
        )
        .attach_args(&["--max-services", "3"])
        .up();
    let cli = lab.cli();
    let add = |fe: &str, proto: &str| {
        cli.ok(&[
            "svc",
            "add",
            "--type",
            "clusterip",
            "--proto",
            proto,
            "--frontend",
            fe,
            "--backend",
            "203.0.113.1:8080",
        ]);
    };
    let id_of = |fe: &str| {
        let st = cli.json(&["stats"]);
        st["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["frontend"] == fe)
            .map(|s| {
                (
                    s["svc_id"].as_u64().unwrap(),
                    s["translated"].as_u64().unwrap(),
                )
            })
            .unwrap_or_else(|| panic!("no {fe} in {st}"))
    };
    add("198.18.30.1:80", "tcp");
    for a in probe(lab.pod(0), "tcp", false, "198.18.30.1:80", 3) {
        assert!(a.ok, "{a:?}");
    }
    let (old_id, n) = id_of("198.18.30.1:80");
    assert_eq!(n, 3);
    cli.ok(&["svc", "del", "--frontend", "198.18.30.1:80"]);
    // The next two ids, then the freed one again.
    add("198.18.30.2:80", "tcp");
    add("198.18.30.3:80", "tcp");
    add("198.18.30.4:80", "tcp");
    let (new_id, n) = id_of("198.18.30.4:80");
    assert_eq!(
        new_id, old_id,
        "the freed id is reused once the others are taken"
    );
    assert_eq!(
        n, 0,
        "a new service starts at zero, whatever its id counted before"
    );
    let a = probe(lab.pod(0), "tcp", false, "198.18.30.4:80", 1).remove(0);
    assert!(a.ok, "{a:?}");
    assert_eq!(id_of("198.18.30.4:80").1, 1);
    // A fourth live service does not fit: the error names the option.
    let (_, out) = cli.fails(&[
        "svc",
        "add",
        "--type",
        "clusterip",
        "--frontend",
        "198.18.30.5:80",
        "--backend",
        "203.0.113.1:8080",
    ]);
    assert!(out.contains("--max-services"), "{out}");
}

#[test]
#[ignore = "needs root (make test runs it)"]
fn stats_count_exactly_what_happened() {
    require_root();
    let lab = lab();
    let zero = lab.cli().json(&["stats"]);
    assert!(
        zero["reasons"]
            .as_object()
            .unwrap()
            .values()
            .all(|v| v == 0),
        "{zero}"
    );
    traffic(&lab);
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
    lab.cli().ok(&["netns", "bypass", "add", &lab.pods[0].name]);
    let a = probe(lab.pod(0), "tcp", false, "198.18.20.1:80", 1).remove(0);
    assert!(!a.ok, "untranslated VIP from the pod goes nowhere: {a:?}");
    lab.cli().ok(&["netns", "bypass", "del", &lab.pods[0].name]);
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

fn tracers(lab: &Lab) -> u32 {
    netnsxl::datapath::state::State::open(&lab.pins.path)
        .unwrap()
        .config()
        .unwrap()
        .tracers
}

#[test]
#[ignore = "needs root (make test runs it)"]
fn trace_shows_the_decisions_of_a_known_sequence() {
    require_root();
    let lab = lab();
    assert_eq!(tracers(&lab), 0);
    let events = trace_during(&lab, &[], || traffic(&lab));
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
        assert_eq!(e["netns"], lab.pods[0].name.as_str());
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
    let only = trace_during(&lab, &["--frontend", "198.18.20.2:80"], || traffic(&lab));
    assert_eq!(only.len(), 3, "{only:#?}");
    assert!(only.iter().all(|e| e["verdict"] == "refused"));
    let host = trace_during(&lab, &["--netns", &lab.node.name], || traffic(&lab));
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
#[ignore = "needs root (make test runs it)"]
fn errors_say_what_failed_and_the_fix() {
    require_root();
    let pins = PinDir::new();
    let p = pins.path.to_str().unwrap();
    let cg2 = netnsxl::sys::cgroup2_mount().unwrap();
    // A directory that is not cgroup v2 (a tmpfs of the test's own, never a
    // path of the machine's, which may be the cgroup2 root): the error says
    // where cgroup2 is.
    let not_cg2 = Tmpfs::new();
    let not_cg2 = not_cg2.path().to_str().unwrap();
    let (code, _) = fails_with(
        &["--pin-dir", p, "attach", "--cgroup", not_cg2],
        &[
            &format!("{not_cg2} is not a cgroup v2 directory"),
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
}

#[test]
#[ignore = "needs root (make test runs it)"]
fn status_shows_health_features_and_warnings() {
    require_root();
    let lab = lab();
    let st = lab.cli().json(&["status"]);
    assert_eq!(st["bpffs_mount"], netnsxl::sys::BPFFS_DEFAULT, "{st}");
    assert_eq!(
        st["cgroup2_mount"],
        netnsxl::sys::cgroup2_mount().unwrap().to_str().unwrap()
    );
    assert_eq!(st["layout_version"], netnsxl::bpf::LAYOUT_VERSION);
    // Whatever the kernel: attached means every required feature is there;
    // each optional one is reported as the probe found it, and its absence
    // is not a health warning.
    let features = st["features"].as_array().unwrap();
    let probed = netnsxl::datapath::features::probe();
    assert_eq!(features.len(), probed.features.len(), "{st}");
    assert_eq!(st["kernel_release"], probed.kernel_release.as_str());
    for f in features {
        let id = f["id"].as_str().unwrap();
        let want = probed.features.iter().find(|p| p.id == id).unwrap();
        assert_eq!(f["available"], want.available, "{id}: {st}");
        if f["required"] == true {
            assert_eq!(f["available"], true, "attached without {id}: {st}");
        }
        eprintln!("feature {id}: {}", f["available"]);
    }
    let from_bpf = kernel_has(netnsxl::datapath::features::Id::InitCookieTc);
    assert_eq!(
        st["init_netns_cookie_source"],
        if from_bpf {
            "bpf_get_netns_cookie(NULL)"
        } else {
            "SO_NETNS_COOKIE"
        },
        "{st}"
    );
    assert!(st["warnings"].as_array().unwrap().is_empty(), "{st}");
    assert!(lab.cli().ok(&["status"]).contains("health"));

    // A tracer killed without cleaning up is reported, and reset; a live
    // one is neither a warning nor forgotten by the reset.
    let start_tracer = || {
        let mut t = Reaped(
            lab.cli()
                .cmd(&["trace"])
                .stderr(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let mut err = BufReader::new(t.0.stderr.take().unwrap());
        let mut line = String::new();
        err.read_line(&mut line).unwrap();
        assert!(line.contains("tracing"), "{line}");
        (t, err)
    };
    let (mut live, _live_err) = start_tracer();
    let (mut killed, _) = start_tracer();
    killed.0.kill().unwrap();
    killed.0.wait().unwrap();
    let st = lab.cli().json(&["status"]);
    assert_eq!(st["tracers"], 2);
    assert!(
        st["warnings"][0]
            .as_str()
            .unwrap()
            .contains("2 tracer(s) registered but 1 running"),
        "{st}"
    );
    assert!(
        lab.cli()
            .ok(&["trace", "--reset"])
            .contains("tracers reset to 1 (the running ones)")
    );
    let st = lab.cli().json(&["status"]);
    assert_eq!(st["tracers"], 1, "the live tracer still gets events");
    assert!(st["warnings"].as_array().unwrap().is_empty(), "{st}");
    live.0.kill().unwrap();
    live.0.wait().unwrap();
    lab.cli().ok(&["trace", "--reset"]);
    let st = lab.cli().json(&["status"]);
    assert_eq!(st["tracers"], 0);
    assert!(st["warnings"].as_array().unwrap().is_empty(), "{st}");

    // A map over 80 % full is a warning that names it.
    let small = Cgroup::new();
    let pins = PinDir::new();
    let cli = Cli { pins: &pins };
    cli.attach(&small, &["--max-services", "4", "--max-backends", "6"]);
    for i in 1..=4 {
        cli.ok(&[
            "svc",
            "add",
            "--type",
            "clusterip",
            "--frontend",
            &format!("198.18.21.{i}:80"),
            "--backend",
            "203.0.113.1:8080",
        ]);
    }
    let st = cli.json(&["status"]);
    let w: Vec<&str> = st["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert!(
        w.iter().any(|w| w.starts_with("meta_map is 100% full")),
        "{w:?}"
    );
    assert!(
        !w.iter().any(|w| w.starts_with("backend_map")),
        "4/6 is under 80%: {w:?}"
    );
}

fn k8s_service(ty: &str, node_port: Option<u16>) -> Value {
    let mut port =
        serde_json::json!({"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080});
    if let Some(np) = node_port {
        port["nodePort"] = np.into();
    }
    serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "1"},
        "spec": {"type": ty, "clusterIP": "198.18.30.1", "clusterIPs": ["198.18.30.1"], "ports": [port]}
    })
}

fn k8s_slice(endpoints: Value) -> Value {
    serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-a", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints
    })
}

fn ev(kind: &str, object: Value) -> String {
    // kubectl prints each event as a pretty-printed object.
    serde_json::to_string_pretty(&serde_json::json!({"type": kind, "object": object})).unwrap()
}

/// The recorded stream: a Service, its endpoints going ready, terminating
/// and away, the Service turning into a NodePort, then everything deleted.
fn stream() -> Vec<String> {
    let ready = |ip: &str, node: &str| serde_json::json!({"addresses": [ip], "conditions": {"ready": true, "serving": true, "terminating": false}, "nodeName": node});
    let draining = |ip: &str| serde_json::json!({"addresses": [ip], "conditions": {"ready": false, "serving": true, "terminating": true}, "nodeName": "node-a"});
    vec![
        ev("ADDED", k8s_service("ClusterIP", None)),
        ev(
            "ADDED",
            k8s_slice(serde_json::json!([ready("203.0.113.1", "node-a")])),
        ),
        ev(
            "MODIFIED",
            k8s_slice(serde_json::json!([
                draining("203.0.113.1"),
                ready("203.0.113.2", "node-b")
            ])),
        ),
        ev(
            "MODIFIED",
            k8s_slice(serde_json::json!([draining("203.0.113.1")])),
        ),
        ev("MODIFIED", k8s_service("NodePort", Some(30100))),
        ev("DELETED", k8s_slice(serde_json::json!([]))),
        ev("DELETED", k8s_service("NodePort", Some(30100))),
    ]
}

/// Services added and removed over a watch's log, however its events were
/// batched into changes.
fn added_removed(log: &str) -> (usize, usize) {
    let (mut added, mut removed) = (0, 0);
    for line in log.lines() {
        let Some((_, counts)) = line.split_once("): ").or_else(|| line.rsplit_once(": ")) else {
            continue;
        };
        for part in counts.split(", ") {
            match part.split_once(' ') {
                Some((n, "added")) => added += n.parse::<usize>().unwrap(),
                Some((n, "removed")) => removed += n.parse::<usize>().unwrap(),
                _ => {}
            }
        }
    }
    (added, removed)
}

fn replies(lab: &Lab, target: &str, n: u32) -> std::collections::BTreeSet<String> {
    probe(lab.pod(0), "tcp", false, target, n)
        .into_iter()
        .map(|a| {
            a.reply
                .unwrap_or_else(|| format!("errno {}", a.errno.unwrap_or(0)))
        })
        .collect()
}

#[test]
#[ignore = "needs root (make test runs it)"]
fn apply_watch_keeps_the_maps_in_step_with_a_kubernetes_stream() {
    require_root();
    use std::collections::BTreeSet;
    use std::io::Write;
    let lab = lab();
    let before: Vec<Value> = lab.cli().json(&["svc", "list"]).as_array().unwrap().clone();
    let mut watcher = Reaped(
        lab.cli()
            .cmd(&["apply", "-f", "-", "--watch", "--node-name", "node-a"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let child = &mut watcher.0;
    let mut stdin = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let events = stream();
    let mut step = |i: usize| -> String {
        writeln!(stdin, "{}", events[i]).unwrap();
        stdin.flush().unwrap();
        out.next().unwrap().unwrap()
    };
    let set = |v: &[&str]| {
        v.iter()
            .map(|s| s.to_string())
            .collect::<BTreeSet<String>>()
    };
    let refused = format!("errno {}", refused_errno());
    const VIP: &str = "198.18.30.1:80";

    let l = step(0);
    assert!(l.contains("ADDED Service shop/web: 1 added"), "{l}");
    assert_eq!(replies(&lab, VIP, 3), set(&[&refused]), "no endpoints yet");

    let l = step(1);
    assert!(l.contains("1 changed"), "{l}");
    assert_eq!(replies(&lab, VIP, 5), set(&["be-1"]));
    let web = |lab: &Lab| -> Value {
        lab.cli()
            .json(&["svc", "list"])
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["frontend"] == VIP)
            .cloned()
            .unwrap()
    };
    assert_eq!(
        web(&lab)["backends"][0]["local"],
        true,
        "nodeName node-a is this node"
    );

    step(2);
    assert_eq!(
        replies(&lab, VIP, 20),
        set(&["be-2"]),
        "ready beats terminating"
    );
    step(3);
    assert_eq!(
        replies(&lab, VIP, 5),
        set(&["be-1"]),
        "serving-terminating when nothing is ready"
    );
    assert_eq!(web(&lab)["backends"][0]["terminating"], true);

    let l = step(4);
    assert!(l.contains("1 added"), "the NodePort: {l}");
    assert_eq!(replies(&lab, "198.51.100.1:30100", 3), set(&["be-1"]));
    let at_step_5 = lab.cli().json(&["svc", "list"]);

    step(5);
    assert_eq!(replies(&lab, VIP, 3), set(&[&refused]), "endpoints gone");
    let l = step(6);
    assert!(l.contains("0 added, 0 changed, 2 removed"), "{l}");
    drop(stdin);
    assert!(child.wait().unwrap().success());
    let after: Vec<Value> = lab.cli().json(&["svc", "list"]).as_array().unwrap().clone();
    assert_eq!(
        after, before,
        "services the stream never wrote are left alone"
    );

    // Replaying the stream from its start onto existing state converges.
    let dir = tempdir();
    let f = dir.join("stream.json");
    std::fs::write(&f, events[..5].join("\n")).unwrap();
    let fs_ = f.to_str().unwrap();
    // Ids are allocated afresh (the services were deleted at step 7).
    let no_ids = |mut v: Value| {
        for s in v.as_array_mut().unwrap() {
            s.as_object_mut().unwrap().remove("svc_id");
            for b in s["backends"].as_array_mut().unwrap() {
                b.as_object_mut().unwrap().remove("id");
            }
        }
        v
    };
    lab.cli()
        .ok(&["apply", "-f", fs_, "--watch", "--node-name", "node-a"]);
    let replayed = lab.cli().json(&["svc", "list"]);
    assert_eq!(no_ids(replayed.clone()), no_ids(at_step_5));
    lab.cli()
        .ok(&["apply", "-f", fs_, "--watch", "--node-name", "node-a"]);
    // (Backend ids change on the way: the replay passes through the state
    // without endpoints, as the stream did.)
    assert_eq!(
        no_ids(lab.cli().json(&["svc", "list"])),
        no_ids(replayed),
        "a replay onto its own result"
    );
    // A bad event is reported, changes nothing, and the stream goes on.
    std::fs::write(&f, format!("{}\n{}", ev("ADDED", serde_json::json!({"kind": "Service", "apiVersion": "v1", "metadata": {"name": "bad"}})), events[6])).unwrap();
    let out = lab
        .cli()
        .cmd(&["apply", "-f", fs_, "--watch", "--node-name", "node-a"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("event 1")
            && err.contains("spec is missing")
            && err.contains("nothing changed"),
        "{err}"
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("event 2 DELETED Service shop/web"));
}

#[test]
#[ignore = "needs root (make test runs it)"]
fn apply_shows_progress_only_on_a_terminal() {
    require_root();
    let cg = Cgroup::new();
    let pins = PinDir::new();
    let cli = Cli { pins: &pins };
    cli.attach(&cg, &[]);
    let dir = tempdir();
    let f = dir.join("many.json");
    let items: Vec<String> = (1..=1500)
        .map(|i| format!("{{\"type\": \"clusterip\", \"frontend\": \"198.18.{}.{}:80\", \"backends\": [\"203.0.113.1:8080\"]}}", 40 + i / 250, i % 250 + 1))
        .collect();
    std::fs::write(&f, format!("[{}]", items.join(","))).unwrap();
    let apply = |extra: &str| -> String {
        // script(1) gives the command a terminal.
        let cmd = format!(
            "{NETNSXL} --pin-dir {} apply --prune {extra} -f {}",
            pins.path.display(),
            f.display()
        );
        let out = Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let tty = apply("");
    assert!(
        tty.contains("planning") && tty.contains("services ("),
        "progress on a terminal"
    );
    cli.ok(&["apply", "-f", f.to_str().unwrap(), "--dry-run"]);
    let quiet = apply("--quiet");
    assert!(!quiet.contains("planning"), "--quiet: {quiet}");
    let out = cli
        .cmd(&["apply", "--prune", "-f", f.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.stderr.is_empty(),
        "no terminal, no progress: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The other Service shapes kubectl prints, through the watch: a
/// LoadBalancer with an ingress IP, external IPs, a NodePort, session
/// affinity and a UDP port; then its status changing and its deletion.
#[test]
#[ignore = "needs root (make test runs it)"]
fn apply_watch_handles_loadbalancer_externalip_and_udp_shapes() {
    require_root();
    let lab = lab();
    let svc = |ingress: &str| {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "gw", "namespace": "edge"},
            "spec": {
                "type": "LoadBalancer", "clusterIP": "198.18.31.1", "clusterIPs": ["198.18.31.1"],
                "externalIPs": ["198.18.31.2"], "externalTrafficPolicy": "Local",
                "sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 30}},
                "ports": [
                    {"name": "https", "port": 443, "protocol": "TCP", "targetPort": 8080, "nodePort": 30443},
                    {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 8080, "nodePort": 30053}
                ]
            },
            "status": {"loadBalancer": {"ingress": [{"ip": ingress}]}}
        })
    };
    let slice = serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "gw-1", "namespace": "edge", "labels": {"kubernetes.io/service-name": "gw"}},
        "addressType": "IPv4",
        "ports": [{"name": "https", "port": 8080, "protocol": "TCP"}, {"name": "dns", "port": 8080, "protocol": "UDP"}],
        "endpoints": [{"addresses": ["203.0.113.2"], "conditions": {"ready": true}, "nodeName": "node-a"}]
    });
    let dir = tempdir();
    let f = dir.join("stream.json");
    let run = |events: &[String]| {
        std::fs::write(&f, events.join("\n")).unwrap();
        lab.cli().ok(&[
            "apply",
            "-f",
            f.to_str().unwrap(),
            "--watch",
            "--node-name",
            "node-a",
        ])
    };
    let out = run(&[ev("ADDED", svc("198.18.31.3")), ev("ADDED", slice.clone())]);
    assert_eq!(
        added_removed(&out),
        (8, 0),
        "2 ports x (cluster IP, node port, external IP, ingress): {out}"
    );
    let list = lab.cli().json(&["svc", "list"]);
    let gw: Vec<&Value> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["name"].as_str().unwrap_or("").starts_with("edge/gw"))
        .collect();
    let shapes: std::collections::BTreeSet<(String, String, String)> = gw
        .iter()
        .map(|s| {
            (
                s["type"].as_str().unwrap().into(),
                s["frontend"].as_str().unwrap().into(),
                s["proto"].as_str().unwrap().into(),
            )
        })
        .collect();
    let want: std::collections::BTreeSet<(String, String, String)> = [
        ("clusterip", "198.18.31.1:443", "tcp"),
        ("nodeport", ":30443", "tcp"),
        ("externalip", "198.18.31.2:443", "tcp"),
        ("loadbalancer", "198.18.31.3:443", "tcp"),
        ("clusterip", "198.18.31.1:53", "udp"),
        ("nodeport", ":30053", "udp"),
        ("externalip", "198.18.31.2:53", "udp"),
        ("loadbalancer", "198.18.31.3:53", "udp"),
    ]
    .iter()
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    .collect();
    assert_eq!(shapes, want);
    assert!(
        gw.iter()
            .all(|s| s["affinity_timeout"] == 30 && s["external_traffic_policy"] == "local")
    );
    assert!(
        gw.iter()
            .all(|s| s["backends"][0]["addr"] == "203.0.113.2:8080")
    );
    // Real traffic through the ingress IP and the external IP from the pod.
    assert_eq!(
        replies(&lab, "198.18.31.3:443", 3),
        ["be-2".to_string()].into()
    );
    assert_eq!(
        replies(&lab, "198.18.31.2:443", 3),
        ["be-2".to_string()].into()
    );

    // The load balancer moves: its old ingress frontends go, new ones come
    // (a new watch knows what the Service had from the maps).
    let out = run(&[
        ev("ADDED", svc("198.18.31.3")),
        ev("ADDED", slice.clone()),
        ev("MODIFIED", svc("198.18.31.4")),
    ]);
    assert_eq!(added_removed(&out), (2, 2), "{out}");
    assert_eq!(
        replies(&lab, "198.18.31.4:443", 2),
        ["be-2".to_string()].into()
    );
    let gw_count = || {
        lab.cli()
            .json(&["svc", "list"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["name"].as_str().unwrap_or("").starts_with("edge/gw"))
            .count()
    };
    assert_eq!(gw_count(), 8);
    // The services were written from Kubernetes objects.
    assert!(
        lab.cli()
            .json(&["svc", "list"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["name"].as_str().unwrap_or("").starts_with("edge/gw"))
            .all(|s| s["origin"] == "kubernetes")
    );
    let out = run(&[
        ev("ADDED", svc("198.18.31.4")),
        ev("ADDED", slice.clone()),
        ev("DELETED", svc("198.18.31.4")),
    ]);
    assert_eq!(added_removed(&out), (0, 8), "{out}");
    assert_eq!(gw_count(), 0);

    // The end of a stream, or silence, deletes nothing: a watch deletes
    // only what its stream deletes.
    run(&[ev("ADDED", svc("198.18.31.4")), ev("ADDED", slice.clone())]);
    assert_eq!(gw_count(), 8);
    let out = lab
        .cli()
        .cmd(&["apply", "-f", "-", "--watch", "--node-name", "node-a"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(gw_count(), 8);
    // A Service deleted while no watch ran goes by the exact source the unit
    // runs before its watch: apply --prune of the full list, which prunes
    // only services written from Kubernetes objects.
    let other = serde_json::json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "other", "namespace": "edge"},
        "spec": {"clusterIP": "198.18.31.9", "ports": [{"port": 80}]}});
    let list = k8s_list_file(&dir, "list.json", &[other]);
    let out = lab
        .cli()
        .ok(&["apply", "--prune", "-f", &list, "--node-name", "node-a"]);
    assert!(out.contains("1 added, 0 changed, 8 removed"), "{out}");
    assert_eq!(gw_count(), 0);
    lab.cli()
        .ok(&["svc", "del", "--frontend", "198.18.31.9:80"]);
    assert_eq!(
        lab.cli().json(&["svc", "list"]).as_array().unwrap().len(),
        4,
        "the lab's own services stay"
    );
}

/// A reader that stops early ends netnsxl quietly (SIGPIPE), never with a
/// panic; names with control characters are refused, and a huge one is
/// not echoed whole.
#[test]
#[ignore = "needs root (make test runs it)"]
fn output_is_safe_for_pipes_and_terminals() {
    require_root();
    let lab = lab();
    let pin = lab.pins.path.to_str().unwrap();
    for _ in 0..5 {
        let out = Command::new("bash")
            .args([
                "-c",
                &format!("{NETNSXL} --pin-dir {pin} svc list | true; echo ${{PIPESTATUS[0]}}"),
            ])
            .output()
            .unwrap();
        let code = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(code == "0" || code == "141", "exit {code}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let huge = "x".repeat(100_000);
    for name in ["evil\u{1b}]0;owned\u{7}", huge.as_str()] {
        let (code, err) = lab.cli().fails(&[
            "svc",
            "add",
            "--type",
            "clusterip",
            "--frontend",
            "198.18.20.9:80",
            "--name",
            name,
        ]);
        assert_eq!(code, 1);
        assert!(err.len() < 400, "{} bytes of error", err.len());
        assert!(!err.contains('\u{1b}'), "{err:?}");
    }
}
