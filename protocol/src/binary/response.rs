//! Responses: [`parse_response`] reads a node's reply into a [`Response`] of
//! spans plus the one typed fact a successful reply carries ([`Decoded`]:
//! a retrieval's flags, a counter's new value, a vbucket's state), and
//! [`encode_response`] writes one. Nodes are peers that may send garbage, so
//! parsing is as total and as header-first as for requests: bad magic,
//! contradictory lengths or an oversized body close the connection; a
//! well-framed success whose typed part has the wrong size is rejected with
//! `Skip(frame_len)` (the proxy may still choose to drop the connection).
//! Error replies are never typed: their body is text (or, for
//! NOT_MY_VBUCKET, possibly a bucket config) left in `value`.

use bytes::BytesMut;

use crate::binary::encode::{write_frame, EncodeError};
use crate::binary::extras::{VbucketState, FLAGS_EXTRAS_LEN};
use crate::binary::header::{check_frame, Layout, Magic, RawHeader, RequestHeader, ResponseHeader};
use crate::binary::opcode::Opcode;
use crate::binary::status::Status;
use crate::{ErrorKind, Limits, ParseError, ParseResult, Span};

/// Length of an INCREMENT/DECREMENT success body: the new value, u64 BE.
pub const COUNTER_VALUE_LEN: usize = 8;
/// Length of a GET_VBUCKET success body: the state, u32 BE.
pub const VBUCKET_STATE_VALUE_LEN: usize = 4;

/// The typed content of a successful reply, where the opcode gives it one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decoded {
    /// Nothing typed: an error reply, or an opcode whose reply is untyped.
    None,
    /// A retrieval hit (GET/GETK/GAT/GATK/GET_REPLICA and quiet twins): the
    /// item's flags from the 4-byte extras; the value is in `value`.
    Flags(u32),
    /// An INCREMENT/DECREMENT success: the counter's new value, from the
    /// 8-byte body.
    Counter(u64),
    /// A GET_VBUCKET success: the state, from the 4-byte body.
    VbucketState(VbucketState),
}

/// A parsed response. Spans index the frame, which starts at the first byte
/// of the buffer given to [`parse_response`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Response {
    /// The header, lengths included.
    pub header: ResponseHeader,
    /// What the opcode and status say the body means.
    pub decoded: Decoded,
    /// The raw extras.
    pub extras: Span,
    /// The key (GETK/GATK hits, STAT names); often empty.
    pub key: Span,
    /// The value: item data, error text, stat value, counter bytes…
    pub value: Span,
}

/// Which typed part a reply must carry, judged from its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Nothing,
    Flags,
    Counter,
    VbucketState,
}

/// What a reply's header promises; checked before the body arrives.
fn expect(opcode: Opcode, status: Status, layout: &Layout) -> Result<Expect, &'static str> {
    if !status.is_ok() {
        return Ok(Expect::Nothing);
    }
    if opcode.is_retrieval() {
        return match layout.extras.len() {
            FLAGS_EXTRAS_LEN => Ok(Expect::Flags),
            _ => Err("retrieval reply without 4 bytes of flags"),
        };
    }
    if opcode.is_arithmetic() {
        return match layout.value.len() {
            COUNTER_VALUE_LEN => Ok(Expect::Counter),
            _ => Err("counter reply without an 8-byte value"),
        };
    }
    if opcode == Opcode::GetVbucket {
        return match layout.value.len() {
            VBUCKET_STATE_VALUE_LEN => Ok(Expect::VbucketState),
            _ => Err("vbucket state reply without a 4-byte value"),
        };
    }
    Ok(Expect::Nothing)
}

