//! Fuzzes the classic ASCII reply parser, `parse_reply` (what the proxy reads
//! from nodes, which are peers that may misbehave), over a pipelined stream
//! of replies such as `VALUE … END`. Checked at every step, under roomy and
//! under tight limits, beyond "no panic":
//!
//! - progress: a parsed reply consumes 1..=buffered bytes; a `Skip(n)` has
//!   n > 0; there is at most one parse per input byte, plus the last;
//! - bounded buffering: "need more" is only answered while less than one
//!   maximal reply (line limit + value limit + CRLF) is buffered;
//! - spans lie inside the bytes the reply consumed;
//! - round trip: parse → `encode_reply` → parse gives an equal reply,
//!   compared through the spans' bytes, consuming exactly the encoding; and
//!   the encoding re-encodes to itself.
#![no_main]

#[path = "common/stream.rs"]
mod stream;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use shoal_protocol::ascii::{encode_reply, parse_reply, Reply};
use shoal_protocol::{Limits, Span};

/// What a reply means, with its spans resolved to bytes.
#[derive(Debug, PartialEq)]
enum View<'a> {
    Value(&'a [u8], u32, &'a [u8], Option<u64>),
    Number(u64),
    Version(&'a [u8]),
    Stat(&'a [u8], &'a [u8]),
    ClientError(&'a [u8]),
    ServerError(&'a [u8]),
    /// A reply without arguments (`END`, `STORED`, …).
    Fixed(Reply),
}

/// The view of `reply` over `frame` (the bytes it consumed), asserting that
/// every span lies inside the frame.
fn view<'a>(reply: &Reply, frame: &'a [u8]) -> View<'a> {
    let of = |s: Span| -> &'a [u8] {
        assert!(
            s.start <= s.end && s.end <= frame.len(),
            "{s:?} outside a {}-byte frame",
            frame.len()
        );
        s.of(frame)
    };
    match *reply {
        Reply::Value(v) => View::Value(of(v.key), v.flags, of(v.data), v.cas),
        Reply::Number(n) => View::Number(n),
        Reply::Version(v) => View::Version(of(v)),
        Reply::Stat { name, value } => View::Stat(of(name), of(value)),
        Reply::ClientError(m) => View::ClientError(of(m)),
        Reply::ServerError(m) => View::ServerError(of(m)),
        fixed => View::Fixed(fixed),
    }
}

/// The checks on one parsed reply, `frame` being exactly what it consumed.
fn check_reply(reply: &Reply, frame: &[u8], limits: &Limits) {
    let meaning = view(reply, frame);
    let mut wire = BytesMut::new();
    encode_reply(&mut wire, reply, frame);
    // The encoding may be longer than the original (a bare LF becomes CRLF),
    // so only the line limit is relaxed for the re-parse.
    let relaxed = stream::relaxed(limits);
    let (again, used) = match parse_reply(&wire, &relaxed) {
        Ok(Some(parsed)) => parsed,
        other => panic!("re-encoded {wire:?} parsed as {other:?}"),
    };
    assert_eq!(used, wire.len(), "re-encoding {wire:?} not consumed whole");
    assert_eq!(view(&again, &wire), meaning, "{wire:?}");
    let mut twice = BytesMut::new();
    encode_reply(&mut twice, &again, &wire);
    assert_eq!(twice, wire, "the encoding is not a fixed point");
}

fuzz_target!(|data: &[u8]| {
    for limits in stream::limit_sets() {
        stream::drive(data, &limits, parse_reply, check_reply, |_| true);
    }
});
