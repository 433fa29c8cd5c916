//! The history's database: SQLite in the state directory. The writer
//! thread ([`super::writer`]) owns one read-write connection; readers (the
//! API, `detector incidents`, `detector history`) open their own read-only
//! ones, which WAL mode lets run beside it. Incidents and their timelines,
//! runbook executions and their steps live in tables of their own.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use thiserror::Error;

use super::HistoryCmd;
use crate::{
    detect::incident::{EventKind, Incident, IncidentEvent, TimelineEntry},
    runbook::record::{Execution, Outcome, StepRecord},
};

pub const DB_FILE: &str = "detector.db";
const SCHEMA_VERSION: i64 = 1;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Sqlite { path: PathBuf, source: rusqlite::Error },
    #[error("database {path} has schema version {found}, newer than this detector knows ({SCHEMA_VERSION})")]
    TooNew { path: PathBuf, found: i64 },
    #[error("no incident history at {0} yet (the controller creates it on its first start)")]
    Missing(PathBuf),
    #[error("database {path}: a stored record does not parse: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// The database file's identity when it was opened (device, inode):
    /// a file deleted under a running writer is noticed.
    file: Option<(u64, u64)>,
}

/// Which incidents to list.
#[derive(Clone, Copy, Debug, Default)]
pub struct Query {
    pub open_only: bool,
    pub limit: usize,
}

/// Which runbook executions to list.
#[derive(Clone, Debug, Default)]
pub struct ExecutionQuery {
    /// Only executions for this incident id.
    pub incident: Option<String>,
    /// Only executions of the runbook of this name.
    pub runbook: Option<String>,
    /// At most this many, newest first; 0 for all.
    pub limit: usize,
}

