//! Helpers shared by the fuzz targets and the seed generator.

/// The front end's default per-trade cap (`--max-trade`, frontend/src/config.rs).
pub const DEFAULT_MAX_TRADE: u64 = 1_000_000;

/// One write-ahead-log record around `payload`, with a correct length and CRC, as
/// `catalog::store::encode_record` frames it.
pub fn frame_record(payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_be_bytes());
    out.extend_from_slice(payload);
}

/// A leadership file image around `payload`, with the right magic, CRC and length, as the
/// catalog's private `seal` writes it.
pub fn seal_leadership(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 20);
    out.extend_from_slice(b"SBLEAD01");
    out.extend_from_slice(&crc32fast::hash(payload).to_be_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An order-log line body with its correct checksum appended (no newline).
pub fn checksummed_line(body: &str) -> String {
    format!("{body}\t{:08x}", crc32fast::hash(body.as_bytes()))
}
