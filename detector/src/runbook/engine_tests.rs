//! The engine over its public API, with a rule set that touches no kernel,
//! a history that is a list, and local TCP endpoints: what an execution
//! leaves in the history as it runs, at shutdown and after a restart; the
//! message a notification sends; reloads that never stall the runtime.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use prometheus_client::registry::Registry;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
    sync::{broadcast, mpsc},
};

use super::{
    engine::{Engine, Handles, HistorySink, IncidentCommand, Stopped},
    record::{Execution, Outcome, StepRecord, STOPPED_BEFORE, STOPPED_DURING},
};
use crate::{
    clock::now_ms,
    detect::{
        family::Family,
        incident::{EventKind, Incident, IncidentEvent, Status},
        severity::Severity,
    },
    metrics::Metrics,
    mitigate::{mitigator::Mitigator, ruleset::Limits},
    statedir::{FileWriter, RULES_FILE},
};

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("detector-engine-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("runbooks")).unwrap();
        Scratch(dir)
    }
    fn runbooks(&self) -> PathBuf {
        self.0.join("runbooks")
    }
    fn write(&self, file: &str, text: &str) {
        std::fs::write(self.runbooks().join(file), text).unwrap();
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What the history received, in order.
type History = Arc<Mutex<Vec<Execution>>>;

/// An engine over `dir`, with a controller that answers every incident
/// command at once.
async fn engine(dir: &Path, state: &Path) -> (Arc<Engine>, History, broadcast::Sender<IncidentEvent>) {
    let history: History = Arc::new(Mutex::new(Vec::new()));
    let sink = history.clone();
    let (e, events) = engine_with(dir, state, Arc::new(move |ex| sink.lock().unwrap().push(ex))).await;
    (e, history, events)
}

/// As [`engine`], every record handed to `sink` as it is made.
async fn engine_with(dir: &Path, state: &Path, sink: HistorySink) -> (Arc<Engine>, broadcast::Sender<IncidentEvent>) {
    let (commands, mut rx) = mpsc::channel::<IncidentCommand>(16);
    tokio::spawn(async move {
        while let Some(c) = rx.recv().await {
            match c {
                IncidentCommand::SetStatus { reply, .. } | IncidentCommand::AddNote { reply, .. } => {
                    let _ = reply.send(Ok(()));
                }
            }
        }
    });
    let h = Handles {
        mitigator: Arc::new(Mutex::new(Mitigator::new(
            Limits { max_rules: 64, max_allow: 64 },
            state,
            FileWriter::spawn(state, None).unwrap(),
        ))),
        commands,
        history: sink,
        metrics: Arc::new(Metrics::register(&mut Registry::default())),
        bgp: None,
        capacity: Default::default(),
    };
    let (e, errors) = Engine::load(Some(dir.to_path_buf()), h).await.unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    let (events, rx) = broadcast::channel(64);
    tokio::spawn(e.clone().run(rx));
    (e, events)
}

fn incident(id: &str) -> Incident {
    Incident {
        id: id.into(),
        node: "edge-1".into(),
        iface: "veth0".into(),
        target: "192.0.2.2".into(),
        hostgroup: "host".into(),
        direction: Default::default(),
        target_prefixes: vec!["192.0.2.2/32".parse().unwrap()],
        families: vec![Family::UdpFlood],
        vectors: vec!["udp".into()],
        severity: Severity::High,
        status: Status::Active,
        started_at: now_ms(),
        ended_at: None,
        pps: 60_000.0,
        bps: 3e7,
        peak_pps: 60_000.0,
        peak_bps: 3e7,
        top_sources: vec![],
        top_ports: vec![],
        signature: None,
        timeline: vec![],
        capture: None,
    }
}

fn event(kind: EventKind, inc: &Incident) -> IncidentEvent {
    IncidentEvent { kind, at: now_ms(), detail: String::new(), family: None, incident: inc.clone() }
}

/// Waits (5 s at most) until the history's records satisfy `cond`.
async fn until(history: &History, what: &str, cond: impl Fn(&[Execution]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond(&history.lock().unwrap()) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {:#?}", history.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An endpoint that takes requests and answers none: a step sending to it
/// runs until its timeout.
async fn silent_endpoint() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    (l, url)
}

/// An endpoint that answers `202` to every request after `delay`.
async fn slow_endpoint(delay: Duration) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut got = Vec::new();
                // Headers, then the body their Content-Length announces.
                loop {
                    let Ok(n) = s.read(&mut buf).await else { return };
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
                            })
                            .and_then(|v| v.parse::<usize>().ok())
                            .unwrap_or(0);
                        if got.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                tokio::time::sleep(delay).await;
                let _ = s.write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
            });
        }
    });
    url
}

