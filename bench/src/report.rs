//! BENCHMARKS.md: the figures, how they were made, and on what.

use std::fmt::Write as _;

use crate::{
    detection::{percentile, DetectionFigures},
    firewall::{Action, Comparison, DropRun, Layer},
    live::{LiveRun, Scenario},
    reaction::{self, ReactionFigures},
    rulepaths::PathCost,
    testrun::ClassCost,
};

pub struct Report {
    pub repeat: u32,
    pub seconds: u64,
    pub per_class: Vec<ClassCost>,
    pub rule_paths: Vec<PathCost>,
    pub live: Vec<LiveRun>,
    pub detection: DetectionFigures,
    pub reaction: ReactionFigures,
    pub firewall: Comparison,
    pub command: String,
}

/// The prefix-drop path may cost at most this many times the empty program.
const DROP_TARGET_RATIO: f64 = 2.0;

/// The mitigation paths under test runs, as a Markdown section.
pub fn rule_paths_section(paths: &[PathCost], repeat: u32) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## Mitigation paths under BPF_PROG_TEST_RUN\n");
    let _ = writeln!(
        s,
        "The 64-byte UDP frame above (from 198.18.0.1), {repeat} runs per path (the median of three batches), with 200 unrelated /24 drop rules and loopback on the allowlist in the trie besides the rule under test: every path is one LPM lookup. Dropped packets are counted in their class but not tracked per source. While no rule is in force the program skips the lookup (an array read), so peacetime traffic costs what the per-class table above shows. Each helper call (the trie lookup, the rate limit's bucket lookup, the clock read of a TTL or a rate limit) costs about 20 ns on this machine. Target: the prefix-drop path at most {DROP_TARGET_RATIO}x the empty program.\n"
    );
    let _ = writeln!(s, "| path | verdict | detector ns/packet | empty ns/packet | ratio |");
    let _ = writeln!(s, "|---|---|---:|---:|---:|");
    for p in paths {
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} | {:.1} | {:.2}x |",
            p.label,
            p.verdict,
            p.detector_ns,
            p.empty_ns,
            p.detector_ns / p.empty_ns
        );
    }
    if let Some(d) = paths.iter().find(|p| p.label == "prefix drop") {
        let ratio = d.detector_ns / d.empty_ns;
        let _ = writeln!(
            s,
            "\nPrefix drop: **{ratio:.2}x** the empty program. Target {DROP_TARGET_RATIO}x: **{}**.\n",
            if ratio <= DROP_TARGET_RATIO { "met" } else { "not met" }
        );
    }
    s
}

