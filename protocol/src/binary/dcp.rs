//! DCP, the Database Change Protocol: the messages a replica stream is made
//! of, parsed and encoded sans-IO and zero-copy on the binary protocol's
//! 24-byte frame.
//!
//! Modules:
//! - [`connection`]: DCP_OPEN, DCP_CONTROL, DCP_NOOP and
//!   DCP_BUFFER_ACKNOWLEDGEMENT — setting a connection up and keeping it
//!   alive and flowing.
//! - [`stream`]: DCP_STREAM_REQ with its two typed replies (accepted with a
//!   failover log, or rollback), DCP_GET_FAILOVER_LOG with its reply,
//!   DCP_CLOSE_STREAM and DCP_STREAM_END.
//! - [`change`]: what a stream carries — DCP_SNAPSHOT_MARKER, DCP_MUTATION,
//!   DCP_DELETION, DCP_EXPIRATION, DCP_SET_VBUCKET_STATE — and the replica's
//!   DCP_SEQNO_ACKNOWLEDGED.
//! - [`failover_log`]: [`FailoverLog`], the (vbucket UUID, seqno) history a
//!   consumer resumes from.
//!
//! Opcodes, extras layouts and flag values are Couchbase's (kv_engine
//! `docs/dcp/documentation/commands/*.md` and
//! `include/mcbp/protocol/opcode.h`), so a frame captured from Couchbase
//! parses here. Both ends of a DCP connection send requests (magic 0x80):
//! the consumer sends OPEN, CONTROL, STREAM_REQ and BUFFER_ACKNOWLEDGEMENT,
//! the producer sends SNAPSHOT_MARKER, MUTATION, STREAM_END and NOOP; replies
//! (0x81) travel both ways too. [`parse_dcp`] therefore reads either magic.
//!
//! It follows the crate's contract — `Ok(Some((message, consumed)))`,
//! `Ok(None)` for "need more bytes", or a [`ParseError`] — and judges a
//! frame from its header before waiting for its body: bad magic,
//! contradictory lengths or an oversized body close the connection; a
//! well-framed DCP message with the wrong extras length, a missing or
//! forbidden key or value, or an impossible field is skipped by its known
//! length (`Skip(frame_len)`). Spans index the frame starting at `buf[0]`;
//! the connection freezes the consumed bytes and slices them, so keys and
//! values are never copied.
//!
//! Frames that are not one of the messages above are values, not errors:
//! a request (DCP_ADD_STREAM, DCP_FLUSH, or the SASL and SELECT_BUCKET a
//! DCP connection begins with) is [`DcpMessage::Other`], parsed by
//! [`parse_request`]; a reply other than the three typed ones (the empty
//! OK that answers OPEN, CONTROL or NOOP, or any error) is
//! [`DcpMessage::Reply`], parsed by [`parse_response`].
//!
//! Deliberately not supported, each refused as a malformed message rather
//! than half-understood: the V2 snapshot marker (1-byte version extras plus
//! a value), the delete-time deletion and expiration (21 and 20 bytes of
//! extras, negotiated with OPEN's "include delete times" or CONTROL's
//! `enable_expiry_opcode`), collection-aware keys, stream IDs and OPEN or
//! STREAM_REQ values (all JSON negotiated features Shoal never asks for),
//! and the sync-replication PREPARE/COMMIT/ABORT (0x60, 0x62, 0x63), which
//! parse as [`DcpMessage::Other`].

pub mod change;
pub mod connection;
pub mod failover_log;
pub mod stream;

#[cfg(test)]
mod proptests;

use bytes::BytesMut;

pub use change::{
    encode_deletion, encode_expiration, encode_mutation, encode_seqno_acknowledged,
    encode_set_vbucket_state, encode_snapshot_marker, Deletion, DeletionFields, Mutation,
    MutationFields, SnapshotFlags, SnapshotMarker,
};
pub use connection::{
    encode_buffer_ack, encode_control, encode_dcp_reply, encode_noop, encode_open, Control, Open,
    OpenFlags,
};
pub use failover_log::{
    FailoverEntries, FailoverEntry, FailoverLog, FAILOVER_ENTRY_LEN, MAX_FAILOVER_ENTRIES,
};
pub use stream::{
    encode_close_stream, encode_failover_log_reply, encode_get_failover_log,
    encode_stream_accepted, encode_stream_end, encode_stream_req, encode_stream_rollback,
    StreamEndStatus, StreamReq, StreamReqFlags, ROLLBACK_BODY_LEN,
};

