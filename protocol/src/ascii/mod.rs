//! The classic ASCII (text) protocol, as memcached 1.6.18 speaks it.
//!
//! Modules, one verb family each, holding its parse, encode and tests:
//! - `line` (private): finding the line (`memchr`, CRLF or bare LF, bounded by
//!   [`Limits::max_line_len`]), tokenising, key validation, C-style numbers;
//! - [`get`]: `get gets gat gats` (and the legacy alias `bget`);
//! - [`store`]: `set add replace append prepend cas` and their data block;
//! - [`delete`], [`arith`] (`incr decr`), [`touch`];
//! - [`admin`]: `flush_all version verbosity stats quit`;
//! - [`reply`]: every reply form, parse and encode.
//!
//! [`parse_command`] is the single dispatch. It follows memcached's
//! `process_command_ascii` token rules where a client can tell: a known verb
//! with the wrong number of tokens is `ERROR`, malformed arguments are
//! `CLIENT_ERROR …` (and, like memcached, *silent* when the command's last
//! token is `noreply`: [`ErrorKind::NoReply`]), tokens are split on spaces
//! only, and the command ends at a NUL byte (memcached tokenises with
//! `strlen`; verified: `get a\0zz` looks up `a`). Meta commands (`mg`, `ms`,
//! …) are not classic verbs and come back as unknown here; they belong to
//! [`crate::meta`]. memcached's other operator verbs (`slabs`, `lru_crawler`,
//! `watch`, `shutdown`, `cache_memlimit`, `lru`, `extstore`) are unknown too.
//!
//! Deliberate deviations: keys with control characters are refused with
//! `CLIENT_ERROR bad command line format` (protocol.txt forbids them;
//! memcached does not check), and every line, multi-gets included, is bounded
//! by [`Limits::max_line_len`] (memcached lets `get` lines grow unbounded).
//!
//! [`ErrorKind::NoReply`]: crate::ErrorKind::NoReply

pub mod admin;
pub mod arith;
pub mod delete;
pub mod get;
mod line;
pub mod reply;
pub mod store;
pub mod touch;

#[cfg(test)]
mod proptests;

use bytes::BytesMut;

pub use admin::{
    encode_flush_all, encode_quit, encode_stats, encode_verbosity, encode_version,
    stats_detail_reply, FlushAll, Stats, Verbosity,
};
pub use arith::{encode_arith, Arith, ArithVerb};
pub use delete::{encode_delete, Delete};
pub use get::{encode_get, Get, GetVerb};
pub use line::Words;
pub use reply::{
    encode_client_error, encode_number, encode_reply, encode_server_error, encode_stat,
    encode_value, encode_version_reply, parse_reply, Reply, Value,
};
pub use store::{encode_store, Store, StoreVerb};
pub use touch::{encode_touch, Touch};

use crate::{ErrorKind, Exptime, Limits, ParseError, ParseResult, Span};
use line::{CommandLine, Tokens};

/// A classic ASCII request. Spans point into the frame it was parsed from,
/// which starts at the first byte given to [`parse_command`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    /// `get`, `gets`, `gat`, `gats`.
    Get(Get),
    /// `set`, `add`, `replace`, `append`, `prepend`, `cas`.
    Store(Store),
    /// `delete`.
    Delete(Delete),
    /// `incr`, `decr`.
    Arith(Arith),
    /// `touch`.
    Touch(Touch),
    /// `flush_all`.
    FlushAll(FlushAll),
    /// `verbosity`.
    Verbosity(Verbosity),
    /// `stats`.
    Stats(Stats),
    /// `version`.
    Version,
    /// `quit`: close the connection without a reply.
    Quit,
}

