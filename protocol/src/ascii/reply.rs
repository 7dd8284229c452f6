//! Every classic reply form memcached 1.6.18 sends for the verbs in this
//! module: `VALUE <key> <flags> <bytes> [<cas>]` with its data block, `END`,
//! `STORED`, `NOT_STORED`, `EXISTS`, `NOT_FOUND`, `DELETED`, `TOUCHED`, `OK`,
//! `RESET` (`stats reset`), a bare number (`incr`/`decr`), `VERSION <v>`,
//! `STAT <name> <value>`, `ERROR`, `CLIENT_ERROR <msg>` and `SERVER_ERROR
//! <msg>`. [`parse_reply`] is total, for a proxy reading a peer: replies come
//! from servers, so numbers are strict digits and any unknown or malformed
//! line is an error that closes the connection (a peer that sends garbage
//! cannot be resynchronised). Encoders write straight into a `BytesMut`.

use bytes::{BufMut, BytesMut};

use super::line::{find_line, put_u64, slice, strict_u64, Words};
use crate::{ErrorKind, Limits, ParseError, ParseResult, Span};

/// One `VALUE` item of a retrieval reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Value {
    /// The key.
    pub key: Span,
    /// The item's client flags.
    pub flags: u32,
    /// The data block, without its CRLF.
    pub data: Span,
    /// The CAS unique, present for `gets` and `gats`.
    pub cas: Option<u64>,
}

/// A classic ASCII reply. Spans point into the frame it was parsed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reply {
    /// `VALUE …` and its data block: one hit of a retrieval.
    Value(Value),
    /// `END`: the end of a retrieval or `stats` reply.
    End,
    /// `STORED`.
    Stored,
    /// `NOT_STORED`: an `add`/`replace`/`append`/`prepend` condition failed.
    NotStored,
    /// `EXISTS`: a `cas` lost the race.
    Exists,
    /// `NOT_FOUND`.
    NotFound,
    /// `DELETED`.
    Deleted,
    /// `TOUCHED`.
    Touched,
    /// `OK` (`flush_all`, `verbosity`).
    Ok,
    /// `RESET` (`stats reset`).
    Reset,
    /// The new value after `incr`/`decr`.
    Number(u64),
    /// `VERSION <v>`; the span is everything after the space.
    Version(Span),
    /// `STAT <name> <value>`; the value is the rest of the line.
    Stat {
        /// The statistic's name.
        name: Span,
        /// Its value (may contain spaces).
        value: Span,
    },
    /// `ERROR`: unknown command.
    Error,
    /// `CLIENT_ERROR <msg>`.
    ClientError(Span),
    /// `SERVER_ERROR <msg>`.
    ServerError(Span),
}

impl Reply {
    /// True for the lines that end a response; false for `VALUE` and `STAT`,
    /// which are followed by more lines up to `END`.
    pub const fn ends_response(&self) -> bool {
        !matches!(self, Reply::Value(_) | Reply::Stat { .. })
    }

    /// The fixed line of a reply without arguments.
    const fn fixed_line(&self) -> Option<&'static [u8]> {
        Some(match self {
            Reply::End => b"END",
            Reply::Stored => b"STORED",
            Reply::NotStored => b"NOT_STORED",
            Reply::Exists => b"EXISTS",
            Reply::NotFound => b"NOT_FOUND",
            Reply::Deleted => b"DELETED",
            Reply::Touched => b"TOUCHED",
            Reply::Ok => b"OK",
            Reply::Reset => b"RESET",
            Reply::Error => b"ERROR",
            Reply::Value(_)
            | Reply::Number(_)
            | Reply::Version(_)
            | Reply::Stat { .. }
            | Reply::ClientError(_)
            | Reply::ServerError(_) => return None,
        })
    }
}

/// Replies without arguments, matched against whole lines.
const FIXED: [Reply; 10] = [
    Reply::End,
    Reply::Stored,
    Reply::NotStored,
    Reply::Exists,
    Reply::NotFound,
    Reply::Deleted,
    Reply::Touched,
    Reply::Ok,
    Reply::Reset,
    Reply::Error,
];

/// A malformed reply: the peer is broken, drop the connection.
const fn bad(reason: &'static str) -> ParseError {
    ParseError::close(ErrorKind::BadFormat, reason)
}

