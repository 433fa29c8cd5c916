//! `detector run`: attach to each interface, poll the maps on a fixed
//! interval, publish metrics and the top-talker view, detach on shutdown.
//!
//! This is the kernel-facing loop; the arithmetic it feeds lives in the pure
//! modules ([`crate::rates`], [`crate::sources`], [`crate::view`]).

use std::{
    future::Future,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use prometheus_client::registry::Registry;
use thiserror::Error;
use tokio::sync::RwLock;

use crate::{
    counters::{CounterError, CounterMaps},
    ebpf::{self, CountingOptions},
    http::{self, AppState, HttpError},
    metrics::{AttachLabels, ClassLabels, IfaceLabels, Metrics},
    rates::{class_rates, delta, ClassSnapshot},
    sources::SourceTracker,
    view::{iface_view, summary_line, TopView},
    xdp::{self, AttachError, Attachment, ModeChoice},
};
use detector_common::TrafficClass;

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
}

#[derive(Debug, Error)]
pub enum RunError {
    #[error(transparent)]
    Attach(#[from] AttachError),
    #[error("interface '{iface}': {source}")]
    Counters { iface: String, source: Box<CounterError> },
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("interface '{0}' is named twice")]
    DuplicateInterface(String),
    #[error("no interface given: pass --iface at least once")]
    NoInterface,
    #[error("the poll interval must be between 10ms and 60s, not {0:?}")]
    Interval(Duration),
}

/// One attached interface and what the poller remembers about it.
struct Probe {
    attachment: Attachment,
    maps: CounterMaps,
    prev: ClassSnapshot,
    tracker: SourceTracker,
}

impl Probe {
    fn iface(&self) -> &str {
        &self.attachment.iface
    }
}

/// Runs until `shutdown` resolves; then detaches everything and returns.
pub async fn run(cfg: RunConfig, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    validate(&cfg)?;
    http::check_exposure(cfg.metrics_addr, cfg.api_token.as_deref())?;
    let listener = http::bind(cfg.metrics_addr).await?;

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);

    let mut probes = Vec::new();
    for iface in &cfg.ifaces {
        // On error the probes attached so far are dropped, which detaches them.
        let mut ebpf =
            ebpf::load_counting(CountingOptions { max_sources: cfg.max_sources }).map_err(AttachError::from)?;
        let maps = CounterMaps::take(&mut ebpf)
            .map_err(|source| RunError::Counters { iface: iface.clone(), source: Box::new(source) })?;
        let attachment = xdp::attach(ebpf, iface, cfg.mode, cfg.force)?;
        tracing::info!(iface, mode = %attachment.mode, "XDP program attached");
        metrics
            .attached
            .get_or_create(&AttachLabels { iface: iface.clone(), mode: attachment.mode.name().into() })
            .set(1.0);
        metrics.source_capacity.get_or_create(&IfaceLabels { iface: iface.clone() }).set(maps.source_capacity() as i64);
        // Every class is exported from the start, at zero.
        for class in TrafficClass::ALL {
            let l = ClassLabels { iface: iface.clone(), class: class.name().into() };
            let _ = metrics.packets.get_or_create(&l);
            let _ = metrics.bytes.get_or_create(&l);
        }
        probes.push(Probe {
            attachment,
            maps,
            prev: ClassSnapshot::default(),
            tracker: SourceTracker::new(cfg.idle_after),
        });
    }

    let state = Arc::new(AppState { registry, top: RwLock::new(TopView::default()), token: cfg.api_token.clone() });
    let server = axum::serve(listener, http::router(state.clone()));
    tracing::info!(addr = %cfg.metrics_addr, "serving /metrics, /api/top and /healthz");
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let server_task = tokio::spawn(async move {
        let _ = server
            .with_graceful_shutdown(async {
                let _ = http_stopped.await;
            })
            .await;
    });

    let poll_loop = poll_forever(&cfg, &mut probes, &metrics, &state);
    tokio::select! {
        _ = shutdown => tracing::info!("shutting down"),
        _ = poll_loop => {}
    }

    let _ = stop_http.send(());
    let _ = server_task.await;
    for probe in probes {
        let iface = probe.attachment.iface.clone();
        match probe.attachment.detach() {
            Ok(()) => tracing::info!(iface, "XDP program detached"),
            Err(e) => tracing::error!(iface, "{e}"),
        }
    }
    Ok(())
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
    Ok(())
}

async fn poll_forever(cfg: &RunConfig, probes: &mut [Probe], metrics: &Metrics, state: &AppState) {
    let start = Instant::now();
    let mut ticker = tokio::time::interval(cfg.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_poll: Option<Instant> = None;
    let mut last_summary = Instant::now();
    loop {
        ticker.tick().await;
        let now = Instant::now();
        let elapsed = last_poll.map(|t| now - t).unwrap_or(Duration::ZERO);
        last_poll = Some(now);
        let mut views = Vec::with_capacity(probes.len());
        for probe in probes.iter_mut() {
            match poll_once(probe, now - start, elapsed, cfg, metrics) {
                Ok(view) => views.push((probe.iface().to_string(), view)),
                Err(e) => {
                    metrics.poll_errors.get_or_create(&IfaceLabels { iface: probe.iface().into() }).inc();
                    tracing::warn!(iface = probe.iface(), "poll failed: {e}");
                }
            }
        }
        metrics.poll_duration.observe(now.elapsed().as_secs_f64());

        let log_summary = now.duration_since(last_summary) >= cfg.summary_every;
        if log_summary {
            last_summary = now;
        }
        let mut top = state.top.write().await;
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

/// Reads one interface's maps and turns them into metrics and a view.
fn poll_once(
    probe: &mut Probe,
    now: Duration,
    elapsed: Duration,
    cfg: &RunConfig,
    metrics: &Metrics,
) -> Result<crate::view::IfaceView, CounterError> {
    let cur = probe.maps.classes()?;
    let sources = probe.maps.sources()?;
    probe.maps.new_window()?;

    let rates = class_rates(&probe.prev, &cur, elapsed);
    let iface = probe.iface().to_string();
    for (class, (p, c)) in TrafficClass::ALL.iter().zip(probe.prev.counters.iter().zip(cur.counters.iter())) {
        let l = ClassLabels { iface: iface.clone(), class: class.name().into() };
        metrics.packets.get_or_create(&l).inc_by(delta(p.packets, c.packets));
        metrics.bytes.get_or_create(&l).inc_by(delta(p.bytes, c.bytes));
    }
    probe.prev = cur;

    let update = probe.tracker.update(now, elapsed, &sources);
    if !update.idle.is_empty() {
        let removed = probe.maps.remove_sources(&update.idle);
        metrics.sources_pruned.get_or_create(&IfaceLabels { iface: iface.clone() }).inc_by(removed as u64);
    }
    let tracked = probe.tracker.len();
    metrics.source_entries.get_or_create(&IfaceLabels { iface }).set(tracked as i64);
    Ok(iface_view(probe.attachment.mode.name(), elapsed.as_secs_f64(), &rates, &update.active, tracked, cfg.top_n))
}
