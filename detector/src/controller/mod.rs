//! `detector run`: the wiring. It builds the parts, hands each its inputs,
//! starts them, and stops them in order on shutdown.
//!
//! - [`probe`]: one watched interface (its program, its maps);
//! - [`poll`]: the poll loop, on a thread of its own;
//! - the history writer ([`crate::history`]), the state files' writer
//!   ([`crate::statedir`]), the listeners ([`crate::api`]) and the runbook
//!   engine ([`crate::runbook::engine`]) each own their thread or task.
//!
//! The decisions all of them feed on live in the pure modules
//! ([`crate::rates`], [`crate::sources`], [`crate::samples`],
//! [`crate::detect`], [`crate::mitigate`]).

pub mod poll;
pub mod probe;

use std::{
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    sync::{atomic::AtomicU64, Arc, Mutex, RwLock},
    time::Duration,
};

use detector_common::TrafficClass;
use prometheus_client::registry::Registry;
use thiserror::Error;
use tokio::sync::{broadcast, mpsc};

use crate::{
    api::{
        control::{self, ControlError, SharedMitigator},
        http::{self, ApiState, HttpError, PollHealth},
        serve,
    },
    clock::{now_ms, Clock},
    detect::{
        config::DetectionConfig,
        incident::{IncidentEvent, Status},
        Detector,
    },
    history::{HistoryCmd, Store, StoreError, Writer},
    kernel::{
        counters::CounterError,
        pins::{self, LockError, PinError},
        rules::KernelError,
        xdp::{AttachError, ModeChoice},
    },
    metrics::Metrics,
    mitigate::{
        config::{MitigationConfig, OnStop},
        host,
        mitigator::{MitigateError, Mitigator},
        ruleset::{AllowSource, Limits},
    },
    networks::{NetworksConfig, Protected},
    runbook::{
        engine::{Engine, Handles, IncidentCommand, SHUTDOWN_GRACE},
        load::FileError,
    },
    statedir::{self, FileWriter, Loaded, StateError},
    view::TopView,
};

