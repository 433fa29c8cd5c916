//! Running runbooks: listens to the controller's incident events, decides
//! which runbooks fire ([`super::trigger`]), and runs their steps on tasks
//! of their own, so nothing here can hold up detection or mitigation.
//!
//! Executions of one runbook for one incident run in order (its resolve
//! work waits for its start work); everything else runs side by side. A
//! slow or dead endpoint holds up only its own step, for at most its
//! timeout times its tries.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::{broadcast, mpsc, oneshot, RwLock, Semaphore};

use super::{
    context::{Context, RuleSummary},
    load::{load_dir, FileError, Loaded},
    payload,
    record::{Execution, Outcome, StepRecord},
    schema::{Channel, IncidentStep, Mitigate, MitigateAction, Mode, Notify, Runbook, Scope, SetStatus, Step, Webhook},
    secret::Real,
    send,
    trigger::Fired,
};
use crate::{
    api::control::SharedMitigator,
    clock::{now_ms, Clock},
    detect::incident::{EventKind, Incident, IncidentEvent, Status},
    metrics::{Metrics, RunbookLabels, StepLabels},
    mitigate::{
        mitigator::MitigateError,
        prefix::Prefix,
        rule::{Origin, RuleRequest},
        ruleset::RuleError,
    },
};

/// A change to an incident, asked of the controller (which owns incidents).
#[derive(Debug)]
pub enum IncidentCommand {
    SetStatus { id: String, status: Status, why: String, reply: oneshot::Sender<Result<(), String>> },
    AddNote { id: String, text: String, reply: oneshot::Sender<Result<(), String>> },
}

/// Where finished executions go (the history).
pub type HistorySink = Arc<dyn Fn(Execution) + Send + Sync>;

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
}

/// One queued run: a runbook and the event it answers.
struct Job {
    loaded: Arc<Loaded>,
    kind: EventKind,
    incident: Incident,
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
}

