//! The detector's controller library: everything the `detector` binary does,
//! in modules a test can drive.
//!
//! Pure parts (no kernel, no clock, no I/O): [`rates`], [`sources`], [`view`],
//! [`flood::frame`]. Kernel adapters: [`ebpf`] (the embedded objects),
//! [`xdp`] (attach and detach), [`counters`] (the maps), [`flood`] (the
//! generator). [`controller`] is the poll loop that joins them.

pub mod clock;
pub mod control;
pub mod controller;
pub mod counters;
pub mod detect;
pub mod ebpf;
pub mod flood;
pub mod format;
pub mod http;
pub mod iface;
pub mod lab;
pub mod metrics;
pub mod mitigate;
pub mod netns;
pub mod privileges;
pub mod rates;
pub mod runbook;
pub mod samples;
pub mod sources;
pub mod state;
pub mod store;
pub mod view;
pub mod xdp;
