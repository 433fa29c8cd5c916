//! `detector run`: attach to each interface, poll the maps on a fixed
//! interval, feed the detector, publish metrics, incidents and the
//! top-talker view, keep history in the state directory, detach on shutdown.
//!
//! This is the kernel-facing loop; the decisions it feeds on live in the
//! pure modules ([`crate::rates`], [`crate::sources`], [`crate::samples`],
//! [`crate::detect`]).

use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use detector_common::{
    rules::{DropReason, RuleCounters},
    TrafficClass,
};
use prometheus_client::registry::Registry;
use thiserror::Error;
use tokio::sync::{broadcast, mpsc, RwLock};

use crate::{
    clock::now_ms,
    control::{self, ControlError, SharedMitigator},
    counters::{CounterError, CounterMaps},
    detect::{
        config::DetectionConfig,
        family::Family,
        incident::{EventKind, IncidentEvent, Status},
        Detector, Observation,
    },
    ebpf::{self, CountingOptions},
    http::{self, AppState, HttpError},
    metrics::{
        ActionLabels, AttachLabels, ClassLabels, DropLabels, FamilyLabels, IfaceFamilyLabels, IfaceLabels,
        IncidentLabels, Metrics, RuleLabels, TableLabels,
    },
    mitigate::{
        config::{MitigationConfig, OnStop},
        host,
        kernel::{KernelError, RuleMaps},
        mitigator::{clock_now, MitigateError, Mitigator},
        pins::{self, LockError, PinError},
        ruleset::{AllowSource, Limits},
    },
    rates::{class_rates, delta, ClassSnapshot},
    runbook::{
        engine::{Engine, Handles, IncidentCommand},
        load::FileError,
    },
    samples::{self, SampleView},
    sources::SourceTracker,
    state::{self, Loaded, StateError},
    store::{Store, StoreCmd, StoreError, Writer},
    view::{iface_view, summary_line, IfaceView, TopView},
    xdp::{self, AttachError, Attachment, ModeChoice},
};

/// Everything `detector run` was told.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub ifaces: Vec<String>,
    pub mode: ModeChoice,
    pub force: bool,
    pub interval: Duration,
    pub metrics_addr: SocketAddr,
    pub api_token: Option<String>,
    pub max_sources: u32,
    pub top_n: usize,
    /// A source unchanged this long is removed from the per-source map.
    pub idle_after: Duration,
    /// How often the summary line is logged.
    pub summary_every: Duration,
    /// This host's name in incidents.
    pub node: String,
    pub state_dir: PathBuf,
    pub detection: DetectionConfig,
    pub mitigation: MitigationConfig,
    /// The runbook directory; `None`: no runbooks.
    pub runbooks: Option<PathBuf>,
}

#[derive(Debug, Error)]
pub enum RunError {
    #[error(transparent)]
    Attach(#[from] AttachError),
    #[error("interface '{iface}': {source}")]
    Counters { iface: String, source: Box<CounterError> },
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("interface '{0}' is named twice")]
    DuplicateInterface(String),
    #[error("no interface given: pass --iface at least once")]
    NoInterface,
    #[error("the poll interval must be between 10ms and 60s, not {0:?}")]
    Interval(Duration),
    #[error("'{0}' is not a usable node name (1 to 64 letters, digits, '.', '-' or '_')")]
    Node(String),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Pins(#[from] PinError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("interface '{iface}': {source}")]
    Rules { iface: String, source: Box<KernelError> },
    #[error("restoring the saved rules: {0}")]
    Restore(Box<MitigateError>),
    #[error("{0}")]
    Runbooks(FileError),
}

/// Where the controller's incident events go (the runbook engine listens).
/// Sending never waits: a receiver that falls behind loses events, and is
/// told so by the channel.
pub type EventSender = broadcast::Sender<IncidentEvent>;

/// Room for this many events per receiver before it lags.
pub const EVENT_CAPACITY: usize = 1024;

/// How often open incidents' figures and the baselines reach the disk.
const SNAPSHOT_EVERY: Duration = Duration::from_secs(1);
const BASELINES_EVERY: Duration = Duration::from_secs(60);
/// Samples read per interface per poll, at most.
const MAX_SAMPLES: usize = 4 * samples::TARGET_PER_POLL;

/// How often rule counters reach the metrics.
const RULE_METRICS_EVERY: Duration = Duration::from_secs(1);
/// How often the host's addresses are looked at again (a new address is
/// allowlisted within this long).
const HOST_ADDRESSES_EVERY: Duration = Duration::from_secs(5);

/// One attached interface and what the poller remembers about it.
struct Probe {
    attachment: Attachment,
    /// Held while this controller drives the interface's pinned state.
    _lock: std::fs::File,
    maps: CounterMaps,
    prev: ClassSnapshot,
    tracker: SourceTracker,
    divisor: u32,
}

impl Probe {
    fn iface(&self) -> &str {
        &self.attachment.iface
    }
}

/// Runs until `shutdown` resolves; then detaches everything and returns.
pub async fn run(cfg: RunConfig, events: EventSender, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    validate(&cfg)?;
    http::check_exposure(cfg.metrics_addr, cfg.api_token.as_deref())?;
    let listener = http::bind(cfg.metrics_addr).await?;
    // A missing interface is reported before anything touches the disk.
    for iface in &cfg.ifaces {
        crate::iface::index(iface).map_err(AttachError::from)?;
    }

    state::ensure_dir(&cfg.state_dir)?;
    let store = Store::open(&cfg.state_dir)?;
    let resumed = store.open_incidents_of(&cfg.node)?;
    let writer = Writer::spawn(store);

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);

