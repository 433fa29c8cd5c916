//! Running runbooks: listens to the controller's incident events, decides
//! which runbooks fire ([`super::trigger`]), and runs their steps on tasks
//! of their own, so nothing here can hold up detection or mitigation.
//!
//! Executions of one runbook for one incident run in order (its resolve
//! work waits for its start work); everything else runs side by side. A
//! slow or dead endpoint holds up only its own step, for at most its
//! timeout times its tries.
//!
//! The history holds an execution from its start (`running`, its steps
//! `pending`) and is updated as each step finishes, so a controller killed
//! mid-run leaves a trace; [`Engine::shutdown`] gives executions in flight
//! a grace and records the rest as `interrupted`, and [`Engine::resume`]
//! marks those a killed controller left `running`. Loading and reloading
//! the runbook files runs on a blocking thread, never on the runtime.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use tokio::{
    sync::{broadcast, mpsc, oneshot, Notify as Wake, RwLock, Semaphore},
    task::JoinSet,
};

use super::{
    context::{Context, RuleSummary},
    load::{load_dir, DirLoad, FileError, Loaded},
    payload,
    record::{Execution, Outcome, StepRecord},
    schema::{Channel, IncidentStep, Mitigate, Mode, Notify, Runbook, Scope, SetStatus, Step, Webhook},
    secret::Real,
    send,
    trigger::Fired,
};
use crate::{
    api::control::SharedMitigator,
    clock::{now_ms, Clock},
    detect::incident::{EventKind, Incident, IncidentEvent, Status, TopSource},
    metrics::Metrics,
    mitigate::{
        derived::{rules_from, syn_cookie_rules},
        mitigator::MitigateError,
        prefix::Prefix,
        rule::{Action, Origin, RuleRequest, Shape},
        ruleset::RuleError,
    },
    statedir::FileWriter,
    targets::Direction,
};

/// A change to an incident, asked of the controller (which owns incidents).
#[derive(Debug)]
pub enum IncidentCommand {
    SetStatus { id: String, status: Status, why: String, reply: oneshot::Sender<Result<(), String>> },
    AddNote { id: String, text: String, reply: oneshot::Sender<Result<(), String>> },
}

/// Where executions go (the history): each is sent when it starts, again
/// after each step, and when it ends, always whole and with the same id, so
/// the last one sent replaces the others.
pub type HistorySink = Arc<dyn Fn(Execution) + Send + Sync>;

/// A grace that suits the controller's stop: long enough for a step that
/// answers (a webhook, a rule), short of systemd's stop timeout.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// At most this many network steps at once, over every runbook.
const MAX_NETWORK_STEPS: usize = 32;
/// How long a status change or note may wait for the controller.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// What the engine needs from the controller.
pub struct Handles {
    pub mitigator: SharedMitigator,
    pub commands: mpsc::Sender<IncidentCommand>,
    pub history: HistorySink,
    pub metrics: Arc<Metrics>,
    /// Upstream mitigation over BGP (`bgp` steps); none without a `bgp:`
    /// section.
    pub bgp: Option<Arc<crate::bgp::service::Bgp>>,
    /// Each watched interface's capacity in bits per second, where known
    /// (`trigger.min_bps_share`).
    pub capacity: Arc<std::collections::BTreeMap<String, u64>>,
}

/// One queued run: a runbook and the event it answers.
struct Job {
    /// Its key in [`Engine::inflight`].
    seq: u64,
    loaded: Arc<Loaded>,
    kind: EventKind,
    incident: Incident,
}

/// An execution queued or under way, as the history has it so far.
struct Tracked {
    ex: Execution,
    started: bool,
}

/// What [`Engine::shutdown`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stopped {
    /// Executions in flight that finished within the grace.
    pub finished: usize,
    /// Executions recorded as `interrupted` (under way or still queued).
    pub interrupted: usize,
}

pub struct Engine {
    dir: Option<PathBuf>,
    runbooks: RwLock<Arc<Vec<Arc<Loaded>>>>,
    fired: Mutex<Fired>,
    /// One queue per (incident, runbook): executions of a pair run in order.
    queues: Mutex<HashMap<(String, String), mpsc::UnboundedSender<Job>>>,
    network: Arc<Semaphore>,
    http: reqwest::Client,
    h: Handles,
    /// The latest state of every open incident some runbook ran for.
    open: Mutex<HashMap<String, Incident>>,
    /// Alertmanager steps being kept firing: (incident, runbook, step).
    keepalive: Mutex<std::collections::HashSet<(String, String, usize)>>,
    /// Executions queued or under way, by job number.
    inflight: Mutex<HashMap<u64, Tracked>>,
    next_job: AtomicU64,
    /// Woken when `inflight` empties.
    idle: Wake,
    /// Set by [`Engine::shutdown`]: no new executions.
    stopping: AtomicBool,
    /// The queue workers and keep-alive loops, aborted at shutdown.
    tasks: Mutex<JoinSet<()>>,
    /// (runbook, interface) pairs already told their share trigger has no
    /// capacity to compare with.
    no_capacity: Mutex<std::collections::HashSet<(String, String)>>,
}

