//! Mitigation: drop and rate-limit rules enforced by the XDP program.
//!
//! - [`prefix`], [`rule`], [`ruleset`] and [`plan`] are pure: what a rule
//!   is, which rules are in force, and the trie that enforces them.

pub mod config;
pub mod host;
pub mod kernel;
pub mod mitigator;
pub mod pins;
pub mod plan;
#[cfg(test)]
mod plan_props;
pub mod prefix;
pub mod rule;
pub mod ruleset;
