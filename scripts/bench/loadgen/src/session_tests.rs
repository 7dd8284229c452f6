//! Tests of [`Session`]: replies are built from the session's own record of
//! what it sent, as a correct server would answer, then mangled.

use super::*;
use crate::binary::{MAGIC_RESPONSE, OP_GETK, OP_GETKQ, OP_NOOP, OP_SET};

fn plan(protocol: Protocol, pipeline: usize, multiget: usize, get_ratio: f64) -> Arc<Plan> {
    let config = Config {
        protocol,
        pipeline,
        multiget,
        get_ratio,
        keys: 1000,
        value_size: 40,
        warmup: Duration::ZERO,
        duration: Duration::from_secs(600),
        ..Config::default()
    };
    Arc::new(Plan::new(&config, Instant::now()))
}

/// The (kind, keys) of every pending request, in order.
fn outstanding(s: &Session) -> Vec<(Kind, Vec<u64>)> {
    let mut keys = s.keys.iter().copied();
    s.pending
        .iter()
        .map(|p| (p.kind, keys.by_ref().take(p.remaining as usize).collect()))
        .collect()
}

fn ascii_value(out: &mut Vec<u8>, plan: &Plan, idx: u64, flags: u32) {
    out.extend_from_slice(b"VALUE ");
    data::push_key(out, &plan.prefix, idx);
    out.extend_from_slice(format!(" {flags} {}\r\n", plan.value.len()).as_bytes());
    data::push_value(out, &plan.value, idx);
    out.extend_from_slice(b"\r\n");
}

/// ASCII replies to everything outstanding; `present(idx)` says which keys hit.
fn ascii_replies(s: &Session, present: impl Fn(u64) -> bool) -> Vec<u8> {
    let mut out = Vec::new();
    for (kind, keys) in outstanding(s) {
        match kind {
            Kind::Set => out.extend_from_slice(b"STORED\r\n"),
            Kind::Get => {
                for idx in keys.into_iter().filter(|&k| present(k)) {
                    ascii_value(&mut out, &s.plan, idx, FLAGS);
                }
                out.extend_from_slice(b"END\r\n");
            }
        }
    }
    out
}

fn binary_response(
    out: &mut Vec<u8>,
    opcode: u8,
    status: u16,
    opaque: u32,
    extras: &[u8],
    key: &[u8],
    value: &[u8],
) {
    out.extend_from_slice(&[MAGIC_RESPONSE, opcode]);
    out.extend_from_slice(&(key.len() as u16).to_be_bytes());
    out.extend_from_slice(&[extras.len() as u8, 0]);
    out.extend_from_slice(&status.to_be_bytes());
    out.extend_from_slice(&((extras.len() + key.len() + value.len()) as u32).to_be_bytes());
    out.extend_from_slice(&opaque.to_be_bytes());
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(extras);
    out.extend_from_slice(key);
    out.extend_from_slice(value);
}

/// Binary responses to everything outstanding, as memcached sends them.
fn binary_replies(s: &Session, present: impl Fn(u64) -> bool) -> Vec<u8> {
    let mut out = Vec::new();
    for ((kind, keys), pending) in outstanding(s).into_iter().zip(&s.pending) {
        let hit = |out: &mut Vec<u8>, opcode, opaque, idx| {
            let mut key = Vec::new();
            data::push_key(&mut key, &s.plan.prefix, idx);
            let mut value = Vec::new();
            data::push_value(&mut value, &s.plan.value, idx);
            binary_response(out, opcode, 0, opaque, &FLAGS.to_be_bytes(), &key, &value);
        };
        match kind {
            Kind::Set => binary_response(&mut out, OP_SET, 0, pending.opaque, &[], &[], &[]),
            Kind::Get if keys.len() == 1 => {
                if present(keys[0]) {
                    hit(&mut out, OP_GETK, pending.opaque, keys[0]);
                } else {
                    binary_response(
                        &mut out,
                        OP_GETK,
                        binary::STATUS_KEY_NOT_FOUND,
                        pending.opaque,
                        &[],
                        &[],
                        b"Not found",
                    );
                }
            }
            Kind::Get => {
                for (position, &idx) in keys.iter().enumerate() {
                    if present(idx) {
                        hit(&mut out, OP_GETKQ, position as u32, idx);
                    }
                }
                binary_response(&mut out, OP_NOOP, 0, pending.opaque, &[], &[], &[]);
            }
        }
    }
    out
}