fn outcomes(ex: &Execution) -> Vec<Outcome> {
    ex.steps.iter().map(|s| s.outcome).collect()
}

#[tokio::test]
async fn a_blank_message_sends_the_summary() {
    let s = Scratch::new("blank");
    s.write(
        "blank.yaml",
        "name: blank\nmode: dry_run\ntrigger: { families: [any] }\nsteps:\n  - notify: { channel: slack, url: \"https://hooks.example.test/x\", message: \"{% if false %}x{% endif %}  \" }\n  - notify: { channel: slack, url: \"https://hooks.example.test/x\", message: \"{{ node }} under attack\" }\n",
    );
    let (_e, history, events) = engine(&s.runbooks(), &s.0).await;
    let inc = incident("blank-1");
    events.send(event(EventKind::Opened, &inc)).unwrap();
    until(&history, "the execution", |h| h.iter().any(|e| e.outcome == Outcome::DryRun)).await;
    let ex = history.lock().unwrap().last().unwrap().clone();
    assert_eq!(
        ex.steps[0].detail,
        "would send to https://hooks.example.test/x: attack_start on edge-1 (veth0, target 192.0.2.2): udp_flood, 60000 pps, severity high, status active",
        "a template that renders to whitespace sends the summary"
    );
    assert_eq!(ex.steps[1].detail, "would send to https://hooks.example.test/x: edge-1 under attack");
}

/// A mitigate step is recorded as done once `rules.json` holds its rule,
/// and its resolve side once the file no longer does: what the history
/// says is in force is what a restart restores (the file is read as each
/// finished execution is recorded).
#[tokio::test]
async fn a_mitigate_steps_rules_are_saved_before_it_is_recorded_done() {
    let s = Scratch::new("saved");
    s.write(
        "block.yaml",
        "name: block\ntrigger: { families: [any] }\nsteps:\n  - mitigate: { action: drop, scope: prefix, prefix: 203.0.113.0/24, class: [udp], ttl: 1h }\n",
    );
    let rules = s.0.join(RULES_FILE);
    let done: Arc<Mutex<Vec<(Execution, String)>>> = Arc::new(Mutex::new(Vec::new()));
    let sink = done.clone();
    let (_e, events) = engine_with(
        &s.runbooks(),
        &s.0,
        Arc::new(move |ex: Execution| {
            if ex.outcome != Outcome::Running {
                let saved = std::fs::read_to_string(&rules).unwrap_or_default();
                sink.lock().unwrap().push((ex, saved));
            }
        }),
    )
    .await;
    let finished = |n: usize| {
        let done = done.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(5);
            while done.lock().unwrap().len() < n {
                assert!(Instant::now() < deadline, "{n} finished executions: {:#?}", done.lock().unwrap());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            done.lock().unwrap()[n - 1].clone()
        }
    };
    let mut inc = incident("saved-1");
    events.send(event(EventKind::Opened, &inc)).unwrap();
    let (ex, saved) = finished(1).await;
    assert_eq!(ex.outcome, Outcome::Ok, "{ex:#?}");
    assert!(ex.steps[0].detail.starts_with("installed 1 rule(s)"), "{}", ex.steps[0].detail);
    assert!(saved.contains("203.0.113.0/24"), "the step was done before rules.json held its rule: {saved}");

    inc.status = Status::Resolved;
    events.send(event(EventKind::Resolved, &inc)).unwrap();
    let (ex, saved) = finished(2).await;
    assert!(ex.steps[0].detail.starts_with("removed 1 rule(s)"), "{ex:#?}");
    assert!(!saved.contains("203.0.113.0/24"), "the rule was removed before rules.json lost it: {saved}");
}

