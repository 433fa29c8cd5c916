//! The kernel adapters: the one place the controller touches BPF.
//!
//! - [`ebpf`]: the XDP objects embedded in the binary, and loading them;
//! - [`xdp`]: attaching the counting program to an interface, and detaching;
//! - [`counters`]: reading the counting program's maps;
//! - [`dirty`]: reading a per-address map from the addresses its program
//!   listed as counted in a window (sources, protected addresses);
//! - [`rules`]: writing a compiled rule plan into the rule maps;
//! - [`syncookie`]: the SYN-cookie program and netfilter's SYNPROXY rule;
//! - [`peers`]: the known-good peers map, for the operator;
//! - [`targets`]: network mode's protected networks and per-target counters;
//! - [`pins`]: where links and maps are pinned in bpffs so rules outlive
//!   the controller.

pub mod batch;
pub mod counters;
pub mod dirty;
pub mod ebpf;
pub mod egress;
pub mod peers;
pub mod pins;
pub mod rules;
pub mod syncookie;
pub mod targets;
pub mod xdp;
