//! Watching the flood and telling the story: the incident (the API), the
//! rules and their counters (`detector rules list`), what XDP dropped
//! (`/metrics`), what the receiver got, and at the end the runbook history
//! (`detector history`). Every line carries its time from the flood's start.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use detector::lab::receiver::{Received, Receiver};
use detector::{
    detect::incident::{EventKind, Incident, Status},
    lab::{process, Controller, DetectorCommand, Lab},
    mitigate::mitigator::{RuleView, RulesView},
    runbook::record::Execution,
};
use serde_json::Value;

use crate::procs;

pub struct Watch<'a> {
    pub bin: &'a Path,
    pub lab: &'a Lab,
    pub state_dir: &'a Path,
    pub rx: &'a Receiver,
    /// The `detector run` whose API it asks.
    pub ctl: &'a Controller,
    pub secret: &'a [u8],
}

pub use detector::clock::now_ms;

/// `+1.23s`: `at` from `t0`, both Unix milliseconds.
fn rel(t0: u64, at: u64) -> String {
    let d = at as i64 - t0 as i64;
    format!("{}{}.{:02}s", if d < 0 { "-" } else { "+" }, d.abs() / 1000, (d.abs() % 1000) / 10)
}

/// What has been told so far.
#[derive(Default)]
struct Told {
    flood_done: bool,
    incident: Option<String>,
    timeline: usize,
    resolved: bool,
    rules: BTreeMap<String, RuleView>,
    had_rules: bool,
    received: usize,
    pd_resolved: bool,
    next_counters: u64,
    dropped: f64,
}

