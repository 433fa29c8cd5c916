//! Email: a plain-text mail per notification, for an SMTP server
//! ([`crate::runbook::smtp`] sends it). The mails of one incident and
//! runbook form a thread: the first one's `Message-ID` is derived from
//! them, and every later one replies to it.

use std::{
    fmt,
    time::{Duration, SystemTime},
};

use lettre::message::{
    header::{ContentType, HeaderName, HeaderValue},
    Mailbox, Message,
};

use super::{text, title, truncate, USER_AGENT};
use crate::runbook::{
    channels::Smtp,
    context::{AttackEvent, Context},
    schema::Notify,
};

/// A subject is cut to this many characters.
pub const SUBJECT_MAX: usize = 200;

/// One mail, ready to send: where (the step's server), from and to whom,
/// and what. Its `Debug` shows the server and the addresses, never the
/// login's password.
#[derive(Clone)]
pub struct Mail {
    pub smtp: Smtp,
    pub from: Mailbox,
    pub to: Vec<Mailbox>,
    /// One line.
    pub subject: String,
    /// Plain text: the message.
    pub body: String,
    /// `<...@detector>`, the same for every attempt.
    pub message_id: String,
    /// The incident's first mail from this runbook, for every later one.
    pub in_reply_to: Option<String>,
    pub event: AttackEvent,
    pub incident_id: String,
    /// The `Date` header, Unix milliseconds.
    pub date_ms: u64,
}

impl fmt::Debug for Mail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mail")
            .field("smtp", &self.smtp)
            .field("from", &self.from.to_string())
            .field("to", &self.recipients())
            .field("subject", &self.subject)
            .field("body", &format_args!("<{} bytes>", self.body.len()))
            .finish()
    }
}

impl Mail {
    /// `ops@example.com, noc@example.com`.
    pub fn recipients(&self) -> String {
        self.to.iter().map(|m| m.email.to_string()).collect::<Vec<_>>().join(", ")
    }

    /// Where it goes, safe to show: `ops@example.com via mail.example.com:587 (starttls)`.
    pub fn shown(&self) -> String {
        format!("{} via {}", self.recipients(), self.smtp.describe())
    }

    /// The message as lettre sends it: `From`, `To`, `Subject`, `Date`,
    /// `Message-ID` (and `In-Reply-To`, `References` after the first),
    /// `User-Agent`, `X-Detector-Event`, `X-Detector-Incident`, and the
    /// body as UTF-8 plain text.
    pub fn message(&self) -> Result<Message, String> {
        let mut b = Message::builder()
            .from(self.from.clone())
            .subject(self.subject.clone())
            .date(SystemTime::UNIX_EPOCH + Duration::from_millis(self.date_ms))
            .message_id(Some(self.message_id.clone()))
            .user_agent(USER_AGENT.to_string())
            .header(ContentType::TEXT_PLAIN);
        for to in &self.to {
            b = b.to(to.clone());
        }
        if let Some(first) = &self.in_reply_to {
            b = b.in_reply_to(first.clone()).references(first.clone());
        }
        for (name, value) in [("X-Detector-Event", self.event.name()), ("X-Detector-Incident", &self.incident_id)] {
            b = b.raw_header(HeaderValue::new(HeaderName::new_from_ascii_str(name), value.to_string()));
        }
        b.body(self.body.clone()).map_err(|e| format!("notify email: building the mail: {e}"))
    }
}

