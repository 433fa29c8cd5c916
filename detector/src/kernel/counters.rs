//! Reading the counting program's maps: the one place the controller
//! touches them. Per-CPU values are summed here; nothing is ever
//! read-then-zeroed (increments would be lost). A new heavy-hitter window
//! starts by bumping the epoch, never by zeroing the sketch.

use aya::{
    maps::{Array, IterableMap as _, MapData, MapError, PerCpuArray, PerCpuHashMap, RingBuf},
    Ebpf,
};
use detector_common::{
    maps::{
        ring_of, ClassStats, CpuWindows, DirtyChunk, SourceKey, SourceStats, CLASS_STATS_MAP, EPOCH_MAP,
        SOURCE_DIRTY_MAP, SOURCE_STATS_MAP, SOURCE_WINDOW, WINDOW_MAP,
    },
    sample::{PacketSample, SampleControl, SampleHead, SampleRecord, SAMPLES_MAP, SAMPLE_CONTROL_MAP, SNAPLEN},
    sketch::EPOCH_MASK,
    CLASS_COUNT,
};
use thiserror::Error;

use crate::{
    kernel::{
        batch,
        dirty::{self, Listed, Sweep, Windows},
        ebpf,
    },
    rates::ClassSnapshot,
};

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
    #[error(transparent)]
    Targets(#[from] super::targets::TargetError),
    #[error(transparent)]
    Listed(#[from] dirty::ReadError),
}

/// The counting program's maps, owned apart from the program.
pub struct CounterMaps {
    classes: PerCpuArray<MapData, ClassStats>,
    sources: PerCpuHashMap<MapData, SourceKey, SourceStats>,
    epoch: Array<MapData, u32>,
    /// Each CPU's heavy-hitter windows (per source, and network mode's):
    /// whether it counted lately, and the heads of its rings.
    windows: Array<MapData, CpuWindows>,
    /// The sources each CPU counted in a window, and where the sweep of
    /// the per-source map stands (see [`dirty`]).
    chunks: PerCpuArray<MapData, DirtyChunk>,
    sweep: Sweep,
    next_epoch: u32,
    samples: RingBuf<MapData>,
    sample_control: Array<MapData, SampleControl>,
    capacity: u32,
    /// The batch reads' buffers (class counters, sources), reused every
    /// poll.
    batch: std::sync::Mutex<batch::Buffers>,
}

impl CounterMaps {
    /// Takes the maps out of a loaded counting object.
    pub fn take(ebpf: &mut Ebpf) -> Result<CounterMaps, CounterError> {
        let layout = |map| move |source| CounterError::Layout { map, source };
        let classes = PerCpuArray::try_from(ebpf::take_map(ebpf, "detector", CLASS_STATS_MAP)?)
            .map_err(layout(CLASS_STATS_MAP))?;
        let sources = PerCpuHashMap::try_from(ebpf::take_map(ebpf, "detector", SOURCE_STATS_MAP)?)
            .map_err(layout(SOURCE_STATS_MAP))?;
        let epoch = Array::try_from(ebpf::take_map(ebpf, "detector", EPOCH_MAP)?).map_err(layout(EPOCH_MAP))?;
        let windows = Array::try_from(ebpf::take_map(ebpf, "detector", WINDOW_MAP)?).map_err(layout(WINDOW_MAP))?;
        let chunks = PerCpuArray::try_from(ebpf::take_map(ebpf, "detector", SOURCE_DIRTY_MAP)?)
            .map_err(layout(SOURCE_DIRTY_MAP))?;
        let samples = RingBuf::try_from(ebpf::take_map(ebpf, "detector", SAMPLES_MAP)?).map_err(layout(SAMPLES_MAP))?;
        let sample_control = Array::try_from(ebpf::take_map(ebpf, "detector", SAMPLE_CONTROL_MAP)?)
            .map_err(layout(SAMPLE_CONTROL_MAP))?;
        let capacity = sources.map().info().map(|i| i.max_entries()).unwrap_or(0);
        Ok(CounterMaps {
            classes,
            sources,
            epoch,
            windows,
            chunks,
            sweep: Sweep::default(),
            next_epoch: 1,
            samples,
            sample_control,
            capacity,
            batch: Default::default(),
        })
    }

    /// Capacity of the per-source map.
    pub fn source_capacity(&self) -> u32 {
        self.capacity
    }

    /// Cumulative per-class counters (seen and dropped), summed over CPUs.
    /// One batch syscall every poll; one lookup per class where the kernel
    /// has no batch lookups.
    pub fn classes(&self) -> Result<ClassSnapshot, CounterError> {
        fn add(snap: &mut ClassSnapshot, class: usize, per_cpu: &[ClassStats]) {
            for v in per_cpu {
                snap.counters[class].packets += v.seen.packets;
                snap.counters[class].bytes += v.seen.bytes;
                for (total, d) in snap.dropped.iter_mut().zip(v.dropped.iter()) {
                    total[class].packets += d.packets;
                    total[class].bytes += d.bytes;
                }
            }
        }
        let mut snap = ClassSnapshot::default();
        let mut buf = self.batch.lock().unwrap_or_else(|p| p.into_inner());
        let batched = batch::per_cpu_array::<ClassStats>(self.classes.map(), &mut buf, |i, per_cpu| {
            if (i as usize) < CLASS_COUNT {
                add(&mut snap, i as usize, per_cpu);
            }
        });
        if let Err(e) = batched {
            tracing::debug!(map = CLASS_STATS_MAP, "batch lookup failed ({e}); one lookup per class");
            snap = ClassSnapshot::default();
            for i in 0..CLASS_COUNT as u32 {
                let per_cpu =
                    self.classes.get(&i, 0).map_err(|source| CounterError::Read { map: CLASS_STATS_MAP, source })?;
                add(&mut snap, i as usize, &per_cpu);
            }
        }
        Ok(snap)
    }

    /// Every tracked source with its cumulative counters, summed over CPUs
    /// (see [`dirty::whole`]).
    pub fn sources(&self) -> Result<Vec<(SourceKey, SourceStats)>, CounterError> {
        let mut buf = self.batch.lock().unwrap_or_else(|p| p.into_inner());
        Ok(dirty::whole(&self.sources, SOURCE_STATS_MAP, &mut buf, sum_sources)?)
    }

    /// Every CPU's windows, the per-source one and network mode's, in one
    /// call: what [`CounterMaps::read_sources`] and
    /// `TargetMaps::read` take.
    pub fn windows(&self) -> Result<Windows, CounterError> {
        let mut buf = self.batch.lock().unwrap_or_else(|p| p.into_inner());
        Ok(Windows::read(&self.windows, WINDOW_MAP, &mut buf)?)
    }

    /// What a poll reads of the per-source map once the window `epoch` is
    /// over (the program has gone on to the next): the sources counted in
    /// it and a slice of a sweep, not every bucket of the map (see
    /// [`dirty`]). `tracked`: the sources the tracker knows of; `windows`:
    /// read after the window moved on.
    pub fn read_sources(
        &mut self,
        epoch: u32,
        tracked: usize,
        windows: &Windows,
    ) -> Result<Listed<SourceStats>, CounterError> {
        let maps = dirty::Maps {
            map: &self.sources,
            name: SOURCE_STATS_MAP,
            chunks: &self.chunks,
            chunks_name: SOURCE_DIRTY_MAP,
            ring: ring_of(epoch),
            windows: windows.of(SOURCE_WINDOW),
            capacity: self.capacity,
        };
        let mut buf = self.batch.lock().unwrap_or_else(|p| p.into_inner());
        Ok(self.sweep.read(&maps, epoch, tracked, &mut buf, sum_sources)?)
    }

    /// Removes sources the tracker found idle. A packet landing between the
    /// last read and the removal is lost from that source's count only.
    pub fn remove_sources(&mut self, keys: &[SourceKey]) -> usize {
        keys.iter().filter(|k| self.sources.remove(k).is_ok()).count()
    }

    /// Takes the samples waiting in the ring, at most `max`: every one's
    /// headers into `headers`, and the ones that carry their frame whole
    /// into `frames` (both cleared first: vectors of an earlier poll, with
    /// their memory).
    pub fn drain_samples(&mut self, max: usize, headers: &mut Vec<PacketSample>, frames: &mut Vec<SampleRecord>) {
        headers.clear();
        frames.clear();
        let head = size_of::<SampleHead>();
        let cap_at = std::mem::offset_of!(SampleHead, cap_len);
        while headers.len() < max {
            let Some(item) = self.samples.next() else { break };
            if item.len() < head {
                continue;
            }
            // SAFETY: the entry holds a SampleHead (repr(C), plain data,
            // every bit pattern valid) at its start; unaligned to be safe.
            headers.push(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const PacketSample) });
            let cap_len = u16::from_ne_bytes([item[cap_at], item[cap_at + 1]]) as usize;
            if cap_len == 0 || item.len() < size_of::<SampleRecord>() {
                continue;
            }
            // Only the bytes the program wrote: the headers and the
            // frame's captured head (a flood's small frames are a third
            // of the record), not the rest of the entry, which is whatever
            // the ring held before. Reading the ring is reading memory the
            // program wrote on another CPU, a cache miss a line.
            let used = head + cap_len.min(SNAPLEN);
            frames.reserve(1);
            let slot = frames.spare_capacity_mut()[0].as_mut_ptr() as *mut u8;
            // SAFETY: a SampleRecord is plain data (repr(C), every bit
            // pattern valid); `used` is within both it and the entry, and
            // the rest of the slot is zeroed, so the record is whole
            // before the length covers it.
            unsafe {
                std::ptr::copy_nonoverlapping(item.as_ptr(), slot, used);
                std::ptr::write_bytes(slot.add(used), 0, size_of::<SampleRecord>() - used);
                frames.set_len(frames.len() + 1);
            }
        }
    }

    /// Samples one packet in `divisor` (a power of two; 0 turns it off),
    /// and gives one sample in `frame_divisor` its frame (0: none).
    pub fn set_sampling(&mut self, divisor: u32, frame_divisor: u32) -> Result<(), CounterError> {
        self.sample_control
            .set(0, SampleControl { divisor, frame_divisor }, 0)
            .map_err(|source| CounterError::Write { map: SAMPLE_CONTROL_MAP, source })
    }

    /// The current heavy-hitter window (the epoch the programs count in).
    pub fn epoch(&self) -> u32 {
        self.next_epoch.wrapping_sub(1) & EPOCH_MASK
    }

    /// Starts a new heavy-hitter window on every CPU: one small write.
    pub fn new_window(&mut self) -> Result<(), CounterError> {
        let e = self.next_epoch & EPOCH_MASK;
        self.epoch.set(0, e, 0).map_err(|source| CounterError::Write { map: EPOCH_MAP, source })?;
        self.next_epoch = self.next_epoch.wrapping_add(1);
        Ok(())
    }
}

fn sum_sources(per_cpu: &[SourceStats]) -> SourceStats {
    let mut s = SourceStats::default();
    for v in per_cpu {
        s.packets += v.packets;
        s.bytes += v.bytes;
        for (a, b) in s.class_packets.iter_mut().zip(v.class_packets.iter()) {
            *a += *b;
        }
    }
    s
}
