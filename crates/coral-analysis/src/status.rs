//! HTTP status-code patterns: `500`, `5xx`, `4xx,503`, and `error` for spans whose
//! OpenTelemetry status is ERROR (useful for non-HTTP spans).

use std::fmt;
use std::ops::RangeInclusive;

/// A pattern that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid status-code pattern {input:?}: {reason} \
     (write e.g. 500, 5xx, 4xx,503 or error)"
)]
pub struct StatusPatternError {
    pub input: String,
    pub reason: String,
}

/// One alternative of a [`StatusPattern`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusTerm {
    /// HTTP status within this range (`500` is 500..=500, `5xx` is 500..=599).
    Http(RangeInclusive<i32>),
    /// OpenTelemetry span status ERROR.
    OtelError,
}

/// A set of alternatives; a span matches if any term matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusPattern {
    terms: Vec<StatusTerm>,
}

/// OTLP `STATUS_CODE_ERROR`.
pub const OTEL_STATUS_ERROR: i32 = 2;

impl StatusPattern {
    /// Parses a comma-separated list of terms.
    pub fn parse(input: &str) -> Result<Self, StatusPatternError> {
        let err = |reason: String| StatusPatternError {
            input: input.to_string(),
            reason,
        };
        let mut terms = Vec::new();
        for raw in input.split(',') {
            let t = raw.trim().to_ascii_lowercase();
            if t.is_empty() {
                return Err(err("an alternative is empty".into()));
            }
            let term = if t == "error" {
                StatusTerm::OtelError
            } else if t.len() == 3 && t.ends_with("xx") {
                let class = t.as_bytes()[0];
                if !(b'1'..=b'5').contains(&class) {
                    return Err(err(format!("{t:?} is not a status class 1xx..5xx")));
                }
                let lo = i32::from(class - b'0') * 100;
                StatusTerm::Http(lo..=lo + 99)
            } else {
                let code: i32 = t
                    .parse()
                    .map_err(|_| err(format!("{t:?} is not a status code")))?;
                if !(100..=599).contains(&code) {
                    return Err(err(format!("{code} is outside 100..599")));
                }
                StatusTerm::Http(code..=code)
            };
            terms.push(term);
        }
        Ok(Self { terms })
    }

    pub fn terms(&self) -> &[StatusTerm] {
        &self.terms
    }

    /// Whether a span with this HTTP status and OpenTelemetry status code matches.
    pub fn matches(&self, http_status: Option<i32>, otel_status: i32) -> bool {
        self.terms.iter().any(|term| match term {
            StatusTerm::Http(range) => http_status.is_some_and(|s| range.contains(&s)),
            StatusTerm::OtelError => otel_status == OTEL_STATUS_ERROR,
        })
    }
}

impl fmt::Display for StatusPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, term) in self.terms.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match term {
                StatusTerm::OtelError => f.write_str("error")?,
                StatusTerm::Http(r) if r.start() == r.end() => write!(f, "{}", r.start())?,
                StatusTerm::Http(r) => write!(f, "{}xx", r.start() / 100)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_codes_and_lists() {
        let p = StatusPattern::parse("4xx, 503").unwrap();
        assert!(p.matches(Some(404), 0));
        assert!(p.matches(Some(503), 2));
        assert!(!p.matches(Some(500), 2));
        assert!(!p.matches(None, 2));
        assert_eq!(p.to_string(), "4xx,503");
        let e = StatusPattern::parse("5XX,error").unwrap();
        assert!(e.matches(Some(599), 0));
        assert!(e.matches(None, OTEL_STATUS_ERROR));
    }

    #[test]
    fn refuses_nonsense() {
        for bad in ["", "6xx", "0xx", "abc", "5x", "700", "5xx,", "99"] {
            assert!(StatusPattern::parse(bad).is_err(), "{bad}");
        }
    }

    /// What the `status_pattern` fuzz target (`fuzz/`) checks, over seeded mutations of
    /// valid patterns: parsing never panics, and a pattern's `Display` parses back to
    /// an equal pattern.
    #[test]
    fn mutated_patterns_round_trip() {
        const SEEDS: &[&str] = &["500", "5xx", "4xx, 503", "error", "error,5xx,404", " 1XX "];
        const PIECES: &[&str] = &[",", " ", "x", "X", "0", "9", "-", "+", "error", "é", "６"];
        let mut rng = fastrand::Rng::with_seed(0x5747_0005);
        let (mut parsed, mut refused) = (0, 0);
        for _ in 0..5000 {
            let seed = SEEDS[rng.usize(0..SEEDS.len())];
            let input = crate::mutation::mutate(&mut rng, seed, PIECES);
            match StatusPattern::parse(&input) {
                Ok(pattern) => {
                    parsed += 1;
                    let text = pattern.to_string();
                    let again = StatusPattern::parse(&text)
                        .unwrap_or_else(|e| panic!("{input:?} → {text:?}: {e}"));
                    assert_eq!(again, pattern, "{input:?} → {text:?}");
                    assert_eq!(again.to_string(), text);
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