impl Command {
    /// The verb as sent on the wire (`bget` reports `get`).
    pub const fn name(&self) -> &'static str {
        match self {
            Command::Get(g) => g.verb.name(),
            Command::Store(s) => s.verb.name(),
            Command::Delete(_) => "delete",
            Command::Arith(a) => a.verb.name(),
            Command::Touch(_) => "touch",
            Command::FlushAll(_) => "flush_all",
            Command::Verbosity(_) => "verbosity",
            Command::Stats(_) => "stats",
            Command::Version => "version",
            Command::Quit => "quit",
        }
    }

    /// True when the client asked not to be answered.
    pub const fn noreply(&self) -> bool {
        match self {
            Command::Store(Store { noreply, .. })
            | Command::Delete(Delete { noreply, .. })
            | Command::Arith(Arith { noreply, .. })
            | Command::Touch(Touch { noreply, .. })
            | Command::FlushAll(FlushAll { noreply, .. })
            | Command::Verbosity(Verbosity { noreply, .. }) => *noreply,
            Command::Get(_) | Command::Stats(_) | Command::Version | Command::Quit => false,
        }
    }

    /// The key of a single-key command (`None` for gets and admin verbs).
    pub const fn key(&self) -> Option<Span> {
        match self {
            Command::Store(Store { key, .. })
            | Command::Delete(Delete { key, .. })
            | Command::Arith(Arith { key, .. })
            | Command::Touch(Touch { key, .. }) => Some(*key),
            Command::Get(_)
            | Command::FlushAll(_)
            | Command::Verbosity(_)
            | Command::Stats(_)
            | Command::Version
            | Command::Quit => None,
        }
    }
}

/// Parse one command from the start of `buf`.
///
/// Returns the command and the bytes it used (line and, for storage
/// commands, data block), `Ok(None)` when `buf` is a valid prefix that needs
/// more bytes, or the error with what the client should hear and how many
/// bytes to skip (possibly more than `buf` holds, for an oversized value).
pub fn parse_command(buf: &[u8], limits: &Limits) -> ParseResult<Command> {
    let Some(mut line) = line::find_line(buf, limits.max_line_len)? else {
        return Ok(None);
    };
    // memcached tokenises the line as a C string: a NUL ends it.
    let content = buf.get(..line.end).unwrap_or(&[]);
    line.end = memchr::memchr(0, content).unwrap_or(line.end);
    let cl = CommandLine {
        buf,
        line,
        tokens: Tokens::new(buf, line.end),
        limits,
    };
    let done = |cmd: Command| Ok(Some((cmd, line.consumed)));
    let verb = cl.token(0);
    if cl.count() == 0 || verb.len() < 2 {
        return Err(ParseError::skip(
            ErrorKind::UnknownCommand,
            line::UNKNOWN,
            line.consumed,
        ));
    }
    // Placeholders: the verb parsers read the real exptime and unique.
    let (t, unique) = (Exptime::NEVER, 0);
    match verb {
        b"get" | b"bget" => done(Command::Get(get::parse(&cl, GetVerb::Get)?)),
        b"gets" => done(Command::Get(get::parse(&cl, GetVerb::Gets)?)),
        b"gat" => done(Command::Get(get::parse(&cl, GetVerb::Gat { exptime: t })?)),
        b"gats" => done(Command::Get(get::parse(&cl, GetVerb::Gats { exptime: t })?)),
        b"set" => store(&cl, StoreVerb::Set),
        b"add" => store(&cl, StoreVerb::Add),
        b"replace" => store(&cl, StoreVerb::Replace),
        b"append" => store(&cl, StoreVerb::Append),
        b"prepend" => store(&cl, StoreVerb::Prepend),
        b"cas" => store(&cl, StoreVerb::Cas { unique }),
        b"delete" => done(Command::Delete(delete::parse(&cl)?)),
        b"incr" => done(Command::Arith(arith::parse(&cl, ArithVerb::Incr)?)),
        b"decr" => done(Command::Arith(arith::parse(&cl, ArithVerb::Decr)?)),
        b"touch" => done(Command::Touch(touch::parse(&cl)?)),
        b"flush_all" => done(Command::FlushAll(admin::parse_flush_all(&cl)?)),
        b"verbosity" => done(Command::Verbosity(admin::parse_verbosity(&cl)?)),
        b"stats" => done(Command::Stats(admin::parse_stats(&cl))),
        b"version" => done(Command::Version),
        b"quit" => done(Command::Quit),
        _ => Err(unknown_command(&cl, line.consumed)),
    }
}