/// The mail of an email `notify` step: the step's server, sender and
/// recipients; the subject (the step's `subject` template for
/// `attack_start` and `attack_update`, else the default: the event, the
/// node and interface, the families and the severity); the body (the
/// message). `now_ms` is its `Date`. `Err` is a subject template error.
pub fn email(step: &Notify, ctx: &Context, message: &str, now_ms: u64) -> Result<Mail, String> {
    let e = step.email.as_ref().ok_or("notify email: the step has no smtp, from or to")?;
    let subject = match &e.subject {
        Some(t) if ctx.event != AttackEvent::AttackEnd => ctx.render(&t.0).map_err(|e| format!("subject: {e}"))?,
        _ => String::new(),
    };
    let subject = one_line(&subject);
    let subject = if subject.is_empty() { default_subject(ctx) } else { subject };
    let first = message_id(&[&ctx.incident_id, &ctx.runbook]);
    let (message_id, in_reply_to) = match ctx.event {
        AttackEvent::AttackStart => (first, None),
        _ => (message_id(&[&ctx.incident_id, &ctx.runbook, ctx.event.name(), &now_ms.to_string()]), Some(first)),
    };
    let body = text(message, ctx);
    Ok(Mail {
        smtp: e.smtp.clone(),
        from: e.from.clone(),
        to: e.to.clone(),
        subject: truncate(&subject, SUBJECT_MAX),
        body,
        message_id,
        in_reply_to,
        event: ctx.event,
        incident_id: ctx.incident_id.clone(),
        date_ms: now_ms,
    })
}

/// `DDoS attack started on web1 (eth0): udp_flood, severity high`.
fn default_subject(ctx: &Context) -> String {
    let families = if ctx.families.is_empty() { "no family".to_string() } else { ctx.families.join(", ") };
    format!("{}: {families}, severity {}", title(ctx), ctx.severity)
}

/// Line breaks and other control characters as spaces, runs of spaces as
/// one, trimmed.
fn one_line(s: &str) -> String {
    s.split(|c: char| c.is_control() || c.is_whitespace()).filter(|w| !w.is_empty()).collect::<Vec<_>>().join(" ")
}

