//! Sending a [`Mail`] over SMTP with lettre: one attempt (connect, TLS as
//! the step says, log in, send, quit), and which failures are worth
//! another ([`retryable`]). TLS goes through rustls with the system's
//! roots, and the step's `ca_file` besides. The password goes to the
//! server only: errors name the recipients and the server.

use std::time::Duration;

use lettre::{
    transport::smtp::{
        authentication::Credentials,
        client::{Certificate, Tls, TlsParameters},
        AsyncSmtpTransport,
    },
    AsyncTransport as _, Tokio1Executor,
};

use super::{
    channels::{Smtp, SmtpTls},
    payload::Mail,
    send::Attempt,
};

/// Whether an attempt that ended this way is tried again (within the
/// step's `retries`): with no reply from the server (`None`: it could not
/// be reached, TLS failed, or the timeout passed), or a transient one
/// (4xx: greylisting, a full queue). A permanent reply (5xx: a login
/// refused, a recipient unknown) fails the step at once, as a 4xx does
/// over HTTP: it would stay wrong.
pub fn retryable(reply: Option<u16>) -> bool {
    match reply {
        None => true,
        Some(code) => (400..500).contains(&code),
    }
}

/// One attempt at sending `mail`, bounded by `timeout` as a whole.
pub async fn attempt(mail: &Mail, timeout: Duration) -> Attempt {
    let shown = mail.shown();
    let fail = |what: String| Attempt::Fail(format!("email to {shown}: {what}"));
    let message = match mail.message() {
        Ok(m) => m,
        Err(e) => return Attempt::Fail(e),
    };
    let transport = match transport(&mail.smtp, timeout) {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let sent = tokio::time::timeout(timeout, transport.send(message)).await;
    let err = match sent {
        Ok(Ok(reply)) => {
            let first = reply.message().next().unwrap_or("").to_string();
            return Attempt::Done(one_line(&format!("email to {shown}: SMTP {} {first}", reply.code())));
        }
        Err(_) => {
            return Attempt::Retry(format!("email to {shown}: timed out after {}", humantime::format_duration(timeout)))
        }
        Ok(Err(e)) => e,
    };
    let reply = err.status().map(u16::from);
    let what = if let Some(code) = reply {
        // The server's own words: `535 5.7.8 Authentication credentials invalid`.
        let words = std::error::Error::source(&err).map(|s| s.to_string()).unwrap_or_default();
        format!("SMTP {code} {words}")
    } else if err.is_timeout() {
        format!("timed out after {}", humantime::format_duration(timeout))
    } else {
        let mut what = chain(&err);
        if what.contains("UnknownIssuer") && mail.smtp.ca_file.is_none() {
            what.push_str(" (a private CA? trust it with smtp.ca_file)");
        }
        what
    };
    let what = format!("email to {shown}: {}", one_line(&what));
    if err.is_client() || !retryable(reply) {
        Attempt::Fail(what)
    } else {
        Attempt::Retry(what)
    }
}

/// A transport for one mail: the step's server, TLS and login; no pool.
fn transport(s: &Smtp, timeout: Duration) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
    let tls = |host: &str| -> Result<TlsParameters, String> {
        let mut p = TlsParameters::builder(host.to_string());
        if let Some(ca) = &s.ca_file {
            let cert = Certificate::from_pem(&ca.pem).map_err(|e| format!("smtp.ca_file {}: {e}", ca.path))?;
            p = p.add_root_certificate(cert);
        }
        p.build().map_err(|e| format!("TLS settings: {e}"))
    };
    let tls = match s.tls {
        SmtpTls::Starttls => Tls::Required(tls(&s.host)?),
        SmtpTls::Tls => Tls::Wrapper(tls(&s.host)?),
        SmtpTls::None => Tls::None,
    };
    let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(s.host.as_str())
        .port(s.port)
        .tls(tls)
        .timeout(Some(timeout));
    if let Some(login) = &s.login {
        b = b.credentials(Credentials::new(login.username.expose().to_string(), login.password.expose().to_string()));
    }
    Ok(b.build())
}

/// An error and its sources, each said once: lettre's errors repeat their
/// source after their own words (`Connection error: <source>`).
fn chain(e: &dyn std::error::Error) -> String {
    let mut said: Vec<String> = Vec::new();
    let mut cur = Some(e);
    while let Some(err) = cur {
        let text = err.to_string();
        let next = err.source().map(|s| s.to_string());
        let own = match &next {
            Some(n) => text.strip_suffix(n.as_str()).unwrap_or(&text).trim_end_matches([':', ' ']).to_string(),
            None => text,
        };
        if !own.is_empty() && !said.iter().any(|s| s.eq_ignore_ascii_case(&own)) {
            said.push(own);
        }
        cur = err.source();
    }
    said.join(": ")
}

/// A multi-line reply or error on one line.
fn one_line(s: &str) -> String {
    s.split(['\r', '\n']).map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ").trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runbook::{
        payload::{testing::*, Delivery},
        send,
    };

    /// A server that takes the connection and never says a word: each
    /// attempt ends at the step's timeout, and is tried again.
    #[tokio::test]
    async fn a_silent_server_times_out_each_attempt() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let held = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((c, _)) = l.accept().await {
                conns.push(c);
            }
        });
        let step = notify_step(&format!(
            "notify: {{ channel: email, smtp: {{ host: 127.0.0.1, port: {port}, tls: none }}, from: d@example.test, to: o@example.test }}"
        ));
        let Delivery::Mail(mail) =
            crate::runbook::payload::notify(&step, &ctx(AttackEvent::AttackStart), "m", 0).unwrap()
        else {
            panic!("not a mail")
        };
        let t0 = std::time::Instant::now();
        let e = send::deliver(&send::client(), &Delivery::Mail(mail), Duration::from_millis(300), 1).await.unwrap_err();
        assert_eq!(
            e,
            format!("email to o@example.test via 127.0.0.1:{port} (none): timed out after 300ms (2 attempts)")
        );
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(800) && took < Duration::from_secs(5),
            "two 300ms attempts, 200ms apart: {took:?}"
        );
        held.abort();
    }

    #[test]
    fn smtp_retries_transient_failures_only() {
        assert!(retryable(None), "no reply: unreachable, TLS, timeout");
        for code in [421, 450, 451, 452, 454] {
            assert!(retryable(Some(code)), "{code}");
        }
        for code in [500, 501, 530, 535, 550, 552, 554] {
            assert!(!retryable(Some(code)), "{code}");
        }
        assert_eq!(one_line("535 5.7.8 a\r\n  b\n"), "535 5.7.8 a b");
        let inner = std::io::Error::other("invalid peer certificate: UnknownIssuer");
        #[derive(Debug)]
        struct Wrap(&'static str, std::io::Error);
        impl std::fmt::Display for Wrap {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}: {}", self.0, self.1)
            }
        }
        impl std::error::Error for Wrap {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.1)
            }
        }
        assert_eq!(
            chain(&Wrap("Connection error", inner)),
            "Connection error: invalid peer certificate: UnknownIssuer",
            "each said once"
        );
    }
}
