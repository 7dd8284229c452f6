//! The shared machinery under every ASCII verb: finding a line with `memchr`
//! (CRLF or bare LF, bounded by [`Limits::max_line_len`]), splitting it into
//! space-separated tokens the way memcached 1.6's `tokenize_command` does,
//! reading numbers exactly as memcached's `safe_strto*` helpers do (C
//! `strtoul`/`strtol` semantics, including their quirks), validating keys, the
//! one place that builds the errors a command line can produce, and a decimal
//! writer so encoders never allocate.

use bytes::{BufMut, BytesMut};

use crate::{ErrorKind, Limits, ParseError, Span};

/// memcached's reason for malformed arguments and over-long keys.
pub(crate) const BAD_FORMAT: &str = "bad command line format";
/// memcached's reason for an unparsable exptime (`touch`, `gat`, `flush_all`).
pub(crate) const BAD_EXPTIME: &str = "invalid exptime argument";
/// memcached's reason for an unparsable `incr`/`decr` delta.
pub(crate) const BAD_DELTA: &str = "invalid numeric delta argument";
/// The reason carried by [`ErrorKind::UnknownCommand`] (the reply is `ERROR`).
pub(crate) const UNKNOWN: &str = "unknown command";
/// The reason carried by a wrong number of tokens (memcached answers `ERROR`).
pub(crate) const WRONG_ARITY: &str = "wrong number of tokens";

/// A complete line at the start of the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Line {
    /// End of the line's content: before the LF and a CR right before it.
    pub end: usize,
    /// Bytes up to and including the LF.
    pub consumed: usize,
}

/// Find the first line of `buf`, or `None` if its LF has not arrived.
///
/// The LF is searched for only within `max_line_len` bytes, so a client that
/// never sends one is refused as soon as that many bytes are buffered rather
/// than after we buffered more. memcached accepts a bare LF and strips one CR
/// before it (`try_read_command_ascii`); so do we.
pub(crate) fn find_line(buf: &[u8], max_line_len: usize) -> Result<Option<Line>, ParseError> {
    let window = buf.get(..max_line_len).unwrap_or(buf);
    match memchr::memchr(b'\n', window) {
        Some(lf) => {
            let end = match lf.checked_sub(1) {
                Some(cr) if window.get(cr) == Some(&b'\r') => cr,
                _ => lf,
            };
            Ok(Some(Line {
                end,
                consumed: lf.saturating_add(1),
            }))
        }
        None if buf.len() >= max_line_len => {
            Err(ParseError::close(ErrorKind::LineTooLong, "line too long"))
        }
        None => Ok(None),
    }
}

/// The bytes `span` covers in `buf`, or nothing if it does not fit (never
/// panics, unlike [`Span::of`]).
pub(crate) fn slice(buf: &[u8], span: Span) -> &[u8] {
    buf.get(span.start..span.end).unwrap_or(&[])
}

// === impl Words ===

/// A zero-allocation iterator over the space-separated words of a span of a
/// frame, yielding each word's [`Span`] (offsets into the frame). Runs of
/// spaces are skipped, as memcached's tokenizer does. Used for the keys of a
/// multi-get and the arguments of `stats`.
#[derive(Clone, Debug)]
pub struct Words<'a> {
    frame: &'a [u8],
    pos: usize,
    end: usize,
}

impl<'a> Words<'a> {
    /// The words of `frame[span]`. A span outside `frame` yields no words.
    pub fn new(frame: &'a [u8], span: Span) -> Words<'a> {
        let end = span.end.min(frame.len());
        Words {
            frame,
            pos: span.start.min(end),
            end,
        }
    }
}

impl Iterator for Words<'_> {
    type Item = Span;

    fn next(&mut self) -> Option<Span> {
        let rest = self.frame.get(self.pos..self.end)?;
        let skip = rest.iter().position(|&b| b != b' ')?;
        let start = self.pos.saturating_add(skip);
        let word = self.frame.get(start..self.end)?;
        let len = memchr::memchr(b' ', word).unwrap_or(word.len());
        self.pos = start.saturating_add(len);
        Some(Span::new(start, self.pos))
    }
}

// === impl Tokens ===

/// How many leading tokens [`Tokens`] keeps; `cas` has the most (7).
const KEPT_TOKENS: usize = 8;

/// The tokens of a command line: the first few kept by span, all counted.
/// memcached counts up to 24 tokens and rejects every verb's wrong count long
/// before that, so counting every token is equivalent and needs no storage.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tokens {
    spans: [Span; KEPT_TOKENS],
    count: usize,
    last: Span,
}