    let mut detector = Detector::new(cfg.detection.clone(), cfg.node.clone());
    match state::load_baselines(&cfg.state_dir) {
        Loaded::Baselines(b) => {
            detector.load_baselines(&b);
            for iface in &cfg.ifaces {
                let learned =
                    detector.class_baseline(iface, TrafficClass::Udp).map(|b| b.learned_seconds).unwrap_or(0.0);
                tracing::info!(
                    iface,
                    learned = %humantime::format_duration(Duration::from_secs(learned as u64)),
                    warm = detector.warm(iface),
                    "baselines loaded from the state directory"
                );
            }
        }
        Loaded::None => tracing::info!(
            warmup = %humantime::format_duration(cfg.detection.baseline.warmup),
            "no saved baselines: learning normal traffic; until the warm-up ends only the static floors raise incidents"
        ),
        Loaded::Unreadable(why) => tracing::warn!("saved baselines unreadable, learning afresh: {why}"),
    }
    let now = now_ms();
    for inc in resumed {
        let id = inc.id.clone();
        let watched = cfg.ifaces.contains(&inc.iface);
        let iface = inc.iface.clone();
        detector.resume(inc, now);
        if watched {
            tracing::info!(id, iface, "resuming an incident open at the last stop");
        } else if let Ok(ev) =
            detector.set_status(&id, Status::Resolved, now, &format!("interface {iface} is no longer watched"))
        {
            writer.send(StoreCmd::Record(Box::new(ev)));
        }
    }

