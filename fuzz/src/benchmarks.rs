//! The fuzz figure in BENCHMARKS.md: a section of its own between
//! `<!-- begin fuzz -->` and `<!-- end fuzz -->`, replaced in place by each
//! `cargo xtask fuzz`. `cargo xtask bench --write` rewrites the rest of the
//! file and keeps every such marked section it does not write itself
//! (`bench/src/report.rs`), so neither erases the other.

use std::fmt::Write as _;

use detector_common::TrafficClass;

use crate::Tally;

pub const BEGIN: &str = "<!-- begin fuzz -->";
pub const END: &str = "<!-- end fuzz -->";

/// One fuzz run, as the section reports it.
pub struct Figures<'a> {
    pub tally: &'a Tally,
    /// Regression frames replayed before the generated ones, and how many
    /// of them the two sides disagreed on.
    pub replayed: usize,
    pub replay_mismatches: u64,
    pub seed: u64,
    pub seconds: f64,
    pub command: String,
    /// `YYYY-MM-DD`.
    pub date: String,
    pub machine: String,
}

/// The section, markers included.
pub fn section(f: &Figures) -> String {
    let t = f.tally;
    let mut s = String::new();
    let _ = writeln!(s, "{BEGIN}");
    let _ = writeln!(s, "## The parser, fuzzed against a reference\n");
    let _ = writeln!(
        s,
        "Measured by `{}` (as root) on {}, seed {} (`--seed {}` runs the same frames again). Machine: {}.\n",
        f.command, f.date, f.seed, f.seed, f.machine
    );
    let _ = writeln!(
        s,
        "Generated frames (every class, random VLAN stacks, IPv4 options and IHL values, IPv6 extension chains, fragments, lies in every length field, bit flips, truncation at every byte of some frames, odd lengths) run one by one through the XDP program under `BPF_PROG_TEST_RUN`, each compared with the reference classifier written from the README's class table (`detector-common/src/reference.rs`): the class the program counted it in, and its verdict (`XDP_PASS`, no rule installed). The {} frames of the regression corpus (`tests/fuzz/regressions.txt`: up to ten frames of each kind of mismatch a run has found, each fixed since) run first: {} mismatches.\n",
        f.replayed, f.replay_mismatches
    );
    let rate = t.frames as f64 / f.seconds.max(1e-9);
    let _ = writeln!(s, "| frames run | mismatches | frames/s | refused by the kernel |");
    let _ = writeln!(s, "|---:|---:|---:|---:|");
    let _ = writeln!(s, "| {} | **{}** | {:.0} | {} |\n", t.frames, t.mismatches, rate, t.refused);
    let _ = writeln!(
        s,
        "Frames shorter than an Ethernet header (14 bytes) are refused by `BPF_PROG_TEST_RUN` (EINVAL) and never reach the program; they are counted apart, and the reference calls each of them malformed. Frames per second include generating the frame, the reference and reading the class counter back.\n"
    );
    let _ = writeln!(s, "| class | frames |");
    let _ = writeln!(s, "|---|---:|");
    for c in TrafficClass::ALL {
        let _ = writeln!(s, "| {} | {} |", c.name(), t.per_class[c.index()]);
    }
    let _ = writeln!(s, "\n{END}");
    s
}

/// `doc` with its fuzz section replaced by `section`, or with `section`
/// appended when it has none.
pub fn splice(doc: &str, section: &str) -> String {
    if let (Some(b), Some(e)) = (doc.find(BEGIN), doc.find(END)) {
        if b < e {
            let after = &doc[e + END.len()..];
            let after = after.strip_prefix('\n').unwrap_or(after);
            return format!("{}{section}{after}", &doc[..b]);
        }
    }
    let mut out = doc.to_string();
    if !out.is_empty() && !out.ends_with("\n\n") {
        out.push_str(if out.ends_with('\n') { "\n" } else { "\n\n" });
    }
    out.push_str(section);
    out
}

/// `/proc/cpuinfo`'s model name, the number of CPUs, the kernel, and the
/// load when the run started (the machine may be shared, and frames per
/// second depend on it).
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into());
    format!("{cpu}, {cores} cores, Linux {}, load average {load} at the start", kernel.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(t: &Tally) -> String {
        section(&Figures {
            tally: t,
            replayed: 3,
            replay_mismatches: 0,
            seed: 42,
            seconds: 2.0,
            command: "cargo xtask fuzz".into(),
            date: "2026-01-02".into(),
            machine: "a CPU".into(),
        })
    }

    #[test]
    fn the_section_is_replaced_in_place_or_appended() {
        let t = Tally { frames: 1000, refused: 7, ..Default::default() };
        let s = figures(&t);
        assert!(s.contains("| 1000 | **0** | 500 | 7 |"), "{s}");
        let doc = "# Benchmarks\n\n## Other\n\ntext\n";
        let once = splice(doc, &s);
        assert!(once.starts_with(doc));
        assert!(once.ends_with(&s));
        let t2 = Tally { frames: 2000, ..Default::default() };
        let twice = splice(&format!("{once}\n## After\n"), &figures(&t2));
        assert_eq!(twice.matches(BEGIN).count(), 1);
        assert!(twice.contains("| 2000 | **0** |") && !twice.contains("| 1000 | **0** |"));
        assert!(twice.starts_with(doc) && twice.ends_with("\n## After\n"), "{twice}");
    }
}