impl Store {
    /// Opens (creating if needed) the database in `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        let path = state_dir.join(DB_FILE);
        let err = |source| StoreError::Sqlite { path: path.clone(), source };
        let conn = Connection::open(&path).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(err)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(err)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew { path, found: version });
        }
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS incidents (
                 id TEXT PRIMARY KEY,
                 node TEXT NOT NULL,
                 iface TEXT NOT NULL,
                 status TEXT NOT NULL,
                 started_at INTEGER NOT NULL,
                 data TEXT NOT NULL
             );
             CREATE INDEX IF NOT EXISTS incidents_by_start ON incidents(started_at);
             CREATE TABLE IF NOT EXISTS incident_events (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 incident_id TEXT NOT NULL REFERENCES incidents(id),
                 at INTEGER NOT NULL,
                 kind TEXT NOT NULL,
                 detail TEXT NOT NULL
             );
             CREATE INDEX IF NOT EXISTS events_by_incident ON incident_events(incident_id, seq);
             CREATE TABLE IF NOT EXISTS runbook_executions (
                 id TEXT PRIMARY KEY,
                 runbook TEXT NOT NULL,
                 file_hash TEXT NOT NULL,
                 incident_id TEXT NOT NULL,
                 node TEXT NOT NULL,
                 trigger TEXT NOT NULL,
                 dry_run INTEGER NOT NULL,
                 started_at INTEGER NOT NULL,
                 ended_at INTEGER NOT NULL,
                 outcome TEXT NOT NULL
             );
             CREATE INDEX IF NOT EXISTS executions_by_incident ON runbook_executions(incident_id);
             CREATE INDEX IF NOT EXISTS executions_by_start ON runbook_executions(started_at);
             CREATE TABLE IF NOT EXISTS runbook_steps (
                 execution_id TEXT NOT NULL REFERENCES runbook_executions(id),
                 idx INTEGER NOT NULL,
                 kind TEXT NOT NULL,
                 started_at INTEGER NOT NULL,
                 ended_at INTEGER NOT NULL,
                 outcome TEXT NOT NULL,
                 detail TEXT NOT NULL,
                 error TEXT,
                 PRIMARY KEY (execution_id, idx)
             );
             PRAGMA user_version = 1;",
        )
        .map_err(err)?;
        let file = identity(&path);
        Ok(Store { conn, path, file })
    }

    /// Opens an existing database for reading only.
    pub fn open_read_only(state_dir: &Path) -> Result<Store, StoreError> {
        let path = state_dir.join(DB_FILE);
        if !path.exists() {
            return Err(StoreError::Missing(path));
        }
        let conn =
            Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
                .map_err(|source| StoreError::Sqlite { path: path.clone(), source })?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|source| StoreError::Sqlite { path: path.clone(), source })?;
        Ok(Store { conn, path, file: None })
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        |source| StoreError::Sqlite { path: self.path.clone(), source }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The state directory it lives in.
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// False when the file this store writes is no longer the one at its
    /// path (deleted, or replaced).
    pub fn is_current(&self) -> bool {
        self.file.is_none() || identity(&self.path) == self.file
    }

    /// Does one piece of the writer's work.
    pub fn apply(&mut self, cmd: &HistoryCmd) -> Result<(), StoreError> {
        match cmd {
            HistoryCmd::Record(ev) => self.record(ev),
            HistoryCmd::Snapshot(inc) => self.snapshot(inc),
            HistoryCmd::Execution(ex) => self.record_execution(ex),
        }
    }

    /// Records an event: the incident as it now is, and its timeline entry.
    pub fn record(&mut self, ev: &IncidentEvent) -> Result<(), StoreError> {
        let path = self.path.clone();
        let err = move |source| StoreError::Sqlite { path: path.clone(), source };
        let tx = self.conn.transaction().map_err(&err)?;
        upsert(&tx, &ev.incident).map_err(&err)?;
        tx.execute(
            "INSERT INTO incident_events (incident_id, at, kind, detail) VALUES (?1, ?2, ?3, ?4)",
            params![ev.incident.id, ev.at as i64, ev.kind.name(), ev.detail],
        )
        .map_err(&err)?;
        tx.commit().map_err(&err)
    }

    /// Saves an incident's current figures (no timeline entry).
    pub fn snapshot(&mut self, inc: &Incident) -> Result<(), StoreError> {
        upsert(&self.conn, inc).map(|_| ()).map_err(self.err())
    }

    /// Incidents, newest first, with their timelines.
    pub fn incidents(&self, q: Query) -> Result<Vec<Incident>, StoreError> {
        let sql = format!(
            "SELECT id, data FROM incidents {} ORDER BY started_at DESC LIMIT ?1",
            if q.open_only { "WHERE status != 'resolved'" } else { "" }
        );
        let limit = if q.limit == 0 { i64::MAX } else { q.limit as i64 };
        let rows: Vec<(String, String)> = {
            let mut stmt = self.conn.prepare(&sql).map_err(self.err())?;
            let it = stmt.query_map(params![limit], |r| Ok((r.get(0)?, r.get(1)?))).map_err(self.err())?;
            it.collect::<Result<_, _>>().map_err(self.err())?
        };
        rows.into_iter().map(|(id, data)| self.hydrate(&id, &data)).collect()
    }

    /// One incident with its timeline.
    pub fn incident(&self, id: &str) -> Result<Option<Incident>, StoreError> {
        let data: Option<String> = self
            .conn
            .query_row("SELECT data FROM incidents WHERE id = ?1", params![id], |r| r.get(0))
            .optional()
            .map_err(self.err())?;
        data.map(|d| self.hydrate(id, &d)).transpose()
    }

    /// Incidents of `node` that were open when it last stopped.
    pub fn open_incidents_of(&self, node: &str) -> Result<Vec<Incident>, StoreError> {
        Ok(self.incidents(Query { open_only: true, limit: 0 })?.into_iter().filter(|i| i.node == node).collect())
    }

    /// Records a runbook execution with its steps, in one transaction. A
    /// second write of the same id replaces the first (and all its steps):
    /// an execution is written when it starts and again when it ends.
    pub fn record_execution(&mut self, ex: &Execution) -> Result<(), StoreError> {
        let path = self.path.clone();
        let err = move |source| StoreError::Sqlite { path: path.clone(), source };
        let tx = self.conn.transaction().map_err(&err)?;
        tx.execute("DELETE FROM runbook_steps WHERE execution_id = ?1", params![ex.id]).map_err(&err)?;
        tx.execute(
            "INSERT INTO runbook_executions
                 (id, runbook, file_hash, incident_id, node, trigger, dry_run, started_at, ended_at, outcome)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT(id) DO UPDATE SET
                 runbook = excluded.runbook, file_hash = excluded.file_hash,
                 incident_id = excluded.incident_id, node = excluded.node, trigger = excluded.trigger,
                 dry_run = excluded.dry_run, started_at = excluded.started_at,
                 ended_at = excluded.ended_at, outcome = excluded.outcome",
            params![
                ex.id,
                ex.runbook,
                ex.file_hash,
                ex.incident_id,
                ex.node,
                ex.trigger,
                ex.dry_run,
                ex.started_at as i64,
                ex.ended_at as i64,
                ex.outcome.name()
            ],
        )
        .map_err(&err)?;
        {
            let mut stmt = tx
                .prepare(
                    "INSERT INTO runbook_steps (execution_id, idx, kind, started_at, ended_at, outcome, detail, error)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .map_err(&err)?;
            for st in &ex.steps {
                stmt.execute(params![
                    ex.id,
                    st.index as i64,
                    st.kind,
                    st.started_at as i64,
                    st.ended_at as i64,
                    st.outcome.name(),
                    st.detail,
                    st.error
                ])
                .map_err(&err)?;
            }
        }
        tx.commit().map_err(&err)
    }

    /// Runbook executions, newest first, each with its steps in order.
    pub fn executions(&self, q: ExecutionQuery) -> Result<Vec<Execution>, StoreError> {
        // A database an older detector wrote, read before any newer one
        // opened it for writing, has no such table: it has no executions.
        let has_table: bool = self
            .conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'runbook_executions')",
                [],
                |r| r.get(0),
            )
            .map_err(self.err())?;
        if !has_table {
            return Ok(Vec::new());
        }
        let limit = if q.limit == 0 { i64::MAX } else { q.limit as i64 };
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, runbook, file_hash, incident_id, node, trigger, dry_run, started_at, ended_at, outcome
                 FROM runbook_executions
                 WHERE (?1 IS NULL OR incident_id = ?1) AND (?2 IS NULL OR runbook = ?2)
                 ORDER BY started_at DESC, id DESC
                 LIMIT ?3",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map(params![q.incident, q.runbook, limit], |r| {
                Ok((
                    Execution {
                        id: r.get(0)?,
                        runbook: r.get(1)?,
                        file_hash: r.get(2)?,
                        incident_id: r.get(3)?,
                        node: r.get(4)?,
                        trigger: r.get(5)?,
                        dry_run: r.get(6)?,
                        started_at: r.get::<_, i64>(7)? as u64,
                        ended_at: r.get::<_, i64>(8)? as u64,
                        outcome: Outcome::Ok,
                        steps: Vec::new(),
                    },
                    r.get::<_, String>(9)?,
                ))
            })
            .map_err(self.err())?;
        let mut out = Vec::new();
        for row in rows {
            let (mut ex, outcome) = row.map_err(self.err())?;
            ex.outcome = self.outcome(&ex.id, None, &outcome)?;
            ex.steps = self.steps(&ex.id)?;
            out.push(ex);
        }
        Ok(out)
    }

    fn steps(&self, execution_id: &str) -> Result<Vec<StepRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT idx, kind, started_at, ended_at, outcome, detail, error
                 FROM runbook_steps WHERE execution_id = ?1 ORDER BY idx",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map(params![execution_id], |r| {
                Ok((
                    StepRecord {
                        index: r.get::<_, i64>(0)? as usize,
                        kind: r.get(1)?,
                        started_at: r.get::<_, i64>(2)? as u64,
                        ended_at: r.get::<_, i64>(3)? as u64,
                        outcome: Outcome::Ok,
                        detail: r.get(5)?,
                        error: r.get(6)?,
                    },
                    r.get::<_, String>(4)?,
                ))
            })
            .map_err(self.err())?;
        let mut out = Vec::new();
        for row in rows {
            let (mut st, outcome) = row.map_err(self.err())?;
            st.outcome = self.outcome(execution_id, Some(st.index), &outcome)?;
            out.push(st);
        }
        Ok(out)
    }

    fn outcome(&self, execution_id: &str, step: Option<usize>, name: &str) -> Result<Outcome, StoreError> {
        Outcome::from_name(name).ok_or_else(|| StoreError::Corrupt {
            path: self.path.clone(),
            reason: match step {
                Some(i) => format!("runbook execution {execution_id}, step {i}: outcome '{name}'"),
                None => format!("runbook execution {execution_id}: outcome '{name}'"),
            },
        })
    }

    fn hydrate(&self, id: &str, data: &str) -> Result<Incident, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt { path: self.path.clone(), reason };
        let mut inc: Incident = serde_json::from_str(data).map_err(|e| corrupt(format!("incident {id}: {e}")))?;
        let mut stmt = self
            .conn
            .prepare_cached("SELECT at, kind, detail FROM incident_events WHERE incident_id = ?1 ORDER BY seq")
            .map_err(self.err())?;
        let rows = stmt
            .query_map(params![id], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)))
            .map_err(self.err())?;
        inc.timeline.clear();
        for row in rows {
            let (at, kind, detail) = row.map_err(self.err())?;
            let kind = EventKind::parse(&kind).ok_or_else(|| corrupt(format!("incident {id}: event kind '{kind}'")))?;
            inc.timeline.push(TimelineEntry { at: at as u64, kind, detail });
        }
        Ok(inc)
    }
}

fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl StoreError {
    /// True for a refusal that may pass (a full or read-only disk, an I/O
    /// error, a busy database): the write is worth trying again.
    pub fn is_transient(&self) -> bool {
        use rusqlite::ErrorCode::*;
        match self {
            StoreError::Sqlite { source: rusqlite::Error::SqliteFailure(e, _), .. } => matches!(
                e.code,
                DiskFull
                    | SystemIoFailure
                    | CannotOpen
                    | ReadOnly
                    | DatabaseBusy
                    | DatabaseLocked
                    | FileLockingProtocolFailed
            ),
            _ => false,
        }
    }
}

fn upsert(conn: &Connection, inc: &Incident) -> rusqlite::Result<usize> {
    // The timeline lives in incident_events; the row keeps the rest.
    let mut row = inc.clone();
    row.timeline.clear();
    let data = serde_json::to_string(&row).expect("incidents serialize");
    conn.execute(
        "INSERT INTO incidents (id, node, iface, status, started_at, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT(id) DO UPDATE SET status = excluded.status, data = excluded.data",
        params![inc.id, inc.node, inc.iface, inc.status.name(), inc.started_at as i64, data],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        detect::{incident::Status, severity::Severity},
        history::fixtures::{event, execution, incident, step, temp_dir},
    };

    #[test]
    fn events_build_the_timeline_and_survive_reopening() {
        let dir = std::env::temp_dir().join(format!("detector-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        {
            let mut s = Store::open(&dir).unwrap();
            let mut a = incident("a", 1_000);
            s.record(&event(&a, EventKind::Opened, 1_000, "syn_flood at 10 pps")).unwrap();
            a.severity = Severity::Critical;
            s.record(&event(&a, EventKind::SeverityChanged, 1_500, "high -> critical")).unwrap();
            a.peak_pps = 99.0;
            s.snapshot(&a).unwrap();
            let mut b = incident("b", 5_000);
            s.record(&event(&b, EventKind::Opened, 5_000, "opened")).unwrap();
            b.status = Status::Resolved;
            b.ended_at = Some(9_000);
            s.record(&event(&b, EventKind::Resolved, 9_000, "quiet")).unwrap();
        }
        let s = Store::open_read_only(&dir).unwrap();
        let all = s.incidents(Query::default()).unwrap();
        assert_eq!(all.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), vec!["b", "a"]);
        let a = s.incident("a").unwrap().unwrap();
        assert_eq!(a.severity, Severity::Critical);
        assert_eq!(a.peak_pps, 99.0);
        assert_eq!(
            a.timeline.iter().map(|t| t.kind).collect::<Vec<_>>(),
            vec![EventKind::Opened, EventKind::SeverityChanged]
        );
        assert_eq!(a.timeline[1].detail, "high -> critical");
        let open = s.open_incidents_of("n1").unwrap();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].id, "a");
        assert!(s.open_incidents_of("other").unwrap().is_empty());
        assert_eq!(s.incidents(Query { open_only: false, limit: 1 }).unwrap().len(), 1);
        assert!(s.incident("zzz").unwrap().is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn ids(list: &[Execution]) -> Vec<&str> {
        list.iter().map(|e| e.id.as_str()).collect()
    }

    #[test]
    fn executions_round_trip_with_their_steps_in_order() {
        let dir = temp_dir("exec-round-trip");
        let mut ex = execution(
            "inc-a",
            "block",
            1_000,
            vec![
                step(0, "notify", 1_000, Outcome::Ok, None),
                step(1, "webhook", 1_010, Outcome::Failed, Some("HTTP 500")),
                step(2, "mitigate", 1_020, Outcome::Skipped, Some("an earlier step failed")),
            ],
        );
        ex.dry_run = true;
        ex.trigger = "severity_changed".into();
        {
            let mut s = Store::open(&dir).unwrap();
            s.record_execution(&ex).unwrap();
        }
        // Reopening for writing keeps what is there.
        drop(Store::open(&dir).unwrap());
        let s = Store::open_read_only(&dir).unwrap();
        let got = s.executions(ExecutionQuery::default()).unwrap();
        assert_eq!(got, vec![ex.clone()]);
        assert_eq!(got[0].outcome, Outcome::Failed);
        assert_eq!(got[0].steps.iter().map(|s| s.index).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(got[0].steps[1].error.as_deref(), Some("HTTP 500"));
        assert_eq!(got[0].steps[0].error, None);
        // The JSON the API and `detector history --json` print round-trips too.
        let json = serde_json::to_string(&got[0]).unwrap();
        assert_eq!(serde_json::from_str::<Execution>(&json).unwrap(), ex);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_second_write_of_an_execution_replaces_the_first() {
        let dir = temp_dir("exec-replace");
        let mut s = Store::open(&dir).unwrap();
        let mut ex = execution("inc-a", "block", 1_000, vec![step(0, "notify", 1_000, Outcome::Ok, None)]);
        // As it starts: one step done, the rest to come.
        ex.steps.push(step(1, "webhook", 1_010, Outcome::Skipped, Some("not run yet")));
        ex.steps.push(step(2, "note", 1_020, Outcome::Skipped, Some("not run yet")));
        ex.ended_at = ex.started_at;
        s.record_execution(&ex).unwrap();
        // As it ends: fewer steps than the first write, other outcomes.
        let mut end = execution("inc-a", "block", 1_000, vec![step(0, "notify", 1_000, Outcome::Ok, None)]);
        end.steps.push(step(1, "webhook", 1_010, Outcome::Failed, Some("timeout")));
        end.outcome = Outcome::Failed;
        end.ended_at = 2_000;
        s.record_execution(&end).unwrap();
        let got = s.executions(ExecutionQuery::default()).unwrap();
        assert_eq!(got, vec![end]);
        let steps: i64 = s.conn.query_row("SELECT COUNT(*) FROM runbook_steps", [], |r| r.get(0)).unwrap();
        assert_eq!(steps, 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn executions_filter_order_and_limit() {
        let dir = temp_dir("exec-filter");
        let mut s = Store::open(&dir).unwrap();
        // Written out of order, on purpose.
        for (inc, rb, at) in [
            ("inc-a", "notify", 3_000),
            ("inc-a", "block", 1_000),
            ("inc-b", "block", 4_000),
            ("inc-b", "notify", 2_000),
        ] {
            s.record_execution(&execution(inc, rb, at, vec![step(0, "note", at, Outcome::Ok, None)])).unwrap();
        }
        let q = |incident: Option<&str>, runbook: Option<&str>, limit| ExecutionQuery {
            incident: incident.map(Into::into),
            runbook: runbook.map(Into::into),
            limit,
        };
        let all = s.executions(q(None, None, 0)).unwrap();
        assert_eq!(ids(&all), vec!["inc-b/block/4000", "inc-a/notify/3000", "inc-b/notify/2000", "inc-a/block/1000"]);
        assert!(all.iter().all(|e| e.steps.len() == 1));
        assert_eq!(
            ids(&s.executions(q(Some("inc-a"), None, 0)).unwrap()),
            vec!["inc-a/notify/3000", "inc-a/block/1000"]
        );
        assert_eq!(
            ids(&s.executions(q(None, Some("block"), 0)).unwrap()),
            vec!["inc-b/block/4000", "inc-a/block/1000"]
        );
        assert_eq!(ids(&s.executions(q(Some("inc-b"), Some("notify"), 0)).unwrap()), vec!["inc-b/notify/2000"]);
        assert!(s.executions(q(Some("inc-c"), None, 0)).unwrap().is_empty());
        assert!(s.executions(q(Some("inc-a"), Some("nope"), 0)).unwrap().is_empty());
        assert_eq!(ids(&s.executions(q(None, None, 2)).unwrap()), vec!["inc-b/block/4000", "inc-a/notify/3000"]);
        assert_eq!(ids(&s.executions(q(Some("inc-a"), None, 1)).unwrap()), vec!["inc-a/notify/3000"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_database_without_execution_tables_has_no_executions() {
        let dir = temp_dir("exec-old-db");
        Connection::open(dir.join(DB_FILE))
            .unwrap()
            .execute_batch("CREATE TABLE incidents (id TEXT PRIMARY KEY); PRAGMA user_version = 1;")
            .unwrap();
        let s = Store::open_read_only(&dir).unwrap();
        assert!(s.executions(ExecutionQuery::default()).unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_unknown_stored_outcome_is_corrupt() {
        let dir = temp_dir("exec-corrupt");
        let mut s = Store::open(&dir).unwrap();
        s.record_execution(&execution("inc-a", "block", 1_000, vec![])).unwrap();
        s.conn.execute("UPDATE runbook_executions SET outcome = 'weird'", []).unwrap();
        let e = s.executions(ExecutionQuery::default()).unwrap_err();
        assert!(e.to_string().contains("runbook execution inc-a/block/1000: outcome 'weird'"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_missing_database_is_said_so() {
        let e = Store::open_read_only(Path::new("/nonexistent/state")).err().unwrap();
        assert!(e.to_string().contains("no incident history at /nonexistent/state/detector.db"), "{e}");
    }
}
