//! Sending what [`super::payload`] builds: the one place runbooks touch
//! the network, and its retry policy ([`success`], [`retryable`],
//! [`backoff`]). A notification is an HTTP request or a mail
//! ([`Delivery`]); both go through the same attempts ([`deliver`]): each
//! bounded by the step's timeout, at most `1 + retries` of them, with the
//! same backoff between them. Errors name the URL as the runbook wrote it
//! (never its resolved value), or the recipients and the SMTP server.

use std::{future::Future, time::Duration};

use crate::clock::now_ms;

use super::{
    context::Context,
    payload::{self, Delivery, Request},
    schema::{Notify, Webhook},
    smtp,
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

/// What a notify step sends for `ctx`: an HTTP request, or a mail.
pub fn notify_request(n: &Notify, ctx: &Context, message: &str) -> Result<Delivery, String> {
    payload::notify(n, ctx, message, now_ms())
}

pub fn webhook_request(w: &Webhook, ctx: &Context) -> Result<Delivery, String> {
    Ok(Delivery::Http(payload::webhook(w, ctx)))
}

/// Sends `d`, trying again after a retryable failure ([`retryable`] for
/// HTTP, [`smtp::retryable`] for mail); returns what happened, for the
/// history: the last attempt's answer and which attempt it was, or the
/// error that ended the step.
pub async fn deliver(
    client: &reqwest::Client,
    d: &Delivery,
    timeout: Duration,
    retries: u32,
) -> Result<String, String> {
    match d {
        Delivery::Http(req) => attempts(retries, || http_attempt(client, req, timeout)).await,
        Delivery::Mail(mail) => attempts(retries, || smtp::attempt(mail, timeout)).await,
    }
}

/// How one attempt ended.
pub enum Attempt {
    /// Delivered: what the other end answered.
    Done(String),
    /// Failed, and worth another attempt.
    Retry(String),
    /// Failed for good: no more attempts.
    Fail(String),
}

/// At most `1 + retries` attempts, [`backoff`] apart; fails with the last
/// attempt's error.
async fn attempts<F, Fut>(retries: u32, mut attempt: F) -> Result<String, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Attempt>,
{
    let mut last = String::new();
    for n in 0..=retries {
        if n > 0 {
            tokio::time::sleep(backoff(n - 1)).await;
        }
        match attempt().await {
            Attempt::Done(said) => return Ok(format!("{said} (attempt {} of {})", n + 1, retries + 1)),
            Attempt::Fail(e) => return Err(e),
            Attempt::Retry(e) => last = e,
        }
    }
    Err(format!("{last} ({} attempts)", retries + 1))
}

/// One POST of `req`.
async fn http_attempt(client: &reqwest::Client, req: &Request, timeout: Duration) -> Attempt {
    let mut r = client.post(&req.url).timeout(timeout).body(req.body.clone());
    for (k, v) in &req.headers {
        r = r.header(k, v);
    }
    match r.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let said = format!("{}: HTTP {status}", req.shown_url);
            if success(status) {
                Attempt::Done(said)
            } else if retryable(status) {
                Attempt::Retry(said)
            } else {
                Attempt::Fail(said)
            }
        }
        Err(e) if e.is_timeout() => {
            Attempt::Retry(format!("{}: timed out after {}", req.shown_url, humantime::format_duration(timeout)))
        }
        // Without the URL: its resolved form may hold a secret.
        Err(e) => Attempt::Retry(format!("{}: {}", req.shown_url, crate::kernel::xdp::error_chain(&e.without_url()))),
    }
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
