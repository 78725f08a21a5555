//! Durations as people write them: `90s`, `15m`, `1h`, `1h30m`, `7d`.

use std::time::Duration;

/// Ten years: longer than any policy needs, short enough that adding it to
/// a timestamp never overflows.
const MAX_SECS: u64 = 3_650 * 86_400;

/// Parses a duration of one or more `<number><unit>` parts, unit one of
/// `s`, `m`, `h`, `d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration; write it like 90s, 15m, 1h, 1h30m or 7d");
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        total = n.checked_mul(unit).and_then(|s| total.checked_add(s)).ok_or_else(bad)?;
        digits.clear();
    }
    if !digits.is_empty() || total == 0 {
        return Err(bad());
    }
    if total > MAX_SECS {
        return Err(format!("{text:?} is longer than the longest duration Bulkhead takes, 3650d"));
    }
    Ok(Duration::from_secs(total))
}

/// The shortest form [`parse_duration`] reads back, e.g. `1h30m`.
pub fn format_duration(duration: Duration) -> String {
    let mut secs = duration.as_secs();
    if secs == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats() {
        for (text, secs) in
            [("90s", 90), ("15m", 900), ("1h", 3_600), ("1h30m", 5_400), ("7d", 604_800)]
        {
            assert_eq!(parse_duration(text).unwrap(), Duration::from_secs(secs), "{text}");
        }
        assert_eq!(format_duration(Duration::from_secs(5_400)), "1h30m");
        assert_eq!(format_duration(Duration::from_secs(86_400)), "1d");
    }

    #[test]
    fn refuses_nonsense() {
        for bad in ["", "1", "h", "0s", "1x", "-1h", "1.5h", "99999999999999999999d", "3651d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
