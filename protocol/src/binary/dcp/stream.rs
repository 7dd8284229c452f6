//! Stream lifecycle: DCP_STREAM_REQ (0x53) and its typed replies — OK with
//! the producer's failover log, or ROLLBACK (0x23) with the seqno to roll
//! back to — DCP_GET_FAILOVER_LOG (0x54) and its reply, DCP_CLOSE_STREAM
//! (0x52) and DCP_STREAM_END (0x55). Layouts from kv_engine's
//! `stream-request.md`, `failover-log.md`, `close-stream.md` and
//! `stream-end.md`.

use bytes::BytesMut;

use super::failover_log::{self, FailoverEntry, FailoverLog};
use super::{flag_set, request_header, DcpMessage, Frame, Rule};
use crate::binary::encode::{begin_frame, write_frame, EncodeError};
use crate::binary::header::{Layout, Magic, RawHeader};
use crate::binary::opcode::{self as op, Opcode};
use crate::binary::shape::Presence;
use crate::binary::status::Status;

/// DCP_STREAM_REQ extras: flags (4), reserved (4), five u64 seqnos/UUID.
pub const STREAM_REQ_EXTRAS_LEN: usize = 48;
/// DCP_STREAM_END extras: status (4).
pub const STREAM_END_EXTRAS_LEN: usize = 4;
/// Body of a ROLLBACK reply: the seqno to roll back to (u64).
pub const ROLLBACK_BODY_LEN: usize = 8;

flag_set! {
    /// DCP_STREAM_REQ flags (the same bits as DCP_ADD_STREAM's).
    StreamReqFlags {
        /// 0x01: send everything, then hand the vbucket over: the consumer's
        /// copy becomes active and the producer's dead (rebalance).
        TAKEOVER = 0x01,
        /// 0x02: only items already on disk.
        DISK_ONLY = 0x02,
        /// 0x04: end at the vbucket's seqno when the stream is created,
        /// whatever the end seqno says.
        TO_LATEST = 0x04,
        /// 0x10: refuse (NOT_MY_VBUCKET) unless the vbucket is active.
        ACTIVE_VB_ONLY = 0x10,
        /// 0x20: check the vbucket UUID even from seqno 0; a mismatch is a
        /// ROLLBACK.
        STRICT_VBUUID = 0x20,
    }
}

/// DCP_STREAM_REQ (0x53): the consumer asks for a vbucket's changes after
/// `start_seqno`. Its opaque names the stream: every message of the stream
/// carries it. Extras, big-endian:
///
/// ```text
///   Byte/     0       |       1       |       2       |       3       |
///     +---------------+---------------+---------------+---------------+
///    0| flags                                                         |
///     +---------------+---------------+---------------+---------------+
///    4| reserved (0)                                                  |
///     +---------------+---------------+---------------+---------------+
///    8| start seqno                                                   |
///     |                                                               |
///     +---------------+---------------+---------------+---------------+
///   16| end seqno                                                     |
///     |                                                               |
///     +---------------+---------------+---------------+---------------+
///   24| vbucket UUID                                                  |
///     |                                                               |
///     +---------------+---------------+---------------+---------------+
///   32| snapshot start seqno                                          |
///     |                                                               |
///     +---------------+---------------+---------------+---------------+
///   40| snapshot end seqno                                            |
///     |                                                               |
///     +---------------+---------------+---------------+---------------+
/// ```
///
/// The reserved word is not kept: a frame with it non-zero re-encodes with
/// zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StreamReq {
    /// The vbucket to stream.
    pub vbucket: u16,
    /// The stream's opaque.
    pub opaque: u32,
    /// Options.
    pub flags: StreamReqFlags,
    /// The last seqno the consumer has; the stream starts after it.
    pub start_seqno: u64,
    /// End after the snapshot holding this seqno; `u64::MAX` streams on.
    pub end_seqno: u64,
    /// The vbucket UUID the consumer's history has; 0 when it has none.
    pub vbucket_uuid: u64,
    /// Start of the last snapshot the consumer received (`start_seqno`
    /// when it received it whole).
    pub snap_start_seqno: u64,
    /// End of the last snapshot the consumer received (`start_seqno` when
    /// it received it whole).
    pub snap_end_seqno: u64,
}

