//! Config values that carry units: durations, byte sizes and rates.
//!
//! Config files are written by people, often under pressure, so every parse
//! error quotes the offending text and says what would have been accepted.
//! Each type's `Display` output parses back to the same value, which keeps
//! dumped or regenerated configs loadable.

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

const NANOS_PER_SEC: u128 = 1_000_000_000;

const DURATION_HINT: &str = "(use ms, s, m, h or d)";

/// A span of time written with units: `250ms`, `30s`, `5m` (or `5min`), `2h`,
/// `1d`, or a compound such as `1m30s`. Compound parts must go from the
/// largest unit to the smallest, each unit at most once. `us` and `ns` are
/// also accepted so that any `std::time::Duration` can be displayed and read
/// back exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

/// Rank orders units for the largest-first rule in compound durations.
fn duration_unit(unit: &str) -> Option<(u8, u128)> {
    let (rank, nanos) = match unit {
        "d" => (6, 86_400 * NANOS_PER_SEC),
        "h" => (5, 3_600 * NANOS_PER_SEC),
        "m" | "min" => (4, 60 * NANOS_PER_SEC),
        "s" => (3, NANOS_PER_SEC),
        "ms" => (2, 1_000_000),
        "us" => (1, 1_000),
        "ns" => (0, 1),
        _ => return None,
    };
    Some((rank, nanos))
}

fn split_digits(s: &str) -> (&str, &str) {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s.split_at(end)
}

fn split_alpha(s: &str) -> (&str, &str) {
    let end = s.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(s.len());
    s.split_at(end)
}

fn nanos_to_duration(total: u128) -> Option<std::time::Duration> {
    let secs = u64::try_from(total / NANOS_PER_SEC).ok()?;
    // The remainder is below one billion, so it always fits.
    let nanos = (total % NANOS_PER_SEC) as u32;
    Some(std::time::Duration::new(secs, nanos))
}

/// Why a duration did not parse; each message quotes the text and says what would have been accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration (expected e.g. `30s` or `1m30s`)")]
    Empty,
    #[error("invalid duration `{text}`: expected a number at `{rest}`")]
    NoNumber { text: String, rest: String },
    #[error("missing unit in duration `{text}` {DURATION_HINT}")]
    NoUnit { text: String },
    #[error(
        "invalid duration `{text}`: fractions are not supported, \
         use a smaller unit (e.g. `1500ms` instead of `1.5s`)"
    )]
    Fraction { text: String },
    #[error("invalid duration `{text}`: unexpected `{after}` after `{digits}`")]
    Unexpected {
        text: String,
        after: String,
        digits: String,
    },
    #[error("unknown unit `{unit}` in duration `{text}` {DURATION_HINT}")]
    UnknownUnit { text: String, unit: String },
    #[error(
        "invalid duration `{text}`: units must go from largest to smallest, \
         each at most once (e.g. `1h30m`)"
    )]
    UnitOrder { text: String },
    #[error("duration `{text}` is too large")]
    TooLarge { text: String },
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, DurationError> {
        let text = s.trim();
        if text.is_empty() {
            return Err(DurationError::Empty);
        }
        // Summed in u128 nanoseconds: even u64::MAX days cannot overflow it,
        // so only the final conversion needs a range check.
        let mut total: u128 = 0;
        let mut prev_rank: Option<u8> = None;
        let mut rest = text;
        while !rest.is_empty() {
            let (digits, after) = split_digits(rest);
            if digits.is_empty() {
                return Err(DurationError::NoNumber {
                    text: text.into(),
                    rest: rest.into(),
                });
            }
            let after = after.trim_start();
            let (unit, after) = split_alpha(after);
            if unit.is_empty() {
                if after.is_empty() {
                    return Err(DurationError::NoUnit { text: text.into() });
                }
                if after.starts_with('.') {
                    return Err(DurationError::Fraction { text: text.into() });
                }
                return Err(DurationError::Unexpected {
                    text: text.into(),
                    after: after.into(),
                    digits: digits.into(),
                });
            }
            let Some((rank, unit_nanos)) = duration_unit(unit) else {
                return Err(DurationError::UnknownUnit {
                    text: text.into(),
                    unit: unit.into(),
                });
            };
            if prev_rank.is_some_and(|p| rank >= p) {
                return Err(DurationError::UnitOrder { text: text.into() });
            }
            prev_rank = Some(rank);
            let n: u64 = digits
                .parse()
                .map_err(|_| DurationError::TooLarge { text: text.into() })?;
            total += u128::from(n) * unit_nanos;
            rest = after.trim_start();
        }
        nanos_to_duration(total)
            .map(Duration)
            .ok_or_else(|| DurationError::TooLarge { text: text.into() })
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.is_zero() {
            return f.write_str("0s");
        }
        let secs = d.as_secs();
        let sub = d.subsec_nanos();
        let parts = [
            (secs / 86_400, "d"),
            (secs % 86_400 / 3_600, "h"),
            (secs % 3_600 / 60, "m"),
            (secs % 60, "s"),
            (u64::from(sub / 1_000_000), "ms"),
            (u64::from(sub / 1_000 % 1_000), "us"),
            (u64::from(sub % 1_000), "ns"),
        ];
        for (n, unit) in parts {
            if n != 0 {
                write!(f, "{n}{unit}")?;
            }
        }
        Ok(())
    }
}

