//! The write engine: how changes to services reach the maps.
//!
//! A command reads what the maps hold ([`Current`]), plans every element it
//! must write or delete into one [`Tx`], and only then touches the maps. The
//! plan is the same for `svc add`, `svc del`, `node refresh` and `apply`, so
//! they share one write order (see the top of src/bpf/netnsxl.bpf.c):
//!
//! 1. metadata, 2. backends, 3. slots, 4. master entries (the switch),
//! 5. master entries of frontends that go, 6. stale slots, 7. backends that
//!    go, 8. metadata of services that go, 9. affinity to what went.
//!
//! Phases 1-4 only add or overwrite, and the datapath reaches a service only
//! through its master entry, so if any of them fails (a full map) every
//! element written so far is put back as it was: a failed command changes
//! nothing. Phases 5-9 only delete. An element whose new value equals what
//! the map holds is not written at all, which is what makes `apply`
//! idempotent and lets a re-run repair what a killed command left.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use crate::datapath::maps::{self, MapId, Maps, WriteError};
use anyhow::{Context, Result, anyhow, bail};

use crate::bpf::{self, backend_flags, svc_flags, types};
use crate::model::addr::{BackendSpec, Doomed, Proto, to_map_addr, to_map_port};
use crate::model::service::{self, Frontend, ServiceSpec};

/// Backends a master entry holds itself (NXL_INLINE).
pub const INLINE: usize = types::nxl_limits::NXL_INLINE.0 as usize;

/// The first slot number at or after `n` that exists as its own entry:
/// backend i >= INLINE is in slot i + 1.
fn first_slot(n: u16) -> u16 {
    n.max(INLINE as u16 + 1)
}

pub type SvcKeyBytes = [u8; std::mem::size_of::<types::svc_key>()];

pub fn key_bytes(k: &types::svc_key) -> SvcKeyBytes {
    bpf::bytes(k).try_into().expect("svc_key size")
}

pub fn svc_key(addr: IpAddr, port: u16, proto: Proto, slot: u16) -> types::svc_key {
    types::svc_key {
        addr: to_map_addr(addr),
        port: to_map_port(port),
        proto: proto.number(),
        slot,
        ..Default::default()
    }
}

/// What the maps hold, as far as a command needs to know it: everything
/// (`full`, for apply, list and refresh), or one service with its svc_map
/// elements looked up on demand (svc add and del).
pub struct Current<'a> {
    pub maps: &'a dyn Maps,
    full: bool,
    pub metas: BTreeMap<u32, types::svc_meta>,
    pub backends: HashMap<u32, Vec<(u32, types::backend_value)>>,
    svc: HashMap<SvcKeyBytes, Option<types::svc_value>>,
    /// member_map: (svc_id, index) -> backend id, as far as read.
    members: HashMap<(u32, u32), u32>,
    pub node_addrs: Vec<IpAddr>,
}

