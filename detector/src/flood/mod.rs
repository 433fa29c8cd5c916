//! The flood generator: real frames out of an interface, from one source or
//! millions, for the lab, the tests and the bench.
//!
//! Two engines:
//! - **fast**: the `flood` XDP program under `BPF_PROG_TEST_RUN` with live
//!   frames. The kernel copies the template into pages and the program gives
//!   each copy a new source before `XDP_TX`; millions of frames per second
//!   from one core. Frames the receiver cannot take are dropped on the way,
//!   as in any real flood, so the count is what was sent, not what arrived.
//! - **exact**: a raw packet socket, one `send` per frame, paced. Slower,
//!   but every frame reaches the peer, so tests can assert exact counts.

pub mod checksum;
pub mod exact;
pub mod fast;
pub mod frame;
pub mod sources;

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use serde::Serialize;
use thiserror::Error;

use self::{
    frame::Frame,
    sources::{Sources, Spread},
};

/// How many frames, or for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    Count(u64),
    Duration(Duration),
}

/// Frames per second.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rate {
    Max,
    Pps(u64),
}

impl std::str::FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Rate, String> {
        if s == "max" {
            return Ok(Rate::Max);
        }
        match s.parse::<u64>() {
            Ok(0) | Err(_) => Err(format!("'{s}' is not a rate: give frames per second (1 or more) or 'max'")),
            Ok(n) => Ok(Rate::Pps(n)),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    Fast,
    Exact,
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Engine::Fast => "fast",
            Engine::Exact => "exact",
        })
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EngineChoice {
    /// Exact up to [`EXACT_MAX_PPS`], fast above and for `max`.
    #[default]
    Auto,
    Fast,
    Exact,
}

impl std::str::FromStr for EngineChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<EngineChoice, String> {
        match s {
            "auto" => Ok(EngineChoice::Auto),
            "fast" => Ok(EngineChoice::Fast),
            "exact" => Ok(EngineChoice::Exact),
            _ => Err(format!("'{s}' is not an engine (use auto, fast or exact)")),
        }
    }
}

/// The highest rate `auto` sends with the exact engine.
pub const EXACT_MAX_PPS: u64 = 100_000;

impl EngineChoice {
    pub fn resolve(self, rate: Rate) -> Engine {
        match (self, rate) {
            (EngineChoice::Fast, _) => Engine::Fast,
            (EngineChoice::Exact, _) => Engine::Exact,
            (EngineChoice::Auto, Rate::Pps(n)) if n <= EXACT_MAX_PPS => Engine::Exact,
            (EngineChoice::Auto, _) => Engine::Fast,
        }
    }
}

/// Everything a flood run needs, already validated.
#[derive(Clone, Debug)]
pub struct FloodPlan {
    pub frame: Frame,
    pub sources: Sources,
    pub limit: Limit,
    pub rate: Rate,
    /// Sending threads of the fast engine.
    pub threads: usize,
}

/// What a run did.
#[derive(Clone, Debug, Serialize)]
pub struct FloodReport {
    pub engine: Engine,
    /// Frames handed to the interface.
    pub sent: u64,
    pub seconds: f64,
    pub pps: f64,
    /// When the first frame was handed over, Unix milliseconds.
    pub first_frame_ms: u64,
}

impl FloodReport {
    fn new(engine: Engine, sent: u64, started: std::time::SystemTime, elapsed: Duration) -> FloodReport {
        let seconds = elapsed.as_secs_f64();
        FloodReport {
            engine,
            sent,
            seconds,
            pps: if seconds > 0.0 { sent as f64 / seconds } else { 0.0 },
            first_frame_ms: started.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
        }
    }
}