use crate::binary::encode::EncodeError;
use crate::binary::extras::VbucketState;
use crate::binary::header::{check_frame, Layout, Magic, RawHeader, RESPONSE_MAGIC};
use crate::binary::opcode::{self as op, Opcode};
use crate::binary::request::{encode_request, parse_request, Request};
use crate::binary::response::{encode_response, parse_response, Response};
use crate::binary::shape::{present, Presence};
use crate::binary::status::Status;
use crate::{ErrorKind, Limits, ParseError, ParseResult};

/// One DCP frame. Spans index the frame, which starts at the first byte of
/// the buffer given to [`parse_dcp`]. Each variant holds exactly what its
/// message means: header fields a message leaves unused (the vbucket of a
/// NOOP, the CAS of a snapshot marker, STREAM_REQ's reserved word) are not
/// kept, so re-encoding such a frame writes them as zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DcpMessage {
    /// 0x50 DCP_OPEN: name the connection and choose producer or consumer.
    Open(Open),
    /// 0x52 DCP_CLOSE_STREAM: close the stream of a vbucket.
    CloseStream {
        /// The vbucket whose stream closes.
        vbucket: u16,
        /// Echoed in the reply.
        opaque: u32,
    },
    /// 0x53 DCP_STREAM_REQ: stream a vbucket from a seqno.
    StreamReq(StreamReq),
    /// 0x54 DCP_GET_FAILOVER_LOG: ask for a vbucket's failover log.
    GetFailoverLog {
        /// The vbucket asked about.
        vbucket: u16,
        /// Echoed in the reply.
        opaque: u32,
    },
    /// 0x55 DCP_STREAM_END: the producer has nothing more for this stream.
    StreamEnd {
        /// The vbucket whose stream ended.
        vbucket: u16,
        /// The stream's opaque (that of its STREAM_REQ).
        opaque: u32,
        /// Why it ended.
        status: StreamEndStatus,
    },
    /// 0x56 DCP_SNAPSHOT_MARKER: the seqno range of the items that follow.
    SnapshotMarker(SnapshotMarker),
    /// 0x57 DCP_MUTATION: an item was stored.
    Mutation(Mutation),
    /// 0x58 DCP_DELETION: an item was deleted.
    Deletion(Deletion),
    /// 0x59 DCP_EXPIRATION: an item expired (the deletion layout).
    Expiration(Deletion),
    /// 0x5b DCP_SET_VBUCKET_STATE: the producer changed the vbucket's state
    /// (takeover during rebalance).
    SetVbucketState {
        /// The vbucket.
        vbucket: u16,
        /// The stream's opaque.
        opaque: u32,
        /// Its new state.
        state: VbucketState,
    },
    /// 0x5c DCP_NOOP: liveness probe; the consumer answers with an OK reply.
    Noop {
        /// Echoed in the reply.
        opaque: u32,
    },
    /// 0x5d DCP_BUFFER_ACKNOWLEDGEMENT: flow control, the consumer has
    /// processed this many more bytes.
    BufferAck {
        /// Echoed in the reply, if any (Couchbase sends none).
        opaque: u32,
        /// Bytes processed since the last acknowledgement, headers
        /// included.
        bytes: u32,
    },
    /// 0x5e DCP_CONTROL: set one connection option.
    Control(Control),
    /// 0x61 DCP_SEQNO_ACKNOWLEDGED: the replica has reached this seqno
    /// (the durability acknowledgement).
    SeqnoAcknowledged {
        /// The vbucket acknowledged.
        vbucket: u16,
        /// The stream's opaque.
        opaque: u32,
        /// The highest seqno the replica has prepared.
        prepared_seqno: u64,
    },
    /// A successful reply to DCP_STREAM_REQ: the stream is open, and this
    /// is the producer's failover log for the vbucket.
    StreamAccepted {
        /// The stream request's opaque.
        opaque: u32,
        /// The producer's failover log, newest entry first.
        log: FailoverLog,
    },
    /// A ROLLBACK (0x23) reply to DCP_STREAM_REQ: the consumer must roll
    /// back to `seqno` and ask again.
    StreamRollback {
        /// The stream request's opaque.
        opaque: u32,
        /// The seqno to roll back to.
        seqno: u64,
    },
    /// A successful reply to DCP_GET_FAILOVER_LOG.
    FailoverLogReply {
        /// The request's opaque.
        opaque: u32,
        /// The failover log, newest entry first.
        log: FailoverLog,
    },
    /// Any other reply: the empty OK that answers OPEN, CONTROL, NOOP or a
    /// snapshot marker's ACK flag, and every error.
    Reply(Response),
    /// Any other request: an opcode this module does not model, which the
    /// connection answers or refuses as it sees fit.
    Other(Request),
}

