//! Requests: [`parse_request`] turns the front of a read buffer into a
//! [`Request`] of spans (never copying key or value out), and
//! [`encode_request`] writes one back from slices. Parsing is total and
//! judges a frame by its header before waiting for its body: bad magic or
//! self-contradictory lengths close the connection, an oversized body closes
//! it without buffering a byte of it, and a well-framed request with the
//! wrong extras, a missing or forbidden key or value, or an overlong key is
//! skipped by its known length after an "invalid arguments" reply. Unknown
//! opcodes parse as [`Opcode::Other`] so the server can answer 0x81.

use bytes::BytesMut;

use crate::binary::encode::{write_frame, EncodeError};
use crate::binary::extras::{self, Extras};
use crate::binary::header::{check_frame, Magic, RawHeader, RequestHeader, HEADER_LEN};
use crate::binary::opcode::Opcode;
use crate::binary::shape::shape;
use crate::{ErrorKind, Limits, ParseError, ParseResult, Span};

/// A parsed request. Spans index the frame, which starts at the first byte
/// of the buffer given to [`parse_request`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Request {
    /// The header, lengths included.
    pub header: RequestHeader,
    /// The extras, typed by opcode.
    pub extras: Extras,
    /// The key; empty when the opcode carries none.
    pub key: Span,
    /// The value (the rest of the body); empty when there is none.
    pub value: Span,
}

impl Request {
    /// Where the raw extras bytes lie, whatever their typed form; for
    /// forwarding a request unchanged.
    pub fn extras_span(&self) -> Span {
        Span::new(HEADER_LEN, HEADER_LEN + usize::from(self.header.extras_len))
    }

    /// Header plus body: the bytes this request consumed.
    pub fn frame_len(&self) -> usize {
        self.header.frame_len()
    }
}

/// Parse one request frame from the start of `buf`.
///
/// Returns `Ok(Some((request, consumed)))`, `Ok(None)` while the header or
/// body is incomplete, or a [`ParseError`] whose recovery says whether to
/// skip the frame (`Skip(frame_len)`; it may not all be buffered yet) or to
/// close. Every check that the header allows is made before the body has
/// arrived.
pub fn parse_request(buf: &[u8], limits: &Limits) -> ParseResult<Request> {
    let Some((raw, layout)) = check_frame(buf, Magic::Request, limits)? else {
        return Ok(None);
    };
    let invalid = |reason| ParseError::skip(ErrorKind::BadFormat, reason, layout.frame_len);
    let opcode = Opcode::from_u8(raw.opcode);
    if let Some(shape) = shape(opcode) {
        shape
            .check(layout.extras.len(), layout.key.len(), layout.value.len())
            .map_err(invalid)?;
    }
    let Some(frame) = buf.get(..layout.frame_len) else {
        return Ok(None);
    };
    let bytes = |span: Span| frame.get(span.start..span.end).unwrap_or_default();
    let extras = extras::decode(
        opcode,
        bytes(layout.extras),
        layout.extras,
        bytes(layout.value),
    )
    .map_err(invalid)?;
    let request = Request {
        header: RequestHeader::from_raw(&raw),
        extras,
        key: layout.key,
        value: layout.value,
    };
    Ok(Some((request, layout.frame_len)))
}

/// The header at the start of `buf`, without validating anything but the
/// magic: for answering a request [`parse_request`] rejected with the right
/// opcode and opaque. `None` before 24 bytes or for a non-request magic.
pub fn peek_request_header(buf: &[u8]) -> Option<RequestHeader> {
    let bytes = buf.first_chunk::<HEADER_LEN>()?;
    let raw = RawHeader::decode(bytes);
    (raw.magic == Magic::Request as u8).then(|| RequestHeader::from_raw(&raw))
}

/// The request header fields a caller chooses; the three lengths are
/// computed from the slices by [`encode_request`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestFields {
    /// What to ask for.
    pub opcode: Opcode,
    /// Data type; leave 0x00 (raw).
    pub data_type: u8,
    /// The vbucket the key belongs to (0 for plain memcached).
    pub vbucket: u16,
    /// Echoed in the reply; the proxy matches replies by it.
    pub opaque: u32,
    /// CAS to compare against, or 0.
    pub cas: u64,
}

