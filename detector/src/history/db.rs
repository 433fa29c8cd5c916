//! The history's database: SQLite in the state directory. The writer
//! thread ([`super::writer`]) owns one read-write connection; readers (the
//! API, `detector incidents`, `detector history`) open their own read-only
//! ones, which WAL mode lets run beside it. Incidents and their timelines,
//! runbook executions and their steps live in tables of their own.
//!
//! Two promises to whoever reads it:
//!
//! - **Every listing is a page.** At most [`MAX_PAGE`] rows come back at
//!   once, newest first, with a [`Cursor`] to the next page; a reader
//!   walks the whole history a page at a time, in bounded memory.
//! - **One bad row never hides the rest.** A row that does not parse (an
//!   incident's JSON, an event kind, an execution's or a step's outcome, a
//!   column of the wrong type) is left out of the answer and named in the
//!   page's [`Skipped`] list; the rest of the history reads as usual.
//!
//! A database file that is not one, or fails SQLite's `quick_check`, is
//! moved aside by [`Store::open`] (the controller's start) and a new one
//! begun, so a damaged file never stops detection.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    str::FromStr,
    sync::Mutex,
};

use rusqlite::{params, types::Value, Connection, OpenFlags, OptionalExtension, Row};
use serde::Serialize;
use thiserror::Error;

use super::HistoryCmd;
use crate::{
    detect::incident::{time_ms, EventKind, Incident, IncidentEvent, TimelineEntry},
    runbook::record::{Execution, Outcome, StepRecord},
};

pub const DB_FILE: &str = "detector.db";
const SCHEMA_VERSION: i64 = 1;

/// The most rows one page of a listing holds.
pub const MAX_PAGE: usize = 1000;
/// A page's size when none is asked for.
pub const DEFAULT_PAGE: usize = 100;

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
    #[error(
        "database {path} is unreadable ({reason}); the next `detector run` moves it aside to {DB_FILE}.unreadable-<time> and starts a new history, or move it yourself (`sqlite3 FILE .recover` may save what is left)"
    )]
    Unreadable { path: PathBuf, reason: String },
    #[error("database {path} is unreadable ({reason}) and cannot be moved aside to {aside}: {source}")]
    MoveAside { path: PathBuf, reason: String, aside: PathBuf, source: std::io::Error },
}

/// Maps SQLite's errors: a file that is not a database, or is damaged,
/// becomes [`StoreError::Unreadable`]; anything else stays what it was.
fn sql_error(path: &Path, source: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode::{DatabaseCorrupt, NotADatabase};
    match &source {
        rusqlite::Error::SqliteFailure(e, _) if matches!(e.code, NotADatabase | DatabaseCorrupt) => {
            StoreError::Unreadable { path: path.to_path_buf(), reason: source.to_string() }
        }
        _ => StoreError::Sqlite { path: path.to_path_buf(), source },
    }
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// The database file's identity when it was opened (device, inode):
    /// a file deleted under a running writer is noticed.
    file: Option<(u64, u64)>,
}

/// Where a page starts: just after the row with this start time and id
/// (the `next` of the page before). Written `<started_at ms>,<id>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub started_at: i64,
    pub id: String,
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{}", self.started_at, self.id)
    }
}

impl FromStr for Cursor {
    type Err = String;

    fn from_str(s: &str) -> Result<Cursor, String> {
        let bad = || format!("'{s}' is not a page cursor (pass the `next` of the previous page)");
        let (at, id) = s.split_once(',').ok_or_else(bad)?;
        Ok(Cursor { started_at: at.parse().map_err(|_| bad())?, id: id.to_string() })
    }
}

impl Serialize for Cursor {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A row left out of an answer because it does not parse.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// The incident or execution it belongs to (`rowid N` if even that is
    /// unreadable).
    pub id: String,
    /// What does not parse: the record itself, or one of its timeline
    /// events or steps (the record is then listed without it).
    pub reason: String,
}

/// One page of a listing, newest first.
#[derive(Clone, Debug, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<Cursor>,
    /// Rows of this page left out because they do not parse.
    pub skipped: Vec<Skipped>,
}

impl<T> Default for Page<T> {
    fn default() -> Self {
        Page { items: Vec::new(), next: None, skipped: Vec::new() }
    }
}

/// Which incidents to list.
#[derive(Clone, Debug, Default)]
pub struct Query {
    pub open_only: bool,
    /// At most this many (0: [`DEFAULT_PAGE`]; above [`MAX_PAGE`]: that).
    pub limit: usize,
    /// Start after this row (the previous page's `next`).
    pub before: Option<Cursor>,
}