#[derive(Debug, Error)]
pub enum FloodError {
    #[error(transparent)]
    Load(#[from] crate::kernel::ebpf::LoadError),
    #[error("configuring the flood program failed: {0}")]
    Config(String),
    #[error("the kernel refused the BPF test run on ifindex {ifindex}: {reason}")]
    TestRun { ifindex: u32, reason: String },
    #[error("raw packet socket on ifindex {ifindex}: {what}: {source}")]
    Socket { ifindex: u32, what: &'static str, source: std::io::Error },
}

/// Set by SIGINT/SIGTERM while a flood runs: stop early, report what was sent.
pub static STOP: AtomicBool = AtomicBool::new(false);

fn stopped() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// Picks per-frame sources in userspace (the exact engine), the same way the
/// XDP program does in the fast one.
pub struct SourcePicker {
    sources: Sources,
    seq: u64,
    rng: u64,
}

impl SourcePicker {
    pub fn new(sources: Sources, seed: u64) -> SourcePicker {
        SourcePicker { sources, seq: 0, rng: seed | 1 }
    }

    fn random(&mut self) -> u32 {
        // xorshift64*: plenty for picking addresses.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32
    }

    /// The low 32 bits of the next frame's source, or `None` when every frame
    /// keeps the template's source.
    pub fn next_source(&mut self) -> Option<u32> {
        let base = self.sources.base();
        if let Some(h) = self.sources.heavy {
            if (self.random() as u64 * 100) >> 32 < h.percent as u64 {
                return Some(base.wrapping_add(self.random() % h.count));
            }
        }
        if self.sources.count <= 1 {
            return None;
        }
        let n = match self.sources.spread {
            Spread::Sequential => {
                self.seq += 1;
                self.seq
            }
            Spread::Random => self.random() as u64,
        };
        Some(base.wrapping_add((n % self.sources.count as u64) as u32))
    }
}

/// Runs `plan` out of the interface with index `ifindex`, on `engine`.
pub fn run(engine: Engine, ifindex: u32, plan: &FloodPlan) -> Result<FloodReport, FloodError> {
    match engine {
        Engine::Fast => fast::run(ifindex, plan),
        Engine::Exact => exact::run(ifindex, plan),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flood::sources::Heavy;

    fn sources(count: u32, spread: Spread, heavy: Option<Heavy>) -> Sources {
        Sources { first: "10.0.0.0".parse().unwrap(), count, spread, heavy }
    }

    #[test]
    fn engine_choice() {
        assert_eq!(EngineChoice::Auto.resolve(Rate::Pps(1000)), Engine::Exact);
        assert_eq!(EngineChoice::Auto.resolve(Rate::Pps(EXACT_MAX_PPS + 1)), Engine::Fast);
        assert_eq!(EngineChoice::Auto.resolve(Rate::Max), Engine::Fast);
        assert_eq!(EngineChoice::Exact.resolve(Rate::Max), Engine::Exact);
        assert_eq!("max".parse::<Rate>(), Ok(Rate::Max));
        assert_eq!("2500".parse::<Rate>(), Ok(Rate::Pps(2500)));
        assert!("0".parse::<Rate>().is_err());
        assert!("fast".parse::<Rate>().is_err());
    }

    #[test]
    fn sequential_sources_round_robin() {
        let mut p = SourcePicker::new(sources(3, Spread::Sequential, None), 1);
        let got: Vec<u32> = (0..6).map(|_| p.next_source().unwrap() - 0x0a00_0000).collect();
        assert_eq!(got, vec![1, 2, 0, 1, 2, 0]);
        let mut single = SourcePicker::new(sources(1, Spread::Random, None), 1);
        assert_eq!(single.next_source(), None);
    }

    #[test]
    fn random_sources_stay_in_range_and_heavy_share_holds() {
        let mut p = SourcePicker::new(sources(1 << 20, Spread::Random, Some(Heavy { count: 4, percent: 20 })), 7);
        let mut heavy = 0;
        for _ in 0..100_000 {
            let a = p.next_source().unwrap() - 0x0a00_0000;
            assert!(a < 1 << 20);
            heavy += (a < 4) as u32;
        }
        assert!((18_000..22_000).contains(&heavy), "{heavy}");
    }
}
