//! The BGP subsystem of `detector run`: owns what should be announced
//! ([`Desired`], persisted in `<state_dir>/bgp.json`), the supervised
//! gobgpd ([`Daemon`], persistent: it outlives the controller) and the
//! task that keeps the daemon's paths equal to the desired set.
//!
//! - Every change to the desired set (a runbook step, the control API, a
//!   TTL running out, an incident resolving) is written to `bgp.json`
//!   **before** the daemon hears of it, so a withdrawal is never lost: a
//!   controller killed in between finds the withdrawal done in the file,
//!   and the next start's reconciliation sends it.
//! - The task reconciles at once after each change, when the daemon
//!   starts (or is adopted), and every second otherwise: a daemon that
//!   came back empty gets everything again, a stale path is withdrawn, a
//!   session that came back Established is re-synced (gobgpd re-advertises
//!   its paths to it by itself; the reconciliation checks they are there).
//! - At start the saved set is restored through the one check again
//!   ([`Desired::restore`]): expired entries are dropped, and so are those
//!   of incidents that ended while no controller ran
//!   ([`Bgp::drop_ended_incidents`]).
//! - A `bgp.json` that exists but cannot be read or parsed is moved aside,
//!   and the first listing of the daemon's paths takes back what it still
//!   announces ([`Desired::recover`]: origin `recovered`, each through the
//!   one check, withdrawn after [`RECOVERED_TTL`]) before anything is
//!   withdrawn: a lost file never withdraws a blackhole in force, as a lost
//!   `rules.json` never removes an XDP rule. A missing file is a first
//!   start: whatever the daemon announces that is not wanted is withdrawn.
//! - On a clean stop the daemon is left running with its announcements
//!   (`mitigation.on_stop: keep`, as the XDP rules are), or everything is
//!   withdrawn and it is stopped (`on_stop: detach`).

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::{sync::Notify, task::JoinHandle};

use super::{
    announce::Announcement,
    check::{Refused, Scope},
    config::BgpConfig,
    daemon::{Daemon, DaemonConfig, DaemonError, Status as DaemonStatus},
    gobgp::{config_toml, Client, Peer, SessionState},
    keeper::{self, KeeperError},
    metrics::BgpMetrics,
    plan::{Desired, Entry, Planner, Record, Saved, RECOVERED_TTL},
};
use crate::{
    api::control::SharedMitigator, clock::now_ms, detect::incident::time_ms, mitigate::rule::Origin,
    networks::Protected, statedir,
};

/// Where the desired set is kept.
pub const STATE_FILE: &str = "bgp.json";
/// How often the daemon is reconciled with nothing else happening.
const TICK: Duration = Duration::from_secs(1);
/// The longest TTL an announcement may have.
pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, Error)]
pub enum BgpError {
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    #[error(transparent)]
    Lock(#[from] KeeperError),
}

/// The one check of an announcement's TTL (runbook step, control API).
pub fn check_ttl(ttl: Duration) -> Result<Duration, String> {
    if ttl < Duration::from_secs(1) || ttl > MAX_TTL {
        return Err(format!("ttl: {} is not from 1s to 7d", humantime::format_duration(ttl)));
    }
    Ok(ttl)
}

/// An announcement in force, as `detector bgp status` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EntryView {
    pub key: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub describe: String,
    pub origin: Origin,
    #[serde(with = "time_ms")]
    pub created_at: u64,
    #[serde(with = "time_ms::option", default)]
    pub expires_at: Option<u64>,
    /// Kept until then even when its incident resolves sooner.
    #[serde(with = "time_ms::option", default, skip_serializing_if = "Option::is_none")]
    pub held_until: Option<u64>,
}

