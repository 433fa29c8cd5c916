use aya_ebpf::{
    bindings::{xdp_action, BPF_NOEXIST, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_xdp_load_bytes},
    macros::{map, xdp},
    maps::{Array, LruPerCpuHashMap, PerCpuArray, RingBuf},
    programs::XdpContext,
};
use detector_common::{
    maps::{
        ring_of, ClassStats, CpuWindows, DirtyChunk, SourceKey, SourceStats, DEFAULT_MAX_SOURCES, SOURCE_WINDOW,
        WINDOWS,
    },
    sample::{
        carries_frame, current_countdown, next_gap, PacketSample, SampleControl, SampleHead, SampleRecord,
        SAMPLES_RING_BYTES, SNAPLEN,
    },
    sketch::{self, HashKey, HotStep, SketchBlock, Window, EPOCH_MASK, SKETCH_BLOCKS},
    TrafficClass, CLASS_COUNT,
};

use crate::{
    mitigate,
    parse::{self, parse, Parsed},
    targets,
};

/// Per class: cumulative packets and bytes, seen and dropped. Exact
/// whatever the sources.
#[map]
pub(crate) static CLASS_STATS: PerCpuArray<ClassStats> = PerCpuArray::with_max_entries(CLASS_COUNT as u32, 0);

/// Per admitted source: cumulative packets, bytes and packets per class.
#[map]
static SOURCE_STATS: LruPerCpuHashMap<SourceKey, SourceStats> =
    LruPerCpuHashMap::with_max_entries(DEFAULT_MAX_SOURCES, 0);

/// The entry a newly admitted source is inserted with (see `track_source`).
#[map]
static SOURCE_FRESH: PerCpuArray<SourceStats> = PerCpuArray::with_max_entries(1, 0);

/// Per CPU and epoch parity: the sources counted in a window (the keys of
/// the rings whose heads are in `WINDOW`).
#[map]
static SOURCE_DIRTY: PerCpuArray<DirtyChunk> =
    PerCpuArray::with_max_entries(2 * detector_common::maps::DIRTY_CHUNKS as u32, 0);

/// The heavy-hitter filter, per CPU, in blocks of a cache line (a source's
/// counters all lie in one).
#[map]
static SKETCH: PerCpuArray<SketchBlock> = PerCpuArray::with_max_entries(SKETCH_BLOCKS as u32, 0);

/// Each CPU's current windows: per source, and network mode's per
/// direction (see `detector_common::maps::WINDOW_MAP`), a slot per CPU.
#[map]
static WINDOW: Array<CpuWindows> = Array::with_max_entries(1, 0);

/// This CPU's window `index` (below `WINDOWS`).
#[inline(always)]
pub(crate) fn window(index: u32) -> Option<*mut Window> {
    let w = crate::cpu::entry(&WINDOW, 1, 0)?;
    if index >= WINDOWS {
        return None;
    }
    // SAFETY: this CPU's slot; the index is in bounds.
    Some(unsafe { (&raw mut (*w).windows).cast::<Window>().add(index as usize) })
}

/// The current epoch; the controller bumps it at every poll (through the
/// map of its section, `detector_common::maps::EPOCH_MAP`). A global, not
/// a one-entry array: read at its address, a load, where an array's
/// lookup is a dozen instructions, and it is read up to four times a
/// packet.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".bss.epoch")]
pub(crate) static EPOCH: Global<u32> = Global(core::cell::UnsafeCell::new(0));

/// The current epoch.
#[inline(always)]
pub(crate) fn epoch() -> u32 {
    EPOCH.get()
}

/// Sampled headers for the controller (ports, reflector services).
#[map]
static SAMPLES: RingBuf = RingBuf::with_byte_size(SAMPLES_RING_BYTES, 0);

/// How often to sample; the controller adapts it to the rate.
#[map]
static SAMPLE_CONTROL: Array<SampleControl> = Array::with_max_entries(1, 0);

/// A global the controller writes: at load time (`HASH_KEY`), or while
/// the program runs, through the one-entry array the loader makes of the
/// global's section (`EPOCH`, `TARGET_CONTROL`: a section of its own each,
/// so that the array's value is that global alone). The program reads it
/// at its address, with no lookup and no null check. Behind an
/// `UnsafeCell`: an immutable static is a constant to the compiler, which
/// may then put any other constant of the same bytes at its address (a
/// zero `HashKey` and a new rate-limit bucket's zero initial value were
/// one, and every new bucket started at the random key), and fold its
/// reads.
#[repr(transparent)]
pub(crate) struct Global<T>(pub(crate) core::cell::UnsafeCell<T>);

// SAFETY: only the controller writes it (a map update, as any map
// value's); the program only reads.
unsafe impl<T> Sync for Global<T> {}