/// Append a DCP_STREAM_REQ request to `out`.
pub fn encode_stream_req(out: &mut BytesMut, req: &StreamReq) {
    let mut extras = [0u8; STREAM_REQ_EXTRAS_LEN];
    extras[..4].copy_from_slice(&req.flags.0.to_be_bytes());
    for (at, word) in [
        (8, req.start_seqno),
        (16, req.end_seqno),
        (24, req.vbucket_uuid),
        (32, req.snap_start_seqno),
        (40, req.snap_end_seqno),
    ] {
        extras[at..at + 8].copy_from_slice(&word.to_be_bytes());
    }
    let header = request_header(Opcode::DcpStreamReq, req.vbucket, req.opaque);
    // 48 bytes of extras cannot overflow any length field.
    let _ = write_frame(out, header, &extras, &[], &[]);
}

pub(crate) const STREAM_REQ: Rule = Rule {
    extras: STREAM_REQ_EXTRAS_LEN,
    bad_extras: "DCP_STREAM_REQ needs 48 bytes of extras",
    key: Presence::Forbidden,
    // A value is Couchbase's JSON for collections and stream IDs.
    value: Presence::Forbidden,
    decode: decode_stream_req,
};

fn decode_stream_req(frame: &Frame<'_>) -> Result<DcpMessage, &'static str> {
    Ok(DcpMessage::StreamReq(StreamReq {
        vbucket: frame.raw.specific,
        opaque: frame.raw.opaque,
        flags: StreamReqFlags(frame.u32_at(0)?),
        start_seqno: frame.u64_at(8)?,
        end_seqno: frame.u64_at(16)?,
        vbucket_uuid: frame.u64_at(24)?,
        snap_start_seqno: frame.u64_at(32)?,
        snap_end_seqno: frame.u64_at(40)?,
    }))
}

/// Append a DCP_CLOSE_STREAM (0x52) request to `out`: a bare header naming
/// the vbucket.
pub fn encode_close_stream(out: &mut BytesMut, vbucket: u16, opaque: u32) {
    let header = request_header(Opcode::DcpCloseStream, vbucket, opaque);
    // No parts, so no length can overflow.
    let _ = write_frame(out, header, &[], &[], &[]);
}

pub(crate) const CLOSE_STREAM: Rule = Rule {
    extras: 0,
    bad_extras: "DCP_CLOSE_STREAM takes no extras",
    key: Presence::Forbidden,
    // A value is Couchbase's stream ID, which Shoal never enables.
    value: Presence::Forbidden,
    decode: |frame| {
        Ok(DcpMessage::CloseStream {
            vbucket: frame.raw.specific,
            opaque: frame.raw.opaque,
        })
    },
};

/// Append a DCP_GET_FAILOVER_LOG (0x54) request to `out`: a bare header
/// naming the vbucket.
pub fn encode_get_failover_log(out: &mut BytesMut, vbucket: u16, opaque: u32) {
    let header = request_header(Opcode::DcpGetFailoverLog, vbucket, opaque);
    // No parts, so no length can overflow.
    let _ = write_frame(out, header, &[], &[], &[]);
}

pub(crate) const GET_FAILOVER_LOG: Rule = Rule {
    extras: 0,
    bad_extras: "DCP_GET_FAILOVER_LOG takes no extras",
    key: Presence::Forbidden,
    value: Presence::Forbidden,
    decode: |frame| {
        Ok(DcpMessage::GetFailoverLog {
            vbucket: frame.raw.specific,
            opaque: frame.raw.opaque,
        })
    },
};

/// Why a stream ended: DCP_STREAM_END's extras word (`flags` in
/// kv_engine's docs). Other values are kept as they are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StreamEndStatus(pub u32);

impl StreamEndStatus {
    /// 0: everything up to the end seqno was sent.
    pub const OK: StreamEndStatus = StreamEndStatus(0);
    /// 1: closed by DCP_CLOSE_STREAM.
    pub const CLOSED: StreamEndStatus = StreamEndStatus(1);
    /// 2: the vbucket changed to a state the stream does not serve.
    pub const STATE_CHANGED: StreamEndStatus = StreamEndStatus(2);
    /// 3: the connection is going away.
    pub const DISCONNECTED: StreamEndStatus = StreamEndStatus(3);
    /// 4: the consumer read too slowly; it may reconnect.
    pub const TOO_SLOW: StreamEndStatus = StreamEndStatus(4);
}

/// Append a DCP_STREAM_END (0x55) request to `out`. Extras:
///
/// ```text
///   Byte/     0       |       1       |       2       |       3       |
///     +---------------+---------------+---------------+---------------+
///    0| status (flags)                                                |
///     +---------------+---------------+---------------+---------------+
/// ```
pub fn encode_stream_end(out: &mut BytesMut, vbucket: u16, opaque: u32, status: StreamEndStatus) {
    let header = request_header(Opcode::DcpStreamEnd, vbucket, opaque);
    // Four bytes of extras cannot overflow any length field.
    let _ = write_frame(out, header, &status.0.to_be_bytes(), &[], &[]);
}

pub(crate) const STREAM_END: Rule = Rule {
    extras: STREAM_END_EXTRAS_LEN,
    bad_extras: "DCP_STREAM_END needs 4 bytes of extras",
    key: Presence::Forbidden,
    value: Presence::Forbidden,
    decode: |frame| {
        Ok(DcpMessage::StreamEnd {
            vbucket: frame.raw.specific,
            opaque: frame.raw.opaque,
            status: StreamEndStatus(frame.u32_at(0)?),
        })
    },
};

// === replies ===

/// The replies this module types; every other reply is
/// [`DcpMessage::Reply`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TypedReply {
    /// STREAM_REQ, OK: the body is a failover log.
    Accepted,
    /// STREAM_REQ, ROLLBACK: the body is a u64 seqno.
    Rollback,
    /// GET_FAILOVER_LOG, OK: the body is a failover log.
    FailoverLog,
}