impl Tokens {
    /// Tokenise `buf[..end]`, splitting on spaces only (memcached does not
    /// split on tabs or other whitespace).
    pub(crate) fn new(buf: &[u8], end: usize) -> Tokens {
        let mut tokens = Tokens {
            spans: [Span::EMPTY; KEPT_TOKENS],
            count: 0,
            last: Span::new(end, end),
        };
        for span in Words::new(buf, Span::new(0, end)) {
            if let Some(slot) = tokens.spans.get_mut(tokens.count) {
                *slot = span;
            }
            tokens.count = tokens.count.saturating_add(1);
            tokens.last = span;
        }
        tokens
    }

    /// Number of tokens on the line.
    pub(crate) fn count(&self) -> usize {
        self.count
    }

    /// The span of token `i`, if kept.
    pub(crate) fn span(&self, i: usize) -> Option<Span> {
        if i < self.count {
            self.spans.get(i).copied()
        } else {
            None
        }
    }

    /// The span of the last token (an empty span at the line end if none).
    pub(crate) fn last(&self) -> Span {
        self.last
    }
}

// === impl CommandLine ===

/// A tokenised command line plus what a verb parser needs to finish the job.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CommandLine<'a> {
    /// The whole input; the frame starts at `buf[0]`.
    pub buf: &'a [u8],
    /// Where the line ends.
    pub line: Line,
    /// Its tokens; token 0 is the verb.
    pub tokens: Tokens,
    /// The bounds in force.
    pub limits: &'a Limits,
}

impl<'a> CommandLine<'a> {
    /// Bytes of token `i`; empty when there is no such token.
    pub(crate) fn token(&self, i: usize) -> &'a [u8] {
        self.tokens
            .span(i)
            .and_then(|s| self.buf.get(s.start..s.end))
            .unwrap_or(&[])
    }

    /// Span of token `i`; an empty span at the line end when there is none.
    pub(crate) fn span(&self, i: usize) -> Span {
        self.tokens
            .span(i)
            .unwrap_or(Span::new(self.line.end, self.line.end))
    }

    /// Number of tokens, the verb included.
    pub(crate) fn count(&self) -> usize {
        self.tokens.count()
    }

    /// memcached's `set_noreply_maybe`: the *last* token is `noreply`,
    /// wherever that falls (so `set k 0 0 noreply` asks for noreply and then
    /// fails on its length — silently).
    pub(crate) fn noreply(&self) -> bool {
        let last = self.tokens.last();
        self.buf.get(last.start..last.end) == Some(b"noreply".as_slice())
    }

    /// `ERROR`: wrong token count for a known verb; skip the line.
    pub(crate) fn wrong_arity(&self) -> ParseError {
        ParseError::skip(ErrorKind::UnknownCommand, WRONG_ARITY, self.line.consumed)
    }

    /// `CLIENT_ERROR <reason>`, or nothing at all if the command asked for
    /// noreply: memcached's `out_string` honours noreply for errors too.
    pub(crate) fn client_error(&self, reason: &'static str, noreply: bool) -> ParseError {
        self.error(ErrorKind::BadFormat, reason, noreply, self.line.consumed)
    }

    /// An error of `kind` (or [`ErrorKind::NoReply`]) skipping `skip` bytes.
    pub(crate) fn error(
        &self,
        kind: ErrorKind,
        reason: &'static str,
        noreply: bool,
        skip: usize,
    ) -> ParseError {
        let kind = if noreply { ErrorKind::NoReply } else { kind };
        ParseError::skip(kind, reason, skip)
    }

    /// Validate token `i` as a key: `CLIENT_ERROR bad command line format`
    /// when it is missing, too long or not a valid key.
    pub(crate) fn key(&self, i: usize, noreply: bool) -> Result<Span, ParseError> {
        let key = self.token(i);
        if is_valid_key(key, self.limits) {
            Ok(self.span(i))
        } else {
            Err(self.client_error(BAD_FORMAT, noreply))
        }
    }
}

/// A key is 1..=`max_key_len` bytes with no space or control character.
///
/// memcached 1.6.18 itself only checks the length (verified: `set a\tb …` is
/// stored), but protocol.txt forbids control characters and Shoal enforces
/// that; spaces cannot occur because they separate tokens.
pub(crate) fn is_valid_key(key: &[u8], limits: &Limits) -> bool {
    !key.is_empty() && key.len() <= limits.max_key_len && key.iter().all(|&b| b > b' ' && b != 0x7f)
}

// === numbers, the C way ===

