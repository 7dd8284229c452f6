//! Property tests for the laws the binary codec promises as a whole, which
//! no single file's tests can state: encode→parse is the identity for every
//! valid request and response; any split of a pipelined stream parses to the
//! same sequence of frames; and no byte sequence makes a parser panic, loop,
//! or report spans outside the bytes it consumed. Generators build only
//! valid frames, family by family, so a failure is a codec bug, not a bad
//! input slipping through.

use bytes::BytesMut;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;

use crate::binary::opcode::{self as op, Opcode};
use crate::binary::shape::shape;
use crate::binary::{
    encode_request, encode_response, exptime_from_wire, parse_request, parse_response, Decoded,
    Extras, Request, RequestFields, RequestHeader, ResponseFields, Status, VbucketState,
    HEADER_LEN,
};
use crate::{Exptime, Limits, Recovery, Span};

/// One valid request: opcode, its typed extras (or raw extras bytes), key,
/// value.
#[derive(Clone, Debug)]
struct ReqCase {
    fields: RequestFields,
    extras: Result<Extras, Vec<u8>>,
    key: Vec<u8>,
    value: Vec<u8>,
}

fn ops(codes: &[u8]) -> impl Strategy<Value = Opcode> {
    select(codes.to_vec()).prop_map(Opcode::from_u8)
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 1..=250)
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..64)
}

fn exptime() -> impl Strategy<Value = Exptime> {
    any::<u32>().prop_map(exptime_from_wire)
}

fn state() -> impl Strategy<Value = VbucketState> {
    (1u32..=4).prop_map(|s| VbucketState::from_u32(s).unwrap_or(VbucketState::Dead))
}

/// Opcodes this crate does not validate; their extras stay raw.
fn unshaped_op() -> impl Strategy<Value = Opcode> {
    any::<u8>()
        .prop_map(Opcode::from_u8)
        .prop_filter("validated opcode", |o| shape(*o).is_none())
}

type Body = (Opcode, Result<Extras, Vec<u8>>, Vec<u8>, Vec<u8>);

fn request_body() -> impl Strategy<Value = Body> {
    prop_oneof![
        (
            ops(&[
                op::GET,
                op::GETQ,
                op::GETK,
                op::GETKQ,
                op::DELETE,
                op::DELETEQ,
                op::GET_REPLICA
            ]),
            key()
        )
            .prop_map(|(o, k)| (o, Ok(Extras::None), k, vec![])),
        (
            ops(&[
                op::SET,
                op::SETQ,
                op::ADD,
                op::ADDQ,
                op::REPLACE,
                op::REPLACEQ
            ]),
            any::<u32>(),
            exptime(),
            key(),
            value()
        )
            .prop_map(|(o, flags, exptime, k, v)| (
                o,
                Ok(Extras::Store { flags, exptime }),
                k,
                v
            )),
        (
            ops(&[op::INCREMENT, op::INCREMENTQ, op::DECREMENT, op::DECREMENTQ]),
            any::<u64>(),
            any::<u64>(),
            exptime(),
            key()
        )
            .prop_map(|(o, delta, initial, exptime, k)| (
                o,
                Ok(Extras::Arith {
                    delta,
                    initial,
                    exptime
                }),
                k,
                vec![]
            )),
        (
            ops(&[op::APPEND, op::APPENDQ, op::PREPEND, op::PREPENDQ]),
            key(),
            value()
        )
            .prop_map(|(o, k, v)| (o, Ok(Extras::None), k, v)),
        (
            ops(&[op::TOUCH, op::GAT, op::GATQ, op::GATK, op::GATKQ]),
            exptime(),
            key()
        )
            .prop_map(|(o, exptime, k)| (o, Ok(Extras::Touch { exptime }), k, vec![])),
        (ops(&[op::FLUSH, op::FLUSHQ]), option::of(exptime())).prop_map(|(o, exptime)| (
            o,
            Ok(Extras::Flush { exptime }),
            vec![],
            vec![]
        )),
        any::<u32>().prop_map(|level| (
            Opcode::Verbosity,
            Ok(Extras::Verbosity { level }),
            vec![],
            vec![]
        )),
        ops(&[
            op::QUIT,
            op::QUITQ,
            op::NOOP,
            op::VERSION,
            op::SASL_LIST_MECHS,
            op::GET_VBUCKET
        ])
        .prop_map(|o| (o, Ok(Extras::None), vec![], vec![])),
        vec(any::<u8>(), 0..20).prop_map(|k| (Opcode::Stat, Ok(Extras::None), k, vec![])),
        (
            ops(&[op::SASL_AUTH, op::SASL_STEP]),
            vec(any::<u8>(), 1..20),
            value()
        )
            .prop_map(|(o, k, v)| (o, Ok(Extras::None), k, v)),
        state().prop_map(|state| (
            Opcode::SetVbucket,
            Ok(Extras::SetVbucket { state }),
            vec![],
            vec![]
        )),
        value().prop_map(|v| (Opcode::DelVbucket, Ok(Extras::None), vec![], v)),
        (
            unshaped_op(),
            vec(any::<u8>(), 0..32),
            vec(any::<u8>(), 0..=250),
            value()
        )
            .prop_map(|(o, e, k, v)| (o, Err(e), k, v)),
    ]
}

