//! `frontend::http::parse`: the request parser of the front end, under the server's default
//! limits and under small limits taken from the first input byte.
//!
//! Beyond "never panics" it checks what the server relies on: a complete request lies within
//! the buffer and within every limit, its body is the bytes right before `consumed`, the
//! bytes it consumed parse alone to the same request, a prefix of them is `Partial` (or
//! `AwaitingBody` right after a head that expects 100-continue), never refused; while it
//! waits for more the buffer stays within max head + max body (the server's bound); a head
//! answered `AwaitingBody` is accepted once its body arrives (the client was told to go on);
//! every refusal has a status with a reason phrase; and pipelined requests behind it parse
//! too (the server loops over its buffer the same way).
#![no_main]

use frontend::http::{parse, reason, Limits, Parsed, Request};
use libfuzzer_sys::fuzz_target;

fn check_complete(buffer: &[u8], limits: &Limits, request: &Request, consumed: usize) {
    assert!(
        consumed <= buffer.len(),
        "consumed {consumed} of {}",
        buffer.len()
    );
    assert!(consumed > 0, "a complete request consumed nothing");
    let body_len = request.body.len();
    assert!(body_len <= limits.max_body_bytes, "body over the limit");
    assert!(
        consumed - body_len <= limits.max_head_bytes,
        "head over the limit"
    );
    assert!(
        request.target.len() <= limits.max_uri_bytes,
        "target over the limit"
    );
    assert_eq!(&request.body[..], &buffer[consumed - body_len..consumed]);
    // Exactly the consumed bytes parse to the same request.
    match parse(&buffer[..consumed], limits) {
        Ok(Parsed::Complete {
            request: again,
            consumed: used,
        }) => {
            assert_eq!(used, consumed);
            assert_eq!(&again, request);
        }
        other => panic!("the consumed bytes alone parse to {other:?}"),
    }
    // The server reads a request in pieces: a strict prefix must ask for more, never be
    // refused (which would close a good client's connection).
    let head_len = consumed - body_len;
    for cut in [consumed - 1, consumed / 2, head_len] {
        if cut < consumed {
            match parse(&buffer[..cut], limits) {
                Ok(Parsed::Partial) => {}
                Ok(Parsed::AwaitingBody) if request.expects_continue && cut == head_len => {}
                other => panic!("prefix of {cut} of a {consumed}-byte request: {other:?}"),
            }
        }
    }
    assert!(
        !(request.http10 && request.expects_continue),
        "HTTP/1.0 ignores Expect"
    );
}

/// The server buffers at most a head and a body while it waits for more.
fn check_waiting(buffer: &[u8], limits: &Limits) {
    assert!(
        buffer.len() <= limits.max_head_bytes + limits.max_body_bytes,
        "waits for more with {} bytes buffered",
        buffer.len()
    );
}

fn check(buffer: &[u8], limits: &Limits) {
    let mut rest = buffer;
    // Pipelined requests, as the server's session loop parses them.
    for _ in 0..16 {
        match parse(rest, limits) {
            Ok(Parsed::Complete { request, consumed }) => {
                check_complete(rest, limits, &request, consumed);
                rest = &rest[consumed..];
            }
            Ok(Parsed::Partial) => {
                check_waiting(rest, limits);
                return;
            }
            Ok(Parsed::AwaitingBody) => {
                check_waiting(rest, limits);
                // The server answers 100 Continue; once the body is there the request must
                // be accepted. A body of the largest allowed size (and a few bytes of the
                // next request) covers any Content-Length the head may have given.
                let mut with_body = rest.to_vec();
                with_body.resize(rest.len() + limits.max_body_bytes + 3, b'x');
                match parse(&with_body, limits) {
                    Ok(Parsed::Complete { request, consumed }) => {
                        assert!(request.expects_continue);
                        assert_eq!(consumed, rest.len() + request.body.len());
                    }
                    other => panic!("AwaitingBody, then with the body: {other:?}"),
                }
                return;
            }
            Err(refusal) => {
                assert_ne!(reason(refusal.status), "Unknown", "{refusal:?}");
                assert!((400..600).contains(&refusal.status), "{refusal:?}");
                return;
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // What the server runs with by default (HttpConfig::default() uses Limits::default()).
    check(data, &Limits::default());
    // Small limits, so that every limit path is reached with short inputs.
    if let Some((&b, rest)) = data.split_first() {
        let limits = Limits {
            max_head_bytes: usize::from(b & 0x0f) * 8,
            max_headers: usize::from((b >> 4) & 0x03) * 2,
            max_uri_bytes: usize::from((b >> 6) & 0x01) * 16 + usize::from(b & 0x03),
            max_body_bytes: usize::from(b >> 7) * 8 + usize::from((b >> 2) & 0x03),
        };
        check(rest, &limits);
    }
});