impl EntryView {
    pub fn of(e: &Entry) -> EntryView {
        EntryView {
            key: e.key(),
            kind: e.announcement.kind().name().into(),
            describe: e.announcement.describe(),
            origin: e.origin.clone(),
            created_at: e.created_ms,
            expires_at: e.expires_ms,
            held_until: e.hold_until_ms,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NeighborView {
    pub address: String,
    pub remote_as: u32,
    pub description: String,
    pub state: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DaemonView {
    pub pid: Option<u32>,
    pub api_port: u16,
    pub starts: u64,
    pub restarts: u64,
    pub adopted: bool,
}

/// `GET /v1/bgp`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusView {
    pub dry_run: bool,
    pub daemon: DaemonView,
    pub neighbors: Vec<NeighborView>,
    pub announcements: Vec<EntryView>,
    /// The last changes sent (or, in dry run, recorded).
    pub recent: Vec<Record>,
    /// The last reconciliation's error, if it failed.
    pub error: Option<String>,
}

struct Inner {
    desired: Desired,
    planner: Planner,
    peers: Vec<Peer>,
    error: Option<String>,
    /// The desired set changed and is not yet on disk.
    dirty: bool,
    /// The saved set was lost: the next listing of the daemon's paths
    /// takes them back ([`Saved::recover`]).
    recover: bool,
    daemon: DaemonStatus,
}

/// The subsystem (see the [module](self)).
pub struct Bgp {
    cfg: BgpConfig,
    protected: Protected,
    mitigator: SharedMitigator,
    state_dir: PathBuf,
    metrics: BgpMetrics,
    neighbors: Vec<String>,
    inner: Mutex<Inner>,
    wake: Notify,
    daemon: tokio::sync::Mutex<Option<Daemon>>,
    task: Mutex<Option<JoinHandle<()>>>,
    /// `bgp.lock`, held while this runs: the TTL keeper stands by
    /// ([`keeper`]).
    _lock: std::fs::File,
}

/// What became of an announcement asked for.
pub type Admitted = Result<Option<Entry>, Refused>;

impl Bgp {
    /// Restores the saved set, starts (or adopts) gobgpd, and starts the
    /// reconciliation task.
    pub fn start(
        cfg: BgpConfig,
        protected: Protected,
        mitigator: SharedMitigator,
        state_dir: &Path,
        metrics: BgpMetrics,
    ) -> Result<Arc<Bgp>, BgpError> {
        // Before bgp.json is read: a keeper's sweep is done with it.
        let lock = keeper::hold(state_dir)?;
        let mut toml = config_toml(&cfg);
        if cfg.dry_run {
            // Part of the fingerprint: a gobgpd a sending run left, with
            // its paths, is not adopted by a dry run (which never lists
            // nor withdraws them), but replaced by one that holds none.
            toml.push_str("# bgp.dry_run: true: the detector sends this daemon nothing\n");
        }
        let daemon_cfg =
            DaemonConfig::prepare(state_dir, &toml, cfg.gobgpd.path.as_deref(), cfg.gobgpd.api_port)?.persistent();
        let neighbors: Vec<String> = cfg.neighbors.iter().map(|n| n.address.to_string()).collect();
        let planner = Planner::new(cfg.limits.max_changes_per_minute, cfg.dry_run);
        let bgp = Arc::new(Bgp {
            neighbors,
            protected,
            mitigator,
            state_dir: state_dir.to_path_buf(),
            metrics,
            inner: Mutex::new(Inner {
                desired: Desired::new(),
                planner,
                peers: Vec::new(),
                error: None,
                dirty: false,
                recover: false,
                daemon: DaemonStatus::default(),
            }),
            wake: Notify::new(),
            daemon: tokio::sync::Mutex::new(None),
            task: Mutex::new(None),
            _lock: lock,
            cfg,
        });
        bgp.restore();
        let daemon = Daemon::spawn(daemon_cfg);
        let watch = daemon.watch();
        *bgp.daemon.try_lock().expect("not shared yet") = Some(daemon);
        let task = tokio::spawn(bgp.clone().run(watch));
        *bgp.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        if !bgp.cfg.dry_run {
            keeper::spawn(state_dir);
        }
        Ok(bgp)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks with the protected networks, the mitigator's allowlist in
    /// force and the limits.
    fn with_scope<T>(&self, f: impl FnOnce(&Scope) -> T) -> T {
        let allow = self.mitigator.lock().unwrap_or_else(|p| p.into_inner()).allow().to_vec();
        f(&Scope::new(&self.cfg, &self.protected, &allow))
    }

    fn restore(&self) {
        let path = self.state_dir.join(STATE_FILE);
        let ttl = humantime::format_duration(RECOVERED_TTL);
        let taken_back = format!(
            "what gobgpd still announces is taken back (origin recovered, withdrawn after {ttl} unless announced \
             again), not withdrawn"
        );
        let saved = match statedir::read(&self.state_dir, STATE_FILE) {
            statedir::Read::Bytes(b) => match serde_json::from_slice::<Saved>(&b) {
                Ok(s) => {
                    if s.recover {
                        tracing::warn!(
                            "{} was lost at an earlier start, before gobgpd's paths were listed; {taken_back}",
                            path.display()
                        );
                    }
                    s
                }
                Err(e) => {
                    match statedir::move_aside(&path) {
                        Ok(aside) => tracing::error!(
                            "{} is unreadable ({e}); moved to {}; {taken_back}",
                            path.display(),
                            aside.display()
                        ),
                        Err(m) => tracing::error!(
                            "{} is unreadable ({e}) and cannot be moved aside ({m}); {taken_back}",
                            path.display()
                        ),
                    }
                    Saved { entries: Vec::new(), recover: true }
                }
            },
            statedir::Read::Missing => Saved::default(),
            statedir::Read::Failed(e) => {
                tracing::error!("cannot read the saved announcements: {e}; {taken_back}");
                Saved { entries: Vec::new(), recover: true }
            }
        };
        let recover = saved.recover;
        let before = saved.entries.len();
        let now = now_ms();
        let (desired, refused) = self.with_scope(|scope| Desired::restore(saved, scope, now));
        for (e, why) in &refused {
            tracing::warn!(announcement = %e.announcement, "a saved announcement is refused now, and withdrawn: {why}");
        }
        let expired = before - desired.len() - refused.len();
        if expired > 0 {
            tracing::info!(expired, "announcements whose TTL ran out while no controller ran: withdrawn");
        }
        if !desired.is_empty() {
            tracing::info!(announcements = desired.len(), "announcements restored from the state directory");
        }
        let mut inner = self.lock();
        inner.desired = desired;
        inner.recover = recover;
        inner.dirty = true;
        self.persist(&mut inner);
    }

    /// Takes back what the daemon announces (`held`, listed once the saved
    /// set was lost): see [`Desired::recover`].
    fn take_back(&self, held: &[Announcement], now: u64) {
        let allow = self.mitigator.lock().unwrap_or_else(|p| p.into_inner()).allow().to_vec();
        let scope = Scope::new(&self.cfg, &self.protected, &allow);
        let mut inner = self.lock();
        let (back, refused) = inner.desired.recover(held, &scope, now);
        let ttl = humantime::format_duration(RECOVERED_TTL);
        for e in &back {
            tracing::warn!(
                announcement = %e.announcement,
                "announcement in force recovered from gobgpd; {STATE_FILE} had no record of it, so its origin and TTL \
                 are lost: withdrawn after {ttl} unless announced again"
            );
        }
        for (a, why) in &refused {
            self.metrics.refused(why.reason());
            tracing::warn!(announcement = %a, "an announcement gobgpd still held is refused now, and withdrawn: {why}");
        }
        if back.is_empty() && refused.is_empty() {
            tracing::info!("gobgpd announced nothing to take back");
        }
        inner.recover = false;
        self.persist(&mut inner);
    }

    /// Writes the desired set (atomically) before the daemon hears of it.
    fn persist(&self, inner: &mut Inner) {
        let saved = Saved { recover: inner.recover, ..inner.desired.saved() };
        match statedir::write_json(&self.state_dir, STATE_FILE, &saved) {
            Ok(()) => inner.dirty = false,
            Err(e) => {
                inner.dirty = true;
                tracing::error!("cannot save the announcements: {e}; retried every second");
            }
        }
        self.metrics.announcements(&inner.desired.counts());
    }

    /// Releases the entries of incidents that are not open (`open`: the
    /// incidents the detector resumed): they ended while no controller
    /// ran. Withdrawn, or kept until their hold ends; operator entries
    /// stay until their TTL.
    pub fn drop_ended_incidents(&self, open: &[String]) {
        let (gone, held) = self.release_where(|e| e.origin.incident.as_ref().is_some_and(|i| !open.contains(i)));
        for e in &gone {
            tracing::info!(announcement = %e.announcement, incident = ?e.origin.incident, "its incident ended while no controller ran: withdrawn");
        }
        for e in &held {
            tracing::info!(announcement = %e.announcement, incident = ?e.origin.incident, "its incident ended while no controller ran: kept until its hold ends");
        }
    }

    /// Puts `entries` in force (each through the one check), saves the
    /// set, and wakes the reconciliation.
    pub fn admit(&self, entries: Vec<Entry>) -> Vec<Admitted> {
        let allow = self.mitigator.lock().unwrap_or_else(|p| p.into_inner()).allow().to_vec();
        let scope = Scope::new(&self.cfg, &self.protected, &allow);
        let mut inner = self.lock();
        let out: Vec<Admitted> = entries
            .into_iter()
            .map(|e| {
                let r = inner.desired.admit(e.clone(), &scope);
                match &r {
                    Ok(_) => {
                        tracing::info!(announcement = %e.announcement, origin = ?e.origin, "announcement in force")
                    }
                    Err(why) => {
                        self.metrics.refused(why.reason());
                        tracing::warn!(announcement = %e.announcement, "announcement refused: {why}");
                    }
                }
                r
            })
            .collect();
        if out.iter().any(Result::is_ok) {
            self.persist(&mut inner);
            self.wake.notify_one();
        }
        out
    }

    /// Withdraws the entries `pred` picks; saves, then wakes the
    /// reconciliation.
    pub fn withdraw_where(&self, pred: impl FnMut(&Entry) -> bool) -> Vec<Entry> {
        let mut inner = self.lock();
        let gone = inner.desired.remove_where(pred);
        if !gone.is_empty() {
            self.persist(&mut inner);
            self.wake.notify_one();
        }
        gone
    }

    /// An incident's resolution for the entries `pred` picks (see
    /// [`Desired::release_where`]): withdrawn, or kept until their hold
    /// ends. Saves, then wakes the reconciliation.
    pub fn release_where(&self, pred: impl FnMut(&Entry) -> bool) -> (Vec<Entry>, Vec<Entry>) {
        let mut inner = self.lock();
        let (gone, held) = inner.desired.release_where(pred, now_ms());
        if !gone.is_empty() || !held.is_empty() {
            self.persist(&mut inner);
            self.wake.notify_one();
        }
        (gone, held)
    }

    /// The runbooks with entries in force for `incident`.
    pub fn runbooks_of(&self, incident: &str) -> Vec<String> {
        let inner = self.lock();
        inner
            .desired
            .entries()
            .filter(|e| e.origin.incident.as_deref() == Some(incident))
            .filter_map(|e| e.origin.runbook.clone())
            .collect()
    }

    pub fn entries(&self) -> Vec<Entry> {
        self.lock().desired.entries().cloned().collect()
    }

    pub fn dry_run(&self) -> bool {
        self.cfg.dry_run
    }

    pub fn config(&self) -> &BgpConfig {
        &self.cfg
    }

    pub fn status(&self) -> StatusView {
        let inner = self.lock();
        let neighbors = self
            .cfg
            .neighbors
            .iter()
            .map(|n| {
                let seen = inner.peers.iter().find(|p| p.address == n.address);
                NeighborView {
                    address: n.address.to_string(),
                    remote_as: n.remote_as,
                    description: n.description.clone().unwrap_or_default(),
                    state: seen.map(|p| p.state.name()).unwrap_or("unknown").to_string(),
                }
            })
            .collect();
        StatusView {
            dry_run: self.cfg.dry_run,
            daemon: DaemonView {
                pid: inner.daemon.pid,
                api_port: self.cfg.gobgpd.api_port,
                starts: inner.daemon.starts,
                restarts: inner.daemon.restarts,
                adopted: inner.daemon.adopted,
            },
            neighbors,
            announcements: inner.desired.entries().map(EntryView::of).collect(),
            recent: inner.planner.recent().cloned().collect(),
            error: inner.error.clone(),
        }
    }

    /// The reconciliation loop (see the [module](self)).
    async fn run(self: Arc<Self>, mut daemon: tokio::sync::watch::Receiver<DaemonStatus>) {
        let mut client = Client::new(self.cfg.gobgpd.api_port);
        let mut restarts_seen = 0;
        let mut established: Vec<std::net::IpAddr> = Vec::new();
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(TICK) => {}
                r = daemon.changed() => if r.is_err() { return },
            }
            let status = *daemon.borrow();
            if status.restarts > restarts_seen {
                self.metrics.restarted(status.restarts - restarts_seen);
                restarts_seen = status.restarts;
            }
            let now = now_ms();
            // The state of the daemon's sessions (for status and metrics).
            let peers = if status.pid.is_some() { client.peers().await.ok() } else { None };
            let up: Vec<std::net::IpAddr> =
                peers.iter().flatten().filter(|p| p.state == SessionState::Established).map(|p| p.address).collect();
            for a in up.iter().filter(|a| !established.contains(a)) {
                tracing::info!(neighbor = %a, "BGP session Established; re-syncing the announcements");
            }
            for a in established.iter().filter(|a| !up.contains(a)) {
                tracing::warn!(neighbor = %a, "BGP session down");
            }
            established = up;
            self.metrics.sessions(&self.neighbors, peers.as_deref().unwrap_or(&[]));
            // The saved set was lost: nothing is sent before the daemon's
            // paths are taken back. (A dry run sends nothing, and leaves
            // them to the next start that sends.)
            if status.pid.is_some() && !self.cfg.dry_run && self.lock().recover {
                match client.list().await {
                    Ok(listed) => self.take_back(&listed.announcements, now),
                    Err(e) => {
                        let mut inner = self.lock();
                        inner.daemon = status;
                        if inner.error.as_deref() != Some(&e.to_string()) {
                            tracing::warn!("listing gobgpd's paths to take them back: {e}; retried every second");
                        }
                        inner.error = Some(e.to_string());
                        continue;
                    }
                }
            }
            // Expiry and any pending save, before anything is sent.
            let (desired, mut planner) = {
                let mut inner = self.lock();
                inner.daemon = status;
                if let Some(p) = peers {
                    inner.peers = p;
                }
                let expired = inner.desired.expire(now);
                for e in &expired {
                    tracing::info!(announcement = %e.announcement, "TTL ran out: withdrawn");
                }
                if !expired.is_empty() || inner.dirty {
                    self.persist(&mut inner);
                }
                (inner.desired.clone(), inner.planner.clone())
            };
            if status.pid.is_none() && !planner.dry_run() {
                continue;
            }
            let result = client.sync(&mut planner, &desired, now).await;
            let mut inner = self.lock();
            match result {
                Ok(step) => {
                    for c in &step.apply {
                        self.metrics.changed(c);
                    }
                    inner.error = None;
                }
                Err(e) => {
                    if inner.error.as_deref() != Some(&e.to_string()) {
                        tracing::warn!("reconciling with gobgpd: {e}; retried every second");
                    }
                    inner.error = Some(e.to_string());
                }
            }
            // The planner's budget and records carry over; a change
            // admitted meanwhile is picked up by the next round.
            inner.planner = planner;
        }
    }

    /// The controller's stop. `detach`: withdraw everything, then stop
    /// gobgpd; otherwise leave it running and announcing for the next
    /// start to adopt (the entries stay saved).
    pub async fn stop(&self, detach: bool) {
        if let Some(t) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            t.abort();
        }
        if detach {
            let gone = self.withdraw_where(|_| true);
            if !gone.is_empty() && !self.cfg.dry_run {
                let mut client = Client::new(self.cfg.gobgpd.api_port);
                let mut planner = Planner::new(u32::MAX, false);
                match client.sync(&mut planner, &Desired::new(), now_ms()).await {
                    Ok(s) => tracing::info!(withdrawn = s.apply.len(), "announcements withdrawn at the stop"),
                    Err(e) => tracing::error!("withdrawing at the stop: {e}; stopping gobgpd closes its sessions"),
                }
            }
        }
        let Some(daemon) = self.daemon.lock().await.take() else { return };
        if detach {
            daemon.stop().await;
            tracing::info!("gobgpd stopped");
        } else {
            let n = self.lock().desired.len();
            daemon.release().await;
            tracing::info!(
                announcements = n,
                "gobgpd stays up with its announcements (mitigation.on_stop: keep); the next start adopts it, \
                 `detector detach` stops it"
            );
        }
    }
}

/// The origin of what the CLI announces.
pub fn cli_origin() -> Origin {
    Origin { by: "cli".into(), runbook: None, incident: None, step: None }
}

/// `POST /v1/bgp`: an announcement and its TTL. A blackhole with no
/// community takes the configured ones.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnnounceRequest {
    pub announcement: Announcement,
    pub ttl_ms: u64,
}
