//! Network namespaces by cookie: find every netns on the machine, tell which
//! one a cookie in the maps belongs to, and manage the bypass list.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Serialize;

/// Where `ip netns` keeps named namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// One network namespace, however it can be reached.
#[derive(Debug, Clone, Serialize)]
pub struct NetnsInfo {
    pub cookie: u64,
    pub names: Vec<String>,
    pub pids: Vec<u32>,
    #[serde(skip)]
    pub path: PathBuf,
}

impl NetnsInfo {
    fn at(path: &Path) -> NetnsInfo {
        NetnsInfo {
            cookie: 0,
            names: Vec::new(),
            pids: Vec::new(),
            path: path.to_path_buf(),
        }
    }
}

/// Every netns with a name under /run/netns or a process in it, with its
/// cookie (each netns is entered once to read it).
pub fn discover() -> Vec<NetnsInfo> {
    let mut out: Vec<NetnsInfo> = find()
        .into_iter()
        .filter_map(|mut n| {
            n.cookie = crate::sys::netns_cookie_of(&n.path).ok()?;
            Some(n)
        })
        .collect();
    out.sort_by_key(|n| n.cookie);
    out
}

/// Every netns that can be found, once each (by inode), without entering
/// them: the cookie is left 0.
pub fn find() -> Vec<NetnsInfo> {
    // (dev, ino) identifies a namespace.
    let mut by_ino: BTreeMap<(u64, u64), NetnsInfo> = BTreeMap::new();
    if let Ok(dir) = fs::read_dir(NETNS_RUN_DIR) {
        for e in dir.flatten() {
            let path = e.path();
            let (Ok(md), Some(name)) = (
                fs::metadata(&path),
                path.file_name().and_then(|n| n.to_str()),
            ) else {
                continue;
            };
            let entry = by_ino
                .entry((md.dev(), md.ino()))
                .or_insert_with(|| NetnsInfo::at(&path));
            entry.names.push(name.to_string());
        }
    }
    if let Ok(dir) = fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
            let Ok(md) = fs::metadata(&path) else {
                continue;
            };
            let entry = by_ino
                .entry((md.dev(), md.ino()))
                .or_insert_with(|| NetnsInfo::at(&path));
            entry.pids.push(pid);
        }
    }
    by_ino
        .into_values()
        .map(|mut n| {
            n.names.sort();
            n.pids.sort_unstable();
            n
        })
        .collect()
}

/// How a user names a netns on the command line.
#[derive(Debug, Clone)]
pub enum NetnsRef {
    Name(String),
    Pid(u32),
    Path(PathBuf),
}

impl NetnsRef {
    pub fn path(&self) -> PathBuf {
        match self {
            NetnsRef::Name(n) => Path::new(NETNS_RUN_DIR).join(n),
            NetnsRef::Pid(p) => PathBuf::from(format!("/proc/{p}/ns/net")),
            NetnsRef::Path(p) => p.clone(),
        }
    }

    pub fn cookie(&self) -> Result<u64> {
        let path = self.path();
        if !path.exists() {
            bail!(
                "netns {}: {} does not exist (names are under {NETNS_RUN_DIR}; netnsxl netns list shows them)",
                self.shown(),
                path.display()
            );
        }
        crate::sys::netns_cookie_of(&path)
            .with_context(|| format!("read the cookie of netns {}", self.shown()))
    }

    pub fn shown(&self) -> String {
        match self {
            NetnsRef::Name(n) => n.clone(),
            NetnsRef::Pid(p) => format!("of pid {p}"),
            NetnsRef::Path(p) => p.display().to_string(),
        }
    }
}
