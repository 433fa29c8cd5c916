//! How bad an attack is.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::config::SeverityConfig;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 4] = [Severity::Low, Severity::Medium, Severity::High, Severity::Critical];

    pub fn name(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    pub fn parse(s: &str) -> Option<Severity> {
        Severity::ALL.iter().copied().find(|v| v.name() == s)
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The severity of a rate `ratio` times its threshold, at `pps` packets per
/// second: the worse of the two scales.
pub fn assess(cfg: &SeverityConfig, ratio: f64, pps: f64) -> Severity {
    let by_ratio = if ratio >= cfg.ratios.critical {
        Severity::Critical
    } else if ratio >= cfg.ratios.high {
        Severity::High
    } else if ratio >= cfg.ratios.medium {
        Severity::Medium
    } else {
        Severity::Low
    };
    let by_pps = if pps >= cfg.pps.critical as f64 {
        Severity::Critical
    } else if pps >= cfg.pps.high as f64 {
        Severity::High
    } else if pps >= cfg.pps.medium as f64 {
        Severity::Medium
    } else {
        Severity::Low
    };
    by_ratio.max(by_pps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_scales_count() {
        let cfg = SeverityConfig::default();
        assert_eq!(assess(&cfg, 1.2, 10.0), Severity::Low);
        assert_eq!(assess(&cfg, 2.0, 10.0), Severity::Medium);
        assert_eq!(assess(&cfg, 5.0, 10.0), Severity::High);
        assert_eq!(assess(&cfg, 10.0, 10.0), Severity::Critical);
        // A small ratio over a high floor can still be a huge flood.
        assert_eq!(assess(&cfg, 1.1, 2_000_000.0), Severity::High);
        assert_eq!(assess(&cfg, 1.1, 10_000_000.0), Severity::Critical);
        assert!(Severity::Critical > Severity::Low);
        assert_eq!(Severity::parse("high"), Some(Severity::High));
        assert_eq!(Severity::parse("severe"), None);
    }
}
