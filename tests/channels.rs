//! The notification channels beyond webhooks, end to end on loopback: the
//! runbook engine, in process, loads a runbook directory (secrets from
//! files), runs it for an incident that opens and then resolves, and keeps
//! its executions in the history's database, as `detector run` does. The
//! channels' services are local stand-ins:
//!
//! - an HTTP receiver for Telegram's Bot API and OpsGenie's Alert API: the
//!   paths (the bot token in Telegram's, the alias in OpsGenie's close),
//!   the headers and the bodies; OpsGenie's alert is created at the start,
//!   with the incident as its alias, and closed at the resolution; a `503`
//!   is retried;
//! - a real SMTP server (`tests/smtp/server.py`, aiosmtpd, from Debian's
//!   `python3-aiosmtpd`) with a certificate this test makes: STARTTLS and
//!   TLS-from-the-start, a login required; the mails arrive with their
//!   headers and body, and the resolution replies to the first; a wrong
//!   password, and a server whose certificate is not trusted, fail their
//!   steps on record, with one clear line.
//!
//! Nothing leaves 127.0.0.1, and no secret reaches the history.

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use detector::{
    clock::now_ms,
    detect::{
        family::Family,
        incident::{EventKind, Incident, IncidentEvent, Status},
        severity::Severity,
    },
    history::{HistoryCmd, Store, Writer},
    metrics::Metrics,
    mitigate::{mitigator::Mitigator, ruleset::Limits},
    runbook::{
        engine::{Engine, Handles, IncidentCommand},
        record::{Execution, Outcome},
    },
    statedir::FileWriter,
};
use prometheus_client::registry::Registry;
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
    sync::{broadcast, mpsc},
};

const BOT_TOKEN: &str = "123456:AAtelegram-s3cret";
const GENIE_KEY: &str = "genie-s3cret";
const SMTP_USER: &str = "detector";
const SMTP_PASSWORD: &str = "smtp-s3cret";

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("detector-channels-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["runbooks", "state", "mail"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        Scratch(dir)
    }

    /// A secret file; returns its `${file:...}` reference.
    fn secret(&self, name: &str, value: &str) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, value).unwrap();
        format!("${{file:{}}}", p.display())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// --- the HTTP receiver ---

#[derive(Clone, Debug)]
struct Received {
    method: String,
    /// With its query.
    path: String,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

type Got = Arc<Mutex<Vec<Received>>>;

/// Keeps every request and answers as Telegram (`200`, `{"ok":true,...}`)
/// or OpsGenie (`202`) would; the first request on a path that ends in
/// `/flaky` gets a `503`.
async fn receiver() -> (String, Got) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    let got: Got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    let flaky_seen = Arc::new(Mutex::new(false));
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let (g, flaky_seen) = (g.clone(), flaky_seen.clone());
            tokio::spawn(async move {
                let Some(r) = read_request(&mut s).await else { return };
                let answer: &[u8] = if r.path.contains("/flaky")
                    && !std::mem::replace(&mut *flaky_seen.lock().unwrap(), true)
                {
                    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                } else if r.path.contains("/sendMessage") {
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 38\r\nconnection: close\r\n\r\n{\"ok\":true,\"result\":{\"message_id\":1}}"
                } else {
                    b"HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\ncontent-length: 52\r\nconnection: close\r\n\r\n{\"result\":\"Request will be processed\",\"took\":0.002}"
                };
                g.lock().unwrap().push(r);
                let _ = s.write_all(answer).await;
            });
        }
    });
    (base, got)
}

async fn read_request(s: &mut tokio::net::TcpStream) -> Option<Received> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let n = s.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&buf[..n]);
        let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
        let head = String::from_utf8_lossy(&got[..end]).to_string();
        let mut lines = head.lines();
        let mut first = lines.next()?.split_whitespace();
        let (method, path) = (first.next()?.to_string(), first.next()?.to_string());
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().to_string())))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        while got.len() < end + 4 + len {
            let n = s.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            got.extend_from_slice(&buf[..n]);
        }
        let body = serde_json::from_slice(&got[end + 4..end + 4 + len]).unwrap_or(Value::Null);
        return Some(Received { method, path, headers, body });
    }
}

// --- the SMTP server ---

/// `tests/smtp/server.py` under Debian's Python (the one with
/// `python3-aiosmtpd`; `cargo xtask test` installs it), with a server
/// certificate for 127.0.0.1 signed by a CA made here.
struct SmtpServer {
    child: Child,
    starttls_port: u16,
    tls_port: u16,
    /// The CA's PEM: what a step's `ca_file` trusts.
    ca_file: PathBuf,
    out: PathBuf,
    log: PathBuf,
}

