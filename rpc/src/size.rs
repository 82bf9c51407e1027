//! Byte sizes as people write them, and as people want to read them.
//!
//! This module owns the one grammar for sizes used by the control plane: JSON-RPC
//! params (`"size": 4294967296` or `"size": "4G"`), the `sluice` CLI (`10G`), and the
//! human-readable output of both (`16.0 GiB`). Keeping it in one place means the CLI
//! rejects exactly what the daemon would reject, with the same message.
//!
//! Grammar (decided here, documented for users in `sluice --help`):
//!
//! * a plain integer is bytes: `4096`;
//! * an optional unit `K`, `M`, `G`, `T`, `P`, `E` (case-insensitive), optionally followed
//!   by `iB` or `B`; **all units are binary multiples** (`1K` = `1KB` = `1KiB` = 1024),
//!   as in SPDK, qemu-img and fio, because block sizes are powers of two and a user
//!   writing `4K` never means 4000;
//! * an optional decimal fraction, accepted only when the result is a whole number of
//!   bytes (`1.5G` is fine, `1.3K` and `0.5` are not: storage has no half bytes, and
//!   silently rounding would create a volume of a size nobody asked for);
//! * whitespace around the number and between number and unit is allowed, so that the
//!   output of [`format_size`] (`16.0 GiB`) parses back;
//! * negative values, overflow past `u64::MAX` and anything else are errors that quote
//!   the input.

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// Why a size could not be understood. Every variant quotes the input so that the
/// message stands on its own in a JSON-RPC error or on a terminal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("invalid size: empty string")]
    Empty,
    #[error("invalid size {0:?}: sizes cannot be negative")]
    Negative(String),
    #[error(
        "invalid size {0:?}: expected bytes, optionally with a unit \
         K, M, G, T, P or E (binary multiples), e.g. \"4096\", \"512M\", \"1.5GiB\""
    )]
    Syntax(String),
    #[error(
        "invalid size {input:?}: unknown unit {unit:?} (use K, M, G, T, P or E, \
         optionally followed by iB or B)"
    )]
    UnknownUnit { input: String, unit: String },
    #[error("invalid size {0:?}: not a whole number of bytes")]
    Fractional(String),
    #[error("invalid size {0:?}: larger than the maximum of 18446744073709551615 bytes")]
    Overflow(String),
    #[error("invalid size {0}: expected an integer number of bytes or a string like \"4G\"")]
    WrongType(String),
}

/// Parses a size string per the grammar in the module docs.
pub fn parse_size(input: &str) -> Result<u64, SizeError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(SizeError::Empty);
    }
    if s.starts_with('-') {
        return Err(SizeError::Negative(input.to_string()));
    }
    let syntax = || SizeError::Syntax(input.to_string());

    let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
    if int_len == 0 {
        return Err(syntax());
    }
    let (int_digits, rest) = s.split_at(int_len);
    let (frac_digits, rest) = match rest.strip_prefix('.') {
        Some(after_dot) => {
            let n = after_dot.bytes().take_while(u8::is_ascii_digit).count();
            if n == 0 {
                return Err(syntax());
            }
            after_dot.split_at(n)
        }
        None => ("", rest),
    };
    let unit = rest.trim_start();
    let shift = unit_shift(unit).ok_or_else(|| {
        if unit.bytes().all(|b| b.is_ascii_alphabetic()) {
            SizeError::UnknownUnit {
                input: input.to_string(),
                unit: unit.to_string(),
            }
        } else {
            syntax()
        }
    })?;

    let overflow = || SizeError::Overflow(input.to_string());
    let int: u64 = int_digits.parse().map_err(|_| overflow())?;
    let whole = u64::try_from(u128::from(int) << shift).map_err(|_| overflow())?;
    let frac =
        frac_bytes(frac_digits, shift).ok_or_else(|| SizeError::Fractional(input.to_string()))?;
    whole.checked_add(frac).ok_or_else(overflow)
}

/// The power of two a unit multiplies by, or `None` if it is not a unit we know.
fn unit_shift(unit: &str) -> Option<u32> {
    let lower = unit.to_ascii_lowercase();
    let prefix = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b'))
        .unwrap_or(&lower);
    // "B" alone and "" mean bytes; "iB" alone is not a unit.
    if prefix.is_empty() {
        return (lower != "ib").then_some(0);
    }
    let shift = match prefix {
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        "p" => 50,
        "e" => 60,
        _ => return None,
    };
    Some(shift)
}

