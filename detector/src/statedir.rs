//! The state directory's files other than the history: the learned
//! baselines (`baselines.json`) and the rules (`rules.json`).
//!
//! Files are written atomically (a temporary file, synced, renamed over the
//! old one), and from a thread of their own ([`FileWriter`]): the poll loop
//! and the rule path hand over the latest version and go on. A write that
//! fails (a full or read-only filesystem) is kept and tried again until it
//! succeeds; a newer version replaces it. A file that cannot be read at
//! start is moved aside (`<name>.unreadable`), never silently overwritten.

use std::{
    collections::BTreeMap,
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

use serde::Serialize;
use thiserror::Error;

use crate::{
    detect::{engine::BASELINES_VERSION, SavedBaselines},
    metrics::Metrics,
};

pub const DEFAULT_STATE_DIR: &str = "/var/lib/detector";
pub const BASELINES_FILE: &str = "baselines.json";
pub const RULES_FILE: &str = "rules.json";
/// How long a rule change waits to be written before whoever made it (the
/// control API's answer, a runbook's step) goes on anyway: the change is in
/// force; the log says it is not saved yet.
pub const SAVE_WAIT: Duration = Duration::from_secs(2);

/// How long a failed write waits before it is tried again.
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// A write still failing is logged again at most this often.
const LOG_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, Error)]
pub enum StateError {
    #[error("cannot create the state directory {path}: {source}")]
    Create { path: PathBuf, source: std::io::Error },
    #[error("the state directory {path} is not writable ({source}); give --state-dir a writable directory")]
    NotWritable { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// Creates the directory (owner-only) if it is missing, and checks that
/// files can be created in it.
pub fn ensure_dir(dir: &Path) -> Result<(), StateError> {
    use std::os::unix::fs::DirBuilderExt as _;
    if !dir.is_dir() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| StateError::Create { path: dir.to_path_buf(), source })?;
    }
    let probe = dir.join(format!(".write-check.{}", std::process::id()));
    match fs::File::create(&probe) {
        Ok(_) => {
            let _ = fs::remove_file(&probe);
            Ok(())
        }
        // A full disk still lets the controller detect and mitigate; only
        // a directory that refuses every file is refused here.
        Err(e) if e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EDQUOT) => {
            tracing::warn!(
                "the state directory {} is full: {e}; history and saved state wait for space",
                dir.display()
            );
            Ok(())
        }
        Err(source) => Err(StateError::NotWritable { path: dir.to_path_buf(), source }),
    }
}

/// Writes `bytes` to `dir/name` atomically: a temporary file, synced, then
/// renamed over the old file, and the directory synced.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StateError> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let werr = |source| StateError::Write { path: path.clone(), source };
    let written = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.map_err(werr)
}

/// Serializes `value` as pretty JSON and writes it with [`write_atomic`].
pub fn write_json<T: Serialize>(dir: &Path, name: &str, value: &T) -> Result<(), StateError> {
    write_atomic(dir, name, &to_json(value))
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Our saved types are plain data: serializing them cannot fail.
    serde_json::to_vec_pretty(value).expect("state files serialize")
}

/// Takes an exclusive `flock` on `f` without waiting: `Ok(false)` while
/// another process holds it. Released when the file closes, even by a
/// process killed with SIGKILL.
pub fn try_lock_exclusive(f: &fs::File) -> std::io::Result<bool> {
    // SAFETY: flock on a descriptor the caller owns.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(f), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        return Ok(false);
    }
    Err(e)
}

/// Moves an unreadable file aside as `<name>.unreadable` (replacing an
/// older one), and returns where it went.
pub fn move_aside(path: &Path) -> std::io::Result<PathBuf> {
    let mut aside = path.as_os_str().to_owned();
    aside.push(".unreadable");
    let aside = PathBuf::from(aside);
    fs::rename(path, &aside)?;
    Ok(aside)
}

/// What reading a state file found.
pub enum Read {
    Bytes(Vec<u8>),
    /// No file: a first start.
    Missing,
    /// It exists but cannot be read (permissions, I/O error).
    Failed(String),
}

