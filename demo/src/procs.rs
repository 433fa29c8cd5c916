//! How the demo runs its processes (`detector run`, `detector flood` and
//! short `detector` commands, through the lab harness, `detector::lab`):
//! inside lab namespaces, none left behind. Ctrl-C (SIGINT), SIGTERM and
//! SIGHUP set a flag the waits check, so the demo unwinds and cleans up.

use std::{
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use detector::lab::{DetectorCommand, Supervision};

static STOP: AtomicBool = AtomicBool::new(false);

/// SIGINT, SIGTERM and SIGHUP ask the demo to stop (see [`check`]).
pub fn install_stop_handler() {
    extern "C" fn on_signal(_: libc::c_int) {
        STOP.store(true, Ordering::Relaxed);
    }
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe; the struct is fully initialised.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

pub fn interrupted() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// `Err` once the demo was asked to stop.
pub fn check() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps `d`, waking early (with `Err`) when asked to stop.
pub fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        check()?;
        std::thread::sleep((end - Instant::now()).min(Duration::from_millis(20)));
    }
    check()
}

/// How the demo's children are tied to it: SIGTERM if the demo dies
/// without cleaning up (SIGKILL), so no detector outlives it (the lab it
/// leaves is swept by the next `Lab::new()`); and every wait ends early
/// when the demo is asked to stop. Children are spawned from the main
/// thread, which lives as long as the demo.
pub fn supervision() -> Supervision {
    Supervision { die_with_parent: true, cancel: Some(&STOP) }
}

/// `detector ARGS` inside namespace `ns`, run to completion within 30 s.
pub fn detector(bin: &Path, ns: &str) -> DetectorCommand {
    DetectorCommand::new(bin, ns).timeout(Duration::from_secs(30)).supervise(supervision())
}
