use super::*;
use coral_analysis::filter::parse;

fn pg(filter: &str, first: usize) -> (String, Vec<SqlValue>) {
    compile(&parse(filter).unwrap(), Dialect::Postgres, first)
}

fn lite(filter: &str, first: usize) -> (String, Vec<SqlValue>) {
    compile(&parse(filter).unwrap(), Dialect::Sqlite, first)
}

fn text(s: &str) -> SqlValue {
    SqlValue::Text(s.into())
}

#[test]
fn fields_map_to_columns_and_values_to_numbered_parameters() {
    let (sql, values) = pg("duration > 1s and (status = 5xx or status = error)", 4);
    assert_eq!(
        sql,
        "((tp.duration_ns > $4) AND (COALESCE(s.http_status BETWEEN $5 AND $6, FALSE) \
         OR COALESCE(s.status_code = $7, FALSE)))"
    );
    assert_eq!(
        values,
        [
            SqlValue::I64(1_000_000_000),
            SqlValue::I64(500),
            SqlValue::I64(599),
            SqlValue::I64(2)
        ]
    );
    let (sql, _) = lite("duration > 1s and (status = 5xx or status = error)", 4);
    assert_eq!(
        sql,
        "((tp.duration_ns > ?4) AND (COALESCE(s.http_status BETWEEN ?5 AND ?6, FALSE) \
         OR COALESCE(s.status_code = ?7, FALSE)))"
    );

    let (sql, values) = pg(
        "not name in (a, b) and trace != 0af7651916cd43dd8448eb211c80319c",
        1,
    );
    assert_eq!(
        sql,
        "((NOT (tp.span_name IN ($1, $2))) AND (tp.trace_id <> $3))"
    );
    assert_eq!(
        values[2],
        SqlValue::Bytes(hex::decode("0af7651916cd43dd8448eb211c80319c").unwrap())
    );

    let (sql, _) = pg(
        "status not in (404, 5xx) and status > 4xx and status < 2xx",
        1,
    );
    assert_eq!(
        sql,
        "(COALESCE(NOT (s.http_status = $1 OR s.http_status BETWEEN $2 AND $3), FALSE) \
         AND COALESCE(s.http_status > $4, FALSE) AND COALESCE(s.http_status < $5, FALSE))"
    );
}

#[test]
fn urls_are_matched_without_their_query_string() {
    let (sql, values) = pg(r#"url ~ "/a_b%*?""#, 1);
    assert_eq!(
        sql,
        r"COALESCE(split_part(s.url, '?', 1) LIKE $1 ESCAPE '\', FALSE)"
    );
    assert_eq!(values, [text(r"/a\_b\%%_")]);
    let (sql, values) = lite(r#"url ~ "/a[b]*""#, 1);
    assert_eq!(
        sql,
        "COALESCE(substr(s.url, 1, instr(s.url || '?', '?') - 1) GLOB ?1, FALSE)"
    );
    assert_eq!(values, [text("/a[[]b]*")]);
    let (sql, values) = lite(r"route ~ /^\/v[0-9]+$/", 1);
    assert_eq!(sql, "COALESCE(s.route REGEXP ?1, FALSE)");
    assert_eq!(values, [text("^/v[0-9]+$")]);
    assert_eq!(pg(r"route ~ /x/", 1).0, "COALESCE(s.route ~ $1, FALSE)");
}

#[test]
fn attributes_bind_their_key_and_read_one_json_type() {
    let (sql, values) = pg("attr.retry >= 3", 2);
    assert_eq!(
        sql,
        "COALESCE(CASE WHEN jsonb_typeof(s.attributes -> $2) = 'number' \
         THEN (s.attributes ->> $2)::numeric END >= $3::numeric, FALSE)"
    );
    assert_eq!(values, [text("retry"), SqlValue::F64(3.0)]);
    let (sql, values) = lite("attr.http.method in (GET, POST)", 1);
    assert_eq!(
        sql,
        "COALESCE(CASE WHEN json_type(s.attributes, ?1) IN ('text') \
         THEN json_extract(s.attributes, ?1) END IN (?2, ?3), FALSE)"
    );
    assert_eq!(
        values,
        [text("$.\"http.method\""), text("GET"), text("POST")]
    );
    let (sql, values) = lite("attr.cached = true", 1);
    assert!(sql.contains("IN ('true', 'false')"), "{sql}");
    assert_eq!(values[1], SqlValue::Bool(true));
    let (sql, _) = pg("attr.cached != false", 1);
    assert!(
        sql.contains("= 'boolean' THEN (s.attributes ->> $1)::boolean END <> $2"),
        "{sql}"
    );
}

#[test]
fn no_filter_text_reaches_the_sql() {
    let evil = [
        r#"name = "x' OR '1'='1""#,
        r#"url = "'; DROP TABLE spans; --""#,
        r#"route in ("/* */", "--", "$1", "?1")"#,
        r#"attr.a-b = "'); DELETE FROM trace_profiles; --""#,
        r#"name ~ "*' OR 1=1 --*""#,
        r"name ~ /'; DROP TABLE spans; --/",
        "attr.x--y = 1",
    ];
    for filter in evil {
        for dialect in [Dialect::Postgres, Dialect::Sqlite] {
            let (sql, values) = compile(&parse(filter).unwrap(), dialect, 1);
            for needle in ["DROP", "DELETE", "OR '1'", "/*", "--", "1=1", "x--y", "a-b"] {
                assert!(!sql.contains(needle), "{filter} → {sql}");
            }
            // Every quote in the SQL belongs to this module's own literals.
            let quotes = sql.matches('\'').count();
            let own = [
                "'?'",
                "'\\'",
                "'text'",
                "'integer'",
                "'real'",
                "'true'",
                "'false'",
                "'string'",
                "'number'",
                "'boolean'",
            ]
            .iter()
            .map(|l| 2 * sql.matches(l).count())
            .sum::<usize>();
            assert_eq!(quotes, own, "{filter} → {sql}");
            assert!(!values.is_empty());
        }
    }
}