/// Parse one response frame from the start of `buf`; the contract of
/// [`parse_request`](crate::binary::parse_request), for magic 0x81.
pub fn parse_response(buf: &[u8], limits: &Limits) -> ParseResult<Response> {
    let Some((raw, layout)) = check_frame(buf, Magic::Response, limits)? else {
        return Ok(None);
    };
    let invalid = |reason| ParseError::skip(ErrorKind::BadFormat, reason, layout.frame_len);
    let header = ResponseHeader::from_raw(&raw);
    let expect = expect(header.opcode, header.status, &layout).map_err(invalid)?;
    let Some(frame) = buf.get(..layout.frame_len) else {
        return Ok(None);
    };
    let bytes = |span: Span| frame.get(span.start..span.end).unwrap_or_default();
    let be32 = |span| {
        bytes(span)
            .first_chunk::<4>()
            .map(|b| u32::from_be_bytes(*b))
    };
    // `expect` checked the lengths, so the `None` arms below are unreachable
    // in practice; they stay errors rather than panics.
    let decoded = match expect {
        Expect::Nothing => Decoded::None,
        Expect::Flags => Decoded::Flags(be32(layout.extras).ok_or_else(|| invalid("short flags"))?),
        Expect::Counter => Decoded::Counter(
            bytes(layout.value)
                .first_chunk::<8>()
                .map(|b| u64::from_be_bytes(*b))
                .ok_or_else(|| invalid("short counter"))?,
        ),
        Expect::VbucketState => Decoded::VbucketState(
            be32(layout.value)
                .and_then(VbucketState::from_u32)
                .ok_or_else(|| invalid("invalid vbucket state"))?,
        ),
    };
    let response = Response {
        header,
        decoded,
        extras: layout.extras,
        key: layout.key,
        value: layout.value,
    };
    Ok(Some((response, layout.frame_len)))
}

/// The response header fields a caller chooses; the three lengths are
/// computed from the slices by [`encode_response`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ResponseFields {
    /// The opcode of the request answered.
    pub opcode: Opcode,
    /// The outcome.
    pub status: Status,
    /// Data type; leave 0x00 (raw).
    pub data_type: u8,
    /// The request's opaque.
    pub opaque: u32,
    /// The item's CAS, or 0.
    pub cas: u64,
}

impl ResponseFields {
    /// Fields for `opcode` and `status` with everything else zero.
    pub const fn new(opcode: Opcode, status: Status) -> ResponseFields {
        ResponseFields {
            opcode,
            status,
            data_type: 0,
            opaque: 0,
            cas: 0,
        }
    }

    /// Fields answering `request`: its opcode and opaque, CAS 0.
    pub const fn reply_to(request: &RequestHeader, status: Status) -> ResponseFields {
        ResponseFields {
            opaque: request.opaque,
            ..ResponseFields::new(request.opcode, status)
        }
    }
}

impl ResponseHeader {
    /// The caller-chosen fields of this header, for re-encoding (the proxy
    /// relays a node's reply with the client's opaque restored).
    pub const fn fields(&self) -> ResponseFields {
        ResponseFields {
            opcode: self.opcode,
            status: self.status,
            data_type: self.data_type,
            opaque: self.opaque,
            cas: self.cas,
        }
    }
}

/// Append a response frame to `out`. Nothing is written if a part overflows
/// its length field.
pub fn encode_response(
    out: &mut BytesMut,
    fields: &ResponseFields,
    extras: &[u8],
    key: &[u8],
    value: &[u8],
) -> Result<(), EncodeError> {
    let header = RawHeader {
        magic: Magic::Response as u8,
        opcode: fields.opcode.to_u8(),
        key_len: 0,
        extras_len: 0,
        data_type: fields.data_type,
        specific: fields.status.0,
        body_len: 0,
        opaque: fields.opaque,
        cas: fields.cas,
    };
    write_frame(out, header, extras, key, value)
}

/// Append memcached's error reply to `request`: `status`, no extras or key,
/// and the status's text ([`Status::message`]) as the body.
pub fn encode_error_response(out: &mut BytesMut, request: &RequestHeader, status: Status) {
    let fields = ResponseFields::reply_to(request, status);
    // A static message of a few bytes cannot overflow any length field.
    let _ = encode_response(out, &fields, &[], &[], status.message().as_bytes());
}

