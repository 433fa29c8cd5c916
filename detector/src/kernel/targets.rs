//! Network mode's maps: the protected networks the programs look packets
//! up in, and what they counted per protected address and per host group
//! (see `detector_common::targets`). The one place that touches them.
//! Per-CPU values are summed here; nothing is ever read-then-zeroed. The
//! heavy-hitter windows follow the counting program's epoch
//! ([`super::counters::CounterMaps::new_window`]).
//!
//! None of these maps is pinned, as the per-source map is not: a new
//! controller starts them afresh (and installs the protected networks
//! again); the program it replaces keeps its own until it is gone.

use std::collections::BTreeMap;

use aya::{
    maps::{lpm_trie::Key, Array, IterableMap as _, LpmTrie, MapData, MapError, PerCpuArray, PerCpuHashMap},
    Ebpf,
};
use detector_common::{
    maps::SourceKey,
    targets::{
        dirty_index, group_index, target_window, DirtyChunk, ProtectedNet, TargetControl, TargetStats, GROUPS_PER_CPU,
        GROUP_STATS_MAP, MAX_HOSTGROUPS, MAX_PROTECTED, PROTECTED_MAP, TARGETS_IN_MAP, TARGETS_OUT_MAP,
        TARGET_CONTROL_MAP, TARGET_DIRTY_MAP,
    },
};
use thiserror::Error;

use crate::{
    kernel::{
        batch,
        dirty::{self, Listed, Sweep, Windows},
        ebpf,
    },
    mitigate::prefix::Prefix,
    targets::Direction,
};