impl Engine {
    /// Loads `dir` (if any) on a blocking thread, so a slow file never
    /// holds up the runtime. Files that fail are returned for the log; the
    /// others run.
    pub async fn load(dir: Option<PathBuf>, h: Handles) -> Result<(Arc<Engine>, Vec<FileError>), FileError> {
        let (books, errors) = match dir.clone() {
            Some(d) => {
                let l = load_off_runtime(d).await?;
                (l.runbooks, l.errors)
            }
            None => (Vec::new(), Vec::new()),
        };
        Ok((Arc::new(Engine::with(dir, books, h)), errors))
    }

    fn with(dir: Option<PathBuf>, books: Vec<Loaded>, h: Handles) -> Engine {
        Engine {
            dir,
            runbooks: RwLock::new(Arc::new(books.into_iter().map(Arc::new).collect())),
            fired: Mutex::new(Fired::default()),
            queues: Mutex::new(HashMap::new()),
            network: Arc::new(Semaphore::new(MAX_NETWORK_STEPS)),
            http: send::client(),
            h,
            open: Mutex::new(HashMap::new()),
            keepalive: Mutex::new(std::collections::HashSet::new()),
            inflight: Mutex::new(HashMap::new()),
            next_job: AtomicU64::new(0),
            idle: Wake::new(),
            stopping: AtomicBool::new(false),
            tasks: Mutex::new(JoinSet::new()),
            no_capacity: Mutex::new(std::collections::HashSet::new()),
        }
    }

    /// Seeds what the engine knows from the history after a restart:
    /// `executions` are those of the incidents the controller resumed.
    ///
    /// - Each runbook that ran for an incident counts as having run when
    ///   that execution started, so the incident's next events respect its
    ///   cooldown, a periodic update does not run it again, and its
    ///   resolution runs its resolve side.
    /// - An execution still `running` was cut short by a controller that
    ///   died: it is recorded again as `interrupted`.
    ///
    /// Call it before the first incident event. Returns how many executions
    /// were marked interrupted.
    pub fn resume(&self, executions: &[Execution]) -> usize {
        let now = now_ms();
        let mut marked = 0;
        {
            let mut fired = self.fired.lock().unwrap_or_else(|p| p.into_inner());
            for ex in executions.iter().filter(|ex| ex.trigger != EventKind::Resolved.name()) {
                fired.seed(&ex.runbook, &ex.incident_id, ex.started_at);
            }
        }
        for ex in executions.iter().filter(|ex| matches!(ex.outcome, Outcome::Running | Outcome::Pending)) {
            let mut ex = ex.clone();
            ex.interrupt(now, true);
            tracing::warn!(runbook = %ex.runbook, incident = %ex.incident_id, execution = %ex.id, "a runbook execution was cut short by the last stop; recorded as interrupted");
            self.count(&ex);
            (self.h.history)(ex);
            marked += 1;
        }
        marked
    }

