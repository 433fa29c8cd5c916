//! Attaching the counting program to an interface, and getting it off again.

use std::{
    fmt,
    path::{Path, PathBuf},
    process::Command,
    str::FromStr,
};

use aya::{
    programs::{
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
        ProgramError, Xdp, XdpMode,
    },
    Ebpf,
};
use detector_common::maps::DETECTOR_PROGRAM;
use thiserror::Error;

use crate::{
    iface,
    kernel::{ebpf, pins},
};

/// What the operator asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ModeChoice {
    /// Native, falling back to generic (skb) when the driver has no XDP.
    #[default]
    Auto,
    Native,
    Skb,
}

impl FromStr for ModeChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(ModeChoice::Auto),
            "native" | "drv" | "driver" => Ok(ModeChoice::Native),
            "skb" | "generic" => Ok(ModeChoice::Skb),
            other => Err(format!("'{other}' is not an XDP mode (use auto, native or skb)")),
        }
    }
}

/// What the kernel gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachedMode {
    Native,
    Skb,
}

impl AttachedMode {
    pub fn name(self) -> &'static str {
        match self {
            AttachedMode::Native => "native",
            AttachedMode::Skb => "skb",
        }
    }
}

impl fmt::Display for AttachedMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An XDP program found on an interface before we attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Existing {
    pub prog_id: Option<u64>,
    pub mode: &'static str,
}

impl fmt::Display for Existing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.prog_id {
            Some(id) => write!(f, "program id {id}, {} mode", self.mode),
            None => write!(f, "{} mode", self.mode),
        }
    }
}

