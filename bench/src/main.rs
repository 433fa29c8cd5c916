//! `cargo xtask bench`: figures, not timed tests. Every per-packet cost is
//! the nanoseconds the detector's XDP program adds over an empty one
//! measured in the same run, on the same machine, with the same frames (a
//! ratio to the empty program does not carry from one CPU to another).

mod bgp;
mod cold;
mod detection;
mod egress;
mod fastnetmon;
mod firewall;
mod frames;
mod live;
mod profile;
mod reaction;
mod report;
mod rulepaths;
mod synflood;
mod targets;
mod testrun;

use std::{path::PathBuf, time::Duration};

use anyhow::Result;
use clap::{Parser, ValueEnum};

#[derive(Parser)]
#[command(name = "detector-bench")]
struct Args {
    /// Shorter runs (10^6 test-run repeats, 2 s floods): a quick look.
    #[arg(long)]
    quick: bool,
    /// Write the results into this Markdown file.
    #[arg(long, value_name = "FILE", conflicts_with = "only")]
    write: Option<PathBuf>,
    /// Run only this part and print its section (for a quick look while
    /// working on it; the written report always has every part).
    #[arg(long, value_name = "PART")]
    only: Option<Part>,
    /// With `--only cold`: another build of the counting object to run in
    /// the same turns as the embedded one, as NAME=FILE (repeatable).
    #[arg(long, value_name = "NAME=FILE", value_parser = parse_object)]
    object: Vec<(String, PathBuf)>,
}

