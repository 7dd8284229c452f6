//! `incr|decr <key> <delta> [noreply]`: arithmetic on a 64-bit unsigned
//! decimal value. The delta is read like memcached's `safe_strtoull`, so a
//! negative or over-`u64` delta gets `CLIENT_ERROR invalid numeric delta
//! argument` (verified against memcached 1.6.18, as is the silence of that
//! error when the last token is `noreply`). A surplus token other than
//! `noreply` is ignored, as memcached does (`incr a 1 2` increments).

use bytes::{BufMut, BytesMut};

use super::line::{put_u64, strtoull, CommandLine, BAD_DELTA};
use crate::{ParseError, Span};

/// Increment or decrement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ArithVerb {
    /// `incr`: add, wrapping at 2^64.
    Incr,
    /// `decr`: subtract, stopping at 0.
    Decr,
}

impl ArithVerb {
    /// The verb as sent on the wire.
    pub const fn name(&self) -> &'static str {
        match self {
            ArithVerb::Incr => "incr",
            ArithVerb::Decr => "decr",
        }
    }
}

/// A parsed `incr` or `decr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Arith {
    /// Which verb.
    pub verb: ArithVerb,
    /// The key.
    pub key: Span,
    /// The amount to add or subtract.
    pub delta: u64,
    /// The last token was `noreply`.
    pub noreply: bool,
}

impl Arith {
    /// Write this request.
    pub fn encode(&self, out: &mut BytesMut, frame: &[u8]) {
        encode_arith(out, self.verb, self.key.of(frame), self.delta, self.noreply);
    }
}

/// Parse an `incr`/`decr` line.
pub(crate) fn parse(cl: &CommandLine<'_>, verb: ArithVerb) -> Result<Arith, ParseError> {
    // WANT_TOKENS_OR(ntokens, 4, 5).
    if cl.count() != 3 && cl.count() != 4 {
        return Err(cl.wrong_arity());
    }
    let noreply = cl.noreply();
    let key = cl.key(1, noreply)?;
    let delta = strtoull(cl.token(2)).ok_or_else(|| cl.client_error(BAD_DELTA, noreply))?;
    Ok(Arith {
        verb,
        key,
        delta,
        noreply,
    })
}

/// Write `incr|decr <key> <delta> [noreply]\r\n`.
pub fn encode_arith(out: &mut BytesMut, verb: ArithVerb, key: &[u8], delta: u64, noreply: bool) {
    out.put_slice(verb.name().as_bytes());
    out.put_u8(b' ');
    out.put_slice(key);
    out.put_u8(b' ');
    put_u64(out, delta);
    if noreply {
        out.put_slice(b" noreply");
    }
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ascii::{parse_command, Command};
    use crate::{ErrorKind, Limits, Recovery};

    fn arith(buf: &[u8]) -> (Arith, usize) {
        match parse_command(buf, &Limits::default()) {
            Ok(Some((Command::Arith(a), n))) => (a, n),
            other => panic!("{other:?}"),
        }
    }

    fn err(buf: &[u8]) -> ParseError {
        parse_command(buf, &Limits::default()).unwrap_err()
    }

    #[test]
    fn incr_and_decr() {
        let want = Arith {
            verb: ArithVerb::Incr,
            key: Span::new(5, 8),
            delta: 42,
            noreply: false,
        };
        assert_eq!(arith(b"incr ctr 42\r\n"), (want, 13));
        let (a, _) = arith(b"decr ctr 18446744073709551615 noreply\r\n");
        assert_eq!(
            (a.verb, a.delta, a.noreply),
            (ArithVerb::Decr, u64::MAX, true)
        );
    }

    #[test]
    fn surplus_token_is_ignored_and_whitespace_tolerated() {
        assert!(!arith(b"incr a 1 2\r\n").0.noreply);
        assert_eq!(arith(b"incr  a  1  \n").0.delta, 1);
        // memcached's strtoull leniency: a sign, a tab, or a CR left by a
        // doubled CR are all accepted.
        assert_eq!(arith(b"incr a +5\r\n").0.delta, 5);
        assert_eq!(arith(b"incr a \t5\r\n").0.delta, 5);
        assert_eq!(arith(b"incr a 5\r\r\n").0.delta, 5);
    }

    #[test]
    fn bad_delta_is_a_client_error() {
        for buf in [
            &b"incr a abc\r\n"[..],
            b"incr a -1\r\n",
            b"decr a 18446744073709551616\r\n",
            b"incr a 5x\r\n",
        ] {
            let e = err(buf);
            assert_eq!(
                (e.kind, e.reason, e.recovery),
                (ErrorKind::BadFormat, BAD_DELTA, Recovery::Skip(buf.len()))
            );
        }
        let mut out = BytesMut::new();
        err(b"incr a x\r\n").write_ascii_reply(&mut out);
        assert_eq!(&out[..], b"CLIENT_ERROR invalid numeric delta argument\r\n");
    }

    #[test]
    fn noreply_in_the_delta_slot_is_silent() {
        assert_eq!(err(b"incr a noreply\r\n").kind, ErrorKind::NoReply);
        assert_eq!(err(b"incr a x noreply\r\n").kind, ErrorKind::NoReply);
    }

    #[test]
    fn wrong_token_count_is_error() {
        for buf in [&b"incr a\r\n"[..], b"decr\r\n", b"incr a 1 noreply x\r\n"] {
            assert_eq!(err(buf).kind, ErrorKind::UnknownCommand);
        }
    }

    #[test]
    fn every_proper_prefix_needs_more() {
        let buf = b"decr k 10 noreply\r\n";
        for i in 0..buf.len() {
            assert_eq!(
                parse_command(&buf[..i], &Limits::default()),
                Ok(None),
                "prefix {i}"
            );
        }
    }

    #[test]
    fn encode() {
        let mut out = BytesMut::new();
        encode_arith(&mut out, ArithVerb::Decr, b"k", 0, true);
        assert_eq!(&out[..], b"decr k 0 noreply\r\n");
    }
}
