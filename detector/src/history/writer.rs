//! The history's writer: a thread of its own that owns the database, so
//! the poll loop and the runbook engine hand it work and never wait for the
//! disk.
//!
//! Everything it holds is bounded. Work waits in a channel of
//! [`QUEUE`] entries (a sender finding it full drops the entry and counts
//! it: a stalled disk cannot make memory grow), then in a backlog of at
//! most [`BACKLOG`] entries, where an incident's figures and an execution's
//! progress keep only their latest version. A write the disk refuses (full,
//! read-only, I/O error) stays at the head of the backlog and is tried again
//! every second, so what happened while the disk was full reaches the
//! history once there is room again.

use std::{
    collections::VecDeque,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc, Mutex,
    },
    time::{Duration, Instant},
};

use super::{HistoryCmd, Store, StoreError};
use crate::metrics::Metrics;

/// Entries waiting in the channel, at most.
pub const QUEUE: usize = 4096;
/// Entries waiting in the writer's backlog, at most.
pub const BACKLOG: usize = 10_000;
/// A refused write is tried again after this long.
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// Repeated problems are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(60);
/// How often the writer checks that its database is still the file in the
/// state directory (a deleted directory is recreated).
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// What goes down the channel: work, or the word to stop.
enum Msg {
    Cmd(HistoryCmd),
    Stop,
}

/// Counts shared by the writer and its senders.
struct Shared {
    dropped: AtomicU64,
    metrics: Option<Arc<Metrics>>,
    /// When a drop was last logged (drops are logged once a minute).
    last_drop_log: Mutex<Option<Instant>>,
}

impl Shared {
    fn dropped(&self, n: u64, why: &str) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            m.history_dropped(n);
        }
        let mut last = self.last_drop_log.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            *last = Some(Instant::now());
            tracing::error!(
                dropped_total = self.dropped.load(Ordering::Relaxed),
                "incident history: entries dropped ({why}); detection and mitigation go on"
            );
        }
    }
}

/// The writer thread's handle. [`Writer::finish`] writes what is queued
/// and stops it.
pub struct Writer {
    tx: mpsc::SyncSender<Msg>,
    handle: Option<std::thread::JoinHandle<()>>,
    shared: Arc<Shared>,
}

/// A handle on the writer for other threads and tasks (the runbook engine
/// records executions through one). It does not keep the writer alive:
/// what is sent through one after [`Writer::finish`] is refused.
#[derive(Clone)]
pub struct HistorySender {
    tx: mpsc::SyncSender<Msg>,
    shared: Arc<Shared>,
}

/// Why an entry was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    /// The queue is full (the disk is far behind): the entry is dropped.
    Full,
    /// The writer has stopped.
    Stopped,
}

fn send(tx: &mpsc::SyncSender<Msg>, shared: &Shared, cmd: HistoryCmd) -> Result<(), SendError> {
    match tx.try_send(Msg::Cmd(cmd)) {
        Ok(()) => Ok(()),
        Err(mpsc::TrySendError::Full(_)) => {
            shared.dropped(1, "the write queue is full: the disk is not keeping up");
            Err(SendError::Full)
        }
        Err(mpsc::TrySendError::Disconnected(_)) => Err(SendError::Stopped),
    }
}

impl HistorySender {
    /// Queues work for the writer without waiting.
    pub fn send(&self, cmd: HistoryCmd) -> Result<(), SendError> {
        send(&self.tx, &self.shared, cmd)
    }
}

impl Writer {
    /// Starts the writer on `store`; it reopens `store`'s directory if the
    /// file disappears. Drops and refused writes are counted in `metrics`.
    pub fn spawn(store: Store, metrics: Option<Arc<Metrics>>) -> Writer {
        let (tx, rx) = mpsc::sync_channel::<Msg>(QUEUE);
        let shared = Arc::new(Shared { dropped: AtomicU64::new(0), metrics, last_drop_log: Mutex::new(None) });
        let s = shared.clone();
        let handle = std::thread::Builder::new()
            .name("history".into())
            .spawn(move || Thread::new(store, s).run(&rx))
            .expect("spawning the history thread");
        Writer { tx, handle: Some(handle), shared }
    }

    /// Queues work without waiting; a full queue drops it (counted, logged
    /// once a minute).
    pub fn send(&self, cmd: HistoryCmd) {
        if send(&self.tx, &self.shared, cmd) == Err(SendError::Stopped) {
            tracing::error!("incident history: the writer thread has stopped");
        }
    }

    /// A handle to send work from elsewhere (see [`HistorySender`]).
    pub fn sender(&self) -> HistorySender {
        HistorySender { tx: self.tx.clone(), shared: self.shared.clone() }
    }

