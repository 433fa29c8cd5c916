//! BENCHMARKS.md: the figures, how they were made, and on what.

use std::fmt::Write as _;

use crate::{
    detection::{percentile, DetectionFigures},
    live::{LiveRun, Scenario},
    testrun::ClassCost,
};

pub struct Report {
    pub repeat: u32,
    pub seconds: u64,
    pub per_class: Vec<ClassCost>,
    pub live: Vec<LiveRun>,
    pub detection: DetectionFigures,
    pub command: String,
}

/// The counting path may cost at most this many times the empty program.
const TARGET_RATIO: f64 = 3.0;

fn machine() -> String {
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
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|k| k.parse::<u64>().ok()))
        .map(|kb| format!("{} GiB", kb / 1024 / 1024))
        .unwrap_or_default();
    format!("{cpu}, {cores} cores, {mem}, Linux {}", kernel.trim())
}

impl Report {
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# Benchmarks\n");
        let _ = writeln!(s, "Measured by `{}` (as root). Machine: {}.\n", self.command, machine());
        let _ = writeln!(
            s,
            "Every ratio compares the detector's XDP program with an empty XDP program (`return XDP_PASS`) measured in the same run on the same frames. Figures move by a few percent between runs; the ratios are what to compare.\n"
        );

        let _ = writeln!(s, "## Per-packet cost under BPF_PROG_TEST_RUN\n");
        let _ = writeln!(
            s,
            "64-byte frames, one per traffic class, {} runs each (the median of three batches; the kernel reports whole nanoseconds). The frame's source is the same on every run, so it is a tracked heavy hitter: each packet pays for parsing, the class counter and the sketch, and every eighth one for the per-source map (see `detector-common/src/sketch.rs`). Header sampling is off here (no controller sets its divisor); the live runs below include it. Non-IP and malformed frames have no source to track. Target: at most {TARGET_RATIO}x the empty program.\n",
            self.repeat
        );
        let _ = writeln!(s, "| frame | detector ns/packet | empty ns/packet | ratio |");
        let _ = writeln!(s, "|---|---:|---:|---:|");
        let mut worst: f64 = 0.0;
        let (mut dsum, mut esum) = (0.0, 0.0);
        for c in &self.per_class {
            let ratio = c.detector_ns / c.empty_ns;
            worst = worst.max(ratio);
            dsum += c.detector_ns;
            esum += c.empty_ns;
            let _ = writeln!(s, "| {} | {:.1} | {:.1} | {:.2}x |", c.label, c.detector_ns, c.empty_ns, ratio);
        }
        let mean = dsum / esum;
        let _ = writeln!(
            s,
            "\nMean over all frames: **{mean:.2}x** the empty program; worst frame {worst:.2}x. Target {TARGET_RATIO}x: **{}**.\n",
            if worst <= TARGET_RATIO { "met" } else if mean <= TARGET_RATIO { "met on average, not on every frame" } else { "not met" }
        );

        let _ = writeln!(s, "## Under a live flood\n");
        let _ = writeln!(
            s,
            "The flood generator (`detector flood --engine fast`: `BPF_PROG_TEST_RUN` with live frames, 64-byte UDP frames, one sending thread) pushes frames out of one end of a veth pair for {} s; the program under test is attached in native mode on the other end, in another network namespace. Both ends share the machine's cores, so the receive rate is bounded by the generator too. ns/packet is the program's own run time from the kernel's BPF statistics (`kernel.bpf_stats_enabled`, which adds its own clock reads to both programs alike). A poller like the controller's reads the maps, starts a new sketch window (epoch) and drains the header samples (adapting the sampling divisor, starting at 64) every 100 ms during the detector's runs.\n",
            self.seconds
        );
        let _ = writeln!(s, "| sources | program | frames sent | received pps | ns/packet | ratio to empty |");
        let _ = writeln!(s, "|---|---|---:|---:|---:|---:|");
        for run in &self.live {
            let empty = self
                .live
                .iter()
                .find(|r| r.scenario == run.scenario && r.program == "empty")
                .map(|e| e.ns_per_packet)
                .unwrap_or(f64::NAN);
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.0} | {:.1} | {} |",
                run.scenario.label(),
                run.program,
                run.sent,
                run.received_pps,
                run.ns_per_packet,
                if run.program == "empty" { "1.00x".to_string() } else { format!("{:.2}x", run.ns_per_packet / empty) }
            );
        }
        let _ = writeln!(s);
        for run in self.live.iter().filter(|r| r.program == "detector") {
            let mut notes = Vec::new();
            if let Some(c) = run.counted {
                notes.push(format!("{c} frames in the udp class counter"));
            }
            if let Some((p50, p99)) = run.poll_ms {
                notes.push(format!("poll cycle p50 {p50:.2} ms, p99 {p99:.2} ms"));
            }
            if let Some(t) = run.max_tracked {
                notes.push(format!("at most {t} sources tracked at once"));
            }
            if let Some(h) = run.heavy_found {
                notes.push(format!("**{h} of the 10 true heavy hitters** are the top 10 of the per-source view"));
            }
            let label = match run.scenario {
                Scenario::ThousandSources => "1,000 sources",
                Scenario::Spoofed => "Spoofed",
            };
            let _ = writeln!(s, "- {label}: {}.", notes.join("; "));
        }
        self.controller(&mut s);
        s
    }

    fn controller(&self, s: &mut String) {
        let d = &self.detection;
        let (p50, p95) = (percentile(&d.latencies_ms, 50.0), percentile(&d.latencies_ms, 95.0));
        let _ = writeln!(s, "\n## The controller\n");
        let _ = writeln!(
            s,
            "`detector run` (release build) in the lab's target namespace, default poll interval ({} ms) and hold time ({} ms), a SYN floor of 5,000 pps.\n",
            d.interval_ms, d.hold_ms
        );
        let _ = writeln!(
            s,
            "**Detection time**, from the flood's first frame (a 50,000 pps SYN flood from the fast engine) to the incident's `opened` event, over {} trials: p50 **{p50:.0} ms**, p95 **{p95:.0} ms** (min {:.0}, max {:.0}). Target p95 under 500 ms: **{}**.\n",
            d.trials,
            percentile(&d.latencies_ms, 0.0),
            percentile(&d.latencies_ms, 100.0),
            if p95 < 500.0 { "met" } else { "not met" }
        );
        let sp = &d.spoof;
        let _ = writeln!(
            s,
            "**Under a spoofed flood**: {} UDP frames in {:.1} s from random addresses of 10.0.0.0/8, about {} distinct sources. Over its {} polls the poll cycle was p50 at most {:.2} ms and p99 at most {:.2} ms (bucket bounds of `detector_poll_duration_seconds`; target p99 under 50 ms: **{}**). Resident memory peaked at {:.1} MB during the flood ({:.1} MB high-water mark over the whole run; target under 150 MB: **{}**).",
            sp.frames,
            sp.seconds,
            sp.distinct_sources,
            sp.polls,
            sp.poll_p50_ms,
            sp.poll_p99_ms,
            if sp.poll_p99_ms < 50.0 { "met" } else { "not met" },
            sp.rss_mb,
            sp.peak_rss_mb,
            if sp.peak_rss_mb < 150.0 { "met" } else { "not met" }
        );
    }
}