impl<T: Copy> Global<T> {
    /// A copy, read once (volatile: a value the controller may change
    /// between two reads is read where the code says).
    #[inline(always)]
    pub(crate) fn get(&self) -> T {
        // SAFETY: a plain value, only read here.
        unsafe { core::ptr::read_volatile(self.0.get()) }
    }
}

impl<T> Global<T> {
    /// A reference, for a large value read a field at a time (as a map
    /// lookup's pointer is).
    #[inline(always)]
    pub(crate) fn get_ref(&self) -> &T {
        // SAFETY: only read here; the controller's writes are a map
        // update's, as to any array value.
        unsafe { &*self.0.get() }
    }
}

/// Keys the sketches' hash; set by the controller at load time.
#[unsafe(no_mangle)]
pub(crate) static HASH_KEY: Global<HashKey> = Global(core::cell::UnsafeCell::new(HashKey { seed: 0, zero_round: 0 }));

/// The load-time key.
#[inline(always)]
pub(crate) fn hash_key() -> HashKey {
    HASH_KEY.get()
}

#[xdp]
pub fn detector(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    let end = ctx.data_end();
    let len = (end - start) as u64;
    let Some(parsed) = launder(parse(start, end)) else {
        return xdp_action::XDP_PASS;
    };
    // An ACK or RST of a conversation the host knows is not part of an
    // ACK or RST flood; one from a spoofed or unknown source still is.
    if (parsed.class == TrafficClass::TcpAck as u8 || parsed.class == TrafficClass::TcpRst as u8)
        && parsed.has_src
        && mitigate::is_known_peer(&parsed.src)
    {
        parsed.class = TrafficClass::TcpEstablished as u8;
    }
    let parsed: &Parsed = parsed;
    let class = parsed.class as u32;

    let Some(stats) = CLASS_STATS.get_ptr_mut(class) else {
        return xdp_action::XDP_PASS;
    };
    unsafe {
        (*stats).seen.packets += 1;
        (*stats).seen.bytes += len;
    }
    if !parsed.has_src {
        return xdp_action::XDP_PASS;
    }
    // Network mode: per protected destination, before the verdict too.
    targets::count::<{ targets::IN }>(&parsed.dst, class, len, 1);
    let src = parse::bytes(parsed.src);
    let Some(w) = window(SOURCE_WINDOW) else {
        return xdp_action::XDP_PASS;
    };
    // Sampled before the verdict, so an attack's samples go on after its
    // mitigation starts.
    sample(&ctx, w, parsed, len);
    // Counted in its class first: detection sees a flood it mitigates.
    // A dropped packet's source is already known; it is not tracked.
    match mitigate::verdict(&ctx, parsed, &src, len, stats) {
        xdp_action::XDP_PASS => {}
        v => return v,
    }
    track_source(w, &parsed.src, src, class as usize, len);
    xdp_action::XDP_PASS
}

/// Each CPU's copy of the parser's findings (see [`launder`]), a slot per
/// CPU (see [`crate::cpu`]).
#[map]
static PARSED: Array<ParsedSlot> = Array::with_max_entries(1, 0);

/// A CPU's slot of [`PARSED`]: two cache lines, the findings (less than
/// one) at the start, so that two CPUs' findings never share a line
/// whatever the array's alignment.
#[repr(C)]
pub(crate) struct ParsedSlot {
    parsed: Parsed,
    _pad: [u8; 128 - core::mem::size_of::<Parsed>()],
}

/// This CPU's findings, as [`launder`] wrote them; also read by the tail
/// call it makes (on the same CPU).
#[inline(always)]
pub(crate) fn parsed() -> Option<*mut Parsed> {
    crate::cpu::entry(&PARSED, 1, 0).map(|s| unsafe { &raw mut (*s).parsed })
}

/// The parser's findings, written to a map and read back. The verifier
/// tracks every value the parser computed, so each way through the parser
/// (a class, a header layout) reaches the code after it in a state of its
/// own, and that code would be walked once per way (past the verifier's
/// budget with the rule slots). Read back from a map they are plain
/// numbers, and the ways meet. Costs a store of the findings in this CPU's
/// slot, once per packet; the code after reads them from there.
#[inline(always)]
fn launder(p: Parsed) -> Option<&'static mut Parsed> {
    let slot = parsed()?;
    unsafe {
        core::ptr::write_volatile(slot, p);
        Some(&mut *slot)
    }
}