fn request_case() -> impl Strategy<Value = ReqCase> {
    (
        request_body(),
        any::<u8>(),
        any::<u16>(),
        any::<u32>(),
        any::<u64>(),
    )
        .prop_map(
            |((opcode, extras, key, value), data_type, vbucket, opaque, cas)| ReqCase {
                fields: RequestFields {
                    opcode,
                    data_type,
                    vbucket,
                    opaque,
                    cas,
                },
                extras,
                key,
                value,
            },
        )
}

fn encode(case: &ReqCase, out: &mut BytesMut) {
    let typed;
    let extras: &[u8] = match &case.extras {
        Ok(e) => {
            typed = e.to_wire().unwrap_or_default();
            typed.as_slice()
        }
        Err(raw) => raw,
    };
    encode_request(out, &case.fields, extras, &case.key, &case.value).expect("valid case");
}

/// What a parsed request says, independent of where its frame sat.
type Seen = (RequestHeader, Extras, Vec<u8>, Vec<u8>);

/// The parts of `req`, read from `frame`.
fn summary(req: &Request, frame: &[u8]) -> Seen {
    (
        req.header,
        req.extras,
        req.key.of(frame).to_vec(),
        req.value.of(frame).to_vec(),
    )
}

fn parse_all(mut buf: &[u8]) -> Vec<Seen> {
    let mut seen = Vec::new();
    while let Ok(Some((req, used))) = parse_request(buf, &Limits::default()) {
        seen.push(summary(&req, &buf[..used]));
        buf = &buf[used..];
    }
    seen
}

/// One valid response and the typed part it must decode to.
fn response_case() -> impl Strategy<Value = (ResponseFields, Vec<u8>, Vec<u8>, Vec<u8>, Decoded)> {
    let retrieval = [
        op::GET,
        op::GETQ,
        op::GETK,
        op::GETKQ,
        op::GAT,
        op::GATQ,
        op::GATK,
        op::GATKQ,
        op::GET_REPLICA,
    ];
    let body = prop_oneof![
        (
            ops(&retrieval),
            any::<u32>(),
            vec(any::<u8>(), 0..=250),
            value()
        )
            .prop_map(|(o, f, k, v)| (
                o,
                Status::OK,
                f.to_be_bytes().to_vec(),
                k,
                v,
                Decoded::Flags(f)
            )),
        (
            ops(&[op::INCREMENT, op::DECREMENT, op::INCREMENTQ, op::DECREMENTQ]),
            any::<u64>()
        )
            .prop_map(|(o, n)| (
                o,
                Status::OK,
                vec![],
                vec![],
                n.to_be_bytes().to_vec(),
                Decoded::Counter(n)
            )),
        state().prop_map(|s| (
            Opcode::GetVbucket,
            Status::OK,
            vec![],
            vec![],
            s.to_u32().to_be_bytes().to_vec(),
            Decoded::VbucketState(s)
        )),
        (
            any::<u8>(),
            1u16..=u16::MAX,
            vec(any::<u8>(), 0..8),
            vec(any::<u8>(), 0..=250),
            value()
        )
            .prop_map(|(o, s, e, k, v)| (
                Opcode::from_u8(o),
                Status(s),
                e,
                k,
                v,
                Decoded::None
            )),
        (
            any::<u8>()
                .prop_map(Opcode::from_u8)
                .prop_filter("typed", |o| {
                    !o.is_retrieval() && !o.is_arithmetic() && *o != Opcode::GetVbucket
                }),
            vec(any::<u8>(), 0..8),
            vec(any::<u8>(), 0..=250),
            value()
        )
            .prop_map(|(o, e, k, v)| (o, Status::OK, e, k, v, Decoded::None)),
    ];
    (body, any::<u8>(), any::<u32>(), any::<u64>()).prop_map(
        |((opcode, status, e, k, v, decoded), data_type, opaque, cas)| {
            (
                ResponseFields {
                    opcode,
                    status,
                    data_type,
                    opaque,
                    cas,
                },
                e,
                k,
                v,
                decoded,
            )
        },
    )
}

