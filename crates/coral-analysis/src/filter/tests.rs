use super::*;

fn ok(input: &str) -> Filter {
    parse(input).unwrap_or_else(|e| panic!("{input:?}: {e}"))
}

fn err(input: &str) -> FilterError {
    match parse(input) {
        Ok(f) => panic!("{input:?} parsed as {f:?}"),
        Err(e) => e,
    }
}

fn cond(input: &str) -> Condition {
    match ok(input) {
        Filter::Condition(c) => c,
        other => panic!("{input:?} is {other:?}"),
    }
}

/// Parses, and checks that the canonical form is `canonical` and parses back equal.
fn canonical(input: &str, canonical: &str) {
    let f = ok(input);
    assert_eq!(f.to_string(), canonical, "{input:?}");
    assert_eq!(ok(canonical), f, "{canonical:?}");
}

const MS: i64 = 1_000_000;

#[test]
fn durations_with_units_and_bare_milliseconds() {
    use CompareOp::*;
    let cases = [
        ("duration > 1s", Gt, 1000 * MS),
        ("duration >= 100ms", Ge, 100 * MS),
        ("duration < 1.5s", Lt, 1500 * MS),
        ("duration <= 2m", Le, 120_000 * MS),
        ("duration = 1h", Eq, 3_600_000 * MS),
        ("duration == 500us", Eq, 500_000),
        ("duration != 250µs", Ne, 250_000),
        ("duration > 1000", Gt, 1000 * MS),
        ("duration > 1.5", Gt, 1_500_000),
        ("duration > 1h30m", Gt, 5_400_000 * MS),
        ("DURATION>7ns", Gt, 7),
    ];
    for (input, op, ns) in cases {
        assert_eq!(
            cond(input),
            Condition::Duration(Test::Compare(op, ns)),
            "{input}"
        );
    }
    assert_eq!(
        cond("duration in (1s, 2s)"),
        Condition::Duration(Test::In(vec![1000 * MS, 2000 * MS]))
    );
    canonical("duration>1000", "duration > 1s");
    canonical("duration > 1.5", "duration > 1500us");
    canonical("duration > 90s", "duration > 90s");
    canonical("duration > 120s", "duration > 2m");
    canonical("duration > 0", "duration > 0ns");
    canonical("duration not in (1s,2ms)", "duration not in (1s, 2ms)");
}

#[test]
fn statuses() {
    use CompareOp::*;
    assert_eq!(
        cond("status = 5xx"),
        Condition::Status(Test::Compare(Eq, Status::Class(5)))
    );
    assert_eq!(
        cond("status != 200"),
        Condition::Status(Test::Compare(Ne, Status::Code(200)))
    );
    assert_eq!(
        cond("status >= 500"),
        Condition::Status(Test::Compare(Ge, Status::Code(500)))
    );
    assert_eq!(
        cond("status = ERROR"),
        Condition::Status(Test::Compare(Eq, Status::Error))
    );
    assert_eq!(
        cond("status in (500, 503, 4XX, error)"),
        Condition::Status(Test::In(vec![
            Status::Code(500),
            Status::Code(503),
            Status::Class(4),
            Status::Error
        ]))
    );
    canonical("status not in (5XX,error)", "status not in (5xx, error)");
    canonical("status >= 4xx", "status >= 4xx");
    for bad in [
        "status = 6xx",
        "status = 99",
        "status = 600",
        "status = 0500",
        "status = \"500\"",
    ] {
        let e = err(bad);
        assert_eq!(e.column, 10, "{bad}: {e}");
        assert!(e.message.contains("a status code such as 500"), "{e}");
    }
}

