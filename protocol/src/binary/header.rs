//! The 24-byte header every binary frame starts with, and the checks that
//! can be made from it alone. Requests and responses share the layout and
//! differ in the magic byte and in bytes 6–7 (vbucket id in a request,
//! status in a response); all fields are big-endian:
//!
//! ```text
//!   Byte/     0       |       1       |       2       |       3       |
//!      /              |               |               |               |
//!     |0 1 2 3 4 5 6 7|0 1 2 3 4 5 6 7|0 1 2 3 4 5 6 7|0 1 2 3 4 5 6 7|
//!     +---------------+---------------+---------------+---------------+
//!    0| magic         | opcode        | key length                    |
//!     +---------------+---------------+---------------+---------------+
//!    4| extras length | data type     | vbucket (req) / status (resp) |
//!     +---------------+---------------+---------------+---------------+
//!    8| total body length (extras + key + value)                      |
//!     +---------------+---------------+---------------+---------------+
//!   12| opaque (echoed back verbatim)                                 |
//!     +---------------+---------------+---------------+---------------+
//!   16| CAS                                                           |
//!     |                                                               |
//!     +---------------+---------------+---------------+---------------+
//!   24| body: extras, then key, then value                            |
//! ```
//!
//! `check_frame` rejects a frame as soon as its header is in hand — bad
//! magic after one byte, an oversized or self-contradictory length after 24
//! — so a hostile length field never makes the connection wait for, or
//! allocate, the body it announces.

use crate::binary::opcode::Opcode;
use crate::binary::status::Status;
use crate::{ErrorKind, Limits, ParseError, Span};

/// Length of the fixed header, in bytes.
pub const HEADER_LEN: usize = 24;

/// Magic byte of a request (client → server).
pub const REQUEST_MAGIC: u8 = 0x80;
/// Magic byte of a response (server → client).
pub const RESPONSE_MAGIC: u8 = 0x81;

/// Data type 0x00: raw bytes, the only type memcached defines.
pub const DATA_TYPE_RAW: u8 = 0x00;

/// The first byte of a frame: which direction it travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Magic {
    /// 0x80: a request.
    Request = REQUEST_MAGIC,
    /// 0x81: a response.
    Response = RESPONSE_MAGIC,
}

impl Magic {
    /// The magic for a wire byte, or `None` for anything else.
    pub const fn from_u8(byte: u8) -> Option<Magic> {
        match byte {
            REQUEST_MAGIC => Some(Magic::Request),
            RESPONSE_MAGIC => Some(Magic::Response),
            _ => None,
        }
    }
}

// === impl RawHeader ===

/// The header fields exactly as on the wire, before the request/response
/// reading of bytes 6–7 is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RawHeader {
    pub(crate) magic: u8,
    pub(crate) opcode: u8,
    pub(crate) key_len: u16,
    pub(crate) extras_len: u8,
    pub(crate) data_type: u8,
    /// vbucket id in a request, status in a response.
    pub(crate) specific: u16,
    pub(crate) body_len: u32,
    pub(crate) opaque: u32,
    pub(crate) cas: u64,
}

impl RawHeader {
    /// Decode a header; every field is a fixed offset, so this cannot fail.
    pub(crate) fn decode(b: &[u8; HEADER_LEN]) -> RawHeader {
        RawHeader {
            magic: b[0],
            opcode: b[1],
            key_len: u16::from_be_bytes([b[2], b[3]]),
            extras_len: b[4],
            data_type: b[5],
            specific: u16::from_be_bytes([b[6], b[7]]),
            body_len: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
            opaque: u32::from_be_bytes([b[12], b[13], b[14], b[15]]),
            cas: u64::from_be_bytes([b[16], b[17], b[18], b[19], b[20], b[21], b[22], b[23]]),
        }
    }

    /// The 24 wire bytes.
    pub(crate) fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0] = self.magic;
        b[1] = self.opcode;
        b[2..4].copy_from_slice(&self.key_len.to_be_bytes());
        b[4] = self.extras_len;
        b[5] = self.data_type;
        b[6..8].copy_from_slice(&self.specific.to_be_bytes());
        b[8..12].copy_from_slice(&self.body_len.to_be_bytes());
        b[12..16].copy_from_slice(&self.opaque.to_be_bytes());
        b[16..24].copy_from_slice(&self.cas.to_be_bytes());
        b
    }
}

// === impl Layout ===

/// Where the parts of a frame lie, as offsets from the frame's first byte.
/// Only built by [`check_frame`], so `extras + key <= body` always holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    pub(crate) extras: Span,
    pub(crate) key: Span,
    pub(crate) value: Span,
    /// Header plus body.
    pub(crate) frame_len: usize,
}

