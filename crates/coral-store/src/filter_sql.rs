//! Cohort filters ([`coral_analysis::filter`]) compiled to a SQL `WHERE` fragment over
//! `trace_profiles tp LEFT JOIN spans s ON (trace_id, span_id)`, for both backends.
//!
//! Every value of the filter, attribute keys included, is a bound parameter; the SQL
//! text is made only of this module's own words. Parameters are numbered (`$n` for
//! PostgreSQL, `?n` for SQLite, so that one value can be used twice) from a given
//! start, so the fragment fits into a query with parameters of its own.
//!
//! Missing values: the span of a profile may not be stored (yet), and a span may have
//! no URL, route, HTTP status or attribute. A condition on a missing value is false,
//! never SQL NULL (each nullable one is wrapped in `COALESCE(…, FALSE)`), so `and`,
//! `or` and `not` are plain two-valued logic: `url != "/a"` and `url not in (…)`
//! need a URL that differs, while `not url = "/a"` also matches requests without one.
//! An attribute of another JSON type than the value counts as missing (`attr.n > 3`
//! is false for `"n": "4"`), so `!=` and `not in` mean "of that type and different".
//!
//! Fields: duration `tp.duration_ns`; name `tp.span_name`; trace `tp.trace_id`;
//! status codes and classes `s.http_status`, `error` `s.status_code = 2`; url the
//! path of `s.url` (before any `?`, as trigger criteria match it); route `s.route`;
//! `attr.<key>` the key of `s.attributes` (PostgreSQL `->`/`->>` with the key bound;
//! SQLite `json_extract` with the path `$."key"` bound), numbers compared as
//! PostgreSQL `numeric`.
//!
//! Globs are anchored and case-sensitive in both: PostgreSQL `LIKE … ESCAPE '\'` (with
//! `%`, `_` and `\` escaped), SQLite `GLOB` (with `[` escaped; SQLite's `LIKE` ignores
//! ASCII case). Regexes are PostgreSQL `~` and SQLite `REGEXP` (Rust's `regex`, which
//! the SQLite backend registers), both unanchored.

use std::fmt::Write as _;

use coral_analysis::filter::{AttrValue, CompareOp, Condition, Filter, Pattern, Status, Test};
use coral_analysis::status::OTEL_STATUS_ERROR;

/// Which SQL to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    Sqlite,
}

/// A value to bind, in the order of the fragment's parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    I64(i64),
    F64(f64),
    Text(String),
    Bytes(Vec<u8>),
    Bool(bool),
}

/// The `WHERE` fragment for `filter`, its parameters numbered from `first_param`, and
/// the values to bind to them in order.
pub fn compile(filter: &Filter, dialect: Dialect, first_param: usize) -> (String, Vec<SqlValue>) {
    let mut compiler = Compiler {
        dialect,
        first_param,
        values: Vec::new(),
    };
    let sql = compiler.filter(filter);
    (sql, compiler.values)
}

/// The JSON type of an attribute value, to read it as that type.
#[derive(Clone, Copy)]
enum JsonKind {
    Text,
    Number,
    Bool,
}

struct Compiler {
    dialect: Dialect,
    first_param: usize,
    values: Vec<SqlValue>,
}

impl Compiler {
    /// A new parameter for `value`. PostgreSQL compares attribute numbers as `numeric`
    /// (exact, any size), so a float parameter is cast to it.
    fn bind(&mut self, value: SqlValue) -> String {
        let n = self.first_param + self.values.len();
        let float = matches!(value, SqlValue::F64(_));
        self.values.push(value);
        match self.dialect {
            Dialect::Postgres if float => format!("${n}::numeric"),
            Dialect::Postgres => format!("${n}"),
            Dialect::Sqlite => format!("?{n}"),
        }
    }

    fn filter(&mut self, filter: &Filter) -> String {
        match filter {
            Filter::And(items) => self.join(items, " AND "),
            Filter::Or(items) => self.join(items, " OR "),
            Filter::Not(inner) => format!("(NOT {})", self.filter(inner)),
            Filter::Condition(c) => self.condition(c),
        }
    }

