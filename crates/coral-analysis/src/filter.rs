//! Cohort filters: the small language that selects the requests of a cohort, e.g.
//! `duration > 1s and status = 5xx` or `url ~ "/checkout*" and not status = error`.
//!
//! ```text
//! filter    := or
//! or        := and ("or" and)*
//! and       := unary ("and" unary)*
//! unary     := "not" unary | "(" or ")" | condition
//! condition := field op value
//!            | field ["not"] "in" "(" value ("," value)* ")"
//!            | field "~" (string | regex)
//! field     := duration | status | url | route | name | trace | attr.<key>
//! op        := > | >= | < | <= | = | == | !=
//! ```
//!
//! Keywords and field names are case-insensitive (attribute keys are not); `not` binds
//! tighter than `and`, which binds tighter than `or`.
//!
//! Values:
//! * `duration`: `500us`, `100ms`, `1.5s`, `2m`, `1h`, `1h30m` (units ns, us, µs, ms,
//!   s, m, h, d); a bare number is milliseconds (`duration > 1000`).
//! * `status`: a code (`500`, 100..599), a class (`5xx`) or `error` (OpenTelemetry
//!   status ERROR). A class stands for its range: `status = 5xx` is 500..599,
//!   `status >= 4xx` 400 and above, `status > 4xx` 500 and above. `error` takes `=`,
//!   `!=` and `in` only.
//! * `url` (the request path, without its query string), `route`, `name` (span
//!   name): text, compared with `=`, `!=`, `in`, `~`; no ordering.
//! * `trace`: a trace id, 32 hex digits; `=`, `!=`, `in` only.
//! * `attr.<key>` (key: letters, digits, `.`, `_`, `-`): a string, a number or
//!   `true`/`false`; ordering takes a number, `~` takes a string pattern; the values
//!   of an `in` list have one type. The attributes the agent moves into fields are
//!   those fields under their own name: `attr.http.response.status_code` and
//!   `attr.http.status_code` are `status`, `attr.url.path` and `attr.http.target`
//!   are `url`, `attr.http.route` is `route`.
//!
//! Strings are in double quotes, with `\"` and `\\` as the only escapes, and hold no
//! control characters. A bare word (letters, digits, `_ . - :`) is also a value: text
//! for `url`, `route` and `name`; for `attr.*` a number if it looks like one (`-1.5`),
//! a boolean for `true`/`false`, else text. A value starting with `/` is refused
//! outside `~` (`url = /checkout` must be written `url = "/checkout"`), because
//! `/…/` is a regular expression.
//!
//! Matching (`~`): a double-quoted string is a glob over the whole value (`*` any run
//! of characters, `?` one character, case-sensitive, no escapes: use a regex for a
//! literal `*`); `/…/` is a regular expression that matches anywhere in the value
//! (anchor with `^` and `$`), `\/` for a `/`. Regexes are checked here to keep to what
//! PostgreSQL's `~` and Rust's `regex` (SQLite) read alike: literals, `.`, `[…]`
//! (with `[:alpha:]`-style classes), `\d \s \w` and their negations (not inside
//! brackets), `\t \n \r \f \v \a`, escaped punctuation, groups `(…)` and `(?:…)`,
//! `|`, `* + ?` and `{m}`, `{m,}`, `{m,n}` up to 255 (greedy or lazy), `^` and `$`.
//! Refused: flags such as `(?i)`, named groups, `\b`, `\A`, `\z` and other
//! assertions, `\p{…}`, hex and octal escapes, nested or set-operation classes. One
//! difference remains: `.` does not match a newline in SQLite but does in PostgreSQL.
//!
//! A condition on a value that a request lacks (no span stored, no URL, no such
//! attribute, an attribute of another type) is false, `!=` and `not in` included;
//! `not` negates a whole condition, so `not url = "/a"` matches requests without a URL.
//!
//! Limits: [`MAX_FILTER_LEN`] bytes and [`MAX_DEPTH`] nested parentheses and `not`s.
//! Errors give the 1-based column (in characters) and what was expected there.
//!
//! `Display` gives a canonical form that parses back to the same filter: lowercase
//! keywords, single spaces, quoted strings, durations in their largest exact unit,
//! `and`/`or` chains flattened and only the parentheses that precedence needs.

use std::fmt;

use regex_syntax::ast::{self, Ast};

use crate::duration::parse_duration;

