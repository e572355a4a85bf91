//! UDP as resolvers and QUIC clients use it (issue 23): one unconnected
//! socket keeps many datagrams in flight, to one ClusterIP or several.
//! Every datagram of a socket reaches one backend per frontend, and every
//! reply shows the frontend it was sent to.
//!
//! The lab: a node netns (the host) with the backends on its loopback, one
//! pod on a veth (IPv4 and IPv6). Backends answer with their own name.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use common::*;
use serde_json::Value;

const PORT: u16 = 5353;
const V4: [&str; 16] = [
    "203.0.113.11",
    "203.0.113.12",
    "203.0.113.13",
    "203.0.113.14",
    "203.0.113.15",
    "203.0.113.16",
    "203.0.113.17",
    "203.0.113.18",
    "203.0.113.21",
    "203.0.113.22",
    "203.0.113.23",
    "203.0.113.24",
    "203.0.113.25",
    "203.0.113.26",
    "203.0.113.27",
    "203.0.113.28",
];
const V6: [&str; 8] = [
    "2001:db8:5::1",
    "2001:db8:5::2",
    "2001:db8:5::3",
    "2001:db8:5::4",
    "2001:db8:5::5",
    "2001:db8:5::6",
    "2001:db8:5::7",
    "2001:db8:5::8",
];

/// Backend i answers `v4-i` or `v6-i` (1-based), UDP on PORT.
fn lab() -> Lab {
    let backends = V4
        .iter()
        .enumerate()
        .map(|(i, ip)| Backend {
            ip,
            name: format!("v4-{}", i + 1),
        })
        .chain(V6.iter().enumerate().map(|(i, ip)| Backend {
            ip,
            name: format!("v6-{}", i + 1),
        }))
        .collect();
    Lab::build().ipv6().backends(backends, &["udp"], PORT).up()
}

fn endpoint(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// A UDP ClusterIP with `backends` (addresses) on PORT.
fn clusterip(lab: &Lab, frontend: &str, backends: &[&str]) {
    let eps: Vec<String> = backends.iter().map(|b| endpoint(b, PORT)).collect();
    clusterip_to(lab, frontend, &eps);
}

/// A UDP ClusterIP with `backends` (ADDR:PORT), replacing any before it.
fn clusterip_to(lab: &Lab, frontend: &str, backends: &[String]) {
    let mut args = vec![
        "svc",
        "add",
        "--type",
        "clusterip",
        "--proto",
        "udp",
        "--frontend",
        frontend,
        "--replace",
    ];
    for b in backends {
        args.extend(["--backend", b.as_str()]);
    }
    lab.cli().ok(&args);
}

/// One round of `netnsxl-probe burst`: the datagrams sent and each reply as
/// (source, text).
struct Round {
    sent: u64,
    replies: Vec<(String, String)>,
}

fn round_of(v: &Value) -> Round {
    assert!(v["error"].is_null(), "{v}");
    Round {
        sent: v["sent"].as_u64().unwrap(),
        replies: v["replies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["from"].as_str().unwrap().to_string(),
                    r["reply"].as_str().unwrap().to_string(),
                )
            })
            .collect(),
    }
}

fn burst_cmd(lab: &Lab, in_flight: u32, rounds: u32, targets: &[&str]) -> Command {
    let mut cmd = Command::new(PROBE);
    cmd.args(["burst", "--in-flight", &in_flight.to_string()])
        .args(["--rounds", &rounds.to_string()])
        .arg("--cgroup")
        .arg(&lab.cg.path)
        .args(["--netns", &lab.pods[0].name])
        .args(targets);
    cmd
}

/// Rounds on one socket from the pod.
fn burst(lab: &Lab, in_flight: u32, rounds: u32, targets: &[&str]) -> Vec<Round> {
    let out = run_ok(&mut burst_cmd(lab, in_flight, rounds, targets));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| round_of(&serde_json::from_str(l).unwrap()))
        .collect()
}

fn reasons(lab: &Lab) -> Value {
    lab.cli().json(&["stats"])["reasons"].clone()
}

/// Every reply came from `vip` and all of them from one backend, whose
/// name is returned.
fn one_backend_all_from(r: &Round, vip: &str) -> String {
    assert_eq!(r.replies.len() as u64, r.sent, "replies lost");
    let from: BTreeSet<&str> = r.replies.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(
        from,
        BTreeSet::from([vip]),
        "every reply shows the ClusterIP"
    );
    let names: BTreeSet<&str> = r.replies.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names.len(), 1, "one socket, one backend: {names:?}");
    names.into_iter().next().unwrap().to_string()
}

