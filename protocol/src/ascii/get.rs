//! Retrieval: `get|gets <key>+` and `gat|gats <exptime> <key>+`. A multi-get
//! is parsed without allocating: [`Get`] keeps one [`Span`] over the key list
//! and [`Get::keys`] walks it, while the parser has already checked every
//! key's length and counted them. memcached 1.6.18 rejects the whole command
//! with `CLIENT_ERROR bad command line format` if any key is too long, even
//! after hits (verified: `get a <251 bytes>` answers only the error, no
//! `VALUE a`), so validating up front changes nothing a client can see.

use bytes::{BufMut, BytesMut};

use super::line::{
    is_valid_key, put_i64, slice, strtol32, CommandLine, Words, BAD_EXPTIME, BAD_FORMAT,
};
use crate::{Exptime, ParseError, Span};

/// Which retrieval verb, with the exptime of the touching ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GetVerb {
    /// `get`: values (the undocumented alias `bget` parses as this too;
    /// memcached answers it identically).
    Get,
    /// `gets`: values with their CAS unique.
    Gets,
    /// `gat <exptime>`: get and touch.
    Gat {
        /// The new expiry for every key found.
        exptime: Exptime,
    },
    /// `gats <exptime>`: get and touch, with CAS uniques.
    Gats {
        /// The new expiry for every key found.
        exptime: Exptime,
    },
}

impl GetVerb {
    /// The verb as sent on the wire.
    pub const fn name(&self) -> &'static str {
        match self {
            GetVerb::Get => "get",
            GetVerb::Gets => "gets",
            GetVerb::Gat { .. } => "gat",
            GetVerb::Gats { .. } => "gats",
        }
    }

    /// True when each `VALUE` line carries the item's CAS unique.
    pub const fn returns_cas(&self) -> bool {
        matches!(self, GetVerb::Gets | GetVerb::Gats { .. })
    }

    /// The touch exptime of `gat`/`gats`; `None` for plain gets.
    pub const fn exptime(&self) -> Option<Exptime> {
        match self {
            GetVerb::Gat { exptime } | GetVerb::Gats { exptime } => Some(*exptime),
            GetVerb::Get | GetVerb::Gets => None,
        }
    }
}

/// A parsed `get`, `gets`, `gat` or `gats`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Get {
    /// Which verb.
    pub verb: GetVerb,
    /// From the first key to the end of the last, spaces included; walk it
    /// with [`Get::keys`].
    pub keys: Span,
    /// How many keys. At least 1 for `get`/`gets`; `gat 10` with no key is
    /// valid and answers just `END` (verified against memcached 1.6.18).
    pub key_count: usize,
}

impl Get {
    /// The key spans, in request order, without allocating.
    pub fn keys<'a>(&self, frame: &'a [u8]) -> Words<'a> {
        Words::new(frame, self.keys)
    }

    /// Write this request, one space between keys.
    pub fn encode(&self, out: &mut BytesMut, frame: &[u8]) {
        encode_get(out, self.verb, self.keys(frame).map(|k| k.of(frame)));
    }
}

/// Parse a retrieval line whose verb (token 0) was `verb`; for the touching
/// verbs token 1 is the exptime and `verb`'s own exptime is ignored.
pub(crate) fn parse(cl: &CommandLine<'_>, verb: GetVerb) -> Result<Get, ParseError> {
    // memcached: WANT_TOKENS_MIN(ntokens, 3) — the verb and one more token.
    if cl.count() < 2 {
        return Err(cl.wrong_arity());
    }
    let (verb, first_key) = match verb {
        GetVerb::Get | GetVerb::Gets => (verb, 1),
        GetVerb::Gat { .. } | GetVerb::Gats { .. } => {
            let exptime = strtol32(cl.token(1))
                .map(|t| Exptime(i64::from(t)))
                .ok_or_else(|| cl.client_error(BAD_EXPTIME, false))?;
            let verb = if matches!(verb, GetVerb::Gat { .. }) {
                GetVerb::Gat { exptime }
            } else {
                GetVerb::Gats { exptime }
            };
            (verb, 2)
        }
    };
    let start = cl.span(first_key).start;
    let keys = Span::new(start, cl.tokens.last().end.max(start));
    let mut key_count = 0usize;
    for key in Words::new(cl.buf, keys) {
        if !is_valid_key(slice(cl.buf, key), cl.limits) {
            return Err(cl.client_error(BAD_FORMAT, false));
        }
        key_count = key_count.saturating_add(1);
    }
    Ok(Get {
        verb,
        keys,
        key_count,
    })
}

