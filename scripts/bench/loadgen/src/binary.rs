//! The binary protocol: request encoders and a response parser.
//!
//! Every packet starts with the same 24-byte header (all fields big-endian):
//!
//! ```text
//!  byte 0        1        2        3
//!      +--------+--------+--------+--------+
//!    0 | magic  | opcode |    key length   |
//!      +--------+--------+--------+--------+
//!    4 | extlen | dtype  | vbucket / status|
//!      +--------+--------+--------+--------+
//!    8 |        total body length          |
//!      +--------+--------+--------+--------+
//!   12 |              opaque               |
//!      +--------+--------+--------+--------+
//!   16 |                cas                |
//!   20 |                                   |
//!      +--------+--------+--------+--------+
//!   24   extras, key, value (body length = extlen + key length + value)
//! ```
//!
//! A get of one key is `GETK` (the reply carries the key, so it is checked).
//! A multiget is `GETKQ` per key, whose opaque is the key's position, and a
//! closing `NOOP`: the server answers hits only, then the `NOOP`.

use std::ops::Range;

use crate::data::{push_key, push_value, FLAGS};
use crate::ParseError;

/// Header length.
pub const HEADER_LEN: usize = 24;
/// Magic of a request.
pub const MAGIC_REQUEST: u8 = 0x80;
/// Magic of a response.
pub const MAGIC_RESPONSE: u8 = 0x81;

/// Opcode `GET`.
pub const OP_GET: u8 = 0x00;
/// Opcode `SET`.
pub const OP_SET: u8 = 0x01;
/// Opcode `NOOP`.
pub const OP_NOOP: u8 = 0x0a;
/// Opcode `GETK`: get, with the key in the response.
pub const OP_GETK: u8 = 0x0c;
/// Opcode `GETKQ`: quiet `GETK`, no response on a miss.
pub const OP_GETKQ: u8 = 0x0d;
/// Opcode `SASL_AUTH`: the mechanism is the key, its first message the value.
pub const OP_SASL_AUTH: u8 = 0x21;

/// Status: no error.
pub const STATUS_OK: u16 = 0x0000;
/// Status: key not found.
pub const STATUS_KEY_NOT_FOUND: u16 = 0x0001;
/// Status: key exists.
pub const STATUS_KEY_EXISTS: u16 = 0x0002;
/// Status: item not stored.
pub const STATUS_NOT_STORED: u16 = 0x0005;
/// Status: authentication failed (the server says nothing of why).
pub const STATUS_AUTH_ERROR: u16 = 0x0020;
/// Status: SASL wants another step (SASL_STEP).
pub const STATUS_AUTH_CONTINUE: u16 = 0x0021;
/// Status: unknown command (a server without SASL).
pub const STATUS_UNKNOWN_COMMAND: u16 = 0x0081;
/// Status: not supported.
pub const STATUS_NOT_SUPPORTED: u16 = 0x0083;

/// Largest response body accepted (the generator never stores more than
/// 1 MB; anything far larger is a framing error).
pub const MAX_BODY: usize = 64 << 20;

/// One response. Ranges index the buffer given to [`parse_response`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The opcode being answered.
    pub opcode: u8,
    /// Status code (0 = success).
    pub status: u16,
    /// Copied from the request.
    pub opaque: u32,
    /// Compare-and-swap token.
    pub cas: u64,
    /// Extras (the flags, for a get hit).
    pub extras: Range<usize>,
    /// The key (`GETK`, `GETKQ`).
    pub key: Range<usize>,
    /// The value.
    pub value: Range<usize>,
}

impl Response {
    /// The flags of a get hit (4 bytes of extras), if present.
    pub fn flags(&self, buf: &[u8]) -> Option<u32> {
        let extras: [u8; 4] = buf.get(self.extras.clone())?.try_into().ok()?;
        Some(u32::from_be_bytes(extras))
    }
}

/// Starts a request: writes a header with zero lengths and returns where it
/// starts, for [`finish_request`] to fill in.
fn begin_request(out: &mut Vec<u8>, opcode: u8, opaque: u32) -> usize {
    let start = out.len();
    let mut header = [0u8; HEADER_LEN];
    header[0] = MAGIC_REQUEST;
    header[1] = opcode;
    header[12..16].copy_from_slice(&opaque.to_be_bytes());
    out.extend_from_slice(&header);
    start
}

