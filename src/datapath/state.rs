//! The pinned state: where each map and link lives under the pin dir, and
//! typed access to the maps from a later process.
//!
//! Layout (one place for it):
//!   PIN_DIR/maps/<map name>    every map of the object
//!   PIN_DIR/links/<prog name>  one cgroup link per attached program
//! The config map's `attached` field is written last by `attach`: a pin dir
//! without it is a failed or interrupted attach that the next attach redoes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use libbpf_rs::{MapCore, MapFlags, MapHandle};

use crate::bpf::{self, LAYOUT_VERSION, types};
use crate::datapath::maps::{self, MapId, Maps, WriteError};
use crate::sys::pindir;

/// Names of the pinned maps: the object's own map names.
pub const MAPS: &[&str] = &[
    "svc_map",
    "backend_map",
    "meta_map",
    "affinity_map",
    "revnat_map",
    "revnat_more_map",
    "node_addr_map",
    "bypass_map",
    "doomed_map",
    "port_map",
    "member_map",
    "stats_map",
    "svc_count_map",
    "svc_refused_map",
    "rev_tcp_map",
    "events_map",
    "config_map",
    "redirect_map",
    "redirect_skip_map",
];

/// The cgroup programs `attach` attaches, in attach order.
pub const CGROUP_PROGS: &[&str] = &[
    "nxl_connect4",
    "nxl_sendmsg4",
    "nxl_recvmsg4",
    "nxl_getpeername4",
    "nxl_connect6",
    "nxl_sendmsg6",
    "nxl_recvmsg6",
    "nxl_getpeername6",
    "nxl_sock_release",
];

/// Socket iterators that destroy sockets of removed backends (src/control/stale.rs);
/// their links are pinned next to the cgroup links.
pub const ITER_PROGS: &[&str] = &["nxl_destroy_udp", "nxl_destroy_tcp", "nxl_count_udp"];

/// How to move services from a pin dir of another layout.
const MIGRATE: &str = "to migrate, dump it with the netnsxl that wrote it (svc list -o json > services.json), then netnsxl detach, netnsxl attach --cgroup PATH and netnsxl apply -f services.json with this one";

#[derive(Clone, Debug)]
pub struct Pins {
    pub root: PathBuf,
}

impl Pins {
    pub fn new(root: &Path) -> Pins {
        Pins {
            root: root.to_path_buf(),
        }
    }
    pub fn maps_dir(&self) -> PathBuf {
        self.root.join("maps")
    }
    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }
    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }
    pub fn link(&self, prog: &str) -> PathBuf {
        self.links_dir().join(prog)
    }
    /// Present while a change is being written (see Maps::journal).
    pub fn journal(&self) -> PathBuf {
        self.root.join("journal")
    }
    pub fn exists(&self) -> bool {
        self.map("config_map").exists()
    }
}

/// Open handles on every pinned map.
pub struct State {
    pub pins: Pins,
    pub svc: MapHandle,
    pub backend: MapHandle,
    pub meta: MapHandle,
    pub affinity: MapHandle,
    pub revnat: MapHandle,
    pub node_addr: MapHandle,
    pub bypass: MapHandle,
    pub doomed: MapHandle,
    pub ports: MapHandle,
    pub member: MapHandle,
    pub stats: MapHandle,
    pub svc_count: MapHandle,
    pub svc_refused: MapHandle,
    pub rev_tcp: MapHandle,
    pub events: MapHandle,
    pub config: MapHandle,
    pub redirect: MapHandle,
    pub redirect_skip: MapHandle,
}

fn open_map(pins: &Pins, name: &str) -> Result<MapHandle> {
    let path = pins.map(name);
    MapHandle::from_pinned_path(&path)
        .with_context(|| format!("open pinned map {}", path.display()))
}

