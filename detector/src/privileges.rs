//! Which capabilities this process has, so a missing one is named before
//! the kernel answers with a bare EPERM.

use std::fs;

use thiserror::Error;

const CAP_NET_ADMIN: u32 = 12;
const CAP_NET_RAW: u32 = 13;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PrivilegeError {
    #[error(
        "missing {missing}: {what} needs it (run as root, or grant it with setcap or systemd's AmbientCapabilities)"
    )]
    Missing { missing: String, what: &'static str },
    #[error("cannot read this process's capabilities from /proc/self/status: {0}")]
    Unreadable(String),
}

/// What an operation needs from the kernel.
#[derive(Clone, Copy, Debug)]
pub enum Need {
    /// Load and attach XDP programs, read and write BPF maps.
    Xdp,
    /// Run the flood generator (BPF test runs and raw packet sockets).
    Flood,
}

/// The effective capability set, parsed from `/proc/self/status`.
pub fn effective() -> Result<u64, PrivilegeError> {
    let status = fs::read_to_string("/proc/self/status").map_err(|e| PrivilegeError::Unreadable(e.to_string()))?;
    parse_cap_eff(&status).ok_or_else(|| PrivilegeError::Unreadable("no CapEff line".into()))
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line["CapEff:".len()..].trim(), 16).ok()
}

/// Checks `caps` against what `need` requires; names every missing one.
pub fn check_caps(caps: u64, need: Need) -> Result<(), PrivilegeError> {
    let has = |c: u32| caps & (1u64 << c) != 0;
    let mut missing = Vec::new();
    // CAP_SYS_ADMIN stands in for CAP_BPF on kernels and setups without it.
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    let what = match need {
        Need::Xdp => "loading and attaching the XDP program",
        Need::Flood => {
            if !has(CAP_NET_RAW) {
                missing.push("CAP_NET_RAW");
            }
            "sending the flood"
        }
    };
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PrivilegeError::Missing { missing: missing.join(" and "), what })
    }
}

/// Checks this process for `need`.
pub fn check(need: Need) -> Result<(), PrivilegeError> {
    check_caps(effective()?, need)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status() {
        let s = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(parse_cap_eff(s), Some(0x1ffffffffff));
        assert_eq!(parse_cap_eff("Name: x\n"), None);
    }

    #[test]
    fn names_what_is_missing() {
        let all = u64::MAX;
        assert_eq!(check_caps(all, Need::Xdp), Ok(()));
        let err = check_caps(0, Need::Xdp).unwrap_err().to_string();
        assert!(err.starts_with("missing CAP_BPF and CAP_NET_ADMIN"), "{err}");
        let only_bpf = 1u64 << CAP_BPF;
        let err = check_caps(only_bpf, Need::Xdp).unwrap_err().to_string();
        assert!(err.starts_with("missing CAP_NET_ADMIN:"), "{err}");
        let sys_admin_net = (1u64 << CAP_SYS_ADMIN) | (1u64 << CAP_NET_ADMIN);
        assert_eq!(check_caps(sys_admin_net, Need::Xdp), Ok(()));
        let err = check_caps(sys_admin_net, Need::Flood).unwrap_err().to_string();
        assert!(err.starts_with("missing CAP_NET_RAW"), "{err}");
    }
}
