//! Reading the counting program's maps: the one place the controller
//! touches them. Per-CPU values are summed here; nothing is ever
//! read-then-zeroed (increments would be lost), except the sketch, whose
//! zeroing is what starts a new window.

use aya::{
    maps::{IterableMap as _, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues},
    Ebpf,
};
use detector_common::{
    maps::{ClassCounters, SourceKey, SourceStats, CLASS_STATS_MAP, SKETCH_MAP, SOURCE_STATS_MAP},
    sketch::Sketch,
    CLASS_COUNT,
};
use thiserror::Error;

use crate::{ebpf, rates::ClassSnapshot};

#[derive(Debug, Error)]
pub enum CounterError {
    #[error(transparent)]
    Load(#[from] ebpf::LoadError),
    #[error("map {map} has an unexpected type or layout: {source}")]
    Layout { map: &'static str, source: MapError },
    #[error("reading map {map} failed: {source}")]
    Read { map: &'static str, source: MapError },
    #[error("writing map {map} failed: {source}")]
    Write { map: &'static str, source: MapError },
    #[error("cannot count the possible CPUs: {0}")]
    Cpus(String),
}

/// The counting program's maps, owned apart from the program.
pub struct CounterMaps {
    classes: PerCpuArray<MapData, ClassCounters>,
    sources: PerCpuHashMap<MapData, SourceKey, SourceStats>,
    sketch: PerCpuArray<MapData, Sketch>,
    zero_sketch: Vec<Sketch>,
    capacity: u32,
}

impl CounterMaps {
    /// Takes the maps out of a loaded counting object.
    pub fn take(ebpf: &mut Ebpf) -> Result<CounterMaps, CounterError> {
        let layout = |map| move |source| CounterError::Layout { map, source };
        let classes = PerCpuArray::try_from(ebpf::take_map(ebpf, "detector", CLASS_STATS_MAP)?)
            .map_err(layout(CLASS_STATS_MAP))?;
        let sources = PerCpuHashMap::try_from(ebpf::take_map(ebpf, "detector", SOURCE_STATS_MAP)?)
            .map_err(layout(SOURCE_STATS_MAP))?;
        let sketch: PerCpuArray<MapData, Sketch> =
            PerCpuArray::try_from(ebpf::take_map(ebpf, "detector", SKETCH_MAP)?)
                .map_err(layout(SKETCH_MAP))?;
        let capacity = sources.map().info().map(|i| i.max_entries()).unwrap_or(0);
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| CounterError::Cpus(format!("{what}: {e}")))?;
        Ok(CounterMaps { classes, sources, sketch, zero_sketch: vec![Sketch::ZERO; cpus], capacity })
    }

    /// Capacity of the per-source map.
    pub fn source_capacity(&self) -> u32 {
        self.capacity
    }

    /// Cumulative per-class counters, summed over CPUs.
    pub fn classes(&self) -> Result<ClassSnapshot, CounterError> {
        let mut snap = ClassSnapshot::default();
        for i in 0..CLASS_COUNT as u32 {
            let per_cpu = self
                .classes
                .get(&i, 0)
                .map_err(|source| CounterError::Read { map: CLASS_STATS_MAP, source })?;
            let c = &mut snap.counters[i as usize];
            for v in per_cpu.iter() {
                c.packets += v.packets;
                c.bytes += v.bytes;
            }
        }
        Ok(snap)
    }

    /// Every tracked source with its cumulative counters, summed over CPUs.
    pub fn sources(&self) -> Result<Vec<(SourceKey, SourceStats)>, CounterError> {
        let mut out = Vec::new();
        for item in self.sources.iter() {
            let (key, per_cpu) = match item {
                Ok(kv) => kv,
                // Evicted by the kernel between listing and reading: skip it.
                Err(MapError::KeyNotFound) => continue,
                Err(source) => return Err(CounterError::Read { map: SOURCE_STATS_MAP, source }),
            };
            out.push((key, sum_sources(&per_cpu)));
        }
        Ok(out)
    }

    /// Removes sources the tracker found idle. A packet landing between the
    /// last read and the removal is lost from that source's count only.
    pub fn remove_sources(&mut self, keys: &[SourceKey]) -> usize {
        keys.iter().filter(|k| self.sources.remove(k).is_ok()).count()
    }

    /// Zeroes every CPU's sketch: the heavy-hitter filter starts a new window.
    pub fn reset_sketch(&mut self) -> Result<(), CounterError> {
        let zero = PerCpuValues::try_from(self.zero_sketch.clone()).map_err(|e| {
            CounterError::Write { map: SKETCH_MAP, source: MapError::IoError(e) }
        })?;
        self.sketch
            .set(0, zero, 0)
            .map_err(|source| CounterError::Write { map: SKETCH_MAP, source })
    }
}

fn sum_sources(per_cpu: &PerCpuValues<SourceStats>) -> SourceStats {
    let mut s = SourceStats::default();
    for v in per_cpu.iter() {
        s.packets += v.packets;
        s.bytes += v.bytes;
        for (a, b) in s.class_packets.iter_mut().zip(v.class_packets.iter()) {
            *a += *b;
        }
    }
    s
}
