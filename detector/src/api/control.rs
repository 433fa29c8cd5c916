//! The control API: rules and the allowlist, over HTTP on a unix socket in
//! the state directory (`<state-dir>/control.sock`). The directory is
//! `0700`, so only its owner (root) reaches the socket and no token is
//! needed; and `detector run --state-dir X` pairs with
//! `detector block add … --state-dir X` with no other setting.
//!
//! - `GET /v1/rules`: everything in force, with counters
//! - `POST /v1/rules` ([`RuleRequest`]): add a drop or rate-limit rule (an
//!   `origin` is refused: what comes through the socket is the operator's)
//! - `POST /v1/allow` ([`AllowRequest`]): add an allowlist entry
//! - `DELETE /v1/rules/{id}`: remove a rule or an operator allowlist entry

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use axum::{
    extract::{Path as UrlPath, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{delete, get, post},
    Json, Router,
};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use thiserror::Error;
use tokio::net::{UnixListener, UnixStream};

use crate::{
    clock::Clock,
    metrics::Metrics,
    mitigate::{
        mitigator::{MitigateError, Mitigator, PeersView, RulesView},
        prefix::Prefix,
        rule::{check_reason, Rule, RuleRequest},
        ruleset::{AllowEntry, Removed, RuleError},
    },
};

pub const SOCKET: &str = "control.sock";

pub type SharedMitigator = Arc<Mutex<Mitigator>>;

#[derive(Debug, Error)]
pub enum ControlError {
    #[error("another detector is already running with the state directory {0} (its control socket answers); give each controller its own --state-dir")]
    InUse(PathBuf),
    #[error("cannot listen on {path}: {source}")]
    Bind { path: PathBuf, source: std::io::Error },
    #[error("no detector is running with the state directory {dir} (nothing listens on {socket}); start one with `detector run --state-dir {dir}`")]
    NotRunning { dir: String, socket: String },
    #[error("cannot reach the detector on {socket}: {reason}")]
    Connect { socket: String, reason: String },
    #[error("{0}")]
    Refused(String),
    #[error("the detector answered {status} with an unreadable body: {reason}")]
    BadAnswer { status: u16, reason: String },
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowRequest {
    pub prefix: String,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AllowAdded {
    pub entry: AllowEntry,
    /// Rules that no longer apply to this prefix.
    pub overridden: Vec<Rule>,
}

#[derive(Clone)]
struct ControlState {
    mitigator: SharedMitigator,
    metrics: Arc<Metrics>,
}

/// Whether a controller answers on the control socket of `state_dir`
/// (a stale socket file a dead one left does not).
pub fn answers(state_dir: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(state_dir.join(SOCKET)).is_ok()
}

/// Binds the socket, refusing if another controller answers on it and
/// replacing a stale one left by a controller that died.
pub async fn bind(state_dir: &Path) -> Result<UnixListener, ControlError> {
    let path = state_dir.join(SOCKET);
    if path.exists() {
        if UnixStream::connect(&path).await.is_ok() {
            return Err(ControlError::InUse(state_dir.to_path_buf()));
        }
        let _ = std::fs::remove_file(&path);
    }
    UnixListener::bind(&path).map_err(|source| ControlError::Bind { path, source })
}

pub fn router(mitigator: SharedMitigator, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/v1/rules", get(list).post(add_rule))
        .route("/v1/allow", post(add_allow))
        .route("/v1/rules/{id}", delete(remove))
        .route("/v1/peers", get(peers).delete(flush_peers))
        .with_state(ControlState { mitigator, metrics })
}

fn status_of(e: &MitigateError) -> StatusCode {
    match e {
        MitigateError::Rule(RuleError::NotFound(_)) => StatusCode::NOT_FOUND,
        MitigateError::Rule(RuleError::Protected { .. }) => StatusCode::FORBIDDEN,
        MitigateError::Rule(RuleError::RulesFull(_))
        | MitigateError::Rule(RuleError::AllowFull(_))
        | MitigateError::Rule(RuleError::IdsUsedUp(_)) => StatusCode::INSUFFICIENT_STORAGE,
        MitigateError::Rule(RuleError::Duplicate(_))
        | MitigateError::Rule(RuleError::AlreadyAllowed { .. })
        | MitigateError::Rule(RuleError::Allowlisted { .. })
        | MitigateError::Rule(RuleError::Plan(_)) => StatusCode::CONFLICT,
        MitigateError::Rule(RuleError::Request(_)) => StatusCode::BAD_REQUEST,
        MitigateError::Kernel { .. } | MitigateError::SynProxy(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn error(code: StatusCode, message: String) -> Response {
    (code, Json(serde_json::json!({ "error": message }))).into_response()
}

/// Runs `f` on the mitigator off the async threads (it writes files and maps).
async fn with_mitigator<T: Send + 'static>(
    s: &ControlState,
    f: impl FnOnce(&mut Mitigator) -> Result<T, MitigateError> + Send + 'static,
) -> Result<T, Response> {
    let m = s.mitigator.clone();
    let out = tokio::task::spawn_blocking(move || f(&mut m.lock().unwrap_or_else(|p| p.into_inner())))
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    out.map_err(|e| {
        let kind = e.kind();
        if kind != "not_found" {
            s.metrics.rule_refused(kind);
        }
        if kind == "full" {
            tracing::warn!("rule refused: {e}");
        } else {
            tracing::info!("rule refused: {e}");
        }
        error(status_of(&e), e.to_string())
    })
}

/// As [`with_mitigator`] for a change of the rules or the allowlist, which
/// is answered once the state directory holds it: a rule the operator was
/// told is in force is still there after a `kill -9` the moment after
/// (whose pins an interface that goes away takes with it).
async fn change_mitigator<T: Send + 'static>(
    s: &ControlState,
    f: impl FnOnce(&mut Mitigator) -> Result<T, MitigateError> + Send + 'static,
) -> Result<T, Response> {
    let (out, files) = with_mitigator(s, move |m| f(m).map(|out| (out, m.files()))).await?;
    let _ = tokio::task::spawn_blocking(move || files.settle_rules()).await;
    Ok(out)
}

async fn list(State(s): State<ControlState>) -> Response {
    match with_mitigator(&s, |m| Ok(m.view(Clock::now().wall_ms))).await {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

async fn add_rule(
    State(s): State<ControlState>,
    body: Result<Json<RuleRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    // Whoever reaches the socket is the operator: a rule that claimed to be
    // a runbook's would be removed when "its" incident resolves, and would
    // hide who added it. Runbooks set their origin in the controller, not
    // through here.
    if req.origin.is_some() {
        s.metrics.rule_refused("invalid");
        return error(
            StatusCode::BAD_REQUEST,
            "`origin` cannot be set through the control socket: rules added here are the operator's".into(),
        );
    }
    match change_mitigator(&s, move |m| m.add_rule(&req, Clock::now())).await {
        Ok(rule) => (StatusCode::CREATED, Json(rule)).into_response(),
        Err(r) => r,
    }
}

async fn add_allow(
    State(s): State<ControlState>,
    body: Result<Json<AllowRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let prefix: Prefix = match req.prefix.parse() {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let reason = req.reason.unwrap_or_default();
    // The same check as a rule's reason: refused, never trimmed.
    if let Err(e) = check_reason(&reason) {
        s.metrics.rule_refused("invalid");
        return error(StatusCode::BAD_REQUEST, e.to_string());
    }
    match change_mitigator(&s, move |m| m.add_allow(prefix, &reason, Clock::now())).await {
        Ok((entry, overridden)) => (StatusCode::CREATED, Json(AllowAdded { entry, overridden })).into_response(),
        Err(r) => r,
    }
}

async fn remove(State(s): State<ControlState>, UrlPath(id): UrlPath<String>) -> Response {
    match change_mitigator(&s, move |m| m.remove(&id, Clock::now())).await {
        Ok(removed) => Json(removed).into_response(),
        Err(r) => r,
    }
}

/// `?limit=N`: peers listed per interface (default 100).
#[derive(Deserialize)]
struct PeersQuery {
    limit: Option<usize>,
}

/// Most peers one listing gives per interface: the map's capacity.
const MAX_PEERS_LISTED: usize = detector_common::known::DEFAULT_MAX_KNOWN as usize;

async fn peers(State(s): State<ControlState>, q: axum::extract::Query<PeersQuery>) -> Response {
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_PEERS_LISTED {
        return error(StatusCode::BAD_REQUEST, format!("limit {limit} is out of range: 1 to {MAX_PEERS_LISTED}"));
    }
    match with_mitigator(&s, move |m| m.peers(limit, Clock::now())).await {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

async fn flush_peers(State(s): State<ControlState>) -> Response {
    match with_mitigator(&s, |m| m.flush_peers()).await {
        Ok(n) => Json(serde_json::json!({ "flushed": n })).into_response(),
        Err(r) => r,
    }
}

/// The CLI's side: one request to the controller paired by `state_dir`.
pub struct Client {
    dir: PathBuf,
}

impl Client {
    pub fn new(state_dir: &Path) -> Client {
        Client { dir: state_dir.to_path_buf() }
    }

    pub async fn list(&self) -> Result<RulesView, ControlError> {
        self.call("GET", "/v1/rules", None).await
    }

    pub async fn add_rule(&self, req: &RuleRequest) -> Result<Rule, ControlError> {
        self.call("POST", "/v1/rules", Some(serde_json::to_vec(req).expect("serializable"))).await
    }

    pub async fn peers(&self, limit: usize) -> Result<Vec<PeersView>, ControlError> {
        self.call("GET", &format!("/v1/peers?limit={limit}"), None).await
    }

    /// Forgets every known-good peer; returns how many there were.
    pub async fn flush_peers(&self) -> Result<usize, ControlError> {
        let v: serde_json::Value = self.call("DELETE", "/v1/peers", None).await?;
        Ok(v["flushed"].as_u64().unwrap_or(0) as usize)
    }

    pub async fn add_allow(&self, req: &AllowRequest) -> Result<AllowAdded, ControlError> {
        self.call("POST", "/v1/allow", Some(serde_json::to_vec(req).expect("serializable"))).await
    }

    pub async fn remove(&self, id: &str) -> Result<Removed, ControlError> {
        // Ids are `r<N>` / `a<N>`; anything else cannot name a rule, and must
        // not reach the URL unescaped.
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(ControlError::Refused(format!("'{id}' is not a rule id (ids look like r12 or a3)")));
        }
        self.call("DELETE", &format!("/v1/rules/{id}"), None).await
    }

    /// One request to the controller; an error status is its `error` line.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ControlError> {
        let socket = self.dir.join(SOCKET);
        let not_running =
            || ControlError::NotRunning { dir: self.dir.display().to_string(), socket: socket.display().to_string() };
        let stream = match UnixStream::connect(&socket).await {
            Ok(s) => s,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
                return Err(not_running())
            }
            Err(e) => {
                return Err(ControlError::Connect { socket: socket.display().to_string(), reason: e.to_string() })
            }
        };
        let connect_err = |e: &dyn std::fmt::Display| ControlError::Connect {
            socket: socket.display().to_string(),
            reason: e.to_string(),
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| connect_err(&e))?;
        tokio::spawn(conn);
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "detector")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| connect_err(&e))?;
        let resp = sender.send_request(req).await.map_err(|e| connect_err(&e))?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.map_err(|e| connect_err(&e))?.to_bytes();
        if !status.is_success() {
            let msg = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_string());
            return Err(ControlError::Refused(msg));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| ControlError::BadAnswer { status: status.as_u16(), reason: e.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;

    use super::*;
    use crate::{
        api::serve,
        mitigate::{
            rule::{Origin, RequestError, MAX_REASON},
            ruleset::Limits,
        },
        statedir::FileWriter,
    };

    /// A control socket in a scratch directory, over a mitigator with no
    /// interface (rules are kept, nothing reaches a kernel).
    async fn control(name: &str) -> (PathBuf, serve::Server, SharedMitigator) {
        let dir = std::env::temp_dir().join(format!("detector-control-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let files = FileWriter::spawn(&dir, None).unwrap();
        let mitigator: SharedMitigator =
            Arc::new(Mutex::new(Mitigator::new(Limits { max_rules: 16, max_allow: 16 }, &dir, files)));
        let metrics = Arc::new(Metrics::register(&mut Registry::default()));
        let listener = bind(&dir).await.unwrap();
        let server =
            serve::spawn(listener, router(mitigator.clone(), metrics.clone()), serve::Limits::control(), metrics);
        (dir, server, mitigator)
    }

    fn drop_rule(prefix: &str) -> RuleRequest {
        RuleRequest { action: "drop".into(), prefix: prefix.into(), ..Default::default() }
    }

    #[tokio::test]
    async fn the_socket_refuses_a_caller_supplied_origin() {
        let (dir, server, mitigator) = control("origin").await;
        let client = Client::new(&dir);
        let mut req = drop_rule("203.0.113.0/24");
        req.origin = Some(Origin {
            by: "runbook".into(),
            runbook: Some("udp-flood".into()),
            incident: Some("n1-eth0-x".into()),
            step: Some(0),
        });
        let e = client.add_rule(&req).await.unwrap_err().to_string();
        assert_eq!(e, "`origin` cannot be set through the control socket: rules added here are the operator's");
        assert!(mitigator.lock().unwrap().rules().is_empty());
        // Without one, the rule is the operator's.
        let rule = client.add_rule(&drop_rule("203.0.113.0/24")).await.unwrap();
        assert!(rule.origin.is_operator());
        server.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn an_allowlist_reason_is_checked_exactly_like_a_rules() {
        let (dir, server, mitigator) = control("reason").await;
        let client = Client::new(&dir);
        let long = "x".repeat(MAX_REASON + 1);
        for bad in ["ticket\n4711", "bell\u{7}", long.as_str()] {
            let mut rule = drop_rule("203.0.113.0/24");
            rule.reason = Some(bad.into());
            let rule_err = client.add_rule(&rule).await.unwrap_err().to_string();
            let allow = AllowRequest { prefix: "192.0.2.10".into(), reason: Some(bad.into()) };
            let allow_err = client.add_allow(&allow).await.unwrap_err().to_string();
            assert_eq!(allow_err, rule_err);
            assert_eq!(allow_err, RequestError::Reason.to_string());
        }
        assert!(mitigator.lock().unwrap().allow().is_empty(), "a bad reason was trimmed and kept");
        // The longest allowed reason is kept whole.
        let ok = "y".repeat(MAX_REASON);
        let added =
            client.add_allow(&AllowRequest { prefix: "192.0.2.10".into(), reason: Some(ok.clone()) }).await.unwrap();
        assert_eq!(added.entry.reason, ok);
        server.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_change_is_answered_once_the_state_directory_holds_it() {
        let (dir, server, _mitigator) = control("saved").await;
        let client = Client::new(&dir);
        let saved = || std::fs::read_to_string(dir.join(crate::statedir::RULES_FILE)).unwrap_or_default();
        let rule = client.add_rule(&drop_rule("203.0.113.0/24")).await.unwrap();
        // No wait: the answer came after the write (a kill -9 now loses
        // nothing the operator was told).
        assert!(saved().contains("203.0.113.0/24"), "{}", saved());
        client.add_allow(&AllowRequest { prefix: "192.0.2.10".into(), reason: None }).await.unwrap();
        assert!(saved().contains("192.0.2.10"), "{}", saved());
        client.remove(&rule.id).await.unwrap();
        assert!(!saved().contains("203.0.113.0/24"), "{}", saved());
        server.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
