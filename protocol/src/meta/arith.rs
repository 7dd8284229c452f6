//! `ma <key> <flags>*` — meta arithmetic: increment or decrement a 64-bit
//! counter by `D` (default 1), optionally creating it with `N`/`J` on a miss.
//! Like `md`, memcached 1.6.18 reports every flag problem as `invalid or
//! duplicate flag`; a bad mode has its own message and is checked first.

use bytes::{BufMut, BytesMut};

use super::flags::{self, Flag, MetaFlags};
use super::{check_key, Request};
use crate::error::{ErrorKind, ParseError};
use crate::limits::Limits;
use crate::span::Span;

/// The direction of an `ma`, from its `M` flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ArithMode {
    /// `MI`, `M+` or no `M`: add, wrapping at 2^64 as memcached does.
    Incr,
    /// `MD` or `M-`: subtract, stopping at 0.
    Decr,
}

impl ArithMode {
    /// The mode for an `M` character (upper case only, as in memcached 1.6.18).
    pub fn from_byte(b: u8) -> Option<ArithMode> {
        match b {
            b'I' | b'+' => Some(ArithMode::Incr),
            b'D' | b'-' => Some(ArithMode::Decr),
            _ => None,
        }
    }

    /// The canonical `M` character for this mode.
    pub const fn byte(self) -> u8 {
        match self {
            ArithMode::Incr => b'I',
            ArithMode::Decr => b'D',
        }
    }
}

/// A parsed `ma`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetaArith {
    /// The key as sent (still base64 when `base64` is set).
    pub key: Span,
    /// `b`: the key is base64.
    pub base64: bool,
    /// The other flags, in request order.
    pub flags: MetaFlags,
}

impl MetaArith {
    /// `q`: success (`HD`) is not answered.
    pub fn quiet(&self) -> bool {
        self.flags.has(Flag::Quiet)
    }

    /// The direction; [`ArithMode::Incr`] when `M` is absent.
    pub fn mode(&self) -> ArithMode {
        self.flags
            .mode()
            .and_then(ArithMode::from_byte)
            .unwrap_or(ArithMode::Incr)
    }

    /// `D`, or memcached's default of 1.
    pub fn delta(&self) -> u64 {
        self.flags.delta().unwrap_or(1)
    }

    /// `J`, or memcached's default of 0.
    pub fn initial(&self) -> u64 {
        self.flags.initial().unwrap_or(0)
    }

    /// Append `ma <key> [b] <flags>\r\n`.
    pub fn encode(&self, out: &mut BytesMut, frame: &[u8]) {
        out.put_slice(b"ma ");
        out.put_slice(self.key.of(frame));
        if self.base64 {
            out.put_slice(b" b");
        }
        self.flags.encode(out, frame);
        out.put_slice(b"\r\n");
    }
}

/// Parse an `ma` line.
pub(crate) fn parse(req: &Request<'_>, limits: &Limits) -> Result<MetaArith, ParseError> {
    let skip = |reason| ParseError::skip(ErrorKind::BadFormat, reason, req.line.consumed);
    let key = check_key(req, limits)?;
    if req.tokens.len() > super::token::MAX_META_TOKENS {
        return Err(skip("options flags too long"));
    }
    let parsed = flags::parse(req.buf, key, req.tokens.from(2))
        .map_err(|_| skip("invalid or duplicate flag"))?;
    if parsed
        .flags
        .mode()
        .is_some_and(|m| ArithMode::from_byte(m).is_none())
    {
        return Err(skip("invalid mode for ma M token"));
    }
    if flags::opaque_too_long(&parsed.flags) {
        return Err(skip("opaque token too long"));
    }
    Ok(MetaArith {
        key,
        base64: parsed.base64,
        flags: parsed.flags,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::{parse_meta, MetaCommand};
    use crate::Exptime;

    fn arith(buf: &[u8]) -> MetaArith {
        match parse_meta(buf, &Limits::default()) {
            Ok(Some((MetaCommand::Arith(a), n))) => {
                assert_eq!(n, buf.len());
                a
            }
            other => panic!("{:?}", other),
        }
    }

    fn reason(buf: &[u8]) -> &'static str {
        parse_meta(buf, &Limits::default()).unwrap_err().reason
    }

    #[test]
    fn defaults_and_modes() {
        let a = arith(b"ma foo\r\n");
        assert_eq!((a.mode(), a.delta(), a.initial()), (ArithMode::Incr, 1, 0));
        let a = arith(b"ma foo v t c N0 J5 D10 MD O7 k q\r\n");
        assert_eq!((a.mode(), a.delta(), a.initial()), (ArithMode::Decr, 10, 5));
        assert_eq!(a.flags.vivify_ttl(), Some(Exptime(0)));
        assert!(a.quiet());
        assert_eq!(arith(b"ma foo M-\r\n").mode(), ArithMode::Decr);
        assert_eq!(arith(b"ma foo M+\r\n").mode(), ArithMode::Incr);
        assert_eq!(arith(b"ma foo D18446744073709551615\r\n").delta(), u64::MAX);
    }

    #[test]
    fn errors() {
        assert_eq!(reason(b"ma foo Mx\r\n"), "invalid mode for ma M token");
        assert_eq!(reason(b"ma foo Mi\r\n"), "invalid mode for ma M token");
        assert_eq!(
            reason(b"ma foo O12345678901234567890123456789012 Mx\r\n"),
            "invalid mode for ma M token"
        );
        assert_eq!(
            reason(b"ma foo O12345678901234567890123456789012\r\n"),
            "opaque token too long"
        );
        assert_eq!(reason(b"ma foo D-3\r\n"), "invalid or duplicate flag");
        assert_eq!(reason(b"ma foo Dx\r\n"), "invalid or duplicate flag");
        assert_eq!(
            reason(b"ma foo D18446744073709551616\r\n"),
            "invalid or duplicate flag"
        );
        assert_eq!(reason(b"ma foo x\r\n"), "invalid or duplicate flag");
        assert_eq!(reason(b"ma foo Z\r\n"), "invalid or duplicate flag");
    }
}