/// Parse one reply from the start of `buf` (CRLF or bare LF line endings).
pub fn parse_reply(buf: &[u8], limits: &Limits) -> ParseResult<Reply> {
    let Some(line) = find_line(buf, limits.max_line_len)? else {
        return Ok(None);
    };
    let content = buf.get(..line.end).unwrap_or(&[]);
    let done = |reply| Ok(Some((reply, line.consumed)));
    if let Some(reply) = FIXED.iter().find(|r| r.fixed_line() == Some(content)) {
        return done(*reply);
    }
    let space = memchr::memchr(b' ', content);
    let word = content.get(..space.unwrap_or(line.end)).unwrap_or(&[]);
    // Everything after the first space; empty at the line end if none.
    let rest_start = space.map_or(line.end, |s| s.saturating_add(1));
    let rest = Span::new(rest_start, line.end);
    match word {
        b"VALUE" => parse_value(buf, limits, rest, line.consumed),
        b"VERSION" => done(Reply::Version(rest)),
        b"CLIENT_ERROR" => done(Reply::ClientError(rest)),
        b"SERVER_ERROR" => done(Reply::ServerError(rest)),
        b"STAT" => {
            let after = buf.get(rest.start..rest.end).unwrap_or(&[]);
            let name_len = memchr::memchr(b' ', after).unwrap_or(after.len());
            if name_len == 0 {
                return Err(bad("bad STAT line"));
            }
            let name_end = rest.start.saturating_add(name_len);
            let value_start = name_end.saturating_add(1).min(line.end);
            done(Reply::Stat {
                name: Span::new(rest.start, name_end),
                value: Span::new(value_start, line.end),
            })
        }
        _ => match strict_u64(content) {
            Some(n) => done(Reply::Number(n)),
            None => Err(bad("unknown reply")),
        },
    }
}

/// Parse `VALUE <key> <flags> <bytes> [<cas>]` (`args` after the verb) and
/// its data block, which starts at `start`.
fn parse_value(buf: &[u8], limits: &Limits, args: Span, start: usize) -> ParseResult<Reply> {
    let mut words = Words::new(buf, args);
    let (Some(key), Some(flags), Some(len)) = (words.next(), words.next(), words.next()) else {
        return Err(bad("bad VALUE line"));
    };
    let cas = words.next();
    if words.next().is_some() || key.len() > limits.max_key_len {
        return Err(bad("bad VALUE line"));
    }
    let flags = strict_u64(slice(buf, flags))
        .and_then(|f| u32::try_from(f).ok())
        .ok_or(bad("bad VALUE flags"))?;
    let len = strict_u64(slice(buf, len))
        .and_then(|n| usize::try_from(n).ok())
        .ok_or(bad("bad VALUE length"))?;
    let cas = match cas {
        Some(cas) => Some(strict_u64(slice(buf, cas)).ok_or(bad("bad VALUE cas"))?),
        None => None,
    };
    if len > limits.max_value_len {
        return Err(ParseError::close(ErrorKind::TooLarge, "object too large"));
    }
    let data_end = start.saturating_add(len);
    let total = data_end.saturating_add(2);
    let Some(trailer) = buf.get(data_end..total) else {
        return Ok(None);
    };
    if trailer != b"\r\n" {
        return Err(ParseError::close(ErrorKind::BadDataChunk, "bad data chunk"));
    }
    let value = Value {
        key,
        flags,
        data: Span::new(start, data_end),
        cas,
    };
    Ok(Some((Reply::Value(value), total)))
}

/// Write `reply` (parsed from `frame`; unused for replies without spans).
pub fn encode_reply(out: &mut BytesMut, reply: &Reply, frame: &[u8]) {
    if let Some(fixed) = reply.fixed_line() {
        out.put_slice(fixed);
        out.put_slice(b"\r\n");
        return;
    }
    match reply {
        Reply::Value(v) => encode_value(out, v.key.of(frame), v.flags, v.data.of(frame), v.cas),
        Reply::Number(n) => encode_number(out, *n),
        Reply::Version(v) => encode_version_reply(out, v.of(frame)),
        Reply::Stat { name, value } => encode_stat(out, name.of(frame), value.of(frame)),
        Reply::ClientError(m) => encode_client_error(out, m.of(frame)),
        Reply::ServerError(m) => encode_server_error(out, m.of(frame)),
        Reply::End
        | Reply::Stored
        | Reply::NotStored
        | Reply::Exists
        | Reply::NotFound
        | Reply::Deleted
        | Reply::Touched
        | Reply::Ok
        | Reply::Reset
        | Reply::Error => {}
    }
}

