//! The HTTP listener: `/metrics` for Prometheus, `/api/top` for the top
//! talkers, `/api/incidents` for incident history (and
//! `/api/incidents/{id}/pcap` for an incident's packet capture), `/api/rules` for the
//! mitigation rules in force (read-only), `/api/runbooks/executions` for
//! the runbook executions in the history (`?incident=ID&runbook=NAME&limit=N`),
//! `/healthz`. Loopback by default; anywhere else it requires a bearer
//! token on every request.
//!
//! Listings are pages: `limit` is 1 to 1000 (default 100; 0 is refused),
//! and `before=<next>` continues where the previous page's `next` points,
//! so a client walks the whole history in pages of bounded size. Rows that
//! do not parse are left out, listed in `skipped`, and logged once.

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
    Extension, Json, Router,
};
use prometheus_client::registry::Registry;
use thiserror::Error;
use tokio::{net::TcpListener, sync::Semaphore};

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
    /// When the poll loop last polled, for `/healthz`; `None`: not checked.
    pub health: Option<PollHealth>,
}

/// What `/healthz` checks: the poll loop is alive (it runs on a thread of
/// its own, so the listener answering says nothing about it).
#[derive(Clone, Debug)]
pub struct PollHealth {
    /// Wall-clock milliseconds of the last poll (the start, before any).
    pub last_poll_ms: Arc<std::sync::atomic::AtomicU64>,
    /// A poll loop silent this long is stalled.
    pub stale_after: std::time::Duration,
}

impl PollHealth {
    /// `None` when healthy at `now_ms`; otherwise how long it has been
    /// silent.
    pub fn stalled(&self, now_ms: u64) -> Option<std::time::Duration> {
        let last = self.last_poll_ms.load(std::sync::atomic::Ordering::Relaxed);
        let silent = std::time::Duration::from_millis(now_ms.saturating_sub(last));
        (silent > self.stale_after).then_some(silent)
    }
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
        .route("/api/incidents/{id}/pcap", get(pcap_handler))
        .route("/api/rules", get(rules_handler))
        .route("/api/runbooks/executions", get(executions_handler))
        .route("/healthz", get(healthz_handler))
        .layer(Extension(Arc::new(Semaphore::new(HISTORY_READERS))))
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state)
}

/// `ok`, or 503 naming how long the poll loop has been silent.
async fn healthz_handler(State(state): State<Arc<ApiState>>) -> Response {
    match state.health.as_ref().and_then(|h| h.stalled(crate::clock::now_ms())) {
        None => "ok\n".into_response(),
        Some(silent) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the poll loop has not polled for {}\n", humantime::format_duration(silent)),
        )
            .into_response(),
    }
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
    /// At most this many, newest first (1 to 1000, default 100).
    limit: Option<usize>,
    /// Start after this row: the `next` of the previous page.
    before: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecutionsQuery {
    /// Only executions for this incident.
    incident: Option<String>,
    /// Only executions of this runbook.
    runbook: Option<String>,
    /// At most this many, newest first (1 to 1000, default 100).
    limit: Option<usize>,
    /// Start after this row: the `next` of the previous page.
    before: Option<String>,
}

/// The body of a listing: one page, the cursor to the next (`null` on the
/// last), and the rows of this page left out because they do not parse. A
/// struct, so each item keeps its fields' order.
#[derive(serde::Serialize)]
struct Listing<T> {
    #[serde(flatten)]
    items: T,
    next: Option<history::Cursor>,
    skipped: Vec<history::Skipped>,
}

#[derive(serde::Serialize)]
struct Incidents {
    incidents: Vec<Incident>,
}

#[derive(serde::Serialize)]
struct Executions {
    executions: Vec<crate::runbook::record::Execution>,
}

fn json_error(code: StatusCode, message: String) -> Response {
    (code, Json(serde_json::json!({ "error": message }))).into_response()
}

/// How many history reads run at once. Each holds a read-only connection
/// (up to three descriptors) and a page in memory on a blocking thread; the
/// rest wait their turn, within the request time limit.
const HISTORY_READERS: usize = 2;

/// The page size asked for, checked: every listing is bounded.
fn page_limit(limit: Option<usize>) -> Result<usize, String> {
    match limit {
        None => Ok(history::DEFAULT_PAGE),
        Some(n) if (1..=history::MAX_PAGE).contains(&n) => Ok(n),
        Some(n) => Err(format!(
            "limit {n} is out of range: 1 to {} (default {}); walk further with `before`, the `next` of each page",
            history::MAX_PAGE,
            history::DEFAULT_PAGE
        )),
    }
}