/// A runbook whose second step hangs: the history has the execution from
/// its start, then after its first step; shutdown waits out its grace and
/// records it as interrupted, with what ran.
#[tokio::test]
async fn an_execution_is_recorded_as_it_runs_and_interrupted_at_shutdown() {
    let s = Scratch::new("interrupt");
    let (_listener, url) = silent_endpoint().await;
    s.write(
        "hang.yaml",
        &format!(
            "name: hang\ntrigger: {{ families: [any] }}\nsteps:\n  - note: first\n  - webhook: {{ url: \"{url}\", timeout: 60s, retries: 0 }}\n  - note: never\n"
        ),
    );
    let (e, history, events) = engine(&s.runbooks(), &s.0).await;
    let inc = incident("hang-1");
    events.send(event(EventKind::Opened, &inc)).unwrap();
    until(&history, "the first step's record", |h| h.len() >= 2).await;
    {
        let h = history.lock().unwrap();
        let first = &h[0];
        assert_eq!(first.outcome, Outcome::Running, "recorded when it starts");
        assert_eq!(outcomes(first), [Outcome::Pending; 3]);
        assert!(first.id.starts_with("hang-1/hang/"), "{}", first.id);
        let second = &h[1];
        assert_eq!(second.id, first.id, "one execution, written again");
        assert_eq!(second.outcome, Outcome::Running);
        assert_eq!(outcomes(second), [Outcome::Ok, Outcome::Pending, Outcome::Pending]);
        assert_eq!(second.steps[0].detail, "note added: \"first\"");
    }
    assert_eq!(e.in_flight(), 1);

    let t0 = Instant::now();
    let stopped = e.shutdown(Duration::from_millis(300)).await;
    let took = t0.elapsed();
    assert_eq!(stopped, Stopped { finished: 0, interrupted: 1 });
    assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(3), "{took:?}");
    let last = history.lock().unwrap().last().unwrap().clone();
    assert_eq!(last.outcome, Outcome::Interrupted);
    assert_eq!(outcomes(&last), [Outcome::Ok, Outcome::Interrupted, Outcome::Skipped]);
    assert_eq!(last.steps[1].error.as_deref(), Some(STOPPED_DURING));
    assert_eq!(last.steps[2].error.as_deref(), Some(STOPPED_BEFORE));
    assert_eq!(e.in_flight(), 0);

    // The interrupted task writes nothing more, and new events start nothing.
    let n = history.lock().unwrap().len();
    events.send(event(EventKind::Opened, &incident("hang-2"))).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(history.lock().unwrap().len(), n, "{:#?}", history.lock().unwrap());
}

