//! The generated skeleton and the map types it shares with the BPF side.
//!
//! Every key and value is defined once, in `src/bpf/netnsxl.h`; the skeleton's
//! `types` module has their `#[repr(C)]` twins, which become `plain` here so
//! they convert to and from the bytes the map syscalls take.

#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::undocumented_unsafe_blocks,
    dead_code,
    non_camel_case_types
)]
mod skel {
    include!(concat!(env!("OUT_DIR"), "/netnsxl.skel.rs"));
}

pub use skel::types;
pub use skel::*;

use anyhow::{Result, bail};

macro_rules! plain_types {
    ($($t:ident),* $(,)?) => {
        $(
            // SAFETY: the skeleton generates these as #[repr(C)] structs of
            // integers and integer arrays, with explicit padding fields, so
            // every bit pattern is valid.
            unsafe impl plain::Plain for types::$t {}
        )*
    };
}

/// The structs netnsxl.h shares with the datapath (map keys, values, events).
#[cfg(test)]
const SHARED: &[&str] = &[
    "svc_key",
    "svc_value",
    "backend_value",
    "svc_meta",
    "affinity_key",
    "affinity_value",
    "revnat_value",
    "revnat_entry",
    "revnat_more",
    "nxl_config",
    "doomed_key",
    "member_key",
    "svc_backend",
    "rev_tcp_slot",
    "nxl_event",
    "redirect_backend",
    "redirect_value",
    "redirect_skip_key",
    "nxl_stale_sock",
];

plain_types!(
    svc_key,
    svc_value,
    backend_value,
    svc_meta,
    affinity_key,
    affinity_value,
    revnat_value,
    revnat_more,
    nxl_config,
    doomed_key,
    member_key,
    svc_backend,
    rev_tcp_slot,
    nxl_event,
    nxl_stale_sock,
    redirect_backend,
    redirect_value,
    redirect_skip_key,
);

/// The shared structs' sizes, fixed: a change here is a layout change
/// (bump NXL_LAYOUT_VERSION). netnsxl.h asserts the same sizes on the C side.
macro_rules! sizes {
    ($($t:ident = $n:expr),* $(,)?) => {
        $( const _: () = assert!(std::mem::size_of::<types::$t>() == $n); )*
    };
}

sizes!(
    svc_key = 24,
    svc_value = 112,
    svc_backend = 24,
    backend_value = 24,
    svc_meta = 100,
    affinity_key = 16,
    affinity_value = 16,
    revnat_value = 176,
    revnat_more = 480,
    nxl_stale_sock = 56,
    nxl_config = 376,
    redirect_backend = 64,
    redirect_value = 584,
    redirect_skip_key = 32,
    doomed_key = 20,
    member_key = 8,
    rev_tcp_slot = 32,
    nxl_event = 80,
);

pub const LAYOUT_VERSION: u32 = types::nxl_limits::NXL_LAYOUT_VERSION.0;
pub const MAX_DOOMED: usize = types::nxl_limits::NXL_MAX_DOOMED.0 as usize;
pub const NAME_LEN: usize = types::nxl_limits::NXL_NAME_LEN.0 as usize;
pub const ZONE_LEN: usize = types::nxl_limits::NXL_ZONE_LEN.0 as usize;
pub const NETNS_NAME_LEN: usize = types::nxl_limits::NXL_NETNS_NAME_LEN.0 as usize;
pub const REDIRECT_BACKENDS: usize = types::nxl_limits::NXL_REDIRECT_BACKENDS.0 as usize;
pub const MAX_REDIRECTS: usize = types::nxl_limits::NXL_MAX_REDIRECTS.0 as usize;

pub mod svc_flags {
    use super::types::nxl_svc_flags as F;
    pub const AFFINITY: u8 = F::NXL_SVC_F_AFFINITY.0 as u8;
    pub const SKIP_HOST: u8 = F::NXL_SVC_F_SKIP_HOST.0 as u8;
    pub const HOST_ONLY: u8 = F::NXL_SVC_F_HOST_ONLY.0 as u8;
    pub const LOCAL_ONLY: u8 = F::NXL_SVC_F_LOCAL_ONLY.0 as u8;
    pub const FALLBACK: u8 = F::NXL_SVC_F_FALLBACK.0 as u8;
}

pub mod backend_flags {
    use super::types::nxl_backend_flags as F;
    pub const TERMINATING: u8 = F::NXL_BE_F_TERMINATING.0 as u8;
    pub const LOCAL: u8 = F::NXL_BE_F_LOCAL.0 as u8;
    pub const OFF_TOPOLOGY: u8 = F::NXL_BE_F_OFF_TOPOLOGY.0 as u8;
}

/// The bytes of a map key or value.
pub fn bytes<T: plain::Plain>(v: &T) -> &[u8] {
    // SAFETY: T is Plain: a #[repr(C)] struct with no implicit padding.
    unsafe { plain::as_bytes(v) }
}

/// A map key or value from the bytes a lookup returned.
pub fn from_bytes<T: plain::Plain + Default>(b: &[u8]) -> Result<T> {
    let mut v = T::default();
    if plain::copy_from_bytes(&mut v, b).is_err() || b.len() != std::mem::size_of::<T>() {
        bail!(
            "map element has {} bytes, expected {}: the pinned maps were written by another netnsxl layout; run netnsxl detach and attach again",
            b.len(),
            std::mem::size_of::<T>()
        );
    }
    Ok(v)
}

/// A NUL-padded C string field from a Rust string (truncated to fit).
pub fn to_cstr<const N: usize>(s: &str) -> [i8; N] {
    let mut out = [0i8; N];
    for (o, b) in out.iter_mut().zip(s.bytes().take(N - 1)) {
        *o = b as i8;
    }
    out
}

/// A Rust string from a NUL-padded C string field.
pub fn from_cstr(s: &[i8]) -> String {
    let bytes: Vec<u8> = s
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    /// Every shared struct is written without implicit holes (explicit pad
    /// fields instead): a hole would carry whatever bytes the writer had, and
    /// keys and `apply`'s comparisons are byte for byte. libbpf-cargo turns a
    /// C hole into a `__pad_N` field in the generated Rust, so none may
    /// appear in the structs netnsxl.h shares.
    #[test]
    fn shared_structs_have_no_implicit_holes() {
        let skel = include_str!(concat!(env!("OUT_DIR"), "/netnsxl.skel.rs"));
        for name in super::SHARED {
            let start = skel
                .find(&format!("pub struct {name} {{"))
                .unwrap_or_else(|| panic!("{name} is not in the skeleton"));
            let body = &skel[start..start + skel[start..].find("\n        }").unwrap()];
            assert!(
                !body.contains("__pad_"),
                "struct {name} has an implicit hole: add an explicit pad field in netnsxl.h\n{body}"
            );
        }
    }
}
