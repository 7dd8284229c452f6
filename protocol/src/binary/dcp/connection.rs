//! Connection-level DCP messages: DCP_OPEN (0x50) names the connection and
//! says which end produces, DCP_CONTROL (0x5e) sets options,
//! DCP_NOOP (0x5c) proves liveness, DCP_BUFFER_ACKNOWLEDGEMENT (0x5d)
//! returns flow-control credit; and [`encode_dcp_reply`], the empty reply
//! most of them get. Layouts from kv_engine's `open-connection.md`,
//! `control.md`, `no-op.md` and `buffer-ack.md`.

use bytes::BytesMut;

use super::{flag_set, request_header, DcpMessage, Frame, Rule};
use crate::binary::encode::{write_frame, EncodeError};
use crate::binary::header::{Magic, RawHeader};
use crate::binary::opcode::Opcode;
use crate::binary::shape::Presence;
use crate::binary::status::Status;
use crate::Span;

/// DCP_OPEN extras: seqno (4, reserved) + flags (4).
pub const OPEN_EXTRAS_LEN: usize = 8;
/// DCP_BUFFER_ACKNOWLEDGEMENT extras: bytes (4).
pub const BUFFER_ACK_EXTRAS_LEN: usize = 4;

flag_set! {
    /// DCP_OPEN flags. They name what the *receiving* end becomes: a
    /// consumer opens with [`OpenFlags::PRODUCER`] to make the node it
    /// talks to produce; neither PRODUCER nor NOTIFIER means the receiver
    /// consumes.
    OpenFlags {
        /// 0x01: the receiver produces.
        PRODUCER = 0x01,
        /// 0x02: the receiver notifies (seqno changes, no data); never
        /// with PRODUCER.
        NOTIFIER = 0x02,
        /// 0x04: mutations and deletions carry the item's XATTRs.
        INCLUDE_XATTRS = 0x04,
        /// 0x08: mutations carry keys and metadata only, no values.
        NO_VALUE = 0x08,
    }
}

/// DCP_OPEN (0x50). Extras, big-endian; the key is the connection name:
///
/// ```text
///   Byte/     0       |       1       |       2       |       3       |
///     +---------------+---------------+---------------+---------------+
///    0| seqno (reserved; 0)                                           |
///     +---------------+---------------+---------------+---------------+
///    4| flags                                                         |
///     +---------------+---------------+---------------+---------------+
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Open {
    /// Echoed in the reply.
    pub opaque: u32,
    /// The first extras word: "seqno" in the original UPR protocol,
    /// "reserved" in current Couchbase. Kept so a frame re-encodes as is.
    pub seqno: u32,
    /// What the receiving end becomes, and options.
    pub flags: OpenFlags,
    /// The connection name (the key). A new connection with a name in use
    /// replaces the old one.
    pub name: Span,
}

impl Open {
    /// Append this request, re-encoded from `frame`, to `out`.
    pub fn encode(&self, out: &mut BytesMut, frame: &[u8]) -> Result<(), EncodeError> {
        encode_open(
            out,
            self.opaque,
            self.seqno,
            self.flags,
            self.name.of(frame),
        )
    }
}

/// Append a DCP_OPEN request to `out`.
pub fn encode_open(
    out: &mut BytesMut,
    opaque: u32,
    seqno: u32,
    flags: OpenFlags,
    name: &[u8],
) -> Result<(), EncodeError> {
    let mut extras = [0u8; OPEN_EXTRAS_LEN];
    extras[..4].copy_from_slice(&seqno.to_be_bytes());
    extras[4..].copy_from_slice(&flags.0.to_be_bytes());
    let header = request_header(Opcode::DcpOpen, 0, opaque);
    write_frame(out, header, &extras, name, &[])
}

pub(crate) const OPEN: Rule = Rule {
    extras: OPEN_EXTRAS_LEN,
    bad_extras: "DCP_OPEN needs 8 bytes of extras",
    key: Presence::Required,
    value: Presence::Forbidden,
    decode: decode_open,
};

fn decode_open(frame: &Frame<'_>) -> Result<DcpMessage, &'static str> {
    Ok(DcpMessage::Open(Open {
        opaque: frame.raw.opaque,
        seqno: frame.u32_at(0)?,
        flags: OpenFlags(frame.u32_at(4)?),
        name: frame.layout.key,
    }))
}

/// DCP_CONTROL (0x5e): no extras; the key names an option
/// (`enable_noop`, `set_noop_interval`, `connection_buffer_size`, …), the
/// value is its setting as text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Control {
    /// Echoed in the reply.
    pub opaque: u32,
    /// The option's name.
    pub key: Span,
    /// The option's value.
    pub value: Span,
}

impl Control {
    /// Append this request, re-encoded from `frame`, to `out`.
    pub fn encode(&self, out: &mut BytesMut, frame: &[u8]) -> Result<(), EncodeError> {
        encode_control(out, self.opaque, self.key.of(frame), self.value.of(frame))
    }
}

