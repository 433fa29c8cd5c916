//! The XDP objects built by `build.rs`, embedded in the binary, and loading
//! them into the kernel.

use aya::{Ebpf, EbpfLoader};
use detector_common::maps::SOURCE_STATS_MAP;
use thiserror::Error;

/// The counting program (`detector-ebpf/src/bin/detector`).
pub static DETECTOR_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/detector-xdp"));
/// The flood generator and the empty baseline (`detector-ebpf/src/bin/flood`).
pub static FLOOD_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/flood-xdp"));

#[derive(Debug, Error)]
pub enum LoadError {
    #[error("creating the BPF maps of the {object} object failed: {source}")]
    Object { object: &'static str, source: Box<aya::EbpfError> },
    #[error("the {object} object has no program named '{program}'")]
    MissingProgram { object: &'static str, program: &'static str },
    #[error("the {object} object has no map named '{map}'")]
    MissingMap { object: &'static str, map: &'static str },
    #[error("the kernel refused to load the XDP program '{program}': {reason}{}", verifier_tail(verifier_log))]
    Program { program: &'static str, reason: String, verifier_log: String },
    #[error("cannot read random bytes for the hash seed: {0}")]
    Seed(String),
}

/// The verifier's last words, which say why it refused (the whole log is
/// logged at debug level).
fn verifier_tail(log: &str) -> String {
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        // The statistics at the end say nothing about the refusal.
        .take_while(|l| !l.starts_with("verification time") && !l.starts_with("processed "))
        .collect();
    if lines.is_empty() {
        return String::new();
    }
    tracing::debug!("verifier log:\n{log}");
    let tail = &lines[lines.len().saturating_sub(2)..];
    format!("; verifier: {}", tail.join(" / "))
}

/// Options of the counting program that are fixed at load time.
#[derive(Clone, Copy, Debug)]
pub struct CountingOptions {
    /// Capacity of the per-source map.
    pub max_sources: u32,
}

/// Creates the counting object's maps, with a fresh random hash seed.
pub fn load_counting(opts: CountingOptions) -> Result<Ebpf, LoadError> {
    let mut seed = [0u8; 8];
    getrandom::fill(&mut seed).map_err(|e| LoadError::Seed(e.to_string()))?;
    let seed = u64::from_ne_bytes(seed);
    EbpfLoader::new()
        .override_global("HASH_SEED", &seed, true)
        .map_max_entries(SOURCE_STATS_MAP, opts.max_sources)
        .load(DETECTOR_OBJECT)
        .map_err(|e| LoadError::Object { object: "detector", source: Box::new(e) })
}

/// Creates the flood object's maps.
pub fn load_flood() -> Result<Ebpf, LoadError> {
    Ebpf::load(FLOOD_OBJECT).map_err(|e| LoadError::Object { object: "flood", source: Box::new(e) })
}

/// Loads program `name` of `ebpf` (an XDP program) into the kernel.
pub fn load_xdp<'a>(
    ebpf: &'a mut Ebpf,
    object: &'static str,
    name: &'static str,
) -> Result<&'a mut aya::programs::Xdp, LoadError> {
    let missing = || LoadError::MissingProgram { object, program: name };
    let prog: &mut aya::programs::Xdp =
        ebpf.program_mut(name).ok_or_else(missing)?.try_into().map_err(|_| missing())?;
    prog.load().map_err(|e| match e {
        aya::programs::ProgramError::LoadError { io_error, verifier_log } => {
            LoadError::Program { program: name, reason: io_error.to_string(), verifier_log: verifier_log.to_string() }
        }
        other => LoadError::Program { program: name, reason: other.to_string(), verifier_log: String::new() },
    })?;
    Ok(prog)
}

/// Takes map `name` out of `ebpf` so it can be owned next to the program.
pub fn take_map(ebpf: &mut Ebpf, object: &'static str, name: &'static str) -> Result<aya::maps::Map, LoadError> {
    ebpf.take_map(name).ok_or(LoadError::MissingMap { object, map: name })
}
