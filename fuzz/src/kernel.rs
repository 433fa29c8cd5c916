//! The real XDP program, loaded (never attached) and run on one frame at a
//! time with `BPF_PROG_TEST_RUN`; the class it counted the frame in is read
//! back from its per-CPU class counters.
//!
//! Speed: a frame costs one test run and, on the path where the program
//! agrees with the expected class, one lookup of that class's counters
//! (packets and bytes must both have moved by exactly the frame). Every
//! other outcome, and every [`FULL_CHECK_EVERY`] frames, reads all classes
//! and checks that nothing else moved, so a frame counted twice or in the
//! wrong class cannot pass unseen.

// The controller's module paths this crate uses, in one place.
use detector::kernel::ebpf::{self, CountingOptions, LoadError};
use detector_common::{
    maps::{ClassStats, CLASS_STATS_MAP, DEFAULT_MAX_SOURCES, DETECTOR_PROGRAM},
    TrafficClass, CLASS_COUNT,
};

use aya::{
    maps::{MapData, MapError, PerCpuArray},
    programs::{ProgramError, TestRun as _, TestRunOptions, Xdp},
    Ebpf,
};
use thiserror::Error;

/// `XDP_PASS`: with no rule installed, the only verdict the program may give.
pub const XDP_PASS: u32 = 2;
/// The kernel refuses to run an XDP program on less than an Ethernet header.
pub const ETH_HLEN: usize = 14;
/// Frames between two reads of every class counter.
pub const FULL_CHECK_EVERY: u64 = 4096;

#[derive(Debug, Error)]
pub enum KernelError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("the class counters map has an unexpected type or layout: {0}")]
    Layout(MapError),
    #[error("reading the class counters failed: {0}")]
    Read(MapError),
    #[error("BPF_PROG_TEST_RUN failed on a {len}-byte frame: {source}")]
    Run { len: usize, source: ProgramError },
    #[error("the class counters moved by {packets} packets across classes {classes:?} for one {len}-byte frame")]
    Counted { len: usize, packets: u64, classes: Vec<&'static str> },
    #[error("the class counters hold {found} packets, {expected} frames were run")]
    Drift { found: u64, expected: u64 },
}

/// What the kernel did with one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The program ran, counted the frame in `class` and returned `action`.
    Ran { class: TrafficClass, action: u32 },
    /// The kernel refused to run the program on it (`errno`), as it does for
    /// frames shorter than [`ETH_HLEN`].
    Refused { errno: i32 },
}

/// The counting program, loaded with its maps, and what its class counters
/// held after the last frame.
pub struct Program {
    ebpf: Ebpf,
    classes: PerCpuArray<MapData, ClassStats>,
    /// Packets and bytes per class, as last read or as expected since.
    counted: [(u64, u64); CLASS_COUNT],
    since_full_check: u64,
}

impl Program {
    /// Loads the detector's XDP program; nothing is attached anywhere, and
    /// no rule is installed.
    pub fn load() -> Result<Program, KernelError> {
        let mut ebpf = ebpf::load_counting(&CountingOptions::new(DEFAULT_MAX_SOURCES))?;
        let classes = PerCpuArray::try_from(ebpf::take_map(&mut ebpf, "detector", CLASS_STATS_MAP)?)
            .map_err(KernelError::Layout)?;
        ebpf::load_xdp(&mut ebpf, "detector", DETECTOR_PROGRAM)?;
        let mut p = Program { ebpf, classes, counted: [(0, 0); CLASS_COUNT], since_full_check: 0 };
        p.counted = p.read_all()?;
        Ok(p)
    }

    fn xdp(&self) -> &Xdp {
        // Loaded by `load` under this name and type; nothing takes it out.
        self.ebpf
            .program(DETECTOR_PROGRAM)
            .and_then(|p| <&Xdp>::try_from(p).ok())
            .expect("the detector program was loaded in Program::load")
    }

    fn read(&self, class: usize) -> Result<(u64, u64), KernelError> {
        let per_cpu = self.classes.get(&(class as u32), 0).map_err(KernelError::Read)?;
        Ok(per_cpu.iter().fold((0, 0), |(p, b), v| (p + v.seen.packets, b + v.seen.bytes)))
    }

    fn read_all(&self) -> Result<[(u64, u64); CLASS_COUNT], KernelError> {
        let mut all = [(0, 0); CLASS_COUNT];
        for (c, slot) in all.iter_mut().enumerate() {
            *slot = self.read(c)?;
        }
        Ok(all)
    }

    /// Runs the program once on `frame`. `expected` is the class the caller
    /// believes in: when the program agrees, one counter read confirms it.
    pub fn run(&mut self, frame: &[u8], expected: TrafficClass) -> Result<Outcome, KernelError> {
        let opts = TestRunOptions { data_in: Some(frame), repeat: 1, ..TestRunOptions::new() };
        let result = match self.xdp().test_run(opts) {
            Ok(r) => r,
            Err(ProgramError::SyscallError(e)) if e.io_error.raw_os_error().is_some() => {
                return Ok(Outcome::Refused { errno: e.io_error.raw_os_error().unwrap_or(0) });
            }
            Err(source) => return Err(KernelError::Run { len: frame.len(), source }),
        };
        let len = frame.len() as u64;
        let e = expected.index();
        let now = self.read(e)?;
        self.since_full_check += 1;
        let class = if now == (self.counted[e].0 + 1, self.counted[e].1 + len) {
            self.counted[e] = now;
            if self.since_full_check >= FULL_CHECK_EVERY {
                self.full_check()?;
            }
            expected
        } else {
            self.find_class(len)?
        };
        Ok(Outcome::Ran { class, action: result.return_value })
    }

    /// Reads every class: exactly one counted one more packet, of `len` bytes.
    fn find_class(&mut self, len: u64) -> Result<TrafficClass, KernelError> {
        let now = self.read_all()?;
        let moved: Vec<usize> = (0..CLASS_COUNT).filter(|c| now[*c] != self.counted[*c]).collect();
        let packets: u64 = moved.iter().map(|c| now[*c].0 - self.counted[*c].0).sum();
        let one = match moved.as_slice() {
            [c] if now[*c] == (self.counted[*c].0 + 1, self.counted[*c].1 + len) => TrafficClass::from_id(*c as u32),
            _ => None,
        };
        let Some(class) = one else {
            let classes = moved.iter().filter_map(|c| TrafficClass::from_id(*c as u32)).map(|c| c.name()).collect();
            return Err(KernelError::Counted { len: len as usize, packets, classes });
        };
        self.counted = now;
        self.since_full_check = 0;
        Ok(class)
    }

    /// Every class counter must hold what the frames run so far put there.
    fn full_check(&mut self) -> Result<(), KernelError> {
        let now = self.read_all()?;
        if now != self.counted {
            let found = now.iter().map(|c| c.0).sum();
            let expected = self.counted.iter().map(|c| c.0).sum();
            return Err(KernelError::Drift { found, expected });
        }
        self.since_full_check = 0;
        Ok(())
    }

    /// Checks every counter once more (at the end of a run).
    pub fn finish(&mut self) -> Result<(), KernelError> {
        self.full_check()
    }
}
