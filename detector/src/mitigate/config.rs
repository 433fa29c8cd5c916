//! The `mitigation:` section of the configuration file.

use serde::Deserialize;

use super::prefix::Prefix;
use detector_common::rules::{DEFAULT_MAX_ALLOW, DEFAULT_MAX_BUCKETS, DEFAULT_MAX_RULES};

/// What a normal stop does to the XDP program and its rules.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStop {
    /// Rules in force stay in force (pinned in bpffs) until their TTLs run
    /// out or the next controller adopts them; with no rule in force the
    /// program is detached.
    #[default]
    Keep,
    /// Detach and remove every rule and pin.
    Detach,
}

impl std::str::FromStr for OnStop {
    type Err = String;
    fn from_str(s: &str) -> Result<OnStop, String> {
        match s {
            "keep" => Ok(OnStop::Keep),
            "detach" | "clear" => Ok(OnStop::Detach),
            other => Err(format!("'{other}' is not a stop behaviour (use keep or detach)")),
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MitigationConfig {
    /// Rules (drop and rate limit) in force at once.
    pub max_rules: u32,
    /// Allowlist entries, the host's own addresses included.
    pub max_allow: u32,
    /// Sources tracked at once by rate-limit rules (an LRU: the least
    /// recently seen source loses its bucket first).
    pub max_rate_limited_sources: u32,
    /// Prefixes that always pass, besides the host's own addresses, its
    /// default gateways and loopback (which are always allowlisted).
    pub allowlist: Vec<Prefix>,
    /// What a normal stop does (`--on-stop` overrides it).
    pub on_stop: OnStop,
}

impl Default for MitigationConfig {
    fn default() -> Self {
        MitigationConfig {
            max_rules: DEFAULT_MAX_RULES,
            max_allow: DEFAULT_MAX_ALLOW,
            max_rate_limited_sources: DEFAULT_MAX_BUCKETS,
            allowlist: Vec::new(),
            on_stop: OnStop::Keep,
        }
    }
}

impl MitigationConfig {
    /// Range checks; the message names the field.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=65_536).contains(&self.max_rules) {
            return Err(format!("mitigation.max_rules must be 1 to 65536, not {}", self.max_rules));
        }
        if !(16..=65_536).contains(&self.max_allow) {
            return Err(format!("mitigation.max_allow must be 16 to 65536, not {}", self.max_allow));
        }
        if !(64..=16_777_216).contains(&self.max_rate_limited_sources) {
            return Err(format!(
                "mitigation.max_rate_limited_sources must be 64 to 16777216, not {}",
                self.max_rate_limited_sources
            ));
        }
        if self.allowlist.len() as u32 > self.max_allow / 2 {
            return Err(format!(
                "mitigation.allowlist has {} entries; at most half of mitigation.max_allow ({}) leaves room for the host's own",
                self.allowlist.len(),
                self.max_allow
            ));
        }
        Ok(())
    }
}