/// Write `VALUE <key> <flags> <bytes>[ <cas>]\r\n<data>\r\n`, as memcached's
/// `process_get_command` does.
pub fn encode_value(out: &mut BytesMut, key: &[u8], flags: u32, data: &[u8], cas: Option<u64>) {
    out.reserve(key.len().saturating_add(data.len()).saturating_add(64));
    out.put_slice(b"VALUE ");
    out.put_slice(key);
    out.put_u8(b' ');
    put_u64(out, u64::from(flags));
    out.put_u8(b' ');
    put_u64(out, data.len() as u64);
    if let Some(cas) = cas {
        out.put_u8(b' ');
        put_u64(out, cas);
    }
    out.put_slice(b"\r\n");
    out.put_slice(data);
    out.put_slice(b"\r\n");
}

/// Write an `incr`/`decr` result line.
pub fn encode_number(out: &mut BytesMut, n: u64) {
    put_u64(out, n);
    out.put_slice(b"\r\n");
}

/// Write `VERSION <version>\r\n`.
pub fn encode_version_reply(out: &mut BytesMut, version: &[u8]) {
    line_with(out, b"VERSION ", version);
}

/// Write `STAT <name> <value>\r\n`.
pub fn encode_stat(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.put_slice(b"STAT ");
    out.put_slice(name);
    out.put_u8(b' ');
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

/// Write `CLIENT_ERROR <msg>\r\n`.
pub fn encode_client_error(out: &mut BytesMut, msg: &[u8]) {
    line_with(out, b"CLIENT_ERROR ", msg);
}

/// Write `SERVER_ERROR <msg>\r\n`.
pub fn encode_server_error(out: &mut BytesMut, msg: &[u8]) {
    line_with(out, b"SERVER_ERROR ", msg);
}

fn line_with(out: &mut BytesMut, head: &[u8], tail: &[u8]) {
    out.put_slice(head);
    out.put_slice(tail);
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Recovery;

    fn parse(buf: &[u8]) -> ParseResult<Reply> {
        parse_reply(buf, &Limits::default())
    }

    fn one(buf: &[u8]) -> Reply {
        let (reply, n) = parse(buf).unwrap().unwrap();
        assert_eq!(n, buf.len(), "{buf:?}");
        reply
    }

    fn encoded(reply: &Reply, frame: &[u8]) -> BytesMut {
        let mut out = BytesMut::new();
        encode_reply(&mut out, reply, frame);
        out
    }

    #[test]
    fn fixed_replies_round_trip() {
        for (reply, wire) in [
            (Reply::End, &b"END\r\n"[..]),
            (Reply::Stored, b"STORED\r\n"),
            (Reply::NotStored, b"NOT_STORED\r\n"),
            (Reply::Exists, b"EXISTS\r\n"),
            (Reply::NotFound, b"NOT_FOUND\r\n"),
            (Reply::Deleted, b"DELETED\r\n"),
            (Reply::Touched, b"TOUCHED\r\n"),
            (Reply::Ok, b"OK\r\n"),
            (Reply::Reset, b"RESET\r\n"),
            (Reply::Error, b"ERROR\r\n"),
        ] {
            assert_eq!(one(wire), reply);
            assert_eq!(&encoded(&reply, &[])[..], wire);
            assert!(reply.ends_response());
        }
    }

    #[test]
    fn value_with_and_without_cas() {
        let buf = b"VALUE foo 5 3\r\nbar\r\n";
        let want = Value {
            key: Span::new(6, 9),
            flags: 5,
            data: Span::new(15, 18),
            cas: None,
        };
        assert_eq!(one(buf), Reply::Value(want));
        assert_eq!(&encoded(&Reply::Value(want), buf)[..], buf);
        let buf = b"VALUE k 4294967295 0 18446744073709551615\r\n\r\n";
        let Reply::Value(v) = one(buf) else { panic!() };
        assert_eq!(
            (v.flags, v.data.len(), v.cas),
            (u32::MAX, 0, Some(u64::MAX))
        );
        assert!(!Reply::Value(v).ends_response());
    }

    #[test]
    fn a_get_response_parses_in_sequence() {
        let buf = b"VALUE a 0 1\r\nx\r\nVALUE b 1 2 99\r\nyz\r\nEND\r\n";
        let mut at = 0;
        let mut got = Vec::new();
        while let Some((reply, n)) = parse(&buf[at..]).unwrap() {
            got.push(reply.ends_response());
            at += n;
        }
        assert_eq!((got, at), (vec![false, false, true], buf.len()));
    }

    #[test]
    fn numbers_version_stat_and_errors() {
        assert_eq!(one(b"0\r\n"), Reply::Number(0));
        assert_eq!(one(b"18446744073709551615\r\n"), Reply::Number(u64::MAX));
        let buf = b"VERSION 1.6.18\r\n";
        assert_eq!(one(buf), Reply::Version(Span::new(8, 14)));
        let buf = b"STAT libevent 2.1.12 stable\r\n";
        let reply = one(buf);
        let Reply::Stat { name, value } = reply else {
            panic!()
        };
        assert_eq!(
            (name.of(buf), value.of(buf)),
            (b"libevent".as_slice(), b"2.1.12 stable".as_slice())
        );
        assert_eq!(&encoded(&reply, buf)[..], buf);
        let buf = b"CLIENT_ERROR bad data chunk\r\n";
        assert_eq!(one(buf), Reply::ClientError(Span::new(13, 27)));
        let buf = b"SERVER_ERROR object too large for cache\r\n";
        assert_eq!(&encoded(&one(buf), buf)[..], buf);
    }

    #[test]
    fn bare_lf_is_accepted() {
        assert_eq!(parse(b"STORED\nEND\r\n").unwrap(), Some((Reply::Stored, 7)));
    }

    #[test]
    fn every_proper_prefix_needs_more() {
        let buf = b"VALUE key 1 5 7\r\nhello\r\n";
        for i in 0..buf.len() {
            assert_eq!(parse(&buf[..i]), Ok(None), "prefix {i}");
        }
        for i in 0..9 {
            assert_eq!(parse(&b"STAT a b\r\n"[..i]), Ok(None));
        }
    }

    #[test]
    fn malformed_replies_close() {
        for buf in [
            &b"BOGUS\r\n"[..],
            b"stored\r\n",
            b"STORED \r\n",
            b"-1\r\n",
            b"18446744073709551616\r\n",
            b"VALUE k 0\r\n",
            b"VALUE k x 1\r\nx\r\n",
            b"VALUE k 4294967296 1\r\nx\r\n",
            b"VALUE k 0 1 2 3\r\nx\r\n",
            b"VALUE k 0 1 x\r\nx\r\n",
            b"STAT \r\n",
            b"\r\n",
        ] {
            let e = parse(buf).unwrap_err();
            assert_eq!(
                (e.kind, e.recovery),
                (ErrorKind::BadFormat, Recovery::Close),
                "{buf:?}"
            );
        }
        let e = parse(b"VALUE k 0 1\r\nxy\r\n").unwrap_err();
        assert_eq!(
            (e.kind, e.recovery),
            (ErrorKind::BadDataChunk, Recovery::Close)
        );
        let limits = Limits {
            max_value_len: 4,
            ..Limits::default()
        };
        let e = parse_reply(b"VALUE k 0 5\r\n", &limits).unwrap_err();
        assert_eq!((e.kind, e.recovery), (ErrorKind::TooLarge, Recovery::Close));
        let mut long = b"VALUE ".to_vec();
        long.extend_from_slice(&[b'k'; 251]);
        long.extend_from_slice(b" 0 1\r\nx\r\n");
        assert_eq!(parse(&long).unwrap_err().kind, ErrorKind::BadFormat);
    }

    #[test]
    fn encoders_write_memcached_forms() {
        let mut out = BytesMut::new();
        encode_value(&mut out, b"k", 0, b"v", Some(12));
        encode_number(&mut out, 43);
        encode_version_reply(&mut out, b"1.6.18");
        encode_stat(&mut out, b"pid", b"1");
        encode_client_error(&mut out, b"bad command line format");
        encode_server_error(&mut out, b"out of memory");
        assert_eq!(
            &out[..],
            &b"VALUE k 0 1 12\r\nv\r\n43\r\nVERSION 1.6.18\r\nSTAT pid 1\r\n\
               CLIENT_ERROR bad command line format\r\nSERVER_ERROR out of memory\r\n"[..]
        );
    }
}
