//! What a trace-profile trigger asks of a request: duration bounds, a status-code
//! pattern and a URL glob. Checked by the agent on every request span of a triggered
//! service, so matching allocates nothing.

use crate::status::{StatusPattern, StatusPatternError};
use std::fmt;

/// Longest URL pattern accepted.
pub const MAX_URL_PATTERN_LEN: usize = 1024;

/// Criteria that could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CriteriaError {
    #[error(
        "the minimum duration ({min_ms} ms) is above the maximum ({max_ms} ms): \
         no request could match; lower --min-duration or raise --max-duration"
    )]
    MinAboveMax { min_ms: u64, max_ms: u64 },
    #[error(transparent)]
    Status(#[from] StatusPatternError),
    #[error(
        "invalid URL pattern {input:?}: {reason} (write a glob such as /checkout* or /api/*/pay)"
    )]
    Url { input: String, reason: String },
    #[error(
        "URL pattern {input:?} can never match: it is matched against the whole path, which \
         starts with '/'; write \"/{input}\" for that path, or \"*{input}*\" for any path containing it"
    )]
    UrlNeverMatches { input: String },
    #[error(
        "a trigger needs at least one criterion (a minimum or maximum duration, a status or a \
         URL pattern): without one every request matches and there is no baseline to compare \
         with; to profile every request of a service, profile it for a while instead"
    )]
    NoCriteria,
}

/// A glob on a request's URL path: `*` is any run of characters (including none and
/// `/`), `?` is one character, everything else is literal. The query string
/// (from `?` in the URL) is not part of what is matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlPattern {
    pattern: String,
}

impl UrlPattern {
    pub fn parse(input: &str) -> Result<Self, CriteriaError> {
        let err = |reason: &str| CriteriaError::Url {
            input: input.chars().take(80).collect(),
            reason: reason.to_string(),
        };
        if input.is_empty() {
            return Err(err("it is empty"));
        }
        if input.len() > MAX_URL_PATTERN_LEN {
            return Err(err(&format!(
                "it is longer than {MAX_URL_PATTERN_LEN} bytes"
            )));
        }
        if input.chars().any(char::is_control) {
            return Err(err("it contains a control character"));
        }
        if input.chars().any(char::is_whitespace) {
            return Err(err("it contains white space (URLs have none)"));
        }
        // Paths and routes start with '/': a pattern that starts with anything else
        // but a wildcard matches no request, which would leave a trigger waiting forever.
        if !input.starts_with(['/', '*', '?']) {
            return Err(CriteriaError::UrlNeverMatches {
                input: input.chars().take(80).collect(),
            });
        }
        Ok(Self {
            pattern: input.to_string(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Whether `url` (a path, possibly with a query string) matches.
    pub fn matches(&self, url: &str) -> bool {
        let path = url.split_once('?').map_or(url, |(path, _)| path);
        glob_matches(self.pattern.as_bytes(), path.as_bytes())
    }
}

impl fmt::Display for UrlPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pattern)
    }
}

/// Iterative glob matching with single-star backtracking: O(pattern × text) at worst,
/// no recursion, no allocation. Over UTF-8 bytes: a literal matches byte by byte,
/// `?` one whole character (never the middle of one).
fn glob_matches(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(b'?') if is_char_start(text[t]) => {
                p += 1;
                t += utf8_len(text[t]);
            }
            Some(&c) if c != b'?' && c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Whether a byte of UTF-8 starts a character (is not a continuation byte).
fn is_char_start(byte: u8) -> bool {
    byte & 0b1100_0000 != 0b1000_0000
}

/// The length of the UTF-8 character a start byte begins.
fn utf8_len(start: u8) -> usize {
    match start.leading_ones() {
        0 => 1,
        n => n as usize,
    }
}

/// What is known of a request when its span ends.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestFacts<'a> {
    pub duration_ns: i64,
    pub http_status: Option<i32>,
    /// OpenTelemetry status code (2 = error).
    pub status_code: i32,
    /// `url.path` or `http.target`.
    pub url: Option<&'a str>,
    /// `http.route`.
    pub route: Option<&'a str>,
}

/// Every criterion of a trigger; a request matches when it meets all of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestCriteria {
    pub min_duration_ns: Option<i64>,
    pub max_duration_ns: Option<i64>,
    pub status: Option<StatusPattern>,
    pub url: Option<UrlPattern>,
}

