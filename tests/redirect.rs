//! Local redirect with skip-from-backend (issue 16), in the shape of
//! NodeLocal DNSCache, with real UDP and TCP sockets:
//!
//! - kube-dns is a ClusterIP (192.0.2.10:53) served by the real DNS backend
//!   on the node's loopback (203.0.113.53, "kube-dns");
//! - the node-local cache runs in a netns of its own (pod 1, "cache") on an
//!   address of its own per test (192.0.2.10x: tests run in parallel, and
//!   a backend's netns is found from its address), and forwards to kube-dns
//!   through the same ClusterIP;
//! - a redirect sends the ClusterIP and a link-local-style address
//!   (192.0.2.254:53, from the documentation ranges) to the cache, skipping
//!   the cache's own netns;
//! - pod 0 is any other pod on the node.

mod common;

use common::*;
use serde_json::{Value, json};

const KUBE_DNS: &str = "192.0.2.10:53";
const LOCAL_DNS: &str = "192.0.2.254:53";
/// The lab and the cache's servers (UDP and TCP) on `cache` (ADDR:53).
fn dns_lab(cache: &str) -> (Lab, Vec<Server>) {
    let lab = Lab::build()
        .pods(2)
        .backends(
            vec![Backend {
                ip: "203.0.113.53",
                name: "kube-dns".into(),
            }],
            &["udp", "tcp"],
            53,
        )
        .up();
    // The node routes between its pods (the cache is another pod).
    lab.node
        .exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        .expect("enable forwarding in the node netns");
    let ip = cache.strip_suffix(":53").unwrap();
    lab.pods[1].add_lo_addr(&format!("{ip}/32"));
    lab.node.route(&format!("{ip}/32"), "198.51.100.18");
    let cache = ["udp", "tcp"]
        .iter()
        .map(|p| Server::start(Some(&lab.pods[1]), p, cache, "cache"))
        .collect();
    for proto in ["udp", "tcp"] {
        lab.cli().ok(&[
            "svc",
            "add",
            "--type",
            "clusterip",
            "--frontend",
            KUBE_DNS,
            "--proto",
            proto,
            "--backend",
            "203.0.113.53:53",
            "--name",
            "kube-system/kube-dns",
        ]);
    }
    (lab, cache)
}

fn ask(from: From<'_>, proto: &str, target: &str) -> Attempt {
    probe(from, proto, false, target, 1).remove(0)
}

fn reply(from: From<'_>, proto: &str, target: &str) -> String {
    let a = ask(from, proto, target);
    assert!(a.ok, "{proto} {target}: {a:?}");
    a.reply.unwrap()
}

fn redirect_of(lab: &Lab, frontend: &str, proto: &str) -> Value {
    lab.cli()
        .json(&["redirect", "list"])
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["frontend"] == frontend && r["proto"] == proto)
        .cloned()
        .unwrap_or(Value::Null)
}