/// C's `isspace` in the "C" locale.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// `strtoull`/`strtoll` core over a token: leading C whitespace, an optional
/// sign, at least one digit, then the token's end or a C whitespace byte (the
/// `safe_strto*` acceptance rule). Returns `(negative, magnitude)`, with
/// `None` for no digits, a bad trailer, or a magnitude over `u64` (`ERANGE`).
fn c_number(tok: &[u8]) -> Option<(bool, u64)> {
    let mut i = tok.iter().take_while(|&&b| is_c_space(b)).count();
    let negative = match tok.get(i) {
        Some(b'-') => {
            i = i.saturating_add(1);
            true
        }
        Some(b'+') => {
            i = i.saturating_add(1);
            false
        }
        _ => false,
    };
    let digits = tok.get(i..).unwrap_or(&[]);
    let n = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    if n == 0 {
        return None;
    }
    match digits.get(n) {
        None => {}
        Some(&b) if is_c_space(b) => {}
        Some(_) => return None,
    }
    let mut value: u64 = 0;
    for &d in digits.get(..n).unwrap_or(&[]) {
        value = value
            .checked_mul(10)?
            .checked_add(u64::from(d.wrapping_sub(b'0')))?;
    }
    Some((negative, value))
}

/// memcached's `safe_strtoull`: a `u64`. A `-` is accepted when the wrapped
/// result still looks non-negative as an `i64` (so `-0` is 0, and, faithfully,
/// `-18446744073709551615` is 1).
pub(crate) fn strtoull(tok: &[u8]) -> Option<u64> {
    let (negative, magnitude) = c_number(tok)?;
    let value = if negative {
        magnitude.wrapping_neg()
    } else {
        magnitude
    };
    if (value as i64) < 0 && tok.contains(&b'-') {
        return None;
    }
    Some(value)
}

/// memcached's `safe_strtoul` on LP64: parsed as 64-bit `strtoul`, then
/// truncated to `u32` (verified: flags `4294967297` come back as `1`).
pub(crate) fn strtoul32(tok: &[u8]) -> Option<u32> {
    strtoull(tok).map(|v| v as u32)
}

/// memcached's `safe_strtol` on LP64: parsed as 64-bit `strtol` (`ERANGE`
/// beyond `i64`), then truncated to `i32` (verified: `touch k 4294967296`
/// touches with exptime 0).
pub(crate) fn strtol32(tok: &[u8]) -> Option<i32> {
    let (negative, magnitude) = c_number(tok)?;
    let value = if negative {
        0i64.checked_sub_unsigned(magnitude)?
    } else {
        i64::try_from(magnitude).ok()?
    };
    Some(value as i32)
}

/// A reply's number: ASCII digits only, fitting `u64`. Replies are written by
/// servers, so none of the C leniency applies.
pub(crate) fn strict_u64(tok: &[u8]) -> Option<u64> {
    if tok.is_empty() || tok.len() > 20 {
        return None;
    }
    tok.iter().try_fold(0u64, |acc, &b| {
        if b.is_ascii_digit() {
            acc.checked_mul(10)?
                .checked_add(u64::from(b.wrapping_sub(b'0')))
        } else {
            None
        }
    })
}

// === decimal writer ===

/// Append `n` in decimal without allocating.
pub(crate) fn put_u64(out: &mut BytesMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at = at.saturating_sub(1);
        if let Some(slot) = digits.get_mut(at) {
            *slot = b'0'.wrapping_add((n % 10) as u8);
        }
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(digits.get(at..).unwrap_or(&[]));
}

