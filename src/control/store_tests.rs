//! The write engine on in-memory maps: plans, write order, rollback,
//! idempotence, repair and capacity, with no root and no kernel.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use super::*;
use crate::bpf::LAYOUT_VERSION;
use crate::control::service;
use crate::datapath::maps::fake::{Contents, FakeMaps, Op};
use crate::model::addr::{BackendSpec, from_map_addr, from_map_port};
use crate::model::service::{FrontendSpec, SvcType};

const NODE: &str = "192.0.2.10";

/// Attached maps as `attach` leaves them: config, one node address.
fn attached(capacity: &[(MapId, u32)]) -> FakeMaps {
    let m = FakeMaps::new(capacity);
    let cfg = types::nxl_config {
        layout_version: LAYOUT_VERSION,
        next_svc_id: 1,
        next_backend_id: 1,
        attached: 1,
        node_port_min: 30000,
        node_port_max: 32767,
        ..Default::default()
    };
    maps::write_config(&m, &cfg).unwrap();
    let node: IpAddr = NODE.parse().unwrap();
    m.update(
        MapId::NodeAddr,
        &[(&to_map_addr(node), &1u32.to_ne_bytes())],
    )
    .map_err(|_| ())
    .unwrap();
    m.take_log();
    m
}

fn backends(n: usize) -> Vec<BackendSpec> {
    (0..n)
        .map(|i| {
            BackendSpec::new(SocketAddr::new(
                std::net::Ipv4Addr::new(203, 0, 113, 1 + i as u8).into(),
                8080,
            ))
        })
        .collect()
}

fn spec(svc_type: SvcType, frontend: &str, bes: Vec<BackendSpec>) -> ServiceSpec {
    let (ip, port) = match frontend.strip_prefix(':') {
        Some(p) => (None, p.parse().unwrap()),
        None => {
            let sa: SocketAddr = frontend.parse().unwrap();
            (Some(sa.ip()), sa.port())
        }
    };
    ServiceSpec {
        name: "web".into(),
        svc_type,
        frontend: FrontendSpec {
            ip,
            port,
            ipv6: false,
        },
        proto: Proto::Tcp,
        node_port: None,
        backends: bes,
        affinity_timeout: None,
        internal_local: false,
        external_local: false,
        from_kubernetes: false,
        topology: Default::default(),
    }
}

fn clusterip(n: usize) -> ServiceSpec {
    spec(SvcType::Clusterip, "198.18.0.1:80", backends(n))
}

fn vip_key(slot: u16) -> Vec<u8> {
    key_bytes(&svc_key(
        "198.18.0.1".parse().unwrap(),
        80,
        Proto::Tcp,
        slot,
    ))
    .to_vec()
}

fn is_master(op: &Op) -> bool {
    matches!(op, Op::Write(MapId::Svc, k, _) if *k == vip_key(0))
}

fn pos(log: &[Op], f: impl Fn(&Op) -> bool) -> usize {
    log.iter()
        .position(f)
        .unwrap_or_else(|| panic!("no such op in {log:?}"))
}

fn last(log: &[Op], f: impl Fn(&Op) -> bool) -> usize {
    log.iter()
        .rposition(f)
        .unwrap_or_else(|| panic!("no such op in {log:?}"))
}

/// Every map but config (whose id counters a failed command may advance).
fn services(m: &FakeMaps) -> Vec<(MapId, Contents)> {
    m.snapshot()
        .into_iter()
        .filter(|(id, _)| *id != MapId::Config)
        .collect()
}

/// The backends a frontend's master reaches (inline and slots), as
/// addresses: what a connect can be sent to.
fn reachable(m: &FakeMaps, slot0: &[u8]) -> BTreeSet<SocketAddr> {
    let master: types::svc_value = maps::get(m, MapId::Svc, slot0).unwrap().unwrap();
    let key: types::svc_key = bpf::from_bytes(slot0).unwrap();
    let to_sa =
        |b: &types::svc_backend| SocketAddr::new(from_map_addr(b.addr), from_map_port(b.port));
    let mut out = BTreeSet::new();
    for i in 0..master.count as usize {
        if i < INLINE {
            out.insert(to_sa(&master.be[i]));
        } else {
            let mut k = key;
            k.slot = i as u16 + 1;
            let slot: types::svc_value = maps::get(m, MapId::Svc, bpf::bytes(&k))
                .unwrap()
                .unwrap_or_else(|| panic!("slot {} of {} missing", i + 1, master.count));
            assert_eq!(slot.svc_id, master.svc_id);
            out.insert(to_sa(&slot.be[0]));
        }
    }
    out
}

fn addrs(bes: &[BackendSpec]) -> BTreeSet<SocketAddr> {
    bes.iter().map(|b| b.addr).collect()
}