/// 32 datagrams in flight from one socket to a ClusterIP of 8 backends, five
/// sockets of two rounds each: every reply from the ClusterIP, each socket
/// answered by one backend. Sockets spread over the backends.
#[test]
#[ignore = "needs root (make test runs it)"]
fn one_socket_reaches_one_backend_and_every_reply_shows_the_clusterip() {
    require_root();
    let lab = lab();
    const VIP: &str = "198.18.9.1:53";
    clusterip(&lab, VIP, &V4[..8]);
    let mut chosen = BTreeSet::new();
    for _ in 0..5 {
        let rounds = burst(&lab, 32, 2, &[VIP]);
        assert_eq!(rounds.len(), 2);
        let a = one_backend_all_from(&rounds[0], VIP);
        let b = one_backend_all_from(&rounds[1], VIP);
        assert_eq!(a, b, "the socket stays on its backend");
        chosen.insert(a);
    }
    // 20 sockets in all: they are not all on one backend (8^-19 by chance).
    for _ in 0..15 {
        chosen.insert(one_backend_all_from(&burst(&lab, 2, 1, &[VIP])[0], VIP));
    }
    assert!(chosen.len() > 1, "sockets spread over backends: {chosen:?}");
    assert_eq!(reasons(&lab)["udp_rev_evicted"], 0);
}

/// Two ClusterIPs interleaved from one socket, 64 in flight: each reply
/// from its own ClusterIP, answered by that ClusterIP's backends.
#[test]
#[ignore = "needs root (make test runs it)"]
fn two_clusterips_interleaved_on_one_socket_each_reply_from_its_own() {
    require_root();
    let lab = lab();
    const A: &str = "198.18.9.1:53";
    const B: &str = "198.18.9.2:53";
    clusterip(&lab, A, &V4[..8]);
    clusterip(&lab, B, &V4[8..]);
    let r = &burst(&lab, 64, 1, &[A, B])[0];
    assert_eq!(r.replies.len(), 64, "replies lost");
    let mut per: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (from, name) in &r.replies {
        per.entry(from.as_str()).or_default().insert(name.as_str());
    }
    assert_eq!(
        per.keys().copied().collect::<Vec<_>>(),
        vec![A, B],
        "{per:?}"
    );
    let backend = |vip: &str| -> usize {
        let names = &per[vip];
        assert_eq!(names.len(), 1, "{vip}: {names:?}");
        let n = names.iter().next().unwrap();
        n.strip_prefix("v4-").unwrap().parse().unwrap()
    };
    assert!(backend(A) <= 8, "A's backends are v4-1..8");
    assert!(backend(B) > 8, "B's backends are v4-9..16");
}

/// The same over IPv6, and from an IPv6 socket to a ClusterIP written as an
/// IPv4-mapped address: replies show the address the socket sent to.
#[test]
#[ignore = "needs root (make test runs it)"]
fn ipv6_and_v4_mapped_sockets_keep_one_backend_and_see_the_clusterip() {
    require_root();
    let lab = lab();
    const VIP6: &str = "[2001:db8:ff::53]:53";
    const VIP4: &str = "198.18.9.3:53";
    const MAPPED: &str = "[::ffff:198.18.9.3]:53";
    clusterip(&lab, VIP6, &V6);
    clusterip(&lab, VIP4, &V4[..8]);
    for _ in 0..3 {
        let r = burst(&lab, 32, 2, &[VIP6]);
        assert_eq!(
            one_backend_all_from(&r[0], VIP6),
            one_backend_all_from(&r[1], VIP6)
        );
        let r = burst(&lab, 32, 2, &[MAPPED]);
        assert_eq!(
            one_backend_all_from(&r[0], MAPPED),
            one_backend_all_from(&r[1], MAPPED)
        );
    }
    // Both families from one IPv6 socket, interleaved.
    let r = &burst(&lab, 64, 1, &[VIP6, MAPPED])[0];
    assert_eq!(r.replies.len(), 64, "replies lost");
    let from: BTreeSet<&str> = r.replies.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(from, BTreeSet::from([VIP6, MAPPED]));
}

/// A socket keeps its backend while that backend is usable: backends added
/// (a scale-up) do not move it; when its backend is removed its next
/// datagrams reach one remaining backend, replies still show the ClusterIP,
/// and the removed backend's return does not move it back.
#[test]
#[ignore = "needs root (make test runs it)"]
fn a_socket_moves_only_when_its_backend_goes() {
    require_root();
    let lab = lab();
    const VIP: &str = "198.18.9.4:53";
    clusterip(&lab, VIP, &V4[..4]);
    let mut child = Reaped(
        burst_cmd(&lab, 16, 4, &[VIP])
            .arg("--wait")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stdin = child.0.stdin.take().unwrap();
    let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
    let mut round = |go: bool| {
        if go {
            writeln!(stdin, "go").unwrap();
        }
        let r = round_of(&serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap());
        one_backend_all_from(&r, VIP)
    };
    let first = round(false);
    let index =
        |name: &str| -> usize { name.strip_prefix("v4-").unwrap().parse::<usize>().unwrap() - 1 };
    // Scale-up: four more backends; the socket stays.
    clusterip(&lab, VIP, &V4[..8]);
    assert_eq!(round(true), first, "added backends do not move a socket");
    // Its backend goes: it moves to one remaining backend.
    let without: Vec<&str> = V4[..8]
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != index(&first))
        .map(|(_, ip)| *ip)
        .collect();
    clusterip(&lab, VIP, &without);
    let moved = round(true);
    assert_ne!(moved, first, "the removed backend is not used");
    // The old backend comes back: the socket stays where it is now.
    clusterip(&lab, VIP, &V4[..8]);
    assert_eq!(round(true), moved, "a socket does not flap back");
}

