//! The rings of addresses counted in a window (see
//! `detector_common::maps::DirtyRing`): how the controller reads only the
//! entries of a per-address map that changed in a poll.

use detector_common::maps::{DirtyRing, SourceKey, DIRTY_KEYS};

/// Lists `key` in `ring`, this CPU's ring of the window `epoch` (the one
/// of its parity, which the controller read a window ago), or says the
/// ring overflowed. A ring still holding an older window starts over.
#[inline(always)]
pub fn list(ring: *mut DirtyRing, key: &SourceKey, epoch: u32) {
    // SAFETY: a per-CPU value of this program's, on this CPU.
    unsafe {
        if (*ring).epoch != epoch {
            (*ring).epoch = epoch;
            (*ring).count = 0;
            (*ring).overflow = 0;
        }
        let n = (*ring).count as usize;
        if n < DIRTY_KEYS {
            (*ring).keys[n] = *key;
            (*ring).count = n as u32 + 1;
        } else {
            (*ring).overflow = 1;
        }
    }
}
