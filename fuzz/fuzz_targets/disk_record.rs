//! Fuzzes the node's on-disk record and key codecs (what warmup and
//! background fetches read back from disk). Invariants: a record that
//! decodes re-encodes to exactly the input bytes; a key that decodes
//! re-encodes to the input; nothing panics on corrupt bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_persist::decode_record;
use shoal_persist::record::{decode_key, encode_key, encode_record};

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = decode_record(data) {
        let mut out = Vec::new();
        encode_record(&record.header, record.value, &mut out);
        assert_eq!(out, data, "record did not round-trip");
    }
    if let Ok((vb, key)) = decode_key(data) {
        let mut out = Vec::new();
        encode_key(vb, key, &mut out);
        assert_eq!(out, data, "key did not round-trip");
    }
});
