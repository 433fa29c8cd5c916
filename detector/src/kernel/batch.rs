//! Reading a whole per-CPU map in a few syscalls.
//!
//! aya 0.14 iterates a map with two syscalls per entry (next key, then
//! lookup): about 7 µs per entry here, half a second for 65,536 tracked
//! destinations, five times the poll interval. `BPF_MAP_LOOKUP_BATCH`
//! (Linux 5.6) returns up to a chunk of keys and their per-CPU values per
//! call. aya does not wrap it, so this module makes the one syscall itself;
//! everything else stays with aya.

use std::{
    io,
    mem::size_of,
    os::fd::{AsFd as _, AsRawFd},
};

use aya::{maps::MapData, Pod};

/// `BPF_MAP_LOOKUP_BATCH` in `enum bpf_cmd` (include/uapi/linux/bpf.h).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Entries asked for per call.
const CHUNK: u32 = 4096;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// The buffers the kernel copies a batch into, kept from one read to the
/// next: a chunk of per-CPU values is megabytes (4,096 entries of a few
/// hundred bytes on each CPU), which allocated and zeroed for every read,
/// twice a poll, cost the controller more CPU than the rest of its poll.
/// The kernel writes what it returns; nothing is read past that.
#[derive(Debug, Default)]
pub struct Buffers {
    keys: Vec<u8>,
    values: Vec<u8>,
}

impl Buffers {
    /// At least `keys` and `values` bytes; only growth is zeroed.
    fn reserve(&mut self, keys: usize, values: usize) {
        if self.keys.len() < keys {
            self.keys.resize(keys, 0);
        }
        if self.values.len() < values {
            self.values.resize(values, 0);
        }
    }
}

/// Reads the whole of a per-CPU hash map, calling `f` with each key and
/// its per-CPU values.
pub fn per_cpu_hash<K: Pod, V: Pod>(map: &MapData, buf: &mut Buffers, f: impl FnMut(K, &[V])) -> io::Result<()> {
    per_cpu_hash_from(map, buf, None, usize::MAX, f).map(|_| ())
}

/// Reads the whole of a per-CPU array, calling `f` with each index and its
/// per-CPU values: one call for an array of up to a chunk (the kernel's
/// generic batch, whose tokens are keys, not buckets; read from the start
/// to the end, the two never differ here).
pub fn per_cpu_array<V: Pod>(map: &MapData, buf: &mut Buffers, f: impl FnMut(u32, &[V])) -> io::Result<()> {
    per_cpu_hash_from(map, buf, None, usize::MAX, f).map(|_| ())
}

/// Reads entries `first..first + count` of a per-CPU array in one call,
/// calling `f` with each index and its per-CPU values (the generic batch:
/// its token is the key before the first one returned).
pub fn per_cpu_array_range<V: Pod>(
    map: &MapData,
    buf: &mut Buffers,
    first: u32,
    count: u32,
    f: impl FnMut(u32, &[V]),
) -> io::Result<()> {
    if count == 0 {
        return Ok(());
    }
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    let before = first.wrapping_sub(1);
    let mut next = 0;
    let (_, err) = lookup_batch(map, buf, (first > 0).then_some(&before), &mut next, count, cpus, f);
    match err {
        // ENOENT: the array ended; what was copied was handed out still.
        Some(e) if e.raw_os_error() != Some(libc::ENOENT) => Err(e),
        _ => Ok(()),
    }
}

/// Reads entries `first..first + count` of an array (not per-CPU) in one
/// call, calling `f` with each index and its value (the generic batch, as
/// [`per_cpu_array_range`]).
pub fn array_range<V: Pod>(
    map: &MapData,
    buf: &mut Buffers,
    first: u32,
    count: u32,
    mut f: impl FnMut(u32, &V),
) -> io::Result<()> {
    if count == 0 {
        return Ok(());
    }
    let before = first.wrapping_sub(1);
    let mut next = 0;
    let (_, err) =
        lookup_batch(map, buf, (first > 0).then_some(&before), &mut next, count, 1, |i, v: &[V]| f(i, &v[0]));
    match err {
        Some(e) if e.raw_os_error() != Some(libc::ENOENT) => Err(e),
        _ => Ok(()),
    }
}