impl RequestCriteria {
    /// Builds and checks criteria (bounds in milliseconds, as triggers store them;
    /// empty patterns mean "any").
    pub fn new(
        min_duration_ms: Option<u64>,
        max_duration_ms: Option<u64>,
        status_pattern: Option<&str>,
        url_pattern: Option<&str>,
    ) -> Result<Self, CriteriaError> {
        if let (Some(min_ms), Some(max_ms)) = (min_duration_ms, max_duration_ms)
            && min_ms > max_ms
        {
            return Err(CriteriaError::MinAboveMax { min_ms, max_ms });
        }
        let ns = |ms: u64| i64::try_from(ms.saturating_mul(1_000_000)).unwrap_or(i64::MAX);
        Ok(Self {
            min_duration_ns: min_duration_ms.map(ns),
            max_duration_ns: max_duration_ms.map(ns),
            status: status_pattern
                .filter(|s| !s.is_empty())
                .map(StatusPattern::parse)
                .transpose()?,
            url: url_pattern
                .filter(|s| !s.is_empty())
                .map(UrlPattern::parse)
                .transpose()?,
        })
    }

    /// Criteria that every request meets: refused for a trigger, whose baseline (the
    /// requests that do not match) would always be empty.
    pub fn require_some(self) -> Result<Self, CriteriaError> {
        if self == Self::default() {
            return Err(CriteriaError::NoCriteria);
        }
        Ok(self)
    }

    /// Whether a request meets every criterion. A URL pattern matches the URL path or
    /// the route; a request with neither does not match it.
    pub fn matches(&self, request: &RequestFacts<'_>) -> bool {
        self.min_duration_ns
            .is_none_or(|min| request.duration_ns >= min)
            && self
                .max_duration_ns
                .is_none_or(|max| request.duration_ns <= max)
            && self
                .status
                .as_ref()
                .is_none_or(|s| s.matches(request.http_status, request.status_code))
            && self.url.as_ref().is_none_or(|u| {
                request.url.is_some_and(|url| u.matches(url))
                    || request.route.is_some_and(|route| u.matches(route))
            })
    }
}

