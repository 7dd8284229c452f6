//! `ms <key> <datalen> <flags>*\r\n<data>\r\n` — meta set. The only meta verb
//! with a data block, so the only one whose errors must say how much of the
//! stream to throw away: like memcached 1.6.18, errors found before `datalen`
//! is known (key too long, no or bad datalen, too many flags) drop only the
//! line, while every later error (bad flag, bad mode, value too large) also
//! drops `datalen + 2` bytes of data, unread, and a data block that does not
//! end in `\r\n` is consumed whole and answered `bad data chunk`.

use bytes::{BufMut, BytesMut};

use super::flags::{self, Flag, MetaFlags};
use super::token::{self, bytes};
use super::{check_key, Request, BAD_FORMAT};
use crate::error::{ErrorKind, ParseError};
use crate::limits::Limits;
use crate::span::Span;
use crate::ParseResult;

/// memcached rejects a `datalen` above `INT_MAX - 2` (it adds the CRLF to it
/// in an `int`) as a bad command line, before any size check.
const MAX_DATALEN: i32 = i32::MAX - 2;

/// What an `ms` does, from its `M` flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SetMode {
    /// `MS` or no `M`: store unconditionally (a CAS compare if `C` is given).
    Set,
    /// `ME`: store only if absent ("add").
    Add,
    /// `MA`: append to an existing value.
    Append,
    /// `MP`: prepend to an existing value.
    Prepend,
    /// `MR`: store only if present ("replace").
    Replace,
}

impl SetMode {
    /// The mode for an `M` character; memcached 1.6.18 accepts upper case only.
    pub fn from_byte(b: u8) -> Option<SetMode> {
        match b {
            b'S' => Some(SetMode::Set),
            b'E' => Some(SetMode::Add),
            b'A' => Some(SetMode::Append),
            b'P' => Some(SetMode::Prepend),
            b'R' => Some(SetMode::Replace),
            _ => None,
        }
    }

    /// The `M` character for this mode.
    pub const fn byte(self) -> u8 {
        match self {
            SetMode::Set => b'S',
            SetMode::Add => b'E',
            SetMode::Append => b'A',
            SetMode::Prepend => b'P',
            SetMode::Replace => b'R',
        }
    }
}

/// A parsed `ms` with its data block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetaSet {
    /// The key as sent (still base64 when `base64` is set).
    pub key: Span,
    /// `b`: the key is base64.
    pub base64: bool,
    /// The declared data length; always `value.len()` after parsing.
    pub datalen: usize,
    /// The data block, without its trailing CRLF.
    pub value: Span,
    /// The other flags, in request order.
    pub flags: MetaFlags,
}

impl MetaSet {
    /// `q`: success (`HD`) is not answered.
    pub fn quiet(&self) -> bool {
        self.flags.has(Flag::Quiet)
    }

    /// The mode; [`SetMode::Set`] when `M` is absent (or, for a hand-built
    /// command only, not a valid mode).
    pub fn mode(&self) -> SetMode {
        self.flags
            .mode()
            .and_then(SetMode::from_byte)
            .unwrap_or(SetMode::Set)
    }

    /// Append `ms <key> <len> [b] <flags>\r\n<value>\r\n`. The length written
    /// is `value.len()`, so the frame always stays in sync.
    pub fn encode(&self, out: &mut BytesMut, frame: &[u8]) {
        let value = self.value.of(frame);
        out.put_slice(b"ms ");
        out.put_slice(self.key.of(frame));
        out.put_u8(b' ');
        token::put_u64(out, value.len() as u64);
        if self.base64 {
            out.put_slice(b" b");
        }
        self.flags.encode(out, frame);
        out.put_slice(b"\r\n");
        out.put_slice(value);
        out.put_slice(b"\r\n");
    }
}

