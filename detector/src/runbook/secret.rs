//! Secrets in runbooks: `${NAME}` takes an environment variable,
//! `${file:/path}` a file's content (trimmed). The controller resolves them
//! when the runbook loads ([`Real`]), so a missing one is reported then,
//! with its file and line; afterwards only the reference
//! (`${SLACK_WEBHOOK_URL}`) is ever shown, logged or stored.
//!
//! `detector runbooks validate` checks only the references' syntax by
//! default ([`Unresolved`]): a CI pipeline has no production secrets.

use std::{cell::RefCell, fmt};

use serde::{de, Deserialize, Deserializer};

/// Where `${...}` references are looked up.
pub trait Lookup {
    fn env(&self, name: &str) -> Option<String>;
    fn file(&self, path: &str) -> Result<String, String>;
    /// False when references are only checked, never looked up (see
    /// [`Unresolved`]).
    fn resolves(&self) -> bool {
        true
    }
}

/// Checks the syntax of references and looks none up: for validating a
/// runbook directory where its secrets are not (a CI pipeline). Each
/// reference stands for [`PLACEHOLDER`]; a runbook loaded this way must
/// never run.
pub struct Unresolved;

/// What a reference stands for when it is not resolved: valid as a URL's
/// host, port, path, query or password, so the URL around it is checked.
pub const PLACEHOLDER: &str = "0";

impl Lookup for Unresolved {
    fn env(&self, _: &str) -> Option<String> {
        Some(PLACEHOLDER.into())
    }
    fn file(&self, _: &str) -> Result<String, String> {
        Ok(PLACEHOLDER.into())
    }
    fn resolves(&self) -> bool {
        false
    }
}

/// The process environment and the filesystem.
pub struct Real;

impl Lookup for Real {
    fn env(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    fn file(&self, path: &str) -> Result<String, String> {
        std::fs::read_to_string(path).map(|s| s.trim().to_string()).map_err(|e| e.to_string())
    }
}

thread_local! {
    static LOOKUP: RefCell<Option<Box<dyn Lookup>>> = const { RefCell::new(None) };
}

/// Runs `f` (a parse) with `lookup` resolving the secrets it meets.
pub fn with_lookup<T>(lookup: Box<dyn Lookup>, f: impl FnOnce() -> T) -> T {
    let old = LOOKUP.with(|l| l.replace(Some(lookup)));
    let out = f();
    LOOKUP.with(|l| *l.borrow_mut() = old);
    out
}

/// True unless the current parse only checks references ([`Unresolved`]).
pub fn resolving() -> bool {
    LOOKUP.with(|l| l.borrow().as_ref().is_none_or(|l| l.resolves()))
}

/// Replaces every `${...}` in `raw`; `Err` names what is missing, or what
/// is not a reference.
pub fn resolve(raw: &str) -> Result<String, String> {
    LOOKUP.with(|l| {
        let l = l.borrow();
        let real = Real;
        let lookup: &dyn Lookup = l.as_deref().unwrap_or(&real);
        let mut out = String::with_capacity(raw.len());
        let mut rest = raw;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after.find('}').ok_or_else(|| format!("'${{' without a closing '}}' in \"{raw}\""))?;
            let name = &after[..end];
            let value = if let Some(path) = name.strip_prefix("file:") {
                if path.trim().is_empty() {
                    return Err(format!("'${{{name}}}' names no file; write ${{file:/path/to/secret}}"));
                }
                lookup.file(path).map_err(|e| format!("secret file {path} cannot be read: {e}"))?
            } else {
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!("'${{{name}}}' is not an environment variable name"));
                }
                lookup.env(name).ok_or_else(|| format!("environment variable {name} is not set"))?
            };
            out.push_str(&value);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    })
}

/// A string that may hold secrets: what the file says, and its value.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretText {
    /// As written, with its `${...}` references: safe to show.
    pub raw: String,
    value: String,
}

impl SecretText {
    /// The resolved value, for the wire only. Never log it.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// True when the text holds a reference (so its value is secret).
    pub fn is_secret(&self) -> bool {
        self.raw.contains("${")
    }

    pub fn plain(s: &str) -> SecretText {
        SecretText { raw: s.into(), value: s.into() }
    }

    /// What may be shown of it as a secret field: its references
    /// (`${SMTP_PASSWORD}`), or `***` when any of the value is written in
    /// the file itself.
    pub fn shown(&self) -> String {
        let mut rest = self.raw.as_str();
        while let Some(start) = rest.find("${") {
            if !rest[..start].is_empty() {
                return "***".into();
            }
            match rest[start..].find('}') {
                Some(end) => rest = &rest[start + end + 1..],
                None => return "***".into(),
            }
        }
        if rest.is_empty() && !self.raw.is_empty() {
            self.raw.clone()
        } else {
            "***".into()
        }
    }
}

/// As [`SecretText::shown`]: a step's `Debug` (in a log line, a panic) must
/// not carry a secret its author wrote into the file literally.
impl fmt::Debug for SecretText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.shown())
    }
}

impl fmt::Display for SecretText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl<'de> Deserialize<'de> for SecretText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SecretText, D::Error> {
        let raw = String::deserialize(d)?;
        let value = resolve(&raw).map_err(de::Error::custom)?;
        Ok(SecretText { raw, value })
    }
}

