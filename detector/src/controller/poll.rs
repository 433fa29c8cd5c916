//! The poll loop: every interval, read each interface's maps, feed the
//! detector, publish incidents, expire rules, refresh the top-talker view.
//!
//! It runs on a thread of its own, not on the async runtime: no request,
//! runbook parse, history query or disk write can hold it up. What it hands
//! to others (history rows, saved files, incident events) goes through
//! queues that never block it.

use std::{
    collections::HashMap,
    sync::{mpsc as std_mpsc, Arc, RwLock},
    time::{Duration, Instant},
};

use detector_common::rules::RuleCounters;
use tokio::sync::mpsc;

use super::{probe::Probe, EventSender, RunConfig};
use crate::{
    api::control::SharedMitigator,
    capture::Captures,
    clock::{now_ms, Clock, Every},
    detect::{
        incident::{EventKind, IncidentEvent},
        Detector, Observation,
    },
    history::{HistoryCmd, Writer},
    metrics::Metrics,
    mitigate::host,
    runbook::engine::IncidentCommand,
    statedir::FileWriter,
    view::{iface_view, summary_line, targets_view, TopView},
};

/// How often open incidents' figures reach the history (and runbooks see
/// an `updated` event).
const SNAPSHOT_EVERY: Duration = Duration::from_secs(1);
/// How often the learned baselines are saved.
const BASELINES_EVERY: Duration = Duration::from_secs(60);
/// How often rule counters reach the metrics (a map read per rule and
/// interface, so not every poll).
const RULE_METRICS_EVERY: Duration = Duration::from_secs(1);
/// How often the learned levels and thresholds reach the metrics: a few
/// hundred labelled gauges with networks, which move slowly, so not every
/// poll.
const BASELINE_METRICS_EVERY: Duration = Duration::from_secs(1);
/// How often the host's addresses are looked at again (a new address is
/// allowlisted within this long).
const HOST_ADDRESSES_EVERY: Duration = Duration::from_secs(5);

/// What the poll loop carries from one poll to the next.
pub struct Poller {
    pub cfg: Arc<RunConfig>,
    pub metrics: Arc<Metrics>,
    pub top: Arc<RwLock<TopView>>,
    pub detector: Detector,
    pub history: Writer,
    pub files: FileWriter,
    pub events: EventSender,
    pub mitigator: SharedMitigator,
    /// Status changes and notes asked by runbooks.
    pub commands: mpsc::Receiver<IncidentCommand>,
    /// Last counters seen per (interface, rule id), for the metrics' increments.
    rule_prev: HashMap<(String, String), RuleCounters>,
    /// The wall-clock time of the last poll, for `/healthz`.
    pub last_poll: Arc<std::sync::atomic::AtomicU64>,
    /// Packet captures per incident; None: off.
    pub captures: Option<Captures>,
    /// Interfaces found gone (their program with them), for the warning.
    detached: std::collections::HashSet<String>,
}

/// The running loop: stop it to get the poller and the probes back.
pub struct Running {
    stop: std_mpsc::Sender<()>,
    thread: std::thread::JoinHandle<(Poller, Vec<Probe>)>,
}

