//! The detection settings: the `detection:` section of the configuration
//! file ([`crate::config`]). Every field has a documented default, and the
//! values are checked as they are read.

use std::{fmt, time::Duration};

use serde::{de, Deserialize, Deserializer};

use super::family::Family;

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DetectionConfig {
    /// A family must stay above its threshold this long to open an incident.
    #[serde(deserialize_with = "duration")]
    pub hold: Duration,
    /// An incident resolves once all its families stay below for this long.
    #[serde(deserialize_with = "duration")]
    pub quiet: Duration,
    pub baseline: BaselineConfig,
    pub severity: SeverityConfig,
    pub families: FamiliesConfig,
    /// Top sources and destination ports kept in an incident.
    pub top_sources: usize,
    pub top_ports: usize,
}

impl Default for DetectionConfig {
    fn default() -> Self {
        DetectionConfig {
            hold: Duration::from_millis(200),
            quiet: Duration::from_secs(10),
            baseline: BaselineConfig::default(),
            severity: SeverityConfig::default(),
            families: FamiliesConfig::default(),
            top_sources: 10,
            top_ports: 5,
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BaselineConfig {
    /// Time constant of the moving averages: how far back "normal" reaches.
    #[serde(deserialize_with = "duration")]
    pub window: Duration,
    /// Learning time before learned levels count; until then only the
    /// static floors apply.
    #[serde(deserialize_with = "duration")]
    pub warmup: Duration,
    /// Alarm above mean + this many standard deviations...
    pub margin_sigmas: f64,
    /// ... and above this many times the mean.
    pub margin_ratio: f64,
}

impl Default for BaselineConfig {
    fn default() -> Self {
        BaselineConfig {
            window: Duration::from_secs(600),
            warmup: Duration::from_secs(300),
            margin_sigmas: 4.0,
            margin_ratio: 3.0,
        }
    }
}

/// Three ascending levels.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Levels<T> {
    pub medium: T,
    pub high: T,
    pub critical: T,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SeverityConfig {
    /// Rate over threshold at which an attack is medium, high, critical.
    pub ratios: Ratios,
    /// Packets per second at which an attack is at least medium, high, critical.
    pub pps: PpsLevels,
}

impl Default for SeverityConfig {
    fn default() -> Self {
        SeverityConfig {
            ratios: Ratios(Levels { medium: 2.0, high: 5.0, critical: 10.0 }),
            pps: PpsLevels(Levels { medium: 100_000, high: 1_000_000, critical: 5_000_000 }),
        }
    }
}

/// Severity ratios, checked to rise (the error points at the mapping).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(try_from = "Levels<f64>")]
pub struct Ratios(pub Levels<f64>);

impl TryFrom<Levels<f64>> for Ratios {
    type Error = String;
    fn try_from(l: Levels<f64>) -> Result<Self, String> {
        let Levels { medium, high, critical } = l;
        if medium >= 1.0 && medium < high && high < critical && critical.is_finite() {
            Ok(Ratios(l))
        } else {
            Err(format!("ratios must rise: 1 <= medium < high < critical, not {medium}, {high}, {critical}"))
        }
    }
}

impl std::ops::Deref for Ratios {
    type Target = Levels<f64>;
    fn deref(&self) -> &Levels<f64> {
        &self.0
    }
}

/// Severity packet rates, checked to rise.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(try_from = "Levels<u64>")]
pub struct PpsLevels(pub Levels<u64>);

impl TryFrom<Levels<u64>> for PpsLevels {
    type Error = String;
    fn try_from(l: Levels<u64>) -> Result<Self, String> {
        let Levels { medium, high, critical } = l;
        if medium < high && high < critical {
            Ok(PpsLevels(l))
        } else {
            Err(format!("pps levels must rise: medium < high < critical, not {medium}, {high}, {critical}"))
        }
    }
}

impl std::ops::Deref for PpsLevels {
    type Target = Levels<u64>;
    fn deref(&self) -> &Levels<u64> {
        &self.0
    }
}

/// The static floor of one family.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FamilyConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Packets per second (for http_flood: requests per second).
    pub pps: u64,
    /// Bits per second (a number, or a string like "500Mbit"); none to watch pps only.
    #[serde(default, deserialize_with = "bits")]
    pub bps: Option<u64>,
    /// http_flood only: new connections per second to ports 80, 443, 8080, 8443.
    #[serde(default)]
    pub new_connections_pps: Option<u64>,
}

fn yes() -> bool {
    true
}

impl FamilyConfig {
    const fn new(pps: u64, bps: Option<u64>) -> Self {
        FamilyConfig { enabled: true, pps, bps, new_connections_pps: None }
    }
}

const MBIT: u64 = 1_000_000;
const GBIT: u64 = 1_000_000_000;

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FamiliesConfig {
    pub udp_flood: FamilyConfig,
    pub syn_flood: FamilyConfig,
    pub ack_flood: FamilyConfig,
    pub icmp_flood: FamilyConfig,
    pub dns_flood: FamilyConfig,
    pub dns_amplification: FamilyConfig,
    pub udp_amplification: FamilyConfig,
    pub http_flood: FamilyConfig,
    pub fragment_flood: FamilyConfig,
}

impl Default for FamiliesConfig {
    fn default() -> Self {
        FamiliesConfig {
            udp_flood: FamilyConfig::new(100_000, Some(GBIT)),
            syn_flood: FamilyConfig::new(10_000, None),
            ack_flood: FamilyConfig::new(100_000, Some(GBIT)),
            icmp_flood: FamilyConfig::new(5_000, Some(100 * MBIT)),
            dns_flood: FamilyConfig::new(20_000, None),
            dns_amplification: FamilyConfig::new(10_000, Some(200 * MBIT)),
            udp_amplification: FamilyConfig::new(5_000, Some(200 * MBIT)),
            http_flood: FamilyConfig { new_connections_pps: Some(5_000), ..FamilyConfig::new(5_000, None) },
            fragment_flood: FamilyConfig::new(10_000, Some(500 * MBIT)),
        }
    }
}

impl FamiliesConfig {
    pub fn get(&self, f: Family) -> Option<&FamilyConfig> {
        Some(match f {
            Family::UdpFlood => &self.udp_flood,
            Family::SynFlood => &self.syn_flood,
            Family::AckFlood => &self.ack_flood,
            Family::IcmpFlood => &self.icmp_flood,
            Family::DnsFlood => &self.dns_flood,
            Family::DnsAmplification => &self.dns_amplification,
            Family::UdpAmplification => &self.udp_amplification,
            Family::HttpFlood => &self.http_flood,
            Family::FragmentFlood => &self.fragment_flood,
            Family::MultiVector => return None,
        })
    }
}

pub(crate) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct V;
    impl de::Visitor<'_> for V {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration like 200ms, 10s or 5m")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Duration, E> {
            humantime::parse_duration(s)
                .map_err(|e| E::custom(format!("'{s}' is not a duration ({e}); write it like 200ms, 10s or 5m")))
        }
    }
    d.deserialize_str(V)
}