fn meta_value(out: &mut Vec<u8>, plan: &Plan, idx: u64) {
    out.extend_from_slice(format!("VA {}\r\n", plan.value.len()).as_bytes());
    data::push_value(out, &plan.value, idx);
    out.extend_from_slice(b"\r\n");
}

/// Meta replies to everything outstanding: one per `mg` or `ms` line.
fn meta_replies(s: &Session, present: impl Fn(u64) -> bool) -> Vec<u8> {
    let mut out = Vec::new();
    for (kind, keys) in outstanding(s) {
        match kind {
            Kind::Set => out.extend_from_slice(b"HD\r\n"),
            Kind::Get => {
                for idx in keys {
                    if present(idx) {
                        meta_value(&mut out, &s.plan, idx);
                    } else {
                        out.extend_from_slice(b"EN\r\n");
                    }
                }
            }
        }
    }
    out
}

/// Expected (gets, sets, hits, misses) for everything outstanding.
fn expected(s: &Session, present: impl Fn(u64) -> bool) -> (u64, u64, u64, u64) {
    let mut totals = (0, 0, 0, 0);
    for (kind, keys) in outstanding(s) {
        match kind {
            Kind::Set => totals.1 += 1,
            Kind::Get => {
                totals.0 += 1;
                for idx in keys {
                    if present(idx) {
                        totals.2 += 1;
                    } else {
                        totals.3 += 1;
                    }
                }
            }
        }
    }
    totals
}

fn counts(s: &Session) -> (u64, u64, u64, u64) {
    (s.stats.gets, s.stats.sets, s.stats.hits, s.stats.misses)
}

fn odd(idx: u64) -> bool {
    idx % 2 == 1
}

#[test]
fn closed_loop_fills_every_slot_in_one_buffer() {
    let mut s = Session::new(plan(Protocol::Ascii, 16, 1, 0.5), 0);
    let mut out = Vec::new();
    s.fill(&mut out, Instant::now());
    assert_eq!(s.pending.len(), 16);
    let gets = s.pending.iter().filter(|p| p.kind == Kind::Get).count();
    assert_eq!(out.windows(5).filter(|w| w == b"get s").count(), gets);
    assert_eq!(out.windows(5).filter(|w| w == b"set s").count(), 16 - gets);
    // Nothing more until a slot frees.
    let before = out.len();
    s.fill(&mut out, Instant::now());
    assert_eq!(out.len(), before);
}

#[test]
fn ascii_replies_are_matched_and_counted() {
    for multiget in [1, 5] {
        let mut s = Session::new(plan(Protocol::Ascii, 32, multiget, 0.8), 1);
        s.fill(&mut Vec::new(), Instant::now());
        let want = expected(&s, odd);
        let replies = ascii_replies(&s, odd);
        let used = s.on_bytes(&replies, Instant::now()).unwrap();
        assert_eq!(used, replies.len());
        assert_eq!(counts(&s), want);
        assert!(
            want.2 > 0 && want.3 > 0,
            "test should see hits and misses: {want:?}"
        );
        assert_eq!(s.stats.error_total(), 0);
        assert!(s.pending.is_empty() && s.keys.is_empty());
    }
}

#[test]
fn meta_requests_are_one_line_per_key() {
    let mut s = Session::new(plan(Protocol::Meta, 16, 3, 0.5), 0);
    let mut out = Vec::new();
    s.fill(&mut out, Instant::now());
    assert_eq!(s.pending.len(), 16);
    let gets = s.pending.iter().filter(|p| p.kind == Kind::Get).count();
    assert!(gets > 0 && gets < 16, "{gets}");
    assert_eq!(out.windows(4).filter(|w| w == b"mg s").count(), 3 * gets);
    assert_eq!(out.windows(4).filter(|w| w == b"ms s").count(), 16 - gets);
    assert_eq!(out.windows(4).filter(|w| w == b" v\r\n").count(), 3 * gets);

    let mut s = Session::new(plan(Protocol::Meta, 1, 1, 1.0), 0);
    let mut out = Vec::new();
    s.fill(&mut out, Instant::now());
    let mut want = Vec::new();
    meta::encode_get(&mut want, &s.plan.prefix, s.keys[0]);
    assert_eq!(out, want);
}