/// Copies the headers of this packet into the ring buffer when the CPU's
/// countdown to its next sample runs out; with its first [`SNAPLEN`] bytes
/// and the time when the sample is one of those that carry the frame (see
/// [`carries_frame`]). A full ring drops the sample; the counters are
/// unaffected.
#[inline(always)]
fn sample(ctx: &XdpContext, w: *mut Window, p: &Parsed, len: u64) {
    unsafe {
        // The first packet of a poll on this CPU: the countdown cut to the
        // current divisor (see `current_countdown`), before it decides.
        // The epoch is read here and again in `track_source`, which moves
        // the window (kept live from here to there, it pushed the
        // program's stack past the verifier's 512 bytes); the sampling
        // keeps its own epoch, so the controller moving it between the two
        // reads cannot skip a cut.
        let epoch = epoch() & EPOCH_MASK;
        if (*w).sample_epoch != epoch {
            (*w).sample_epoch = epoch;
            let divisor = SAMPLE_CONTROL.get(0).map(|c| c.divisor).unwrap_or(0);
            (*w).sample_countdown = current_countdown((*w).sample_countdown, divisor);
        }
        if (*w).sample_countdown > 1 {
            (*w).sample_countdown -= 1;
            return;
        }
    }
    let control = SAMPLE_CONTROL.get(0).copied().unwrap_or_default();
    let rnd = unsafe { bpf_get_prandom_u32() };
    unsafe { (*w).sample_countdown = next_gap(control.divisor, rnd) };
    if control.divisor == 0 {
        return;
    }
    // Written in place in the ring: a sample is larger than the stack
    // space left to copy it from. Two sizes of entry, each reserved with
    // its own constant size (the verifier wants one per call).
    if !carries_frame(control.frame_divisor, rnd) {
        let Some(mut entry) = SAMPLES.reserve::<SampleHead>(0) else {
            return;
        };
        let r = entry.as_mut_ptr();
        unsafe {
            (*r).cap_len = 0;
            (*r).ts_ns = 0;
            write_header(&raw mut (*r).header, p, len);
        }
        entry.submit(BPF_RB_NO_WAKEUP as u64);
        return;
    }
    let Some(mut entry) = SAMPLES.reserve::<SampleRecord>(0) else {
        return;
    };
    let r = entry.as_mut_ptr();
    // The frame's head, for captures: a helper copy, so the length may be
    // anything from 1 to SNAPLEN. Written as (want - 1) % SNAPLEN + 1 so
    // the verifier sees those bounds whatever the compiler makes of a
    // comparison (a parsed frame is never empty).
    let want = if len > SNAPLEN as u64 { SNAPLEN as u32 } else { len as u32 };
    let n = (want.wrapping_sub(1) & (SNAPLEN as u32 - 1)) + 1;
    unsafe {
        (*r).cap_len = 0;
        let dst = (*r).frame.as_mut_ptr() as *mut core::ffi::c_void;
        if bpf_xdp_load_bytes(ctx.ctx, 0, dst, n) == 0 {
            (*r).cap_len = n as u16;
        }
        (*r).ts_ns = bpf_ktime_get_ns();
        write_header(&raw mut (*r).header, p, len);
    }
    // Nobody waits on the ring: the controller drains it at each poll.
    entry.submit(BPF_RB_NO_WAKEUP as u64);
}

/// A sample's headers, from the parser's findings. The addresses are
/// written a word at a time ([`parse::store`]): as arrays, LLVM made one of
/// the two copies a call of the BPF backend's `memmove`, a byte per turn.
#[inline(always)]
unsafe fn write_header(s: *mut PacketSample, p: &Parsed, len: u64) {
    unsafe {
        // SAFETY: sixteen bytes of the ring's record each.
        let (src, dst) = ((&raw mut (*s).src) as usize, (&raw mut (*s).dst) as usize);
        parse::store::<u64>(src, p.src[0]);
        parse::store::<u64>(src + 8, p.src[1]);
        parse::store::<u64>(dst, p.dst[0]);
        parse::store::<u64>(dst + 8, p.dst[1]);
        (*s).len = len as u32;
        (*s).class = p.class;
        (*s).ttl = p.ttl;
        (*s).sport = p.ports.src;
        (*s).dport = p.ports.dst;
        (*s).tcp_flags = p.tcp_flags;
        (*s)._pad = 0;
    }
}