/// Longest filter accepted, in bytes.
pub const MAX_FILTER_LEN: usize = 4096;
/// Deepest nesting of parentheses and `not` accepted.
pub const MAX_DEPTH: usize = 64;
/// Largest repetition count in a regex (PostgreSQL's limit).
const MAX_REPEAT: u32 = 255;

/// Span attributes that the agent moves into a field of the span (so they are not in
/// its attributes any more), with the field a condition on them reads: a user who
/// sees `http.response.status_code: 200` on a span can filter on
/// `attr.http.response.status_code = 200`. `http.target` is compared as the path,
/// like `url`.
const PROMOTED_ATTRIBUTES: [(&str, Field); 5] = [
    ("http.response.status_code", Field::Status),
    ("http.status_code", Field::Status),
    ("url.path", Field::Url),
    ("http.target", Field::Url),
    ("http.route", Field::Route),
];

/// A filter that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct FilterError {
    /// Where, 1-based, in characters.
    pub column: usize,
    /// What would have been accepted there.
    pub expected: String,
    /// The whole explanation: what was expected and what was found.
    pub message: String,
}

/// A parsed filter. Build one with [`parse`]; `and` and `or` lists have two or more
/// items and none of the same kind (chains are flattened).
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Box<Filter>),
    Condition(Condition),
}

/// One test of one field of a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// The request's duration, in nanoseconds.
    Duration(Test<i64>),
    /// HTTP status or OpenTelemetry status ERROR.
    Status(Test<Status>),
    /// The request path, without its query string.
    Url(Test<String>),
    /// `http.route`.
    Route(Test<String>),
    /// The span name.
    Name(Test<String>),
    Trace(Test<[u8; 16]>),
    /// A span attribute by key.
    Attr(String, Test<AttrValue>),
}

/// What a condition asks of its field's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Test<T> {
    Compare(CompareOp, T),
    In(Vec<T>),
    NotIn(Vec<T>),
    /// Text only.
    Match(Pattern),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

impl CompareOp {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Eq => "=",
            Self::Ne => "!=",
            Self::Gt => ">",
            Self::Ge => ">=",
            Self::Lt => "<",
            Self::Le => "<=",
        }
    }

    fn is_ordering(self) -> bool {
        !matches!(self, Self::Eq | Self::Ne)
    }
}

/// A `status` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// An HTTP status code, 100..=599.
    Code(u16),
    /// An HTTP status class, 1..=5: 5 is 500..=599.
    Class(u8),
    /// OpenTelemetry span status ERROR.
    Error,
}

/// An `attr.*` value.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    Text(String),
    /// Finite.
    Number(f64),
    Bool(bool),
}

/// The right side of `~`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// `*` any run of characters, `?` one character, the rest literal; anchored.
    Glob(String),
    /// A checked regular expression (see the module docs), unanchored.
    Regex(String),
}

/// Parses a filter (see the module docs for the language).
pub fn parse(input: &str) -> Result<Filter, FilterError> {
    let parser = Parser {
        input,
        pos: 0,
        depth: 0,
    };
    if input.len() > MAX_FILTER_LEN {
        let at = input
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| i >= MAX_FILTER_LEN)
            .unwrap_or(input.len());
        return Err(parser.error_at(
            at,
            &format!("a filter of at most {MAX_FILTER_LEN} bytes"),
            &format!("{} bytes", input.len()),
        ));
    }
    let mut parser = parser;
    let filter = parser.or()?;
    parser.skip_ws();
    if parser.pos < input.len() {
        return Err(parser.error("and, or or the end of the filter"));
    }
    Ok(filter)
}

const FIELDS: &str = "duration, status, url, route, name, trace or attr.<key>";
const DURATION: &str = "a duration such as 100ms or 1.5s";
const STATUS: &str = "a status code such as 500, a class such as 5xx, or error";
const TEXT: &str = "text in double quotes";
const TRACE: &str = "a trace id of 32 hex digits";
const ATTR: &str = "a string, a number or true/false";
const PATTERN: &str = "a glob in double quotes such as \"/api/*\" or a /regular expression/";

/// Which field a condition is on.
#[derive(Clone)]
enum Field {
    Duration,
    Status,
    Url,
    Route,
    Name,
    Trace,
    Attr(String),
}

/// The operator of a condition, before the value is known.
#[derive(Clone, Copy)]
enum Op {
    Compare(CompareOp),
    In,
    NotIn,
    Match,
}