/// Which typed reply a response header announces, if any.
pub(crate) fn typed_reply(opcode: u8, status: Status) -> Option<TypedReply> {
    match (opcode, status) {
        (op::DCP_STREAM_REQ, Status::OK) => Some(TypedReply::Accepted),
        (op::DCP_STREAM_REQ, Status::ROLLBACK) => Some(TypedReply::Rollback),
        (op::DCP_GET_FAILOVER_LOG, Status::OK) => Some(TypedReply::FailoverLog),
        _ => None,
    }
}

/// Check a typed reply's lengths from its header alone.
pub(crate) fn check_reply(reply: TypedReply, layout: &Layout) -> Result<(), &'static str> {
    if !layout.extras.is_empty() || !layout.key.is_empty() {
        return Err("DCP stream reply must not carry extras or a key");
    }
    match reply {
        TypedReply::Accepted | TypedReply::FailoverLog => {
            FailoverLog::from_span(layout.value).map(|_| ())
        }
        TypedReply::Rollback if layout.value.len() == ROLLBACK_BODY_LEN => Ok(()),
        TypedReply::Rollback => Err("DCP rollback reply needs an 8-byte seqno"),
    }
}

/// Decode a typed reply that passed [`check_reply`], from its whole frame.
pub(crate) fn decode_reply(
    reply: TypedReply,
    raw: &RawHeader,
    layout: &Layout,
    frame: &[u8],
) -> Result<DcpMessage, &'static str> {
    let opaque = raw.opaque;
    Ok(match reply {
        TypedReply::Accepted => DcpMessage::StreamAccepted {
            opaque,
            log: FailoverLog::from_span(layout.value)?,
        },
        TypedReply::FailoverLog => DcpMessage::FailoverLogReply {
            opaque,
            log: FailoverLog::from_span(layout.value)?,
        },
        TypedReply::Rollback => DcpMessage::StreamRollback {
            opaque,
            seqno: frame
                .get(layout.value.start..layout.value.end)
                .and_then(|b| b.first_chunk::<ROLLBACK_BODY_LEN>())
                .map(|b| u64::from_be_bytes(*b))
                .ok_or("DCP rollback reply needs an 8-byte seqno")?,
        },
    })
}

fn reply_header(opcode: Opcode, status: Status, opaque: u32) -> RawHeader {
    RawHeader {
        magic: Magic::Response as u8,
        opcode: opcode.to_u8(),
        key_len: 0,
        extras_len: 0,
        data_type: 0,
        specific: status.0,
        body_len: 0,
        opaque,
        cas: 0,
    }
}