impl DcpMessage {
    /// The wire opcode.
    pub fn opcode(&self) -> Opcode {
        match self {
            DcpMessage::Open(_) => Opcode::DcpOpen,
            DcpMessage::CloseStream { .. } => Opcode::DcpCloseStream,
            DcpMessage::StreamReq(_)
            | DcpMessage::StreamAccepted { .. }
            | DcpMessage::StreamRollback { .. } => Opcode::DcpStreamReq,
            DcpMessage::GetFailoverLog { .. } | DcpMessage::FailoverLogReply { .. } => {
                Opcode::DcpGetFailoverLog
            }
            DcpMessage::StreamEnd { .. } => Opcode::DcpStreamEnd,
            DcpMessage::SnapshotMarker(_) => Opcode::DcpSnapshotMarker,
            DcpMessage::Mutation(_) => Opcode::DcpMutation,
            DcpMessage::Deletion(_) => Opcode::DcpDeletion,
            DcpMessage::Expiration(_) => Opcode::DcpExpiration,
            DcpMessage::SetVbucketState { .. } => Opcode::DcpSetVbucketState,
            DcpMessage::Noop { .. } => Opcode::DcpNoop,
            DcpMessage::BufferAck { .. } => Opcode::DcpBufferAck,
            DcpMessage::Control(_) => Opcode::DcpControl,
            DcpMessage::SeqnoAcknowledged { .. } => Opcode::DcpSeqnoAcknowledged,
            DcpMessage::Reply(response) => response.header.opcode,
            DcpMessage::Other(request) => request.header.opcode,
        }
    }

    /// The opaque: for stream messages the stream's (that of its
    /// STREAM_REQ), for everything else the token its reply echoes.
    pub fn opaque(&self) -> u32 {
        match *self {
            DcpMessage::Open(open) => open.opaque,
            DcpMessage::StreamReq(req) => req.opaque,
            DcpMessage::SnapshotMarker(marker) => marker.opaque,
            DcpMessage::Mutation(m) => m.fields.opaque,
            DcpMessage::Deletion(d) | DcpMessage::Expiration(d) => d.fields.opaque,
            DcpMessage::Control(control) => control.opaque,
            DcpMessage::CloseStream { opaque, .. }
            | DcpMessage::GetFailoverLog { opaque, .. }
            | DcpMessage::StreamEnd { opaque, .. }
            | DcpMessage::SetVbucketState { opaque, .. }
            | DcpMessage::Noop { opaque }
            | DcpMessage::BufferAck { opaque, .. }
            | DcpMessage::SeqnoAcknowledged { opaque, .. }
            | DcpMessage::StreamAccepted { opaque, .. }
            | DcpMessage::StreamRollback { opaque, .. }
            | DcpMessage::FailoverLogReply { opaque, .. } => opaque,
            DcpMessage::Reply(response) => response.header.opaque,
            DcpMessage::Other(request) => request.header.opaque,
        }
    }

