//! The differential fuzzer of the XDP parser: frames from a seeded
//! generator ([`gen`]) run through the real program under
//! `BPF_PROG_TEST_RUN` ([`kernel`]) and through the reference classifier
//! (`detector_common::reference`), which was written from the README's
//! class table; every frame on which the two disagree is a mismatch, and
//! mismatches are kept in a regression corpus ([`corpus`]) that the test
//! suite replays.
//!
//! `cargo xtask fuzz` runs the `detector-fuzz` binary; the test suite's
//! `fuzz_replay` test runs a fixed seed corpus and the regressions.

pub mod benchmarks;
pub mod corpus;
pub mod gen;
pub mod kernel;
pub mod rng;

use detector_common::{reference, TrafficClass, CLASS_COUNT};

use crate::kernel::{KernelError, Outcome, Program, ETH_HLEN, XDP_PASS};

/// `EINVAL`: what the kernel answers for a frame shorter than [`ETH_HLEN`].
const EINVAL: i32 = 22;

/// What one frame showed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// The program counted it in the reference's class and passed it.
    Agreed(TrafficClass),
    /// Shorter than an Ethernet header: the kernel refused to run the
    /// program, and the reference calls it malformed. Not a pass: the
    /// program never saw it.
    Refused,
    /// Anything else.
    Mismatch { reference: TrafficClass, xdp: Outcome },
}

/// Runs `frame` through both classifiers.
pub fn check(program: &mut Program, frame: &[u8]) -> Result<Check, KernelError> {
    let reference = reference::classify(frame);
    let xdp = program.run(frame, reference)?;
    Ok(match xdp {
        Outcome::Ran { class, action: XDP_PASS } if class == reference => Check::Agreed(class),
        Outcome::Refused { errno: EINVAL } if frame.len() < ETH_HLEN && reference == TrafficClass::Malformed => {
            Check::Refused
        }
        _ => Check::Mismatch { reference, xdp },
    })
}

/// A frame the two disagreed on.
#[derive(Clone, Debug)]
pub struct Mismatch {
    pub bytes: Vec<u8>,
    pub reference: TrafficClass,
    pub xdp: Outcome,
    /// How the generator made it, or where the corpus had it.
    pub what: String,
}

/// The program's side of a mismatch, in words.
pub fn describe(xdp: &Outcome) -> String {
    match xdp {
        Outcome::Ran { class, action: XDP_PASS } => class.name().to_string(),
        Outcome::Ran { class, action } => format!("{} (verdict {action}, not XDP_PASS)", class.name()),
        Outcome::Refused { errno } => format!("refused by the kernel (errno {errno})"),
    }
}

/// Counts over a run.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// Frames the program ran on.
    pub frames: u64,
    /// Frames the kernel refused (shorter than an Ethernet header).
    pub refused: u64,
    /// Agreed frames per class.
    pub per_class: [u64; CLASS_COUNT],
    pub mismatches: u64,
}

impl Tally {
    pub fn add(&mut self, c: &Check) {
        match c {
            Check::Agreed(class) => {
                self.frames += 1;
                self.per_class[class.index()] += 1;
            }
            Check::Refused => self.refused += 1,
            Check::Mismatch { xdp, .. } => {
                self.mismatches += 1;
                if matches!(xdp, Outcome::Ran { .. }) {
                    self.frames += 1;
                } else {
                    self.refused += 1;
                }
            }
        }
    }
}

/// Lower-case hex, two digits a byte.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
