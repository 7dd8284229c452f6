//! Meta replies: `HD`, `VA <size>` + data, `EN`, `NF`, `NS`, `EX` (each with
//! return flags such as `k<key> O<opaque> c<cas> t<ttl> W X Z`), `MN`,
//! `ME <key> <k>=<v>*`, and the `ERROR`/`CLIENT_ERROR`/`SERVER_ERROR` lines.
//! [`parse_meta_reply`] is total, for a proxy reading a peer: any bytes give a
//! reply, "need more", or an error — a peer that sends garbage has lost sync,
//! so those errors close, except an over-large value, which can be skipped.
//! [`encode_meta_reply`] writes a parsed reply back (spans into a frame);
//! [`write_status`] and [`write_value`] build replies from typed
//! [`ReturnFlag`]s, as a node answering a request does.

use bytes::{BufMut, BytesMut};

use super::base64;
use super::token::{self, bytes, spans};
use crate::error::{ErrorKind, ParseError};
use crate::limits::Limits;
use crate::span::Span;
use crate::ParseResult;

/// Most return flags one reply may carry: one per request flag (at most 17)
/// plus `b W X Z`, with room to spare.
pub const MAX_REPLY_FLAGS: usize = 32;

/// The two-letter status codes that carry only flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// `HD`: success without a value.
    Hd,
    /// `EN`: miss (mg, me).
    En,
    /// `NF`: not found.
    Nf,
    /// `NS`: not stored.
    Ns,
    /// `EX`: CAS mismatch / exists.
    Ex,
}

impl Status {
    /// The wire code.
    pub const fn code(self) -> &'static [u8; 2] {
        match self {
            Status::Hd => b"HD",
            Status::En => b"EN",
            Status::Nf => b"NF",
            Status::Ns => b"NS",
            Status::Ex => b"EX",
        }
    }

    fn from_code(code: &[u8]) -> Option<Status> {
        match code {
            b"HD" => Some(Status::Hd),
            b"EN" => Some(Status::En),
            b"NF" => Some(Status::Nf),
            b"NS" => Some(Status::Ns),
            b"EX" => Some(Status::Ex),
            _ => None,
        }
    }
}

/// Which error line a peer sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorReply {
    /// `ERROR`: unknown command.
    Error,
    /// `CLIENT_ERROR <message>`.
    ClientError,
    /// `SERVER_ERROR <message>`.
    ServerError,
}

impl ErrorReply {
    /// The leading word.
    pub const fn word(self) -> &'static [u8] {
        match self {
            ErrorReply::Error => b"ERROR",
            ErrorReply::ClientError => b"CLIENT_ERROR",
            ErrorReply::ServerError => b"SERVER_ERROR",
        }
    }
}

/// One return flag as received: its character and the token after it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ReplyFlag {
    /// The flag character (`k`, `O`, `c`, …).
    pub flag: u8,
    /// The bytes after the character (empty for `W`, `X`, `Z`, `b`).
    pub token: Span,
}

/// The return flags of a reply, in wire order, without allocating.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyFlags {
    items: [ReplyFlag; MAX_REPLY_FLAGS],
    len: u8,
}

impl Default for ReplyFlags {
    fn default() -> Self {
        ReplyFlags::new()
    }
}

impl ReplyFlags {
    /// No flags.
    pub const fn new() -> Self {
        ReplyFlags {
            items: [ReplyFlag {
                flag: 0,
                token: Span::EMPTY,
            }; MAX_REPLY_FLAGS],
            len: 0,
        }
    }

    /// Number of flags.
    pub const fn len(&self) -> usize {
        self.len as usize
    }

    /// True when there are none.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Add a flag; false (and no change) when full.
    pub fn push(&mut self, flag: u8, token: Span) -> bool {
        match self.items.get_mut(usize::from(self.len)) {
            Some(slot) => {
                *slot = ReplyFlag { flag, token };
                self.len += 1;
                true
            }
            None => false,
        }
    }