    /// Append this message, re-encoded from `frame` (the bytes it was
    /// parsed from), to `out`. For a frame in canonical form — every frame
    /// this module's encoders write — the output equals `frame`; otherwise
    /// it parses back to an equal message.
    pub fn encode(&self, out: &mut BytesMut, frame: &[u8]) -> Result<(), EncodeError> {
        match *self {
            DcpMessage::Open(open) => open.encode(out, frame),
            DcpMessage::CloseStream { vbucket, opaque } => {
                encode_close_stream(out, vbucket, opaque);
                Ok(())
            }
            DcpMessage::StreamReq(req) => {
                encode_stream_req(out, &req);
                Ok(())
            }
            DcpMessage::GetFailoverLog { vbucket, opaque } => {
                encode_get_failover_log(out, vbucket, opaque);
                Ok(())
            }
            DcpMessage::StreamEnd {
                vbucket,
                opaque,
                status,
            } => {
                encode_stream_end(out, vbucket, opaque, status);
                Ok(())
            }
            DcpMessage::SnapshotMarker(marker) => {
                encode_snapshot_marker(out, &marker);
                Ok(())
            }
            DcpMessage::Mutation(m) => m.encode(out, frame),
            DcpMessage::Deletion(d) => d.encode(out, frame, Opcode::DcpDeletion),
            DcpMessage::Expiration(d) => d.encode(out, frame, Opcode::DcpExpiration),
            DcpMessage::SetVbucketState {
                vbucket,
                opaque,
                state,
            } => {
                encode_set_vbucket_state(out, vbucket, opaque, state);
                Ok(())
            }
            DcpMessage::Noop { opaque } => {
                encode_noop(out, opaque);
                Ok(())
            }
            DcpMessage::BufferAck { opaque, bytes } => {
                encode_buffer_ack(out, opaque, bytes);
                Ok(())
            }
            DcpMessage::Control(control) => control.encode(out, frame),
            DcpMessage::SeqnoAcknowledged {
                vbucket,
                opaque,
                prepared_seqno,
            } => {
                encode_seqno_acknowledged(out, vbucket, opaque, prepared_seqno);
                Ok(())
            }
            DcpMessage::StreamAccepted { opaque, log } => {
                stream::encode_log_reply(out, Opcode::DcpStreamReq, opaque, log.span().of(frame))
            }
            DcpMessage::StreamRollback { opaque, seqno } => {
                encode_stream_rollback(out, opaque, seqno);
                Ok(())
            }
            DcpMessage::FailoverLogReply { opaque, log } => stream::encode_log_reply(
                out,
                Opcode::DcpGetFailoverLog,
                opaque,
                log.span().of(frame),
            ),
            DcpMessage::Reply(response) => encode_response(
                out,
                &response.header.fields(),
                response.extras.of(frame),
                response.key.of(frame),
                response.value.of(frame),
            ),
            DcpMessage::Other(request) => encode_request(
                out,
                &request.header.fields(),
                request.extras_span().of(frame),
                request.key.of(frame),
                request.value.of(frame),
            ),
        }
    }
}

/// Parse one DCP frame, request or reply, from the start of `buf`.
///
/// Returns `Ok(Some((message, consumed)))`, `Ok(None)` while the header or
/// body is incomplete, or a [`ParseError`]: `Close` for bad magic,
/// contradictory lengths or a body over `limits`; `Skip(frame_len)` for a
/// well-framed message that breaks its layout (the count may exceed what is
/// buffered). Every check the header allows is made before the body
/// arrives.
pub fn parse_dcp(buf: &[u8], limits: &Limits) -> ParseResult<DcpMessage> {
    match buf.first() {
        None => Ok(None),
        Some(&RESPONSE_MAGIC) => parse_reply(buf, limits),
        // `check_frame` turns any other first byte into a fatal BadMagic.
        Some(_) => parse_request_frame(buf, limits),
    }
}

fn parse_request_frame(buf: &[u8], limits: &Limits) -> ParseResult<DcpMessage> {
    let Some((raw, layout)) = check_frame(buf, Magic::Request, limits)? else {
        return Ok(None);
    };
    let Some(rule) = request_rule(raw.opcode) else {
        return Ok(parse_request(buf, limits)?.map(|(req, used)| (DcpMessage::Other(req), used)));
    };
    let invalid = |reason| ParseError::skip(ErrorKind::BadFormat, reason, layout.frame_len);
    rule.check(&layout).map_err(invalid)?;
    let Some(bytes) = buf.get(..layout.frame_len) else {
        return Ok(None);
    };
    let frame = Frame { raw, layout, bytes };
    let message = (rule.decode)(&frame).map_err(invalid)?;
    Ok(Some((message, layout.frame_len)))
}