#[derive(Debug, Error)]
pub enum AttachError {
    #[error(transparent)]
    Interface(#[from] iface::IfaceError),
    #[error(transparent)]
    Load(#[from] ebpf::LoadError),
    #[error("interface '{iface}' already has an XDP program ({existing}); pass --force to replace it")]
    AlreadyAttached { iface: String, existing: Existing },
    #[error("--force could not remove the XDP program on '{iface}' ({existing}): it is held by a BPF link of another process; stop that process or remove its pin")]
    HeldByLink { iface: String, existing: Existing },
    #[error("interface '{iface}' refused native XDP ({reason}); use --xdp-mode skb, or auto to fall back")]
    NativeUnsupported { iface: String, reason: String },
    #[error("attaching XDP to '{iface}' in {mode} mode failed: {reason}")]
    Attach { iface: String, mode: &'static str, reason: String },
    #[error("pinning the XDP link of '{iface}' at {path} failed: {reason}")]
    Pin { iface: String, path: String, reason: String },
    #[error(transparent)]
    Pins(#[from] pins::PinError),
}

/// How the program stays attached.
enum Hold {
    /// By this process: dropping the attachment detaches it.
    Owned(XdpLinkId),
    /// By a link pinned in bpffs: it outlives this process.
    Pinned { dir: PathBuf, _fd: Option<FdLink> },
}

/// A program attached to an interface. Dropping it detaches the program
/// unless its link is pinned.
pub struct Attachment {
    pub iface: String,
    pub ifindex: u32,
    pub mode: AttachedMode,
    /// True when a pinned link left by an earlier controller was taken over.
    pub adopted: bool,
    hold: Option<Hold>,
    ebpf: Ebpf,
}

impl Attachment {
    /// The kernel's view of the attached program (with BPF stats enabled:
    /// its run count and run time).
    pub fn program_info(&mut self) -> Result<aya::programs::ProgramInfo, String> {
        let prog = program(&mut self.ebpf).map_err(|e| e.to_string())?;
        prog.info().map_err(|e| e.to_string())
    }

    /// Detaches now and removes the pinned state, reporting failure (drop
    /// detaches an owned link silently, and leaves a pinned one in force).
    pub fn detach(mut self) -> Result<(), String> {
        match self.hold.take() {
            Some(Hold::Owned(link)) => {
                let prog = program(&mut self.ebpf).map_err(|e| e.to_string())?;
                prog.detach(link).map_err(|e| format!("detaching XDP from '{}': {e}", self.iface))?;
            }
            Some(Hold::Pinned { dir, _fd }) => {
                // The link goes when its pin and the last descriptor do.
                pins::remove(&dir).map_err(|e| e.to_string())?;
                drop(_fd);
                drop(self.ebpf);
            }
            None => {}
        }
        // Its SYN-cookie rules went with the program: so does SYNPROXY.
        super::syncookie::remove_nft(&self.iface).map_err(|e| e.to_string())
    }

    /// The loaded object, for the programs and maps that go with this one.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// True when the program stays attached after this process exits.
    pub fn is_pinned(&self) -> bool {
        matches!(self.hold, Some(Hold::Pinned { .. }))
    }
}

fn program(ebpf: &mut Ebpf) -> Result<&mut Xdp, ebpf::LoadError> {
    let missing = ebpf::LoadError::MissingProgram { object: "detector", program: DETECTOR_PROGRAM };
    match ebpf.program_mut(DETECTOR_PROGRAM) {
        Some(p) => p.try_into().map_err(|_| missing),
        None => Err(missing),
    }
}

/// Loads the counting program of `ebpf` and attaches it to `iface`.
///
/// With `force`, a program already on the interface is removed first.
/// With `pin_dir`, the link is pinned there; a link a previous controller
/// pinned there is taken over (its program replaced atomically, so the
/// rules never stop applying) instead of attaching a second time.
pub fn attach(
    mut ebpf: Ebpf,
    iface: &str,
    choice: ModeChoice,
    force: bool,
    pin_dir: Option<&Path>,
) -> Result<Attachment, AttachError> {
    let ifindex = iface::index(iface)?;
    if let Some(dir) = pin_dir {
        if pins::exists(dir) {
            match adopt(&mut ebpf, iface, dir) {
                Ok(mode) => {
                    let hold = Some(Hold::Pinned { dir: dir.to_path_buf(), _fd: None });
                    return Ok(Attachment { iface: iface.to_string(), ifindex, mode, adopted: true, hold, ebpf });
                }
                Err(AdoptError::Stale(why)) => {
                    tracing::warn!(
                        iface,
                        "the pinned XDP link in {} is stale ({why}); attaching afresh",
                        dir.display()
                    );
                    let _ = std::fs::remove_file(dir.join(pins::LINK_PIN));
                }
                Err(AdoptError::Fatal(e)) => return Err(e),
            }
        }
    }
    if let Some(existing) = existing_program(iface) {
        if !force {
            return Err(AttachError::AlreadyAttached { iface: iface.to_string(), existing });
        }
        tracing::warn!(iface, %existing, "--force: removing the XDP program already attached");
        remove_netlink_programs(iface);
        if let Some(existing) = existing_program(iface) {
            return Err(AttachError::HeldByLink { iface: iface.to_string(), existing });
        }
    }

    ebpf::load_xdp(&mut ebpf, "detector", DETECTOR_PROGRAM)?;
    let prog = program(&mut ebpf)?;
    let busy = |e: &ProgramError| match e {
        ProgramError::SyscallError(s) => {
            matches!(s.io_error.raw_os_error(), Some(libc::EBUSY) | Some(libc::EEXIST))
        }
        _ => false,
    };
    let attach_in = |prog: &mut Xdp, mode: XdpMode| prog.attach_to_if_index(ifindex, mode);

    let (link, mode) = match choice {
        ModeChoice::Skb => (attach_in(prog, XdpMode::Skb), AttachedMode::Skb),
        ModeChoice::Native => match attach_in(prog, XdpMode::Driver) {
            Err(e) if !busy(&e) => {
                return Err(AttachError::NativeUnsupported { iface: iface.to_string(), reason: error_chain(&e) })
            }
            r => (r, AttachedMode::Native),
        },
        ModeChoice::Auto => match attach_in(prog, XdpMode::Driver) {
            Ok(l) => (Ok(l), AttachedMode::Native),
            Err(e) if busy(&e) => (Err(e), AttachedMode::Native),
            Err(e) => {
                tracing::info!(
                    iface,
                    reason = %error_chain(&e),
                    "native XDP not available; using generic (skb) mode"
                );
                (attach_in(prog, XdpMode::Skb), AttachedMode::Skb)
            }
        },
    };
    let link = link.map_err(|e| {
        if busy(&e) {
            AttachError::AlreadyAttached {
                iface: iface.to_string(),
                existing: existing_program(iface).unwrap_or(Existing { prog_id: None, mode: "unknown" }),
            }
        } else {
            AttachError::Attach { iface: iface.to_string(), mode: mode.name(), reason: error_chain(&e) }
        }
    })?;
    let hold = match pin_dir {
        None => Hold::Owned(link),
        Some(dir) => {
            let pin_err = |reason: String| AttachError::Pin {
                iface: iface.to_string(),
                path: dir.join(pins::LINK_PIN).display().to_string(),
                reason,
            };
            let owned = program(&mut ebpf)?.take_link(link).map_err(|e| pin_err(error_chain(&e)))?;
            let fd = FdLink::try_from(owned).map_err(|e| {
                pin_err(format!("this kernel attached XDP without a BPF link, which cannot be pinned ({e})"))
            })?;
            let pinned = fd.pin(dir.join(pins::LINK_PIN)).map_err(|e| pin_err(error_chain(&e)))?;
            Hold::Pinned { dir: dir.to_path_buf(), _fd: Some(FdLink::from(pinned)) }
        }
    };
    Ok(Attachment { iface: iface.to_string(), ifindex, mode, adopted: false, hold: Some(hold), ebpf })
}

enum AdoptError {
    /// The pin is there but its link is gone (the interface was recreated).
    Stale(String),
    Fatal(AttachError),
}

/// Replaces the program of the link pinned in `dir` with ours.
fn adopt(ebpf: &mut Ebpf, iface: &str, dir: &Path) -> Result<AttachedMode, AdoptError> {
    let mode = match existing_program(iface) {
        Some(e) if e.mode == "skb" => AttachedMode::Skb,
        Some(_) => AttachedMode::Native,
        None => return Err(AdoptError::Stale(format!("no XDP program is attached to '{iface}'"))),
    };
    let pinned = PinnedLink::from_pin(dir.join(pins::LINK_PIN)).map_err(|e| AdoptError::Stale(error_chain(&e)))?;
    let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|e| AdoptError::Stale(error_chain(&e)))?;
    ebpf::load_xdp(ebpf, "detector", DETECTOR_PROGRAM).map_err(|e| AdoptError::Fatal(e.into()))?;
    let prog = program(ebpf).map_err(|e| AdoptError::Fatal(e.into()))?;
    let id = prog.attach_to_link(link).map_err(|e| AdoptError::Stale(error_chain(&e)))?;
    // The program owns the new descriptor; forget it, so dropping the
    // program leaves the link (held by its pin) in place.
    if let Ok(l) = prog.take_link(id) {
        std::mem::drop(FdLink::try_from(l));
    }
    Ok(mode)
}

pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let more = c.to_string();
        if !s.contains(&more) {
            s.push_str(": ");
            s.push_str(&more);
        }
        cur = c.source();
    }
    s
}

/// The XDP program on `iface` as `ip -j link` reports it, if any. `None`
/// too when `ip` is missing: the attach itself then reports a busy slot.
pub fn existing_program(iface: &str) -> Option<Existing> {
    let out = Command::new("ip").args(["-j", "-d", "link", "show", "dev", iface]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    parse_ip_link_xdp(&String::from_utf8_lossy(&out.stdout))
}

/// Extracts the XDP attachment from `ip -j -d link show` output.
pub fn parse_ip_link_xdp(json: &str) -> Option<Existing> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let xdp = v.get(0)?.get("xdp")?;
    let mode = match xdp.get("mode").and_then(|m| m.as_u64()) {
        Some(1) => "native",
        Some(2) => "skb",
        Some(3) => "offload",
        Some(4) => "multi",
        _ => "unknown",
    };
    let prog_id = xdp
        .get("prog")
        .and_then(|p| p.get("id"))
        .and_then(|i| i.as_u64())
        .or_else(|| xdp.get("attached")?.as_array()?.iter().find_map(|a| a.get("prog")?.get("id")?.as_u64()));
    Some(Existing { prog_id, mode })
}

/// Asks the kernel to clear netlink-attached XDP programs in both modes.
/// A program held by a BPF link survives this, which the caller checks.
fn remove_netlink_programs(iface: &str) {
    for mode in ["xdpgeneric", "xdpdrv"] {
        let _ = Command::new("ip").args(["link", "set", "dev", iface, mode, "off"]).output();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse() {
        assert_eq!("auto".parse::<ModeChoice>(), Ok(ModeChoice::Auto));
        assert_eq!("native".parse::<ModeChoice>(), Ok(ModeChoice::Native));
        assert_eq!("skb".parse::<ModeChoice>(), Ok(ModeChoice::Skb));
        assert!("turbo".parse::<ModeChoice>().unwrap_err().contains("'turbo'"));
    }

    #[test]
    fn ip_link_json() {
        let none = r#"[{"ifindex":3,"ifname":"veth0","flags":["UP"]}]"#;
        assert_eq!(parse_ip_link_xdp(none), None);
        let one = r#"[{"ifindex":3,"ifname":"veth0","xdp":{"mode":1,"prog":{"id":42,"name":"detector"}}}]"#;
        assert_eq!(parse_ip_link_xdp(one), Some(Existing { prog_id: Some(42), mode: "native" }));
        let multi = r#"[{"xdp":{"mode":4,"attached":[{"mode":2,"prog":{"id":7}}]}}]"#;
        assert_eq!(parse_ip_link_xdp(multi), Some(Existing { prog_id: Some(7), mode: "multi" }));
        assert_eq!(parse_ip_link_xdp("garbage"), None);
    }
}
