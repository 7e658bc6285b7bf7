//! The saga benchmark (`saga-bench`): a raw-broker baseline, then the whole
//! system as separate processes driven open-loop and at full speed, with the
//! latency of every order taken from the events themselves.

pub mod baseline;
pub mod probe;
pub mod stats;
pub mod topics;
pub mod traffic;
