//! Telegram's Bot API: `sendMessage` to one chat. The bot's token is part
//! of the URL, so the URL is shown with the token's reference, never its
//! value.

use serde_json::json;

use super::{api_url, finish, text, to_bytes, truncate, Request};
use crate::runbook::{context::Context, schema::Notify};

/// The Bot API, when a telegram step gives no `url`.
pub const TELEGRAM_URL: &str = "https://api.telegram.org";
/// Telegram refuses a message longer than this many characters.
pub const TELEGRAM_TEXT_MAX: usize = 4096;

/// Telegram's `sendMessage` (`POST <url>/bot<token>/sendMessage`, the base
/// [`TELEGRAM_URL`] by default) with `chat_id` (a number, or a channel's
/// `@username`), `text` (the message, plain text: no `parse_mode`, so
/// nothing in it is taken for markup; cut to [`TELEGRAM_TEXT_MAX`]
/// characters at a character boundary, ending in `…` when cut) and
/// `disable_web_page_preview`. The same for every event: `attack_end`'s
/// message is the summary that says the attack is over.
pub fn telegram(step: &Notify, ctx: &Context, message: &str) -> Result<Request, String> {
    let token = step.bot_token.as_ref().ok_or("notify telegram: the step has no bot_token")?;
    let chat = step.chat_id.as_ref().ok_or("notify telegram: the step has no chat_id")?;
    let (base, shown_base) = api_url(step.url.as_ref(), TELEGRAM_URL, "");
    let url = format!("{base}/bot{}/sendMessage", token.expose());
    let shown_url = format!("{shown_base}/bot{}/sendMessage", token.shown());
    let body = json!({
        "chat_id": chat.to_json(),
        "text": truncate(&text(message, ctx), TELEGRAM_TEXT_MAX),
        "disable_web_page_preview": true,
    });
    Ok(finish(url, shown_url, &step.headers, &[], to_bytes(&body)))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{
        super::{notify, testing::*},
        *,
    };

    #[test]
    fn telegram_send_message() {
        let s = notify_step("notify: { channel: telegram, bot_token: '${TG_TOKEN}', chat_id: -1001234567890 }");
        for event in [AttackEvent::AttackStart, AttackEvent::AttackUpdate, AttackEvent::AttackEnd] {
            let r = http(notify(&s, &ctx(event), "UDP flood <b>on</b> web1 *now*", 0));
            assert_eq!(r.url, "https://api.telegram.org/bot123456:TG_TOKEN-s3cret/sendMessage");
            assert_eq!(r.shown_url, "https://api.telegram.org/bot${TG_TOKEN}/sendMessage");
            assert_standard_headers(&r);
            assert_hidden(&r);
            assert_eq!(
                json(&r),
                json!({
                    "chat_id": -1001234567890_i64,
                    "text": "UDP flood <b>on</b> web1 *now*",
                    "disable_web_page_preview": true,
                }),
                "plain text, sent as written"
            );
        }
        // A channel's @username, a base URL of its own (a local Bot API
        // server, a test), a token written in the file: never shown.
        let s = notify_step(
            "notify: { channel: telegram, url: 'http://127.0.0.1:8081/', bot_token: '42:AbC-d_e', chat_id: '@ddos_alerts' }",
        );
        let r = http(notify(&s, &ctx(AttackEvent::AttackStart), " ", 0));
        assert_eq!(r.url, "http://127.0.0.1:8081/bot42:AbC-d_e/sendMessage");
        assert_eq!(r.shown_url, "http://127.0.0.1:8081/bot***/sendMessage");
        assert!(!format!("{r:?}").contains("AbC-d_e"));
        let v = json(&r);
        assert_eq!(v["chat_id"], "@ddos_alerts");
        assert_eq!(v["text"], ctx(AttackEvent::AttackStart).summary(), "a blank message sends the summary");
    }

    #[test]
    fn telegram_text_is_cut_to_4096_characters() {
        let s = notify_step("notify: { channel: telegram, bot_token: '${TG_TOKEN}', chat_id: 1 }");
        let c = ctx(AttackEvent::AttackStart);
        let long: String = "aé€😀".repeat(1500);
        let text = json(&telegram(&s, &c, &long).unwrap())["text"].as_str().unwrap().to_string();
        assert_eq!(text.chars().count(), TELEGRAM_TEXT_MAX);
        assert!(text.ends_with('…') && long.starts_with(text.trim_end_matches('…')));
        let exact = "€".repeat(TELEGRAM_TEXT_MAX);
        assert_eq!(json(&telegram(&s, &c, &exact).unwrap())["text"], exact.as_str(), "4096 is not cut");
    }
}