#[test]
fn add_writes_a_golden_layout() {
    let m = attached(&[]);
    let done = service::add(&m, &clusterip(2), false).unwrap();
    assert_eq!(done.written, 6, "meta, 2 backends, 2 members, 1 master");

    let master: types::svc_value = maps::get(&m, MapId::Svc, &vip_key(0)).unwrap().unwrap();
    assert_eq!((master.svc_id, master.count, master.flags), (1, 2, 0));
    for (i, be) in master.be[..2].iter().enumerate() {
        assert_eq!(be.backend_id, 1 + i as u32);
        assert_eq!(
            from_map_addr(be.addr),
            IpAddr::from([203, 0, 113, 1 + i as u8])
        );
        assert_eq!(from_map_port(be.port), 8080);
    }
    assert_eq!(
        master.be[2].backend_id, 0,
        "unused inline entries stay zero"
    );
    let meta: types::svc_meta = maps::get(&m, MapId::Meta, &1u32.to_ne_bytes())
        .unwrap()
        .unwrap();
    assert_eq!(meta.backend_count, 2);
    let members: Vec<(types::member_key, u32)> = maps::read(&m, MapId::Member).unwrap();
    let members: Vec<(u32, u32, u32)> = members
        .iter()
        .map(|(k, v)| (k.svc_id, k.index, *v))
        .collect();
    assert_eq!(members, vec![(1, 0, 1), (1, 1, 2)]);
    let ports: u32 = maps::get(&m, MapId::Ports, &80u32.to_ne_bytes())
        .unwrap()
        .unwrap();
    assert_eq!(ports, types::nxl_port_bits::NXL_PORT_TCP.0);
    let cfg = maps::config(&m).unwrap();
    assert_eq!((cfg.next_svc_id, cfg.next_backend_id), (2, 3));
}

#[test]
fn backends_past_the_inline_ones_get_slots_numbered_from_inline_plus_two() {
    let m = attached(&[]);
    service::add(&m, &clusterip(7), false).unwrap();
    assert_eq!(m.len(MapId::Svc), 1 + 3, "master + slots 5, 6, 7");
    for slot in 5..=7 {
        assert!(m.lookup(MapId::Svc, &vip_key(slot)).unwrap().is_some());
    }
    for slot in 1..=4 {
        assert!(m.lookup(MapId::Svc, &vip_key(slot)).unwrap().is_none());
    }
    assert_eq!(reachable(&m, &vip_key(0)), addrs(&backends(7)));
}

#[test]
fn add_writes_metadata_backends_index_slots_port_bit_and_the_master_last() {
    let m = attached(&[]);
    service::add(&m, &clusterip(6), false).unwrap();
    // Ids are taken first (config); the journal is open around every
    // element written.
    let log: Vec<Op> = m
        .take_log()
        .into_iter()
        .filter(|o| !matches!(o, Op::Write(MapId::Config, ..)))
        .collect();
    assert_eq!(log.first(), Some(&Op::Journal(true)), "{log:?}");
    assert_eq!(log.last(), Some(&Op::Journal(false)), "{log:?}");
    let log: Vec<Op> = log
        .into_iter()
        .filter(|o| !matches!(o, Op::Journal(_)))
        .collect();
    let meta = last(&log, |o| matches!(o, Op::Write(MapId::Meta, ..)));
    let be_first = pos(&log, |o| matches!(o, Op::Write(MapId::Backend, ..)));
    let be_last = last(&log, |o| matches!(o, Op::Write(MapId::Backend, ..)));
    let member_first = pos(&log, |o| matches!(o, Op::Write(MapId::Member, ..)));
    let member_last = last(&log, |o| matches!(o, Op::Write(MapId::Member, ..)));
    let slot_first = pos(&log, |o| {
        matches!(o, Op::Write(MapId::Svc, ..)) && !is_master(o)
    });
    let slot_last = last(&log, |o| {
        matches!(o, Op::Write(MapId::Svc, ..)) && !is_master(o)
    });
    let port = pos(&log, |o| matches!(o, Op::Write(MapId::Ports, ..)));
    let master = pos(&log, is_master);
    assert!(meta < be_first, "{log:?}");
    assert!(be_last < member_first, "{log:?}");
    assert!(member_last < slot_first, "{log:?}");
    assert!(slot_last < port, "{log:?}");
    assert!(port < master, "the prefilter lets the port through first");
    let zeroed = pos(
        &log,
        |o| matches!(o, Op::Write(MapId::SvcCount, k, v) if k == &1u32.to_ne_bytes() && v.iter().all(|b| *b == 0)),
    );
    assert!(
        zeroed < master,
        "the new id's counters start at zero before any connect counts"
    );
    assert_eq!(master, log.len() - 1, "the master entry is the switch");
    assert!(log.iter().all(|o| matches!(o, Op::Write(..))), "no deletes");
}

