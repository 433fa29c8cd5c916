//! CPU time spent inside given kernel functions, every CPU, by sampling:
//! `perf record -e cpu-clock` (a timer, so it works in a VM without
//! hardware counters) with call graphs.
//!
//! Why: a detector's per-packet kernel work runs in the softirq that
//! receives the packet, not in its process. The detector's XDP program has
//! the kernel's own BPF statistics; FastNetMon's AF_PACKET capture has
//! none, and `/proc/stat`'s softirq time is charged a tick at a time (this
//! kernel has no `CONFIG_IRQ_TIME_ACCOUNTING`), so its difference to plain
//! forwarding was noise (+332 ns one run, +2999 the run before). One
//! sampling profiler over both, with the same period and the same window,
//! measures both the same way: a sample every [`PERIOD_NS`] of a busy
//! CPU's time, counted for a function when it is anywhere in the sample's
//! call chain (time inside it and everything it calls).
//!
//! Samples are taken against `CLOCK_MONOTONIC` (`perf record -k mono`),
//! so they are kept to the caller's own window ([`now_ns`] at its ends),
//! the one its packet counters were read over.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{anyhow, bail, ensure, Context as _, Result};

/// A sample per this many ns of a CPU's time: 10 kHz per CPU.
pub const PERIOD_NS: u64 = 100_000;

/// Which samples to count: those whose call chain (symbols, the sampled
/// function first, its callers after) this accepts.
pub type Matcher = fn(&[&str]) -> bool;

/// `perf record` running, system-wide, until [`Recording::stop`].
pub struct Recording {
    child: Option<Child>,
    data: PathBuf,
}

