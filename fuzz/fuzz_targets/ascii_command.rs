//! Fuzzes the classic ASCII command parser, `parse_command`, the way a
//! connection drives it: the input is a pipelined stream parsed from the
//! front until it needs more bytes or must close, skipping after each
//! recoverable error as the connection would. Checked at every step, under
//! roomy and under tight limits, beyond "no panic":
//!
//! - progress: a parsed command consumes 1..=buffered bytes; `Skip(n)` has
//!   n > 0 and stays inside the buffer unless it swallows an oversized
//!   value's data block (which the connection discards as it arrives); there
//!   is at most one parse per input byte, plus the last;
//! - bounded buffering: "need more" is only answered while less than one
//!   maximal request (line limit + value limit + CRLF) is buffered;
//! - spans: every span lies inside the bytes the command consumed, every key
//!   is 1..=`max_key_len` bytes, and `Get::key_count` is what `Get::keys`
//!   yields;
//! - split independence: no proper prefix of a parsed command (cut at a few
//!   points) is anything but "need more";
//! - round trip: `encode_command` then `parse_command` gives an equal
//!   command, compared field by field through the spans' bytes (spans move
//!   in the canonical form), consuming exactly the encoding; and the
//!   canonical form re-encodes to itself.
#![no_main]

#[path = "common/stream.rs"]
mod stream;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use shoal_protocol::ascii::{
    encode_command, parse_command, ArithVerb, Command, GetVerb, StoreVerb,
};
use shoal_protocol::{Exptime, Limits, Span};

/// What a command means, with its spans resolved to bytes: two commands
/// parsed from different frames are equal when their views are.
#[derive(Debug, PartialEq)]
enum View<'a> {
    Get(GetVerb, Vec<&'a [u8]>),
    Store(StoreVerb, &'a [u8], u32, Exptime, &'a [u8], bool),
    Delete(&'a [u8], bool),
    Arith(ArithVerb, &'a [u8], u64, bool),
    Touch(&'a [u8], Exptime, bool),
    FlushAll(Exptime, bool),
    Verbosity(u32, bool),
    Stats(Vec<&'a [u8]>),
    Version,
    Quit,
}

/// The view of `cmd` over `frame` (the bytes it consumed), asserting that
/// every span lies inside the frame and every key is a valid length.
fn view<'a>(cmd: &Command, frame: &'a [u8], limits: &Limits) -> View<'a> {
    let of = |s: Span| -> &'a [u8] {
        assert!(
            s.start <= s.end && s.end <= frame.len(),
            "{s:?} outside a {}-byte frame",
            frame.len()
        );
        s.of(frame)
    };
    let key = |s: Span| -> &'a [u8] {
        let k = of(s);
        assert!((1..=limits.max_key_len).contains(&k.len()), "key {k:?}");
        k
    };
    match *cmd {
        Command::Get(g) => {
            of(g.keys);
            let keys: Vec<_> = g.keys(frame).map(key).collect();
            assert_eq!(keys.len(), g.key_count, "key_count disagrees with keys()");
            View::Get(g.verb, keys)
        }
        Command::Store(s) => View::Store(
            s.verb,
            key(s.key),
            s.flags,
            s.exptime,
            of(s.value),
            s.noreply,
        ),
        Command::Delete(d) => View::Delete(key(d.key), d.noreply),
        Command::Arith(a) => View::Arith(a.verb, key(a.key), a.delta, a.noreply),
        Command::Touch(t) => View::Touch(key(t.key), t.exptime, t.noreply),
        Command::FlushAll(f) => View::FlushAll(f.delay, f.noreply),
        Command::Verbosity(v) => View::Verbosity(v.level, v.noreply),
        Command::Stats(s) => {
            of(s.args);
            View::Stats(s.args(frame).map(of).collect())
        }
        Command::Version => View::Version,
        Command::Quit => View::Quit,
    }
}

/// The checks on one parsed command, `frame` being exactly what it consumed.
fn check_command(cmd: &Command, frame: &[u8], limits: &Limits) {
    let meaning = view(cmd, frame, limits);
    let n = frame.len();
    for cut in [0, 1, n / 2, n.saturating_sub(2), n - 1] {
        if cut < n {
            assert_eq!(
                parse_command(&frame[..cut], limits),
                Ok(None),
                "a {cut}-byte prefix of a {n}-byte command"
            );
        }
    }
    let mut wire = BytesMut::new();
    encode_command(&mut wire, cmd, frame);
    // The canonical line may be longer than the original (a bare LF becomes
    // CRLF), so only the line limit is relaxed for the re-parse.
    let relaxed = stream::relaxed(limits);
    let (again, used) = match parse_command(&wire, &relaxed) {
        Ok(Some(parsed)) => parsed,
        other => panic!("re-encoded {wire:?} parsed as {other:?}"),
    };
    assert_eq!(used, wire.len(), "re-encoding {wire:?} not consumed whole");
    assert_eq!(view(&again, &wire, &relaxed), meaning, "{wire:?}");
    let mut twice = BytesMut::new();
    encode_command(&mut twice, &again, &wire);
    assert_eq!(twice, wire, "the canonical form is not a fixed point");
}

fuzz_target!(|data: &[u8]| {
    for limits in stream::limit_sets() {
        stream::drive(data, &limits, parse_command, check_command, |e| {
            e.reason == "object too large for cache"
        });
    }
});
