//! `mn` (meta no-op) and `me <key> [b]` (meta debug). `mn` takes no
//! arguments and memcached ignores any that are sent; clients pipeline it
//! after quiet commands to learn that everything before it has been answered.
//! `me` looks only at its third token, and only for exactly `b`.

use bytes::{BufMut, BytesMut};

use super::{base64, Request, BAD_FORMAT};
use crate::error::{ErrorKind, ParseError};
use crate::limits::Limits;
use crate::span::Span;

/// A parsed `me`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetaDebug {
    /// The key as sent (still base64 when `base64` is set).
    pub key: Span,
    /// The key is base64 (the third token is exactly `b`).
    pub base64: bool,
}

impl MetaDebug {
    /// Append `me <key>[ b]\r\n`.
    pub fn encode(&self, out: &mut BytesMut, frame: &[u8]) {
        out.put_slice(b"me ");
        out.put_slice(self.key.of(frame));
        if self.base64 {
            out.put_slice(b" b");
        }
        out.put_slice(b"\r\n");
    }
}

/// Append `mn\r\n`.
pub fn encode_noop(out: &mut BytesMut) {
    out.put_slice(b"mn\r\n");
}

/// Parse an `me` line. Unlike the other verbs, a missing key is a
/// `CLIENT_ERROR`, not `ERROR`, in memcached 1.6.18.
pub(crate) fn parse_debug(req: &Request<'_>, limits: &Limits) -> Result<MetaDebug, ParseError> {
    let bad = || ParseError::skip(ErrorKind::BadFormat, BAD_FORMAT, req.line.consumed);
    let key = match req.tokens.get(1) {
        Some(key) if key.len() <= limits.max_key_len => key,
        _ => return Err(bad()),
    };
    let base64 = req
        .tokens
        .get(2)
        .is_some_and(|t| super::token::bytes(req.buf, t) == b"b");
    if base64 && base64::decoded_len(super::token::bytes(req.buf, key)).is_none() {
        return Err(bad());
    }
    Ok(MetaDebug { key, base64 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::{parse_meta, MetaCommand};

    fn parse(buf: &[u8]) -> Result<Option<(MetaCommand, usize)>, ParseError> {
        parse_meta(buf, &Limits::default())
    }

    #[test]
    fn noop_ignores_arguments() {
        assert_eq!(parse(b"mn\r\n"), Ok(Some((MetaCommand::Noop, 4))));
        assert_eq!(parse(b"mn foo bar\n"), Ok(Some((MetaCommand::Noop, 11))));
        assert_eq!(parse(b"mn\0x\r\n"), Ok(Some((MetaCommand::Noop, 6))));
        let mut out = BytesMut::new();
        encode_noop(&mut out);
        assert_eq!(&out[..], b"mn\r\n");
    }

    #[test]
    fn debug() {
        let buf = b"me Zm9v b\r\n";
        match parse(buf) {
            Ok(Some((MetaCommand::Debug(d), 11))) => {
                assert!(d.base64);
                assert_eq!(d.key.of(buf), b"Zm9v");
            }
            other => panic!("{:?}", other),
        }
        for (line, b64) in [
            (&b"me foo zz\r\n"[..], false),
            (b"me Zm9v bb\r\n", false),
            (b"me Zm9v x b\r\n", false),
        ] {
            match parse(line) {
                Ok(Some((MetaCommand::Debug(d), _))) => assert_eq!(d.base64, b64),
                other => panic!("{:?}", other),
            }
        }
        let mut long = b"me ".to_vec();
        long.extend_from_slice(&[b'k'; 251]);
        long.extend_from_slice(b"\r\n");
        for line in [&b"me\r\n"[..], b"me Zm9 b\r\n", &long] {
            let e = parse(line).unwrap_err();
            assert_eq!((e.kind, e.reason), (ErrorKind::BadFormat, BAD_FORMAT));
        }
    }
}