fn parse_reply(buf: &[u8], limits: &Limits) -> ParseResult<DcpMessage> {
    let Some((raw, layout)) = check_frame(buf, Magic::Response, limits)? else {
        return Ok(None);
    };
    let Some(reply) = stream::typed_reply(raw.opcode, Status(raw.specific)) else {
        return Ok(parse_response(buf, limits)?.map(|(res, used)| (DcpMessage::Reply(res), used)));
    };
    let invalid = |reason| ParseError::skip(ErrorKind::BadFormat, reason, layout.frame_len);
    stream::check_reply(reply, &layout).map_err(invalid)?;
    let Some(bytes) = buf.get(..layout.frame_len) else {
        return Ok(None);
    };
    let message = stream::decode_reply(reply, &raw, &layout, bytes).map_err(invalid)?;
    Ok(Some((message, layout.frame_len)))
}

/// The rule for a request opcode this module models, or `None`.
fn request_rule(opcode: u8) -> Option<&'static Rule> {
    Some(match opcode {
        op::DCP_OPEN => &connection::OPEN,
        op::DCP_CLOSE_STREAM => &stream::CLOSE_STREAM,
        op::DCP_STREAM_REQ => &stream::STREAM_REQ,
        op::DCP_GET_FAILOVER_LOG => &stream::GET_FAILOVER_LOG,
        op::DCP_STREAM_END => &stream::STREAM_END,
        op::DCP_SNAPSHOT_MARKER => &change::SNAPSHOT_MARKER,
        op::DCP_MUTATION => &change::MUTATION,
        op::DCP_DELETION => &change::DELETION,
        op::DCP_EXPIRATION => &change::EXPIRATION,
        op::DCP_SET_VBUCKET_STATE => &change::SET_VBUCKET_STATE,
        op::DCP_NOOP => &connection::NOOP,
        op::DCP_BUFFER_ACK => &connection::BUFFER_ACK,
        op::DCP_CONTROL => &connection::CONTROL,
        op::DCP_SEQNO_ACKNOWLEDGED => &change::SEQNO_ACKNOWLEDGED,
        _ => return None,
    })
}

// === impl Rule ===

/// The layout of one DCP request and how to read it: checked from the
/// header alone, then decoded once the body is in.
pub(crate) struct Rule {
    /// Exact extras length.
    pub(crate) extras: usize,
    /// The reason given when the extras length is wrong; names the message
    /// and the length it needs.
    pub(crate) bad_extras: &'static str,
    /// Whether a key may or must appear.
    pub(crate) key: Presence,
    /// Whether a value may or must appear.
    pub(crate) value: Presence,
    /// Read the message from a whole frame that passed [`Rule::check`].
    pub(crate) decode: fn(&Frame<'_>) -> Result<DcpMessage, &'static str>,
}

impl Rule {
    fn check(&self, layout: &Layout) -> Result<(), &'static str> {
        if layout.extras.len() != self.extras {
            return Err(self.bad_extras);
        }
        present(
            self.key,
            layout.key.len(),
            "key required",
            "key not allowed",
        )?;
        present(
            self.value,
            layout.value.len(),
            "value required",
            "value not allowed",
        )
    }
}

// === impl Frame ===

/// A whole request frame whose lengths passed its [`Rule`].
pub(crate) struct Frame<'a> {
    pub(crate) raw: RawHeader,
    pub(crate) layout: Layout,
    /// Exactly the frame's bytes.
    pub(crate) bytes: &'a [u8],
}

/// Reason for an extras read past the end; unreachable once
/// [`Rule::check`] has passed, but an error rather than a panic.
const SHORT_EXTRAS: &str = "extras too short";

impl Frame<'_> {
    fn extras(&self) -> &[u8] {
        self.bytes
            .get(self.layout.extras.start..self.layout.extras.end)
            .unwrap_or_default()
    }

    fn field<const N: usize>(&self, at: usize) -> Result<[u8; N], &'static str> {
        self.extras()
            .get(at..)
            .and_then(|rest| rest.first_chunk::<N>())
            .copied()
            .ok_or(SHORT_EXTRAS)
    }

    /// The extras byte at `at`.
    pub(crate) fn u8_at(&self, at: usize) -> Result<u8, &'static str> {
        self.field::<1>(at).map(|[b]| b)
    }

    /// The big-endian u16 at `at` in the extras.
    pub(crate) fn u16_at(&self, at: usize) -> Result<u16, &'static str> {
        self.field(at).map(u16::from_be_bytes)
    }

    /// The big-endian u32 at `at` in the extras.
    pub(crate) fn u32_at(&self, at: usize) -> Result<u32, &'static str> {
        self.field(at).map(u32::from_be_bytes)
    }

    /// The big-endian u64 at `at` in the extras.
    pub(crate) fn u64_at(&self, at: usize) -> Result<u64, &'static str> {
        self.field(at).map(u64::from_be_bytes)
    }
}