/// A value as written.
enum Raw<'a> {
    Quoted(String),
    Bare(&'a str),
}

impl Raw<'_> {
    fn describe(&self) -> String {
        match self {
            Raw::Quoted(s) => format!("the string {s:?}"),
            Raw::Bare(w) => format!("{w:?}"),
        }
    }
}

struct Parser<'a> {
    input: &'a str,
    /// Byte offset of the next character.
    pos: usize,
    /// Parentheses and `not`s open now.
    depth: usize,
}

type Parsed<T> = Result<T, FilterError>;

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '.' | '-' | ':')
}

impl<'a> Parser<'a> {
    fn rest(&self) -> &'a str {
        &self.input[self.pos..]
    }

    fn skip_ws(&mut self) {
        let rest = self.rest();
        self.pos += rest.len() - rest.trim_start().len();
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    /// The word at the current position (possibly empty), not consumed.
    fn word(&self) -> &'a str {
        let rest = self.rest();
        let end = rest.find(|c| !is_word_char(c)).unwrap_or(rest.len());
        &rest[..end]
    }

    /// Consumes `keyword` (case-insensitive, a whole word) if it comes next.
    fn keyword(&mut self, keyword: &str) -> bool {
        self.skip_ws();
        let found = self.word().eq_ignore_ascii_case(keyword);
        if found {
            self.pos += keyword.len();
        }
        found
    }

    /// What is at byte `at`, for messages.
    fn found_at(&self, at: usize) -> String {
        let rest = &self.input[at..];
        let Some(c) = rest.chars().next() else {
            return "the end of the filter".into();
        };
        let len = if is_word_char(c) {
            rest.find(|c| !is_word_char(c)).unwrap_or(rest.len())
        } else {
            c.len_utf8()
        };
        let token: String = rest[..len].chars().take(40).collect();
        format!("{token:?}")
    }

    fn error_at(&self, at: usize, expected: &str, found: &str) -> FilterError {
        FilterError {
            column: self.input[..at].chars().count() + 1,
            expected: expected.to_string(),
            message: format!("expected {expected}, found {found}"),
        }
    }

    /// "expected …, found <what is at the current position>".
    fn error(&self, expected: &str) -> FilterError {
        self.error_at(self.pos, expected, &self.found_at(self.pos))
    }

    /// One more level of nesting, refused beyond [`MAX_DEPTH`].
    fn enter(&mut self, at: usize) -> Parsed<()> {
        if self.depth == MAX_DEPTH {
            return Err(self.error_at(
                at,
                &format!("at most {MAX_DEPTH} nested parentheses and nots"),
                "one more",
            ));
        }
        self.depth += 1;
        Ok(())
    }

    fn or(&mut self) -> Parsed<Filter> {
        let mut items = vec![self.and()?];
        while self.keyword("or") {
            items.push(self.and()?);
        }
        Ok(flatten(items, Filter::Or, |f| match f {
            Filter::Or(inner) => Ok(inner),
            other => Err(other),
        }))
    }

    fn and(&mut self) -> Parsed<Filter> {
        let mut items = vec![self.unary()?];
        while self.keyword("and") {
            items.push(self.unary()?);
        }
        Ok(flatten(items, Filter::And, |f| match f {
            Filter::And(inner) => Ok(inner),
            other => Err(other),
        }))
    }

    fn unary(&mut self) -> Parsed<Filter> {
        self.skip_ws();
        let at = self.pos;
        if self.keyword("not") {
            self.enter(at)?;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Filter::Not(Box::new(inner)));
        }
        if self.peek() == Some('(') {
            self.enter(at)?;
            self.pos += 1;
            let inner = self.or()?;
            self.skip_ws();
            if self.peek() != Some(')') {
                return Err(self.error("and, or or )"));
            }
            self.pos += 1;
            self.depth -= 1;
            return Ok(inner);
        }
        self.condition().map(Filter::Condition)
    }

    fn condition(&mut self) -> Parsed<Condition> {
        let at = self.pos;
        let word = self.word();
        if word.is_empty() {
            return Err(self.error("a condition such as duration > 1s"));
        }
        let lower = word.to_ascii_lowercase();
        let field = match lower.as_str() {
            "duration" => Field::Duration,
            "status" => Field::Status,
            "url" => Field::Url,
            "route" => Field::Route,
            "name" => Field::Name,
            "trace" => Field::Trace,
            _ if lower.starts_with("attr.") => {
                let key = &word["attr.".len()..];
                if key.is_empty() || !key.chars().all(is_key_char) {
                    return Err(self.error_at(
                        at,
                        "an attribute key of letters, digits, ., _ and - after attr.",
                        &format!("{word:?}"),
                    ));
                }
                // The agent moves these span attributes into fields of their own:
                // under their own name they are those fields.
                match PROMOTED_ATTRIBUTES.iter().find(|(name, _)| *name == key) {
                    Some((_, field)) => field.clone(),
                    None => Field::Attr(key.to_string()),
                }
            }
            _ => {
                return Err(self.error_at(
                    at,
                    &format!("a field: {FIELDS}"),
                    &format!("the unknown field {word:?}"),
                ));
            }
        };
        self.pos += word.len();
        let (op_at, op) = self.op()?;
        Ok(match field {
            Field::Duration => {
                self.refuse_match(op, op_at, "duration", "a number with a unit")?;
                Condition::Duration(self.test(op, |p| p.duration())?)
            }
            Field::Status => {
                self.refuse_match(op, op_at, "status", "a status")?;
                let value_at = self.value_start();
                let test = self.test(op, |p| p.status())?;
                if let Test::Compare(cmp, Status::Error) = &test
                    && cmp.is_ordering()
                {
                    return Err(self.error_at(
                        value_at,
                        &format!("a status code or class after {}", cmp.as_str()),
                        "error (which takes =, != and in)",
                    ));
                }
                Condition::Status(test)
            }
            Field::Url => Condition::Url(self.text_test(op, op_at, "url")?),
            Field::Route => Condition::Route(self.text_test(op, op_at, "route")?),
            Field::Name => Condition::Name(self.text_test(op, op_at, "name")?),
            Field::Trace => {
                self.refuse_match(op, op_at, "trace", "a trace id")?;
                self.refuse_ordering(op, op_at, "trace", "=, !=, in or not in")?;
                Condition::Trace(self.test(op, |p| p.trace_id())?)
            }
            Field::Attr(key) => {
                let value_at = self.value_start();
                let test = self.test(op, |p| p.attr_value())?;
                match &test {
                    Test::Compare(cmp, AttrValue::Text(_) | AttrValue::Bool(_))
                        if cmp.is_ordering() =>
                    {
                        return Err(self.error_at(
                            value_at,
                            &format!("a number after {}", cmp.as_str()),
                            "text or a boolean (which take =, !=, in and ~)",
                        ));
                    }
                    Test::In(values) | Test::NotIn(values) if !one_type(values) => {
                        return Err(self.error_at(
                            value_at,
                            "values of one type in the list",
                            "values of different types",
                        ));
                    }
                    _ => {}
                }
                Condition::Attr(key, test)
            }
        })
    }

    /// The operator after a field, and where it starts.
    fn op(&mut self) -> Parsed<(usize, Op)> {
        self.skip_ws();
        let at = self.pos;
        let rest = self.rest();
        let symbols = [
            (">=", Op::Compare(CompareOp::Ge)),
            ("<=", Op::Compare(CompareOp::Le)),
            ("!=", Op::Compare(CompareOp::Ne)),
            ("==", Op::Compare(CompareOp::Eq)),
            (">", Op::Compare(CompareOp::Gt)),
            ("<", Op::Compare(CompareOp::Lt)),
            ("=", Op::Compare(CompareOp::Eq)),
            ("~", Op::Match),
        ];
        if let Some((symbol, op)) = symbols.iter().find(|(s, _)| rest.starts_with(s)) {
            self.pos += symbol.len();
            return Ok((at, *op));
        }
        if self.keyword("in") {
            return Ok((at, Op::In));
        }
        if self.keyword("not") {
            if self.keyword("in") {
                return Ok((at, Op::NotIn));
            }
            return Err(self.error("in after not"));
        }
        Err(self.error("an operator: >, >=, <, <=, =, !=, ~, in or not in"))
    }

    fn refuse_match(&self, op: Op, at: usize, field: &str, what: &str) -> Parsed<()> {
        match op {
            Op::Match => Err(self.error_at(
                at,
                &format!("an operator for {field} (~ matches text, and {field} is {what})"),
                "\"~\"",
            )),
            _ => Ok(()),
        }
    }

    fn refuse_ordering(&self, op: Op, at: usize, field: &str, ops: &str) -> Parsed<()> {
        match op {
            Op::Compare(cmp) if cmp.is_ordering() => Err(self.error_at(
                at,
                &format!("{ops} after {field} (it has no order)"),
                &format!("{:?}", cmp.as_str()),
            )),
            _ => Ok(()),
        }
    }

    fn text_test(&mut self, op: Op, at: usize, field: &str) -> Parsed<Test<String>> {
        self.refuse_ordering(op, at, field, "=, !=, ~, in or not in")?;
        self.test(op, |p| {
            Ok(match p.raw(TEXT)? {
                Raw::Quoted(s) => s,
                Raw::Bare(w) => w.to_string(),
            })
        })
    }

    /// The test for `op`, reading values with `value`.
    fn test<T>(
        &mut self,
        op: Op,
        mut value: impl FnMut(&mut Self) -> Parsed<T>,
    ) -> Parsed<Test<T>> {
        Ok(match op {
            Op::Compare(cmp) => Test::Compare(cmp, value(self)?),
            Op::In => Test::In(self.list(value)?),
            Op::NotIn => Test::NotIn(self.list(value)?),
            Op::Match => Test::Match(self.pattern()?),
        })
    }

    fn list<T>(&mut self, mut value: impl FnMut(&mut Self) -> Parsed<T>) -> Parsed<Vec<T>> {
        self.skip_ws();
        if self.peek() != Some('(') {
            return Err(self.error("( to start the list"));
        }
        self.pos += 1;
        let mut values = vec![value(self)?];
        loop {
            self.skip_ws();
            match self.peek() {
                Some(',') => {
                    self.pos += 1;
                    values.push(value(self)?);
                }
                Some(')') => {
                    self.pos += 1;
                    return Ok(values);
                }
                _ => return Err(self.error(", or ) in the list")),
            }
        }
    }

    /// Where the next value starts (after white space), for messages.
    fn value_start(&mut self) -> usize {
        self.skip_ws();
        if self.peek() == Some('(') {
            self.pos + 1
        } else {
            self.pos
        }
    }

    /// A quoted string or a bare word.
    fn raw(&mut self, expected: &str) -> Parsed<Raw<'a>> {
        self.skip_ws();
        match self.peek() {
            Some('"') => self.string().map(Raw::Quoted),
            Some('/') => Err(self.error_at(
                self.pos,
                &format!("{expected} (/…/ is a regular expression, which only ~ takes)"),
                &self.found_at(self.pos),
            )),
            _ => {
                let word = self.word();
                if word.is_empty() {
                    return Err(self.error(expected));
                }
                self.pos += word.len();
                Ok(Raw::Bare(word))
            }
        }
    }

    /// A double-quoted string, the opening quote next.
    fn string(&mut self) -> Parsed<String> {
        let mut out = String::new();
        let mut chars = self.rest().char_indices().skip(1);
        let start = self.pos;
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.pos = start + i + 1;
                    return Ok(out);
                }
                '\\' => match chars.next() {
                    Some((_, e @ ('"' | '\\'))) => out.push(e),
                    next => {
                        return Err(self.error_at(
                            start + i,
                            "\\\" or \\\\ (the only escapes in a string)",
                            &next.map_or("the end of the filter".into(), |(_, c)| {
                                format!("\"\\{c}\"")
                            }),
                        ));
                    }
                },
                c if c.is_control() => {
                    return Err(self.error_at(
                        start + i,
                        "text without control characters",
                        &format!("{c:?}"),
                    ));
                }
                c => out.push(c),
            }
        }
        Err(self.error_at(
            self.input.len(),
            "\" to close the string",
            "the end of the filter",
        ))
    }

    fn duration(&mut self) -> Parsed<i64> {
        let at = self.value_pos();
        let raw = self.raw(DURATION)?;
        let bad = |p: &Self| p.error_at(at, DURATION, &raw.describe());
        let Raw::Bare(word) = raw else {
            return Err(bad(self));
        };
        let ns = if word.chars().all(|c| c.is_ascii_digit() || c == '.') {
            // A bare number: milliseconds, as RFD 080 writes `duration > 1000`.
            word.parse::<f64>().ok().map(|ms| (ms * 1e6).round())
        } else {
            parse_duration(word).ok().map(|d| d.as_nanos() as f64)
        };
        match ns {
            Some(ns) if ns.is_finite() && ns < i64::MAX as f64 => Ok(ns as i64),
            _ => Err(bad(self)),
        }
    }

    fn status(&mut self) -> Parsed<Status> {
        let at = self.value_pos();
        let raw = self.raw(STATUS)?;
        let status = match &raw {
            Raw::Bare(word) => {
                let lower = word.to_ascii_lowercase();
                let b = lower.as_bytes();
                if lower == "error" {
                    Some(Status::Error)
                } else if b.len() == 3 && (b'1'..=b'5').contains(&b[0]) && &b[1..] == b"xx" {
                    Some(Status::Class(b[0] - b'0'))
                } else {
                    lower
                        .parse::<u16>()
                        .ok()
                        .filter(|c| (100..=599).contains(c) && lower.len() == 3)
                        .map(Status::Code)
                }
            }
            Raw::Quoted(_) => None,
        };
        status.ok_or_else(|| self.error_at(at, STATUS, &raw.describe()))
    }

    fn trace_id(&mut self) -> Parsed<[u8; 16]> {
        let at = self.value_pos();
        let raw = self.raw(TRACE)?;
        let text = match &raw {
            Raw::Quoted(s) => s.as_str(),
            Raw::Bare(w) => w,
        };
        parse_trace_id(text).ok_or_else(|| self.error_at(at, TRACE, &raw.describe()))
    }

    fn attr_value(&mut self) -> Parsed<AttrValue> {
        Ok(match self.raw(ATTR)? {
            Raw::Quoted(s) => AttrValue::Text(s),
            Raw::Bare(w) if w.eq_ignore_ascii_case("true") => AttrValue::Bool(true),
            Raw::Bare(w) if w.eq_ignore_ascii_case("false") => AttrValue::Bool(false),
            Raw::Bare(w) => match parse_number(w) {
                Some(n) => AttrValue::Number(n),
                None => AttrValue::Text(w.to_string()),
            },
        })
    }

    /// Where the next value starts.
    fn value_pos(&mut self) -> usize {
        self.skip_ws();
        self.pos
    }

    /// The right side of `~`.
    fn pattern(&mut self) -> Parsed<Pattern> {
        self.skip_ws();
        match self.peek() {
            Some('"') => self.string().map(Pattern::Glob),
            Some('/') => self.regex().map(Pattern::Regex),
            _ => Err(self.error(PATTERN)),
        }
    }

    /// A `/…/` regex literal, the opening slash next; `\/` is a slash.
    fn regex(&mut self) -> Parsed<String> {
        let start = self.pos;
        let control = |i: usize, c: char| {
            self.error_at(
                start + i,
                "a regular expression without control characters",
                &format!("{c:?}"),
            )
        };
        let unclosed = || {
            self.error_at(
                self.input.len(),
                "/ to close the regular expression",
                "the end of the filter",
            )
        };
        let mut source = String::new();
        let mut chars = self.rest().char_indices().skip(1);
        let end = loop {
            match chars.next() {
                Some((i, '/')) => break start + i + 1,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '/')) => source.push('/'),
                    Some((i, c)) if c.is_control() => return Err(control(i, c)),
                    Some((_, c)) => {
                        source.push('\\');
                        source.push(c);
                    }
                    None => return Err(unclosed()),
                },
                Some((i, c)) if c.is_control() => return Err(control(i, c)),
                Some((_, c)) => source.push(c),
                None => return Err(unclosed()),
            }
        };
        if let Err(reason) = check_regex(&source) {
            return Err(self.error_at(
                start,
                "a regular expression that PostgreSQL and SQLite read alike",
                &format!("{} ({reason})", &self.input[start..end]),
            ));
        }
        self.pos = end;
        Ok(source)
    }
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// `items` joined by `make`, items of the same kind spliced in (`a and (b and c)` is
/// `a and b and c`); a single item as it is.
fn flatten(
    items: Vec<Filter>,
    make: fn(Vec<Filter>) -> Filter,
    same_kind: fn(Filter) -> Result<Vec<Filter>, Filter>,
) -> Filter {
    if items.len() == 1 {
        return items.into_iter().next().expect("one item");
    }
    let mut flat = Vec::with_capacity(items.len());
    for item in items {
        match same_kind(item) {
            Ok(inner) => flat.extend(inner),
            Err(other) => flat.push(other),
        }
    }
    make(flat)
}

