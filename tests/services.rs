//! Every service type and rule of docs' semantics table, with real traffic.
//!
//! A node netns plays the host (`attach --host-netns`), so NodePort and
//! HostPort can be tested on node addresses and on loopback without sending
//! anything from the initial netns. Pods hang off the node on a veth; the
//! backends listen on the node's loopback addresses.

mod common;

use std::collections::HashSet;

use common::*;

const BE4: [&str; 2] = ["203.0.113.200", "203.0.113.201"];
const BE6: [&str; 2] = ["2001:db8:b::200", "2001:db8:b::201"];
const NODE4: &str = "198.51.100.1";
const NODE6: &str = "2001:db8:1::1";

/// The node (with IPv4 and IPv6 backends, TCP and UDP on 8080) and one pod
/// reaching it over IPv4 and IPv6: the common lab plus `svc add` helpers.
struct NodeLab(Lab);

impl std::ops::Deref for NodeLab {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        &self.0
    }
}

impl NodeLab {
    fn new() -> NodeLab {
        let backends = BE4
            .iter()
            .enumerate()
            .map(|(i, ip)| Backend {
                ip,
                name: format!("backend-{}", i + 1),
            })
            .chain(BE6.iter().enumerate().map(|(i, ip)| Backend {
                ip,
                name: format!("backend6-{}", i + 1),
            }))
            .collect();
        NodeLab(
            Lab::build()
                .ipv6()
                .backends(backends, &["tcp", "udp"], 8080)
                .up(),
        )
    }

    fn svc(&self, args: &[&str]) {
        let mut full = vec!["svc", "add"];
        full.extend_from_slice(args);
        self.cli().ok(&full);
    }

    fn pod_client(&self) -> From<'_> {
        self.pod(0)
    }

    fn host_client(&self) -> From<'_> {
        self.host()
    }
}

fn be4(i: usize) -> String {
    format!("{}:8080", BE4[i])
}

fn be6(i: usize) -> String {
    format!("[{}]:8080", BE6[i])
}

#[test]
#[ignore = "needs root (make test runs it)"]
fn nodeport_on_node_addresses_and_on_loopback_only_from_the_host() {
    require_root();
    let lab = NodeLab::new();
    lab.svc(&[
        "--type",
        "nodeport",
        "--frontend",
        ":30080",
        "--backend",
        &be4(0),
    ]);
    let np = format!("{NODE4}:30080");
    assert_eq!(
        reply_of(lab.pod_client(), "tcp", &np),
        "backend-1",
        "pod -> node address"
    );
    assert_eq!(
        reply_of(lab.host_client(), "tcp", &np),
        "backend-1",
        "host -> node address"
    );
    assert_eq!(
        reply_of(lab.host_client(), "tcp", "127.0.0.1:30080"),
        "backend-1",
        "host -> loopback"
    );
    assert_eq!(
        reply_of(lab.host_client(), "tcp", "127.1.2.3:30080"),
        "backend-1",
        "all of 127.0.0.0/8"
    );

    // In a pod, loopback is the pod's own: a listener there answers.
    let _own = Server::start(Some(&lab.pods[0]), "tcp", "127.0.0.1:30080", "pod-loopback");
    assert_eq!(
        reply_of(lab.pod_client(), "tcp", "127.0.0.1:30080"),
        "pod-loopback"
    );

    // UDP NodePort too, with the node address as the reply's source.
    lab.svc(&[
        "--type",
        "nodeport",
        "--proto",
        "udp",
        "--node-port",
        "30053",
        "--backend",
        &be4(1),
    ]);
    let a = probe(lab.pod_client(), "udp", true, &format!("{NODE4}:30053"), 1).remove(0);
    assert_eq!(a.reply.as_deref(), Some("backend-2"), "{a:?}");
    assert_eq!(a.peer, Some(format!("{NODE4}:30053")));

    // Outside the NodePort range: refused, nothing written.
    let before = lab.cli().json(&["svc", "list"]);
    let (_, err) = lab.cli().fails(&[
        "svc",
        "add",
        "--type",
        "nodeport",
        "--frontend",
        ":8080",
        "--backend",
        &be4(0),
    ]);
    assert!(
        err.contains("outside the NodePort range 30000-32767"),
        "{err}"
    );
    assert_eq!(lab.cli().json(&["svc", "list"]), before);
    let listed = &before
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["frontend"] == ":30080")
        .unwrap()["frontends"];
    let listed: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        listed.contains(&"127.0.0.0/8:30080 (host netns only)"),
        "{listed:?}"
    );
    assert!(listed.contains(&"198.51.100.1:30080"), "{listed:?}");
}

