//! `touch <key> <exptime> [noreply]`: set a new expiry without fetching. The
//! exptime is read like memcached's `safe_strtol` (64-bit parse, truncated to
//! 32 bits); an unparsable one gets `CLIENT_ERROR invalid exptime argument`,
//! silent under `noreply`, and a surplus token other than `noreply` is
//! ignored (both verified against memcached 1.6.18).

use bytes::{BufMut, BytesMut};

use super::line::{put_i64, strtol32, CommandLine, BAD_EXPTIME};
use crate::{Exptime, ParseError, Span};

/// A parsed `touch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Touch {
    /// The key.
    pub key: Span,
    /// The new expiry.
    pub exptime: Exptime,
    /// The last token was `noreply`.
    pub noreply: bool,
}

impl Touch {
    /// Write this request.
    pub fn encode(&self, out: &mut BytesMut, frame: &[u8]) {
        encode_touch(out, self.key.of(frame), self.exptime, self.noreply);
    }
}

/// Parse a `touch` line.
pub(crate) fn parse(cl: &CommandLine<'_>) -> Result<Touch, ParseError> {
    // WANT_TOKENS_OR(ntokens, 4, 5).
    if cl.count() != 3 && cl.count() != 4 {
        return Err(cl.wrong_arity());
    }
    let noreply = cl.noreply();
    let key = cl.key(1, noreply)?;
    let exptime = strtol32(cl.token(2)).ok_or_else(|| cl.client_error(BAD_EXPTIME, noreply))?;
    Ok(Touch {
        key,
        exptime: Exptime(i64::from(exptime)),
        noreply,
    })
}

/// Write `touch <key> <exptime> [noreply]\r\n`.
pub fn encode_touch(out: &mut BytesMut, key: &[u8], exptime: Exptime, noreply: bool) {
    out.put_slice(b"touch ");
    out.put_slice(key);
    out.put_u8(b' ');
    put_i64(out, exptime.0);
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

    fn touch(buf: &[u8]) -> (Touch, usize) {
        match parse_command(buf, &Limits::default()) {
            Ok(Some((Command::Touch(t), n))) => (t, n),
            other => panic!("{other:?}"),
        }
    }

    fn err(buf: &[u8]) -> ParseError {
        parse_command(buf, &Limits::default()).unwrap_err()
    }

    #[test]
    fn touch_with_and_without_noreply() {
        let want = Touch {
            key: Span::new(6, 7),
            exptime: Exptime(300),
            noreply: false,
        };
        assert_eq!(touch(b"touch k 300\r\n"), (want, 13));
        let (t, n) = touch(b"touch k -1 noreply\n");
        assert_eq!((t.exptime, t.noreply, n), (Exptime(-1), true, 19));
    }

    #[test]
    fn exptime_wraps_to_32_bits_like_memcached() {
        assert_eq!(touch(b"touch k 4294967296\r\n").0.exptime, Exptime(0));
        assert_eq!(
            touch(b"touch k 2147483648\r\n").0.exptime,
            Exptime(i64::from(i32::MIN))
        );
    }

    #[test]
    fn surplus_token_and_spaces() {
        assert_eq!(
            touch(b"touch  k  10  x \r\n").0,
            Touch {
                key: Span::new(7, 8),
                exptime: Exptime(10),
                noreply: false
            }
        );
    }

    #[test]
    fn bad_exptime() {
        let e = err(b"touch k abc\r\n");
        assert_eq!(
            (e.kind, e.reason, e.recovery),
            (ErrorKind::BadFormat, BAD_EXPTIME, Recovery::Skip(13))
        );
        assert_eq!(err(b"touch k abc noreply\r\n").kind, ErrorKind::NoReply);
        assert_eq!(err(b"touch k noreply\r\n").kind, ErrorKind::NoReply);
    }

    #[test]
    fn wrong_token_count_is_error() {
        for buf in [
            &b"touch k\r\n"[..],
            b"touch\r\n",
            b"touch k 1 noreply x\r\n",
        ] {
            assert_eq!(err(buf).kind, ErrorKind::UnknownCommand);
        }
    }

    #[test]
    fn every_proper_prefix_needs_more() {
        let buf = b"touch k 10 noreply\r\n";
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
        encode_touch(&mut out, b"k", Exptime(-5), false);
        assert_eq!(&out[..], b"touch k -5\r\n");
    }
}
