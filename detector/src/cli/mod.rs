//! Command-line definitions. Values are parsed into their real types here
//! (durations, addresses, CIDRs), so a typo fails before anything starts.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

mod bgp;
mod flood;
mod history;
mod incidents;
pub mod out;
mod rules;
mod runbooks;

use detector::{
    config::ConfigFile,
    controller::{self, RunConfig},
    kernel::xdp::ModeChoice,
    mitigate::config::OnStop,
    privileges::{self, Need},
};

#[derive(Parser, Debug)]
#[command(
    name = "detector",
    version,
    about = "DDoS detector: XDP counters at line rate, Prometheus metrics, a flood generator"
)]
pub struct Cli {
    /// More logging (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Attach to interfaces and count their traffic until SIGINT or SIGTERM.
    Run(RunArgs),
    /// Send a flood of real frames out of an interface (for labs and tests).
    Flood(flood::FloodArgs),
    /// List incidents from the history in the state directory, or show one.
    Incidents(incidents::IncidentsArgs),
    /// List or remove the mitigation rules of a running controller.
    #[command(subcommand)]
    Rules(rules::RulesCommand),
    /// Drop traffic from a prefix (optionally one class and/or port) in XDP.
    #[command(subcommand)]
    Block(rules::AddCommand<rules::BlockArgs>),
    /// Rate-limit each source address of a prefix in XDP.
    #[command(subcommand)]
    Ratelimit(rules::AddCommand<rules::RateLimitArgs>),
    /// Answer SYNs to a TCP port with SYN cookies from XDP, and drop the ACKs
    /// that carry none (a spoofed SYN or ACK flood never reaches the stack).
    #[command(subcommand)]
    Syncookies(rules::AddCommand<rules::SynCookiesArgs>),
    /// List or forget the known-good peers (the sources signature rules spare).
    #[command(subcommand)]
    Peers(rules::PeersCommand),
    /// Allowlist a prefix: no rule ever drops it.
    #[command(subcommand)]
    Allow(rules::AddCommand<rules::AllowArgs>),
    /// Remove the XDP program and every pinned rule from an interface, and
    /// stop the gobgpd a stopped controller left running.
    Detach(rules::DetachArgs),
    /// Upstream mitigation over BGP: status, announce, withdraw.
    #[command(subcommand)]
    Bgp(bgp::BgpCommand),
    /// Check runbook files.
    #[command(subcommand)]
    Runbooks(runbooks::RunbooksCommand),
    /// Runbook executions from the history in the state directory.
    History(history::HistoryArgs),
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Interface to watch; repeat for several.
    #[arg(long = "iface", value_name = "IF", required = true)]
    pub ifaces: Vec<String>,
    /// XDP mode: native, skb (generic), or auto (native, else skb).
    #[arg(long, value_name = "MODE", default_value = "auto", value_parser = parse_mode)]
    pub xdp_mode: ModeChoice,
    /// Replace an XDP program already attached to an interface.
    #[arg(long)]
    pub force: bool,
    /// How often the maps are read (10ms to 60s).
    #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = parse_duration)]
    pub interval: Duration,
    /// Where /metrics, /api/top and /healthz are served. Anything but
    /// loopback requires a bearer token.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9477")]
    pub metrics_addr: SocketAddr,
    /// File holding the bearer token for the HTTP endpoints (the
    /// DETECTOR_API_TOKEN environment variable works too).
    #[arg(long, value_name = "FILE")]
    pub api_token_file: Option<PathBuf>,
    /// Capacity of the per-source map of each interface.
    #[arg(long, value_name = "N", default_value_t = detector_common::maps::DEFAULT_MAX_SOURCES,
          value_parser = clap::value_parser!(u32).range(64..=16_777_216))]
    pub max_sources: u32,
    /// Top talkers kept per class in /api/top.
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub top: u16,
    /// Forget a source after this long without packets.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub idle_after: Duration,
    /// How often a summary line is logged at info level.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub summary_every: Duration,
    /// Detection settings (YAML); without it, the documented defaults.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// This host's name in incidents (default: the hostname).
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    /// Where incident history, learned baselines, rules and the control
    /// socket are kept.
    #[arg(long, value_name = "DIR", default_value = detector::statedir::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// On SIGINT/SIGTERM: keep (rules in force stay in the kernel until
    /// their TTLs, and the next start adopts them) or detach (remove the
    /// program and every rule). Default: mitigation.on_stop, which is keep.
    #[arg(long, value_name = "keep|detach", value_parser = parse_on_stop)]
    pub on_stop: Option<OnStop>,
    /// Directory of runbooks (*.yaml) to run on incidents. Default:
    /// /etc/detector/runbooks if it exists (`cargo xtask run` passes the
    /// repository's runbooks/).
    #[arg(long, value_name = "DIR")]
    pub runbooks: Option<PathBuf>,
}

