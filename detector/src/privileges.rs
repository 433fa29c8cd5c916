//! Which capabilities this process has, so a missing one is named before
//! the kernel answers with a bare EPERM; and the descriptor limit, raised
//! at start so the listeners' caps leave room for everything else.

use std::fs;

use thiserror::Error;

const CAP_NET_ADMIN: u32 = 12;
const CAP_NET_RAW: u32 = 13;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PrivilegeError {
    #[error(
        "missing {missing}: {what} needs them (run as root, or grant them with setcap or systemd's AmbientCapabilities)"
    )]
    Missing { missing: String, what: &'static str },
    #[error("cannot read this process's capabilities from /proc/self/status: {0}")]
    Unreadable(String),
}

/// What an operation needs from the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    // CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON on kernels and
    // setups without them. The verifier refuses the XDP program's pointer
    // arithmetic to a loader without CAP_PERFMON ("pointer -= pointer
    // prohibited").
    let xdp = need == Need::Xdp;
    let flood = need == Need::Flood;
    let missing: Vec<&str> = [
        ("CAP_BPF", !has(CAP_BPF) && !has(CAP_SYS_ADMIN)),
        ("CAP_PERFMON", xdp && !has(CAP_PERFMON) && !has(CAP_SYS_ADMIN)),
        ("CAP_NET_ADMIN", !has(CAP_NET_ADMIN)),
        ("CAP_NET_RAW", flood && !has(CAP_NET_RAW)),
    ]
    .into_iter()
    .filter_map(|(name, lacking)| lacking.then_some(name))
    .collect();
    let what = match need {
        Need::Xdp => "loading and attaching the XDP program",
        Need::Flood => "sending the flood",
    };
    if missing.is_empty() {
        Ok(())
    } else {
        let missing = match missing.split_last() {
            Some((last, [])) => last.to_string(),
            Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
            None => unreachable!("not empty"),
        };
        Err(PrivilegeError::Missing { missing, what })
    }
}

/// Checks this process for `need`.
pub fn check(need: Need) -> Result<(), PrivilegeError> {
    check_caps(effective()?, need)
}

/// The descriptor limits (soft, hard) before and after [`raise_fd_limit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdLimit {
    pub before: u64,
    pub now: u64,
    pub hard: u64,
}

/// Raises this process's soft limit on open descriptors (RLIMIT_NOFILE) to
/// its hard limit. Distributions start services with a soft limit of 1024
/// for the sake of `select(2)`, which nothing here uses; the hard limit is
/// what the administrator allowed. The listeners size their connection caps
/// from the result ([`fd_limit`]), keeping descriptors in reserve for the
/// BPF maps, the state directory and the control socket.
// `rlim_t` is not u64 on every target.
#[allow(clippy::unnecessary_cast)]
pub fn raise_fd_limit() -> std::io::Result<FdLimit> {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = r.rlim_cur as u64;
    if r.rlim_cur < r.rlim_max {
        let raised = libc::rlimit { rlim_cur: r.rlim_max, rlim_max: r.rlim_max };
        // SAFETY: setrlimit reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(FdLimit { before, now: fd_limit(), hard: r.rlim_max as u64 })
}

/// The current soft limit on open descriptors (1024 if it cannot be read).
#[allow(clippy::unnecessary_cast)]
pub fn fd_limit() -> u64 {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return 1024;
    }
    r.rlim_cur as u64
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
        assert!(err.starts_with("missing CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN"), "{err}");
        let only_bpf = 1u64 << CAP_BPF;
        let err = check_caps(only_bpf, Need::Xdp).unwrap_err().to_string();
        assert!(err.starts_with("missing CAP_PERFMON and CAP_NET_ADMIN:"), "{err}");
        let service = only_bpf | (1u64 << CAP_PERFMON) | (1u64 << CAP_NET_ADMIN);
        assert_eq!(check_caps(service, Need::Xdp), Ok(()));
        let sys_admin_net = (1u64 << CAP_SYS_ADMIN) | (1u64 << CAP_NET_ADMIN);
        assert_eq!(check_caps(sys_admin_net, Need::Xdp), Ok(()));
        let err = check_caps(sys_admin_net, Need::Flood).unwrap_err().to_string();
        assert!(err.starts_with("missing CAP_NET_RAW"), "{err}");
    }

    #[test]
    fn the_descriptor_limit_is_raised_to_the_hard_limit() {
        let l = raise_fd_limit().unwrap();
        assert_eq!(l.now, l.hard);
        assert!(l.now >= l.before);
        assert_eq!(fd_limit(), l.hard);
    }
}
