//! A real Prometheus server in a lab namespace, for the tests of the alert
//! rules and the dashboard (`deploy/`): it scrapes targets on loopback
//! inside the namespace (a controller's `/metrics`), evaluates rule files,
//! and answers its HTTP API on `127.0.0.1:<a free port>` in that namespace
//! only. Its configuration, its TSDB and its log stay in the lab's scratch
//! directory; it is stopped with its handle.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use detector::lab::{prometheus::Prometheus, Lab};
//! let lab = Lab::new()?;
//! let prom = Prometheus::builder(&lab.tgt_ns, &lab.dir).scrape("127.0.0.1:9477").start()?;
//! let up = prom.query("up")?;
//! # Ok(()) }
//! ```

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::Deserialize;
use thiserror::Error;

use super::{
    find_program, http_get,
    process::{Background, ProcessError, Supervision},
};

#[derive(Debug, Error)]
pub enum PrometheusError {
    #[error(
        "Prometheus is not installed: no `prometheus` (`cargo xtask test` installs it: Debian package prometheus)"
    )]
    NotInstalled,
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("no free port on 127.0.0.1 in namespace {ns}: {source}")]
    Port { ns: String, source: std::io::Error },
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("Prometheus was not ready on 127.0.0.1:{port} within {after:?}; its output:\n{output}")]
    NotReady { port: u16, after: Duration, output: String },
    #[error("GET {path}: {source}")]
    Http { path: String, source: std::io::Error },
    #[error("GET {path}: HTTP {code}, not the API's JSON: {body}")]
    Status { path: String, code: u16, body: String },
    #[error("GET {path}: Prometheus answered {error_type}: {error}")]
    Api { path: String, error_type: String, error: String },
}

/// What to start; [`Prometheus::builder`] gives the defaults.
#[must_use]
pub struct PrometheusBuilder {
    ns: String,
    dir: PathBuf,
    job: String,
    targets: Vec<String>,
    interval: Duration,
    rule_files: Vec<PathBuf>,
    ready_timeout: Duration,
    /// A whole configuration replacing the generated one.
    text: Option<String>,
}

impl PrometheusBuilder {
    /// A scrape target, `host:port` as seen from inside the namespace.
    pub fn scrape(mut self, target: &str) -> Self {
        self.targets.push(target.to_string());
        self
    }

    /// The scrape job's name (default `detector`, which the shipped alert
    /// rules expect).
    pub fn job(mut self, job: &str) -> Self {
        self.job = job.to_string();
        self
    }

    /// The scrape and rule evaluation interval (default 1 s).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// A rule file to load (`rule_files:`).
    pub fn rule_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.rule_files.push(path.into());
        self
    }

    /// How long it may take to be ready (default 30 s).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// A whole `prometheus.yml` (a shipped example with the lab's
    /// addresses, say) instead of the one the settings above generate,
    /// which are then ignored.
    pub fn config_text(mut self, yaml: impl Into<String>) -> Self {
        self.text = Some(yaml.into());
        self
    }

    /// `prometheus.yml` for these settings (or the text given to
    /// [`config_text`](Self::config_text)).
    pub fn config(&self) -> String {
        if let Some(text) = &self.text {
            return text.clone();
        }
        // JSON strings are YAML strings: paths and names quoted safely.
        let q = |s: &str| serde_json::Value::from(s).to_string();
        // Prometheus durations are whole numbers of a unit.
        let every = format!("{}ms", self.interval.as_millis().max(1));
        let rules: String =
            self.rule_files.iter().map(|p| format!("  - {}\n", q(&p.to_string_lossy()))).collect::<String>();
        let targets = self.targets.iter().map(|t| q(t)).collect::<Vec<_>>().join(", ");
        format!(
            "global:\n  scrape_interval: {every}\n  scrape_timeout: {every}\n  evaluation_interval: {every}\n\
             rule_files:{}\n{rules}\
             scrape_configs:\n  - job_name: {}\n    static_configs:\n      - targets: [{targets}]\n",
            if rules.is_empty() { " []" } else { "" },
            q(&self.job),
        )
    }

    /// Writes the configuration to `<dir>/prometheus.yml` and starts
    /// Prometheus in the namespace, its TSDB in `<dir>/prometheus-data`;
    /// returns once `/-/ready` answers 200. If it exits or is not ready in
    /// time, it is stopped and the error carries its output.
    pub fn start(self) -> Result<Prometheus, PrometheusError> {
        let program = find_program("prometheus").ok_or(PrometheusError::NotInstalled)?;
        let conf = self.dir.join("prometheus.yml");
        std::fs::write(&conf, self.config()).map_err(|source| PrometheusError::Write { path: conf.clone(), source })?;
        let data = self.dir.join("prometheus-data");
        let port = free_port(&self.ns)?;
        let args = [
            format!("--config.file={}", conf.display()),
            format!("--storage.tsdb.path={}", data.display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
        ];
        let child =
            Background::spawn_in(&self.ns, &program, &args, Supervision { die_with_parent: true, cancel: None })?;
        let mut p = Prometheus { child: Some(child), ns: self.ns, port };
        p.wait_ready(self.ready_timeout)?;
        Ok(p)
    }
}

/// A running Prometheus. Dropped, it gets SIGTERM (then SIGKILL) and is
/// reaped.
pub struct Prometheus {
    child: Option<Background>,
    ns: String,
    port: u16,
}

/// One alert of `/api/v1/alerts`.
#[derive(Clone, Debug, Deserialize)]
pub struct Alert {
    pub labels: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: std::collections::BTreeMap<String, String>,
    /// `pending` or `firing`.
    pub state: String,
}

