//! The egress program on an interface: it learns the host's real peers
//! into the known-good map (see `detector_common::known`). Attached with
//! TCX (kernel 6.6 and later) and its link pinned beside the XDP link, so
//! learning goes on without a controller, and the next start replaces its
//! program in place as it does the XDP program's.

use std::path::Path;

use aya::{
    maps::{Array, MapData, PerCpuArray},
    programs::{
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        LinkOrder, TcAttachType,
    },
    Ebpf,
};
use detector_common::known::{
    LearnControl, LearnState, DEFAULT_LEARN_BUDGET, EGRESS_PROGRAM, LEARN_CONTROL_MAP, LEARN_STATE_MAP,
};
use thiserror::Error;

use super::{ebpf, xdp::error_chain};

/// The pinned egress link's file name in an interface's pin directory.
pub const EGRESS_LINK_PIN: &str = "egress_link";

#[derive(Debug, Error)]
pub enum EgressError {
    #[error(transparent)]
    Load(#[from] ebpf::LoadError),
    #[error("attaching the egress program to '{iface}' failed (TCX needs Linux 6.6 or later): {reason}")]
    Attach { iface: String, reason: String },
    #[error("pinning the egress link of '{iface}' at {path} failed: {reason}")]
    Pin { iface: String, path: String, reason: String },
    #[error("the learning control map: {0}")]
    Control(String),
}

/// The egress program's learning switch and counters on one interface.
pub struct Learning {
    control: Array<MapData, LearnControl>,
    state: PerCpuArray<MapData, LearnState>,
    enabled: bool,
}

/// Cumulative learning counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LearnCounts {
    pub learned: u64,
    pub over_budget: u64,
}

/// Loads the egress program and attaches it to `iface`, adopting the link
/// an earlier run pinned in `dir`. Returns whether a link was adopted.
pub fn attach(ebpf: &mut Ebpf, iface: &str, dir: &Path) -> Result<bool, EgressError> {
    let pin = dir.join(EGRESS_LINK_PIN);
    let prog = ebpf::load_classifier(ebpf, "detector", EGRESS_PROGRAM)?;
    if pin.exists() {
        let adopted = PinnedLink::from_pin(&pin)
            .map_err(|e| error_chain(&e))
            .and_then(|p| SchedClassifierLink::try_from(FdLink::from(p)).map_err(|e| error_chain(&e)))
            .and_then(|link| prog.attach_to_link(link).map_err(|e| error_chain(&e)));
        match adopted {
            Ok(id) => {
                // The pin holds the link; this process's descriptor may go.
                if let Ok(l) = prog.take_link(id) {
                    std::mem::drop(FdLink::try_from(l));
                }
                return Ok(true);
            }
            Err(why) => {
                tracing::warn!(iface, "the pinned egress link in {} is stale ({why}); attaching afresh", dir.display());
                let _ = std::fs::remove_file(&pin);
            }
        }
    }
    let attach_err = |reason: String| EgressError::Attach { iface: iface.to_string(), reason };
    let id = prog
        .attach_with_options(iface, TcAttachType::Egress, TcAttachOptions::TcxOrder(LinkOrder::default()))
        .map_err(|e| attach_err(error_chain(&e)))?;
    let pin_err =
        |reason: String| EgressError::Pin { iface: iface.to_string(), path: pin.display().to_string(), reason };
    let link = prog.take_link(id).map_err(|e| pin_err(error_chain(&e)))?;
    let fd = FdLink::try_from(link).map_err(|e| pin_err(error_chain(&e)))?;
    // The pin keeps the link; the descriptor closes when `fd`'s pinned
    // form drops.
    fd.pin(&pin).map_err(|e| pin_err(error_chain(&e)))?;
    Ok(false)
}

impl Learning {
    /// Takes the learning maps out of a loaded counting object and turns
    /// learning on with the default budget.
    pub fn take(ebpf: &mut Ebpf) -> Result<Learning, EgressError> {
        let control = Array::try_from(ebpf::take_map(ebpf, "detector", LEARN_CONTROL_MAP)?)
            .map_err(|e| EgressError::Control(e.to_string()))?;
        let state = PerCpuArray::try_from(ebpf::take_map(ebpf, "detector", LEARN_STATE_MAP)?)
            .map_err(|e| EgressError::Control(e.to_string()))?;
        let mut l = Learning { control, state, enabled: false };
        l.set(true)?;
        Ok(l)
    }

    /// Turns learning on or off (off while the interface is under attack).
    pub fn set(&mut self, enabled: bool) -> Result<(), EgressError> {
        if enabled == self.enabled {
            return Ok(());
        }
        let ctl = LearnControl { enabled: enabled as u32, budget: DEFAULT_LEARN_BUDGET };
        self.control.set(0, ctl, 0).map_err(|e| EgressError::Control(e.to_string()))?;
        self.enabled = enabled;
        Ok(())
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Learning so far, summed over CPUs.
    pub fn counts(&self) -> LearnCounts {
        let mut c = LearnCounts::default();
        if let Ok(per_cpu) = self.state.get(&0, 0) {
            for s in per_cpu.iter() {
                c.learned += s.learned_total;
                c.over_budget += s.over_budget_total;
            }
        }
        c
    }
}
