//! The TTL keeper: ends announcements on time while no controller runs.
//!
//! gobgpd outlives the controller (as the XDP rules do), and holds no
//! TTLs of its own. The XDP program checks a rule's expiry itself, so a
//! rule stops applying on time with no controller; without a keeper, a
//! blackhole announced for an hour would stay announced for as long as
//! the controller stayed down, after a crash or a clean stop with
//! `mitigation.on_stop: keep` alike. A blackhole kept past its time is an
//! outage of the address it hides.
//!
//! So `detector run` starts `detector bgp keep --state-dir DIR` beside
//! gobgpd, in a session of its own, logging to `bgp-keeper.log`. One
//! keeper per state directory (it holds `bgp-keeper.lock`); a second one
//! exits at once. Every second it tries `bgp.lock`, which the controller's
//! BGP subsystem holds for as long as it runs (an `flock`: released even
//! by SIGKILL). While it is held, the keeper does nothing. When it is free:
//!
//! - no recorded gobgpd runs: the keeper exits (nothing is announced);
//! - otherwise it compares gobgpd's paths with `bgp.json` ([`sweep`]):
//!   what expired is taken out of the file first, then withdrawn, and a
//!   path the file does not want (a withdrawal a dying controller saved
//!   but never sent) is withdrawn too. It never announces anything, and
//!   leaves everything alone when `bgp.json` is missing, unreadable or
//!   waiting for a take-back ([`Saved::recover`]): those are the next
//!   controller's to sort out.
//!
//! An incident that ended while no controller ran cannot be known here;
//! its announcements end at their TTL, or at the next start.

use std::{
    fs::File,
    path::{Path, PathBuf},
    time::Duration,
};

use thiserror::Error;

use super::{
    announce::Announcement,
    daemon::{detached, is_gobgpd, Record},
    gobgp::Client,
    plan::{changes, Change, Saved},
    service::STATE_FILE,
};
use crate::{clock::now_ms, statedir};

/// Held by the controller's BGP subsystem while it runs.
pub const LOCK_FILE: &str = "bgp.lock";
/// Held by the one keeper of a state directory.
pub const KEEPER_LOCK_FILE: &str = "bgp-keeper.lock";
/// Where the keeper logs.
pub const LOG_FILE: &str = "bgp-keeper.log";
/// How often the keeper looks.
const TICK: Duration = Duration::from_secs(1);
/// How long the controller waits for a keeper to let go of [`LOCK_FILE`]
/// (it holds it over a few file operations, never over a call to gobgpd).
const LOCK_WAIT: Duration = Duration::from_secs(15);

#[derive(Debug, Error)]
pub enum KeeperError {
    #[error("cannot open {path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("{path} is held by another process for more than {secs} s (another detector on this state directory?)")]
    Busy { path: PathBuf, secs: u64 },
}

/// What one sweep does, decided from the saved set and the daemon's paths
/// ([`sweep`]).
#[derive(Debug, Default, PartialEq)]
pub struct Sweep {
    /// The saved set without what expired, to write before anything is
    /// withdrawn; `None` when nothing expired.
    pub save: Option<Saved>,
    /// The daemon's paths that are not wanted in force at `now_ms`.
    pub withdraw: Vec<Announcement>,
}

/// The keeper's decision at `now_ms` (pure): expired entries leave the
/// saved set, and every path `held` that the rest does not want is
/// withdrawn. Nothing is ever announced, and a saved set waiting for a
/// take-back is left alone.
pub fn sweep(saved: &Saved, held: &[Announcement], now_ms: u64) -> Sweep {
    if saved.recover {
        return Sweep::default();
    }
    let withdraw = changes(&saved.entries, held, now_ms)
        .into_iter()
        .filter_map(|c| match c {
            Change::Withdraw(a) => Some(a),
            Change::Announce(_) => None,
        })
        .collect();
    let save = saved.entries.iter().any(|e| e.expired(now_ms)).then(|| Saved {
        entries: saved.entries.iter().filter(|e| !e.expired(now_ms)).cloned().collect(),
        recover: false,
    });
    Sweep { save, withdraw }
}