#[test]
fn meta_replies_are_matched_and_counted() {
    for multiget in [1, 5] {
        let mut s = Session::new(plan(Protocol::Meta, 32, multiget, 0.8), 1);
        s.fill(&mut Vec::new(), Instant::now());
        let want = expected(&s, odd);
        let replies = meta_replies(&s, odd);
        assert_eq!(s.on_bytes(&replies, Instant::now()).unwrap(), replies.len());
        assert_eq!(counts(&s), want);
        assert!(
            want.2 > 0 && want.3 > 0,
            "test should see hits and misses: {want:?}"
        );
        assert_eq!(s.stats.error_total(), 0);
        assert!(s.pending.is_empty() && s.keys.is_empty());
    }
}

#[test]
fn meta_request_completes_with_its_last_reply() {
    let mut s = Session::new(plan(Protocol::Meta, 2, 3, 1.0), 0);
    s.fill(&mut Vec::new(), Instant::now());
    let (first, second) = (s.keys[2], s.keys[3]);
    // Two of the first request's three replies: nothing completes yet.
    let mut replies = b"EN\r\n".to_vec();
    meta_value(&mut replies, &s.plan, s.keys[1]);
    assert_eq!(s.on_bytes(&replies, Instant::now()).unwrap(), replies.len());
    assert_eq!((s.stats.gets, s.pending.len()), (0, 2));
    let mut replies = Vec::new();
    meta_value(&mut replies, &s.plan, first);
    meta_value(&mut replies, &s.plan, second);
    assert_eq!(s.on_bytes(&replies, Instant::now()).unwrap(), replies.len());
    assert_eq!(counts(&s), (1, 0, 2, 1));
    assert_eq!(s.pending.len(), 1);
    assert_eq!(s.pending[0].remaining, 2);
}

#[test]
fn meta_wrong_value_and_failures_are_errors_not_aborts() {
    let mut s = Session::new(plan(Protocol::Meta, 2, 1, 1.0), 0);
    s.fill(&mut Vec::new(), Instant::now());
    // Another key's value, then a SERVER_ERROR: two errors, both gets done.
    let stranger = (0..1000).find(|k| !s.keys.contains(k)).unwrap();
    let mut reply = Vec::new();
    meta_value(&mut reply, &s.plan, stranger);
    reply.extend_from_slice(b"SERVER_ERROR busy\r\n");
    assert_eq!(s.on_bytes(&reply, Instant::now()).unwrap(), reply.len());
    assert_eq!(s.stats.errors[3], 1, "bad_value");
    assert_eq!(s.stats.errors[5], 1, "server_error");
    assert_eq!((s.stats.gets, s.stats.hits, s.stats.misses), (2, 0, 0));

    let mut s = Session::new(plan(Protocol::Meta, 4, 1, 0.0), 0);
    s.fill(&mut Vec::new(), Instant::now());
    let replies = b"NS\r\nSERVER_ERROR out of memory\r\nHD c9\r\nEX\r\n";
    assert_eq!(s.on_bytes(replies, Instant::now()).unwrap(), replies.len());
    assert_eq!(s.stats.sets, 4);
    assert_eq!(s.stats.errors[4], 2, "not_stored");
    assert_eq!(s.stats.errors[5], 1, "server_error");
}

