//! The meta text protocol: `mg ms md ma mn me` and their replies, as
//! memcached 1.6.18 speaks it. [`parse_meta`] reads one request from the
//! start of a buffer (the caller routes lines starting with `m` here) into a
//! typed [`MetaCommand`] of spans; [`encode_meta`] writes one back;
//! [`reply`] parses and writes the `HD VA EN NF NS EX MN ME` answers. Errors
//! carry memcached's exact wording and how much of the stream to skip, and
//! the few places Shoal knowingly differs are listed here:
//!
//! - A line longer than `Limits::max_line_len` is refused even when complete
//!   (memcached reads up to its buffer size), so the result never depends on
//!   how the bytes were split across reads.
//! - memcached checks an over-long opaque while building the reply, after
//!   `ma` has already changed the counter and `mg` has already applied `T`;
//!   here the request is refused before anything happens.
//! - `ms` compares `datalen` alone with `Limits::max_value_len`, where
//!   memcached compares the whole item (key and header too) with its item size.

pub mod arith;
pub mod base64;
pub mod delete;
pub mod flags;
pub mod get;
pub mod misc;
pub mod reply;
pub mod returned;
pub mod set;
mod token;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod vectors;

use bytes::BytesMut;

pub use arith::{ArithMode, MetaArith};
pub use delete::MetaDelete;
pub use flags::{Flag, MetaFlags, MAX_OPAQUE_LEN};
pub use get::MetaGet;
pub use misc::MetaDebug;
pub use reply::{
    encode_meta_reply, parse_meta_reply, write_status, write_value, ErrorReply, MetaReply,
    ReplyFlag, ReplyFlags, ReturnFlag, Status, MAX_REPLY_FLAGS,
};
pub use returned::{Echo, ItemFields, Markers, ReturnFlags};
pub use set::{MetaSet, SetMode};

use crate::error::{ErrorKind, ParseError};
use crate::limits::Limits;
use crate::span::Span;
use crate::ParseResult;
use token::{Line, Tokens};

/// memcached's generic complaint about a request line.
pub(crate) const BAD_FORMAT: &str = "bad command line format";

/// One meta request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetaCommand {
    /// `mg`.
    Get(MetaGet),
    /// `ms`, with its data block.
    Set(MetaSet),
    /// `md`.
    Delete(MetaDelete),
    /// `ma`.
    Arith(MetaArith),
    /// `mn`.
    Noop,
    /// `me`.
    Debug(MetaDebug),
}

impl MetaCommand {
    /// The key, for every verb but `mn`.
    pub fn key(&self) -> Option<Span> {
        match self {
            MetaCommand::Get(c) => Some(c.key),
            MetaCommand::Set(c) => Some(c.key),
            MetaCommand::Delete(c) => Some(c.key),
            MetaCommand::Arith(c) => Some(c.key),
            MetaCommand::Debug(c) => Some(c.key),
            MetaCommand::Noop => None,
        }
    }

    /// True when the key is base64 (`b`).
    pub fn base64(&self) -> bool {
        match self {
            MetaCommand::Get(c) => c.base64,
            MetaCommand::Set(c) => c.base64,
            MetaCommand::Delete(c) => c.base64,
            MetaCommand::Arith(c) => c.base64,
            MetaCommand::Debug(c) => c.base64,
            MetaCommand::Noop => false,
        }
    }

    /// The flags, for the verbs that take them.
    pub fn flags(&self) -> Option<&MetaFlags> {
        match self {
            MetaCommand::Get(c) => Some(&c.flags),
            MetaCommand::Set(c) => Some(&c.flags),
            MetaCommand::Delete(c) => Some(&c.flags),
            MetaCommand::Arith(c) => Some(&c.flags),
            MetaCommand::Noop | MetaCommand::Debug(_) => None,
        }
    }

    /// `q`: the nominal reply is suppressed (`EN` for mg, `HD` otherwise).
    /// Errors are always sent.
    pub fn quiet(&self) -> bool {
        self.flags().is_some_and(|f| f.has(Flag::Quiet))
    }
}

/// A request line located and tokenized, shared by the verb parsers.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Request<'a> {
    pub buf: &'a [u8],
    pub line: Line,
    pub tokens: Tokens,
}

/// The key token, checked the way every verb but `me` checks it: missing is
/// `ERROR` (memcached's too-few-tokens answer), longer than the limit is a bad
/// command line. A base64 key is limited by its encoded length, as in
/// memcached, which bounds the decoded key to 186 bytes.
pub(crate) fn check_key(req: &Request<'_>, limits: &Limits) -> Result<Span, ParseError> {
    let Some(key) = req.tokens.get(1) else {
        return Err(ParseError::skip(
            ErrorKind::UnknownCommand,
            "missing key",
            req.line.consumed,
        ));
    };
    if key.len() > limits.max_key_len {
        return Err(ParseError::skip(
            ErrorKind::BadFormat,
            BAD_FORMAT,
            req.line.consumed,
        ));
    }
    Ok(key)
}