/// An exclusive `flock` on `dir/name` (created if missing) without
/// waiting: `None` while another process holds it.
fn try_lock(dir: &Path, name: &str) -> Result<Option<File>, KeeperError> {
    let path = dir.join(name);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| KeeperError::Open { path: path.clone(), source })?;
    match statedir::try_lock_exclusive(&f) {
        Ok(true) => Ok(Some(f)),
        Ok(false) => Ok(None),
        Err(source) => Err(KeeperError::Open { path, source }),
    }
}

/// The controller's hold on [`LOCK_FILE`], for as long as it runs: waits
/// out a keeper's sweep.
pub fn hold(state_dir: &Path) -> Result<File, KeeperError> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        if let Some(f) = try_lock(state_dir, LOCK_FILE)? {
            return Ok(f);
        }
        if std::time::Instant::now() >= deadline {
            return Err(KeeperError::Busy { path: state_dir.join(LOCK_FILE), secs: LOCK_WAIT.as_secs() });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts a keeper for `state_dir` (see the [module](self)), in a session
/// of its own, from this very binary. One that finds another keeper there
/// exits at once.
pub fn spawn(state_dir: &Path) {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            tracing::error!("cannot start the BGP TTL keeper (where is this binary? {e}); TTLs are enforced only while a controller runs");
            return;
        }
    };
    let mut c = std::process::Command::new(exe);
    c.args(["bgp", "keep", "--state-dir"]).arg(state_dir).stdin(std::process::Stdio::null());
    detached(&mut c, &state_dir.join(LOG_FILE));
    match c.spawn() {
        // Reaped when it exits, so that it leaves no zombie behind while
        // the controller runs.
        Ok(mut child) => {
            let pid = child.id();
            std::thread::spawn(move || child.wait());
            tracing::debug!(pid, "BGP TTL keeper started (it exits at once if one already runs)");
        }
        Err(e) => {
            tracing::error!("cannot start the BGP TTL keeper: {e}; TTLs are enforced only while a controller runs")
        }
    }
}

/// `detector bgp keep`: the keeper's loop (see the [module](self)).
/// Returns when gobgpd is gone with no controller running, when the state
/// directory is gone, or at once when another keeper holds it.
pub async fn keep(state_dir: &Path) -> Result<(), KeeperError> {
    let Some(_keeper) = try_lock(state_dir, KEEPER_LOCK_FILE)? else { return Ok(()) };
    tracing::info!(
        pid = std::process::id(),
        "BGP TTL keeper for {}: ends announcements on time while no controller runs",
        state_dir.display()
    );
    let mut client: Option<(u16, Client)> = None;
    let mut told: Option<String> = None;
    loop {
        tokio::time::sleep(TICK).await;
        if !state_dir.is_dir() {
            tracing::info!("the state directory is gone; the keeper exits");
            return Ok(());
        }
        // The lock is held only around the state directory's files, never
        // over a call to gobgpd: a controller that starts waits for a few
        // file operations at most. A withdrawal sent after the lock is let
        // go is of something the file already says is not wanted; should a
        // controller announce it again meanwhile, its reconciliation puts it
        // back within a second.
        let rec = {
            let Some(_no_controller) = try_lock(state_dir, LOCK_FILE)? else {
                told = None;
                continue;
            };
            let Some(rec) = Record::load(state_dir).filter(|r| is_gobgpd(r.pid)) else {
                tracing::info!("no gobgpd runs and no controller: nothing is announced; the keeper exits");
                return Ok(());
            };
            rec
        };
        let c = match &mut client {
            Some((port, c)) if *port == rec.api_port => c,
            _ => &mut client.insert((rec.api_port, Client::new(rec.api_port))).1,
        };
        let held = match c.list().await {
            Ok(l) => l.announcements,
            Err(e) => {
                warn_once(&mut told, format!("listing gobgpd's paths: {e}; retried every second"));
                continue;
            }
        };
        let Some(no_controller) = try_lock(state_dir, LOCK_FILE)? else {
            continue;
        };
        let saved = match statedir::read(state_dir, STATE_FILE) {
            statedir::Read::Bytes(b) => serde_json::from_slice::<Saved>(&b).map_err(|e| e.to_string()),
            statedir::Read::Missing => Err("it is missing".into()),
            statedir::Read::Failed(e) => Err(e.to_string()),
        };
        let saved = match saved {
            Ok(s) => s,
            Err(e) => {
                warn_once(&mut told, format!("{STATE_FILE} cannot be read ({e}): left to the next controller start"));
                continue;
            }
        };
        told = None;
        let s = sweep(&saved, &held, now_ms());
        if let Some(save) = &s.save {
            // The file first: a withdrawal is never lost.
            if let Err(e) = statedir::write_json(state_dir, STATE_FILE, save) {
                tracing::error!("cannot save the announcements: {e}; nothing withdrawn, retried every second");
                continue;
            }
        }
        drop(no_controller);
        for a in &s.withdraw {
            match c.delete(a).await {
                Ok(()) => {
                    tracing::info!(announcement = %a, "withdrawn with no controller running: its TTL ran out, or it was no longer wanted")
                }
                Err(e) => {
                    tracing::warn!(announcement = %a, "withdrawing: {e}; retried every second");
                    break;
                }
            }
        }
    }
}

