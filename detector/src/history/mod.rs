//! The incident history, in SQLite in the state directory: every incident
//! with its timeline, and every runbook execution with its steps.
//!
//! - [`db`]: the database, its schema, writes and queries;
//! - [`writer`]: the thread that owns the read-write connection, so the
//!   poll loop and the runbook engine never wait for the disk.

pub mod db;
pub mod writer;

pub use db::{
    report_skipped, Cursor, ExecutionQuery, Page, Query, Skipped, Store, StoreError, DB_FILE, DEFAULT_PAGE, MAX_PAGE,
};
pub use writer::{HistorySender, Writer};

use crate::{
    detect::incident::{Incident, IncidentEvent},
    runbook::record::Execution,
};

/// What the writer thread is asked to do.
#[derive(Clone, Debug)]
pub enum HistoryCmd {
    /// An incident event: the incident as it now is, and a timeline entry.
    Record(Box<IncidentEvent>),
    /// An open incident's current figures (no timeline entry).
    Snapshot(Box<Incident>),
    /// A runbook execution, as it starts, as its steps finish and as it
    /// ends (each write replaces the one before).
    Execution(Box<Execution>),
}

/// Incidents, events and executions for the history's tests.
#[cfg(test)]
pub(crate) mod fixtures {
    use std::path::PathBuf;

    use crate::{
        detect::{
            family::Family,
            incident::{EventKind, Incident, IncidentEvent, Status},
            severity::Severity,
        },
        runbook::record::{Execution, Outcome, StepRecord},
    };

    pub fn incident(id: &str, started_at: u64) -> Incident {
        Incident {
            id: id.into(),
            node: "n1".into(),
            iface: "eth0".into(),
            target: "192.0.2.2".into(),
            hostgroup: "host".into(),
            direction: Default::default(),
            target_prefixes: vec!["192.0.2.2/32".parse().unwrap()],
            families: vec![Family::SynFlood],
            vectors: vec!["syn".into()],
            severity: Severity::High,
            status: Status::Active,
            started_at,
            ended_at: None,
            pps: 10.0,
            bps: 80.0,
            peak_pps: 12.0,
            peak_bps: 96.0,
            top_sources: vec![],
            top_ports: vec![],
            signature: None,
            timeline: vec![],
            capture: None,
        }
    }

    pub fn event(inc: &Incident, kind: EventKind, at: u64, detail: &str) -> IncidentEvent {
        IncidentEvent { kind, at, detail: detail.into(), family: None, incident: inc.clone() }
    }

    pub fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("detector-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    pub fn step(index: usize, kind: &str, at: u64, outcome: Outcome, error: Option<&str>) -> StepRecord {
        StepRecord {
            index,
            kind: kind.into(),
            started_at: at,
            ended_at: at + 5,
            outcome,
            detail: format!("{kind} step {index}"),
            error: error.map(Into::into),
        }
    }

    pub fn execution(incident: &str, runbook: &str, started_at: u64, steps: Vec<StepRecord>) -> Execution {
        Execution {
            id: format!("{incident}/{runbook}/{started_at}"),
            runbook: runbook.into(),
            file_hash: "ab".repeat(32),
            incident_id: incident.into(),
            node: "n1".into(),
            trigger: "opened".into(),
            dry_run: false,
            started_at,
            ended_at: started_at + 100,
            outcome: Execution::outcome_of(&steps, false),
            steps,
        }
    }
}
