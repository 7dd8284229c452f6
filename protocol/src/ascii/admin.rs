//! The administrative verbs: `flush_all [delay] [noreply]`, `version`,
//! `verbosity <level> [noreply]`, `stats [args…]` and `quit`. Their token rules
//! follow memcached 1.6.18's `process_command_ascii` exactly, quirks included
//! (all verified): `version` and `quit` ignore extra tokens; `flush_all 10 x`
//! flushes (a surplus non-`noreply` token is ignored) while `flush_all abc`
//! gets `CLIENT_ERROR invalid exptime argument`; `verbosity 1 2` is `OK`;
//! `verbosity noreply` fails its number silently. What `stats` arguments mean
//! is the server's business (`stats reset` answers `RESET`, unknown ones
//! `ERROR`), so they are carried as one span.

use bytes::{BufMut, BytesMut};

use super::line::{
    put_i64, put_u64, strtol32, strtoul32, CommandLine, Words, BAD_EXPTIME, BAD_FORMAT,
};
use crate::{Exptime, ParseError, Span};

/// A parsed `flush_all`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlushAll {
    /// Invalidate items this long from now (memcached's exptime rules); `0`
    /// (also what an absent or non-positive delay means) flushes now.
    pub delay: Exptime,
    /// The last token was `noreply`.
    pub noreply: bool,
}

/// A parsed `verbosity`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Verbosity {
    /// The requested level (memcached clamps it to its maximum).
    pub level: u32,
    /// The last token was `noreply`.
    pub noreply: bool,
}

/// A parsed `stats`, with its arguments unparsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Stats {
    /// From the first argument to the end of the last; empty for plain
    /// `stats`. Walk it with [`Stats::args`].
    pub args: Span,
}

impl Stats {
    /// The argument spans (`stats slabs` → `slabs`), without allocating.
    pub fn args<'a>(&self, frame: &'a [u8]) -> Words<'a> {
        Words::new(frame, self.args)
    }

    /// Write this request, one space between arguments.
    pub fn encode(&self, out: &mut BytesMut, frame: &[u8]) {
        encode_stats(out, self.args(frame).map(|a| a.of(frame)));
    }
}

/// The reply to `stats detail <sub>`: memcached's per-key-prefix counters,
/// which Shoal does not collect. `off` is what it already is, `dump` has
/// nothing to show, `on` is refused; anything else gets memcached's usage.
pub fn stats_detail_reply(sub: Option<&[u8]>) -> &'static [u8] {
    match sub {
        Some(b"off") => b"OK\r\n",
        Some(b"dump") => b"END\r\n",
        Some(b"on") => b"SERVER_ERROR stats detail is not collected\r\n",
        _ => b"CLIENT_ERROR usage: stats detail on|off|dump\r\n",
    }
}

/// Parse a `flush_all` line.
pub(crate) fn parse_flush_all(cl: &CommandLine<'_>) -> Result<FlushAll, ParseError> {
    // WANT_TOKENS(ntokens, 2, 4).
    if !(1..=3).contains(&cl.count()) {
        return Err(cl.wrong_arity());
    }
    let noreply = cl.noreply();
    // memcached: `if (ntokens != (c->noreply ? 3 : 2))` parse token 1.
    let bare = if noreply { 2 } else { 1 };
    let delay = if cl.count() == bare {
        0
    } else {
        strtol32(cl.token(1)).ok_or_else(|| cl.client_error(BAD_EXPTIME, noreply))?
    };
    Ok(FlushAll {
        delay: Exptime(i64::from(delay)),
        noreply,
    })
}

/// Parse a `verbosity` line.
pub(crate) fn parse_verbosity(cl: &CommandLine<'_>) -> Result<Verbosity, ParseError> {
    // WANT_TOKENS_OR(ntokens, 3, 4).
    if cl.count() != 2 && cl.count() != 3 {
        return Err(cl.wrong_arity());
    }
    let noreply = cl.noreply();
    let level = strtoul32(cl.token(1)).ok_or_else(|| cl.client_error(BAD_FORMAT, noreply))?;
    Ok(Verbosity { level, noreply })
}

/// Parse a `stats` line.
pub(crate) fn parse_stats(cl: &CommandLine<'_>) -> Stats {
    let start = cl.span(1).start;
    Stats {
        args: Span::new(start, cl.tokens.last().end.max(start)),
    }
}

/// Write `flush_all [<delay>] [noreply]\r\n`; a zero delay is left out.
pub fn encode_flush_all(out: &mut BytesMut, delay: Exptime, noreply: bool) {
    out.put_slice(b"flush_all");
    if delay.0 != 0 {
        out.put_u8(b' ');
        put_i64(out, delay.0);
    }
    if noreply {
        out.put_slice(b" noreply");
    }
    out.put_slice(b"\r\n");
}

/// Write `verbosity <level> [noreply]\r\n`.
pub fn encode_verbosity(out: &mut BytesMut, level: u32, noreply: bool) {
    out.put_slice(b"verbosity ");
    put_u64(out, u64::from(level));
    if noreply {
        out.put_slice(b" noreply");
    }
    out.put_slice(b"\r\n");
}

/// Write `stats[ <arg>…]\r\n`.
pub fn encode_stats<'a>(out: &mut BytesMut, args: impl IntoIterator<Item = &'a [u8]>) {
    out.put_slice(b"stats");
    for arg in args {
        out.put_u8(b' ');
        out.put_slice(arg);
    }
    out.put_slice(b"\r\n");
}