fn parse_object(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((name, file)) if !name.is_empty() && !file.is_empty() => Ok((name.to_string(), PathBuf::from(file))),
        _ => Err(format!("'{s}' is not NAME=FILE")),
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Part {
    /// ns per packet of the counting path, per traffic class (test runs).
    Counting,
    /// ns per packet of the counting path with the caches evicted before
    /// each test run.
    Cold,
    /// Dropping a flood: iptables, nftables and XDP.
    Firewall,
    /// ns per packet along each mitigation path (test runs).
    Rules,
    /// From a flood's first frame to the first packet a runbook's rule drops.
    Reaction,
    /// The program's own ns per packet under a live flood, beside the empty one.
    Live,
    /// CPU per spoofed SYN: cookies answered in XDP against the kernel's own.
    Syncookies,
    /// Network mode: per-destination counting per packet, poll cycle, memory.
    Targets,
    /// ns per packet the host sends, of the egress classifier (test runs).
    Egress,
    /// Side by side with FastNetMon Community: detection time and CPU per
    /// forwarded packet, in the router lab.
    Fastnetmon,
    /// Its CPU runs only (no detection trials).
    FastnetmonCpu,
    /// Upstream mitigation over BGP: from a flood's first frame to the
    /// FlowSpec rule and the blackhole in BIRD, and from the resolution to
    /// their withdrawal.
    Bgp,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let repeat: u32 = if args.quick { 1_000_000 } else { 10_000_000 };
    let seconds = if args.quick { 2 } else { 5 };
    // Cheap droppers leave few softirq ticks to count (4 ms each here):
    // longer floods keep the sampling error small.
    let firewall_seconds = Duration::from_secs(if args.quick { 3 } else { 12 });
    let reaction_trials = if args.quick { 5 } else { 20 };
    if !args.object.is_empty() && !matches!(args.only, Some(Part::Cold)) {
        anyhow::bail!("--object compares builds in the cold runs only: give it with --only cold");
    }
    match args.only {
        Some(Part::Counting) => {
            println!("{}", report::per_class_section(&testrun::per_class(repeat)?, repeat));
            return Ok(());
        }
        Some(Part::Cold) => {
            println!("{}", report::cold_section(&cold::run(&args.object, cold::RUNS)?, cold::RUNS));
            return Ok(());
        }
        Some(Part::Firewall) => {
            let fw = firewall_part(firewall_seconds)?;
            println!("{}", report::firewall_section(&fw));
            return Ok(());
        }
        Some(Part::Rules) => {
            println!("{}", report::rule_paths_section(&rulepaths::paths(repeat)?, repeat));
            return Ok(());
        }
        Some(Part::Reaction) => {
            println!("{}", report::reaction_section(&reaction_part(reaction_trials)?));
            return Ok(());
        }
        Some(Part::Syncookies) => {
            println!("{}", report::syn_cookies_section(&syn_cookies_part(firewall_seconds)?));
            return Ok(());
        }
        Some(Part::Targets) => {
            println!("{}", report::targets_section(&targets::run_all(repeat)?));
            return Ok(());
        }
        Some(Part::Egress) => {
            println!("{}", report::egress_section(&egress::costs(repeat)?, repeat));
            return Ok(());
        }
        Some(Part::Fastnetmon) => {
            println!("{}", report::fastnetmon_section(&fastnetmon_part(args.quick)?));
            return Ok(());
        }
        Some(Part::FastnetmonCpu) => {
            let (_, cpu_seconds, rounds) = fastnetmon_sizes(args.quick);
            let f = fastnetmon::run(0, cpu_seconds, rounds)?;
            println!("{}", report::fastnetmon_cpu_section(&f));
            return Ok(());
        }
        Some(Part::Bgp) => {
            println!("{}", report::bgp_section(&bgp_part(args.quick)?));
            return Ok(());
        }
        Some(Part::Live) => {
            for r in live::floods(seconds)? {
                let poll =
                    r.poll_ms.map(|(p50, p99)| format!("  poll p50 {p50:.2} ms, p99 {p99:.2} ms")).unwrap_or_default();
                println!("{:<70} {:<8} {:>8.1} ns/packet{poll}", r.scenario.label(), r.program, r.ns_per_packet);
            }
            return Ok(());
        }
        None => {}
    }

    eprintln!("bench: BPF_PROG_TEST_RUN, {repeat} repeats per frame");
    let per_class = testrun::per_class(repeat)?;
    eprintln!("bench: BPF_PROG_TEST_RUN with the caches evicted, {} runs per case", cold::RUNS);
    let cold = cold::run(&[], cold::RUNS)?;
    eprintln!("bench: BPF_PROG_TEST_RUN along the mitigation paths, {repeat} repeats each");
    let rule_paths = rulepaths::paths(repeat)?;
    eprintln!("bench: network mode: per-destination counting, poll cycle, memory");
    let targets = targets::run_all(repeat)?;
    eprintln!("bench: the egress classifier, {repeat} repeats per case");
    let egress = egress::costs(repeat)?;
    eprintln!("bench: live-frames flood into a veth, {seconds} s per run");
    let live = live::floods(seconds)?;
    eprintln!("bench: the controller: detection time, and polls under a spoofed flood");
    let detection = detection::run(20, if args.quick { 3 } else { 5 })?;
    let reaction = reaction_part(reaction_trials)?;
    let firewall = firewall_part(firewall_seconds)?;
    let syn_cookies = syn_cookies_part(firewall_seconds)?;
    let fastnetmon = fastnetmon_part(args.quick)?;
    let bgp = bgp_part(args.quick)?;

    let r = report::Report {
        repeat,
        seconds,
        per_class,
        cold,
        rule_paths,
        live,
        detection,
        reaction,
        firewall,
        syn_cookies,
        targets,
        egress,
        fastnetmon,
        bgp,
        command: command_line(args.quick),
    };
    let text = r.markdown();
    println!("{text}");
    if let Some(path) = args.write {
        // Sections other tools keep in the file (the fuzz figure) stay.
        let text = report::keep_marked_sections(&std::fs::read_to_string(&path).unwrap_or_default(), text);
        std::fs::write(&path, &text)?;
        eprintln!("bench: wrote {}", path.display());
    }
    Ok(())
}

fn firewall_part(per_dropper: Duration) -> Result<firewall::Comparison> {
    eprintln!("bench: dropping a flood: iptables, nftables and XDP, {per_dropper:?} per dropper");
    firewall::compare(per_dropper, firewall::xdp_droppers())
}

fn syn_cookies_part(total: Duration) -> Result<synflood::SynComparison> {
    eprintln!(
        "bench: a spoofed SYN flood answered with cookies: XDP, the kernel, and an XDP reflector, {total:?} each"
    );
    synflood::compare(total)
}

/// Detection trials, seconds per CPU run, CPU rounds.
fn fastnetmon_sizes(quick: bool) -> (usize, u64, usize) {
    if quick {
        (3, 3, 1)
    } else {
        (10, 10, 4)
    }
}

fn fastnetmon_part(quick: bool) -> Result<fastnetmon::Figures> {
    let (trials, cpu_seconds, rounds) = fastnetmon_sizes(quick);
    eprintln!(
        "bench: side by side with FastNetMon: {trials} detection trials each, {rounds} CPU rounds of {cpu_seconds} s"
    );
    fastnetmon::run(trials, cpu_seconds, rounds)
}

fn bgp_part(quick: bool) -> Result<bgp::Figures> {
    let trials = if quick { 3 } else { 10 };
    eprintln!("bench: upstream mitigation over BGP: a flood's first frame to the routes in BIRD, and their withdrawal, {trials} trials");
    bgp::run(trials)
}

fn reaction_part(trials: usize) -> Result<reaction::ReactionFigures> {
    eprintln!("bench: reaction: a flood's first frame to the first drop by a runbook's rule, {trials} trials");
    reaction::run(trials)
}

/// The `detector` binary beside this one, as `cargo xtask bench` builds
/// them; the controller runs as a user runs it.
fn detector_bin() -> Result<PathBuf> {
    let bin = std::env::current_exe()?.with_file_name("detector");
    if !bin.exists() {
        anyhow::bail!("{} is missing: run the bench through `cargo xtask bench`", bin.display());
    }
    Ok(bin)
}

fn command_line(quick: bool) -> String {
    if quick {
        "cargo xtask bench --quick".into()
    } else {
        "cargo xtask bench".into()
    }
}
