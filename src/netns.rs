//! Network namespaces by cookie: which netns a cookie in the maps belongs to.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

/// Where `ip netns` keeps named namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Cookie -> name for every netns named under /run/netns. A namespace that
/// cannot be entered is left out (its cookie then shows no name).
pub fn names_by_cookie() -> HashMap<u64, String> {
    let mut out = HashMap::new();
    let Ok(dir) = fs::read_dir(NETNS_RUN_DIR) else {
        return out;
    };
    for entry in dir.flatten() {
        let path: PathBuf = entry.path();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
        else {
            continue;
        };
        if let Ok(cookie) = crate::sys::netns_cookie_of(Path::new(&path)) {
            out.insert(cookie, name);
        }
    }
    out
}
