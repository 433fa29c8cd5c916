//! The counting program: classify each frame, count it in its class, and
//! count it per source when the source stands out; drop it when a
//! mitigation rule says so. And the egress program, which learns the
//! host's real peers.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

#[cfg(target_arch = "bpf")]
mod cpu;
#[cfg(target_arch = "bpf")]
mod dirty;
#[cfg(target_arch = "bpf")]
mod egress;
#[cfg(target_arch = "bpf")]
mod mitigate;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod program;
#[cfg(target_arch = "bpf")]
mod syncookie;
#[cfg(target_arch = "bpf")]
mod targets;

#[cfg(not(target_arch = "bpf"))]
fn main() {}
