//! The XDP objects built by `build.rs`, embedded in the binary, and loading
//! them into the kernel.

use std::path::PathBuf;

use aya::{Ebpf, EbpfLoader};
use detector_common::{
    known::KNOWN_PEERS_MAP,
    maps::{CLASS_STATS_MAP, PARSED_MAP, SOURCE_STATS_MAP, WINDOW_MAP},
    rules::{
        AGGREGATE_MAP, BUCKETS_MAP, DEFAULT_MAX_ALLOW, DEFAULT_MAX_BUCKETS, DEFAULT_MAX_RULES, RULES_ACTIVE_MAP,
        RULES_MAP, RULE_STATS_MAP,
    },
    sketch::HashKey,
    targets::{
        CACHE_SLOTS, DEFAULT_MAX_TARGETS, GROUPS_PER_CPU, GROUP_STATS_MAP, TARGETS_IN_MAP, TARGETS_OUT_MAP,
        TARGET_CACHE_MAP,
    },
};
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
    #[error("the kernel refused to load the BPF program '{program}': {reason}{}", verifier_tail(verifier_log))]
    Program { program: &'static str, reason: String, verifier_log: String },
    #[error("cannot read random bytes for the hash seed: {0}")]
    Seed(String),
    #[error("cannot count the possible CPUs ({0})")]
    Cpus(String),
    #[error("the pinned map {path} holds {found} entries but {want} are configured; run `detector detach --iface {iface}` to start afresh (its rules are lost), or restore the old size")]
    PinnedSize { path: String, iface: String, found: u32, want: u32 },
    #[error("the pinned map {path} was made by another version of detector (keys of {key} bytes, values of {value}); run `detector detach --iface {iface}` to start afresh (its rules are lost)")]
    PinnedLayout { path: String, iface: String, key: u32, value: u32 },
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
#[derive(Clone, Debug)]
pub struct CountingOptions {
    /// Capacity of the per-source map.
    pub max_sources: u32,
    /// Capacity of each per-target map (network mode; incoming, outgoing).
    pub max_targets: u32,
    /// Capacity of the rules (and of the per-rule counters).
    pub max_rules: u32,
    /// Capacity of the allowlist.
    pub max_allow: u32,
    /// Sources with a rate-limit bucket at once.
    pub max_buckets: u32,
    /// Where the maps that must outlive the controller are pinned (rules,
    /// their counters, the class counters), with the interface's name; they
    /// are reused when already there. `None`: nothing is pinned.
    pub pins: Option<(PathBuf, String)>,
}

impl CountingOptions {
    pub fn new(max_sources: u32) -> CountingOptions {
        CountingOptions {
            max_sources,
            max_targets: DEFAULT_MAX_TARGETS,
            max_rules: DEFAULT_MAX_RULES,
            max_allow: DEFAULT_MAX_ALLOW,
            max_buckets: DEFAULT_MAX_BUCKETS,
            pins: None,
        }
    }

    fn trie_entries(&self) -> u32 {
        self.max_rules + self.max_allow
    }
}

/// The maps pinned with the link: everything a restart must find again.
/// The SYN-cookie program's slot among them: a pinned program array keeps
/// the program it holds, so SYN-cookie rules go on working without a
/// controller (an array no file holds is emptied by the kernel).
pub const PINNED_MAPS: [&str; 7] = [
    RULES_MAP,
    RULES_ACTIVE_MAP,
    RULE_STATS_MAP,
    BUCKETS_MAP,
    CLASS_STATS_MAP,
    KNOWN_PEERS_MAP,
    super::syncookie::SYNCOOKIE_PROGRAM_MAP,
];

/// Creates the counting object's maps, with a fresh random hash seed.
pub fn load_counting(opts: &CountingOptions) -> Result<Ebpf, LoadError> {
    load_counting_object(DETECTOR_OBJECT, opts)
}

/// As [`load_counting`], from another build of the counting object (the
/// bench compares builds with it).
pub fn load_counting_object(object: &[u8], opts: &CountingOptions) -> Result<Ebpf, LoadError> {
    let mut seed = [0u8; 8];
    getrandom::fill(&mut seed).map_err(|e| LoadError::Seed(e.to_string()))?;
    let key = HashKey::new(u64::from_ne_bytes(seed));
    // The CPU-indexed arrays hold a slot (or a cache) per possible CPU.
    let cpus = aya::util::nr_cpus().map_err(|(path, e)| LoadError::Cpus(format!("{path}: {e}")))? as u32;
    let mut loader = EbpfLoader::new();
    loader
        .override_global("HASH_KEY", &key, true)
        .map_max_entries(PARSED_MAP, cpus)
        .map_max_entries(WINDOW_MAP, cpus)
        .map_max_entries(TARGET_CACHE_MAP, cpus * 2 * CACHE_SLOTS)
        .map_max_entries(GROUP_STATS_MAP, cpus * GROUPS_PER_CPU)
        .map_max_entries(SOURCE_STATS_MAP, opts.max_sources)
        .map_max_entries(TARGETS_IN_MAP, opts.max_targets)
        .map_max_entries(TARGETS_OUT_MAP, opts.max_targets)
        .map_max_entries(RULES_MAP, opts.trie_entries())
        .map_max_entries(RULE_STATS_MAP, opts.max_rules + 1)
        .map_max_entries(AGGREGATE_MAP, opts.max_rules + 1)
        .map_max_entries(BUCKETS_MAP, opts.max_buckets);
    if let Some((dir, _)) = &opts.pins {
        for name in PINNED_MAPS {
            loader.map_pin_path(name, dir.join(name));
        }
    }
    let ebpf = loader.load(object).map_err(|e| LoadError::Object { object: "detector", source: Box::new(e) })?;
    if let Some((dir, iface)) = &opts.pins {
        // A reused pin keeps the layout and size it was created with.
        use core::mem::size_of;
        use detector_common::{
            known::KnownPeer,
            maps::{ClassStats, SourceKey},
            rules::{Bucket, BucketKey, PrefixData, RuleCounters, RuleEntry},
        };
        for (name, key, value) in [
            (RULES_MAP, 4 + size_of::<PrefixData>(), size_of::<RuleEntry>()),
            (RULES_ACTIVE_MAP, 4, 4),
            (RULE_STATS_MAP, 4, size_of::<RuleCounters>()),
            (BUCKETS_MAP, size_of::<BucketKey>(), size_of::<Bucket>()),
            (CLASS_STATS_MAP, 4, size_of::<ClassStats>()),
            (KNOWN_PEERS_MAP, size_of::<SourceKey>(), size_of::<KnownPeer>()),
        ] {
            if let Some(info) = ebpf.map(name).and_then(map_info) {
                if (info.key_size() as usize, info.value_size() as usize) != (key, value) {
                    let path = dir.join(name).display().to_string();
                    let (key, value) = (info.key_size(), info.value_size());
                    return Err(LoadError::PinnedLayout { path, iface: iface.clone(), key, value });
                }
            }
        }
        for (name, want) in
            [(RULES_MAP, opts.trie_entries()), (RULE_STATS_MAP, opts.max_rules + 1), (BUCKETS_MAP, opts.max_buckets)]
        {
            let found = ebpf.map(name).and_then(map_info).map(|i| i.max_entries()).unwrap_or(want);
            if found != want {
                let path = dir.join(name).display().to_string();
                return Err(LoadError::PinnedSize { path, iface: iface.clone(), found, want });
            }
        }
    }
    Ok(ebpf)
}

/// The kernel's view of a map (of the kinds pinned here).
fn map_info(map: &aya::maps::Map) -> Option<aya::maps::MapInfo> {
    use aya::maps::Map;
    let data = match map {
        Map::LpmTrie(d) | Map::PerCpuArray(d) | Map::LruHashMap(d) | Map::HashMap(d) | Map::Array(d) => d,
        _ => return None,
    };
    data.info().ok()
}

/// Creates the flood object's maps.
pub fn load_flood() -> Result<Ebpf, LoadError> {
    Ebpf::load(FLOOD_OBJECT).map_err(|e| LoadError::Object { object: "flood", source: Box::new(e) })
}

/// Tries at loading a program when the verifier is interrupted (as libbpf).
const LOAD_ATTEMPTS: u32 = 5;

/// Loads program `name` of `ebpf` (an XDP program) into the kernel.
pub fn load_xdp<'a>(
    ebpf: &'a mut Ebpf,
    object: &'static str,
    name: &'static str,
) -> Result<&'a mut aya::programs::Xdp, LoadError> {
    let missing = || LoadError::MissingProgram { object, program: name };
    let prog: &mut aya::programs::Xdp =
        ebpf.program_mut(name).ok_or_else(missing)?.try_into().map_err(|_| missing())?;
    verify(name, || prog.load())?;
    Ok(prog)
}