/// Write `<verb> [<exptime>] <key>+\r\n`.
pub fn encode_get<'k>(out: &mut BytesMut, verb: GetVerb, keys: impl IntoIterator<Item = &'k [u8]>) {
    out.put_slice(verb.name().as_bytes());
    if let Some(exptime) = verb.exptime() {
        out.put_u8(b' ');
        put_i64(out, exptime.0);
    }
    for key in keys {
        out.put_u8(b' ');
        out.put_slice(key);
    }
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ascii::{parse_command, Command};
    use crate::{ErrorKind, Limits, Recovery};

    fn get(buf: &[u8]) -> (Get, usize) {
        match parse_command(buf, &Limits::default()) {
            Ok(Some((Command::Get(g), n))) => (g, n),
            other => panic!("{other:?}"),
        }
    }

    fn keys(buf: &[u8]) -> Vec<&[u8]> {
        let (g, _) = get(buf);
        g.keys(buf).map(|k| k.of(buf)).collect()
    }

    fn err(buf: &[u8]) -> crate::ParseError {
        parse_command(buf, &Limits::default()).unwrap_err()
    }

    #[test]
    fn single_and_multi_key_get() {
        let (g, n) = get(b"get foo\r\n");
        assert_eq!(
            (g.verb, g.keys, g.key_count, n),
            (GetVerb::Get, Span::new(4, 7), 1, 9)
        );
        assert_eq!(keys(b"get a bb ccc\r\n"), [b"a".as_slice(), b"bb", b"ccc"]);
        assert_eq!(get(b"get a bb ccc\r\n").0.key_count, 3);
        assert_eq!(get(b"gets a b\r\n").0.verb, GetVerb::Gets);
        assert!(get(b"gets a\r\n").0.verb.returns_cas());
    }

    #[test]
    fn gat_and_gats_carry_a_signed_exptime() {
        let (g, n) = get(b"gat 100 k1 k2\r\n");
        assert_eq!(
            g.verb,
            GetVerb::Gat {
                exptime: Exptime(100)
            }
        );
        assert_eq!((g.key_count, n), (2, 15));
        assert_eq!(keys(b"gat 100 k1 k2\r\n"), [b"k1".as_slice(), b"k2"]);
        let (g, _) = get(b"gats -1 k\r\n");
        assert_eq!(
            g.verb,
            GetVerb::Gats {
                exptime: Exptime(-1)
            }
        );
        assert!(g.verb.returns_cas());
    }

    #[test]
    fn gat_with_no_key_is_valid_like_memcached() {
        let (g, n) = get(b"gat 10\r\n");
        assert_eq!((g.key_count, n), (0, 8));
        assert_eq!(keys(b"gat 10\r\n"), Vec::<&[u8]>::new());
    }

    #[test]
    fn gat_bad_exptime_is_a_client_error() {
        let e = err(b"gat abc a\r\n");
        assert_eq!(
            (e.kind, e.reason, e.recovery),
            (ErrorKind::BadFormat, BAD_EXPTIME, Recovery::Skip(11))
        );
    }

    #[test]
    fn get_without_keys_is_error_not_client_error() {
        for buf in [
            &b"get\r\n"[..],
            b"get \r\n",
            b"gets\r\n",
            b"gat\r\n",
            b"gats  \r\n",
        ] {
            let e = err(buf);
            assert_eq!(
                (e.kind, e.recovery),
                (ErrorKind::UnknownCommand, Recovery::Skip(buf.len()))
            );
        }
    }

    #[test]
    fn repeated_and_trailing_spaces_are_tolerated() {
        assert_eq!(keys(b"   get  a   b  \r\n"), [b"a".as_slice(), b"b"]);
        assert_eq!(get(b"get a \r\n").0.keys, Span::new(4, 5));
    }

    #[test]
    fn bare_lf_line_ending() {
        let (g, n) = get(b"get a\n");
        assert_eq!((g.keys, n), (Span::new(4, 5), 6));
    }

    #[test]
    fn bget_is_an_alias_of_get() {
        assert_eq!(get(b"bget a\r\n").0.verb, GetVerb::Get);
    }

    #[test]
    fn any_long_key_rejects_the_whole_get() {
        let mut buf = b"get a ".to_vec();
        buf.extend_from_slice(&[b'k'; 251]);
        buf.extend_from_slice(b" b\r\n");
        let e = err(&buf);
        assert_eq!(
            (e.kind, e.reason, e.recovery),
            (ErrorKind::BadFormat, BAD_FORMAT, Recovery::Skip(buf.len()))
        );
        let mut ok = b"get ".to_vec();
        ok.extend_from_slice(&[b'k'; 250]);
        ok.extend_from_slice(b"\r\n");
        assert_eq!(get(&ok).0.key_count, 1);
    }

    #[test]
    fn control_characters_in_keys_are_rejected() {
        // A deliberate deviation: memcached 1.6.18 looks up "a\r" here.
        assert_eq!(err(b"get a\r\r\n").kind, ErrorKind::BadFormat);
        assert_eq!(err(b"get a\tb\r\n").kind, ErrorKind::BadFormat);
    }

    #[test]
    fn every_proper_prefix_needs_more() {
        let buf = b"gats 5 alpha beta\r\n";
        for i in 0..buf.len() {
            assert_eq!(
                parse_command(&buf[..i], &Limits::default()),
                Ok(None),
                "prefix {i}"
            );
        }
    }

    #[test]
    fn encode_is_canonical() {
        let buf = b"get  a   b \r\n";
        let (g, _) = get(buf);
        let mut out = BytesMut::new();
        g.encode(&mut out, buf);
        assert_eq!(&out[..], b"get a b\r\n");
        out.clear();
        encode_get(
            &mut out,
            GetVerb::Gats {
                exptime: Exptime(-7),
            },
            [b"x".as_slice()],
        );
        assert_eq!(&out[..], b"gats -7 x\r\n");
    }
}