#[test]
fn service_ids_are_next_fit_within_capacity() {
    let m = attached(&[(MapId::Meta, 3)]);
    let id = |fe: &str| {
        let mut c = spec(SvcType::Clusterip, fe, backends(1));
        c.name = fe.to_string();
        service::add(&m, &c, false).unwrap();
        service::find(&m, &c.frontend, c.proto).unwrap().unwrap()
    };
    assert_eq!(id("198.18.0.1:80"), 1);
    assert_eq!(id("198.18.0.2:80"), 2);
    service::del(
        &m,
        &spec(SvcType::Clusterip, "198.18.0.1:80", vec![]).frontend,
        Proto::Tcp,
    )
    .unwrap();
    // Next fit: 3, then around to the freed 1; then full.
    assert_eq!(id("198.18.0.3:80"), 3);
    assert_eq!(id("198.18.0.4:80"), 1);
    let mut c = spec(SvcType::Clusterip, "198.18.0.5:80", backends(1));
    c.name = "x".into();
    let err = service::add(&m, &c, false).unwrap_err();
    assert!(format!("{err:#}").contains("--max-services"), "{err:#}");
}

#[test]
fn a_second_identical_add_writes_nothing() {
    let m = attached(&[]);
    service::add(&m, &clusterip(6), false).unwrap();
    let before = m.snapshot();
    m.take_log();
    let done = service::add(&m, &clusterip(6), true).unwrap();
    assert_eq!((done.written, done.deleted), (0, 0));
    assert_eq!(m.take_log(), vec![]);
    assert_eq!(m.snapshot(), before);
}

#[test]
fn adding_an_existing_frontend_without_replace_is_refused_and_changes_nothing() {
    let m = attached(&[]);
    service::add(&m, &clusterip(2), false).unwrap();
    let before = m.snapshot();
    let err = service::add(&m, &clusterip(3), false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("exists already") && err.contains("--replace"),
        "{err}"
    );
    assert_eq!(m.snapshot(), before);
}

#[test]
fn replace_keeps_the_ids_of_backends_that_stay() {
    let m = attached(&[]);
    service::add(&m, &clusterip(3), false).unwrap();
    let ids_before: BTreeMap<SocketAddr, u32> = backend_ids(&m);
    let mut new = backends(4);
    new.remove(0); // drop 203.0.113.1, keep .2 .3, add .4
    service::add(
        &m,
        &spec(SvcType::Clusterip, "198.18.0.1:80", new.clone()),
        true,
    )
    .unwrap();
    let ids_after = backend_ids(&m);
    for kept in ["203.0.113.2:8080", "203.0.113.3:8080"] {
        let sa: SocketAddr = kept.parse().unwrap();
        assert_eq!(ids_before[&sa], ids_after[&sa], "{kept} keeps its id");
    }
    assert_eq!(ids_after.len(), 3);
    assert_eq!(ids_after[&"203.0.113.4:8080".parse().unwrap()], 4);
    assert_eq!(reachable(&m, &vip_key(0)), addrs(&new));
}

fn backend_ids(m: &FakeMaps) -> BTreeMap<SocketAddr, u32> {
    maps::read::<u32, types::backend_value>(m, MapId::Backend)
        .unwrap()
        .into_iter()
        .map(|(id, b)| {
            (
                SocketAddr::new(from_map_addr(b.addr), from_map_port(b.port)),
                id,
            )
        })
        .collect()
}