    let control_listener = control::bind(&cfg.state_dir).await?;
    let m = &cfg.mitigation;
    let mut mitigator = Mitigator::new(Limits { max_rules: m.max_rules, max_allow: m.max_allow }, &cfg.state_dir);
    let mut probes = Vec::new();
    for iface in &cfg.ifaces {
        // On error the probes attached so far are dropped, which detaches them.
        let counters_err = |source| RunError::Counters { iface: iface.clone(), source: Box::new(source) };
        let pin_dir = pins::dir(iface)?;
        pins::prepare(&pin_dir)?;
        let lock = pins::lock(&pin_dir, iface)?;
        let opts = CountingOptions {
            max_sources: cfg.max_sources,
            max_rules: m.max_rules,
            max_allow: m.max_allow,
            max_buckets: m.max_rate_limited_sources,
            pins: Some((pin_dir.clone(), iface.clone())),
        };
        let mut ebpf = ebpf::load_counting(&opts).map_err(AttachError::from)?;
        let mut maps = CounterMaps::take(&mut ebpf).map_err(counters_err)?;
        let rule_maps = RuleMaps::take(&mut ebpf)
            .map_err(|source| RunError::Rules { iface: iface.clone(), source: Box::new(source) })?;
        let divisor = 64;
        maps.set_sample_divisor(divisor).map_err(counters_err)?;
        let attachment = xdp::attach(ebpf, iface, cfg.mode, cfg.force, Some(&pin_dir))?;
        if attachment.adopted {
            tracing::info!(
                iface,
                mode = %attachment.mode,
                entries = rule_maps.entries(),
                "XDP program replaced in the pinned link of an earlier run; its rules and counters carry on"
            );
        } else {
            tracing::info!(iface, mode = %attachment.mode, "XDP program attached");
        }
        mitigator.add_interface(iface, rule_maps);
        metrics
            .attached
            .get_or_create(&AttachLabels { iface: iface.clone(), mode: attachment.mode.name().into() })
            .set(1.0);
        metrics.source_capacity.get_or_create(&IfaceLabels { iface: iface.clone() }).set(maps.source_capacity() as i64);
        // Every class and family is exported from the start, at zero.
        for class in TrafficClass::ALL {
            let l = ClassLabels { iface: iface.clone(), class: class.name().into() };
            let _ = metrics.packets.get_or_create(&l);
            let _ = metrics.bytes.get_or_create(&l);
        }
        probes.push(Probe {
            attachment,
            _lock: lock,
            maps,
            prev: ClassSnapshot::default(),
            tracker: SourceTracker::new(cfg.idle_after),
            divisor,
        });
    }
    for other in pins::pinned_interfaces().into_iter().filter(|i| !cfg.ifaces.contains(i)) {
        tracing::warn!(
            iface = %other,
            "an earlier run left its XDP program and rules pinned on '{other}', which this run does not watch; they stay in force until `detector detach --iface {other}`"
        );
    }
    allow_host_and_config(&mut mitigator, &cfg.mitigation);
    let expired = mitigator.restore(clock_now()).map_err(|e| RunError::Restore(Box::new(e)))?;
    for r in &expired {
        tracing::info!(rule = %r.describe(), "rule expired while no controller ran");
    }
    if !mitigator.rules().is_empty() {
        tracing::info!(rules = mitigator.rules().len(), "rules restored from the state directory");
    }
    let mitigator: SharedMitigator = Arc::new(Mutex::new(mitigator));
    let metrics = Arc::new(metrics);
    metrics.table_capacity.get_or_create(&TableLabels { table: "rules".into() }).set(m.max_rules as i64);
    metrics.table_capacity.get_or_create(&TableLabels { table: "allowlist".into() }).set(m.max_allow as i64);

    // Runbooks: subscribed before the first poll, so no event is missed.
    let (commands_tx, commands) = mpsc::channel::<IncidentCommand>(256);
    let history = writer.sender();
    let (engine, load_errors) = Engine::new(
        cfg.runbooks.clone(),
        Handles {
            mitigator: mitigator.clone(),
            commands: commands_tx,
            history: Arc::new(move |ex| {
                let _ = history.send(StoreCmd::Execution(Box::new(ex)));
            }),
            metrics: metrics.clone(),
        },
    )
    .map_err(RunError::Runbooks)?;
    report_runbooks(&engine, &load_errors, &metrics).await;
    let engine_task = tokio::spawn(engine.clone().run(events.subscribe()));
    let reloader = tokio::spawn(reload_on_sighup(engine.clone(), metrics.clone()));
    let watcher = engine.directory().map(|dir| {
        let m = metrics.clone();
        tokio::spawn(crate::runbook::watch::watch(engine.clone(), dir.to_path_buf(), move |engine, errors| {
            let m = m.clone();
            async move { report_runbooks(&engine, &errors, &m).await }
        }))
    });
    for f in Family::ALL {
        let _ = metrics.active_incidents.get_or_create(&FamilyLabels { family: f.name().into() });
    }

    let state = Arc::new(AppState {
        registry,
        top: RwLock::new(TopView::default()),
        token: cfg.api_token.clone(),
        state_dir: cfg.state_dir.clone(),
        mitigator: Some(mitigator.clone()),
    });
    let server = axum::serve(listener, http::router(state.clone()));
    tracing::info!(addr = %cfg.metrics_addr, "serving /metrics, /api/top, /api/incidents and /healthz");
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let server_task = tokio::spawn(async move {
        let _ = server
            .with_graceful_shutdown(async {
                let _ = http_stopped.await;
            })
            .await;
    });
    let control_server = axum::serve(control_listener, control::router(mitigator.clone(), metrics.clone()));
    tracing::info!(socket = %cfg.state_dir.join(control::SOCKET).display(), "control API listening");
    let (stop_control, control_stopped) = tokio::sync::oneshot::channel::<()>();
    let control_task = tokio::spawn(async move {
        let _ = control_server
            .with_graceful_shutdown(async {
                let _ = control_stopped.await;
            })
            .await;
    });

