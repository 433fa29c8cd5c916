//! What the history keeps of each runbook execution and each step.

use serde::{Deserialize, Serialize};

use crate::detect::incident::time_ms;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    Failed,
    Skipped,
    DryRun,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [Outcome::Ok, Outcome::Failed, Outcome::Skipped, Outcome::DryRun];

    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Skipped => "skipped",
            Outcome::DryRun => "dry_run",
        }
    }

    pub fn from_name(s: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.name() == s)
    }
}

/// One step as it ran.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Position in the runbook, from 0.
    pub index: usize,
    /// `notify`, `webhook`, `mitigate`, `incident`, `note`.
    pub kind: String,
    #[serde(with = "time_ms")]
    pub started_at: u64,
    #[serde(with = "time_ms")]
    pub ended_at: u64,
    pub outcome: Outcome,
    /// What it did (or, in a dry run, would have done). Never a secret.
    pub detail: String,
    /// Why it failed or was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One run of one runbook for one incident event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Execution {
    /// `<incident id>/<runbook>/<started_at ms>`: unique, and sorts by time.
    pub id: String,
    pub runbook: String,
    /// SHA-256 of the runbook file that ran.
    pub file_hash: String,
    pub incident_id: String,
    pub node: String,
    /// The incident event that fired it: `opened`, `severity_changed`,
    /// `family_added`, `resolved`.
    pub trigger: String,
    pub dry_run: bool,
    #[serde(with = "time_ms")]
    pub started_at: u64,
    #[serde(with = "time_ms")]
    pub ended_at: u64,
    /// `ok` when every step was, `failed` when any failed, `dry_run` for a
    /// dry run, `skipped` when nothing ran.
    pub outcome: Outcome,
    pub steps: Vec<StepRecord>,
}

impl Execution {
    /// The overall outcome of a list of steps.
    pub fn outcome_of(steps: &[StepRecord], dry_run: bool) -> Outcome {
        if steps.iter().any(|s| s.outcome == Outcome::Failed) {
            Outcome::Failed
        } else if dry_run {
            Outcome::DryRun
        } else if steps.iter().all(|s| s.outcome == Outcome::Skipped) {
            Outcome::Skipped
        } else {
            Outcome::Ok
        }
    }
}
