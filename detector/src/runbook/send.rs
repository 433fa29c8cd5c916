//! Sending what [`super::payload`] builds: the one place runbooks touch
//! the network, and its retry policy ([`success`], [`retryable`],
//! [`backoff`]). Each step is bounded by its timeout per attempt and its
//! retries. Errors name the URL as the runbook wrote it, never its
//! resolved value.

use std::time::Duration;

use crate::clock::now_ms;

use super::{
    context::Context,
    payload::{self, Request},
    schema::{Notify, Webhook},
};

/// Base delay of [`backoff`].
const BACKOFF_BASE: Duration = Duration::from_millis(200);
/// Longest delay [`backoff`] returns.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// True when a response with this status means the step succeeded: any 2xx.
pub fn success(status: u16) -> bool {
    (200..300).contains(&status)
}

/// Whether an attempt that got this status is tried again (within the
/// step's `retries`): `408 Request Timeout`, `429 Too Many Requests` and
/// every 5xx are. A 2xx is success, and nothing else is retried: other 4xx
/// (the request is wrong and will stay wrong), 1xx and 3xx (redirects are
/// not followed: give the final URL). An attempt that gets no status (the
/// connection fails, or the step's `timeout` passes before a response) is
/// retried too.
///
/// So a step makes at most `1 + retries` attempts, each bounded by
/// `timeout`, waiting [`backoff`]`(0)`, `(1)`, ... between them; it fails
/// with the last attempt's error.
pub fn retryable(status: u16) -> bool {
    status == 408 || status == 429 || (500..600).contains(&status)
}

/// How long to wait before retry number `attempt + 1` (`attempt` counts
/// from 0: the wait after the first failed attempt is `backoff(0)`):
/// 200ms × 2^attempt, at most 5s. So 200ms, 400ms, 800ms, 1.6s, 3.2s, then
/// 5s. No jitter, and a `Retry-After` header is not followed.
pub fn backoff(attempt: u32) -> Duration {
    BACKOFF_BASE.saturating_mul(2u32.saturating_pow(attempt)).min(BACKOFF_MAX)
}

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
            tokio::time::sleep(backoff(attempt - 1)).await;
        }
        let mut r = client.post(&req.url).timeout(timeout).body(req.body.clone());
        for (k, v) in &req.headers {
            r = r.header(k, v);
        }
        match r.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                if success(status) {
                    return Ok(format!(
                        "{}: HTTP {status} (attempt {} of {})",
                        req.shown_url,
                        attempt + 1,
                        retries + 1
                    ));
                }
                last = format!("{}: HTTP {status}", req.shown_url);
                if !retryable(status) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries() {
        for s in [200, 201, 202, 204, 299] {
            assert!(success(s) && !retryable(s), "{s}");
        }
        for s in [408, 429, 500, 502, 503, 504, 599] {
            assert!(!success(s) && retryable(s), "{s}");
        }
        for s in [100, 301, 302, 304, 400, 401, 403, 404, 405, 410, 413, 422] {
            assert!(!success(s) && !retryable(s), "{s}");
        }
        let ms: Vec<u128> = (0..8).map(|a| backoff(a).as_millis()).collect();
        assert_eq!(ms, [200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(backoff(u32::MAX), Duration::from_secs(5));
    }
}
