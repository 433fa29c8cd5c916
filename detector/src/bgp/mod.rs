//! Upstream mitigation over BGP (issue 12): remotely triggered blackholing
//! (RFC 7999) and FlowSpec (RFC 8955, RFC 8956), announced by a real BGP
//! daemon, GoBGP, that the detector starts, supervises and drives over its
//! gRPC API.
//!
//! - Pure core (data and a time in, decisions out): [`config`] (the `bgp:`
//!   section), [`announce`] (what is announced), [`check`] (what may be),
//!   [`plan`] (what should be in force, and the changes that get it there).
//! - Adapters: [`gobgp`] (the daemon's configuration file and gRPC client)
//!   and [`daemon`] (the `gobgpd` child, restarted when it exits, adopted
//!   by the next start), and [`keeper`] (ends announcements on time while
//!   no controller runs).
//! - The subsystem of `detector run`: [`service`] (the desired set,
//!   persisted; the daemon; the reconciliation task), [`control`] (its
//!   control API routes and client), [`metrics`], and [`step`] (what a
//!   runbook's `bgp` step announces for an incident; pure).

pub mod announce;
pub mod check;
pub mod config;
pub mod control;
pub mod daemon;
pub mod gobgp;
pub mod keeper;
pub mod metrics;
pub mod plan;
pub mod service;
pub mod step;
