//! `catalog::store::decode_leadership`: the catalog's `leadership` file image (magic, CRC,
//! length, MessagePack `Leadership`), read at every start.
//!
//! The input is decoded as it is, and also sealed with the right magic, CRC and length, so
//! that it reaches the MessagePack decoder.
//!
//! Checks: no panic; a record that decodes re-encodes (`encode_leadership`) to an image that
//! decodes to the same record and is canonical.
#![no_main]

use catalog::store::{decode_leadership, encode_leadership};
use libfuzzer_sys::fuzz_target;
use stock_bazaar_fuzz::seal_leadership;

fn check(image: &[u8]) {
    let Ok(record) = decode_leadership(image) else {
        return;
    };
    let encoded = encode_leadership(&record).expect("a decoded record encodes");
    let again = decode_leadership(&encoded)
        .unwrap_or_else(|e| panic!("{record:?} re-encoded does not decode: {e}"));
    assert_eq!(again, record);
    assert_eq!(encode_leadership(&again).expect("encodes"), encoded);
}

fuzz_target!(|data: &[u8]| {
    check(data);
    check(&seal_leadership(data));
});
