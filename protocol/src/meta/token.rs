//! Line, token and number helpers private to the meta codec. They reproduce
//! how memcached 1.6.18 reads a text line — find `\n`, drop one `\r` before
//! it, stop at the first NUL (the C string ends there), split on single
//! spaces only — and how its `safe_strto*` helpers read numbers (C `strtol`
//! rules: leading whitespace and a sign allowed, anything after trailing
//! whitespace ignored, then truncation to the field's width). Keeping these
//! quirks in one place is what lets the parsers answer byte-for-byte like
//! memcached, including for odd input.

use bytes::{BufMut, BytesMut};

use crate::error::{ErrorKind, ParseError};
use crate::limits::Limits;
use crate::span::Span;

/// memcached's `MAX_TOKENS`: its tokenizer keeps at most 23 tokens per line
/// (the 24th slot is the terminator). Only the count matters past 20.
pub(crate) const MAX_TOKENS: usize = 23;

/// memcached's `MFLAG_MAX_OPT_LENGTH` (20) counts the terminator token, so a
/// meta line may hold at most 19 real tokens (verb, key, [datalen,] flags).
pub(crate) const MAX_META_TOKENS: usize = 19;

/// Reason used when no newline shows up within `Limits::max_line_len`.
pub(crate) const LINE_TOO_LONG: &str = "line too long";

/// A complete line found at the start of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Line {
    /// End of the line's content: before `\r\n`/`\n` and before any NUL.
    pub content_end: usize,
    /// Bytes the line occupies including its terminator.
    pub consumed: usize,
}

/// Find the first line in `buf`. `Ok(None)` means "no newline yet, keep
/// reading"; an error means the limit passed with no newline in sight, which
/// cannot be resynchronised. `stop_at_nul` mimics memcached's request reader,
/// which handles the line as a C string; replies keep every byte.
pub(crate) fn find_line(
    buf: &[u8],
    limits: &Limits,
    stop_at_nul: bool,
) -> Result<Option<Line>, ParseError> {
    let window = buf.get(..limits.max_line_len.min(buf.len())).unwrap_or(buf);
    match memchr::memchr(b'\n', window) {
        Some(nl) => {
            let mut end = nl;
            if end > 0 && window.get(end - 1) == Some(&b'\r') {
                end -= 1;
            }
            if stop_at_nul {
                if let Some(nul) = memchr::memchr(0, window.get(..end).unwrap_or(&[])) {
                    end = nul;
                }
            }
            Ok(Some(Line {
                content_end: end,
                consumed: nl + 1,
            }))
        }
        None if !buf.is_empty() && buf.len() >= limits.max_line_len => {
            Err(ParseError::close(ErrorKind::LineTooLong, LINE_TOO_LONG))
        }
        None => Ok(None),
    }
}

/// The space-separated tokens of a line, as spans into the frame.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tokens {
    spans: [Span; MAX_TOKENS],
    len: usize,
}

impl Tokens {
    /// Split `buf[..end]` on spaces (only spaces: memcached keeps tabs inside
    /// tokens), skipping empty tokens, keeping at most [`MAX_TOKENS`].
    pub(crate) fn split(buf: &[u8], end: usize) -> Tokens {
        let mut tokens = Tokens {
            spans: [Span::EMPTY; MAX_TOKENS],
            len: 0,
        };
        for span in spans(buf, 0, end) {
            if !tokens.push(span) {
                break;
            }
        }
        tokens
    }

    fn push(&mut self, span: Span) -> bool {
        match self.spans.get_mut(self.len) {
            Some(slot) => {
                *slot = span;
                self.len += 1;
                true
            }
            None => false,
        }
    }

    /// Number of tokens kept.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The token at `i`, if present.
    pub(crate) fn get(&self, i: usize) -> Option<Span> {
        self.spans.get(..self.len).and_then(|s| s.get(i)).copied()
    }

    /// Tokens from `i` on.
    pub(crate) fn from(&self, i: usize) -> &[Span] {
        self.spans
            .get(..self.len)
            .and_then(|s| s.get(i..))
            .unwrap_or(&[])
    }
}