/// Whether `values` are all of one type.
fn one_type(values: &[AttrValue]) -> bool {
    let kind = std::mem::discriminant::<AttrValue>;
    values.iter().all(|v| kind(v) == kind(&values[0]))
}

/// `-?digits(.digits)?`, finite.
fn parse_number(word: &str) -> Option<f64> {
    let digits = word.strip_prefix('-').unwrap_or(word);
    let (int, frac) = digits.split_once('.').unwrap_or((digits, "0"));
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !(all_digits(int) && all_digits(frac)) {
        return None;
    }
    word.parse::<f64>().ok().filter(|n| n.is_finite())
}

fn parse_trace_id(text: &str) -> Option<[u8; 16]> {
    if text.len() != 32 {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    // `from_str_radix` takes a leading `+`.
    text.bytes().all(|b| b.is_ascii_hexdigit()).then_some(id)
}

/// Whether `source` is a regex in the syntax PostgreSQL and Rust's `regex` share
/// (see the module docs); the reason if not.
fn check_regex(source: &str) -> Result<(), String> {
    if source.is_empty() {
        return Err("it is empty".into());
    }
    let parsed = ast::parse::Parser::new()
        .parse(source)
        .map_err(|e| e.kind().to_string())?;
    ast::visit(&parsed, Portable)?;
    regex::Regex::new(source).map_err(|e| match e {
        regex::Error::CompiledTooBig(_) => "it is too large".to_string(),
        other => other.to_string(),
    })?;
    Ok(())
}

/// Refuses what PostgreSQL's `~` and Rust's `regex` read differently.
struct Portable;

fn portable_literal(literal: &ast::Literal) -> Result<(), String> {
    match literal.kind {
        ast::LiteralKind::Verbatim
        | ast::LiteralKind::Meta
        | ast::LiteralKind::Superfluous
        | ast::LiteralKind::Special(_) => Ok(()),
        _ => Err("hex and octal escapes are not supported".into()),
    }
}

impl ast::Visitor for Portable {
    type Output = ();
    type Err = String;

    fn finish(self) -> Result<(), String> {
        Ok(())
    }

    fn visit_pre(&mut self, ast: &Ast) -> Result<(), String> {
        match ast {
            Ast::Flags(_) => Err("flags such as (?i) are not supported".into()),
            Ast::Assertion(a) => match a.kind {
                ast::AssertionKind::StartLine | ast::AssertionKind::EndLine => Ok(()),
                _ => Err("only ^ and $ are supported as assertions (no \\b, \\A, \\z)".into()),
            },
            Ast::ClassUnicode(_) => Err("Unicode classes such as \\pL are not supported".into()),
            Ast::Group(g) => match &g.kind {
                ast::GroupKind::CaptureIndex(_) => Ok(()),
                ast::GroupKind::NonCapturing(flags) if flags.items.is_empty() => Ok(()),
                _ => Err("named groups and group flags are not supported".into()),
            },
            Ast::Repetition(r) if matches!(*r.ast, Ast::Repetition(_) | Ast::Assertion(_)) => {
                Err("a repetition of a repetition or of ^ or $ is not supported".into())
            }
            Ast::Repetition(r) => match r.op.kind {
                ast::RepetitionKind::Range(
                    ast::RepetitionRange::Exactly(n)
                    | ast::RepetitionRange::AtLeast(n)
                    | ast::RepetitionRange::Bounded(_, n),
                ) if n > MAX_REPEAT => Err(format!(
                    "repetition counts above {MAX_REPEAT} are not supported"
                )),
                _ => Ok(()),
            },
            Ast::Literal(l) => portable_literal(l),
            _ => Ok(()),
        }
    }

    fn visit_class_set_item_pre(&mut self, item: &ast::ClassSetItem) -> Result<(), String> {
        match item {
            ast::ClassSetItem::Literal(l) => portable_literal(l),
            ast::ClassSetItem::Range(r) => {
                portable_literal(&r.start)?;
                portable_literal(&r.end)
            }
            ast::ClassSetItem::Unicode(_) => {
                Err("Unicode classes such as \\pL are not supported".into())
            }
            ast::ClassSetItem::Perl(p) if p.negated => {
                Err("\\D, \\S and \\W are not supported inside brackets".into())
            }
            ast::ClassSetItem::Bracketed(_) => {
                Err("nested brackets are not supported (use [:alpha:] classes)".into())
            }
            _ => Ok(()),
        }
    }

    fn visit_class_set_binary_op_pre(&mut self, _: &ast::ClassSetBinaryOp) -> Result<(), String> {
        Err("class set operations such as && and -- are not supported".into())
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Filter::And(items) => join(f, items, " and ", |i| matches!(i, Filter::Or(_))),
            Filter::Or(items) => join(f, items, " or ", |_| false),
            Filter::Not(inner) => {
                f.write_str("not ")?;
                parenthesized(f, inner, matches!(**inner, Filter::And(_) | Filter::Or(_)))
            }
            Filter::Condition(c) => c.fmt(f),
        }
    }
}