impl Watch<'_> {
    fn get(&self, path: &str) -> Result<String> {
        self.ctl.get_ok(path).context("asking the detector")
    }

    fn state_dir(&self) -> String {
        self.state_dir.to_string_lossy().to_string()
    }

    /// Fires the flood and tells what happens until the incident has
    /// resolved and every runbook has answered the resolution (at most
    /// `limit`). Returns the flood's start (Unix ms).
    pub fn story(&self, flood_args: &[String], limit: Duration) -> Result<u64> {
        let t0 = now_ms();
        let started = Instant::now();
        let mut flood =
            DetectorCommand::flood(self.bin, self.lab, flood_args).supervise(procs::supervision()).spawn()?;
        let mut told = Told { next_counters: t0 + 1000, ..Told::default() };
        loop {
            procs::sleep(Duration::from_millis(100))?;
            let mut lines: Vec<(u64, String)> = Vec::new();
            if !told.flood_done {
                if let Some(out) = flood.try_finish()? {
                    process::check(flood.what(), &out)?;
                    lines.push((now_ms(), format!("flood over: {}", String::from_utf8_lossy(&out.stdout).trim())));
                    told.flood_done = true;
                }
            }
            self.incident(&mut told, &mut lines)?;
            self.rules(&mut told, &mut lines)?;
            self.notifications(&mut told, &mut lines);
            lines.sort_by_key(|(at, _)| *at);
            for (at, text) in &lines {
                println!("{:>7}  {text}", rel(t0, *at));
            }
            if told.flood_done
                && told.resolved
                && told.rules.is_empty()
                && told.pd_resolved
                && self.all_answered(&told)?
            {
                return Ok(t0);
            }
            if started.elapsed() > limit {
                let mut missing = Vec::new();
                if !told.flood_done {
                    missing.push("the flood to end");
                }
                if told.incident.is_none() {
                    missing.push("an incident");
                } else if !told.resolved {
                    missing.push("the incident to resolve");
                }
                if !told.rules.is_empty() {
                    missing.push("the runbook's rules to be removed");
                }
                if !told.pd_resolved {
                    missing.push("PagerDuty's resolve");
                }
                if missing.is_empty() {
                    missing.push("every runbook to answer the resolution");
                }
                bail!("gave up after {}s waiting for {}", limit.as_secs(), missing.join(", "));
            }
        }
    }

    /// The incident's new timeline entries.
    fn incident(&self, told: &mut Told, lines: &mut Vec<(u64, String)>) -> Result<()> {
        let inc: Incident = match &told.incident {
            None => {
                let mut v: Value = serde_json::from_str(&self.get("/api/incidents?active=true")?)?;
                let list: Vec<Incident> = serde_json::from_value(v["incidents"].take())?;
                let Some(inc) = list.into_iter().find(|i| i.iface == self.lab.tgt_if) else { return Ok(()) };
                told.incident = Some(inc.id.clone());
                inc
            }
            Some(id) => serde_json::from_str(&self.get(&format!("/api/incidents/{id}"))?)?,
        };
        for e in inc.timeline.iter().skip(told.timeline) {
            let text = match e.kind {
                EventKind::Opened => {
                    let top: Vec<String> = inc
                        .top_sources
                        .iter()
                        .take(3)
                        .map(|s| format!("{} ({:.0}%)", s.addr, s.share * 100.0))
                        .collect();
                    format!(
                        "INCIDENT {} opened: {}; top sources {}{}",
                        inc.id,
                        e.detail,
                        top.join(", "),
                        if inc.top_sources.len() > 3 { ", ..." } else { "" }
                    )
                }
                EventKind::Resolved => {
                    told.resolved = true;
                    let lasted = inc.ended_at.unwrap_or(e.at).saturating_sub(inc.started_at) as f64 / 1000.0;
                    format!("INCIDENT resolved: {}; it lasted {lasted:.1}s", e.detail)
                }
                EventKind::StatusChanged => format!("incident status {}", e.detail),
                EventKind::NoteAdded => format!("incident note: \"{}\"", e.detail),
                EventKind::SeverityChanged | EventKind::FamilyAdded => format!("incident: {}", e.detail),
                // Never in a timeline.
                EventKind::Updated => continue,
            };
            lines.push((e.at, text));
        }
        told.timeline = inc.timeline.len();
        if inc.status == Status::Resolved {
            told.resolved = true;
        }
        Ok(())
    }

    /// Rules added and removed, and every second what XDP dropped.
    fn rules(&self, told: &mut Told, lines: &mut Vec<(u64, String)>) -> Result<()> {
        let sd = self.state_dir();
        let view: RulesView =
            procs::detector(self.bin, &self.lab.tgt_ns).args(["rules", "list", "--state-dir", &sd, "--json"]).json()?;
        let now: BTreeMap<String, RuleView> = view.rules.into_iter().map(|r| (r.rule.id.clone(), r)).collect();
        // New rules, by where they came from.
        let mut added: BTreeMap<String, Vec<&RuleView>> = BTreeMap::new();
        for (id, r) in &now {
            if !told.rules.contains_key(id) {
                let origin = match (&r.rule.origin.runbook, &r.rule.origin.incident) {
                    (Some(rb), _) => format!("runbook {rb}"),
                    (None, Some(i)) => format!("incident {i}"),
                    _ => r.rule.origin.by.clone(),
                };
                added.entry(origin).or_default().push(r);
            }
        }
        for (origin, mut rs) in added {
            rs.sort_by_key(|r| r.rule.index);
            let ttl = rs[0].ttl_left_ms.map(|ms| format!(", ttl {}s", ms.div_ceil(1000))).unwrap_or_default();
            lines.push((
                rs.iter().map(|r| r.rule.created_ms).min().unwrap_or(0),
                format!(
                    "XDP RULES: {origin} installed {} rule(s) {}, one per top source, e.g. `{}`{ttl}",
                    rs.len(),
                    span(rs.iter().map(|r| r.rule.id.as_str())),
                    rs[0].rule.describe()
                ),
            ));
        }
        let removed: Vec<&str> = told.rules.keys().filter(|id| !now.contains_key(*id)).map(String::as_str).collect();
        if !removed.is_empty() {
            lines.push((
                now_ms(),
                format!("XDP RULES: {} removed {}; {} in force", removed.len(), span(removed.into_iter()), now.len()),
            ));
        }
        told.had_rules |= !now.is_empty();
        told.rules = now;
        let t = now_ms();
        if t >= told.next_counters && (!told.rules.is_empty() || !told.flood_done) {
            told.next_counters = t + 1000;
            let dropped = sum_samples(&self.get("/metrics")?, "detector_dropped_packets_total");
            // Said again only when it moved.
            if dropped != told.dropped {
                told.dropped = dropped;
                let mut text = format!("XDP dropped {dropped:.0} packets so far (detector_dropped_packets_total)");
                if let Some(first) = told.rules.values().min_by_key(|r| r.rule.index) {
                    let d: u64 = told.rules.values().map(|r| r.dropped_packets).sum();
                    let p: u64 = told.rules.values().map(|r| r.passed_packets).sum();
                    text += &format!(
                        "; {} rules: {d} dropped, {p} passed; {} {}: {} dropped, {} passed",
                        told.rules.len(),
                        first.rule.id,
                        first.rule.prefix,
                        first.dropped_packets,
                        first.passed_packets
                    );
                }
                lines.push((t, text));
            }
        }
        Ok(())
    }

    /// What the receiver got since last time.
    fn notifications(&self, told: &mut Told, lines: &mut Vec<(u64, String)>) {
        let all = self.rx.all();
        for r in all.iter().skip(told.received) {
            let text = self.describe(r);
            if r.path == "/pagerduty" && r.json()["event_action"] == "resolve" {
                told.pd_resolved = true;
            }
            lines.push((r.at_ms, text));
        }
        told.received = all.len();
    }

    fn describe(&self, r: &Received) -> String {
        let body = r.json();
        let s = |v: &Value| v.as_str().unwrap_or("?").to_string();
        match r.path.as_str() {
            "/slack" => {
                // The footer block names the runbook: "incident `…` · runbook NAME".
                let runbook = body["blocks"]
                    .as_array()
                    .and_then(|b| b.last())
                    .and_then(|b| b["elements"][0]["text"].as_str())
                    .and_then(|t| t.rsplit_once("runbook ").map(|(_, n)| n.to_string()))
                    .unwrap_or_else(|| "?".into());
                format!("SLACK got from {runbook}: \"{}\"", cut(&s(&body["text"]), 110))
            }
            "/pagerduty" => {
                let action = s(&body["event_action"]);
                let key_ok = body["routing_key"] == "demo-routing-key";
                let mut t = format!(
                    "PAGERDUTY got {action}, dedup_key {}{}",
                    s(&body["dedup_key"]),
                    if key_ok { "" } else { " (unexpected routing_key!)" }
                );
                if action == "trigger" {
                    t += &format!(
                        ", severity {}: \"{}\"",
                        s(&body["payload"]["severity"]),
                        cut(&s(&body["payload"]["summary"]), 80)
                    );
                }
                t
            }
            "/webhook" => {
                let sig = match r.header(detector::runbook::payload::SIGNATURE_HEADER) {
                    None => "unsigned".to_string(),
                    Some(h) if detector::runbook::payload::verify(self.secret, r.body.as_bytes(), h) => {
                        "X-Detector-Signature verifies with demo-secret".to_string()
                    }
                    Some(_) => "X-Detector-Signature DOES NOT VERIFY".to_string(),
                };
                format!(
                    "WEBHOOK got {} from {} ({} bytes of JSON, severity {}, status {}); {sig}",
                    s(&body["event"]),
                    s(&body["runbook"]),
                    r.body.len(),
                    s(&body["severity"]),
                    s(&body["status"])
                )
            }
            other => format!("receiver got an unexpected POST to {other}"),
        }
    }

    /// True when every runbook that ran for the incident has also run for
    /// its resolution.
    fn all_answered(&self, told: &Told) -> Result<bool> {
        let Some(id) = &told.incident else { return Ok(false) };
        let mut v: Value = serde_json::from_str(&self.get(&format!("/api/runbooks/executions?incident={id}"))?)?;
        let list: Vec<Execution> = serde_json::from_value(v["executions"].take())?;
        let ran: BTreeSet<&str> = list.iter().filter(|e| e.trigger != "resolved").map(|e| e.runbook.as_str()).collect();
        let answered: BTreeSet<&str> =
            list.iter().filter(|e| e.trigger == "resolved").map(|e| e.runbook.as_str()).collect();
        Ok(!ran.is_empty() && ran == answered)
    }

    /// The runbook history, oldest first, from `detector history`.
    pub fn history(&self, t0: u64) -> Result<()> {
        let sd = self.state_dir();
        let v: Value =
            procs::detector(self.bin, &self.lab.tgt_ns).args(["history", "--state-dir", &sd, "--json"]).json()?;
        let mut list: Vec<Execution> = serde_json::from_value(v["executions"].clone())?;
        list.sort_by_key(|e| e.started_at);
        println!("Runbook history (`detector history`): {} executions, oldest first.", list.len());
        for e in &list {
            println!(
                "{:>7}  {} on {}: {}{}",
                rel(t0, e.started_at),
                e.runbook,
                e.trigger,
                e.outcome.name(),
                if e.dry_run { " (dry run)" } else { "" }
            );
            for st in &e.steps {
                let what = match (&st.error, st.detail.is_empty()) {
                    (Some(err), true) => err.clone(),
                    (Some(err), false) => format!("{}; {err}", st.detail),
                    (None, _) => st.detail.clone(),
                };
                println!("           {:<9} {:<8} {}", st.kind, st.outcome.name(), cut(&short_ids(&what), 100));
            }
        }
        Ok(())
    }
}