    let mut ctx = Loop {
        cfg: &cfg,
        metrics: &metrics,
        state: &state,
        detector,
        writer,
        events,
        mitigator: mitigator.clone(),
        rule_prev: HashMap::new(),
        commands,
    };
    tokio::select! {
        _ = shutdown => tracing::info!("shutting down"),
        _ = ctx.poll_forever(&mut probes) => {}
    }

    reloader.abort();
    if let Some(w) = watcher {
        w.abort();
    }
    let _ = stop_http.send(());
    let _ = server_task.await;
    let _ = stop_control.send(());
    let _ = control_task.await;
    let _ = std::fs::remove_file(cfg.state_dir.join(control::SOCKET));
    let in_force = {
        let mut m = mitigator.lock().unwrap_or_else(|p| p.into_inner());
        m.expire(clock_now());
        if cfg.mitigation.on_stop == OnStop::Detach {
            if let Err(e) = m.clear(clock_now()) {
                tracing::error!("clearing the rules: {e}");
            }
        }
        m.rules().len()
    };
    for probe in probes {
        let iface = probe.attachment.iface.clone();
        if in_force > 0 && cfg.mitigation.on_stop == OnStop::Keep {
            tracing::info!(
                iface,
                rules = in_force,
                "XDP program and rules stay in force (until their TTLs run out, or the next start adopts them); `detector detach --iface {iface}` removes them"
            );
            continue;
        }
        match probe.attachment.detach() {
            Ok(()) => tracing::info!(iface, "XDP program detached"),
            Err(e) => tracing::error!(iface, "{e}"),
        }
    }
    // Open incidents stay open: the next start resumes them.
    for inc in ctx.detector.open_incidents() {
        ctx.writer.send(StoreCmd::Snapshot(Box::new(inc.clone())));
    }
    if let Err(e) = state::save_baselines(&cfg.state_dir, &ctx.detector.baselines()) {
        tracing::error!("{e}");
    }
    // Closing the event channel ends the engine; executions in flight
    // finish on their own tasks, which the runtime's shutdown ends.
    drop(ctx.events);
    let _ = tokio::time::timeout(Duration::from_secs(2), engine_task).await;
    ctx.writer.finish();
    Ok(())
}

/// Logs what the runbook directory held, and sets the gauges.
async fn report_runbooks(engine: &Engine, errors: &[FileError], metrics: &Metrics) {
    if !engine.has_directory() {
        tracing::info!(
            "no runbook directory (pass --runbooks DIR, or create /etc/detector/runbooks): runbooks are off"
        );
    }
    for e in errors {
        tracing::error!("runbook refused: {e}");
    }
    let books = engine.runbooks().await;
    for l in books.iter() {
        let rb = &l.runbook;
        tracing::info!(
            runbook = %rb.name,
            file = %l.path.display(),
            enabled = rb.enabled,
            dry_run = rb.mode == crate::runbook::schema::Mode::DryRun,
            "runbook loaded"
        );
    }
    metrics.runbooks_loaded.set(books.len() as i64);
    metrics.runbook_load_errors.set(errors.len() as i64);
}

/// SIGHUP reloads the runbook directory.
async fn reload_on_sighup(engine: Arc<Engine>, metrics: Arc<Metrics>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; runbooks load only at start");
        return;
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the runbooks");
        let errors = engine.reload().await;
        report_runbooks(&engine, &errors, &metrics).await;
    }
}

