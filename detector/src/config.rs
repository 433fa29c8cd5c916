//! The configuration file (`--config`, YAML): its sections, reading it,
//! and checks that span sections.
//!
//! Every field has a documented default, so an empty file (or none) is a
//! working configuration. A file that does not parse or validate is refused
//! with the file, line, column and field at fault; nothing is guessed.

use std::{path::Path, time::Duration};

use serde::Deserialize;
use thiserror::Error;

use crate::{
    bgp::config::BgpConfig, detect::config::DetectionConfig, mitigate::config::MitigationConfig,
    networks::NetworksConfig,
};

#[derive(Debug, Error, PartialEq, Eq)]
#[error("{file}:{line}:{column}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// The whole file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConfigFile {
    pub detection: DetectionConfig,
    pub mitigation: MitigationConfig,
    /// The protected networks; none: the host's own addresses.
    pub networks: Option<NetworksConfig>,
    /// Upstream mitigation over BGP; none: nothing is announced.
    pub bgp: Option<BgpConfig>,
    /// Per interface: its capacity, for runbook triggers on a share of it.
    pub interfaces: crate::capacity::InterfacesConfig,
    /// Packet captures per incident.
    pub capture: crate::capture::CaptureConfig,
}

impl ConfigFile {
    /// Parses `text`, naming `file` in errors.
    pub fn parse(file: &str, text: &str) -> Result<ConfigFile, ConfigError> {
        if text.trim().is_empty() {
            return Ok(ConfigFile::default());
        }
        let cfg: ConfigFile = serde_yaml::from_str(text).map_err(|e| {
            let (line, column) = e.location().map(|l| (l.line(), l.column())).unwrap_or((0, 0));
            let mut message = e.to_string();
            // serde_yaml appends the position we already lead with.
            if let Some(i) = message.rfind(" at line ") {
                message.truncate(i);
            }
            ConfigError { file: file.to_string(), line, column, message }
        })?;
        cfg.check(file)?;
        Ok(cfg)
    }

    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<ConfigFile, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: name.clone(),
            line: 0,
            column: 0,
            message: format!("cannot read it: {e}"),
        })?;
        ConfigFile::parse(&name, &text)
    }

    /// Checks that need several fields at once.
    fn check(&self, file: &str) -> Result<(), ConfigError> {
        let d = &self.detection;
        let err = |message: String| ConfigError { file: file.to_string(), line: 0, column: 0, message };
        self.mitigation.check().map_err(err)?;
        if let Some(n) = &self.networks {
            n.check().map_err(err)?;
        }
        if let Some(b) = &self.bgp {
            b.check().map_err(err)?;
        }
        self.capture.check().map_err(err)?;
        if d.hold > Duration::from_secs(60) {
            return Err(err(format!("detection.hold: {:?} is over a minute; detection would come too late", d.hold)));
        }
        if d.quiet < d.hold {
            return Err(err("detection.quiet must be at least detection.hold".into()));
        }
        let b = &d.baseline;
        if b.window.is_zero() {
            return Err(err("detection.baseline.window must be more than zero".into()));
        }
        if !(b.margin_sigmas >= 0.0 && b.margin_sigmas.is_finite()) {
            return Err(err(format!("detection.baseline.margin_sigmas must be 0 or more, not {}", b.margin_sigmas)));
        }
        if !(b.margin_ratio >= 1.0 && b.margin_ratio.is_finite()) {
            return Err(err(format!("detection.baseline.margin_ratio must be 1 or more, not {}", b.margin_ratio)));
        }
        if d.top_sources == 0 || d.top_sources > 1000 || d.top_ports == 0 || d.top_ports > 1000 {
            return Err(err("detection.top_sources and detection.top_ports must be 1 to 1000".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::config::FamiliesConfig;

    fn parse(text: &str) -> Result<ConfigFile, ConfigError> {
        ConfigFile::parse("detector.yaml", text)
    }

    #[test]
    fn empty_and_defaults() {
        let d = parse("").unwrap();
        assert_eq!(d.detection, DetectionConfig::default());
        let d = parse("detection: {}\n").unwrap();
        assert_eq!(d.detection.hold, Duration::from_millis(200));
        assert_eq!(d.detection.families.syn_flood.pps, 10_000);
    }

    #[test]
    fn a_full_file() {
        let text = "\
detection:
  hold: 300ms
  quiet: 5s
  baseline: { window: 30m, warmup: 10m, margin_sigmas: 3, margin_ratio: 2.5 }
  severity:
    ratios: { medium: 1.5, high: 4, critical: 8 }
    pps: { medium: 50000, high: 500000, critical: 2000000 }
  families:
    syn_flood: { pps: 2000 }
    udp_flood: { pps: 40000, bps: 800Mbit }
    icmp_flood: { pps: 1000, bps: 20000000 }
    http_flood: { pps: 300, new_connections_pps: 1000 }
    fragment_flood: { enabled: false, pps: 1 }
";
        let c = parse(text).unwrap().detection;
        assert_eq!(c.hold, Duration::from_millis(300));
        assert_eq!(c.baseline.window, Duration::from_secs(1800));
        assert_eq!(c.severity.ratios.medium, 1.5);
        assert_eq!(c.families.udp_flood.bps, Some(800_000_000));
        assert_eq!(c.families.icmp_flood.bps, Some(20_000_000));
        assert_eq!(c.families.http_flood.new_connections_pps, Some(1000));
        assert!(!c.families.fragment_flood.enabled);
        // Families not named keep their defaults.
        assert_eq!(c.families.dns_flood, FamiliesConfig::default().dns_flood);
    }

    #[test]
    fn refusals_name_file_line_and_field() {
        let e = parse("detection:\n  families:\n    smurf_flood: { pps: 1 }\n").unwrap_err();
        assert_eq!((e.file.as_str(), e.line, e.column), ("detector.yaml", 3, 5));
        assert!(e.message.contains("unknown field `smurf_flood`"), "{e}");
        assert!(e.to_string().starts_with("detector.yaml:3:5: "), "{e}");

        let e = parse("detection:\n  families:\n    syn_flood: { pps: -5 }\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.message.contains("-5"), "{e}");

        let e = parse("detection:\n  severity:\n    ratios: { medium: 5, high: 2, critical: 10 }\n").unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert!(e.message.contains("must rise"), "{e}");

        let e = parse("detection:\n  hold: soon\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("'soon' is not a duration"), "{e}");

        let e = parse("detection:\n  families:\n    udp_flood: { pps: 1, bps: lots }\n").unwrap_err();
        assert!(e.message.contains("'lots' is not a bit rate"), "{e}");

        let e = parse("detection:\n  holdd: 1s\n").unwrap_err();
        assert!(e.message.contains("unknown field `holdd`"), "{e}");

        let e = parse("detection:\n  hold: 5s\n  quiet: 1s\n").unwrap_err();
        assert!(e.message.contains("quiet must be at least"), "{e}");
    }

    #[test]
    fn the_example_file_is_the_defaults() {
        let text = include_str!("../../detector.example.yaml");
        let parsed = parse(text).unwrap();
        assert_eq!(parsed.detection, DetectionConfig::default());
        assert_eq!(parsed.mitigation, crate::mitigate::config::MitigationConfig::default());
        assert_eq!(parsed.networks, None);
        assert_eq!(parsed.capture, crate::capture::CaptureConfig::default());
        // The commented example is a valid section.
        let example: String = text
            .lines()
            .skip_while(|l| !l.starts_with("# networks:"))
            .take_while(|l| l.starts_with('#'))
            .map(|l| l.strip_prefix("# ").unwrap_or(l.trim_start_matches('#')))
            .collect::<Vec<_>>()
            .join("\n");
        let n = parse(&example).unwrap().networks.expect("a networks section");
        assert_eq!(n.hostgroups[0].name, "customers");
        assert_eq!(parsed.bgp, None);
        // So is the commented BGP section.
        let example: String = text
            .lines()
            .skip_while(|l| !l.starts_with("# bgp:"))
            .take_while(|l| l.starts_with('#'))
            .map(|l| l.strip_prefix("# ").unwrap_or(l.trim_start_matches('#')))
            .collect::<Vec<_>>()
            .join("\n");
        let b = parse(&example).unwrap().bgp.expect("a bgp section");
        assert_eq!(b.neighbors[0].remote_as, 65000);
        assert_eq!(b.limits, crate::bgp::config::LimitsConfig::default());
        assert_eq!(b.communities, crate::bgp::config::CommunitiesConfig::default());
        assert_eq!(b.gobgpd, crate::bgp::config::GobgpdConfig::default());
    }

    #[test]
    fn mitigation_section() {
        let c = parse("mitigation:\n  allowlist: [192.0.2.0/24, \"2001:db8::1\"]\n  on_stop: detach\n").unwrap();
        assert_eq!(c.mitigation.allowlist.len(), 2);
        assert_eq!(c.mitigation.on_stop, crate::mitigate::config::OnStop::Detach);
        let e = parse("mitigation:\n  allowlist:\n    - 10.1.2.3/8\n").unwrap_err();
        assert_eq!((e.line, e.column), (3, 5), "{e}");
        assert!(e.message.contains("did you mean 10.0.0.0/8"), "{e}");
        let e = parse("mitigation:\n  max_rules: 0\n").unwrap_err();
        assert!(e.message.contains("mitigation.max_rules must be 1 to 65536"), "{e}");
        let e = parse("mitigation:\n  on_stop: maybe\n").unwrap_err();
        assert!(e.message.contains("unknown variant `maybe`"), "{e}");
    }
}