/// Executions that end within the grace end normally; one queued behind a
/// hung one never starts, and is recorded as interrupted with nothing run.
#[tokio::test]
async fn shutdown_lets_executions_finish_within_the_grace() {
    let s = Scratch::new("grace");
    let url = slow_endpoint(Duration::from_secs(2)).await;
    s.write(
        "slow.yaml",
        &format!("name: slow\ntrigger: {{ families: [any] }}\nsteps:\n  - webhook: {{ url: \"{url}\", timeout: 10s, retries: 0 }}\n"),
    );
    let (silent, hang_url) = silent_endpoint().await;
    s.write(
        "hang.yaml",
        &format!(
            "name: hang\ntrigger: {{ families: [any] }}\ncooldown: 1s\nsteps:\n  - webhook: {{ url: \"{hang_url}\", timeout: 60s, retries: 0 }}\n"
        ),
    );
    let (e, history, events) = engine(&s.runbooks(), &s.0).await;
    let mut inc = incident("grace-1");
    events.send(event(EventKind::Opened, &inc)).unwrap();
    until(&history, "both started", |h| h.iter().filter(|e| e.outcome == Outcome::Running).count() >= 2).await;
    // Past `hang`'s cooldown, a second run of it queues behind the first.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    inc.severity = Severity::Critical;
    events.send(event(EventKind::SeverityChanged, &inc)).unwrap();
    let deadline = Instant::now() + Duration::from_millis(500);
    while e.in_flight() < 3 {
        assert!(Instant::now() < deadline, "in flight: {}", e.in_flight());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // `slow` answers about 0.9 s into the grace.
    let stopped = e.shutdown(Duration::from_secs(3)).await;
    assert_eq!(stopped, Stopped { finished: 1, interrupted: 2 });
    let h = history.lock().unwrap().clone();
    let last_of = |rb: &str| -> Vec<Execution> {
        let mut ids: Vec<String> = h.iter().filter(|x| x.runbook == rb).map(|x| x.id.clone()).collect();
        ids.dedup();
        ids.iter().map(|id| h.iter().rev().find(|x| &x.id == id).unwrap().clone()).collect()
    };
    let slow = last_of("slow");
    assert_eq!(slow.len(), 1);
    assert_eq!(slow[0].outcome, Outcome::Ok, "finished within the grace: {slow:?}");
    let hang = last_of("hang");
    assert_eq!(hang.len(), 2, "{hang:#?}");
    assert_eq!(hang[0].outcome, Outcome::Interrupted);
    assert_eq!(outcomes(&hang[0]), [Outcome::Interrupted]);
    assert_eq!(hang[1].outcome, Outcome::Interrupted);
    assert_eq!(hang[1].trigger, "severity_changed");
    assert_eq!(outcomes(&hang[1]), [Outcome::Skipped], "queued, never started");
    drop(silent);
}

fn ran(incident: &str, runbook: &str, started_at: u64, outcome: Outcome) -> Execution {
    Execution {
        id: format!("{incident}/{runbook}/{started_at}"),
        runbook: runbook.into(),
        file_hash: String::new(),
        incident_id: incident.into(),
        node: "edge-1".into(),
        trigger: "opened".into(),
        dry_run: false,
        started_at,
        ended_at: started_at + 5,
        outcome,
        steps: vec![StepRecord {
            outcome: if outcome == Outcome::Running { Outcome::Pending } else { Outcome::Ok },
            ..StepRecord::pending(0, "note", started_at)
        }],
    }
}

/// After a restart, the history seeds when each runbook last ran: an
/// update does not run it again, a severity change waits for the
/// cooldown, the resolution runs its resolve side; another incident is
/// unaffected; an execution a killed controller left `running` is marked
/// interrupted.
#[tokio::test]
async fn resumed_incidents_keep_their_cooldowns() {
    let s = Scratch::new("resume");
    s.write(
        "rb.yaml",
        "name: rb\ntrigger: { families: [any] }\ncooldown: 10m\nsteps:\n  - notify: { channel: webhook, url: \"https://hooks.example.test/x\" }\n",
    );
    s.write(
        "dry.yaml",
        "name: dry\nmode: dry_run\ntrigger: { families: [any] }\ncooldown: 10m\nsteps:\n  - note: hi\n",
    );
    let (e, history, events) = engine(&s.runbooks(), &s.0).await;
    let now = now_ms();
    let before =
        vec![ran("old-1", "dry", now - 60_000, Outcome::DryRun), ran("old-1", "rb", now - 61_000, Outcome::Running)];
    assert_eq!(e.resume(&before), 1);
    {
        let h = history.lock().unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].id, before[1].id);
        assert_eq!(h[0].outcome, Outcome::Interrupted);
        assert_eq!(outcomes(&h[0]), [Outcome::Interrupted]);
    }

    let mut old = incident("old-1");
    events.send(event(EventKind::Updated, &old)).unwrap();
    old.severity = Severity::Critical;
    events.send(event(EventKind::SeverityChanged, &old)).unwrap();
    // A new incident runs at once: the events above were handled before it.
    events.send(event(EventKind::Opened, &incident("new-1"))).unwrap();
    until(&history, "the new incident's run", |h| {
        h.iter().any(|x| x.incident_id == "new-1" && x.outcome == Outcome::DryRun)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        history.lock().unwrap().iter().all(|x| x.incident_id != "old-1" || x.id == before[1].id),
        "nothing ran again for the resumed incident within its cooldown: {:#?}",
        history.lock().unwrap()
    );

    // Its resolution runs the resolve side of the runbooks that ran.
    old.status = Status::Resolved;
    events.send(event(EventKind::Resolved, &old)).unwrap();
    until(&history, "the resolve side", |h| {
        h.iter().any(|x| {
            x.incident_id == "old-1" && x.runbook == "dry" && x.trigger == "resolved" && x.outcome != Outcome::Running
        })
    })
    .await;
    let h = history.lock().unwrap();
    let resolved = h.iter().rev().find(|x| x.incident_id == "old-1" && x.runbook == "dry").unwrap();
    assert_eq!(resolved.steps[0].outcome, Outcome::Skipped, "a note is skipped at resolution");
}

