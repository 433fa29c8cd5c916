//! Arrays with a slot per CPU, indexed by the CPU's id, where a per-CPU
//! array would do: the reason is `detector_common::maps::PARSED_MAP`'s.

use aya_ebpf::{helpers::bpf_get_smp_processor_id, maps::Array};

/// This CPU's entry `index` (below `per_cpu`) of `map`, an array of
/// `per_cpu` entries per possible CPU (the loader sizes it). The program
/// runs on one CPU from start to end, its tail calls too, so the entry is
/// its alone while it runs, as a per-CPU value is.
#[inline(always)]
pub fn entry<T>(map: &Array<T>, per_cpu: u32, index: u32) -> Option<*mut T> {
    // SAFETY: a helper without arguments; the verifier inlines it.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    map.get_ptr_mut(cpu.wrapping_mul(per_cpu).wrapping_add(index))
}