/// The page size and where to start, checked (a 400 names what is wrong).
fn page(limit: Option<usize>, before: Option<String>) -> Result<(usize, Option<history::Cursor>), String> {
    let before = before.filter(|b| !b.is_empty()).map(|b| b.parse::<history::Cursor>()).transpose()?;
    Ok((page_limit(limit)?, before))
}

/// A JSON response, encoded where it is called: on the blocking thread of
/// a history read, so a page of a thousand incidents never holds up an
/// async worker (and with it `/metrics`, `/healthz` or the control socket).
fn to_json(value: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Runs a read on the history off the async threads, a few at a time.
async fn read_store<T: Send + 'static>(
    reads: &Semaphore,
    dir: PathBuf,
    f: impl FnOnce(&Store) -> Result<T, history::StoreError> + Send + 'static,
) -> Result<T, Response> {
    let _turn = reads.acquire().await.map_err(|e| json_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    tokio::task::spawn_blocking(move || Store::open_read_only(&dir).and_then(|s| f(&s)))
        .await
        .map_err(|e| json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| {
            let code = match e {
                history::StoreError::Missing(_) => StatusCode::NOT_FOUND,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            json_error(code, e.to_string())
        })
}

async fn incidents_handler(
    State(state): State<Arc<ApiState>>,
    Extension(reads): Extension<Arc<Semaphore>>,
    Query(q): Query<IncidentsQuery>,
) -> Response {
    let query = match page(q.limit, q.before) {
        Ok((limit, before)) => history::Query { open_only: q.active, limit, before },
        Err(e) => return json_error(StatusCode::BAD_REQUEST, e),
    };
    let listing = read_store(&reads, state.state_dir.clone(), move |s| {
        let page = s.incident_page(&query)?;
        history::report_skipped(s.path(), &page.skipped);
        Ok(to_json(&Listing { items: Incidents { incidents: page.items }, next: page.next, skipped: page.skipped }))
    });
    listing.await.unwrap_or_else(|r| r)
}

async fn executions_handler(
    State(state): State<Arc<ApiState>>,
    Extension(reads): Extension<Arc<Semaphore>>,
    Query(q): Query<ExecutionsQuery>,
) -> Response {
    // An empty value (`?incident=`) filters nothing, as if absent.
    let given = |v: Option<String>| v.filter(|v| !v.is_empty());
    let query = match page(q.limit, q.before) {
        Ok((limit, before)) => {
            history::ExecutionQuery { incident: given(q.incident), runbook: given(q.runbook), limit, before }
        }
        Err(e) => return json_error(StatusCode::BAD_REQUEST, e),
    };
    let listing = read_store(&reads, state.state_dir.clone(), move |s| {
        let page = s.execution_page(&query)?;
        history::report_skipped(s.path(), &page.skipped);
        Ok(to_json(&Listing { items: Executions { executions: page.items }, next: page.next, skipped: page.skipped }))
    });
    listing.await.unwrap_or_else(|r| r)
}

async fn incident_handler(
    State(state): State<Arc<ApiState>>,
    Extension(reads): Extension<Arc<Semaphore>>,
    Path(id): Path<String>,
) -> Response {
    let wanted = id.clone();
    match read_store(&reads, state.state_dir.clone(), move |s| Ok(s.incident(&wanted)?.map(|i| to_json(&i)))).await {
        Ok(Some(body)) => body,
        Ok(None) => json_error(StatusCode::NOT_FOUND, format!("no incident with id '{id}'")),
        Err(r) => r,
    }
}

/// The incident's packet capture (pcapng), whole blocks only: a capture
/// still being written is served as far as it goes.
async fn pcap_handler(
    State(state): State<Arc<ApiState>>,
    Extension(reads): Extension<Arc<Semaphore>>,
    Path(id): Path<String>,
) -> Response {
    use crate::capture::store::{self, CaptureError};
    let _turn = match reads.acquire().await {
        Ok(t) => t,
        Err(e) => return json_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let (dir, wanted) = (state.state_dir.clone(), id.clone());
    match tokio::task::spawn_blocking(move || store::read(&dir, &wanted)).await {
        Ok(Ok(bytes)) => (
            [
                (header::CONTENT_TYPE, "application/x-pcapng".to_string()),
                (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{id}.pcapng\"")),
            ],
            bytes,
        )
            .into_response(),
        Ok(Err(e @ CaptureError::BadId(_))) => json_error(StatusCode::BAD_REQUEST, e.to_string()),
        Ok(Err(e @ CaptureError::NotFound(_))) => json_error(StatusCode::NOT_FOUND, e.to_string()),
        Ok(Err(e)) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
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
        let given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(bearer_token);
        if !given.is_some_and(|g| token_matches(g.as_bytes(), expected.as_bytes())) {
            return (StatusCode::UNAUTHORIZED, "a valid bearer token is required\n").into_response();
        }
    }
    next.run(req).await
}

/// The token of an `Authorization: Bearer <token>` value. The scheme is
/// case-insensitive (RFC 7235 section 2.1: `bearer`, `BEARER`) and any
/// spaces or tabs may follow it.
fn bearer_token(value: &str) -> Option<&str> {
    let value = value.trim_matches([' ', '\t']);
    let (scheme, token) = value.split_once([' ', '\t'])?;
    let token = token.trim_start_matches([' ', '\t']);
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Compares the SHA-256 digests of both, every byte, whatever their
/// lengths: how long it takes tells nothing about the expected token, not
/// even its length.
fn token_matches(given: &[u8], expected: &[u8]) -> bool {
    use sha2::{Digest as _, Sha256};
    let (a, b) = (Sha256::digest(given), Sha256::digest(expected));
    let diff = a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthz_says_when_the_poll_loop_is_silent() {
        let h = PollHealth {
            last_poll_ms: Arc::new(std::sync::atomic::AtomicU64::new(10_000)),
            stale_after: std::time::Duration::from_secs(2),
        };
        assert_eq!(h.stalled(10_000), None);
        assert_eq!(h.stalled(12_000), None);
        assert_eq!(h.stalled(12_001), Some(std::time::Duration::from_millis(2_001)));
        // A clock that went back is not a stall.
        assert_eq!(h.stalled(5_000), None);
    }

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
        assert!(token_matches(b"abc", b"abc"));
        assert!(!token_matches(b"abc", b"abd"));
        assert!(!token_matches(b"abc", b"abcd"));
        assert!(!token_matches(b"", b"abc"));
    }

    /// One request over a fresh connection: status and body.
    async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
        get_with(addr, path, &token.map(|t| format!("Authorization: Bearer {t}")).unwrap_or_default()).await
    }

    /// As [`get`], with this header line (if not empty).
    async fn get_with(addr: SocketAddr, path: &str, header: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let auth = if header.is_empty() { String::new() } else { format!("{header}\r\n") };
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
            health: None,
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(crate::metrics::Metrics::register(&mut Registry::default()));
        let server = super::super::serve::spawn(listener, router(state), super::super::serve::Limits::http(), metrics);
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
        let (_, body) = get(addr, "/api/runbooks/executions?incident=&limit=1", token).await;
        assert_eq!(ids(&body), vec!["inc-b/block/3000"]);
        let (code, body) = get(addr, "/api/runbooks/executions?limit=0", token).await;
        assert_eq!(code, 400, "{body}");
        assert!(body.contains("limit 0 is out of range: 1 to 1000"), "{body}");
        let (code, _) = get(addr, "/api/runbooks/executions?bogus=1", token).await;
        assert_eq!(code, 400);
        let (code, _) = get(addr, "/api/runbooks/executions?limit=many", token).await;
        assert_eq!(code, 400);

        server.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for v in
            ["Bearer s3cret", "bearer s3cret", "BEARER s3cret", "Bearer   s3cret", "bEaReR\ts3cret", " Bearer s3cret "]
        {
            assert_eq!(bearer_token(v), Some("s3cret"), "{v:?}");
        }
        for v in ["Basic s3cret", "Bearer", "Bearer ", "Bearers3cret", "s3cret", ""] {
            assert_eq!(bearer_token(v), None, "{v:?}");
        }
    }

    #[tokio::test]
    async fn incidents_are_served_in_bounded_pages_and_bad_rows_are_named() {
        use crate::{
            detect::{family::Family, incident::Status, severity::Severity},
            history::fixtures::incident,
        };
        let dir = std::env::temp_dir().join(format!("detector-http-paging-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let n = 2_501u64;
        {
            let mut s = Store::open(&dir).unwrap();
            for i in 0..n {
                let mut inc = incident(&format!("inc-{i:05}"), 10_000 + i / 3);
                inc.families = vec![Family::UdpFlood];
                inc.severity = Severity::Low;
                if i % 2 == 0 {
                    inc.status = Status::Resolved;
                }
                s.snapshot(&inc).unwrap();
            }
        }
        rusqlite::Connection::open(dir.join(history::DB_FILE))
            .unwrap()
            .execute("UPDATE incidents SET data = 'not json' WHERE id = 'inc-02499'", [])
            .unwrap();
        let state = Arc::new(ApiState {
            registry: Registry::default(),
            top: Arc::new(RwLock::new(TopView::default())),
            token: Some("s3cret".into()),
            state_dir: dir.clone(),
            mitigator: None,
            health: None,
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(crate::metrics::Metrics::register(&mut Registry::default()));
        let server = super::super::serve::spawn(listener, router(state), super::super::serve::Limits::http(), metrics);
        let token = Some("s3cret");
        let json = |body: &str| serde_json::from_str::<serde_json::Value>(body).unwrap();

        // No limit: a page of 100, and where to go on.
        let (code, body) = get(addr, "/api/incidents", token).await;
        assert_eq!(code, 200);
        let v = json(&body);
        assert_eq!(v["incidents"].as_array().unwrap().len(), 99, "the bad row is left out");
        assert_eq!(v["skipped"][0]["id"], "inc-02499");
        assert!(v["skipped"][0]["reason"].as_str().unwrap().contains("does not parse"), "{body}");
        assert_eq!(v["next"], "10800,inc-02401");
        // limit=0 (once: everything) and too large a page are refused.
        for bad in ["limit=0", "limit=1001", "before=yesterday"] {
            let (code, body) = get(addr, &format!("/api/incidents?{bad}"), token).await;
            assert_eq!(code, 400, "{bad}: {body}");
            assert!(json(&body)["error"].as_str().is_some(), "{body}");
        }
        // Walking with `before` visits every incident once, newest first;
        // no page is larger than asked.
        let mut seen: Vec<String> = Vec::new();
        let mut path = "/api/incidents?limit=1000".to_string();
        let mut skipped = 0;
        loop {
            let (code, body) = get(addr, &path, token).await;
            assert_eq!(code, 200, "{body}");
            assert!(body.len() < 2_000_000, "a page of {} bytes", body.len());
            let v = json(&body);
            assert!(v["incidents"].as_array().unwrap().len() <= 1000);
            seen.extend(v["incidents"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap().to_string()));
            skipped += v["skipped"].as_array().unwrap().len();
            match v["next"].as_str() {
                Some(next) => path = format!("/api/incidents?limit=1000&before={next}"),
                None => break,
            }
        }
        assert_eq!(skipped, 1);
        let expected: Vec<String> = (0..n).rev().filter(|&i| i != 2499).map(|i| format!("inc-{i:05}")).collect();
        assert_eq!(seen, expected);
        // Open ones only, the same way.
        let (_, body) = get(addr, "/api/incidents?active=true&limit=1000", token).await;
        let v = json(&body);
        assert!(v["incidents"].as_array().unwrap().iter().all(|i| i["status"] == "active"));
        // 1000 rows read, one of them the bad one (inc-02499 is open).
        assert_eq!(v["incidents"].as_array().unwrap().len(), 999);
        assert_eq!(v["skipped"].as_array().unwrap().len(), 1);
        assert!(v["next"].is_string());
        // Any case of the scheme is accepted.
        let (code, _) = get_with(addr, "/api/incidents?limit=1", "Authorization: bearer s3cret").await;
        assert_eq!(code, 200);
        let (code, _) = get_with(addr, "/api/incidents?limit=1", "Authorization: BEARER \t s3cret").await;
        assert_eq!(code, 200);
        let (code, _) = get_with(addr, "/api/incidents?limit=1", "Authorization: Bearer s3cre").await;
        assert_eq!(code, 401);
        // One incident that does not parse is an error naming it, not a 404.
        let (code, body) = get(addr, "/api/incidents/inc-02499", token).await;
        assert_eq!(code, 500);
        assert!(body.contains("incident inc-02499: its data does not parse"), "{body}");
        let (code, _) = get(addr, "/api/incidents/inc-02498", token).await;
        assert_eq!(code, 200);

        server.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