use self::{poll::Poller, probe::Probe};

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
    /// The protected networks; none: the host's own addresses.
    pub networks: Option<NetworksConfig>,
    pub mitigation: MitigationConfig,
    /// The runbook directory; `None`: no runbooks.
    pub runbooks: Option<PathBuf>,
    /// Upstream mitigation over BGP; `None`: off.
    pub bgp: Option<crate::bgp::config::BgpConfig>,
    /// Per interface settings (capacity).
    pub interfaces: crate::capacity::InterfacesConfig,
    /// Packet captures per incident.
    pub capture: crate::capture::CaptureConfig,
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
    #[error("interface '{iface}': {reason}")]
    Egress { iface: String, reason: String },
    #[error("interface '{iface}': {reason}")]
    SynCookies { iface: String, reason: String },
    #[error("restoring the saved rules: {0}")]
    Restore(Box<MitigateError>),
    #[error("{0}")]
    Runbooks(FileError),
    #[error("cannot start the {what} thread: {source}")]
    Thread { what: &'static str, source: std::io::Error },
    #[error(transparent)]
    Bgp(#[from] crate::bgp::service::BgpError),
}

/// Where the controller's incident events go (the runbook engine listens).
/// Sending never waits: a receiver that falls behind loses events, and is
/// told so by the channel.
pub type EventSender = broadcast::Sender<IncidentEvent>;

/// Room for this many events per receiver before it lags.
pub const EVENT_CAPACITY: usize = 1024;

/// How long the poll loop may stay silent before `/healthz` says it is
/// stalled: ten intervals, and never less than two seconds.
fn stale_after(interval: Duration) -> Duration {
    (interval * 10).max(Duration::from_secs(2))
}

/// How long a stop waits for the state files to reach the disk.
const FLUSH_ON_STOP: Duration = Duration::from_secs(2);

/// Runs until `shutdown` resolves; then stops everything in order and
/// returns.
pub async fn run(cfg: RunConfig, events: EventSender, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    validate(&cfg)?;
    http::check_exposure(cfg.metrics_addr, cfg.api_token.as_deref())?;
    let listener = http::bind(cfg.metrics_addr).await?;
    // A missing interface is reported before anything touches the disk.
    for iface in &cfg.ifaces {
        crate::iface::index(iface).map_err(AttachError::from)?;
    }
    let cfg = Arc::new(cfg);

    statedir::ensure_dir(&cfg.state_dir)?;
    // First, so a second controller on this state directory is refused
    // before it touches anything in it (it would move a damaged database
    // aside under the first).
    let control_listener = control::bind(&cfg.state_dir).await?;
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    let store = Store::open(&cfg.state_dir)?;
    let resumed = store.open_incidents_of(&cfg.node)?;
    // What runbooks did for the resumed incidents (their cooldowns hold
    // across the restart), and every run the last stop cut short (recorded
    // as interrupted).
    let mut ran = Vec::new();
    for inc in &resumed {
        ran.extend(store.executions_of(&inc.id)?);
    }
    for id in store.incidents_with_unfinished_executions()? {
        if !resumed.iter().any(|i| i.id == id) {
            ran.extend(store.executions_of(&id)?.into_iter().filter(|e| e.outcome.is_unfinished()));
        }
    }
    let history = Writer::spawn(store, Some(metrics.clone()));
    let files = FileWriter::spawn(&cfg.state_dir, Some(metrics.clone()))
        .map_err(|source| RunError::Thread { what: "state files", source })?;

    let protected = Protected::new(cfg.networks.as_ref(), &cfg.detection.families);
    let mut detector = Detector::with_protected(cfg.detection.clone(), protected, cfg.node.clone());
    load_baselines(&cfg, &mut detector);
    let now = now_ms();
    for inc in resumed {
        let id = inc.id.clone();
        let watched = cfg.ifaces.contains(&inc.iface);
        let iface = inc.iface.clone();
        let group = inc.hostgroup.clone();
        let measured = detector.resume(inc);
        let why = if !watched {
            format!("interface {iface} is no longer watched")
        } else if !measured {
            format!("host group '{group}' is no longer configured")
        } else {
            tracing::info!(id, iface, "resuming an incident open at the last stop");
            continue;
        };
        if let Ok(ev) = detector.set_status(&id, Status::Resolved, now, &why) {
            history.send(HistoryCmd::Record(Box::new(ev)));
        }
    }

    let capture_metrics = Arc::new(crate::capture::store::CaptureMetrics::register(&mut registry));
    let captures = if cfg.capture.enabled {
        Some(
            crate::capture::Captures::start(
                &cfg.state_dir,
                &cfg.capture,
                crate::capture::onset_span(cfg.detection.hold, cfg.interval),
                capture_metrics,
                detector.open_incidents(),
            )
            .map_err(|source| RunError::Thread { what: "packet captures", source })?,
        )
    } else {
        None
    };

    let m = &cfg.mitigation;
    let mut mitigator =
        Mitigator::new(Limits { max_rules: m.max_rules, max_allow: m.max_allow }, &cfg.state_dir, files.clone())
            .with_synproxy(|ifaces| crate::kernel::syncookie::apply_nft(ifaces).map_err(|e| e.to_string()));
    for s in pins::sweep_gone() {
        tracing::warn!(
            iface = %s.iface,
            dir = %s.dir.display(),
            pins = s.pins,
            "removed the pinned state an earlier run left for an interface that no longer exists (its rules could never act again)"
        );
    }
    let mut probes = Vec::new();
    for iface in &cfg.ifaces {
        // On error the probes attached so far are dropped, which detaches them.
        probes.push(Probe::attach(&cfg, iface, &mut mitigator, &metrics)?);
    }
    for other in pins::pinned_interfaces().into_iter().filter(|i| !cfg.ifaces.contains(i)) {
        tracing::warn!(
            iface = %other,
            "an earlier run left its XDP program and rules pinned on '{other}', which this run does not watch; they stay in force until `detector detach --iface {other}`"
        );
    }
    allow_host_and_config(&mut mitigator, &cfg.mitigation);
    let expired = mitigator.restore(Clock::now()).map_err(|e| RunError::Restore(Box::new(e)))?;
    for r in &expired {
        tracing::info!(rule = %r.describe(), "rule expired while no controller ran");
    }
    if !mitigator.rules().is_empty() {
        tracing::info!(rules = mitigator.rules().len(), "rules restored from the state directory");
    }
    let mitigator: SharedMitigator = Arc::new(Mutex::new(mitigator));
    metrics.rule_tables_capacity(m.max_rules, m.max_allow);
    let bgp = start_bgp(&cfg, &mitigator, &mut registry)?;
    if let Some(b) = &bgp {
        let open: Vec<String> = detector.open_incidents().map(|i| i.id.clone()).collect();
        b.drop_ended_incidents(&open);
    }

    // Runbooks: subscribed before the first poll, so no event is missed.
    let (commands_tx, commands) = mpsc::channel::<IncidentCommand>(256);
    let executions = history.sender();
    let (engine, load_errors) = Engine::load(
        cfg.runbooks.clone(),
        Handles {
            mitigator: mitigator.clone(),
            commands: commands_tx,
            history: Arc::new(move |ex| {
                let _ = executions.send(HistoryCmd::Execution(Box::new(ex)));
            }),
            metrics: metrics.clone(),
            bgp: bgp.clone(),
            capacity: Arc::new(crate::capacity::capacities(&cfg.ifaces, &cfg.interfaces)),
        },
    )
    .await
    .map_err(RunError::Runbooks)?;
    engine.resume(&ran);
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
    metrics.active_incidents(std::iter::empty());

    let top = Arc::new(RwLock::new(TopView::default()));
    let last_poll = Arc::new(AtomicU64::new(now_ms()));
    let api = Arc::new(ApiState {
        registry,
        top: top.clone(),
        token: cfg.api_token.clone(),
        state_dir: cfg.state_dir.clone(),
        mitigator: Some(mitigator.clone()),
        health: Some(PollHealth { last_poll_ms: last_poll.clone(), stale_after: stale_after(cfg.interval) }),
    });
    let http_server = serve::spawn(listener, http::router(api), serve::Limits::http(), metrics.clone());
    tracing::info!(addr = %cfg.metrics_addr, "serving /metrics, /api/top, /api/incidents and /healthz");
    let control_server = Arc::new(tokio::sync::Mutex::new(Some(serve::spawn(
        control_listener,
        control::router(mitigator.clone(), metrics.clone()).merge(crate::bgp::control::router(bgp.clone())),
        serve::Limits::control(),
        metrics.clone(),
    ))));
    tracing::info!(socket = %cfg.state_dir.join(control::SOCKET).display(), "control API listening");
    let keeper = tokio::spawn(keep_state_dir(
        cfg.clone(),
        mitigator.clone(),
        metrics.clone(),
        control_server.clone(),
        bgp.clone(),
    ));

    let poller = Poller::new(
        cfg.clone(),
        metrics.clone(),
        top,
        detector,
        history,
        files.clone(),
        events,
        mitigator.clone(),
        commands,
        last_poll,
    );
    let poller = poller.with_captures(captures);
    let running = poller.spawn(probes).map_err(|source| RunError::Thread { what: "poll", source })?;
    shutdown.await;
    tracing::info!("shutting down");

    reloader.abort();
    if let Some(w) = watcher {
        w.abort();
    }
    // Runbook executions in flight get a grace to finish (the poll loop
    // still answers their status changes and notes); the rest are recorded
    // as interrupted.
    let stopped = engine.shutdown(SHUTDOWN_GRACE).await;
    if stopped.finished + stopped.interrupted > 0 {
        tracing::info!(
            finished = stopped.finished,
            interrupted = stopped.interrupted,
            "runbook executions in flight at the stop"
        );
    }
    // The poll loop ends after the poll in progress.
    let (poller, probes) = tokio::task::spawn_blocking(move || running.stop()).await.expect("the poll loop stops");
    keeper.abort();
    http_server.stop().await;
    if let Some(server) = control_server.lock().await.take() {
        server.stop().await;
    }
    let _ = std::fs::remove_file(cfg.state_dir.join(control::SOCKET));
    if let Some(b) = &bgp {
        b.stop(cfg.mitigation.on_stop == OnStop::Detach).await;
    }
    stop_mitigation(&cfg, &mitigator, probes);

    // Open incidents stay open: the next start resumes them.
    for inc in poller.detector.open_incidents() {
        poller.history.send(HistoryCmd::Snapshot(Box::new(inc.clone())));
    }
    poller.save_baselines();
    // Closing the event channel ends the engine's listener.
    let Poller { history, events, captures, .. } = poller;
    drop(events);
    let _ = tokio::time::timeout(Duration::from_secs(1), engine_task).await;
    let files_done = tokio::task::spawn_blocking(move || files.finish(FLUSH_ON_STOP));
    let history_done = tokio::task::spawn_blocking(move || history.finish());
    if let Some(c) = captures {
        let _ = tokio::task::spawn_blocking(move || c.writer.finish()).await;
    }
    let _ = files_done.await;
    let _ = history_done.await;
    Ok(())
}

/// How often the state directory's presence is checked.
const STATE_DIR_CHECK_EVERY: Duration = Duration::from_secs(5);

/// Keeps the state directory usable while running: one removed (by hand,
/// or by a cleanup job) is recreated, the control socket is bound again so
/// the CLI still reaches this controller, and the rules are written again.
/// (The history's writer starts a new database by itself.)
async fn keep_state_dir(
    cfg: Arc<RunConfig>,
    mitigator: SharedMitigator,
    metrics: Arc<Metrics>,
    control_server: Arc<tokio::sync::Mutex<Option<serve::Server>>>,
    bgp: Option<Arc<crate::bgp::service::Bgp>>,
) {
    let socket = cfg.state_dir.join(control::SOCKET);
    let mut tick = tokio::time::interval(STATE_DIR_CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if socket.exists() {
            continue;
        }
        tracing::error!(
            dir = %cfg.state_dir.display(),
            "the control socket is gone (was the state directory removed?); recreating it"
        );
        if let Err(e) = statedir::ensure_dir(&cfg.state_dir) {
            tracing::error!("{e}");
            continue;
        }
        let listener = match control::bind(&cfg.state_dir).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("{e}");
                continue;
            }
        };
        let new = serve::spawn(
            listener,
            control::router(mitigator.clone(), metrics.clone()).merge(crate::bgp::control::router(bgp.clone())),
            serve::Limits::control(),
            metrics.clone(),
        );
        let old = control_server.lock().await.replace(new);
        if let Some(old) = old {
            old.stop().await;
        }
        mitigator.lock().unwrap_or_else(|p| p.into_inner()).save();
        tracing::info!(socket = %socket.display(), "control API listening again; rules written again");
    }
}

