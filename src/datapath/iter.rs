//! Reading the pinned socket iterators in every netns netnsxl can find (an
//! iterator walks the sockets of the netns it is created in).

use std::collections::HashSet;
use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, Result};
use libbpf_rs::{Iter, Link};

use crate::datapath::state::State;
use crate::sys::netns;

/// Every netns to walk, each once (by inode).
pub fn netns_paths() -> Vec<PathBuf> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut push = |p: PathBuf| {
        if let Ok(m) = std::fs::metadata(&p) {
            use std::os::unix::fs::MetadataExt;
            if seen.insert((m.dev(), m.ino())) {
                out.push(p);
            }
        }
    };
    push(PathBuf::from("/proc/self/ns/net"));
    for ns in netns::find() {
        push(ns.path);
    }
    out
}

/// Read one pinned iterator in the netns at `path` and hand what it wrote
/// to `then`, still inside that netns (closing a socket with sock_diag must
/// happen there); returns what `then` returns.
pub fn run_iter<F>(link_pin: PathBuf, path: PathBuf, then: F) -> Result<usize>
where
    F: FnOnce(&[u8]) -> Result<usize> + Send + 'static,
{
    let read = move || -> Result<usize> {
        let link = Link::open(&link_pin)
            .with_context(|| format!("open the iterator link {}", link_pin.display()))?;
        let mut it = Iter::new(&link).context("create a socket iterator")?;
        let mut buf = Vec::new();
        it.read_to_end(&mut buf)
            .context("read the socket iterator")?;
        then(&buf)
    };
    if path == std::path::Path::new("/proc/self/ns/net") {
        read()
    } else {
        crate::sys::in_netns(&path, read)
    }
}

/// Read the pinned iterator `prog` once in every netns that can be found;
/// returns the bytes it wrote in all of them.
pub fn read_everywhere(state: &State, prog: &str) -> Result<usize> {
    let mut n = 0;
    for ns in netns_paths() {
        match run_iter(state.pins.link(prog), ns.clone(), |b| Ok(b.len())) {
            Ok(k) => n += k,
            Err(_) if !crate::sys::is_ns_file(&ns) => {}
            Err(e) => return Err(e.context(format!("in netns {}", ns.display()))),
        }
    }
    Ok(n)
}