/// Write `version\r\n`.
pub fn encode_version(out: &mut BytesMut) {
    out.put_slice(b"version\r\n");
}

/// Write `quit\r\n`.
pub fn encode_quit(out: &mut BytesMut) {
    out.put_slice(b"quit\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ascii::{parse_command, Command};
    use crate::{ErrorKind, Limits, Recovery};

    fn cmd(buf: &[u8]) -> (Command, usize) {
        parse_command(buf, &Limits::default()).unwrap().unwrap()
    }

    fn err(buf: &[u8]) -> ParseError {
        parse_command(buf, &Limits::default()).unwrap_err()
    }

    fn flush(delay: i64, noreply: bool) -> Command {
        Command::FlushAll(FlushAll {
            delay: Exptime(delay),
            noreply,
        })
    }

    #[test]
    fn flush_all_forms() {
        assert_eq!(cmd(b"flush_all\r\n"), (flush(0, false), 11));
        assert_eq!(cmd(b"flush_all 0\r\n").0, flush(0, false));
        assert_eq!(cmd(b"flush_all 30\r\n").0, flush(30, false));
        assert_eq!(cmd(b"flush_all -5\r\n").0, flush(-5, false));
        assert_eq!(cmd(b"flush_all noreply\r\n").0, flush(0, true));
        assert_eq!(cmd(b"flush_all 10 noreply\n").0, flush(10, true));
        // A surplus token that is not `noreply` is ignored (verified).
        assert_eq!(cmd(b"flush_all 10 x\r\n").0, flush(10, false));
    }

    #[test]
    fn flush_all_errors() {
        let e = err(b"flush_all abc\r\n");
        assert_eq!(
            (e.kind, e.reason, e.recovery),
            (ErrorKind::BadFormat, BAD_EXPTIME, Recovery::Skip(15))
        );
        assert_eq!(err(b"flush_all abc noreply\r\n").kind, ErrorKind::NoReply);
        assert_eq!(
            err(b"flush_all noreply noreply\r\n").kind,
            ErrorKind::NoReply
        );
        assert_eq!(err(b"flush_all 1 2 3\r\n").kind, ErrorKind::UnknownCommand);
        // The last token decides noreply: here it is `x`, so `noreply` is
        // read as the delay and rejected out loud (verified).
        let e = err(b"flush_all noreply x\r\n");
        assert_eq!((e.kind, e.reason), (ErrorKind::BadFormat, BAD_EXPTIME));
    }

    #[test]
    fn verbosity_forms_and_errors() {
        let v = |level, noreply| Command::Verbosity(Verbosity { level, noreply });
        assert_eq!(cmd(b"verbosity 1\r\n"), (v(1, false), 13));
        assert_eq!(cmd(b"verbosity 2 noreply\r\n").0, v(2, true));
        assert_eq!(cmd(b"verbosity 1 2\r\n").0, v(1, false));
        let e = err(b"verbosity abc\r\n");
        assert_eq!((e.kind, e.reason), (ErrorKind::BadFormat, BAD_FORMAT));
        assert_eq!(err(b"verbosity noreply\r\n").kind, ErrorKind::NoReply);
        for buf in [&b"verbosity\r\n"[..], b"verbosity 1 2 3\r\n"] {
            assert_eq!(err(buf).kind, ErrorKind::UnknownCommand);
        }
    }

    #[test]
    fn stats_with_and_without_args() {
        assert_eq!(
            cmd(b"stats\r\n"),
            (
                Command::Stats(Stats {
                    args: Span::new(5, 5)
                }),
                7
            )
        );
        let buf = b"stats  detail   dump \r\n";
        let (c, _) = cmd(buf);
        let Command::Stats(s) = c else {
            panic!("{c:?}")
        };
        let args: Vec<&[u8]> = s.args(buf).map(|a| a.of(buf)).collect();
        assert_eq!(args, [b"detail".as_slice(), b"dump"]);
        let mut out = BytesMut::new();
        s.encode(&mut out, buf);
        assert_eq!(&out[..], b"stats detail dump\r\n");
    }

    #[test]
    fn version_and_quit_ignore_extra_tokens() {
        assert_eq!(cmd(b"version\r\n"), (Command::Version, 9));
        assert_eq!(cmd(b"version foo\r\n"), (Command::Version, 13));
        assert_eq!(cmd(b"quit\n"), (Command::Quit, 5));
        assert_eq!(cmd(b"quit now\r\n"), (Command::Quit, 10));
    }

    #[test]
    fn every_proper_prefix_needs_more() {
        for buf in [
            &b"flush_all 10 noreply\r\n"[..],
            b"verbosity 1\r\n",
            b"stats items\r\n",
            b"version\r\n",
            b"quit\r\n",
        ] {
            for i in 0..buf.len() {
                assert_eq!(
                    parse_command(&buf[..i], &Limits::default()),
                    Ok(None),
                    "prefix {i}"
                );
            }
        }
    }

    #[test]
    fn encoders() {
        let mut out = BytesMut::new();
        encode_flush_all(&mut out, Exptime(0), true);
        encode_flush_all(&mut out, Exptime(-3), false);
        encode_verbosity(&mut out, 4, false);
        encode_stats(&mut out, [b"slabs".as_slice()]);
        encode_version(&mut out);
        encode_quit(&mut out);
        assert_eq!(&out[..], b"flush_all noreply\r\nflush_all -3\r\nverbosity 4\r\nstats slabs\r\nversion\r\nquit\r\n");
    }
}
