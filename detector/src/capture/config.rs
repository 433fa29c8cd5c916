//! `capture:` in the configuration file.

use std::{fmt, time::Duration};

use serde::{de, Deserialize, Deserializer};

use detector_common::sample::SNAPLEN;

/// Packet captures per incident. Every field has a default; `capture: {}`
/// (or no section) keeps the last 1,000 samples before an attack, up to
/// 10,000 per incident, 256 bytes of each, for 30 days and 1 GiB at most.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureConfig {
    /// Off: no buffer, no files (the samples still feed detection).
    pub enabled: bool,
    /// Per interface: how many of the last samples before any attack are
    /// kept, and put at the head of each incident's file.
    pub pre_attack_packets: usize,
    /// Per incident: at most this many samples of its target while it runs.
    pub packets_per_incident: usize,
    /// Bytes kept of each packet (at most 256: what the program copies).
    pub snaplen: usize,
    /// Files older than this are removed.
    #[serde(deserialize_with = "crate::detect::config::duration")]
    pub retention: Duration,
    /// The files together stay under this many bytes, the oldest removed
    /// first: a number, or `500MiB`, `1GiB`, `200MB`.
    #[serde(deserialize_with = "bytes")]
    pub max_total_bytes: u64,
}

pub const MAX_PRE_ATTACK: usize = 100_000;
/// A file is served whole from memory: at most about 35 MB.
pub const MAX_PER_INCIDENT: usize = 100_000;
/// The smallest snap length: an Ethernet, IPv6 and TCP header with options.
pub const MIN_SNAPLEN: usize = 96;

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            enabled: true,
            pre_attack_packets: 1_000,
            packets_per_incident: 10_000,
            snaplen: SNAPLEN,
            retention: Duration::from_secs(30 * 86_400),
            max_total_bytes: 1 << 30,
        }
    }
}

impl CaptureConfig {
    /// The checks serde cannot make; the message names the field.
    pub fn check(&self) -> Result<(), String> {
        if self.pre_attack_packets > MAX_PRE_ATTACK {
            return Err(format!(
                "capture.pre_attack_packets: {} is over the most, {MAX_PRE_ATTACK}",
                self.pre_attack_packets
            ));
        }
        if self.packets_per_incident == 0 || self.packets_per_incident > MAX_PER_INCIDENT {
            return Err(format!(
                "capture.packets_per_incident: {} is not between 1 and {MAX_PER_INCIDENT} (turn captures off with capture.enabled: false)",
                self.packets_per_incident
            ));
        }
        if !(MIN_SNAPLEN..=SNAPLEN).contains(&self.snaplen) {
            return Err(format!(
                "capture.snaplen: {} is not between {MIN_SNAPLEN} and {SNAPLEN} (the bytes the XDP program copies)",
                self.snaplen
            ));
        }
        if self.retention < Duration::from_secs(60) {
            return Err(format!("capture.retention: {} is under a minute", humantime::format_duration(self.retention)));
        }
        if self.max_total_bytes < 1 << 20 {
            return Err(format!("capture.max_total_bytes: {} is under 1 MiB", self.max_total_bytes));
        }
        Ok(())
    }
}

/// `1073741824`, `1GiB`, `500MiB`, `64KiB` (powers of 1024) or `1GB`,
/// `200MB`, `64kB` (powers of 1000).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let units: [(&str, f64); 8] = [
        ("KiB", 1024.0),
        ("MiB", 1024.0 * 1024.0),
        ("GiB", 1024.0 * 1024.0 * 1024.0),
        ("TiB", 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("kB", 1e3),
        ("MB", 1e6),
        ("GB", 1e9),
        ("TB", 1e12),
    ];
    let (num, mult) = units
        .iter()
        .find_map(|(u, m)| t.strip_suffix(u).map(|n| (n.trim(), *m)))
        .unwrap_or((t.strip_suffix('B').unwrap_or(t).trim(), 1.0));
    match num.parse::<f64>() {
        Ok(v) if v >= 0.0 && (v * mult) < 1e18 => Ok((v * mult) as u64),
        _ => Err(format!("'{s}' is not a size in bytes (write 1GiB, 500MiB or 1073741824)")),
    }
}

fn bytes<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    struct V;
    impl de::Visitor<'_> for V {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a size like 1GiB, 500MiB or a number of bytes")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom(format!("{v} is not a size in bytes")))
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<u64, E> {
            parse_bytes(s).map_err(E::custom)
        }
    }
    d.deserialize_any(V)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("500 MiB"), Ok(500 << 20));
        assert_eq!(parse_bytes("200MB"), Ok(200_000_000));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("4096B"), Ok(4096));
        assert!(parse_bytes("lots").unwrap_err().contains("'lots' is not a size"));
        assert!(parse_bytes("-1MiB").is_err());
    }

    #[test]
    fn defaults_and_checks() {
        let d = CaptureConfig::default();
        assert!(d.check().is_ok());
        assert_eq!((d.pre_attack_packets, d.packets_per_incident, d.snaplen), (1000, 10_000, 256));
        let c: CaptureConfig = serde_yaml::from_str("retention: 7d\nmax_total_bytes: 200MiB\nsnaplen: 128\n").unwrap();
        assert_eq!((c.retention, c.max_total_bytes, c.snaplen), (Duration::from_secs(7 * 86400), 200 << 20, 128));
        assert!(c.check().is_ok());
        let bad = |y: &str| serde_yaml::from_str::<CaptureConfig>(y).unwrap().check().unwrap_err();
        assert!(bad("snaplen: 1500").contains("capture.snaplen: 1500"));
        assert!(bad("packets_per_incident: 0").contains("capture.packets_per_incident"));
        assert!(bad("retention: 1s").contains("capture.retention"));
        assert!(bad("max_total_bytes: 1000").contains("capture.max_total_bytes"));
        assert!(serde_yaml::from_str::<CaptureConfig>("max_total_bytes: huge").is_err());
        assert!(serde_yaml::from_str::<CaptureConfig>("snap_len: 64").is_err(), "unknown fields are refused");
    }
}
