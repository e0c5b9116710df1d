//! URL globs (`coral_analysis::criteria::UrlPattern`) on arbitrary text: the input is
//! split at its first newline into a pattern and a URL. Parsing and matching may not
//! panic; a parsed pattern's `Display` parses back to an equal pattern; and matching
//! agrees with a plain dynamic-programming glob matcher over characters (`*` any run,
//! `?` one character, the URL's query string ignored). `criteria`'s
//! `mutated_globs_match_like_the_reference` test checks the same on stable.

#![no_main]

use coral_analysis::criteria::UrlPattern;
use libfuzzer_sys::fuzz_target;

/// Whether `text` matches `pattern`, by the textbook O(n·m) table.
fn reference(pattern: &[char], text: &[char]) -> bool {
    // row[j]: the pattern so far matches text[..j].
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

fuzz_target!(|input: &str| {
    let (pattern, url) = input.split_once('\n').unwrap_or((input, ""));
    let Ok(parsed) = UrlPattern::parse(pattern) else {
        return;
    };
    let text = parsed.to_string();
    let again = UrlPattern::parse(&text).unwrap_or_else(|e| panic!("{pattern:?} → {text:?}: {e}"));
    assert_eq!(again, parsed);
    let path = url.split_once('?').map_or(url, |(path, _)| path);
    let pattern_chars: Vec<char> = pattern.chars().collect();
    let path_chars: Vec<char> = path.chars().collect();
    assert_eq!(
        parsed.matches(url),
        reference(&pattern_chars, &path_chars),
        "{pattern:?} vs {url:?}"
    );
});
