//! The detector's controller library: everything the `detector` binary does,
//! in modules a test can drive.
//!
//! - Pure cores (data and a time in, decisions out; no kernel, clock or I/O):
//!   [`rates`], [`sources`], [`samples`], [`view`], [`detect`], the rule
//!   engine in [`mitigate`] (`prefix`, `rule`, `ruleset`, `plan`), runbook
//!   matching in [`runbook`], [`flood::frame`].
//! - Adapters at the edges: [`kernel`] (the XDP objects, attaching, the BPF
//!   maps, bpffs pins), [`history`] (SQLite), [`statedir`] (the state
//!   directory's files), [`api`] (the HTTP listener and the control socket),
//!   [`clock`], [`config`] (the configuration file).
//! - [`controller`] wires them together for `detector run`.
//! - `lab`, behind the `lab` feature (off by default): network-namespace
//!   labs and the harness that runs a controller, floods and commands in
//!   them, for the tests, the bench and the demo.

pub mod api;
pub mod bgp;
pub mod capacity;
pub mod capture;
pub mod clock;
pub mod config;
pub mod controller;
pub mod detect;
pub mod flood;
pub mod format;
pub mod history;
pub mod iface;
pub mod kernel;
#[cfg(feature = "lab")]
pub mod lab;
pub mod metrics;
pub mod mitigate;
pub mod netns;
pub mod networks;
pub mod privileges;
pub mod rates;
pub mod runbook;
pub mod samples;
pub mod sources;
pub mod span;
pub mod statedir;
pub mod targets;
pub mod view;
