//! The maps the control plane reads and writes, behind one trait.
//!
//! The write engine (src/control/store.rs) plans and executes against [`Maps`]; the
//! pinned maps of an attachment ([`crate::datapath::state::State`]) implement it with
//! BPF syscalls, and [`fake::FakeMaps`] implements it in memory with fixed
//! capacities and injectable failures, so the engine's plans, write order,
//! rollback and repair are unit-tested without root or a kernel (as
//! Cilium's load-balancer writer is tested against `FakeLBMaps`).
//!
//! The trait is byte-level: keys and values are the bytes of the shared C
//! structs (`bpf::bytes`), exactly what the kernel stores.

use anyhow::{Result, anyhow};

use crate::bpf;

/// A map the control plane uses, with its pinned name (one table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MapId {
    Svc,
    Backend,
    Meta,
    Member,
    Ports,
    Affinity,
    NodeAddr,
    SvcCount,
    SvcRefused,
    Bypass,
    Doomed,
    Config,
    Redirect,
    RedirectSkip,
}

impl MapId {
    pub const ALL: [MapId; 14] = [
        MapId::Svc,
        MapId::Backend,
        MapId::Meta,
        MapId::Member,
        MapId::Ports,
        MapId::Affinity,
        MapId::NodeAddr,
        MapId::SvcCount,
        MapId::SvcRefused,
        MapId::Bypass,
        MapId::Doomed,
        MapId::Config,
        MapId::Redirect,
        MapId::RedirectSkip,
    ];

    /// The map's name in the BPF object and under PIN_DIR/maps.
    pub fn name(self) -> &'static str {
        match self {
            MapId::Svc => "svc_map",
            MapId::Backend => "backend_map",
            MapId::Meta => "meta_map",
            MapId::Member => "member_map",
            MapId::Ports => "port_map",
            MapId::Affinity => "affinity_map",
            MapId::NodeAddr => "node_addr_map",
            MapId::SvcCount => "svc_count_map",
            MapId::SvcRefused => "svc_refused_map",
            MapId::Bypass => "bypass_map",
            MapId::Doomed => "doomed_map",
            MapId::Config => "config_map",
            MapId::Redirect => "redirect_map",
            MapId::RedirectSkip => "redirect_skip_map",
        }
    }

    /// The `attach` option that sizes it, for the "full" error.
    pub fn sized_by(self) -> &'static str {
        match self {
            MapId::Backend | MapId::Member => "--max-backends",
            MapId::Affinity => "--max-affinity",
            MapId::Redirect | MapId::RedirectSkip => "the redirect limit (NXL_MAX_REDIRECTS)",
            _ => "--max-services",
        }
    }
}

/// Why a write failed.
#[derive(Debug)]
pub enum WriteError {
    /// The map has no room (E2BIG): the caller names the option to raise.
    Full,
    Other(anyhow::Error),
}

