//! Sizes and durations on the command line: `--max-memory-mib 64`,
//! `--timeout 500ms`, turned into bytes and milliseconds; and the same units
//! written back for people (`us`, `ms`, `mib`).
//!
//! Each parser is a clap `value_parser`, so a bad value is refused with the
//! flag's name before anything runs. A value whose conversion does not fit
//! (`--max-memory-mib 1152921504606846976` is 2^80 bytes) is refused, never
//! wrapped or truncated into a small or zero limit. Nothing here reads
//! anything but its argument.

use std::time::Duration;

/// Parses `250ms`, `10s`, `5m`, `1h`, or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 500ms, 10s, 5m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("unknown unit `{unit}` in `{s}` (use ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("`{s}`: {e}"))
}

/// Parses a duration ([`parse_duration`]) into whole milliseconds, at least
/// 1; one too long for a `u64` of milliseconds is refused.
pub fn parse_millis(s: &str) -> Result<u64, String> {
    let d = parse_duration(s)?;
    u64::try_from(d.as_millis().max(1))
        .map_err(|_| format!("`{s}` is too long: at most {} ms", u64::MAX))
}

/// Parses a number of KiB into bytes.
pub fn parse_kib(s: &str) -> Result<u64, String> {
    scaled(s, 1 << 10, "KiB")
}

/// Parses a number of MiB into bytes.
pub fn parse_mib(s: &str) -> Result<u64, String> {
    scaled(s, 1 << 20, "MiB")
}

fn scaled(s: &str, unit: u64, name: &str) -> Result<u64, String> {
    let n: u64 = s
        .trim()
        .parse()
        .map_err(|e| format!("`{s}` is not a whole number of {name}: {e}"))?;
    n.checked_mul(unit).ok_or_else(|| {
        format!(
            "{n} {name} is too large: at most {} {name} (2^64 bytes is the ceiling)",
            u64::MAX / unit
        )
    })
}

/// A duration in microseconds, two decimals.
pub fn us(d: Duration) -> String {
    format!("{:.2} µs", d.as_secs_f64() * 1e6)
}

/// A duration in milliseconds, two decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// A size in MiB, two decimals.
pub fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / f64::from(1 << 20))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_convert_or_are_refused() {
        assert_eq!(parse_mib("64"), Ok(64 << 20));
        assert_eq!(parse_kib(" 3 "), Ok(3 << 10));
        assert_eq!(parse_mib("0"), Ok(0));
        let largest = u64::MAX >> 20;
        assert_eq!(parse_mib(&largest.to_string()), Ok(largest << 20));
        for over in [largest + 1, 1 << 60, u64::MAX] {
            let refused = parse_mib(&over.to_string()).unwrap_err();
            assert!(refused.contains("too large"), "{refused}");
        }
        assert!(parse_kib(&(u64::MAX / 1024 + 1).to_string()).is_err());
        for bad in ["", "-1", "1.5", "12k", "18446744073709551616"] {
            assert!(parse_mib(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_convert_or_are_refused() {
        assert_eq!(parse_millis("250ms"), Ok(250));
        assert_eq!(parse_millis("2s"), Ok(2000));
        assert_eq!(parse_millis("5m"), Ok(300_000));
        assert_eq!(parse_millis("0.1ms"), Ok(1));
        // Fits a Duration, not a u64 of milliseconds.
        let refused = parse_millis("20000000000000000s").unwrap_err();
        assert!(refused.contains("too long"), "{refused}");
        for bad in ["1e30s", "99999999999999999999999h", "-1s", "soon", "5 d"] {
            assert!(parse_millis(bad).is_err(), "{bad}");
        }
    }
}