/// Check everything the header alone can tell: the magic (from the first
/// byte), the body length against `limits`, the lengths against each other,
/// and the key length. Returns `Ok(None)` until the header is complete.
///
/// Bad magic or contradictory lengths mean the stream cannot be trusted, so
/// they close; an oversized body closes too, because skipping it would mean
/// reading (if not buffering) up to 4 GiB from a client that is already
/// misbehaving. A long key is a well-framed request, so it is skipped.
pub(crate) fn check_frame(
    buf: &[u8],
    magic: Magic,
    limits: &Limits,
) -> Result<Option<(RawHeader, Layout)>, ParseError> {
    match buf.first() {
        None => return Ok(None),
        Some(&byte) if byte != magic as u8 => {
            return Err(ParseError::close(ErrorKind::BadMagic, "bad magic byte"));
        }
        Some(_) => {}
    }
    let Some(bytes) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let raw = RawHeader::decode(bytes);

    let too_large = || ParseError::close(ErrorKind::TooLarge, "body too large");
    // A `u32` that does not fit `usize` (16-bit targets) is too large anyway.
    let body_len = usize::try_from(raw.body_len).map_err(|_| too_large())?;
    if body_len > limits.max_binary_body() {
        return Err(too_large());
    }
    let frame_len = HEADER_LEN.checked_add(body_len).ok_or_else(too_large)?;

    let extras_end = HEADER_LEN + usize::from(raw.extras_len);
    let key_end = extras_end + usize::from(raw.key_len);
    if key_end > frame_len {
        return Err(ParseError::close(
            ErrorKind::BadFormat,
            "extras and key longer than body",
        ));
    }
    if usize::from(raw.key_len) > limits.max_key_len {
        return Err(ParseError::skip(
            ErrorKind::BadFormat,
            "key too long",
            frame_len,
        ));
    }
    let layout = Layout {
        extras: Span::new(HEADER_LEN, extras_end),
        key: Span::new(extras_end, key_end),
        value: Span::new(key_end, frame_len),
        frame_len,
    };
    Ok(Some((raw, layout)))
}

// === impl RequestHeader ===

/// A parsed request header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestHeader {
    /// What the request asks for.
    pub opcode: Opcode,
    /// Key length in bytes.
    pub key_len: u16,
    /// Extras length in bytes.
    pub extras_len: u8,
    /// Data type; 0x00 (raw) from every memcached client.
    pub data_type: u8,
    /// The vbucket the key hashes to (bytes 6–7; "reserved" in plain
    /// memcached, where clients send 0).
    pub vbucket: u16,
    /// Extras + key + value length in bytes.
    pub body_len: u32,
    /// Opaque token, echoed in the reply; the proxy matches replies by it.
    pub opaque: u32,
    /// CAS to compare against, or 0.
    pub cas: u64,
}

impl RequestHeader {
    pub(crate) fn from_raw(raw: &RawHeader) -> RequestHeader {
        RequestHeader {
            opcode: Opcode::from_u8(raw.opcode),
            key_len: raw.key_len,
            extras_len: raw.extras_len,
            data_type: raw.data_type,
            vbucket: raw.specific,
            body_len: raw.body_len,
            opaque: raw.opaque,
            cas: raw.cas,
        }
    }

    /// The 24 wire bytes of this header, lengths as they stand. For
    /// forwarding a frame whose body follows separately; to build a whole
    /// frame use [`encode_request`](crate::binary::encode_request), which
    /// computes the lengths.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        RawHeader {
            magic: REQUEST_MAGIC,
            opcode: self.opcode.to_u8(),
            key_len: self.key_len,
            extras_len: self.extras_len,
            data_type: self.data_type,
            specific: self.vbucket,
            body_len: self.body_len,
            opaque: self.opaque,
            cas: self.cas,
        }
        .encode()
    }

    /// Header plus body, in bytes.
    pub fn frame_len(&self) -> usize {
        frame_len(self.body_len)
    }
}

// === impl ResponseHeader ===

/// A parsed response header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ResponseHeader {
    /// The opcode of the request this answers.
    pub opcode: Opcode,
    /// Key length in bytes.
    pub key_len: u16,
    /// Extras length in bytes.
    pub extras_len: u8,
    /// Data type; 0x00 (raw).
    pub data_type: u8,
    /// Outcome of the request (bytes 6–7).
    pub status: Status,
    /// Extras + key + value length in bytes.
    pub body_len: u32,
    /// The request's opaque, echoed.
    pub opaque: u32,
    /// The item's CAS after the operation, or 0.
    pub cas: u64,
}

impl ResponseHeader {
    pub(crate) fn from_raw(raw: &RawHeader) -> ResponseHeader {
        ResponseHeader {
            opcode: Opcode::from_u8(raw.opcode),
            key_len: raw.key_len,
            extras_len: raw.extras_len,
            data_type: raw.data_type,
            status: Status(raw.specific),
            body_len: raw.body_len,
            opaque: raw.opaque,
            cas: raw.cas,
        }
    }