#[test]
fn meta_mismatched_replies_abort() {
    let mut s = Session::new(plan(Protocol::Meta, 1, 1, 1.0), 0);
    assert!(matches!(
        s.on_bytes(b"EN\r\n", Instant::now()),
        Err(Abort::Protocol(_))
    ));
    s.fill(&mut Vec::new(), Instant::now());
    for bad in [&b"HD\r\n"[..], b"END\r\n", b"MN\r\n"] {
        assert!(
            matches!(s.on_bytes(bad, Instant::now()), Err(Abort::Protocol(_))),
            "{bad:?}"
        );
    }
    assert!(matches!(
        s.on_bytes(b"CLIENT_ERROR bad command line format\r\n", Instant::now()),
        Err(Abort::Reply(ErrorKind::ClientError, _))
    ));

    let mut s = Session::new(plan(Protocol::Meta, 1, 1, 0.0), 0);
    s.fill(&mut Vec::new(), Instant::now());
    let mut hit = Vec::new();
    meta_value(&mut hit, &s.plan, 1);
    assert!(matches!(
        s.on_bytes(&hit, Instant::now()),
        Err(Abort::Protocol(_))
    ));
    assert!(matches!(
        s.on_bytes(b"EN\r\n", Instant::now()),
        Err(Abort::Protocol(_))
    ));
}

#[test]
fn binary_replies_are_matched_and_counted() {
    for multiget in [1, 5] {
        let mut s = Session::new(plan(Protocol::Binary, 32, multiget, 0.8), 2);
        s.fill(&mut Vec::new(), Instant::now());
        let want = expected(&s, odd);
        let replies = binary_replies(&s, odd);
        assert_eq!(s.on_bytes(&replies, Instant::now()).unwrap(), replies.len());
        assert_eq!(counts(&s), want);
        assert_eq!(s.stats.error_total(), 0);
        assert!(s.pending.is_empty() && s.keys.is_empty());
    }
}

#[test]
fn replies_split_anywhere_give_the_same_counts() {
    for protocol in [Protocol::Ascii, Protocol::Binary, Protocol::Meta] {
        let mut s = Session::new(plan(protocol, 8, 3, 0.7), 3);
        s.fill(&mut Vec::new(), Instant::now());
        let want = expected(&s, odd);
        let replies = match protocol {
            Protocol::Ascii => ascii_replies(&s, odd),
            Protocol::Binary => binary_replies(&s, odd),
            Protocol::Meta => meta_replies(&s, odd),
        };
        // Feed one byte at a time, keeping the unused tail as a connection would.
        let mut buf = Vec::new();
        for &byte in &replies {
            buf.push(byte);
            let used = s.on_bytes(&buf, Instant::now()).unwrap();
            buf.drain(..used);
        }
        assert!(buf.is_empty());
        assert_eq!(counts(&s), want, "{protocol:?}");
    }
}

#[test]
fn wrong_value_is_an_error_not_an_abort() {
    let mut s = Session::new(plan(Protocol::Ascii, 1, 1, 1.0), 0);
    s.fill(&mut Vec::new(), Instant::now());
    let idx = s.keys[0];
    let mut reply = Vec::new();
    ascii_value(&mut reply, &s.plan, idx, FLAGS);
    // Corrupt the last byte of the data block.
    let at = reply.len() - 3;
    reply[at] ^= 1;
    reply.extend_from_slice(b"END\r\n");
    assert_eq!(s.on_bytes(&reply, Instant::now()).unwrap(), reply.len());
    assert_eq!(s.stats.errors[3], 1, "bad_value");
    assert_eq!((s.stats.gets, s.stats.hits), (1, 0));

    // Wrong flags too.
    s.fill(&mut Vec::new(), Instant::now());
    let mut reply = Vec::new();
    ascii_value(&mut reply, &s.plan, s.keys[0], 7);
    reply.extend_from_slice(b"END\r\n");
    s.on_bytes(&reply, Instant::now()).unwrap();
    assert_eq!(s.stats.errors[3], 2);
}

#[test]
fn value_for_a_key_not_asked_for_aborts() {
    let mut s = Session::new(plan(Protocol::Ascii, 1, 2, 1.0), 0);
    s.fill(&mut Vec::new(), Instant::now());
    let stranger = (0..1000).find(|k| !s.keys.contains(k)).unwrap();
    let mut reply = Vec::new();
    ascii_value(&mut reply, &s.plan, stranger, FLAGS);
    assert!(matches!(
        s.on_bytes(&reply, Instant::now()),
        Err(Abort::Protocol(_))
    ));
}

