//! The generic webhook: the attack context as JSON (`docs/webhook.md`),
//! signed with HMAC-SHA256 when the step has a secret; and the `webhook`
//! channel of `notify`, which adds the rendered message.

use std::collections::BTreeMap;

use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use sha2::Sha256;

use super::{finish, need_url, shown, Request};
use crate::runbook::{
    context::{AttackEvent, Context},
    schema::{Notify, Webhook},
    secret::{SecretText, SecretUrl},
};

/// `sha256=<hex HMAC-SHA256 of the body>`, when the webhook step has a secret.
pub const SIGNATURE_HEADER: &str = "X-Detector-Signature";
/// `attack_start`, `attack_update` or `attack_end`, on generic webhooks.
pub const EVENT_HEADER: &str = "X-Detector-Event";

/// The `webhook` channel of a `notify` step: the generic webhook body (the
/// whole context) with `message` added, unsigned (a notify step has no
/// `secret`).
pub fn notify_webhook(step: &Notify, ctx: &Context, message: &str) -> Result<Request, String> {
    #[derive(Serialize)]
    struct WithMessage<'a> {
        #[serde(flatten)]
        ctx: &'a Context,
        message: &'a str,
    }
    let url = need_url(step, "webhook")?;
    let body = serde_json::to_vec(&WithMessage { ctx, message }).expect("the context serializes");
    Ok(generic(url, &step.headers, None, ctx.event, body))
}

/// A `webhook` step: the whole context as JSON (see `docs/webhook.md`),
/// signed when the step has a `secret`.
pub fn webhook(step: &Webhook, ctx: &Context) -> Request {
    let body = serde_json::to_vec(ctx).expect("the context serializes");
    generic(&step.url, &step.headers, step.secret.as_ref(), ctx.event, body)
}

/// The `X-Detector-Signature` value for `body`: `sha256=` and the lowercase
/// hex HMAC-SHA256 of the exact body bytes, keyed with the secret's bytes.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    format!("sha256={}", hex(&mac.finalize().into_bytes()))
}

/// True when `header` (an `X-Detector-Signature` value) signs `body` with
/// `secret`. Compares in constant time; hex digits may be either case;
/// anything malformed is false.
pub fn verify(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(digits) = header.trim().strip_prefix("sha256=") else { return false };
    let Some(tag) = unhex(digits) else { return false };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    mac.verify_slice(&tag).is_ok()
}

/// The generic webhook's request: signed when there is a secret.
fn generic(
    url: &SecretUrl,
    headers: &BTreeMap<String, SecretText>,
    secret: Option<&SecretText>,
    event: AttackEvent,
    body: Vec<u8>,
) -> Request {
    let mut extra = vec![(EVENT_HEADER, event.name().to_string())];
    if let Some(s) = secret {
        extra.push((SIGNATURE_HEADER, sign(s.expose().as_bytes(), &body)));
    }
    finish(url.0.expose().to_string(), shown(&url.0), headers, &extra, body)
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    s.as_bytes().chunks(2).map(|p| Some(digit(p[0])? << 4 | digit(p[1])?)).collect()
}

#[cfg(test)]
mod tests {

    use super::{
        super::{notify, testing::*},
        *,
    };