/// What the write engine needs of the maps.
pub trait Maps {
    /// One element, if present.
    fn lookup(&self, map: MapId, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Write every element (create or replace). On an error some of them may
    /// be written already: the caller keeps what it needs to undo them.
    fn update(&self, map: MapId, elems: &[(&[u8], &[u8])]) -> Result<(), WriteError>;
    /// Delete these keys; a key already gone is not an error.
    fn delete(&self, map: MapId, keys: &[&[u8]]);
    /// Set these elements of a counter array to zero (a per-CPU one on
    /// every CPU): array elements cannot be deleted.
    fn zero(&self, map: MapId, keys: &[&[u8]]) -> Result<()>;
    /// Every element.
    fn dump(&self, map: MapId) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    fn max_entries(&self, map: MapId) -> u32;
    /// Open (before a change's first write) or close (after its last) the
    /// journal that says a change is under way. A journal found open means
    /// a command died mid-change: the next one repairs first.
    fn journal(&self, open: bool) -> Result<()>;
    fn journal_open(&self) -> Result<bool>;
}

/// Every element of `map`, typed.
pub fn read<K: plain::Plain + Default, V: plain::Plain + Default>(
    maps: &dyn Maps,
    map: MapId,
) -> Result<Vec<(K, V)>> {
    maps.dump(map)?
        .iter()
        .map(|(k, v)| Ok((bpf::from_bytes(k)?, bpf::from_bytes(v)?)))
        .collect()
}

/// One element, typed.
pub fn get<V: plain::Plain + Default>(
    maps: &dyn Maps,
    map: MapId,
    key: &[u8],
) -> Result<Option<V>> {
    maps.lookup(map, key)?
        .map(|v| bpf::from_bytes(&v))
        .transpose()
}

/// Write one element.
pub fn put(maps: &dyn Maps, map: MapId, key: &[u8], val: &[u8]) -> Result<()> {
    maps.update(map, &[(key, val)]).map_err(|e| match e {
        WriteError::Full => anyhow!(
            "{} is full ({} entries); attach with a larger {}",
            map.name(),
            maps.max_entries(map),
            map.sized_by()
        ),
        WriteError::Other(e) => e.context(format!("write {}", map.name())),
    })
}

/// The single config element.
pub fn config(maps: &dyn Maps) -> Result<crate::bpf::types::nxl_config> {
    get(maps, MapId::Config, &0u32.to_ne_bytes())?
        .ok_or_else(|| anyhow!("config_map has no entry 0"))
}

pub fn write_config(maps: &dyn Maps, cfg: &crate::bpf::types::nxl_config) -> Result<()> {
    put(maps, MapId::Config, &0u32.to_ne_bytes(), bpf::bytes(cfg))
}

/// Every node address recorded at attach (or refresh), sorted.
pub fn node_addrs(maps: &dyn Maps) -> Result<Vec<std::net::IpAddr>> {
    let mut out: Vec<std::net::IpAddr> = maps
        .dump(MapId::NodeAddr)?
        .into_iter()
        .filter_map(|(k, _)| <[u8; 16]>::try_from(k.as_slice()).ok())
        .map(crate::model::addr::from_map_addr)
        .collect();
    out.sort();
    Ok(out)
}

/// Allocate `n` consecutive backend ids from the config counter. The
/// counter is written before the ids are used, so an interrupted command
/// only leaks ids; it never hands one out twice. Backend ids are never
/// reused: an affinity entry naming a gone backend can never name another.
pub fn alloc_backend_ids(maps: &dyn Maps, n: u32) -> Result<u32> {
    let mut cfg = config(maps)?;
    let first = cfg.next_backend_id.max(1);
    let Some(next) = first.checked_add(n) else {
        anyhow::bail!("backend id space exhausted; run netnsxl detach and attach again");
    };
    cfg.next_backend_id = next;
    write_config(maps, &cfg)?;
    Ok(first)
}

/// Ids for `n` new services: ids in 1..=--max-services (meta_map's
/// capacity; svc_count_map is indexed by them) that no service has, taken
/// from where the last allocation stopped (next fit), so a freed id is
/// reused as late as possible. Ids of services a change is deleting are
/// still taken. `commit` writes the cursor (a dry run does not); an
/// interrupted command leaks nothing, since an id is in use exactly while
/// its metadata exists.
pub fn alloc_svc_ids(maps: &dyn Maps, n: u32, commit: bool) -> Result<Vec<u32>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let cap = maps.max_entries(MapId::Meta);
    let mut cfg = config(maps)?;
    // Next-fit from the cursor, a lookup per id tried; when many ids are
    // asked for and the ones tried are mostly taken (ids wrapped around),
    // one read of every id in use instead.
    let mut used: Option<std::collections::HashSet<u32>> = None;
    let mut id = cfg.next_svc_id.clamp(1, cap);
    let mut out = Vec::with_capacity(n as usize);
    for tried in 0..cap {
        if used.is_none() && n > 16 && tried > 4 * n {
            used = Some(
                maps.dump(MapId::Meta)?
                    .iter()
                    .filter_map(|(k, _)| <[u8; 4]>::try_from(k.as_slice()).ok())
                    .map(u32::from_ne_bytes)
                    .collect(),
            );
        }
        let taken = match &used {
            Some(u) => u.contains(&id),
            None => maps.lookup(MapId::Meta, &id.to_ne_bytes())?.is_some(),
        };
        if !taken {
            out.push(id);
        }
        id = id % cap + 1;
        if out.len() == n as usize {
            break;
        }
    }
    if out.len() < n as usize {
        anyhow::bail!("meta_map is full ({cap} services); attach with a larger --max-services");
    }
    if commit {
        cfg.next_svc_id = id;
        write_config(maps, &cfg)?;
    }
    Ok(out)
}

pub mod fake {
    //! In-memory maps for unit tests: sorted, with the capacities `attach`
    //! would give them, a log of every write and delete in order, and a
    //! failure to inject after a number of element writes.

    use std::cell::{Cell, RefCell};
    use std::collections::{BTreeMap, HashMap};

    use anyhow::{Result, anyhow};

    use super::{MapId, Maps, WriteError};

