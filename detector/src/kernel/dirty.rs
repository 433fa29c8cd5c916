//! Reading a per-address map whose program lists the addresses it counted
//! in each window (see `detector_common::maps::DirtyHead`): the per-source
//! map and network mode's per-address maps. A poll reads the addresses
//! counted in the window that ended, each looked up, and the next slice of
//! a sweep that reads the whole map over [`SWEEP_POLLS`] polls, so a
//! tracker still sees addresses go idle and go; the whole map instead the
//! first time (entries counted before the controller's first window are in
//! no ring), when a ring overflowed, and when most of the map was listed
//! (a batch read is cheaper per entry than lookups one at a time). Not the
//! whole map every poll: that walks every bucket of it, however few
//! entries changed.

use aya::{
    maps::{Array, IterableMap as _, MapData, MapError, PerCpuArray, PerCpuHashMap},
    Pod,
};
use detector_common::{
    maps::{
        ring_of, CpuWindows, DirtyChunk, DirtyHead, SourceKey, DIRTY_CHUNKS, DIRTY_CHUNK_KEYS, DIRTY_KEYS, WINDOWS,
    },
    sketch::Window,
};
use thiserror::Error;

use crate::kernel::batch;

/// Polls over which a sweep reads a whole per-address map. A tracker
/// notices an evicted or idle address within about a sweep.
pub const SWEEP_POLLS: usize = 20;

/// What reading costs, in ns, as measured on the AMD EPYC of BENCHMARKS.md:
/// one entry looked up alone (a syscall and a per-CPU copy), one bucket of
/// a batch read's walk, one entry of a batch read. Only their ratios
/// matter: they choose between looking up the addresses listed and reading
/// the whole map, which is cheaper when most of its entries changed.
const LOOKUP_NS: usize = 2_500;
const BUCKET_NS: usize = 7;
const BATCHED_NS: usize = 300;

#[derive(Debug, Error)]
#[error("reading map {map} failed: {source}")]
pub struct ReadError {
    pub map: &'static str,
    pub source: MapError,
}

/// One poll's read of a per-address map.
#[derive(Debug)]
pub struct Listed<V> {
    /// Addresses and their cumulative counts (summed over CPUs).
    pub entries: Vec<(SourceKey, V)>,
    /// Addresses the program listed as counted in the window.
    pub changed: usize,
    /// The whole map was read: an address not in `entries` is gone.
    pub whole: bool,
    /// No CPU counted anything in the map since the window began: its
    /// rings were not read.
    pub quiet: bool,
}

impl<V> Default for Listed<V> {
    fn default() -> Self {
        Listed { entries: Vec::new(), changed: 0, whole: false, quiet: false }
    }
}

/// A per-address map and what its program keeps beside it.
pub struct Maps<'a, V: Pod> {
    pub map: &'a PerCpuHashMap<MapData, SourceKey, V>,
    pub name: &'static str,
    /// The keys of the per-CPU rings, and the index of the ring for the
    /// window read (see `detector_common::maps::chunk_of`).
    pub chunks: &'a PerCpuArray<MapData, DirtyChunk>,
    pub chunks_name: &'static str,
    pub ring: u32,
    /// The CPUs' windows for the map, which hold the rings' heads (read
    /// once a poll for every map: [`Windows`]).
    pub windows: &'a [Window],
    /// The map's capacity: a sweep's slice is a [`SWEEP_POLLS`]th of it.
    pub capacity: u32,
}

/// Where one map's sweep stands.
#[derive(Debug)]
pub struct Sweep {
    /// Where the sweep goes on from (`None`: the start).
    from: Option<u32>,
    /// Polls since the current pass began: a pass over a sparse map ends
    /// in one poll (a batch read goes on to the map's end for as many
    /// entries as a slice holds), and the next one waits until
    /// [`SWEEP_POLLS`] have passed, so an idle map's empty buckets are
    /// walked once a sweep, not every poll.
    pass_age: usize,
    /// The next read must be whole.
    whole: bool,
}

impl Default for Sweep {
    fn default() -> Self {
        Sweep { from: None, pass_age: 0, whole: true }
    }
}

