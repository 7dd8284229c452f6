//! Property tests for the DCP codec as a whole: every message's encoder and
//! [`parse_dcp`] are inverse (and re-encoding the parsed message gives the
//! same bytes); any split of a stream of frames parses to the same
//! messages; and no byte sequence makes the parser panic, stall, report a
//! span outside its frame, or parse to a message that re-encodes into
//! something else. Generators build only valid messages, so a round-trip
//! failure is a codec bug.

use bytes::BytesMut;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;

use super::*;
use crate::binary::opcode as op;
use crate::binary::shape::shape;
use crate::binary::{RequestFields, HEADER_LEN};
use crate::{Recovery, Span};

/// One valid DCP frame, in the terms its encoder takes.
#[derive(Clone, Debug)]
enum Case {
    Open(u32, u32, OpenFlags, Vec<u8>),
    Control(u32, Vec<u8>, Vec<u8>),
    Noop(u32),
    BufferAck(u32, u32),
    StreamReq(StreamReq),
    CloseStream(u16, u32),
    GetFailoverLog(u16, u32),
    StreamEnd(u16, u32, StreamEndStatus),
    Accepted(u32, Vec<FailoverEntry>),
    Rollback(u32, u64),
    LogReply(u32, Vec<FailoverEntry>),
    Reply(Opcode, Status, u32),
    Marker(SnapshotMarker),
    Mutation(MutationFields, Vec<u8>, Vec<u8>, Vec<u8>),
    Deletion(bool, DeletionFields, Vec<u8>, Vec<u8>, Vec<u8>),
    SetState(u16, u32, VbucketState),
    SeqnoAck(u16, u32, u64),
    Other(RequestFields, Vec<u8>, Vec<u8>, Vec<u8>),
}

impl Case {
    fn encode(&self, out: &mut BytesMut) {
        match self {
            Case::Open(opaque, seqno, flags, name) => {
                encode_open(out, *opaque, *seqno, *flags, name).unwrap();
            }
            Case::Control(opaque, key, value) => encode_control(out, *opaque, key, value).unwrap(),
            Case::Noop(opaque) => encode_noop(out, *opaque),
            Case::BufferAck(opaque, bytes) => encode_buffer_ack(out, *opaque, *bytes),
            Case::StreamReq(req) => encode_stream_req(out, req),
            Case::CloseStream(vb, opaque) => encode_close_stream(out, *vb, *opaque),
            Case::GetFailoverLog(vb, opaque) => encode_get_failover_log(out, *vb, *opaque),
            Case::StreamEnd(vb, opaque, status) => encode_stream_end(out, *vb, *opaque, *status),
            Case::Accepted(opaque, log) => encode_stream_accepted(out, *opaque, log).unwrap(),
            Case::Rollback(opaque, seqno) => encode_stream_rollback(out, *opaque, *seqno),
            Case::LogReply(opaque, log) => encode_failover_log_reply(out, *opaque, log).unwrap(),
            Case::Reply(opcode, status, opaque) => encode_dcp_reply(out, *opcode, *status, *opaque),
            Case::Marker(marker) => encode_snapshot_marker(out, marker),
            Case::Mutation(fields, key, value, meta) => {
                encode_mutation(out, fields, key, value, meta).unwrap();
            }
            Case::Deletion(false, fields, key, value, meta) => {
                encode_deletion(out, fields, key, value, meta).unwrap();
            }
            Case::Deletion(true, fields, key, value, meta) => {
                encode_expiration(out, fields, key, value, meta).unwrap();
            }
            Case::SetState(vb, opaque, state) => {
                encode_set_vbucket_state(out, *vb, *opaque, *state)
            }
            Case::SeqnoAck(vb, opaque, seqno) => {
                encode_seqno_acknowledged(out, *vb, *opaque, *seqno)
            }
            Case::Other(fields, extras, key, value) => {
                encode_request(out, fields, extras, key, value).unwrap();
            }
        }
    }

