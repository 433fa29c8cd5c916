//! A lab for tests, the bench and curious operators: two network namespaces
//! joined by a veth pair, uniquely named so labs can run side by side, torn
//! down on drop (and on panic, which unwinds through drop). A lab left by a
//! process that died without unwinding is removed by the next lab created.
//!
//! ```text
//!  netns <name>-gen            netns <name>-tgt
//!  <gen_if> 192.0.2.1/24 ====== <tgt_if> 192.0.2.2/24
//! ```
//!
//! IPv6 is off on both ends, so neither kernel sends router solicitations or
//! MLD reports of its own: every frame the target sees is one a test sent.
//! (The generator crafts IPv6 frames regardless; they need no addresses.)
//!
//! Around the lab, the harness the tests, the demo and the bench share:
//! a controller under test ([`controller`]), `detector` commands and floods
//! run in a namespace ([`process`]), HTTP from inside one ([`http_get`]),
//! and a stand-in for notification endpoints ([`receiver`]). For traffic
//! from real tools and real sockets: `hping3` run for a while and stopped
//! ([`hping3`]), the kernel's own counters of a namespace ([`counters`]),
//! and a UDP server and client that answer and count ([`udp`]). For network
//! mode, a three-namespace lab with a router between the generators and
//! the customers' servers ([`router`]). For upstream mitigation over BGP,
//! a speaker and an upstream namespace ([`bgp`]) with BIRD 2 as the
//! upstream router ([`bird`]). For many nodes at once, a fleet: several
//! labs and a monitoring namespace linked to each ([`fleet`]), where a real
//! Prometheus ([`prometheus`]) and a real Alertmanager ([`alertmanager`])
//! run. All of it is
//! behind the crate's `lab` feature: the production build carries none of it.

pub mod alertmanager;
pub mod bgp;
pub mod bird;
pub mod controller;
pub mod counters;
pub mod fleet;
pub mod hping3;
pub mod process;
pub mod prometheus;
pub mod receiver;
pub mod router;
pub mod tcp;
pub mod udp;

pub use controller::Controller;
pub use fleet::FleetLab;
pub use process::{Background, DetectorCommand, Supervision};
pub use router::RouterLab;

