//! `cargo xtask bench`: figures, not timed tests. Every ratio compares the
//! detector's XDP program with an empty one measured in the same run, on the
//! same machine, with the same frames.

mod detection;
mod frames;
mod live;
mod report;
mod testrun;

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;

#[derive(Parser)]
#[command(name = "detector-bench")]
struct Args {
    /// Shorter runs (10^6 test-run repeats, 2 s floods): a quick look.
    #[arg(long)]
    quick: bool,
    /// Write the results into this Markdown file.
    #[arg(long, value_name = "FILE")]
    write: Option<PathBuf>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let repeat: u32 = if args.quick { 1_000_000 } else { 10_000_000 };
    let seconds = if args.quick { 2 } else { 5 };

    eprintln!("bench: BPF_PROG_TEST_RUN, {repeat} repeats per frame");
    let per_class = testrun::per_class(repeat)?;
    eprintln!("bench: live-frames flood into a veth, {seconds} s per run");
    let live = live::floods(seconds)?;
    eprintln!("bench: the controller: detection time, and polls under a spoofed flood");
    let detection = detection::run(20, if args.quick { 3 } else { 5 })?;

    let r = report::Report { repeat, seconds, per_class, live, detection, command: command_line(args.quick) };
    let text = r.markdown();
    println!("{text}");
    if let Some(path) = args.write {
        std::fs::write(&path, &text)?;
        eprintln!("bench: wrote {}", path.display());
    }
    Ok(())
}

fn command_line(quick: bool) -> String {
    if quick {
        "cargo xtask bench --quick".into()
    } else {
        "cargo xtask bench".into()
    }
}