    fn join(&mut self, items: &[Filter], separator: &str) -> String {
        let parts: Vec<String> = items.iter().map(|f| self.filter(f)).collect();
        format!("({})", parts.join(separator))
    }

    fn condition(&mut self, condition: &Condition) -> String {
        let text = |s: &String| SqlValue::Text(s.clone());
        match condition {
            Condition::Duration(t) => {
                self.test("tp.duration_ns", false, t, |ns| SqlValue::I64(*ns))
            }
            Condition::Name(t) => self.test("tp.span_name", false, t, text),
            Condition::Trace(t) => {
                self.test("tp.trace_id", false, t, |id| SqlValue::Bytes(id.to_vec()))
            }
            Condition::Url(t) => {
                let path = match self.dialect {
                    Dialect::Postgres => "split_part(s.url, '?', 1)",
                    Dialect::Sqlite => "substr(s.url, 1, instr(s.url || '?', '?') - 1)",
                };
                self.test(path, true, t, text)
            }
            Condition::Route(t) => self.test("s.route", true, t, text),
            Condition::Status(t) => {
                let sql = match t {
                    Test::Compare(op, status) => self.status(*op, *status),
                    Test::In(values) => self.any_status(values),
                    Test::NotIn(values) => format!("NOT {}", self.any_status(values)),
                    // The parser refuses `status ~`; a match on a number is false.
                    Test::Match(_) => "FALSE".into(),
                };
                format!("COALESCE({sql}, FALSE)")
            }
            Condition::Attr(key, t) => {
                let kind = match t {
                    Test::Compare(_, v) => json_kind(v),
                    Test::In(values) | Test::NotIn(values) => {
                        values.first().map_or(JsonKind::Text, json_kind)
                    }
                    Test::Match(_) => JsonKind::Text,
                };
                let lhs = self.attribute(key, kind);
                self.test(&lhs, true, t, |v| match v {
                    AttrValue::Text(s) => SqlValue::Text(s.clone()),
                    AttrValue::Number(n) => SqlValue::F64(*n),
                    AttrValue::Bool(b) => SqlValue::Bool(*b),
                })
            }
        }
    }

    /// `lhs` tested by `test`; `nullable` if `lhs` may be NULL.
    fn test<T>(
        &mut self,
        lhs: &str,
        nullable: bool,
        test: &Test<T>,
        value: impl Fn(&T) -> SqlValue,
    ) -> String {
        let mut list = |values: &[T]| {
            let params: Vec<String> = values.iter().map(|v| self.bind(value(v))).collect();
            params.join(", ")
        };
        let sql = match test {
            Test::Compare(op, v) => {
                let param = self.bind(value(v));
                format!("{lhs} {} {param}", sql_op(*op))
            }
            Test::In(values) => format!("{lhs} IN ({})", list(values)),
            Test::NotIn(values) => format!("{lhs} NOT IN ({})", list(values)),
            Test::Match(pattern) => self.pattern(lhs, pattern),
        };
        if nullable {
            format!("COALESCE({sql}, FALSE)")
        } else {
            format!("({sql})")
        }
    }

    fn pattern(&mut self, lhs: &str, pattern: &Pattern) -> String {
        match (pattern, self.dialect) {
            (Pattern::Glob(glob), Dialect::Postgres) => {
                let param = self.bind(SqlValue::Text(like_pattern(glob)));
                format!("{lhs} LIKE {param} ESCAPE '\\'")
            }
            (Pattern::Glob(glob), Dialect::Sqlite) => {
                let param = self.bind(SqlValue::Text(glob.replace('[', "[[]")));
                format!("{lhs} GLOB {param}")
            }
            (Pattern::Regex(regex), Dialect::Postgres) => {
                let param = self.bind(SqlValue::Text(regex.clone()));
                format!("{lhs} ~ {param}")
            }
            (Pattern::Regex(regex), Dialect::Sqlite) => {
                let param = self.bind(SqlValue::Text(regex.clone()));
                format!("{lhs} REGEXP {param}")
            }
        }
    }