use std::{
    path::Path,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use thiserror::Error;

use crate::netns::NetnsGuard;

const PREFIX: &str = "dlab";

#[derive(Debug, Error)]
pub enum LabError {
    #[error("`ip {args}` failed: {stderr}")]
    Ip { args: String, stderr: String },
    #[error("cannot run `ip` (install iproute2): {0}")]
    NoIp(std::io::Error),
    #[error("cannot enter network namespace {ns}: {source}")]
    Enter { ns: String, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Sysctl { path: String, source: std::io::Error },
    #[error("the lab's links were not ready after {after:?}: {pending}")]
    NotReady { after: std::time::Duration, pending: String },
    #[error("a fleet lab has 1 to {max} nodes, not {n}")]
    FleetSize { n: usize, max: usize },
}

/// Two namespaces and the veth pair between them.
pub struct Lab {
    pub gen_ns: String,
    pub tgt_ns: String,
    /// The generator's end, in `gen_ns`.
    pub gen_if: String,
    /// The target's end, in `tgt_ns`: attach the detector here.
    pub tgt_if: String,
    /// A scratch directory for the lab's files (logs, state, configs),
    /// removed with the lab.
    pub dir: std::path::PathBuf,
    /// The pass program on the generator's end (see [`Lab::accept_xdp_tx`]).
    gen_xdp: Option<aya::Ebpf>,
}

pub const GEN_V4: &str = "192.0.2.1";
pub const TGT_V4: &str = "192.0.2.2";
/// The ends' IPv6 addresses, after [`Lab::enable_ipv6`].
pub const GEN_V6: &str = "2001:db8::1";
pub const TGT_V6: &str = "2001:db8::2";

pub(crate) fn ip(args: &[&str]) -> Result<Output, LabError> {
    let out = Command::new("ip").args(args).output().map_err(LabError::NoIp)?;
    if !out.status.success() {
        return Err(LabError::Ip {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out)
}

impl Lab {
    /// Creates the namespaces and the veth pair, addressed and up.
    pub fn new() -> Result<Lab, LabError> {
        let names = LabNames::next();
        let lab = Lab {
            gen_ns: names.ns("gen"),
            tgt_ns: names.ns("tgt"),
            gen_if: names.iface('g'),
            tgt_if: names.iface('t'),
            dir: names.dir(),
            gen_xdp: None,
        };
        // From here on, drop cleans up whatever was made.
        lab.build()?;
        Ok(lab)
    }

    fn build(&self) -> Result<(), LabError> {
        make_dir(&self.dir)?;
        ip(&["netns", "add", &self.gen_ns])?;
        ip(&["netns", "add", &self.tgt_ns])?;
        veth(&self.gen_ns, &self.gen_if, &self.tgt_ns, &self.tgt_if)?;
        for (ns, ifname, v4) in [(&self.gen_ns, &self.gen_if, GEN_V4), (&self.tgt_ns, &self.tgt_if, TGT_V4)] {
            disable_ipv6(ns, ifname)?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", ifname])?;
            ip(&["-n", ns, "link", "set", ifname, "up"])?;
        }
        Ok(())
    }

    /// Moves the calling thread into the generator's namespace until the
    /// guard drops.
    pub fn enter_gen(&self) -> Result<NetnsGuard, LabError> {
        NetnsGuard::enter(&self.gen_ns).map_err(|source| LabError::Enter { ns: self.gen_ns.clone(), source })
    }

    /// Moves the calling thread into the target's namespace until the guard
    /// drops.
    pub fn enter_tgt(&self) -> Result<NetnsGuard, LabError> {
        NetnsGuard::enter(&self.tgt_ns).map_err(|source| LabError::Enter { ns: self.tgt_ns.clone(), source })
    }

    /// A command that runs `program` inside network namespace `ns`.
    ///
    /// Only the network namespace changes (unlike `ip netns exec`, which
    /// also remounts `/sys`): the program sees the host's bpffs, so what it
    /// pins outlives it, as on a real host.
    pub fn command_in(ns: &str, program: &Path) -> Command {
        use std::os::{fd::AsRawFd as _, unix::process::CommandExt as _};
        let mut c = Command::new(program);
        // Opened before the fork (nothing is allocated between fork and exec);
        // close-on-exec, so the program does not inherit it.
        let netns = std::fs::File::open(format!("/run/netns/{ns}"));
        unsafe {
            c.pre_exec(move || {
                let f = netns.as_ref().map_err(|e| std::io::Error::new(e.kind(), e.to_string()))?;
                if libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        c
    }

    /// Adds `cidr` (`192.0.2.10/24`) to `ifname` in namespace `ns`: a second
    /// host on one side of the lab (a legitimate client beside a generator).
    /// An IPv6 address is added without duplicate address detection (usable
    /// at once).
    pub fn add_addr(&self, ns: &str, ifname: &str, cidr: &str) -> Result<(), LabError> {
        add_addr(ns, ifname, cidr)
    }

    /// Turns reverse-path filtering off on the target side (`all` and its
    /// interface), as on a host with a default route: a spoofed source then
    /// reaches the target's stack, and only the detector stops it. (The lab
    /// has no default route, and a namespace may inherit `rp_filter` on
    /// from the host, which drops such sources before any socket sees them.)
    pub fn accept_spoofed_sources(&self) -> Result<(), LabError> {
        for conf in ["all", "default", self.tgt_if.as_str()] {
            sysctl(&self.tgt_ns, &format!("net/ipv4/conf/{conf}/rp_filter"), "0")?;
        }
        Ok(())
    }

    /// Turns IPv6 on at both ends (a lab has it off: no router
    /// solicitations or DAD in the counts) and gives them [`GEN_V6`] and
    /// [`TGT_V6`] (/64, no DAD).
    pub fn enable_ipv6(&self) -> Result<(), LabError> {
        for (ns, ifname, v6) in [(&self.gen_ns, &self.gen_if, GEN_V6), (&self.tgt_ns, &self.tgt_if, TGT_V6)] {
            sysctl(ns, &format!("net/ipv6/conf/{ifname}/disable_ipv6"), "0")?;
            ip(&["-n", ns, "addr", "add", &format!("{v6}/64"), "dev", ifname, "nodad"])?;
        }
        Ok(())
    }

    /// Attaches an XDP program that passes everything to the generator's
    /// end. A veth delivers the frames its peer's XDP program sends back
    /// (`XDP_TX`: the SYN-ACKs of SYN cookies) only to an end with an XDP
    /// program of its own; a real NIC needs nothing of the kind.
    pub fn accept_xdp_tx(&mut self) -> Result<(), LabError> {
        let fail = |e: String| LabError::Ip { args: format!("xdp pass on {}", self.gen_if), stderr: e };
        let _in = self.enter_gen()?;
        let mut obj = crate::kernel::ebpf::load_flood().map_err(|e| fail(e.to_string()))?;
        let prog: &mut aya::programs::Xdp = obj
            .program_mut("pass")
            .ok_or_else(|| fail("no pass program".into()))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| fail(e.to_string()))?;
        prog.load().map_err(|e| fail(e.to_string()))?;
        prog.attach(&self.gen_if, aya::programs::XdpMode::Driver).map_err(|e| fail(e.to_string()))?;
        self.gen_xdp = Some(obj);
        Ok(())
    }

    /// The target MAC address, for frames the target's stack should accept.
    pub fn tgt_mac(&self) -> Result<[u8; 6], LabError> {
        let _in = self.enter_tgt()?;
        crate::iface::mac(&self.tgt_if)
            .map_err(|e| LabError::Ip { args: "SIOCGIFHWADDR".into(), stderr: e.to_string() })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        teardown(&[&self.gen_ns, &self.tgt_ns], &self.dir);
    }
}

/// The names of one lab, two namespaces or more: `dlab-<pid>-<n>-<role>`
/// for its namespaces and `dlab-<pid>-<n>` for its scratch directory, which
/// [`sweep_dead_labs`] recognizes once `<pid>` is gone; its interfaces,
/// `dl<pid hex><n hex><role letter>`, at most 15 bytes. Every lab of the
/// process, whatever its kind, takes the next `<n>`. Creating names sweeps
/// the dead labs first.
pub(crate) struct LabNames {
    pid: u32,
    n: u32,
}

impl LabNames {
    pub(crate) fn next() -> LabNames {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        sweep_dead_labs();
        LabNames { pid: std::process::id(), n: NEXT.fetch_add(1, Ordering::Relaxed) }
    }

    pub(crate) fn ns(&self, role: &str) -> String {
        format!("{PREFIX}-{}-{}-{role}", self.pid, self.n)
    }

    pub(crate) fn iface(&self, role: char) -> String {
        let tag = format!("{:x}{:x}", self.pid, self.n);
        format!("dl{}{role}", &tag[tag.len().saturating_sub(11)..])
    }

    pub(crate) fn dir(&self) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("{PREFIX}-{}-{}", self.pid, self.n))
    }
}

pub(crate) fn make_dir(dir: &Path) -> Result<(), LabError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| LabError::Ip { args: format!("mkdir {}", dir.display()), stderr: e.to_string() })
}

/// Removes a lab: its namespaces (whichever exist) and its scratch directory.
pub(crate) fn teardown(namespaces: &[&str], dir: &Path) {
    // Pins a controller left in bpffs (rules kept on stop, kill -9)
    // hold links and maps; they go first, with the namespaces' inodes.
    for ns in namespaces {
        if let Some(ino) = netns_inode(ns) {
            remove_netns_pins(ino);
        }
    }
    // Deleting a namespace destroys the veth end inside it, and with it
    // the peer and any XDP program attached to either.
    for ns in namespaces {
        let _ = ip(&["netns", "del", ns]);
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A veth pair: `a_if` in `a_ns`, `b_if` in `b_ns`.
pub(crate) fn veth(a_ns: &str, a_if: &str, b_ns: &str, b_if: &str) -> Result<(), LabError> {
    ip(&["link", "add", a_if, "netns", a_ns, "type", "veth", "peer", "name", b_if, "netns", b_ns]).map(drop)
}

/// Adds `cidr` to `ifname` in namespace `ns`; an IPv6 address without
/// duplicate address detection (usable at once).
pub(crate) fn add_addr(ns: &str, ifname: &str, cidr: &str) -> Result<(), LabError> {
    let mut args = vec!["-n", ns, "addr", "add", cidr, "dev", ifname];
    if cidr.contains(':') {
        args.push("nodad");
    }
    ip(&args).map(drop)
}

/// The packets interface `ifname` in namespace `ns` has received and sent
/// (`ip -s -j link show`): `(rx, tx)`.
pub fn link_packets(ns: &str, ifname: &str) -> Result<(u64, u64), LabError> {
    let out = ip(&["-n", ns, "-s", "-j", "link", "show", "dev", ifname])?;
    let bad = |why: &str| LabError::Ip { args: format!("-n {ns} -s -j link show dev {ifname}"), stderr: why.into() };
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| bad(&e.to_string()))?;
    let get = |dir: &str| {
        json.pointer(&format!("/0/stats64/{dir}/packets")).and_then(|v| v.as_u64()).ok_or_else(|| bad("no stats64"))
    };
    Ok((get("rx")?, get("tx")?))
}

/// A plain HTTP GET to `127.0.0.1:port` from inside namespace `ns` (a
/// controller running in the lab): (status, body).
pub fn http_get(ns: &str, port: u16, path: &str, token: Option<&str>) -> std::io::Result<(u16, String)> {
    http_get_at(ns, std::net::SocketAddr::from(([127, 0, 0, 1], port)), path, token)
}

/// A plain HTTP GET to `addr` from inside namespace `ns` (a server that
/// listens on one of the namespace's addresses, not on loopback): (status,
/// body).
pub fn http_get_at(
    ns: &str,
    addr: std::net::SocketAddr,
    path: &str,
    token: Option<&str>,
) -> std::io::Result<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let (ns, path, token) = (ns.to_string(), path.to_string(), token.map(str::to_string));
    // A fresh thread enters the namespace and never leaves it half-way.
    std::thread::spawn(move || {
        let _in = NetnsGuard::enter(&ns)?;
        let mut s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n")?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)?;
        let code = resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        Ok((code, dechunk(&body)))
    })
    .join()
    .map_err(|_| std::io::Error::other("the HTTP thread panicked"))?
}

/// A port free on 127.0.0.1 inside `ns` (bound and released: a fresh lab
/// namespace has nothing else that would take it meanwhile), for a server
/// the lab starts there.
pub(crate) fn free_port(ns: &str) -> std::io::Result<u16> {
    let name = ns.to_string();
    std::thread::spawn(move || {
        let _in = NetnsGuard::enter(&name)?;
        Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
    })
    .join()
    .unwrap_or_else(|_| Err(std::io::Error::other("the thread panicked")))
}

/// Undoes chunked transfer encoding, if the body uses it.
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    loop {
        let Some((size, tail)) = rest.split_once("\r\n") else { return body.to_string() };
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { return body.to_string() };
        if n == 0 {
            return out;
        }
        if tail.len() < n {
            return body.to_string();
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
}

/// Writes the interface's `disable_ipv6` sysctl inside `ns`.
fn disable_ipv6(ns: &str, ifname: &str) -> Result<(), LabError> {
    match sysctl(ns, &format!("net/ipv6/conf/{ifname}/disable_ipv6"), "1") {
        // A kernel without IPv6 sends no IPv6 of its own either.
        Err(LabError::Sysctl { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// Writes `value` to `/proc/sys/<key>` (`net/ipv4/conf/all/rp_filter`)
/// from a thread inside `ns` (`/proc/sys/net` shows the namespace of the
/// thread that opens it): the namespace's setting, never the host's.
pub fn sysctl(ns: &str, key: &str, value: &str) -> Result<(), LabError> {
    let (ns, path, value) = (ns.to_string(), format!("/proc/sys/{key}"), value.to_string());
    std::thread::spawn(move || {
        let _in = NetnsGuard::enter(&ns).map_err(|source| LabError::Enter { ns: ns.clone(), source })?;
        std::fs::write(&path, value).map_err(|source| LabError::Sysctl { path, source })
    })
    .join()
    .expect("sysctl thread")
}

/// Where `name` is installed: on `PATH`, or in the sbin directories a
/// non-root `PATH` may lack (`hping3` lives in `/usr/sbin`).
pub fn find_program(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(std::path::PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn netns_inode(ns: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(format!("/run/netns/{ns}")).ok().map(|m| m.ino())
}

/// Removes what controllers pinned from inside the namespace `ino`.
fn remove_netns_pins(ino: u64) {
    let dir = Path::new(crate::kernel::pins::BPFFS).join("detector").join(format!("netns-{ino}"));
    if let Ok(ifaces) = std::fs::read_dir(&dir) {
        for i in ifaces.flatten() {
            let _ = crate::kernel::pins::detach_now(&i.path());
        }
    }
    let _ = std::fs::remove_dir(&dir);
    // And the top directory, if that left it empty (never if in use).
    let _ = std::fs::remove_dir(Path::new(crate::kernel::pins::BPFFS).join("detector"));
}

/// Network namespaces in use: named ones and those of running processes.
fn live_netns() -> Vec<u64> {
    use std::os::unix::fs::MetadataExt as _;
    let mut out = Vec::new();
    for dir in ["/run/netns", "/proc"] {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        for e in entries.flatten() {
            let path = if dir == "/proc" { e.path().join("ns/net") } else { e.path() };
            if let Ok(m) = std::fs::metadata(path) {
                out.push(m.ino());
            }
        }
    }
    out
}

/// Removes labs whose creating process is gone (killed without unwinding):
/// their namespaces, their scratch directories and their pins.
fn sweep_dead_labs() {
    let dead = |pid: &str| pid.parse::<u32>().is_ok_and(|p| !Path::new(&format!("/proc/{p}")).exists());
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let mut parts = name.split('-');
            if parts.next() == Some(PREFIX) && parts.next().is_some_and(dead) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let Ok(out) = ip(&["netns", "list"]) else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let mut parts = name.split('-');
        if parts.next() != Some(PREFIX) {
            continue;
        }
        let Some(pid) = parts.next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            if let Some(ino) = netns_inode(name) {
                remove_netns_pins(ino);
            }
            let _ = ip(&["netns", "del", name]);
        }
    }
    crate::kernel::pins::sweep_dead_netns(&live_netns());
}