#[derive(Debug, Error)]
pub enum TargetError {
    #[error(transparent)]
    Load(#[from] ebpf::LoadError),
    #[error("map {map} has an unexpected type or layout: {source}")]
    Layout { map: &'static str, source: MapError },
    #[error("reading map {map} failed: {source}")]
    Read { map: &'static str, source: MapError },
    #[error(transparent)]
    Listed(#[from] dirty::ReadError),
    #[error("writing map {map} failed: {source}")]
    Write { map: &'static str, source: MapError },
    #[error("host group {group} of {prefix} is out of range (groups are 0 to {})", MAX_HOSTGROUPS - 1)]
    Group { prefix: Prefix, group: u32 },
    #[error("{prefix} is given in host groups {first} and {second}")]
    TwoGroups { prefix: Prefix, first: u32, second: u32 },
    #[error("{count} protected prefixes are more than the {MAX_PROTECTED} the kernel map holds")]
    TooMany { count: usize },
    #[error("drawing the destination cache's seed failed: {0}")]
    Seed(String),
}

/// A random key for the programs' destination cache (see
/// [`TargetControl::cache_seed`]).
fn cache_seed() -> Result<u32, TargetError> {
    let mut seed = [0u8; 4];
    getrandom::fill(&mut seed).map_err(|e| TargetError::Seed(e.to_string()))?;
    Ok(u32::from_ne_bytes(seed))
}

pub use super::dirty::SWEEP_POLLS;

/// One poll's read of a per-address map.
pub type TargetsRead = Listed<TargetStats>;

/// Network mode's maps, owned apart from the program.
pub struct TargetMaps {
    protected: LpmTrie<MapData, [u8; 16], ProtectedNet>,
    control: Array<MapData, TargetControl>,
    /// [`GROUPS_PER_CPU`] entries per CPU (a CPU-indexed array).
    groups: Array<MapData, TargetStats>,
    /// The CPUs `groups` has entries for.
    group_cpus: u32,
    incoming: PerCpuHashMap<MapData, SourceKey, TargetStats>,
    outgoing: PerCpuHashMap<MapData, SourceKey, TargetStats>,
    /// The keys of the rings of addresses counted in a window (their heads
    /// are in the directions' windows: [`dirty::Windows`]).
    dirty: PerCpuArray<MapData, DirtyChunk>,
    /// Per direction: where the sweep of its map stands.
    sweep: [Sweep; 2],
    /// What the trie holds.
    installed: BTreeMap<Prefix, u32>,
    /// What TARGET_CONTROL holds (the programs' switch, the prefilter and
    /// the generation of the protected set).
    control_value: Box<TargetControl>,
    capacity: u32,
    /// Reused by every batch read.
    batch: std::sync::Mutex<batch::Buffers>,
}

impl TargetMaps {
    /// Takes the maps out of a loaded counting object.
    pub fn take(ebpf: &mut Ebpf) -> Result<TargetMaps, TargetError> {
        let layout = |map| move |source| TargetError::Layout { map, source };
        let protected =
            LpmTrie::try_from(ebpf::take_map(ebpf, "detector", PROTECTED_MAP)?).map_err(layout(PROTECTED_MAP))?;
        let control = Array::try_from(ebpf::take_map(ebpf, "detector", TARGET_CONTROL_MAP)?)
            .map_err(layout(TARGET_CONTROL_MAP))?;
        let groups: Array<MapData, TargetStats> =
            Array::try_from(ebpf::take_map(ebpf, "detector", GROUP_STATS_MAP)?).map_err(layout(GROUP_STATS_MAP))?;
        let group_cpus = groups.len() / GROUPS_PER_CPU;
        let incoming = PerCpuHashMap::try_from(ebpf::take_map(ebpf, "detector", TARGETS_IN_MAP)?)
            .map_err(layout(TARGETS_IN_MAP))?;
        let outgoing = PerCpuHashMap::try_from(ebpf::take_map(ebpf, "detector", TARGETS_OUT_MAP)?)
            .map_err(layout(TARGETS_OUT_MAP))?;
        let dirty = PerCpuArray::try_from(ebpf::take_map(ebpf, "detector", TARGET_DIRTY_MAP)?)
            .map_err(layout(TARGET_DIRTY_MAP))?;
        let capacity = incoming.map().info().map(|i| i.max_entries()).unwrap_or(0);
        let mut maps = TargetMaps {
            protected,
            control,
            groups,
            group_cpus,
            incoming,
            outgoing,
            dirty,
            sweep: Default::default(),
            installed: BTreeMap::new(),
            control_value: Box::new(TargetControl { cache_seed: cache_seed()?, ..Default::default() }),
            capacity,
            batch: Default::default(),
        };
        // Fresh maps are empty; should they ever be pinned, what an earlier
        // run left is what `set_protected` must replace.
        for key in maps.protected.keys().flatten() {
            if let (Some(p), Ok(net)) = (Prefix::from_key(key.data(), key.prefix_len()), maps.protected.get(&key, 0)) {
                maps.installed.insert(p, net.group);
            }
        }
        if let Ok(c) = maps.control.get(&0, 0) {
            *maps.control_value = c;
        }
        Ok(maps)
    }

    /// Capacity of each per-address map.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// The protected prefixes in force, with their groups.
    pub fn protected(&self) -> &BTreeMap<Prefix, u32> {
        &self.installed
    }

    /// The host groups in force, ascending, each once.
    pub fn installed_groups(&self) -> Vec<u32> {
        let mut g: Vec<u32> = self.installed.values().copied().collect();
        g.sort_unstable();
        g.dedup();
        g
    }

    /// Makes the protected networks `nets` (prefix, host group): new
    /// prefixes are inserted and changed ones updated before stale ones are
    /// removed, so an address in both the old and the new set is never
    /// missed. Counting is switched on iff `nets` is not empty. When a
    /// prefix went or changed group, tracked addresses whose group is no
    /// longer theirs are removed (they start again, in their new group).
    /// Returns whether anything changed.
    pub fn set_protected(&mut self, nets: &[(Prefix, u32)]) -> Result<bool, TargetError> {
        let mut want = BTreeMap::new();
        for (prefix, group) in nets {
            if *group >= MAX_HOSTGROUPS {
                return Err(TargetError::Group { prefix: *prefix, group: *group });
            }
            if let Some(first) = want.insert(*prefix, *group) {
                if first != *group {
                    return Err(TargetError::TwoGroups { prefix: *prefix, first, second: *group });
                }
            }
        }
        if want.len() > MAX_PROTECTED as usize {
            return Err(TargetError::TooMany { count: want.len() });
        }
        if want == self.installed {
            return self.set_control(&want, false).map(|()| false);
        }
        let write = |source| TargetError::Write { map: PROTECTED_MAP, source };
        if want.is_empty() {
            self.set_control(&want, true)?;
        }
        for (prefix, group) in &want {
            if self.installed.get(prefix) != Some(group) {
                let (addr, len) = prefix.key();
                self.protected.insert(&Key::new(len, addr), ProtectedNet { group: *group }, 0).map_err(write)?;
                self.installed.insert(*prefix, *group);
            }
        }
        // The prefilter takes the new prefixes in before the old ones go,
        // so an address in both sets is never filtered out.
        let both = self.installed.clone();
        self.set_control(&both, true)?;
        let stale: Vec<Prefix> = self.installed.keys().filter(|p| !want.contains_key(p)).copied().collect();
        for prefix in stale {
            let (addr, len) = prefix.key();
            match self.protected.remove(&Key::new(len, addr)) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(source) => return Err(write(source)),
            }
            self.installed.remove(&prefix);
        }
        self.set_control(&want, true)?;
        self.regroup();
        Ok(true)
    }

    /// Writes TARGET_CONTROL for the prefixes `nets`: counting on iff there
    /// are any, their prefilter, and (when `changed`) a new generation, so
    /// the programs' caches of address to group start again. Writes nothing
    /// when the value would not change.
    fn set_control(&mut self, nets: &BTreeMap<Prefix, u32>, changed: bool) -> Result<(), TargetError> {
        let mut next = Box::<TargetControl>::default();
        next.enabled = !nets.is_empty() as u32;
        for prefix in nets.keys() {
            let (addr, len) = prefix.key();
            next.add_prefix(addr, len);
        }
        next.cache_seed = self.control_value.cache_seed;
        // 0 is never a generation: a zeroed cache slot is never valid.
        next.generation = self.control_value.generation;
        if changed || next.generation == 0 {
            next.generation = next.generation.wrapping_add(1).max(1);
        }
        if *next == *self.control_value {
            return Ok(());
        }
        self.control.set(0, *next, 0).map_err(|source| TargetError::Write { map: TARGET_CONTROL_MAP, source })?;
        self.control_value = next;
        Ok(())
    }

    /// Removes the tracked addresses whose group is not the one the
    /// protected networks now give them (or that are no longer protected).
    fn regroup(&mut self) {
        for dir in Direction::ALL {
            let Ok(current) = self.targets(dir) else { continue };
            let stale: Vec<SourceKey> = current
                .iter()
                .filter(|(k, s)| group_of(&self.installed, k) != Some(s.group))
                .map(|(k, _)| *k)
                .collect();
            self.remove_targets(dir, &stale);
        }
    }

    /// Every tracked address in `direction` with its cumulative counters,
    /// summed over CPUs (its group: see [`TargetStats`]).
    pub fn targets(&self, direction: Direction) -> Result<Vec<(SourceKey, TargetStats)>, TargetError> {
        let (map, name) = self.map(direction);
        let mut buf = self.batch.lock().unwrap_or_else(|p| p.into_inner());
        Ok(dirty::whole(map, name, &mut buf, |v| sum(v.iter(), true))?)
    }

    /// What a poll reads of `direction`'s per-address map, once the window
    /// `epoch` is over (the program has gone on to the next): see
    /// [`dirty`]. The rings only when a CPU counted in the window.
    /// `tracked`: the addresses the tracker knows of in `direction`;
    /// `windows`: read after the window moved on (`CounterMaps::windows`).
    pub fn read(
        &mut self,
        direction: Direction,
        epoch: u32,
        tracked: usize,
        windows: &Windows,
    ) -> Result<TargetsRead, TargetError> {
        let d = direction.index();
        let (map, name) = match direction {
            Direction::Incoming => (&self.incoming, TARGETS_IN_MAP),
            Direction::Outgoing => (&self.outgoing, TARGETS_OUT_MAP),
        };
        let maps = dirty::Maps {
            map,
            name,
            chunks: &self.dirty,
            chunks_name: TARGET_DIRTY_MAP,
            ring: dirty_index(d as u32, epoch),
            windows: windows.of(target_window(d as u32)),
            capacity: self.capacity,
        };
        let mut buf = self.batch.lock().unwrap_or_else(|p| p.into_inner());
        Ok(self.sweep[d].read(&maps, epoch, tracked, &mut buf, |v| sum(v.iter(), true))?)
    }

    /// As [`TargetMaps::targets`], two syscalls per entry (aya's iterator):
    /// the way on kernels without batch lookups.
    pub fn targets_iterated(&self, direction: Direction) -> Result<Vec<(SourceKey, TargetStats)>, TargetError> {
        let (map, name) = self.map(direction);
        Ok(dirty::iterated(map, name, |v| sum(v.iter(), true))?)
    }

    /// A group's cumulative totals in `direction`, summed over CPUs.
    pub fn group(&self, group: u32, direction: Direction) -> Result<TargetStats, TargetError> {
        let index = group_index(group, direction.index() as u32);
        let mut per_cpu = Vec::with_capacity(self.group_cpus as usize);
        for cpu in 0..self.group_cpus {
            let v = self
                .groups
                .get(&(cpu * GROUPS_PER_CPU + index), 0)
                .map_err(|source| TargetError::Read { map: GROUP_STATS_MAP, source })?;
            per_cpu.push(v);
        }
        let mut s = sum(per_cpu.iter(), false);
        s.group = group;
        Ok(s)
    }

    /// The totals of every installed group, both directions.
    /// One batch call per CPU for them all (a lookup per group, direction
    /// and CPU, where the kernel has none).
    pub fn groups(&self) -> Result<Vec<(u32, Direction, TargetStats)>, TargetError> {
        let installed = self.installed_groups();
        let Some(&last) = installed.last() else {
            return Ok(Vec::new());
        };
        let mut read: BTreeMap<u32, TargetStats> = BTreeMap::new();
        let mut buf = self.batch.lock().unwrap_or_else(|p| p.into_inner());
        let end = group_index(last, Direction::ALL.len() as u32 - 1) + 1;
        let mut batched = Ok(());
        for cpu in 0..self.group_cpus {
            let first = cpu * GROUPS_PER_CPU;
            batched = batch::array_range::<TargetStats>(self.groups.map(), &mut buf, first, end, |i, v| {
                let total = read.entry(i - first).or_default();
                *total = sum([&*total, v].into_iter(), false);
            });
            if batched.is_err() {
                break;
            }
        }
        if let Err(e) = &batched {
            tracing::debug!(map = GROUP_STATS_MAP, "batch lookup failed ({e}); one lookup per group");
        }
        let mut out = Vec::with_capacity(installed.len() * Direction::ALL.len());
        for g in installed {
            for dir in Direction::ALL {
                let index = group_index(g, dir.index() as u32);
                let stats = match (&batched, read.get(&index)) {
                    (Ok(()), Some(s)) => TargetStats { group: g, ..*s },
                    _ => self.group(g, dir)?,
                };
                out.push((g, dir, stats));
            }
        }
        Ok(out)
    }

    /// Removes addresses the tracker found idle. A packet landing between
    /// the last read and the removal is lost from that address's count only.
    pub fn remove_targets(&mut self, direction: Direction, keys: &[SourceKey]) -> usize {
        let map = match direction {
            Direction::Incoming => &mut self.incoming,
            Direction::Outgoing => &mut self.outgoing,
        };
        keys.iter().filter(|k| map.remove(k).is_ok()).count()
    }

    fn map(&self, direction: Direction) -> (&PerCpuHashMap<MapData, SourceKey, TargetStats>, &'static str) {
        match direction {
            Direction::Incoming => (&self.incoming, TARGETS_IN_MAP),
            Direction::Outgoing => (&self.outgoing, TARGETS_OUT_MAP),
        }
    }
}

/// The CPUs' copies added up; with `group`, the group is the largest any
/// copy holds (copies of CPUs that never counted the address hold 0).
fn sum<'a>(per_cpu: impl Iterator<Item = &'a TargetStats>, group: bool) -> TargetStats {
    let mut s = TargetStats::default();
    for v in per_cpu {
        if group {
            s.group = s.group.max(v.group);
        }
        for (a, b) in s.counts.iter_mut().zip(v.counts.iter()) {
            a.packets += b.packets;
            a.bytes += b.bytes;
        }
    }
    s
}

/// The group of the longest installed prefix holding `key`, as the trie
/// would answer.
fn group_of(installed: &BTreeMap<Prefix, u32>, key: &SourceKey) -> Option<u32> {
    let host = Prefix::from_key(key.addr, 128)?;
    installed.iter().filter(|(p, _)| p.contains(&host)).max_by_key(|(p, _)| p.bits()).map(|(_, g)| *g)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_prefix_gives_the_group() {
        let mut installed = BTreeMap::new();
        installed.insert("192.0.2.0/24".parse::<Prefix>().unwrap(), 1);
        installed.insert("192.0.2.128/25".parse::<Prefix>().unwrap(), 2);
        installed.insert("2001:db8::/32".parse::<Prefix>().unwrap(), 3);
        let key = |s: &str| crate::sources::addr_key(s.parse().unwrap());
        assert_eq!(group_of(&installed, &key("192.0.2.1")), Some(1));
        assert_eq!(group_of(&installed, &key("192.0.2.200")), Some(2));
        assert_eq!(group_of(&installed, &key("2001:db8:1::1")), Some(3));
        assert_eq!(group_of(&installed, &key("198.51.100.1")), None);
    }

    #[test]
    fn sums_take_the_group_of_the_cpus_that_counted() {
        let mut a = TargetStats { group: 5, ..Default::default() };
        a.counts[3].packets = 2;
        a.counts[3].bytes = 200;
        let mut b = TargetStats::default();
        b.counts[3].packets = 1;
        b.counts[3].bytes = 100;
        let s = sum([b, a].iter(), true);
        assert_eq!((s.group, s.counts[3].packets, s.counts[3].bytes), (5, 3, 300));
        assert_eq!(sum([a].iter(), false).group, 0);
    }
}
