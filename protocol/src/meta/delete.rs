//! `md <key> <flags>*` — meta delete: remove an item, or with `I` mark it
//! stale (optionally with a new TTL from `T`), optionally only if `C` matches.
//! memcached 1.6.18 answers every flag problem on `md` with one catch-all,
//! `invalid or duplicate flag`, which this parser reproduces.

use bytes::{BufMut, BytesMut};

use super::flags::{self, Flag, MetaFlags};
use super::{check_key, Request};
use crate::error::{ErrorKind, ParseError};
use crate::limits::Limits;
use crate::span::Span;

/// A parsed `md`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetaDelete {
    /// The key as sent (still base64 when `base64` is set).
    pub key: Span,
    /// `b`: the key is base64.
    pub base64: bool,
    /// The other flags, in request order.
    pub flags: MetaFlags,
}

impl MetaDelete {
    /// `q`: success (`HD`) is not answered.
    pub fn quiet(&self) -> bool {
        self.flags.has(Flag::Quiet)
    }

    /// Append `md <key> [b] <flags>\r\n`.
    pub fn encode(&self, out: &mut BytesMut, frame: &[u8]) {
        out.put_slice(b"md ");
        out.put_slice(self.key.of(frame));
        if self.base64 {
            out.put_slice(b" b");
        }
        self.flags.encode(out, frame);
        out.put_slice(b"\r\n");
    }
}

/// Parse an `md` line.
pub(crate) fn parse(req: &Request<'_>, limits: &Limits) -> Result<MetaDelete, ParseError> {
    let skip = |reason| ParseError::skip(ErrorKind::BadFormat, reason, req.line.consumed);
    let key = check_key(req, limits)?;
    if req.tokens.len() > super::token::MAX_META_TOKENS {
        return Err(skip("options flags too long"));
    }
    let parsed = flags::parse(req.buf, key, req.tokens.from(2))
        .map_err(|_| skip("invalid or duplicate flag"))?;
    if flags::opaque_too_long(&parsed.flags) {
        return Err(skip("opaque token too long"));
    }
    Ok(MetaDelete {
        key,
        base64: parsed.base64,
        flags: parsed.flags,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::{parse_meta, MetaCommand};
    use crate::{Exptime, Recovery};

    fn delete(buf: &[u8]) -> MetaDelete {
        match parse_meta(buf, &Limits::default()) {
            Ok(Some((MetaCommand::Delete(d), n))) => {
                assert_eq!(n, buf.len());
                d
            }
            other => panic!("{:?}", other),
        }
    }

    #[test]
    fn delete_variants() {
        let buf = b"md foo q I T30 C5 O1 k\r\n";
        let d = delete(buf);
        assert!(d.quiet());
        assert_eq!(d.key.of(buf), b"foo");
        assert_eq!(d.flags.ttl(), Some(Exptime(30)));
        assert_eq!(d.flags.compare_cas(), Some(5));
        assert!(d.flags.has(Flag::Invalidate));
        // memcached accepts (and ignores) flags md has no use for.
        assert_eq!(delete(b"md foo v s t\r\n").flags.len(), 3);
        assert!(delete(b"md Zm9v b\n").base64);
    }

    #[test]
    fn every_flag_error_has_one_message() {
        for line in [
            &b"md foo Tx\r\n"[..],
            b"md foo Z\r\n",
            b"md foo \xff\r\n",
            b"md foo q q\r\n",
            b"md foo b\r\n",
        ] {
            let e = parse_meta(line, &Limits::default()).unwrap_err();
            assert_eq!(e.reason, "invalid or duplicate flag");
            assert_eq!(e.recovery, Recovery::Skip(line.len()));
        }
        let many = b"md foo c f h k l q s t v u O1 N1 R1 T1 P1 L1 I C1\r\n";
        let e = parse_meta(many, &Limits::default()).unwrap_err();
        assert_eq!(e.reason, "options flags too long");
        assert_eq!(
            delete(b"md foo c f h k l q s t v u O1 N1 R1 T1 P1 L1 I\r\n")
                .flags
                .len(),
            17
        );
        let e = parse_meta(b"md\r\n", &Limits::default()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::UnknownCommand);
    }
}
