//! The BGP subsystem's metrics, registered in the controller's registry
//! by the subsystem itself. Labels are bounded: two types, two changes,
//! the configured neighbors, the refusal reasons of [`Refused::reason`].
//!
//! [`Refused::reason`]: super::check::Refused::reason

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use super::{announce::Kind, gobgp::Peer, plan::Change};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabels {
    r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChangeLabels {
    r#type: String,
    change: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NeighborLabels {
    neighbor: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

/// The refusal reasons, all exported from the start (at 0).
const REASONS: [&str; 6] = ["shape", "outside", "management", "allowlisted", "too_broad", "full"];

#[derive(Clone, Default)]
pub struct BgpMetrics {
    announcements: Family<TypeLabels, Gauge>,
    session_up: Family<NeighborLabels, Gauge>,
    changes: Family<ChangeLabels, Counter>,
    refused: Family<ReasonLabels, Counter>,
    restarts: Counter,
}

impl BgpMetrics {
    /// Registers them; `neighbors` are the configured ones (each exported
    /// as down until its session is seen).
    pub fn register(registry: &mut Registry, neighbors: &[String]) -> BgpMetrics {
        let m = BgpMetrics::default();
        registry.register(
            "detector_bgp_announcements",
            "Announcements in force upstream (or, in dry run, recorded), by type",
            m.announcements.clone(),
        );
        registry.register(
            "detector_bgp_session_up",
            "Whether the BGP session with a configured neighbor is Established",
            m.session_up.clone(),
        );
        registry.register(
            "detector_bgp_changes",
            "Announcements and withdrawals sent to the BGP daemon",
            m.changes.clone(),
        );
        registry.register(
            "detector_bgp_refused",
            "Announcements refused by the safety check, by reason",
            m.refused.clone(),
        );
        registry.register(
            "detector_bgp_daemon_restarts",
            "Times the BGP daemon was started again after it exited",
            m.restarts.clone(),
        );
        for t in [Kind::Blackhole, Kind::Flowspec] {
            m.announcements.get_or_create(&TypeLabels { r#type: t.name().into() }).set(0);
            for c in ["announce", "withdraw"] {
                let _ = m.changes.get_or_create(&ChangeLabels { r#type: t.name().into(), change: c.into() });
            }
        }
        for r in REASONS {
            let _ = m.refused.get_or_create(&ReasonLabels { reason: r.into() });
        }
        for n in neighbors {
            m.session_up.get_or_create(&NeighborLabels { neighbor: n.clone() }).set(0);
        }
        m
    }

    pub fn announcements(&self, counts: &std::collections::BTreeMap<Kind, usize>) {
        for (k, n) in counts {
            self.announcements.get_or_create(&TypeLabels { r#type: k.name().into() }).set(*n as i64);
        }
    }

    /// Sets each configured neighbor's gauge; `peers` the daemon does not
    /// list (it is down) are left out and count as down.
    pub fn sessions(&self, neighbors: &[String], peers: &[Peer]) {
        for n in neighbors {
            let up =
                peers.iter().any(|p| p.address.to_string() == *n && p.state == super::gobgp::SessionState::Established);
            self.session_up.get_or_create(&NeighborLabels { neighbor: n.clone() }).set(i64::from(up));
        }
    }

    pub fn changed(&self, c: &Change) {
        let change = if c.is_withdraw() { "withdraw" } else { "announce" };
        self.changes
            .get_or_create(&ChangeLabels { r#type: c.announcement().kind().name().into(), change: change.into() })
            .inc();
    }

    pub fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&ReasonLabels { reason: reason.into() }).inc();
    }

    pub fn restarted(&self, n: u64) {
        self.restarts.inc_by(n);
    }
}
