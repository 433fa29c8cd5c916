//! A real Alertmanager in a lab namespace, for the tests of the runbooks'
//! `alertmanager` channel and of the shipped routing
//! (`deploy/alertmanager/`): it takes alerts on its v2 API, groups and
//! routes them as its configuration says, and answers on
//! `<address>:<a free port>` in that namespace (127.0.0.1 unless asked for
//! an address the lab's other namespaces reach). A single instance: cluster
//! mode off (`--cluster.listen-address=`), so it neither listens for nor
//! looks for peers. Its configuration, its storage (silences, the
//! notification log) and its log stay in the lab's scratch directory; it is
//! stopped with its handle.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use detector::lab::{alertmanager::Alertmanager, Lab};
//! let lab = Lab::new()?;
//! let am = Alertmanager::builder(&lab.tgt_ns, &lab.dir).start()?;
//! // A runbook step `notify: { channel: alertmanager, url: <am.url()> }`
//! // run in lab.tgt_ns reaches it.
//! let groups = am.groups()?;
//! # Ok(()) }
//! ```

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::Deserialize;
use thiserror::Error;

use super::{
    find_program, free_port, http_get_at,
    process::{Background, ProcessError, Supervision},
};

/// The Debian package's name for the binary (upstream calls it
/// `alertmanager`; either is taken).
const PROGRAMS: [&str; 2] = ["prometheus-alertmanager", "alertmanager"];

/// With no configuration given: every alert to one receiver that sends
/// nothing, grouped by `alertname`.
const DEFAULT_CONFIG: &str = "route:\n  receiver: \"null\"\n  group_by: [alertname]\nreceivers:\n  - name: \"null\"\n";

#[derive(Debug, Error)]
pub enum AlertmanagerError {
    #[error(
        "Alertmanager is not installed: no `prometheus-alertmanager` or `alertmanager` \
         (`cargo xtask test` installs it: Debian package prometheus-alertmanager)"
    )]
    NotInstalled,
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("no free port in namespace {ns}: {source}")]
    Port { ns: String, source: std::io::Error },
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("Alertmanager was not ready on {addr} within {after:?}; its output:\n{output}")]
    NotReady { addr: SocketAddr, after: Duration, output: String },
    #[error("GET {path}: {source}")]
    Http { path: String, source: std::io::Error },
    #[error("GET {path}: HTTP {code}: {body}")]
    Status { path: String, code: u16, body: String },
    #[error("GET {path}: not the API's JSON ({source}): {body}")]
    Json { path: String, source: serde_json::Error, body: String },
}

/// What to start; [`Alertmanager::builder`] gives the defaults.
#[must_use]
pub struct AlertmanagerBuilder {
    ns: String,
    dir: PathBuf,
    config: String,
    listen: IpAddr,
    ready_timeout: Duration,
}

impl AlertmanagerBuilder {
    /// The configuration (`alertmanager.yml`'s text: a shipped example with
    /// the lab's receiver URLs, say); by default a `null` receiver that
    /// sends nothing, alerts grouped by `alertname`.
    pub fn config(mut self, yaml: impl Into<String>) -> Self {
        self.config = yaml.into();
        self
    }

