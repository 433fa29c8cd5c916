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
    /// A step not run yet.
    Pending,
    /// An execution under way: the history holds it from its start, so a
    /// controller that dies mid-run leaves a trace.
    Running,
    /// An execution (or its step in progress) that the controller's stop
    /// cut short: at shutdown, after the grace, or found `running` in the
    /// history at the next start.
    Interrupted,
}

impl Outcome {
    pub const ALL: [Outcome; 7] = [
        Outcome::Ok,
        Outcome::Failed,
        Outcome::Skipped,
        Outcome::DryRun,
        Outcome::Pending,
        Outcome::Running,
        Outcome::Interrupted,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Skipped => "skipped",
            Outcome::DryRun => "dry_run",
            Outcome::Pending => "pending",
            Outcome::Running => "running",
            Outcome::Interrupted => "interrupted",
        }
    }

    /// True for an execution the history holds as still under way.
    pub fn is_unfinished(self) -> bool {
        matches!(self, Outcome::Running | Outcome::Pending)
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

impl StepRecord {
    /// A step not run yet, listed at `at` (its execution's start).
    pub fn pending(index: usize, kind: &str, at: u64) -> StepRecord {
        StepRecord {
            index,
            kind: kind.to_string(),
            started_at: at,
            ended_at: at,
            outcome: Outcome::Pending,
            detail: String::new(),
            error: None,
        }
    }
}

/// Why an interrupted step did not finish.
pub const STOPPED_DURING: &str = "the controller stopped while this step ran; it may or may not have taken effect";
/// Why the steps after it did not run.
pub const STOPPED_BEFORE: &str = "not run: the controller stopped";

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
    /// When it ended; while it runs, when its record was last written.
    #[serde(with = "time_ms")]
    pub ended_at: u64,
    /// `ok` when every step was, `failed` when any failed, `dry_run` for a
    /// dry run, `skipped` when nothing ran; `running` while it runs (its
    /// steps `pending` until they finish), `interrupted` when the
    /// controller stopped before it finished.
    pub outcome: Outcome,
    pub steps: Vec<StepRecord>,
}

impl Execution {
    /// Marks an unfinished execution as interrupted at `now`. Steps are run
    /// in order and recorded as each finishes, so in an execution that
    /// `started`, its first pending step is the one that was under way: it
    /// becomes `interrupted`; every later one `skipped`. An execution that
    /// never started has all its steps `skipped`. A finished execution is
    /// left as it is.
    pub fn interrupt(&mut self, now: u64, started: bool) {
        if !matches!(self.outcome, Outcome::Running | Outcome::Pending) {
            return;
        }
        let mut under_way = started;
        for s in self.steps.iter_mut().filter(|s| matches!(s.outcome, Outcome::Pending | Outcome::Running)) {
            if under_way {
                s.outcome = Outcome::Interrupted;
                s.error = Some(STOPPED_DURING.into());
                s.ended_at = now.max(s.started_at);
                under_way = false;
            } else {
                s.outcome = Outcome::Skipped;
                s.error = Some(STOPPED_BEFORE.into());
            }
        }
        self.outcome = Outcome::Interrupted;
        self.ended_at = now.max(self.started_at);
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    fn running(done: &[Outcome], pending: usize) -> Execution {
        let mut steps: Vec<StepRecord> = done
            .iter()
            .enumerate()
            .map(|(i, o)| StepRecord { outcome: *o, ..StepRecord::pending(i, "note", 1_000) })
            .collect();
        steps.extend((done.len()..done.len() + pending).map(|i| StepRecord::pending(i, "notify", 1_000)));
        Execution {
            id: "inc/rb/1000".into(),
            runbook: "rb".into(),
            file_hash: String::new(),
            incident_id: "inc".into(),
            node: "n".into(),
            trigger: "opened".into(),
            dry_run: false,
            started_at: 1_000,
            ended_at: 1_000,
            outcome: Outcome::Running,
            steps,
        }
    }

    #[test]
    fn every_outcome_round_trips_by_name() {
        for o in Outcome::ALL {
            assert_eq!(Outcome::from_name(o.name()), Some(o));
            assert_eq!(serde_json::to_string(&o).unwrap(), format!("\"{}\"", o.name()));
        }
        // The names an older history holds still read.
        for old in ["ok", "failed", "skipped", "dry_run"] {
            assert!(Outcome::from_name(old).is_some(), "{old}");
        }
        assert_eq!(Outcome::from_name("done"), None);
    }

    #[test]
    fn an_interrupted_execution_says_what_ran() {
        let mut ex = running(&[Outcome::Ok, Outcome::Failed], 3);
        ex.interrupt(5_000, true);
        assert_eq!(ex.outcome, Outcome::Interrupted);
        assert_eq!(ex.ended_at, 5_000);
        let o: Vec<Outcome> = ex.steps.iter().map(|s| s.outcome).collect();
        assert_eq!(o, [Outcome::Ok, Outcome::Failed, Outcome::Interrupted, Outcome::Skipped, Outcome::Skipped]);
        assert_eq!(ex.steps[2].error.as_deref(), Some(STOPPED_DURING));
        assert_eq!(ex.steps[3].error.as_deref(), Some(STOPPED_BEFORE));
        assert_eq!(ex.steps[0].error, None);

        let mut queued = running(&[], 2);
        queued.interrupt(5_000, false);
        assert_eq!(queued.outcome, Outcome::Interrupted);
        assert!(queued.steps.iter().all(|s| s.outcome == Outcome::Skipped), "nothing ran: {queued:?}");

        let mut done = running(&[Outcome::Ok], 0);
        done.outcome = Outcome::Ok;
        let before = done.clone();
        done.interrupt(9_000, true);
        assert_eq!(done, before, "a finished execution stays as it was");
    }
}