/// Append the OK reply to DCP_STREAM_REQ: the stream is open, and
/// `entries` (newest first) is the producer's failover log.
pub fn encode_stream_accepted(
    out: &mut BytesMut,
    opaque: u32,
    entries: &[FailoverEntry],
) -> Result<(), EncodeError> {
    encode_entries_reply(out, Opcode::DcpStreamReq, opaque, entries)
}

/// Append the OK reply to DCP_GET_FAILOVER_LOG carrying `entries`, newest
/// first.
pub fn encode_failover_log_reply(
    out: &mut BytesMut,
    opaque: u32,
    entries: &[FailoverEntry],
) -> Result<(), EncodeError> {
    encode_entries_reply(out, Opcode::DcpGetFailoverLog, opaque, entries)
}

/// Header, then the entries straight into `out`: no intermediate body.
fn encode_entries_reply(
    out: &mut BytesMut,
    opcode: Opcode,
    opaque: u32,
    entries: &[FailoverEntry],
) -> Result<(), EncodeError> {
    let body_len = failover_log::encoded_len(entries.len())?;
    let header = reply_header(opcode, Status::OK, opaque);
    begin_frame(out, header, 0, 0, body_len)?;
    failover_log::put_entries(out, entries);
    Ok(())
}

/// Re-encode a failover-log reply from the log's bytes in a parsed frame.
pub(crate) fn encode_log_reply(
    out: &mut BytesMut,
    opcode: Opcode,
    opaque: u32,
    log: &[u8],
) -> Result<(), EncodeError> {
    write_frame(out, reply_header(opcode, Status::OK, opaque), &[], &[], log)
}

