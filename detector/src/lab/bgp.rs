//! A lab for upstream mitigation over BGP: the detector's speaker (gobgpd)
//! in one namespace, its upstream router (BIRD, [`super::bird`]) in
//! another, a veth between them. Uniquely named, torn down on drop (and on
//! panic), like every lab ([`super::Lab`]); no default route anywhere.
//!
//! ```text
//!  netns <name>-speaker                netns <name>-upstream
//!  <speaker_if> 192.0.2.1/24 ========= <upstream_if> 192.0.2.2/24
//!  AS 64512 (gobgpd)                    AS 65000 (BIRD)
//!                                       198.51.100.0/24 via 192.0.2.1
//! ```
//!
//! The upstream routes the customers' network ([`CUSTOMERS_NET_V4`]) to
//! the speaker, as a provider routes a customer's prefix: a blackhole the
//! speaker announces for one of its addresses overrides that route in the
//! upstream's kernel.

use std::path::PathBuf;

use super::{ip, make_dir, sysctl, teardown, veth, LabError, LabNames};
use crate::netns::NetnsGuard;

pub const SPEAKER_V4: &str = "192.0.2.1";
pub const UPSTREAM_V4: &str = "192.0.2.2";
pub const SPEAKER_AS: u32 = 64512;
pub const UPSTREAM_AS: u32 = 65000;
/// The network behind the speaker: what it protects and may announce.
pub const CUSTOMERS_NET_V4: &str = "198.51.100.0/24";
pub const CUSTOMERS_NET_V6: &str = "2001:db8:100::/48";

/// The two namespaces and the link between them.
pub struct BgpLab {
    pub speaker_ns: String,
    pub upstream_ns: String,
    pub speaker_if: String,
    pub upstream_if: String,
    /// A scratch directory (configurations, sockets, logs), removed with
    /// the lab.
    pub dir: PathBuf,
}

impl BgpLab {
    pub fn new() -> Result<BgpLab, LabError> {
        let names = LabNames::next();
        let lab = BgpLab {
            speaker_ns: names.ns("speaker"),
            upstream_ns: names.ns("upstream"),
            speaker_if: names.iface('s'),
            upstream_if: names.iface('u'),
            dir: names.dir(),
        };
        // From here on, drop cleans up whatever was made.
        lab.build()?;
        Ok(lab)
    }

    fn build(&self) -> Result<(), LabError> {
        make_dir(&self.dir)?;
        for ns in [&self.speaker_ns, &self.upstream_ns] {
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        sysctl(&self.upstream_ns, "net/ipv4/ip_forward", "1")?;
        veth(&self.speaker_ns, &self.speaker_if, &self.upstream_ns, &self.upstream_if)?;
        for (ns, ifname, v4) in
            [(&self.speaker_ns, &self.speaker_if, SPEAKER_V4), (&self.upstream_ns, &self.upstream_if, UPSTREAM_V4)]
        {
            ip(&["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", ifname])?;
            ip(&["-n", ns, "link", "set", ifname, "up"])?;
        }
        ip(&["-n", &self.upstream_ns, "route", "add", CUSTOMERS_NET_V4, "via", SPEAKER_V4])?;
        Ok(())
    }

    /// Moves the calling thread into the speaker's namespace until the
    /// guard drops.
    pub fn enter_speaker(&self) -> Result<NetnsGuard, LabError> {
        NetnsGuard::enter(&self.speaker_ns).map_err(|source| LabError::Enter { ns: self.speaker_ns.clone(), source })
    }

    /// The upstream kernel's routes to `dst` (`ip route show <dst>`), one
    /// per line.
    pub fn upstream_routes(&self, dst: &str) -> Result<String, LabError> {
        let out = ip(&["-n", &self.upstream_ns, "route", "show", dst])?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Every default route in the lab: none, unless a test added one.
    pub fn default_routes(&self) -> Result<Vec<String>, LabError> {
        let mut found = Vec::new();
        for ns in [&self.speaker_ns, &self.upstream_ns] {
            for family in ["-4", "-6"] {
                let out = ip(&["-n", ns, family, "route", "show", "default"])?;
                let text = String::from_utf8_lossy(&out.stdout);
                found.extend(text.lines().filter(|l| !l.trim().is_empty()).map(|l| format!("{ns}: {l}")));
            }
        }
        Ok(found)
    }
}

impl Drop for BgpLab {
    fn drop(&mut self) {
        teardown(&[&self.speaker_ns, &self.upstream_ns], &self.dir);
    }
}