/// Arbitrary frames that pass the magic check often enough to reach the
/// deeper checks: a plausible header (small lengths, any opcode) over random
/// body bytes, or plain noise.
fn hostile_input() -> impl Strategy<Value = Vec<u8>> {
    let framed = (
        select(vec![0x80u8, 0x81]),
        any::<u8>(),
        0u16..40,
        0u8..30,
        0u32..120,
        vec(any::<u8>(), 0..160),
    )
        .prop_map(|(magic, opcode, key_len, extras_len, body_len, body)| {
            let mut b = vec![magic, opcode];
            b.extend(key_len.to_be_bytes());
            b.extend([extras_len, 0, 0, 0]);
            b.extend(body_len.to_be_bytes());
            b.extend([0u8; 12]);
            b.extend(body);
            b
        });
    prop_oneof![
        vec(any::<u8>(), 0..256),
        vec(framed, 1..4).prop_map(|v| v.concat())
    ]
}

/// Drive a parser over `input` the way a connection would, checking every
/// verdict's invariants; returns how many frames parsed.
fn drive<T>(
    mut input: &[u8],
    parse: impl Fn(&[u8]) -> crate::ParseResult<T>,
    spans: impl Fn(&T) -> [Span; 2],
) -> usize {
    let mut frames = 0;
    loop {
        match parse(input) {
            Ok(Some((frame, used))) => {
                assert!((HEADER_LEN..=input.len()).contains(&used));
                for span in spans(&frame) {
                    assert!(span.start <= span.end && span.end <= used);
                }
                input = &input[used..];
                frames += 1;
            }
            Ok(None) => return frames,
            Err(e) => match e.recovery {
                Recovery::Close => return frames,
                Recovery::Skip(n) => {
                    assert!(n >= HEADER_LEN);
                    let Some(rest) = input.get(n..) else {
                        return frames;
                    };
                    input = rest;
                }
            },
        }
    }
}

proptest! {
    #[test]
    fn request_encode_then_parse_is_identity(case in request_case()) {
        let mut out = BytesMut::new();
        encode(&case, &mut out);
        let (req, used) = parse_request(&out, &Limits::default()).unwrap().unwrap();
        prop_assert_eq!(used, out.len());
        prop_assert_eq!(req.header.fields(), case.fields);
        prop_assert_eq!(usize::from(req.header.key_len), case.key.len());
        prop_assert_eq!(req.key.of(&out), &case.key[..]);
        prop_assert_eq!(req.value.of(&out), &case.value[..]);
        match &case.extras {
            Ok(typed) => prop_assert_eq!(req.extras, *typed),
            Err(raw) => {
                prop_assert_eq!(req.extras, Extras::Raw(req.extras_span()));
                prop_assert_eq!(req.extras_span().of(&out), &raw[..]);
            }
        }
    }

    #[test]
    fn response_encode_then_parse_is_identity(
        (fields, extras, key, value, decoded) in response_case()
    ) {
        let mut out = BytesMut::new();
        encode_response(&mut out, &fields, &extras, &key, &value).unwrap();
        let (res, used) = parse_response(&out, &Limits::default()).unwrap().unwrap();
        prop_assert_eq!(used, out.len());
        prop_assert_eq!(res.header.fields(), fields);
        prop_assert_eq!(res.decoded, decoded);
        prop_assert_eq!(res.extras.of(&out), &extras[..]);
        prop_assert_eq!(res.key.of(&out), &key[..]);
        prop_assert_eq!(res.value.of(&out), &value[..]);
    }

    #[test]
    fn any_split_of_a_pipeline_parses_the_same(
        cases in vec(request_case(), 1..6),
        cuts in vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let mut whole = BytesMut::new();
        for case in &cases {
            encode(case, &mut whole);
        }
        let expected = parse_all(&whole);
        prop_assert_eq!(expected.len(), cases.len());

        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(whole.len() + 1)).collect();
        cuts.push(whole.len());
        cuts.sort_unstable();
        let mut pending: Vec<u8> = Vec::new();
        let mut seen = Vec::new();
        let mut from = 0;
        for cut in cuts {
            pending.extend_from_slice(&whole[from..cut]);
            from = cut;
            while let Some((req, used)) = parse_request(&pending, &Limits::default()).unwrap() {
                seen.push(summary(&req, &pending[..used]));
                pending.drain(..used);
            }
        }
        prop_assert!(pending.is_empty());
        prop_assert_eq!(seen, expected);
    }

    #[test]
    fn arbitrary_bytes_never_panic(input in hostile_input()) {
        let limits = Limits { max_key_len: 16, max_value_len: 64, ..Limits::default() };
        drive(&input, |b| parse_request(b, &limits), |r| [r.key, r.value]);
        drive(&input, |b| parse_response(b, &limits), |r| [r.key, r.value]);
        drive(&input, |b| parse_request(b, &Limits::default()), |r| [r.key, r.value]);
    }
}
