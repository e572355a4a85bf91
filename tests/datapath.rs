//! The datapath with real sockets in real network namespaces.
//!
//! From the initial netns (which has a route off the machine) these tests
//! connect only to 127.0.0.0/8. Everything else runs between namespaces the
//! test created, on documentation addresses.

mod common;

use std::collections::HashSet;
use std::process::Command;

use common::*;

const BACKENDS: [&str; 2] = ["198.51.100.200", "198.51.100.201"];

/// Pods routed through a node netns that has the backend addresses on its
/// loopback (the common lab, unattached: these tests attach themselves,
/// with the initial netns as the host).
fn lab(npods: usize) -> Lab {
    Lab::build()
        .pods(npods)
        .node_addrs(&BACKENDS)
        .unattached()
        .up()
}

#[test]
#[ignore = "needs root (make test runs it)"]
fn clusterip_tcp_from_pod_and_from_host_reaches_a_backend() {
    require_root();
    let (cg, pins) = (Cgroup::new(), PinDir::new());
    let cli = Cli { pins: &pins };
    cli.attach(&cg, &[]);
    let lab = lab(1);
    let _servers = lab.serve(&BACKENDS, "tcp", 8080);

    cli.ok(&[
        "svc",
        "add",
        "--type",
        "clusterip",
        "--frontend",
        "203.0.113.80:80",
        "--backend",
        "198.51.100.200:8080",
        "--name",
        "default/web",
    ]);
    let pod = From::pod(&cg, &lab.pods[0]);
    let a = probe(pod, "tcp", false, "203.0.113.80:80", 1).remove(0);
    assert!(a.ok, "{a:?}");
    assert_eq!(a.reply.as_deref(), Some("backend-1"));
    assert_eq!(
        a.peer.as_deref(),
        Some("203.0.113.80:80"),
        "getpeername returns the frontend"
    );

    // The host netns (the initial one) reaches only loopback here: a
    // NodePort answers on 127.0.0.0/8 from it, translated to a loopback
    // backend.
    let local = Server::start(None, "tcp", "127.0.0.1:0", "host-backend");
    let backend = format!("127.0.0.1:{}", local.port());
    cli.ok(&[
        "svc",
        "add",
        "--type",
        "nodeport",
        "--frontend",
        ":30080",
        "--backend",
        &backend,
    ]);
    let host = From {
        cgroup: Some(&cg),
        netns: None,
    };
    assert_eq!(reply_of(host, "tcp", "127.77.0.1:30080"), "host-backend");
}

#[test]
#[ignore = "needs root (make test runs it)"]
fn sockets_outside_the_cgroup_are_not_translated() {
    require_root();
    let (cg, pins) = (Cgroup::new(), PinDir::new());
    let cli = Cli { pins: &pins };
    cli.attach(&cg, &[]);
    let lab = lab(1);
    let _servers = lab.serve(&BACKENDS, "tcp", 8080);
    // The VIP also exists for real inside the pod: an untranslated connect
    // reaches this server instead of the backend.
    let pod_ns = &lab.pods[0];
    pod_ns.add_lo_addr("203.0.113.80/32");
    let _decoy = Server::start(Some(pod_ns), "tcp", "203.0.113.80:80", "untranslated");
    cli.ok(&[
        "svc",
        "add",
        "--type",
        "clusterip",
        "--frontend",
        "203.0.113.80:80",
        "--backend",
        "198.51.100.200:8080",
    ]);

    assert_eq!(
        reply_of(From::pod(&cg, pod_ns), "tcp", "203.0.113.80:80"),
        "backend-1"
    );
    let outside = From {
        cgroup: None,
        netns: Some(pod_ns),
    };
    assert_eq!(reply_of(outside, "tcp", "203.0.113.80:80"), "untranslated");
}