    /// Stops taking incident events, waits up to `grace` for the executions
    /// in flight (queued ones behind them do not start), and records every
    /// one that did not finish as `interrupted`, with the steps it ran.
    /// Call it when the controller stops, before the history's writer
    /// finishes.
    pub async fn shutdown(&self, grace: Duration) -> Stopped {
        self.stopping.store(true, Ordering::SeqCst);
        let before = self.in_flight();
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.in_flight() == 0 || tokio::time::timeout_at(deadline, idle).await.is_err() {
                break;
            }
        }
        let now = now_ms();
        let left: Vec<Tracked> = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            let mut left: Vec<Tracked> = inflight.drain().map(|(_, t)| t).collect();
            left.sort_by_key(|t| t.ex.started_at);
            for t in &mut left {
                t.ex.interrupt(now, t.started);
                (self.h.history)(t.ex.clone());
            }
            left
        };
        for t in &left {
            tracing::warn!(runbook = %t.ex.runbook, incident = %t.ex.incident_id, execution = %t.ex.id, "runbook execution interrupted by the stop");
            self.count(&t.ex);
        }
        self.tasks.lock().unwrap_or_else(|p| p.into_inner()).abort_all();
        let stopped = Stopped { finished: before.saturating_sub(left.len()), interrupted: left.len() };
        if before > 0 {
            tracing::info!(
                finished = stopped.finished,
                interrupted = stopped.interrupted,
                "runbook executions in flight at the stop"
            );
        }
        stopped
    }

    /// Executions queued or under way.
    pub fn in_flight(&self) -> usize {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    fn count(&self, ex: &Execution) {
        self.h.metrics.runbook_execution(&ex.runbook, ex.outcome.name());
    }

    /// Changes a tracked execution and, if `write`, sends it to the
    /// history. False when it is no longer tracked (shutdown recorded it as
    /// interrupted): what its task does after that is not recorded.
    fn update(&self, seq: u64, write: bool, f: impl FnOnce(&mut Tracked)) -> bool {
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        let Some(t) = inflight.get_mut(&seq) else { return false };
        f(t);
        if write {
            (self.h.history)(t.ex.clone());
        }
        true
    }

    /// Records a tracked execution's last state and stops tracking it.
    fn finish(&self, seq: u64, f: impl FnOnce(&mut Tracked)) -> Option<Execution> {
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        let mut t = inflight.remove(&seq)?;
        f(&mut t);
        (self.h.history)(t.ex.clone());
        if inflight.is_empty() {
            self.idle.notify_waiters();
        }
        Some(t.ex)
    }

    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task);
    }

    pub fn has_directory(&self) -> bool {
        self.dir.is_some()
    }

    pub fn directory(&self) -> Option<&std::path::Path> {
        self.dir.as_deref()
    }

    pub async fn runbooks(&self) -> Arc<Vec<Arc<Loaded>>> {
        self.runbooks.read().await.clone()
    }

    /// Loads the directory again, on a blocking thread (detection never
    /// waits for it). A file that now fails keeps its previous version
    /// running (a typo does not switch a runbook off); the set is swapped
    /// in one step.
    pub async fn reload(&self) -> Vec<FileError> {
        let Some(dir) = &self.dir else { return Vec::new() };
        let loaded = match load_off_runtime(dir.clone()).await {
            Ok(l) => l,
            Err(e) => return vec![e],
        };
        let old = self.runbooks().await;
        let mut next: Vec<Arc<Loaded>> = loaded.runbooks.into_iter().map(Arc::new).collect();
        for e in &loaded.errors {
            if let Some(prev) = old.iter().find(|o| o.path.display().to_string() == e.file) {
                if !next.iter().any(|n| n.runbook.name == prev.runbook.name) {
                    tracing::warn!(runbook = %prev.runbook.name, "keeping the version loaded before: {e}");
                    next.push(prev.clone());
                }
            }
        }
        next.sort_by(|a, b| a.path.cmp(&b.path));
        *self.runbooks.write().await = Arc::new(next);
        loaded.errors
    }

    /// Listens to incident events until the channel closes.
    pub async fn run(self: Arc<Self>, mut events: broadcast::Receiver<IncidentEvent>) {
        loop {
            match events.recv().await {
                Ok(ev) => self.handle(ev).await,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::error!("the runbook engine fell behind and missed {n} incident events")
                }
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    }

    async fn handle(self: &Arc<Self>, ev: IncidentEvent) {
        if self.is_stopping() {
            tracing::debug!(incident = %ev.incident.id, "stopping: incident event left to the next start");
            return;
        }
        let books = self.runbooks().await;
        let inc = &ev.incident;
        let resolved = ev.kind == EventKind::Resolved || inc.status == Status::Resolved;
        let now = now_ms();
        let due: Vec<Arc<Loaded>> = if resolved {
            // Rules in force say which runbooks ran even across a restart
            // of the controller (which forgets `fired`).
            let mut with_rules: Vec<String> = {
                let m = self.h.mitigator.lock().unwrap_or_else(|p| p.into_inner());
                m.rules()
                    .iter()
                    .filter(|r| r.origin.incident.as_deref() == Some(inc.id.as_str()))
                    .filter_map(|r| r.origin.runbook.clone())
                    .collect()
            };
            if let Some(bgp) = &self.h.bgp {
                with_rules.extend(bgp.runbooks_of(&inc.id));
            }
            let mut fired = self.fired.lock().unwrap_or_else(|p| p.into_inner());
            let ran: Vec<Arc<Loaded>> = books
                .iter()
                .filter(|l| fired.ran(&l.runbook.name.0, &inc.id) || with_rules.contains(&l.runbook.name.0))
                .cloned()
                .collect();
            fired.forget(&inc.id);
            ran
        } else {
            let refs: Vec<&Runbook> = books.iter().map(|l| &l.runbook).collect();
            let capacity = self.h.capacity.get(&inc.iface).map(|c| *c as f64);
            if capacity.is_none() {
                self.warn_no_capacity(&refs, &inc.iface);
            }
            let mut fired = self.fired.lock().unwrap_or_else(|p| p.into_inner());
            let due = fired.due_at(&refs, ev.kind, inc, now, capacity);
            for i in &due {
                fired.record(&books[*i].runbook.name.0, &inc.id, now);
            }
            due.into_iter().map(|i| books[i].clone()).collect()
        };
        {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            if resolved {
                open.remove(&inc.id);
            } else {
                open.insert(inc.id.clone(), inc.clone());
            }
        }
        let kind = if resolved { EventKind::Resolved } else { ev.kind };
        for loaded in due {
            self.enqueue(loaded, kind, inc.clone());
        }
        if resolved {
            self.queues.lock().unwrap_or_else(|p| p.into_inner()).retain(|(i, _), _| *i != inc.id);
        }
    }

    /// One line per runbook and interface: a share trigger with no
    /// capacity to compare with never fires.
    fn warn_no_capacity(&self, books: &[&Runbook], iface: &str) {
        let mut told = self.no_capacity.lock().unwrap_or_else(|p| p.into_inner());
        for rb in books.iter().filter(|rb| rb.trigger.min_bps_share.is_some()) {
            if told.insert((rb.name.0.clone(), iface.to_string())) {
                tracing::error!(
                    runbook = %rb.name,
                    "trigger.min_bps_share refused on interface {iface}: its capacity is unknown (it reports no link \
                     speed); set interfaces.{iface}.capacity_bps in the configuration file"
                );
            }
        }
    }

    /// Hands the run to its (incident, runbook) queue, starting the queue's
    /// worker if there is none; it is tracked from now on.
    fn enqueue(self: &Arc<Self>, loaded: Arc<Loaded>, kind: EventKind, incident: Incident) {
        if self.is_stopping() {
            return;
        }
        let seq = self.next_job.fetch_add(1, Ordering::Relaxed);
        let ex = planned(&loaded, kind, &incident, now_ms());
        self.inflight.lock().unwrap_or_else(|p| p.into_inner()).insert(seq, Tracked { ex, started: false });
        let job = Job { seq, loaded, kind, incident };
        let key = (job.incident.id.clone(), job.loaded.runbook.name.0.clone());
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let tx = queues.entry(key).or_insert_with(|| {
            let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
            let me = self.clone();
            self.spawn(async move {
                let mut last_start = 0;
                while let Some(job) = rx.recv().await {
                    if me.is_stopping() {
                        // Queued behind one that ran into the stop: never started.
                        if let Some(ex) = me.finish(job.seq, |t| t.ex.interrupt(now_ms(), false)) {
                            me.count(&ex);
                        }
                        continue;
                    }
                    last_start = me.execute(job, last_start).await;
                }
            });
            tx
        });
        if tx.send(job).is_err() {
            tracing::error!("a runbook queue closed unexpectedly");
        }
    }

    /// Posts a firing Alertmanager alert again every
    /// [`payload::ALERTMANAGER_RESEND`] while its incident is open, with the
    /// incident's latest figures (see [`payload::alertmanager`]).
    fn keep_firing(self: &Arc<Self>, job: &Job, index: usize, n: &Notify) {
        let key = (job.incident.id.clone(), job.loaded.runbook.name.0.clone(), index);
        if !self.keepalive.lock().unwrap_or_else(|p| p.into_inner()).insert(key.clone()) {
            return;
        }
        let (me, n, runbook) = (self.clone(), n.clone(), job.loaded.runbook.name.0.clone());
        self.spawn(async move {
            loop {
                tokio::time::sleep(payload::ALERTMANAGER_RESEND).await;
                if me.is_stopping() {
                    break;
                }
                let latest = me.open.lock().unwrap_or_else(|p| p.into_inner()).get(&key.0).cloned();
                let Some(inc) = latest else { break };
                let ctx = me.context(EventKind::SeverityChanged, &inc, &runbook, false);
                let message = payload::message(&n, &ctx).unwrap_or_else(|_| ctx.summary());
                let sent = match send::notify_request(&n, &ctx, &message) {
                    Ok(req) => send::deliver(&me.http, &req, n.timeout, n.retries).await,
                    Err(e) => Err(e),
                };
                match sent {
                    Ok(_) => tracing::debug!(incident = %key.0, runbook, "Alertmanager alert posted again"),
                    Err(e) => tracing::warn!(incident = %key.0, runbook, "posting the Alertmanager alert again: {e}"),
                }
            }
            me.keepalive.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
        });
    }

    /// Runs one runbook for one event, recording it as it goes: at its
    /// start, after each step, at its end. `last_start` is when the previous
    /// execution of this (incident, runbook) started; ids stay distinct even
    /// within one millisecond. Returns when this one started.
    async fn execute(self: &Arc<Self>, job: Job, last_start: u64) -> u64 {
        let rb = &job.loaded.runbook;
        let inc = &job.incident;
        let dry_run = rb.mode == Mode::DryRun;
        let started_at = now_ms().max(last_start + 1);
        let id = execution_id(&inc.id, &rb.name.0, started_at);
        let started = self.update(job.seq, true, |t| {
            t.started = true;
            t.ex.id = id;
            t.ex.started_at = started_at;
            t.ex.ended_at = started_at;
            for s in &mut t.ex.steps {
                (s.started_at, s.ended_at) = (started_at, started_at);
            }
        });
        if !started {
            return started_at;
        }
        let mut steps = Vec::new();
        let mut failed = false;
        for (index, step) in rb.steps.0.iter().enumerate() {
            let t0 = Instant::now();
            let step_start = now_ms();
            let (outcome, detail, error) = if failed && !rb.continue_on_error {
                (Outcome::Skipped, String::new(), Some("an earlier step failed (continue_on_error: false)".to_string()))
            } else {
                let ctx = self.context(job.kind, inc, &rb.name.0, dry_run);
                match self.step(index, step, &job, &ctx, dry_run).await {
                    Ok((o, d)) => (o, d, None),
                    Err(StepError::Skip(why)) => (Outcome::Skipped, String::new(), Some(why)),
                    Err(StepError::Fail(why)) => (Outcome::Failed, String::new(), Some(why)),
                }
            };
            failed |= outcome == Outcome::Failed;
            if let Step::Notify(n) = step {
                if n.channel == Channel::Alertmanager && outcome == Outcome::Ok && job.kind != EventKind::Resolved {
                    self.keep_firing(&job, index, n);
                }
            }
            self.h.metrics.runbook_step(step.kind(), t0.elapsed().as_secs_f64());
            match (&outcome, &error) {
                (Outcome::Failed, Some(e)) => {
                    tracing::warn!(runbook = %rb.name, incident = %inc.id, step = index, kind = step.kind(), "step failed: {e}")
                }
                _ => tracing::info!(
                    runbook = %rb.name, incident = %inc.id, step = index, kind = step.kind(), outcome = outcome.name(),
                    "{}", if detail.is_empty() { error.clone().unwrap_or_default() } else { detail.clone() }
                ),
            }
            let record = StepRecord {
                index,
                kind: step.kind().to_string(),
                started_at: step_start,
                ended_at: now_ms(),
                outcome,
                detail,
                error,
            };
            let last = index + 1 == rb.steps.0.len();
            if !last {
                let r = record.clone();
                self.update(job.seq, true, move |t| {
                    t.ex.ended_at = r.ended_at;
                    t.ex.steps[index] = r;
                });
            }
            steps.push(record);
        }
        let outcome = Execution::outcome_of(&steps, dry_run);
        let ended_at = now_ms();
        if let Some(ex) = self.finish(job.seq, |t| {
            t.ex.steps = steps;
            t.ex.outcome = outcome;
            t.ex.ended_at = ended_at;
        }) {
            self.count(&ex);
        }
        started_at
    }

    fn context(&self, kind: EventKind, inc: &Incident, runbook: &str, dry_run: bool) -> Context {
        let m = self.h.mitigator.lock().unwrap_or_else(|p| p.into_inner());
        let rules = m
            .rules()
            .iter()
            .filter(|r| r.origin.incident.as_deref() == Some(inc.id.as_str()))
            .map(RuleSummary::of)
            .collect();
        Context::new(kind, inc, runbook, dry_run, rules)
    }

    async fn step(
        &self,
        index: usize,
        step: &Step,
        job: &Job,
        ctx: &Context,
        dry_run: bool,
    ) -> Result<(Outcome, String), StepError> {
        let resolving = job.kind == EventKind::Resolved;
        match step {
            Step::Mitigate(m) if resolving => self.unmitigate(index, m, job, dry_run).await,
            Step::Mitigate(m) => self.mitigate(index, m, job, dry_run).await,
            Step::Incident(_) | Step::Note(_) if resolving => Err(StepError::Skip("the incident is resolved".into())),
            Step::Incident(s) => self.set_status(s, job, dry_run).await,
            Step::Note(t) => {
                let text = ctx.render(&t.0).map_err(StepError::Fail)?;
                if dry_run {
                    return Ok((Outcome::DryRun, format!("would add the note \"{text}\"")));
                }
                self.command(|reply| IncidentCommand::AddNote {
                    id: job.incident.id.clone(),
                    text: text.clone(),
                    reply,
                })
                .await?;
                Ok((Outcome::Ok, format!("note added: \"{text}\"")))
            }
            Step::Notify(n) => self.notify(n, ctx, dry_run).await,
            Step::Webhook(w) => self.webhook(w, ctx, dry_run).await,
            Step::Bgp(_) if resolving => self.unannounce(index, job, dry_run),
            Step::Bgp(b) => self.announce(index, b, job, dry_run).await,
        }
    }

    /// A `bgp` step: the incident's announcements, through the one check,
    /// in force until its TTL or the incident's resolution; a note in the
    /// incident's timeline says what was asked of the upstream.
    async fn announce(
        &self,
        index: usize,
        b: &crate::bgp::step::BgpStep,
        job: &Job,
        dry_run: bool,
    ) -> Result<(Outcome, String), StepError> {
        use crate::bgp::{plan::Entry, step::NotAnnounced};
        let Some(bgp) = &self.h.bgp else {
            return Err(StepError::Fail("BGP is off: the configuration has no bgp: section".into()));
        };
        let inc = &job.incident;
        let announcements = crate::bgp::step::announcements(b, inc, &bgp.config().communities.for_blackhole())
            .map_err(|e| match e {
                NotAnnounced::Skip(why) => StepError::Skip(why),
                NotAnnounced::Refuse(why) => StepError::Fail(why),
            })?;
        let list =
            |v: &[crate::bgp::announce::Announcement]| v.iter().map(|a| a.describe()).collect::<Vec<_>>().join("; ");
        let ttl = humantime::format_duration(b.ttl);
        if dry_run {
            return Ok((Outcome::DryRun, format!("would announce upstream for {ttl}: {}", list(&announcements))));
        }
        let now = now_ms();
        let origin = Origin {
            by: "runbook".into(),
            runbook: Some(job.loaded.runbook.name.0.clone()),
            incident: Some(inc.id.clone()),
            step: Some(index),
        };
        let entries: Vec<Entry> = announcements
            .iter()
            .map(|a| Entry {
                announcement: a.clone(),
                origin: origin.clone(),
                created_ms: now,
                expires_ms: Some(now + b.ttl.as_millis() as u64),
                hold_until_ms: b.hold.map(|h| now + h.as_millis() as u64),
            })
            .collect();
        let results = bgp.admit(entries);
        let (mut done, mut refused) = (Vec::new(), Vec::new());
        for (a, r) in announcements.iter().zip(results) {
            match r {
                Ok(_) => done.push(a.clone()),
                Err(e) => refused.push(format!("{}: {e}", a.key())),
            }
        }
        let share = self
            .h
            .capacity
            .get(&inc.iface)
            .map(|c| format!(" ({:.0}% of {})", 100.0 * super::trigger::bps_share(inc, *c as f64), inc.iface))
            .unwrap_or_default();
        let sent = if bgp.dry_run() { "recorded (bgp.dry_run: nothing sent)" } else { "announced upstream" };
        let detail = format!("{sent} for {ttl}: {}", list(&done));
        if !done.is_empty() {
            let peak = crate::format::bits(inc.bps.max(inc.peak_bps));
            let note = format!(
                "escalated upstream by runbook {}: {detail}; attack at {peak}{share}",
                origin.runbook.as_deref().unwrap_or("")
            );
            if let Err(StepError::Fail(e) | StepError::Skip(e)) =
                self.command(|reply| IncidentCommand::AddNote { id: inc.id.clone(), text: note, reply }).await
            {
                tracing::warn!(incident = %inc.id, "cannot note the announcement in the timeline: {e}");
            }
        }
        if !refused.is_empty() {
            let head = if done.is_empty() { String::new() } else { format!("{detail}; ") };
            return Err(StepError::Fail(format!("{head}refused: {}", refused.join("; "))));
        }
        let outcome = if bgp.dry_run() { Outcome::DryRun } else { Outcome::Ok };
        Ok((outcome, detail))
    }

    /// At resolution: withdraws what this step announced for the incident
    /// (found by origin, so across a restart too), or keeps it until the
    /// step's `hold` ends.
    fn unannounce(&self, index: usize, job: &Job, dry_run: bool) -> Result<(Outcome, String), StepError> {
        let Some(bgp) = &self.h.bgp else { return Err(StepError::Skip("BGP is off".into())) };
        let (rb, inc) = (&job.loaded.runbook.name.0, &job.incident.id);
        if dry_run {
            let n = bgp.entries().iter().filter(|e| e.origin.is_step(rb, inc, index)).count();
            return Ok((Outcome::DryRun, format!("would withdraw {n} announcement(s)")));
        }
        let (gone, held) = bgp.release_where(|e| e.origin.is_step(rb, inc, index));
        if gone.is_empty() && held.is_empty() {
            return Err(StepError::Skip("nothing of this step is announced (TTL ran out, or withdrawn)".into()));
        }
        let mut said = Vec::new();
        if !gone.is_empty() {
            said.push(format!("withdrew {}", gone.iter().map(|e| e.key()).collect::<Vec<_>>().join("; ")));
        }
        for e in &held {
            let left = e.expires_ms.unwrap_or(0).saturating_sub(now_ms()).div_ceil(1000);
            let left = humantime::format_duration(Duration::from_secs(left));
            said.push(format!("kept {} for {left} more (the step's hold)", e.key()));
        }
        Ok((Outcome::Ok, said.join("; ")))
    }

    async fn command(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<(), String>>) -> IncidentCommand,
    ) -> Result<(), StepError> {
        let (tx, rx) = oneshot::channel();
        self.h.commands.send(make(tx)).await.map_err(|_| StepError::Fail("the controller is stopping".into()))?;
        match tokio::time::timeout(COMMAND_TIMEOUT, rx).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(StepError::Fail(e)),
            Ok(Err(_)) => Err(StepError::Fail("the controller is stopping".into())),
            Err(_) => Err(StepError::Fail(format!("the controller did not answer within {COMMAND_TIMEOUT:?}"))),
        }
    }

    async fn set_status(&self, s: &IncidentStep, job: &Job, dry_run: bool) -> Result<(Outcome, String), StepError> {
        let status = match s.status {
            SetStatus::Acknowledged => Status::Acknowledged,
            SetStatus::Escalated => Status::Escalated,
            SetStatus::Resolved => Status::Resolved,
        };
        if dry_run {
            return Ok((Outcome::DryRun, format!("would set the status to {status}")));
        }
        if job.incident.status == status {
            return Err(StepError::Skip(format!("the incident is already {status}")));
        }
        let why = format!("runbook {}", job.loaded.runbook.name);
        self.command(|reply| IncidentCommand::SetStatus { id: job.incident.id.clone(), status, why, reply }).await?;
        Ok((Outcome::Ok, format!("status set to {status}")))
    }

    async fn mitigate(
        &self,
        index: usize,
        m: &Mitigate,
        job: &Job,
        dry_run: bool,
    ) -> Result<(Outcome, String), StepError> {
        let reqs = rule_requests(index, m, &job.loaded.runbook.name.0, &job.incident)?;
        if reqs.is_empty() {
            return Err(StepError::Skip("the incident has no top sources yet".into()));
        }
        let what = |r: &RuleRequest| format!("{} {}", r.action, r.prefix);
        if dry_run {
            let list: Vec<String> = reqs.iter().map(what).collect();
            return Ok((Outcome::DryRun, format!("would install {} rule(s): {}", list.len(), list.join(", "))));
        }
        let mitigator = self.h.mitigator.clone();
        let (results, saved) = tokio::task::spawn_blocking(move || {
            let (results, files) = {
                let mut m = mitigator.lock().unwrap_or_else(|p| p.into_inner());
                let results = reqs.into_iter().map(|r| (what(&r), m.add_rule(&r, Clock::now()))).collect::<Vec<_>>();
                (results, m.files())
            };
            let saved = saved(&files, results.iter().any(|(_, r)| r.is_ok()));
            (results, saved)
        })
        .await
        .map_err(|e| StepError::Fail(e.to_string()))?;
        let (mut added, mut already, mut allowed, mut errors) = (Vec::new(), 0, 0, Vec::new());
        for (what, r) in results {
            match r {
                Ok(rule) => added.push(rule.id),
                Err(MitigateError::Rule(RuleError::Duplicate(_))) => already += 1,
                Err(MitigateError::Rule(RuleError::Allowlisted { .. })) => allowed += 1,
                Err(e) => errors.push(format!("{what}: {e}")),
            }
        }
        let detail = format!(
            "installed {} rule(s){}{}{}{}",
            added.len(),
            if added.is_empty() { String::new() } else { format!(" ({})", added.join(", ")) },
            if already > 0 { format!("; {already} already in force") } else { String::new() },
            if allowed > 0 { format!("; {allowed} allowlisted source(s) left alone") } else { String::new() },
            if saved { "" } else { NOT_SAVED },
        );
        if !errors.is_empty() {
            return Err(StepError::Fail(format!("{detail}; refused: {}", errors.join("; "))));
        }
        Ok((Outcome::Ok, detail))
    }

    /// At resolution: removes the rules this step installed for the
    /// incident, if it says so. They are found by their origin, so this
    /// works across a restart of the controller too.
    async fn unmitigate(
        &self,
        index: usize,
        m: &Mitigate,
        job: &Job,
        dry_run: bool,
    ) -> Result<(Outcome, String), StepError> {
        if !m.remove_on_resolve {
            return Err(StepError::Skip("remove_on_resolve is false: the rules run out with their TTL".into()));
        }
        let (rb, inc) = (&job.loaded.runbook.name.0, &job.incident.id);
        let ids: Vec<String> = {
            let m = self.h.mitigator.lock().unwrap_or_else(|p| p.into_inner());
            m.rules().iter().filter(|r| r.origin.is_step(rb, inc, index)).map(|r| r.id.clone()).collect()
        };
        if ids.is_empty() {
            return Err(StepError::Skip("no rules of this runbook are in force".into()));
        }
        if dry_run {
            return Ok((Outcome::DryRun, format!("would remove {}", ids.join(", "))));
        }
        let mitigator = self.h.mitigator.clone();
        let (removed, saved) = tokio::task::spawn_blocking(move || {
            let (removed, files) = {
                let mut m = mitigator.lock().unwrap_or_else(|p| p.into_inner());
                // A rule already gone (expired, removed by an operator) is fine.
                let removed = ids.into_iter().filter(|id| m.remove(id, Clock::now()).is_ok()).collect::<Vec<_>>();
                (removed, m.files())
            };
            let saved = saved(&files, !removed.is_empty());
            (removed, saved)
        })
        .await
        .map_err(|e| StepError::Fail(e.to_string()))?;
        let not_saved = if saved { "" } else { NOT_SAVED };
        Ok((Outcome::Ok, format!("removed {} rule(s) ({}){not_saved}", removed.len(), removed.join(", "))))
    }

    async fn notify(&self, n: &Notify, ctx: &Context, dry_run: bool) -> Result<(Outcome, String), StepError> {
        let message = payload::message(n, ctx).map_err(StepError::Fail)?;
        let req = send::notify_request(n, ctx, &message).map_err(StepError::Fail)?;
        if dry_run {
            return Ok((Outcome::DryRun, format!("would send to {}: {message}", req.shown())));
        }
        let _permit = self.network.acquire().await.map_err(|e| StepError::Fail(e.to_string()))?;
        let sent = send::deliver(&self.http, &req, n.timeout, n.retries).await.map_err(StepError::Fail)?;
        Ok((Outcome::Ok, sent))
    }

    async fn webhook(&self, w: &Webhook, ctx: &Context, dry_run: bool) -> Result<(Outcome, String), StepError> {
        let req = send::webhook_request(w, ctx).map_err(StepError::Fail)?;
        if dry_run {
            return Ok((Outcome::DryRun, format!("would POST the {} context to {}", ctx.event.name(), req.shown())));
        }
        let _permit = self.network.acquire().await.map_err(|e| StepError::Fail(e.to_string()))?;
        let sent = send::deliver(&self.http, &req, w.timeout, w.retries).await.map_err(StepError::Fail)?;
        Ok((Outcome::Ok, sent))
    }
}