/// Logs `line` unless it is the last one logged (`told`): a condition that
/// lasts is told once, not every second.
fn warn_once(told: &mut Option<String>, line: String) {
    if told.as_ref() != Some(&line) {
        tracing::warn!("{line}");
        *told = Some(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        bgp::{announce::Announcement, plan::Entry},
        mitigate::{prefix::Prefix, rule::Origin},
    };

    fn blackhole(host: u8) -> Announcement {
        Announcement::Blackhole {
            prefix: Prefix::host(format!("198.51.100.{host}").parse().unwrap()),
            communities: vec![],
        }
        .normalized()
    }

    fn entry(a: Announcement, expires_ms: Option<u64>) -> Entry {
        Entry {
            announcement: a,
            origin: Origin { by: "cli".into(), runbook: None, incident: None, step: None },
            created_ms: 0,
            expires_ms,
            hold_until_ms: None,
        }
    }

    #[test]
    fn what_expired_leaves_the_file_then_the_daemon() {
        let saved =
            Saved { entries: vec![entry(blackhole(1), Some(1_000)), entry(blackhole(2), Some(5_000))], recover: false };
        let held = [blackhole(1), blackhole(2)];
        // Before either TTL: nothing.
        assert_eq!(sweep(&saved, &held, 999), Sweep::default());
        // The first ran out: out of the file, and withdrawn.
        let s = sweep(&saved, &held, 1_000);
        assert_eq!(s.save, Some(Saved { entries: vec![entry(blackhole(2), Some(5_000))], recover: false }));
        assert_eq!(s.withdraw, vec![blackhole(1)]);
        // The file saved, the withdrawal not yet sent: sent again.
        let s = sweep(s.save.as_ref().unwrap(), &held, 1_001);
        assert_eq!((s.save, s.withdraw), (None, vec![blackhole(1)]));
    }

    #[test]
    fn it_never_announces_and_withdraws_what_is_not_wanted() {
        // Wanted but not held (gobgpd restarted empty with no controller):
        // not announced. Held but not wanted (a withdrawal saved by a
        // controller that died before sending it): withdrawn.
        let saved = Saved { entries: vec![entry(blackhole(1), None)], recover: false };
        let s = sweep(&saved, &[blackhole(3)], 10);
        assert_eq!((s.save, s.withdraw), (None, vec![blackhole(3)]));
    }

    #[test]
    fn a_set_waiting_for_a_take_back_is_left_alone() {
        let saved = Saved { entries: vec![entry(blackhole(1), Some(1))], recover: true };
        assert_eq!(sweep(&saved, &[blackhole(1), blackhole(2)], 10), Sweep::default());
    }
}