    /// The flags in wire order.
    pub fn iter(&self) -> impl Iterator<Item = ReplyFlag> + '_ {
        self.items.iter().take(self.len()).copied()
    }

    /// The token of the first `flag`, if present (e.g. `b'O'` to match an
    /// opaque).
    pub fn get(&self, flag: u8) -> Option<Span> {
        self.iter().find(|f| f.flag == flag).map(|f| f.token)
    }

    /// The token of `flag` read as an unsigned decimal (`c`, `f`, `s`, `l`,
    /// `h`); `None` if absent or not a number.
    pub fn get_u64(&self, flag: u8, frame: &[u8]) -> Option<u64> {
        token::strict_u64(bytes(frame, self.get(flag)?))
    }

    /// `t`: seconds of TTL left, `-1` for none.
    pub fn ttl(&self, frame: &[u8]) -> Option<i64> {
        let tok = bytes(frame, self.get(b't')?);
        if tok == b"-1" {
            return Some(-1);
        }
        i64::try_from(token::strict_u64(tok)?).ok()
    }

    /// Append ` <flag><token>` for each flag.
    pub fn encode(&self, out: &mut BytesMut, frame: &[u8]) {
        for f in self.iter() {
            out.put_u8(b' ');
            out.put_u8(f.flag);
            out.put_slice(f.token.of(frame));
        }
    }
}

/// One meta reply, as spans into the frame it was parsed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetaReply {
    /// `HD`, `EN`, `NF`, `NS` or `EX` with return flags.
    Status {
        /// The code.
        status: Status,
        /// The return flags.
        flags: ReplyFlags,
    },
    /// `VA <size> <flags>*\r\n<data>\r\n`.
    Value {
        /// The return flags.
        flags: ReplyFlags,
        /// The data, without its CRLF.
        value: Span,
    },
    /// `MN`.
    Noop,
    /// `ME <key> <k>=<v>*`.
    Debug {
        /// The key as sent back (base64 if the request used `b`).
        key: Span,
        /// The `k=v` pairs, as one span.
        info: Span,
    },
    /// `ERROR`, `CLIENT_ERROR …` or `SERVER_ERROR …`.
    Error {
        /// Which one.
        kind: ErrorReply,
        /// The message after the word (may be empty).
        message: Span,
    },
}

/// A peer reply that cannot be read: the connection has lost sync.
fn garbage(reason: &'static str) -> ParseError {
    ParseError::close(ErrorKind::BadFormat, reason)
}

fn collect_flags(buf: &[u8], tokens: impl Iterator<Item = Span>) -> Result<ReplyFlags, ParseError> {
    let mut flags = ReplyFlags::new();
    for t in tokens {
        let flag = bytes(buf, t).first().copied().unwrap_or(0);
        let token = Span::new(t.start.saturating_add(1).min(t.end), t.end);
        if !flags.push(flag, token) {
            return Err(garbage("too many reply flags"));
        }
    }
    Ok(flags)
}

/// The rest of the line after `after`, without leading spaces.
fn rest(buf: &[u8], after: usize, end: usize) -> Span {
    let skip = buf
        .get(after..end)
        .map_or(0, |s| s.iter().take_while(|&&b| b == b' ').count());
    Span::new(after.saturating_add(skip).min(end), end)
}

