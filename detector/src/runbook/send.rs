//! Sending what [`super::payload`] builds: the one place runbooks touch
//! the network. Each step is bounded by its timeout per attempt and its
//! retries (see [`payload::retryable`] and [`payload::backoff`]). Errors
//! name the URL as the runbook wrote it, never its resolved value.

use std::time::Duration;

use crate::clock::now_ms;

use super::{
    context::Context,
    payload::{self, Request},
    schema::{Notify, Webhook},
};

/// The HTTP client every step shares: TLS through rustls with *ring*, no
/// redirects followed, no proxy from the environment.
pub fn client() -> reqwest::Client {
    // Installs the process's TLS provider; a second call finds it there.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .user_agent(concat!("detector/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_else(|e| {
            tracing::error!("building the HTTP client: {e}; using the defaults");
            reqwest::Client::new()
        })
}

pub fn notify_request(n: &Notify, ctx: &Context, message: &str) -> Result<Request, String> {
    payload::notify(n, ctx, message, now_ms())
}

pub fn webhook_request(w: &Webhook, ctx: &Context) -> Result<Request, String> {
    Ok(payload::webhook(w, ctx))
}

/// POSTs `req`, trying again on a retryable answer or no answer; returns
/// what happened, for the history.
pub async fn deliver(
    client: &reqwest::Client,
    req: &Request,
    timeout: Duration,
    retries: u32,
) -> Result<String, String> {
    let mut last = String::new();
    for attempt in 0..=retries {
        if attempt > 0 {
            tokio::time::sleep(payload::backoff(attempt - 1)).await;
        }
        let mut r = client.post(&req.url).timeout(timeout).body(req.body.clone());
        for (k, v) in &req.headers {
            r = r.header(k, v);
        }
        match r.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                if payload::success(status) {
                    return Ok(format!(
                        "{}: HTTP {status} (attempt {} of {})",
                        req.shown_url,
                        attempt + 1,
                        retries + 1
                    ));
                }
                last = format!("{}: HTTP {status}", req.shown_url);
                if !payload::retryable(status) {
                    return Err(last);
                }
            }
            Err(e) if e.is_timeout() => {
                last = format!("{}: timed out after {}", req.shown_url, humantime::format_duration(timeout));
            }
            Err(e) => {
                // Without the URL: its resolved form may hold a secret.
                last = format!("{}: {}", req.shown_url, crate::kernel::xdp::error_chain(&e.without_url()));
            }
        }
    }
    Err(format!("{last} ({} attempts)", retries + 1))
}