/// The non-empty space-separated tokens of `buf[start..end]`, uncapped.
pub(crate) fn spans(buf: &[u8], start: usize, end: usize) -> impl Iterator<Item = Span> + '_ {
    let line = buf.get(start..end).unwrap_or(&[]);
    line.split(|&b| b == b' ')
        .scan(start, |pos, tok| {
            let s = *pos;
            *pos = s + tok.len() + 1;
            Some(Span::new(s, s + tok.len()))
        })
        .filter(|s| !s.is_empty())
}

/// The bytes of `span` in `buf`, or nothing for a span that is out of range
/// (never the case for spans this module made; keeps the parsers panic-free).
pub(crate) fn bytes(buf: &[u8], span: Span) -> &[u8] {
    buf.get(span.start..span.end).unwrap_or(&[])
}

// === C number parsing ===

/// C `isspace` in the "C" locale.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// What `strtoull`/`strtol` saw: sign, magnitude (`None` on overflow of
/// `u64`), and whether the text after the digits is acceptable to memcached's
/// `safe_strto*` (end of token or whitespace). `None` when there are no digits.
fn c_scan(tok: &[u8]) -> Option<(bool, Option<u64>)> {
    let mut i = 0;
    while tok.get(i).is_some_and(|&b| is_c_space(b)) {
        i += 1;
    }
    let neg = match tok.get(i) {
        Some(b'-') => {
            i += 1;
            true
        }
        Some(b'+') => {
            i += 1;
            false
        }
        _ => false,
    };
    let digits_start = i;
    let mut mag: Option<u64> = Some(0);
    while let Some(&b) = tok.get(i) {
        if !b.is_ascii_digit() {
            break;
        }
        mag = mag
            .and_then(|m| m.checked_mul(10))
            .and_then(|m| m.checked_add(u64::from(b - b'0')));
        i += 1;
    }
    if i == digits_start {
        return None;
    }
    match tok.get(i) {
        None => Some((neg, mag)),
        Some(&b) if is_c_space(b) => Some((neg, mag)),
        Some(_) => None,
    }
}

/// memcached's `safe_strtoull`: `strtoull` (a leading `-` negates modulo
/// 2^64), rejected on overflow or when a `-` produced a value with the top bit
/// set.
pub(crate) fn c_u64(tok: &[u8]) -> Option<u64> {
    let (neg, mag) = c_scan(tok)?;
    let mag = mag?;
    let v = if neg { mag.wrapping_neg() } else { mag };
    if neg && (v as i64) < 0 {
        return None;
    }
    Some(v)
}

/// memcached's `safe_strtoul` into a `uint32_t`: `strtoul` on a 64-bit `long`,
/// then truncated to 32 bits (so `F4294967296` stores flags 0, as memcached
/// does).
pub(crate) fn c_u32(tok: &[u8]) -> Option<u32> {
    c_u64(tok).map(|v| v as u32)
}

/// memcached's `safe_strtol` into an `int32_t`: `strtol` on a 64-bit `long`
/// (rejected only past `i64`), then truncated to 32 bits.
pub(crate) fn c_i32(tok: &[u8]) -> Option<i32> {
    let (neg, mag) = c_scan(tok)?;
    let mag = mag?;
    let v: i64 = if neg {
        if mag > i64::MIN.unsigned_abs() {
            return None;
        }
        0i64.wrapping_sub_unsigned(mag)
    } else {
        i64::try_from(mag).ok()?
    };
    Some(v as i32)
}

