//! The capture files in the state directory (`captures/<incident id>.pcapng`):
//! where they are, reading them back, their retention, and the writer
//! thread that makes the poll loop's file operations without ever making
//! it wait.

use std::{
    collections::{HashMap, HashSet},
    fs::{self, File, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
    sync::{mpsc, Arc},
    time::{Duration, Instant, SystemTime},
};

use prometheus_client::{
    metrics::{counter::Counter, gauge::Gauge},
    registry::Registry,
};
use thiserror::Error;

use super::{
    coalesce::Coalescer,
    pcapng::{self, ATTACK_COMMENT, PRE_ATTACK_COMMENT},
    recorder::FileOp,
    CaptureConfig,
};
use crate::detect::incident::CaptureInfo;

/// Under the state directory.
pub const DIR: &str = "captures";
const EXT: &str = "pcapng";
/// Operations waiting for the writer, at most; more are dropped (counted).
const QUEUE: usize = 1024;
/// How often retention runs while nothing else makes it.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

#[derive(Debug, Error)]
pub enum CaptureError {
    #[error("'{0}' is not an incident id (letters, digits, '.', '-' and '_')")]
    BadId(String),
    #[error("incident {0} has no packet capture (captures off, removed by retention, or not an incident of this state directory)")]
    NotFound(String),
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a capture this controller wrote: {reason}")]
    Damaged { path: PathBuf, reason: String },
}

/// The file of incident `id` under `state_dir`. Ids are checked, so no id
/// reaches outside the directory.
pub fn path(state_dir: &Path, id: &str) -> Result<PathBuf, CaptureError> {
    let ok = !id.is_empty()
        && id.len() < 255 - EXT.len()
        && !id.starts_with('.')
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if !ok {
        return Err(CaptureError::BadId(id.to_string()));
    }
    Ok(state_dir.join(DIR).join(format!("{id}.{EXT}")))
}

/// The capture of incident `id`, whole blocks only (a file being written
/// to may end in the middle of one).
pub fn read(state_dir: &Path, id: &str) -> Result<Vec<u8>, CaptureError> {
    let path = path(state_dir, id)?;
    let mut bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(CaptureError::NotFound(id.to_string())),
        Err(source) => return Err(CaptureError::Read { path, source }),
    };
    let s = pcapng::summarize(&bytes).map_err(|reason| CaptureError::Damaged { path: path.clone(), reason })?;
    if s.complete_len == 0 {
        return Err(CaptureError::Damaged { path, reason: "it has no complete header".into() });
    }
    bytes.truncate(s.complete_len);
    Ok(bytes)
}

/// What the file of an incident open at the last stop holds, its torn
/// last block (a crash mid-write) cut off so appending can go on. None
/// without a usable file (the capture then starts anew).
pub fn resume(state_dir: &Path, id: &str) -> Option<CaptureInfo> {
    let path = path(state_dir, id).ok()?;
    let bytes = fs::read(&path).ok()?;
    let s = match pcapng::summarize(&bytes) {
        Ok(s) if s.complete_len > 0 => s,
        Ok(_) | Err(_) => {
            tracing::warn!(path = %path.display(), "capture unreadable; the incident's capture starts a new file");
            return None;
        }
    };
    if s.complete_len < bytes.len() {
        let cut = OpenOptions::new().write(true).open(&path).and_then(|f| f.set_len(s.complete_len as u64));
        if let Err(e) = cut {
            tracing::warn!(path = %path.display(), "cannot cut the capture's torn last block ({e}); starting a new file");
            return None;
        }
        tracing::info!(path = %path.display(), packets = s.packets, "capture cut back to its last whole block");
    }
    Some(CaptureInfo { packets: s.packets, pre_attack: s.pre_attack, full: false })
}

/// One capture file on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OnDisk {
    pub id: String,
    pub bytes: u64,
    pub modified: SystemTime,
}

/// The capture files under `state_dir`, oldest first.
pub fn list(state_dir: &Path) -> Vec<OnDisk> {
    let Ok(entries) = fs::read_dir(state_dir.join(DIR)) else { return Vec::new() };
    let mut out: Vec<OnDisk> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let id = name.strip_suffix(&format!(".{EXT}"))?.to_string();
            let meta = e.metadata().ok().filter(|m| m.is_file())?;
            Some(OnDisk { id, bytes: meta.len(), modified: meta.modified().ok()? })
        })
        .collect();
    out.sort_by(|a, b| a.modified.cmp(&b.modified).then(a.id.cmp(&b.id)));
    out
}