/// Append `n` in decimal (with a leading `-` when negative) without allocating.
pub(crate) fn put_i64(out: &mut BytesMut, n: i64) {
    if n < 0 {
        out.put_u8(b'-');
    }
    put_u64(out, n.unsigned_abs());
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 64;

    #[test]
    fn finds_crlf_and_bare_lf_lines() {
        assert_eq!(
            find_line(b"get a\r\nx", MAX),
            Ok(Some(Line {
                end: 5,
                consumed: 7
            }))
        );
        assert_eq!(
            find_line(b"get a\nx", MAX),
            Ok(Some(Line {
                end: 5,
                consumed: 6
            }))
        );
        assert_eq!(
            find_line(b"\n", MAX),
            Ok(Some(Line {
                end: 0,
                consumed: 1
            }))
        );
        assert_eq!(find_line(b"get a\r", MAX), Ok(None));
        assert_eq!(find_line(b"", MAX), Ok(None));
    }

    #[test]
    fn only_one_cr_is_stripped() {
        // memcached strips a single CR; a second one stays in the last token.
        assert_eq!(
            find_line(b"ab\r\r\n", MAX),
            Ok(Some(Line {
                end: 3,
                consumed: 5
            }))
        );
    }

    #[test]
    fn line_too_long_is_refused_before_buffering_more() {
        let buf = [b'a'; MAX];
        let err = find_line(&buf, MAX).unwrap_err();
        assert_eq!(err.kind, ErrorKind::LineTooLong);
        assert!(err.is_fatal());
        assert_eq!(find_line(&buf[..MAX - 1], MAX), Ok(None));
        // The LF as the very last allowed byte still fits.
        let mut buf = [b'a'; MAX];
        buf[MAX - 1] = b'\n';
        assert_eq!(find_line(&buf, MAX).unwrap().unwrap().consumed, MAX);
        // An LF past the window does not count.
        let mut buf = [b'a'; MAX + 1];
        buf[MAX] = b'\n';
        assert!(find_line(&buf, MAX).is_err());
    }

    #[test]
    fn words_skip_runs_of_spaces() {
        let frame = b"get  a bb   c ";
        let words: Vec<&[u8]> = Words::new(frame, Span::new(3, frame.len()))
            .map(|s| s.of(frame))
            .collect();
        assert_eq!(words, [b"a".as_slice(), b"bb", b"c"]);
        assert_eq!(Words::new(frame, Span::new(20, 30)).count(), 0);
    }

    #[test]
    fn tokens_count_everything_and_keep_the_first() {
        let line = b" set k 0 0 1 a b c d e f g ";
        let t = Tokens::new(line, line.len());
        assert_eq!(t.count(), 12);
        assert_eq!(t.span(0), Some(Span::new(1, 4)));
        assert_eq!(t.span(11), None);
        assert_eq!(t.last(), Span::new(25, 26));
        let empty = Tokens::new(b"   ", 3);
        assert_eq!(empty.count(), 0);
        assert_eq!(empty.last(), Span::new(3, 3));
    }

    #[test]
    fn keys_are_bounded_and_printable() {
        let limits = Limits::default();
        assert!(is_valid_key(b"user:42", &limits));
        assert!(is_valid_key(&[b'k'; 250], &limits));
        assert!(!is_valid_key(&[b'k'; 251], &limits));
        assert!(!is_valid_key(b"", &limits));
        assert!(!is_valid_key(b"a\tb", &limits));
        assert!(!is_valid_key(b"a\x7f", &limits));
        assert!(is_valid_key("clé".as_bytes(), &limits));
    }

    #[test]
    fn numbers_follow_memcached_safe_strto() {
        assert_eq!(strtoull(b"0"), Some(0));
        assert_eq!(strtoull(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(strtoull(b"18446744073709551616"), None);
        assert_eq!(strtoull(b"-1"), None);
        assert_eq!(strtoull(b"-0"), Some(0));
        assert_eq!(strtoull(b"-18446744073709551615"), Some(1));
        assert_eq!(strtoull(b"+5"), Some(5));
        assert_eq!(strtoull(b"\t5"), Some(5));
        assert_eq!(strtoull(b"5\tjunk"), Some(5));
        assert_eq!(strtoull(b"5\r"), Some(5));
        assert_eq!(strtoull(b"5x"), None);
        assert_eq!(strtoull(b""), None);
        assert_eq!(strtoull(b"+"), None);
        assert_eq!(strtoull(b"abc"), None);
        assert_eq!(strtoul32(b"4294967296"), Some(0));
        assert_eq!(strtoul32(b"4294967297"), Some(1));
        assert_eq!(strtoul32(b"-5"), None);
        assert_eq!(strtol32(b"-1"), Some(-1));
        assert_eq!(strtol32(b"4294967295"), Some(-1));
        assert_eq!(strtol32(b"2147483647"), Some(i32::MAX));
        assert_eq!(strtol32(b"-9223372036854775808"), Some(0));
        assert_eq!(strtol32(b"9223372036854775808"), None);
        assert_eq!(strtol32(b"-9223372036854775809"), None);
        assert_eq!(strict_u64(b"42"), Some(42));
        assert_eq!(strict_u64(b"+42"), None);
        assert_eq!(strict_u64(b"18446744073709551616"), None);
        assert_eq!(strict_u64(b""), None);
    }

    #[test]
    fn decimal_writer() {
        let mut out = BytesMut::new();
        for n in [0u64, 7, 10, 1234567890, u64::MAX] {
            out.clear();
            put_u64(&mut out, n);
            assert_eq!(&out[..], n.to_string().as_bytes());
        }
        for n in [0i64, -1, 42, i64::MIN, i64::MAX] {
            out.clear();
            put_i64(&mut out, n);
            assert_eq!(&out[..], n.to_string().as_bytes());
        }
    }
}