impl From<std::time::Duration> for Duration {
    fn from(d: std::time::Duration) -> Self {
        Duration(d)
    }
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration string such as \"30s\" or \"1m30s\"")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        v.parse().map_err(E::custom)
    }

    // A bare TOML integer is the most likely mistake; give it the same
    // pointed message as the string "30" instead of a generic type error.
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
        Err(E::custom(format!("missing unit in duration `{v}` {DURATION_HINT}")))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
        Err(E::custom(format!("missing unit in duration `{v}` {DURATION_HINT}")))
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(DurationVisitor)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

const BYTE_HINT: &str = "(use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)";

/// A number of bytes: `512B`, `16KiB`, `1MiB`, `1GiB`, `10KB` (= 10,000),
/// `1MB`, `1GB`, or a bare integer meaning bytes (as a string or a TOML
/// integer). Units are case-insensitive; a space before the unit is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

const BINARY_UNITS: [(&str, u64); 4] = [("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];

const DECIMAL_UNITS: [(&str, u64); 4] = [
    ("TB", 1_000_000_000_000),
    ("GB", 1_000_000_000),
    ("MB", 1_000_000),
    ("KB", 1_000),
];

fn byte_unit(unit: &str) -> Option<u64> {
    if unit.is_empty() || unit.eq_ignore_ascii_case("b") {
        return Some(1);
    }
    BINARY_UNITS
        .iter()
        .chain(DECIMAL_UNITS.iter())
        .find(|(name, _)| name.eq_ignore_ascii_case(unit))
        .map(|&(_, factor)| factor)
}

/// Why a byte size did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ByteSizeError {
    #[error("empty byte size (expected e.g. `16KiB` or `1MB`)")]
    Empty,
    #[error("invalid byte size `{text}`: expected a number followed by an optional unit {BYTE_HINT}")]
    NoNumber { text: String },
    #[error(
        "invalid byte size `{text}`: fractions are not supported, \
         use a smaller unit (e.g. `1536MiB` instead of `1.5GiB`)"
    )]
    Fraction { text: String },
    #[error("unknown unit `{unit}` in byte size `{text}` {BYTE_HINT}")]
    UnknownUnit { text: String, unit: String },
    #[error("byte size `{text}` is too large (max {} bytes)", u64::MAX)]
    TooLarge { text: String },
}

impl FromStr for ByteSize {
    type Err = ByteSizeError;

    fn from_str(s: &str) -> Result<Self, ByteSizeError> {
        let text = s.trim();
        if text.is_empty() {
            return Err(ByteSizeError::Empty);
        }
        let (digits, unit) = split_digits(text);
        if digits.is_empty() {
            return Err(ByteSizeError::NoNumber { text: text.into() });
        }
        let unit = unit.trim_start();
        if unit.starts_with('.') {
            return Err(ByteSizeError::Fraction { text: text.into() });
        }
        let Some(factor) = byte_unit(unit) else {
            return Err(ByteSizeError::UnknownUnit {
                text: text.into(),
                unit: unit.into(),
            });
        };
        let too_large = || ByteSizeError::TooLarge { text: text.into() };
        let n: u64 = digits.parse().map_err(|_| too_large())?;
        n.checked_mul(factor).map(ByteSize).ok_or_else(too_large)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n != 0 {
            // Binary first: buffer and limit sizes are usually powers of two.
            for (name, factor) in BINARY_UNITS.iter().chain(DECIMAL_UNITS.iter()) {
                if n % factor == 0 {
                    return write!(f, "{}{name}", n / factor);
                }
            }
        }
        write!(f, "{n}B")
    }
}