fn join(
    f: &mut fmt::Formatter<'_>,
    items: &[Filter],
    separator: &str,
    needs_parens: fn(&Filter) -> bool,
) -> fmt::Result {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(separator)?;
        }
        parenthesized(f, item, needs_parens(item))?;
    }
    Ok(())
}

fn parenthesized(f: &mut fmt::Formatter<'_>, filter: &Filter, parens: bool) -> fmt::Result {
    if parens {
        write!(f, "({filter})")
    } else {
        write!(f, "{filter}")
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Condition::Duration(t) => write_test(f, "duration", t, |f, ns| {
                f.write_str(&format_exact_duration(*ns))
            }),
            Condition::Status(t) => write_test(f, "status", t, |f, s| match s {
                Status::Code(c) => write!(f, "{c}"),
                Status::Class(c) => write!(f, "{c}xx"),
                Status::Error => f.write_str("error"),
            }),
            Condition::Url(t) => write_test(f, "url", t, |f, s| write_string(f, s)),
            Condition::Route(t) => write_test(f, "route", t, |f, s| write_string(f, s)),
            Condition::Name(t) => write_test(f, "name", t, |f, s| write_string(f, s)),
            Condition::Trace(t) => write_test(f, "trace", t, |f, id| {
                id.iter().try_for_each(|b| write!(f, "{b:02x}"))
            }),
            Condition::Attr(key, t) => write_test(f, &format!("attr.{key}"), t, |f, v| match v {
                AttrValue::Text(s) => write_string(f, s),
                AttrValue::Number(n) => write!(f, "{n}"),
                AttrValue::Bool(b) => write!(f, "{b}"),
            }),
        }
    }
}