/// Fills in the key, extras and body lengths of the request at `start`, whose
/// body is everything written after its header.
fn finish_request(out: &mut [u8], start: usize, extras_len: u8, key_len: usize) {
    let body_len = (out.len() - start - HEADER_LEN) as u32;
    // Keys are at most 250 bytes (checked by `Config::validate`); the one
    // other key, a SASL mechanism name, is 5.
    let key_len = key_len as u16;
    out[start + 2..start + 4].copy_from_slice(&key_len.to_be_bytes());
    out[start + 4] = extras_len;
    out[start + 8..start + 12].copy_from_slice(&body_len.to_be_bytes());
}

/// Appends a get of key `idx` with `opcode` (`OP_GETK` or `OP_GETKQ`).
pub fn encode_get(out: &mut Vec<u8>, opcode: u8, prefix: &[u8], idx: u64, opaque: u32) {
    let start = begin_request(out, opcode, opaque);
    let key_start = out.len();
    push_key(out, prefix, idx);
    let key_len = out.len() - key_start;
    finish_request(out, start, 0, key_len);
}

/// Appends a `NOOP`.
pub fn encode_noop(out: &mut Vec<u8>, opaque: u32) {
    let start = begin_request(out, OP_NOOP, opaque);
    finish_request(out, start, 0, 0);
}

/// Appends a `SET` of key `idx` with flags [`FLAGS`], no expiry, and the value for `idx`.
pub fn encode_set(out: &mut Vec<u8>, prefix: &[u8], idx: u64, template: &[u8], opaque: u32) {
    let start = begin_request(out, OP_SET, opaque);
    out.extend_from_slice(&FLAGS.to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes()); // exptime: never
    let key_start = out.len();
    push_key(out, prefix, idx);
    let key_len = out.len() - key_start;
    push_value(out, template, idx);
    finish_request(out, start, 8, key_len);
}

/// Appends a `SASL_AUTH` of `mechanism` (the key) with its first
/// `message` (the value), no extras.
pub fn encode_sasl_auth(out: &mut Vec<u8>, mechanism: &[u8], message: &[u8], opaque: u32) {
    let start = begin_request(out, OP_SASL_AUTH, opaque);
    out.extend_from_slice(mechanism);
    out.extend_from_slice(message);
    finish_request(out, start, 0, mechanism.len());
}