/// Which runbook executions to list.
#[derive(Clone, Debug, Default)]
pub struct ExecutionQuery {
    /// Only executions for this incident id.
    pub incident: Option<String>,
    /// Only executions of the runbook of this name.
    pub runbook: Option<String>,
    /// At most this many (0: [`DEFAULT_PAGE`]; above [`MAX_PAGE`]: that).
    pub limit: usize,
    /// Start after this row (the previous page's `next`).
    pub before: Option<Cursor>,
}

/// Ends a listing's query: rows after `before` (newest first, by start
/// time then id), and one more than `limit`, which says whether a next
/// page exists.
fn page_clause(sql: &mut String, args: &mut Vec<Value>, before: Option<&Cursor>, limit: usize) {
    if let Some(c) = before {
        sql.push_str(" AND (started_at < ? OR (started_at = ? AND id < ?))");
        args.extend([c.started_at.into(), c.started_at.into(), c.id.clone().into()]);
    }
    sql.push_str(" ORDER BY started_at DESC, id DESC LIMIT ?");
    args.push((limit as i64 + 1).into());
}

fn page_size(limit: usize) -> usize {
    if limit == 0 {
        DEFAULT_PAGE
    } else {
        limit.min(MAX_PAGE)
    }
}

/// Logs each skipped row the first time this process meets it, so a
/// dashboard polling the API does not repeat the same line every second.
pub fn report_skipped(path: &Path, skipped: &[Skipped]) {
    static SEEN: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    /// Past this many distinct rows, every one is logged (the set stays bounded).
    const REMEMBERED: usize = 10_000;
    if skipped.is_empty() {
        return;
    }
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    let seen = seen.get_or_insert_with(HashSet::new);
    for s in skipped {
        let key = format!("{}\u{0}{}\u{0}{}", path.display(), s.id, s.reason);
        if seen.contains(&key) {
            continue;
        }
        if seen.len() < REMEMBERED {
            seen.insert(key);
        }
        tracing::warn!(database = %path.display(), id = %s.id, "skipped a history row that does not parse: {}", s.reason);
    }
}

/// An `incidents` row as read, before its JSON is parsed.
struct IncidentRow {
    rowid: i64,
    id: Option<String>,
    started_at: Option<i64>,
    data: Result<String, String>,
}

impl IncidentRow {
    fn read(r: &Row) -> rusqlite::Result<IncidentRow> {
        Ok(IncidentRow {
            rowid: r.get(0)?,
            id: r.get(1).ok(),
            started_at: r.get(2).ok(),
            data: r.get::<_, String>(3).map_err(|e| e.to_string()),
        })
    }

    fn name(&self) -> String {
        self.id.clone().unwrap_or_else(|| format!("rowid {}", self.rowid))
    }
}

/// The cursor just after a row. A start time that is not an integer (a
/// hand-edited row) sorts before every integer in SQLite's descending
/// order; `i64::MAX` continues after it.
fn cursor_after(started_at: Option<i64>, id: &Option<String>) -> Cursor {
    Cursor { started_at: started_at.unwrap_or(i64::MAX), id: id.clone().unwrap_or_default() }
}