/// Parse one meta request from the start of `buf`.
///
/// Returns the command and the bytes it used (line and, for `ms`, the data
/// block), `Ok(None)` while the request is incomplete, or the error memcached
/// would answer with how to resynchronise. A line that is not a meta verb is
/// [`ErrorKind::UnknownCommand`] (`ERROR`), skipping the line.
pub fn parse_meta(buf: &[u8], limits: &Limits) -> ParseResult<MetaCommand> {
    let Some(line) = token::find_line(buf, limits, true)? else {
        return Ok(None);
    };
    let req = Request {
        buf,
        line,
        tokens: Tokens::split(buf, line.content_end),
    };
    let verb = req.tokens.get(0).map(|t| token::bytes(buf, t));
    let cmd = match verb {
        Some(b"mg") => MetaCommand::Get(get::parse(&req, limits)?),
        Some(b"ms") => {
            return Ok(set::parse(&req, limits)?.map(|(s, n)| (MetaCommand::Set(s), n)));
        }
        Some(b"md") => MetaCommand::Delete(delete::parse(&req, limits)?),
        Some(b"ma") => MetaCommand::Arith(arith::parse(&req, limits)?),
        Some(b"mn") => MetaCommand::Noop,
        Some(b"me") => MetaCommand::Debug(misc::parse_debug(&req, limits)?),
        _ => {
            return Err(ParseError::skip(
                ErrorKind::UnknownCommand,
                "unknown command",
                line.consumed,
            ))
        }
    };
    Ok(Some((cmd, line.consumed)))
}

/// Append `cmd` in wire form; its spans resolve in `frame`. Flags are written
/// in their stored order, with `b` first.
pub fn encode_meta(out: &mut BytesMut, cmd: &MetaCommand, frame: &[u8]) {
    match cmd {
        MetaCommand::Get(c) => c.encode(out, frame),
        MetaCommand::Set(c) => c.encode(out, frame),
        MetaCommand::Delete(c) => c.encode(out, frame),
        MetaCommand::Arith(c) => c.encode(out, frame),
        MetaCommand::Noop => misc::encode_noop(out),
        MetaCommand::Debug(c) => c.encode(out, frame),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Recovery;

    fn parse(buf: &[u8]) -> ParseResult<MetaCommand> {
        parse_meta(buf, &Limits::default())
    }

    /// One of each verb, as a client would pipeline them.
    const PIPELINE: &[u8] =
        b"ms foo 3 T0 F7\r\nabc\r\nmg foo v c q\r\nma n N0 J1\nmd foo q\r\nme foo\r\nmn\r\n";

    #[test]
    fn pipelined_commands_parse_in_sequence() {
        let mut rest = PIPELINE;
        let mut verbs = Vec::new();
        while !rest.is_empty() {
            let (cmd, n) = parse(rest).unwrap().unwrap();
            verbs.push(match cmd {
                MetaCommand::Get(_) => "mg",
                MetaCommand::Set(s) => {
                    assert_eq!(s.value.of(rest), b"abc");
                    "ms"
                }
                MetaCommand::Delete(_) => "md",
                MetaCommand::Arith(_) => "ma",
                MetaCommand::Noop => "mn",
                MetaCommand::Debug(_) => "me",
            });
            rest = &rest[n..];
        }
        assert_eq!(verbs, ["ms", "mg", "ma", "md", "me", "mn"]);
    }

    #[test]
    fn every_proper_prefix_is_incomplete() {
        let mut rest = PIPELINE;
        while !rest.is_empty() {
            let (_, n) = parse(rest).unwrap().unwrap();
            for cut in 0..n {
                assert_eq!(parse(&rest[..cut]), Ok(None), "{:?}", &rest[..cut]);
            }
            rest = &rest[n..];
        }
    }

    #[test]
    fn unknown_verbs_and_missing_keys_are_error() {
        for line in [
            &b"mx foo\r\n"[..],
            b"m\r\n",
            b"mnx\r\n",
            b"MG foo\r\n",
            b"mg\r\n",
            b"ms\r\n",
            b"md\r\n",
            b"ma\r\n",
            b"mg\0 foo\r\n",
        ] {
            let e = parse(line).unwrap_err();
            assert_eq!(e.kind, ErrorKind::UnknownCommand, "{:?}", line);
            assert_eq!(e.recovery, Recovery::Skip(line.len()));
            let mut out = BytesMut::new();
            e.write_ascii_reply(&mut out);
            assert_eq!(&out[..], b"ERROR\r\n");
        }
    }

    #[test]
    fn nul_ends_the_line_like_memcached() {
        // memcached handles the line as a C string: `xx` is never seen.
        let (cmd, n) = parse(b"mg foo\0 xx\r\n").unwrap().unwrap();
        assert_eq!(n, 12);
        assert!(cmd.flags().unwrap().is_empty());
    }

    #[test]
    fn bad_flag_reply_bytes() {
        let e = parse(b"mg foo Y\r\n").unwrap_err();
        let mut out = BytesMut::new();
        e.write_ascii_reply(&mut out);
        assert_eq!(&out[..], b"CLIENT_ERROR invalid flag\r\n");
    }

    #[test]
    fn line_without_newline_past_the_limit_closes() {
        let limits = Limits {
            max_line_len: 64,
            ..Limits::default()
        };
        let long = [b'm'; 64];
        let e = parse_meta(&long, &limits).unwrap_err();
        assert_eq!(e.kind, ErrorKind::LineTooLong);
        assert!(e.is_fatal());
        assert_eq!(parse_meta(&long[..63], &limits), Ok(None));
    }

    #[test]
    fn accessors() {
        let buf = b"mg Zm9v b q\r\n";
        let (cmd, _) = parse(buf).unwrap().unwrap();
        assert!(cmd.base64() && cmd.quiet());
        assert_eq!(cmd.key().unwrap().of(buf), b"Zm9v");
        assert_eq!(MetaCommand::Noop.key(), None);
        assert!(!MetaCommand::Noop.quiet());
    }
}