impl Running {
    /// Ends the loop after the poll in progress, and hands back its state.
    pub fn stop(self) -> (Poller, Vec<Probe>) {
        let _ = self.stop.send(());
        match self.thread.join() {
            Ok(state) => state,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Poller {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: Arc<RunConfig>,
        metrics: Arc<Metrics>,
        top: Arc<RwLock<TopView>>,
        detector: Detector,
        history: Writer,
        files: FileWriter,
        events: EventSender,
        mitigator: SharedMitigator,
        commands: mpsc::Receiver<IncidentCommand>,
        last_poll: Arc<std::sync::atomic::AtomicU64>,
    ) -> Poller {
        Poller {
            cfg,
            metrics,
            top,
            detector,
            history,
            files,
            events,
            mitigator,
            commands,
            rule_prev: HashMap::new(),
            last_poll,
            captures: None,
            detached: Default::default(),
        }
    }

    pub fn with_captures(mut self, captures: Option<Captures>) -> Poller {
        self.captures = captures;
        self
    }

    /// Starts the loop on a thread of its own.
    pub fn spawn(self, probes: Vec<Probe>) -> std::io::Result<Running> {
        let (stop, stopped) = std_mpsc::channel();
        let thread = std::thread::Builder::new().name("poll".into()).spawn(move || {
            let mut me = self;
            let mut probes = probes;
            me.poll_until(&mut probes, &stopped);
            (me, probes)
        })?;
        Ok(Running { stop, thread })
    }

    /// Polls every interval until `stop` says so (or its sender is gone).
    /// A poll that overruns delays the next one rather than bunching them.
    fn poll_until(&mut self, probes: &mut [Probe], stop: &std_mpsc::Receiver<()>) {
        let start = Instant::now();
        let interval = self.cfg.interval;
        let mut last_poll: Option<Instant> = None;
        let mut summary = Every::new(self.cfg.summary_every, start);
        let mut snapshot = Every::new(SNAPSHOT_EVERY, start);
        let mut baselines = Every::new(BASELINES_EVERY, start);
        let mut rule_metrics = Every::now_and_every(RULE_METRICS_EVERY);
        let mut host_scan = Every::new(HOST_ADDRESSES_EVERY, start);
        let mut baseline_metrics = Every::now_and_every(BASELINE_METRICS_EVERY);
        let mut next = start;
        self.refresh_protected(probes, true);
        loop {
            let now = Instant::now();
            if next > now {
                match stop.recv_timeout(next - now) {
                    Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
            } else if !matches!(stop.try_recv(), Err(std_mpsc::TryRecvError::Empty)) {
                return;
            }
            let now = Instant::now();
            // On time, the next poll is one interval after this one was due;
            // a poll that fell a whole interval behind delays the rest
            // instead of bunching them.
            next += interval;
            if next <= now {
                next = now + interval;
            }

            self.apply_commands();
            let elapsed = last_poll.map(|t| now - t).unwrap_or(Duration::ZERO);
            last_poll = Some(now);
            let wall = now_ms();
            let mut views = Vec::with_capacity(probes.len());
            for probe in probes.iter_mut() {
                match self.poll_one(probe, now - start, elapsed, wall) {
                    Ok(view) => views.push((probe.iface().to_string(), view)),
                    Err(e) => {
                        self.metrics.poll_failed(probe.iface());
                        tracing::warn!(iface = probe.iface(), "poll failed: {e}");
                    }
                }
            }
            if baseline_metrics.due(now) {
                for probe in probes.iter() {
                    self.publish_baselines(probe.iface());
                }
            }
            self.metrics.active_incidents(self.detector.open_incidents());
            self.poll_rules(rule_metrics.due(now));
            if host_scan.due(now) {
                self.refresh_host_allowlist();
                self.refresh_protected(probes, false);
                self.check_attachments(probes);
            }
            self.metrics.poll_took(now.elapsed().as_secs_f64());
            self.last_poll.store(wall, std::sync::atomic::Ordering::Relaxed);

            if snapshot.due(now) {
                for inc in self.detector.open_incidents() {
                    self.history.send(HistoryCmd::Snapshot(Box::new(inc.clone())));
                    // For runbooks only: no timeline entry, no history row.
                    let _ = self.events.send(IncidentEvent {
                        kind: EventKind::Updated,
                        at: wall,
                        detail: String::new(),
                        family: None,
                        incident: inc.clone(),
                    });
                }
            }
            if baselines.due(now) {
                self.save_baselines();
            }
            let log_summary = summary.due(now);
            let mut top = self.top.write().unwrap_or_else(|p| p.into_inner());
            for (iface, view) in views {
                if log_summary {
                    tracing::info!(iface, "{}", summary_line(&view));
                } else {
                    tracing::debug!(iface, "{}", summary_line(&view));
                }
                top.interfaces.insert(iface, view);
            }
        }
    }

    /// Reads one interface, feeds the detector, and returns its view.
    fn poll_one(
        &mut self,
        probe: &mut Probe,
        mono: Duration,
        elapsed: Duration,
        wall: u64,
    ) -> Result<crate::view::IfaceView, crate::kernel::counters::CounterError> {
        let reading = probe.read(mono, elapsed, &self.metrics)?;
        let seconds = elapsed.as_secs_f64();
        let samples = reading.sample_view(seconds);
        let iface = probe.iface().to_string();
        let obs = Observation {
            iface: &iface,
            now_ms: wall,
            seconds,
            classes: &reading.rates,
            sources: &reading.sources.active,
            samples: &samples,
            packets: &reading.samples,
            targets: &reading.targets,
        };
        let mut events = self.detector.observe(&obs);
        if let Some(c) = &mut self.captures {
            let under = self.detector.under_attack(&iface);
            for op in c.recorder.poll(&iface, reading.frames.batch(), under, self.detector.open_incidents()) {
                c.writer.send(op);
            }
            c.writer.tick();
            for (id, info) in c.recorder.open() {
                self.detector.set_capture(id, info);
            }
            for ev in &mut events {
                if let Some(info) = c.recorder.info(&ev.incident.id) {
                    ev.incident.capture = Some(info);
                }
            }
        }
        for ev in events {
            self.publish(ev);
        }
        // From the onset, not from the opening: the hold's polls would
        // teach the egress program a spoofed flood's sources.
        probe.set_learning(!self.detector.under_attack(&iface), &self.metrics);
        let names: Vec<&str> = self.detector.protected().groups().iter().map(|g| g.name.as_str()).collect();
        self.metrics.hostgroups(&iface, &names, &reading.targets.groups);
        let mut view = iface_view(
            probe.attachment.mode.name(),
            seconds,
            &reading.rates,
            &reading.sources.active,
            reading.tracked,
            self.cfg.top_n,
        );
        (view.top_targets, view.hostgroups) = targets_view(&reading.targets, &names, self.cfg.top_n);
        Ok(view)
    }

    /// An incident event goes to the log, the metrics, the history and the
    /// event channel, in that order; none of them can stall the loop.
    pub fn publish(&mut self, ev: IncidentEvent) {
        let inc = &ev.incident;
        let families = inc.families.iter().map(|f| f.name()).collect::<Vec<_>>().join(",");
        let top = inc.top_sources.first().map(|s| s.addr.to_string()).unwrap_or_default();
        match ev.kind {
            EventKind::Opened | EventKind::FamilyAdded | EventKind::SeverityChanged => tracing::warn!(
                id = %inc.id, iface = %inc.iface, families, severity = %inc.severity, pps = inc.pps as u64, top_source = top,
                "incident {}: {}", ev.kind.name(), ev.detail
            ),
            _ => tracing::info!(id = %inc.id, iface = %inc.iface, "incident {}: {}", ev.kind.name(), ev.detail),
        }
        self.metrics.incident_event(&ev);
        self.history.send(HistoryCmd::Record(Box::new(ev.clone())));
        // No receiver yet is fine: nothing listens until runbooks do.
        let _ = self.events.send(ev);
    }

    /// Expires rules on time and publishes the rule gauges; when
    /// `counters` is set, also the rule counters (a map read per rule and
    /// interface).
    fn poll_rules(&mut self, counters: bool) {
        let mitigator = self.mitigator.clone();
        let mut m = mitigator.lock().unwrap_or_else(|p| p.into_inner());
        for r in m.expire(Clock::now()) {
            self.metrics.rule_expired();
            self.forget_rule(&r.id);
        }
        self.metrics.rules_in_force(m.rules(), m.allow().len());
        if !counters {
            return;
        }
        let mut live = Vec::new();
        for rule in m.rules() {
            live.push(rule.id.clone());
            for (iface, c) in m.counters(rule.index) {
                let prev = self.rule_prev.insert((iface.to_string(), rule.id.clone()), c).unwrap_or_default();
                self.metrics.rule_counters(&rule.id, &prev, &c);
            }
        }
        let gone: Vec<String> =
            self.rule_prev.keys().map(|(_, id)| id.clone()).filter(|id| !live.contains(id)).collect();
        for id in gone {
            self.forget_rule(&id);
        }
    }

    /// Applies the status changes and notes runbooks asked for since the
    /// last poll; each becomes an incident event like any other.
    fn apply_commands(&mut self) {
        while let Ok(cmd) = self.commands.try_recv() {
            let now = now_ms();
            let (r, reply) = match cmd {
                IncidentCommand::SetStatus { id, status, why, reply } => {
                    (self.detector.set_status(&id, status, now, &why), reply)
                }
                IncidentCommand::AddNote { id, text, reply } => (self.detector.add_note(&id, &text, now), reply),
            };
            let _ = reply.send(r.as_ref().map(|_| ()).map_err(|e| e.to_string()));
            if let Ok(ev) = r {
                self.publish(ev);
            }
        }
    }

    /// Each interface still there, under the index its program was
    /// attached to: a deleted interface takes its XDP program with it, and
    /// one recreated under the same name has none. Its maps still read
    /// (zero traffic), so only this says so: the metric, and a warning when
    /// it changes.
    fn check_attachments(&mut self, probes: &[Probe]) {
        for probe in probes {
            let a = &probe.attachment;
            let attached = crate::iface::index(&a.iface).ok() == Some(a.ifindex);
            if attached == self.detached.contains(&a.iface) {
                if attached {
                    self.detached.remove(&a.iface);
                    tracing::info!(
                        iface = a.iface,
                        "the interface is back under the index the program was attached to"
                    );
                } else {
                    self.detached.insert(a.iface.clone());
                    tracing::warn!(
                        iface = a.iface,
                        "the interface is gone (or was recreated): its XDP program went with it; restart the \
                         controller to attach to the new one"
                    );
                }
            }
            self.metrics.interface_still_attached(&a.iface, a.mode.name(), attached);
        }
    }

    /// Allowlists addresses the host gained since the start.
    fn refresh_host_allowlist(&self) {
        let found = host::own_prefixes();
        let mut m = self.mitigator.lock().unwrap_or_else(|p| p.into_inner());
        match m.refresh_host(&found, Clock::now()) {
            Ok(added) => {
                for a in added {
                    tracing::info!(id = %a.id, prefix = %a.prefix, "allowlisted a new address of the host ({})", a.reason);
                }
            }
            Err(e) => tracing::error!("cannot allowlist a new address of the host: {e}"),
        }
    }

    fn forget_rule(&mut self, id: &str) {
        self.rule_prev.retain(|(_, r), _| r != id);
        self.metrics.forget_rule(id);
    }

    fn publish_baselines(&self, iface: &str) {
        self.metrics.baselines(iface, &self.detector.iface_baselines(iface), &self.detector.thresholds(iface));
    }

    /// Host mode: protects the host's current addresses, in the detector
    /// and in every probe's prefix trie; with a `networks:` section, the
    /// configured prefixes (`always`: install them even when unchanged, at
    /// start).
    fn refresh_protected(&mut self, probes: &mut [Probe], always: bool) {
        let changed = self.detector.set_host_addresses(host::addresses().into_iter().map(|(_, ip)| ip));
        if !(changed || always) {
            return;
        }
        let entries = self.detector.protected().kernel_entries();
        for probe in probes.iter_mut() {
            match probe.set_protected(&entries) {
                Ok(true) => {
                    tracing::info!(iface = probe.iface(), prefixes = entries.len(), "protected networks installed")
                }
                Ok(false) => {}
                Err(e) => tracing::error!(iface = probe.iface(), "cannot install the protected networks: {e}"),
            }
        }
    }

    /// Hands the learned baselines to the file writer (which never makes
    /// the loop wait).
    pub fn save_baselines(&self) {
        self.files.save_baselines(&self.detector.baselines());
    }
}