    #[test]
    fn generic_webhook_step() {
        let s = webhook_step(
            "webhook: { url: '${HOOK_URL}', secret: '${HMAC}', headers: { Authorization: 'Bearer ${TOKEN}', X-Team: netops, content-type: text/plain, X-Detector-Signature: forged } }",
        );
        for event in [AttackEvent::AttackStart, AttackEvent::AttackUpdate, AttackEvent::AttackEnd] {
            let c = ctx(event);
            let r = webhook(&s, &c);
            assert_eq!(r.url, "https://hooks.example.test/ddos?token=s3cret");
            assert_eq!(r.shown_url, "${HOOK_URL}");
            assert_standard_headers(&r);
            assert_hidden(&r);
            assert_eq!(r.header("Authorization"), Some("Bearer TOKEN-s3cret"));
            assert_eq!(r.header("X-Team"), Some("netops"));
            assert_eq!(r.header(EVENT_HEADER), Some(event.name()));
            assert_eq!(r.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("content-type")).count(), 1);
            let sig = r.header(SIGNATURE_HEADER).unwrap();
            assert_ne!(sig, "forged", "the step cannot set the detector's own headers");
            assert_eq!(sig, sign(b"HMAC-s3cret", &r.body));
            assert!(verify(b"HMAC-s3cret", &r.body, sig));
            assert!(!verify(b"other", &r.body, sig));
            // The body is the context, whole, and nothing else.
            let back: Context = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(back, c);
            assert!(json(&r).get("message").is_none());
        }
        // No secret, no signature.
        let plain = webhook_step("webhook: { url: 'https://hooks.example.test/ddos' }");
        let r = webhook(&plain, &ctx(AttackEvent::AttackStart));
        assert_eq!(r.shown_url, "https://hooks.example.test/ddos");
        assert!(r.header(SIGNATURE_HEADER).is_none());
        assert_eq!(r.header(EVENT_HEADER), Some("attack_start"));
        assert_eq!(r.headers.len(), 3);
    }

    #[test]
    fn notify_webhook_adds_the_message() {
        let s = notify_step("notify: { channel: webhook, url: '${HOOK_URL}' }");
        let c = ctx(AttackEvent::AttackEnd);
        let r = http(notify(&s, &c, "it ended", 0));
        assert_standard_headers(&r);
        assert_hidden(&r);
        assert!(r.header(SIGNATURE_HEADER).is_none());
        assert_eq!(r.header(EVENT_HEADER), Some("attack_end"));
        let mut v = json(&r);
        assert_eq!(v["message"], "it ended");
        assert_eq!(v["ended_at"], "2026-11-24T22:36:36.123Z");
        v.as_object_mut().unwrap().remove("message");
        assert_eq!(serde_json::from_value::<Context>(v).unwrap(), c);
        // The body keeps the context's field order, message last.
        let text = String::from_utf8(r.body.clone()).unwrap();
        assert!(text.starts_with("{\"event\":\"attack_end\",\"runbook\":"), "{text}");
        assert!(text.ends_with(",\"message\":\"it ended\"}"), "{text}");
    }

    #[test]
    fn signature_known_answers() {
        // RFC 4231, test case 2.
        let sig = sign(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(sig, "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        assert!(verify(b"Jefe", b"what do ya want for nothing?", &sig));
        assert!(verify(b"Jefe", b"what do ya want for nothing?", &sig.to_uppercase().replace("SHA256=", "sha256=")));
        assert!(verify(b"Jefe", b"what do ya want for nothing?", &format!(" {sig}\n")));
        // RFC 4231, test case 1: a 20-byte key of 0x0b, "Hi There".
        assert_eq!(
            sign(&[0x0b; 20], b"Hi There"),
            "sha256=b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        let body = b"what do ya want for nothing?";
        assert!(!verify(b"Jefe", b"what do ya want for nothing!", &sig));
        assert!(!verify(b"Jefe", body, &sig[7..]), "no sha256= prefix");
        assert!(!verify(b"Jefe", body, &sig[..sig.len() - 2]), "truncated");
        assert!(!verify(b"Jefe", body, &format!("{sig}00")), "too long");
        assert!(!verify(b"Jefe", body, &sig.replace('5', "g")), "not hex");
        assert!(!verify(b"Jefe", body, &format!("{}x", &sig[..sig.len() - 1])), "odd");
        assert!(!verify(b"Jefe", body, "sha256="));
        assert!(!verify(b"Jefe", body, ""));
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(unhex("000fA5ff"), Some(vec![0x00, 0x0f, 0xa5, 0xff]));
        assert_eq!(unhex("€€"), None);
    }

    /// The signed example of `docs/webhook.md` is what the code sends.
    #[test]
    fn doc_signature_example() {
        const BODY: &str = r#"{"event":"attack_start","runbook":"notify-every-attack","dry_run":false,"incident_id":"web1-eth0-20261124T223501.123Z","node":"web1","iface":"eth0","target":"192.0.2.2","hostgroup":"host","direction":"incoming","families":["multi_vector","udp_flood","syn_flood"],"vectors":["udp","syn"],"severity":"high","status":"active","started_at":"2026-11-24T22:35:01.123Z","ended_at":null,"pps":1250000.0,"bps":512000000.0,"peak_pps":1400000.0,"peak_bps":570000000.0,"top_sources":[{"addr":"198.51.100.7","pps":400000.0,"share":0.32},{"addr":"2001:db8::1","pps":100000.0,"share":0.08}],"top_ports":[{"proto":"udp","port":53,"pps":900000.0,"share":0.72}],"signature":{"classes":["tcp_syn","udp"],"dst":"203.0.113.10","dst_ports":[53,80],"src_ports":[],"length":"60-74","ttl":"40-64","coverage":0.993,"collateral":0.002,"samples":4096,"peacetime_samples":4096},"rules":[{"id":"r3","rule":"r3 drop 198.51.100.7/32 class udp","origin":"runbook udp-flood-auto-response","expires_at":"2026-11-24T22:45:01.123Z"}],"capture":{"packets":4321,"pre_attack":1000,"full":false}}"#;
        const SIGNATURE: &str = "sha256=64b1f0510505d8ec07fd04d34dcee381566fde6fed687aa9b826e4aecbe84efb";
        let s = webhook_step("webhook: { url: 'https://hooks.example.test/ddos', secret: example-secret }");
        let r = webhook(&s, &ctx(AttackEvent::AttackStart));
        assert_eq!(String::from_utf8(r.body.clone()).unwrap(), BODY);
        assert_eq!(r.header(SIGNATURE_HEADER), Some(SIGNATURE));
        assert!(verify(b"example-secret", BODY.as_bytes(), SIGNATURE));
    }
}
