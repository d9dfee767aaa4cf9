//! `order::log::parse_line`: one line of a replica's `orders.log` (without its newline).
//!
//! The input is parsed as it is, and also with a correct checksum appended (its body then
//! reaches the field parsers, which a random checksum almost never lets it).
//!
//! Checks: no panic; an entry that parses formats (`format_line`) to one line, no longer than
//! the reader accepts, that parses back to an equal entry; an entry's own line is canonical
//! (formatting it again gives the same bytes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use order::log::{format_line, parse_line};
use stock_bazaar_fuzz::checksummed_line;

/// The longest line `read_entries` accepts, newline included (MAX_LINE_BYTES in log.rs).
const MAX_LINE_BYTES: usize = 1024;

fn check(line: &str) {
    let Some(entry) = parse_line(line) else {
        return;
    };
    let formatted = format_line(&entry);
    assert!(formatted.ends_with('\n'), "{formatted:?}");
    assert!(
        formatted.len() <= MAX_LINE_BYTES,
        "a valid entry formats to {} bytes, which the reader drops as damage",
        formatted.len()
    );
    let body = &formatted[..formatted.len() - 1];
    assert!(
        !body.contains('\n'),
        "a formatted line holds a newline: {formatted:?}"
    );
    let again = parse_line(body)
        .unwrap_or_else(|| panic!("{entry:?} formats to {body:?}, which does not parse"));
    assert_eq!(again, entry, "round trip through {body:?}");
    assert_eq!(format_line(&again), formatted);
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    check(text);
    check(&checksummed_line(text));
});