/// An unknown command: `ERROR`, or for an HTTP request line a silent
/// close, as memcached's `process_command_ascii` does.
fn unknown_command(cl: &CommandLine<'_>, consumed: usize) -> ParseError {
    let last = cl.token(cl.count().saturating_sub(1));
    if last.starts_with(b"HTTP/") {
        return ParseError::close(ErrorKind::HttpRequest, "HTTP request on the data port");
    }
    ParseError::skip(ErrorKind::UnknownCommand, line::UNKNOWN, consumed)
}

/// The storage arm of the dispatch: it alone may need more than the line.
fn store(cl: &CommandLine<'_>, verb: StoreVerb) -> ParseResult<Command> {
    Ok(store::parse(cl, verb)?.map(|(s, n)| (Command::Store(s), n)))
}

/// Write `cmd` (parsed from `frame`) in canonical form: single spaces, no
/// legacy `delete … 0`, `bget` as `get`.
pub fn encode_command(out: &mut BytesMut, cmd: &Command, frame: &[u8]) {
    match cmd {
        Command::Get(g) => g.encode(out, frame),
        Command::Store(s) => s.encode(out, frame),
        Command::Delete(d) => d.encode(out, frame),
        Command::Arith(a) => a.encode(out, frame),
        Command::Touch(t) => t.encode(out, frame),
        Command::FlushAll(f) => encode_flush_all(out, f.delay, f.noreply),
        Command::Verbosity(v) => encode_verbosity(out, v.level, v.noreply),
        Command::Stats(s) => s.encode(out, frame),
        Command::Version => encode_version(out),
        Command::Quit => encode_quit(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Recovery;

    fn parse(buf: &[u8]) -> ParseResult<Command> {
        parse_command(buf, &Limits::default())
    }

    #[test]
    fn http_request_lines_close_silently() {
        for buf in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"POST /x HTTP/1.0\r\n",
            b"HEAD HTTP/2\r\n",
        ] {
            let e = parse(buf).unwrap_err();
            assert_eq!(
                (e.kind, e.recovery),
                (ErrorKind::HttpRequest, Recovery::Close)
            );
            let mut out = BytesMut::new();
            e.write_ascii_reply(&mut out);
            assert!(out.is_empty(), "memcached says nothing before closing");
        }
        // A known verb with an `HTTP/` token is not an HTTP request.
        assert!(parse(b"get HTTP/1.1\r\n").unwrap().is_some());
    }

    #[test]
    fn unknown_commands_are_error_and_skip_the_line() {
        for buf in [
            &b"bogus a b\r\n"[..],
            b"GET a\r\n",
            b"x\r\n",
            b"\r\n",
            b"\n",
            b"   \r\n",
            b"mn\r\n",
            b"slabs reassign 1 2\r\n",
            b"get_a\r\n",
        ] {
            let e = parse(buf).unwrap_err();
            assert_eq!(
                (e.kind, e.recovery),
                (ErrorKind::UnknownCommand, Recovery::Skip(buf.len())),
                "{buf:?}"
            );
            let mut out = BytesMut::new();
            e.write_ascii_reply(&mut out);
            assert_eq!(&out[..], b"ERROR\r\n");
        }
    }

    #[test]
    fn incomplete_line_needs_more() {
        assert_eq!(parse(b""), Ok(None));
        assert_eq!(parse(b"get a"), Ok(None));
        assert_eq!(parse(b"get a\r"), Ok(None));
        assert_eq!(parse(b"bogus"), Ok(None));
    }

    #[test]
    fn line_too_long_closes() {
        let limits = Limits {
            max_line_len: 16,
            ..Limits::default()
        };
        let e = parse_command(b"get aaaaaaaaaaaaaaaaaaaaa", &limits).unwrap_err();
        assert_eq!(
            (e.kind, e.recovery),
            (ErrorKind::LineTooLong, Recovery::Close)
        );
        assert_eq!(parse_command(b"get aaaaaaaaaa", &limits), Ok(None));
        // Only the line is bounded, not the data block after it.
        let (cmd, n) = parse_command(b"set k 0 0 20\r\n01234567890123456789\r\n", &limits)
            .unwrap()
            .unwrap();
        assert_eq!((cmd.name(), n), ("set", 36));
    }

    #[test]
    fn nul_ends_the_command_like_memcached() {
        let buf = b"get a\0zz\r\n";
        let (cmd, n) = parse(buf).unwrap().unwrap();
        let Command::Get(g) = cmd else {
            panic!("{cmd:?}")
        };
        assert_eq!((g.keys, g.key_count, n), (Span::new(4, 5), 1, 10));
        let (cmd, n) = parse(b"set k 0 0 1\0junk\r\nx\r\n").unwrap().unwrap();
        assert_eq!((cmd.name(), n), ("set", 21));
        assert_eq!(
            parse(b"\0get a\r\n").unwrap_err().kind,
            ErrorKind::UnknownCommand
        );
    }

    #[test]
    fn pipelined_commands_parse_in_sequence() {
        let buf =
            b"set a 0 0 1\r\nx\r\nget a b\r\nincr n 1 noreply\r\ndelete a\nversion\r\nquit\r\n";
        let mut at = 0;
        let mut names = Vec::new();
        while let Some((cmd, n)) = parse(&buf[at..]).unwrap() {
            names.push(cmd.name());
            at += n;
        }
        assert_eq!(at, buf.len());
        assert_eq!(names, ["set", "get", "incr", "delete", "version", "quit"]);
    }

    #[test]
    fn pipelined_errors_resume_where_memcached_does() {
        // memcached 1.6.18 answers this stream with
        // CLIENT_ERROR bad command line format, ERROR (the data line), VERSION.
        let buf = b"set k -1 0 1\r\nx\r\nversion\r\n";
        let mut at = 0;
        let mut replies = BytesMut::new();
        while at < buf.len() {
            match parse(&buf[at..]) {
                Ok(Some((cmd, n))) => {
                    assert_eq!(cmd, Command::Version);
                    encode_version_reply(&mut replies, b"1.6.18");
                    at += n;
                }
                Err(e) => {
                    e.write_ascii_reply(&mut replies);
                    let Recovery::Skip(n) = e.recovery else {
                        panic!()
                    };
                    at += n;
                }
                Ok(None) => panic!("stalled at {at}"),
            }
        }
        assert_eq!(
            &replies[..],
            b"CLIENT_ERROR bad command line format\r\nERROR\r\nVERSION 1.6.18\r\n"
        );
    }

    #[test]
    fn command_accessors() {
        let buf = b"touch k 1 noreply\r\n";
        let (cmd, _) = parse(buf).unwrap().unwrap();
        assert!(cmd.noreply());
        assert_eq!(cmd.key().map(|k| k.of(buf)), Some(b"k".as_slice()));
        assert_eq!(Command::Version.key(), None);
        assert_eq!(parse(b"bget a\r\n").unwrap().unwrap().0.name(), "get");
    }

    #[test]
    fn encode_command_is_canonical() {
        let buf = b"delete  k 0\r\nbget a  b\r\nflush_all 0\r\n";
        let mut at = 0;
        let mut out = BytesMut::new();
        while let Some((cmd, n)) = parse(&buf[at..]).unwrap() {
            encode_command(&mut out, &cmd, &buf[at..]);
            at += n;
        }
        assert_eq!(&out[..], b"delete k\r\nget a b\r\nflush_all\r\n");
    }
}