impl State {
    /// Open the state of an attachment, refusing one that is missing,
    /// incomplete, or written by another layout version.
    pub fn open(pin_dir: &Path) -> Result<State> {
        crate::sys::require_privileges()?;
        let (pin_dir, _dir) = pindir::checked(pin_dir, pindir::Missing::Refuse)?;
        let pin_dir = pin_dir.as_path();
        let pins = Pins::new(pin_dir);
        if !pins.exists() {
            bail!(
                "not attached: no netnsxl state in {}; run netnsxl attach --cgroup PATH first",
                pin_dir.display()
            );
        }
        // Every pin this layout has, each this user's and private; a map
        // missing altogether is another layout (or a damaged pin dir).
        for dir in [pins.maps_dir(), pins.links_dir()] {
            pindir::check_pin(&dir)?;
        }
        for name in MAPS {
            let p = pins.map(name);
            if !p.exists() {
                bail!(
                    "{} has no map {name}: it was written by another netnsxl layout or damaged; {MIGRATE}",
                    pin_dir.display()
                );
            }
            pindir::check_pin(&p)?;
        }
        let state = Self::open_unchecked(pins)?;
        let cfg = state.config()?;
        if cfg.layout_version != LAYOUT_VERSION {
            bail!(
                "the state in {} has layout version {}, this netnsxl uses {}; {MIGRATE}",
                pin_dir.display(),
                cfg.layout_version,
                LAYOUT_VERSION
            );
        }
        if cfg.attached == 0 {
            bail!(
                "the attachment in {} is incomplete (an attach was interrupted); run netnsxl attach --cgroup PATH again",
                pin_dir.display()
            );
        }
        Ok(state)
    }

    /// Open the maps without checking the config (for detach and re-attach).
    pub fn open_unchecked(pins: Pins) -> Result<State> {
        Ok(State {
            svc: open_map(&pins, MapId::Svc.name())?,
            backend: open_map(&pins, MapId::Backend.name())?,
            meta: open_map(&pins, MapId::Meta.name())?,
            affinity: open_map(&pins, MapId::Affinity.name())?,
            revnat: open_map(&pins, "revnat_map")?,
            node_addr: open_map(&pins, MapId::NodeAddr.name())?,
            bypass: open_map(&pins, MapId::Bypass.name())?,
            doomed: open_map(&pins, MapId::Doomed.name())?,
            ports: open_map(&pins, MapId::Ports.name())?,
            member: open_map(&pins, MapId::Member.name())?,
            stats: open_map(&pins, "stats_map")?,
            svc_count: open_map(&pins, MapId::SvcCount.name())?,
            svc_refused: open_map(&pins, MapId::SvcRefused.name())?,
            rev_tcp: open_map(&pins, "rev_tcp_map")?,
            events: open_map(&pins, "events_map")?,
            config: open_map(&pins, MapId::Config.name())?,
            redirect: open_map(&pins, MapId::Redirect.name())?,
            redirect_skip: open_map(&pins, MapId::RedirectSkip.name())?,
            pins,
        })
    }

    pub fn config(&self) -> Result<types::nxl_config> {
        let v = self
            .config
            .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
            .context("read config_map")?
            .context("config_map has no entry 0")?;
        bpf::from_bytes(&v)
    }

    pub fn write_config(&self, cfg: &types::nxl_config) -> Result<()> {
        self.config
            .update(&0u32.to_ne_bytes(), bpf::bytes(cfg), MapFlags::ANY)
            .context("write config_map")
    }

    /// Every node address recorded at attach (or refresh).
    pub fn node_addrs(&self) -> Result<Vec<std::net::IpAddr>> {
        maps::node_addrs(self)
    }

    /// The pinned map behind `map`.
    pub fn handle(&self, map: MapId) -> &MapHandle {
        match map {
            MapId::Svc => &self.svc,
            MapId::Backend => &self.backend,
            MapId::Meta => &self.meta,
            MapId::Member => &self.member,
            MapId::Ports => &self.ports,
            MapId::Affinity => &self.affinity,
            MapId::NodeAddr => &self.node_addr,
            MapId::SvcCount => &self.svc_count,
            MapId::SvcRefused => &self.svc_refused,
            MapId::Bypass => &self.bypass,
            MapId::Doomed => &self.doomed,
            MapId::Config => &self.config,
            MapId::Redirect => &self.redirect,
            MapId::RedirectSkip => &self.redirect_skip,
        }
    }
}

