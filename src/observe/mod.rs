//! Read-only views of an attachment: status, counters, the trace.

pub mod http;
pub mod metrics;
pub mod stats;
pub mod status;
