//! Storage: `set|add|replace|append|prepend <key> <flags> <exptime> <bytes>
//! [noreply]` and `cas <key> <flags> <exptime> <bytes> <cas unique>
//! [noreply]`, each followed by a `<bytes>`-long data block and CRLF. The
//! checks run in memcached 1.6.18's order (`process_update_command`): token
//! count (`ERROR`), key, numbers, length range (`CLIENT_ERROR bad command line
//! format`, the data block is *not* swallowed, so memcached then answers it
//! as a command — verified), then size (`SERVER_ERROR object too large for
//! cache`, the data block *is* swallowed), and only then do we wait for the
//! data block, which must end in CRLF (`CLIENT_ERROR bad data chunk`; memcached
//! has consumed `<bytes>+2` bytes and resumes right after them — verified).

use bytes::{BufMut, BytesMut};

use super::line::{put_i64, put_u64, strtol32, strtoul32, strtoull, CommandLine, BAD_FORMAT};
use crate::{ErrorKind, Exptime, ParseResult, Span};

/// memcached rejects a length over `INT_MAX - 2` as a format error before
/// asking the allocator (`vlen < 0 || vlen > (INT_MAX - 2)`).
const MAX_DECLARED_LEN: i32 = i32::MAX - 2;

/// Which storage verb; `cas` carries its unique.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StoreVerb {
    /// `set`: store unconditionally.
    Set,
    /// `add`: store only if absent.
    Add,
    /// `replace`: store only if present.
    Replace,
    /// `append`: add the data after the existing value.
    Append,
    /// `prepend`: add the data before the existing value.
    Prepend,
    /// `cas`: store only if the item's CAS unique still matches.
    Cas {
        /// The CAS unique the client last saw (`gets`).
        unique: u64,
    },
}

impl StoreVerb {
    /// The verb as sent on the wire.
    pub const fn name(&self) -> &'static str {
        match self {
            StoreVerb::Set => "set",
            StoreVerb::Add => "add",
            StoreVerb::Replace => "replace",
            StoreVerb::Append => "append",
            StoreVerb::Prepend => "prepend",
            StoreVerb::Cas { .. } => "cas",
        }
    }
}

/// A parsed storage command with its data block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Store {
    /// Which verb.
    pub verb: StoreVerb,
    /// The key.
    pub key: Span,
    /// Opaque client flags (memcached truncates the decimal to 32 bits).
    pub flags: u32,
    /// Expiry, as sent (memcached truncates the decimal to 32 bits).
    pub exptime: Exptime,
    /// The data block, without its CRLF.
    pub value: Span,
    /// The last token was `noreply`.
    pub noreply: bool,
}

impl Store {
    /// Write this request and its data block.
    pub fn encode(&self, out: &mut BytesMut, frame: &[u8]) {
        encode_store(
            out,
            self.verb,
            self.key.of(frame),
            self.flags,
            self.exptime,
            self.value.of(frame),
            self.noreply,
        );
    }
}

/// Parse a storage command whose verb (token 0) was `verb`; for `cas` the
/// unique is read from token 5 and `verb`'s own is ignored.
pub(crate) fn parse(cl: &CommandLine<'_>, verb: StoreVerb) -> ParseResult<Store> {
    let is_cas = matches!(verb, StoreVerb::Cas { .. });
    // WANT_TOKENS_OR(ntokens, 6, 7) / (7, 8): memcached counts a terminal
    // token too. A surplus last token that is not `noreply` is ignored
    // (verified: `set b 5 0 1 garbage` stores).
    let needed = if is_cas { 6 } else { 5 };
    if cl.count() != needed && cl.count() != needed + 1 {
        return Err(cl.wrong_arity());
    }
    let noreply = cl.noreply();
    let bad = || cl.client_error(BAD_FORMAT, noreply);
    let key = cl.key(1, noreply)?;
    let flags = strtoul32(cl.token(2)).ok_or_else(bad)?;
    let exptime = strtol32(cl.token(3)).ok_or_else(bad)?;
    let declared = strtol32(cl.token(4)).ok_or_else(bad)?;
    let verb = if is_cas {
        StoreVerb::Cas {
            unique: strtoull(cl.token(5)).ok_or_else(bad)?,
        }
    } else {
        verb
    };
    if !(0..=MAX_DECLARED_LEN).contains(&declared) {
        return Err(bad());
    }
    let len = usize::try_from(declared).map_err(|_| bad())?;
    let start = cl.line.consumed;
    let value_end = start.saturating_add(len);
    let total = value_end.saturating_add(2);
    if len > cl.limits.max_value_len {
        // Swallow the data block as memcached's conn_swallow does, even if
        // it has not arrived: the connection discards it as it comes.
        let error = cl.error(
            ErrorKind::TooLarge,
            "object too large for cache",
            noreply,
            total,
        );
        // memcached unlinks the key only for `set` (process_update_command:
        // "avoid stale data persisting in cache because we failed alloc").
        return Err(if verb == StoreVerb::Set {
            error.with_key(key)
        } else {
            error
        });
    }
    let Some(trailer) = cl.buf.get(value_end..total) else {
        return Ok(None);
    };
    if trailer != b"\r\n" {
        return Err(cl.error(ErrorKind::BadDataChunk, "bad data chunk", noreply, total));
    }
    let store = Store {
        verb,
        key,
        flags,
        exptime: Exptime(i64::from(exptime)),
        value: Span::new(start, value_end),
        noreply,
    };
    Ok(Some((store, total)))
}

