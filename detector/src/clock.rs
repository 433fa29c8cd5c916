//! The wall clock, in the Unix milliseconds that incidents, rules and the
//! history use. The pure modules take the time as an argument; the
//! adapters read it here.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
