//! Fuzzes the data port as a connection drives it: one pipelined stream in
//! which each request's first byte picks its parser, as the server sniffs it
//! — 0x80 the binary `parse_request`, `m` the meta `parse_meta`, anything
//! else the classic `parse_command` — so binary, meta and classic requests
//! may follow one another. Recoverable errors skip as the connection would
//! (discarding bytes that have not arrived yet as they arrive); a fatal one
//! ends the stream. Invariants beyond "no panic":
//!
//! - progress: every parse consumes 1..=buffered bytes, skips n > 0 bytes,
//!   asks for more, or closes;
//! - bounded work: at most one parse per input byte plus one per read;
//! - bounded buffering: "need more" is only answered while less than one
//!   maximal request is buffered (line + value + CRLF for text, header +
//!   body limit for binary), so no input makes a connection buffer without
//!   bound;
//! - spans lie inside the bytes each request consumed;
//! - split independence: reading the stream in small chunks (their size set
//!   by the input's length) gives exactly the same requests and errors, in
//!   the same order, as reading it whole.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_protocol::ascii::{parse_command, Command};
use shoal_protocol::binary::{looks_binary, parse_request, HEADER_LEN};
use shoal_protocol::meta::{parse_meta, MetaCommand};
use shoal_protocol::{Limits, ParseError, Recovery, Span};

/// Which parser the first byte chose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    Binary,
    Meta,
    Ascii,
}

/// What the connection saw: a request of some length, or an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    Request(Protocol, usize),
    Failed(Protocol, ParseError),
}

/// One parse at the front of the buffer.
enum Step {
    Done(Event, usize),
    NeedMore,
    Failed(Event, Recovery),
}

fn ascii_spans(cmd: &Command) -> Vec<Span> {
    match cmd {
        Command::Get(g) => vec![g.keys],
        Command::Store(s) => vec![s.key, s.value],
        Command::Stats(s) => vec![s.args],
        other => other.key().into_iter().collect(),
    }
}

fn meta_spans(cmd: &MetaCommand) -> Vec<Span> {
    let mut spans: Vec<Span> = cmd.key().into_iter().collect();
    if let MetaCommand::Set(s) = cmd {
        spans.push(s.value);
    }
    if let Some(f) = cmd.flags() {
        spans.extend([f.opaque(), f.hint_p(), f.hint_l()].into_iter().flatten());
    }
    spans
}

/// Sniff and parse the request at the front of `buf` (not empty), checking
/// what a single parse promises.
fn step(buf: &[u8], limits: &Limits) -> Step {
    let first = buf[0];
    let (protocol, parsed, bound) = if looks_binary(first) {
        let parsed = parse_request(buf, limits).map(|ok| {
            ok.map(|(req, used)| {
                assert_eq!(used, req.frame_len());
                (vec![req.extras_span(), req.key, req.value], used)
            })
        });
        let bound = HEADER_LEN + limits.max_binary_body();
        (Protocol::Binary, parsed, bound)
    } else {
        let text_bound = limits.max_line_len + limits.max_value_len + 2;
        if first == b'm' {
            let parsed =
                parse_meta(buf, limits).map(|ok| ok.map(|(cmd, used)| (meta_spans(&cmd), used)));
            (Protocol::Meta, parsed, text_bound)
        } else {
            let parsed = parse_command(buf, limits)
                .map(|ok| ok.map(|(cmd, used)| (ascii_spans(&cmd), used)));
            (Protocol::Ascii, parsed, text_bound)
        }
    };
    match parsed {
        Ok(Some((spans, used))) => {
            assert!(
                used > 0 && used <= buf.len(),
                "{protocol:?} consumed {used} of {}",
                buf.len()
            );
            for s in spans {
                assert!(
                    s.start <= s.end && s.end <= used,
                    "{protocol:?} {s:?} outside {used} bytes"
                );
            }
            Step::Done(Event::Request(protocol, used), used)
        }
        Ok(None) => {
            assert!(
                buf.len() < bound,
                "{protocol:?} still waiting with {} bytes",
                buf.len()
            );
            Step::NeedMore
        }
        Err(e) => {
            if let Recovery::Skip(n) = e.recovery {
                assert!(n > 0, "{protocol:?} {e:?} would stall the stream");
            }
            Step::Failed(Event::Failed(protocol, e), e.recovery)
        }
    }
}

/// A connection's read side: a buffer, the bytes still to discard, and what
/// it has seen.
struct Connection<'l> {
    limits: &'l Limits,
    buf: Vec<u8>,
    skip: usize,
    closed: bool,
    parses: usize,
    events: Vec<Event>,
}

impl Connection<'_> {
    /// Take `chunk` off the socket, then serve everything it completes.
    fn read(&mut self, chunk: &[u8]) {
        if self.closed {
            return;
        }
        let discard = self.skip.min(chunk.len());
        self.skip -= discard;
        self.buf.extend_from_slice(&chunk[discard..]);
        while !self.buf.is_empty() {
            self.parses += 1;
            match step(&self.buf, self.limits) {
                Step::Done(event, used) => {
                    self.events.push(event);
                    self.buf.drain(..used);
                }
                Step::NeedMore => return,
                Step::Failed(event, recovery) => {
                    self.events.push(event);
                    match recovery {
                        Recovery::Close => {
                            self.closed = true;
                            return;
                        }
                        Recovery::Skip(n) => {
                            let now = n.min(self.buf.len());
                            self.buf.drain(..now);
                            self.skip = n - now;
                        }
                    }
                }
            }
        }
    }
}

/// Feed `data` in reads of `chunk` bytes; the events seen.
fn drive(data: &[u8], chunk: usize, limits: &Limits) -> Vec<Event> {
    let mut conn = Connection {
        limits,
        buf: Vec::new(),
        skip: 0,
        closed: false,
        parses: 0,
        events: Vec::new(),
    };
    let mut reads = 0;
    for piece in data.chunks(chunk) {
        reads += 1;
        conn.read(piece);
    }
    assert!(
        conn.parses <= data.len() + reads,
        "{} parses for {} bytes in {reads} reads",
        conn.parses,
        data.len()
    );
    conn.events
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_line_len: 128,
        max_value_len: 64,
        ..Limits::default()
    };
    let whole = drive(data, data.len().max(1), &limits);
    let chunked = drive(data, 1 + data.len() % 16, &limits);
    assert_eq!(
        chunked, whole,
        "the result depends on how the bytes arrived"
    );
});