    /// Assert that `msg`, parsed from `frame`, says what this case said.
    fn check(&self, msg: &DcpMessage, frame: &[u8]) {
        let bytes = |span: Span| span.of(frame).to_vec();
        match (self, *msg) {
            (Case::Open(opaque, seqno, flags, name), DcpMessage::Open(open)) => {
                assert_eq!(
                    (open.opaque, open.seqno, open.flags),
                    (*opaque, *seqno, *flags)
                );
                assert_eq!(&bytes(open.name), name);
            }
            (Case::Control(opaque, key, value), DcpMessage::Control(control)) => {
                assert_eq!(control.opaque, *opaque);
                assert_eq!((&bytes(control.key), &bytes(control.value)), (key, value));
            }
            (Case::Noop(o), DcpMessage::Noop { opaque }) => assert_eq!(opaque, *o),
            (Case::BufferAck(o, b), DcpMessage::BufferAck { opaque, bytes }) => {
                assert_eq!((opaque, bytes), (*o, *b));
            }
            (Case::StreamReq(req), DcpMessage::StreamReq(parsed)) => assert_eq!(parsed, *req),
            (Case::CloseStream(v, o), DcpMessage::CloseStream { vbucket, opaque })
            | (Case::GetFailoverLog(v, o), DcpMessage::GetFailoverLog { vbucket, opaque }) => {
                assert_eq!((vbucket, opaque), (*v, *o));
            }
            (
                Case::StreamEnd(v, o, s),
                DcpMessage::StreamEnd {
                    vbucket,
                    opaque,
                    status,
                },
            ) => assert_eq!((vbucket, opaque, status), (*v, *o, *s)),
            (Case::Accepted(o, entries), DcpMessage::StreamAccepted { opaque, log })
            | (Case::LogReply(o, entries), DcpMessage::FailoverLogReply { opaque, log }) => {
                assert_eq!(opaque, *o);
                assert_eq!(log.entries(frame).collect::<Vec<_>>(), *entries);
            }
            (Case::Rollback(o, s), DcpMessage::StreamRollback { opaque, seqno }) => {
                assert_eq!((opaque, seqno), (*o, *s));
            }
            (Case::Reply(opcode, status, opaque), DcpMessage::Reply(reply)) => {
                let h = reply.header;
                assert_eq!((h.opcode, h.status, h.opaque), (*opcode, *status, *opaque));
                assert_eq!(h.body_len, 0);
            }
            (Case::Marker(marker), DcpMessage::SnapshotMarker(parsed)) => {
                assert_eq!(parsed, *marker);
            }
            (Case::Mutation(fields, key, value, meta), DcpMessage::Mutation(m)) => {
                assert_eq!(m.fields, *fields);
                assert_eq!(
                    (&bytes(m.key), &bytes(m.value), &bytes(m.ext_meta)),
                    (key, value, meta)
                );
            }
            (Case::Deletion(false, fields, key, value, meta), DcpMessage::Deletion(d))
            | (Case::Deletion(true, fields, key, value, meta), DcpMessage::Expiration(d)) => {
                assert_eq!(d.fields, *fields);
                assert_eq!(
                    (&bytes(d.key), &bytes(d.value), &bytes(d.ext_meta)),
                    (key, value, meta)
                );
            }
            (
                Case::SetState(v, o, s),
                DcpMessage::SetVbucketState {
                    vbucket,
                    opaque,
                    state,
                },
            ) => assert_eq!((vbucket, opaque, state), (*v, *o, *s)),
            (
                Case::SeqnoAck(v, o, s),
                DcpMessage::SeqnoAcknowledged {
                    vbucket,
                    opaque,
                    prepared_seqno,
                },
            ) => assert_eq!((vbucket, opaque, prepared_seqno), (*v, *o, *s)),
            (Case::Other(fields, extras, key, value), DcpMessage::Other(req)) => {
                assert_eq!(req.header.fields(), *fields);
                assert_eq!(&bytes(req.extras_span()), extras);
                assert_eq!((&bytes(req.key), &bytes(req.value)), (key, value));
            }
            (case, msg) => panic!("{case:?} parsed as {msg:?}"),
        }
    }
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 1..=250)
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..max)
}

fn log() -> impl Strategy<Value = Vec<FailoverEntry>> {
    vec(
        (any::<u64>(), any::<u64>()).prop_map(|(vbucket_uuid, seqno)| FailoverEntry {
            vbucket_uuid,
            seqno,
        }),
        0..6,
    )
}

fn state() -> impl Strategy<Value = VbucketState> {
    (1u32..=4).prop_map(|s| VbucketState::from_u32(s).unwrap_or(VbucketState::Dead))
}

fn stream_req() -> impl Strategy<Value = StreamReq> {
    (any::<(u16, u32, u32)>(), any::<(u64, u64, u64, u64, u64)>()).prop_map(
        |((vbucket, opaque, flags), (start, end, uuid, s0, s1))| StreamReq {
            vbucket,
            opaque,
            flags: StreamReqFlags(flags),
            start_seqno: start,
            end_seqno: end,
            vbucket_uuid: uuid,
            snap_start_seqno: s0,
            snap_end_seqno: s1,
        },
    )
}