/// (counters per CPU, possible CPUs) of svc_count_map: CPU-major, a
/// service's counter on CPU c at c * stride + id.
fn count_layout(h: &MapHandle) -> Result<(u32, u32)> {
    let cpus = libbpf_rs::num_possible_cpus().context("count possible CPUs")? as u32;
    Ok((h.max_entries() / cpus.max(1), cpus))
}

impl State {
    /// Connects translated per service id, summed over CPUs.
    pub fn svc_counts(&self) -> Result<HashMap<u32, u64>> {
        let (stride, _) = count_layout(&self.svc_count)?;
        let mut out: HashMap<u32, u64> = HashMap::new();
        for (k, v) in read_raw(&self.svc_count)? {
            let (Ok(k), Ok(v)) = (
                <[u8; 4]>::try_from(k.as_slice()),
                <[u8; 8]>::try_from(v.as_slice()),
            ) else {
                continue;
            };
            let v = u64::from_ne_bytes(v);
            if v != 0 && stride > 0 {
                *out.entry(u32::from_ne_bytes(k) % stride).or_default() += v;
            }
        }
        Ok(out)
    }
}

/// The pinned maps, through BPF syscalls.
impl Maps for State {
    fn lookup(&self, map: MapId, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.handle(map)
            .lookup(key, MapFlags::ANY)
            .with_context(|| format!("read {}", map.name()))
    }

    fn update(&self, map: MapId, elems: &[(&[u8], &[u8])]) -> Result<(), WriteError> {
        let h = self.handle(map);
        let res = match elems {
            [] => return Ok(()),
            [(k, v)] => h.update(k, v, MapFlags::ANY),
            _ => {
                let keys: Vec<u8> = elems.iter().flat_map(|(k, _)| k.iter().copied()).collect();
                let vals: Vec<u8> = elems.iter().flat_map(|(_, v)| v.iter().copied()).collect();
                h.update_batch(
                    &keys,
                    &vals,
                    elems.len() as u32,
                    MapFlags::ANY,
                    MapFlags::ANY,
                )
            }
        };
        res.map_err(|e| {
            if e.kind() == libbpf_rs::ErrorKind::TooBig {
                WriteError::Full
            } else {
                WriteError::Other(anyhow::Error::new(e))
            }
        })
    }

    fn delete(&self, map: MapId, keys: &[&[u8]]) {
        let h = self.handle(map);
        if keys.len() > 1 {
            let flat: Vec<u8> = keys.iter().flat_map(|k| k.iter().copied()).collect();
            if h.delete_batch(&flat, keys.len() as u32, MapFlags::ANY, MapFlags::ANY)
                .is_ok()
            {
                return;
            }
        }
        // One at a time: an element already gone is not an error.
        for k in keys {
            let _ = h.delete(k);
        }
    }

    /// svc_count_map holds a service's counter once per CPU, at
    /// cpu * stride + id (see svc_counts).
    fn zero(&self, map: MapId, keys: &[&[u8]]) -> Result<()> {
        let h = self.handle(map);
        let (stride, cpus) = if map == MapId::SvcCount {
            count_layout(h)?
        } else {
            (0, 1)
        };
        let zero = vec![0u8; h.value_size() as usize];
        for k in keys {
            let id = <[u8; 4]>::try_from(*k)
                .map(u32::from_ne_bytes)
                .context("a counter key is 4 bytes")?;
            for cpu in 0..cpus {
                h.update(&(cpu * stride + id).to_ne_bytes(), &zero, MapFlags::ANY)
                    .with_context(|| format!("zero {}", map.name()))?;
            }
        }
        Ok(())
    }