    /// Entries dropped so far.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Writes everything sent before it (trying once more if the disk
    /// refuses, and saying what is lost), then stops the thread, whether
    /// or not [`HistorySender`]s are still about.
    pub fn finish(mut self) {
        // Blocks only while the queue is full, which the thread drains.
        let _ = self.tx.send(Msg::Stop);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The writer thread's state.
struct Thread {
    store: Store,
    shared: Arc<Shared>,
    backlog: VecDeque<HistoryCmd>,
    /// Since when writes have been refused, and when that was last logged.
    failing: Option<(Instant, Instant)>,
    last_check: Instant,
}

impl Thread {
    fn new(store: Store, shared: Arc<Shared>) -> Thread {
        Thread { store, shared, backlog: VecDeque::new(), failing: None, last_check: Instant::now() }
    }

    fn run(mut self, rx: &mpsc::Receiver<Msg>) {
        let mut stopping = false;
        loop {
            // Wait for work, or for the next retry or check.
            let wait = if self.failing.is_some() { RETRY_EVERY } else { CHECK_EVERY };
            if self.backlog.is_empty() || self.failing.is_some() {
                match rx.recv_timeout(wait) {
                    Ok(Msg::Cmd(c)) => self.push(c),
                    Ok(Msg::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => stopping = true,
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                }
            }
            // Take whatever else is queued, so the channel stays free.
            while !stopping {
                match rx.try_recv() {
                    Ok(Msg::Cmd(c)) => self.push(c),
                    Ok(Msg::Stop) | Err(mpsc::TryRecvError::Disconnected) => stopping = true,
                    Err(mpsc::TryRecvError::Empty) => break,
                }
            }
            if self.last_check.elapsed() >= CHECK_EVERY {
                self.last_check = Instant::now();
                self.check_file();
            }
            self.write_backlog();
            if stopping {
                if !self.backlog.is_empty() {
                    // One more try, then say what is lost.
                    std::thread::sleep(Duration::from_millis(100));
                    self.write_backlog();
                }
                if !self.backlog.is_empty() {
                    tracing::error!(
                        entries = self.backlog.len(),
                        "incident history: stopping with entries the disk would not take"
                    );
                }
                return;
            }
        }
    }

    /// Adds work to the backlog: an incident's figures and an execution's
    /// progress replace their older version; past [`BACKLOG`] entries the
    /// oldest figures go first, then the oldest entries.
    fn push(&mut self, cmd: HistoryCmd) {
        let same = |a: &HistoryCmd| match (a, &cmd) {
            (HistoryCmd::Snapshot(x), HistoryCmd::Snapshot(y)) => x.id == y.id,
            (HistoryCmd::Execution(x), HistoryCmd::Execution(y)) => x.id == y.id,
            _ => false,
        };
        if let Some(i) = self.backlog.iter().position(same) {
            self.backlog.remove(i);
        }
        self.backlog.push_back(cmd);
        if self.backlog.len() > BACKLOG {
            let i = self.backlog.iter().position(|c| matches!(c, HistoryCmd::Snapshot(_))).unwrap_or(0);
            self.backlog.remove(i);
            self.shared.dropped(1, "the backlog is full: the disk has refused writes for long");
        }
    }

    /// Writes the backlog in order until the disk refuses an entry.
    fn write_backlog(&mut self) {
        while let Some(cmd) = self.backlog.front() {
            match self.store.apply(cmd) {
                Ok(()) => {
                    self.backlog.pop_front();
                    if let Some((since, _)) = self.failing.take() {
                        tracing::info!(
                            "incident history: the disk takes writes again (refused for {:.0?}); the backlog is being written",
                            since.elapsed()
                        );
                    }
                }
                Err(e) if e.is_transient() => {
                    if let Some(m) = &self.shared.metrics {
                        m.history_write_failed();
                    }
                    let now = Instant::now();
                    match &mut self.failing {
                        None => {
                            tracing::error!(
                                "incident history: {e}; kept ({} waiting) and tried again every {RETRY_EVERY:?}",
                                self.backlog.len()
                            );
                            self.failing = Some((now, now));
                        }
                        Some((since, logged)) if now.duration_since(*logged) >= LOG_EVERY => {
                            tracing::error!(
                                "incident history: {e} (refused for {:.0?}, {} waiting)",
                                since.elapsed(),
                                self.backlog.len()
                            );
                            *logged = now;
                        }
                        Some(_) => {}
                    }
                    break;
                }
                Err(e) => {
                    // Retrying cannot help: drop this entry, keep the rest.
                    tracing::error!("incident history: {e}; entry dropped");
                    self.backlog.pop_front();
                    self.shared.dropped(1, "an entry the database refused");
                }
            }
        }
        if let Some(m) = &self.shared.metrics {
            m.history_backlog(self.backlog.len());
        }
    }

    /// A state directory deleted while running would leave the writer
    /// writing to an unlinked file: recreate it and start a new database.
    fn check_file(&mut self) {
        if self.store.is_current() {
            return;
        }
        let dir: PathBuf = self.store.dir().to_path_buf();
        tracing::error!(
            "incident history: {} disappeared while running (was the state directory removed?); starting a new one",
            self.store.path().display()
        );
        match crate::statedir::ensure_dir(&dir)
            .map_err(|e| e.to_string())
            .and_then(|()| Store::open(&dir).map_err(|e: StoreError| e.to_string()))
        {
            Ok(s) => self.store = s,
            Err(e) => tracing::error!("incident history: cannot start a new database: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        detect::incident::{EventKind, IncidentEvent},
        history::{
            fixtures::{execution, incident, step, temp_dir},
            ExecutionQuery, Query,
        },
        runbook::record::Outcome,
    };

    fn execution_with(id: &str, steps: usize) -> crate::runbook::record::Execution {
        let steps = (0..steps).map(|i| step(i, "note", 1_000, Outcome::Ok, None)).collect();
        let mut ex = execution("inc-a", "block", 1_000, steps);
        ex.id = id.into();
        ex
    }

    #[test]
    fn the_writer_thread_records_executions() {
        let dir = temp_dir("exec");
        let w = Writer::spawn(Store::open(&dir).unwrap(), None);
        w.send(HistoryCmd::Execution(Box::new(execution_with("x", 0))));
        w.send(HistoryCmd::Execution(Box::new(execution_with("x", 2))));
        w.finish();
        let got = Store::open_read_only(&dir).unwrap().executions(ExecutionQuery::default()).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].steps.len(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn finishing_the_writer_does_not_wait_for_its_senders() {
        let dir = temp_dir("sender");
        let w = Writer::spawn(Store::open(&dir).unwrap(), None);
        let sender = w.sender();
        assert!(sender.clone().send(HistoryCmd::Execution(Box::new(execution_with("x", 1)))).is_ok());
        let (done_tx, done) = mpsc::channel();
        std::thread::spawn(move || {
            w.finish();
            let _ = done_tx.send(());
        });
        done.recv_timeout(Duration::from_secs(10)).expect("finish returned while a sender is alive");
        let got = Store::open_read_only(&dir).unwrap().executions(ExecutionQuery::default()).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(sender.send(HistoryCmd::Execution(Box::new(execution_with("y", 1)))), Err(SendError::Stopped));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_backlog_keeps_the_latest_figures_and_stays_bounded() {
        let dir = temp_dir("backlog");
        let shared = Arc::new(Shared { dropped: AtomicU64::new(0), metrics: None, last_drop_log: Mutex::new(None) });
        let mut t = Thread::new(Store::open(&dir).unwrap(), shared.clone());
        let inc = incident("a", 1_000);
        t.push(HistoryCmd::Record(Box::new(IncidentEvent {
            kind: EventKind::Opened,
            at: 1,
            detail: "opened".into(),
            family: None,
            incident: inc.clone(),
        })));
        for i in 0..100 {
            let mut s = inc.clone();
            s.pps = i as f64;
            t.push(HistoryCmd::Snapshot(Box::new(s)));
        }
        assert_eq!(t.backlog.len(), 2, "snapshots of one incident were not coalesced");
        for i in 0..BACKLOG + 10 {
            t.push(HistoryCmd::Snapshot(Box::new(incident(&format!("i{i}"), 1_000))));
        }
        assert_eq!(t.backlog.len(), BACKLOG);
        assert_eq!(shared.dropped.load(Ordering::Relaxed), 12);
        // The timeline entry survived; the oldest figures went first.
        assert!(matches!(t.backlog.front(), Some(HistoryCmd::Record(_))));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_growing() {
        let dir = temp_dir("queue");
        let (tx, _rx) = mpsc::sync_channel::<Msg>(2);
        let shared = Arc::new(Shared { dropped: AtomicU64::new(0), metrics: None, last_drop_log: Mutex::new(None) });
        let sender = HistorySender { tx, shared: shared.clone() };
        for _ in 0..2 {
            assert_eq!(sender.send(HistoryCmd::Snapshot(Box::new(incident("a", 1_000)))), Ok(()));
        }
        assert_eq!(sender.send(HistoryCmd::Snapshot(Box::new(incident("a", 1_000)))), Err(SendError::Full));
        assert_eq!(shared.dropped.load(Ordering::Relaxed), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_deleted_state_directory_is_recreated_and_written_again() {
        let dir = temp_dir("deleted");
        let shared = Arc::new(Shared { dropped: AtomicU64::new(0), metrics: None, last_drop_log: Mutex::new(None) });
        let mut t = Thread::new(Store::open(&dir).unwrap(), shared);
        std::fs::remove_dir_all(&dir).unwrap();
        t.check_file();
        t.push(HistoryCmd::Snapshot(Box::new(incident("after", 1_000))));
        t.write_backlog();
        assert!(t.backlog.is_empty());
        let got = Store::open_read_only(&dir).unwrap().incidents(Query::default()).unwrap();
        assert_eq!(got.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), vec!["after"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
