//! What the `notify` channels that need more than a URL may say, checked
//! as the runbook is read: Telegram's chat, the email channel's SMTP
//! server and addresses, and which fields go with which channel
//! ([`check`]). Each mistake is one line naming the field.

use std::{fmt, net::IpAddr};

use lettre::message::Mailbox;
use serde::{de, Deserialize, Deserializer};

use super::{
    schema::{Channel, Template},
    secret::{resolving, SecretText},
};

/// Telegram's `chat_id`: a chat's number (groups and channels are
/// negative, `-1001234567890`), or a public channel's `@username`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChatId {
    Id(i64),
    Username(String),
}

impl ChatId {
    /// As the Bot API takes it: a number, or the `@username` string.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            ChatId::Id(n) => serde_json::Value::from(*n),
            ChatId::Username(u) => serde_json::Value::from(u.as_str()),
        }
    }

    /// A chat id as written (after its `${...}` references resolved).
    pub fn parse(s: &str) -> Result<ChatId, String> {
        let s = s.trim();
        if let Ok(n) = s.parse::<i64>() {
            return Ok(ChatId::Id(n));
        }
        if let Some(name) = s.strip_prefix('@') {
            // Telegram usernames: 5 to 32 of a-z, 0-9 and '_'.
            if (5..=32).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Ok(ChatId::Username(s.to_string()));
            }
        }
        Err(format!(
            "chat_id: '{s}' is not a Telegram chat: give the chat's number (-1001234567890 for a group or channel) \
             or a public channel's @username"
        ))
    }
}

impl fmt::Display for ChatId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChatId::Id(n) => write!(f, "{n}"),
            ChatId::Username(u) => f.write_str(u),
        }
    }
}

impl<'de> Deserialize<'de> for ChatId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ChatId, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(i64),
            Text(String),
        }
        let raw = match Raw::deserialize(d) {
            Ok(Raw::Num(n)) => return Ok(ChatId::Id(n)),
            Ok(Raw::Text(s)) => s,
            Err(_) => return Err(de::Error::custom("chat_id: give the chat's number or a channel's @username")),
        };
        // `${TELEGRAM_CHAT_ID}` resolves like any secret.
        let t = SecretText::deserialize(de::value::StrDeserializer::<D::Error>::new(&raw))
            .map_err(|e| de::Error::custom(format!("chat_id: {e}")))?;
        if !resolving() && t.is_secret() {
            return Ok(ChatId::Id(0));
        }
        ChatId::parse(t.expose()).map_err(|e| {
            if t.is_secret() {
                // The value came from a secret: name the reference only.
                de::Error::custom(format!("chat_id: {} is not a Telegram chat (a number or an @username)", t.raw))
            } else {
                de::Error::custom(e)
            }
        })
    }
}

/// A mail address, `ops@example.com` or `Ops <ops@example.com>`, parsed by
/// lettre as it will send it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address(pub Mailbox);

impl Address {
    pub fn parse(s: &str) -> Result<Address, String> {
        s.trim().parse::<Mailbox>().map(Address).map_err(|e| {
            format!("'{s}' is not a mail address ({e}); write ops@example.com or \"Ops <ops@example.com>\"")
        })
    }
}

/// How the SMTP connection is protected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS, which the server must offer
    /// (port 587).
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No TLS: the password and the mail in clear text. Loopback only.
    None,
}

impl SmtpTls {
    pub fn name(self) -> &'static str {
        match self {
            SmtpTls::Starttls => "starttls",
            SmtpTls::Tls => "tls",
            SmtpTls::None => "none",
        }
    }

    /// The port a server listens on for this mode: 587 (submission),
    /// 465 (submissions), 25.
    pub fn default_port(self) -> u16 {
        match self {
            SmtpTls::Starttls => 587,
            SmtpTls::Tls => 465,
            SmtpTls::None => 25,
        }
    }
}

/// A login on the SMTP server.
#[derive(Clone)]
pub struct SmtpLogin {
    pub username: SecretText,
    /// For the wire only: never shown, logged or stored.
    pub password: SecretText,
}

impl fmt::Debug for SmtpLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpLogin")
            .field("username", &self.username)
            .field("password", &format_args!("{}", self.password.shown()))
            .finish()
    }
}