    /// One operation on the fake, in the order the engine made it.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub enum Op {
        /// map, key, value
        Write(MapId, Vec<u8>, Vec<u8>),
        Delete(MapId, Vec<u8>),
        Journal(bool),
    }

    /// One map's elements, key to value, sorted.
    pub type Contents = BTreeMap<Vec<u8>, Vec<u8>>;

    pub struct FakeMaps {
        maps: RefCell<HashMap<MapId, Contents>>,
        capacity: HashMap<MapId, u32>,
        log: RefCell<Vec<Op>>,
        /// Element writes still allowed before one write fails.
        fail_after: Cell<Option<usize>>,
        journal: Cell<bool>,
    }

    impl FakeMaps {
        /// Empty maps of these capacities (others: 1,000,000), with a zeroed
        /// config element as attach leaves it.
        pub fn new(capacity: &[(MapId, u32)]) -> FakeMaps {
            let mut cap: HashMap<MapId, u32> = MapId::ALL.iter().map(|m| (*m, 1_000_000)).collect();
            cap.insert(MapId::Config, 1);
            cap.insert(MapId::Ports, 65536);
            for (m, n) in capacity {
                cap.insert(*m, *n);
            }
            FakeMaps {
                maps: RefCell::new(HashMap::new()),
                capacity: cap,
                log: RefCell::new(Vec::new()),
                fail_after: Cell::new(None),
                journal: Cell::new(false),
            }
        }

        /// After `n` more element writes, the next one fails once (a kernel
        /// error that is not "full"); writes after it work again.
        pub fn fail_after(&self, n: usize) {
            self.fail_after.set(Some(n));
        }

        /// Every operation so far, in order; and forget them.
        pub fn take_log(&self) -> Vec<Op> {
            std::mem::take(&mut self.log.borrow_mut())
        }

        /// A map's whole contents, for comparing states.
        pub fn contents(&self, map: MapId) -> Contents {
            self.maps.borrow().get(&map).cloned().unwrap_or_default()
        }

        /// Every map's contents.
        pub fn snapshot(&self) -> Vec<(MapId, Contents)> {
            MapId::ALL.iter().map(|m| (*m, self.contents(*m))).collect()
        }

        pub fn len(&self, map: MapId) -> usize {
            self.maps.borrow().get(&map).map_or(0, BTreeMap::len)
        }

        /// Another fake with the same contents and capacities (no log).
        pub fn copy(&self) -> FakeMaps {
            FakeMaps {
                maps: RefCell::new(self.maps.borrow().clone()),
                capacity: self.capacity.clone(),
                log: RefCell::new(Vec::new()),
                fail_after: Cell::new(None),
                journal: Cell::new(self.journal.get()),
            }
        }

        /// Apply logged operations, as a command killed after them left
        /// the maps.
        pub fn replay(&self, ops: &[Op]) {
            for op in ops {
                match op {
                    Op::Write(m, k, v) => {
                        self.maps
                            .borrow_mut()
                            .entry(*m)
                            .or_default()
                            .insert(k.clone(), v.clone());
                    }
                    Op::Delete(m, k) => {
                        self.maps.borrow_mut().entry(*m).or_default().remove(k);
                    }
                    Op::Journal(open) => self.journal.set(*open),
                }
            }
        }
    }

    impl Maps for FakeMaps {
        fn lookup(&self, map: MapId, key: &[u8]) -> Result<Option<Vec<u8>>> {
            Ok(self
                .maps
                .borrow()
                .get(&map)
                .and_then(|m| m.get(key).cloned()))
        }

        fn update(&self, map: MapId, elems: &[(&[u8], &[u8])]) -> Result<(), WriteError> {
            let mut maps = self.maps.borrow_mut();
            let m = maps.entry(map).or_default();
            for (k, v) in elems {
                match self.fail_after.get() {
                    Some(0) => {
                        self.fail_after.set(None);
                        return Err(WriteError::Other(anyhow!("injected failure")));
                    }
                    Some(n) => self.fail_after.set(Some(n - 1)),
                    None => {}
                }
                if !m.contains_key(*k) && m.len() >= self.capacity[&map] as usize {
                    return Err(WriteError::Full);
                }
                m.insert(k.to_vec(), v.to_vec());
                self.log
                    .borrow_mut()
                    .push(Op::Write(map, k.to_vec(), v.to_vec()));
            }
            Ok(())
        }

        fn delete(&self, map: MapId, keys: &[&[u8]]) {
            let mut maps = self.maps.borrow_mut();
            let m = maps.entry(map).or_default();
            for k in keys {
                if m.remove(*k).is_some() {
                    self.log.borrow_mut().push(Op::Delete(map, k.to_vec()));
                }
            }
        }

        /// A zeroed counter is an element of eight zero bytes (one CPU's
        /// view of a per-CPU counter).
        fn zero(&self, map: MapId, keys: &[&[u8]]) -> Result<()> {
            let mut maps = self.maps.borrow_mut();
            let m = maps.entry(map).or_default();
            for k in keys {
                m.insert(k.to_vec(), vec![0; 8]);
                self.log
                    .borrow_mut()
                    .push(Op::Write(map, k.to_vec(), vec![0; 8]));
            }
            Ok(())
        }

        fn dump(&self, map: MapId) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
            Ok(self
                .maps
                .borrow()
                .get(&map)
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default())
        }

        fn max_entries(&self, map: MapId) -> u32 {
            self.capacity[&map]
        }

        fn journal(&self, open: bool) -> Result<()> {
            if self.journal.get() != open {
                self.journal.set(open);
                self.log.borrow_mut().push(Op::Journal(open));
            }
            Ok(())
        }

        fn journal_open(&self) -> Result<bool> {
            Ok(self.journal.get())
        }
    }
}