fn mutation_fields() -> impl Strategy<Value = MutationFields> {
    (
        any::<(u16, u32, u64, u8, u8)>(),
        any::<(u64, u64, u32, u32, u32)>(),
    )
        .prop_map(
            |((vbucket, opaque, cas, data_type, nru), (by, rev, flags, expiration, lock))| {
                MutationFields {
                    vbucket,
                    opaque,
                    cas,
                    data_type,
                    by_seqno: by,
                    rev_seqno: rev,
                    flags,
                    expiration,
                    lock_time: lock,
                    nru,
                }
            },
        )
}

fn deletion_fields() -> impl Strategy<Value = DeletionFields> {
    any::<(u16, u32, u64, u8, u64, u64)>().prop_map(
        |(vbucket, opaque, cas, data_type, by_seqno, rev_seqno)| DeletionFields {
            vbucket,
            opaque,
            cas,
            data_type,
            by_seqno,
            rev_seqno,
        },
    )
}

/// Requests this module does not model and the general parser takes with
/// any extras, key and value.
fn other_request() -> impl Strategy<Value = Case> {
    (
        any::<u8>().prop_filter("modelled or validated", |b| {
            request_rule(*b).is_none() && shape(Opcode::from_u8(*b)).is_none()
        }),
        any::<(u8, u16, u32, u64)>(),
        bytes(40),
        bytes(40),
        bytes(40),
    )
        .prop_map(|(opcode, (data_type, vbucket, opaque, cas), e, k, v)| {
            let fields = RequestFields {
                opcode: Opcode::from_u8(opcode),
                data_type,
                vbucket,
                opaque,
                cas,
            };
            Case::Other(fields, e, k, v)
        })
}

/// Empty replies that are not one of the typed three.
fn plain_reply() -> impl Strategy<Value = Case> {
    (any::<u8>(), any::<u16>(), any::<u32>())
        .prop_filter("typed reply", |(o, s, _)| {
            stream::typed_reply(*o, Status(*s)).is_none()
        })
        .prop_map(|(o, s, opaque)| Case::Reply(Opcode::from_u8(o), Status(s), opaque))
}

fn case() -> impl Strategy<Value = Case> {
    prop_oneof![
        (any::<(u32, u32, u32)>(), key()).prop_map(|((o, s, f), name)| Case::Open(
            o,
            s,
            OpenFlags(f),
            name
        )),
        (any::<u32>(), key(), vec(any::<u8>(), 1..20)).prop_map(|(o, k, v)| Case::Control(o, k, v)),
        any::<u32>().prop_map(Case::Noop),
        any::<(u32, u32)>().prop_map(|(o, b)| Case::BufferAck(o, b)),
        stream_req().prop_map(Case::StreamReq),
        any::<(u16, u32)>().prop_map(|(v, o)| Case::CloseStream(v, o)),
        any::<(u16, u32)>().prop_map(|(v, o)| Case::GetFailoverLog(v, o)),
        any::<(u16, u32, u32)>().prop_map(|(v, o, s)| Case::StreamEnd(v, o, StreamEndStatus(s))),
        (any::<u32>(), log()).prop_map(|(o, l)| Case::Accepted(o, l)),
        any::<(u32, u64)>().prop_map(|(o, s)| Case::Rollback(o, s)),
        (any::<u32>(), log()).prop_map(|(o, l)| Case::LogReply(o, l)),
        plain_reply(),
        any::<(u16, u32, u64, u64, u32)>().prop_map(|(vbucket, opaque, start, end, flags)| {
            Case::Marker(SnapshotMarker {
                vbucket,
                opaque,
                start_seqno: start,
                end_seqno: end,
                flags: SnapshotFlags(flags),
            })
        }),
        (mutation_fields(), key(), bytes(64), bytes(16))
            .prop_map(|(f, k, v, m)| Case::Mutation(f, k, v, m)),
        (
            any::<bool>(),
            deletion_fields(),
            key(),
            bytes(16),
            bytes(16)
        )
            .prop_map(|(exp, f, k, v, m)| Case::Deletion(exp, f, k, v, m)),
        (any::<(u16, u32)>(), state()).prop_map(|((v, o), s)| Case::SetState(v, o, s)),
        any::<(u16, u32, u64)>().prop_map(|(v, o, s)| Case::SeqnoAck(v, o, s)),
        other_request(),
    ]
}

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

/// Parse a whole buffer frame by frame: each message with its frame bytes.
fn parse_all(mut buf: &[u8]) -> Vec<(DcpMessage, Vec<u8>)> {
    let mut seen = Vec::new();
    while let Ok(Some((msg, used))) = parse_dcp(buf, &Limits::default()) {
        seen.push((msg, buf[..used].to_vec()));
        buf = &buf[used..];
    }
    seen
}

