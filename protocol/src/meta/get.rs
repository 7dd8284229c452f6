//! `mg <key> <flags>*` — meta get. One key per request; the flags choose what
//! comes back (value, CAS, TTL…) and what changes (TTL, vivify, recache). The
//! checks run in memcached 1.6.18's order so the first error reported is the
//! one memcached reports.

use bytes::{BufMut, BytesMut};

use super::flags::{self, Flag, MetaFlags};
use super::{check_key, Request};
use crate::error::{ErrorKind, ParseError};
use crate::limits::Limits;
use crate::span::Span;

/// A parsed `mg`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetaGet {
    /// The key as sent (still base64 when `base64` is set).
    pub key: Span,
    /// `b`: the key is base64; decode it with [`super::base64::decode_into`].
    pub base64: bool,
    /// The other flags, in request order.
    pub flags: MetaFlags,
}

impl MetaGet {
    /// `q`: a miss (`EN`) is not answered.
    pub fn quiet(&self) -> bool {
        self.flags.has(Flag::Quiet)
    }

    /// Append `mg <key> [b] <flags>\r\n`, with spans resolved in `frame`.
    pub fn encode(&self, out: &mut BytesMut, frame: &[u8]) {
        out.put_slice(b"mg ");
        out.put_slice(self.key.of(frame));
        if self.base64 {
            out.put_slice(b" b");
        }
        self.flags.encode(out, frame);
        out.put_slice(b"\r\n");
    }
}

/// Parse an `mg` line.
pub(crate) fn parse(req: &Request<'_>, limits: &Limits) -> Result<MetaGet, ParseError> {
    let skip = |reason| ParseError::skip(ErrorKind::BadFormat, reason, req.line.consumed);
    let key = check_key(req, limits)?;
    if req.tokens.len() > super::token::MAX_META_TOKENS {
        return Err(skip("options flags are too long"));
    }
    let parsed = flags::parse(req.buf, key, req.tokens.from(2)).map_err(skip)?;
    if flags::opaque_too_long(&parsed.flags) {
        return Err(skip("opaque token too long"));
    }
    Ok(MetaGet {
        key,
        base64: parsed.base64,
        flags: parsed.flags,
    })
}

#[cfg(test)]
mod tests {
    use crate::meta::{parse_meta, MetaCommand};
    use crate::{Exptime, Limits, Recovery};

    fn get(buf: &[u8]) -> super::MetaGet {
        match parse_meta(buf, &Limits::default()) {
            Ok(Some((MetaCommand::Get(g), n))) => {
                assert_eq!(n, buf.len());
                g
            }
            other => panic!("{:?}", other),
        }
    }

    fn err(buf: &[u8]) -> (&'static str, Recovery) {
        let e = parse_meta(buf, &Limits::default()).unwrap_err();
        (e.reason, e.recovery)
    }

    #[test]
    fn plain_get() {
        let buf = b"mg foo v t c f\r\n";
        let g = get(buf);
        assert_eq!(g.key.of(buf), b"foo");
        assert!(!g.base64 && !g.quiet());
        assert_eq!(g.flags.len(), 4);
    }

    #[test]
    fn quiet_opaque_and_ttl() {
        let buf = b"mg foo q O123 T30 N0 R-5 k\n";
        let g = get(buf);
        assert!(g.quiet());
        assert_eq!(g.flags.opaque().unwrap().of(buf), b"123");
        assert_eq!(g.flags.ttl(), Some(Exptime(30)));
        assert_eq!(g.flags.vivify_ttl(), Some(Exptime(0)));
        assert_eq!(g.flags.recache_ttl(), Some(Exptime(-5)));
    }

    #[test]
    fn base64_key_stays_encoded() {
        let buf = b"mg Zm9v b k v\r\n";
        let g = get(buf);
        assert!(g.base64);
        assert_eq!(g.key.of(buf), b"Zm9v");
        let mut key = [0u8; crate::meta::base64::MAX_DECODED_KEY_LEN];
        let n = crate::meta::base64::decode_into(g.key.of(buf), &mut key).unwrap();
        assert_eq!(&key[..n], b"foo");
    }

    #[test]
    fn no_flags_and_trailing_spaces() {
        assert!(get(b"mg foo\r\n").flags.is_empty());
        assert_eq!(get(b"mg  foo   v  \r\n").flags.len(), 1);
        // A stray CR before CRLF lands in the last flag, which memcached
        // reads by its first byte only.
        assert_eq!(get(b"mg foo v\r\r\n").flags.len(), 1);
    }

    #[test]
    fn errors_in_memcached_order() {
        let long = [b'k'; 251];
        let mut line = b"mg ".to_vec();
        line.extend_from_slice(&long);
        line.extend_from_slice(b" Y\r\n");
        assert_eq!(
            err(&line),
            ("bad command line format", Recovery::Skip(line.len()))
        );
        let many = b"mg foo b c f h k l q s t v u O1 N1 R1 T1 P1 L1 I\r\n";
        assert_eq!(err(many).0, "options flags are too long");
        let seventeen = b"mg foo c f h k l q s t v u O1 N1 R1 T1 P1 L1 I\r\n";
        assert_eq!(get(seventeen).flags.len(), 17);
        let mut opaque = b"mg foo O".to_vec();
        opaque.extend_from_slice(&[b'a'; 32]);
        opaque.extend_from_slice(b"\r\n");
        assert_eq!(err(&opaque).0, "opaque token too long");
        opaque.remove(8);
        assert_eq!(get(&opaque).flags.opaque().unwrap().len(), 31);
        // A bad number is reported before an over-long opaque.
        assert_eq!(
            err(b"mg foo O123456789012345678901234567890123 Tx\r\n").0,
            "bad token in command line format"
        );
        assert_eq!(err(b"mg foo Y\r\n"), ("invalid flag", Recovery::Skip(10)));
    }
}
