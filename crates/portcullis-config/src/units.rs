//! The two value types that both the config file and annotations spell as text:
//! durations (`500ms`, `30s`, `5m`, `1h`; a bare number is seconds, as in nginx) and
//! byte sizes (`512k`, `10m`, `1g`, also `Ki`/`Mi`/`Gi`; a bare number is bytes).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// The longest duration accepted: far beyond any timeout or HSTS max-age, and short
/// enough that a deadline this far from now is always a valid time.
const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Parses a duration such as `30s`. Zero is allowed; callers decide what it means.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| {
        format!("{text:?} is not a duration: expected a whole number with a unit, like 500ms, 30s, 5m or 1h")
    })?;
    let d = match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => {
            return Err(format!(
                "{text:?} has an unknown unit {unit:?}: use ms, s, m or h"
            ))
        }
    };
    if d > MAX_DURATION {
        return Err(format!("{text:?} is too long: at most 100 years (876000h)"));
    }
    Ok(d)
}

/// Parses a byte size such as `10m`. Zero is allowed; callers decide what it means.
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| {
        format!("{text:?} is not a size: expected a whole number with an optional unit, like 512k, 10m or 1g")
    })?;
    let factor: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "ki" => 1 << 10,
        "m" | "mb" | "mi" => 1 << 20,
        "g" | "gb" | "gi" => 1 << 30,
        _ => return Err(format!("{text:?} has an unknown unit {unit:?}: use k, m or g")),
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// A duration read from text with [`parse_duration`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TextDuration(pub Duration);

impl<'de> Deserialize<'de> for TextDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = number_or_string(d)?;
        parse_duration(&text)
            .map(TextDuration)
            .map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for TextDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// A byte size read from text with [`parse_byte_size`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = number_or_string(d)?;
        parse_byte_size(&text)
            .map(ByteSize)
            .map_err(serde::de::Error::custom)
    }
}

fn number_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        N(u64),
        S(String),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::N(n) => n.to_string(),
        Raw::S(s) => s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1s").is_err());
        assert_eq!(parse_duration("876000h"), Ok(MAX_DURATION));
        for huge in ["876001h", "18446744073709551615", "99999999999999999h"] {
            let error = parse_duration(huge).unwrap_err();
            assert!(error.contains("too long"), "{huge}: {error}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_byte_size("0"), Ok(0));
        assert_eq!(parse_byte_size("512k"), Ok(512 * 1024));
        assert_eq!(parse_byte_size("10m"), Ok(10 << 20));
        assert_eq!(parse_byte_size("1Gi"), Ok(1 << 30));
        assert!(parse_byte_size("1t").is_err());
        assert!(parse_byte_size("99999999999999999999g").is_err());
    }
}
