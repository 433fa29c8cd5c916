//! The rings of addresses counted in a window (see
//! `detector_common::maps::DirtyHead`): how the controller reads only the
//! entries of a per-address map that changed in a poll.

use aya_ebpf::maps::PerCpuArray;
use detector_common::maps::{chunk_of, DirtyChunk, DirtyHead, SourceKey, DIRTY_CHUNK_KEYS, DIRTY_KEYS};

/// Lists `key` in ring `ring` of this CPU, the one of window `epoch` (of
/// its parity, which the controller read a window ago): `head` is the
/// ring's head, `chunks` the map of its keys. Or says the ring
/// overflowed. A ring still holding an older window starts over.
#[inline(always)]
pub fn list(head: *mut DirtyHead, chunks: &PerCpuArray<DirtyChunk>, ring: u32, key: &SourceKey, epoch: u32) {
    // SAFETY: per-CPU values of this program's, on this CPU.
    unsafe {
        if (*head).epoch != epoch {
            (*head).epoch = epoch;
            (*head).count = 0;
            (*head).overflow = 0;
        }
        let n = (*head).count;
        if (n as usize) < DIRTY_KEYS {
            if let Some(chunk) = chunks.get_ptr_mut(chunk_of(ring, n)) {
                (*chunk).keys[n as usize % DIRTY_CHUNK_KEYS] = *key;
                (*head).count = n + 1;
                return;
            }
        }
        (*head).overflow = 1;
    }
}