#[test]
#[ignore = "needs root (make test runs it)"]
fn loadbalancer_from_every_netns_and_its_nodeport() {
    require_root();
    let lab = NodeLab::new();
    lab.svc(&[
        "--type",
        "loadbalancer",
        "--frontend",
        "203.0.113.90:80",
        "--node-port",
        "30090",
        "--backend",
        &be4(0),
    ]);
    assert_eq!(
        reply_of(lab.pod_client(), "tcp", "203.0.113.90:80"),
        "backend-1"
    );
    assert_eq!(
        reply_of(lab.host_client(), "tcp", "203.0.113.90:80"),
        "backend-1"
    );
    assert_eq!(
        reply_of(lab.pod_client(), "tcp", &format!("{NODE4}:30090")),
        "backend-1"
    );
    assert_eq!(
        reply_of(lab.host_client(), "tcp", "127.0.0.1:30090"),
        "backend-1"
    );
    lab.cli()
        .ok(&["svc", "del", "--frontend", "203.0.113.90:80"]);
    let a = probe(lab.host_client(), "tcp", false, "127.0.0.1:30090", 1).remove(0);
    assert_eq!(
        a.errno,
        Some(refused_errno()),
        "the NodePort went with the service: {a:?}"
    );
    let status = lab.cli().json(&["status"]);
    let svc = status["maps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "svc_map")
        .unwrap();
    assert_eq!(svc["used"], 0, "every frontend and slot deleted: {status}");
}

#[test]
#[ignore = "needs root (make test runs it)"]
fn hostport_on_node_addresses_and_host_loopback() {
    require_root();
    let lab = NodeLab::new();
    lab.svc(&[
        "--type",
        "hostport",
        "--frontend",
        ":8081",
        "--backend",
        &be4(1),
    ]);
    assert_eq!(
        reply_of(lab.pod_client(), "tcp", &format!("{NODE4}:8081")),
        "backend-2"
    );
    assert_eq!(
        reply_of(lab.host_client(), "tcp", &format!("{NODE4}:8081")),
        "backend-2"
    );
    assert_eq!(
        reply_of(lab.host_client(), "tcp", "127.0.0.1:8081"),
        "backend-2"
    );
    let a = probe(lab.pod_client(), "tcp", false, "127.0.0.1:8081", 1).remove(0);
    assert_eq!(
        a.errno,
        Some(refused_errno()),
        "pod loopback untouched (nothing listens there): {a:?}"
    );

    // With a hostIP, only that address (and host loopback).
    lab.svc(&[
        "--type",
        "hostport",
        "--frontend",
        "203.0.113.201:8082",
        "--backend",
        &be4(0),
    ]);
    assert_eq!(
        reply_of(lab.pod_client(), "tcp", "203.0.113.201:8082"),
        "backend-1"
    );
    let a = probe(lab.pod_client(), "tcp", false, &format!("{NODE4}:8082"), 1).remove(0);
    assert_eq!(
        a.errno,
        Some(refused_errno()),
        "other node addresses untouched: {a:?}"
    );
}

#[test]
#[ignore = "needs root (make test runs it)"]
fn ipv6_clusterip_and_nodeport_over_tcp_and_udp() {
    require_root();
    let lab = NodeLab::new();
    lab.svc(&[
        "--type",
        "clusterip",
        "--frontend",
        "[2001:db8:ff::80]:80",
        "--backend",
        &be6(0),
    ]);
    lab.svc(&[
        "--type",
        "clusterip",
        "--proto",
        "udp",
        "--frontend",
        "[2001:db8:ff::53]:53",
        "--backend",
        &be6(1),
    ]);
    let a = probe(lab.pod_client(), "tcp", false, "[2001:db8:ff::80]:80", 1).remove(0);
    assert_eq!(a.reply.as_deref(), Some("backend6-1"), "{a:?}");
    assert_eq!(
        a.peer.as_deref(),
        Some("[2001:db8:ff::80]:80"),
        "getpeername6"
    );
    let a = probe(lab.pod_client(), "udp", true, "[2001:db8:ff::53]:53", 1).remove(0);
    assert_eq!(a.reply.as_deref(), Some("backend6-2"), "{a:?}");
    assert_eq!(a.peer.as_deref(), Some("[2001:db8:ff::53]:53"), "recvmsg6");
    let a = probe(lab.pod_client(), "udp", false, "[2001:db8:ff::53]:53", 1).remove(0);
    assert_eq!(
        a.peer.as_deref(),
        Some("[2001:db8:ff::53]:53"),
        "connected UDP getpeername6: {a:?}"
    );

    lab.svc(&[
        "--type",
        "nodeport",
        "--frontend",
        "[::]:30081",
        "--backend",
        &be6(0),
    ]);
    lab.svc(&[
        "--type",
        "nodeport",
        "--proto",
        "udp",
        "--frontend",
        "[::]:30081",
        "--backend",
        &be6(1),
    ]);
    let np = format!("[{NODE6}]:30081");
    assert_eq!(reply_of(lab.pod_client(), "tcp", &np), "backend6-1");
    assert_eq!(
        reply_of(lab.host_client(), "tcp", "[::1]:30081"),
        "backend6-1"
    );
    let a = probe(lab.pod_client(), "udp", true, &np, 1).remove(0);
    assert_eq!(a.reply.as_deref(), Some("backend6-2"), "{a:?}");
    assert_eq!(a.peer.as_deref(), Some(np.as_str()));
    let a = probe(lab.pod_client(), "tcp", false, "[::1]:30081", 1).remove(0);
    assert_eq!(
        a.errno,
        Some(refused_errno()),
        "pod's own ::1 untouched: {a:?}"
    );
}

#[test]
#[ignore = "needs root (make test runs it)"]
fn v4_mapped_destination_on_an_ipv6_socket_uses_the_ipv4_service() {
    require_root();
    let lab = NodeLab::new();
    lab.svc(&[
        "--type",
        "clusterip",
        "--frontend",
        "203.0.113.80:80",
        "--backend",
        &be4(0),
    ]);
    let a = probe(
        lab.pod_client(),
        "tcp",
        false,
        "[::ffff:203.0.113.80]:80",
        1,
    )
    .remove(0);
    assert_eq!(a.reply.as_deref(), Some("backend-1"), "{a:?}");
    assert_eq!(
        a.peer.as_deref(),
        Some("[::ffff:203.0.113.80]:80"),
        "getpeername6 in mapped form"
    );
}

#[test]
#[ignore = "needs root (make test runs it)"]
fn internal_traffic_policy_local_and_terminating_fallback() {
    require_root();
    let lab = NodeLab::new();
    let local = format!("{},local", be4(1));
    lab.svc(&[
        "--type",
        "clusterip",
        "--frontend",
        "203.0.113.81:80",
        "--internal-traffic-policy",
        "local",
        "--backend",
        &be4(0),
        "--backend",
        &local,
    ]);
    let replies: HashSet<_> = probe(lab.pod_client(), "tcp", false, "203.0.113.81:80", 20)
        .into_iter()
        .map(|a| a.reply.expect("reply"))
        .collect();
    assert_eq!(
        replies,
        HashSet::from(["backend-2".to_string()]),
        "only the local backend"
    );

    // Terminating backends are used only when no active one is left.
    let term0 = format!("{},terminating", be4(0));
    lab.svc(&[
        "--type",
        "clusterip",
        "--frontend",
        "203.0.113.82:80",
        "--backend",
        &term0,
        "--backend",
        &be4(1),
    ]);
    let replies: HashSet<_> = probe(lab.pod_client(), "tcp", false, "203.0.113.82:80", 20)
        .into_iter()
        .map(|a| a.reply.expect("reply"))
        .collect();
    assert_eq!(
        replies,
        HashSet::from(["backend-2".to_string()]),
        "active preferred"
    );
    lab.svc(&[
        "--type",
        "clusterip",
        "--frontend",
        "203.0.113.82:80",
        "--replace",
        "--backend",
        &term0,
    ]);
    assert_eq!(
        reply_of(lab.pod_client(), "tcp", "203.0.113.82:80"),
        "backend-1",
        "serving-terminating fallback"
    );
    let list = lab.cli().json(&["svc", "list"]);
    let s = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["frontend"] == "203.0.113.81:80")
        .unwrap();
    assert_eq!(s["internal_traffic_policy"], "local");
}

