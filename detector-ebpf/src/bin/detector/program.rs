use aya_ebpf::{
    bindings::{xdp_action, BPF_NOEXIST},
    macros::{map, xdp},
    maps::{LruPerCpuHashMap, PerCpuArray},
    programs::XdpContext,
};
use detector_common::{
    maps::{ClassCounters, SourceKey, SourceStats, DEFAULT_MAX_SOURCES},
    sketch::{self, Sketch, SKETCH_DEPTH},
    CLASS_COUNT,
};

use crate::parse::parse;

/// Per class: cumulative packets and bytes. Exact whatever the sources.
#[map]
static CLASS_STATS: PerCpuArray<ClassCounters> =
    PerCpuArray::with_max_entries(CLASS_COUNT as u32, 0);

/// Per admitted source: cumulative packets, bytes and packets per class.
#[map]
static SOURCE_STATS: LruPerCpuHashMap<SourceKey, SourceStats> =
    LruPerCpuHashMap::with_max_entries(DEFAULT_MAX_SOURCES, 0);

/// The heavy-hitter filter; the controller zeroes it every poll.
#[map]
static SKETCH: PerCpuArray<Sketch> = PerCpuArray::with_max_entries(1, 0);

/// Keys the sketch's hash; set by the controller at load time.
#[unsafe(no_mangle)]
static HASH_SEED: u64 = 0;

#[xdp]
pub fn detector(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    let end = ctx.data_end();
    let len = (end - start) as u64;
    let parsed = parse(start, end);
    let class = parsed.class as u32;

    if let Some(c) = CLASS_STATS.get_ptr_mut(class) {
        unsafe {
            (*c).packets += 1;
            (*c).bytes += len;
        }
    }
    if let Some(src) = parsed.src {
        track_source(src, class as usize, len);
    }
    xdp_action::XDP_PASS
}

#[inline(always)]
fn track_source(src: [u8; 16], class: usize, len: u64) {
    let Some(sk) = SKETCH.get_ptr_mut(0) else {
        return;
    };
    let seed = unsafe { core::ptr::read_volatile(&HASH_SEED) };
    let h = sketch::hash_addr(&src, seed);
    let mut est = u16::MAX;
    let total;
    unsafe {
        (*sk).total += 1;
        total = (*sk).total;
        let mut row = 0;
        while row < SKETCH_DEPTH {
            let idx = sketch::row_index(h, row as u32);
            let c = &mut (*sk).rows[row][idx];
            if *c < u16::MAX {
                *c += 1;
            }
            if *c < est {
                est = *c;
            }
            row += 1;
        }
    }
    if !sketch::admit(est, total) || class >= CLASS_COUNT {
        return;
    }
    let key = SourceKey { addr: src };
    if let Some(s) = SOURCE_STATS.get_ptr_mut(&key) {
        unsafe {
            (*s).packets += 1;
            (*s).bytes += len;
            (*s).class_packets[class] += 1;
        }
        return;
    }
    let mut fresh = SourceStats { packets: 1, bytes: len, class_packets: [0; CLASS_COUNT] };
    fresh.class_packets[class] = 1;
    // NOEXIST: another CPU may have admitted the source a moment ago; then
    // its entry stays and this CPU's slot in it takes the packet.
    if SOURCE_STATS.insert(&key, &fresh, BPF_NOEXIST as u64).is_err() {
        if let Some(s) = SOURCE_STATS.get_ptr_mut(&key) {
            unsafe {
                (*s).packets += 1;
                (*s).bytes += len;
                (*s).class_packets[class] += 1;
            }
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