    /// The configuration in `path`, as [`config`](Self::config).
    pub fn config_file(self, path: &Path) -> Result<Self, AlertmanagerError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| AlertmanagerError::Read { path: path.to_path_buf(), source })?;
        Ok(self.config(text))
    }

    /// The address it listens on in its namespace (default 127.0.0.1): one
    /// that other namespaces of the lab route to, for controllers there.
    pub fn listen(mut self, addr: IpAddr) -> Self {
        self.listen = addr;
        self
    }

    /// How long it may take to be ready (default 30 s).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Writes the configuration to `<dir>/alertmanager.yml` and starts
    /// Alertmanager in the namespace, its storage in
    /// `<dir>/alertmanager-data`; returns once `/-/ready` answers 200. If
    /// it exits (a configuration it refuses, say) or is not ready in time,
    /// it is stopped and the error carries its output.
    pub fn start(self) -> Result<Alertmanager, AlertmanagerError> {
        let program = PROGRAMS.iter().find_map(|p| find_program(p)).ok_or(AlertmanagerError::NotInstalled)?;
        let conf = self.dir.join("alertmanager.yml");
        std::fs::write(&conf, &self.config)
            .map_err(|source| AlertmanagerError::Write { path: conf.clone(), source })?;
        let data = self.dir.join("alertmanager-data");
        std::fs::create_dir_all(&data).map_err(|source| AlertmanagerError::Write { path: data.clone(), source })?;
        let port = free_port(&self.ns).map_err(|source| AlertmanagerError::Port { ns: self.ns.clone(), source })?;
        let addr = SocketAddr::new(self.listen, port);
        let args = [
            format!("--config.file={}", conf.display()),
            format!("--storage.path={}", data.display()),
            format!("--web.listen-address={addr}"),
            // No cluster: no gossip port, no peers looked for.
            "--cluster.listen-address=".to_string(),
        ];
        tracing::debug!(ns = %self.ns, %addr, "starting Alertmanager");
        let child =
            Background::spawn_in(&self.ns, &program, &args, Supervision { die_with_parent: true, cancel: None })?;
        let mut am = Alertmanager { child: Some(child), ns: self.ns, addr };
        am.wait_ready(self.ready_timeout)?;
        Ok(am)
    }
}

/// A running Alertmanager. Dropped, it gets SIGTERM (then SIGKILL) and is
/// reaped.
pub struct Alertmanager {
    child: Option<Background>,
    ns: String,
    addr: SocketAddr,
}

/// One alert as the v2 API gives it (`/api/v2/alerts`, and in groups).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    pub starts_at: String,
    pub ends_at: String,
    #[serde(default)]
    pub fingerprint: String,
    pub status: AlertStatus,
    /// The receivers its route sends it to.
    #[serde(default)]
    pub receivers: Vec<ReceiverName>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertStatus {
    /// `active`, `suppressed` (silenced or inhibited) or `unprocessed`.
    pub state: String,
    #[serde(default)]
    pub silenced_by: Vec<String>,
    #[serde(default)]
    pub inhibited_by: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ReceiverName {
    pub name: String,
}

/// One group of `/api/v2/alerts/groups`: the alerts its route's `group_by`
/// put together, and where they are sent.
#[derive(Clone, Debug, Deserialize)]
pub struct AlertGroup {
    /// The values of the route's `group_by` labels.
    pub labels: BTreeMap<String, String>,
    pub receiver: ReceiverName,
    pub alerts: Vec<Alert>,
}

impl Alert {
    pub fn name(&self) -> &str {
        self.label("alertname").unwrap_or("")
    }

    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.get(name).map(String::as_str)
    }
}

impl Alertmanager {
    /// Alertmanager in namespace `ns`, its files in `dir` (a lab's scratch
    /// directory), with the default configuration, on 127.0.0.1.
    pub fn builder(ns: &str, dir: &Path) -> AlertmanagerBuilder {
        AlertmanagerBuilder {
            ns: ns.to_string(),
            dir: dir.to_path_buf(),
            config: DEFAULT_CONFIG.to_string(),
            listen: IpAddr::V4(Ipv4Addr::LOCALHOST),
            ready_timeout: Duration::from_secs(30),
        }
    }

