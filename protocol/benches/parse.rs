//! Parse cost of the requests the proxy and node read most, per request.
//!
//! Cases (every input is built with this crate's encoders and checked to
//! parse whole before it is measured):
//! - `ascii-get-100`: one classic `get` line of 100 keys (`key:000001` …),
//!   parsed, then its keys walked with `Get::keys`, as a router would;
//! - `binary-getk-x100`: 100 pipelined binary GETK frames in one buffer,
//!   parsed one after another until the buffer is used up;
//! - `ascii-set-100b`: a classic `set` with a 100-byte value;
//! - `meta-mg`: `mg key:000001 v f t`;
//! - `binary-set-100b`: a binary SET with flags, expiry and a 100-byte value.
//!
//! Criterion reports one throughput per benchmark, so each case runs twice:
//! in group `bytes` (`Throughput::Bytes`, the input's length: MB/s) and in
//! group `elements` (`Throughput::Elements`: keys for the multi-get, frames
//! for the GETK pipeline, 1 for the single requests).
//!
//! Not measured: I/O and syscalls; allocating, growing or compacting read
//! buffers; freezing the consumed bytes and slicing spans into `Bytes`;
//! routing (key hashing, vbucket or ketama lookup, see `vbmap`'s benches);
//! executing the command or encoding its reply; error and "need more" paths;
//! cache misses (each input is a few KiB at most and stays hot).

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shoal_protocol::ascii::{encode_get, encode_store, parse_command, Command, GetVerb, StoreVerb};
use shoal_protocol::binary::{encode_request, parse_request, store_extras, Opcode, RequestFields};
use shoal_protocol::meta::parse_meta;
use shoal_protocol::{Exptime, Limits};

/// Keys in the multi-get; frames in the GETK pipeline.
const BATCH: usize = 100;
/// Value size for the SET cases.
const VALUE_LEN: usize = 100;

/// The `i`th benchmark key, `key:000001` style.
fn key(i: usize) -> Vec<u8> {
    format!("key:{i:06}").into_bytes()
}

/// One benchmark: its input, how many elements it holds, and the parse to
/// time, which returns the bytes it consumed.
struct Case {
    name: &'static str,
    wire: Vec<u8>,
    elements: u64,
    parse: fn(&[u8], &Limits) -> usize,
}

fn ascii_get(wire: &[u8], limits: &Limits) -> usize {
    let Ok(Some((Command::Get(get), used))) = parse_command(wire, limits) else {
        unreachable!("checked in setup")
    };
    for key in get.keys(wire) {
        black_box(key.of(wire));
    }
    used
}

fn binary_pipeline(wire: &[u8], limits: &Limits) -> usize {
    let mut at = 0;
    while let Ok(Some((req, used))) = parse_request(&wire[at..], limits) {
        black_box(req.key.of(&wire[at..]));
        at += used;
    }
    at
}

fn ascii_command(wire: &[u8], limits: &Limits) -> usize {
    match parse_command(wire, limits) {
        Ok(Some((_, used))) => used,
        _ => unreachable!("checked in setup"),
    }
}

fn meta_command(wire: &[u8], limits: &Limits) -> usize {
    match parse_meta(wire, limits) {
        Ok(Some((_, used))) => used,
        _ => unreachable!("checked in setup"),
    }
}

fn binary_request(wire: &[u8], limits: &Limits) -> usize {
    match parse_request(wire, limits) {
        Ok(Some((_, used))) => used,
        _ => unreachable!("checked in setup"),
    }
}

fn cases() -> Vec<Case> {
    let value = vec![b'v'; VALUE_LEN];
    let keys: Vec<Vec<u8>> = (1..=BATCH).map(key).collect();

    let mut get = BytesMut::new();
    encode_get(&mut get, GetVerb::Get, keys.iter().map(Vec::as_slice));

    let mut getk = BytesMut::new();
    for (i, k) in keys.iter().enumerate() {
        let fields = RequestFields {
            opaque: i as u32,
            ..RequestFields::new(Opcode::GetK)
        };
        encode_request(&mut getk, &fields, &[], k, &[]).expect("GETK encodes");
    }

    let mut set = BytesMut::new();
    encode_store(
        &mut set,
        StoreVerb::Set,
        &key(1),
        0,
        Exptime::NEVER,
        &value,
        false,
    );

    let mg = b"mg key:000001 v f t\r\n".to_vec();

    let mut binary_set = BytesMut::new();
    let extras = store_extras(0xdead_beef, Exptime(3600));
    let fields = RequestFields::new(Opcode::Set);
    encode_request(&mut binary_set, &fields, &extras, &key(1), &value).expect("SET encodes");

    vec![
        Case {
            name: "ascii-get-100",
            wire: get.to_vec(),
            elements: BATCH as u64,
            parse: ascii_get,
        },
        Case {
            name: "binary-getk-x100",
            wire: getk.to_vec(),
            elements: BATCH as u64,
            parse: binary_pipeline,
        },
        Case {
            name: "ascii-set-100b",
            wire: set.to_vec(),
            elements: 1,
            parse: ascii_command,
        },
        Case {
            name: "meta-mg",
            wire: mg,
            elements: 1,
            parse: meta_command,
        },
        Case {
            name: "binary-set-100b",
            wire: binary_set.to_vec(),
            elements: 1,
            parse: binary_request,
        },
    ]
}

/// Fail fast if an input does not parse whole: a benchmark of an error path
/// would look fast and mean nothing.
fn check(case: &Case, limits: &Limits) {
    let used = (case.parse)(&case.wire, limits);
    assert_eq!(used, case.wire.len(), "{} does not parse whole", case.name);
    if let Ok(Some((Command::Get(get), _))) = parse_command(&case.wire, limits) {
        assert_eq!(get.keys(&case.wire).count(), BATCH);
    }
}

fn bench_parse(c: &mut Criterion) {
    let limits = Limits::default();
    let cases = cases();
    for case in &cases {
        check(case, &limits);
    }
    for unit in ["bytes", "elements"] {
        let mut group = c.benchmark_group(unit);
        for case in &cases {
            group.throughput(match unit {
                "bytes" => Throughput::Bytes(case.wire.len() as u64),
                _ => Throughput::Elements(case.elements),
            });
            group.bench_function(case.name, |b| {
                b.iter(|| (case.parse)(black_box(&case.wire), &limits))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench_parse);
criterion_main!(benches);