impl Sweep {
    /// What a poll reads of `m` once the window `epoch` is over (the
    /// program has gone on to the next). `tracked`: about how many entries
    /// the map holds (the caller's tracker knows). `sum` adds up an entry's
    /// per-CPU values.
    pub fn read<V: Pod>(
        &mut self,
        m: &Maps<'_, V>,
        epoch: u32,
        tracked: usize,
        buf: &mut batch::Buffers,
        sum: impl Fn(&[V]) -> V,
    ) -> Result<Listed<V>, ReadError> {
        let quiet = !m.windows.iter().any(|w| w.counted_since(epoch));
        let (mut keys, overflow) = if quiet { (Vec::new(), false) } else { listed(m, epoch, buf)? };
        keys.sort_unstable_by_key(|k| k.addr);
        keys.dedup_by_key(|k| k.addr);
        let cheaper_whole = keys.len() * LOOKUP_NS > m.capacity as usize * BUCKET_NS + tracked * BATCHED_NS;
        if overflow || self.whole || cheaper_whole {
            self.whole = false;
            self.from = None;
            // A whole read is a pass.
            self.pass_age = 1;
            let entries = whole(m.map, m.name, buf, &sum)?;
            return Ok(Listed { changed: entries.len(), entries, whole: true, quiet: false });
        }
        let sweeping = self.from.is_some() || self.pass_age >= SWEEP_POLLS;
        if self.from.is_none() && sweeping {
            self.pass_age = 0;
        }
        self.pass_age += 1;
        let slice = if sweeping { (m.capacity as usize).div_ceil(SWEEP_POLLS).max(1) } else { 0 };
        let mut entries = Vec::with_capacity(keys.len() + slice);
        let swept = if sweeping {
            batch::per_cpu_hash_from::<SourceKey, V>(m.map.map(), buf, self.from, slice, |k, v| {
                if keys.binary_search_by_key(&k.addr, |d| d.addr).is_err() {
                    entries.push((k, sum(v)));
                }
            })
        } else {
            Ok(None)
        };
        let next = match swept {
            Ok(next) => next,
            Err(e) => {
                // A kernel without batch lookups: the whole map, iterated.
                tracing::debug!(map = m.name, "batch lookup failed ({e}); iterating");
                let entries = iterated(m.map, m.name, &sum)?;
                return Ok(Listed { changed: entries.len(), entries, whole: true, quiet: false });
            }
        };
        let changed = keys.len();
        for key in keys {
            match m.map.get(&key, 0) {
                Ok(per_cpu) => entries.push((key, sum(&per_cpu))),
                // Evicted or removed since it was counted.
                Err(MapError::KeyNotFound) => {}
                Err(source) => return Err(ReadError { map: m.name, source }),
            }
        }
        self.from = next;
        Ok(Listed { entries, changed, whole: false, quiet })
    }
}

/// The keys the CPUs listed in the ring of window `epoch`, and whether a
/// ring overflowed: the heads (in the CPUs' `windows`), then the chunks in
/// use (one batch call; one lookup a chunk where the kernel has no batch
/// lookups).
fn listed<V: Pod>(m: &Maps<'_, V>, epoch: u32, buf: &mut batch::Buffers) -> Result<(Vec<SourceKey>, bool), ReadError> {
    let heads: Vec<DirtyHead> = m.windows.iter().map(|w| w.rings[ring_of(epoch) as usize]).collect();
    let counts: Vec<usize> =
        heads.iter().map(|h| if h.epoch == epoch { (h.count as usize).min(DIRTY_KEYS) } else { 0 }).collect();
    let overflow = heads.iter().any(|h| h.epoch == epoch && h.overflow != 0);
    let used = counts.iter().copied().max().unwrap_or(0).div_ceil(DIRTY_CHUNK_KEYS) as u32;
    let mut keys = Vec::with_capacity(counts.iter().sum());
    if overflow || used == 0 {
        return Ok((keys, overflow));
    }
    let first = m.ring * DIRTY_CHUNKS as u32;
    let mut take = |index: u32, per_cpu: &[DirtyChunk]| {
        let from = (index.wrapping_sub(first) as usize).saturating_mul(DIRTY_CHUNK_KEYS);
        for (chunk, &count) in per_cpu.iter().zip(&counts) {
            let n = count.saturating_sub(from).min(DIRTY_CHUNK_KEYS);
            keys.extend_from_slice(&chunk.keys[..n]);
        }
    };
    if let Err(e) = batch::per_cpu_array_range::<DirtyChunk>(m.chunks.map(), buf, first, used, &mut take) {
        tracing::debug!(map = m.chunks_name, "batch lookup failed ({e}); one lookup per chunk");
        for index in first..first + used {
            let per_cpu = m.chunks.get(&index, 0).map_err(|source| ReadError { map: m.chunks_name, source })?;
            take(index, &per_cpu);
        }
    }
    Ok((keys, overflow))
}

