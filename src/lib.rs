//! netnsxl: Kubernetes-style service translation in BPF cgroup hooks, aware
//! of the network namespace of every socket (`bpf_get_netns_cookie()`).
//!
//! One module per idea; `src/main.rs` is only the command line.

pub mod addr;
pub mod affinity;
pub mod apply;
pub mod attach;
pub mod bpf;
pub mod features;
pub mod manifest;
pub mod maps;
pub mod netns;
pub mod observe;
pub mod output;
pub mod service;
pub mod stale;
pub mod state;
pub mod store;
pub mod sys;
