//! Where an interface's XDP link and maps are pinned in bpffs, so rules
//! outlive the controller: `/sys/fs/bpf/detector/<iface>/` in the host's
//! network namespace, `/sys/fs/bpf/detector/netns-<inode>/<iface>/` in any
//! other (interface names are only unique within a namespace).

use std::{
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use thiserror::Error;

pub const BPFFS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe4a11;
/// The pinned link's file name in an interface's directory.
pub const LINK_PIN: &str = "link";

#[derive(Debug, Error)]
pub enum PinError {
    #[error("cannot mount bpffs on {BPFFS} (needed to keep rules in force across restarts): {0}")]
    Mount(io::Error),
    #[error("cannot read this process's network namespace: {0}")]
    Netns(io::Error),
    #[error("cannot create the pin directory {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("cannot remove the pinned state in {path}: {source}")]
    Remove { path: PathBuf, source: io::Error },
}

/// The pin directory of `iface` in this process's network namespace.
pub fn dir(iface: &str) -> Result<PathBuf, PinError> {
    Ok(base()?.join(iface))
}

/// Where this network namespace's interface directories are: the host's
/// right under `detector/`, any other under `netns-<inode>/`.
///
/// The host's namespace is PID 1's. Looking at PID 1's namespace takes
/// PID 1's capabilities (or `CAP_SYS_PTRACE`): a process with fewer (the
/// hardened service of `deploy/systemd`, or root in some containers) is
/// refused. It then tells by the named namespaces (`ip netns`, under
/// `/run/netns`), where labs run: one of those is not the host's, any
/// other is taken to be, so that a service and a root shell's `detector
/// detach` find the same pins.
fn base() -> Result<PathBuf, PinError> {
    let own = fs::metadata("/proc/thread-self/ns/net").map_err(PinError::Netns)?.ino();
    let host = fs::metadata("/proc/1/ns/net").map(|m| m.ino()).map_err(|e| e.kind());
    let named = || -> Vec<u64> {
        let Ok(entries) = fs::read_dir("/run/netns") else { return Vec::new() };
        entries.flatten().filter_map(|e| fs::metadata(e.path()).ok()).map(|m| m.ino()).collect()
    };
    Ok(base_for(own, host, named))
}

/// [`base`] for this namespace's inode `own`, PID 1's (or why it could
/// not be read), and the named namespaces' inodes (asked only when PID 1's
/// is refused).
fn base_for(own: u64, host: Result<u64, io::ErrorKind>, named: impl FnOnce() -> Vec<u64>) -> PathBuf {
    let base = Path::new(BPFFS).join("detector");
    let in_host = match host {
        Ok(host) => host == own,
        Err(io::ErrorKind::PermissionDenied) => !named().contains(&own),
        Err(_) => false,
    };
    if in_host {
        base
    } else {
        base.join(format!("netns-{own}"))
    }
}

/// Interfaces of this network namespace with a pinned link.
pub fn pinned_interfaces() -> Vec<String> {
    let Ok(base) = base() else { return Vec::new() };
    let Ok(entries) = fs::read_dir(base) else { return Vec::new() };
    entries
        .flatten()
        .filter(|e| exists(&e.path()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("netns-"))
        .collect()
}

/// Mounts bpffs on `/sys/fs/bpf` unless it is there (systemd mounts it on
/// most hosts), then creates `dir`.
pub fn prepare(dir: &Path) -> Result<(), PinError> {
    if !is_bpffs(Path::new(BPFFS)) {
        tracing::info!("mounting bpffs on {BPFFS}");
        let _ = fs::create_dir_all(BPFFS);
        let src = c"bpf";
        let target = c"/sys/fs/bpf";
        let rc = unsafe { libc::mount(src.as_ptr(), target.as_ptr(), src.as_ptr(), 0, std::ptr::null()) };
        if rc != 0 {
            return Err(PinError::Mount(io::Error::last_os_error()));
        }
    }
    create_dir(dir, |d| fs::create_dir_all(d))
}

/// Tries of [`create_dir`] when a parent vanishes midway.
const CREATE_TRIES: usize = 5;

/// Creates `dir` and its parents with `create`, again when a parent was
/// removed between two of its steps (`NotFound`): another process may
/// remove a parent it found empty while this one creates below it
/// ([`remove`] takes away an empty `netns-*` directory, a lab's cleanup
/// an empty `detector/`). What this one has created is not empty, so a
/// few tries settle it.
fn create_dir(dir: &Path, mut create: impl FnMut(&Path) -> io::Result<()>) -> Result<(), PinError> {
    let mut tries = 1;
    loop {
        match create(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound && tries < CREATE_TRIES => tries += 1,
            Err(source) => return Err(PinError::Create { path: dir.to_path_buf(), source }),
        }
    }
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

/// True when something is pinned for this interface.
pub fn exists(dir: &Path) -> bool {
    dir.join(LINK_PIN).exists()
}

/// Removes every pin in `dir`, then the directory, then the parent
/// `netns-*` directory if it is left empty. Unpinning the link detaches
/// the program once no process holds it.
pub fn remove(dir: &Path) -> Result<usize, PinError> {
    let err = |source| PinError::Remove { path: dir.to_path_buf(), source };
    let mut n = 0;
    match fs::read_dir(dir) {
        Ok(entries) => {
            for e in entries {
                let e = e.map_err(err)?;
                fs::remove_file(e.path()).map_err(err)?;
                n += 1;
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(err(e)),
    }
    fs::remove_dir(dir).map_err(err)?;
    if let Some(parent) = dir.parent() {
        if parent.file_name().is_some_and(|n| n.to_string_lossy().starts_with("netns-")) {
            let _ = fs::remove_dir(parent);
        }
    }
    Ok(n)
}

/// Removes the pins of network namespaces that no longer exist (labs that
/// died before cleaning up). `live` lists the inodes still in use.
pub fn sweep_dead_netns(live: &[u64]) -> usize {
    let Ok(entries) = fs::read_dir(Path::new(BPFFS).join("detector")) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(ino) = name.strip_prefix("netns-").and_then(|i| i.parse::<u64>().ok()) else {
            continue;
        };
        if live.contains(&ino) {
            continue;
        }
        if let Ok(ifaces) = fs::read_dir(e.path()) {
            for i in ifaces.flatten() {
                n += remove(&i.path()).unwrap_or(0);
            }
        }
        let _ = fs::remove_dir(e.path());
    }
    n
}

/// Pins left for an interface that no longer exists, found and removed by
/// [`sweep_gone`].
#[derive(Debug, PartialEq, Eq)]
pub struct Swept {
    /// The pin directory that was removed.
    pub dir: PathBuf,
    /// The interface's name (the directory's).
    pub iface: String,
    /// Pinned objects removed.
    pub pins: usize,
}

/// Removes the pins of interfaces that are gone, in any network namespace:
/// a deleted namespace takes its interfaces with it, and the kernel then
/// leaves their XDP links attached to nothing (`ifindex` 0). Their rules
/// can never act again, and would otherwise stay in bpffs forever. A
/// directory another controller holds is left alone.
pub fn sweep_gone() -> Vec<Swept> {
    let root = Path::new(BPFFS).join("detector");
    let mut dirs = Vec::new();
    for e in fs::read_dir(&root).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with("netns-") {
            dirs.extend(fs::read_dir(e.path()).into_iter().flatten().flatten().map(|i| i.path()));
        } else {
            dirs.push(e.path());
        }
    }
    let mut out = Vec::new();
    for dir in dirs {
        if !dir.is_dir() || link_ifindex(&dir.join(LINK_PIN)).map_or(true, |i| i != 0) {
            continue;
        }
        let iface = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let Ok(lock) = lock(&dir, &iface) else { continue };
        match remove(&dir) {
            Ok(pins) => out.push(Swept { dir: dir.clone(), iface, pins }),
            Err(e) => tracing::warn!("{e}"),
        }
        drop(lock);
    }
    out
}

/// The interface index the XDP link pinned at `pin` is attached to; 0 once
/// its interface is gone.
fn link_ifindex(pin: &Path) -> io::Result<u32> {
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    let fd = obj_get(pin)?;
    // struct bpf_link_info: type, id, prog_id (u32 each), then a union
    // aligned to 8 bytes whose xdp member is { u32 ifindex } (offset 16).
    let mut info = [0u64; 16];
    // union bpf_attr, info: { u32 bpf_fd; u32 info_len; u64 info }.
    let mut attr = [0u64; 18];
    attr[0] = (std::os::fd::AsRawFd::as_raw_fd(&fd) as u32 as u64) | ((std::mem::size_of_val(&info) as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    // SAFETY: attr and info are live, writable buffers of the sizes given.
    if unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET_INFO_BY_FD, attr.as_mut_ptr(), 144u32) } != 0 {
        return Err(io::Error::last_os_error());
    }
    const BPF_LINK_TYPE_XDP: u64 = 6;
    if info[0] & 0xffff_ffff != BPF_LINK_TYPE_XDP {
        return Err(io::Error::other("the pinned link is not an XDP link"));
    }
    Ok((info[2] & 0xffff_ffff) as u32)
}

/// `BPF_OBJ_GET`: a descriptor for the object pinned at `pin`.
fn obj_get(pin: &Path) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    const BPF_OBJ_GET: libc::c_long = 7;
    let path = std::ffi::CString::new(pin.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // union bpf_attr, obj_get: { u64 pathname; u32 bpf_fd; u32 file_flags }.
    let mut attr = [0u64; 18];
    attr[0] = path.as_ptr() as u64;
    // SAFETY: attr is a live buffer of 144 bytes; pathname outlives the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, attr.as_mut_ptr(), 144u32) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// Takes the interface's pin directory for this process (an exclusive
/// `flock`, released when the file closes, even on `kill -9`): two
/// controllers must never drive one interface's rules.
pub fn lock(dir: &Path, iface: &str) -> Result<fs::File, LockError> {
    let open = |source| LockError::Open { path: dir.to_path_buf(), source };
    let f = fs::File::open(dir).map_err(open)?;
    if !crate::statedir::try_lock_exclusive(&f).map_err(open)? {
        return Err(LockError::Busy { iface: iface.to_string() });
    }
    Ok(f)
}

#[derive(Debug, Error)]
pub enum LockError {
    #[error("another detector is running on '{iface}' (it holds the interface's pinned state); stop it first")]
    Busy { iface: String },
    #[error("cannot open the pin directory {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
}

/// Forces the XDP link pinned in `dir` off its interface now, even while
/// a process still holds it, then removes the pins.
pub fn detach_now(dir: &Path) -> Result<usize, PinError> {
    for pin in [LINK_PIN, super::egress::EGRESS_LINK_PIN] {
        if let Err(e) = link_detach(&dir.join(pin)) {
            tracing::debug!("BPF_LINK_DETACH on {}/{pin}: {e}", dir.display());
        }
    }
    remove(dir)
}

/// `BPF_OBJ_GET` on the pin, then `BPF_LINK_DETACH` (aya 0.14 exposes
/// neither a link's descriptor nor this command).
fn link_detach(pin: &Path) -> io::Result<()> {
    const BPF_LINK_DETACH: libc::c_long = 34;
    let fd = obj_get(pin)?;
    // union bpf_attr, link_detach: { u32 link_fd }.
    let mut attr = [0u64; 18];
    attr[0] = std::os::fd::AsRawFd::as_raw_fd(&fd) as u32 as u64;
    // SAFETY: attr is a live buffer of 144 bytes.
    if unsafe { libc::syscall(libc::SYS_bpf, BPF_LINK_DETACH, attr.as_mut_ptr(), 144u32) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parent_removed_midway_is_created_again() {
        let dir = Path::new("/sys/fs/bpf/detector/netns-7/veth0");
        let mut calls = 0;
        let gone = |calls: &mut usize| {
            *calls += 1;
            Err(io::Error::from(io::ErrorKind::NotFound))
        };
        // Removed under it twice, then created.
        create_dir(dir, |_| if calls < 2 { gone(&mut calls) } else { Ok(()) }).unwrap();
        assert_eq!(calls, 2);
        // Never there: given up after a few tries, naming the directory.
        calls = 0;
        let e = create_dir(dir, |_| gone(&mut calls)).unwrap_err();
        assert_eq!(calls, CREATE_TRIES);
        assert!(e.to_string().contains("netns-7/veth0"), "{e}");
        // Any other error at once.
        calls = 0;
        let e = create_dir(dir, |_| {
            calls += 1;
            Err(io::Error::from(io::ErrorKind::PermissionDenied))
        })
        .unwrap_err();
        assert_eq!(calls, 1);
        assert!(matches!(e, PinError::Create { .. }));
    }

    #[test]
    fn the_host_namespace_pins_at_the_top_and_a_named_one_below() {
        let top = Path::new(BPFFS).join("detector");
        let unasked = || -> Vec<u64> { panic!("the named namespaces are asked only when PID 1's is refused") };
        assert_eq!(base_for(7, Ok(7), unasked), top);
        assert_eq!(base_for(7, Ok(9), unasked), top.join("netns-7"));
        // PID 1's namespace refused (the hardened service, some containers):
        // a named namespace (a lab) is not the host's, any other is.
        assert_eq!(base_for(7, Err(io::ErrorKind::PermissionDenied), || vec![5, 6]), top);
        assert_eq!(base_for(7, Err(io::ErrorKind::PermissionDenied), || vec![5, 7]), top.join("netns-7"));
        // No /proc/1 at all: not known to be the host's.
        assert_eq!(base_for(7, Err(io::ErrorKind::NotFound), unasked), top.join("netns-7"));
    }
}