impl Engine {
    /// Loads `dir` (if any). Files that fail are returned for the log; the
    /// others run.
    pub fn new(dir: Option<PathBuf>, h: Handles) -> Result<(Arc<Engine>, Vec<FileError>), FileError> {
        let (books, errors) = match &dir {
            Some(d) => {
                let l = load_dir(d, &|| Box::new(Real))?;
                (l.runbooks, l.errors)
            }
            None => (Vec::new(), Vec::new()),
        };
        let engine = Engine {
            dir,
            runbooks: RwLock::new(Arc::new(books.into_iter().map(Arc::new).collect())),
            fired: Mutex::new(Fired::default()),
            queues: Mutex::new(HashMap::new()),
            network: Arc::new(Semaphore::new(MAX_NETWORK_STEPS)),
            http: send::client(),
            h,
            open: Mutex::new(HashMap::new()),
            keepalive: Mutex::new(std::collections::HashSet::new()),
        };
        Ok((Arc::new(engine), errors))
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

    /// Loads the directory again. A file that now fails keeps its previous
    /// version running (a typo does not switch a runbook off); the set is
    /// swapped in one step.
    pub async fn reload(&self) -> Vec<FileError> {
        let Some(dir) = &self.dir else { return Vec::new() };
        let loaded = match load_dir(dir, &|| Box::new(Real)) {
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
        let books = self.runbooks().await;
        let inc = &ev.incident;
        let resolved = ev.kind == EventKind::Resolved || inc.status == Status::Resolved;
        let now = now_ms();
        let due: Vec<Arc<Loaded>> = if resolved {
            // Rules in force say which runbooks ran even across a restart
            // of the controller (which forgets `fired`).
            let with_rules: Vec<String> = {
                let m = self.h.mitigator.lock().unwrap_or_else(|p| p.into_inner());
                m.rules()
                    .iter()
                    .filter(|r| r.origin.incident.as_deref() == Some(inc.id.as_str()))
                    .filter_map(|r| r.origin.runbook.clone())
                    .collect()
            };
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
            let mut fired = self.fired.lock().unwrap_or_else(|p| p.into_inner());
            let due = fired.due(&refs, ev.kind, inc, now);
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
            self.enqueue(Job { loaded, kind, incident: inc.clone() });
        }
        if resolved {
            self.queues.lock().unwrap_or_else(|p| p.into_inner()).retain(|(i, _), _| *i != inc.id);
        }
    }

    /// Hands the job to its (incident, runbook) queue, starting the queue's
    /// worker if there is none.
    fn enqueue(self: &Arc<Self>, job: Job) {
        let key = (job.incident.id.clone(), job.loaded.runbook.name.0.clone());
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let tx = queues.entry(key).or_insert_with(|| {
            let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
            let me = self.clone();
            tokio::spawn(async move {
                while let Some(job) = rx.recv().await {
                    me.execute(job).await;
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
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(payload::ALERTMANAGER_RESEND).await;
                let latest = me.open.lock().unwrap_or_else(|p| p.into_inner()).get(&key.0).cloned();
                let Some(inc) = latest else { break };
                let ctx = me.context(EventKind::SeverityChanged, &inc, &runbook, false);
                let sent = match send::notify_request(&n, &ctx, &ctx.summary()) {
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

    /// Runs one runbook for one event and records it.
    async fn execute(self: &Arc<Self>, job: Job) {
        let rb = &job.loaded.runbook;
        let inc = &job.incident;
        let dry_run = rb.mode == Mode::DryRun;
        let started_at = now_ms();
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
            self.h
                .metrics
                .runbook_step_duration
                .get_or_create(&StepLabels { kind: step.kind().into() })
                .observe(t0.elapsed().as_secs_f64());
            match (&outcome, &error) {
                (Outcome::Failed, Some(e)) => {
                    tracing::warn!(runbook = %rb.name, incident = %inc.id, step = index, kind = step.kind(), "step failed: {e}")
                }
                _ => tracing::info!(
                    runbook = %rb.name, incident = %inc.id, step = index, kind = step.kind(), outcome = outcome.name(),
                    "{}", if detail.is_empty() { error.clone().unwrap_or_default() } else { detail.clone() }
                ),
            }
            steps.push(StepRecord {
                index,
                kind: step.kind().to_string(),
                started_at: step_start,
                ended_at: now_ms(),
                outcome,
                detail,
                error,
            });
        }
        let outcome = Execution::outcome_of(&steps, dry_run);
        self.h
            .metrics
            .runbook_executions
            .get_or_create(&RunbookLabels { runbook: rb.name.0.clone(), outcome: outcome.name().into() })
            .inc();
        (self.h.history)(Execution {
            id: format!("{}/{}/{}", inc.id, rb.name, started_at),
            runbook: rb.name.0.clone(),
            file_hash: job.loaded.hash.clone(),
            incident_id: inc.id.clone(),
            node: inc.node.clone(),
            trigger: job.kind.name().to_string(),
            dry_run,
            started_at,
            ended_at: now_ms(),
            outcome,
            steps,
        });
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
        }
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

    /// The rule requests a mitigate step makes for this incident.
    fn requests(index: usize, m: &Mitigate, job: &Job) -> Vec<RuleRequest> {
        let rb = &job.loaded.runbook;
        let inc = &job.incident;
        let prefixes: Vec<Prefix> = match m.scope {
            Scope::Prefix => m.prefix.into_iter().collect(),
            Scope::TopSources => inc.top_sources.iter().take(m.top).map(|s| Prefix::host(s.addr)).collect(),
        };
        let families: Vec<&str> = inc.families.iter().map(|f| f.name()).collect();
        prefixes
            .into_iter()
            .map(|p| RuleRequest {
                action: match m.action {
                    MitigateAction::Drop => "drop".into(),
                    MitigateAction::RateLimit => "rate_limit".into(),
                },
                prefix: p.to_string(),
                classes: m.classes.clone(),
                sport: m.source_port,
                dport: m.port,
                pps: m.pps,
                burst: m.burst,
                bps: m.bps,
                ttl_ms: Some(m.ttl.as_millis() as u64),
                reason: Some(format!("{} on {}", families.join(", "), inc.iface)),
                origin: Some(Origin {
                    by: "runbook".into(),
                    runbook: Some(rb.name.0.clone()),
                    incident: Some(inc.id.clone()),
                    step: Some(index),
                }),
            })
            .collect()
    }

    async fn mitigate(
        &self,
        index: usize,
        m: &Mitigate,
        job: &Job,
        dry_run: bool,
    ) -> Result<(Outcome, String), StepError> {
        let reqs = Self::requests(index, m, job);
        if reqs.is_empty() {
            return Err(StepError::Skip("the incident has no top sources yet".into()));
        }
        let what = |r: &RuleRequest| format!("{} {}", r.action, r.prefix);
        if dry_run {
            let list: Vec<String> = reqs.iter().map(what).collect();
            return Ok((Outcome::DryRun, format!("would install {} rule(s): {}", list.len(), list.join(", "))));
        }
        let mitigator = self.h.mitigator.clone();
        let results = tokio::task::spawn_blocking(move || {
            let mut m = mitigator.lock().unwrap_or_else(|p| p.into_inner());
            reqs.into_iter().map(|r| (what(&r), m.add_rule(&r, Clock::now()))).collect::<Vec<_>>()
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
            "installed {} rule(s){}{}{}",
            added.len(),
            if added.is_empty() { String::new() } else { format!(" ({})", added.join(", ")) },
            if already > 0 { format!("; {already} already in force") } else { String::new() },
            if allowed > 0 { format!("; {allowed} allowlisted source(s) left alone") } else { String::new() },
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
        let removed = tokio::task::spawn_blocking(move || {
            let mut m = mitigator.lock().unwrap_or_else(|p| p.into_inner());
            // A rule already gone (expired, removed by an operator) is fine.
            ids.into_iter().filter(|id| m.remove(id, Clock::now()).is_ok()).collect::<Vec<_>>()
        })
        .await
        .map_err(|e| StepError::Fail(e.to_string()))?;
        Ok((Outcome::Ok, format!("removed {} rule(s) ({})", removed.len(), removed.join(", "))))
    }

    async fn notify(&self, n: &Notify, ctx: &Context, dry_run: bool) -> Result<(Outcome, String), StepError> {
        let message = match (&n.message, ctx.event) {
            (Some(t), super::context::AttackEvent::AttackStart | super::context::AttackEvent::AttackUpdate) => {
                ctx.render(&t.0).map_err(StepError::Fail)?
            }
            _ => ctx.summary(),
        };
        let req = send::notify_request(n, ctx, &message).map_err(StepError::Fail)?;
        if dry_run {
            return Ok((Outcome::DryRun, format!("would send to {}: {message}", req.shown_url)));
        }
        let _permit = self.network.acquire().await.map_err(|e| StepError::Fail(e.to_string()))?;
        let sent = send::deliver(&self.http, &req, n.timeout, n.retries).await.map_err(StepError::Fail)?;
        Ok((Outcome::Ok, sent))
    }

    async fn webhook(&self, w: &Webhook, ctx: &Context, dry_run: bool) -> Result<(Outcome, String), StepError> {
        let req = send::webhook_request(w, ctx).map_err(StepError::Fail)?;
        if dry_run {
            return Ok((Outcome::DryRun, format!("would POST the {} context to {}", ctx.event.name(), req.shown_url)));
        }
        let _permit = self.network.acquire().await.map_err(|e| StepError::Fail(e.to_string()))?;
        let sent = send::deliver(&self.http, &req, w.timeout, w.retries).await.map_err(StepError::Fail)?;
        Ok((Outcome::Ok, sent))
    }
}

enum StepError {
    /// Not applicable now; recorded as `skipped` with the reason.
    Skip(String),
    Fail(String),
}
