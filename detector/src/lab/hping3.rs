//! `hping3` in a lab namespace: floods from a real tool (spoofed sources,
//! any ports, sizes and TCP flags), run for a while and stopped with
//! SIGINT, when it prints how many packets it sent.
//!
//! With `--flood` it runs until killed. The handle stops it however the
//! test ends: [`Hping3::stop`] sends SIGINT and reads its statistics; a
//! handle dropped (a failed assertion unwinding) sends SIGTERM, then
//! SIGKILL, and reaps it; and it gets SIGTERM if the thread that started it
//! dies without unwinding (`PR_SET_PDEATHSIG`), so a flood never outlives
//! its test. Start it from the thread that holds the handle.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use detector::lab::{hping3::Hping3, Lab, TGT_V4};
//! use std::time::Duration;
//! let lab = Lab::new()?;
//! let r = Hping3::run_for(&lab.gen_ns, &["--udp", "--flood", "--rand-source", "-p", "53", TGT_V4], Duration::from_secs(2))?;
//! println!("{} packets, {:.0} pps", r.sent, r.pps());
//! # Ok(()) }
//! ```

use std::{
    ffi::OsStr,
    path::PathBuf,
    process::Output,
    time::{Duration, Instant},
};

use thiserror::Error;

use super::process::{Background, ProcessError, Supervision};

#[derive(Debug, Error)]
pub enum Hping3Error {
    #[error("hping3 is not installed (`cargo xtask test` installs it: Debian package hping3)")]
    NotInstalled,
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("`{what}` exited before it was stopped ({status}):\n{output}")]
    Exited { what: String, status: std::process::ExitStatus, output: String },
    #[error("`{what}` printed no statistics:\n{output}")]
    NoStatistics { what: String, output: String },
    #[error("pinning hping3 to CPU {cpu}: {source}")]
    Pin { cpu: usize, source: std::io::Error },
}

/// What a run of hping3 did, from the statistics it prints at the end.
#[derive(Clone, Debug)]
pub struct Hping3Report {
    /// Packets it sent (`N packets transmitted`).
    pub sent: u64,
    /// Replies it saw (`M packets received`; none in flood mode).
    pub received: u64,
    /// From its start to the signal that stopped it (or its exit).
    pub elapsed: Duration,
    /// Its stdout and stderr.
    pub output: String,
}

impl Hping3Report {
    /// Its average send rate, packets per second.
    pub fn pps(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Parses the statistics of an output, `elapsed` being how long it ran.
    pub fn parse(output: &str, elapsed: Duration) -> Option<Hping3Report> {
        // "123 packets transmitted, 0 packets received, 100% packet loss"
        let line = output.lines().find(|l| l.contains("packets transmitted"))?;
        let mut numbers = line.split(|c: char| !c.is_ascii_digit()).filter(|w| !w.is_empty());
        let sent = numbers.next()?.parse().ok()?;
        let received = numbers.next()?.parse().ok()?;
        Some(Hping3Report { sent, received, elapsed, output: output.to_string() })
    }
}

/// A running hping3.
pub struct Hping3 {
    child: Background,
    started: Instant,
}

impl Hping3 {
    /// How long it may take to print its statistics and exit after SIGINT.
    pub const STOP_GRACE: Duration = Duration::from_secs(5);

    /// The installed binary (it lives in `/usr/sbin`).
    pub fn binary() -> Result<PathBuf, Hping3Error> {
        super::find_program("hping3").ok_or(Hping3Error::NotInstalled)
    }

    /// `hping3 ARGS` in namespace `ns`, in the background.
    pub fn start<S: AsRef<OsStr>>(ns: &str, args: &[S]) -> Result<Hping3, Hping3Error> {
        let supervision = Supervision { die_with_parent: true, cancel: None };
        let child = Background::spawn_in(ns, &Self::binary()?, args, supervision)?;
        Ok(Hping3 { child, started: Instant::now() })
    }

    /// Its pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.pid()
    }

    /// Pins it to one CPU. A veth delivers a frame on the CPU that sent
    /// it, so the receiving side's XDP program and softirq run there too:
    /// runs that compare CPU costs see the same placement, not whichever
    /// CPU the scheduler gave the generator that time.
    pub fn pin_to_cpu(&self, cpu: usize) -> Result<(), Hping3Error> {
        let pid = self.pid().ok_or_else(|| Hping3Error::Pin { cpu, source: std::io::Error::other("not running") })?;
        super::process::pin_to_cpu(pid, cpu).map_err(|source| Hping3Error::Pin { cpu, source })
    }

    /// Stops it with SIGINT and returns its statistics. One that had
    /// already exited (bad arguments, say) is an error with its output.
    pub fn stop(mut self) -> Result<Hping3Report, Hping3Error> {
        let elapsed = self.started.elapsed();
        let what = self.child.what().to_string();
        if let Some(out) = self.child.try_finish()? {
            return Err(Hping3Error::Exited { what, status: out.status, output: text(&out) });
        }
        // Exits 1 when it saw no replies: the status says nothing here.
        let out = self.child.stop(libc::SIGINT, Self::STOP_GRACE)?;
        let output = text(&out);
        Hping3Report::parse(&output, elapsed).ok_or(Hping3Error::NoStatistics { what, output })
    }

    /// Waits for a run that ends by itself (`-c COUNT`), at most `timeout`
    /// (then it is killed and the wait fails), and returns its statistics.
    pub fn wait(self, timeout: Duration) -> Result<Hping3Report, Hping3Error> {
        let what = self.child.what().to_string();
        let out = self.child.wait(timeout)?;
        let output = text(&out);
        Hping3Report::parse(&output, self.started.elapsed()).ok_or(Hping3Error::NoStatistics { what, output })
    }

    /// `hping3 ARGS` in `ns` for `duration`, then stopped: its statistics.
    pub fn run_for<S: AsRef<OsStr>>(ns: &str, args: &[S], duration: Duration) -> Result<Hping3Report, Hping3Error> {
        let h = Hping3::start(ns, args)?;
        std::thread::sleep(duration);
        h.stop()
    }
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_statistics() {
        let out = "HPING 192.0.2.2 (veth 192.0.2.2): udp mode set, 28 headers + 100 data bytes\n\
                   hping in flood mode, no replies will be shown\n\n\
                   --- 192.0.2.2 hping statistic ---\n\
                   31375 packets transmitted, 0 packets received, 100% packet loss\n\
                   round-trip min/avg/max = 0.0/0.0/0.0 ms\n";
        let r = Hping3Report::parse(out, Duration::from_secs(2)).unwrap();
        assert_eq!((r.sent, r.received), (31375, 0));
        assert_eq!(r.pps(), 15687.5);
        assert!(Hping3Report::parse("HPING 192.0.2.2: unknown host\n", Duration::from_secs(1)).is_none());
    }
}
