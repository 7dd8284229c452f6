//! Fuzzes the binary response parser (what the proxy reads from nodes, which
//! are peers that may misbehave). A parsed reply re-encodes to its exact
//! bytes, spans stay in the frame, errors always make progress.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use shoal_protocol::binary::{encode_response, parse_response, HEADER_LEN};
use shoal_protocol::{Limits, Recovery};

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_value_len: 4096,
        ..Limits::default()
    };
    match parse_response(data, &limits) {
        Ok(Some((resp, used))) => {
            assert!(used <= data.len() && used >= HEADER_LEN);
            let frame = &data[..used];
            for span in [resp.extras, resp.key, resp.value] {
                assert!(span.start <= span.end && span.end <= used);
            }
            let mut out = BytesMut::new();
            encode_response(
                &mut out,
                &resp.header.fields(),
                resp.extras.of(frame),
                resp.key.of(frame),
                resp.value.of(frame),
            )
            .expect("a parsed response re-encodes");
            assert_eq!(&out[..], frame, "re-encoding changed the frame");
        }
        Ok(None) => {}
        Err(e) => {
            if let Recovery::Skip(n) = e.recovery {
                assert!(n >= HEADER_LEN);
            }
        }
    }
});