fn validate(cfg: &RunConfig) -> Result<(), RunError> {
    if cfg.ifaces.is_empty() {
        return Err(RunError::NoInterface);
    }
    for (i, a) in cfg.ifaces.iter().enumerate() {
        crate::iface::validate_name(a).map_err(AttachError::from)?;
        if cfg.ifaces[..i].contains(a) {
            return Err(RunError::DuplicateInterface(a.clone()));
        }
    }
    if cfg.interval < Duration::from_millis(10) || cfg.interval > Duration::from_secs(60) {
        return Err(RunError::Interval(cfg.interval));
    }
    let n = &cfg.node;
    if n.is_empty() || n.len() > 64 || !n.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')) {
        return Err(RunError::Node(n.clone()));
    }
    Ok(())
}

/// The host's own addresses, default gateways and loopback, and the
/// configured allowlist: allowlisted before any rule is restored.
fn allow_host_and_config(m: &mut Mitigator, cfg: &MitigationConfig) {
    let now = now_ms();
    for (p, why) in host::own_prefixes() {
        m.allow_fixed(p, AllowSource::Host, &why, now);
    }
    for p in &cfg.allowlist {
        m.allow_fixed(*p, AllowSource::Config, "mitigation.allowlist", now);
    }
    tracing::info!(
        entries = m.allow().len(),
        "allowlist: the host's own addresses, gateways, loopback and the configured prefixes"
    );
}

/// What the poll loop carries from one poll to the next.
struct Loop<'a> {
    cfg: &'a RunConfig,
    metrics: &'a Metrics,
    state: &'a AppState,
    detector: Detector,
    writer: Writer,
    events: EventSender,
    mitigator: SharedMitigator,
    /// Last counters seen per (interface, rule id), for the metrics' increments.
    rule_prev: HashMap<(String, String), RuleCounters>,
    /// Status changes and notes asked by runbooks.
    commands: mpsc::Receiver<IncidentCommand>,
}