/// Every CPU's windows (`detector_common::maps::WINDOW_MAP`), read in one
/// call a poll: whether each CPU counted in a map, and the heads of its
/// rings.
#[derive(Clone, Debug, Default)]
pub struct Windows {
    /// Per window index, per CPU.
    per_index: Vec<Vec<Window>>,
}

impl Windows {
    /// Reads every CPU's windows from `map`, a [`CpuWindows`] per CPU (one
    /// batch call; a lookup per CPU where the kernel has no batch lookups).
    pub fn read(
        map: &Array<MapData, CpuWindows>,
        name: &'static str,
        buf: &mut batch::Buffers,
    ) -> Result<Windows, ReadError> {
        let cpus = map.len();
        let mut per_index = vec![vec![Window::default(); cpus as usize]; WINDOWS as usize];
        let mut read = 0;
        let mut put = |cpu: u32, w: &CpuWindows| {
            for (i, win) in w.windows.iter().enumerate() {
                if let Some(slot) = per_index[i].get_mut(cpu as usize) {
                    *slot = *win;
                }
            }
        };
        let batched = batch::array_range::<CpuWindows>(map.map(), buf, 0, cpus, |cpu, w| {
            put(cpu, w);
            read += 1;
        });
        if batched.is_err() || read < cpus {
            if let Err(e) = batched {
                tracing::debug!(map = name, "batch lookup failed ({e}); one lookup per CPU");
            }
            for cpu in 0..cpus {
                put(cpu, &map.get(&cpu, 0).map_err(|source| ReadError { map: name, source })?);
            }
        }
        Ok(Windows { per_index })
    }

    /// The CPUs' windows at `index`.
    pub fn of(&self, index: u32) -> &[Window] {
        self.per_index.get(index as usize).map_or(&[], Vec::as_slice)
    }
}

/// Every entry of `map` with its per-CPU values summed: a few batch
/// syscalls; aya's iterator (two syscalls per entry, each of which walks
/// the empty buckets before it) where the kernel has no batch lookups.
pub fn whole<V: Pod>(
    map: &PerCpuHashMap<MapData, SourceKey, V>,
    name: &'static str,
    buf: &mut batch::Buffers,
    sum: impl Fn(&[V]) -> V,
) -> Result<Vec<(SourceKey, V)>, ReadError> {
    let mut out = Vec::new();
    match batch::per_cpu_hash::<SourceKey, V>(map.map(), buf, |k, v| out.push((k, sum(v)))) {
        Ok(()) => Ok(out),
        Err(e) => {
            tracing::debug!(map = name, "batch lookup failed ({e}); iterating");
            iterated(map, name, sum)
        }
    }
}

/// As [`whole`], with aya's iterator.
pub fn iterated<V: Pod>(
    map: &PerCpuHashMap<MapData, SourceKey, V>,
    name: &'static str,
    sum: impl Fn(&[V]) -> V,
) -> Result<Vec<(SourceKey, V)>, ReadError> {
    let mut out = Vec::new();
    for item in map.iter() {
        let (key, per_cpu) = match item {
            Ok(kv) => kv,
            // Evicted by the kernel between listing and reading: skip it.
            Err(MapError::KeyNotFound) => continue,
            Err(source) => return Err(ReadError { map: name, source }),
        };
        out.push((key, sum(&per_cpu)));
    }
    Ok(out)
}
