//! Incident history in SQLite, in the state directory: the adapter between
//! the detector's events and the disk. The controller writes from one
//! thread of its own; readers (the API, `detector incidents`) open their
//! own connections, which WAL mode lets run beside the writer.

use std::{
    path::{Path, PathBuf},
    sync::mpsc,
};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use thiserror::Error;

use crate::detect::incident::{EventKind, Incident, IncidentEvent, TimelineEntry};

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
    #[error("database {path}: a stored incident does not parse: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
}

/// Which incidents to list.
#[derive(Clone, Copy, Debug, Default)]
pub struct Query {
    pub open_only: bool,
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
             PRAGMA user_version = 1;",
        )
        .map_err(err)?;
        Ok(Store { conn, path })
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
        Ok(Store { conn, path })
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        |source| StoreError::Sqlite { path: self.path.clone(), source }
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

/// What the writer thread is asked to do.
pub enum StoreCmd {
    Record(Box<IncidentEvent>),
    Snapshot(Box<Incident>),
}

/// A writer thread that owns the store: the detection loop hands it work
/// and never waits for the disk.
pub struct Writer {
    tx: mpsc::Sender<StoreCmd>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    pub fn spawn(mut store: Store) -> Writer {
        let (tx, rx) = mpsc::channel::<StoreCmd>();
        let handle = std::thread::Builder::new()
            .name("store".into())
            .spawn(move || {
                for cmd in rx {
                    let r = match &cmd {
                        StoreCmd::Record(ev) => store.record(ev),
                        StoreCmd::Snapshot(inc) => store.snapshot(inc),
                    };
                    if let Err(e) = r {
                        tracing::error!("incident history: {e}");
                    }
                }
            })
            .expect("spawning the store thread");
        Writer { tx, handle: Some(handle) }
    }

    pub fn send(&self, cmd: StoreCmd) {
        if self.tx.send(cmd).is_err() {
            tracing::error!("incident history: the store thread has stopped");
        }
    }

    /// Waits until everything sent has been written.
    pub fn finish(mut self) {
        let (tx, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.tx, tx));
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::{family::Family, incident::Status, severity::Severity};

    fn incident(id: &str, started_at: u64) -> Incident {
        Incident {
            id: id.into(),
            node: "n1".into(),
            iface: "eth0".into(),
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
            timeline: vec![],
        }
    }

    fn event(inc: &Incident, kind: EventKind, at: u64, detail: &str) -> IncidentEvent {
        IncidentEvent { kind, at, detail: detail.into(), family: None, incident: inc.clone() }
    }

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

    #[test]
    fn a_missing_database_is_said_so() {
        let e = Store::open_read_only(Path::new("/nonexistent/state")).err().unwrap();
        assert!(e.to_string().contains("no incident history at /nonexistent/state/detector.db"), "{e}");
    }
}