impl Store {
    /// Opens (creating if needed) the database in `state_dir`. A file that
    /// is not a database, or fails SQLite's `quick_check`, is moved aside
    /// (with its `-wal` and `-shm`) to `detector.db.unreadable-<time>`, the
    /// move is logged with both paths, and a new database is begun: a
    /// damaged history must not keep detection from starting.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        let path = state_dir.join(DB_FILE);
        match Self::open_checked(&path) {
            Err(StoreError::Unreadable { reason, .. }) => {
                let aside = move_aside(&path, &reason)?;
                tracing::error!(
                    "database {} is unreadable ({reason}); moved it aside to {} and started a new history (`sqlite3 {} .recover` may save what is left of the old one)",
                    path.display(),
                    aside.display(),
                    aside.display()
                );
                Self::open_checked(&path)
            }
            other => other,
        }
    }

    fn open_checked(path: &Path) -> Result<Store, StoreError> {
        let err = |source| sql_error(path, source);
        let conn = Connection::open(path).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(err)?;
        // Checks every page's structure (not the indexes' contents): a few
        // milliseconds for thousands of incidents, once per start.
        let check: String = conn.query_row("PRAGMA quick_check(1)", [], |r| r.get(0)).map_err(err)?;
        if check != "ok" {
            return Err(StoreError::Unreadable { path: path.to_path_buf(), reason: format!("quick_check: {check}") });
        }
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(err)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew { path: path.to_path_buf(), found: version });
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
             CREATE INDEX IF NOT EXISTS incidents_by_start_id ON incidents(started_at, id);
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
        let file = identity(path);
        Ok(Store { conn, path: path.to_path_buf(), file })
    }

    /// Opens an existing database for reading only. A damaged file is
    /// reported ([`StoreError::Unreadable`], with the path and what to do),
    /// never moved: only the controller does that.
    pub fn open_read_only(state_dir: &Path) -> Result<Store, StoreError> {
        let path = state_dir.join(DB_FILE);
        if !path.exists() {
            return Err(StoreError::Missing(path));
        }
        let err = |source| sql_error(&path, source);
        let conn =
            Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
                .map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(err)?;
        // SQLite reads the header lazily: a file that is not a database
        // says so here, at open, rather than in the middle of a listing.
        conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0)).map_err(err)?;
        Ok(Store { conn, path, file: None })
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        |source| sql_error(&self.path, source)
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
        let err = move |source| sql_error(&path, source);
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

    /// One page of incidents, newest first, with their timelines; rows that
    /// do not parse are left out and reported in the log (once).
    pub fn incidents(&self, q: Query) -> Result<Vec<Incident>, StoreError> {
        let page = self.incident_page(&q)?;
        report_skipped(&self.path, &page.skipped);
        Ok(page.items)
    }

    /// One page of incidents, newest first, with their timelines, the
    /// cursor to the next page and the rows left out.
    pub fn incident_page(&self, q: &Query) -> Result<Page<Incident>, StoreError> {
        self.incident_page_of(q, None)
    }

    fn incident_page_of(&self, q: &Query, node: Option<&str>) -> Result<Page<Incident>, StoreError> {
        let limit = page_size(q.limit);
        let mut sql = String::from("SELECT rowid, id, started_at, data FROM incidents WHERE 1");
        let mut args: Vec<Value> = Vec::new();
        if q.open_only {
            sql += " AND status != 'resolved'";
        }
        if let Some(n) = node {
            sql += " AND node = ?";
            args.push(n.to_string().into());
        }
        page_clause(&mut sql, &mut args, q.before.as_ref(), limit);
        let rows: Vec<IncidentRow> = {
            let mut stmt = self.conn.prepare(&sql).map_err(self.err())?;
            let it = stmt.query_map(rusqlite::params_from_iter(args), IncidentRow::read).map_err(self.err())?;
            it.collect::<Result<_, _>>().map_err(self.err())?
        };
        let more = rows.len() > limit;
        let mut rows = rows;
        rows.truncate(limit);
        let ids: Vec<&str> = rows.iter().filter_map(|r| r.id.as_deref()).collect();
        let mut events = self.events_of(&ids)?;
        let mut page = Page::default();
        for row in &rows {
            page.next = Some(cursor_after(row.started_at, &row.id));
            let name = row.name();
            let parsed = match (&row.id, &row.data) {
                (Some(id), Ok(data)) => {
                    Self::hydrate(id, data, events.remove(id).unwrap_or_default(), &mut page.skipped)
                }
                (None, _) => Err("the id is not text".to_string()),
                (_, Err(e)) => Err(format!("its data is unreadable: {e}")),
            };
            match parsed {
                Ok(inc) => page.items.push(inc),
                Err(reason) => page.skipped.push(Skipped { id: name, reason }),
            }
        }
        if !more {
            page.next = None;
        }
        Ok(page)
    }

    /// One incident with its timeline (timeline events that do not parse
    /// are left out and logged); an incident whose own row does not parse
    /// is an error that names it.
    pub fn incident(&self, id: &str) -> Result<Option<Incident>, StoreError> {
        Ok(self.incident_report(id)?.map(|(inc, skipped)| {
            report_skipped(&self.path, &skipped);
            inc
        }))
    }

    /// As [`Store::incident`], with the timeline events left out.
    pub fn incident_report(&self, id: &str) -> Result<Option<(Incident, Vec<Skipped>)>, StoreError> {
        let data: Option<Result<String, String>> = self
            .conn
            .query_row("SELECT data FROM incidents WHERE id = ?1", params![id], |r| {
                Ok(r.get::<_, String>(0).map_err(|e| e.to_string()))
            })
            .optional()
            .map_err(self.err())?;
        let Some(data) = data else { return Ok(None) };
        let corrupt = |reason: String| StoreError::Corrupt {
            path: self.path.clone(),
            reason: format!("incident {id}: {reason}"),
        };
        let data = data.map_err(corrupt)?;
        let mut skipped = Vec::new();
        let events = self.events_of(&[id])?.remove(id).unwrap_or_default();
        let inc = Self::hydrate(id, &data, events, &mut skipped).map_err(corrupt)?;
        Ok(Some((inc, skipped)))
    }

    /// Incidents of `node` that were open when it last stopped. One that
    /// does not parse is skipped and logged, so the controller starts (and
    /// resumes the others).
    pub fn open_incidents_of(&self, node: &str) -> Result<Vec<Incident>, StoreError> {
        let mut q = Query { open_only: true, limit: MAX_PAGE, before: None };
        let mut out = Vec::new();
        loop {
            let page = self.incident_page_of(&q, Some(node))?;
            for s in &page.skipped {
                tracing::error!(
                    database = %self.path.display(),
                    id = %s.id,
                    "an incident open at the last stop cannot be resumed, its row does not parse ({}); it stays in the history as it is",
                    s.reason
                );
            }
            out.extend(page.items);
            match page.next {
                Some(next) => q.before = Some(next),
                None => return Ok(out),
            }
        }
    }

    /// Records a runbook execution with its steps, in one transaction. A
    /// second write of the same id replaces the first (and all its steps):
    /// an execution is written when it starts and again when it ends.
    pub fn record_execution(&mut self, ex: &Execution) -> Result<(), StoreError> {
        let path = self.path.clone();
        let err = move |source| sql_error(&path, source);
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

    /// False for a database an older detector wrote, read before any newer
    /// one opened it for writing: it has no executions table, so no
    /// executions.
    fn has_executions(&self) -> Result<bool, StoreError> {
        self.conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'runbook_executions')",
                [],
                |r| r.get(0),
            )
            .map_err(self.err())
    }

    /// Every execution recorded for `incident`, newest first.
    pub fn executions_of(&self, incident: &str) -> Result<Vec<Execution>, StoreError> {
        let mut q = ExecutionQuery { incident: Some(incident.into()), runbook: None, limit: MAX_PAGE, before: None };
        let mut out = Vec::new();
        loop {
            let page = self.execution_page(&q)?;
            report_skipped(&self.path, &page.skipped);
            out.extend(page.items);
            match page.next {
                Some(c) => q.before = Some(c),
                None => return Ok(out),
            }
        }
    }

    /// The incidents with executions the last stop left running or pending
    /// (a controller killed mid-run): their runs are to be recorded as
    /// interrupted.
    pub fn incidents_with_unfinished_executions(&self) -> Result<Vec<String>, StoreError> {
        if !self.has_executions()? {
            return Ok(Vec::new());
        }
        let mut stmt = self
            .conn
            .prepare("SELECT DISTINCT incident_id FROM runbook_executions WHERE outcome IN ('running', 'pending')")
            .map_err(self.err())?;
        let ids = stmt.query_map([], |r| r.get::<_, String>(0)).map_err(self.err())?;
        ids.collect::<Result<_, _>>().map_err(self.err())
    }

    /// One page of runbook executions, newest first, each with its steps in
    /// order; rows that do not parse are left out and logged (once).
    pub fn executions(&self, q: ExecutionQuery) -> Result<Vec<Execution>, StoreError> {
        let page = self.execution_page(&q)?;
        report_skipped(&self.path, &page.skipped);
        Ok(page.items)
    }

    /// One page of runbook executions, newest first, each with its steps in
    /// order, the cursor to the next page and the rows left out.
    pub fn execution_page(&self, q: &ExecutionQuery) -> Result<Page<Execution>, StoreError> {
        if !self.has_executions()? {
            return Ok(Page::default());
        }
        let limit = page_size(q.limit);
        let mut sql = String::from(
            "SELECT rowid, id, runbook, file_hash, incident_id, node, trigger, dry_run, started_at, ended_at, outcome
             FROM runbook_executions WHERE 1",
        );
        let mut args: Vec<Value> = Vec::new();
        if let Some(i) = &q.incident {
            sql += " AND incident_id = ?";
            args.push(i.clone().into());
        }
        if let Some(r) = &q.runbook {
            sql += " AND runbook = ?";
            args.push(r.clone().into());
        }
        page_clause(&mut sql, &mut args, q.before.as_ref(), limit);
        let rows: Vec<ExecutionRow> = {
            let mut stmt = self.conn.prepare(&sql).map_err(self.err())?;
            let it = stmt
                .query_map(rusqlite::params_from_iter(args), |r| {
                    Ok((r.get(0)?, r.get(1).ok(), r.get(8).ok(), execution_row(r).map_err(|e| e.to_string())))
                })
                .map_err(self.err())?;
            it.collect::<Result<_, _>>().map_err(self.err())?
        };
        let more = rows.len() > limit;
        let mut page = Page::default();
        for (rowid, id, started_at, parsed) in rows.into_iter().take(limit) {
            page.next = Some(cursor_after(started_at, &id));
            let name = id.unwrap_or_else(|| format!("rowid {rowid}"));
            let (mut ex, outcome) = match parsed {
                Ok(p) => p,
                Err(e) => {
                    page.skipped.push(Skipped { id: name, reason: format!("a column is unreadable: {e}") });
                    continue;
                }
            };
            let Some(outcome) = Outcome::from_name(&outcome) else {
                page.skipped.push(Skipped { id: name, reason: format!("unknown outcome '{outcome}'") });
                continue;
            };
            ex.outcome = outcome;
            ex.steps = self.steps(&ex.id, &mut page.skipped)?;
            page.items.push(ex);
        }
        if !more {
            page.next = None;
        }
        Ok(page)
    }

    /// An execution's steps in order; one that does not parse is left out
    /// and added to `skipped`.
    fn steps(&self, execution_id: &str, skipped: &mut Vec<Skipped>) -> Result<Vec<StepRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT rowid, idx, kind, started_at, ended_at, outcome, detail, error
                 FROM runbook_steps WHERE execution_id = ?1 ORDER BY idx",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map(params![execution_id], |r| {
                let rowid: i64 = r.get(0)?;
                let step = (|| -> rusqlite::Result<(StepRecord, String)> {
                    Ok((
                        StepRecord {
                            index: r.get::<_, i64>(1)? as usize,
                            kind: r.get(2)?,
                            started_at: r.get::<_, i64>(3)? as u64,
                            ended_at: r.get::<_, i64>(4)? as u64,
                            outcome: Outcome::Ok,
                            detail: r.get(6)?,
                            error: r.get(7)?,
                        },
                        r.get::<_, String>(5)?,
                    ))
                })();
                Ok((rowid, step.map_err(|e| e.to_string())))
            })
            .map_err(self.err())?;
        let mut out = Vec::new();
        for row in rows {
            let (rowid, step) = row.map_err(self.err())?;
            let (mut st, outcome) = match step {
                Ok(s) => s,
                Err(e) => {
                    skipped.push(Skipped {
                        id: execution_id.to_string(),
                        reason: format!("step (rowid {rowid}): a column is unreadable: {e}"),
                    });
                    continue;
                }
            };
            match Outcome::from_name(&outcome) {
                Some(o) => st.outcome = o,
                None => {
                    skipped.push(Skipped {
                        id: execution_id.to_string(),
                        reason: format!("step {}: unknown outcome '{outcome}'", st.index),
                    });
                    continue;
                }
            }
            out.push(st);
        }
        Ok(out)
    }

    /// The timeline events of these incidents, in order, read in one query
    /// (a page of a thousand incidents is one query, not a thousand).
    fn events_of(&self, ids: &[&str]) -> Result<HashMap<String, Vec<EventRow>>, StoreError> {
        let mut out: HashMap<String, Vec<EventRow>> = HashMap::new();
        if ids.is_empty() {
            return Ok(out);
        }
        let sql = format!(
            "SELECT incident_id, seq, at, kind, detail FROM incident_events WHERE incident_id IN ({}) ORDER BY incident_id, seq",
            vec!["?"; ids.len()].join(",")
        );
        let mut stmt = self.conn.prepare(&sql).map_err(self.err())?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(ids), |r| {
                let (id, seq): (String, i64) = (r.get(0)?, r.get(1)?);
                let fields =
                    (|| -> rusqlite::Result<(i64, String, String)> { Ok((r.get(2)?, r.get(3)?, r.get(4)?)) })();
                Ok((id, seq, fields.map_err(|e| e.to_string())))
            })
            .map_err(self.err())?;
        for row in rows {
            let (id, seq, fields) = row.map_err(self.err())?;
            out.entry(id).or_default().push((seq, fields));
        }
        Ok(out)
    }

    /// The incident in `data` with its timeline from `events`; `Err(reason)`
    /// if the row does not parse. Events that do not parse are added to
    /// `skipped`.
    fn hydrate(id: &str, data: &str, events: Vec<EventRow>, skipped: &mut Vec<Skipped>) -> Result<Incident, String> {
        let mut inc: Incident = serde_json::from_str(data).map_err(|e| format!("its data does not parse: {e}"))?;
        inc.timeline.clear();
        for (seq, fields) in events {
            let reason = match fields {
                Ok((at, kind, detail)) => match EventKind::parse(&kind) {
                    Some(kind) => {
                        inc.timeline.push(TimelineEntry { at: at as u64, kind, detail });
                        continue;
                    }
                    None => format!("timeline event {seq}: unknown kind '{kind}'"),
                },
                Err(e) => format!("timeline event {seq}: a column is unreadable: {e}"),
            };
            skipped.push(Skipped { id: id.to_string(), reason });
        }
        Ok(inc)
    }
}

