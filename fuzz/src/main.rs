//! `detector-fuzz`: run by `cargo xtask fuzz` (as root). Replays the
//! regression corpus, then runs generated frames through the XDP program
//! and the reference until `--frames` have run; prints the figures, adds
//! every new mismatch to the corpus, updates BENCHMARKS.md's fuzz section,
//! and exits non-zero on any mismatch.

use std::{
    collections::HashMap,
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use clap::Parser;
// The controller's module paths this binary uses, in one place.
use detector::{
    clock::now_ms,
    detect::incident::time_ms::rfc3339,
    privileges::{self, Need},
};
use detector_common::TrafficClass;
use detector_fuzz::{benchmarks, check, corpus, describe, gen::Generator, kernel::Program, Check, Mismatch, Tally};

#[derive(Parser)]
#[command(name = "detector-fuzz", about = "The XDP parser against the reference classifier, under BPF_PROG_TEST_RUN")]
struct Args {
    /// Generated frames to run through the program (refused ones not counted).
    #[arg(long, default_value_t = 1_000_000)]
    frames: u64,
    /// Seed of the frame generator; a random one (printed) if not given.
    #[arg(long)]
    seed: Option<u64>,
    /// The regression corpus: replayed first, new mismatches appended.
    #[arg(long, value_name = "FILE")]
    regressions: PathBuf,
    /// Update the fuzz section of this Markdown file (BENCHMARKS.md).
    #[arg(long, value_name = "FILE")]
    benchmarks: Option<PathBuf>,
    /// The command line to name in BENCHMARKS.md.
    #[arg(long, default_value = "cargo xtask fuzz")]
    command: String,
}

/// New mismatches kept per (reference, program) pair of verdicts, and in
/// all: a systematic disagreement shows on thousands of frames, and a
/// handful of each kind is what a regression corpus needs. Every one is
/// counted; the ones left out are reported.
const KEEP_PER_KIND: usize = 10;
const KEEP_IN_ALL: usize = 200;
/// Progress lines on stderr, this far apart.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("detector-fuzz: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// True when the run found no mismatch.
fn run(args: Args) -> Result<bool> {
    privileges::check_caps(privileges::effective()?, Need::Xdp)?;
    let seed = match args.seed {
        Some(s) => s,
        None => {
            let mut b = [0u8; 8];
            getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no random seed: {e}"))?;
            u64::from_le_bytes(b)
        }
    };
    let machine = benchmarks::machine();
    let mut program = Program::load().context("loading the detector's XDP program")?;

    let regressions = corpus::read(&args.regressions)?;
    let mut replay = Tally::default();
    for e in &regressions {
        let c = check(&mut program, &e.bytes)?;
        replay.add(&c);
        if let Check::Mismatch { reference, xdp } = c {
            println!(
                "MISMATCH {}:{}: reference {} / program {}: {}",
                args.regressions.display(),
                e.line,
                reference.name(),
                describe(&xdp),
                e.note
            );
        }
    }
    println!(
        "fuzz: replayed {} regression frames from {}: {} mismatches",
        regressions.len(),
        args.regressions.display(),
        replay.mismatches
    );

    println!("fuzz: seed {seed}, {} frames", args.frames);
    let mut tally = Tally::default();
    let mut kept: Vec<(Vec<u8>, String)> = Vec::new();
    let mut per_kind: HashMap<(TrafficClass, String), usize> = HashMap::new();
    let start = Instant::now();
    let mut next_progress = start + PROGRESS_EVERY;
    for (n, frame) in Generator::new(seed).enumerate() {
        if tally.frames >= args.frames {
            break;
        }
        let c = check(&mut program, &frame.bytes)?;
        tally.add(&c);
        if let Check::Mismatch { reference, xdp } = c {
            let m = Mismatch { bytes: frame.bytes, reference, xdp, what: frame.what };
            let kind = per_kind.entry((reference, describe(&xdp))).or_default();
            *kind += 1;
            if *kind <= KEEP_PER_KIND && kept.len() < KEEP_IN_ALL {
                println!("MISMATCH frame {n}: reference {} / program {}: {}", reference.name(), describe(&xdp), m.what);
                println!("  {}", detector_fuzz::hex(&m.bytes));
                kept.push((m.bytes.clone(), corpus::line(&m, seed, n as u64)));
            }
        }
        if Instant::now() >= next_progress {
            next_progress += PROGRESS_EVERY;
            let secs = start.elapsed().as_secs_f64();
            eprintln!(
                "fuzz: {} frames, {:.0} frames/s, {} mismatches",
                tally.frames,
                tally.frames as f64 / secs,
                tally.mismatches
            );
        }
    }
    program.finish()?;
    let seconds = start.elapsed().as_secs_f64();

    println!(
        "fuzz: {} frames in {seconds:.1} s ({:.0} frames/s); {} shorter than an Ethernet header refused by the kernel",
        tally.frames,
        tally.frames as f64 / seconds,
        tally.refused
    );
    for c in TrafficClass::ALL {
        println!("  {:<18} {:>9}", c.name(), tally.per_class[c.index()]);
    }
    println!("fuzz: {} mismatches", tally.mismatches);
    let mut kinds: Vec<_> = per_kind.iter().collect();
    kinds.sort_by(|a, b| b.1.cmp(a.1));
    for ((reference, xdp), count) in kinds {
        println!("  {count:>9}  reference {} / program {xdp}", reference.name());
    }
    if !kept.is_empty() {
        let added = corpus::append(&args.regressions, &kept)?;
        println!(
            "fuzz: {added} new frames added to {} ({} mismatching frames not kept: at most {KEEP_PER_KIND} of each kind, {KEEP_IN_ALL} in all)",
            args.regressions.display(),
            tally.mismatches as usize - kept.len()
        );
    }

    if let Some(path) = &args.benchmarks {
        let date = rfc3339(now_ms()).chars().take(10).collect();
        let figures = benchmarks::Figures {
            tally: &tally,
            replayed: regressions.len(),
            replay_mismatches: replay.mismatches,
            seed,
            seconds,
            command: args.command.clone(),
            date,
            machine,
        };
        let doc = match std::fs::read_to_string(path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        std::fs::write(path, benchmarks::splice(&doc, &benchmarks::section(&figures)))
            .with_context(|| format!("writing {}", path.display()))?;
        println!("fuzz: wrote the fuzz section of {}", path.display());
    }
    Ok(tally.mismatches == 0 && replay.mismatches == 0)
}