#[test]
#[ignore = "needs root (make test runs it)"]
fn no_usable_backend_refuses_at_once() {
    require_root();
    let lab = NodeLab::new();
    lab.svc(&["--type", "clusterip", "--frontend", "203.0.113.83:80"]);
    lab.svc(&[
        "--type",
        "clusterip",
        "--proto",
        "udp",
        "--frontend",
        "203.0.113.83:53",
    ]);
    // iTP local with no local backend refuses too.
    lab.svc(&[
        "--type",
        "clusterip",
        "--frontend",
        "203.0.113.84:80",
        "--internal-traffic-policy",
        "local",
        "--backend",
        &be4(0),
    ]);
    for (proto, unconnected, target) in [
        ("tcp", false, "203.0.113.83:80"),
        ("udp", true, "203.0.113.83:53"),
        ("udp", false, "203.0.113.83:53"),
        ("tcp", false, "203.0.113.84:80"),
    ] {
        let a = probe(lab.pod_client(), proto, unconnected, target, 1).remove(0);
        assert_eq!(a.errno, Some(refused_errno()), "{proto} {target}: {a:?}");
        // The probe's timeout is 2 s; a refusal from the hook takes microseconds.
        assert!(a.elapsed_us < 100_000, "did not wait for a timeout: {a:?}");
    }
}