impl RequestFields {
    /// Fields for `opcode` with everything else zero.
    pub const fn new(opcode: Opcode) -> RequestFields {
        RequestFields {
            opcode,
            data_type: 0,
            vbucket: 0,
            opaque: 0,
            cas: 0,
        }
    }
}

impl RequestHeader {
    /// The caller-chosen fields of this header, for re-encoding (the proxy
    /// forwards a client's request with the vbucket and opaque replaced).
    pub const fn fields(&self) -> RequestFields {
        RequestFields {
            opcode: self.opcode,
            data_type: self.data_type,
            vbucket: self.vbucket,
            opaque: self.opaque,
            cas: self.cas,
        }
    }
}

/// Append a request frame to `out`. `extras` is the wire form — from
/// [`extras::store_extras`] and friends, [`Extras::to_wire`], or a parsed
/// request's raw extras span. Nothing is written if a part overflows its
/// length field. The encoder does not apply [`Limits`] or the per-opcode
/// rules: sending a well-formed request is the caller's contract.
pub fn encode_request(
    out: &mut BytesMut,
    fields: &RequestFields,
    extras: &[u8],
    key: &[u8],
    value: &[u8],
) -> Result<(), EncodeError> {
    let header = RawHeader {
        magic: Magic::Request as u8,
        opcode: fields.opcode.to_u8(),
        key_len: 0,
        extras_len: 0,
        data_type: fields.data_type,
        specific: fields.vbucket,
        body_len: 0,
        opaque: fields.opaque,
        cas: fields.cas,
    };
    write_frame(out, header, extras, key, value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binary::extras::{arith_extras, store_extras, touch_extras, VbucketState};
    use crate::{Exptime, Recovery};

    /// The binary protocol spec's GET "Hello".
    const GET_HELLO: &[u8] = &[
        0x80, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, b'H', b'e', b'l', b'l', b'o',
    ];

    /// The spec's ADD "Hello" = "World", flags 0xdeadbeef, expiry 3600.
    const ADD_HELLO_WORLD: &[u8] = &[
        0x80, 0x02, 0x00, 0x05, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x12, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xde, 0xad, 0xbe, 0xef, 0x00, 0x00,
        0x0e, 0x10, b'H', b'e', b'l', b'l', b'o', b'W', b'o', b'r', b'l', b'd',
    ];

    /// The spec's INCREMENT "counter" by 1, initial 0, expiry 3600.
    const INCR_COUNTER: &[u8] = &[
        0x80, 0x05, 0x00, 0x07, 0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1b, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0e, 0x10, b'c',
        b'o', b'u', b'n', b't', b'e', b'r',
    ];

    fn parse(buf: &[u8]) -> (Request, usize) {
        parse_request(buf, &Limits::default()).unwrap().unwrap()
    }

    fn frame(op: Opcode, extras: &[u8], key: &[u8], value: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        let fields = RequestFields {
            vbucket: 0x0203,
            opaque: 0xcafe_f00d,
            cas: 0x0102_0304_0506_0708,
            ..RequestFields::new(op)
        };
        encode_request(&mut out, &fields, extras, key, value).unwrap();
        out.to_vec()
    }

    fn error(buf: &[u8]) -> ParseError {
        parse_request(buf, &Limits::default()).unwrap_err()
    }

    #[test]
    fn spec_examples_parse_and_encode_byte_exact() {
        let (get, used) = parse(GET_HELLO);
        assert_eq!(used, GET_HELLO.len());
        assert_eq!(get.header.opcode, Opcode::Get);
        assert_eq!(get.key.of(GET_HELLO), b"Hello");
        assert_eq!((get.extras, get.value), (Extras::None, Span::new(29, 29)));

        let (add, _) = parse(ADD_HELLO_WORLD);
        let store = Extras::Store {
            flags: 0xdead_beef,
            exptime: Exptime(3600),
        };
        assert_eq!(add.extras, store);
        assert_eq!(add.key.of(ADD_HELLO_WORLD), b"Hello");
        assert_eq!(add.value.of(ADD_HELLO_WORLD), b"World");
        assert_eq!(
            add.extras_span().of(ADD_HELLO_WORLD),
            &store_extras(0xdead_beef, Exptime(3600))
        );

        let (incr, _) = parse(INCR_COUNTER);
        assert_eq!(
            incr.extras,
            Extras::Arith {
                delta: 1,
                initial: 0,
                exptime: Exptime(3600)
            }
        );

        // Encoding the parsed parts gives the spec's bytes back.
        for (wire, extras, key, value) in [
            (GET_HELLO, &[][..], &b"Hello"[..], &b""[..]),
            (
                ADD_HELLO_WORLD,
                &store_extras(0xdead_beef, Exptime(3600))[..],
                b"Hello",
                b"World",
            ),
            (
                INCR_COUNTER,
                &arith_extras(1, 0, Exptime(3600))[..],
                b"counter",
                b"",
            ),
        ] {
            let (req, _) = parse(wire);
            let mut out = BytesMut::new();
            encode_request(&mut out, &req.header.fields(), extras, key, value).unwrap();
            assert_eq!(&out[..], wire);
        }
    }

    #[test]
    fn every_family_parses() {
        let expiry = touch_extras(Exptime(60));
        let touch = Extras::Touch {
            exptime: Exptime(60),
        };
        type Case<'a> = (Opcode, Vec<u8>, &'a [u8], &'a [u8], Extras);
        let cases: Vec<Case<'_>> = vec![
            (Opcode::GetKQ, vec![], b"k", b"", Extras::None),
            (Opcode::GetReplica, vec![], b"k", b"", Extras::None),
            (
                Opcode::SetQ,
                store_extras(7, Exptime(0)).to_vec(),
                b"k",
                b"v",
                Extras::Store {
                    flags: 7,
                    exptime: Exptime(0),
                },
            ),
            (
                Opcode::ReplaceQ,
                store_extras(1, Exptime(2)).to_vec(),
                b"k",
                b"",
                Extras::Store {
                    flags: 1,
                    exptime: Exptime(2),
                },
            ),
            (Opcode::DeleteQ, vec![], b"k", b"", Extras::None),
            (
                Opcode::DecrementQ,
                arith_extras(5, 6, Exptime(7)).to_vec(),
                b"k",
                b"",
                Extras::Arith {
                    delta: 5,
                    initial: 6,
                    exptime: Exptime(7),
                },
            ),
            (Opcode::PrependQ, vec![], b"k", b"pre", Extras::None),
            (Opcode::Touch, expiry.to_vec(), b"k", b"", touch),
            (Opcode::Gat, expiry.to_vec(), b"k", b"", touch),
            (Opcode::GatQ, expiry.to_vec(), b"k", b"", touch),
            (Opcode::GatK, expiry.to_vec(), b"k", b"", touch),
            (Opcode::GatKQ, expiry.to_vec(), b"k", b"", touch),
            (
                Opcode::Flush,
                vec![],
                b"",
                b"",
                Extras::Flush { exptime: None },
            ),
            (
                Opcode::FlushQ,
                expiry.to_vec(),
                b"",
                b"",
                Extras::Flush {
                    exptime: Some(Exptime(60)),
                },
            ),
            (
                Opcode::Verbosity,
                vec![0, 0, 0, 2],
                b"",
                b"",
                Extras::Verbosity { level: 2 },
            ),
            (Opcode::Noop, vec![], b"", b"", Extras::None),
            (Opcode::Version, vec![], b"", b"", Extras::None),
            (Opcode::Quit, vec![], b"", b"", Extras::None),
            (Opcode::QuitQ, vec![], b"", b"", Extras::None),
            (Opcode::Stat, vec![], b"", b"", Extras::None),
            (Opcode::Stat, vec![], b"vbucket", b"", Extras::None),
            (Opcode::SaslListMechs, vec![], b"", b"", Extras::None),
            (
                Opcode::SaslAuth,
                vec![],
                b"PLAIN",
                b"\0user\0pw",
                Extras::None,
            ),
            (Opcode::SaslStep, vec![], b"PLAIN", b"", Extras::None),
            (Opcode::GetVbucket, vec![], b"", b"", Extras::None),
            (Opcode::DelVbucket, vec![], b"", b"", Extras::None),
            (
                Opcode::Observe,
                vec![],
                b"",
                b"\x00\x01\x00\x01k",
                Extras::Raw(Span::new(24, 24)),
            ),
            (
                Opcode::GetClusterConfig,
                vec![],
                b"",
                b"",
                Extras::Raw(Span::new(24, 24)),
            ),
            (
                Opcode::DcpMutation,
                vec![1; 31],
                b"k",
                b"v",
                Extras::Raw(Span::new(24, 55)),
            ),
        ];
        for (op, extras, key, value, expected) in cases {
            let wire = frame(op, &extras, key, value);
            let (req, used) = parse(&wire);
            assert_eq!(used, wire.len(), "{op}");
            assert_eq!(req.header.opcode, op);
            assert_eq!(req.header.vbucket, 0x0203);
            assert_eq!(req.header.opaque, 0xcafe_f00d);
            assert_eq!(req.header.cas, 0x0102_0304_0506_0708);
            assert_eq!(req.extras, expected, "{op}");
            assert_eq!(req.extras_span().of(&wire), &extras[..]);
            assert_eq!(req.key.of(&wire), key);
            assert_eq!(req.value.of(&wire), value);
        }
    }

    #[test]
    fn set_vbucket_three_encodings() {
        let replica = Extras::SetVbucket {
            state: VbucketState::Replica,
        };
        let modern = frame(Opcode::SetVbucket, &[2], b"", b"");
        let wide = frame(Opcode::SetVbucket, &[0, 0, 0, 2], b"", b"");
        let couchbase = frame(Opcode::SetVbucket, &[], b"", &[0, 0, 0, 2]);
        assert_eq!(&modern[..8], &[0x80, 0x3d, 0, 0, 1, 0, 0x02, 0x03]);
        for wire in [&modern, &wide, &couchbase] {
            let (req, _) = parse(wire);
            assert_eq!(req.extras, replica);
            assert_eq!(req.header.vbucket, 0x0203);
        }
        let bad_state = frame(Opcode::SetVbucket, &[], b"", &[0, 0, 0, 9]);
        let err = error(&bad_state);
        assert_eq!(
            (err.kind, err.recovery),
            (ErrorKind::BadFormat, Recovery::Skip(28))
        );
    }

    #[test]
    fn unknown_opcode_is_a_value() {
        let wire = frame(Opcode::Other(0xee), &[1, 2], b"key", b"body");
        let (req, used) = parse(&wire);
        assert_eq!(req.header.opcode, Opcode::Other(0xee));
        assert_eq!(req.extras, Extras::Raw(Span::new(24, 26)));
        assert_eq!(used, wire.len());
        // Answerable: the proxy replies 0x81 with the request's opaque.
        let mut out = BytesMut::new();
        let reply = crate::binary::ResponseFields::reply_to(
            &req.header,
            crate::binary::Status::UNKNOWN_COMMAND,
        );
        crate::binary::encode_response(&mut out, &reply, &[], &[], b"Unknown command").unwrap();
        assert_eq!(&out[..2], &[0x81, 0xee]);
        assert_eq!(&out[6..8], &[0x00, 0x81]);
        assert_eq!(&out[12..16], &0xcafe_f00du32.to_be_bytes());
    }

    #[test]
    fn every_proper_prefix_needs_more() {
        let frames = [
            GET_HELLO.to_vec(),
            ADD_HELLO_WORLD.to_vec(),
            INCR_COUNTER.to_vec(),
            frame(Opcode::SetVbucket, &[], b"", &[0, 0, 0, 1]),
            frame(Opcode::DcpMutation, &[7; 31], b"key", b"value"),
            frame(Opcode::Noop, &[], b"", b""),
        ];
        for wire in frames {
            for n in 0..wire.len() {
                assert_eq!(
                    parse_request(&wire[..n], &Limits::default()),
                    Ok(None),
                    "{n}"
                );
            }
            assert!(parse(&wire).1 == wire.len());
        }
    }

    #[test]
    fn pipelined_frames_parse_in_turn() {
        let mut wire = Vec::new();
        wire.extend_from_slice(GET_HELLO);
        wire.extend_from_slice(ADD_HELLO_WORLD);
        wire.extend_from_slice(&frame(Opcode::GetKQ, &[], b"a", b""));
        wire.extend_from_slice(&frame(Opcode::Noop, &[], b"", b""));
        let mut at = 0;
        let mut ops = Vec::new();
        while let Some((req, used)) = parse_request(&wire[at..], &Limits::default()).unwrap() {
            ops.push((req.header.opcode, req.key.shift(at).of(&wire).to_vec()));
            at += used;
        }
        assert_eq!(at, wire.len());
        assert_eq!(
            ops,
            [
                (Opcode::Get, b"Hello".to_vec()),
                (Opcode::Add, b"Hello".to_vec()),
                (Opcode::GetKQ, b"a".to_vec()),
                (Opcode::Noop, vec![]),
            ]
        );
    }

    #[test]
    fn fatal_errors_come_from_the_header_alone() {
        // Text on the binary port: one byte is enough.
        let err = error(b"g");
        assert_eq!(
            (err.kind, err.recovery),
            (ErrorKind::BadMagic, Recovery::Close)
        );
        let err = error(&[0x81]);
        assert_eq!(err.kind, ErrorKind::BadMagic);

        // A 4 GiB body: refused from 24 bytes, nothing buffered.
        let mut header = GET_HELLO[..24].to_vec();
        header[8..12].copy_from_slice(&0xffff_ffffu32.to_be_bytes());
        let err = error(&header);
        assert_eq!(
            (err.kind, err.recovery),
            (ErrorKind::TooLarge, Recovery::Close)
        );

        // Just over the configured body limit.
        let limits = Limits {
            max_value_len: 100,
            ..Limits::default()
        };
        let mut header = ADD_HELLO_WORLD[..24].to_vec();
        let over = u32::try_from(limits.max_binary_body() + 1).unwrap();
        header[8..12].copy_from_slice(&over.to_be_bytes());
        let err = parse_request(&header, &limits).unwrap_err();
        assert_eq!(err.kind, ErrorKind::TooLarge);

        // Extras + key longer than the body: the stream cannot be trusted.
        let mut header = ADD_HELLO_WORLD[..24].to_vec();
        header[11] = 12;
        let err = error(&header);
        assert_eq!(
            (err.kind, err.recovery),
            (ErrorKind::BadFormat, Recovery::Close)
        );
    }

    #[test]
    fn malformed_requests_are_skipped_from_the_header_alone() {
        let limits = Limits::default();
        let cases: [(Vec<u8>, &str); 6] = [
            (frame(Opcode::Get, &[], b"", b""), "key required"),
            (frame(Opcode::Get, &[], b"k", b"v"), "value not allowed"),
            (
                frame(Opcode::Set, &[0; 4], b"k", b"v"),
                "invalid extras length",
            ),
            (
                frame(Opcode::Increment, &[0; 20], b"k", b"8"),
                "value not allowed",
            ),
            (frame(Opcode::Noop, &[], b"k", b""), "key not allowed"),
            (frame(Opcode::Get, &[], &[b'k'; 251], b""), "key too long"),
        ];
        for (wire, reason) in cases {
            // Only the header is offered: the verdict must not wait.
            let err = parse_request(&wire[..24], &limits).unwrap_err();
            assert_eq!(err.kind, ErrorKind::BadFormat, "{reason}");
            assert_eq!(err.reason, reason);
            assert_eq!(err.recovery, Recovery::Skip(wire.len()));
            assert_eq!(err.binary_status(), 0x04);
        }
        // A 250-byte key is fine.
        assert!(parse_request(&frame(Opcode::Get, &[], &[b'k'; 250], b""), &limits).is_ok());
    }

    #[test]
    fn peek_recovers_the_opaque_of_a_rejected_request() {
        let wire = frame(Opcode::Get, &[], b"", b"");
        assert!(parse_request(&wire, &Limits::default()).is_err());
        let header = peek_request_header(&wire).unwrap();
        assert_eq!((header.opcode, header.opaque), (Opcode::Get, 0xcafe_f00d));
        assert_eq!(peek_request_header(&wire[..23]), None);
        assert_eq!(peek_request_header(&[0u8; 24]), None);
    }
}