impl Alert {
    pub fn name(&self) -> &str {
        self.labels.get("alertname").map(String::as_str).unwrap_or("")
    }

    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.get(name).map(String::as_str)
    }
}

impl Prometheus {
    /// Prometheus in namespace `ns`, its files in `dir` (a lab's scratch
    /// directory), scraping nothing yet, job `detector`, every second.
    pub fn builder(ns: &str, dir: &Path) -> PrometheusBuilder {
        PrometheusBuilder {
            ns: ns.to_string(),
            dir: dir.to_path_buf(),
            job: "detector".into(),
            targets: Vec::new(),
            interval: Duration::from_secs(1),
            rule_files: Vec::new(),
            ready_timeout: Duration::from_secs(30),
            text: None,
        }
    }

    /// Its API's port, on 127.0.0.1 in its namespace.
    pub fn port(&self) -> u16 {
        self.port
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), PrometheusError> {
        let started = Instant::now();
        loop {
            let exited = match self.child.as_mut() {
                Some(c) => c.try_finish()?,
                None => None,
            };
            if let Some(out) = exited {
                self.child = None;
                return Err(PrometheusError::NotReady {
                    port: self.port,
                    after: started.elapsed(),
                    output: text(&out),
                });
            }
            if http_get(&self.ns, self.port, "/-/ready", None).is_ok_and(|(code, _)| code == 200) {
                return Ok(());
            }
            if started.elapsed() > timeout {
                let output = self.stop().map(|o| text(&o)).unwrap_or_else(|e| e.to_string());
                return Err(PrometheusError::NotReady { port: self.port, after: timeout, output });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// GET an API path (`/api/v1/...`, its query already encoded): the
    /// `data` of a `success` answer, or the error Prometheus gave.
    pub fn api(&self, path: &str) -> Result<serde_json::Value, PrometheusError> {
        let (code, body) = http_get(&self.ns, self.port, path, None)
            .map_err(|source| PrometheusError::Http { path: path.to_string(), source })?;
        let v: serde_json::Value = serde_json::from_str(&body).map_err(|_| PrometheusError::Status {
            path: path.to_string(),
            code,
            body: body.clone(),
        })?;
        if v["status"] != "success" {
            return Err(PrometheusError::Api {
                path: path.to_string(),
                error_type: v["errorType"].as_str().unwrap_or("an error").to_string(),
                error: v["error"].as_str().unwrap_or(&body).to_string(),
            });
        }
        Ok(v["data"].clone())
    }

    /// An instant query, now: its `result` (an array of `{metric, value}`
    /// for a vector, a `[time, value]` pair for a scalar).
    pub fn query(&self, expr: &str) -> Result<serde_json::Value, PrometheusError> {
        let data = self.api(&format!("/api/v1/query?query={}", encode(expr)))?;
        Ok(data["result"].clone())
    }

    /// The values of `label` on the series `selector` matches (what a
    /// Grafana `label_values(selector, label)` variable lists).
    pub fn label_values(&self, selector: &str, label: &str) -> Result<Vec<String>, PrometheusError> {
        let data = self.api(&format!("/api/v1/label/{}/values?match[]={}", encode(label), encode(selector)))?;
        Ok(data.as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_string)).collect())
    }

    /// The alerts pending or firing.
    pub fn alerts(&self) -> Result<Vec<Alert>, PrometheusError> {
        let data = self.api("/api/v1/alerts")?;
        serde_json::from_value(data["alerts"].clone()).map_err(|e| PrometheusError::Status {
            path: "/api/v1/alerts".into(),
            code: 200,
            body: e.to_string(),
        })
    }

    /// The rule groups as `/api/v1/rules` gives them (each rule with its
    /// `health` and `lastError`).
    pub fn rules(&self) -> Result<serde_json::Value, PrometheusError> {
        Ok(self.api("/api/v1/rules")?["groups"].clone())
    }

    /// Stops it (SIGTERM, 10 s to exit); its output.
    pub fn stop(&mut self) -> Result<std::process::Output, PrometheusError> {
        let child = self.child.take().ok_or_else(|| ProcessError::Wait {
            what: "prometheus".into(),
            source: std::io::Error::other("already stopped"),
        })?;
        Ok(child.stop(libc::SIGTERM, Duration::from_secs(10))?)
    }
}

fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn free_port(ns: &str) -> Result<u16, PrometheusError> {
    super::free_port(ns).map_err(|source| PrometheusError::Port { ns: ns.to_string(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_scrapes_the_targets_and_loads_the_rules() {
        let b = Prometheus::builder("ns", Path::new("/tmp/lab"))
            .scrape("127.0.0.1:9477")
            .rule_file("/tmp/lab/rules.yml")
            .interval(Duration::from_millis(500));
        let c = b.config();
        assert!(c.contains("scrape_interval: 500ms"), "{c}");
        assert!(c.contains("evaluation_interval: 500ms"), "{c}");
        assert!(c.contains("rule_files:\n  - \"/tmp/lab/rules.yml\"\n"), "{c}");
        assert!(c.contains("job_name: \"detector\""), "{c}");
        assert!(c.contains("targets: [\"127.0.0.1:9477\"]"), "{c}");
        let none = Prometheus::builder("ns", Path::new("/tmp/lab")).config();
        assert!(none.contains("rule_files: []\n"), "{none}");
        let given = Prometheus::builder("ns", Path::new("/tmp/lab")).scrape("127.0.0.1:1").config_text("global: {}\n");
        assert_eq!(given.config(), "global: {}\n");
    }
}