    /// Where it listens, in its namespace.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its base URL (`http://<addr>`), what a runbook's `alertmanager`
    /// step takes as `url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where the API is asked from inside the namespace: the listen
    /// address, or loopback when it listens on every address.
    fn api_addr(&self) -> SocketAddr {
        let ip = match self.addr.ip() {
            IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        SocketAddr::new(ip, self.addr.port())
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), AlertmanagerError> {
        let started = Instant::now();
        loop {
            let exited = match self.child.as_mut() {
                Some(c) => c.try_finish()?,
                None => None,
            };
            if let Some(out) = exited {
                self.child = None;
                return Err(AlertmanagerError::NotReady {
                    addr: self.addr,
                    after: started.elapsed(),
                    output: text(&out),
                });
            }
            if http_get_at(&self.ns, self.api_addr(), "/-/ready", None).is_ok_and(|(code, _)| code == 200) {
                tracing::debug!(ns = %self.ns, addr = %self.addr, after = ?started.elapsed(), "Alertmanager ready");
                return Ok(());
            }
            if started.elapsed() > timeout {
                let output = self.stop().map(|o| text(&o)).unwrap_or_else(|e| e.to_string());
                return Err(AlertmanagerError::NotReady { addr: self.addr, after: timeout, output });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// GET an API path and parse its JSON.
    pub fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, AlertmanagerError> {
        let (code, body) = http_get_at(&self.ns, self.api_addr(), path, None)
            .map_err(|source| AlertmanagerError::Http { path: path.to_string(), source })?;
        if code != 200 {
            return Err(AlertmanagerError::Status { path: path.to_string(), code, body });
        }
        serde_json::from_str(&body).map_err(|source| AlertmanagerError::Json { path: path.to_string(), source, body })
    }

    /// The alerts it holds that have not ended (`/api/v2/alerts`: a
    /// resolved alert is no longer listed), silenced and inhibited ones
    /// included.
    pub fn alerts(&self) -> Result<Vec<Alert>, AlertmanagerError> {
        self.get("/api/v2/alerts")
    }

    /// The alerts that have not ended, in their groups
    /// (`/api/v2/alerts/groups`).
    pub fn groups(&self) -> Result<Vec<AlertGroup>, AlertmanagerError> {
        self.get("/api/v2/alerts/groups")
    }

    /// Stops it (SIGTERM, 10 s to exit); its output.
    pub fn stop(&mut self) -> Result<std::process::Output, AlertmanagerError> {
        let child = self.child.take().ok_or_else(|| ProcessError::Wait {
            what: "alertmanager".into(),
            source: std::io::Error::other("already stopped"),
        })?;
        Ok(child.stop(libc::SIGTERM, Duration::from_secs(10))?)
    }

    /// Its namespace.
    pub fn ns(&self) -> &str {
        &self.ns
    }
}

fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts_and_groups_parse_as_the_v2_api_gives_them() {
        let body = r#"[{"alerts":[{"annotations":{"summary":"s"},"endsAt":"2026-01-01T00:04:00.000Z",
            "fingerprint":"f1","receivers":[{"name":"ddos"}],"startsAt":"2026-01-01T00:00:00.000Z",
            "status":{"inhibitedBy":[],"silencedBy":[],"state":"active"},"updatedAt":"2026-01-01T00:00:01.000Z",
            "labels":{"alertname":"DDoSAttack","node":"a"}}],
            "labels":{"alertname":"DDoSAttack","hostgroup":"host"},"receiver":{"name":"ddos"}}]"#;
        let groups: Vec<AlertGroup> = serde_json::from_str(body).unwrap();
        assert_eq!(groups[0].labels["hostgroup"], "host");
        assert_eq!(groups[0].receiver.name, "ddos");
        let a = &groups[0].alerts[0];
        assert_eq!((a.name(), a.label("node"), a.status.state.as_str()), ("DDoSAttack", Some("a"), "active"));
        assert_eq!(a.receivers[0].name, "ddos");
        assert_eq!(a.annotations["summary"], "s");
    }

    #[test]
    fn the_default_configuration_is_yaml_with_a_receiver() {
        let c: serde_yaml::Value = serde_yaml::from_str(DEFAULT_CONFIG).unwrap();
        assert_eq!(c["route"]["receiver"], c["receivers"][0]["name"]);
    }
}
