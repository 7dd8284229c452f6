//! Fuzzes the Couchbase bucket-config JSON reader and the streaming
//! splitter. Invariants: a config that parses serialises and parses back to
//! an equal value; validation never panics and a validated map only names
//! servers that exist; splitting the same bytes at any chunk size yields the
//! same documents.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_vbmap::config::{BucketConfig, StreamSplitter};

fuzz_target!(|data: &[u8]| {
    if let Ok(config) = BucketConfig::parse_slice(data) {
        let again = BucketConfig::parse(&config.to_json()).expect("serialised config parses");
        assert_eq!(again, config);
        if let Ok(map) = config.validate() {
            let servers = map.servers().len();
            if let Some(vbmap) = map.vbucket_map() {
                for (_, chain) in vbmap.chains() {
                    for server in chain.iter().flatten() {
                        assert!((*server as usize) < servers);
                    }
                }
            }
        }
    }

    let split = |chunk: usize| {
        let mut splitter = StreamSplitter::new(1 << 16);
        let mut docs = Vec::new();
        for piece in data.chunks(chunk.max(1)) {
            match splitter.push(piece) {
                Ok(mut more) => docs.append(&mut more),
                Err(_) => return None,
            }
        }
        Some(docs)
    };
    let whole = split(data.len());
    let first = data.first().copied().unwrap_or(1) as usize % 7 + 1;
    assert_eq!(split(first), whole);
});