/// The BGP subsystem, with a `bgp:` section: its metrics registered, the
/// saved announcements restored, gobgpd started or adopted. Without one,
/// a gobgpd an earlier run left running is stopped (nothing would ever
/// withdraw what it announces).
fn start_bgp(
    cfg: &RunConfig,
    mitigator: &SharedMitigator,
    registry: &mut Registry,
) -> Result<Option<Arc<crate::bgp::service::Bgp>>, RunError> {
    use crate::bgp::{daemon, metrics::BgpMetrics, service::Bgp};
    let Some(b) = &cfg.bgp else {
        if let Some(pid) = daemon::end_recorded(&cfg.state_dir) {
            tracing::warn!(pid, "stopped the gobgpd an earlier run left: the configuration has no bgp: section now");
        }
        return Ok(None);
    };
    let neighbors: Vec<String> = b.neighbors.iter().map(|n| n.address.to_string()).collect();
    let m = BgpMetrics::register(registry, &neighbors);
    let mut protected = Protected::new(cfg.networks.as_ref(), &cfg.detection.families);
    if protected.host_mode() {
        protected.set_host_addresses(host::addresses().into_iter().map(|(_, ip)| ip));
    }
    let bgp = Bgp::start(b.clone(), protected, mitigator.clone(), &cfg.state_dir, m)?;
    tracing::info!(
        neighbors = neighbors.join(","),
        dry_run = b.dry_run,
        "upstream mitigation over BGP: gobgpd supervised, its API on 127.0.0.1:{}",
        b.gobgpd.api_port
    );
    Ok(Some(bgp))
}

/// Loads the saved baselines into `detector`, saying what it found.
fn load_baselines(cfg: &RunConfig, detector: &mut Detector) {
    match statedir::load_baselines(&cfg.state_dir) {
        Loaded::Baselines(b) => {
            for why in detector.load_baselines(&b) {
                tracing::warn!("{}: a saved baseline is refused: {why}", statedir::BASELINES_FILE);
            }
            for iface in &cfg.ifaces {
                let learned = detector
                    .iface_baselines(iface)
                    .iter()
                    .map(|(_, _, b)| b.total[TrafficClass::Udp.index()].learned_seconds)
                    .fold(0.0, f64::max);
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
}

/// On stop: rules in force stay in the kernel (`on_stop: keep`) with the
/// program pinned, or everything is cleared and detached.
fn stop_mitigation(cfg: &RunConfig, mitigator: &SharedMitigator, probes: Vec<Probe>) {
    let in_force = {
        let mut m = mitigator.lock().unwrap_or_else(|p| p.into_inner());
        m.expire(Clock::now());
        if cfg.mitigation.on_stop == OnStop::Detach {
            if let Err(e) = m.clear(Clock::now()) {
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
    metrics.runbooks(books.len(), errors.len());
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
