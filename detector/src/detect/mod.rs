//! Detection: classify floods from per-class rates, learn what normal is,
//! and run incidents from open to resolved. Pure: every function takes data
//! and a time and returns decisions; nothing here touches the kernel, the
//! clock, the network or the database.

pub mod baseline;
pub mod config;
pub mod engine;
pub mod family;
pub mod incident;
pub mod severity;
pub mod signature;

pub use engine::{Detector, Observation, SavedBaselines, Signal};

#[cfg(test)]
mod network_tests;
#[cfg(test)]
mod tests;