/// A CA certificate file to trust besides the system's roots, read and
/// checked at load.
#[derive(Clone, PartialEq, Eq)]
pub struct CaFile {
    pub path: String,
    /// Its PEM text, holding at least one certificate (empty when the
    /// runbook was only validated, without looking files up).
    pub pem: Vec<u8>,
}

impl fmt::Debug for CaFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.path)
    }
}

/// An email step's server.
#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "RawSmtp")]
pub struct Smtp {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub login: Option<SmtpLogin>,
    pub ca_file: Option<CaFile>,
}

impl Smtp {
    /// `mail.example.com:587 (starttls)`.
    pub fn describe(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        format!("{host}:{} ({})", self.port, self.tls.name())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSmtp {
    host: String,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    tls: SmtpTls,
    #[serde(default)]
    username: Option<SecretText>,
    #[serde(default)]
    password: Option<SecretText>,
    #[serde(default)]
    ca_file: Option<String>,
}

impl TryFrom<RawSmtp> for Smtp {
    type Error = String;
    fn try_from(r: RawSmtp) -> Result<Smtp, String> {
        let host = r.host.trim().trim_start_matches('[').trim_end_matches(']').to_string();
        if !valid_host(&host) {
            return Err(format!("smtp.host: '{}' is not a host name or an IP address", r.host));
        }
        if r.port == Some(0) {
            return Err("smtp.port: 0 is not a port".into());
        }
        if r.tls == SmtpTls::None && !is_loopback(&host) {
            return Err(format!(
                "smtp.tls: none sends the password and the mail in clear text, so it is only allowed to a loopback \
                 host (localhost, 127.0.0.1, ::1), not {host}; use starttls (port 587) or tls (port 465)"
            ));
        }
        let login = match (r.username, r.password) {
            (Some(username), Some(password)) => Some(SmtpLogin { username, password }),
            (None, None) => None,
            (Some(_), None) => return Err("smtp.password is missing: a username needs its password".into()),
            (None, Some(_)) => return Err("smtp.username is missing: a password needs its username".into()),
        };
        let ca_file = match r.ca_file {
            None => None,
            Some(_) if r.tls == SmtpTls::None => {
                return Err("smtp.ca_file applies to tls: starttls or tls, not none".into());
            }
            Some(path) => Some(read_ca(&path)?),
        };
        Ok(Smtp { port: r.port.unwrap_or_else(|| r.tls.default_port()), host, tls: r.tls, login, ca_file })
    }
}

/// The CA file's PEM, with at least one certificate. Only checked for its
/// path when the runbook is validated without its secrets (the file
/// belongs to the host it runs on, as they do).
fn read_ca(path: &str) -> Result<CaFile, String> {
    use rustls::pki_types::{pem::PemObject as _, CertificateDer};
    if path.trim().is_empty() {
        return Err("smtp.ca_file is empty; give the path of a PEM file".into());
    }
    if !resolving() {
        return Ok(CaFile { path: path.to_string(), pem: Vec::new() });
    }
    let pem = std::fs::read(path).map_err(|e| format!("smtp.ca_file: {path} cannot be read: {e}"))?;
    let certs = CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>();
    match certs {
        Ok(c) if !c.is_empty() => Ok(CaFile { path: path.to_string(), pem }),
        Ok(_) => Err(format!("smtp.ca_file: {path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")),
        Err(e) => Err(format!("smtp.ca_file: {path} is not PEM: {e}")),
    }
}

/// A DNS name (letters, digits, '-', '.', '_') or an IP address.
fn valid_host(host: &str) -> bool {
    if host.parse::<IpAddr>().is_ok() {
        return true;
    }
    !host.is_empty()
        && host.len() <= 253
        && !host.starts_with(['.', '-'])
        && !host.contains("..")
        && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

/// `localhost` (and names under it), or a loopback address.
pub fn is_loopback(host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    h == "localhost" || h.ends_with(".localhost") || h.parse::<IpAddr>().is_ok_and(|a| a.is_loopback())
}

/// An email step's server, addresses and subject.
#[derive(Clone, Debug)]
pub struct Email {
    pub smtp: Smtp,
    pub from: Mailbox,
    pub to: Vec<Mailbox>,
    /// A template; the default names the event, the node and the families.
    pub subject: Option<Template>,
}

/// The fields only some channels take, as a notify step wrote them.
pub struct Fields<'a> {
    pub channel: Channel,
    pub has_url: bool,
    pub has_headers: bool,
    pub has_routing_key: bool,
    pub bot_token: Option<&'a SecretText>,
    pub has_chat_id: bool,
    pub has_api_key: bool,
    pub smtp: Option<Smtp>,
    pub from: Option<Address>,
    pub to: Option<Vec<Address>>,
    pub subject: Option<Template>,
}

/// Checks that a notify step has what its channel needs and nothing that
/// belongs to another one; returns the email channel's settings. Each
/// error names the field and the channel (`notify telegram: chat_id is
/// missing (...)`).
pub fn check(f: Fields<'_>) -> Result<Option<Box<Email>>, String> {
    let ch = f.channel.name();
    let only = |field: &str, on: Channel, given: bool| -> Result<(), String> {
        if given && f.channel != on {
            return Err(format!("notify {ch}: {field} applies to channel {} only", on.name()));
        }
        Ok(())
    };
    only("bot_token", Channel::Telegram, f.bot_token.is_some())?;
    only("chat_id", Channel::Telegram, f.has_chat_id)?;
    only("api_key", Channel::Opsgenie, f.has_api_key)?;
    for (field, given) in [
        ("smtp", f.smtp.is_some()),
        ("from", f.from.is_some()),
        ("to", f.to.is_some()),
        ("subject", f.subject.is_some()),
    ] {
        only(field, Channel::Email, given)?;
    }
    let missing = |field: &str, hint: &str| format!("notify {ch}: {field} is missing ({hint})");
    match f.channel {
        Channel::Telegram => {
            let token = f.bot_token.ok_or_else(|| {
                missing("bot_token", "the token @BotFather gave the bot, e.g. \"${TELEGRAM_BOT_TOKEN}\"")
            })?;
            check_bot_token(token)?;
            if !f.has_chat_id {
                return Err(missing("chat_id", "the chat's number, or a public channel's @username"));
            }
            Ok(None)
        }
        Channel::Opsgenie if !f.has_api_key => {
            Err(missing("api_key", "an API integration's key, e.g. \"${OPSGENIE_API_KEY}\""))
        }
        Channel::Email => {
            for (field, given, why) in [
                ("url", f.has_url, "email goes through smtp"),
                ("headers", f.has_headers, "set them on HTTP channels"),
                ("routing_key", f.has_routing_key, "it is PagerDuty's"),
            ] {
                if given {
                    return Err(format!("notify email: {field} does not apply ({why})"));
                }
            }
            let smtp = f
                .smtp
                .ok_or_else(|| missing("smtp", "the server: smtp: { host: mail.example.com, username, password }"))?;
            let from = f.from.ok_or_else(|| missing("from", "the sender, e.g. detector@example.com"))?;
            let to = f.to.ok_or_else(|| missing("to", "a recipient or a list of them"))?;
            if to.is_empty() {
                return Err("notify email: to is an empty list; give at least one recipient".into());
            }
            Ok(Some(Box::new(Email {
                smtp,
                from: from.0,
                to: to.into_iter().map(|a| a.0).collect(),
                subject: f.subject,
            })))
        }
        _ => Ok(None),
    }
}

/// A bot token goes into the URL's path: digits, ':', then letters,
/// digits, '-' and '_'. A token from a secret is named by its reference.
fn check_bot_token(t: &SecretText) -> Result<(), String> {
    let v = t.expose();
    let ok = match v.split_once(':') {
        Some((id, key)) => {
            !id.is_empty()
                && id.chars().all(|c| c.is_ascii_digit())
                && !key.is_empty()
                && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        }
        None => false,
    };
    if ok || !resolving() {
        return Ok(());
    }
    Err(format!(
        "notify telegram: bot_token {} is not a bot token (digits, ':', then letters, digits, '-' or '_', as \
         @BotFather gives it)",
        if t.is_secret() { t.raw.clone() } else { "as written".into() }
    ))
}