/// Exact value in bytes of `0.<digits> * 2^shift`, or `None` if that is not whole.
///
/// Done in integers, not floats, so that `1.1G` is rejected rather than rounded and a
/// 40-digit input cannot sneak through float imprecision. `0.d * 2^s` is whole iff
/// `d * 2^s` is divisible by `10^f = 5^f * 2^f`.
fn frac_bytes(digits: &str, shift: u32) -> Option<u64> {
    let digits = digits.trim_end_matches('0');
    if digits.is_empty() {
        return Some(0);
    }
    // 5^f must fit in u128 and d < 10^f must too: f <= 38 covers both.
    let f = u32::try_from(digits.len()).ok().filter(|&f| f <= 38)?;
    let d: u128 = digits.parse().ok()?;
    let five_f = 5u128.checked_pow(f)?;
    // d = q * 5^f with q < 2^f, so the value is q * 2^shift / 2^f.
    let q = d / five_f;
    if q * five_f != d {
        return None;
    }
    let bytes = if shift >= f {
        q << (shift - f)
    } else {
        let drop = f - shift;
        if q.trailing_zeros() < drop {
            return None;
        }
        q >> drop
    };
    u64::try_from(bytes).ok()
}

/// Parses a size given as a JSON value: a non-negative integer (bytes) or a string in
/// the grammar of [`parse_size`].
pub fn size_from_json(value: &serde_json::Value) -> Result<u64, SizeError> {
    use serde_json::Value;
    match value {
        Value::String(s) => parse_size(s),
        Value::Number(n) => {
            if let Some(v) = n.as_u64() {
                Ok(v)
            } else if n.as_i64().is_some() || n.as_f64().is_some_and(|f| f < 0.0) {
                Err(SizeError::Negative(n.to_string()))
            } else {
                // Floats, even 4096.0: a size on the wire is an integer or a string.
                Err(SizeError::WrongType(n.to_string()))
            }
        }
        other => Err(SizeError::WrongType(other.to_string())),
    }
}

const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];

