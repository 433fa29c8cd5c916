//! Inclusive ranges of ports, frame lengths and TTLs, as rules and attack
//! signatures carry them: `80`, or `1024-65535`.

use std::{fmt, str::FromStr};

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

/// `lo..=hi`; one value when `lo == hi`. Never inverted (see [`Span::new`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Span<T> {
    pub lo: T,
    pub hi: T,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SpanError {
    #[error("'{0}' is not a number or a range (give 80 or 60-80)")]
    Syntax(String),
    #[error("{value} is out of range ({min} to {max})")]
    Bounds { value: String, min: u64, max: u64 },
    #[error("the range {lo}-{hi} is inverted (the first number must not be above the second)")]
    Inverted { lo: u64, hi: u64 },
}

/// The integer types a span holds.
pub trait SpanValue: Copy + Ord + fmt::Display + Into<u64> + TryFrom<u64> {
    const MIN: u64;
    const MAX: u64;
}

impl SpanValue for u8 {
    const MIN: u64 = 0;
    const MAX: u64 = u8::MAX as u64;
}

impl SpanValue for u16 {
    const MIN: u64 = 0;
    const MAX: u64 = u16::MAX as u64;
}

impl<T: SpanValue> Span<T> {
    /// A span, refused when inverted.
    pub fn new(lo: T, hi: T) -> Result<Span<T>, SpanError> {
        if lo > hi {
            return Err(SpanError::Inverted { lo: lo.into(), hi: hi.into() });
        }
        Ok(Span { lo, hi })
    }

    pub fn one(v: T) -> Span<T> {
        Span { lo: v, hi: v }
    }

    /// The whole range of the type: matches anything.
    pub fn full() -> Span<T> {
        let lo = T::try_from(T::MIN).ok().expect("MIN fits");
        let hi = T::try_from(T::MAX).ok().expect("MAX fits");
        Span { lo, hi }
    }

    pub fn is_full(&self) -> bool {
        *self == Span::full()
    }

    pub fn contains(&self, v: T) -> bool {
        self.lo <= v && v <= self.hi
    }

    /// How many values it holds.
    pub fn width(&self) -> u64 {
        self.hi.into() - self.lo.into() + 1
    }

    /// Checks `lo` and `hi` given as wider integers (from a request).
    pub fn checked(lo: u64, hi: u64) -> Result<Span<T>, SpanError> {
        let conv = |v: u64| {
            T::try_from(v).ok().filter(|_| v >= T::MIN).ok_or(SpanError::Bounds {
                value: v.to_string(),
                min: T::MIN,
                max: T::MAX,
            })
        };
        Span::new(conv(lo)?, conv(hi)?)
    }
}

impl<T: SpanValue> FromStr for Span<T> {
    type Err = SpanError;

    fn from_str(s: &str) -> Result<Self, SpanError> {
        let num = |p: &str| -> Result<u64, SpanError> {
            let p = p.trim();
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(SpanError::Syntax(s.to_string()));
            }
            p.parse::<u64>().map_err(|_| SpanError::Bounds { value: p.to_string(), min: T::MIN, max: T::MAX })
        };
        match s.split_once('-') {
            None => {
                let v = num(s)?;
                Span::checked(v, v)
            }
            Some((a, b)) => Span::checked(num(a)?, num(b)?),
        }
    }
}

impl<T: SpanValue> fmt::Display for Span<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

/// One value is written as a number (what rules held before ranges), a
/// range as `"lo-hi"`.
impl<T: SpanValue> Serialize for Span<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.lo == self.hi {
            s.serialize_u64(self.lo.into())
        } else {
            s.serialize_str(&self.to_string())
        }
    }
}

impl<'de, T: SpanValue> Deserialize<'de> for Span<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(v) => Span::checked(v, v).map_err(de::Error::custom),
            Raw::Text(t) => t.parse().map_err(de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let p: Span<u16> = "60-80".parse().unwrap();
        assert_eq!((p.lo, p.hi), (60, 80));
        assert_eq!(p.to_string(), "60-80");
        assert_eq!("53".parse::<Span<u16>>().unwrap(), Span::one(53));
        assert_eq!(Span::<u16>::one(53).to_string(), "53");
        assert_eq!(" 1 - 2 ".trim().parse::<Span<u16>>().unwrap(), Span { lo: 1, hi: 2 });
        assert!(Span::<u8>::full().is_full());
        assert_eq!(Span::<u16>::full().width(), 65536);
    }

    #[test]
    fn refuses_bad_ranges() {
        assert_eq!("80-60".parse::<Span<u16>>().unwrap_err(), SpanError::Inverted { lo: 80, hi: 60 });
        assert!("300".parse::<Span<u8>>().unwrap_err().to_string().contains("300 is out of range (0 to 255)"));
        assert!("".parse::<Span<u16>>().is_err());
        assert!("-5".parse::<Span<u16>>().is_err());
        assert!("a-b".parse::<Span<u16>>().unwrap_err().to_string().contains("not a number or a range"));
        assert!("70000".parse::<Span<u16>>().is_err());
    }

    #[test]
    fn serde_round_trip() {
        let one: Span<u16> = serde_json::from_str("53").unwrap();
        assert_eq!(one, Span::one(53));
        assert_eq!(serde_json::to_string(&one).unwrap(), "53");
        let r: Span<u16> = serde_json::from_str("\"1024-65535\"").unwrap();
        assert_eq!(serde_json::to_string(&r).unwrap(), "\"1024-65535\"");
        assert!(serde_json::from_str::<Span<u8>>("256").is_err());
        assert!(serde_json::from_str::<Span<u16>>("\"9-1\"").is_err());
    }
}