/// A strict unsigned decimal (digits only, no sign or spaces), for reply
/// fields that memcached itself writes.
pub(crate) fn strict_u64(tok: &[u8]) -> Option<u64> {
    if tok.is_empty() {
        return None;
    }
    tok.iter().try_fold(0u64, |acc, &b| {
        if b.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

// === Decimal output ===

/// Append `v` in decimal, without allocating.
pub(crate) fn put_u64(out: &mut BytesMut, mut v: u64) {
    // u64::MAX has 20 digits.
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        if let Some(d) = digits.get_mut(i) {
            *d = b'0' + (v % 10) as u8;
        }
        v /= 10;
        if v == 0 || i == 0 {
            break;
        }
    }
    out.put_slice(digits.get(i..).unwrap_or(&[]));
}

/// Append `v` in decimal with a leading `-` when negative.
pub(crate) fn put_i64(out: &mut BytesMut, v: i64) {
    if v < 0 {
        out.put_u8(b'-');
    }
    put_u64(out, v.unsigned_abs());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(buf: &[u8]) -> Result<Option<Line>, ParseError> {
        find_line(buf, &Limits::default(), true)
    }

    #[test]
    fn lines_end_in_crlf_or_lf_and_stop_at_nul() {
        assert_eq!(
            line(b"mn\r\nx").unwrap(),
            Some(Line {
                content_end: 2,
                consumed: 4
            })
        );
        assert_eq!(
            line(b"mn\n").unwrap(),
            Some(Line {
                content_end: 2,
                consumed: 3
            })
        );
        assert_eq!(line(b"mg a\0 v\r\n").unwrap().unwrap().content_end, 4);
        assert_eq!(line(b"mg a").unwrap(), None);
        assert_eq!(line(b"").unwrap(), None);
    }

    #[test]
    fn no_newline_within_the_limit_closes() {
        let limits = Limits {
            max_line_len: 8,
            ..Limits::default()
        };
        assert_eq!(find_line(b"mg abcd", &limits, true).unwrap(), None);
        let e = find_line(b"mg abcde", &limits, true).unwrap_err();
        assert_eq!(e.kind, ErrorKind::LineTooLong);
        assert!(e.is_fatal());
        // A newline just inside the limit is fine.
        assert!(find_line(b"mg abc\r\n", &limits, true).unwrap().is_some());
    }

    #[test]
    fn tokens_split_on_spaces_only() {
        let buf = b"  mg a\tb  v ";
        let t = Tokens::split(buf, buf.len());
        assert_eq!(t.len(), 3);
        assert_eq!(bytes(buf, t.get(1).unwrap()), b"a\tb");
        assert_eq!(bytes(buf, t.get(2).unwrap()), b"v");
        let many = b"a b c d e f g h i j k l m n o p q r s t u v w x y z";
        assert_eq!(Tokens::split(many, many.len()).len(), MAX_TOKENS);
    }

    #[test]
    fn numbers_follow_safe_strto() {
        assert_eq!(c_u64(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(c_u64(b"18446744073709551616"), None);
        assert_eq!(c_u64(b"-0"), Some(0));
        assert_eq!(c_u64(b"-1"), None);
        assert_eq!(c_u64(b"+7"), Some(7));
        assert_eq!(c_u64(b"\t7"), Some(7));
        assert_eq!(c_u64(b"7\tjunk"), Some(7));
        assert_eq!(c_u64(b"7x"), None);
        assert_eq!(c_u64(b""), None);
        assert_eq!(c_u64(b"-"), None);
        assert_eq!(c_u32(b"4294967296"), Some(0));
        assert_eq!(c_u32(b"4294967295"), Some(u32::MAX));
        assert_eq!(c_i32(b"-1"), Some(-1));
        assert_eq!(c_i32(b"2147483648"), Some(i32::MIN));
        assert_eq!(c_i32(b"4294967299"), Some(3));
        assert_eq!(c_i32(b"-9223372036854775808"), Some(0));
        assert_eq!(c_i32(b"-9223372036854775809"), None);
        assert_eq!(c_i32(b"9223372036854775808"), None);
        assert_eq!(strict_u64(b"12"), Some(12));
        assert_eq!(strict_u64(b"+12"), None);
        assert_eq!(strict_u64(b""), None);
    }

    #[test]
    fn decimal_output() {
        let mut out = BytesMut::new();
        put_u64(&mut out, 0);
        out.put_u8(b' ');
        put_u64(&mut out, u64::MAX);
        out.put_u8(b' ');
        put_i64(&mut out, i64::MIN);
        out.put_u8(b' ');
        put_i64(&mut out, -1);
        assert_eq!(&out[..], b"0 18446744073709551615 -9223372036854775808 -1");
    }
}