#[inline(always)]
fn track_source(w: *mut Window, words: &[u64; 2], src: [u8; 16], class: usize, len: u64) {
    if class >= CLASS_COUNT {
        return;
    }
    let epoch = epoch() & EPOCH_MASK;
    // A new window (a poll) starts here; `sample` has cut the countdown.
    // SAFETY: this CPU's window.
    let (new, total) = unsafe { ((*w).epoch != epoch, (*w).advance(epoch, 1)) };
    if new {
        // What the last window's heavy source held is written now, by
        // whichever source comes first: one that went quiet is not left
        // short of it until its own next packet.
        write_left(w, epoch);
        // SAFETY: this CPU's window.
        unsafe { (*w).hot.cool() };
    }
    let key = SourceKey { addr: src };
    // The window's heavy source (see `Hot`): added up, and written a few
    // packets at a time.
    // SAFETY: this CPU's window.
    // Never the heavy source of an earlier window here (the window's first
    // packet wrote and cooled it above): a cold step has nothing left.
    match unsafe { (*w).hot.count(words, class as u32, epoch, 1, len) } {
        HotStep::Held => return,
        HotStep::Write { packets, bytes } => {
            if !add(w, &key, class, packets, bytes, epoch) {
                // Gone from the map (evicted, or removed by the
                // controller): the sketch admits it again.
                unsafe { (*w).hot.cool() };
            }
            return;
        }
        HotStep::Cold { .. } => {}
    }
    let h = hash_key().hash(words);
    let Some(b) = SKETCH.get_ptr_mut(sketch::block_index(h)) else {
        return;
    };
    // SAFETY: this CPU's block.
    let est = unsafe { (*b).count(h, epoch) };
    let weight = sketch::weight(est, total) as u64;
    if weight == 0 {
        return;
    }
    let (n, bytes) = (weight, len * weight);
    if add(w, &key, class, n, bytes, epoch) {
        if weight == sketch::SAMPLE_EVERY as u64 {
            heat(w, words, class, epoch);
        }
        return;
    }
    // Inserted from a per-CPU value, not the stack: with the program's
    // other locals, a 152-byte entry is past the verifier's 512 bytes.
    let Some(fresh) = SOURCE_FRESH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's value, zero but while a source is inserted.
    unsafe {
        (*fresh).packets = n;
        (*fresh).bytes = bytes;
        (*fresh).class_packets[class] = n;
        (*fresh).epoch = epoch;
    }
    // NOEXIST: another CPU may have admitted the source a moment ago; then
    // its entry stays and this CPU's slot in it takes the packet.
    let inserted = SOURCE_STATS.insert(&key, unsafe { &*fresh }, BPF_NOEXIST as u64);
    unsafe {
        // Volatile: two plain stores of zero, the BPF backend merges into a
        // call of its byte-at-a-time `memset` (see `Hot::clear`).
        core::ptr::write_volatile(&raw mut (*fresh).packets, 0);
        core::ptr::write_volatile(&raw mut (*fresh).bytes, 0);
        (*fresh).class_packets[class] = 0;
        (*fresh).epoch = 0;
    }
    if inserted.is_ok() {
        mark_dirty(w, &key, epoch);
    } else {
        add(w, &key, class, n, bytes, epoch);
    }
}

/// Makes a source the sketch just found heavy the window's heavy source,
/// when the place is free (see `Hot::vacant`); what the one before left
/// from an earlier window is written first.
#[inline(always)]
fn heat(w: *mut Window, words: &[u64; 2], class: usize, epoch: u32) {
    // SAFETY: this CPU's window; the key is its value's bytes.
    unsafe {
        if !(*w).hot.vacant(epoch) {
            return;
        }
        write_left(w, epoch);
        (*w).hot.heat(words, class as u32, epoch);
    }
}

/// Writes what the window's heavy source added up and has not written yet
/// (fewer than `HOT_BATCH` packets), listed in window `epoch`.
#[inline(always)]
fn write_left(w: *mut Window, epoch: u32) {
    // SAFETY: this CPU's window; the key is its value's bytes.
    unsafe {
        if let Some((oc, on, ob)) = (*w).hot.left() {
            let old = &*(core::ptr::addr_of!((*w).hot.addr) as *const SourceKey);
            if (oc as usize) < CLASS_COUNT {
                add(w, old, oc as usize, on, ob, epoch);
            }
        }
    }
}

/// Adds `packets` packets of `bytes` bytes in all to a tracked source's
/// counters, listing it in the window's ring the first time this CPU
/// counts it in the window; false when it is not tracked.
#[inline(always)]
fn add(w: *mut Window, key: &SourceKey, class: usize, packets: u64, bytes: u64, epoch: u32) -> bool {
    let Some(s) = SOURCE_STATS.get_ptr_mut(key) else {
        return false;
    };
    let first = unsafe {
        (*s).packets += packets;
        (*s).bytes += bytes;
        (*s).class_packets[class] += packets;
        let first = (*s).epoch != epoch;
        (*s).epoch = epoch;
        first
    };
    if first {
        mark_dirty(w, key, epoch);
    }
    true
}

/// Lists `key` in this CPU's ring of the window `epoch` (its head in the
/// CPU's window `w`).
#[inline(always)]
fn mark_dirty(w: *mut Window, key: &SourceKey, epoch: u32) {
    let ring = ring_of(epoch);
    // SAFETY: this CPU's window; `ring` is 0 or 1.
    let head = unsafe { &raw mut (*w).rings[ring as usize] };
    crate::dirty::list(head, &SOURCE_DIRTY, ring, key, epoch);
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