#[test]
fn replace_that_shrinks_switches_the_master_before_deleting_slots_and_backends() {
    let m = attached(&[]);
    service::add(&m, &clusterip(7), false).unwrap();
    m.take_log();
    let done = service::add(&m, &clusterip(2), true).unwrap();
    let log = m.take_log();
    let master = pos(&log, is_master);
    let first_delete = pos(&log, |o| matches!(o, Op::Delete(..)));
    assert!(master < first_delete, "{log:?}");
    let slot_deletes: BTreeSet<Vec<u8>> = log
        .iter()
        .filter_map(|o| match o {
            Op::Delete(MapId::Svc, k) => Some(k.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(slot_deletes, (5..=7).map(vip_key).collect());
    assert_eq!(done.doomed.len(), 5, "the 5 backends that went");
    assert_eq!(m.len(MapId::Backend), 2);
    assert_eq!(m.len(MapId::Member), 2);
    assert_eq!(m.len(MapId::Svc), 1);
    assert_eq!(reachable(&m, &vip_key(0)), addrs(&backends(2)));
}

#[test]
fn delete_removes_the_master_first_then_everything_else() {
    let m = attached(&[]);
    service::add(&m, &clusterip(6), false).unwrap();
    m.take_log();
    let fe = clusterip(0).frontend;
    service::del(&m, &fe, Proto::Tcp).unwrap();
    let log = m.take_log();
    assert_eq!(log.first(), Some(&Op::Journal(true)));
    assert_eq!(log.last(), Some(&Op::Journal(false)));
    let log = &log[1..log.len() - 1];
    assert_eq!(log[0], Op::Delete(MapId::Svc, vip_key(0)), "{log:?}");
    assert!(log.iter().all(|o| matches!(o, Op::Delete(..))), "{log:?}");
    let meta = pos(log, |o| matches!(o, Op::Delete(MapId::Meta, _)));
    let be = last(log, |o| matches!(o, Op::Delete(MapId::Backend, _)));
    assert!(be < meta, "metadata goes last: {log:?}");
    for map in [MapId::Svc, MapId::Backend, MapId::Member, MapId::Meta] {
        assert_eq!(m.len(map), 0, "{map:?} is empty");
    }
}

#[test]
fn deleting_an_unknown_frontend_says_so_and_changes_nothing() {
    let m = attached(&[]);
    service::add(&m, &clusterip(1), false).unwrap();
    let before = m.snapshot();
    let other = spec(SvcType::Clusterip, "198.18.0.2:80", vec![]).frontend;
    let err = service::del(&m, &other, Proto::Tcp)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no such service"), "{err}");
    assert_eq!(m.snapshot(), before);
}

#[test]
fn a_full_backend_map_names_the_option_and_changes_nothing() {
    let m = attached(&[(MapId::Backend, 4)]);
    service::add(&m, &clusterip(2), false).unwrap();
    let before = services(&m);
    let err = service::add(&m, &clusterip(5), true)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("backend map (backend_map) is full (4 entries)")
            && err.contains("nothing was changed")
            && err.contains("--max-backends"),
        "{err}"
    );
    assert_eq!(services(&m), before);
}

#[test]
fn a_full_service_map_names_max_services() {
    let m = attached(&[(MapId::Svc, 3)]);
    let err = service::add(&m, &clusterip(8), false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("service map (svc_map) is full (3 entries)") && err.contains("--max-services"),
        "{err}"
    );
    assert_eq!(m.len(MapId::Svc), 0);
    assert_eq!(m.len(MapId::Backend), 0, "rolled back");
    assert_eq!(m.len(MapId::Meta), 0, "rolled back");
}

/// A write that fails at any point of a replace is undone completely.
#[test]
fn a_write_failing_anywhere_in_a_replace_is_rolled_back() {
    let base = attached(&[]);
    service::add(&base, &clusterip(6), false).unwrap();
    let bigger = spec(SvcType::Clusterip, "198.18.0.1:80", backends(9));
    // How many element writes a clean run makes.
    let clean = base.copy();
    service::add(&clean, &bigger, true).unwrap();
    let writes = clean
        .take_log()
        .iter()
        .filter(|o| matches!(o, Op::Write(..)))
        .count();
    assert!(writes > 10, "{writes}");
    for k in 0..writes {
        let m = base.copy();
        let before = services(&m);
        m.fail_after(k);
        let err = service::add(&m, &bigger, true).unwrap_err();
        assert!(format!("{err:#}").contains("injected failure"), "{err:#}");
        assert_eq!(services(&m), before, "failure at write {k} left a change");
    }
}

/// The maps as a user sees them: per map the number of elements, and what
/// the VIP reaches (ids may differ between runs).
fn view(m: &FakeMaps) -> (Vec<usize>, Option<BTreeSet<SocketAddr>>) {
    let counts = [MapId::Svc, MapId::Backend, MapId::Member, MapId::Meta]
        .iter()
        .map(|id| m.len(*id))
        .collect();
    let vip = m
        .lookup(MapId::Svc, &vip_key(0))
        .unwrap()
        .map(|_| reachable(m, &vip_key(0)));
    (counts, vip)
}

/// Replay a command's first `k` operations onto a copy of `base`: the maps
/// as that command left them when it was killed there.
fn killed_after(base: &FakeMaps, ops: &[Op], k: usize) -> FakeMaps {
    let m = base.copy();
    m.replay(&ops[..k]);
    m
}

/// A replace killed after any of its operations leaves maps whose every
/// reachable backend is one of the old or the new set (slots are overwritten
/// in place before the master switches); the same command run again finds
/// the journal open, repairs, and ends exactly as a clean run: the same
/// elements, the same reachable set, nothing left of the old set.
#[test]
fn a_replace_killed_anywhere_is_repaired_by_running_it_again() {
    let base = attached(&[]);
    service::add(&base, &clusterip(6), false).unwrap();
    let old = addrs(&backends(6));
    let new_bes: Vec<BackendSpec> = backends(10).into_iter().skip(3).collect();
    let new = spec(SvcType::Clusterip, "198.18.0.1:80", new_bes.clone());
    let clean = base.copy();
    service::add(&clean, &new, true).unwrap();
    let ops = clean.take_log();
    // Ids are taken first (config), then the journal brackets every element.
    let open = pos(&ops, |o| *o == Op::Journal(true));
    assert!(
        ops[..open]
            .iter()
            .all(|o| matches!(o, Op::Write(MapId::Config, ..)))
    );
    assert_eq!(ops.last(), Some(&Op::Journal(false)));
    let want = view(&clean);
    assert_eq!(want.1, Some(addrs(&new_bes)));
    for k in 0..=ops.len() {
        let m = killed_after(&base, &ops, k);
        let now = reachable(&m, &vip_key(0));
        assert!(
            now.iter()
                .all(|b| old.contains(b) || new_bes.iter().any(|n| n.addr == *b)),
            "killed after {k}: {now:?}"
        );
        service::add(&m, &new, true).unwrap();
        assert_eq!(view(&m), want, "rerun after a kill at {k}");
        assert!(!m.journal_open().unwrap(), "kill at {k}");
        m.take_log();
        let again = service::add(&m, &new, true).unwrap();
        assert_eq!((again.written, again.deleted), (0, 0), "kill at {k}");
    }
}

/// An add killed anywhere: the same add run again succeeds (the half-added
/// service never switched in, so the repair removes it first) and ends as a
/// clean run; `svc del` instead leaves nothing.
#[test]
fn an_add_killed_anywhere_is_finished_by_the_next_add_or_undone_by_del() {
    let base = attached(&[]);
    let svc = clusterip(7);
    let clean = base.copy();
    service::add(&clean, &svc, false).unwrap();
    let ops = clean.take_log();
    let want = view(&clean);
    let switched = pos(&ops, is_master);
    for k in 0..=ops.len() {
        let m = killed_after(&base, &ops, k);
        if k < ops.len() {
            assert!(
                m.lookup(MapId::Svc, &vip_key(0)).unwrap().is_none()
                    || reachable(&m, &vip_key(0)) == addrs(&backends(7)),
                "a connect never sees a half-written service (kill at {k})"
            );
        }
        let readd = m.copy();
        let res = service::add(&readd, &svc, false);
        if k > switched {
            // The master was written: the service is there, whole.
            assert!(res.unwrap_err().to_string().contains("exists already"));
        } else {
            res.unwrap_or_else(|e| panic!("add again after a kill at {k}: {e:#}"));
        }
        assert_eq!(view(&readd), want, "add again after a kill at {k}");

        let fe = svc.frontend;
        let nothing = view(&m) == (vec![0, 0, 0, 0], None);
        let res = service::del(&m, &fe, Proto::Tcp);
        if nothing {
            // Killed before it wrote any element: there is nothing to delete.
            assert!(res.unwrap_err().to_string().contains("no such service"));
        } else {
            res.unwrap_or_else(|e| panic!("del after a kill at {k}: {e:#}"));
        }
        assert_eq!(
            view(&m),
            (vec![0, 0, 0, 0], None),
            "del after a kill at {k}"
        );
        assert!(!m.journal_open().unwrap());
    }
}

/// A del killed anywhere: the same del run again succeeds and leaves
/// nothing of the service.
#[test]
fn a_del_killed_anywhere_is_finished_by_running_it_again() {
    let base = attached(&[]);
    service::add(&base, &clusterip(7), false).unwrap();
    base.take_log();
    let clean = base.copy();
    let fe = clusterip(0).frontend;
    service::del(&clean, &fe, Proto::Tcp).unwrap();
    let ops = clean.take_log();
    for k in 0..ops.len() {
        let m = killed_after(&base, &ops, k);
        let nothing = view(&m) == (vec![0, 0, 0, 0], None);
        let res = service::del(&m, &fe, Proto::Tcp);
        if nothing {
            // Killed after its last delete, before closing the journal: the
            // service is gone, and the second del says so.
            assert!(res.unwrap_err().to_string().contains("no such service"));
        } else {
            res.unwrap_or_else(|e| panic!("del again after a kill at {k}: {e:#}"));
        }
        assert_eq!(view(&m), (vec![0, 0, 0, 0], None), "kill at {k}");
        assert!(!m.journal_open().unwrap(), "kill at {k}");
    }
}

#[test]
fn strays_of_a_killed_command_are_planned_away_and_live_services_kept() {
    let m = attached(&[]);
    service::add(&m, &clusterip(3), false).unwrap();
    let live = services(&m);
    // What a command killed before its master left: a backend, its index
    // entry and a slot of a service with no metadata.
    let orphan = types::backend_value {
        svc_id: 99,
        ..Default::default()
    };
    maps::put(
        &m,
        MapId::Backend,
        &77u32.to_ne_bytes(),
        bpf::bytes(&orphan),
    )
    .unwrap();
    let mk = types::member_key {
        svc_id: 99,
        index: 0,
    };
    maps::put(&m, MapId::Member, bpf::bytes(&mk), &77u32.to_ne_bytes()).unwrap();
    let slot = svc_key("198.18.0.9".parse().unwrap(), 80, Proto::Tcp, 5);
    let sv = types::svc_value {
        svc_id: 99,
        ..Default::default()
    };
    maps::put(&m, MapId::Svc, bpf::bytes(&slot), bpf::bytes(&sv)).unwrap();

    let mut cur = Current::full(&m).unwrap();
    let mut tx = Tx::default();
    assert_eq!(plan_strays(&mut cur, &mut tx).unwrap(), 3);
    execute(&m, tx).unwrap();
    assert_eq!(services(&m), live);
}

#[test]
fn a_nodeport_answers_on_node_addresses_and_loopback_with_one_service() {
    let m = attached(&[]);
    let np = spec(SvcType::Nodeport, ":30080", backends(2));
    service::add(&m, &np, false).unwrap();
    let masters: Vec<(types::svc_key, types::svc_value)> = maps::read(&m, MapId::Svc).unwrap();
    let fes: BTreeSet<SocketAddr> = masters
        .iter()
        .map(|(k, _)| SocketAddr::new(from_map_addr(k.addr), from_map_port(k.port)))
        .collect();
    assert!(
        fes.contains(&format!("{NODE}:30080").parse().unwrap()),
        "{fes:?}"
    );
    assert!(fes.contains(&"127.0.0.0:30080".parse().unwrap()), "{fes:?}");
    assert!(masters.iter().all(|(k, v)| k.slot == 0 && v.svc_id == 1));
    for (k, _) in &masters {
        assert_eq!(reachable(&m, bpf::bytes(k)), addrs(&backends(2)));
    }
    // Outside the NodePort range: refused before anything is written.
    let before = m.snapshot();
    let err = service::add(&m, &spec(SvcType::Nodeport, ":8080", backends(1)), false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("30000"), "{err}");
    assert_eq!(m.snapshot(), before);
}

#[test]
fn more_backends_than_sixteen_bit_slots_are_refused_before_any_write() {
    let m = attached(&[]);
    let before = m.snapshot();
    let huge = spec(
        SvcType::Clusterip,
        "198.18.0.1:80",
        (0..=crate::model::service::MAX_BACKENDS_PER_SERVICE)
            .map(|i| BackendSpec {
                ..BackendSpec::new(SocketAddr::new(
                    std::net::Ipv4Addr::from(0xc612_0000u32 + i as u32).into(),
                    80,
                ))
            })
            .collect(),
    );
    let err = service::add(&m, &huge, false).unwrap_err().to_string();
    assert!(err.contains("at most 65534"), "{err}");
    assert_eq!(m.snapshot(), before);
}

#[test]
fn terminating_backends_serve_only_when_no_active_one_is_left() {
    let m = attached(&[]);
    let mut bes = backends(3);
    bes[0].terminating = true;
    service::add(
        &m,
        &spec(SvcType::Clusterip, "198.18.0.1:80", bes.clone()),
        false,
    )
    .unwrap();
    let active: BTreeSet<SocketAddr> = bes[1..].iter().map(|b| b.addr).collect();
    assert_eq!(reachable(&m, &vip_key(0)), active);
    for b in &mut bes {
        b.terminating = true;
    }
    service::add(
        &m,
        &spec(SvcType::Clusterip, "198.18.0.1:80", bes.clone()),
        true,
    )
    .unwrap();
    assert_eq!(
        reachable(&m, &vip_key(0)),
        addrs(&bes),
        "fallback to terminating"
    );
    let master: types::svc_value = maps::get(&m, MapId::Svc, &vip_key(0)).unwrap().unwrap();
    assert_ne!(master.flags & svc_flags::FALLBACK, 0);
}

/// Kubernetes' own table for kube-proxy's CategorizeEndpoints
/// (pkg/proxy/topology_test.go, TestCategorizeEndpoints, the hints-only
/// version), replayed through `apply`'s parser and this engine: the
/// backends the ClusterIP's master reaches are the endpoints kube-proxy
/// gives it (its local endpoints with internalTrafficPolicy Local, else its
/// cluster endpoints), and a NodePort, which on-node clients reach with the
/// cluster policy, reaches the cluster endpoints. Node-hint cases follow
/// topologyModeFromHints with PreferSameTrafficDistribution on.
#[test]
fn kube_proxy_categorize_endpoints_cases_reach_the_same_backends() {
    use crate::model::manifest;
    use crate::model::topology::Place;
    use serde_json::json;

    #[derive(Clone, Copy)]
    enum C {
        Ready,
        NotReady,
        Terminating,
    }
    use C::*;
    struct Ep(usize, &'static [&'static str], C, bool);
    struct Case {
        name: &'static str,
        zone: &'static str,
        itp_local: bool,
        etp_local: bool,
        node_port: bool,
        eps: Vec<Ep>,
        /// Node hints per endpoint index (PreferSameNode cases).
        nodes: &'static [(usize, &'static str)],
        clusterip: &'static [usize],
        nodeport: &'static [usize],
    }
    let case = |name, zone, (itp_local, etp_local, node_port), eps, clusterip, nodeport| Case {
        name,
        zone,
        itp_local,
        etp_local,
        node_port,
        eps,
        nodes: &[],
        clusterip,
        nodeport,
    };
    const ZA: &str = "zone-a";
    const ZB: &str = "zone-b";
    const ZC: &str = "zone-c";
    const ZD: &str = "zone-d";
    const CLUSTER: (bool, bool, bool) = (false, false, false);
    let mut cases = vec![
        case(
            "all hinted, some for this zone",
            ZA,
            CLUSTER,
            vec![
                Ep(3, &[ZA], Ready, false),
                Ep(4, &[ZB], Ready, false),
                Ep(5, &[ZC], Ready, false),
                Ep(6, &[ZA], Ready, false),
            ],
            &[3, 6],
            &[],
        ),
        case(
            "eTP Local: topology ignored for local endpoints",
            ZA,
            (false, true, true),
            vec![
                Ep(3, &[ZA], Ready, true),
                Ep(4, &[ZB], Ready, true),
                Ep(5, &[ZC], Ready, false),
                Ep(6, &[ZA], Ready, false),
            ],
            &[3, 6],
            &[3, 6],
        ),
        case(
            "iTP Local: topology ignored for local endpoints",
            ZA,
            (true, false, true),
            vec![
                Ep(3, &[ZA], Ready, true),
                Ep(4, &[ZB], Ready, true),
                Ep(5, &[ZC], Ready, false),
                Ep(6, &[ZA], Ready, false),
            ],
            &[3, 4],
            &[3, 6],
        ),
        case(
            "no zone label",
            "",
            CLUSTER,
            vec![Ep(3, &[ZA], Ready, false)],
            &[3],
            &[],
        ),
        case(
            "node in a different zone",
            ZB,
            CLUSTER,
            vec![Ep(3, &[ZA], Ready, false)],
            &[3],
            &[],
        ),
        case(
            "unready endpoint",
            ZA,
            CLUSTER,
            vec![
                Ep(3, &[ZA], Ready, false),
                Ep(4, &[ZB], Ready, false),
                Ep(5, &[ZC], Ready, false),
                Ep(6, &[ZA], NotReady, false),
            ],
            &[3],
            &[],
        ),
        case(
            "only unready endpoints in this zone",
            ZA,
            CLUSTER,
            vec![
                Ep(3, &[ZA], NotReady, false),
                Ep(4, &[ZB], Ready, false),
                Ep(5, &[ZC], Ready, false),
                Ep(6, &[ZA], NotReady, false),
            ],
            &[4, 5],
            &[],
        ),
        case(
            "missing hints",
            ZA,
            CLUSTER,
            vec![
                Ep(3, &[ZA], Ready, false),
                Ep(4, &[ZB], Ready, false),
                Ep(5, &[], Ready, false),
                Ep(6, &[ZA], Ready, false),
            ],
            &[3, 4, 5, 6],
            &[],
        ),
        case(
            "several hints per endpoint",
            ZC,
            CLUSTER,
            vec![
                Ep(3, &[ZA, ZB, ZC], Ready, false),
                Ep(4, &[ZB, ZC], Ready, false),
                Ep(5, &[ZB, ZD], Ready, false),
                Ep(6, &[ZC], Ready, false),
            ],
            &[3, 4, 6],
            &[],
        ),
        case(
            "conflicting topology and localness",
            ZA,
            (false, true, true),
            vec![
                Ep(0, &[ZA], Ready, true),
                Ep(1, &[ZB], Ready, true),
                Ep(2, &[ZA], Ready, false),
                Ep(3, &[ZB], Ready, false),
            ],
            &[0, 2],
            &[0, 2],
        ),
        case(
            "iTP Local, no endpoints",
            "",
            (true, false, false),
            vec![],
            &[],
            &[],
        ),
        case(
            "iTP Local, all remote",
            "",
            (true, false, false),
            vec![Ep(0, &[], Ready, false), Ep(1, &[], Ready, false)],
            &[],
            &[],
        ),
        case(
            "iTP Local, all local",
            "",
            (true, false, false),
            vec![Ep(0, &[], Ready, true), Ep(1, &[], Ready, true)],
            &[0, 1],
            &[],
        ),
        case(
            "iTP Local, some local",
            "",
            (true, false, false),
            vec![Ep(0, &[], Ready, true), Ep(1, &[], Ready, false)],
            &[0],
            &[],
        ),
        case(
            "Cluster, endpoints not ready",
            "",
            CLUSTER,
            vec![Ep(0, &[], NotReady, false), Ep(1, &[], NotReady, false)],
            &[],
            &[],
        ),
        case(
            "Cluster, some ready",
            "",
            CLUSTER,
            vec![Ep(0, &[], NotReady, false), Ep(1, &[], Ready, false)],
            &[1],
            &[],
        ),
        case(
            "Cluster, all terminating",
            "",
            CLUSTER,
            vec![
                Ep(0, &[], Terminating, true),
                Ep(1, &[], Terminating, false),
            ],
            &[0, 1],
            &[],
        ),
        case(
            "iTP Local, eTP Cluster, some local",
            "",
            (true, false, true),
            vec![Ep(0, &[], Ready, true), Ep(1, &[], Ready, false)],
            &[0],
            &[0, 1],
        ),
        case(
            "iTP Cluster, eTP Local, some local",
            "",
            (false, true, true),
            vec![Ep(0, &[], Ready, true), Ep(1, &[], Ready, false)],
            &[0, 1],
            &[0, 1],
        ),
        case(
            "iTP Local, eTP Local, some local",
            "",
            (true, true, true),
            vec![Ep(0, &[], Ready, true), Ep(1, &[], Ready, false)],
            &[0],
            &[0, 1],
        ),
        case(
            "iTP Local, eTP Local, all remote",
            "",
            (true, true, true),
            vec![Ep(0, &[], Ready, false), Ep(1, &[], Ready, false)],
            &[],
            &[0, 1],
        ),
        case(
            "iTP Local, eTP Local, all remote and terminating",
            "",
            (true, true, true),
            vec![
                Ep(0, &[], Terminating, false),
                Ep(1, &[], Terminating, false),
            ],
            &[],
            &[0, 1],
        ),
        case(
            "iTP Cluster, eTP Local, with terminating endpoints",
            "",
            (false, true, true),
            vec![
                Ep(0, &[], Ready, false),
                Ep(1, &[], NotReady, true),
                Ep(2, &[], Terminating, true),
                Ep(3, &[], Terminating, false),
            ],
            &[0],
            &[0],
        ),
        case(
            "eTP Local ignored if not externally accessible",
            "",
            (false, true, false),
            vec![Ep(0, &[], Ready, false), Ep(1, &[], Ready, true)],
            &[0, 1],
            &[],
        ),
        case(
            "no cluster endpoints for iTP Local internal-only",
            "",
            (true, false, false),
            vec![Ep(0, &[], Ready, false), Ep(1, &[], Ready, true)],
            &[1],
            &[],
        ),
    ];
    let mut same_node = case(
        "node hints, one for this node",
        ZA,
        CLUSTER,
        vec![
            Ep(0, &[ZA], Ready, true),
            Ep(1, &[ZA], Ready, false),
            Ep(2, &[ZB], Ready, false),
        ],
        &[0],
        &[],
    );
    same_node.nodes = &[(0, "node-x"), (1, "node-y"), (2, "node-z")];
    let mut other_node = case(
        "node hints, none for this node: zone hints",
        ZA,
        CLUSTER,
        vec![
            Ep(0, &[ZA], Ready, false),
            Ep(1, &[ZA], Ready, false),
            Ep(2, &[ZB], Ready, false),
        ],
        &[0, 1],
        &[],
    );
    other_node.nodes = &[(0, "node-w"), (1, "node-y"), (2, "node-z")];
    let mut some_node = case(
        "node hints on some: zone hints",
        ZA,
        CLUSTER,
        vec![
            Ep(0, &[ZA], Ready, true),
            Ep(1, &[ZA], Ready, false),
            Ep(2, &[ZB], Ready, false),
        ],
        &[0, 1],
        &[],
    );
    some_node.nodes = &[(0, "node-x")];
    cases.extend([same_node, other_node, some_node]);

    let ip = |i: usize| format!("203.0.113.{}", i + 1);
    for tc in &cases {
        let mut svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "ns"},
            "spec": {"type": if tc.node_port { "NodePort" } else { "ClusterIP" },
                     "clusterIP": "198.18.0.1",
                     "internalTrafficPolicy": if tc.itp_local { "Local" } else { "Cluster" },
                     "externalTrafficPolicy": if tc.etp_local { "Local" } else { "Cluster" },
                     "ports": [{"name": "http", "port": 80}]}});
        if tc.node_port {
            svc["spec"]["ports"][0]["nodePort"] = json!(30080);
        }
        let endpoints: Vec<serde_json::Value> = tc
            .eps
            .iter()
            .map(|Ep(i, zones, cond, local)| {
                let (ready, serving, terminating) = match cond {
                    Ready => (true, true, false),
                    NotReady => (false, false, false),
                    Terminating => (false, true, true),
                };
                let mut e = json!({"addresses": [ip(*i)], "nodeName": if *local { "node-x" } else { "node-y" },
                    "conditions": {"ready": ready, "serving": serving, "terminating": terminating}});
                if !zones.is_empty() {
                    e["hints"] = json!({"forZones": zones.iter().map(|z| json!({"name": z})).collect::<Vec<_>>()});
                }
                if let Some((_, n)) = tc.nodes.iter().find(|(j, _)| j == i) {
                    e["hints"]["forNodes"] = json!([{"name": n}]);
                }
                e
            })
            .collect();
        let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-1", "namespace": "ns", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 80}], "endpoints": endpoints});
        let list = json!({"apiVersion": "v1", "kind": "List", "items": [svc, slice]});
        let place = Place {
            node: "node-x",
            zone: tc.zone,
        };
        let parsed = manifest::parse(&list.to_string(), place).unwrap();
        let m = attached(&[]);
        for e in &parsed.entries {
            service::add(&m, &e.spec, false).unwrap_or_else(|err| panic!("{}: {err:#}", tc.name));
        }
        let want = |idx: &[usize]| -> BTreeSet<SocketAddr> {
            idx.iter()
                .map(|i| SocketAddr::new(ip(*i).parse().unwrap(), 80))
                .collect()
        };
        assert_eq!(
            reachable(&m, &vip_key(0)),
            want(tc.clusterip),
            "{}: ClusterIP",
            tc.name
        );
        if tc.node_port {
            let np = key_bytes(&svc_key(NODE.parse().unwrap(), 30080, Proto::Tcp, 0)).to_vec();
            assert_eq!(
                reachable(&m, &np),
                want(tc.nodeport),
                "{}: NodePort",
                tc.name
            );
        }
    }
}
