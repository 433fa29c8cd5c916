//! Where a rule reaches the kernel: the one place the rule, counter and
//! drop maps of an interface are written and read.

use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        Array, MapData, MapError, PerCpuArray, PerCpuValues,
    },
    util::nr_cpus,
    Ebpf,
};
use detector_common::rules::{
    Bucket, PrefixData, RuleCounters, RuleEntry, AGGREGATE_MAP, RULES_ACTIVE_MAP, RULES_MAP, RULE_STATS_MAP,
};
use thiserror::Error;

use super::ebpf;
use crate::mitigate::{
    plan::{diff, Plan},
    prefix::Prefix,
};

#[derive(Debug, Error)]
pub enum KernelError {
    #[error(transparent)]
    Load(#[from] ebpf::LoadError),
    #[error("map {map} has an unexpected type or layout: {source}")]
    Layout { map: &'static str, source: MapError },
    #[error("writing {prefix} to the {map} map failed: {source}")]
    Write { map: &'static str, prefix: String, source: MapError },
    #[error("reading map {map} failed: {source}")]
    Read { map: &'static str, source: MapError },
}

/// One interface's rule maps.
pub struct RuleMaps {
    rules: LpmTrie<MapData, PrefixData, RuleEntry>,
    stats: PerCpuArray<MapData, RuleCounters>,
    active: Array<MapData, u32>,
    /// Aggregate limits' schedules, by rule index.
    aggregate: Array<MapData, Bucket>,
    /// What the trie holds now.
    applied: Plan,
}

impl RuleMaps {
    /// Takes the maps out of a loaded counting object, reading back what a
    /// previous controller left in a pinned trie.
    pub fn take(ebpf: &mut Ebpf) -> Result<RuleMaps, KernelError> {
        let layout = |map| move |source| KernelError::Layout { map, source };
        let rules = LpmTrie::try_from(ebpf::take_map(ebpf, "detector", RULES_MAP)?).map_err(layout(RULES_MAP))?;
        let stats =
            PerCpuArray::try_from(ebpf::take_map(ebpf, "detector", RULE_STATS_MAP)?).map_err(layout(RULE_STATS_MAP))?;
        let active =
            Array::try_from(ebpf::take_map(ebpf, "detector", RULES_ACTIVE_MAP)?).map_err(layout(RULES_ACTIVE_MAP))?;
        let aggregate =
            Array::try_from(ebpf::take_map(ebpf, "detector", AGGREGATE_MAP)?).map_err(layout(AGGREGATE_MAP))?;
        let mut maps = RuleMaps { rules, stats, active, aggregate, applied: Plan::new() };
        maps.applied = maps.read_trie()?;
        Ok(maps)
    }

    fn read_trie(&self) -> Result<Plan, KernelError> {
        let mut plan = Plan::new();
        for item in self.rules.iter() {
            let (k, v) = item.map_err(|source| KernelError::Read { map: RULES_MAP, source })?;
            if let Some(p) = Prefix::from_key(k.data(), k.prefix_len()) {
                plan.insert(p, v);
            }
        }
        Ok(plan)
    }

    /// What the trie holds now.
    pub fn applied(&self) -> &Plan {
        &self.applied
    }

    /// Number of entries in the trie now.
    pub fn entries(&self) -> usize {
        self.applied.len()
    }

    /// Makes the trie hold `plan`: new and changed entries first, then the
    /// removals, so a rule that stays is never missing for a moment.
    pub fn apply(&mut self, plan: &Plan) -> Result<(), KernelError> {
        let any_rule = plan.values().any(|e| e.slots[0].index != 0);
        let (writes, deletes) = diff(&self.applied, plan);
        for (p, e) in writes {
            let (data, len) = p.key();
            self.rules.insert(&Key::new(len, data), e, 0).map_err(|source| KernelError::Write {
                map: RULES_MAP,
                prefix: p.to_string(),
                source,
            })?;
            self.applied.insert(*p, *e);
        }
        for p in deletes {
            let (data, len) = p.key();
            match self.rules.remove(&Key::new(len, data)) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(source) => return Err(KernelError::Write { map: RULES_MAP, prefix: p.to_string(), source }),
            }
            self.applied.remove(&p);
        }
        // Set after the trie holds the rules; a first rule applies from here.
        self.active.set(0, any_rule as u32, 0).map_err(|source| KernelError::Write {
            map: RULES_ACTIVE_MAP,
            prefix: "the active flag".into(),
            source,
        })
    }

    /// Zeroes a rule's counters and its aggregate schedule, before its
    /// index is given to a new rule (a schedule left by a slower limit
    /// would hold the new one back).
    pub fn reset_counters(&mut self, index: u32) -> Result<(), KernelError> {
        self.aggregate.set(index, Bucket::default(), 0).map_err(|source| KernelError::Write {
            map: AGGREGATE_MAP,
            prefix: format!("index {index}"),
            source,
        })?;
        let cpus = nr_cpus().map_err(|(_, e)| KernelError::Read { map: RULE_STATS_MAP, source: MapError::from(e) })?;
        let zero = PerCpuValues::try_from(vec![RuleCounters::default(); cpus]).map_err(|e| KernelError::Write {
            map: RULE_STATS_MAP,
            prefix: format!("index {index}"),
            source: e.into(),
        })?;
        self.stats.set(index, zero, 0).map_err(|source| KernelError::Write {
            map: RULE_STATS_MAP,
            prefix: format!("index {index}"),
            source,
        })
    }

    /// A rule's counters, summed over CPUs.
    pub fn counters(&self, index: u32) -> Result<RuleCounters, KernelError> {
        let per_cpu = self.stats.get(&index, 0).map_err(|source| KernelError::Read { map: RULE_STATS_MAP, source })?;
        let mut c = RuleCounters::default();
        for v in per_cpu.iter() {
            c.dropped_packets += v.dropped_packets;
            c.dropped_bytes += v.dropped_bytes;
            c.passed_packets += v.passed_packets;
            c.passed_bytes += v.passed_bytes;
        }
        Ok(c)
    }
}