/// A socket that talks to more frontends than it keeps reverse pairs for
/// (16): the oldest pairs are overwritten, counted in `udp_rev_evicted`,
/// and only the replies of those backends show a raw address.
#[test]
#[ignore = "needs root (make test runs it)"]
fn more_frontends_than_pairs_per_socket_are_counted_never_silent() {
    require_root();
    let lab = lab();
    // 18 frontends, each with a backend of its own: the 16 addresses on
    // PORT, then two of them again on PORT + 1.
    let _extra = lab.serve(&V4[..2], "udp", PORT + 1);
    let mut vips = Vec::new();
    for i in 0..18 {
        let vip = format!("198.18.9.{}:53", 100 + i);
        let backend = if i < 16 {
            endpoint(V4[i], PORT)
        } else {
            endpoint(V4[i - 16], PORT + 1)
        };
        clusterip_to(&lab, &vip, &[backend]);
        vips.push(vip);
    }
    let targets: Vec<&str> = vips.iter().map(String::as_str).collect();
    let r = &burst(&lab, 18, 1, &targets)[0];
    assert_eq!(r.replies.len(), 18, "replies lost");
    let raw = r
        .replies
        .iter()
        .filter(|(from, _)| !vips.contains(from))
        .count();
    assert_eq!(raw, 2, "two pairs overwritten: {:?}", r.replies);
    assert_eq!(reasons(&lab)["udp_rev_evicted"], 2);
}

/// dnsmasq on `ip`:53 in the node netns, answering every name under
/// example.test and logging each query to `log`; killed on drop.
fn dnsmasq(lab: &Lab, ip: &str, log: &std::path::Path) -> Reaped {
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.node.name,
            "dnsmasq",
            "-k",
            "-C",
            "/dev/null",
        ])
        .args(["--port", "53", "--bind-interfaces", "--listen-address", ip])
        .args(["--no-resolv", "--no-hosts", "--user=root", "--pid-file="])
        .arg("--address=/example.test/192.0.2.80")
        .arg("--log-queries")
        .arg(format!("--log-facility={}", log.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run dnsmasq (make test installs dnsmasq-base)");
    let up = eventually(std::time::Duration::from_secs(10), || {
        std::fs::read_to_string(log).is_ok_and(|l| l.contains("started"))
    });
    assert!(up, "dnsmasq on {ip} did not start");
    Reaped(child)
}

/// A real resolver load: dnsperf (one socket, up to 32 queries in flight)
/// against a ClusterIP of 8 dnsmasq backends loses no query, and every
/// query of that socket reached one backend.
#[test]
#[ignore = "needs root (make test runs it)"]
fn dnsperf_one_socket_32_in_flight_loses_nothing_and_stays_on_one_backend() {
    require_root();
    let lab = lab();
    let dir = tempdir();
    const VIP: &str = "198.18.9.53:53";
    let logs: Vec<std::path::PathBuf> = (0..8)
        .map(|i| dir.join(format!("dnsmasq-{i}.log")))
        .collect();
    let _servers: Vec<Reaped> = (0..8).map(|i| dnsmasq(&lab, V4[i], &logs[i])).collect();
    let backends: Vec<String> = V4[..8].iter().map(|ip| endpoint(ip, 53)).collect();
    clusterip_to(&lab, VIP, &backends);
    let names = dir.join("queries");
    let list: String = (0..50).map(|i| format!("n{i}.example.test A\n")).collect();
    std::fs::write(&names, list).unwrap();
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec ip netns exec {} dnsperf -s 198.18.9.53 -p 53 -d {} -n 20 -c 1 -T 1 -q 32 -t 2",
        lab.cg.path.display(),
        lab.pods[0].name,
        names.display()
    );
    let out = run_ok(Command::new("sh").args(["-c", &script]));
    let report = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> u64 {
        let line = report
            .lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("no {name:?} in dnsperf's report: {report}"));
        line.split(':')
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(field("Queries sent"), 1000, "{report}");
    assert_eq!(field("Queries completed"), 1000, "{report}");
    assert_eq!(field("Queries lost"), 0, "{report}");
    let per: Vec<usize> = logs
        .iter()
        .map(|l| {
            std::fs::read_to_string(l)
                .unwrap()
                .lines()
                .filter(|x| x.contains("query[A]"))
                .count()
        })
        .collect();
    assert_eq!(per.iter().sum::<usize>(), 1000, "{per:?}");
    assert_eq!(
        per.iter().filter(|n| **n > 0).count(),
        1,
        "one socket, one backend: {per:?}"
    );
}