/// DCP-shaped noise: headers with either magic, a modelled opcode most of
/// the time, extras lengths near the real ones, small keys and bodies, the
/// typed reply statuses; or plain random bytes.
fn hostile_input() -> impl Strategy<Value = Vec<u8>> {
    let opcodes = vec![
        op::DCP_OPEN,
        op::DCP_ADD_STREAM,
        op::DCP_CLOSE_STREAM,
        op::DCP_STREAM_REQ,
        op::DCP_GET_FAILOVER_LOG,
        op::DCP_STREAM_END,
        op::DCP_SNAPSHOT_MARKER,
        op::DCP_MUTATION,
        op::DCP_DELETION,
        op::DCP_EXPIRATION,
        op::DCP_SET_VBUCKET_STATE,
        op::DCP_NOOP,
        op::DCP_BUFFER_ACK,
        op::DCP_CONTROL,
        op::DCP_SEQNO_ACKNOWLEDGED,
        op::GET,
    ];
    let framed = (
        select(vec![0x80u8, 0x81]),
        prop_oneof![select(opcodes), any::<u8>()],
        0u16..24,
        prop_oneof![select(vec![0u8, 1, 4, 8, 18, 20, 21, 31, 48]), 0u8..60],
        prop_oneof![select(vec![0u16, 0x23]), any::<u16>()],
        0u32..160,
        bytes(200),
    )
        .prop_map(
            |(magic, opcode, key_len, extras_len, specific, body_len, body)| {
                let mut b = vec![magic, opcode];
                b.extend(key_len.to_be_bytes());
                b.extend([extras_len, 0]);
                b.extend(specific.to_be_bytes());
                b.extend(body_len.to_be_bytes());
                b.extend([0u8; 12]);
                b.extend(body);
                b
            },
        );
    prop_oneof![bytes(256), vec(framed, 1..4).prop_map(|v| v.concat())]
}

/// Drive the parser over `input` as a connection would, checking every
/// verdict's invariants and that each parsed message survives re-encoding.
fn drive(mut input: &[u8], limits: &Limits) {
    loop {
        match parse_dcp(input, limits) {
            Ok(Some((msg, used))) => {
                assert!((HEADER_LEN..=input.len()).contains(&used));
                let frame = &input[..used];
                for span in spans(&msg) {
                    assert!(span.start <= span.end && span.end <= used, "{msg:?}");
                }
                let mut out = BytesMut::new();
                msg.encode(&mut out, frame).unwrap();
                if &out[..] != frame {
                    let again = parse_dcp(&out, limits).unwrap().unwrap();
                    assert_eq!(again, (msg, used), "re-encoding changed the message");
                }
                input = &input[used..];
            }
            Ok(None) => {
                // Need-more is only ever said about a frame not yet whole.
                if let Some(body) = input.get(8..12).and_then(|b| b.first_chunk::<4>()) {
                    let frame_len = HEADER_LEN as u64 + u64::from(u32::from_be_bytes(*body));
                    assert!((input.len() as u64) < frame_len);
                }
                return;
            }
            Err(e) => match e.recovery {
                Recovery::Close => return,
                Recovery::Skip(n) => {
                    assert!(n >= HEADER_LEN, "{e:?} would not make progress");
                    let Some(rest) = input.get(n..) else {
                        return;
                    };
                    input = rest;
                }
            },
        }
    }
}

proptest! {
    #[test]
    fn encode_then_parse_is_identity(case in case()) {
        let mut wire = BytesMut::new();
        case.encode(&mut wire);
        let (msg, used) = parse_dcp(&wire, &Limits::default()).unwrap().unwrap();
        prop_assert_eq!(used, wire.len());
        case.check(&msg, &wire);
        let mut again = BytesMut::new();
        msg.encode(&mut again, &wire).unwrap();
        prop_assert_eq!(&again[..], &wire[..]);
    }

    #[test]
    fn any_split_of_a_stream_parses_the_same(
        cases in vec(case(), 1..8),
        cuts in vec(any::<prop::sample::Index>(), 0..10),
    ) {
        let mut whole = BytesMut::new();
        for case in &cases {
            case.encode(&mut whole);
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
            while let Some((msg, used)) = parse_dcp(&pending, &Limits::default()).unwrap() {
                seen.push((msg, pending[..used].to_vec()));
                pending.drain(..used);
            }
        }
        prop_assert!(pending.is_empty());
        prop_assert_eq!(seen, expected);
    }

    #[test]
    fn arbitrary_bytes_never_panic_or_stall(input in hostile_input()) {
        let tight = Limits { max_key_len: 16, max_value_len: 64, ..Limits::default() };
        drive(&input, &tight);
        drive(&input, &Limits::default());
    }
}
