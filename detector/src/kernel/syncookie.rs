//! SYN cookies answered from XDP (see `detector_common::syncookie`): the
//! program the counting program tail-calls, what its SYN-ACKs offer, and
//! netfilter's SYNPROXY rule that completes the handshakes it checked.

use std::{io::Write, process::Command};

use aya::{
    maps::{Array, ProgramArray},
    programs::Xdp,
    Ebpf,
};
use detector_common::syncookie::{SynCookieConfig, DEFAULT_TTL, DEFAULT_WSCALE, HANDSHAKE_DSCP, SYNCOOKIE_CONFIG_MAP};
use thiserror::Error;

use super::ebpf;

/// The SYN-cookie program in the counting object.
pub const SYNCOOKIE_PROGRAM: &str = "detector_syncookie";
/// The program array the counting program tail-calls it through (pinned).
pub const SYNCOOKIE_PROGRAM_MAP: &str = "SYNCOOKIE_PROGRAM";
/// The nftables table holding the SYNPROXY rule.
pub const NFT_TABLE: &str = "detector_synproxy";

#[derive(Debug, Error)]
pub enum SynCookieError {
    #[error(transparent)]
    Load(#[from] ebpf::LoadError),
    #[error("the SYN-cookie program's maps: {0}")]
    Map(String),
    #[error("the SYNPROXY rule (nftables table inet {NFT_TABLE}_<interface>): {0}")]
    Nft(String),
}

/// Loads the SYN-cookie program, puts it where the counting program calls
/// it, and writes what its SYN-ACKs offer for `iface` (the MSS from the
/// interface's MTU).
pub fn install(ebpf: &mut Ebpf, iface: &str) -> Result<(), SynCookieError> {
    let fd = {
        let prog: &mut Xdp = ebpf::load_xdp(ebpf, "detector", SYNCOOKIE_PROGRAM)?;
        prog.fd()
            .map_err(|e| SynCookieError::Map(e.to_string()))?
            .try_clone()
            .map_err(|e| SynCookieError::Map(e.to_string()))?
    };
    let map = ebpf
        .map_mut(SYNCOOKIE_PROGRAM_MAP)
        .ok_or_else(|| SynCookieError::Map(format!("{SYNCOOKIE_PROGRAM_MAP} is missing")))?;
    let mut jump = ProgramArray::try_from(map).map_err(|e| SynCookieError::Map(e.to_string()))?;
    jump.set(0, &fd, 0).map_err(|e| SynCookieError::Map(format!("{SYNCOOKIE_PROGRAM_MAP}: {e}")))?;
    let map = ebpf
        .map_mut(SYNCOOKIE_CONFIG_MAP)
        .ok_or_else(|| SynCookieError::Map(format!("{SYNCOOKIE_CONFIG_MAP} is missing")))?;
    let mut config: Array<_, SynCookieConfig> = Array::try_from(map).map_err(|e| SynCookieError::Map(e.to_string()))?;
    config
        .set(0, config_for(mtu(iface)), 0)
        .map_err(|e| SynCookieError::Map(format!("{SYNCOOKIE_CONFIG_MAP}: {e}")))?;
    Ok(())
}

/// The interface's MTU; 1500 when it cannot be read.
fn mtu(iface: &str) -> u32 {
    std::fs::read_to_string(format!("/sys/class/net/{iface}/mtu"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1500)
}

/// What the SYN-ACKs offer on an interface of `mtu` bytes.
pub fn config_for(mtu: u32) -> SynCookieConfig {
    let mss = |headers: u32| mtu.saturating_sub(headers).clamp(536, u16::MAX as u32) as u16;
    SynCookieConfig { mss4: mss(40), mss6: mss(60), wscale: DEFAULT_WSCALE, ttl: DEFAULT_TTL, _pad: [0; 2] }
}

/// The nftables table of `iface`'s SYNPROXY rule: `detector_synproxy_`
/// and the name, with anything but letters, digits and `_` as `_`.
pub fn nft_table(iface: &str) -> String {
    let name: String = iface.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    format!("{NFT_TABLE}_{name}")
}

/// The nftables ruleset for `iface`: SYNPROXY for the segments the XDP
/// program marked (an ACK whose cookie it checked) on that interface.
/// Nothing else is touched: every other packet goes on as before.
///
/// The `ct state` match keeps conntrack running in this network namespace
/// while the table is there; the connections SYNPROXY opened need it for
/// their whole life (it translates their sequence numbers), so the table
/// stays until the interface is detached, not only while rules are in force.
pub fn nft_ruleset(iface: &str) -> String {
    let table = nft_table(iface);
    let dscp = format!("0x{HANDSHAKE_DSCP:02x}");
    let name = iface.replace('"', "");
    let mut s = format!("table inet {table}\ndelete table inet {table}\ntable inet {table} {{\n");
    s.push_str("  chain input {\n    type filter hook input priority filter - 10; policy accept;\n");
    for (family, mss) in [("ip", 1460), ("ip6", 1440)] {
        s.push_str(&format!(
            "    iifname \"{name}\" meta l4proto tcp {family} dscp {dscp} ct state invalid,untracked,new synproxy mss {mss} wscale {DEFAULT_WSCALE} timestamp sack-perm\n"
        ));
    }
    s.push_str("  }\n}\n");
    s
}

/// Installs (or replaces, in one transaction) the SYNPROXY table of each of `ifaces`.
pub fn apply_nft(ifaces: &[String]) -> Result<(), SynCookieError> {
    for iface in ifaces {
        nft(&nft_ruleset(iface))?;
    }
    Ok(())
}

/// Removes the SYNPROXY table of `iface`, if there is one.
pub fn remove_nft(iface: &str) -> Result<(), SynCookieError> {
    let table = nft_table(iface);
    nft(&format!("table inet {table}\ndelete table inet {table}\n"))
}

fn nft(script: &str) -> Result<(), SynCookieError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| SynCookieError::Nft(format!("running nft: {e} (install the nftables package)")))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(script.as_bytes())
        .map_err(|e| SynCookieError::Nft(e.to_string()))?;
    let out = child.wait_with_output().map_err(|e| SynCookieError::Nft(e.to_string()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(SynCookieError::Nft(err.lines().next().unwrap_or("nft failed").to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mss_from_the_mtu() {
        let c = config_for(1500);
        assert_eq!((c.mss4, c.mss6), (1460, 1440));
        assert_eq!(config_for(9000).mss4, 8960);
        assert_eq!(config_for(100).mss4, 536);
    }

    #[test]
    fn the_ruleset_matches_only_the_mark_on_the_named_interface() {
        assert_eq!(nft_table("veth-a.1"), "detector_synproxy_veth_a_1");
        let s = nft_ruleset("eth1");
        assert!(s.starts_with("table inet detector_synproxy_eth1\ndelete table inet detector_synproxy_eth1\n"), "{s}");
        assert!(s.contains("iifname \"eth1\" meta l4proto tcp ip dscp 0x3f ct state invalid,untracked,new synproxy"));
        assert!(s.contains("ip6 dscp 0x3f"));
        assert_eq!(s.matches("synproxy mss").count(), 2);
    }
}