/// Formats bytes for humans: `"512 B"`, `"1.5 KiB"`, `"16.0 GiB"`.
///
/// One decimal is enough to compare sizes at a glance; exact values are one `--json`
/// away. The unit is chosen so the number shown stays below 1024 after rounding
/// (1048575 bytes is `1.0 MiB`, not `1024.0 KiB`).
pub fn format_size(bytes: u64) -> String {
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut unit = (63 - bytes.leading_zeros()) as usize / 10;
    let mut value = bytes as f64 / (1u64 << (10 * unit)) as f64;
    if (value * 10.0).round() >= 10240.0 && unit + 1 < UNITS.len() {
        unit += 1;
        value /= 1024.0;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A size in bytes that deserializes from either an integer or a size string, and
/// serializes as a plain integer.
///
/// Use it in typed RPC params (`size: ByteSize`, `chunk_size: Option<ByteSize>`) so
/// that `{"size": "4G"}` and `{"size": 4294967296}` are the same request, and in clap
/// arguments through its [`FromStr`] impl.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl From<ByteSize> for u64 {
    fn from(size: ByteSize) -> u64 {
        size.0
    }
}

impl FromStr for ByteSize {
    type Err = SizeError;
    fn from_str(s: &str) -> Result<Self, SizeError> {
        parse_size(s).map(ByteSize)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_size(self.0))
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size: an integer number of bytes or a string like \"4G\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(SizeError::Negative(v.to_string())))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ByteSize, E> {
                Err(E::custom(if v < 0.0 {
                    SizeError::Negative(v.to_string())
                } else {
                    SizeError::WrongType(v.to_string())
                }))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_size(v).map(ByteSize).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const K: u64 = 1 << 10;
    const M: u64 = 1 << 20;
    const G: u64 = 1 << 30;
    const T: u64 = 1 << 40;

    #[test]
    fn plain_integers_are_bytes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("  4096\n"), Ok(4096));
        assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
        assert_eq!(parse_size("007"), Ok(7));
    }

    #[test]
    fn units_are_binary_and_case_insensitive_with_optional_ib_or_b() {
        for (s, v) in [
            ("64K", 64 * K),
            ("64k", 64 * K),
            ("64KB", 64 * K),
            ("64KiB", 64 * K),
            ("64kib", 64 * K),
            ("512M", 512 * M),
            ("4G", 4 * G),
            ("4 GiB", 4 * G),
            ("2T", 2 * T),
            ("1P", 1 << 50),
            ("1E", 1 << 60),
            ("15E", 15 << 60),
            ("100B", 100),
            ("100 b", 100),
        ] {
            assert_eq!(parse_size(s), Ok(v), "{s}");
        }
    }

    #[test]
    fn fractions_only_when_whole_bytes() {
        assert_eq!(parse_size("1.5G"), Ok(G + G / 2));
        assert_eq!(parse_size("0.5K"), Ok(512));
        assert_eq!(parse_size("1.0"), Ok(1));
        assert_eq!(
            parse_size("2.000000000000000000000000000000000000000000M"),
            Ok(2 * M)
        );
        assert_eq!(parse_size("16.0 GiB"), Ok(16 * G));
        // 2^-19 has 19 decimals, times 2^60 is whole.
        assert_eq!(parse_size("0.0000019073486328125E"), Ok(1 << 41));
        assert_eq!(parse_size("0.0009765625K"), Ok(1));
        assert!(matches!(parse_size("1.3K"), Err(SizeError::Fractional(_))));
        assert!(matches!(parse_size("0.5"), Err(SizeError::Fractional(_))));
        assert!(matches!(parse_size("1.1G"), Err(SizeError::Fractional(_))));
        assert!(matches!(
            parse_size("0.00048828125K"),
            Err(SizeError::Fractional(_))
        ));
        assert!(matches!(
            parse_size("1.00000000000000000000000000000000000000001G"),
            Err(SizeError::Fractional(_))
        ));
    }

    #[test]
    fn rejects_negative_overflow_and_garbage_with_the_input_quoted() {
        assert_eq!(parse_size(""), Err(SizeError::Empty));
        assert_eq!(parse_size("   "), Err(SizeError::Empty));
        assert!(matches!(parse_size("-1"), Err(SizeError::Negative(_))));
        assert!(matches!(parse_size("-4G"), Err(SizeError::Negative(_))));
        assert!(matches!(
            parse_size("18446744073709551616"),
            Err(SizeError::Overflow(_))
        ));
        assert!(matches!(parse_size("16E"), Err(SizeError::Overflow(_))));
        assert!(matches!(
            parse_size("99999999999999999999999G"),
            Err(SizeError::Overflow(_))
        ));
        assert!(matches!(
            parse_size("15.9999999E"),
            Err(SizeError::Fractional(_))
        ));
        assert!(matches!(
            parse_size("4X"),
            Err(SizeError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_size("4GG"),
            Err(SizeError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_size("4iB"),
            Err(SizeError::UnknownUnit { .. })
        ));
        for garbage in [
            "G", "abc", "+4", "4.", ".5", "4 G B", "1e3", "4G!", "0x10", "4,096",
        ] {
            assert!(parse_size(garbage).is_err(), "{garbage} should be rejected");
        }
        let msg = parse_size("4X").unwrap_err().to_string();
        assert!(msg.contains("\"4X\"") && msg.contains("\"X\""), "{msg}");
    }

    #[test]
    fn json_values() {
        assert_eq!(size_from_json(&json!(4096)), Ok(4096));
        assert_eq!(size_from_json(&json!("4G")), Ok(4 * G));
        assert!(matches!(
            size_from_json(&json!(-1)),
            Err(SizeError::Negative(_))
        ));
        assert!(matches!(
            size_from_json(&json!(-1.5)),
            Err(SizeError::Negative(_))
        ));
        assert!(matches!(
            size_from_json(&json!(1.5)),
            Err(SizeError::WrongType(_))
        ));
        assert!(matches!(
            size_from_json(&json!(4096.0)),
            Err(SizeError::WrongType(_))
        ));
        assert!(matches!(
            size_from_json(&json!(true)),
            Err(SizeError::WrongType(_))
        ));
        assert!(matches!(
            size_from_json(&json!(null)),
            Err(SizeError::WrongType(_))
        ));
    }

    #[test]
    fn byte_size_deserializes_from_both_forms_and_serializes_as_integer() {
        #[derive(Deserialize)]
        struct P {
            size: ByteSize,
            chunk: Option<ByteSize>,
        }
        let p: P = serde_json::from_value(json!({"size": "1.5G", "chunk": 65536})).unwrap();
        assert_eq!(
            (p.size, p.chunk),
            (ByteSize(G + G / 2), Some(ByteSize(64 * K)))
        );
        for bad in [
            json!({"size": -1}),
            json!({"size": 1.5}),
            json!({"size": "4X"}),
            json!({"size": []}),
        ] {
            assert!(serde_json::from_value::<P>(bad.clone()).is_err(), "{bad}");
        }
        let err = serde_json::from_value::<P>(json!({"size": -5}))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("negative"), "{err}");
        assert_eq!(serde_json::to_value(ByteSize(7)).unwrap(), json!(7));
        assert_eq!("64K".parse::<ByteSize>(), Ok(ByteSize(64 * K)));
    }

    #[test]
    fn format_for_humans() {
        assert_eq!(format_size(0), "0 B");
        assert_eq!(format_size(1023), "1023 B");
        assert_eq!(format_size(1024), "1.0 KiB");
        assert_eq!(format_size(1536), "1.5 KiB");
        assert_eq!(format_size(M - 1), "1.0 MiB");
        assert_eq!(format_size(16 * G), "16.0 GiB");
        assert_eq!(format_size(3 * T + T / 4), "3.2 TiB");
        assert_eq!(format_size(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn formatted_sizes_parse_back_when_exact() {
        for v in [0, 512, K, 1536, 16 * G, 5 * T / 2] {
            assert_eq!(parse_size(&format_size(v)), Ok(v), "{v}");
        }
    }
}
