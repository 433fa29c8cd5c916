//! The capacity of each watched interface, in bits per second: what a
//! runbook's `trigger.min_bps_share` compares an attack's bit rate with
//! (the escalation ladder). Configured (`interfaces.<name>.capacity_bps`)
//! or read from the link speed (`/sys/class/net/<name>/speed`); a veth,
//! a bridge or a tunnel reports none, and needs the configured value.

use std::collections::BTreeMap;

use serde::{de, Deserialize, Deserializer};

/// `interfaces.<name>:` in the configuration file.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterfaceConfig {
    /// Bits per second: `10000000000`, or `10G`, `100M`, `500k`.
    #[serde(default, deserialize_with = "bits")]
    pub capacity_bps: Option<u64>,
}

pub type InterfacesConfig = BTreeMap<String, InterfaceConfig>;

/// `10G`, `100M`, `500k` (powers of 1000) or a plain number of bits per
/// second; more than zero.
pub fn parse_bits(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1e3),
        Some((i, 'm' | 'M')) => (&t[..i], 1e6),
        Some((i, 'g' | 'G')) => (&t[..i], 1e9),
        Some((i, 't' | 'T')) => (&t[..i], 1e12),
        _ => (t, 1.0),
    };
    match num.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && (v * mult) < 1e15 => Ok((v * mult) as u64),
        _ => Err(format!("'{s}' is not a capacity in bits per second (write 10G, 100M or 1000000)")),
    }
}

fn bits<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Num(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Num(0) => Err(de::Error::custom("capacity_bps: 0 is not a capacity")),
        Raw::Num(n) => Ok(Some(n)),
        Raw::Text(t) => parse_bits(&t).map(Some).map_err(|e| de::Error::custom(format!("capacity_bps: {e}"))),
    }
}

/// The link speed the kernel reports for `iface`, in bits per second.
pub fn link_speed_bps(iface: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{iface}/speed")).ok()?;
    // Mb/s; -1 (or an error reading it) when the driver knows none.
    text.trim().parse::<i64>().ok().filter(|m| *m > 0).map(|m| m as u64 * 1_000_000)
}

/// Each interface's capacity: the configured one, else its link speed;
/// those with neither are left out.
pub fn capacities(ifaces: &[String], cfg: &InterfacesConfig) -> BTreeMap<String, u64> {
    ifaces
        .iter()
        .filter_map(|i| cfg.get(i).and_then(|c| c.capacity_bps).or_else(|| link_speed_bps(i)).map(|c| (i.clone(), c)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_per_second() {
        assert_eq!(parse_bits("10G"), Ok(10_000_000_000));
        assert_eq!(parse_bits("2.5g"), Ok(2_500_000_000));
        assert_eq!(parse_bits("100M"), Ok(100_000_000));
        assert_eq!(parse_bits("1000"), Ok(1000));
        assert!(parse_bits("fast").unwrap_err().contains("'fast' is not a capacity"));
        assert!(parse_bits("0").is_err());
        let c: InterfacesConfig =
            serde_yaml::from_str("veth0: { capacity_bps: 1G }\neth1: { capacity_bps: 5 }").unwrap();
        assert_eq!(c["veth0"].capacity_bps, Some(1_000_000_000));
        let e = serde_yaml::from_str::<InterfacesConfig>("eth0: { capacity_bps: 0 }").unwrap_err();
        assert!(e.to_string().contains("capacity_bps: 0 is not a capacity"), "{e}");
        let caps = capacities(&["veth0".into(), "no-such-if".into()], &c);
        assert_eq!(caps.get("veth0"), Some(&1_000_000_000));
        assert_eq!(caps.get("no-such-if"), None);
    }
}