/// Write `<verb> <key> <flags> <exptime> <bytes> [<cas unique>] [noreply]\r\n`
/// then the data block and CRLF.
pub fn encode_store(
    out: &mut BytesMut,
    verb: StoreVerb,
    key: &[u8],
    flags: u32,
    exptime: Exptime,
    value: &[u8],
    noreply: bool,
) {
    out.reserve(key.len().saturating_add(value.len()).saturating_add(64));
    out.put_slice(verb.name().as_bytes());
    out.put_u8(b' ');
    out.put_slice(key);
    out.put_u8(b' ');
    put_u64(out, u64::from(flags));
    out.put_u8(b' ');
    put_i64(out, exptime.0);
    out.put_u8(b' ');
    put_u64(out, value.len() as u64);
    if let StoreVerb::Cas { unique } = verb {
        out.put_u8(b' ');
        put_u64(out, unique);
    }
    if noreply {
        out.put_slice(b" noreply");
    }
    out.put_slice(b"\r\n");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ascii::{parse_command, Command};
    use crate::{Limits, ParseError, Recovery};

    fn store(buf: &[u8]) -> (Store, usize) {
        match parse_command(buf, &Limits::default()) {
            Ok(Some((Command::Store(s), n))) => (s, n),
            other => panic!("{other:?}"),
        }
    }

    fn err(buf: &[u8]) -> ParseError {
        parse_command(buf, &Limits::default()).unwrap_err()
    }

    #[test]
    fn every_storage_verb() {
        for (verb, name) in [
            (StoreVerb::Set, "set"),
            (StoreVerb::Add, "add"),
            (StoreVerb::Replace, "replace"),
            (StoreVerb::Append, "append"),
            (StoreVerb::Prepend, "prepend"),
        ] {
            let buf = format!("{name} key 5 -1 3\r\nabc\r\n");
            let (s, n) = store(buf.as_bytes());
            assert_eq!(n, buf.len());
            assert_eq!(s.verb, verb);
            assert_eq!(s.key.of(buf.as_bytes()), b"key");
            assert_eq!((s.flags, s.exptime, s.noreply), (5, Exptime(-1), false));
            assert_eq!(s.value.of(buf.as_bytes()), b"abc");
        }
    }

    #[test]
    fn cas_carries_its_unique() {
        let buf = b"cas k 0 0 1 18446744073709551615\r\nx\r\n";
        let (s, n) = store(buf);
        assert_eq!(s.verb, StoreVerb::Cas { unique: u64::MAX });
        assert_eq!((s.value, n), (Span::new(34, 35), buf.len()));
        let (s, _) = store(b"cas k 0 0 1 7 noreply\r\nx\r\n");
        assert_eq!((s.verb, s.noreply), (StoreVerb::Cas { unique: 7 }, true));
    }

    #[test]
    fn noreply_and_ignored_surplus_token() {
        assert!(store(b"set k 0 0 1 noreply\r\nx\r\n").0.noreply);
        // memcached ignores a sixth token that is not `noreply`.
        let (s, n) = store(b"set k 0 0 1 garbage\r\nx\r\n");
        assert_eq!((s.noreply, n), (false, 24));
    }

    #[test]
    fn empty_value_and_binary_data() {
        let (s, n) = store(b"set k 0 0 0\r\n\r\n");
        assert_eq!((s.value, n), (Span::new(13, 13), 15));
        let buf = b"set k 0 0 4\r\n\r\n\0\n\r\n";
        assert_eq!(store(buf).0.value.of(buf), b"\r\n\0\n");
    }

    #[test]
    fn numbers_wrap_like_memcached() {
        // Verified against memcached 1.6.18: flags 4294967297 read back as 1.
        assert_eq!(store(b"set k 4294967297 0 1\r\nx\r\n").0.flags, 1);
        assert_eq!(store(b"set k +5 4294967296 1\r\nx\r\n").0.flags, 5);
        assert_eq!(
            store(b"set k 0 4294967296 1\r\nx\r\n").0.exptime,
            Exptime(0)
        );
        assert_eq!(store(b"set k 0 0 4294967297\r\nx\r\n").0.value.len(), 1);
    }

    #[test]
    fn trailing_whitespace_and_bare_lf() {
        let (s, n) = store(b"set k 1 2 1   \r\nx\r\n");
        assert_eq!((s.flags, s.exptime, n), (1, Exptime(2), 19));
        let (s, n) = store(b"set k 1 2 1\nx\r\n");
        assert_eq!((s.value, n), (Span::new(12, 13), 15));
    }

    #[test]
    fn wrong_token_count_is_error() {
        for buf in [
            &b"set k 0 0\r\n"[..],
            b"set k 0 0 1 noreply x\r\n",
            b"cas k 0 0 1\r\n",
            b"append\r\n",
        ] {
            let e = err(buf);
            assert_eq!(
                (e.kind, e.recovery),
                (ErrorKind::UnknownCommand, Recovery::Skip(buf.len()))
            );
        }
    }

    #[test]
    fn bad_line_skips_only_the_line_not_the_data() {
        let mut long = b"set ".to_vec();
        long.extend_from_slice(&[b'k'; 251]);
        long.extend_from_slice(b" 0 0 1\r\n");
        let line_len = long.len();
        long.extend_from_slice(b"x\r\n");
        for (buf, n) in [
            (&long[..], line_len),
            (b"set k -1 0 1\r\nx\r\n", 14),
            (b"set k 0 x 1\r\nx\r\n", 13),
            (b"set k 0 0 -1\r\n", 14),
            (b"set k 0 0 4294967295\r\n", 22),
            (b"set k 0 0 2147483646\r\n", 22),
            (b"cas k 0 0 1 -1\r\nx\r\n", 16),
            (b"cas k 0 0 1 abc\r\nx\r\n", 17),
            (b"set a\x01b 0 0 1\r\nx\r\n", 15),
        ] {
            let e = err(buf);
            assert_eq!(
                (e.kind, e.reason, e.recovery),
                (ErrorKind::BadFormat, BAD_FORMAT, Recovery::Skip(n))
            );
        }
    }

    #[test]
    fn noreply_silences_errors_like_memcached() {
        let e = err(b"set k 0 x 1 noreply\r\nx\r\n");
        assert_eq!(
            (e.kind, e.recovery),
            (ErrorKind::NoReply, Recovery::Skip(21))
        );
        // `noreply` as the length token: asked for noreply, then bad format.
        assert_eq!(err(b"set k 0 0 noreply\r\n").kind, ErrorKind::NoReply);
        let mut out = BytesMut::new();
        e.write_ascii_reply(&mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn too_large_swallows_the_data_block_without_waiting() {
        let limits = Limits {
            max_value_len: 10,
            ..Limits::default()
        };
        let e = parse_command(b"set k 0 0 11\r\n", &limits).unwrap_err();
        assert_eq!(
            (e.kind, e.recovery),
            (ErrorKind::TooLarge, Recovery::Skip(14 + 11 + 2))
        );
        let e = parse_command(b"set k 0 0 2147483645 noreply\r\n", &Limits::default()).unwrap_err();
        assert_eq!(
            (e.kind, e.reason),
            (ErrorKind::NoReply, "object too large for cache")
        );
        assert_eq!(e.recovery, Recovery::Skip(30 + 2147483645 + 2));
        assert!(parse_command(b"set k 0 0 10\r\n0123456789\r\n", &limits)
            .unwrap()
            .is_some());
    }

    #[test]
    fn bad_data_chunk_skips_the_declared_block() {
        // memcached reads <bytes>+2 ("xy\r"), answers bad data chunk, then
        // reads "\n" as an empty command (ERROR) — verified.
        let buf = b"set k 0 0 1\r\nxy\r\n";
        let e = err(buf);
        assert_eq!(
            (e.kind, e.reason, e.recovery),
            (
                ErrorKind::BadDataChunk,
                "bad data chunk",
                Recovery::Skip(16)
            )
        );
        let rest = parse_command(&buf[16..], &Limits::default()).unwrap_err();
        assert_eq!(rest.kind, ErrorKind::UnknownCommand);
        // A bare LF does not end a data block.
        assert_eq!(
            err(b"set k 0 0 1\r\nx\nget b\n").recovery,
            Recovery::Skip(16)
        );
        assert_eq!(
            err(b"set k 0 0 1 noreply\r\nxy\r\n").kind,
            ErrorKind::NoReply
        );
    }

    #[test]
    fn every_proper_prefix_needs_more() {
        for buf in [
            &b"set k 1 2 5\r\nhello\r\n"[..],
            b"cas k 1 2 0 9 noreply\r\n\r\n",
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
    fn encode_writes_the_canonical_form() {
        let mut out = BytesMut::new();
        encode_store(
            &mut out,
            StoreVerb::Cas { unique: 9 },
            b"k",
            3,
            Exptime(-1),
            b"ab",
            true,
        );
        assert_eq!(&out[..], b"cas k 3 -1 2 9 noreply\r\nab\r\n");
        let buf = b"set  k 1 2 1  \r\nx\r\n";
        let (s, _) = store(buf);
        out.clear();
        s.encode(&mut out, buf);
        assert_eq!(&out[..], b"set k 1 2 1\r\nx\r\n");
    }
}