/// Reads `dir/name`.
pub fn read(dir: &Path, name: &str) -> Read {
    let path = dir.join(name);
    match fs::read(&path) {
        Ok(b) => Read::Bytes(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Read::Missing,
        Err(e) => Read::Failed(format!("{}: {e}", path.display())),
    }
}

/// What loading the saved baselines found.
pub enum Loaded {
    Baselines(SavedBaselines),
    /// No file: a first start.
    None,
    /// A file that does not parse; it was moved aside, with the reason.
    Unreadable(String),
}

pub fn load_baselines(dir: &Path) -> Loaded {
    let path = dir.join(BASELINES_FILE);
    let bytes = match read(dir, BASELINES_FILE) {
        Read::Bytes(b) => b,
        Read::Missing => return Loaded::None,
        Read::Failed(why) => return Loaded::Unreadable(why),
    };
    let why = match serde_json::from_slice::<SavedBaselines>(&bytes) {
        Ok(b) if b.version == BASELINES_VERSION => return Loaded::Baselines(b),
        Ok(b) => format!("version {} is not {BASELINES_VERSION}", b.version),
        Err(e) => e.to_string(),
    };
    // Keep the evidence, start learning afresh.
    match move_aside(&path) {
        Ok(aside) => Loaded::Unreadable(format!("{}: {why} (moved to {})", path.display(), aside.display())),
        Err(e) => Loaded::Unreadable(format!("{}: {why} (and it cannot be moved aside: {e})", path.display())),
    }
}

/// The files waiting for the writer thread: the latest version of each.
#[derive(Default)]
struct Pending {
    files: BTreeMap<&'static str, Vec<u8>>,
    /// Set by [`FileWriter::finish`]: write what is pending once more, then stop.
    stop: bool,
    /// Versions handed over and versions written, for [`FileWriter::flush`].
    queued: u64,
    settled: u64,
}

struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
}

