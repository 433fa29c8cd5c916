//! The HTTP listener: `/metrics` for Prometheus, `/api/top` for the top
//! talkers, `/api/incidents` for incident history, `/api/rules` for the
//! mitigation rules in force (read-only), `/api/runbooks/executions` for
//! the runbook executions in the history (`?incident=ID&runbook=NAME&limit=N`),
//! `/healthz`. Loopback by default; anywhere else it requires a bearer
//! token on every request.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, RwLock},
};

use axum::{
    extract::{Path, Query, Request, State},
    http::{header, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use prometheus_client::registry::Registry;
use thiserror::Error;
use tokio::net::TcpListener;

use crate::{
    detect::incident::Incident,
    history::{self, Store},
    metrics,
    view::TopView,
};

#[derive(Debug, Error)]
pub enum HttpError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("the HTTP listener {addr} is not on loopback, so it needs a bearer token: set DETECTOR_API_TOKEN or pass --api-token-file")]
    TokenRequired { addr: SocketAddr },
}

/// What the handlers read.
pub struct ApiState {
    pub registry: Registry,
    /// The top-talker view, replaced by the poll loop after every poll.
    pub top: Arc<RwLock<TopView>>,
    pub token: Option<String>,
    /// Where the incident history is; handlers open it read-only.
    pub state_dir: PathBuf,
    /// The rules in force, for `GET /api/rules` (changes go through the
    /// control socket only).
    pub mitigator: Option<super::control::SharedMitigator>,
}

/// Refuses a non-loopback address without a token.
pub fn check_exposure(addr: SocketAddr, token: Option<&str>) -> Result<(), HttpError> {
    if addr.ip().is_loopback() || token.is_some_and(|t| !t.is_empty()) {
        Ok(())
    } else {
        Err(HttpError::TokenRequired { addr })
    }
}

/// Binds the listener (so a taken port fails at start, clearly).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, HttpError> {
    TcpListener::bind(addr).await.map_err(|source| HttpError::Bind { addr, source })
}

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/api/top", get(top_handler))
        .route("/api/incidents", get(incidents_handler))
        .route("/api/incidents/{id}", get(incident_handler))
        .route("/api/rules", get(rules_handler))
        .route("/api/runbooks/executions", get(executions_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state)
}

async fn metrics_handler(State(state): State<Arc<ApiState>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], metrics::encode(&state.registry))
        .into_response()
}

