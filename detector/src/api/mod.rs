//! The controller's two listeners.
//!
//! - [`http`]: the read side, on TCP (`--metrics-addr`): `/metrics`,
//!   `/api/*`, `/healthz`; loopback by default, a bearer token otherwise.
//! - [`control`]: the write side, on a unix socket in the state directory:
//!   rules and the allowlist, for the CLI.
//! - [`serve`]: starting either with a graceful shutdown.

pub mod control;
pub mod http;
pub mod serve;