#[test]
#[ignore = "needs root (make test runs it)"]
fn bypassed_netns_is_not_translated_until_bypass_del() {
    require_root();
    let lab = NodeLab::new();
    lab.pods[0].add_lo_addr("203.0.113.85/32");
    let _decoy = Server::start(Some(&lab.pods[0]), "tcp", "203.0.113.85:80", "untranslated");
    lab.svc(&[
        "--type",
        "clusterip",
        "--frontend",
        "203.0.113.85:80",
        "--backend",
        &be4(0),
    ]);
    assert_eq!(
        reply_of(lab.pod_client(), "tcp", "203.0.113.85:80"),
        "backend-1"
    );

    lab.cli().ok(&["netns", "bypass", "add", &lab.pods[0].name]);
    assert_eq!(
        reply_of(lab.pod_client(), "tcp", "203.0.113.85:80"),
        "untranslated"
    );
    let list = lab.cli().json(&["netns", "list"]);
    let find = |name: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|n| n["names"].as_array().unwrap().iter().any(|x| x == name))
            .cloned()
            .unwrap()
    };
    assert_eq!(find(&lab.pods[0].name)["bypassed"], true, "{list}");
    assert_eq!(find(&lab.node.name)["host"], true, "{list}");
    assert_eq!(find(&lab.node.name)["bypassed"], false);

    lab.cli().ok(&["netns", "bypass", "del", &lab.pods[0].name]);
    assert_eq!(
        reply_of(lab.pod_client(), "tcp", "203.0.113.85:80"),
        "backend-1"
    );
    let (_, err) = lab
        .cli()
        .fails(&["netns", "bypass", "add", "no-such-netns-here"]);
    assert!(err.contains("does not exist"), "{err}");
}

#[test]
#[ignore = "needs root (make test runs it)"]
fn affinity_flush_by_frontend_and_netns() {
    require_root();
    let lab = NodeLab::new();
    lab.svc(&[
        "--type",
        "clusterip",
        "--frontend",
        "203.0.113.86:80",
        "--session-affinity",
        "client-ip",
        "--backend",
        &be4(0),
        "--backend",
        &be4(1),
    ]);
    probe(lab.pod_client(), "tcp", false, "203.0.113.86:80", 1);
    probe(lab.host_client(), "tcp", false, "203.0.113.86:80", 1);
    assert_eq!(
        lab.cli()
            .json(&["affinity", "dump"])
            .as_array()
            .unwrap()
            .len(),
        2
    );
    lab.cli()
        .ok(&["affinity", "flush", "--netns", &lab.pods[0].name]);
    let dump = lab.cli().json(&["affinity", "dump"]);
    assert_eq!(dump.as_array().unwrap().len(), 1);
    assert_eq!(dump[0]["netns"], lab.node.name.as_str());
    lab.cli()
        .ok(&["affinity", "flush", "--frontend", "203.0.113.86:80"]);
    assert_eq!(
        lab.cli()
            .json(&["affinity", "dump"])
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

#[test]
#[ignore = "needs root (make test runs it)"]
fn node_refresh_moves_nodeport_and_externalip_rules_to_new_addresses() {
    require_root();
    let lab = NodeLab::new();
    lab.svc(&[
        "--type",
        "nodeport",
        "--frontend",
        ":30082",
        "--backend",
        &be4(0),
    ]);
    lab.svc(&[
        "--type",
        "externalip",
        "--frontend",
        "203.0.113.87:80",
        "--backend",
        &be4(1),
    ]);
    // 203.0.113.87 is not a node address yet: the host is not translated.
    let a = probe(lab.host_client(), "tcp", false, "203.0.113.87:80", 1).remove(0);
    assert!(!a.ok, "untranslated from the host (no route there): {a:?}");

    lab.node.add_lo_addr("203.0.113.87/32");
    lab.node.add_lo_addr("203.0.113.88/32");
    let host = lab.node.path();
    let out = lab
        .cli()
        .ok(&["node", "refresh", "--host-netns", host.to_str().unwrap()]);
    assert!(out.contains("2 services rewritten"), "{out}");
    let status = lab.cli().json(&["status"]);
    assert!(
        status["node_addrs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "203.0.113.88"),
        "{status}"
    );
    assert_eq!(
        reply_of(lab.pod_client(), "tcp", "203.0.113.88:30082"),
        "backend-1",
        "NodePort on the new address"
    );
    assert_eq!(
        reply_of(lab.host_client(), "tcp", "203.0.113.87:80"),
        "backend-2",
        "now a node address: translated from the host"
    );
}