/// Append a DCP_CONTROL request to `out`.
pub fn encode_control(
    out: &mut BytesMut,
    opaque: u32,
    key: &[u8],
    value: &[u8],
) -> Result<(), EncodeError> {
    let header = request_header(Opcode::DcpControl, 0, opaque);
    write_frame(out, header, &[], key, value)
}

pub(crate) const CONTROL: Rule = Rule {
    extras: 0,
    bad_extras: "DCP_CONTROL takes no extras",
    key: Presence::Required,
    value: Presence::Required,
    decode: decode_control,
};

fn decode_control(frame: &Frame<'_>) -> Result<DcpMessage, &'static str> {
    Ok(DcpMessage::Control(Control {
        opaque: frame.raw.opaque,
        key: frame.layout.key,
        value: frame.layout.value,
    }))
}

/// Append a DCP_NOOP (0x5c) request to `out`: a bare header.
pub fn encode_noop(out: &mut BytesMut, opaque: u32) {
    let header = request_header(Opcode::DcpNoop, 0, opaque);
    // No parts, so no length can overflow.
    let _ = write_frame(out, header, &[], &[], &[]);
}

pub(crate) const NOOP: Rule = Rule {
    extras: 0,
    bad_extras: "DCP_NOOP takes no extras",
    key: Presence::Forbidden,
    value: Presence::Forbidden,
    decode: |frame| {
        Ok(DcpMessage::Noop {
            opaque: frame.raw.opaque,
        })
    },
};

/// Append a DCP_BUFFER_ACKNOWLEDGEMENT (0x5d) request to `out`. Extras:
///
/// ```text
///   Byte/     0       |       1       |       2       |       3       |
///     +---------------+---------------+---------------+---------------+
///    0| bytes processed (headers included)                            |
///     +---------------+---------------+---------------+---------------+
/// ```
pub fn encode_buffer_ack(out: &mut BytesMut, opaque: u32, bytes: u32) {
    let header = request_header(Opcode::DcpBufferAck, 0, opaque);
    // Four bytes of extras cannot overflow any length field.
    let _ = write_frame(out, header, &bytes.to_be_bytes(), &[], &[]);
}

pub(crate) const BUFFER_ACK: Rule = Rule {
    extras: BUFFER_ACK_EXTRAS_LEN,
    bad_extras: "DCP_BUFFER_ACKNOWLEDGEMENT needs 4 bytes of extras",
    key: Presence::Forbidden,
    value: Presence::Forbidden,
    decode: |frame| {
        Ok(DcpMessage::BufferAck {
            opaque: frame.raw.opaque,
            bytes: frame.u32_at(0)?,
        })
    },
};

/// Append an empty reply to a DCP request: the OK that answers OPEN,
/// CONTROL, NOOP or an ACK-flagged snapshot marker, or an error status
/// with no text. Parses back as [`DcpMessage::Reply`].
pub fn encode_dcp_reply(out: &mut BytesMut, opcode: Opcode, status: Status, opaque: u32) {
    let header = RawHeader {
        magic: Magic::Response as u8,
        opcode: opcode.to_u8(),
        key_len: 0,
        extras_len: 0,
        data_type: 0,
        specific: status.0,
        body_len: 0,
        opaque,
        cas: 0,
    };
    // No parts, so no length can overflow.
    let _ = write_frame(out, header, &[], &[], &[]);
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_fixture, assert_rejected};
    use super::*;

    /// kv_engine's open-connection.md example: a consumer connection named
    /// "bucketstream vb[100-105]", opaque 1.
    const OPEN_CONSUMER: &[u8] = &[
        0x80, 0x50, 0x00, 0x18, // magic, opcode, key length 24
        0x08, 0x00, 0x00, 0x00, // extras 8, data type, vbucket 0
        0x00, 0x00, 0x00, 0x20, // body 32
        0x00, 0x00, 0x00, 0x01, // opaque
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // CAS
        0x00, 0x00, 0x00, 0x00, // seqno (reserved)
        0x00, 0x00, 0x00, 0x00, // flags: consumer
        b'b', b'u', b'c', b'k', b'e', b't', b's', b't', b'r', b'e', b'a', b'm', b' ', b'v', b'b',
        b'[', b'1', b'0', b'0', b'-', b'1', b'0', b'5', b']',
    ];

    /// DCP_OPEN asking the receiver to produce, with XATTRs: name "r",
    /// opaque 0x0a0b0c0d.
    const OPEN_PRODUCER: &[u8] = &[
        0x80, 0x50, 0x00, 0x01, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x09, 0x0a, 0x0b, 0x0c,
        0x0d, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // header
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, // seqno 0, flags 0x05
        b'r',
    ];

    /// DCP_CONTROL enable_noop=true, opaque 1.
    const CONTROL_ENABLE_NOOP: &[u8] = &[
        0x80, 0x5e, 0x00, 0x0b, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0f, 0x00, 0x00, 0x00,
        0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // header: key 11, body 15
        b'e', b'n', b'a', b'b', b'l', b'e', b'_', b'n', b'o', b'o', b'p', b't', b'r', b'u', b'e',
    ];

    /// no-op.md: DCP_NOOP, opaque 5.
    const NOOP_5: &[u8] = &[
        0x80, 0x5c, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];

    /// buffer-ack.md: 4096 bytes acknowledged, opaque 5.
    const BUFFER_ACK_4096: &[u8] = &[
        0x80, 0x5d, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00,
        0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // header
        0x00, 0x00, 0x10, 0x00, // bytes
    ];

    /// no-op.md: the consumer's OK reply to NOOP 5.
    const NOOP_REPLY: &[u8] = &[
        0x81, 0x5c, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];

    #[test]
    fn open_byte_exact() {
        let msg = assert_fixture(OPEN_CONSUMER);
        let DcpMessage::Open(open) = msg else {
            panic!("{msg:?}");
        };
        assert_eq!((open.opaque, open.seqno, open.flags), (1, 0, OpenFlags(0)));
        assert_eq!(open.name.of(OPEN_CONSUMER), b"bucketstream vb[100-105]");
        let mut out = BytesMut::new();
        encode_open(
            &mut out,
            1,
            0,
            OpenFlags::default(),
            b"bucketstream vb[100-105]",
        )
        .unwrap();
        assert_eq!(&out[..], OPEN_CONSUMER);

        let msg = assert_fixture(OPEN_PRODUCER);
        let DcpMessage::Open(open) = msg else {
            panic!("{msg:?}");
        };
        assert_eq!(open.flags, OpenFlags::PRODUCER | OpenFlags::INCLUDE_XATTRS);
        let mut out = BytesMut::new();
        encode_open(&mut out, 0x0a0b_0c0d, 0, open.flags, b"r").unwrap();
        assert_eq!(&out[..], OPEN_PRODUCER);
    }

    #[test]
    fn open_rejects() {
        let mut no_name = OPEN_CONSUMER[..32].to_vec();
        no_name[2..4].copy_from_slice(&[0, 0]);
        no_name[8..12].copy_from_slice(&8u32.to_be_bytes());
        assert_rejected(&no_name, "key required");
        let mut short = OPEN_PRODUCER.to_vec();
        short[4] = 4;
        assert_rejected(&short, "DCP_OPEN needs 8 bytes of extras");
        let mut with_value = OPEN_PRODUCER.to_vec();
        with_value.push(b'{');
        with_value[11] += 1;
        assert_rejected(&with_value, "value not allowed");
    }

    #[test]
    fn control_byte_exact() {
        let msg = assert_fixture(CONTROL_ENABLE_NOOP);
        let DcpMessage::Control(control) = msg else {
            panic!("{msg:?}");
        };
        assert_eq!(control.opaque, 1);
        assert_eq!(control.key.of(CONTROL_ENABLE_NOOP), b"enable_noop");
        assert_eq!(control.value.of(CONTROL_ENABLE_NOOP), b"true");
        let mut out = BytesMut::new();
        encode_control(&mut out, 1, b"enable_noop", b"true").unwrap();
        assert_eq!(&out[..], CONTROL_ENABLE_NOOP);

        let mut no_value = CONTROL_ENABLE_NOOP[..35].to_vec();
        no_value[11] = 11;
        assert_rejected(&no_value, "value required");
        let mut extras = CONTROL_ENABLE_NOOP.to_vec();
        extras[4] = 4;
        assert_rejected(&extras, "DCP_CONTROL takes no extras");
    }

    #[test]
    fn noop_and_its_reply_byte_exact() {
        assert_eq!(assert_fixture(NOOP_5), DcpMessage::Noop { opaque: 5 });
        let mut out = BytesMut::new();
        encode_noop(&mut out, 5);
        assert_eq!(&out[..], NOOP_5);

        let msg = assert_fixture(NOOP_REPLY);
        let DcpMessage::Reply(reply) = msg else {
            panic!("{msg:?}");
        };
        assert_eq!(reply.header.status, Status::OK);
        let mut out = BytesMut::new();
        encode_dcp_reply(&mut out, Opcode::DcpNoop, Status::OK, 5);
        assert_eq!(&out[..], NOOP_REPLY);

        let mut keyed = NOOP_5.to_vec();
        keyed.push(b'k');
        keyed[3] = 1;
        keyed[11] = 1;
        assert_rejected(&keyed, "key not allowed");
    }

    #[test]
    fn buffer_ack_byte_exact() {
        assert_eq!(
            assert_fixture(BUFFER_ACK_4096),
            DcpMessage::BufferAck {
                opaque: 5,
                bytes: 4096
            }
        );
        let mut out = BytesMut::new();
        encode_buffer_ack(&mut out, 5, 4096);
        assert_eq!(&out[..], BUFFER_ACK_4096);

        let mut none = NOOP_5.to_vec();
        none[1] = 0x5d;
        assert_rejected(&none, "DCP_BUFFER_ACKNOWLEDGEMENT needs 4 bytes of extras");
    }
}
