//! Fuzzes the DCP message parser (what a node reads from a replication
//! peer) over a stream of frames, as a connection would read it.
//! Invariants beyond "no panic": every parsed message lies inside its frame;
//! re-encoding it gives the frame's exact bytes, or — when the frame had
//! bytes the message does not keep (a NOOP's vbucket, STREAM_REQ's reserved
//! word) — bytes that parse back to the same message; every proper prefix
//! of a parsed frame asks for more; an error that resynchronises skips at
//! least a header, and "need more" is only said of an incomplete frame.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use shoal_protocol::binary::dcp::{parse_dcp, DcpMessage};
use shoal_protocol::binary::HEADER_LEN;
use shoal_protocol::{Limits, Recovery, Span};

/// Every span a message holds.
fn spans(msg: &DcpMessage) -> Vec<Span> {
    match *msg {
        DcpMessage::Open(open) => vec![open.name],
        DcpMessage::Control(c) => vec![c.key, c.value],
        DcpMessage::Mutation(m) => vec![m.key, m.value, m.ext_meta],
        DcpMessage::Deletion(d) | DcpMessage::Expiration(d) => vec![d.key, d.value, d.ext_meta],
        DcpMessage::StreamAccepted { log, .. } | DcpMessage::FailoverLogReply { log, .. } => {
            vec![log.span()]
        }
        DcpMessage::Reply(r) => vec![r.extras, r.key, r.value],
        DcpMessage::Other(r) => vec![r.extras_span(), r.key, r.value],
        _ => vec![],
    }
}

fn check(msg: &DcpMessage, frame: &[u8], limits: &Limits) {
    let used = frame.len();
    for span in spans(msg) {
        assert!(span.start <= span.end && span.end <= used, "{msg:?}");
    }
    if let DcpMessage::StreamAccepted { log, .. } | DcpMessage::FailoverLogReply { log, .. } = msg {
        assert_eq!(log.entries(frame).len(), log.len());
    }
    let mut out = BytesMut::new();
    msg.encode(&mut out, frame)
        .expect("a parsed message re-encodes");
    if &out[..] != frame {
        // Not canonical: only bytes the message does not keep may differ.
        let again = parse_dcp(&out, limits)
            .expect("a re-encoded message parses")
            .expect("a re-encoded message is whole");
        assert_eq!(again, (*msg, used), "re-encoding changed the message");
    }
    for cut in [0, 1, HEADER_LEN - 1, HEADER_LEN, used - 1] {
        if cut < used {
            assert_eq!(
                parse_dcp(&frame[..cut], limits),
                Ok(None),
                "a prefix of {cut} bytes was not 'need more'"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    for limits in [
        Limits {
            max_value_len: 4096,
            ..Limits::default()
        },
        Limits {
            max_key_len: 16,
            max_value_len: 64,
            ..Limits::default()
        },
    ] {
        let mut rest = data;
        let mut parses = 0;
        loop {
            parses += 1;
            assert!(parses <= data.len() + 1, "more parses than input bytes");
            match parse_dcp(rest, &limits) {
                Ok(Some((msg, used))) => {
                    assert!(used >= HEADER_LEN && used <= rest.len());
                    check(&msg, &rest[..used], &limits);
                    rest = &rest[used..];
                }
                Ok(None) => {
                    if let Some(body) = rest.get(8..12) {
                        let body = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                        let frame_len = HEADER_LEN as u64 + u64::from(body);
                        assert!((rest.len() as u64) < frame_len, "whole frame not parsed");
                    }
                    break;
                }
                Err(e) => match e.recovery {
                    Recovery::Close => break,
                    Recovery::Skip(n) => {
                        assert!(n >= HEADER_LEN, "skip of {n} bytes would not make progress");
                        match rest.get(n..) {
                            Some(next) => rest = next,
                            None => break,
                        }
                    }
                },
            }
        }
    }
});