/// Whether the rules a step `changed` are written to the state directory,
/// waiting for it (outside the mitigator's lock) as the control API does:
/// a step recorded as done is what the operator is told is in force, and
/// `rules.json` is what the next start restores when the kernel's pinned
/// maps are gone (the interface went away). A crash the moment after an
/// unsaved change lost a runbook's rule, or brought back one it had
/// removed.
fn saved(files: &FileWriter, changed: bool) -> bool {
    !changed || files.settle_rules()
}

/// Said of a step whose change is not written yet.
const NOT_SAVED: &str = "; not yet written to the state directory";

/// `<incident id>/<runbook>/<started_at ms>`: unique, and sorts by time.
fn execution_id(incident: &str, runbook: &str, started_at: u64) -> String {
    format!("{incident}/{runbook}/{started_at}")
}

/// An execution as it is queued: `running`, every step `pending`.
fn planned(loaded: &Loaded, kind: EventKind, inc: &Incident, now: u64) -> Execution {
    let rb = &loaded.runbook;
    Execution {
        id: execution_id(&inc.id, &rb.name.0, now),
        runbook: rb.name.0.clone(),
        file_hash: loaded.hash.clone(),
        incident_id: inc.id.clone(),
        node: inc.node.clone(),
        trigger: kind.name().to_string(),
        dry_run: rb.mode == Mode::DryRun,
        started_at: now,
        ended_at: now,
        outcome: Outcome::Running,
        steps: rb.steps.0.iter().enumerate().map(|(i, s)| StepRecord::pending(i, s.kind(), now)).collect(),
    }
}