const PYTHON: &str = "/usr/bin/python3";

impl SmtpServer {
    fn start(dir: &Path) -> SmtpServer {
        let have = Command::new(PYTHON).args(["-c", "import aiosmtpd"]).output().is_ok_and(|o| o.status.success());
        assert!(have, "{PYTHON} cannot import aiosmtpd: install python3-aiosmtpd (cargo xtask test does)");
        let (ca_pem, cert_pem, key_pem) = certificates();
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let ca_file = write("ca.pem", &ca_pem);
        let cert = write("server.pem", &cert_pem);
        let key = write("server.key", &key_pem);
        let out = dir.join("mail");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/smtp/server.py");
        let mut child = Command::new(PYTHON)
            .arg(script)
            .args(["--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap()])
            .args(["--user", SMTP_USER, "--password", SMTP_PASSWORD, "--out", out.to_str().unwrap()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("smtp.log")).unwrap())
            .spawn()
            .expect("starting the SMTP server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let ports: Vec<u16> = line
            .strip_prefix("ready ")
            .unwrap_or_else(|| panic!("the SMTP server said {line:?}"))
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect();
        SmtpServer { child, starttls_port: ports[0], tls_port: ports[1], ca_file, out, log: dir.join("smtp.log") }
    }

    /// What aiosmtpd logged: each session's trouble.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The mails received, in arrival order.
    fn mails(&self) -> Vec<Value> {
        let mut files: Vec<(u32, PathBuf)> = std::fs::read_dir(&self.out)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter_map(|p| {
                let n = p.file_name()?.to_str()?.strip_prefix("mail-")?.strip_suffix(".json")?.parse().ok()?;
                Some((n, p))
            })
            .collect();
        files.sort();
        files.iter().map(|(_, p)| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()).collect()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CA, and a server certificate for 127.0.0.1 it signed: PEMs of the
/// CA, the server's certificate and its key.
fn certificates() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "detector test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let mut server = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    server.distinguished_name.push(DnType::CommonName, "127.0.0.1");
    let key = KeyPair::generate().unwrap();
    let cert = server.signed_by(&key, &issuer).unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

// --- the engine ---

/// An engine over `dir`'s runbooks, its executions written to the
/// history's database in `state` as the controller writes them, with a
/// controller that answers every incident command.
async fn engine(dir: &Path, state: &Path) -> (Arc<Engine>, Writer, broadcast::Sender<IncidentEvent>) {
    let history = Writer::spawn(Store::open(state).unwrap(), None);
    let executions = history.sender();
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
        history: Arc::new(move |ex| {
            let _ = executions.send(HistoryCmd::Execution(Box::new(ex)));
        }),
        metrics: Arc::new(Metrics::register(&mut Registry::default())),
        bgp: None,
        capacity: Default::default(),
    };
    let (e, errors) = Engine::load(Some(dir.to_path_buf()), h).await.unwrap();
    assert!(errors.is_empty(), "{}", errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"));
    let (events, rx) = broadcast::channel(64);
    tokio::spawn(e.clone().run(rx));
    (e, history, events)
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
        severity: Severity::Critical,
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

/// Waits (15 s at most) for `cond`; `seen` says what there was instead.
async fn until(what: &str, mut cond: impl FnMut() -> bool, seen: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}; seen:\n{}", seen());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The history's record of `incident`, once the executions in flight are
/// written: the writer finishes, and the database is read back.
async fn on_record(e: &Engine, history: Writer, state: &Path, incident: &str) -> Vec<Execution> {
    until("the executions to finish", || e.in_flight() == 0, || format!("{} in flight", e.in_flight())).await;
    tokio::task::spawn_blocking(move || history.finish()).await.unwrap();
    let mut ex = Store::open_read_only(state).unwrap().executions_of(incident).unwrap();
    ex.sort_by_key(|e| e.started_at);
    ex
}

fn mail_header<'a>(mail: &'a Value, name: &str) -> Option<&'a str> {
    mail["headers"].as_array()?.iter().find(|h| h[0].as_str().is_some_and(|n| n.eq_ignore_ascii_case(name)))?[1]
        .as_str()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telegram_opsgenie_and_email_from_start_to_resolution() {
    let s = Scratch::new("ok");
    let (base, got) = receiver().await;
    let smtp = SmtpServer::start(&s.0);
    let (token, key, password) =
        (s.secret("tg", BOT_TOKEN), s.secret("og", GENIE_KEY), s.secret("smtp", SMTP_PASSWORD));
    let ca = smtp.ca_file.display();
    std::fs::write(
        s.0.join("runbooks/page.yaml"),
        format!(
            r#"name: page-everyone
trigger: {{ families: [any] }}
steps:
  - notify: {{ channel: telegram, url: "{base}", bot_token: "{token}", chat_id: -1001234567890, message: "UDP flood at {{{{ target }}}}: {{{{ pps | round | int }}}} pps" }}
  - notify: {{ channel: opsgenie, url: "{base}/flaky", api_key: "{key}", message: "DDoS on {{{{ target }}}} ({{{{ families | join(', ') }}}})" }}
  - notify:
      channel: email
      smtp: {{ host: 127.0.0.1, port: {port}, username: {SMTP_USER}, password: "{password}", ca_file: {ca} }}
      from: "DDoS detector <detector@example.test>"
      to: [ops@example.test, "NOC <noc@example.test>"]
      subject: "[{{{{ severity }}}}] {{{{ families | join(', ') }}}} on {{{{ node }}}}"
      message: "UDP flood at {{{{ target }}}}: {{{{ pps | round | int }}}} pps"
  - notify:
      channel: email
      smtp: {{ host: 127.0.0.1, port: {tls_port}, tls: tls, username: {SMTP_USER}, password: "{password}", ca_file: {ca} }}
      from: detector@example.test
      to: oncall@example.test
"#,
            port = smtp.starttls_port,
            tls_port = smtp.tls_port,
        ),
    )
    .unwrap();
    let (e, history, events) = engine(&s.0.join("runbooks"), &s.0.join("state")).await;
    let inc = incident("edge-1-veth0-192.0.2.2-20260101T000000.000Z");

    events.send(event(EventKind::Opened, &inc)).unwrap();
    let seen = || format!("{:#?}\n{:#?}\nSMTP server:\n{}", got.lock().unwrap(), smtp.mails(), smtp.log());
    until("Telegram, OpsGenie and two mails", || got.lock().unwrap().len() >= 3 && smtp.mails().len() >= 2, seen).await;

    // Telegram: sendMessage under the bot's token, the template rendered.
    let all = got.lock().unwrap().clone();
    let tg = all.iter().find(|r| r.path.contains("sendMessage")).unwrap();
    assert_eq!((tg.method.as_str(), tg.path.as_str()), ("POST", "/bot123456:AAtelegram-s3cret/sendMessage"));
    assert_eq!(tg.header("content-type"), Some("application/json"));
    assert!(tg.header("user-agent").unwrap().starts_with("detector/"));
    assert_eq!(
        tg.body,
        serde_json::json!({ "chat_id": -1001234567890_i64, "text": "UDP flood at 192.0.2.2: 60000 pps", "disable_web_page_preview": true })
    );
    // OpsGenie: a 503 first (retried), then the alert, keyed by the incident.
    let og: Vec<&Received> = all.iter().filter(|r| r.path.starts_with("/flaky")).collect();
    assert_eq!(og.len(), 2, "the 503 is retried: {og:#?}");
    for r in &og {
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/flaky/v2/alerts"));
        assert_eq!(r.header("authorization"), Some("GenieKey genie-s3cret"));
        assert_eq!(r.body["alias"], inc.id.as_str());
        assert_eq!(r.body["message"], "DDoS on 192.0.2.2 (udp_flood)");
        assert_eq!(r.body["priority"], "P1");
        assert_eq!(r.body["source"], "detector");
        assert_eq!(r.body["entity"], "192.0.2.2");
        assert_eq!(r.body["details"]["severity"], "critical");
    }
    // The mails: over STARTTLS (587's way) and TLS (465's), logged in.
    let mails = smtp.mails();
    let starttls = mails.iter().find(|m| m["starttls"] == true).unwrap_or_else(|| panic!("{mails:#?}"));
    assert_eq!((starttls["tls"].as_bool(), starttls["login"].as_str()), (Some(true), Some(SMTP_USER)));
    assert_eq!(starttls["mail_from"], "detector@example.test");
    assert_eq!(starttls["rcpt_tos"], serde_json::json!(["ops@example.test", "noc@example.test"]));
    assert_eq!(mail_header(starttls, "From"), Some("DDoS detector <detector@example.test>"));
    assert_eq!(mail_header(starttls, "To"), Some("ops@example.test, NOC <noc@example.test>"));
    assert_eq!(mail_header(starttls, "Subject"), Some("[critical] udp_flood on edge-1"));
    assert_eq!(mail_header(starttls, "X-Detector-Event"), Some("attack_start"));
    assert_eq!(mail_header(starttls, "X-Detector-Incident"), Some(inc.id.as_str()));
    let first_id = mail_header(starttls, "Message-ID").unwrap().to_string();
    assert_eq!(first_id, "<edge-1-veth0-192-0-2-2-20260101T000000-000Z.page-everyone@detector>");
    assert_eq!(starttls["content_type"], "text/plain");
    assert_eq!(starttls["body"], "UDP flood at 192.0.2.2: 60000 pps\n");
    let wrapped = mails.iter().find(|m| m["starttls"] == false).unwrap();
    assert_eq!((wrapped["tls"].as_bool(), wrapped["login"].as_str()), (Some(true), Some(SMTP_USER)));
    assert_eq!(wrapped["rcpt_tos"], serde_json::json!(["oncall@example.test"]));
    assert_eq!(
        mail_header(wrapped, "Subject"),
        Some("DDoS attack started on edge-1 (veth0): udp_flood, severity critical")
    );
    assert!(wrapped["body"]
        .as_str()
        .unwrap()
        .starts_with("attack_start on edge-1 (veth0, target 192.0.2.2): udp_flood"));

    // The resolution: OpsGenie's alert closed by its alias, Telegram and
    // the mails told it is over, the mails in the first one's thread.
    let mut resolved = inc.clone();
    resolved.status = Status::Resolved;
    resolved.ended_at = Some(now_ms());
    events.send(event(EventKind::Resolved, &resolved)).unwrap();
    until("the resolution everywhere", || got.lock().unwrap().len() >= 5 && smtp.mails().len() >= 4, seen).await;
    let all = got.lock().unwrap().clone();
    let close = all.iter().find(|r| r.path.contains("/close")).unwrap_or_else(|| panic!("{all:#?}"));
    assert_eq!(close.path, "/flaky/v2/alerts/edge-1-veth0-192.0.2.2-20260101T000000.000Z/close?identifierType=alias",);
    assert_eq!(close.header("authorization"), Some("GenieKey genie-s3cret"));
    assert_eq!(close.body["source"], "detector");
    assert!(
        close.body["note"].as_str().unwrap().starts_with("Attack on edge-1 (veth0, target 192.0.2.2) is over"),
        "{close:?}"
    );
    let tg_end = all.iter().filter(|r| r.path.contains("sendMessage")).nth(1).unwrap();
    assert!(tg_end.body["text"].as_str().unwrap().starts_with("Attack on edge-1 (veth0, target 192.0.2.2) is over"));
    let mails = smtp.mails();
    let end = mails
        .iter()
        .find(|m| m["starttls"] == true && mail_header(m, "X-Detector-Event") == Some("attack_end"))
        .unwrap();
    assert_eq!(mail_header(end, "In-Reply-To"), Some(first_id.as_str()));
    assert_eq!(mail_header(end, "References"), Some(first_id.as_str()));
    assert!(mail_header(end, "Subject").unwrap().starts_with("DDoS attack ended on edge-1 (veth0)"), "{end}");
    assert!(end["body"].as_str().unwrap().starts_with("Attack on edge-1 (veth0, target 192.0.2.2) is over"));

    // The history: both executions, every step ok, what each sent, and no
    // secret.
    let ex = on_record(&e, history, &s.0.join("state"), &inc.id).await;
    assert_eq!(ex.len(), 2, "{ex:#?}");
    for x in &ex {
        assert_eq!(x.outcome, Outcome::Ok, "{x:#?}");
        assert_eq!(x.steps.iter().map(|s| s.outcome).collect::<Vec<_>>(), [Outcome::Ok; 4], "{x:#?}");
    }
    let start = &ex[0].steps;
    assert_eq!(start[0].detail, format!("{base}/bot{token}/sendMessage: HTTP 200 (attempt 1 of 4)"));
    assert_eq!(start[1].detail, format!("{base}/flaky/v2/alerts: HTTP 202 (attempt 2 of 4)"));
    assert_eq!(
        start[2].detail,
        format!("email to ops@example.test, noc@example.test via 127.0.0.1:{} (starttls): SMTP 250 2.0.0 Message accepted for delivery (attempt 1 of 4)", smtp.starttls_port)
    );
    assert!(start[3]
        .detail
        .starts_with(&format!("email to oncall@example.test via 127.0.0.1:{} (tls): SMTP 250", smtp.tls_port)));
    let text = format!("{ex:?}");
    for secret in [BOT_TOKEN, GENIE_KEY, SMTP_PASSWORD] {
        assert!(!text.contains(secret), "{secret} is on record: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_or_an_untrusted_server_fails_its_step_on_record() {
    let s = Scratch::new("fail");
    let smtp = SmtpServer::start(&s.0);
    let wrong = s.secret("smtp", "not-the-password");
    let right = s.secret("smtp-right", SMTP_PASSWORD);
    let ca = smtp.ca_file.display();
    let port = smtp.starttls_port;
    std::fs::write(
        s.0.join("runbooks/mail.yaml"),
        format!(
            r#"name: mail-ops
trigger: {{ families: [any] }}
steps:
  - notify: {{ channel: email, retries: 2, smtp: {{ host: 127.0.0.1, port: {port}, username: {SMTP_USER}, password: "{wrong}", ca_file: {ca} }}, from: detector@example.test, to: ops@example.test }}
  - notify: {{ channel: email, retries: 1, timeout: 2s, smtp: {{ host: 127.0.0.1, port: {port}, username: {SMTP_USER}, password: "{right}" }}, from: detector@example.test, to: ops@example.test }}
  - notify: {{ channel: email, smtp: {{ host: 127.0.0.1, port: {port}, username: {SMTP_USER}, password: "{right}", ca_file: {ca} }}, from: detector@example.test, to: ops@example.test }}
"#
        ),
    )
    .unwrap();
    let (e, history, events) = engine(&s.0.join("runbooks"), &s.0.join("state")).await;
    let inc = incident("edge-1-veth0-192.0.2.2-20260101T000001.000Z");
    let t0 = Instant::now();
    events.send(event(EventKind::Opened, &inc)).unwrap();
    until("the last step's mail", || !smtp.mails().is_empty(), || smtp.log()).await;
    let ex = on_record(&e, history, &s.0.join("state"), &inc.id).await;
    let took = t0.elapsed();
    assert_eq!(ex.len(), 1, "{ex:#?}");
    let x = &ex[0];
    for s in &x.steps {
        println!("step {} {}: {}", s.index, s.outcome.name(), s.error.as_deref().unwrap_or(&s.detail));
    }
    assert_eq!(x.outcome, Outcome::Failed, "{x:#?}");
    let steps: HashMap<usize, &detector::runbook::record::StepRecord> = x.steps.iter().map(|s| (s.index, s)).collect();

    // The wrong password: refused by the server (535, permanent), so
    // not tried again despite `retries: 2`; one line naming the mail.
    let wrong_pw = steps[&0];
    assert_eq!(wrong_pw.outcome, Outcome::Failed);
    let err = wrong_pw.error.as_deref().unwrap();
    assert_eq!(
        err,
        format!("email to ops@example.test via 127.0.0.1:{port} (starttls): SMTP 535 5.7.8 Authentication credentials invalid")
    );
    // No CA file: the test CA is unknown to the system's roots, so TLS
    // fails (retried: no reply from the server, as over HTTP).
    let untrusted = steps[&1];
    assert_eq!(untrusted.outcome, Outcome::Failed);
    let err = untrusted.error.as_deref().unwrap();
    assert!(
        err.starts_with(&format!("email to ops@example.test via 127.0.0.1:{port} (starttls): "))
            && err.ends_with(" (2 attempts)"),
        "{err}"
    );
    assert!(
        err.contains("invalid peer certificate: UnknownIssuer (a private CA? trust it with smtp.ca_file)"),
        "{err}"
    );
    assert!(!err.contains('\n'), "{err}");
    // The next step still runs (continue_on_error), and delivers.
    assert_eq!(steps[&2].outcome, Outcome::Ok, "{x:#?}");
    let mails = smtp.mails();
    assert_eq!(mails.len(), 1, "only the good step's mail: {mails:#?}");
    assert_eq!(mails[0]["login"], SMTP_USER);
    assert!(took < Duration::from_secs(10), "the permanent failure is not retried: {took:?}");
    let text = format!("{ex:?}");
    assert!(!text.contains(SMTP_PASSWORD) && !text.contains("not-the-password"), "{text}");
}