/// One `BPF_MAP_LOOKUP_BATCH` call of up to `count` entries from the token
/// `start` (`None`: the map's start), the token to go on from written to
/// `next`: calls `f` with each key and its per-CPU values, and returns how
/// many the kernel copied and the call's error (on ENOENT, the map's end,
/// the kernel still reports what it copied; on any other, nothing is
/// handed out).
fn lookup_batch<K: Pod, V: Pod>(
    map: &MapData,
    buf: &mut Buffers,
    start: Option<&u32>,
    next: &mut u32,
    count: u32,
    cpus: usize,
    mut f: impl FnMut(K, &[V]),
) -> (u32, Option<io::Error>) {
    let stride = size_of::<V>().div_ceil(8) * 8;
    let ksize = size_of::<K>();
    buf.reserve(count as usize * ksize, count as usize * cpus * stride);
    let (keys, values) = (&mut buf.keys, &mut buf.values);
    let mut attr = BatchAttr {
        in_batch: start.map_or(0, |t| t as *const u32 as u64),
        out_batch: next as *mut u32 as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count,
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
        ..Default::default()
    };
    // SAFETY: the attribute points at buffers of `count` keys and `count`
    // per-CPU values, alive for the call.
    let ret = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_MAP_LOOKUP_BATCH, &mut attr as *mut BatchAttr, size_of::<BatchAttr>())
    };
    let err = (ret < 0).then(io::Error::last_os_error);
    let got =
        if err.as_ref().is_some_and(|e| e.raw_os_error() != Some(libc::ENOENT)) { 0 } else { attr.count.min(count) };
    let mut per_cpu: Vec<V> = Vec::with_capacity(cpus);
    for i in 0..got as usize {
        // SAFETY: the kernel wrote `got` keys and `got * cpus` values of
        // these Pod types, each value at an 8-byte stride.
        let key = unsafe { std::ptr::read_unaligned(keys[i * ksize..].as_ptr() as *const K) };
        per_cpu.clear();
        for c in 0..cpus {
            let at = (i * cpus + c) * stride;
            per_cpu.push(unsafe { std::ptr::read_unaligned(values[at..].as_ptr() as *const V) });
        }
        f(key, &per_cpu);
    }
    (got, err)
}

/// Reads a per-CPU hash map from the batch token `start` (`None`: from its
/// first bucket) until at least `want` entries were read or the map ends,
/// calling `f` with each key and its per-CPU values. Returns where to go on
/// from (the token of the next bucket), or `None` once the map ended.
/// Tokens are bucket numbers: valid across calls while the map changes
/// (an entry added meanwhile behind the token is read in the next pass).
pub fn per_cpu_hash_from<K: Pod, V: Pod>(
    map: &MapData,
    buf: &mut Buffers,
    start: Option<u32>,
    want: usize,
    mut f: impl FnMut(K, &[V]),
) -> io::Result<Option<u32>> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    let mut chunk = CHUNK.min(want.try_into().unwrap_or(u32::MAX)).max(64);
    let mut token: u32 = start.unwrap_or(0);
    let mut next: u32 = 0;
    let mut first = start.is_none();
    let mut read = 0usize;
    loop {
        let (got, err) = lookup_batch(map, buf, (!first).then_some(&token), &mut next, chunk, cpus, &mut f);
        read += got as usize;
        match err {
            None if got == 0 => return Ok(None),
            None => {}
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            // A bucket holds more than `chunk` entries: a larger buffer.
            Some(e) if e.raw_os_error() == Some(libc::ENOSPC) && chunk < 1 << 20 => {
                chunk *= 2;
                continue;
            }
            Some(e) => return Err(e),
        }
        token = next;
        first = false;
        if read >= want {
            return Ok(Some(token));
        }
    }
}