/// Which files retention removes: those last written before
/// `now - retention`, then the oldest until the rest fit in
/// `max_total_bytes`. The captures of open incidents (`keep`) stay. Pure.
pub fn expired(files: &[OnDisk], cfg: &CaptureConfig, now: SystemTime, keep: &HashSet<String>) -> Vec<String> {
    let cutoff = now.checked_sub(cfg.retention).unwrap_or(SystemTime::UNIX_EPOCH);
    let mut total: u64 = files.iter().map(|f| f.bytes).sum();
    let mut out = Vec::new();
    for f in files {
        if keep.contains(&f.id) {
            continue;
        }
        if f.modified < cutoff || total > cfg.max_total_bytes {
            total -= f.bytes;
            out.push(f.id.clone());
        }
    }
    out
}

/// The writer's metrics, registered by the capture subsystem.
#[derive(Clone, Default)]
pub struct CaptureMetrics {
    files: Gauge,
    disk_bytes: Gauge,
    packets: Counter,
    errors: Counter,
    dropped: Counter,
    removed: Counter,
}

impl CaptureMetrics {
    pub fn register(registry: &mut Registry) -> CaptureMetrics {
        let m = CaptureMetrics::default();
        registry.register("detector_capture_files", "Packet capture files in the state directory", m.files.clone());
        registry.register(
            "detector_capture_disk_bytes",
            "Bytes the packet capture files take in the state directory",
            m.disk_bytes.clone(),
        );
        registry.register("detector_capture_packets", "Packets written to incident captures", m.packets.clone());
        registry.register(
            "detector_capture_write_errors",
            "Capture file operations that failed (see the log)",
            m.errors.clone(),
        );
        registry.register(
            "detector_capture_dropped_operations",
            "Capture file operations dropped because the writer fell behind",
            m.dropped.clone(),
        );
        registry.register(
            "detector_capture_files_removed",
            "Capture files removed by retention (age or total size)",
            m.removed.clone(),
        );
        m
    }
}

enum Cmd {
    Op(FileOp),
    Stop,
}

/// Hands file operations to the writer thread; never waits. Appends are
/// held up to a second first ([`Coalescer`]).
pub struct Writer {
    tx: mpsc::SyncSender<Cmd>,
    metrics: Arc<CaptureMetrics>,
    thread: Option<std::thread::JoinHandle<()>>,
    held: Coalescer,
}

impl Writer {
    /// Starts the thread; it runs retention first. `open` are the
    /// incidents open at the start (resumed), whose files it keeps.
    pub fn spawn(
        state_dir: &Path,
        cfg: CaptureConfig,
        metrics: Arc<CaptureMetrics>,
        open: HashSet<String>,
    ) -> std::io::Result<Writer> {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let mut w = FileThread {
            dir: state_dir.to_path_buf(),
            cfg,
            metrics: metrics.clone(),
            files: HashMap::new(),
            keep: open,
            unstarted: HashMap::new(),
            failing: None,
        };
        let thread = std::thread::Builder::new().name("captures".into()).spawn(move || w.run(rx))?;
        Ok(Writer { tx, metrics, thread: Some(thread), held: Coalescer::default() })
    }

    /// Takes an operation of the poll; hands over what is due.
    pub fn send(&mut self, op: FileOp) {
        let due = self.held.push(op, Instant::now());
        self.hand_over(due);
    }

    /// Hands over the appends held a second; called at every poll, so
    /// appends an incident's last packets made are not held longer.
    pub fn tick(&mut self) {
        let due = self.held.due(Instant::now());
        self.hand_over(due);
    }

    fn hand_over(&self, ops: Vec<FileOp>) {
        for op in ops {
            if self.tx.try_send(Cmd::Op(op)).is_err() {
                self.metrics.dropped.inc();
            }
        }
    }

    /// Writes what is held and queued, closes the files and stops the
    /// thread; what dropping the writer does too, said where it is meant.
    pub fn finish(self) {
        drop(self);
    }

    /// Hands over what is held, asks the thread to stop and waits for it:
    /// once, whichever of [`Writer::finish`] and `Drop` comes first.
    fn stop(&mut self) {
        let Some(t) = self.thread.take() else {
            return;
        };
        self.hand_over_held();
        let _ = self.tx.send(Cmd::Stop);
        let _ = t.join();
    }