/// A request header from `opcode` for the given vbucket and opaque, CAS 0,
/// data type raw, lengths to be filled in by the frame writer.
pub(crate) fn request_header(opcode: Opcode, vbucket: u16, opaque: u32) -> RawHeader {
    RawHeader {
        magic: Magic::Request as u8,
        opcode: opcode.to_u8(),
        key_len: 0,
        extras_len: 0,
        data_type: 0,
        specific: vbucket,
        body_len: 0,
        opaque,
        cas: 0,
    }
}

/// Declares a `u32` bit-set newtype with named bits: unknown bits are kept,
/// so a frame's flags survive a parse and re-encode unchanged.
macro_rules! flag_set {
    (
        $(#[doc = $doc:literal])*
        $name:ident {
            $( $(#[doc = $bit_doc:literal])* $bit:ident = $value:literal, )*
        }
    ) => {
        $(#[doc = $doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
        pub struct $name(pub u32);

        impl $name {
            $(
                $(#[doc = $bit_doc])*
                pub const $bit: $name = $name($value);
            )*

            /// True when every bit of `other` is set here.
            pub const fn contains(self, other: $name) -> bool {
                self.0 & other.0 == other.0
            }
        }

        impl std::ops::BitOr for $name {
            type Output = $name;

            fn bitor(self, other: $name) -> $name {
                $name(self.0 | other.0)
            }
        }
    };
}
pub(crate) use flag_set;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Recovery;

    fn parse(buf: &[u8]) -> ParseResult<DcpMessage> {
        parse_dcp(buf, &Limits::default())
    }

    /// Parse `wire` as exactly one frame and return its message, checking
    /// on the way that every proper prefix asks for more bytes and that
    /// re-encoding gives `wire` back.
    pub(crate) fn assert_fixture(wire: &[u8]) -> DcpMessage {
        let (msg, used) = parse(wire).unwrap().unwrap();
        assert_eq!(used, wire.len());
        for n in 0..wire.len() {
            assert_eq!(parse(&wire[..n]), Ok(None), "prefix of {n} bytes");
        }
        let mut out = BytesMut::new();
        msg.encode(&mut out, wire).unwrap();
        assert_eq!(&out[..], wire, "re-encoding {msg:?}");
        msg
    }

    /// `wire` is refused as malformed with `reason` and skipped whole, and
    /// the verdict comes from its 24-byte header alone.
    pub(crate) fn assert_rejected(wire: &[u8], reason: &str) {
        assert_skipped(wire, reason);
        assert_eq!(parse(&wire[..24]), parse(wire), "verdict needs the body");
    }

    /// `wire` is refused with `reason` and skipped whole, a verdict that
    /// needs its body: the header alone asks for more.
    pub(crate) fn assert_rejected_with_body(wire: &[u8], reason: &str) {
        assert_skipped(wire, reason);
        assert_eq!(parse(&wire[..24]), Ok(None));
    }

    fn assert_skipped(wire: &[u8], reason: &str) {
        let err = parse(wire).unwrap_err();
        assert_eq!(err.reason, reason);
        assert_eq!(err.kind, ErrorKind::BadFormat);
        assert_eq!(err.recovery, Recovery::Skip(wire.len()));
        assert_eq!(err.binary_status(), Status::INVALID_ARGUMENTS.0);
    }

    /// `wire` with the bytes at the given offsets replaced.
    pub(crate) fn patch(wire: &[u8], edits: &[(usize, u8)]) -> Vec<u8> {
        let mut out = wire.to_vec();
        for &(at, byte) in edits {
            out[at] = byte;
        }
        out
    }

    #[test]
    fn bad_magic_closes_after_one_byte() {
        for first in [0x00, b'g', 0x82, 0xff] {
            let err = parse(&[first]).unwrap_err();
            assert_eq!(
                (err.kind, err.recovery),
                (ErrorKind::BadMagic, Recovery::Close)
            );
        }
        assert_eq!(parse(&[]), Ok(None));
        assert_eq!(parse(&[0x80]), Ok(None));
        assert_eq!(parse(&[0x81]), Ok(None));
    }

    #[test]
    fn unmodelled_requests_and_replies_are_values() {
        // DCP_ADD_STREAM 0x51, flags 1 (takeover), vbucket 5: kv_engine's
        // add-stream.md example.
        let add_stream = [
            0x80, 0x51, 0x00, 0x00, 0x04, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00,
            0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
        ];
        let (msg, used) = parse(&add_stream).unwrap().unwrap();
        assert_eq!(used, add_stream.len());
        let DcpMessage::Other(req) = msg else {
            panic!("{msg:?}");
        };
        assert_eq!(req.header.opcode, Opcode::DcpAddStream);
        assert_eq!(req.header.vbucket, 5);
        assert_eq!(msg.opcode(), Opcode::DcpAddStream);
        assert_eq!(msg.opaque(), 1);

        // The empty OK that answers DCP_OPEN (open-connection.md).
        let open_ok = [
            0x81, 0x50, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        ];
        let (msg, _) = parse(&open_ok).unwrap().unwrap();
        let DcpMessage::Reply(res) = msg else {
            panic!("{msg:?}");
        };
        assert_eq!(
            (res.header.opcode, res.header.status),
            (Opcode::DcpOpen, Status::OK)
        );
        let mut out = BytesMut::new();
        encode_dcp_reply(&mut out, Opcode::DcpOpen, Status::OK, 1);
        assert_eq!(&out[..], &open_ok);

        // A non-DCP request on a DCP connection goes through the general
        // parser, rules and all.
        let mut get = BytesMut::new();
        encode_request(
            &mut get,
            &crate::binary::RequestFields::new(Opcode::Get),
            &[],
            &[],
            &[],
        )
        .unwrap();
        assert_eq!(parse(&get).unwrap_err().reason, "key required");
    }

    #[test]
    fn pipelined_stream_in_both_directions() {
        let mut wire = BytesMut::new();
        encode_open(&mut wire, 1, 0, OpenFlags::PRODUCER, b"replication:a->b").unwrap();
        encode_dcp_reply(&mut wire, Opcode::DcpOpen, Status::OK, 1);
        encode_control(&mut wire, 2, b"enable_noop", b"true").unwrap();
        encode_noop(&mut wire, 3);
        encode_stream_end(&mut wire, 7, 0x1000, StreamEndStatus::OK);
        let mut at = 0;
        let mut seen = Vec::new();
        while let Some((msg, used)) = parse(&wire[at..]).unwrap() {
            seen.push((msg.opcode(), msg.opaque()));
            at += used;
        }
        assert_eq!(at, wire.len());
        assert_eq!(
            seen,
            [
                (Opcode::DcpOpen, 1),
                (Opcode::DcpOpen, 1),
                (Opcode::DcpControl, 2),
                (Opcode::DcpNoop, 3),
                (Opcode::DcpStreamEnd, 0x1000),
            ]
        );
    }

    #[test]
    fn oversized_bodies_close_from_the_header() {
        let limits = Limits {
            max_value_len: 64,
            ..Limits::default()
        };
        let mut header = [0u8; 24];
        header[0] = 0x80;
        header[1] = op::DCP_MUTATION;
        header[4] = 31;
        header[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        let err = parse_dcp(&header, &limits).unwrap_err();
        assert_eq!(
            (err.kind, err.recovery),
            (ErrorKind::TooLarge, Recovery::Close)
        );
    }

    #[test]
    fn flag_sets_combine_and_keep_unknown_bits() {
        let flags = SnapshotFlags::MEMORY | SnapshotFlags::CHECKPOINT;
        assert_eq!(flags, SnapshotFlags(0x05));
        assert!(flags.contains(SnapshotFlags::MEMORY));
        assert!(!flags.contains(SnapshotFlags::DISK));
        assert!(SnapshotFlags(0x8000_0001).contains(SnapshotFlags::MEMORY));
    }
}