/// Parse an `ms` line and, once buffered, its data block.
pub(crate) fn parse(req: &Request<'_>, limits: &Limits) -> ParseResult<MetaSet> {
    let line_len = req.line.consumed;
    let skip_line = |reason| ParseError::skip(ErrorKind::BadFormat, reason, line_len);
    let key = check_key(req, limits)?;
    let Some(datalen_tok) = req.tokens.get(2) else {
        return Err(skip_line(BAD_FORMAT));
    };
    if req.tokens.len() > token::MAX_META_TOKENS {
        return Err(skip_line("options flags too long"));
    }
    let datalen = match token::c_i32(bytes(req.buf, datalen_tok)) {
        Some(n) if (0..=MAX_DATALEN).contains(&n) => n as usize,
        _ => return Err(skip_line(BAD_FORMAT)),
    };
    // From here on memcached swallows the data block after an error.
    let Some(total) = line_len.checked_add(datalen).and_then(|n| n.checked_add(2)) else {
        return Err(ParseError::close(
            ErrorKind::TooLarge,
            "object too large for cache",
        ));
    };
    let swallow = |kind, reason| ParseError::skip(kind, reason, total);
    let bad = |reason| swallow(ErrorKind::BadFormat, reason);

    let parsed = flags::parse(req.buf, key, req.tokens.from(3)).map_err(bad)?;
    if parsed
        .flags
        .mode()
        .is_some_and(|m| SetMode::from_byte(m).is_none())
    {
        return Err(bad("invalid mode for ms M token"));
    }
    if flags::opaque_too_long(&parsed.flags) {
        return Err(bad("opaque token too long"));
    }
    if datalen > limits.max_value_len {
        let error = swallow(ErrorKind::TooLarge, "object too large for cache");
        // memcached unlinks the key for the plain set mode only; a base64
        // key would need decoding to name the item, so it is left alone.
        let set_mode = matches!(parsed.flags.mode(), None | Some(b'S') | Some(b's'));
        return Err(if set_mode && !parsed.base64 {
            error.with_key(key)
        } else {
            error
        });
    }
    let Some(block) = req.buf.get(line_len..total) else {
        return Ok(None);
    };
    if !block.ends_with(b"\r\n") {
        return Err(swallow(ErrorKind::BadDataChunk, "bad data chunk"));
    }
    let value = Span::new(line_len, total - 2);
    Ok(Some((
        MetaSet {
            key,
            base64: parsed.base64,
            datalen,
            value,
            flags: parsed.flags,
        },
        total,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::{parse_meta, MetaCommand};
    use crate::{Exptime, Recovery};

    fn set(buf: &[u8]) -> (MetaSet, usize) {
        match parse_meta(buf, &Limits::default()) {
            Ok(Some((MetaCommand::Set(s), n))) => (s, n),
            other => panic!("{:?}", other),
        }
    }

    fn err(buf: &[u8]) -> ParseError {
        parse_meta(buf, &Limits::default()).unwrap_err()
    }

    #[test]
    fn set_with_flags() {
        let buf = b"ms foo 3 T90 F5 c k O9 MR C12 I\r\nabc\r\nmn\r\n";
        let (s, n) = set(buf);
        assert_eq!(n, buf.len() - 4);
        assert_eq!(s.key.of(buf), b"foo");
        assert_eq!(s.value.of(buf), b"abc");
        assert_eq!(s.datalen, 3);
        assert_eq!(s.mode(), SetMode::Replace);
        assert_eq!(s.flags.ttl(), Some(Exptime(90)));
        assert_eq!(s.flags.client_flags(), Some(5));
        assert_eq!(s.flags.compare_cas(), Some(12));
        assert!(s.flags.has(Flag::Invalidate) && !s.quiet());
    }

    #[test]
    fn empty_value_bare_lf_line_and_odd_datalen() {
        let (s, n) = set(b"ms foo 0 q\r\n\r\n");
        assert_eq!((s.value.len(), n), (0, 14));
        assert!(s.quiet());
        assert_eq!(s.mode(), SetMode::Set);
        // The line may end in a bare LF; the data block may not.
        assert_eq!(set(b"ms foo 3\nabc\r\n").1, 14);
        // memcached's strtol: sign and leading zeros accepted, and a value is
        // truncated to 32 bits (4294967299 is 3).
        assert_eq!(set(b"ms foo +003\r\nabc\r\n").0.datalen, 3);
        assert_eq!(set(b"ms foo 4294967299\r\nabc\r\n").0.datalen, 3);
        assert_eq!(set(b"ms foo -0\r\n\r\n").0.datalen, 0);
        assert!(set(b"ms Zm9v 1 b\r\nx\r\n").0.base64);
    }

    #[test]
    fn incomplete_data_waits() {
        let buf = b"ms foo 3 T0\r\nabc\r\n";
        for cut in 0..buf.len() {
            assert_eq!(
                parse_meta(&buf[..cut], &Limits::default()),
                Ok(None),
                "{cut}"
            );
        }
    }

    #[test]
    fn errors_before_datalen_drop_only_the_line() {
        // memcached then reads the data block as a command (ERROR).
        for line in [
            &b"ms foo\r\n"[..],
            b"ms foo bar\r\n",
            b"ms foo 3x\r\n",
            b"ms foo -1\r\n",
            b"ms foo 2147483646\r\n",
        ] {
            let e = err(line);
            assert_eq!(e.reason, "bad command line format", "{:?}", line);
            assert_eq!(e.recovery, Recovery::Skip(line.len()));
        }
        let many = b"ms foo 1 b c f h k l q s t v u O1 N1 R1 T1 P1 L1\r\n";
        assert_eq!(err(many).reason, "options flags too long");
        assert_eq!(err(many).recovery, Recovery::Skip(many.len()));
        let mut long = b"ms ".to_vec();
        long.extend_from_slice(&[b'k'; 251]);
        long.extend_from_slice(b" 1\r\n");
        assert_eq!(err(&long).recovery, Recovery::Skip(long.len()));
    }

    #[test]
    fn later_errors_swallow_the_data() {
        let cases: &[(&[u8], &str)] = &[
            (b"ms foo 2 Fx\r\n", "bad command line format"),
            (b"ms foo 2 Tx Fx\r\n", "bad token in command line format"),
            (b"ms foo 2 E5 Y\r\n", "invalid flag"),
            (b"ms foo 2 b\r\n", "error decoding key"),
            (b"ms foo 2 Ms\r\n", "invalid mode for ms M token"),
            (
                b"ms foo 2 O12345678901234567890123456789012 Mx\r\n",
                "invalid mode for ms M token",
            ),
            (
                b"ms foo 2 O12345678901234567890123456789012\r\n",
                "opaque token too long",
            ),
        ];
        for (line, reason) in cases {
            let e = err(line);
            assert_eq!(e.kind, ErrorKind::BadFormat);
            assert_eq!(e.reason, *reason, "{:?}", line);
            assert_eq!(e.recovery, Recovery::Skip(line.len() + 4));
        }
    }

    #[test]
    fn oversize_value_is_skipped_unread() {
        let limits = Limits {
            max_value_len: 10,
            ..Limits::default()
        };
        let line = b"ms foo 2000000 T0\r\n";
        let e = parse_meta(line, &limits).unwrap_err();
        assert_eq!(e.kind, ErrorKind::TooLarge);
        assert_eq!(e.recovery, Recovery::Skip(line.len() + 2_000_002));
        let mut reply = BytesMut::new();
        e.write_ascii_reply(&mut reply);
        assert_eq!(&reply[..], b"SERVER_ERROR object too large for cache\r\n");
        assert!(parse_meta(b"ms foo 10\r\n", &limits).unwrap().is_none());
    }

    #[test]
    fn bad_data_chunk_consumes_the_block() {
        for buf in [&b"ms foo 3\r\nabcde\r\n"[..], b"ms foo 3\r\nabc\n\n"] {
            let e = err(buf);
            assert_eq!(e.kind, ErrorKind::BadDataChunk);
            assert_eq!(e.recovery, Recovery::Skip(15));
            let mut reply = BytesMut::new();
            e.write_ascii_reply(&mut reply);
            assert_eq!(&reply[..], b"CLIENT_ERROR bad data chunk\r\n");
        }
    }

    #[test]
    fn encode_uses_the_value_length() {
        let frame = b"keyvalue";
        let s = MetaSet {
            key: Span::new(0, 3),
            base64: false,
            datalen: 99,
            value: Span::new(3, 8),
            flags: MetaFlags::new().with_mode(SetMode::Add.byte()),
        };
        let mut out = BytesMut::new();
        s.encode(&mut out, frame);
        assert_eq!(&out[..], b"ms key 5 ME\r\nvalue\r\n");
        assert_eq!(SetMode::from_byte(b'e'), None);
    }
}
