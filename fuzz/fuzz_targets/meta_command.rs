//! Fuzzes the meta command parser, `parse_meta`, the way a connection drives
//! it: the input is a pipelined stream parsed from the front until it needs
//! more bytes or must close, skipping after each recoverable error as the
//! connection would. Checked at every step, under roomy and under tight
//! limits, beyond "no panic":
//!
//! - progress: a parsed command consumes 1..=buffered bytes; `Skip(n)` has
//!   n > 0 (it may reach past the buffer: after an `ms` line is refused its
//!   data block is swallowed as it arrives); there is at most one parse per
//!   input byte, plus the last;
//! - bounded buffering: "need more" is only answered while less than one
//!   maximal request (line limit + value limit + CRLF) is buffered;
//! - spans: the key, value, opaque and hint spans lie inside the bytes the
//!   command consumed; a key is 1..=`max_key_len` bytes; an `ms` value is
//!   exactly its declared length;
//! - split independence: no proper prefix of a parsed command (cut at a few
//!   points) is anything but "need more";
//! - round trip: `encode_meta` then `parse_meta` gives an equal command —
//!   verb, key bytes, `b`, every flag in order with its value, and the data —
//!   consuming exactly the encoding; and the encoding re-encodes to itself.
#![no_main]

#[path = "common/stream.rs"]
mod stream;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use shoal_protocol::meta::{encode_meta, parse_meta, Flag, MetaCommand, MetaFlags};
use shoal_protocol::{Exptime, Limits, Span};

/// The flags of a request with their tokens resolved to bytes.
#[derive(Debug, PartialEq)]
struct FlagsView<'a> {
    order: Vec<Flag>,
    opaque: Option<&'a [u8]>,
    hint_p: Option<&'a [u8]>,
    hint_l: Option<&'a [u8]>,
    ttls: [Option<Exptime>; 3],
    cas: Option<u64>,
    client_flags: Option<u32>,
    mode: Option<u8>,
    delta: Option<u64>,
    initial: Option<u64>,
}

/// What a command means, with its spans resolved to bytes: two commands
/// parsed from different frames are equal when their views are.
#[derive(Debug, PartialEq)]
struct View<'a> {
    verb: &'static str,
    key: Option<&'a [u8]>,
    base64: bool,
    flags: Option<FlagsView<'a>>,
    value: Option<&'a [u8]>,
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

fn flags_view<'a>(f: &MetaFlags, frame: &'a [u8]) -> FlagsView<'a> {
    let token = |s: Option<Span>| s.map(|s| of(s, frame));
    let order: Vec<Flag> = f.iter().collect();
    assert_eq!(order.len(), f.len());
    for flag in &order {
        assert!(f.has(*flag));
    }
    FlagsView {
        order,
        opaque: token(f.opaque()),
        hint_p: token(f.hint_p()),
        hint_l: token(f.hint_l()),
        ttls: [f.ttl(), f.vivify_ttl(), f.recache_ttl()],
        cas: f.compare_cas(),
        client_flags: f.client_flags(),
        mode: f.mode(),
        delta: f.delta(),
        initial: f.initial(),
    }
}

/// The view of `cmd` over `frame` (the bytes it consumed), asserting that
/// every span lies inside the frame and the key is a valid length.
fn view<'a>(cmd: &MetaCommand, frame: &'a [u8], limits: &Limits) -> View<'a> {
    let key = cmd.key().map(|k| {
        let k = of(k, frame);
        assert!((1..=limits.max_key_len).contains(&k.len()), "key {k:?}");
        k
    });
    let (verb, value) = match cmd {
        MetaCommand::Get(_) => ("mg", None),
        MetaCommand::Set(s) => {
            assert_eq!(s.datalen, s.value.len(), "ms value is not its datalen");
            ("ms", Some(of(s.value, frame)))
        }
        MetaCommand::Delete(_) => ("md", None),
        MetaCommand::Arith(_) => ("ma", None),
        MetaCommand::Noop => ("mn", None),
        MetaCommand::Debug(_) => ("me", None),
    };
    View {
        verb,
        key,
        base64: cmd.base64(),
        flags: cmd.flags().map(|f| flags_view(f, frame)),
        value,
    }
}

/// The checks on one parsed command, `frame` being exactly what it consumed.
fn check_command(cmd: &MetaCommand, frame: &[u8], limits: &Limits) {
    let meaning = view(cmd, frame, limits);
    let n = frame.len();
    for cut in [0, 1, n / 2, n.saturating_sub(2), n - 1] {
        if cut < n {
            assert_eq!(
                parse_meta(&frame[..cut], limits),
                Ok(None),
                "a {cut}-byte prefix of a {n}-byte command"
            );
        }
    }
    let mut wire = BytesMut::new();
    encode_meta(&mut wire, cmd, frame);
    // The encoded line may be longer than the original (a bare LF becomes
    // CRLF), so only the line limit is relaxed for the re-parse.
    let relaxed = stream::relaxed(limits);
    let (again, used) = match parse_meta(&wire, &relaxed) {
        Ok(Some(parsed)) => parsed,
        other => panic!("re-encoded {wire:?} parsed as {other:?}"),
    };
    assert_eq!(used, wire.len(), "re-encoding {wire:?} not consumed whole");
    assert_eq!(view(&again, &wire, &relaxed), meaning, "{wire:?}");
    let mut twice = BytesMut::new();
    encode_meta(&mut twice, &again, &wire);
    assert_eq!(twice, wire, "the encoding is not a fixed point");
}

fuzz_target!(|data: &[u8]| {
    for limits in stream::limit_sets() {
        stream::drive(data, &limits, parse_meta, check_command, |_| true);
    }
});
