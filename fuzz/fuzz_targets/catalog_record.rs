//! `catalog::store::decode_records`: the catalog's write-ahead log image, read at recovery.
//!
//! The input is decoded as it is, and also cut at every 0xC1 byte (a byte MessagePack never
//! uses) into payloads that are framed with a correct length and CRC, so that the payloads
//! reach the MessagePack decoders of a trade and of a refusal.
//!
//! Checks: no panic; the intact prefix is no longer than the input and ends on a record
//! boundary; on framed payloads it stops exactly at the first payload that is empty or is
//! neither (`decode_payload`); the records decoded re-encode (`encode_record`) to a log that
//! decodes to the same records, all of it.
#![no_main]

use catalog::book::LogRecord;
use catalog::store::{decode_payload, decode_records, encode_record};
use libfuzzer_sys::fuzz_target;
use stock_bazaar_fuzz::frame_record;

/// MAX_RECORD_BYTES in catalog/src/store.rs.
const MAX_RECORD_BYTES: usize = 64 * 1024;

fn reencode(records: &[LogRecord]) {
    let mut log = Vec::new();
    for record in records {
        log.extend_from_slice(&encode_record(record).expect("a decoded record encodes"));
    }
    let (again, intact) = decode_records(&log);
    assert_eq!(
        intact,
        log.len(),
        "a log of re-encoded records is not intact"
    );
    assert_eq!(again, records);
}

fuzz_target!(|data: &[u8]| {
    // The raw image.
    let (records, intact) = decode_records(data);
    assert!(
        intact <= data.len(),
        "intact prefix {intact} of {} bytes",
        data.len()
    );
    assert!(records.is_empty() == (intact == 0));
    // The prefix alone decodes to the same records, and nothing is left over.
    let (again, again_intact) = decode_records(&data[..intact]);
    assert_eq!(again_intact, intact);
    assert_eq!(again, records);
    reencode(&records);

    // Payloads framed correctly.
    let payloads: Vec<&[u8]> = data.split(|&b| b == 0xC1).collect();
    let mut log = Vec::new();
    for payload in &payloads {
        frame_record(payload, &mut log);
    }
    let (records, intact) = decode_records(&log);
    assert!(intact <= log.len());
    let mut expected_intact = 0;
    let mut expected = 0;
    for payload in &payloads {
        if payload.is_empty() || payload.len() > MAX_RECORD_BYTES {
            break;
        }
        match decode_payload(payload) {
            Some(record) => assert_eq!(records.get(expected), Some(&record)),
            None => break,
        }
        expected += 1;
        expected_intact += 8 + payload.len();
    }
    assert_eq!(records.len(), expected);
    assert_eq!(intact, expected_intact);
    reencode(&records);
});