/// Parse one meta reply from the start of `buf`.
pub fn parse_meta_reply(buf: &[u8], limits: &Limits) -> ParseResult<MetaReply> {
    let Some(line) = token::find_line(buf, limits, false)? else {
        return Ok(None);
    };
    let end = line.content_end;
    let mut tokens = spans(buf, 0, end);
    let Some(code) = tokens.next() else {
        return Err(garbage("empty reply line"));
    };
    let word = bytes(buf, code);
    let reply = if let Some(status) = Status::from_code(word) {
        MetaReply::Status {
            status,
            flags: collect_flags(buf, tokens)?,
        }
    } else {
        match word {
            b"VA" => {
                let size = tokens
                    .next()
                    .and_then(|t| token::strict_u64(bytes(buf, t)))
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| garbage("bad VA size"))?;
                let flags = collect_flags(buf, tokens)?;
                let total = line
                    .consumed
                    .checked_add(size)
                    .and_then(|n| n.checked_add(2))
                    .ok_or_else(|| garbage("bad VA size"))?;
                if size > limits.max_value_len {
                    return Err(ParseError::skip(
                        ErrorKind::TooLarge,
                        "object too large for cache",
                        total,
                    ));
                }
                let Some(block) = buf.get(line.consumed..total) else {
                    return Ok(None);
                };
                if !block.ends_with(b"\r\n") {
                    return Err(ParseError::close(ErrorKind::BadDataChunk, "bad data chunk"));
                }
                let value = Span::new(line.consumed, total - 2);
                return Ok(Some((MetaReply::Value { flags, value }, total)));
            }
            b"MN" => MetaReply::Noop,
            b"ME" => {
                let key = tokens.next().ok_or_else(|| garbage("ME without key"))?;
                MetaReply::Debug {
                    key,
                    info: rest(buf, key.end, end),
                }
            }
            b"ERROR" | b"CLIENT_ERROR" | b"SERVER_ERROR" => MetaReply::Error {
                kind: match word {
                    b"ERROR" => ErrorReply::Error,
                    b"CLIENT_ERROR" => ErrorReply::ClientError,
                    _ => ErrorReply::ServerError,
                },
                message: rest(buf, code.end, end),
            },
            _ => return Err(garbage("unknown meta reply")),
        }
    };
    Ok(Some((reply, line.consumed)))
}

/// Append `reply` in wire form; its spans resolve in `frame`.
pub fn encode_meta_reply(out: &mut BytesMut, reply: &MetaReply, frame: &[u8]) {
    match reply {
        MetaReply::Status { status, flags } => {
            out.put_slice(status.code());
            flags.encode(out, frame);
        }
        MetaReply::Value { flags, value } => {
            let value = value.of(frame);
            out.put_slice(b"VA ");
            token::put_u64(out, value.len() as u64);
            flags.encode(out, frame);
            out.put_slice(b"\r\n");
            out.put_slice(value);
        }
        MetaReply::Noop => out.put_slice(b"MN"),
        MetaReply::Debug { key, info } => {
            out.put_slice(b"ME ");
            out.put_slice(key.of(frame));
            put_rest(out, info.of(frame));
        }
        MetaReply::Error { kind, message } => {
            out.put_slice(kind.word());
            put_rest(out, message.of(frame));
        }
    }
    out.put_slice(b"\r\n");
}

fn put_rest(out: &mut BytesMut, rest: &[u8]) {
    if !rest.is_empty() {
        out.put_u8(b' ');
        out.put_slice(rest);
    }
}

// === Typed reply writing ===