/// A timeline event as read: its sequence number, and (at, kind, detail)
/// or why it does not read.
type EventRow = (i64, Result<(i64, String, String), String>);

/// A `runbook_executions` row as read: rowid, id, start time (for the
/// cursor), and the execution with its outcome's name, or why it does not
/// read.
type ExecutionRow = (i64, Option<String>, Option<i64>, Result<(Execution, String), String>);

/// A `runbook_executions` row, outcome still a name (columns from 1).
fn execution_row(r: &Row) -> rusqlite::Result<(Execution, String)> {
    Ok((
        Execution {
            id: r.get(1)?,
            runbook: r.get(2)?,
            file_hash: r.get(3)?,
            incident_id: r.get(4)?,
            node: r.get(5)?,
            trigger: r.get(6)?,
            dry_run: r.get(7)?,
            started_at: r.get::<_, i64>(8)? as u64,
            ended_at: r.get::<_, i64>(9)? as u64,
            outcome: Outcome::Ok,
            steps: Vec::new(),
        },
        r.get::<_, String>(10)?,
    ))
}

/// Moves an unreadable database (and its `-wal` and `-shm`) aside to
/// `detector.db.unreadable-<time>`; returns where it went.
fn move_aside(path: &Path, reason: &str) -> Result<PathBuf, StoreError> {
    // 2026-11-24T22:35:01.123Z -> 20261124T223501.123Z
    let stamp: String = time_ms::rfc3339(crate::clock::now_ms()).chars().filter(|c| !matches!(c, '-' | ':')).collect();
    let aside = path.with_file_name(format!("{DB_FILE}.unreadable-{stamp}"));
    std::fs::rename(path, &aside).map_err(|source| StoreError::MoveAside {
        path: path.to_path_buf(),
        reason: reason.to_string(),
        aside: aside.clone(),
        source,
    })?;
    for suffix in ["-wal", "-shm"] {
        let from = PathBuf::from(format!("{}{suffix}", path.display()));
        if from.exists() {
            let _ = std::fs::rename(&from, format!("{}{suffix}", aside.display()));
        }
    }
    Ok(aside)
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
    // Cached: an open incident's row is written again every few polls.
    conn.prepare_cached(
        "INSERT INTO incidents (id, node, iface, status, started_at, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT(id) DO UPDATE SET status = excluded.status, data = excluded.data",
    )?
    .execute(params![inc.id, inc.node, inc.iface, inc.status.name(), inc.started_at as i64, data])
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
        assert_eq!(s.incidents(Query { limit: 1, ..Query::default() }).unwrap().len(), 1);
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
            before: None,
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
    fn unfinished_executions_are_found_and_all_of_an_incident_read() {
        let dir = temp_dir("exec-unfinished");
        let mut s = Store::open(&dir).unwrap();
        for i in 0..(MAX_PAGE + 5) as u64 {
            s.record_execution(&execution("inc-a", "notify", 1_000 + i, vec![])).unwrap();
        }
        let mut running = execution("inc-b", "block", 5_000, vec![step(0, "mitigate", 5_000, Outcome::Running, None)]);
        running.outcome = Outcome::Running;
        s.record_execution(&running).unwrap();
        s.record_execution(&execution("inc-c", "block", 6_000, vec![])).unwrap();
        assert_eq!(s.incidents_with_unfinished_executions().unwrap(), vec!["inc-b".to_string()]);
        assert_eq!(s.executions_of("inc-a").unwrap().len(), MAX_PAGE + 5, "every page is read");
        assert_eq!(s.executions_of("inc-b").unwrap(), vec![running]);
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
    fn pages_walk_every_incident_once_in_order() {
        let dir = temp_dir("paging");
        let mut s = Store::open(&dir).unwrap();
        // Pairs share a start time: the id breaks the tie.
        let n = 2_345u64;
        for i in 0..n {
            let mut inc = incident(&format!("inc-{i:05}"), 1_000 + i / 2);
            if i % 3 == 0 {
                inc.status = Status::Resolved;
            }
            s.snapshot(&inc).unwrap();
        }
        let walk = |open_only: bool, limit: usize| {
            let mut seen = Vec::new();
            let mut q = Query { open_only, limit, before: None };
            let mut pages = 0;
            loop {
                let page = s.incident_page(&q).unwrap();
                assert!(page.items.len() <= limit);
                assert!(page.skipped.is_empty());
                pages += 1;
                seen.extend(page.items.into_iter().map(|i| (i.started_at, i.id)));
                match page.next {
                    // The cursor goes through its text form, as a client's would.
                    Some(next) => q.before = Some(next.to_string().parse().unwrap()),
                    None => return (seen, pages),
                }
            }
        };
        let (all, pages) = walk(false, 1000);
        assert_eq!(pages, 3);
        assert_eq!(all.len(), n as usize);
        let mut expected = all.clone();
        expected.sort_by(|a, b| b.cmp(a));
        expected.dedup();
        assert_eq!(all, expected, "not newest first, or some twice");
        let (open, _) = walk(true, 7);
        assert_eq!(open.len(), all.len() - (n as usize).div_ceil(3));
        // limit 0 is a default page, never the whole history.
        let page = s.incident_page(&Query::default()).unwrap();
        assert_eq!(page.items.len(), DEFAULT_PAGE);
        assert_eq!(
            page.next,
            Some(Cursor {
                started_at: (1_000 + (n - DEFAULT_PAGE as u64) / 2) as i64,
                id: format!("inc-{:05}", n - DEFAULT_PAGE as u64)
            })
        );
        let page = s.incident_page(&Query { limit: 1_000_000, ..Query::default() }).unwrap();
        assert_eq!(page.items.len(), MAX_PAGE);
        assert!("12,a,b".parse::<Cursor>().is_ok_and(|c| c.id == "a,b"));
        assert!("x,a".parse::<Cursor>().unwrap_err().contains("is not a page cursor"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn executions_page_too() {
        let dir = temp_dir("exec-paging");
        let mut s = Store::open(&dir).unwrap();
        for i in 0..25u64 {
            s.record_execution(&execution("inc-a", "block", 1_000 + i / 5, vec![])).unwrap_or(());
            s.record_execution(&execution(&format!("inc-{i}"), "notify", 1_000 + i / 5, vec![])).unwrap();
        }
        let mut q = ExecutionQuery { limit: 4, ..ExecutionQuery::default() };
        let mut seen = Vec::new();
        loop {
            let page = s.execution_page(&q).unwrap();
            seen.extend(page.items.iter().map(|e| e.id.clone()));
            match page.next {
                Some(n) => q.before = Some(n),
                None => break,
            }
        }
        let all: Vec<String> = s
            .execution_page(&ExecutionQuery { limit: MAX_PAGE, ..ExecutionQuery::default() })
            .unwrap()
            .items
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(seen, all);
        let mut unique = seen.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), seen.len());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_bad_incident_row_is_skipped_and_named_not_the_history() {
        let dir = temp_dir("bad-incident");
        let mut s = Store::open(&dir).unwrap();
        for (id, at) in [("a", 1_000), ("b", 2_000), ("c", 3_000), ("d", 4_000)] {
            let inc = incident(id, at);
            s.record(&event(&inc, EventKind::Opened, at, "opened")).unwrap();
            s.record(&event(&inc, EventKind::SeverityChanged, at + 1, "high -> critical")).unwrap();
        }
        s.conn.execute("UPDATE incidents SET data = '{not json' WHERE id = 'b'", []).unwrap();
        s.conn.execute("UPDATE incidents SET data = x'00ff' WHERE id = 'd'", []).unwrap();
        s.conn
            .execute("UPDATE incident_events SET kind = 'weird' WHERE incident_id = 'c' AND detail = 'opened'", [])
            .unwrap();
        let page = s.incident_page(&Query::default()).unwrap();
        assert_eq!(page.items.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), vec!["c", "a"]);
        // c is there, without the event that does not parse.
        assert_eq!(page.items[0].timeline.iter().map(|t| t.kind).collect::<Vec<_>>(), vec![EventKind::SeverityChanged]);
        let skipped: Vec<(&str, &str)> = page.skipped.iter().map(|s| (s.id.as_str(), s.reason.as_str())).collect();
        assert_eq!(skipped.len(), 3, "{skipped:?}");
        assert_eq!(skipped[0].0, "d");
        assert!(skipped[0].1.contains("its data is unreadable"), "{skipped:?}");
        assert_eq!(skipped[1].0, "c");
        assert!(
            skipped[1].1.starts_with("timeline event ") && skipped[1].1.ends_with("unknown kind 'weird'"),
            "{skipped:?}"
        );
        assert_eq!(skipped[2].0, "b");
        assert!(skipped[2].1.starts_with("its data does not parse: "), "{skipped:?}");
        // The convenience listing and the single lookups agree.
        assert_eq!(s.incidents(Query::default()).unwrap().len(), 2);
        let (c, skipped) = s.incident_report("c").unwrap().unwrap();
        assert_eq!(c.timeline.len(), 1);
        assert_eq!(skipped.len(), 1);
        let e = s.incident("b").unwrap_err().to_string();
        assert!(e.contains("incident b: its data does not parse"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_bad_open_incident_does_not_stop_the_others_resuming() {
        let dir = temp_dir("bad-open");
        let mut s = Store::open(&dir).unwrap();
        for (id, at) in [("good", 1_000), ("bad", 2_000)] {
            s.snapshot(&incident(id, at)).unwrap();
        }
        s.conn.execute("UPDATE incidents SET data = 'garbage' WHERE id = 'bad'", []).unwrap();
        let open = s.open_incidents_of("n1").unwrap();
        assert_eq!(open.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), vec!["good"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_execution_and_step_rows_are_skipped_and_named() {
        let dir = temp_dir("exec-corrupt");
        let mut s = Store::open(&dir).unwrap();
        s.record_execution(&execution("inc-a", "block", 1_000, vec![])).unwrap();
        s.record_execution(&execution(
            "inc-a",
            "notify",
            2_000,
            vec![step(0, "notify", 2_000, Outcome::Ok, None), step(1, "note", 2_010, Outcome::Ok, None)],
        ))
        .unwrap();
        s.record_execution(&execution("inc-a", "page", 3_000, vec![])).unwrap();
        s.conn.execute("UPDATE runbook_executions SET outcome = 'weird' WHERE runbook = 'block'", []).unwrap();
        s.conn.execute("UPDATE runbook_executions SET ended_at = 'soon' WHERE runbook = 'page'", []).unwrap();
        s.conn.execute("UPDATE runbook_steps SET outcome = 'odd' WHERE idx = 1", []).unwrap();
        let page = s.execution_page(&ExecutionQuery::default()).unwrap();
        assert_eq!(ids(&page.items), vec!["inc-a/notify/2000"]);
        assert_eq!(page.items[0].steps.iter().map(|s| s.index).collect::<Vec<_>>(), vec![0]);
        let skipped: Vec<String> = page.skipped.iter().map(|s| format!("{}: {}", s.id, s.reason)).collect();
        assert_eq!(skipped.len(), 3, "{skipped:?}");
        assert!(skipped[0].starts_with("inc-a/page/3000: a column is unreadable"), "{skipped:?}");
        assert_eq!(skipped[1], "inc-a/notify/2000: step 1: unknown outcome 'odd'");
        assert_eq!(skipped[2], "inc-a/block/1000: unknown outcome 'weird'");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn unreadable_copies(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("detector.db.unreadable-"))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_file_that_is_not_a_database_is_moved_aside_at_open() {
        let dir = temp_dir("not-a-db");
        let garbage = b"this is not an SQLite database, it is a shopping list
"
        .repeat(100);
        std::fs::write(dir.join(DB_FILE), &garbage).unwrap();
        std::fs::write(dir.join("detector.db-wal"), b"old wal").unwrap();
        // Read-only (the CLI): said clearly, with the path and what to do.
        let e = Store::open_read_only(&dir).err().unwrap();
        assert!(matches!(e, StoreError::Unreadable { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains(&format!("database {} is unreadable", dir.join(DB_FILE).display())), "{msg}");
        assert!(msg.contains("the next `detector run` moves it aside"), "{msg}");
        assert!(unreadable_copies(&dir).is_empty(), "a reader moved it");
        // The controller's open moves it (and its -wal) aside and starts afresh.
        let mut s = Store::open(&dir).unwrap();
        s.snapshot(&incident("a", 1_000)).unwrap();
        assert_eq!(s.incidents(Query::default()).unwrap().len(), 1);
        let aside = unreadable_copies(&dir);
        assert_eq!(std::fs::read(dir.join(&aside[0])).unwrap(), garbage, "{aside:?}");
        // The old -wal went with it (or SQLite removed it on closing the
        // bad file): never left beside the new database.
        let wal = std::fs::read(dir.join("detector.db-wal")).unwrap_or_default();
        assert!(!wal.starts_with(b"old wal"));
        assert!(aside.iter().skip(1).all(|a| a.ends_with("-wal") || a.ends_with("-shm")), "{aside:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_damaged_database_is_moved_aside_at_open() {
        let dir = temp_dir("damaged-db");
        {
            let mut s = Store::open(&dir).unwrap();
            for i in 0..500 {
                s.snapshot(&incident(&format!("inc-{i}"), i)).unwrap();
            }
            s.conn.pragma_update(None, "wal_checkpoint", "TRUNCATE").unwrap();
        }
        // A valid header, garbage in the pages after it.
        let path = dir.join(DB_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        assert!(bytes.len() > 16_384);
        for b in &mut bytes[4096..16_384] {
            *b = 0xa5;
        }
        std::fs::write(&path, &bytes).unwrap();
        let s = Store::open(&dir).unwrap();
        assert!(s.incidents(Query::default()).unwrap().is_empty(), "a new history");
        assert_eq!(unreadable_copies(&dir).len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_missing_database_is_said_so() {
        let e = Store::open_read_only(Path::new("/nonexistent/state")).err().unwrap();
        assert!(e.to_string().contains("no incident history at /nonexistent/state/detector.db"), "{e}");
    }
}
