//! netnsxl: Kubernetes-style service translation in BPF cgroup hooks, aware
//! of the network namespace of every socket (`bpf_get_netns_cookie()`).
//!
//! Layers, each importing only those below it (src/main.rs is the command
//! line above them all):
//!
//! - `agent`: `netnsxl agent`, the node agent: the Kubernetes client, the
//!   watch loop of `control` and the HTTP side of `observe` in one process;
//! - `control` (the write engine, service commands, apply, affinity, the
//!   bypass list, stale-socket passes) and `observe` (status, stats, trace),
//!   which do not import each other;
//! - `datapath`: the BPF object (loader), the pinned maps behind the `Maps`
//!   trait, kernel feature probes, socket iterators;
//! - `sys`: mounts, cgroups, network namespaces, privileges;
//! - usable by all: `model` (addresses, the service model, manifest
//!   parsing; pure, no I/O), `bpf` (the C types shared with the datapath)
//!   and `output` (tables and JSON).

pub mod agent;
pub mod bpf;
pub mod control;
pub mod datapath;
pub mod model;
pub mod observe;
pub mod output;
pub mod sys;
