//! The service model: addresses, services and their frontends, and the
//! files `apply` reads. Pure: no maps, no syscalls.

pub mod addr;
pub mod manifest;
pub mod redirect;
pub mod service;
pub mod time;
pub mod topology;