/// Append the ROLLBACK (0x23) reply to DCP_STREAM_REQ: the consumer must
/// roll back to `seqno` before asking again.
pub fn encode_stream_rollback(out: &mut BytesMut, opaque: u32, seqno: u64) {
    let header = reply_header(Opcode::DcpStreamReq, Status::ROLLBACK, opaque);
    // Eight bytes of value cannot overflow any length field.
    let _ = write_frame(out, header, &[], &[], &seqno.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_fixture, assert_rejected, patch};
    use super::*;
    use crate::binary::dcp::parse_dcp;
    use crate::Limits;

    /// stream-request.md's first request: vbucket 0, opaque 0x1000, start
    /// 0xffeedd, no end, UUID 0xfeeddeca, snapshot 0..0xffeeff.
    const STREAM_REQ_RESUME: &[u8] = &[
        0x80, 0x53, 0x00, 0x00, 0x30, 0x00, 0x00, 0x00, // extras 48, vbucket 0
        0x00, 0x00, 0x00, 0x30, 0x00, 0x00, 0x10, 0x00, // body 48, opaque
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // CAS
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // flags, reserved
        0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xee, 0xdd, // start seqno
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // end seqno
        0x00, 0x00, 0x00, 0x00, 0xfe, 0xed, 0xde, 0xca, // vbucket UUID
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // snapshot start
        0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xee, 0xff, // snapshot end
    ];

    /// A takeover stream request for vbucket 0x0203 from seqno 0.
    const STREAM_REQ_TAKEOVER: &[u8] = &[
        0x80, 0x53, 0x00, 0x00, 0x30, 0x00, 0x02, 0x03, 0x00, 0x00, 0x00, 0x30, 0x00, 0x00, 0x00,
        0x07, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // header
        0x00, 0x00, 0x00, 0x11, 0x00, 0x00, 0x00, 0x00, // TAKEOVER | ACTIVE_VB_ONLY
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // start 0
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2a, // end 42
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // UUID 0
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // snapshot start
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // snapshot end
    ];

    /// stream-request.md: ROLLBACK to seqno 0, opaque 0x1000.
    const ROLLBACK_TO_0: &[u8] = &[
        0x81, 0x53, 0x00, 0x00, 0x00, 0x00, 0x00, 0x23, // status 0x23
        0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x10, 0x00, // body 8, opaque
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // CAS
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // rollback seqno
    ];

    /// The four-entry failover log of stream-request.md and
    /// failover-log.md, newest first.
    const LOG: [FailoverEntry; 4] = [
        FailoverEntry {
            vbucket_uuid: 0xfeed_deca,
            seqno: 0x5432,
        },
        FailoverEntry {
            vbucket_uuid: 0x00de_cafe,
            seqno: 0x0134_3214,
        },
        FailoverEntry {
            vbucket_uuid: 0xfeed_face,
            seqno: 0x04,
        },
        FailoverEntry {
            vbucket_uuid: 0xdead_beef,
            seqno: 0x6524,
        },
    ];

    /// stream-request.md: the stream is accepted, opaque 0x1000.
    const ACCEPTED: &[u8] = &[
        0x81, 0x53, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // status OK
        0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x10, 0x00, // body 64, opaque
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // CAS
        0x00, 0x00, 0x00, 0x00, 0xfe, 0xed, 0xde, 0xca, // UUID
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x54, 0x32, // seqno
        0x00, 0x00, 0x00, 0x00, 0x00, 0xde, 0xca, 0xfe, // UUID
        0x00, 0x00, 0x00, 0x00, 0x01, 0x34, 0x32, 0x14, // seqno
        0x00, 0x00, 0x00, 0x00, 0xfe, 0xed, 0xfa, 0xce, // UUID
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, // seqno
        0x00, 0x00, 0x00, 0x00, 0xde, 0xad, 0xbe, 0xef, // UUID
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x65, 0x24, // seqno
    ];

    /// failover-log.md's request: vbucket 0, opaque 0xdeadbeef.
    const GET_FAILOVER_LOG_0: &[u8] = &[
        0x80, 0x54, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xde, 0xad, 0xbe,
        0xef, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];

    /// close-stream.md: vbucket 5, opaque 0xdeadbeef.
    const CLOSE_STREAM_5: &[u8] = &[
        0x80, 0x52, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00, 0x00, 0xde, 0xad, 0xbe,
        0xef, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];

    /// stream-end.md with status 4 (too slow), vbucket 9, opaque
    /// 0xdeadbeef.
    const STREAM_END_TOO_SLOW: &[u8] = &[
        0x80, 0x55, 0x00, 0x00, 0x04, 0x00, 0x00, 0x09, 0x00, 0x00, 0x00, 0x04, 0xde, 0xad, 0xbe,
        0xef, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // header
        0x00, 0x00, 0x00, 0x04, // status
    ];

    #[test]
    fn stream_req_byte_exact() {
        let resume = StreamReq {
            vbucket: 0,
            opaque: 0x1000,
            flags: StreamReqFlags::default(),
            start_seqno: 0xff_eedd,
            end_seqno: u64::MAX,
            vbucket_uuid: 0xfeed_deca,
            snap_start_seqno: 0,
            snap_end_seqno: 0xff_eeff,
        };
        let takeover = StreamReq {
            vbucket: 0x0203,
            opaque: 7,
            flags: StreamReqFlags::TAKEOVER | StreamReqFlags::ACTIVE_VB_ONLY,
            end_seqno: 42,
            ..StreamReq::default()
        };
        for (wire, req) in [(STREAM_REQ_RESUME, resume), (STREAM_REQ_TAKEOVER, takeover)] {
            assert_eq!(assert_fixture(wire), DcpMessage::StreamReq(req));
            let mut out = BytesMut::new();
            encode_stream_req(&mut out, &req);
            assert_eq!(&out[..], wire);
        }
    }

    #[test]
    fn stream_req_rejects_and_drops_reserved() {
        // The 20-byte extras of a snapshot marker sent as a stream request.
        assert_rejected(
            &patch(&STREAM_REQ_RESUME[..24 + 20], &[(4, 20), (11, 20)]),
            "DCP_STREAM_REQ needs 48 bytes of extras",
        );
        let mut with_value = STREAM_REQ_RESUME.to_vec();
        with_value.extend_from_slice(b"{}");
        with_value[11] += 2;
        assert_rejected(&with_value, "value not allowed");

        // A non-zero reserved word parses and re-encodes as zero.
        let mut reserved = STREAM_REQ_RESUME.to_vec();
        reserved[31] = 1;
        let (msg, _) = parse_dcp(&reserved, &Limits::default()).unwrap().unwrap();
        let mut out = BytesMut::new();
        msg.encode(&mut out, &reserved).unwrap();
        assert_eq!(&out[..], STREAM_REQ_RESUME);
    }

    #[test]
    fn stream_req_replies_byte_exact() {
        let msg = assert_fixture(ACCEPTED);
        let DcpMessage::StreamAccepted { opaque, log } = msg else {
            panic!("{msg:?}");
        };
        assert_eq!(opaque, 0x1000);
        assert_eq!(log.entries(ACCEPTED).collect::<Vec<_>>(), LOG);
        let mut out = BytesMut::new();
        encode_stream_accepted(&mut out, 0x1000, &LOG).unwrap();
        assert_eq!(&out[..], ACCEPTED);

        assert_eq!(
            assert_fixture(ROLLBACK_TO_0),
            DcpMessage::StreamRollback {
                opaque: 0x1000,
                seqno: 0
            }
        );
        let mut out = BytesMut::new();
        encode_stream_rollback(&mut out, 0x1000, 0);
        assert_eq!(&out[..], ROLLBACK_TO_0);

        // The same log answering GET_FAILOVER_LOG (failover-log.md).
        let mut reply = ACCEPTED.to_vec();
        reply[1] = 0x54;
        reply[12..16].copy_from_slice(&0xdead_beefu32.to_be_bytes());
        let msg = assert_fixture(&reply);
        let DcpMessage::FailoverLogReply { opaque, log } = msg else {
            panic!("{msg:?}");
        };
        assert_eq!((opaque, log.len()), (0xdead_beef, 4));
        let mut out = BytesMut::new();
        encode_failover_log_reply(&mut out, 0xdead_beef, &LOG).unwrap();
        assert_eq!(&out[..], &reply[..]);
    }

    #[test]
    fn stream_req_error_replies_stay_untyped() {
        // NOT_MY_VBUCKET to a stream request: a plain reply.
        let mut wire = ROLLBACK_TO_0[..24].to_vec();
        wire[7] = 0x07;
        wire[11] = 0;
        let msg = assert_fixture(&wire);
        let DcpMessage::Reply(reply) = msg else {
            panic!("{msg:?}");
        };
        assert_eq!(reply.header.status, Status::NOT_MY_VBUCKET);
    }

    #[test]
    fn malformed_replies_are_skipped_from_the_header() {
        let mut short = ROLLBACK_TO_0[..28].to_vec();
        short[11] = 4;
        assert_rejected(&short, "DCP rollback reply needs an 8-byte seqno");
        let mut ragged = ACCEPTED[..24 + 40].to_vec();
        ragged[11] = 40;
        assert_rejected(&ragged, "failover log is not a whole number of entries");
        let mut keyed = ACCEPTED.to_vec();
        keyed[3] = 16;
        assert_rejected(&keyed, "DCP stream reply must not carry extras or a key");
    }

    #[test]
    fn close_stream_and_get_failover_log_byte_exact() {
        assert_eq!(
            assert_fixture(CLOSE_STREAM_5),
            DcpMessage::CloseStream {
                vbucket: 5,
                opaque: 0xdead_beef
            }
        );
        let mut out = BytesMut::new();
        encode_close_stream(&mut out, 5, 0xdead_beef);
        assert_eq!(&out[..], CLOSE_STREAM_5);

        assert_eq!(
            assert_fixture(GET_FAILOVER_LOG_0),
            DcpMessage::GetFailoverLog {
                vbucket: 0,
                opaque: 0xdead_beef
            }
        );
        let mut out = BytesMut::new();
        encode_get_failover_log(&mut out, 0, 0xdead_beef);
        assert_eq!(&out[..], GET_FAILOVER_LOG_0);

        // A stream ID (Couchbase's value) is refused.
        let mut with_sid = CLOSE_STREAM_5.to_vec();
        with_sid.extend_from_slice(&[0, 1]);
        with_sid[11] = 2;
        assert_rejected(&with_sid, "value not allowed");
    }

    #[test]
    fn stream_end_byte_exact() {
        assert_eq!(
            assert_fixture(STREAM_END_TOO_SLOW),
            DcpMessage::StreamEnd {
                vbucket: 9,
                opaque: 0xdead_beef,
                status: StreamEndStatus::TOO_SLOW
            }
        );
        let mut out = BytesMut::new();
        encode_stream_end(&mut out, 9, 0xdead_beef, StreamEndStatus::TOO_SLOW);
        assert_eq!(&out[..], STREAM_END_TOO_SLOW);
        assert_rejected(
            &patch(CLOSE_STREAM_5, &[(1, op::DCP_STREAM_END)]),
            "DCP_STREAM_END needs 4 bytes of extras",
        );
    }
}
