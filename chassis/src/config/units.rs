//! Human-friendly units in configuration: durations (`"30s"`, `"250ms"`, `"1m 30s"`) and byte
//! sizes (`"2MiB"`, `"512KB"`, or a plain number of bytes).

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Serde adapter for [`std::time::Duration`] written as a human duration string.
///
/// Use it on your own settings with `#[serde(with = "chassis::config::duration")]`:
///
/// ```
/// use std::time::Duration;
///
/// #[derive(serde::Deserialize)]
/// struct Settings {
///     #[serde(with = "chassis::config::duration")]
///     poll_interval: Duration,
/// }
/// let s: Settings = serde_json::from_str(r#"{"poll_interval":"1m 30s"}"#).unwrap();
/// assert_eq!(s.poll_interval, Duration::from_secs(90));
/// ```
pub mod duration {
    use super::*;
    use std::time::Duration;

    /// Parses a human duration (`"30s"`, `"250ms"`, `"1h 5m"`) with an error that says what is
    /// expected.
    pub fn parse(text: &str) -> Result<Duration, String> {
        humantime::parse_duration(text.trim()).map_err(|e| {
            format!("invalid duration {text:?} ({e}); expected a number with a unit, such as \"30s\", \"250ms\" or \"1m 30s\"")
        })
    }

    /// Formats a duration the way [`parse`] reads it.
    pub fn format(value: &Duration) -> String {
        humantime::format_duration(*value).to_string()
    }

    /// Deserializes a [`Duration`] from a human duration string.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration with a unit, such as \"30s\" or \"250ms\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                parse(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(DurationVisitor)
    }

    /// Serializes a [`Duration`] as a human duration string.
    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format(value))
    }
}

/// A size in bytes, written in configuration as a number of bytes or with a unit
/// (`B`, `KB`, `MB`, `GB` in powers of 1000; `KiB`, `MiB`, `GiB` in powers of 1024).
///
/// ```
/// use chassis::config::ByteSize;
///
/// assert_eq!("2MiB".parse::<ByteSize>().unwrap().bytes(), 2 * 1024 * 1024);
/// assert_eq!("1.5 KB".parse::<ByteSize>().unwrap().bytes(), 1500);
/// assert_eq!("4096".parse::<ByteSize>().unwrap().bytes(), 4096);
/// assert!("2 parsecs".parse::<ByteSize>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(u64);

impl ByteSize {
    /// A size of `bytes` bytes.
    pub const fn b(bytes: u64) -> Self {
        Self(bytes)
    }

    /// A size of `n` KiB.
    pub const fn kib(n: u64) -> Self {
        Self(n * 1024)
    }

    /// A size of `n` MiB.
    pub const fn mib(n: u64) -> Self {
        Self(n * 1024 * 1024)
    }

    /// The size in bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }

    /// The size in bytes as `usize`, saturating on 32-bit targets.
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim();
        let split = trimmed
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(split);
        let expected = "expected a number of bytes or a size with a unit, such as \"2MiB\" or \"512KB\"";
        let number: f64 = number
            .parse()
            .map_err(|_| format!("invalid size {text:?}; {expected}"))?;
        let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" | "k" => 1000,
            "mb" | "m" => 1000 * 1000,
            "gb" | "g" => 1000 * 1000 * 1000,
            "kib" => 1024,
            "mib" => 1024 * 1024,
            "gib" => 1024 * 1024 * 1024,
            other => return Err(format!("invalid size {text:?}: unknown unit {other:?}; {expected}")),
        };
        let bytes = number * multiplier as f64;
        if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
            return Err(format!("invalid size {text:?}: out of range"));
        }
        Ok(Self(bytes.round() as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
        for (size, unit) in UNITS {
            if self.0 >= size && self.0.is_multiple_of(size) {
                return write!(f, "{}{unit}", self.0 / size);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of bytes or a size with a unit, such as \"2MiB\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("invalid size {v}: must not be negative")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn sizes_round_trip_through_display() {
        for text in ["2MiB", "512KiB", "1GiB", "1000B"] {
            assert_eq!(text.parse::<ByteSize>().unwrap().to_string(), text);
        }
    }

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(duration::parse("1m 30s").unwrap(), Duration::from_secs(90));
        let err = duration::parse("30").unwrap_err();
        assert!(err.contains("expected a number with a unit"), "{err}");
    }
}