/// `<part.part...@detector>`, each part kept to letters, digits, `-` and
/// `_` (anything else becomes `-`), so it is a valid `msg-id`.
fn message_id(parts: &[&str]) -> String {
    let clean: Vec<String> = parts
        .iter()
        .map(|p| p.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' }).collect())
        .filter(|p: &String| !p.is_empty())
        .collect();
    format!("<{}@detector>", clean.join("."))
}

#[cfg(test)]
mod tests {
    use super::{
        super::{notify, testing::*, Delivery},
        *,
    };

    fn mail(d: Result<Delivery, String>) -> Mail {
        match d.unwrap() {
            Delivery::Mail(m) => *m,
            Delivery::Http(r) => panic!("not a mail: {r:?}"),
        }
    }

    const STEP: &str = "notify: { channel: email, smtp: { host: mail.example.test, username: detector, password: '${SMTP_PASSWORD}' }, from: 'DDoS detector <detector@example.test>', to: [ops@example.test, 'NOC <noc@example.test>'], subject: '[{{ severity }}] {{ families | join(\", \") }} on {{ node }}' }";

    #[test]
    fn email_headers_and_body() {
        let s = notify_step(STEP);
        let now = START + 2_000;
        let m = mail(notify(&s, &ctx(AttackEvent::AttackStart), "UDP flood on web1: 1250000 pps\nsecond line", now));
        assert_eq!(m.shown(), "ops@example.test, noc@example.test via mail.example.test:587 (starttls)");
        assert_eq!(m.subject, "[high] multi_vector, udp_flood, syn_flood on web1");
        assert_eq!(m.body, "UDP flood on web1: 1250000 pps\nsecond line");
        assert_eq!(m.message_id, "<web1-eth0-20261124T223501-123Z.notify-every-attack@detector>");
        assert!(m.in_reply_to.is_none());
        let debug = format!("{m:?}");
        assert!(!debug.contains("s3cret") && debug.contains("${SMTP_PASSWORD}"), "{debug}");

        let text = String::from_utf8(m.message().unwrap().formatted()).unwrap();
        for line in [
            "From: \"DDoS detector\" <detector@example.test>\r\n",
            "To: ops@example.test, NOC <noc@example.test>\r\n",
            "Subject: [high] multi_vector, udp_flood, syn_flood on web1\r\n",
            "Date: Tue, 24 Nov 2026 22:35:03 +0000\r\n",
            "Message-ID: <web1-eth0-20261124T223501-123Z.notify-every-attack@detector>\r\n",
            "X-Detector-Event: attack_start\r\n",
            "X-Detector-Incident: web1-eth0-20261124T223501.123Z\r\n",
            "Content-Type: text/plain; charset=utf-8\r\n",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
        assert!(text.contains(&format!("User-Agent: {USER_AGENT}\r\n")), "{text}");
        assert!(!text.contains("In-Reply-To"), "{text}");
        // (The SMTP client ends the data with CRLF . CRLF.)
        assert!(text.ends_with("\r\n\r\nUDP flood on web1: 1250000 pps\r\nsecond line"), "{text:?}");

        // Later mails reply to the first: one thread per incident and runbook.
        for event in [AttackEvent::AttackUpdate, AttackEvent::AttackEnd] {
            let m = mail(notify(&s, &ctx(event), "m", now));
            assert_eq!(m.in_reply_to.as_deref(), Some("<web1-eth0-20261124T223501-123Z.notify-every-attack@detector>"));
            assert_eq!(
                m.message_id,
                format!("<web1-eth0-20261124T223501-123Z.notify-every-attack.{}.{now}@detector>", event.name())
            );
            let text = String::from_utf8(m.message().unwrap().formatted()).unwrap();
            assert!(
                text.contains("In-Reply-To: <web1-eth0-20261124T223501-123Z.notify-every-attack@detector>\r\n"),
                "{text}"
            );
            assert!(
                text.contains("References: <web1-eth0-20261124T223501-123Z.notify-every-attack@detector>\r\n"),
                "{text}"
            );
        }
    }

    #[test]
    fn email_subjects() {
        let s = notify_step(STEP);
        // The end: the default subject, whatever the template says (it
        // speaks of a running attack), as the message does.
        let m = mail(notify(&s, &ctx(AttackEvent::AttackEnd), "over", 0));
        assert_eq!(m.subject, "DDoS attack ended on web1 (eth0): multi_vector, udp_flood, syn_flood, severity high");
        let plain = notify_step(
            "notify: { channel: email, smtp: { host: localhost, tls: none }, from: d@example.test, to: o@example.test }",
        );
        let m = mail(notify(&plain, &ctx(AttackEvent::AttackStart), "m", 0));
        assert_eq!(m.subject, "DDoS attack started on web1 (eth0): multi_vector, udp_flood, syn_flood, severity high");
        assert_eq!(m.shown(), "o@example.test via localhost:25 (none)");
        // A template that renders to several lines, or to nothing.
        let lines = notify_step(
            "notify: { channel: email, smtp: { host: localhost, tls: none }, from: d@example.test, to: o@example.test, subject: \"{{ node }}\\n\\n  {{ severity }}\\r\\nx\" }",
        );
        assert_eq!(mail(notify(&lines, &ctx(AttackEvent::AttackStart), "m", 0)).subject, "web1 high x");
        let blank = notify_step(
            "notify: { channel: email, smtp: { host: localhost, tls: none }, from: d@example.test, to: o@example.test, subject: '{% if false %}x{% endif %}' }",
        );
        assert!(mail(notify(&blank, &ctx(AttackEvent::AttackStart), "m", 0))
            .subject
            .starts_with("DDoS attack started"));
        let long = notify_step(&format!(
            "notify: {{ channel: email, smtp: {{ host: localhost, tls: none }}, from: d@example.test, to: o@example.test, subject: '{}' }}",
            "é".repeat(300)
        ));
        let m = mail(notify(&long, &ctx(AttackEvent::AttackStart), "m", 0));
        assert_eq!(m.subject.chars().count(), SUBJECT_MAX);
        // Non-ASCII subjects are encoded (RFC 2047), and the body is UTF-8.
        let text = String::from_utf8(m.message().unwrap().formatted()).unwrap();
        assert!(text.contains("Subject: =?utf-8?"), "{text}");
        assert_eq!(message_id(&["a b", "", "c.d@e"]), "<a-b.c-d-e@detector>");
    }
}
