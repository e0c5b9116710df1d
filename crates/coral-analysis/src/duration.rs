//! Durations as people write them: `100ms`, `1.5s`, `5m`, `2h`, `1h30m`.

use std::time::Duration;

/// A duration that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration {input:?}: {reason} (write e.g. 100ms, 1.5s, 5m, 2h or 1h30m; \
     units: ns, us, µs, ms, s, m, h, d)"
)]
pub struct DurationError {
    pub input: String,
    pub reason: &'static str,
}

const UNITS: &[(&str, f64)] = &[
    ("ns", 1.0),
    ("us", 1e3),
    ("µs", 1e3),
    ("ms", 1e6),
    ("s", 1e9),
    ("m", 60e9),
    ("h", 3600e9),
    ("d", 86400e9),
];

/// Parses a duration: one or more `<number><unit>` parts, units ns, us, ms, s, m, h, d.
/// A bare number is refused, since `100` could mean milliseconds or seconds.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let err = |reason| DurationError {
        input: input.to_string(),
        reason,
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(err("it is empty"));
    }
    let mut rest = s;
    let mut total_ns = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(err("expected a number"));
        }
        let value: f64 = rest[..num_len]
            .parse()
            .map_err(|_| err("the number is malformed"))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = rest[..unit_len].trim();
        if unit.is_empty() {
            return Err(err("a unit is missing"));
        }
        let scale = UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, scale)| *scale)
            .ok_or_else(|| err("unknown unit"))?;
        total_ns += value * scale;
        rest = &rest[unit_len..];
    }
    if !total_ns.is_finite() || total_ns > u64::MAX as f64 {
        return Err(err("it is too large"));
    }
    Ok(Duration::from_nanos(total_ns.round() as u64))
}

/// Formats nanoseconds compactly with three significant digits: `850µs`, `52.3ms`,
/// `1.20s`, `2m05s`.
pub fn format_duration_ns(ns: i64) -> String {
    let sign = if ns < 0 { "-" } else { "" };
    let ns = ns.unsigned_abs() as f64;
    let body = if ns < 1e3 {
        format!("{ns}ns")
    } else if ns < 1e6 {
        format!("{}µs", sig3(ns / 1e3))
    } else if ns < 1e9 {
        format!("{}ms", sig3(ns / 1e6))
    } else if ns < 60e9 {
        format!("{}s", sig3(ns / 1e9))
    } else {
        let secs = (ns / 1e9).round() as u64;
        if secs < 3600 {
            format!("{}m{:02}s", secs / 60, secs % 60)
        } else {
            format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60)
        }
    };
    format!("{sign}{body}")
}

fn sig3(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        assert_eq!(parse_duration("100ms").unwrap(), Duration::from_millis(100));
        assert_eq!(parse_duration("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(
            parse_duration(" 250us ").unwrap(),
            Duration::from_micros(250)
        );
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86400)
        );
    }

    #[test]
    fn refuses_ambiguous_or_malformed() {
        for bad in ["", "100", "1x", "ms", "1..5s", "-1s", "1e400h"] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.to_string().contains("100ms"), "{bad}: {e}");
        }
        // The units are listed, so `2 hours` is fixed without looking anything up.
        let e = parse_duration("2 hours").unwrap_err();
        assert!(
            e.to_string().contains("units: ns, us, µs, ms, s, m, h, d"),
            "{e}"
        );
    }

    #[test]
    fn formats_compactly() {
        assert_eq!(format_duration_ns(999), "999ns");
        assert_eq!(format_duration_ns(850_000), "850µs");
        assert_eq!(format_duration_ns(52_345_000), "52.3ms");
        assert_eq!(format_duration_ns(1_204_000_000), "1.20s");
        assert_eq!(format_duration_ns(125_000_000_000), "2m05s");
        assert_eq!(format_duration_ns(-2_000_000), "-2.00ms");
    }

    /// What the `status_pattern` fuzz target (`fuzz/`) checks of durations, over seeded
    /// numbers and units with junk inserted: parsing never panics, and a parsed
    /// duration written in nanoseconds parses back to itself (up to 2^53 ns, where
    /// the f64 sum is exact).
    #[test]
    fn random_durations_parse_consistently() {
        const NUMBERS: &[&str] = &["0", "1", "1.5", "250", ".5", "5.", "99999999999999999999"];
        const UNITS: &[&str] = &["ns", "us", "µs", "ms", "s", "m", "h", "d"];
        const JUNK: &[&str] = &[" ", ".", "x", "1e3", "-", "0", "µ", "ss"];
        let mut rng = fastrand::Rng::with_seed(0xd0_4a71);
        let (mut parsed, mut refused) = (0, 0);
        for _ in 0..5000 {
            let mut input = String::new();
            for _ in 0..rng.usize(1..4) {
                input.push_str(NUMBERS[rng.usize(0..NUMBERS.len())]);
                input.push_str(UNITS[rng.usize(0..UNITS.len())]);
            }
            if rng.bool() {
                let mut at = rng.usize(0..=input.len());
                while !input.is_char_boundary(at) {
                    at -= 1;
                }
                input.insert_str(at, JUNK[rng.usize(0..JUNK.len())]);
            }
            match parse_duration(&input) {
                Ok(duration) => {
                    parsed += 1;
                    let nanos = duration.as_nanos();
                    let _ = format_duration_ns(i64::try_from(nanos).unwrap_or(i64::MAX));
                    if nanos <= 1 << 53 {
                        let again = parse_duration(&format!("{nanos}ns"))
                            .unwrap_or_else(|e| panic!("{input:?} → {nanos}ns: {e}"));
                        assert_eq!(again, duration, "{input:?}");
                    }
                }
                Err(e) => {
                    refused += 1;
                    assert_eq!(e.input, input);
                }
            }
        }
        assert!(
            parsed > 300 && refused > 300,
            "{parsed} parsed, {refused} refused"
        );
    }
}
