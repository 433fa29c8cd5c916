//! Per-target rates: the traffic of each protected address (incoming: to
//! it; outgoing: from it) and of each host group, per class, over one poll.
//! What the detector's network mode reads, as [`crate::rates`] is what the
//! interface-wide view reads. Pure: no clock, no kernel.

use std::net::IpAddr;

use detector_common::CLASS_COUNT;
use serde::{Deserialize, Serialize};

use crate::rates::ClassRate;

/// Which way an attack goes, seen from the protected networks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Towards a protected address: an attack on it.
    #[default]
    Incoming,
    /// From a protected address: a flood it sends (a compromised server).
    Outgoing,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Incoming, Direction::Outgoing];

    pub fn name(self) -> &'static str {
        match self {
            Direction::Incoming => "incoming",
            Direction::Outgoing => "outgoing",
        }
    }

    /// The index the kernel's per-group counters use (`group * 2 + index`).
    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One protected address over one poll interval, in one direction.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetRate {
    pub addr: IpAddr,
    /// Index of its host group in the list the controller installed.
    pub group: usize,
    pub classes: [ClassRate; CLASS_COUNT],
}

/// One host group's totals over one poll interval, in one direction:
/// exact, whatever the number of its addresses that sent or received.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupRate {
    pub group: usize,
    pub direction: Direction,
    pub classes: [ClassRate; CLASS_COUNT],
}

/// One poll's per-target rates of one interface.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TargetsReading {
    /// Tracked addresses that received traffic in the interval.
    pub incoming: Vec<TargetRate>,
    /// Tracked addresses that sent traffic in the interval.
    pub outgoing: Vec<TargetRate>,
    /// Every installed group, both directions (zero rates included).
    pub groups: Vec<GroupRate>,
}

impl TargetsReading {
    pub fn targets(&self, direction: Direction) -> &[TargetRate] {
        match direction {
            Direction::Incoming => &self.incoming,
            Direction::Outgoing => &self.outgoing,
        }
    }

    pub fn group(&self, group: usize, direction: Direction) -> Option<&GroupRate> {
        self.groups.iter().find(|g| g.group == group && g.direction == direction)
    }
}