/// Reloading runs off the runtime: a runbook whose secret file blocks (a
/// FIFO no one writes) holds up the reload, not a one-thread runtime,
/// whose timer keeps ticking; and a pathological file is refused fast.
#[tokio::test(flavor = "current_thread")]
async fn a_reload_never_stalls_the_runtime() {
    let s = Scratch::new("reload");
    s.write("a.yaml", "name: a\ntrigger: { families: [any] }\nsteps: [ { note: hi } ]\n");
    let (e, _history, _events) = engine(&s.runbooks(), &s.0).await;

    let fifo = s.0.join("secret.fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "{}", std::io::Error::last_os_error());
    s.write(
        "b.yaml",
        &format!(
            "name: b\ntrigger: {{ families: [any] }}\nsteps:\n  - webhook: {{ url: \"https://hooks.example.test/x\", secret: \"${{file:{}}}\" }}\n",
            fifo.display()
        ),
    );
    // The secret arrives 800 ms from now, whatever happens here (a blocking
    // read left waiting would hold the runtime's shutdown).
    let writer = std::thread::spawn({
        let fifo = fifo.clone();
        move || {
            std::thread::sleep(Duration::from_millis(800));
            std::fs::write(fifo, "hmac-key\n")
        }
    });
    let reload = tokio::spawn({
        let e = e.clone();
        async move { e.reload().await }
    });
    let t0 = Instant::now();
    let mut ticks = 0;
    while t0.elapsed() < Duration::from_millis(300) {
        tokio::time::sleep(Duration::from_millis(10)).await;
        ticks += 1;
    }
    assert!(ticks >= 10, "the runtime stalled: {ticks} ticks in 300 ms");
    assert!(!reload.is_finished(), "the reload waits for the secret");
    let errors = tokio::time::timeout(Duration::from_secs(5), reload).await.unwrap().unwrap();
    writer.join().unwrap().unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(e.runbooks().await.len(), 2);

    // 100,000 nested brackets (a file past the size limit) and 30,000 (one
    // within it, nested too deep): refused fast, the others kept.
    s.write("b.yaml", "name: b\ntrigger: { families: [any] }\nsteps: [ { note: hi } ]\n");
    s.write("c.yaml", &format!("name: c\ntrigger: {{ families: [any] }}\nsteps:\n  - note: {}\n", "[".repeat(100_000)));
    s.write("d.yaml", &format!("name: d\ntrigger: {{ families: [any] }}\nsteps:\n  - note: {}\n", "[".repeat(30_000)));
    let t0 = Instant::now();
    let errors = e.reload().await;
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[0].to_string().contains("c.yaml:4:") && errors[0].message.contains("larger than"), "{}", errors[0]);
    assert!(
        errors[1].to_string().contains("d.yaml:4:") && errors[1].message.contains("nested deeper"),
        "{}",
        errors[1]
    );
    assert_eq!(e.runbooks().await.len(), 2);
}

/// The new outcomes go through the real history and come back, and a
/// second write of an execution replaces the first, steps and all.
#[test]
fn running_and_interrupted_executions_round_trip_through_the_store() {
    use crate::history::{ExecutionQuery, Store};
    let s = Scratch::new("store");
    let mut store = Store::open(&s.0).unwrap();
    let mut ex = ran("inc-1", "rb", 1_000, Outcome::Running);
    ex.steps.push(StepRecord::pending(1, "notify", 1_000));
    store.record_execution(&ex).unwrap();
    let got = store.executions(ExecutionQuery::default()).unwrap();
    assert_eq!(got, [ex.clone()]);
    assert_eq!(outcomes(&got[0]), [Outcome::Pending, Outcome::Pending]);
    ex.interrupt(2_000, true);
    store.record_execution(&ex).unwrap();
    let got = store.executions(ExecutionQuery::default()).unwrap();
    assert_eq!(got, [ex]);
    assert_eq!(got[0].outcome, Outcome::Interrupted);
    assert_eq!(outcomes(&got[0]), [Outcome::Interrupted, Outcome::Skipped]);
}