/// Bits per second: an integer, or a number with k, M, G or T (and an
/// optional "bit", "bps" or "b/s"), decimal.
pub fn parse_bits(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = ["bit", "bps", "b/s"].iter().find_map(|u| t.strip_suffix(u)).unwrap_or(t).trim_end();
    let (num, mult) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1e3),
        Some('M') => (&t[..t.len() - 1], 1e6),
        Some('G') => (&t[..t.len() - 1], 1e9),
        Some('T') => (&t[..t.len() - 1], 1e12),
        _ => (t, 1.0),
    };
    match num.trim().parse::<f64>() {
        Ok(v) if v >= 0.0 && v.is_finite() => Ok((v * mult) as u64),
        _ => Err(format!("'{s}' is not a bit rate (write it like 500Mbit, 1.5Gbit or 200000000)")),
    }
}

fn bits<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    struct V;
    impl de::Visitor<'_> for V {
        type Value = Option<u64>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a bit rate like 500Mbit, or a number of bits per second")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Option<u64>, E> {
            Ok(Some(v))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Option<u64>, E> {
            u64::try_from(v).map(Some).map_err(|_| E::custom(format!("a bit rate cannot be negative ({v})")))
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Option<u64>, E> {
            parse_bits(s).map(Some).map_err(E::custom)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Option<u64>, E> {
            Ok(None)
        }
    }
    d.deserialize_any(V)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_rates() {
        assert_eq!(parse_bits("500Mbit"), Ok(500_000_000));
        assert_eq!(parse_bits("1.5G"), Ok(1_500_000_000));
        assert_eq!(parse_bits("200k bps"), Ok(200_000));
        assert_eq!(parse_bits("1000"), Ok(1000));
        assert!(parse_bits("-1M").is_err());
        assert!(parse_bits("fast").is_err());
    }
}