/// The time of `CLOCK_MONOTONIC`, ns: the clock the samples carry.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid clock id and a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Recording {
    /// Starts recording into `dir/perf.data`; waits until perf has set up
    /// (it writes the file's header first), so what follows is sampled.
    pub fn start(dir: &Path) -> Result<Recording> {
        let perf = detector::lab::find_program("perf").ok_or_else(|| {
            anyhow!("perf is not installed (`cargo xtask bench` installs it: Debian package linux-perf)")
        })?;
        let data = dir.join("perf.data");
        let child = Command::new(perf)
            .args(["record", "-q", "-a", "-g", "-e", "cpu-clock", "-k", "mono", "-c"])
            .arg(PERIOD_NS.to_string())
            .arg("-o")
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting perf record")?;
        let mut r = Recording { child: Some(child), data };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::metadata(&r.data).map(|m| m.len()).unwrap_or(0) == 0 {
            if let Some(status) = r.child.as_mut().expect("running").try_wait()? {
                let mut err = String::new();
                if let Some(mut e) = r.child.take().and_then(|mut c| c.stderr.take()) {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                bail!("perf record exited with {status}: {}", err.trim());
            }
            ensure!(std::time::Instant::now() < deadline, "perf record did not start within 10 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        // The header is written before the events are enabled.
        std::thread::sleep(Duration::from_millis(500));
        Ok(r)
    }

    /// Stops recording and counts, for each matcher, the samples taken in
    /// `[from_ns, to_ns)` (`CLOCK_MONOTONIC`) with a matching frame.
    pub fn stop(mut self, from_ns: u64, to_ns: u64, matchers: &[Matcher]) -> Result<Sampled> {
        let child = self.child.take().expect("running");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let out = child.wait_with_output().context("waiting for perf record")?;
        // perf writes its data out on SIGINT, then dies of it.
        let interrupted = std::os::unix::process::ExitStatusExt::signal(&out.status) == Some(libc::SIGINT);
        ensure!(
            out.status.success() || interrupted,
            "perf record: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let perf = detector::lab::find_program("perf").ok_or_else(|| anyhow!("perf is gone"))?;
        let mut script = Command::new(perf)
            .args(["script", "-F", "time,ip,sym", "-i"])
            .arg(&self.data)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting perf script")?;
        let lines = BufReader::new(script.stdout.take().expect("piped")).lines();
        let mut counter = Counter { from_ns, to_ns, found: vec![0; matchers.len()], ..Counter::default() };
        for line in lines {
            counter.line(&line.context("reading perf script")?, matchers);
        }
        counter.end_sample(matchers);
        let status = script.wait()?;
        ensure!(status.success(), "perf script exited with {status}");
        // For a closer look at a run (`perf report -i`): the recordings are
        // kept, numbered, in the directory this names.
        if let Ok(keep) = std::env::var("DETECTOR_BENCH_KEEP_PERF") {
            let n = std::fs::read_dir(&keep).map(|d| d.count()).unwrap_or(0);
            let _ = std::fs::copy(&self.data, Path::new(&keep).join(format!("perf-{n}.data")));
        }
        let _ = std::fs::remove_file(&self.data);
        ensure!(counter.samples > 0, "perf recorded no sample in the window");
        Ok(Sampled { samples: counter.samples, found: counter.found })
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.data);
    }
}

/// What a recording counted in the window.
#[derive(Clone, Debug, Default)]
pub struct Sampled {
    /// Every sample in the window (busy and idle CPUs; an idle CPU is
    /// sampled less often, which counts nothing here).
    pub samples: u64,
    /// Per matcher: the samples with a matching frame.
    pub found: Vec<u64>,
}

impl Sampled {
    /// CPU time inside matcher `i`'s functions, ns.
    pub fn ns(&self, i: usize) -> u64 {
        self.found.get(i).copied().unwrap_or(0) * PERIOD_NS
    }
}

/// Reads `perf script -F time,ip,sym` with call chains: a sample is a line
/// `   1234.567890: ` then one indented line per frame (`ffff... symbol`),
/// then a blank line.
#[derive(Default)]
struct Counter {
    from_ns: u64,
    to_ns: u64,
    in_window: bool,
    chain: Vec<String>,
    samples: u64,
    found: Vec<u64>,
}

impl Counter {
    fn line(&mut self, line: &str, matchers: &[Matcher]) {
        let t = line.trim();
        if t.is_empty() {
            self.end_sample(matchers);
        } else if let Some(time) = t.strip_suffix(':') {
            self.end_sample(matchers);
            self.in_window = seconds_ns(time).is_some_and(|ns| ns >= self.from_ns && ns < self.to_ns);
        } else if self.in_window {
            // "ffffffff8225f8ab pv_native_safe_halt"
            self.chain.push(t.split_once(' ').map_or("", |(_, s)| s.trim()).to_string());
        }
    }

    fn end_sample(&mut self, matchers: &[Matcher]) {
        if self.in_window {
            self.samples += 1;
            let chain: Vec<&str> = self.chain.iter().map(String::as_str).collect();
            for (i, m) in matchers.iter().enumerate() {
                if m(&chain) {
                    self.found[i] += 1;
                }
            }
        }
        self.chain.clear();
        self.in_window = false;
    }
}

/// "1234.567890" (seconds, perf's microseconds) to ns.
fn seconds_ns(s: &str) -> Option<u64> {
    let (whole, frac) = s.split_once('.').unwrap_or((s, "0"));
    let whole: u64 = whole.trim().parse().ok()?;
    let digits = frac.len().min(9);
    let frac: u64 = frac[..digits].parse().ok()?;
    Some(whole * 1_000_000_000 + frac * 10u64.pow(9 - digits as u32))
}

/// A JIT'd BPF program's symbol (`bpf_prog_<tag>_<name>`) for a program
/// named `name` (the kernel keeps 15 bytes of it).
pub fn is_bpf_prog(sym: &str, name: &str) -> bool {
    let name = &name[..name.len().min(15)];
    sym.strip_prefix("bpf_prog_").and_then(|r| r.split_once('_')).is_some_and(|(_, n)| n == name)
}

/// A chain in program `name`.
pub fn in_bpf_prog(chain: &[&str], name: &str) -> bool {
    chain.iter().any(|s| is_bpf_prog(s, name))
}

/// A chain in an AF_PACKET socket's delivery of a *received* frame:
/// `tpacket_rcv` (the copy into a ring), `packet_rcv` (a socket without
/// one) or `packet_rcv_fanout` (a fanout group's choice, which tail-calls
/// the socket's), called from the receive path (`__netif_receive_skb_core`)
/// and not from the transmit tap (`dev_queue_xmit_nit`): hping3's own
/// packet socket sees every frame it sends there, in every setup.
pub fn in_af_packet_receive(chain: &[&str]) -> bool {
    let af_packet = |s: &&str| matches!(*s, "tpacket_rcv" | "packet_rcv" | "packet_rcv_fanout");
    let Some(first) = chain.iter().position(af_packet) else {
        return false;
    };
    let caller = chain[first..].iter().find(|s| !af_packet(s));
    caller.is_none_or(|c| *c != "dev_queue_xmit_nit")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As `perf script -F time,ip,sym` prints them: idle, the detector's
    /// program, a frame received into a fanout socket's ring (inline in a
    /// sender's softirq), hping3's own tap on a frame it sends, the program
    /// again a second later.
    const SCRIPT: &str = "  10.000100: \n\tffffffff8225f8ab pv_native_safe_halt\n\tffffffff813d01b4 do_idle\n\n  10.000200: \n\tffffffffc0001234 bpf_prog_0123456789abcdef_detector\n\tffffffff81aaaaaa veth_xdp_rcv\n\n  10.000300: \n\tffffffff81e8fa39 skb_copy_bits\n\tffffffff81bbbbbb tpacket_rcv\n\tffffffff81cccccc packet_rcv_fanout\n\tffffffff81dddddd __netif_receive_skb_core.constprop.0\n\tffffffff81eb7ac3 process_backlog\n\tffffffff81eab55f dev_queue_xmit_nit\n\tffffffff8209f4f8 raw_sendmsg\n\n  10.000400: \n\tffffffff821b9a9f tpacket_rcv\n\tffffffff81eab55f dev_queue_xmit_nit\n\tffffffff8209f4f8 raw_sendmsg\n\t          10acb3 __libc_sendto\n\n  11.000000: \n\tffffffffc0001234 bpf_prog_0123456789abcdef_detector\n\n";

    fn count(from: u64, to: u64) -> Counter {
        let matchers: [Matcher; 2] = [|c| in_bpf_prog(c, "detector"), in_af_packet_receive];
        let mut c = Counter { from_ns: from, to_ns: to, found: vec![0; 2], ..Counter::default() };
        for l in SCRIPT.lines() {
            c.line(l, &matchers);
        }
        c.end_sample(&matchers);
        c
    }

    #[test]
    fn samples_are_counted_in_the_window_once_per_matcher() {
        let c = count(10_000_000_000, 10_500_000_000);
        assert_eq!((c.samples, c.found.clone()), (4, vec![1, 1]), "two AF_PACKET frames are one sample");
        let c = count(0, u64::MAX);
        assert_eq!((c.samples, c.found), (5, vec![2, 1]), "the transmit tap is not a received frame");
        let c = count(10_000_250_000, 10_000_300_000);
        assert_eq!((c.samples, c.found), (0, vec![0, 0]), "the end is excluded");
    }

    #[test]
    fn program_symbols_and_times() {
        assert!(is_bpf_prog("bpf_prog_0123456789abcdef_detector", "detector"));
        assert!(is_bpf_prog("bpf_prog_0123456789abcdef_detector_egress", "detector_egress"));
        assert!(!is_bpf_prog("bpf_prog_0123456789abcdef_detector_egress", "detector"));
        assert!(is_bpf_prog("bpf_prog_0123456789abcdef_a_very_long_pro", "a_very_long_program"));
        assert!(!is_bpf_prog("veth_xdp_rcv", "detector"));
        assert_eq!(seconds_ns("872.882244"), Some(872_882_244_000));
        assert_eq!(seconds_ns("1.5"), Some(1_500_000_000));
        assert_eq!(seconds_ns("x"), None);
    }
}
