//! Entering a named network namespace for the calling thread.
//!
//! Used by the lab and the tests: a thread enters the namespace, does its
//! socket or BPF work there, and the guard puts it back. The guard is bound
//! to its thread (`!Send`): a namespace is a property of a thread.

use std::{fs::File, io, marker::PhantomData, os::fd::AsRawFd, path::Path};

/// Restores the thread's original namespace on drop.
pub struct NetnsGuard {
    original: File,
    _not_send: PhantomData<*const ()>,
}

impl NetnsGuard {
    /// Moves the calling thread into the namespace named `name`
    /// (`/run/netns/<name>`, as created by `ip netns add`).
    pub fn enter(name: &str) -> io::Result<NetnsGuard> {
        Self::enter_path(&Path::new("/run/netns").join(name))
    }

    pub fn enter_path(path: &Path) -> io::Result<NetnsGuard> {
        let original = File::open("/proc/thread-self/ns/net")?;
        let target = File::open(path)?;
        setns(&target)?;
        Ok(NetnsGuard { original, _not_send: PhantomData })
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(e) = setns(&self.original) {
            // Nothing sensible can continue on this thread in the wrong namespace.
            panic!("cannot return to the original network namespace: {e}");
        }
    }
}

fn setns(f: &File) -> io::Result<()> {
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
