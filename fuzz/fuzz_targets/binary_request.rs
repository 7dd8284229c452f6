//! Fuzzes the binary request parser. Invariants beyond "no panic": a parsed
//! frame re-encodes to exactly the bytes it was parsed from; spans stay
//! inside the consumed frame; every proper prefix of a parsed frame is
//! "need more" (or the same verdict the header alone gives); a recoverable
//! error skips at least a header, so the stream always makes progress.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use shoal_protocol::binary::{encode_request, parse_request, HEADER_LEN};
use shoal_protocol::{Limits, Recovery};

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_value_len: 4096,
        ..Limits::default()
    };
    match parse_request(data, &limits) {
        Ok(Some((req, used))) => {
            assert!(used <= data.len() && used >= HEADER_LEN);
            assert_eq!(used, req.frame_len());
            let frame = &data[..used];
            for span in [req.extras_span(), req.key, req.value] {
                assert!(span.start <= span.end && span.end <= used);
            }
            let mut out = BytesMut::new();
            encode_request(
                &mut out,
                &req.header.fields(),
                req.extras_span().of(frame),
                req.key.of(frame),
                req.value.of(frame),
            )
            .expect("a parsed request re-encodes");
            assert_eq!(&out[..], frame, "re-encoding changed the frame");
            for cut in [0, 1, HEADER_LEN - 1, HEADER_LEN, used - 1] {
                if cut < used {
                    if let Ok(Some(_)) = parse_request(&data[..cut], &limits) {
                        panic!("a prefix of {cut} bytes parsed as a whole request");
                    }
                }
            }
        }
        Ok(None) => assert!(data.len() < limits.max_binary_body() + HEADER_LEN),
        Err(e) => {
            if let Recovery::Skip(n) = e.recovery {
                assert!(n >= HEADER_LEN, "skip of {n} bytes would not make progress");
            }
        }
    }
});