/// BENCHMARKS.md also holds sections other tools write, each between a
/// `<!-- begin NAME -->` and an `<!-- end NAME -->` line (`cargo xtask fuzz`
/// writes `fuzz`). A rewrite by the bench keeps every such section of `old`
/// that `new` does not hold, as it was, after the bench's own.
pub fn keep_marked_sections(old: &str, mut new: String) -> String {
    let mut rest = old;
    while let Some(b) = rest.find("<!-- begin ") {
        let from_begin = &rest[b..];
        let Some(name) = from_begin["<!-- begin ".len()..].split_once(" -->").map(|(n, _)| n.to_string()) else {
            break;
        };
        let end = format!("<!-- end {name} -->");
        let Some(e) = from_begin.find(&end) else {
            break;
        };
        let block = &from_begin[..e + end.len()];
        if !new.contains(&format!("<!-- begin {name} -->")) {
            if !new.ends_with("\n\n") {
                new.push_str(if new.ends_with('\n') { "\n" } else { "\n\n" });
            }
            new.push_str(block);
            new.push('\n');
        }
        rest = &from_begin[e + end.len()..];
    }
    new
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

        s.push_str(&rule_paths_section(&self.rule_paths, self.repeat));

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
        let _ = write!(s, "\n{}", reaction_section(&self.reaction));
        let _ = write!(s, "\n{}", firewall_section(&self.firewall));
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

/// The reaction time (a flood's first frame to the first drop by a
/// runbook's rule) may be at most this at p95; the aim is a third of it.
const REACTION_TARGET_MS: f64 = 1000.0;
const REACTION_AIM_MS: f64 = 300.0;

/// "Reaction: flood to first runbook drop": detection, the runbook engine
/// and the rule in XDP, end to end.
pub fn reaction_section(r: &ReactionFigures) -> String {
    let mut s = String::new();
    let n = r.trials.len();
    let _ = writeln!(s, "## Reaction: flood to first runbook drop\n");
    let _ = writeln!(
        s,
        "Each trial has its own lab and its own `detector run` (release build) in the lab's target namespace, started as a user would: default poll interval ({} ms), hold time {} ms, a UDP floor of {} pps with the learned baseline not yet counting (`baseline: {{ warmup: 1h }}`), `--on-stop detach`, and one runbook, `{}`: on `udp_flood`, `mitigate: {{ action: drop, scope: top_sources, top: {}, class: udp, ttl: 10m }}`. Once `/healthz` answers and after a delay that spreads the trials' start evenly over one poll interval (the n-th of N trials waits n/N of it, so floods land at every phase of the polls, as real ones do), a {} pps UDP flood (fast engine, 64-byte frames, {} sources of 198.18.0.0/24 in turn) starts from the generator namespace, and `detector rules list --json` is read every {} ms until one of the runbook's rules has dropped a packet. The first drop is taken as the earliest `created_ms` among the runbook's rules whose `dropped_packets` is above zero: no packet is dropped before its rule exists, and the counter proves the rule dropped; the flood is continuous (a frame about every 20 µs, each source every {} µs), so the true first drop comes at most about a millisecond after the figure (the rule's write into the maps, a few hundred µs in the controller's log, then the next frame from that source), never before it: the figure errs early, by that much. The first frame is the flood report's `first_frame_ms` (taken just before the first frame is handed to the kernel), the incident's opening its `opened` timeline entry (`detector incidents --json`). All three are wall-clock milliseconds from `SystemTime::now()` on this one machine, so they compare directly; every trial checks that first frame, opening and rule come in that order. The split shows where the time goes: detection (first frame to `opened`: the floor must be crossed for the hold time, seen at the {} ms polls), then the incident event, the runbook engine and the rule's installation (`opened` to the rule). Each row's percentiles are taken on their own, so the split's p95 need not add up to the total's.\n",
        reaction::INTERVAL_MS,
        reaction::HOLD_MS,
        reaction::FLOOR_PPS,
        reaction::RUNBOOK,
        reaction::TOP,
        reaction::FLOOD_PPS,
        reaction::SOURCES,
        reaction::POLL_MS,
        1_000_000 * reaction::SOURCES as u64 / reaction::FLOOD_PPS,
        reaction::INTERVAL_MS,
    );
    let _ = writeln!(s, "| span, over {n} trials | p50 ms | p95 ms | min ms | max ms |");
    let _ = writeln!(s, "|---|---:|---:|---:|---:|");
    let rows = [
        ("**first frame to first drop by the runbook's rule**", r.total()),
        ("first frame to incident opened", r.detect()),
        ("incident opened to rule installed", r.install()),
    ];
    for (label, v) in &rows {
        if v.is_empty() {
            continue;
        }
        let _ = writeln!(
            s,
            "| {label} | {:.0} | {:.0} | {:.0} | {:.0} |",
            percentile(v, 50.0),
            percentile(v, 95.0),
            percentile(v, 0.0),
            percentile(v, 100.0)
        );
    }
    let total = r.total();
    if total.is_empty() {
        let _ = writeln!(s, "\nTarget p95 under {REACTION_TARGET_MS:.0} ms: **not measured** (no trial).");
        return s;
    }
    let (p50, p95) = (percentile(&total, 50.0), percentile(&total, 95.0));
    let _ = writeln!(
        s,
        "\nFirst frame to first runbook drop: p50 **{p50:.0} ms**, p95 **{p95:.0} ms**. Target p95 under {REACTION_TARGET_MS:.0} ms: **{}**; aim {REACTION_AIM_MS:.0} ms: **{}**.",
        if p95 < REACTION_TARGET_MS { "met" } else { "not met" },
        if p95 < REACTION_AIM_MS { "met" } else { "not met" }
    );
    s
}

/// "Dropping a flood": what each dropper costs per dropped packet, and XDP
/// against the best of iptables and nftables.
pub fn firewall_section(c: &Comparison) -> String {
    let mut s = String::new();
    let b = &c.baseline;
    let _ = writeln!(s, "## Dropping a flood\n");
    let _ = writeln!(
        s,
        "The flood of the 1,000-source live run (fast engine, 64-byte UDP frames, 1,000 sources round robin, one sending thread pinned to one CPU) into a lab per dropper, dropped on the target's veth or behind it: {} rounds of {:.0} s, every dropper in turn, so a drift of the machine hits all alike. GRO is on on the target veth in every run (`ethtool -K <veth> gro on`): a veth without XDP takes live frames only when it runs NAPI, which GRO turns on; the XDP runs keep it on too, so every dropper sees the same path. iptables is `{}`{}. Dropped packets come from the dropper's own counter (`iptables -L -v -x`, an nft `counter`, the XDP setup's reader).\n",
        c.rounds,
        c.round_seconds,
        c.iptables_version,
        if c.iptables_version.contains("nf_tables") {
            ", so its rules are nftables rules in the kernel too (hashlimit through `nft_compat`)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        "CPU is the softirq time of all CPUs (`/proc/stat`) over the run, divided by the packets dropped. The veth's NAPI poll, where XDP, GRO, netfilter and the stack all run, is softirq work; the generator's own work is system time. This kernel samples CPU time at the tick, without IRQ time accounting, so a thread's own CPU time includes the softirq it happened to run and cannot be subtracted from busy time; `/proc/stat` keeps softirq apart. Figures move by about 10% between runs of the whole bench (the machine drifts; sampling at the tick adds 2 to 5%); the rounds in turn keep the ratios steadier. With a per-source rate limit, the packets let through cost their trip through the stack, counted here too.\n"
    );
    let _ = writeln!(
        s,
        "Without a dropper the stack discards the frames itself (nothing listens on the port): {} of {} frames arrived, {:.0} per second, at {:.0} ns of softirq per frame.\n",
        b.arrived,
        b.sent,
        b.arrived as f64 / b.seconds,
        b.ns_per_arrived()
    );
    let _ = writeln!(s, "| dropper | frames sent | dropped pps | CPU ns per dropped packet | ratio to XDP |");
    let _ = writeln!(s, "|---|---:|---:|---:|---:|");
    for r in &c.runs {
        let ratio = xdp_for(c, r.action).map(|x| format!("{:.2}x", r.t.ns_per_drop() / x.t.ns_per_drop()));
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {:.0} | {} |",
            r.label,
            r.t.sent,
            r.t.dropped_pps(),
            r.t.ns_per_drop(),
            ratio.unwrap_or_else(|| "n/a".into())
        );
    }
    let _ = writeln!(s);
    for r in &c.runs {
        let _ = writeln!(s, "- {}: {} dropped of {} frames that reached the veth.", r.label, r.t.dropped, r.t.arrived);
    }
    let xdp = c.runs.iter().find(|r| r.layer == Layer::Xdp && r.action == Action::Drop);
    let best = c
        .runs
        .iter()
        .filter(|r| r.layer != Layer::Xdp && r.action == Action::Drop)
        .min_by(|a, b| a.t.ns_per_drop().total_cmp(&b.t.ns_per_drop()));
    let target = "Target: XDP's CPU per dropped packet at most one third of the best of iptables and nftables";
    match (xdp, best) {
        (Some(x), Some(b)) => {
            let (xdp_ns, best_ns) = (x.t.ns_per_drop(), b.t.ns_per_drop());
            let ratio = xdp_ns / best_ns;
            let _ = writeln!(
                s,
                "\n{target}: **{}** (XDP {xdp_ns:.0} ns, best {} {best_ns:.0} ns: {ratio:.2} of it).",
                if ratio <= 1.0 / 3.0 { "met" } else { "not met" },
                b.label,
            );
        }
        _ => {
            let _ = writeln!(s, "\n{target}: **not measured** (no XDP drop rule, or no iptables/nftables run).");
        }
    }
    let xdp_limit = c.runs.iter().find(|r| r.layer == Layer::Xdp && r.action == Action::RateLimit);
    let hashlimit = c.runs.iter().find(|r| r.layer != Layer::Xdp && r.action == Action::RateLimit);
    if let (Some(x), Some(h)) = (xdp_limit, hashlimit) {
        let _ = writeln!(
            s,
            "\nPer-source rate limit: XDP {:.0} ns per dropped packet, {} {:.0} ns ({:.2} of it).",
            x.t.ns_per_drop(),
            h.label,
            h.t.ns_per_drop(),
            x.t.ns_per_drop() / h.t.ns_per_drop()
        );
    }
    s
}

/// The XDP run a row is compared with: the one doing the same thing, or
/// else the first.
fn xdp_for(c: &Comparison, action: Action) -> Option<&DropRun> {
    let xdp = || c.runs.iter().filter(|r| r.layer == Layer::Xdp);
    xdp().find(|r| r.action == action).or_else(|| xdp().next())
}

#[cfg(test)]
mod tests {
    use super::keep_marked_sections;

    #[test]
    fn a_rewrite_keeps_the_sections_other_tools_wrote() {
        let fuzz = "<!-- begin fuzz -->\n## Fuzz\n\n| 1 |\n<!-- end fuzz -->";
        let old = format!("# Benchmarks\n\nold figures\n\n{fuzz}\n\n## Trailing\n");
        let new = keep_marked_sections(&old, "# Benchmarks\n\nnew figures\n".to_string());
        assert_eq!(new, format!("# Benchmarks\n\nnew figures\n\n{fuzz}\n"));
        // Kept once, however often the bench rewrites.
        assert_eq!(
            keep_marked_sections(&new, "# Benchmarks\n\nnewer\n".into()).matches("<!-- begin fuzz -->").count(),
            1
        );
        // A section the new report writes itself is not doubled.
        assert_eq!(keep_marked_sections(&old, format!("# B\n{fuzz}\n")), format!("# B\n{fuzz}\n"));
        assert_eq!(keep_marked_sections("no markers", "x\n".into()), "x\n");
    }
}