/// The thread that writes the state directory's files. Cheap to clone:
/// every clone hands files to the same thread.
#[derive(Clone)]
pub struct FileWriter {
    shared: Arc<Shared>,
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl FileWriter {
    /// Starts the writer for `dir`; failures are counted in `metrics`.
    pub fn spawn(dir: &Path, metrics: Option<Arc<Metrics>>) -> std::io::Result<FileWriter> {
        let shared = Arc::new(Shared { pending: Mutex::new(Pending::default()), wake: Condvar::new() });
        let (s, dir) = (shared.clone(), dir.to_path_buf());
        let thread =
            std::thread::Builder::new().name("state-files".into()).spawn(move || write_loop(&s, &dir, metrics))?;
        Ok(FileWriter { shared, thread: Arc::new(Mutex::new(Some(thread))) })
    }

    /// Hands over the latest version of `name`; an older version not yet
    /// written is dropped.
    pub fn save(&self, name: &'static str, bytes: Vec<u8>) {
        let mut p = self.shared.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.files.insert(name, bytes);
        p.queued += 1;
        self.shared.wake.notify_all();
    }

    pub fn save_json<T: Serialize>(&self, name: &'static str, value: &T) {
        self.save(name, to_json(value));
    }

    pub fn save_baselines(&self, b: &SavedBaselines) {
        self.save_json(BASELINES_FILE, b);
    }

    /// Waits up to `timeout` until everything handed over so far has been
    /// written (or replaced by a newer version that was). False if some
    /// file is still waiting (its filesystem refuses it).
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut p = self.shared.pending.lock().unwrap_or_else(|e| e.into_inner());
        let target = p.queued;
        while p.settled < target || !p.files.is_empty() {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else { return false };
            p = self.shared.wake.wait_timeout(p, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        true
    }

    /// Waits up to [`SAVE_WAIT`] until a rule change just made is written
    /// (see [`FileWriter::flush`]); logs when it is not. For whoever
    /// answers for the change (the control API, a runbook's step): a change
    /// said to be in force is what the next start restores.
    pub fn settle_rules(&self) -> bool {
        let saved = self.flush(SAVE_WAIT);
        if !saved {
            tracing::warn!("a rule change is in force but not yet written to the state directory");
        }
        saved
    }

    /// Writes what is pending (trying for at most `timeout`), then stops the
    /// thread. What could not be written is logged.
    pub fn finish(&self, timeout: Duration) {
        let written = self.flush(timeout);
        {
            let mut p = self.shared.pending.lock().unwrap_or_else(|e| e.into_inner());
            if !written {
                let names: Vec<&str> = p.files.keys().copied().collect();
                tracing::error!("stopping with {} not written to the state directory", names.join(", "));
                p.files.clear();
            }
            p.stop = true;
            self.shared.wake.notify_all();
        }
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

fn write_loop(s: &Shared, dir: &Path, metrics: Option<Arc<Metrics>>) {
    // Per file: when it first failed, and when that was last logged.
    let mut failing: BTreeMap<&'static str, (Instant, Instant)> = BTreeMap::new();
    let mut p = s.pending.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        if p.files.is_empty() {
            if p.stop {
                return;
            }
            p = s.wake.wait(p).unwrap_or_else(|e| e.into_inner());
            continue;
        }
        let batch = std::mem::take(&mut p.files);
        let seen = p.queued;
        drop(p);
        let mut failed = Vec::new();
        for (name, bytes) in batch {
            match write_atomic(dir, name, &bytes) {
                Ok(()) => {
                    if let Some((since, _)) = failing.remove(name) {
                        tracing::info!(file = name, "written again, after failing for {:.0?}", since.elapsed());
                    }
                }
                Err(e) => {
                    if let Some(m) = &metrics {
                        m.state_write_failed(name);
                    }
                    let now = Instant::now();
                    match failing.get_mut(name) {
                        None => {
                            tracing::error!(file = name, "{e}; kept, and tried again every {RETRY_EVERY:?}");
                            failing.insert(name, (now, now));
                        }
                        Some((since, logged)) if now.duration_since(*logged) >= LOG_EVERY => {
                            tracing::error!(file = name, "{e} (failing for {:.0?})", since.elapsed());
                            *logged = now;
                        }
                        Some(_) => {}
                    }
                    failed.push((name, bytes));
                }
            }
        }
        p = s.pending.lock().unwrap_or_else(|e| e.into_inner());
        for (name, bytes) in failed.iter().cloned() {
            // A newer version handed over meanwhile wins.
            p.files.entry(name).or_insert(bytes);
        }
        if failed.is_empty() || p.stop {
            p.settled = seen;
        }
        s.wake.notify_all();
        if !failed.is_empty() {
            p = s.wake.wait_timeout(p, RETRY_EVERY).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("detector-statedir-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        ensure_dir(&dir).unwrap();
        dir
    }

    #[test]
    fn round_trip_and_a_bad_file_moved_aside() {
        let dir = temp_dir("baselines");
        assert!(matches!(load_baselines(&dir), Loaded::None));
        let mut b = SavedBaselines { version: BASELINES_VERSION, ..Default::default() };
        b.interfaces.insert("eth0".into(), Default::default());
        write_json(&dir, BASELINES_FILE, &b).unwrap();
        match load_baselines(&dir) {
            Loaded::Baselines(got) => assert_eq!(got, b),
            _ => panic!("not loaded"),
        }
        fs::write(dir.join(BASELINES_FILE), "{ not json").unwrap();
        match load_baselines(&dir) {
            Loaded::Unreadable(why) => assert!(why.contains("moved to"), "{why}"),
            _ => panic!("a bad file was accepted"),
        }
        assert!(dir.join("baselines.json.unreadable").exists());
        assert!(matches!(load_baselines(&dir), Loaded::None));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_non_utf8_baselines_file_is_moved_aside_not_overwritten() {
        let dir = temp_dir("non-utf8");
        fs::write(dir.join(BASELINES_FILE), [0xff, 0xfe, 0x00, 0x80]).unwrap();
        match load_baselines(&dir) {
            Loaded::Unreadable(why) => assert!(why.contains("moved to"), "{why}"),
            _ => panic!("a non-UTF-8 file was accepted"),
        }
        assert_eq!(fs::read(dir.join("baselines.json.unreadable")).unwrap(), vec![0xff, 0xfe, 0x00, 0x80]);
        assert!(!dir.join(BASELINES_FILE).exists());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_writer_keeps_the_latest_version_and_flushes() {
        let dir = temp_dir("writer");
        let w = FileWriter::spawn(&dir, None).unwrap();
        for i in 0..100 {
            w.save(RULES_FILE, format!("{{\"n\": {i}}}").into_bytes());
        }
        assert!(w.flush(Duration::from_secs(10)));
        assert_eq!(fs::read_to_string(dir.join(RULES_FILE)).unwrap(), "{\"n\": 99}");
        w.finish(Duration::from_secs(1));
        assert!(!dir.join(".rules.json.tmp").exists());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_failing_write_is_kept_and_written_when_it_can_be() {
        let dir = temp_dir("retry");
        // A directory where the file should be: every rename over it fails.
        fs::create_dir(dir.join(RULES_FILE)).unwrap();
        let w = FileWriter::spawn(&dir, None).unwrap();
        w.save(RULES_FILE, b"{\"n\": 1}".to_vec());
        assert!(!w.flush(Duration::from_millis(300)), "a refused write was reported written");
        w.save(RULES_FILE, b"{\"n\": 2}".to_vec());
        fs::remove_dir(dir.join(RULES_FILE)).unwrap();
        assert!(w.flush(Duration::from_secs(5)), "the write was not retried");
        assert_eq!(fs::read_to_string(dir.join(RULES_FILE)).unwrap(), "{\"n\": 2}");
        w.finish(Duration::from_secs(1));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_read_only_directory_is_refused_clearly() {
        // Root ignores permission bits; a file where the directory should
        // be is refused the same way for everyone.
        let dir = temp_dir("ro");
        let not_a_dir = dir.join("file");
        fs::write(&not_a_dir, "x").unwrap();
        let e = ensure_dir(&not_a_dir.join("state")).unwrap_err();
        assert!(e.to_string().starts_with("cannot create the state directory"), "{e}");
        let _ = fs::remove_dir_all(&dir);
    }
}