/// Where an installed detector looks for runbooks.
const DEFAULT_RUNBOOKS: &str = "/etc/detector/runbooks";

fn parse_on_stop(s: &str) -> Result<OnStop, String> {
    s.parse()
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("'{s}' is not a duration ({e}); write it like 250ms, 5s or 1m"))
}

fn parse_mode(s: &str) -> Result<ModeChoice, String> {
    s.parse()
}

pub fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => run(args),
        Command::Flood(args) => flood::run(args),
        Command::Incidents(args) => incidents::run(args),
        Command::Rules(cmd) => rules::rules(cmd),
        Command::Block(cmd) => rules::block(cmd),
        Command::Ratelimit(cmd) => rules::ratelimit(cmd),
        Command::Syncookies(cmd) => rules::syncookies(cmd),
        Command::Peers(cmd) => rules::peers(cmd),
        Command::Allow(cmd) => rules::allow(cmd),
        Command::Detach(args) => rules::detach(args),
        Command::Bgp(cmd) => bgp::run(cmd),
        Command::Runbooks(cmd) => runbooks::run(cmd),
        Command::History(args) => history::run(args),
    }
}

/// The host name, for incidents' `node`.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let api_token = api_token(args.api_token_file.as_deref())?;
    let config = match &args.config {
        Some(path) => ConfigFile::load(path)?,
        None => ConfigFile::default(),
    };
    let mut mitigation = config.mitigation;
    if let Some(on_stop) = args.on_stop {
        mitigation.on_stop = on_stop;
    }
    let cfg = RunConfig {
        ifaces: args.ifaces,
        mode: args.xdp_mode,
        force: args.force,
        interval: args.interval,
        metrics_addr: args.metrics_addr,
        api_token,
        max_sources: args.max_sources,
        top_n: args.top as usize,
        idle_after: args.idle_after,
        summary_every: args.summary_every,
        node: args.node.unwrap_or_else(hostname),
        state_dir: args.state_dir,
        detection: config.detection,
        networks: config.networks,
        bgp: config.bgp,
        interfaces: config.interfaces,
        capture: config.capture,
        mitigation,
        runbooks: match args.runbooks {
            Some(dir) => Some(dir),
            None if std::path::Path::new(DEFAULT_RUNBOOKS).is_dir() => Some(DEFAULT_RUNBOOKS.into()),
            None => None,
        },
    };
    privileges::check(Need::Xdp)?;
    // Before anything opens a descriptor: the listeners size their
    // connection caps from the limit (see `api::serve`).
    match privileges::raise_fd_limit() {
        Ok(l) if l.now > l.before => tracing::info!(from = l.before, to = l.now, "raised the open-file limit"),
        Ok(l) => tracing::debug!(limit = l.now, "open-file limit"),
        Err(e) => tracing::warn!("cannot raise the open-file limit: {e}; the listeners take fewer connections"),
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let shutdown = {
        let _in_runtime = rt.enter();
        shutdown_signal()?
    };
    let (events, _) = tokio::sync::broadcast::channel(controller::EVENT_CAPACITY);
    rt.block_on(controller::run(cfg, events, shutdown))?;
    Ok(())
}

/// The bearer token: the file named on the command line, else the
/// environment. Never logged.
fn api_token(file: Option<&std::path::Path>) -> anyhow::Result<Option<String>> {
    if let Some(path) = file {
        let t =
            std::fs::read_to_string(path).with_context(|| format!("reading the API token file {}", path.display()))?;
        let t = t.trim().to_string();
        anyhow::ensure!(!t.is_empty(), "the API token file {} is empty", path.display());
        return Ok(Some(t));
    }
    Ok(std::env::var("DETECTOR_API_TOKEN").ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty()))
}

/// Listens for SIGINT and SIGTERM from now on (call it inside the runtime,
/// before anything is attached): a signal that arrives while the controller
/// is still starting is kept, and ends it as soon as it is up. Registering
/// lazily, when the future is first polled, lost such signals.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}