impl fmt::Display for RequestCriteria {
    /// The criteria in the cohort filter language ([`crate::filter`]), so that what a
    /// trigger collected can be compared with the rest: `duration >= 1s and status =
    /// 5xx and (url ~ "/checkout*" or route ~ "/checkout*")`. Criteria without a
    /// condition (older triggers) read `duration >= 0ns`, which every request meets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        let ns = |ns: i64| format!("{ns}ns");
        if let Some(min) = self.min_duration_ns {
            parts.push(format!("duration >= {}", ns(min)));
        }
        if let Some(max) = self.max_duration_ns {
            parts.push(format!("duration <= {}", ns(max)));
        }
        if let Some(status) = &self.status {
            let terms = status.to_string();
            parts.push(if terms.contains(',') {
                format!("status in ({})", terms.replace(',', ", "))
            } else {
                format!("status = {terms}")
            });
        }
        if let Some(url) = &self.url {
            // The pattern has no white space or control characters; quote `"` and `\`.
            let quoted = url.as_str().replace('\\', "\\\\").replace('"', "\\\"");
            parts.push(format!("(url ~ \"{quoted}\" or route ~ \"{quoted}\")"));
        }
        if parts.is_empty() {
            parts.push("duration >= 0ns".to_string());
        }
        // Through the filter's canonical form: durations in their largest exact unit.
        let text = parts.join(" and ");
        match crate::filter::parse(&text) {
            Ok(filter) => write!(f, "{filter}"),
            Err(_) => f.write_str(&text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(duration_ms: i64, http: Option<i32>, url: Option<&str>) -> RequestFacts<'_> {
        RequestFacts {
            duration_ns: duration_ms * 1_000_000,
            http_status: http,
            status_code: 0,
            url,
            route: None,
        }
    }

    #[test]
    fn globs() {
        let cases = [
            ("/checkout", "/checkout", true),
            ("/checkout", "/checkout/x", false),
            ("/checkout*", "/checkout/x", true),
            ("/checkout*", "/check", false),
            ("/api/*/pay", "/api/v1/pay", true),
            ("/api/*/pay", "/api/v1/v2/pay", true),
            ("/api/*/pay", "/api/v1/payx", false),
            ("/a?c", "/abc", true),
            ("/a?c", "/ac", false),
            ("*", "", true),
            ("*pay*", "/x/pay/y", true),
            ("/checkout", "/checkout?card=1", true),
            ("**a**b", "xxaxxbxx", false),
            ("**a**b*", "xxaxxbxx", true),
            // `?` is one character, not one byte of a multi-byte one (found by the
            // mutation test below, which the url_pattern fuzz target mirrors).
            ("/caf?", "/café", true),
            ("/ca*f??", "/café", false),
            ("/??", "/é", false),
            ("/?", "/日", true),
            ("/*?", "/日本", true),
        ];
        for (pattern, url, want) in cases {
            let p = UrlPattern::parse(pattern).unwrap();
            assert_eq!(p.matches(url), want, "{pattern} vs {url}");
        }
    }

    #[test]
    fn pathological_globs_stay_linear_enough() {
        let p = UrlPattern::parse(&"*a".repeat(100)).unwrap();
        let text = "a".repeat(99) + "b";
        assert!(!p.matches(&text));
    }

    #[test]
    fn every_criterion_must_hold() {
        let c =
            RequestCriteria::new(Some(1000), Some(5000), Some("5xx"), Some("/checkout*")).unwrap();
        assert!(c.matches(&facts(1000, Some(503), Some("/checkout"))));
        assert!(c.matches(&facts(5000, Some(500), Some("/checkout/card"))));
        assert!(!c.matches(&facts(999, Some(503), Some("/checkout"))));
        assert!(!c.matches(&facts(5001, Some(503), Some("/checkout"))));
        assert!(!c.matches(&facts(2000, Some(200), Some("/checkout"))));
        assert!(!c.matches(&facts(2000, None, Some("/checkout"))));
        assert!(!c.matches(&facts(2000, Some(500), Some("/health"))));
        assert!(!c.matches(&facts(2000, Some(500), None)));
        let by_route = RequestFacts {
            route: Some("/checkout/{id}"),
            ..facts(2000, Some(500), None)
        };
        assert!(c.matches(&by_route));
        assert_eq!(
            c.to_string(),
            "duration >= 1s and duration <= 5s and status = 5xx and \
             (url ~ \"/checkout*\" or route ~ \"/checkout*\")"
        );
    }

    #[test]
    fn no_criteria_match_everything() {
        let c = RequestCriteria::new(None, None, Some(""), Some("")).unwrap();
        assert!(c.matches(&facts(0, None, None)));
        assert_eq!(c.to_string(), "duration >= 0ns");
        assert_eq!(c.require_some(), Err(CriteriaError::NoCriteria));
    }

    #[test]
    fn criteria_read_as_a_cohort_filter_that_selects_the_same_requests() {
        let c =
            RequestCriteria::new(Some(1500), Some(60_000), Some("4xx,503"), Some("/pay*")).unwrap();
        assert_eq!(
            c.to_string(),
            "duration >= 1500ms and duration <= 1m and status in (4xx, 503) and \
             (url ~ \"/pay*\" or route ~ \"/pay*\")"
        );
        crate::filter::parse(&c.to_string()).unwrap();
        let quoted = RequestCriteria::new(None, None, Some("error"), Some("/a\"b\\*"))
            .unwrap()
            .to_string();
        assert_eq!(
            crate::filter::parse(&quoted).unwrap().to_string(),
            quoted,
            "parses back"
        );
    }

    #[test]
    fn a_url_pattern_that_cannot_match_a_path_is_refused() {
        let e = RequestCriteria::new(None, None, None, Some("checkout")).unwrap_err();
        assert_eq!(
            e,
            CriteriaError::UrlNeverMatches {
                input: "checkout".into()
            }
        );
        assert!(e.to_string().contains("\"/checkout\""), "{e}");
        for ok in ["/checkout", "*checkout*", "?api*"] {
            RequestCriteria::new(None, None, None, Some(ok)).unwrap();
        }
    }

    #[test]
    fn bad_criteria_say_what_is_wrong() {
        let e = RequestCriteria::new(Some(2000), Some(1000), None, None).unwrap_err();
        assert!(e.to_string().contains("above the maximum"), "{e}");
        let e = RequestCriteria::new(None, None, Some("6xx"), None).unwrap_err();
        assert!(e.to_string().contains("6xx"), "{e}");
        for bad in ["/a b", "/a\nb", &"x".repeat(2000)] {
            let e = RequestCriteria::new(None, None, None, Some(bad)).unwrap_err();
            assert!(e.to_string().contains("invalid URL pattern"), "{e}");
        }
    }

    /// Whether `text` matches `pattern`, by the textbook O(n·m) table over characters.
    fn reference_glob(pattern: &[char], text: &[char]) -> bool {
        let mut row = vec![false; text.len() + 1];
        row[0] = true;
        for &p in pattern {
            let mut next = vec![false; text.len() + 1];
            if p == '*' {
                let mut any = false;
                for j in 0..=text.len() {
                    any |= row[j];
                    next[j] = any;
                }
            } else {
                for j in 1..=text.len() {
                    next[j] = row[j - 1] && (p == '?' || p == text[j - 1]);
                }
            }
            row = next;
        }
        row[text.len()]
    }

    /// What the `url_pattern` fuzz target (`fuzz/`) checks, over seeded mutations of
    /// patterns and URLs: parsing and matching never panic, a pattern's `Display`
    /// parses back to it, and matching agrees with a reference matcher.
    #[test]
    fn mutated_globs_match_like_the_reference() {
        const SEEDS: &[&str] = &[
            "/checkout*",
            "/api/*/pay",
            "/a?c",
            "*pay*",
            "**a**b*",
            "/caf?",
            "/日本/*",
        ];
        const URLS: &[&str] = &[
            "/checkout/card",
            "/api/v1/pay?x=1",
            "/abc",
            "/x/pay/y",
            "xxaxxbxx",
            "/café",
            "/日本/語?q",
            "",
        ];
        const PIECES: &[&str] = &["*", "?", "/", "a", "é", "語", "??", "**", " "];
        let mut rng = fastrand::Rng::with_seed(0x0009_10b5);
        let (mut matched, mut unmatched) = (0, 0);
        for _ in 0..5000 {
            let seed = SEEDS[rng.usize(0..SEEDS.len())];
            let pattern = crate::mutation::mutate(&mut rng, seed, PIECES);
            let seed = URLS[rng.usize(0..URLS.len())];
            let url = crate::mutation::mutate(&mut rng, seed, PIECES);
            let Ok(parsed) = UrlPattern::parse(&pattern) else {
                continue;
            };
            assert_eq!(UrlPattern::parse(&parsed.to_string()).as_ref(), Ok(&parsed));
            let path = url.split_once('?').map_or(url.as_str(), |(path, _)| path);
            let pattern_chars: Vec<char> = pattern.chars().collect();
            let path_chars: Vec<char> = path.chars().collect();
            let want = reference_glob(&pattern_chars, &path_chars);
            assert_eq!(parsed.matches(&url), want, "{pattern:?} vs {url:?}");
            if want {
                matched += 1;
            } else {
                unmatched += 1;
            }
        }
        assert!(
            matched > 100 && unmatched > 100,
            "{matched} matched, {unmatched} unmatched"
        );
    }
}
