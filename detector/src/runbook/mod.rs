//! Runbooks: YAML files that say what to do when an incident matches.
//!
//! - [`limits`]: what a file may cost (size, nesting), checked before the
//!   YAML parser sees it;
//! - [`schema`]: what a file may say, checked as it is read, and
//!   [`channels`]: what the notify channels that need more than a URL
//!   (Telegram, OpsGenie, email) may say;
//! - [`secret`]: `${NAME}` and `${file:PATH}` references, resolved at load;
//! - [`load`]: a directory of files, with located errors;
//! - [`trigger`]: which runbooks an incident event fires (pure);
//! - [`context`]: the attack context templates and webhooks see;
//! - [`record`]: what the history keeps of each execution;
//! - [`engine`]: running them on incident events; [`payload`] (one module
//!   per service family) and [`send`] (delivery and its retry policy): what
//!   notifications look like and sending them, [`smtp`] for mail;
//!   [`watch`]: reloading.

pub mod channels;
pub mod context;
pub mod engine;
pub mod limits;
pub mod load;
pub mod payload;
pub mod record;
pub mod schema;
pub mod secret;
pub mod send;
pub mod smtp;
pub mod trigger;
pub mod watch;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod engine_tests;
