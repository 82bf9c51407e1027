//! Sizes and rates as people type and read them.
//!
//! Sizes use binary multiples (`64K` = 65536), like the rest of sluice's
//! command line. Rates are in MB/s of 10^6 bytes, the unit `lz4 -b` prints,
//! so the engine's figures and lz4's can be compared without conversion.

/// Parse `4096`, `64K`, `64KiB`, `256M`, `10G`, `1T` (binary multiples).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim().to_ascii_lowercase();
    let mult: u64 = match unit.trim_end_matches("ib").trim_end_matches('b') {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return Err(format!("bad size '{s}': unknown unit '{unit}'")),
    };
    if num.contains('.') {
        let v: f64 = num.parse().map_err(|_| format!("bad size '{s}'"))?;
        Ok((v * mult as f64).round() as u64)
    } else {
        let v: u64 = num.parse().map_err(|_| format!("bad size '{s}'"))?;
        v.checked_mul(mult)
            .ok_or_else(|| format!("size '{s}' overflows"))
    }
}

/// `812 B`, `64.0 KiB`, `10.00 GiB`: three significant-ish digits.
pub fn fmt_bytes(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < U.len() {
        v /= 1024.0;
        i += 1;
    }
    match i {
        0 => format!("{b} B"),
        _ if v >= 100.0 => format!("{v:.0} {}", U[i]),
        _ if v >= 10.0 => format!("{v:.1} {}", U[i]),
        _ => format!("{v:.2} {}", U[i]),
    }
}

/// `4 KiB`, `1 GiB` for exact multiples; else like [`fmt_bytes`].
pub fn fmt_size(b: u64) -> String {
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if b >= 1 << shift && b.is_multiple_of(1 << shift) && b >> shift < 1024 {
            return format!("{} {unit}", b >> shift);
        }
    }
    fmt_bytes(b)
}

/// Throughput in MB/s (10^6 bytes per second).
pub fn mb_per_s(bytes: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        return 0.0;
    }
    bytes as f64 / 1e6 / secs
}

/// Milliseconds with a precision that suits the magnitude.
pub fn fmt_ms(secs: f64) -> String {
    let ms = secs * 1e3;
    if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else if ms >= 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.2} ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("64K").unwrap(), 65536);
        assert_eq!(parse_size("64KiB").unwrap(), 65536);
        assert_eq!(parse_size("10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert!(parse_size("10X").is_err());
        assert!(parse_size("").is_err());
        assert_eq!(fmt_bytes(512), "512 B");
        assert_eq!(fmt_bytes(10 << 30), "10.0 GiB");
        assert_eq!(fmt_bytes(1536), "1.50 KiB");
    }
}