impl From<u64> for ByteSize {
    fn from(n: u64) -> Self {
        ByteSize(n)
    }
}

impl From<ByteSize> for u64 {
    fn from(b: ByteSize) -> Self {
        b.0
    }
}

struct ByteSizeVisitor;

impl Visitor<'_> for ByteSizeVisitor {
    type Value = ByteSize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a byte count or a size string such as \"16KiB\"")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
        v.parse().map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
        Ok(ByteSize(v))
    }

    // TOML integers arrive as i64.
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
        u64::try_from(v)
            .map(ByteSize)
            .map_err(|_| E::custom(format!("byte size `{v}` cannot be negative")))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ByteSizeVisitor)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `count` events per `per`: `10/s`, `600/min` (or `600/m`), `100/h`, or
/// with an explicit period such as `5/10s` or `90/1m30s`. Both the count and
/// the period must be non-zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: std::time::Duration,
}

const RATE_HINT: &str = "(expected e.g. `10/s`, `600/min` or `5/10s`)";

/// Why a rate did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateError {
    #[error("missing `/` in rate `{text}` {RATE_HINT}")]
    NoSlash { text: String },
    #[error("invalid count `{count}` in rate `{text}` {RATE_HINT}")]
    BadCount { text: String, count: String },
    #[error("count `{count}` in rate `{text}` is too large (max {})", u32::MAX)]
    CountTooLarge { text: String, count: String },
    #[error("count in rate `{text}` must be greater than 0")]
    ZeroCount { text: String },
    #[error("missing period in rate `{text}` {RATE_HINT}")]
    NoPeriod { text: String },
    #[error("unknown unit `{unit}` in rate `{text}` (use ms, s, min, h or d)")]
    UnknownUnit { text: String, unit: String },
    #[error("invalid period in rate `{text}`: {source}")]
    BadPeriod { text: String, source: DurationError },
    #[error("period in rate `{text}` must be greater than 0")]
    ZeroPeriod { text: String },
}

impl FromStr for Rate {
    type Err = RateError;

    fn from_str(s: &str) -> Result<Self, RateError> {
        let text = s.trim();
        let Some((count_text, per_text)) = text.split_once('/') else {
            return Err(RateError::NoSlash { text: text.into() });
        };
        let count_text = count_text.trim();
        if count_text.is_empty() || !count_text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(RateError::BadCount {
                text: text.into(),
                count: count_text.into(),
            });
        }
        let count: u32 = count_text.parse().map_err(|_| RateError::CountTooLarge {
            text: text.into(),
            count: count_text.into(),
        })?;
        if count == 0 {
            return Err(RateError::ZeroCount { text: text.into() });
        }
        let per_text = per_text.trim();
        if per_text.is_empty() {
            return Err(RateError::NoPeriod { text: text.into() });
        }
        // A bare unit means one of it: `10/s` is `10/1s`.
        let per = if per_text.bytes().all(|b| b.is_ascii_alphabetic()) {
            match duration_unit(per_text).and_then(|(_, nanos)| nanos_to_duration(nanos)) {
                Some(d) => d,
                None => {
                    return Err(RateError::UnknownUnit {
                        text: text.into(),
                        unit: per_text.into(),
                    })
                }
            }
        } else {
            per_text
                .parse::<Duration>()
                .map_err(|source| RateError::BadPeriod {
                    text: text.into(),
                    source,
                })?
                .0
        };
        if per.is_zero() {
            return Err(RateError::ZeroPeriod { text: text.into() });
        }
        Ok(Rate { count, per })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_nanos() {
            1_000_000 => Some("ms"),
            NANOS_PER_SEC => Some("s"),
            n if n == 60 * NANOS_PER_SEC => Some("min"),
            n if n == 3_600 * NANOS_PER_SEC => Some("h"),
            n if n == 86_400 * NANOS_PER_SEC => Some("d"),
            _ => None,
        };
        match unit {
            Some(unit) => write!(f, "{}/{unit}", self.count),
            None => write!(f, "{}/{}", self.count, Duration(self.per)),
        }
    }
}

