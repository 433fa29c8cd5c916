//! Mitigation: drop and rate-limit rules enforced by the XDP program.
//!
//! - [`prefix`], [`rule`], [`ruleset`] and [`plan`] are pure: what a rule
//!   is, which rules are in force, and the trie that enforces them.
//! - [`host`] finds the host's own addresses (always allowlisted);
//!   [`mitigator`] binds the rule set to the state directory and to each
//!   interface's maps ([`crate::kernel::rules`]).
//! - [`config`]: the `mitigation:` section of the configuration file.

pub mod config;
pub mod derived;
pub mod host;
pub mod mitigator;
pub mod plan;
#[cfg(test)]
mod plan_props;
pub mod prefix;
pub mod rule;
pub mod ruleset;