    fn dump(&self, map: MapId) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        crate::datapath::state::read_raw(self.handle(map))
    }

    fn max_entries(&self, map: MapId) -> u32 {
        self.handle(map).max_entries()
    }

    /// The journal is a directory, PIN/journal: mkdir and rmdir are atomic
    /// and bpffs keeps it as long as the pins.
    fn journal(&self, open: bool) -> Result<()> {
        let p = self.pins.journal();
        let res = if open {
            match std::fs::create_dir(&p) {
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
                r => r,
            }
        } else {
            match std::fs::remove_dir(&p) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                r => r,
            }
        };
        res.with_context(|| format!("{} {}", if open { "create" } else { "remove" }, p.display()))
    }

    fn journal_open(&self) -> Result<bool> {
        Ok(self.pins.journal().symlink_metadata().is_ok())
    }
}

/// Elements one batch syscall reads.
const BATCH: u32 = 8192;

/// Every element of a map, read with BPF_MAP_LOOKUP_BATCH.
///
/// Written against the syscall rather than libbpf-rs' batch iterator: for
/// hash maps the kernel returns whole buckets, so a batch may come back
/// short before the end, and only ENOENT says the map is done (the iterator
/// stops at the first short batch and loses the rest).
pub fn read_map<K: plain::Plain + Default, V: plain::Plain + Default>(
    map: &MapHandle,
) -> Result<Vec<(K, V)>> {
    read_raw(map)?
        .iter()
        .map(|(k, v)| Ok((bpf::from_bytes(k)?, bpf::from_bytes(v)?)))
        .collect()
}

/// Every element of a map as bytes (see [`read_map`]).
pub fn read_raw(map: &MapHandle) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    use std::os::fd::{AsFd, AsRawFd};
    let (ks, vs) = (map.key_size() as usize, map.value_size() as usize);
    let mut out = Vec::new();
    let mut keys = vec![0u8; ks * BATCH as usize];
    let mut vals = vec![0u8; vs * BATCH as usize];
    // The batch cursor is an opaque u32 for hash maps (a bucket index).
    let mut cursor = [0u8; 8];
    let mut first = true;
    let opts = libbpf_rs::libbpf_sys::bpf_map_batch_opts {
        sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_map_batch_opts>() as _,
        ..Default::default()
    };
    loop {
        let mut next = [0u8; 8];
        let mut count = BATCH;
        // SAFETY: the buffers hold BATCH keys and values of the map's sizes;
        // the cursors are at least as large as the kernel's batch token.
        let ret = unsafe {
            libbpf_rs::libbpf_sys::bpf_map_lookup_batch(
                map.as_fd().as_raw_fd(),
                if first {
                    std::ptr::null_mut()
                } else {
                    cursor.as_mut_ptr().cast()
                },
                next.as_mut_ptr().cast(),
                keys.as_mut_ptr().cast(),
                vals.as_mut_ptr().cast(),
                &mut count,
                &opts,
            )
        };
        let err = (ret < 0).then(std::io::Error::last_os_error);
        match err.as_ref().and_then(std::io::Error::raw_os_error) {
            None | Some(libc::ENOENT) => {}
            Some(libc::EINTR) => continue,
            Some(libc::EINVAL) | Some(libc::ENOTSUP) | Some(libc::EOPNOTSUPP) if first => {
                return read_map_slow(map);
            }
            _ => {
                return Err(anyhow!(
                    "read {} in batches: {}",
                    map.name().to_string_lossy(),
                    err.expect("an error")
                ));
            }
        }
        for i in 0..count as usize {
            out.push((
                keys[i * ks..(i + 1) * ks].to_vec(),
                vals[i * vs..(i + 1) * vs].to_vec(),
            ));
        }
        if err.is_some() {
            return Ok(out);
        }
        cursor = next;
        first = false;
    }
}

/// One element at a time, for kernels or maps without batch lookup.
fn read_map_slow(map: &MapHandle) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    for k in map.keys() {
        if let Some(v) = map.lookup(&k, MapFlags::ANY)? {
            out.push((k, v));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::{MAPS, MapId};

    /// MapId names are the pinned maps' names (one table: MAPS).
    #[test]
    fn every_map_id_names_a_pinned_map() {
        for m in MapId::ALL {
            assert!(MAPS.contains(&m.name()), "{m:?} is not in MAPS");
        }
    }
}