impl<'a> Current<'a> {
    pub fn full(maps: &'a dyn Maps) -> Result<Current<'a>> {
        let mut backends: HashMap<u32, Vec<(u32, types::backend_value)>> = HashMap::new();
        for (id, b) in maps::read::<u32, types::backend_value>(maps, MapId::Backend)? {
            backends.entry(b.svc_id).or_default().push((id, b));
        }
        for v in backends.values_mut() {
            v.sort_by_key(|(id, _)| *id);
        }
        let svc = maps::read::<types::svc_key, types::svc_value>(maps, MapId::Svc)?
            .into_iter()
            .map(|(k, v)| (key_bytes(&k), Some(v)))
            .collect();
        let members = maps::read::<types::member_key, u32>(maps, MapId::Member)?
            .into_iter()
            .map(|(k, v)| ((k.svc_id, k.index), v))
            .collect();
        Ok(Current {
            maps,
            full: true,
            metas: maps::read::<u32, types::svc_meta>(maps, MapId::Meta)?
                .into_iter()
                .collect(),
            backends,
            svc,
            members,
            node_addrs: maps::node_addrs(maps)?,
        })
    }

    /// Nothing read yet: elements are looked up as they are asked for.
    pub fn lazy(maps: &'a dyn Maps) -> Result<Current<'a>> {
        Ok(Current {
            maps,
            full: false,
            metas: BTreeMap::new(),
            backends: HashMap::new(),
            svc: HashMap::new(),
            members: HashMap::new(),
            node_addrs: maps::node_addrs(maps)?,
        })
    }

    /// Only the service that owns `identity` (if any) is read.
    pub fn scoped(maps: &'a dyn Maps, identity: &Frontend, proto: Proto) -> Result<Current<'a>> {
        let mut cur = Current::lazy(maps)?;
        if let Some(m) = cur.svc_get(&svc_key(identity.ip, identity.port, proto, 0))? {
            cur.load_service(m.svc_id)?;
        }
        Ok(cur)
    }

    /// Read one service's metadata and backends (scoped mode).
    pub fn load_service(&mut self, svc_id: u32) -> Result<()> {
        if self.full || self.metas.contains_key(&svc_id) {
            return Ok(());
        }
        if let Some(m) = maps::get(self.maps, MapId::Meta, &svc_id.to_ne_bytes())? {
            self.metas.insert(svc_id, m);
        }
        // The backends by index (member_map): a few lookups. If the index
        // does not add up (a killed command), scan backend_map instead.
        let count = self.metas.get(&svc_id).map_or(0, |m| m.backend_count);
        let mut bes = Vec::with_capacity(count as usize);
        let mut whole = true;
        for i in 0..count {
            let key = types::member_key { svc_id, index: i };
            let Some(id) = maps::get::<u32>(self.maps, MapId::Member, bpf::bytes(&key))? else {
                whole = false;
                break;
            };
            self.members.insert((svc_id, i), id);
            match maps::get::<types::backend_value>(self.maps, MapId::Backend, &id.to_ne_bytes())? {
                Some(b) => {
                    if b.svc_id != svc_id {
                        whole = false;
                        break;
                    }
                    bes.push((id, b));
                }
                None => {
                    whole = false;
                    break;
                }
            }
        }
        if !whole {
            bes = maps::read::<u32, types::backend_value>(self.maps, MapId::Backend)?
                .into_iter()
                .filter(|(_, b)| b.svc_id == svc_id)
                .collect();
        }
        // Index entries past the count, left by a killed command, are
        // found and dropped by the next apply (plan_strays).
        bes.sort_by_key(|(id, _)| *id);
        bes.dedup_by_key(|(id, _)| *id);
        self.backends.insert(svc_id, bes);
        Ok(())
    }

    /// A member_map element as the maps hold it (looked up on demand).
    pub fn member_get(&mut self, svc_id: u32, index: u32) -> Result<Option<u32>> {
        if let Some(v) = self.members.get(&(svc_id, index)) {
            return Ok(Some(*v));
        }
        if self.full {
            return Ok(None);
        }
        let key = types::member_key { svc_id, index };
        let v = maps::get::<u32>(self.maps, MapId::Member, bpf::bytes(&key))?;
        if let Some(id) = v {
            self.members.insert((svc_id, index), id);
        }
        Ok(v)
    }

    pub fn svc_get(&mut self, key: &types::svc_key) -> Result<Option<types::svc_value>> {
        let kb = key_bytes(key);
        if let Some(v) = self.svc.get(&kb) {
            return Ok(*v);
        }
        if self.full {
            return Ok(None);
        }
        let v = maps::get::<types::svc_value>(self.maps, MapId::Svc, &kb)?;
        self.svc.insert(kb, v);
        Ok(v)
    }

    pub fn master(&mut self, f: &Frontend, proto: Proto) -> Result<Option<types::svc_value>> {
        self.svc_get(&svc_key(f.ip, f.port, proto, 0))
    }

    pub fn backends_of(&self, svc_id: u32) -> &[(u32, types::backend_value)] {
        self.backends.get(&svc_id).map_or(&[], Vec::as_slice)
    }

    /// The spec a service was written with.
    pub fn spec(&self, svc_id: u32) -> Result<Option<ServiceSpec>> {
        match self.metas.get(&svc_id) {
            Some(m) => service::spec_from(m, self.backends_of(svc_id)).map(Some),
            None => Ok(None),
        }
    }

    /// Every svc_map element (full mode only).
    pub fn svc_entries(&self) -> impl Iterator<Item = (types::svc_key, types::svc_value)> + '_ {
        self.svc.iter().filter_map(|(k, v)| {
            let key: types::svc_key = bpf::from_bytes(k).ok()?;
            v.map(|v| (key, v))
        })
    }
}

/// One planned change to the maps. Priors are what the maps held before, so
/// a failed command can put them back.
#[derive(Default)]
pub struct Tx {
    meta: Vec<(u32, types::svc_meta, Option<types::svc_meta>)>,
    backends: Vec<(u32, types::backend_value, Option<types::backend_value>)>,
    members: Vec<(types::member_key, u32, Option<u32>)>,
    slots: Vec<(SvcKeyBytes, types::svc_value, Option<types::svc_value>)>,
    masters: Vec<(SvcKeyBytes, types::svc_value, Option<types::svc_value>)>,
    del_masters: Vec<SvcKeyBytes>,
    del_slots: Vec<SvcKeyBytes>,
    del_backends: Vec<u32>,
    del_members: Vec<types::member_key>,
    del_meta: Vec<u32>,
    /// (port, protocol) of every master entry written: their port_map bits
    /// are set before the masters are.
    ports: HashSet<(u16, u8)>,
    /// Recompute port_map from the final masters (full mode only).
    exact_ports: Option<HashSet<(u16, u8)>>,
    /// Services whose affinity entries all go.
    drop_affinity_svcs: HashSet<u32>,
    /// Backends whose affinity entries go.
    drop_affinity_backends: HashSet<u32>,
    /// Services deleted by this change: their frontends may be taken over.
    deleting: HashSet<u32>,
    /// Backends this change removes, for the stale-socket pass.
    doomed: Vec<Doomed>,
}

impl Tx {
    /// Let other services of this change take over `svc_id`'s frontends
    /// (apply rewrites it too, so it lets go of them in the same change).
    pub fn release(&mut self, svc_id: u32) {
        self.deleting.insert(svc_id);
    }

    /// Every svc_map key this change writes (slots and masters).
    fn written_svc_keys(&self) -> HashSet<SvcKeyBytes> {
        self.slots
            .iter()
            .map(|(k, _, _)| *k)
            .chain(self.masters.iter().map(|(k, _, _)| *k))
            .collect()
    }

    fn len(&self) -> usize {
        self.meta.len()
            + self.backends.len()
            + self.members.len()
            + self.del_members.len()
            + self.slots.len()
            + self.masters.len()
            + self.del_masters.len()
            + self.del_slots.len()
            + self.del_backends.len()
            + self.del_meta.len()
    }
}

/// A service as the datapath will see it: backend ids and values, and the
/// frontends with their masters and slots.
struct Layout {
    backends: Vec<(u32, types::backend_value)>,
    fes: Vec<Frontend>,
}

fn backend_value(b: &BackendSpec, svc_id: u32) -> types::backend_value {
    let mut flags = 0;
    if b.terminating {
        flags |= backend_flags::TERMINATING;
    }
    if b.local {
        flags |= backend_flags::LOCAL;
    }
    if b.off_topology {
        flags |= backend_flags::OFF_TOPOLOGY;
    }
    types::backend_value {
        addr: to_map_addr(b.addr.ip()),
        port: to_map_port(b.addr.port()),
        flags,
        svc_id,
        ..Default::default()
    }
}

fn same_backend(o: &types::backend_value, b: &BackendSpec) -> bool {
    o.addr == to_map_addr(b.addr.ip()) && o.port == to_map_port(b.addr.port())
}

/// How many backend ids a write of `spec` over `old` needs.
pub fn fresh_backends(spec: &ServiceSpec, old: &[(u32, types::backend_value)]) -> u32 {
    spec.backends
        .iter()
        .filter(|b| !old.iter().any(|(_, o)| same_backend(o, b)))
        .count() as u32
}

/// The backends new connections to one frontend may use: active ones, or the
/// terminating ones when no active one is left (Kubernetes' serving-terminating
/// fallback); node-local ones only, for internalTrafficPolicy Local; for a
/// cluster-wide frontend, not the ones topology leaves out (kube-proxy's
/// CategorizeEndpoints: only ready endpoints are ever left out, so the
/// terminating fallback is whole).
fn usable(backends: &[(u32, types::backend_value)], local_only: bool) -> (Vec<u32>, bool) {
    let eligible: Vec<&(u32, types::backend_value)> = backends
        .iter()
        .filter(|(_, b)| {
            if local_only {
                b.flags & backend_flags::LOCAL != 0
            } else {
                b.flags & backend_flags::OFF_TOPOLOGY == 0
            }
        })
        .collect();
    let active: Vec<u32> = eligible
        .iter()
        .filter(|(_, b)| b.flags & backend_flags::TERMINATING == 0)
        .map(|(id, _)| *id)
        .collect();
    if !active.is_empty() {
        return (active, false);
    }
    (
        eligible.iter().map(|(id, _)| *id).collect(),
        !eligible.is_empty(),
    )
}

/// Ids for backends, handed out in order from a block allocated up front.
pub struct Ids {
    next: u32,
    end: u32,
}

impl Ids {
    pub fn alloc(maps: &dyn Maps, n: u32) -> Result<Ids> {
        if n == 0 {
            return Ok(Ids { next: 0, end: 0 });
        }
        let first = maps::alloc_backend_ids(maps, n)?;
        Ok(Ids {
            next: first,
            end: first + n,
        })
    }
    /// Ids as `alloc` would hand them out, without taking them (dry run).
    pub fn dry(next: u32, n: u32) -> Ids {
        let next = next.max(1);
        Ids {
            next,
            end: next.saturating_add(n),
        }
    }

    fn take(&mut self) -> Result<u32> {
        if self.next >= self.end {
            bail!("internal error: backend id block exhausted");
        }
        self.next += 1;
        Ok(self.next - 1)
    }
}

/// Refuse frontends another service answers on (unless this change deletes it).
pub fn check_conflicts(cur: &mut Current, tx: &Tx, spec: &ServiceSpec, svc_id: u32) -> Result<()> {
    let proto = spec.proto;
    for f in service::expand(spec, &cur.node_addrs) {
        if let Some(m) = cur.master(&f, proto)?
            && m.svc_id != svc_id
            && !tx.deleting.contains(&m.svc_id)
        {
            cur.load_service(m.svc_id)?;
            let other = cur
                .spec(m.svc_id)?
                .map(|s| format!("{} {}", s.svc_type.name(), s.frontend.display()))
                .unwrap_or_else(|| format!("service {}", m.svc_id));
            bail!(
                "frontend {}/{proto} belongs to {other} already; delete that one or choose another address or port",
                f.display()
            );
        }
    }
    Ok(())
}

/// Plan writing `spec` as service `svc_id`, over what it has now (nothing,
/// for a new service). Returns whether anything differs from the maps.
pub fn plan_write(
    cur: &mut Current,
    tx: &mut Tx,
    spec: &ServiceSpec,
    svc_id: u32,
    ids: &mut Ids,
) -> Result<bool> {
    let before = tx.len();
    let proto = spec.proto;
    let fes = service::expand(spec, &cur.node_addrs);
    let old_spec = cur.spec(svc_id)?;
    let old_backends = cur.backends_of(svc_id).to_vec();

    check_conflicts(cur, tx, spec, svc_id)?;
    // ServiceSpec::validate caps the backends (MAX_BACKENDS_PER_SERVICE), so
    // the 16-bit slot numbers below cannot wrap onto the master entry.

    // Keep the id of every backend that stays, so affinity to it survives.
    let mut layout = Layout {
        backends: Vec::with_capacity(spec.backends.len()),
        fes,
    };
    for b in &spec.backends {
        let id = match old_backends.iter().find(|(_, o)| same_backend(o, b)) {
            Some((id, _)) => *id,
            None => ids.take()?,
        };
        layout.backends.push((id, backend_value(b, svc_id)));
    }
    // Slots in backend-id order: one layout for one set, however the set was
    // written down, so a plan from the maps matches a plan from a file.
    layout.backends.sort_by_key(|(id, _)| *id);

    let meta = service::meta_of(spec);
    let prior_meta = cur.metas.get(&svc_id).copied();
    if prior_meta.map(|m| bpf::bytes(&m) != bpf::bytes(&meta)) != Some(false) {
        tx.meta.push((svc_id, meta, prior_meta));
    }
    for (id, b) in &layout.backends {
        let prior = old_backends.iter().find(|(o, _)| o == id).map(|(_, v)| *v);
        if prior.map(|p| bpf::bytes(&p) != bpf::bytes(b)) != Some(false) {
            tx.backends.push((*id, *b, prior));
        }
    }
    for (i, (id, _)) in layout.backends.iter().enumerate() {
        let prior = cur.member_get(svc_id, i as u32)?;
        if prior != Some(*id) {
            tx.members.push((
                types::member_key {
                    svc_id,
                    index: i as u32,
                },
                *id,
                prior,
            ));
        }
    }
    let old_count = prior_meta.map_or(0, |m| m.backend_count);
    for i in layout.backends.len() as u32..old_count {
        tx.del_members.push(types::member_key { svc_id, index: i });
    }

    for f in &layout.fes {
        let local_only = f.flags & svc_flags::LOCAL_ONLY != 0;
        let (slots, fallback) = usable(&layout.backends, local_only);
        let mut flags = f.flags;
        if spec.affinity_timeout.is_some() {
            flags |= svc_flags::AFFINITY;
        }
        if fallback {
            flags |= svc_flags::FALLBACK;
        }
        let prior_master = cur.master(f, proto)?;
        let entry = |id: u32| -> types::svc_backend {
            let be = layout
                .backends
                .iter()
                .find(|(b, _)| *b == id)
                .map(|(_, v)| *v)
                .unwrap_or_default();
            types::svc_backend {
                backend_id: id,
                addr: be.addr,
                port: be.port,
                ..Default::default()
            }
        };
        for (i, id) in slots.iter().enumerate().skip(INLINE) {
            let slot = u16::try_from(i + 1).context("slot number past 16 bits")?;
            let key = svc_key(f.ip, f.port, proto, slot);
            let mut val = types::svc_value {
                svc_id,
                ..Default::default()
            };
            val.be[0] = entry(*id);
            let prior = cur.svc_get(&key)?;
            if prior.map(|p| bpf::bytes(&p) != bpf::bytes(&val)) != Some(false) {
                tx.slots.push((key_bytes(&key), val, prior));
            }
        }
        let mut master = types::svc_value {
            svc_id,
            count: u16::try_from(slots.len()).context("backend count past 16 bits")?,
            flags,
            affinity_timeout: spec.affinity_timeout.unwrap_or(0),
            ..Default::default()
        };
        for (i, id) in slots.iter().take(INLINE).enumerate() {
            master.be[i] = entry(*id);
        }
        let key = svc_key(f.ip, f.port, proto, 0);
        if prior_master.map(|p| bpf::bytes(&p) != bpf::bytes(&master)) != Some(false) {
            tx.masters.push((key_bytes(&key), master, prior_master));
        }
        tx.ports.insert((f.port, proto.number()));
        // Slots past the new count: stale once the master is written.
        let old_count = prior_master.map_or(0, |m| m.count);
        for slot in first_slot(master.count + 1)..=old_count {
            let key = svc_key(f.ip, f.port, proto, slot);
            if cur.svc_get(&key)?.is_some() {
                tx.del_slots.push(key_bytes(&key));
            }
        }
    }

    // Frontends the service no longer answers on.
    if let Some(old) = &old_spec {
        for f in service::expand(old, &cur.node_addrs) {
            if layout.fes.iter().any(|n| n.ip == f.ip && n.port == f.port) {
                continue;
            }
            plan_frontend_delete(cur, tx, &f, old.proto, svc_id)?;
        }
    }

    for (id, b) in &old_backends {
        if !layout.backends.iter().any(|(n, _)| n == id) {
            tx.del_backends.push(*id);
            tx.drop_affinity_backends.insert(*id);
            tx.doomed.push(doomed(b, proto));
        }
    }
    if spec.affinity_timeout.is_none() && old_spec.is_some_and(|o| o.affinity_timeout.is_some()) {
        tx.drop_affinity_svcs.insert(svc_id);
    }
    Ok(tx.len() != before)
}

fn doomed(b: &types::backend_value, proto: Proto) -> Doomed {
    Doomed {
        addr: std::net::SocketAddr::new(
            crate::model::addr::from_map_addr(b.addr),
            crate::model::addr::from_map_port(b.port),
        ),
        proto,
    }
}

/// Plan removing one frontend of service `svc_id`: master first, then slots.
fn plan_frontend_delete(
    cur: &mut Current,
    tx: &mut Tx,
    f: &Frontend,
    proto: Proto,
    svc_id: u32,
) -> Result<()> {
    let key = svc_key(f.ip, f.port, proto, 0);
    let Some(m) = cur.svc_get(&key)? else {
        return Ok(());
    };
    if m.svc_id != svc_id {
        return Ok(());
    }
    tx.del_masters.push(key_bytes(&key));
    for slot in first_slot(1)..=m.count {
        tx.del_slots
            .push(key_bytes(&svc_key(f.ip, f.port, proto, slot)));
    }
    Ok(())
}

/// Plan deleting a service: every frontend, backend, affinity entry and its
/// metadata.
pub fn plan_delete(cur: &mut Current, tx: &mut Tx, svc_id: u32) -> Result<()> {
    tx.deleting.insert(svc_id);
    if let Some(spec) = cur.spec(svc_id)? {
        for f in service::expand(&spec, &cur.node_addrs) {
            plan_frontend_delete(cur, tx, &f, spec.proto, svc_id)?;
        }
        let id = service::identity(&spec.frontend);
        plan_frontend_delete(cur, tx, &id, spec.proto, svc_id)?;
    }
    let proto = cur.spec(svc_id)?.map(|s| s.proto);
    for (id, b) in cur.backends_of(svc_id).to_vec() {
        tx.del_backends.push(id);
        if let Some(p) = proto {
            tx.doomed.push(doomed(&b, p));
        }
    }
    tx.drop_affinity_svcs.insert(svc_id);
    if let Some(m) = cur.metas.get(&svc_id) {
        for index in 0..m.backend_count {
            tx.del_members.push(types::member_key { svc_id, index });
        }
        tx.del_meta.push(svc_id);
    }
    Ok(())
}

/// Plan removing what no service owns (full mode, after every other plan):
/// elements a killed command left behind. Returns how many.
pub fn plan_strays(cur: &mut Current, tx: &mut Tx) -> Result<usize> {
    let before = tx.len();
    let live: HashSet<u32> = cur
        .metas
        .keys()
        .copied()
        .chain(tx.meta.iter().map(|(id, _, _)| *id))
        .filter(|id| !tx.del_meta.contains(id))
        .collect();
    let written = tx.written_svc_keys();
    let gone: HashSet<SvcKeyBytes> = tx
        .del_masters
        .iter()
        .chain(tx.del_slots.iter())
        .copied()
        .collect();
    // The master each frontend will have once the plan has run.
    let mut masters: HashMap<(IpAddr, u16, u8), types::svc_value> = HashMap::new();
    let entries: Vec<(types::svc_key, types::svc_value)> = cur.svc_entries().collect();
    let final_of = |k: &SvcKeyBytes, v: types::svc_value| -> Option<types::svc_value> {
        if let Some((_, nv, _)) = tx.masters.iter().find(|(wk, _, _)| wk == k) {
            return Some(*nv);
        }
        (!gone.contains(k)).then_some(v)
    };
    for (k, v) in &entries {
        if k.slot == 0
            && let Some(fv) = final_of(&key_bytes(k), *v)
        {
            masters.insert(
                (crate::model::addr::from_map_addr(k.addr), k.port, k.proto),
                fv,
            );
        }
    }
    for (k, v, _) in &tx.masters {
        let key: types::svc_key = bpf::from_bytes(k)?;
        masters.insert(
            (
                crate::model::addr::from_map_addr(key.addr),
                key.port,
                key.proto,
            ),
            *v,
        );
    }
    for (k, v) in entries {
        let kb = key_bytes(&k);
        if written.contains(&kb) || gone.contains(&kb) {
            continue;
        }
        let stray = if k.slot == 0 {
            !live.contains(&v.svc_id)
        } else {
            match masters.get(&(crate::model::addr::from_map_addr(k.addr), k.port, k.proto)) {
                Some(m) => {
                    m.svc_id != v.svc_id
                        || k.slot > m.count
                        || (k.slot as usize) <= INLINE
                        || !live.contains(&m.svc_id)
                }
                None => true,
            }
        };
        if stray {
            if k.slot == 0 {
                tx.del_masters.push(kb);
            } else {
                tx.del_slots.push(kb);
            }
        }
    }
    // Index entries of services that go, or past their service's count.
    let counts: HashMap<u32, u32> = cur
        .metas
        .iter()
        .map(|(id, m)| (*id, m.backend_count))
        .chain(tx.meta.iter().map(|(id, m, _)| (*id, m.backend_count)))
        .collect();
    let gone_members: HashSet<(u32, u32)> =
        tx.del_members.iter().map(|k| (k.svc_id, k.index)).collect();
    for &(svc_id, index) in cur.members.keys() {
        let keep = live.contains(&svc_id) && counts.get(&svc_id).is_some_and(|c| index < *c);
        if !keep && !gone_members.contains(&(svc_id, index)) {
            tx.del_members.push(types::member_key { svc_id, index });
        }
    }
    // port_map exactly as the final masters need it.
    let mut ports = HashSet::new();
    for ((_, port, proto), m) in masters.iter() {
        if live.contains(&m.svc_id) {
            ports.insert((crate::model::addr::from_map_port(*port), *proto));
        }
    }
    tx.exact_ports = Some(ports);
    let deleted_backends: HashSet<u32> = tx.del_backends.iter().copied().collect();
    for (svc_id, bes) in &cur.backends {
        if !live.contains(svc_id) {
            for (id, _) in bes {
                if !deleted_backends.contains(id) {
                    tx.del_backends.push(*id);
                }
            }
        }
    }
    Ok(tx.len() - before)
}

fn full_error(maps: &dyn Maps, map: MapId, what: &str) -> anyhow::Error {
    anyhow!(
        "{what} is full ({} entries); nothing was changed; attach with a larger {} (netnsxl detach, netnsxl attach ... {} N, then apply the services again)",
        maps.max_entries(map),
        map.sized_by(),
        map.sized_by()
    )
}

/// What a failed command puts back.
struct Undo {
    map: MapId,
    key: Vec<u8>,
    prior: Option<Vec<u8>>,
}

/// One element to write: key, new value, the value it replaces.
type Elem<K> = (K, Vec<u8>, Option<Vec<u8>>);

fn write_phase<K: AsRef<[u8]>>(
    maps: &dyn Maps,
    map: MapId,
    what: &str,
    elems: &[Elem<K>],
    undo: &mut Vec<Undo>,
) -> Result<()> {
    if elems.is_empty() {
        return Ok(());
    }
    // Recorded before the write: a batch that fails half-way may have
    // written some of its elements.
    for (k, _, prior) in elems {
        undo.push(Undo {
            map,
            key: k.as_ref().to_vec(),
            prior: prior.clone(),
        });
    }
    let pairs: Vec<(&[u8], &[u8])> = elems
        .iter()
        .map(|(k, v, _)| (k.as_ref(), v.as_slice()))
        .collect();
    maps.update(map, &pairs).map_err(|e| match e {
        WriteError::Full => full_error(maps, map, what),
        WriteError::Other(e) => e.context(format!("write {what}")),
    })
}

/// Put back what a failed change wrote; whether every write back worked.
fn rollback(maps: &dyn Maps, undo: Vec<Undo>) -> bool {
    let mut whole = true;
    for u in undo.into_iter().rev() {
        match &u.prior {
            Some(v) => whole &= maps.update(u.map, &[(&u.key, v)]).is_ok(),
            None => maps.delete(u.map, &[&u.key]),
        }
    }
    whole
}

fn delete_all(maps: &dyn Maps, map: MapId, keys: &[Vec<u8>]) {
    if keys.is_empty() {
        return;
    }
    let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    maps.delete(map, &keys);
}

/// Elements keyed by a u32 id, as the bytes a write phase takes.
fn by_id<T: plain::Plain>(elems: &[(u32, T, Option<T>)]) -> Vec<Elem<[u8; 4]>> {
    elems
        .iter()
        .map(|(id, v, p)| {
            (
                id.to_ne_bytes(),
                bpf::bytes(v).to_vec(),
                p.as_ref().map(|p| bpf::bytes(p).to_vec()),
            )
        })
        .collect()
}

/// Statistics of one executed change.
#[derive(Debug, Default)]
pub struct Done {
    pub written: usize,
    pub deleted: usize,
    /// Backends that went (sockets connected to them may be stale).
    pub doomed: Vec<Doomed>,
}

/// Run a planned change in the order described at the top of this file.
pub fn execute(maps: &dyn Maps, tx: Tx) -> Result<Done> {
    let written = tx.written_svc_keys();
    let meta = by_id(&tx.meta);
    let backends = by_id(&tx.backends);
    let svc = |elems: &[(SvcKeyBytes, types::svc_value, Option<types::svc_value>)]| {
        elems
            .iter()
            .map(|(k, v, p)| {
                (
                    *k,
                    bpf::bytes(v).to_vec(),
                    p.map(|p| bpf::bytes(&p).to_vec()),
                )
            })
            .collect::<Vec<_>>()
    };
    let slots = svc(&tx.slots);
    let masters = svc(&tx.masters);
    let members: Vec<_> = tx
        .members
        .iter()
        .map(|(k, v, p)| {
            (
                bpf::bytes(k).to_vec(),
                v.to_ne_bytes().to_vec(),
                p.map(|p| p.to_ne_bytes().to_vec()),
            )
        })
        .collect();

    // The journal is open while anything is written: a command that dies
    // in between leaves it open, and the next one repairs first.
    let busy = tx.len() > 0
        || tx.exact_ports.is_some()
        || !tx.drop_affinity_svcs.is_empty()
        || !tx.drop_affinity_backends.is_empty();
    if busy {
        maps.journal(true)?;
    }
    let mut undo = Vec::new();
    let res = (|| {
        // A new service's id may have been another's: its counters start
        // at zero, before any master entry can count into them.
        let fresh: Vec<[u8; 4]> = tx
            .meta
            .iter()
            .filter(|(_, _, prev)| prev.is_none())
            .map(|(id, _, _)| id.to_ne_bytes())
            .collect();
        let fresh: Vec<&[u8]> = fresh.iter().map(|k| k.as_slice()).collect();
        maps.zero(MapId::SvcCount, &fresh)?;
        maps.delete(MapId::SvcRefused, &fresh);
        write_phase(
            maps,
            MapId::Meta,
            "the service metadata map (meta_map)",
            &meta,
            &mut undo,
        )?;
        write_phase(
            maps,
            MapId::Backend,
            "the backend map (backend_map)",
            &backends,
            &mut undo,
        )?;
        write_phase(
            maps,
            MapId::Member,
            "the backend index (member_map)",
            &members,
            &mut undo,
        )?;
        write_phase(
            maps,
            MapId::Svc,
            "the service map (svc_map)",
            &slots,
            &mut undo,
        )?;
        // Before any master on a port exists, the prefilter lets it through.
        set_port_bits(maps, &tx.ports)?;
        write_phase(
            maps,
            MapId::Svc,
            "the service map (svc_map)",
            &masters,
            &mut undo,
        )
    })();
    if let Err(e) = res {
        // Put back as it was: then nothing is half done.
        if rollback(maps, undo) {
            maps.journal(false)?;
        }
        return Err(e);
    }

    // Only now is the old state unreachable for new lookups.
    let keep = |k: &&SvcKeyBytes| !written.contains(*k);
    let del_masters: Vec<Vec<u8>> = tx
        .del_masters
        .iter()
        .filter(keep)
        .map(|k| k.to_vec())
        .collect();
    let mut seen = HashSet::new();
    let del_slots: Vec<Vec<u8>> = tx
        .del_slots
        .iter()
        .filter(keep)
        .filter(|k| seen.insert(**k))
        .map(|k| k.to_vec())
        .collect();
    delete_all(maps, MapId::Svc, &del_masters);
    delete_all(maps, MapId::Svc, &del_slots);
    let written_backends: HashSet<u32> = tx.backends.iter().map(|(id, _, _)| *id).collect();
    let mut seen = HashSet::new();
    let del_backends: Vec<Vec<u8>> = tx
        .del_backends
        .iter()
        .filter(|id| !written_backends.contains(id) && seen.insert(**id))
        .map(|id| id.to_ne_bytes().to_vec())
        .collect();
    delete_all(maps, MapId::Backend, &del_backends);
    let written_members: HashSet<Vec<u8>> = members.iter().map(|(k, _, _)| k.clone()).collect();
    let mut seen = HashSet::new();
    let del_members: Vec<Vec<u8>> = tx
        .del_members
        .iter()
        .map(|k| bpf::bytes(k).to_vec())
        .filter(|k| !written_members.contains(k) && seen.insert(k.clone()))
        .collect();
    delete_all(maps, MapId::Member, &del_members);
    let del_meta: Vec<Vec<u8>> = tx
        .del_meta
        .iter()
        .map(|id| id.to_ne_bytes().to_vec())
        .collect();
    delete_all(maps, MapId::Meta, &del_meta);
    // Refusal counters of services that went (their svc_count_map
    // counters are zeroed when their id is given out again).
    let gone: Vec<[u8; 4]> = tx.del_meta.iter().map(|id| id.to_ne_bytes()).collect();
    maps.delete(
        MapId::SvcRefused,
        &gone.iter().map(|k| k.as_slice()).collect::<Vec<_>>(),
    );
    // Only after the masters went may their ports' bits go.
    if let Some(exact) = &tx.exact_ports {
        write_exact_ports(maps, exact)?;
    }

    if !tx.drop_affinity_svcs.is_empty() || !tx.drop_affinity_backends.is_empty() {
        let mut drop = Vec::new();
        for (k, v) in
            maps::read::<types::affinity_key, types::affinity_value>(maps, MapId::Affinity)?
        {
            if tx.drop_affinity_svcs.contains(&k.svc_id)
                || tx.drop_affinity_backends.contains(&v.backend_id)
            {
                drop.push(bpf::bytes(&k).to_vec());
            }
        }
        delete_all(maps, MapId::Affinity, &drop);
    }
    if busy {
        maps.journal(false)?;
    }
    Ok(Done {
        written: meta.len() + backends.len() + members.len() + slots.len() + masters.len(),
        deleted: del_masters.len()
            + del_slots.len()
            + del_backends.len()
            + del_members.len()
            + del_meta.len(),
        doomed: tx.doomed,
    })
}

fn port_bit(proto: u8) -> u32 {
    use types::nxl_port_bits as P;
    if proto == Proto::Udp.number() {
        P::NXL_PORT_UDP.0
    } else {
        P::NXL_PORT_TCP.0
    }
}

/// Set the port_map bits of these (port, protocol) pairs (never clears).
fn set_port_bits(maps: &dyn Maps, ports: &HashSet<(u16, u8)>) -> Result<()> {
    for &(port, proto) in ports {
        let key = u32::from(port).to_ne_bytes();
        let cur = maps::get::<u32>(maps, MapId::Ports, &key)?.unwrap_or(0);
        let want = cur | port_bit(proto);
        if want != cur {
            maps::put(maps, MapId::Ports, &key, &want.to_ne_bytes())?;
        }
    }
    Ok(())
}

/// Make port_map exactly `ports` (after a full rewrite).
fn write_exact_ports(maps: &dyn Maps, ports: &HashSet<(u16, u8)>) -> Result<()> {
    let mut want: HashMap<u32, u32> = HashMap::new();
    for &(port, proto) in ports {
        *want.entry(u32::from(port)).or_default() |= port_bit(proto);
    }
    // Redirect bits belong to src/control/redirect.rs: kept as they are.
    let redirect_bits = types::nxl_port_bits::NXL_PORT_REDIRECT_TCP.0
        | types::nxl_port_bits::NXL_PORT_REDIRECT_UDP.0;
    for (port, bits) in maps::read::<u32, u32>(maps, MapId::Ports)? {
        let w = want.get(&port).copied().unwrap_or(0) | (bits & redirect_bits);
        if w != bits {
            maps::put(maps, MapId::Ports, &port.to_ne_bytes(), &w.to_ne_bytes())?;
        }
    }
    Ok(())
}

/// What a repair did: the frontends (as given) and protocols of the
/// services it deleted, and the change it wrote.
#[derive(Debug, Default)]
pub struct Repaired {
    pub deleted: Vec<(service::FrontendSpec, Proto)>,
    pub done: Done,
}

/// The backends a service has, as far as a change finished: its index when
/// the index is whole (written after the backends, before any slot or
/// master), else the backends its master entry reaches (what the datapath
/// uses now).
fn settled_backends(
    cur: &mut Current,
    svc_id: u32,
    master: &types::svc_value,
    key: &types::svc_key,
) -> Result<Vec<(u32, types::backend_value)>> {
    let all: HashMap<u32, types::backend_value> = cur.backends_of(svc_id).iter().copied().collect();
    let count = cur.metas.get(&svc_id).map_or(0, |m| m.backend_count);
    let mut indexed = Vec::new();
    for i in 0..count {
        match cur
            .member_get(svc_id, i)?
            .and_then(|id| all.get(&id).map(|b| (id, *b)))
        {
            Some(b) => indexed.push(b),
            None => break,
        }
    }
    if indexed.len() == count as usize {
        return Ok(indexed);
    }
    let mut reached = Vec::new();
    for i in 0..master.count as usize {
        let id = if i < INLINE {
            master.be[i].backend_id
        } else {
            let mut k = *key;
            k.slot = u16::try_from(i + 1).context("slot number past 16 bits")?;
            match cur.svc_get(&k)? {
                Some(v) if v.svc_id == svc_id => v.be[0].backend_id,
                _ => continue,
            }
        };
        if let Some(b) = all.get(&id) {
            reached.push((id, *b));
        }
    }
    reached.sort_by_key(|(id, _)| *id);
    reached.dedup_by_key(|(id, _)| *id);
    Ok(reached)
}

/// Finish what a command that died mid-change left (its journal is open),
/// so that the next ordinary command starts from a clean state:
///
/// - a service whose primary master entry is not its own never switched in
///   (a killed add) or was already switched out (a killed del): it goes;
/// - a service whose master is its own (a killed replace) is rewritten
///   whole with the backends it settled on (see `settled_backends`);
/// - of two services with one identity, the one the master names stays;
/// - elements that belong to no service go (as `apply` removes them).
///
/// Reads every map, so it runs only when the journal says it must.
pub fn repair(maps: &dyn Maps) -> Result<Repaired> {
    let mut cur = Current::full(maps)?;
    let node_addrs = cur.node_addrs.clone();
    let mut tx = Tx::default();
    let mut out = Repaired::default();
    let mut kept: HashMap<(IpAddr, u16, Proto), u32> = HashMap::new();
    for svc_id in cur.metas.keys().copied().collect::<Vec<_>>() {
        let Some(spec) = cur.spec(svc_id)? else {
            continue;
        };
        let idk = service::identity_key(&spec, &node_addrs);
        let key = svc_key(idk.0, idk.1, idk.2, 0);
        let master = cur.svc_get(&key)?.filter(|m| m.svc_id == svc_id);
        match master {
            Some(m) if !kept.contains_key(&idk) => {
                let bes = settled_backends(&mut cur, svc_id, &m, &key)?;
                let meta = cur.metas[&svc_id];
                let settled = service::spec_from(&meta, &bes)?;
                kept.insert(idk, svc_id);
                plan_write(&mut cur, &mut tx, &settled, svc_id, &mut Ids::dry(0, 0))?;
            }
            _ => {
                out.deleted.push((spec.frontend, spec.proto));
                plan_delete(&mut cur, &mut tx, svc_id)?;
            }
        }
    }
    plan_strays(&mut cur, &mut tx)?;
    // Even with nothing to write, executing closes the journal.
    maps.journal(true)?;
    out.done = execute(maps, tx)?;
    maps.journal(false)?;
    Ok(out)
}

/// Repair first if a command died mid-change (see `repair`).
pub fn repair_if_interrupted(maps: &dyn Maps) -> Result<Option<Repaired>> {
    if !maps.journal_open()? {
        return Ok(None);
    }
    let r = repair(maps)?;
    eprintln!(
        "netnsxl: finished what an interrupted command left: {} service(s) it had not switched in or out removed, {} element(s) written, {} deleted",
        r.deleted.len(),
        r.done.written,
        r.done.deleted
    );
    Ok(Some(r))
}

/// Allocate a service id (for a service the maps do not have yet).
pub fn new_svc_id(maps: &dyn Maps) -> Result<u32> {
    Ok(maps::alloc_svc_ids(maps, 1, true)?[0])
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