    /// `s.http_status` (or, for `error`, `s.status_code`) compared with `status`. A
    /// class is its range: `= 5xx` is 500..=599, `> 4xx` above 499, `< 4xx` below 400.
    fn status(&mut self, op: CompareOp, status: Status) -> String {
        match status {
            Status::Code(code) => {
                let p = self.bind(SqlValue::I64(code.into()));
                format!("s.http_status {} {p}", sql_op(op))
            }
            Status::Class(class) => {
                let low = i64::from(class) * 100;
                let (low, high) = (low, low + 99);
                let bound = |c: &mut Self, v| c.bind(SqlValue::I64(v));
                match op {
                    CompareOp::Eq | CompareOp::Ne => {
                        let (lo, hi) = (bound(self, low), bound(self, high));
                        let not = if op == CompareOp::Ne { "NOT " } else { "" };
                        format!("s.http_status {not}BETWEEN {lo} AND {hi}")
                    }
                    CompareOp::Gt | CompareOp::Le => {
                        format!("s.http_status {} {}", sql_op(op), bound(self, high))
                    }
                    CompareOp::Ge | CompareOp::Lt => {
                        format!("s.http_status {} {}", sql_op(op), bound(self, low))
                    }
                }
            }
            Status::Error => {
                let p = self.bind(SqlValue::I64(OTEL_STATUS_ERROR.into()));
                format!("s.status_code {} {p}", sql_op(op))
            }
        }
    }

    fn any_status(&mut self, values: &[Status]) -> String {
        let terms: Vec<String> = values
            .iter()
            .map(|s| self.status(CompareOp::Eq, *s))
            .collect();
        format!("({})", terms.join(" OR "))
    }

    /// The attribute `key` of the span as a SQL value of `kind`, NULL if it is
    /// missing or of another JSON type.
    fn attribute(&mut self, key: &str, kind: JsonKind) -> String {
        match self.dialect {
            Dialect::Postgres => {
                let k = self.bind(SqlValue::Text(key.to_string()));
                let (json_type, cast) = match kind {
                    JsonKind::Text => ("string", ""),
                    JsonKind::Number => ("number", "::numeric"),
                    JsonKind::Bool => ("boolean", "::boolean"),
                };
                // CASE, not AND: PostgreSQL may evaluate either side of AND first,
                // and the cast fails on values of other types.
                format!(
                    "CASE WHEN jsonb_typeof(s.attributes -> {k}) = '{json_type}' \
                     THEN (s.attributes ->> {k}){cast} END"
                )
            }
            Dialect::Sqlite => {
                // Keys are letters, digits, `.`, `_` and `-` (the parser's rule), so
                // quoting the key is all the path needs.
                let path = self.bind(SqlValue::Text(format!("$.\"{key}\"")));
                let json_types = match kind {
                    JsonKind::Text => "'text'",
                    JsonKind::Number => "'integer', 'real'",
                    JsonKind::Bool => "'true', 'false'",
                };
                format!(
                    "CASE WHEN json_type(s.attributes, {path}) IN ({json_types}) \
                     THEN json_extract(s.attributes, {path}) END"
                )
            }
        }
    }
}

fn json_kind(value: &AttrValue) -> JsonKind {
    match value {
        AttrValue::Text(_) => JsonKind::Text,
        AttrValue::Number(_) => JsonKind::Number,
        AttrValue::Bool(_) => JsonKind::Bool,
    }
}

fn sql_op(op: CompareOp) -> &'static str {
    match op {
        CompareOp::Eq => "=",
        CompareOp::Ne => "<>",
        CompareOp::Gt => ">",
        CompareOp::Ge => ">=",
        CompareOp::Lt => "<",
        CompareOp::Le => "<=",
    }
}

/// A glob as a `LIKE` pattern with `\` as the escape character.
fn like_pattern(glob: &str) -> String {
    let mut like = String::with_capacity(glob.len() + 8);
    for c in glob.chars() {
        match c {
            '*' => like.push('%'),
            '?' => like.push('_'),
            '%' | '_' | '\\' => {
                let _ = write!(like, "\\{c}");
            }
            c => like.push(c),
        }
    }
    like
}

#[cfg(test)]
mod tests;