/// Loads the egress program `name` of `ebpf` into the kernel.
pub fn load_classifier<'a>(
    ebpf: &'a mut Ebpf,
    object: &'static str,
    name: &'static str,
) -> Result<&'a mut aya::programs::SchedClassifier, LoadError> {
    let missing = || LoadError::MissingProgram { object, program: name };
    let prog: &mut aya::programs::SchedClassifier =
        ebpf.program_mut(name).ok_or_else(missing)?.try_into().map_err(|_| missing())?;
    verify(name, || prog.load())?;
    Ok(prog)
}

/// Runs `load` until the verifier finishes: it gives up with EAGAIN when a
/// signal (a child's SIGCHLD, say) arrives while it works; libbpf tries
/// again, and so do we.
fn verify(
    name: &'static str,
    mut load: impl FnMut() -> Result<(), aya::programs::ProgramError>,
) -> Result<(), LoadError> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        match load() {
            Ok(()) => return Ok(()),
            Err(aya::programs::ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && attempts < LOAD_ATTEMPTS =>
            {
                tracing::debug!(program = name, attempts, "the verifier was interrupted; loading again");
            }
            Err(aya::programs::ProgramError::LoadError { io_error, verifier_log }) => {
                return Err(LoadError::Program {
                    program: name,
                    reason: io_error.to_string(),
                    verifier_log: verifier_log.to_string(),
                })
            }
            Err(other) => {
                return Err(LoadError::Program {
                    program: name,
                    reason: other.to_string(),
                    verifier_log: String::new(),
                })
            }
        }
    }
}