#[test]
#[ignore = "needs root (make test runs it)"]
fn externalip_is_left_alone_from_the_host_netns_unless_it_is_a_node_address() {
    require_root();
    // node: the host netns (--host-netns); pod: a client; ext: the real
    // external host that owns 203.0.113.50.
    let (node, pod, ext) = (Netns::new(), Netns::new(), Netns::new());
    veth(&node, "198.51.100.1/28", &pod, "198.51.100.2/28");
    pod.ip(&["route", "add", "default", "via", "198.51.100.1"]);
    veth(&node, "198.51.100.17/28", &ext, "198.51.100.18/28");
    ext.add_lo_addr("203.0.113.50/32");
    ext.ip(&["route", "add", "default", "via", "198.51.100.17"]);
    node.route("203.0.113.50/32", "198.51.100.18");
    let _backend = Server::start(Some(&node), "tcp", "198.51.100.1:8080", "backend");
    let _external = Server::start(Some(&ext), "tcp", "203.0.113.50:80", "external-host");

    let (cg, pins) = (Cgroup::new(), PinDir::new());
    let cli = Cli { pins: &pins };
    let host_ns = node.path();
    cli.attach(
        &cg,
        &[
            "--host-netns",
            host_ns.to_str().unwrap(),
            "--node-ip",
            "203.0.113.60",
        ],
    );
    let status = cli.json(&["status"]);
    let node_cookie = netnsxl::sys::netns_cookie_of(&host_ns).unwrap();
    assert_eq!(status["host_netns_cookie"], node_cookie);
    let addrs = status["node_addrs"].as_array().unwrap();
    assert!(
        addrs.iter().any(|a| a == "198.51.100.1"),
        "node addresses read from the host netns: {addrs:?}"
    );
    assert!(
        addrs.iter().any(|a| a == "203.0.113.60"),
        "--node-ip recorded: {addrs:?}"
    );

    cli.ok(&[
        "svc",
        "add",
        "--type",
        "externalip",
        "--frontend",
        "203.0.113.50:80",
        "--backend",
        "198.51.100.1:8080",
    ]);
    assert_eq!(
        reply_of(From::pod(&cg, &pod), "tcp", "203.0.113.50:80"),
        "backend",
        "pods are translated"
    );
    assert_eq!(
        reply_of(From::pod(&cg, &node), "tcp", "203.0.113.50:80"),
        "external-host",
        "the host netns reaches the real non-local ExternalIP"
    );

    // An ExternalIP that is a node address is translated from the host too.
    cli.ok(&[
        "svc",
        "add",
        "--type",
        "externalip",
        "--frontend",
        "203.0.113.60:80",
        "--backend",
        "198.51.100.1:8080",
    ]);
    assert_eq!(
        reply_of(From::pod(&cg, &node), "tcp", "203.0.113.60:80"),
        "backend"
    );
    assert_eq!(
        reply_of(From::pod(&cg, &pod), "tcp", "203.0.113.60:80"),
        "backend"
    );
}