/// A return flag with its value, for a node building a reply. Written in the
/// order given, which should be the request's flag order (memcached's), with
/// `W`, `X`, `Z` last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReturnFlag<'a> {
    /// `c<cas>`.
    Cas(u64),
    /// `f<flags>`.
    ClientFlags(u32),
    /// `h0` / `h1`.
    Hit(bool),
    /// `k<key>`, a key that is written as is.
    Key(&'a [u8]),
    /// `k<base64 key> b`: a binary key (stored decoded) written back
    /// base64-encoded, followed by `b`, as memcached does.
    KeyBase64(&'a [u8]),
    /// `l<seconds since last access>`.
    LastAccess(u64),
    /// `O<opaque>`.
    Opaque(&'a [u8]),
    /// `s<size>`.
    Size(u64),
    /// `t<seconds left>`, `-1` for no expiry.
    Ttl(i64),
    /// `W`: this client won the recache.
    Won,
    /// `X`: the item is stale.
    Stale,
    /// `Z`: another client already won.
    AlreadyWon,
}

fn put_flag(out: &mut BytesMut, flag: &ReturnFlag<'_>) {
    out.put_u8(b' ');
    match *flag {
        ReturnFlag::Cas(v) => {
            out.put_u8(b'c');
            token::put_u64(out, v);
        }
        ReturnFlag::ClientFlags(v) => {
            out.put_u8(b'f');
            token::put_u64(out, u64::from(v));
        }
        ReturnFlag::Hit(hit) => out.put_slice(if hit { b"h1" } else { b"h0" }),
        ReturnFlag::Key(key) => {
            out.put_u8(b'k');
            out.put_slice(key);
        }
        ReturnFlag::KeyBase64(key) => {
            out.put_u8(b'k');
            base64::encode_to(out, key);
            out.put_slice(b" b");
        }
        ReturnFlag::LastAccess(v) => {
            out.put_u8(b'l');
            token::put_u64(out, v);
        }
        ReturnFlag::Opaque(o) => {
            out.put_u8(b'O');
            out.put_slice(o);
        }
        ReturnFlag::Size(v) => {
            out.put_u8(b's');
            token::put_u64(out, v);
        }
        ReturnFlag::Ttl(v) => {
            out.put_u8(b't');
            token::put_i64(out, v);
        }
        ReturnFlag::Won => out.put_u8(b'W'),
        ReturnFlag::Stale => out.put_u8(b'X'),
        ReturnFlag::AlreadyWon => out.put_u8(b'Z'),
    }
}

/// Append `<status> <flags>*\r\n`.
pub fn write_status(out: &mut BytesMut, status: Status, flags: &[ReturnFlag<'_>]) {
    out.put_slice(status.code());
    flags.iter().for_each(|f| put_flag(out, f));
    out.put_slice(b"\r\n");
}

/// Append `VA <len> <flags>*\r\n<value>\r\n`.
pub fn write_value(out: &mut BytesMut, flags: &[ReturnFlag<'_>], value: &[u8]) {
    out.reserve(value.len().saturating_add(16));
    out.put_slice(b"VA ");
    token::put_u64(out, value.len() as u64);
    flags.iter().for_each(|f| put_flag(out, f));
    out.put_slice(b"\r\n");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Recovery;

    fn parse(buf: &[u8]) -> ParseResult<MetaReply> {
        parse_meta_reply(buf, &Limits::default())
    }

    fn roundtrip(buf: &[u8]) -> MetaReply {
        let (reply, n) = parse(buf).unwrap().unwrap();
        assert_eq!(n, buf.len());
        let mut out = BytesMut::new();
        encode_meta_reply(&mut out, &reply, buf);
        assert_eq!(&out[..], buf);
        reply
    }

    /// Replies captured from memcached 1.6.18.
    const CAPTURED: &[&[u8]] = &[
        b"HD\r\n",
        b"HD c1\r\n",
        b"HD O12 kfoo\r\n",
        b"EN\r\n",
        b"EN kZg== b\r\n",
        b"EN Oaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
        b"NF O3\r\n",
        b"NS\r\n",
        b"EX\r\n",
        b"MN\r\n",
        b"VA 1 kfoo O12\r\nx\r\n",
        b"VA 2 c23 s2 t-1 f0 h0 l0 kfoo O5\r\nab\r\n",
        b"VA 1 c27 X W\r\nx\r\n",
        b"VA 0 W\r\n\r\n",
        b"VA 1 t-1 c21 O7 kx1\r\n0\r\n",
        b"ME foo exp=-1 la=54 cas=1 fetch=yes cls=1 size=65\r\n",
        b"ERROR\r\n",
        b"CLIENT_ERROR bad data chunk\r\n",
        b"SERVER_ERROR object too large for cache\r\n",
    ];

    #[test]
    fn captured_replies_roundtrip() {
        for buf in CAPTURED {
            roundtrip(buf);
        }
        let buf = b"VA 2 c23 s2 t-1 f0 h0 l0 kfoo O5\r\nab\r\n";
        match roundtrip(buf) {
            MetaReply::Value { flags, value } => {
                assert_eq!(value.of(buf), b"ab");
                assert_eq!(flags.get_u64(b'c', buf), Some(23));
                assert_eq!(flags.ttl(buf), Some(-1));
                assert_eq!(flags.get(b'O').unwrap().of(buf), b"5");
                assert_eq!(flags.get(b'q'), None);
            }
            other => panic!("{:?}", other),
        }
        match roundtrip(b"CLIENT_ERROR bad data chunk\r\n") {
            MetaReply::Error { kind, message } => {
                assert_eq!(kind, ErrorReply::ClientError);
                assert_eq!(message.len(), 14);
            }
            other => panic!("{:?}", other),
        }
    }

    #[test]
    fn pipelined_replies_and_prefixes() {
        let all: Vec<u8> = CAPTURED.concat();
        let mut rest = &all[..];
        let mut count = 0;
        while !rest.is_empty() {
            let (_, n) = parse(rest).unwrap().unwrap();
            for cut in 0..n {
                assert_eq!(parse(&rest[..cut]), Ok(None));
            }
            rest = &rest[n..];
            count += 1;
        }
        assert_eq!(count, CAPTURED.len());
    }

    #[test]
    fn bare_lf_and_trailing_spaces_are_read() {
        assert!(matches!(
            parse(b"HD  k1 \n").unwrap().unwrap(),
            (MetaReply::Status { status: Status::Hd, flags }, 8) if flags.len() == 1
        ));
    }

    #[test]
    fn garbage_closes() {
        for buf in [
            &b"XX\r\n"[..],
            b"\r\n",
            b"VA\r\n",
            b"VA x\r\n",
            b"VA -1\r\n",
            b"ME\r\n",
            b"OK\r\n",
        ] {
            let e = parse(buf).unwrap_err();
            assert!(e.is_fatal(), "{:?}", buf);
        }
        let e = parse(b"VA 1\r\nxyz").unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadDataChunk);
        let mut many = b"HD".to_vec();
        for _ in 0..=MAX_REPLY_FLAGS {
            many.extend_from_slice(b" W");
        }
        many.extend_from_slice(b"\r\n");
        assert!(parse(&many).unwrap_err().is_fatal());
    }

    #[test]
    fn oversize_value_can_be_skipped() {
        let limits = Limits {
            max_value_len: 4,
            ..Limits::default()
        };
        let e = parse_meta_reply(b"VA 5 O1\r\n", &limits).unwrap_err();
        assert_eq!(e.kind, ErrorKind::TooLarge);
        assert_eq!(e.recovery, Recovery::Skip(9 + 5 + 2));
        assert!(parse_meta_reply(b"VA 4 O1\r\nab", &limits)
            .unwrap()
            .is_none());
    }

    #[test]
    fn typed_writers_match_memcached() {
        let mut out = BytesMut::new();
        write_value(
            &mut out,
            &[
                ReturnFlag::Cas(23),
                ReturnFlag::Size(2),
                ReturnFlag::Ttl(-1),
                ReturnFlag::ClientFlags(0),
                ReturnFlag::Hit(false),
                ReturnFlag::LastAccess(0),
                ReturnFlag::Key(b"foo"),
                ReturnFlag::Opaque(b"5"),
            ],
            b"ab",
        );
        assert_eq!(&out[..], b"VA 2 c23 s2 t-1 f0 h0 l0 kfoo O5\r\nab\r\n");
        out.clear();
        write_status(&mut out, Status::En, &[ReturnFlag::KeyBase64(b"f")]);
        assert_eq!(&out[..], b"EN kZg== b\r\n");
        out.clear();
        write_status(
            &mut out,
            Status::Hd,
            &[
                ReturnFlag::Hit(true),
                ReturnFlag::AlreadyWon,
                ReturnFlag::Stale,
                ReturnFlag::Won,
            ],
        );
        assert_eq!(&out[..], b"HD h1 Z X W\r\n");
        out.clear();
        write_status(&mut out, Status::Nf, &[]);
        write_status(&mut out, Status::Ns, &[]);
        write_status(&mut out, Status::Ex, &[]);
        assert_eq!(&out[..], b"NF\r\nNS\r\nEX\r\n");
    }
}