/// `r1..r20` for consecutive ids, else a list (cut after four).
fn span<'a>(ids: impl Iterator<Item = &'a str>) -> String {
    let mut ids: Vec<&str> = ids.collect();
    let num = |id: &str| id.trim_start_matches('r').parse::<u64>().ok();
    ids.sort_by_key(|id| (num(id), id.to_string()));
    let nums: Vec<Option<u64>> = ids.iter().map(|id| num(id)).collect();
    let consecutive = nums.windows(2).all(|w| matches!(w, [Some(a), Some(b)] if *b == a + 1));
    match ids.as_slice() {
        [] => String::new(),
        [first, .., last] if consecutive && ids.len() > 2 => format!("{first}..{last}"),
        _ if ids.len() > 4 => format!("{}, ...", ids[..4].join(", ")),
        _ => ids.join(", "),
    }
}

/// `(r1, r2, ..., r20)` in a step's detail shortened with [`span`].
fn short_ids(detail: &str) -> String {
    let Some(i) = detail.find(" (r") else { return detail.to_string() };
    let (head, rest) = (&detail[..i], &detail[i + 2..]);
    let Some((list, tail)) = rest.split_once(')') else { return detail.to_string() };
    let ids: Vec<&str> = list.split(", ").collect();
    let is_id =
        |id: &&str| id.strip_prefix('r').is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if ids.len() < 3 || !ids.iter().all(is_id) {
        return detail.to_string();
    }
    format!("{head} ({}){tail}", span(ids.into_iter()))
}

/// The sum of every sample of a metric (all label sets).
fn sum_samples(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b'{') | Some(b' ')))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.trim().parse::<f64>().ok()))
        .sum()
}

/// At most `max` characters, `…` when cut.
fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    s.chars().take(max - 1).collect::<String>() + "…"
}