#[test]
#[ignore = "needs root (make test runs it)"]
fn affinity_sticks_per_netns_cookie_and_dump_shows_it() {
    require_root();
    let (cg, pins) = (Cgroup::new(), PinDir::new());
    let cli = Cli { pins: &pins };
    cli.attach(&cg, &[]);
    let lab = lab(2);
    let _servers = lab.serve(&BACKENDS, "tcp", 8080);
    let backends = [
        "--backend",
        "198.51.100.200:8080",
        "--backend",
        "198.51.100.201:8080",
    ];

    // Without affinity both backends are used (fails with odds 2^-39).
    let mut args = vec![
        "svc",
        "add",
        "--type",
        "clusterip",
        "--frontend",
        "203.0.113.81:80",
    ];
    args.extend_from_slice(&backends);
    cli.ok(&args);
    let seen: HashSet<String> = probe(
        From::pod(&cg, &lab.pods[0]),
        "tcp",
        false,
        "203.0.113.81:80",
        40,
    )
    .into_iter()
    .map(|a| a.reply.expect("reply"))
    .collect();
    assert_eq!(seen.len(), 2, "random choice over two backends: {seen:?}");

    let mut args = vec![
        "svc",
        "add",
        "--type",
        "clusterip",
        "--frontend",
        "203.0.113.82:80",
        "--name",
        "default/sticky",
        "--session-affinity",
        "client-ip",
        "--affinity-timeout",
        "600",
    ];
    args.extend_from_slice(&backends);
    cli.ok(&args);
    let mut cookies = Vec::new();
    for pod in &lab.pods {
        let attempts = probe(From::pod(&cg, pod), "tcp", false, "203.0.113.82:80", 20);
        let replies: HashSet<_> = attempts
            .iter()
            .map(|a| a.reply.clone().expect("reply"))
            .collect();
        assert_eq!(
            replies.len(),
            1,
            "one pod sticks to one backend: {replies:?}"
        );
        cookies.push((
            attempts[0].netns_cookie,
            pod.name.clone(),
            replies.into_iter().next().unwrap(),
        ));
    }
    assert_ne!(cookies[0].0, cookies[1].0);

    let dump = cli.json(&["affinity", "dump"]);
    let entries = dump.as_array().unwrap();
    assert_eq!(entries.len(), 2, "{dump}");
    for (cookie, name, reply) in &cookies {
        let e = entries
            .iter()
            .find(|e| e["netns_cookie"] == *cookie)
            .unwrap_or_else(|| panic!("no entry for cookie {cookie}: {dump}"));
        assert_eq!(e["netns"], name.as_str());
        assert_eq!(e["frontend"], "203.0.113.82:80");
        assert_eq!(e["proto"], "tcp");
        let idx: usize = reply.strip_prefix("backend-").unwrap().parse().unwrap();
        assert_eq!(e["backend"], format!("{}:8080", BACKENDS[idx - 1]));
        let left = e["expires_in_s"].as_u64().unwrap();
        assert!(
            left > 590 && left <= 600,
            "sliding timeout of 600 s: {left}"
        );
    }

    // The backend a pod sticks to leaves: the entry is replaced, not used.
    let (cookie0, _, reply0) = &cookies[0];
    let keep = if reply0 == "backend-1" {
        BACKENDS[1]
    } else {
        BACKENDS[0]
    };
    cli.ok(&[
        "svc",
        "add",
        "--type",
        "clusterip",
        "--frontend",
        "203.0.113.82:80",
        "--replace",
        "--session-affinity",
        "client-ip",
        "--affinity-timeout",
        "600",
        "--backend",
        &format!("{keep}:8080"),
    ]);
    let a = probe(
        From::pod(&cg, &lab.pods[0]),
        "tcp",
        false,
        "203.0.113.82:80",
        3,
    );
    assert!(
        a.iter()
            .all(|a| a.ok && a.reply.as_deref() != Some(reply0.as_str())),
        "{a:?}"
    );
    let dump = cli.json(&["affinity", "dump"]);
    let e = dump
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["netns_cookie"] == *cookie0)
        .expect("entry");
    assert_eq!(e["backend"], format!("{keep}:8080"));
}

