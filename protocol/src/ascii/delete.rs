//! `delete <key> [0] [noreply]`. memcached 1.6.18 still accepts the legacy
//! hold time, but only the exact token `0`; any other third token that is not
//! `noreply` gets `CLIENT_ERROR bad command line format.  Usage: delete <key>
//! [noreply]` (two spaces, as memcached words it). That usage check runs
//! before the key check, and like every classic error it is silent when the
//! last token is `noreply` (verified: `delete a 5 noreply` answers nothing).

use bytes::{BufMut, BytesMut};

use super::line::CommandLine;
use crate::{ParseError, Span};

/// memcached's usage error for a bad hold time, word for word.
const USAGE: &str = "bad command line format.  Usage: delete <key> [noreply]";

/// A parsed `delete`. The legacy `0` hold time means nothing and is dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Delete {
    /// The key.
    pub key: Span,
    /// The last token was `noreply`.
    pub noreply: bool,
}

impl Delete {
    /// Write this request.
    pub fn encode(&self, out: &mut BytesMut, frame: &[u8]) {
        encode_delete(out, self.key.of(frame), self.noreply);
    }
}

/// Parse a `delete` line.
pub(crate) fn parse(cl: &CommandLine<'_>) -> Result<Delete, ParseError> {
    // WANT_TOKENS(ntokens, 3, 5): two to four real tokens.
    if !(2..=4).contains(&cl.count()) {
        return Err(cl.wrong_arity());
    }
    // memcached calls set_noreply_maybe only past two tokens, so
    // `delete noreply` deletes the key "noreply" and answers.
    let noreply = cl.count() > 2 && cl.noreply();
    if cl.count() > 2 {
        let hold_is_zero = cl.token(2) == b"0";
        let valid = (cl.count() == 3 && (hold_is_zero || noreply))
            || (cl.count() == 4 && hold_is_zero && noreply);
        if !valid {
            return Err(cl.client_error(USAGE, noreply));
        }
    }
    let key = cl.key(1, noreply)?;
    Ok(Delete { key, noreply })
}

/// Write `delete <key> [noreply]\r\n`.
pub fn encode_delete(out: &mut BytesMut, key: &[u8], noreply: bool) {
    out.put_slice(b"delete ");
    out.put_slice(key);
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

    fn delete(buf: &[u8]) -> (Delete, usize) {
        match parse_command(buf, &Limits::default()) {
            Ok(Some((Command::Delete(d), n))) => (d, n),
            other => panic!("{other:?}"),
        }
    }

    fn err(buf: &[u8]) -> ParseError {
        parse_command(buf, &Limits::default()).unwrap_err()
    }

    #[test]
    fn plain_legacy_zero_and_noreply_forms() {
        assert_eq!(
            delete(b"delete k\r\n"),
            (
                Delete {
                    key: Span::new(7, 8),
                    noreply: false
                },
                10
            )
        );
        assert!(!delete(b"delete k 0\r\n").0.noreply);
        assert!(delete(b"delete k noreply\r\n").0.noreply);
        assert!(delete(b"delete k 0 noreply\r\n").0.noreply);
        assert_eq!(
            delete(b"  delete   k  \n"),
            (
                Delete {
                    key: Span::new(11, 12),
                    noreply: false
                },
                15
            )
        );
    }

    #[test]
    fn other_hold_times_get_the_usage_error() {
        for buf in [
            &b"delete k 1\r\n"[..],
            b"delete k 00\r\n",
            b"delete k 0 0\r\n",
        ] {
            let e = err(buf);
            assert_eq!(
                (e.kind, e.reason, e.recovery),
                (ErrorKind::BadFormat, USAGE, Recovery::Skip(buf.len()))
            );
        }
        let mut out = BytesMut::new();
        err(b"delete a 1\r\n").write_ascii_reply(&mut out);
        assert_eq!(
            &out[..],
            b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n"
        );
    }

    #[test]
    fn a_key_named_noreply_is_just_a_key() {
        let (d, _) = delete(b"delete noreply\r\n");
        assert_eq!((d.key, d.noreply), (Span::new(7, 14), false));
        assert!(delete(b"delete noreply noreply\r\n").0.noreply);
    }

    #[test]
    fn usage_error_with_noreply_is_silent() {
        for buf in [&b"delete k 5 noreply\r\n"[..], b"delete k x noreply\r\n"] {
            let e = err(buf);
            assert_eq!((e.kind, e.reason), (ErrorKind::NoReply, USAGE));
        }
    }

    #[test]
    fn wrong_token_count_is_error() {
        for buf in [&b"delete\r\n"[..], b"delete k 0 noreply x\r\n"] {
            assert_eq!(err(buf).kind, ErrorKind::UnknownCommand);
        }
    }

    #[test]
    fn long_key_is_a_client_error() {
        let mut buf = b"delete ".to_vec();
        buf.extend_from_slice(&[b'k'; 251]);
        buf.extend_from_slice(b"\r\n");
        assert_eq!(err(&buf).reason, super::super::line::BAD_FORMAT);
        buf.truncate(buf.len() - 2);
        buf.extend_from_slice(b" noreply\r\n");
        assert_eq!(err(&buf).kind, ErrorKind::NoReply);
    }

    #[test]
    fn every_proper_prefix_needs_more() {
        let buf = b"delete k 0 noreply\r\n";
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
        let buf = b"delete k 0 noreply\r\n";
        delete(buf).0.encode(&mut out, buf);
        assert_eq!(&out[..], b"delete k noreply\r\n");
    }
}
