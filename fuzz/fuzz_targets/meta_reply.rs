//! Fuzzes the meta reply parser, `parse_meta_reply` (what the proxy reads
//! from nodes, which are peers that may misbehave), over a pipelined stream
//! of replies (`HD`, `VA` with data, `EN`, `MN`, `ME`, errors …). Checked at
//! every step, under roomy and under tight limits, beyond "no panic":
//!
//! - progress: a parsed reply consumes 1..=buffered bytes; a `Skip(n)` (an
//!   oversized `VA`) has n > 0; there is at most one parse per input byte,
//!   plus the last;
//! - bounded buffering: "need more" is only answered while less than one
//!   maximal reply (line limit + value limit + CRLF) is buffered;
//! - spans lie inside the bytes the reply consumed;
//! - round trip: parse → `encode_meta_reply` → parse gives an equal reply,
//!   compared through the spans' bytes (return flags in order), consuming
//!   exactly the encoding; and the encoding re-encodes to itself.
#![no_main]

#[path = "common/stream.rs"]
mod stream;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use shoal_protocol::meta::{
    encode_meta_reply, parse_meta_reply, ErrorReply, MetaReply, ReplyFlags, Status,
};
use shoal_protocol::{Limits, Span};

/// What a reply means, with its spans resolved to bytes.
#[derive(Debug, PartialEq)]
enum View<'a> {
    Status(Status, Vec<(u8, &'a [u8])>),
    Value(Vec<(u8, &'a [u8])>, &'a [u8]),
    Noop,
    Debug(&'a [u8], &'a [u8]),
    Error(ErrorReply, &'a [u8]),
}

/// `s` in `frame`, asserting it lies inside.
fn of(s: Span, frame: &[u8]) -> &[u8] {
    assert!(
        s.start <= s.end && s.end <= frame.len(),
        "{s:?} outside a {}-byte frame",
        frame.len()
    );
    s.of(frame)
}

fn flags_view<'a>(flags: &ReplyFlags, frame: &'a [u8]) -> Vec<(u8, &'a [u8])> {
    flags.iter().map(|f| (f.flag, of(f.token, frame))).collect()
}

/// The view of `reply` over `frame` (the bytes it consumed).
fn view<'a>(reply: &MetaReply, frame: &'a [u8]) -> View<'a> {
    match *reply {
        MetaReply::Status { status, flags } => View::Status(status, flags_view(&flags, frame)),
        MetaReply::Value { flags, value } => {
            View::Value(flags_view(&flags, frame), of(value, frame))
        }
        MetaReply::Noop => View::Noop,
        MetaReply::Debug { key, info } => View::Debug(of(key, frame), of(info, frame)),
        MetaReply::Error { kind, message } => View::Error(kind, of(message, frame)),
    }
}

/// The checks on one parsed reply, `frame` being exactly what it consumed.
fn check_reply(reply: &MetaReply, frame: &[u8], limits: &Limits) {
    let meaning = view(reply, frame);
    let mut wire = BytesMut::new();
    encode_meta_reply(&mut wire, reply, frame);
    // The encoding may be longer than the original (a bare LF becomes CRLF),
    // so only the line limit is relaxed for the re-parse.
    let relaxed = stream::relaxed(limits);
    let (again, used) = match parse_meta_reply(&wire, &relaxed) {
        Ok(Some(parsed)) => parsed,
        other => panic!("re-encoded {wire:?} parsed as {other:?}"),
    };
    assert_eq!(used, wire.len(), "re-encoding {wire:?} not consumed whole");
    assert_eq!(view(&again, &wire), meaning, "{wire:?}");
    let mut twice = BytesMut::new();
    encode_meta_reply(&mut twice, &again, &wire);
    assert_eq!(twice, wire, "the encoding is not a fixed point");
}

fuzz_target!(|data: &[u8]| {
    for limits in stream::limit_sets() {
        stream::drive(data, &limits, parse_meta_reply, check_reply, |_| true);
    }
});