/// The rev_tcp_map row of `status`: (used, capacity).
fn tcp_slots(cli: &Cli) -> (u64, u64) {
    let status = cli.json(&["status"]);
    let m = status["maps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "rev_tcp_map")
        .unwrap_or_else(|| panic!("no rev_tcp_map in {status}"))
        .clone();
    (m["used"].as_u64().unwrap(), m["capacity"].as_u64().unwrap())
}

#[test]
#[ignore = "needs root (make test runs it)"]
fn tcp_getpeername_shows_the_frontend_to_translated_sockets_only_and_for_as_long_as_they_live() {
    require_root();
    let (cg, pins) = (Cgroup::new(), PinDir::new());
    let cli = Cli { pins: &pins };
    // 16 slots: the 300 later connects below go round the table many times.
    cli.attach(&cg, &["--max-tcp-sockets", "16"]);
    assert_eq!(tcp_slots(&cli), (0, 16));
    let lab = lab(1);
    // backend-1 keeps connections open (for the held sockets), backend-2
    // answers once and closes (for the many short connects).
    let _held_server = Server::start_with(
        Some(&lab.node),
        "tcp",
        "198.51.100.200:8080",
        "backend-1",
        &["--keep-open"],
    );
    let _short_server = Server::start(Some(&lab.node), "tcp", "198.51.100.201:8080", "backend-2");
    for (vip, be) in [
        ("203.0.113.80:80", "198.51.100.200:8080"),
        ("203.0.113.81:80", "198.51.100.201:8080"),
    ] {
        cli.ok(&[
            "svc",
            "add",
            "--type",
            "clusterip",
            "--frontend",
            vip,
            "--backend",
            be,
        ]);
    }
    let pod = From::pod(&cg, &lab.pods[0]);

    // One translated socket and one straight to the backend, held open.
    let (mut via_vip, first) = Held::start(pod, "tcp", "203.0.113.80:80");
    assert!(first.ok, "{first:?}");
    assert_eq!(first.peer.as_deref(), Some("203.0.113.80:80"));
    let (mut direct, first) = Held::start(pod, "tcp", "198.51.100.200:8080");
    assert!(first.ok, "{first:?}");
    assert_eq!(
        first.peer.as_deref(),
        Some("198.51.100.200:8080"),
        "a socket connected straight to a backend never sees a frontend"
    );
    assert_eq!(tcp_slots(&cli).0, 1, "one translated socket is open");

    // Many later translated connects, each closed: they take and free
    // slots, never the held socket's.
    let later = probe(pod, "tcp", false, "203.0.113.81:80", 300);
    assert!(later.iter().all(|a| a.ok), "{later:?}");
    assert!(
        later
            .iter()
            .all(|a| a.peer.as_deref() == Some("203.0.113.81:80")),
        "{later:?}"
    );
    let a = via_vip.step("send");
    assert!(a.ok, "{a:?}");
    assert_eq!(
        a.peer.as_deref(),
        Some("203.0.113.80:80"),
        "the socket held across 300 later connects still shows its frontend"
    );
    let a = direct.step("send");
    assert_eq!(a.peer.as_deref(), Some("198.51.100.200:8080"));
    let stats = cli.json(&["stats"]);
    assert_eq!(stats["reasons"]["tcp_unrecorded"], 0, "{stats}");
    assert_eq!(stats["reasons"]["translated"], 301, "{stats}");
    let per_svc: Vec<(String, u64)> = stats["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["frontend"].as_str().unwrap().to_string(),
                s["translated"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        per_svc,
        [
            ("203.0.113.80:80".to_string(), 1),
            ("203.0.113.81:80".to_string(), 300)
        ],
        "{stats}"
    );

    // Closed sockets free their slots (sock_release).
    drop(via_vip);
    drop(direct);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while tcp_slots(&cli).0 != 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(
        tcp_slots(&cli).0,
        0,
        "every slot is free once the sockets closed"
    );
}

#[test]
#[ignore = "needs root (make test runs it)"]
fn tcp_sockets_beyond_the_slot_table_are_counted_and_show_their_backend() {
    require_root();
    let (cg, pins) = (Cgroup::new(), PinDir::new());
    let cli = Cli { pins: &pins };
    cli.attach(&cg, &["--max-tcp-sockets", "16"]);
    let lab = lab(1);
    let _servers = lab.serve(&BACKENDS[..1], "tcp", 8080);
    cli.ok(&[
        "svc",
        "add",
        "--type",
        "clusterip",
        "--frontend",
        "203.0.113.80:80",
        "--backend",
        "198.51.100.200:8080",
    ]);
    // 40 translated sockets open at once, in a table of 16.
    let pod = From::pod(&cg, &lab.pods[0]);
    let open = probe_with(pod, "tcp", false, "203.0.113.80:80", 40, &["--keep-all"]);
    assert!(open.iter().all(|a| a.ok), "{open:?}");
    let shown = open
        .iter()
        .filter(|a| a.peer.as_deref() == Some("203.0.113.80:80"))
        .count() as u64;
    let unrecorded = open
        .iter()
        .filter(|a| a.peer.as_deref() == Some("198.51.100.200:8080"))
        .count() as u64;
    assert_eq!(shown + unrecorded, 40, "{open:?}");
    assert!(
        shown <= 16 && unrecorded >= 24,
        "16 slots hold at most 16 sockets: {shown} shown, {unrecorded} not"
    );
    let stats = cli.json(&["stats"]);
    assert_eq!(
        stats["reasons"]["tcp_unrecorded"], unrecorded,
        "every socket that shows its backend is counted: {stats}"
    );
    assert_eq!(stats["reasons"]["translated"], 40, "{stats}");
    // The probe exited: every slot it held is free again.
    assert_eq!(tcp_slots(&cli).0, 0);
}

#[test]
#[ignore = "needs root (make test runs it)"]
fn udp_replies_and_peer_show_the_frontend() {
    require_root();
    let (cg, pins) = (Cgroup::new(), PinDir::new());
    let cli = Cli { pins: &pins };
    cli.attach(&cg, &[]);
    let lab = lab(1);
    let _servers = lab.serve(&BACKENDS, "udp", 5353);
    cli.ok(&[
        "svc",
        "add",
        "--type",
        "clusterip",
        "--proto",
        "udp",
        "--frontend",
        "203.0.113.53:53",
        "--backend",
        "198.51.100.200:5353",
    ]);
    let pod = From::pod(&cg, &lab.pods[0]);

    let a = probe(pod, "udp", true, "203.0.113.53:53", 1).remove(0);
    assert!(a.ok, "{a:?}");
    assert_eq!(a.reply.as_deref(), Some("backend-1"));
    assert_eq!(
        a.peer.as_deref(),
        Some("203.0.113.53:53"),
        "recvfrom reports the VIP as source"
    );

    let a = probe(pod, "udp", false, "203.0.113.53:53", 1).remove(0);
    assert!(a.ok, "{a:?}");
    assert_eq!(a.reply.as_deref(), Some("backend-1"));
    assert_eq!(
        a.peer.as_deref(),
        Some("203.0.113.53:53"),
        "getpeername on connected UDP"
    );

    // A TCP frontend on the same address and port is another service.
    let a = probe(pod, "tcp", false, "203.0.113.53:53", 1).remove(0);
    assert!(!a.ok, "no TCP service there: {a:?}");

    // Reverse-translation state went with the sockets (socket storage).
    let status = cli.json(&["status"]);
    let revnat = status["maps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "revnat_map")
        .unwrap();
    assert_eq!(revnat["used"], 0, "{status}");
}

#[test]
#[ignore = "needs root (make test runs it)"]
fn init_netns_cookie_from_bpf_matches_so_netns_cookie() {
    require_root();
    let (cg, pins) = (Cgroup::new(), PinDir::new());
    let cli = Cli { pins: &pins };
    cli.attach(&cg, &[]);
    // This test process runs in the initial netns.
    let mine = netnsxl::sys::current_netns_cookie().unwrap();
    let status = cli.json(&["status"]);
    assert_eq!(
        status["init_netns_cookie"], mine,
        "bpf_get_netns_cookie(NULL) == SO_NETNS_COOKIE"
    );
    assert_eq!(
        status["host_netns_cookie"], mine,
        "the host netns defaults to the initial one"
    );
    let progs = status["programs"].as_array().unwrap();
    for name in [
        "nxl_connect4",
        "nxl_sendmsg4",
        "nxl_recvmsg4",
        "nxl_getpeername4",
    ] {
        let p = progs.iter().find(|p| p["name"] == name).unwrap();
        assert_eq!(p["attached_to_cgroup"], true, "{name}: {status}");
    }
    // Attaching again to the same cgroup is fine; to another is refused.
    assert!(cli.attach(&cg, &[]).contains("already attached"));
    let other = Cgroup::new();
    let (_, err) = cli.fails(&["attach", "--cgroup", other.path.to_str().unwrap()]);
    assert!(err.contains("detach first"), "{err}");
}

/// The cgroup's attached programs, as bpftool lists them (JSON array).
fn cgroup_programs(cg: &Cgroup) -> Vec<serde_json::Value> {
    let out = Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(&cg.path)
        .output()
        .expect("run bpftool (make deps installs it)");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    if text.trim().is_empty() {
        return Vec::new();
    }
    serde_json::from_str(&text).expect("bpftool printed JSON")
}

/// Group "floor" of tests/groups.txt: it runs inside every kernel of the
/// matrix, also those below netnsxl's floor (Linux 5.14). Below it, attach
/// refuses with one line that names what the kernel lacks and the kernel
/// netnsxl needs, and leaves nothing: no pin dir, no program on the
/// cgroup. At or above it, attach works and detach leaves nothing either.
/// Prints "floor: refused: LINE" for the kernel runner, which requires it
/// of a kernel below the floor.
#[test]
#[ignore = "needs root (make test runs it)"]
fn attach_works_or_refuses_in_one_line_and_leaves_nothing() {
    require_root();
    let (cg, pins) = (Cgroup::new(), PinDir::new());
    let cli = Cli { pins: &pins };
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let release = release.trim();
    let mut v = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let version = (v.next().unwrap_or(0), v.next().unwrap_or(0));
    let out = cli
        .cmd(&["attach", "--cgroup", cg.path.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    if version < (5, 14) {
        assert!(!out.status.success(), "attach worked on {release}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "one line: {err}");
        assert!(
            lines[0].contains(&format!("this kernel ({release}) lacks"))
                && lines[0].contains("netnsxl needs Linux 5.14 or newer"),
            "{err}"
        );
        println!("floor: refused: {}", lines[0]);
    } else {
        assert!(out.status.success(), "attach on {release}: {err}");
        assert!(!cgroup_programs(&cg).is_empty(), "attach attached nothing");
        cli.ok(&["detach"]);
    }
    assert!(!pins.path.exists(), "{} is left", pins.path.display());
    assert_eq!(cgroup_programs(&cg), Vec::<serde_json::Value>::new());
}

/// The datapath's load cost stays far from the verifier's limit of
/// 1,000,000 processed instructions per program: every program of the
/// object, on every kernel of the matrix. A scan inlined into the sendmsg
/// hooks once cost 200,000 each (0.3 s of an attach, 15 times that under
/// emulation); 100,000 is a tenth of the limit.
#[test]
#[ignore = "needs root (make test runs it)"]
fn every_program_verifies_well_below_the_limit() {
    require_root();
    let (cg, pins) = (Cgroup::new(), PinDir::new());
    let cli = Cli { pins: &pins };
    let out = cli
        .cmd(&["attach", "--cgroup", cg.path.to_str().unwrap()])
        .env("NETNSXL_VERIFIER_STATS", "1")
        .output()
        .unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{err}");
    let stats: Vec<(String, u64)> = err
        .lines()
        .filter_map(|l| {
            let (prog, rest) = l.strip_prefix("verifier: ")?.split_once(": ")?;
            let insns = rest.split(' ').next()?.parse().ok()?;
            Some((prog.to_string(), insns))
        })
        .collect();
    eprintln!("{err}");
    for hook in ["connect", "sendmsg", "recvmsg", "getpeername"] {
        for family in ["4", "6"] {
            let name = format!("nxl_{hook}{family}");
            assert!(
                stats.iter().any(|(p, _)| *p == name),
                "no statistics for {name}: {err}"
            );
        }
    }
    for (prog, insns) in &stats {
        assert!(*insns > 0, "{prog}: {err}");
        assert!(
            *insns < 100_000,
            "{prog} took {insns} instructions to verify: {err}"
        );
    }
}

#[test]
#[ignore = "needs root (make test runs it)"]
fn detach_leaves_no_pin_and_no_program() {
    require_root();
    let (cg, pins) = (Cgroup::new(), PinDir::new());
    let cli = Cli { pins: &pins };
    cli.attach(&cg, &[]);
    let attached = cgroup_programs(&cg);
    assert!(
        attached
            .iter()
            .any(|p| p["name"].as_str().is_some_and(|n| n.contains("connect4"))),
        "attached: {attached:?}"
    );
    cli.ok(&["detach"]);
    assert!(!pins.path.exists(), "pin dir removed");
    assert_eq!(
        cgroup_programs(&cg),
        Vec::<serde_json::Value>::new(),
        "no program left on the cgroup"
    );
}

#[test]
#[ignore = "needs root (make test runs it)"]
fn bad_input_gets_one_line_errors_and_changes_nothing() {
    require_root();
    let (cg, pins) = (Cgroup::new(), PinDir::new());
    let cli = Cli { pins: &pins };

    // Before attach.
    for args in [
        &["svc", "list"][..],
        &["affinity", "dump"],
        &["status"],
        &[
            "svc",
            "add",
            "--type",
            "clusterip",
            "--frontend",
            "203.0.113.1:80",
            "--backend",
            "198.51.100.200:80",
        ],
    ] {
        let (code, err) = cli.fails(args);
        assert_eq!(code, 1);
        assert!(
            err.contains("not attached") && err.contains("netnsxl attach"),
            "{args:?}: {err}"
        );
    }
    let (_, err) = cli.fails(&["attach", "--cgroup", "/tmp"]);
    let cg2 = netnsxl::sys::cgroup2_mount().unwrap();
    assert!(
        err.contains("not a cgroup v2 directory")
            && err.contains(&format!("cgroup2 is mounted at {}", cg2.display())),
        "{err}"
    );
    assert!(!pins.path.exists(), "a refused attach pins nothing");

    cli.attach(&cg, &[]);
    cli.ok(&[
        "svc",
        "add",
        "--type",
        "clusterip",
        "--frontend",
        "203.0.113.1:80",
        "--backend",
        "198.51.100.200:80",
    ]);
    let before = cli.json(&["svc", "list"]);
    let add = |extra: &[&str]| {
        let mut a = vec!["svc", "add"];
        a.extend_from_slice(extra);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let cases: Vec<(Vec<String>, &str, i32)> = vec![
        (
            add(&[
                "--type",
                "clusterip",
                "--frontend",
                "203.0.113.300:80",
                "--backend",
                "198.51.100.200:80",
            ]),
            "--frontend",
            1,
        ),
        (
            add(&[
                "--type",
                "clusterip",
                "--frontend",
                "203.0.113.2:0",
                "--backend",
                "198.51.100.200:80",
            ]),
            "--frontend",
            1,
        ),
        (
            add(&[
                "--type",
                "clusterip",
                "--frontend",
                "203.0.113.2:65536",
                "--backend",
                "198.51.100.200:80",
            ]),
            "--frontend",
            1,
        ),
        (
            add(&[
                "--type",
                "clusterip",
                "--frontend",
                "203.0.113.2:80",
                "--backend",
                "198.51.100.200",
            ]),
            "--backend",
            1,
        ),
        (
            add(&[
                "--type",
                "clusterip",
                "--frontend",
                "203.0.113.2:80",
                "--backend",
                "[2001:db8::1]:80",
            ]),
            "one family",
            1,
        ),
        (
            add(&[
                "--type",
                "nodeportish",
                "--frontend",
                "203.0.113.2:80",
                "--backend",
                "198.51.100.200:80",
            ]),
            "--type",
            2,
        ),
        (
            add(&[
                "--type",
                "clusterip",
                "--proto",
                "sctp",
                "--frontend",
                "203.0.113.2:80",
                "--backend",
                "198.51.100.200:80",
            ]),
            "--proto",
            2,
        ),
        (
            add(&[
                "--type",
                "clusterip",
                "--frontend",
                "203.0.113.2:80",
                "--backend",
                "198.51.100.200:80",
                "--session-affinity",
                "client-ip",
                "--affinity-timeout",
                "0",
            ]),
            "--affinity-timeout",
            1,
        ),
        (
            add(&[
                "--type",
                "clusterip",
                "--frontend",
                "203.0.113.2:80",
                "--backend",
                "198.51.100.200:80",
                "--session-affinity",
                "client-ip",
                "--affinity-timeout",
                "86401",
            ]),
            "--affinity-timeout",
            1,
        ),
        (
            add(&[
                "--type",
                "clusterip",
                "--frontend",
                "203.0.113.1:80",
                "--backend",
                "198.51.100.201:80",
            ]),
            "--replace",
            1,
        ),
        (
            vec![
                "svc".into(),
                "del".into(),
                "--frontend".into(),
                "203.0.113.9:80".into(),
            ],
            "no such service",
            1,
        ),
    ];
    for (args, needle, want_code) in cases {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, err) = cli.fails(&refs);
        assert_eq!(code, want_code, "{args:?}: {err}");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "one line: {args:?}: {err}"
        );
        assert!(err.contains(needle), "{args:?} should name {needle}: {err}");
        assert_eq!(
            cli.json(&["svc", "list"]),
            before,
            "{args:?} changed nothing"
        );
    }
    let a = cli.json(&["svc", "list"]);
    assert_eq!(a[0]["backends"][0]["addr"], "198.51.100.200:80");
}