#[test]
fn text_fields_globs_and_regexes() {
    use CompareOp::*;
    assert_eq!(
        cond(r#"url = "/checkout""#),
        Condition::Url(Test::Compare(Eq, "/checkout".into()))
    );
    assert_eq!(
        cond("route != checkout"),
        Condition::Route(Test::Compare(Ne, "checkout".into()))
    );
    assert_eq!(
        cond(r#"name in ("GET /", "POST /pay")"#),
        Condition::Name(Test::In(vec!["GET /".into(), "POST /pay".into()]))
    );
    assert_eq!(
        cond(r#"url ~ "/api/*/pay?""#),
        Condition::Url(Test::Match(Pattern::Glob("/api/*/pay?".into())))
    );
    assert_eq!(
        cond(r"route ~ /^\/api\/v[0-9]+\/.*$/"),
        Condition::Route(Test::Match(Pattern::Regex(r"^/api/v[0-9]+/.*$".into())))
    );
    assert_eq!(
        cond(r#"name = "say \"hi\" \\ bye""#),
        Condition::Name(Test::Compare(Eq, r#"say "hi" \ bye"#.into()))
    );
    canonical(r"url ~ /a\/b\\/", r"url ~ /a\/b\\/");
    canonical(r#"name = "q\"\\""#, r#"name = "q\"\\""#);
    canonical("name = checkout", r#"name = "checkout""#);
    canonical(r#"name not in (a, "b c")"#, r#"name not in ("a", "b c")"#);
    canonical(
        r"name ~ /\d+(?:x|y)*?\.[[:alpha:]]{2,3}\t/",
        r"name ~ /\d+(?:x|y)*?\.[[:alpha:]]{2,3}\t/",
    );
}

#[test]
fn regexes_outside_the_common_syntax_are_refused() {
    for (regex, why) in [
        ("(?i)abc", "flags"),
        (r"\bword", "assertions"),
        (r"\Aabc", "assertions"),
        (r"\pL", "Unicode"),
        (r"[\p{Greek}]", "Unicode"),
        (r"(?P<n>x)", "named groups"),
        (r"(?i:x)", "named groups"),
        (r"\x41", "hex"),
        (r"[a&&b]", "set operations"),
        (r"[[a]b]", "nested"),
        (r"[\D]", "inside brackets"),
        ("a{256}", "255"),
        ("(", "unclosed"),
        ("a**", "repetition"),
        ("^*", "repetition"),
        ("", "empty"),
    ] {
        let input = format!("name ~ /{regex}/");
        let e = err(&input);
        assert_eq!(e.column, 8, "{input}: {e}");
        assert!(e.message.contains(why), "{input}: {e}");
        assert!(e.expected.contains("regular expression"), "{e:?}");
    }
    let e = err("name ~ /((a{200}){200}){200}/");
    assert!(
        e.message.contains("too large") || e.message.contains("255"),
        "{e}"
    );
}

#[test]
fn traces_and_attributes() {
    use CompareOp::*;
    let id = "0af7651916cd43dd8448eb211c80319c";
    let bytes: [u8; 16] = [
        0x0a, 0xf7, 0x65, 0x19, 0x16, 0xcd, 0x43, 0xdd, 0x84, 0x48, 0xeb, 0x21, 0x1c, 0x80, 0x31,
        0x9c,
    ];
    assert_eq!(
        cond(&format!("trace = {id}")),
        Condition::Trace(Test::Compare(Eq, bytes))
    );
    canonical(
        &format!("trace = \"{}\"", id.to_uppercase()),
        &format!("trace = {id}"),
    );
    canonical(
        &format!("trace not in ({id})"),
        &format!("trace not in ({id})"),
    );
    for bad in [
        "trace = 0af7",
        "trace = +af7651916cd43dd8448eb211c80319c",
        "trace = xyz",
    ] {
        assert!(err(bad).message.contains("32 hex digits"), "{bad}");
    }

    let attr = |key: &str, test| Condition::Attr(key.into(), test);
    assert_eq!(
        cond("attr.http.request.method = POST"),
        attr(
            "http.request.method",
            Test::Compare(Eq, AttrValue::Text("POST".into()))
        )
    );
    assert_eq!(
        cond("attr.retry >= 3"),
        attr("retry", Test::Compare(Ge, AttrValue::Number(3.0)))
    );
    assert_eq!(
        cond("attr.temp < -1.5"),
        attr("temp", Test::Compare(Lt, AttrValue::Number(-1.5)))
    );
    assert_eq!(
        cond("ATTR.Cache-Hit = TRUE"),
        attr("Cache-Hit", Test::Compare(Eq, AttrValue::Bool(true)))
    );
    assert_eq!(
        cond(r#"attr.retry = "3""#),
        attr("retry", Test::Compare(Eq, AttrValue::Text("3".into())))
    );
    assert_eq!(
        cond(r#"attr.region ~ "eu-*""#),
        attr("region", Test::Match(Pattern::Glob("eu-*".into())))
    );
    canonical(
        "attr.a_b.c-d in (1, 2.50, -0)",
        "attr.a_b.c-d in (1, 2.5, -0)",
    );
    canonical("attr.x = 1.5s", r#"attr.x = "1.5s""#);
    canonical("attr.ok != false", "attr.ok != false");
    let e = err("attr.x in (1, \"a\")");
    assert!(e.message.contains("one type"), "{e}");
    assert_eq!(e.column, 12);
}

#[test]
fn precedence_not_and_or() {
    let f = ok("duration > 1s or status = 5xx and not url = \"/a\"");
    let Filter::Or(items) = &f else {
        panic!("{f:?}")
    };
    assert!(matches!(
        items[0],
        Filter::Condition(Condition::Duration(_))
    ));
    let Filter::And(inner) = &items[1] else {
        panic!("{f:?}")
    };
    assert!(matches!(inner[1], Filter::Not(_)));
    canonical(
        "duration > 1s OR status = 5xx AND NOT url = \"/a\"",
        "duration > 1s or status = 5xx and not url = \"/a\"",
    );
    canonical(
        "(duration > 1s or status = 5xx) and name = a",
        "(duration > 1s or status = 5xx) and name = \"a\"",
    );
    canonical(
        "((duration > 1s and (status = 5xx and name = a)))",
        "duration > 1s and status = 5xx and name = \"a\"",
    );
    canonical(
        "a_1 = 1 or (attr.b = 2 or not (attr.c = 3 and attr.d = 4))"
            .replace("a_1", "attr.a")
            .as_str(),
        "attr.a = 1 or attr.b = 2 or not (attr.c = 3 and attr.d = 4)",
    );
    canonical("not not status = 500", "not not status = 500");
    canonical("not (status = 500)", "not status = 500");
    // Keywords are whole words: `android` is a value, not `and`.
    canonical("name = android", "name = \"android\"");
}

#[test]
fn errors_point_at_the_column_and_say_what_was_expected() {
    let e = err("duration > abc");
    assert_eq!(e.column, 12);
    assert_eq!(
        e.to_string(),
        "column 12: expected a duration such as 100ms or 1.5s, found \"abc\""
    );
    assert_eq!(e.expected, "a duration such as 100ms or 1.5s");

    let e = err("status = 500 and durtion > 1s");
    assert_eq!(e.column, 18);
    assert!(e.message.contains("unknown field \"durtion\""), "{e}");
    for field in [
        "duration",
        "status",
        "url",
        "route",
        "name",
        "trace",
        "attr.<key>",
    ] {
        assert!(e.message.contains(field), "{e}");
    }

    let cases = [
        // Type errors.
        ("duration > \"abc\"", 12, "the string \"abc\""),
        ("duration ~ \"1s\"", 10, "~ matches text"),
        ("status ~ 5", 8, "~ matches text"),
        ("url > 3", 5, "no order"),
        ("trace ~ \"a\"", 7, "~ matches text"),
        ("status > error", 10, "error (which takes =, != and in)"),
        ("attr.x > \"a\"", 10, "a number after >"),
        ("attr.x >= true", 11, "a number after >="),
        // Syntax.
        ("", 1, "a condition"),
        ("   ", 4, "a condition"),
        ("duration", 9, "an operator"),
        ("duration >", 11, "a duration"),
        ("(duration > 1s", 15, "and, or or )"),
        ("duration > 1s)", 14, "the end of the filter"),
        ("duration > 1s status = 500", 15, "and, or or the end"),
        ("status in 500", 11, "( to start the list"),
        ("status in (500,)", 16, "a status code"),
        ("status in (500 503)", 16, ", or )"),
        ("status not 500", 12, "in after not"),
        ("name = \"abc", 12, "\" to close the string"),
        (
            "name = \"a\\nb\"",
            10,
            "escapes in a string), found \"\\n\"",
        ),
        ("name = \"a\tb\"", 10, "control characters"),
        ("name ~ /abc", 12, "/ to close"),
        ("name ~ abc", 8, "a glob in double quotes"),
        ("url = /checkout", 7, "/…/ is a regular expression"),
        ("attr. = 1", 1, "attribute key"),
        ("attr.a/b = 1", 7, "an operator"),
        ("attr.é = 1", 1, "attribute key"),
        ("duration > 1s and", 18, "a condition"),
        ("not", 4, "a condition"),
        ("duration > 99999999999h", 12, "a duration"),
        ("duration > -1s", 12, "a duration"),
    ];
    for (input, column, text) in cases {
        let e = err(input);
        assert_eq!(e.column, column, "{input:?}: {e}");
        assert!(e.message.contains(text), "{input:?}: {e}");
        assert!(e.message.contains(&e.expected), "{e:?}");
    }
    // Columns count characters, not bytes.
    assert_eq!(err("name = \"é\" and x = 1").column, 16);
}

#[test]
fn injection_attempts_are_errors_or_plain_values() {
    for (input, column) in [
        ("duration > 1s; DROP TABLE spans", 14),
        ("duration > 1s -- comment", 15),
        ("duration > 1s /* */", 15),
        ("name = 'x' OR '1'='1'", 8),
        ("url = /* */", 7),
        ("status = 500; DELETE FROM spans", 13),
        ("attr.x'--= 1", 7),
    ] {
        assert_eq!(err(input).column, column, "{input}");
    }
    for (input, value) in [
        (r#"name = "x' OR '1'='1""#, "x' OR '1'='1"),
        (r#"url = "--""#, "--"),
        (r#"url = "/* */""#, "/* */"),
        (
            r#"route = "'; DROP TABLE spans; --""#,
            "'; DROP TABLE spans; --",
        ),
    ] {
        let c = cond(input);
        let text = match &c {
            Condition::Name(Test::Compare(_, t))
            | Condition::Url(Test::Compare(_, t))
            | Condition::Route(Test::Compare(_, t)) => t,
            other => panic!("{other:?}"),
        };
        assert_eq!(text, value);
    }
}

#[test]
fn limits() {
    let long = format!("name = \"{}\"", "x".repeat(MAX_FILTER_LEN));
    let e = err(&long);
    assert_eq!(e.column, MAX_FILTER_LEN + 1);
    assert!(e.message.contains("at most 4096 bytes"), "{e}");
    let fits = format!("name = \"{}\"", "x".repeat(MAX_FILTER_LEN - 9));
    assert_eq!(fits.len(), MAX_FILTER_LEN);
    ok(&fits);

    let nested = |n: usize| format!("{}status = 500{}", "(".repeat(n), ")".repeat(n));
    ok(&nested(MAX_DEPTH));
    let e = err(&nested(MAX_DEPTH + 1));
    assert_eq!(e.column, MAX_DEPTH + 1);
    assert!(e.message.contains("at most 64 nested"), "{e}");
    ok(&format!("{}status = 500", "not ".repeat(MAX_DEPTH)));
    let e = err(&format!("{}status = 500", "not ".repeat(MAX_DEPTH + 1)));
    assert_eq!(e.column, 4 * MAX_DEPTH + 1);
    // Depth is nesting, not length: long chains are fine.
    ok(&vec!["status = 500"; 200].join(" or "));
}

/// Valid filters that the mutation test starts from.
const SEEDS: &[&str] = &[
    "duration > 1s and status = 5xx",
    "duration < 100ms or (status in (500, 503) and not url ~ \"/checkout*\")",
    "name ~ /^GET \\/api\\/v[0-9]+$/ and route != \"/health\"",
    "trace = 0af7651916cd43dd8448eb211c80319c or trace not in (0af7651916cd43dd8448eb211c80319d)",
    "attr.http.request.method = POST and attr.retry >= 3 and attr.cache = true",
    "not (status = error or status >= 500) and duration in (1s, 2.5s, 1000)",
    "attr.region ~ \"eu-?\" or attr.tags not in (\"a\", \"b\\\"c\")",
    "url = \"x' OR '1'='1\" and name = \"; DROP TABLE spans; --\"",
];

/// Pieces the mutations insert: the language's tokens and troublemakers.
const PIECES: &[&str] = &[
    " ",
    "(",
    ")",
    "\"",
    "\\",
    "/",
    "~",
    "=",
    "!=",
    ">=",
    "<",
    ",",
    "and ",
    " or ",
    "not ",
    " in ",
    "*",
    "?",
    "5xx",
    "1.5s",
    "-",
    ".",
    "attr.",
    "é",
    "\u{0}",
    "\n",
    "[",
    "{300}",
    "(?i)",
    "\\b",
    "duration",
    "status",
    "url",
    "error",
    "true",
    "99999999999999999999",
];

fn mutate(rng: &mut fastrand::Rng, input: &str) -> String {
    let mut chars: Vec<char> = input.chars().collect();
    for _ in 0..rng.usize(1..4) {
        let at = rng.usize(0..=chars.len());
        match rng.u8(0..4) {
            0 if !chars.is_empty() => {
                let end = (at + rng.usize(1..4)).min(chars.len());
                chars.drain(at.min(end)..end);
            }
            1 => {
                let piece = PIECES[rng.usize(0..PIECES.len())];
                chars.splice(at..at, piece.chars());
            }
            2 if !chars.is_empty() => {
                let from = rng.usize(0..chars.len());
                let end = (from + rng.usize(1..12)).min(chars.len());
                let copy: Vec<char> = chars[from..end].to_vec();
                chars.splice(at..at, copy);
            }
            _ => {
                let other = SEEDS[rng.usize(0..SEEDS.len())];
                chars.splice(at..at, format!(" or {other}").chars());
            }
        }
    }
    chars.into_iter().collect()
}

/// What the `filter_parser` fuzz target checks, over seeded mutations of valid
/// filters: parsing never panics, and the canonical form of a filter parses back to
/// it (when it fits the length limit: it may be longer than the input, with its
/// spaces and quotes) and is stable.
#[test]
fn mutated_filters_round_trip() {
    let mut rng = fastrand::Rng::with_seed(0x5eed_f11e);
    let (mut parsed, mut refused) = (0, 0);
    for seed in SEEDS {
        ok(seed);
    }
    for _ in 0..5000 {
        let seed = SEEDS[rng.usize(0..SEEDS.len())];
        let input = mutate(&mut rng, seed);
        match parse(&input) {
            Ok(filter) => {
                parsed += 1;
                let text = filter.to_string();
                if text.len() <= MAX_FILTER_LEN {
                    let again =
                        parse(&text).unwrap_or_else(|e| panic!("{input:?} → {text:?}: {e}"));
                    assert_eq!(again, filter, "{input:?} → {text:?}");
                    assert_eq!(again.to_string(), text);
                }
            }
            Err(e) => {
                refused += 1;
                assert!(
                    e.column >= 1 && e.column <= input.chars().count() + 1,
                    "{e}"
                );
            }
        }
    }
    assert!(
        parsed > 500 && refused > 500,
        "{parsed} parsed, {refused} refused"
    );
}

/// The error messages docs/user-guide.md shows.
#[test]
fn user_guide_error_examples() {
    for (input, message) in [
        (
            "duration > abc",
            "column 12: expected a duration such as 100ms or 1.5s, found \"abc\"",
        ),
        (
            "latency > 1s",
            "column 1: expected a field: duration, status, url, route, name, trace or \
             attr.<key>, found the unknown field \"latency\"",
        ),
        (
            "url > 3",
            "column 5: expected =, !=, ~, in or not in after url (it has no order), found \">\"",
        ),
        (
            "url = /checkout",
            "column 7: expected text in double quotes (/…/ is a regular expression, which \
             only ~ takes), found \"/\"",
        ),
        (
            "name ~ /(?i)pay/",
            "column 8: expected a regular expression that PostgreSQL and SQLite read alike, \
             found /(?i)pay/ (flags such as (?i) are not supported)",
        ),
    ] {
        assert_eq!(err(input).to_string(), message);
    }
}

#[test]
fn promoted_attributes_are_their_fields_under_their_own_name() {
    for (attr, field) in [
        ("attr.http.response.status_code = 200", "status = 200"),
        ("attr.http.status_code >= 500", "status >= 500"),
        (
            "attr.http.response.status_code in (404, 5xx)",
            "status in (404, 5xx)",
        ),
        ("attr.url.path = \"/checkout\"", "url = \"/checkout\""),
        ("attr.http.target ~ \"/cart*\"", "url ~ \"/cart*\""),
        (
            "attr.http.route = \"/users/{id}\"",
            "route = \"/users/{id}\"",
        ),
    ] {
        assert_eq!(ok(attr), ok(field), "{attr}");
    }
    // Keys are case-sensitive: another key is an ordinary attribute.
    assert!(matches!(
        cond("attr.HTTP.route = \"/x\""),
        Condition::Attr(key, _) if key == "HTTP.route"
    ));
}