impl Loop<'_> {
    async fn poll_forever(&mut self, probes: &mut [Probe]) {
        let start = Instant::now();
        let mut ticker = tokio::time::interval(self.cfg.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_poll: Option<Instant> = None;
        let mut last_summary = Instant::now();
        let mut last_snapshot = Instant::now();
        let mut last_baselines = Instant::now();
        let mut last_rule_metrics = Instant::now() - RULE_METRICS_EVERY;
        let mut last_host_scan = Instant::now();
        loop {
            ticker.tick().await;
            self.apply_commands();
            let now = Instant::now();
            let elapsed = last_poll.map(|t| now - t).unwrap_or(Duration::ZERO);
            last_poll = Some(now);
            let wall = now_ms();
            let mut views = Vec::with_capacity(probes.len());
            for probe in probes.iter_mut() {
                match self.poll_once(probe, now - start, elapsed, wall) {
                    Ok(view) => views.push((probe.iface().to_string(), view)),
                    Err(e) => {
                        self.metrics.poll_errors.get_or_create(&IfaceLabels { iface: probe.iface().into() }).inc();
                        tracing::warn!(iface = probe.iface(), "poll failed: {e}");
                    }
                }
            }
            self.publish_incident_gauges();
            let rule_metrics = now.duration_since(last_rule_metrics) >= RULE_METRICS_EVERY;
            if rule_metrics {
                last_rule_metrics = now;
            }
            self.poll_rules(rule_metrics);
            if now.duration_since(last_host_scan) >= HOST_ADDRESSES_EVERY {
                last_host_scan = now;
                self.refresh_host_allowlist();
            }
            self.metrics.poll_duration.observe(now.elapsed().as_secs_f64());

            if now.duration_since(last_snapshot) >= SNAPSHOT_EVERY {
                last_snapshot = now;
                for inc in self.detector.open_incidents() {
                    self.writer.send(StoreCmd::Snapshot(Box::new(inc.clone())));
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
            if now.duration_since(last_baselines) >= BASELINES_EVERY {
                last_baselines = now;
                if let Err(e) = state::save_baselines(&self.cfg.state_dir, &self.detector.baselines()) {
                    tracing::error!("{e}");
                }
            }
            let log_summary = now.duration_since(last_summary) >= self.cfg.summary_every;
            if log_summary {
                last_summary = now;
            }
            let mut top = self.state.top.write().await;
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

    /// Reads one interface's maps, feeds the detector, and returns the view.
    fn poll_once(
        &mut self,
        probe: &mut Probe,
        mono: Duration,
        elapsed: Duration,
        wall: u64,
    ) -> Result<IfaceView, CounterError> {
        let cur = probe.maps.classes()?;
        let sources = probe.maps.sources()?;
        probe.maps.new_window()?;
        let drained = probe.maps.drain_samples(MAX_SAMPLES);

        let rates = class_rates(&probe.prev, &cur, elapsed);
        let iface = probe.iface().to_string();
        for (class, (p, c)) in TrafficClass::ALL.iter().zip(probe.prev.counters.iter().zip(cur.counters.iter())) {
            let l = ClassLabels { iface: iface.clone(), class: class.name().into() };
            self.metrics.packets.get_or_create(&l).inc_by(delta(p.packets, c.packets));
            self.metrics.bytes.get_or_create(&l).inc_by(delta(p.bytes, c.bytes));
        }
        for reason in DropReason::ALL {
            let (prev, now) = (&probe.prev.dropped[reason as usize], &cur.dropped[reason as usize]);
            for (class, (p, c)) in TrafficClass::ALL.iter().zip(prev.iter().zip(now.iter())) {
                if c.packets == 0 {
                    continue;
                }
                let l = DropLabels { iface: iface.clone(), class: class.name().into(), reason: reason.name().into() };
                self.metrics.dropped_packets.get_or_create(&l).inc_by(delta(p.packets, c.packets));
                self.metrics.dropped_bytes.get_or_create(&l).inc_by(delta(p.bytes, c.bytes));
            }
        }
        probe.prev = cur;

        let update = probe.tracker.update(mono, elapsed, &sources);
        if !update.idle.is_empty() {
            let removed = probe.maps.remove_sources(&update.idle);
            self.metrics.sources_pruned.get_or_create(&IfaceLabels { iface: iface.clone() }).inc_by(removed as u64);
        }
        let tracked = probe.tracker.len();
        self.metrics.source_entries.get_or_create(&IfaceLabels { iface: iface.clone() }).set(tracked as i64);

        // Samples taken at the divisor in force during this interval.
        let view = SampleView::new(&drained, probe.divisor, elapsed.as_secs_f64());
        let next = samples::next_divisor(probe.divisor, drained.len());
        if next != probe.divisor && probe.maps.set_sample_divisor(next).is_ok() {
            probe.divisor = next;
        }
        self.metrics.sample_divisor.get_or_create(&IfaceLabels { iface: iface.clone() }).set(probe.divisor as i64);

        let obs = Observation {
            iface: &iface,
            now_ms: wall,
            seconds: elapsed.as_secs_f64(),
            classes: &rates,
            sources: &update.active,
            samples: &view,
        };
        for ev in self.detector.observe(&obs) {
            self.publish(ev);
        }
        self.publish_baselines(&iface);

        Ok(iface_view(
            probe.attachment.mode.name(),
            elapsed.as_secs_f64(),
            &rates,
            &update.active,
            tracked,
            self.cfg.top_n,
        ))
    }

    /// An incident event goes to the log, the metrics, the history and the
    /// event channel, in that order; none of them can stall the loop.
    fn publish(&mut self, ev: IncidentEvent) {
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
        match ev.kind {
            EventKind::Opened => {
                for f in &inc.families {
                    let l = IncidentLabels { family: f.name().into(), severity: inc.severity.name().into() };
                    self.metrics.incidents.get_or_create(&l).inc();
                }
            }
            EventKind::FamilyAdded => {
                if let Some(f) = ev.family {
                    let l = IncidentLabels { family: f.name().into(), severity: inc.severity.name().into() };
                    self.metrics.incidents.get_or_create(&l).inc();
                }
            }
            _ => {}
        }
        self.writer.send(StoreCmd::Record(Box::new(ev.clone())));
        // No receiver yet is fine: nothing listens until runbooks do.
        let _ = self.events.send(ev);
    }

    /// Expires rules on time, and publishes the rule gauges; when
    /// `metrics` is set, also the rule and drop counters (a map read per
    /// rule and interface, so once a second, not every poll).
    fn poll_rules(&mut self, metrics: bool) {
        let mitigator = self.mitigator.clone();
        let mut m = mitigator.lock().unwrap_or_else(|p| p.into_inner());
        let expired = m.expire(clock_now());
        for r in &expired {
            self.metrics.rules_expired.inc();
            self.forget_rule(&r.id);
        }
        for action in ["drop", "rate_limit"] {
            let n = m.rules().iter().filter(|r| r.action.name() == action).count();
            self.metrics.rules.get_or_create(&ActionLabels { action: action.into() }).set(n as i64);
        }
        self.metrics.table_entries.get_or_create(&TableLabels { table: "rules".into() }).set(m.rules().len() as i64);
        self.metrics
            .table_entries
            .get_or_create(&TableLabels { table: "allowlist".into() })
            .set(m.allow().len() as i64);
        if !metrics {
            return;
        }
        let mut live = Vec::new();
        for rule in m.rules() {
            live.push(rule.id.clone());
            let l = RuleLabels { rule: rule.id.clone() };
            for (iface, c) in m.counters(rule.index) {
                let prev = self.rule_prev.insert((iface.to_string(), rule.id.clone()), c).unwrap_or_default();
                self.metrics
                    .rule_dropped_packets
                    .get_or_create(&l)
                    .inc_by(delta(prev.dropped_packets, c.dropped_packets));
                self.metrics.rule_dropped_bytes.get_or_create(&l).inc_by(delta(prev.dropped_bytes, c.dropped_bytes));
                self.metrics.rule_passed_packets.get_or_create(&l).inc_by(delta(prev.passed_packets, c.passed_packets));
                self.metrics.rule_passed_bytes.get_or_create(&l).inc_by(delta(prev.passed_bytes, c.passed_bytes));
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
            match cmd {
                IncidentCommand::SetStatus { id, status, why, reply } => {
                    let r = self.detector.set_status(&id, status, now, &why);
                    let _ = reply.send(r.as_ref().map(|_| ()).map_err(|e| e.to_string()));
                    if let Ok(ev) = r {
                        self.publish(ev);
                    }
                }
                IncidentCommand::AddNote { id, text, reply } => {
                    let r = self.detector.add_note(&id, &text, now);
                    let _ = reply.send(r.as_ref().map(|_| ()).map_err(|e| e.to_string()));
                    if let Ok(ev) = r {
                        self.publish(ev);
                    }
                }
            }
        }
    }

    /// Allowlists addresses the host gained since the start.
    fn refresh_host_allowlist(&self) {
        let found = host::own_prefixes();
        let mut m = self.mitigator.lock().unwrap_or_else(|p| p.into_inner());
        match m.refresh_host(&found, clock_now()) {
            Ok(added) => {
                for a in added {
                    tracing::info!(id = %a.id, prefix = %a.prefix, "allowlisted a new address of the host ({})", a.reason);
                }
            }
            Err(e) => tracing::error!("cannot allowlist a new address of the host: {e}"),
        }
    }

    /// A removed rule's series leave the metrics (the label set stays bounded).
    fn forget_rule(&mut self, id: &str) {
        self.rule_prev.retain(|(_, r), _| r != id);
        let l = RuleLabels { rule: id.to_string() };
        self.metrics.rule_dropped_packets.remove(&l);
        self.metrics.rule_dropped_bytes.remove(&l);
        self.metrics.rule_passed_packets.remove(&l);
        self.metrics.rule_passed_bytes.remove(&l);
    }

    fn publish_incident_gauges(&self) {
        for f in Family::ALL {
            let n = self.detector.open_incidents().filter(|i| i.families.contains(&f)).count();
            self.metrics.active_incidents.get_or_create(&FamilyLabels { family: f.name().into() }).set(n as i64);
        }
    }

    fn publish_baselines(&self, iface: &str) {
        for c in TrafficClass::ALL {
            if let Some(b) = self.detector.class_baseline(iface, c) {
                let l = ClassLabels { iface: iface.into(), class: c.name().into() };
                self.metrics.baseline_pps.get_or_create(&l).set(b.pps.mean);
                self.metrics.baseline_bytes.get_or_create(&l).set(b.bps.mean / 8.0);
            }
        }
        for (f, s) in self.detector.signals(iface) {
            let l = IfaceFamilyLabels { iface: iface.into(), family: f.name().into() };
            self.metrics.threshold_pps.get_or_create(&l).set(s.pps_threshold);
        }
    }
}