async fn top_handler(State(state): State<Arc<ApiState>>) -> Json<TopView> {
    Json(state.top.read().unwrap_or_else(|p| p.into_inner()).clone())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct IncidentsQuery {
    /// Only incidents not yet resolved.
    #[serde(default)]
    active: bool,
    /// At most this many, newest first (default 100).
    limit: Option<usize>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecutionsQuery {
    /// Only executions for this incident.
    incident: Option<String>,
    /// Only executions of this runbook.
    runbook: Option<String>,
    /// At most this many, newest first (default 100, at most 10000).
    limit: Option<usize>,
}

/// The body of `GET /api/runbooks/executions` (a struct, so each execution
/// keeps its fields' order).
#[derive(serde::Serialize)]
struct Executions {
    executions: Vec<crate::runbook::record::Execution>,
}

fn json_error(code: StatusCode, message: String) -> Response {
    (code, Json(serde_json::json!({ "error": message }))).into_response()
}

/// Runs a read on the history off the async threads.
async fn read_store<T: Send + 'static>(
    dir: PathBuf,
    f: impl FnOnce(&Store) -> Result<T, history::StoreError> + Send + 'static,
) -> Result<T, Response> {
    tokio::task::spawn_blocking(move || Store::open_read_only(&dir).and_then(|s| f(&s)))
        .await
        .map_err(|e| json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

async fn incidents_handler(State(state): State<Arc<ApiState>>, Query(q): Query<IncidentsQuery>) -> Response {
    let query = history::Query { open_only: q.active, limit: q.limit.unwrap_or(100).min(10_000) };
    match read_store(state.state_dir.clone(), move |s| s.incidents(query)).await {
        Ok(list) => Json(serde_json::json!({ "incidents": list })).into_response(),
        Err(r) => r,
    }
}

async fn executions_handler(State(state): State<Arc<ApiState>>, Query(q): Query<ExecutionsQuery>) -> Response {
    let limit = q.limit.unwrap_or(100).min(10_000);
    if limit == 0 {
        // The store reads 0 as "no limit"; here it means none.
        return Json(Executions { executions: Vec::new() }).into_response();
    }
    // An empty value (`?incident=`) filters nothing, as if absent.
    let given = |v: Option<String>| v.filter(|v| !v.is_empty());
    let query = history::ExecutionQuery { incident: given(q.incident), runbook: given(q.runbook), limit };
    match read_store(state.state_dir.clone(), move |s| s.executions(query)).await {
        Ok(executions) => Json(Executions { executions }).into_response(),
        Err(r) => r,
    }
}

async fn incident_handler(State(state): State<Arc<ApiState>>, Path(id): Path<String>) -> Response {
    let wanted = id.clone();
    match read_store(state.state_dir.clone(), move |s| s.incident(&wanted)).await {
        Ok(Some(inc)) => Json::<Incident>(inc).into_response(),
        Ok(None) => json_error(StatusCode::NOT_FOUND, format!("no incident with id '{id}'")),
        Err(r) => r,
    }
}

async fn rules_handler(State(state): State<Arc<ApiState>>) -> Response {
    let Some(m) = state.mitigator.clone() else {
        return json_error(StatusCode::NOT_FOUND, "no rules here".into());
    };
    let now = crate::clock::Clock::now().wall_ms;
    match tokio::task::spawn_blocking(move || m.lock().unwrap_or_else(|p| p.into_inner()).view(now)).await {
        Ok(view) => Json(view).into_response(),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn require_token(State(state): State<Arc<ApiState>>, req: Request, next: Next) -> Response {
    if let Some(expected) = state.token.as_deref() {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), expected.as_bytes())) {
            return (StatusCode::UNAUTHORIZED, "a valid bearer token is required\n").into_response();
        }
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposure() {
        let lo: SocketAddr = "127.0.0.1:9477".parse().unwrap();
        let lo6: SocketAddr = "[::1]:9477".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:9477".parse().unwrap();
        assert!(check_exposure(lo, None).is_ok());
        assert!(check_exposure(lo6, None).is_ok());
        assert!(check_exposure(any, None).is_err());
        assert!(check_exposure(any, Some("")).is_err());
        assert!(check_exposure(any, Some("s3cret")).is_ok());
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }

    /// One request over a fresh connection: status and body.
    async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
        use std::io::{Read, Write};
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{auth}\r\n");
        let resp = tokio::task::spawn_blocking(move || {
            let mut conn = std::net::TcpStream::connect(addr).unwrap();
            conn.write_all(req.as_bytes()).unwrap();
            let mut resp = String::new();
            conn.read_to_string(&mut resp).unwrap();
            resp
        })
        .await
        .unwrap();
        let status = resp[9..12].parse().unwrap();
        let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        (status, body)
    }

    #[tokio::test]
    async fn runbook_executions_are_served_filtered_and_behind_the_token() {
        use crate::runbook::record::{Execution, Outcome, StepRecord};
        let dir = std::env::temp_dir().join(format!("detector-http-executions-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        {
            let mut s = Store::open(&dir).unwrap();
            for (inc, rb, at) in [("inc-a", "block", 1_000u64), ("inc-a", "notify", 2_000), ("inc-b", "block", 3_000)] {
                let steps = vec![StepRecord {
                    index: 0,
                    kind: "note".into(),
                    started_at: at,
                    ended_at: at + 1,
                    outcome: Outcome::Ok,
                    detail: "noted".into(),
                    error: None,
                }];
                s.record_execution(&Execution {
                    id: format!("{inc}/{rb}/{at}"),
                    runbook: rb.into(),
                    file_hash: "00".repeat(32),
                    incident_id: inc.into(),
                    node: "n1".into(),
                    trigger: "opened".into(),
                    dry_run: false,
                    started_at: at,
                    ended_at: at + 2,
                    outcome: Outcome::Ok,
                    steps,
                })
                .unwrap();
            }
        }
        let state = Arc::new(ApiState {
            registry: Registry::default(),
            top: Arc::new(RwLock::new(TopView::default())),
            token: Some("s3cret".into()),
            state_dir: dir.clone(),
            mitigator: None,
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, router(state)).await });
        let ids = |body: &str| -> Vec<String> {
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            v["executions"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_string()).collect()
        };
        let token = Some("s3cret");

        let (code, _) = get(addr, "/api/runbooks/executions", None).await;
        assert_eq!(code, 401);
        let (code, body) = get(addr, "/api/runbooks/executions", token).await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(ids(&body), vec!["inc-b/block/3000", "inc-a/notify/2000", "inc-a/block/1000"]);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["executions"][0]["steps"][0]["kind"], "note");
        assert_eq!(v["executions"][0]["outcome"], "ok");
        let (_, body) = get(addr, "/api/runbooks/executions?incident=inc-a", token).await;
        assert_eq!(ids(&body), vec!["inc-a/notify/2000", "inc-a/block/1000"]);
        let (_, body) = get(addr, "/api/runbooks/executions?runbook=block&limit=1", token).await;
        assert_eq!(ids(&body), vec!["inc-b/block/3000"]);
        let (_, body) = get(addr, "/api/runbooks/executions?incident=inc-a&runbook=block", token).await;
        assert_eq!(ids(&body), vec!["inc-a/block/1000"]);
        let (_, body) = get(addr, "/api/runbooks/executions?incident=&limit=0", token).await;
        assert!(ids(&body).is_empty());
        let (code, _) = get(addr, "/api/runbooks/executions?bogus=1", token).await;
        assert_eq!(code, 400);
        let (code, _) = get(addr, "/api/runbooks/executions?limit=many", token).await;
        assert_eq!(code, 400);

        server.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