/// The body of an INCREMENT/DECREMENT success: the new value.
pub fn counter_value(value: u64) -> [u8; COUNTER_VALUE_LEN] {
    value.to_be_bytes()
}

/// The body of a GET_VBUCKET success: the state.
pub fn vbucket_state_value(state: VbucketState) -> [u8; VBUCKET_STATE_VALUE_LEN] {
    state.to_u32().to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binary::extras::flags_extras;
    use crate::binary::request::RequestFields;
    use crate::Recovery;

    /// The binary protocol spec's GET "Hello" hit: flags 0xdeadbeef,
    /// value "World", CAS 1.
    const GET_HIT: &[u8] = &[
        0x81, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x09, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0xde, 0xad, 0xbe, 0xef, b'W', b'o',
        b'r', b'l', b'd',
    ];

    /// The spec's GET miss: status 0x0001, body "Not found".
    const GET_MISS: &[u8] = &[
        0x81, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x09, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, b'N', b'o', b't', b' ', b'f', b'o',
        b'u', b'n', b'd',
    ];

    fn parse(buf: &[u8]) -> (Response, usize) {
        parse_response(buf, &Limits::default()).unwrap().unwrap()
    }

    fn frame(op: Opcode, status: Status, extras: &[u8], key: &[u8], value: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        let fields = ResponseFields {
            opaque: 0x1122_3344,
            cas: 99,
            ..ResponseFields::new(op, status)
        };
        encode_response(&mut out, &fields, extras, key, value).unwrap();
        out.to_vec()
    }

    #[test]
    fn spec_examples_byte_exact() {
        let (hit, used) = parse(GET_HIT);
        assert_eq!(used, GET_HIT.len());
        assert_eq!(hit.header.status, Status::OK);
        assert_eq!(hit.header.cas, 1);
        assert_eq!(hit.decoded, Decoded::Flags(0xdead_beef));
        assert_eq!(hit.value.of(GET_HIT), b"World");
        let mut out = BytesMut::new();
        encode_response(
            &mut out,
            &hit.header.fields(),
            &flags_extras(0xdead_beef),
            b"",
            b"World",
        )
        .unwrap();
        assert_eq!(&out[..], GET_HIT);

        let (miss, _) = parse(GET_MISS);
        assert_eq!(miss.header.status, Status::KEY_NOT_FOUND);
        assert_eq!(miss.decoded, Decoded::None);
        assert_eq!(miss.value.of(GET_MISS), b"Not found");
        let mut out = BytesMut::new();
        let get = RequestFields::new(Opcode::Get);
        let request = RequestHeader {
            opcode: get.opcode,
            key_len: 5,
            extras_len: 0,
            data_type: 0,
            vbucket: 0,
            body_len: 5,
            opaque: 0,
            cas: 0,
        };
        encode_error_response(&mut out, &request, Status::KEY_NOT_FOUND);
        assert_eq!(&out[..], GET_MISS);
    }

    #[test]
    fn typed_replies() {
        let ok = Status::OK;
        let cases = [
            (
                frame(Opcode::GetKQ, ok, &flags_extras(5), b"k", b"v"),
                Decoded::Flags(5),
            ),
            (
                frame(Opcode::GatK, ok, &flags_extras(6), b"k", b""),
                Decoded::Flags(6),
            ),
            (
                frame(Opcode::GetReplica, ok, &flags_extras(7), b"", b"v"),
                Decoded::Flags(7),
            ),
            (
                frame(Opcode::Increment, ok, &[], b"", &counter_value(42)),
                Decoded::Counter(42),
            ),
            (
                frame(Opcode::DecrementQ, ok, &[], b"", &counter_value(0)),
                Decoded::Counter(0),
            ),
            (
                frame(
                    Opcode::GetVbucket,
                    ok,
                    &[],
                    b"",
                    &vbucket_state_value(VbucketState::Pending),
                ),
                Decoded::VbucketState(VbucketState::Pending),
            ),
            (frame(Opcode::Set, ok, &[], b"", b""), Decoded::None),
            (frame(Opcode::Stat, ok, &[], b"pid", b"42"), Decoded::None),
            (
                frame(Opcode::Version, ok, &[], b"", b"1.6.0"),
                Decoded::None,
            ),
            (
                frame(Opcode::Other(0xee), ok, &[1], b"k", b"v"),
                Decoded::None,
            ),
            // Errors are never typed, whatever the opcode.
            (
                frame(
                    Opcode::Get,
                    Status::NOT_MY_VBUCKET,
                    &[],
                    b"",
                    b"{\"rev\":1}",
                ),
                Decoded::None,
            ),
            (
                frame(Opcode::Increment, Status::NON_NUMERIC, &[], b"", b"x"),
                Decoded::None,
            ),
        ];
        for (wire, decoded) in cases {
            let (res, used) = parse(&wire);
            assert_eq!(used, wire.len());
            assert_eq!(res.decoded, decoded);
            assert_eq!((res.header.opaque, res.header.cas), (0x1122_3344, 99));
        }
    }

    #[test]
    fn mistyped_successes_are_skipped_from_the_header_alone() {
        let ok = Status::OK;
        for wire in [
            frame(Opcode::Get, ok, &[], b"", b"v"),
            frame(Opcode::Increment, ok, &[], b"", b"42"),
            frame(Opcode::GetVbucket, ok, &[], b"", b""),
        ] {
            let err = parse_response(&wire[..24], &Limits::default()).unwrap_err();
            assert_eq!(err.kind, ErrorKind::BadFormat);
            assert_eq!(err.recovery, Recovery::Skip(wire.len()));
        }
        let bad_state = frame(Opcode::GetVbucket, ok, &[], b"", &[0, 0, 0, 0]);
        let err = parse_response(&bad_state, &Limits::default()).unwrap_err();
        assert_eq!(err.reason, "invalid vbucket state");
    }

    #[test]
    fn fatal_errors_and_prefixes() {
        let err = parse_response(&[0x80], &Limits::default()).unwrap_err();
        assert_eq!(
            (err.kind, err.recovery),
            (ErrorKind::BadMagic, Recovery::Close)
        );
        let mut header = GET_HIT[..24].to_vec();
        header[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        let err = parse_response(&header, &Limits::default()).unwrap_err();
        assert_eq!(
            (err.kind, err.recovery),
            (ErrorKind::TooLarge, Recovery::Close)
        );
        let mut header = GET_HIT[..24].to_vec();
        header[11] = 3;
        let err = parse_response(&header, &Limits::default()).unwrap_err();
        assert_eq!(
            (err.kind, err.recovery),
            (ErrorKind::BadFormat, Recovery::Close)
        );

        for wire in [GET_HIT, GET_MISS] {
            for n in 0..wire.len() {
                assert_eq!(parse_response(&wire[..n], &Limits::default()), Ok(None));
            }
        }
    }

    #[test]
    fn pipelined_quiet_gets_end_with_noop() {
        let mut wire = frame(Opcode::GetKQ, Status::OK, &flags_extras(1), b"a", b"1");
        wire.extend(frame(
            Opcode::GetKQ,
            Status::OK,
            &flags_extras(2),
            b"c",
            b"3",
        ));
        wire.extend(frame(Opcode::Noop, Status::OK, &[], b"", b""));
        let mut at = 0;
        let mut seen = Vec::new();
        while let Some((res, used)) = parse_response(&wire[at..], &Limits::default()).unwrap() {
            let frame = &wire[at..at + used];
            seen.push((res.header.opcode, res.key.of(frame).to_vec(), res.decoded));
            at += used;
        }
        assert_eq!(at, wire.len());
        assert_eq!(
            seen,
            [
                (Opcode::GetKQ, b"a".to_vec(), Decoded::Flags(1)),
                (Opcode::GetKQ, b"c".to_vec(), Decoded::Flags(2)),
                (Opcode::Noop, vec![], Decoded::None),
            ]
        );
    }
}
