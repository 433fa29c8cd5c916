//! The fast engine: the `flood` XDP program under `BPF_PROG_TEST_RUN` with
//! `BPF_F_TEST_XDP_LIVE_FRAMES`. `XDP_TX` from a test run is a redirect out
//! of the interface named in the context, so the frames leave for real.

use std::time::{Duration, Instant};

use aya::{
    maps::Array,
    programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp},
};
use detector_common::flood::{FloodConfig, FLOOD_CONFIG_MAP, FLOOD_PROGRAM, SPREAD_RANDOM, SPREAD_SEQUENTIAL};

use super::{sources::Spread, stopped, Engine, FloodError, FloodPlan, FloodReport, Limit, Rate};
use crate::kernel::ebpf;

/// Frames per test run: big enough to amortise the syscall, small enough to
/// notice a stop request or a deadline within a fraction of a second.
const CHUNK: u64 = 1 << 16;
/// Live-frame batch size (the kernel's default is 64).
const BATCH: u32 = 64;
/// Pacing slice for a fixed rate.
const SLICE: Duration = Duration::from_millis(10);

pub fn run(ifindex: u32, plan: &FloodPlan) -> Result<FloodReport, FloodError> {
    let mut obj = ebpf::load_flood()?;
    let cfg = config(plan);
    {
        let map =
            obj.map_mut(FLOOD_CONFIG_MAP).ok_or_else(|| FloodError::Config(format!("no map {FLOOD_CONFIG_MAP}")))?;
        let mut arr: Array<_, FloodConfig> = Array::try_from(map).map_err(|e| FloodError::Config(e.to_string()))?;
        arr.set(0, cfg, 0).map_err(|e| FloodError::Config(e.to_string()))?;
    }
    let prog: &Xdp = ebpf::load_xdp(&mut obj, "flood", FLOOD_PROGRAM)?;

    // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
    // rx_queue_index, egress_ifindex. The kernel wants data_end to be the
    // frame's length and the interface to exist in our namespace.
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(plan.frame.bytes.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());

    let threads = plan.threads.max(1);
    let wall = std::time::SystemTime::now();
    let start = Instant::now();
    let total: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let share = share_of(plan, threads, t);
                let ctx = &ctx;
                s.spawn(move || send(prog, ifindex, &plan.frame.bytes, ctx, share, start))
            })
            .collect();
        let mut sum = 0;
        let mut first_err = None;
        for h in handles {
            match h.join().expect("flood thread panicked") {
                Ok(n) => sum += n,
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) if sum == 0 => Err(e),
            _ => Ok(sum),
        }
    })?;
    Ok(FloodReport::new(Engine::Fast, total, wall, start.elapsed()))
}

/// One thread's part of the plan.
#[derive(Clone, Copy)]
struct Share {
    count: Option<u64>,
    deadline: Option<Duration>,
    pps: Option<u64>,
}

fn share_of(plan: &FloodPlan, threads: usize, t: usize) -> Share {
    let split = |n: u64| n / threads as u64 + u64::from((t as u64) < n % threads as u64);
    Share {
        count: match plan.limit {
            Limit::Count(n) => Some(split(n)),
            Limit::Duration(_) => None,
        },
        deadline: match plan.limit {
            Limit::Duration(d) => Some(d),
            Limit::Count(_) => None,
        },
        pps: match plan.rate {
            Rate::Pps(n) => Some(split(n).max(1)),
            Rate::Max => None,
        },
    }
}

fn send(prog: &Xdp, ifindex: u32, frame: &[u8], ctx: &[u8], share: Share, start: Instant) -> Result<u64, FloodError> {
    let mut sent = 0u64;
    loop {
        if stopped() {
            break;
        }
        let elapsed = start.elapsed();
        if share.deadline.is_some_and(|d| elapsed >= d) {
            break;
        }
        let left = share.count.map(|c| c - sent).unwrap_or(u64::MAX);
        if left == 0 {
            break;
        }
        let mut chunk = left.min(CHUNK);
        if let Some(pps) = share.pps {
            // Frames owed by the end of the next slice.
            let due = ((elapsed + SLICE).as_secs_f64() * pps as f64) as u64;
            if due <= sent {
                std::thread::sleep(SLICE.min(Duration::from_secs_f64(1.0 / pps as f64)));
                continue;
            }
            chunk = chunk.min(due - sent);
        }
        let opts = TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(ctx),
            repeat: chunk as u32,
            attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
            ..TestRunOptions::new()
        };
        match prog.test_run(opts) {
            Ok(_) => sent += chunk,
            Err(e) => {
                let reason = crate::kernel::xdp::error_chain(&e);
                // Interrupted by our own stop signal: report what was sent.
                if stopped() {
                    break;
                }
                return if sent > 0 { Ok(sent) } else { Err(FloodError::TestRun { ifindex, reason }) };
            }
        }
    }
    Ok(sent)
}

/// The program's view of the plan.
pub fn config(plan: &FloodPlan) -> FloodConfig {
    let f = &plan.frame;
    let s = &plan.sources;
    let (heavy_count, heavy_threshold) = match s.heavy {
        Some(h) => (h.count, ((h.percent as u64 * (1u64 << 32)) / 100).min(u32::MAX as u64) as u32),
        None => (0, 0),
    };
    FloodConfig {
        src_count: s.count,
        src_base: s.base(),
        spread: match s.spread {
            Spread::Sequential => SPREAD_SEQUENTIAL,
            Spread::Random => SPREAD_RANDOM,
        },
        heavy_count,
        heavy_base: s.base(),
        heavy_threshold,
        src_offset: f.src_offset as u32,
        ip_csum_offset: f.ip_csum_offset.unwrap_or(0) as u32,
        l4_csum_offset: f.l4_csum_offset.unwrap_or(0) as u32,
        l4_is_udp: f.l4_is_udp as u32,
    }
}