/// Loads a runbook directory on a blocking thread.
async fn load_off_runtime(dir: PathBuf) -> Result<DirLoad, FileError> {
    let shown = dir.display().to_string();
    tokio::task::spawn_blocking(move || load_dir(&dir, &|| Box::new(Real))).await.unwrap_or_else(|e| {
        Err(FileError { file: shown, line: 0, column: 0, message: format!("loading the runbooks failed: {e}") })
    })
}

/// The rule requests mitigate step `index` of `runbook` makes for `inc`:
/// one per top source (at most `top`), one for the step's prefix, or those
/// of the incident's signature (or its reflected vectors). The step's
/// shape was checked at load, so the mitigation layer cannot refuse them
/// for their shape (only for where they apply: an allowlisted source, a
/// rule already in force, a full table). A signature step with no
/// signature yet is skipped; one whose rules would cut off too much of the
/// interface's peacetime traffic fails, saying so.
pub fn rule_requests(index: usize, m: &Mitigate, runbook: &str, inc: &Incident) -> Result<Vec<RuleRequest>, StepError> {
    let shaped: Vec<(Prefix, Shape)> = match m.scope {
        Scope::Prefix => m.prefix.into_iter().map(|p| (p, m.shape.clone())).collect(),
        Scope::TopSources => {
            let heavy: Vec<&TopSource> =
                inc.top_sources.iter().take(m.top).filter(|s| s.share >= m.min_share).collect();
            if heavy.is_empty() && !inc.top_sources.is_empty() {
                return Err(StepError::Skip(format!(
                    "no source sends {:.0}% of the attack (min_share): a spread or spoofed flood",
                    m.min_share * 100.0
                )));
            }
            // The host's users, there before the attack, are never limited.
            let new: Vec<(Prefix, Shape)> = heavy
                .iter()
                .filter(|s| !s.seen_before_attack)
                .map(|s| (Prefix::host(s.addr), m.shape.clone()))
                .collect();
            if new.is_empty() && !heavy.is_empty() {
                return Err(StepError::Skip(
                    "every top source was sending to the host before the attack began: its users, not the attack's"
                        .into(),
                ));
            }
            new
        }
        Scope::Signature if m.shape.action == Action::SynCookies => {
            syn_cookie_rules(inc.signature.as_ref(), &m.shape).map_err(|e| StepError::Fail(e.to_string()))?
        }
        Scope::Signature | Scope::Vectors => {
            let Some(sig) = inc.signature.as_ref() else {
                return Err(StepError::Skip("the incident has no signature yet (too few samples)".into()));
            };
            let sig = if m.scope == Scope::Vectors {
                match sig.vectors.as_deref() {
                    Some(v) => v,
                    None => {
                        return Err(StepError::Skip(format!(
                            "the attack is not reflected: no vectors in its signature ({sig})"
                        )))
                    }
                }
            } else {
                sig
            };
            rules_from(sig, &m.shape, m.max_collateral).map_err(|e| StepError::Fail(e.to_string()))?
        }
    };
    let shaped = scope_to_target(shaped, inc)?;
    let families: Vec<&str> = inc.families.iter().map(|f| f.name()).collect();
    let reason = format!("{} on {}", families.join(", "), inc.iface);
    let origin = Origin {
        by: "runbook".into(),
        runbook: Some(runbook.to_string()),
        incident: Some(inc.id.clone()),
        step: Some(index),
    };
    Ok(shaped.into_iter().map(|(p, shape)| shape.request(p, &reason, origin.clone())).collect())
}