/// An `http` or `https` URL, possibly with secrets in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretUrl(pub SecretText);

impl<'de> Deserialize<'de> for SecretUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SecretUrl, D::Error> {
        let t = SecretText::deserialize(d)?;
        if !resolving() && t.raw.trim_start().starts_with("${") {
            // The scheme and host are the secret's: nothing to check yet.
            return Ok(SecretUrl(t));
        }
        let shown = if t.is_secret() { t.raw.clone() } else { t.expose().to_string() };
        let url = url::Url::parse(t.expose()).map_err(|e| de::Error::custom(format!("bad URL {shown}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(de::Error::custom(format!("bad URL {shown}: only http:// and https:// URLs with a host")));
        }
        Ok(SecretUrl(t))
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    #[test]
    fn debug_shows_references_and_hides_literal_values() {
        let literal = SecretText::plain("hunter2");
        assert_eq!(format!("{literal:?}"), "\"***\"");
        let mixed = SecretText { raw: "Bearer ${TOKEN}".into(), value: "Bearer t0ken".into() };
        assert_eq!(format!("{mixed:?}"), "\"***\"");
        let reference = SecretText { raw: "${TOKEN}".into(), value: "t0ken".into() };
        assert_eq!(format!("{reference:?}"), "\"${TOKEN}\"");
        assert!(!format!("{:?}", vec![literal, mixed, reference]).contains("hunter2"));
    }

    /// A fixed environment for tests: `SLACK_URL`, `PD_KEY`, `HMAC`,
    /// `TG_TOKEN`, `TG_CHAT`, `OG_KEY`, `SMTP_PASSWORD`.
    pub struct Fake;

    impl Lookup for Fake {
        fn env(&self, name: &str) -> Option<String> {
            match name {
                "SLACK_URL" => Some("https://hooks.slack.com/services/T0/B0/s3cret".into()),
                "PD_KEY" => Some("R0UT1NGKEY".into()),
                "HMAC" => Some("hmac-s3cret".into()),
                "TG_TOKEN" => Some("123456:AAs3cret".into()),
                "TG_CHAT" => Some("-1001234567890".into()),
                "OG_KEY" => Some("og-s3cret".into()),
                "SMTP_PASSWORD" => Some("smtp-s3cret".into()),
                _ => None,
            }
        }
        fn file(&self, path: &str) -> Result<String, String> {
            if path == "/run/secrets/token" {
                Ok("t0ken".into())
            } else {
                Err("No such file or directory (os error 2)".into())
            }
        }
    }

    #[test]
    fn references_resolve_and_stay_hidden() {
        with_lookup(Box::new(Fake), || {
            assert_eq!(resolve("a ${PD_KEY} b ${file:/run/secrets/token}").unwrap(), "a R0UT1NGKEY b t0ken");
            assert_eq!(resolve("${NOPE}").unwrap_err(), "environment variable NOPE is not set");
            assert!(resolve("${file:/nope}").unwrap_err().contains("secret file /nope cannot be read"));
            assert!(resolve("${bad-name}").unwrap_err().contains("not an environment variable name"));
            assert!(resolve("${OPEN").unwrap_err().contains("without a closing"));
            let t: SecretText = serde_yaml::from_str("\"${SLACK_URL}\"").unwrap();
            assert_eq!(format!("{t:?} {t}"), "\"${SLACK_URL}\" ${SLACK_URL}");
            assert!(t.expose().contains("s3cret"));
            let e = serde_yaml::from_str::<SecretUrl>("ftp://x").unwrap_err().to_string();
            assert!(e.contains("only http:// and https://"), "{e}");
            assert!(resolve("${file:}").unwrap_err().contains("names no file"));
            assert!(resolving());
        });
    }

    #[test]
    fn unresolved_checks_the_syntax_only() {
        with_lookup(Box::new(Unresolved), || {
            assert!(!resolving());
            assert_eq!(resolve("Bearer ${NOT_SET_ANYWHERE}").unwrap(), "Bearer 0");
            assert_eq!(resolve("${file:/nonexistent/secret}").unwrap(), "0");
            assert!(resolve("${bad-name}").unwrap_err().contains("not an environment variable name"));
            assert!(resolve("${OPEN").unwrap_err().contains("without a closing"));
            assert!(resolve("${file:}").unwrap_err().contains("names no file"));
            // A whole-URL reference cannot be checked; one inside a URL is.
            assert!(serde_yaml::from_str::<SecretUrl>("\"${SLACK_WEBHOOK_URL}\"").is_ok());
            let ok: SecretUrl = serde_yaml::from_str("\"https://${HOST}:${PORT}/x?t=${TOKEN}\"").unwrap();
            assert_eq!(ok.0.to_string(), "https://${HOST}:${PORT}/x?t=${TOKEN}");
            let e = serde_yaml::from_str::<SecretUrl>("\"ftp://x/${TOKEN}\"").unwrap_err().to_string();
            assert!(e.contains("only http:// and https://"), "{e}");
            let e = serde_yaml::from_str::<SecretUrl>("\"https://${A/x\"").unwrap_err().to_string();
            assert!(e.contains("without a closing"), "{e}");
        });
        assert!(resolving(), "the real lookup is back after the parse");
    }
}