#[test]
fn unsolicited_and_mismatched_replies_abort() {
    let mut s = Session::new(plan(Protocol::Ascii, 1, 1, 1.0), 0);
    assert!(matches!(
        s.on_bytes(b"END\r\n", Instant::now()),
        Err(Abort::Protocol(_))
    ));
    s.fill(&mut Vec::new(), Instant::now());
    assert!(matches!(
        s.on_bytes(b"STORED\r\n", Instant::now()),
        Err(Abort::Protocol(_))
    ));
    assert!(matches!(
        s.on_bytes(b"garbage\r\n", Instant::now()),
        Err(Abort::Protocol(_))
    ));
    assert!(matches!(
        s.on_bytes(b"SERVER_ERROR out of memory\r\n", Instant::now()),
        Err(Abort::Reply(ErrorKind::ServerError, _))
    ));

    let mut s = Session::new(plan(Protocol::Binary, 1, 1, 0.0), 0);
    s.fill(&mut Vec::new(), Instant::now());
    let mut wrong_opaque = Vec::new();
    binary_response(&mut wrong_opaque, OP_SET, 0, 99, &[], &[], &[]);
    assert!(matches!(
        s.on_bytes(&wrong_opaque, Instant::now()),
        Err(Abort::Protocol(_))
    ));
}

#[test]
fn set_failures_are_counted() {
    let mut s = Session::new(plan(Protocol::Ascii, 3, 1, 0.0), 0);
    s.fill(&mut Vec::new(), Instant::now());
    let replies = b"NOT_STORED\r\nSERVER_ERROR out of memory\r\nSTORED\r\n";
    assert_eq!(s.on_bytes(replies, Instant::now()).unwrap(), replies.len());
    assert_eq!(s.stats.sets, 3);
    assert_eq!(s.stats.errors[4], 1, "not_stored");
    assert_eq!(s.stats.errors[5], 1, "server_error");
}

#[test]
fn warmup_replies_are_not_recorded() {
    let config = Config {
        warmup: Duration::from_secs(600),
        get_ratio: 0.0,
        ..Config::default()
    };
    let mut s = Session::new(Arc::new(Plan::new(&config, Instant::now())), 0);
    s.fill(&mut Vec::new(), Instant::now());
    s.on_bytes(b"STORED\r\n", Instant::now()).unwrap();
    assert_eq!(s.stats.sets, 0);
    assert!(s.stats.latency.is_empty());
}

#[test]
fn open_loop_sends_on_schedule_and_counts_what_it_could_not_send() {
    // 1000 ops/s over 2 connections: one request every 2 ms per connection.
    let config = Config {
        connections: 2,
        rate: 1000.0,
        pipeline: 1,
        warmup: Duration::ZERO,
        duration: Duration::from_millis(100),
        ..Config::default()
    };
    let start = Instant::now();
    let plan = Arc::new(Plan::new(&config, start));
    let mut s = Session::new(plan.clone(), 1);
    // Connection 1 is offset by half an interval.
    assert_eq!(s.next_send(), Some(start + Duration::from_millis(1)));
    let mut out = Vec::new();
    s.fill(&mut out, start);
    assert!(out.is_empty(), "nothing is due yet");
    // 10 ms late: one request is sent (the pipeline holds one), intended at 1 ms.
    s.fill(&mut out, start + Duration::from_millis(10));
    assert_eq!(s.pending.len(), 1);
    assert_eq!(s.pending[0].intended, start + Duration::from_millis(1));
    assert_eq!(s.next_send(), None, "pipeline full");
    // Never answered: 1, 3, …, 99 ms were due; one was sent, 49 were not.
    let stats = s.finish();
    assert_eq!(stats.unsent, 49);
    assert_eq!(stats.send_lag.map(|h| h.len()), Some(1));
}

#[test]
fn timeout_counts_every_outstanding_request() {
    let mut s = Session::new(plan(Protocol::Ascii, 4, 1, 1.0), 0);
    s.fill(&mut Vec::new(), Instant::now());
    s.abort(Abort::Timeout);
    assert_eq!(s.stats.errors[2], 4);
    assert!(s.stats.lost);
}
