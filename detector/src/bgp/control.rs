//! The BGP part of the control API (on the control socket, as the rules
//! are; see [`crate::api::control`]):
//!
//! - `GET /v1/bgp`: the daemon, the sessions, the announcements in force
//!   with their origin and expiry, the last changes ([`StatusView`]);
//! - `POST /v1/bgp` ([`AnnounceRequest`]): announce, origin `cli`; the
//!   answer ([`Announced`]) says whether it was only recorded (`bgp.dry_run`);
//! - `POST /v1/bgp/withdraw` (`{"target": "<key or address>"}`): withdraw
//!   the announcement with that key, or every one for that address.

use std::sync::Arc;

use axum::{
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde::{Deserialize, Serialize};

use super::{
    announce::Announcement,
    plan::Entry,
    service::{check_ttl, cli_origin, AnnounceRequest, Bgp, EntryView, StatusView},
};
use crate::{
    api::control::{Client, ControlError},
    clock::now_ms,
    mitigate::prefix::Prefix,
};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WithdrawRequest {
    pub target: String,
}

/// The answer to `POST /v1/bgp`: the announcement in force, and whether it
/// is only recorded (`bgp.dry_run`: nothing is sent).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Announced {
    #[serde(flatten)]
    pub entry: EntryView,
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Withdrawn {
    pub withdrawn: Vec<EntryView>,
}

/// The routes; without a `bgp:` section each says so.
pub fn router(bgp: Option<Arc<Bgp>>) -> Router {
    Router::new().route("/v1/bgp", get(status).post(announce)).route("/v1/bgp/withdraw", post(withdraw)).with_state(bgp)
}

fn error(code: StatusCode, message: String) -> Response {
    (code, Json(serde_json::json!({ "error": message }))).into_response()
}

fn off() -> Response {
    error(StatusCode::NOT_FOUND, "BGP is off: the configuration has no bgp: section".into())
}

async fn status(State(bgp): State<Option<Arc<Bgp>>>) -> Response {
    match bgp {
        Some(b) => Json(b.status()).into_response(),
        None => off(),
    }
}

async fn announce(State(bgp): State<Option<Arc<Bgp>>>, body: axum::body::Bytes) -> Response {
    let Some(bgp) = bgp else { return off() };
    let req: AnnounceRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("not an announcement: {e}")),
    };
    let ttl = match check_ttl(std::time::Duration::from_millis(req.ttl_ms)) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let announcement = match req.announcement {
        Announcement::Blackhole { prefix, communities } if communities.is_empty() => {
            Announcement::blackhole(prefix, bgp.config().communities.for_blackhole())
        }
        a => a,
    };
    let now = now_ms();
    let entry = Entry {
        announcement,
        origin: cli_origin(),
        created_ms: now,
        expires_ms: Some(now + ttl.as_millis() as u64),
        hold_until_ms: None,
    };
    match bgp.admit(vec![entry.clone()]).pop() {
        Some(Ok(_)) => {
            let entry = Entry { announcement: entry.announcement.clone().normalized(), ..entry };
            Json(Announced { entry: EntryView::of(&entry), dry_run: bgp.dry_run() }).into_response()
        }
        Some(Err(e)) => error(StatusCode::FORBIDDEN, e.to_string()),
        None => error(StatusCode::INTERNAL_SERVER_ERROR, "nothing admitted".into()),
    }
}

async fn withdraw(State(bgp): State<Option<Arc<Bgp>>>, Json(req): Json<WithdrawRequest>) -> Response {
    let Some(bgp) = bgp else { return off() };
    let target = req.target.trim().to_string();
    let addr: Option<Prefix> = target.parse().ok();
    let gone = bgp.withdraw_where(|e| e.key() == target || addr.is_some_and(|p| e.announcement.dst().overlaps(&p)));
    if gone.is_empty() {
        return error(StatusCode::NOT_FOUND, format!("no announcement in force has key or address '{target}'"));
    }
    Json(Withdrawn { withdrawn: gone.iter().map(EntryView::of).collect() }).into_response()
}

/// The CLI's side.
impl Client {
    pub async fn bgp_status(&self) -> Result<StatusView, ControlError> {
        self.call("GET", "/v1/bgp", None).await
    }

    pub async fn bgp_announce(&self, req: &AnnounceRequest) -> Result<Announced, ControlError> {
        self.call("POST", "/v1/bgp", Some(serde_json::to_vec(req).expect("serializable"))).await
    }

    pub async fn bgp_withdraw(&self, target: &str) -> Result<Withdrawn, ControlError> {
        let req = WithdrawRequest { target: target.to_string() };
        self.call("POST", "/v1/bgp/withdraw", Some(serde_json::to_vec(&req).expect("serializable"))).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{bgp::announce::BLACKHOLE, mitigate::prefix::Prefix};

    #[test]
    fn an_announcement_answer_says_whether_it_was_sent() {
        let prefix: Prefix = "198.51.100.10/32".parse().unwrap();
        let entry = Entry {
            announcement: Announcement::blackhole(prefix, [BLACKHOLE]),
            origin: cli_origin(),
            created_ms: 1_000,
            expires_ms: Some(61_000),
            hold_until_ms: None,
        };
        let a = Announced { entry: EntryView::of(&entry), dry_run: true };
        let v = serde_json::to_value(&a).unwrap();
        // The entry's fields stay at the top, as before the flag.
        assert_eq!(v["key"], "blackhole 198.51.100.10/32", "{v}");
        assert_eq!(v["origin"]["by"], "cli", "{v}");
        assert_eq!(v["dry_run"], true, "{v}");
        let back: Announced = serde_json::from_value(v).unwrap();
        assert!(back.dry_run);
        assert_eq!(back.entry.expires_at, Some(61_000));
        // An answer without the flag (an older controller): sent.
        let mut old = serde_json::to_value(EntryView::of(&entry)).unwrap();
        old.as_object_mut().unwrap().remove("dry_run");
        assert!(!serde_json::from_value::<Announced>(old).unwrap().dry_run);
    }
}
