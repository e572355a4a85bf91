//! The BPF side as the control plane sees it: loading and pinning the
//! object, the pinned maps (behind the `Maps` trait), kernel feature probes
//! and the socket iterators.

pub mod features;
pub mod iter;
pub mod loader;
pub mod maps;
pub mod state;