    /// The 24 wire bytes of this header, lengths as they stand (see
    /// [`RequestHeader::encode`]).
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        RawHeader {
            magic: RESPONSE_MAGIC,
            opcode: self.opcode.to_u8(),
            key_len: self.key_len,
            extras_len: self.extras_len,
            data_type: self.data_type,
            specific: self.status.0,
            body_len: self.body_len,
            opaque: self.opaque,
            cas: self.cas,
        }
        .encode()
    }

    /// Header plus body, in bytes.
    pub fn frame_len(&self) -> usize {
        frame_len(self.body_len)
    }
}

/// Header plus body, saturating where `usize` is narrower than 32 bits (a
/// parsed header never gets there: [`check_frame`] refuses it).
fn frame_len(body_len: u32) -> usize {
    usize::try_from(body_len)
        .unwrap_or(usize::MAX)
        .saturating_add(HEADER_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GET for "Hello" from the memcached binary protocol spec's example.
    const SPEC_GET: [u8; 29] = [
        0x80, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, b'H', b'e', b'l', b'l', b'o',
    ];

    fn header(bytes: &[u8]) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(&bytes[..HEADER_LEN]);
        h
    }

    #[test]
    fn raw_round_trip_is_big_endian() {
        let raw = RawHeader {
            magic: REQUEST_MAGIC,
            opcode: 0x01,
            key_len: 0x0102,
            extras_len: 8,
            data_type: 0,
            specific: 0x0304,
            body_len: 0x0506_0708,
            opaque: 0x090a_0b0c,
            cas: 0x0d0e_0f10_1112_1314,
        };
        let wire = raw.encode();
        assert_eq!(
            wire,
            [
                0x80, 0x01, 0x01, 0x02, 0x08, 0x00, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a,
                0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10, 0x11, 0x12, 0x13, 0x14
            ]
        );
        assert_eq!(RawHeader::decode(&wire), raw);
    }

    #[test]
    fn spec_example_lays_out() {
        let (raw, layout) = check_frame(&SPEC_GET, Magic::Request, &Limits::default())
            .unwrap()
            .unwrap();
        assert_eq!(raw.key_len, 5);
        assert_eq!(layout.extras, Span::new(24, 24));
        assert_eq!(layout.key.of(&SPEC_GET), b"Hello");
        assert_eq!(layout.value, Span::new(29, 29));
        assert_eq!(layout.frame_len, 29);
        let req = RequestHeader::from_raw(&raw);
        assert_eq!(req.opcode, Opcode::Get);
        assert_eq!(req.encode(), header(&SPEC_GET));
        assert_eq!(req.frame_len(), 29);
    }

    #[test]
    fn header_prefixes_need_more_and_magic_fails_at_once() {
        for n in 0..HEADER_LEN {
            assert_eq!(
                check_frame(&SPEC_GET[..n], Magic::Request, &Limits::default()),
                Ok(None)
            );
        }
        let err = check_frame(&[0x81], Magic::Request, &Limits::default()).unwrap_err();
        assert_eq!(err.kind, ErrorKind::BadMagic);
        assert!(err.is_fatal());
        let err = check_frame(&SPEC_GET[..1], Magic::Response, &Limits::default()).unwrap_err();
        assert_eq!(err.kind, ErrorKind::BadMagic);
        assert_eq!(Magic::from_u8(0x81), Some(Magic::Response));
        assert_eq!(Magic::from_u8(b'g'), None);
    }

    #[test]
    fn lengths_are_checked_from_the_header_alone() {
        let limits = Limits::default();
        // Body of 4 GiB - 1: refused from the 24 header bytes.
        let mut h = header(&SPEC_GET);
        h[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        let err = check_frame(&h, Magic::Request, &limits).unwrap_err();
        assert_eq!(
            (err.kind, err.recovery),
            (ErrorKind::TooLarge, crate::Recovery::Close)
        );

        // Key of 5 in a body of 4.
        let mut h = header(&SPEC_GET);
        h[11] = 4;
        let err = check_frame(&h, Magic::Request, &limits).unwrap_err();
        assert_eq!(
            (err.kind, err.recovery),
            (ErrorKind::BadFormat, crate::Recovery::Close)
        );

        // Key longer than the limit: a well-framed request, skipped whole.
        let mut h = header(&SPEC_GET);
        h[2..4].copy_from_slice(&251u16.to_be_bytes());
        h[8..12].copy_from_slice(&300u32.to_be_bytes());
        let err = check_frame(&h, Magic::Request, &limits).unwrap_err();
        assert_eq!(
            (err.kind, err.recovery),
            (ErrorKind::BadFormat, crate::Recovery::Skip(324))
        );
    }

    #[test]
    fn response_header_carries_status() {
        let mut h = header(&SPEC_GET);
        h[0] = RESPONSE_MAGIC;
        h[7] = 0x07;
        let res = ResponseHeader::from_raw(&RawHeader::decode(&h));
        assert_eq!(res.status, Status::NOT_MY_VBUCKET);
        assert_eq!(res.encode(), h);
    }
}