/// Takes map `name` out of `ebpf` so it can be owned next to the program.
pub fn take_map(ebpf: &mut Ebpf, object: &'static str, name: &'static str) -> Result<aya::maps::Map, LoadError> {
    ebpf.take_map(name).ok_or(LoadError::MissingMap { object, map: name })
}

#[cfg(test)]
mod tests {
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _, RelocationTarget};

    /// Every call a program of the counting object makes is a helper's, none
    /// a subprogram's: LLVM turns some copies and zeroings into calls of the
    /// BPF backend's `memset`/`memcpy`/`memmove` (a byte per turn), and a
    /// call and return cost more than the work on CPUs whose returns pay
    /// SRSO's thunk. The XDP program had one at every sample and one at
    /// every new source; the egress program two per IPv4 packet.
    #[test]
    fn the_programs_call_no_subprogram() {
        let obj = object::File::parse(super::DETECTOR_OBJECT).expect("the built counting object is an ELF file");
        let mut programs = 0;
        for section in obj.sections() {
            let name = section.name().unwrap_or_default();
            if !matches!(name, "xdp" | "classifier") {
                continue;
            }
            programs += 1;
            for (offset, reloc) in section.relocations() {
                let RelocationTarget::Symbol(index) = reloc.target() else { continue };
                let symbol = obj.symbol_by_index(index).expect("a relocation's symbol");
                let callee = symbol.section_index().and_then(|i| obj.section_by_index(i).ok());
                assert!(
                    callee.is_none_or(|s| s.name() != Ok(".text")),
                    "section {name} calls {} at byte {offset}",
                    symbol.name().unwrap_or("?")
                );
            }
        }
        assert_eq!(programs, 2, "the XDP and egress sections");
    }
}