struct RateVisitor;

impl Visitor<'_> for RateVisitor {
    type Value = Rate;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a rate string such as \"10/s\" or \"600/min\"")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Rate, E> {
        v.parse().map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(RateVisitor)
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration as StdDuration;

    fn dur(s: &str) -> StdDuration {
        s.parse::<Duration>().unwrap().0
    }

    fn dur_err(s: &str) -> String {
        s.parse::<Duration>().unwrap_err().to_string()
    }

    fn bytes(s: &str) -> u64 {
        s.parse::<ByteSize>().unwrap().0
    }

    fn bytes_err(s: &str) -> String {
        s.parse::<ByteSize>().unwrap_err().to_string()
    }

    fn rate(s: &str) -> (u32, StdDuration) {
        let r: Rate = s.parse().unwrap();
        (r.count, r.per)
    }

    fn rate_err(s: &str) -> String {
        s.parse::<Rate>().unwrap_err().to_string()
    }

    #[test]
    fn duration_formats() {
        assert_eq!(dur("250ms"), StdDuration::from_millis(250));
        assert_eq!(dur("30s"), StdDuration::from_secs(30));
        assert_eq!(dur("5m"), StdDuration::from_secs(300));
        assert_eq!(dur("5min"), StdDuration::from_secs(300));
        assert_eq!(dur("2h"), StdDuration::from_secs(7_200));
        assert_eq!(dur("1d"), StdDuration::from_secs(86_400));
        assert_eq!(dur("1m30s"), StdDuration::from_secs(90));
        assert_eq!(dur("1d2h3m4s5ms"), StdDuration::from_millis(93_784_005));
        assert_eq!(dur("0s"), StdDuration::ZERO);
        assert_eq!(dur("0ms"), StdDuration::ZERO);
        assert_eq!(dur(" 1m 30s "), StdDuration::from_secs(90));
        assert_eq!(dur("30 s"), StdDuration::from_secs(30));
        assert_eq!(dur("1500us"), StdDuration::from_micros(1_500));
        assert_eq!(dur("7ns"), StdDuration::from_nanos(7));
    }

    #[test]
    fn duration_errors() {
        assert_eq!(dur_err("30"), "missing unit in duration `30` (use ms, s, m, h or d)");
        assert_eq!(
            dur_err("1m30"),
            "missing unit in duration `1m30` (use ms, s, m, h or d)"
        );
        assert_eq!(
            dur_err("5x"),
            "unknown unit `x` in duration `5x` (use ms, s, m, h or d)"
        );
        assert_eq!(
            dur_err("5sec"),
            "unknown unit `sec` in duration `5sec` (use ms, s, m, h or d)"
        );
        assert_eq!(dur_err("s"), "invalid duration `s`: expected a number at `s`");
        assert_eq!(dur_err("-5s"), "invalid duration `-5s`: expected a number at `-5s`");
        assert!(dur_err("").contains("empty duration"));
        assert!(dur_err("1.5s").contains("fractions are not supported"));
        assert!(dur_err("1.5s").contains("`1.5s`"));
        assert!(dur_err("30s1m").contains("largest to smallest"));
        assert!(dur_err("1s1s").contains("largest to smallest"));
        assert!(dur_err("5m1min").contains("largest to smallest"));
        assert_eq!(
            dur_err("99999999999999999999s"),
            "duration `99999999999999999999s` is too large"
        );
        assert_eq!(
            dur_err("18446744073709551615d"),
            "duration `18446744073709551615d` is too large"
        );
        assert!(dur_err("5s!").contains("expected a number at `!`"));
    }

    #[test]
    fn duration_display_round_trips() {
        let cases = [
            (StdDuration::ZERO, "0s"),
            (StdDuration::from_millis(250), "250ms"),
            (StdDuration::from_secs(30), "30s"),
            (StdDuration::from_secs(90), "1m30s"),
            (StdDuration::from_secs(300), "5m"),
            (StdDuration::from_secs(7_200), "2h"),
            (StdDuration::from_secs(86_400), "1d"),
            (StdDuration::from_millis(93_784_005), "1d2h3m4s5ms"),
            (StdDuration::new(1, 1), "1s1ns"),
            (StdDuration::MAX, "213503982334601d7h15s999ms999us999ns"),
        ];
        for (d, shown) in cases {
            assert_eq!(Duration(d).to_string(), shown);
            assert_eq!(dur(shown), d, "{shown}");
        }
        for s in ["5min", "60s", "1h60m", "1000ms"] {
            let d = Duration(dur(s));
            assert_eq!(d.to_string().parse::<Duration>().unwrap(), d, "{s}");
        }
    }

    #[test]
    fn byte_size_formats() {
        assert_eq!(bytes("512B"), 512);
        assert_eq!(bytes("1000"), 1_000);
        assert_eq!(bytes("0"), 0);
        assert_eq!(bytes("16KiB"), 16 * 1024);
        assert_eq!(bytes("1MiB"), 1 << 20);
        assert_eq!(bytes("1GiB"), 1 << 30);
        assert_eq!(bytes("2TiB"), 2 << 40);
        assert_eq!(bytes("10KB"), 10_000);
        assert_eq!(bytes("1MB"), 1_000_000);
        assert_eq!(bytes("1GB"), 1_000_000_000);
        assert_eq!(bytes("3TB"), 3_000_000_000_000);
        assert_eq!(bytes("16 kib"), 16 * 1024);
        assert_eq!(bytes("1mb"), 1_000_000);
        assert_eq!(bytes("18446744073709551615"), u64::MAX);
    }

    #[test]
    fn byte_size_errors() {
        assert_eq!(
            bytes_err("10XB"),
            "unknown unit `XB` in byte size `10XB` (use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)"
        );
        assert!(bytes_err("KiB").contains("`KiB`: expected a number"));
        assert!(bytes_err("-1").contains("`-1`"));
        assert!(bytes_err("").contains("empty byte size"));
        assert!(bytes_err("1.5GiB").contains("fractions are not supported"));
        assert_eq!(
            bytes_err("18446744073709551616"),
            "byte size `18446744073709551616` is too large (max 18446744073709551615 bytes)"
        );
        assert!(bytes_err("16777216TiB").contains("`16777216TiB` is too large"));
        assert!(bytes_err("20000000TB").contains("too large"));
    }

    #[test]
    fn byte_size_display_round_trips() {
        let cases = [
            (0, "0B"),
            (512, "512B"),
            (1_000, "1KB"),
            (1_500, "1500B"),
            (16 * 1024, "16KiB"),
            (1 << 20, "1MiB"),
            (3 << 30, "3GiB"),
            (5 << 40, "5TiB"),
            (10_000, "10KB"),
            (2_000_000, "2MB"),
            (u64::MAX, "18446744073709551615B"),
        ];
        for (n, shown) in cases {
            assert_eq!(ByteSize(n).to_string(), shown);
            assert_eq!(bytes(shown), n, "{shown}");
        }
    }

    #[test]
    fn rate_formats() {
        assert_eq!(rate("10/s"), (10, StdDuration::from_secs(1)));
        assert_eq!(rate("600/min"), (600, StdDuration::from_secs(60)));
        assert_eq!(rate("600/m"), (600, StdDuration::from_secs(60)));
        assert_eq!(rate("100/h"), (100, StdDuration::from_secs(3_600)));
        assert_eq!(rate("1000/d"), (1000, StdDuration::from_secs(86_400)));
        assert_eq!(rate("5/10s"), (5, StdDuration::from_secs(10)));
        assert_eq!(rate("90/1m30s"), (90, StdDuration::from_secs(90)));
        assert_eq!(rate("3/500ms"), (3, StdDuration::from_millis(500)));
        assert_eq!(rate(" 10 / s "), (10, StdDuration::from_secs(1)));
    }

    #[test]
    fn rate_errors() {
        assert_eq!(
            rate_err("10"),
            "missing `/` in rate `10` (expected e.g. `10/s`, `600/min` or `5/10s`)"
        );
        assert_eq!(rate_err("0/s"), "count in rate `0/s` must be greater than 0");
        assert_eq!(rate_err("5/0s"), "period in rate `5/0s` must be greater than 0");
        assert!(rate_err("x/s").starts_with("invalid count `x` in rate `x/s`"));
        assert!(rate_err("-1/s").starts_with("invalid count `-1` in rate `-1/s`"));
        assert!(rate_err("5000000000/s").contains("count `5000000000` in rate `5000000000/s` is too large"));
        assert!(rate_err("5/").starts_with("missing period in rate `5/`"));
        assert_eq!(
            rate_err("5/sec"),
            "unknown unit `sec` in rate `5/sec` (use ms, s, min, h or d)"
        );
        assert_eq!(
            rate_err("5/10"),
            "invalid period in rate `5/10`: missing unit in duration `10` (use ms, s, m, h or d)"
        );
    }

    #[test]
    fn rate_display_round_trips() {
        for (s, shown) in [
            ("10/s", "10/s"),
            ("600/min", "600/min"),
            ("600/m", "600/min"),
            ("100/h", "100/h"),
            ("7/d", "7/d"),
            ("3/ms", "3/ms"),
            ("5/10s", "5/10s"),
            ("90/1m30s", "90/1m30s"),
            ("60/60s", "60/min"),
        ] {
            let r: Rate = s.parse().unwrap();
            assert_eq!(r.to_string(), shown, "{s}");
            assert_eq!(shown.parse::<Rate>().unwrap(), r, "{s}");
        }
        let odd = Rate {
            count: 1,
            per: StdDuration::new(2, 5),
        };
        assert_eq!(odd.to_string().parse::<Rate>().unwrap(), odd);
    }

    #[derive(Debug, Deserialize, Serialize, PartialEq)]
    struct Limits {
        idle: Duration,
        max_frame: ByteSize,
        buffer: ByteSize,
        connects: Rate,
    }

    #[test]
    fn toml_deserialize() {
        let cfg: Limits = toml::from_str(
            r#"
            idle = "1m30s"
            max_frame = "16KiB"
            buffer = 4096
            connects = "600/min"
            "#,
        )
        .unwrap();
        assert_eq!(
            cfg,
            Limits {
                idle: Duration(StdDuration::from_secs(90)),
                max_frame: ByteSize(16 * 1024),
                buffer: ByteSize(4096),
                connects: Rate {
                    count: 600,
                    per: StdDuration::from_secs(60)
                },
            }
        );

        // Serialising uses Display and reads back to the same value.
        let text = toml::to_string(&cfg).unwrap();
        assert!(text.contains(r#"idle = "1m30s""#), "{text}");
        assert!(text.contains(r#"buffer = "4KiB""#), "{text}");
        assert_eq!(toml::from_str::<Limits>(&text).unwrap(), cfg);
    }

    fn toml_err(doc: &str) -> String {
        toml::from_str::<Limits>(doc).unwrap_err().to_string()
    }

    #[test]
    fn toml_errors_mention_the_text() {
        let base = |idle: &str, frame: &str, rate: &str| {
            format!("idle = {idle}\nmax_frame = {frame}\nbuffer = 1\nconnects = {rate}\n")
        };

        let e = toml_err(&base(r#""30""#, r#""1KiB""#, r#""1/s""#));
        assert!(
            e.contains("missing unit in duration `30` (use ms, s, m, h or d)"),
            "{e}"
        );
        assert!(e.contains("line 1"), "{e}");

        let e = toml_err(&base("30", r#""1KiB""#, r#""1/s""#));
        assert!(e.contains("missing unit in duration `30`"), "{e}");

        let e = toml_err(&base(r#""1s""#, r#""12 parsecs""#, r#""1/s""#));
        assert!(e.contains("unknown unit `parsecs` in byte size `12 parsecs`"), "{e}");
        assert!(e.contains("line 2"), "{e}");

        let e = toml_err(&base(r#""1s""#, "-5", r#""1/s""#));
        assert!(e.contains("byte size `-5` cannot be negative"), "{e}");

        let e = toml_err(&base(r#""1s""#, r#""1KiB""#, r#""0/min""#));
        assert!(e.contains("count in rate `0/min` must be greater than 0"), "{e}");
        assert!(e.contains("line 4"), "{e}");

        let e = toml_err(&base(r#""1s""#, r#""1KiB""#, "10"));
        assert!(e.contains("rate string"), "{e}");
    }
}