    /// Waits for room in the queue: only at the end.
    fn hand_over_held(&mut self) {
        for op in self.held.drain() {
            let _ = self.tx.send(Cmd::Op(op));
        }
    }
}

/// Dropped without [`Writer::finish`] (the controller failing on its way
/// out): what is held and queued is still written before the drop returns,
/// so a process that exits right after it does not cut off the capture's
/// last second.
impl Drop for Writer {
    fn drop(&mut self) {
        self.stop();
    }
}

struct OpenFile {
    file: File,
    /// Bytes written: all whole blocks.
    len: u64,
    /// Whether the attack's first packet (and its comment) is written.
    attack_started: bool,
}

struct FileThread {
    dir: PathBuf,
    cfg: CaptureConfig,
    metrics: Arc<CaptureMetrics>,
    files: HashMap<String, OpenFile>,
    keep: HashSet<String>,
    /// Incidents whose file could not be started: (interface, comment).
    unstarted: HashMap<String, (String, String)>,
    failing: Option<Failing>,
}

/// Writes failing since the last success.
struct Failing {
    since_logged: std::time::Instant,
    failed: u64,
}

impl FileThread {
    fn run(&mut self, rx: mpsc::Receiver<Cmd>) {
        self.prune();
        loop {
            match rx.recv_timeout(PRUNE_EVERY) {
                Ok(Cmd::Op(op)) => self.apply(op),
                Ok(Cmd::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => self.prune(),
            }
        }
        for (_, f) in self.files.drain() {
            let _ = f.file.sync_data();
        }
    }

    fn apply(&mut self, op: FileOp) {
        let (id, result) = match op {
            FileOp::Start { id, iface, comment, pre_attack, packets } => {
                self.keep.insert(id.clone());
                let r = self.start(&id, &iface, &comment, &pre_attack, &packets);
                if r.is_err() {
                    // Tried again with the next packets (the disk may have
                    // room by then); the calm before is lost.
                    self.unstarted.insert(id.clone(), (iface, comment));
                }
                self.prune();
                (id, r)
            }
            FileOp::Append { id, packets } => {
                let r = match self.unstarted.get(&id).cloned() {
                    Some((iface, comment)) => {
                        let r = self.start(&id, &iface, &comment, &[], &packets);
                        if r.is_ok() {
                            self.unstarted.remove(&id);
                        }
                        r
                    }
                    None => self.append(&id, &packets),
                };
                (id, r)
            }
            FileOp::Finish { id } => {
                if let Some(f) = self.files.remove(&id) {
                    let _ = f.file.sync_data();
                }
                self.unstarted.remove(&id);
                self.keep.remove(&id);
                self.prune();
                return;
            }
        };
        self.report(&id, result);
    }

    /// Counts a failure, and logs it without flooding the log: when
    /// failures start, at most once a minute while they last, and when
    /// they end (a full disk fails every poll's write).
    fn report(&mut self, id: &str, result: Result<(), String>) {
        match (result, self.failing.as_mut()) {
            (Ok(()), None) => {}
            (Ok(()), Some(f)) => {
                tracing::info!(failed = f.failed, "packet capture writes work again");
                self.failing = None;
            }
            (Err(e), None) => {
                self.metrics.errors.inc();
                tracing::error!(
                    incident = %id,
                    "packet capture: {e}; further failures are counted in detector_capture_write_errors_total and logged at most once a minute"
                );
                self.failing = Some(Failing { since_logged: std::time::Instant::now(), failed: 1 });
            }
            (Err(e), Some(f)) => {
                self.metrics.errors.inc();
                f.failed += 1;
                if f.since_logged.elapsed() >= Duration::from_secs(60) {
                    tracing::error!(incident = %id, failed = f.failed, "packet capture still failing: {e}");
                    f.since_logged = std::time::Instant::now();
                }
            }
        }
    }

    fn start(
        &mut self,
        id: &str,
        iface: &str,
        comment: &str,
        pre: &[super::Packet],
        packets: &[super::Packet],
    ) -> Result<(), String> {
        let path = path(&self.dir, id).map_err(|e| e.to_string())?;
        let dir = self.dir.join(DIR);
        fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut bytes = pcapng::header(comment, iface, self.cfg.snaplen);
        pcapng::packets(&mut bytes, pre, Some(PRE_ATTACK_COMMENT));
        pcapng::packets(&mut bytes, packets, Some(ATTACK_COMMENT));
        let mut file = File::create(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        if let Err(e) = file.write_all(&bytes) {
            drop(file);
            let _ = fs::remove_file(&path);
            return Err(format!("cannot write {}: {e}", path.display()));
        }
        self.metrics.packets.inc_by((pre.len() + packets.len()) as u64);
        tracing::info!(incident = %id, path = %path.display(), pre_attack = pre.len(), packets = packets.len(), "packet capture started");
        let len = bytes.len() as u64;
        self.files.insert(id.to_string(), OpenFile { file, len, attack_started: !packets.is_empty() });
        Ok(())
    }

    fn append(&mut self, id: &str, packets: &[super::Packet]) -> Result<(), String> {
        let path = path(&self.dir, id).map_err(|e| e.to_string())?;
        if !self.files.contains_key(id) {
            // An incident resumed after a restart: its file, cut back to
            // whole blocks by `resume`, goes on.
            let held = fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let s = pcapng::summarize(&held).map_err(|e| format!("{}: {e}", path.display()))?;
            let file = OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            let len = s.complete_len as u64;
            self.files.insert(id.to_string(), OpenFile { file, len, attack_started: s.attack_started });
        }
        let f = self.files.get_mut(id).expect("inserted above");
        let mut bytes = Vec::new();
        pcapng::packets(&mut bytes, packets, (!f.attack_started).then_some(ATTACK_COMMENT));
        if let Err(e) = f.file.write_all(&bytes) {
            // A block written in part would spoil every block after it:
            // cut back to the last whole one (shrinking needs no room).
            let _ = f.file.set_len(f.len);
            return Err(format!("cannot write {}: {e}", path.display()));
        }
        f.len += bytes.len() as u64;
        f.attack_started |= !packets.is_empty();
        self.metrics.packets.inc_by(packets.len() as u64);
        Ok(())
    }

    fn prune(&mut self) {
        let files = list(&self.dir);
        for id in expired(&files, &self.cfg, SystemTime::now(), &self.keep) {
            if let Ok(p) = path(&self.dir, &id) {
                match fs::remove_file(&p) {
                    Ok(()) => {
                        self.metrics.removed.inc();
                        tracing::info!(path = %p.display(), "packet capture removed by retention");
                    }
                    Err(e) => tracing::warn!(path = %p.display(), "cannot remove an expired packet capture: {e}"),
                }
            }
        }
        let files = list(&self.dir);
        self.metrics.files.set(files.len() as i64);
        self.metrics.disk_bytes.set(files.iter().map(|f| f.bytes).sum::<u64>() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_disk(id: &str, bytes: u64, age_days: u64, now: SystemTime) -> OnDisk {
        OnDisk { id: id.into(), bytes, modified: now - Duration::from_secs(age_days * 86400) }
    }

    #[test]
    fn ids_stay_inside_the_directory() {
        let d = Path::new("/var/lib/detector");
        assert_eq!(
            path(d, "web1-eth0-10.0.0.1-20261130T100000.000Z").unwrap(),
            d.join("captures/web1-eth0-10.0.0.1-20261130T100000.000Z.pcapng")
        );
        for bad in ["", "../x", ".hidden", "a/b", "a b", &"x".repeat(300)] {
            assert!(matches!(path(d, bad), Err(CaptureError::BadId(_))), "{bad}");
        }
    }

    #[test]
    fn retention_removes_the_old_then_the_oldest_over_the_cap_but_never_an_open_one() {
        let now = SystemTime::now();
        let cfg = CaptureConfig {
            retention: Duration::from_secs(30 * 86400),
            max_total_bytes: 10 << 20,
            ..Default::default()
        };
        let files = vec![
            on_disk("ancient", 1 << 20, 40, now),
            on_disk("old-open", 4 << 20, 35, now),
            on_disk("a", 4 << 20, 3, now),
            on_disk("b", 4 << 20, 2, now),
            on_disk("c", 4 << 20, 1, now),
        ];
        let keep: HashSet<String> = ["old-open".to_string()].into();
        // 17 MiB: "ancient" is too old; then 16 MiB > 10 MiB: "a" goes
        // (the oldest not kept), leaving 12 MiB... and "b" too.
        assert_eq!(expired(&files, &cfg, now, &keep), vec!["ancient", "a", "b"]);
        assert!(expired(&files[2..], &CaptureConfig::default(), now, &HashSet::new()).is_empty());
    }

    #[test]
    fn the_writer_starts_appends_resumes_and_serves_whole_blocks() {
        let dir = std::env::temp_dir().join(format!("detector-capture-store-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let pkt = |at: u64| super::super::Packet {
            at_ns: at,
            orig_len: 90,
            src: [0; 16],
            dst: [0; 16],
            data: vec![1u8; 90].into(),
        };
        let m = Arc::new(CaptureMetrics::default());
        let mut w = Writer::spawn(&dir, CaptureConfig::default(), m.clone(), HashSet::new()).unwrap();
        w.send(FileOp::Start {
            id: "i1".into(),
            iface: "eth0".into(),
            comment: "incident i1".into(),
            pre_attack: vec![pkt(1), pkt(2)],
            packets: vec![],
        });
        w.send(FileOp::Append { id: "i1".into(), packets: vec![pkt(3)] });
        w.send(FileOp::Append { id: "i1".into(), packets: vec![pkt(4), pkt(5)] });
        w.finish();
        assert_eq!(m.packets.get(), 5);
        let s = pcapng::summarize(&read(&dir, "i1").unwrap()).unwrap();
        assert_eq!(
            (s.packets, s.pre_attack, s.attack_started),
            (5, 2, true),
            "the first appended packet marks the attack"
        );

        // A torn last block: served without it, cut off on resume, and the
        // capture goes on after it.
        let p = path(&dir, "i1").unwrap();
        let whole = fs::read(&p).unwrap();
        fs::write(&p, &whole[..whole.len() - 5]).unwrap();
        assert_eq!(pcapng::summarize(&read(&dir, "i1").unwrap()).unwrap().packets, 4);
        assert_eq!(resume(&dir, "i1"), Some(CaptureInfo { packets: 4, pre_attack: 2, full: false }));
        let mut w = Writer::spawn(&dir, CaptureConfig::default(), m.clone(), ["i1".to_string()].into()).unwrap();
        w.send(FileOp::Append { id: "i1".into(), packets: vec![pkt(6)] });
        w.finish();
        let s = pcapng::summarize(&fs::read(&p).unwrap()).unwrap();
        assert_eq!((s.packets, s.complete_len), (5, fs::metadata(&p).unwrap().len() as usize));

        // Dropped without `finish` (the controller failing): the held
        // append is on disk when the drop returns.
        let mut w = Writer::spawn(&dir, CaptureConfig::default(), m.clone(), ["i1".to_string()].into()).unwrap();
        w.send(FileOp::Append { id: "i1".into(), packets: vec![pkt(7)] });
        drop(w);
        assert_eq!(pcapng::summarize(&fs::read(&p).unwrap()).unwrap().packets, 6);

        // A file that could not be started (here: `captures` is a file, as
        // a full disk would refuse it) starts with the next packets.
        let dir2 = dir.join("second");
        fs::create_dir_all(&dir2).unwrap();
        fs::write(dir2.join(DIR), b"in the way").unwrap();
        let m2 = Arc::new(CaptureMetrics::default());
        let mut t = FileThread {
            dir: dir2.clone(),
            cfg: CaptureConfig::default(),
            metrics: m2.clone(),
            files: HashMap::new(),
            keep: HashSet::new(),
            unstarted: HashMap::new(),
            failing: None,
        };
        t.apply(FileOp::Start {
            id: "i2".into(),
            iface: "eth0".into(),
            comment: "incident i2".into(),
            pre_attack: vec![pkt(1)],
            packets: vec![pkt(2)],
        });
        t.apply(FileOp::Append { id: "i2".into(), packets: vec![pkt(3)] });
        assert_eq!(m2.errors.get(), 2);
        assert!(t.failing.is_some());
        fs::remove_file(dir2.join(DIR)).unwrap();
        t.apply(FileOp::Append { id: "i2".into(), packets: vec![pkt(4), pkt(5)] });
        t.apply(FileOp::Append { id: "i2".into(), packets: vec![pkt(6)] });
        assert!(t.failing.is_none(), "works again");
        let s = pcapng::summarize(&read(&dir2, "i2").unwrap()).unwrap();
        assert_eq!((s.packets, s.pre_attack, s.attack_started), (3, 0, true));

        assert!(matches!(read(&dir, "nope"), Err(CaptureError::NotFound(_))));
        assert_eq!(resume(&dir, "nope"), None);
        fs::write(path(&dir, "junk").unwrap(), b"this is not a pcapng file at all, no").unwrap();
        assert!(matches!(read(&dir, "junk"), Err(CaptureError::Damaged { .. })));
        fs::remove_dir_all(&dir).unwrap();
    }
}