#[test]
#[ignore = "needs root (make test runs it)"]
fn node_local_dns_cache_shape_with_udp_and_tcp() {
    require_root();
    const CACHE: &str = "192.0.2.101:53";
    let (lab, _cache) = dns_lab(CACHE);
    let (pod, cache) = (lab.pod(0), lab.pod(1));
    let cli = lab.cli();
    for proto in ["udp", "tcp"] {
        assert_eq!(reply(pod, proto, KUBE_DNS), "kube-dns");
    }
    let cache_ns = lab.pods[1].name.clone();
    for proto in ["udp", "tcp"] {
        // UDP finds the cache's netns from its address, TCP by name.
        let backend = if proto == "udp" {
            CACHE.to_string()
        } else {
            format!("{CACHE},netns={cache_ns}")
        };
        for fe in [KUBE_DNS, LOCAL_DNS] {
            cli.ok(&[
                "redirect",
                "add",
                "--frontend",
                fe,
                "--proto",
                proto,
                "--backend",
                &backend,
                "--skip-from-backend",
                "--name",
                "kube-system/node-local-dns",
            ]);
        }
    }
    let tracer_events = trace_during(&lab, &[], || {
        for proto in ["udp", "tcp"] {
            // Every other pod reaches the cache, on both addresses, and sees
            // the address it asked for as its peer.
            for fe in [KUBE_DNS, LOCAL_DNS] {
                let a = ask(pod, proto, fe);
                assert_eq!(a.reply.as_deref(), Some("cache"), "{proto} {fe}: {a:?}");
                assert_eq!(a.peer.as_deref(), Some(fe), "{proto} {fe}");
            }
            // The cache reaches the real DNS through the same ClusterIP.
            assert_eq!(reply(cache, proto, KUBE_DNS), "kube-dns");
        }
    });
    let of = |verdict: &str| {
        tracer_events
            .iter()
            .filter(|e| e["verdict"] == verdict && e["original"] == KUBE_DNS)
            .count()
    };
    assert!(of("redirected") >= 2, "{tracer_events:#?}");
    let skipped: Vec<&Value> = tracer_events
        .iter()
        .filter(|e| e["verdict"] == "redirect_skipped")
        .collect();
    assert_eq!(skipped.len(), 2, "{tracer_events:#?}");
    assert!(skipped.iter().all(|e| e["note"] == "skipped: backend's own netns"
        && e["netns"] == cache_ns.as_str()));
    let st = cli.json(&["stats"]);
    assert!(st["reasons"]["redirected"].as_u64() >= Some(4), "{st}");
    assert!(
        st["reasons"]["redirect_skipped"].as_u64() >= Some(2),
        "{st}"
    );

    // The cache's own sockets to the link-local address are left alone: no
    // service there, so they go to the address itself, which nothing serves.
    let a = ask(cache, "tcp", LOCAL_DNS);
    assert!(!a.ok && a.reply.is_none(), "{a:?}");

    // redirect list: each backend's netns name and cookie.
    let cookie = ask(cache, "udp", KUBE_DNS).netns_cookie;
    for (proto, named) in [("udp", false), ("tcp", true)] {
        let r = redirect_of(&lab, KUBE_DNS, proto);
        let b = &r["backends"][0];
        assert_eq!(b["addr"], CACHE, "{r}");
        assert_eq!(b["netns_cookie"], cookie, "{r}");
        assert_eq!(b["netns_found"], cache_ns.as_str(), "{r}");
        assert_eq!(b["live"], true, "{r}");
        assert_eq!(b.get("netns").is_some(), named, "{r}");
        assert_eq!(r["skip_from_backend"], true);
        assert_eq!(r["name"], "kube-system/node-local-dns");
    }
    let table = cli.ok(&["redirect", "list"]);
    assert!(
        table.contains(&format!("{CACHE} ({cache_ns}, {cookie})")),
        "{table}"
    );

    // Deleting the redirect sends pods to the real DNS again (UDP only here).
    cli.ok(&["redirect", "del", "--frontend", KUBE_DNS, "--proto", "udp"]);
    assert_eq!(reply(pod, "udp", KUBE_DNS), "kube-dns");
    assert_eq!(reply(pod, "tcp", KUBE_DNS), "cache");
    let (_, e) = cli.fails(&["redirect", "del", "--frontend", KUBE_DNS, "--proto", "udp"]);
    assert!(e.contains("no redirect there"), "{e}");
    cli.ok(&["redirect", "del", "--frontend", KUBE_DNS, "--proto", "tcp"]);
    assert_eq!(reply(pod, "tcp", KUBE_DNS), "kube-dns");

    // A redirect with no backend left falls back to the service.
    cli.ok(&["redirect", "add", "--frontend", KUBE_DNS, "--proto", "udp"]);
    assert_eq!(reply(pod, "udp", KUBE_DNS), "kube-dns");

    // Bad input changes nothing and names the field.
    for (args, says) in [
        (
            vec!["--backend", "203.0.113.99:53", "--skip-from-backend"],
            "no network namespace",
        ),
        (vec!["--backend", "[2001:db8::53]:53"], "one family"),
        (
            vec!["--backend", "192.0.2.101:53,netns=no-such-ns"],
            "does not exist",
        ),
    ] {
        let mut a = vec!["redirect", "add", "--frontend", KUBE_DNS, "--proto", "udp"];
        a.extend(args);
        let (_, e) = cli.fails(&a);
        assert!(e.contains(says), "{e}");
    }
    assert_eq!(redirect_of(&lab, KUBE_DNS, "udp")["backends"], json!([]));
}

