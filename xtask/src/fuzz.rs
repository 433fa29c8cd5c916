//! `cargo xtask fuzz`: the XDP parser against the reference classifier.
//! Builds `detector-fuzz` (release) and runs it as root; it replays the
//! regression corpus, runs the generated frames, appends new mismatches to
//! the corpus and updates BENCHMARKS.md's fuzz section.

use std::path::Path;

use anyhow::Result;

use crate::{as_root, cargo, exec, setup};

/// The regression corpus, relative to the workspace root.
pub const REGRESSIONS: &str = "tests/fuzz/regressions.txt";

pub struct Options {
    pub frames: u64,
    pub seed: Option<u64>,
    pub no_write: bool,
}

pub fn run(root: &Path, o: Options) -> Result<()> {
    setup::toolchain()?;
    cargo(root, &["build", "--release", "-p", "detector-fuzz"])?;
    let mut cmd = as_root(&root.join("target/release/detector-fuzz"));
    cmd.arg("--frames").arg(o.frames.to_string()).arg("--regressions").arg(root.join(REGRESSIONS));
    let mut command = String::from("cargo xtask fuzz");
    if let Some(seed) = o.seed {
        cmd.arg("--seed").arg(seed.to_string());
        command.push_str(&format!(" --seed {seed}"));
    }
    if o.frames != 1_000_000 {
        command.push_str(&format!(" --frames {}", o.frames));
    }
    if !o.no_write {
        cmd.arg("--benchmarks").arg(root.join("BENCHMARKS.md"));
    }
    cmd.arg("--command").arg(command);
    exec(cmd)
}
