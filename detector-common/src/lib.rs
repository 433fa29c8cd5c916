//! Types shared by the XDP programs and the controller.
//!
//! Everything here is `#[repr(C)]` and plain data: the kernel side writes it
//! into BPF maps, the user side reads the same bytes back. The layout of every
//! type is pinned by tests at the bottom of each module, so a change on one
//! side that the other side does not see fails the build's tests instead of
//! silently mis-reading counters.
#![no_std]

pub mod class;
pub mod flood;
pub mod known;
pub mod maps;
/// Userspace only: the fuzzer's reference, never part of the XDP object.
#[cfg(not(target_arch = "bpf"))]
pub mod reference;
pub mod rules;
pub mod sample;
pub mod sketch;
pub mod syncookie;
pub mod targets;

pub use class::{TrafficClass, CLASS_COUNT};