/// A cache pod replaced by a new one (a new netns: a new cookie, never a
/// reused one) is rebound on the next node refresh: its sockets are
/// skipped again, and the old cookie is gone from the list.
#[test]
#[ignore = "needs root (make test runs it)"]
fn a_replaced_backend_netns_is_rebound_on_node_refresh() {
    require_root();
    let (lab, _cache) = dns_lab("192.0.2.102:53");
    let cli = lab.cli();
    let fresh = |reply: &str| {
        let ns = Netns::new();
        veth(&lab.node, "198.51.100.33/28", &ns, "198.51.100.34/28");
        ns.route("default", "198.51.100.33");
        let s = Server::start(Some(&ns), "udp", "198.51.100.34:53", reply);
        (ns, s)
    };
    let (old_ns, old_server) = fresh("cache-a");
    cli.ok(&[
        "redirect",
        "add",
        "--frontend",
        KUBE_DNS,
        "--proto",
        "udp",
        "--backend",
        "198.51.100.34:53",
        "--skip-from-backend",
    ]);
    let from_old = From::pod(&lab.cg, &old_ns);
    assert_eq!(reply(from_old, "udp", KUBE_DNS), "kube-dns");
    assert_eq!(reply(lab.pod(0), "udp", KUBE_DNS), "cache-a");
    let old_cookie = redirect_of(&lab, KUBE_DNS, "udp")["backends"][0]["netns_cookie"].clone();
    drop(old_server);
    drop(old_ns);
    assert_eq!(
        redirect_of(&lab, KUBE_DNS, "udp")["backends"][0]["live"],
        false,
        "the old netns is gone"
    );

    let (new_ns, _new_server) = fresh("cache-b");
    let from_new = From::pod(&lab.cg, &new_ns);
    // Not rebound yet: the new pod is redirected to itself.
    assert_eq!(reply(from_new, "udp", KUBE_DNS), "cache-b");
    let out = cli.ok(&[
        "node",
        "refresh",
        "--host-netns",
        lab.node.path().to_str().unwrap(),
    ]);
    assert!(out.contains("198.51.100.34:53 netns cookie"), "{out}");
    assert_eq!(reply(from_new, "udp", KUBE_DNS), "kube-dns");
    assert_eq!(reply(lab.pod(0), "udp", KUBE_DNS), "cache-b");
    let b = &redirect_of(&lab, KUBE_DNS, "udp")["backends"][0];
    assert_ne!(b["netns_cookie"], old_cookie);
    assert_eq!(
        b["netns_cookie"],
        ask(from_new, "udp", KUBE_DNS).netns_cookie
    );
    assert_eq!(b["live"], true);
}

/// A file's `redirects:` list: apply adds them (checked whole first),
/// a second apply changes nothing, --prune removes the file's own ones
/// that it no longer lists and leaves `redirect add` ones; a file with
/// only redirects leaves the services alone, even with --prune.
#[test]
#[ignore = "needs root (make test runs it)"]
fn apply_writes_and_prunes_the_redirects_a_file_lists() {
    require_root();
    const CACHE: &str = "192.0.2.103:53";
    let (lab, _cache) = dns_lab(CACHE);
    let cli = lab.cli();
    cli.ok(&[
        "redirect",
        "add",
        "--frontend",
        "192.0.2.20:53",
        "--proto",
        "udp",
        "--backend",
        CACHE,
    ]);
    let dir = tempdir();
    let write = |name: &str, text: &str| {
        let f = dir.join(name);
        std::fs::write(&f, text).unwrap();
        f.to_str().unwrap().to_string()
    };
    let both = write(
        "both.yaml",
        &format!(
            "redirects:\n  - {{name: kube-system/node-local-dns, frontend: \"{KUBE_DNS}\", proto: udp, backends: [\"{CACHE}\"], skip_from_backend: true}}\n  - {{frontend: \"{LOCAL_DNS}\", proto: udp, backends: [\"{CACHE}\"]}}\n"
        ),
    );
    let out = cli.ok(&["apply", "-f", &both, "--prune"]);
    assert!(
        out.contains("+ redirect 192.0.2.10:53/udp") && out.contains("2 added"),
        "{out}"
    );
    assert_eq!(
        lab.list().len(),
        2,
        "a file of redirects leaves services alone"
    );
    assert_eq!(reply(lab.pod(0), "udp", KUBE_DNS), "cache");
    assert_eq!(reply(lab.pod(1), "udp", KUBE_DNS), "kube-dns");
    assert!(
        cli.ok(&["apply", "-f", &both])
            .contains("0 added, 0 changed, 0 removed, 2 unchanged")
    );

    // A bad entry: nothing is written, the error names it.
    let bad = write(
        "bad.yaml",
        "redirects:\n  - {frontend: \"192.0.2.30:53\", proto: udp, backends: [\"192.0.2.31:53,zone=a\"]}\n",
    );
    let (_, e) = cli.fails(&["apply", "-f", &bad, "--prune"]);
    assert!(
        e.contains("redirects[0].backends[0]") && e.contains("netns=NAME"),
        "{e}"
    );
    assert!(!redirect_of(&lab, KUBE_DNS, "udp").is_null());

    // The list JSON is valid input (under redirects:).
    let listed = cli.json(&["redirect", "list"]);
    let round = write("round.json", &json!({"redirects": listed}).to_string());
    cli.ok(&["apply", "-f", &round, "--dry-run"]);

    let one = write(
        "one.yaml",
        &format!(
            "redirects:\n  - {{frontend: \"{LOCAL_DNS}\", proto: udp, backends: [\"{CACHE}\"]}}\n"
        ),
    );
    let out = cli.ok(&["apply", "-f", &one, "--prune"]);
    assert!(out.contains("- redirect 192.0.2.10:53/udp"), "{out}");
    assert!(redirect_of(&lab, KUBE_DNS, "udp").is_null());
    assert!(!redirect_of(&lab, LOCAL_DNS, "udp").is_null());
    assert_eq!(redirect_of(&lab, "192.0.2.20:53", "udp")["origin"], "user");
    assert_eq!(reply(lab.pod(0), "udp", KUBE_DNS), "kube-dns");
}
