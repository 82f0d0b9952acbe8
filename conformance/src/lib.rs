//! Gateway API conformance for Sluice: the upstream suite's cases (as data) run against the
//! `sluice standalone` gateway on one machine, with an in-process echo backend, producing an
//! upstream-shaped ConformanceReport.
#![forbid(unsafe_code)]

pub mod cases;
pub mod certs;
pub mod client;
pub mod cluster;
pub mod echo;
pub mod expect;