fn write_test<T>(
    f: &mut fmt::Formatter<'_>,
    field: &str,
    test: &Test<T>,
    value: impl Fn(&mut fmt::Formatter<'_>, &T) -> fmt::Result,
) -> fmt::Result {
    let list = |f: &mut fmt::Formatter<'_>, op: &str, values: &[T]| {
        write!(f, "{field} {op} (")?;
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            value(f, v)?;
        }
        f.write_str(")")
    };
    match test {
        Test::Compare(op, v) => {
            write!(f, "{field} {} ", op.as_str())?;
            value(f, v)
        }
        Test::In(values) => list(f, "in", values),
        Test::NotIn(values) => list(f, "not in", values),
        Test::Match(Pattern::Glob(glob)) => {
            write!(f, "{field} ~ ")?;
            write_string(f, glob)
        }
        Test::Match(Pattern::Regex(source)) => {
            write!(f, "{field} ~ /")?;
            let mut chars = source.chars();
            while let Some(c) = chars.next() {
                match c {
                    '/' => f.write_str("\\/")?,
                    // An escape pair stays as it is (its second character is never
                    // a `/`: the parser reads `\/` as `/`).
                    '\\' => {
                        f.write_str("\\")?;
                        if let Some(next) = chars.next() {
                            write!(f, "{next}")?;
                        }
                    }
                    c => write!(f, "{c}")?,
                }
            }
            f.write_str("/")
        }
    }
}

fn write_string(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    f.write_str("\"")?;
    for c in s.chars() {
        if matches!(c, '"' | '\\') {
            f.write_str("\\")?;
        }
        write!(f, "{c}")?;
    }
    f.write_str("\"")
}

/// Nanoseconds in the largest unit that holds them exactly: `1500ms`, `2m`, `7ns`.
fn format_exact_duration(ns: i64) -> String {
    const UNITS: [(i64, &str); 5] = [
        (3_600_000_000_000, "h"),
        (60_000_000_000, "m"),
        (1_000_000_000, "s"),
        (1_000_000, "ms"),
        (1_000, "us"),
    ];
    UNITS
        .iter()
        .find(|(scale, _)| ns != 0 && ns % scale == 0)
        .map_or_else(
            || format!("{ns}ns"),
            |(scale, unit)| format!("{}{unit}", ns / scale),
        )
}

#[cfg(test)]
mod tests;
