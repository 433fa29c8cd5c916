//! GoBGP, the BGP daemon the detector drives: its configuration file
//! ([`config`]), its API's generated code ([`api`]), announcements as its
//! paths ([`paths`]) and the client that adds, deletes and lists them
//! ([`client`]).

pub mod api;
pub mod client;
pub mod config;
pub mod paths;

pub use client::{Client, GobgpError, Peer, SessionState};
pub use config::config_toml;
