//! Interface lookups in the calling thread's network namespace.

use std::{ffi::CString, io};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum IfaceError {
    #[error("interface '{0}' does not exist")]
    NoSuchInterface(String),
    #[error("'{0}' is not a valid interface name (1 to 15 characters, no '/', ':' or spaces)")]
    BadName(String),
    #[error("cannot read the MAC address of interface '{iface}': {source}")]
    Mac { iface: String, source: io::Error },
}

/// Rejects names the kernel would never accept, before any syscall.
pub fn validate_name(name: &str) -> Result<(), IfaceError> {
    let ok = !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0');
    if ok {
        Ok(())
    } else {
        Err(IfaceError::BadName(name.to_string()))
    }
}

/// The interface's index, or a clear error naming it.
pub fn index(name: &str) -> Result<u32, IfaceError> {
    validate_name(name)?;
    let c = CString::new(name).map_err(|_| IfaceError::BadName(name.to_string()))?;
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(IfaceError::NoSuchInterface(name.to_string())),
        i => Ok(i),
    }
}

/// The interface's MAC address (SIOCGIFHWADDR on a socket of this thread's
/// namespace; `/sys/class/net` may show another namespace).
pub fn mac(name: &str) -> Result<[u8; 6], IfaceError> {
    validate_name(name)?;
    let err = |source| IfaceError::Mac { iface: name.to_string(), source };
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    let rc = unsafe { libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut req) };
    let last = io::Error::last_os_error();
    unsafe { libc::close(fd) };
    if rc < 0 {
        return Err(if last.raw_os_error() == Some(libc::ENODEV) {
            IfaceError::NoSuchInterface(name.to_string())
        } else {
            err(last)
        });
    }
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (m, d) in mac.iter_mut().zip(data.iter()) {
        *m = *d as u8;
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("eth0").is_ok());
        assert!(validate_name("veth-lab.1").is_ok());
        for bad in ["", "a/b", "a b", "way-too-long-name0", "x:1", ".."] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        assert!(matches!(index("nonexistent0"), Err(IfaceError::NoSuchInterface(_))));
        assert_eq!(index("lo").unwrap(), 1);
    }
}