/// Parses one response at the start of `buf`: the response and the number
/// of bytes it used, or [`ParseError::Incomplete`], or a framing error.
pub fn parse_response(buf: &[u8]) -> Result<(Response, usize), ParseError> {
    if buf.first().is_some_and(|&magic| magic != MAGIC_RESPONSE) {
        return Err(ParseError::Malformed("bad response magic"));
    }
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Err(ParseError::Incomplete);
    };
    let be16 = |at: usize| u16::from_be_bytes([header[at], header[at + 1]]);
    let be32 = |at: usize| {
        u32::from_be_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let key_len = usize::from(be16(2));
    let extras_len = usize::from(header[4]);
    let status = be16(6);
    let body_len = be32(8) as usize;
    let opaque = be32(12);
    let cas = (u64::from(be32(16)) << 32) | u64::from(be32(20));
    if body_len > MAX_BODY {
        return Err(ParseError::Malformed("response body too large"));
    }
    if extras_len + key_len > body_len {
        return Err(ParseError::Malformed("extras and key longer than the body"));
    }
    let end = HEADER_LEN + body_len;
    if buf.len() < end {
        return Err(ParseError::Incomplete);
    }
    let key_start = HEADER_LEN + extras_len;
    let value_start = key_start + key_len;
    let response = Response {
        opcode: header[1],
        status,
        opaque,
        cas,
        extras: HEADER_LEN..key_start,
        key: key_start..value_start,
        value: value_start..end,
    };
    Ok((response, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response built by hand, field by field.
    fn response(
        opcode: u8,
        status: u16,
        opaque: u32,
        extras: &[u8],
        key: &[u8],
        value: &[u8],
    ) -> Vec<u8> {
        let mut out = vec![MAGIC_RESPONSE, opcode];
        out.extend_from_slice(&(key.len() as u16).to_be_bytes());
        out.push(extras.len() as u8);
        out.push(0);
        out.extend_from_slice(&status.to_be_bytes());
        let body = (extras.len() + key.len() + value.len()) as u32;
        out.extend_from_slice(&body.to_be_bytes());
        out.extend_from_slice(&opaque.to_be_bytes());
        out.extend_from_slice(&7u64.to_be_bytes());
        out.extend_from_slice(extras);
        out.extend_from_slice(key);
        out.extend_from_slice(value);
        out
    }

    #[test]
    fn encodes_getk_byte_exact() {
        let mut out = Vec::new();
        encode_get(&mut out, OP_GETK, b"k:", 12, 0x01020304);
        #[rustfmt::skip]
        let expected = [
            0x80, 0x0c, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x04, 0x01, 0x02, 0x03, 0x04,
            0, 0, 0, 0, 0, 0, 0, 0,
            b'k', b':', b'1', b'2',
        ];
        assert_eq!(out, expected);
    }

    #[test]
    fn encodes_set_and_noop() {
        let mut out = Vec::new();
        encode_set(&mut out, b"k", 5, b"abc", 9);
        assert_eq!(out.len(), HEADER_LEN + 8 + 2 + 3);
        assert_eq!(&out[..2], [MAGIC_REQUEST, OP_SET]);
        assert_eq!(&out[2..4], 2u16.to_be_bytes());
        assert_eq!(out[4], 8);
        assert_eq!(&out[8..12], 13u32.to_be_bytes());
        assert_eq!(&out[12..16], 9u32.to_be_bytes());
        assert_eq!(&out[24..28], FLAGS.to_be_bytes());
        assert_eq!(&out[28..32], [0, 0, 0, 0]);
        assert_eq!(&out[32..], b"k5abc");

        let mut out = Vec::new();
        encode_noop(&mut out, 3);
        assert_eq!(out.len(), HEADER_LEN);
        assert_eq!(out[1], OP_NOOP);
        assert_eq!(&out[8..12], [0, 0, 0, 0]);
    }

    #[test]
    fn parses_a_hit() {
        let buf = response(OP_GETK, 0, 42, &FLAGS.to_be_bytes(), b"key", b"value");
        let (r, used) = parse_response(&buf).unwrap();
        assert_eq!(used, buf.len());
        assert_eq!(r.opcode, OP_GETK);
        assert_eq!(r.status, STATUS_OK);
        assert_eq!(r.opaque, 42);
        assert_eq!(r.cas, 7);
        assert_eq!(r.flags(&buf), Some(FLAGS));
        assert_eq!(&buf[r.key.clone()], b"key");
        assert_eq!(&buf[r.value.clone()], b"value");
    }

    #[test]
    fn parses_a_miss_and_pipelined_responses() {
        let mut buf = response(OP_GETK, STATUS_KEY_NOT_FOUND, 1, &[], b"", b"Not found");
        buf.extend(response(OP_NOOP, 0, 2, &[], b"", b""));
        let (r, used) = parse_response(&buf).unwrap();
        assert_eq!(r.status, STATUS_KEY_NOT_FOUND);
        assert_eq!(r.flags(&buf), None);
        let (r, rest) = parse_response(&buf[used..]).unwrap();
        assert_eq!((r.opcode, r.opaque), (OP_NOOP, 2));
        assert_eq!(used + rest, buf.len());
    }

    #[test]
    fn every_prefix_is_incomplete() {
        let buf = response(OP_GETKQ, 0, 3, &FLAGS.to_be_bytes(), b"k:1", b"hello");
        for cut in 0..buf.len() {
            assert_eq!(
                parse_response(&buf[..cut]),
                Err(ParseError::Incomplete),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn malformed_responses() {
        let mut bad_magic = response(OP_NOOP, 0, 0, &[], b"", b"");
        bad_magic[0] = MAGIC_REQUEST;
        assert!(matches!(
            parse_response(&bad_magic),
            Err(ParseError::Malformed(_))
        ));
        assert!(matches!(
            parse_response(b"E"),
            Err(ParseError::Malformed(_))
        ));

        let mut short_body = response(OP_GETK, 0, 0, &[0; 4], b"key", b"");
        short_body[8..12].copy_from_slice(&5u32.to_be_bytes());
        assert!(matches!(
            parse_response(&short_body),
            Err(ParseError::Malformed(_))
        ));

        let mut huge = response(OP_GETK, 0, 0, &[], b"", b"");
        huge[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            parse_response(&huge),
            Err(ParseError::Malformed(_))
        ));
    }
}
