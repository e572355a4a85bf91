//! Commands that change state: the write engine and everything built on it.

pub mod affinity;
pub mod apply;
pub mod netns;
pub mod redirect;
pub mod service;
pub mod stale;
pub mod store;
pub mod watch;
