//! The cohort filter parser on arbitrary text: it never panics, and the canonical
//! form of whatever it accepts parses back to the same filter (when that form fits
//! the length limit: with its spaces and quotes it may be longer than the input).
//! `coral_analysis::filter`'s `mutated_filters_round_trip` test checks the same on
//! stable.

#![no_main]

use coral_analysis::filter::{MAX_FILTER_LEN, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &str| {
    let Ok(filter) = parse(input) else {
        return;
    };
    let text = filter.to_string();
    if text.len() <= MAX_FILTER_LEN {
        let again = parse(&text).unwrap_or_else(|e| panic!("{input:?} → {text:?}: {e}"));
        assert_eq!(again, filter, "{input:?} → {text:?}");
        assert_eq!(again.to_string(), text);
    }
});