/// Limits rules to the incident's target, so mitigating one customer's
/// attack never touches another's traffic: each rule's destination becomes
/// the target's prefixes (its address, or its host group's prefixes), or
/// the part of the rule's own destination inside them; a rule whose
/// destination holds none of them is refused. A rule naming no source
/// takes the any-source prefix of its destination's family. An outgoing
/// flood leaves through the interface, where XDP does not see it: nothing
/// to install. Incidents from before targets are left as they are.
fn scope_to_target(shaped: Vec<(Prefix, Shape)>, inc: &Incident) -> Result<Vec<(Prefix, Shape)>, StepError> {
    if inc.direction == Direction::Outgoing {
        return Err(StepError::Skip(format!(
            "an outgoing flood from {} leaves through {}; XDP filters what arrives there, not what leaves",
            inc.target, inc.iface
        )));
    }
    if inc.target_prefixes.is_empty() {
        return Ok(shaped);
    }
    let mut out = Vec::new();
    for (source, shape) in shaped {
        let dsts: Vec<Prefix> = match shape.m.dst {
            None => inc.target_prefixes.clone(),
            Some(d) => inc
                .target_prefixes
                .iter()
                .filter(|t| t.overlaps(&d))
                .map(|t| if d.contains(t) { *t } else { d })
                .collect(),
        };
        if dsts.is_empty() {
            return Err(StepError::Fail(format!(
                "the rule's destination {} holds none of the target {} ({})",
                shape.m.dst.map(|d| d.to_string()).unwrap_or_default(),
                inc.target,
                inc.target_prefixes.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ")
            )));
        }
        for d in dsts {
            let source = if source.is_any_source() { Prefix::any(d.is_ipv4()) } else { source };
            if source.is_ipv4() != d.is_ipv4() && !source.is_any_source() {
                // A source of the other family can send nothing to it.
                continue;
            }
            let mut shape = shape.clone();
            shape.m.dst = Some(d);
            out.push((source, shape));
        }
    }
    if out.len() > MAX_RULES_PER_STEP {
        return Err(StepError::Fail(format!(
            "limited to the target {} ({} prefixes), the step makes {} rules; at most {MAX_RULES_PER_STEP}",
            inc.target,
            inc.target_prefixes.len(),
            out.len()
        )));
    }
    Ok(out)
}

/// Rules one mitigate step may install for one incident.
const MAX_RULES_PER_STEP: usize = crate::runbook::schema::MAX_TOP;

pub enum StepError {
    /// Not applicable now; recorded as `skipped` with the reason.
    Skip(String),
    Fail(String),
}
