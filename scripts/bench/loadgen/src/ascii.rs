//! The classic text protocol: request encoders and a reply frame parser.
//!
//! [`parse_frame`] reads one reply line (and, for `VALUE`, its data block)
//! and returns byte ranges into the buffer, never copies. The caller matches
//! frames to the requests it sent; a get's reply is several frames
//! (`VALUE`… then `END`).

use std::ops::Range;

use memchr::memchr;

use crate::data::{push_decimal, push_key, push_value, FLAGS};
use crate::ParseError;

/// Longest reply line accepted before the connection is declared out of
/// step. A `VALUE` line is at most ~320 bytes (250-byte key, three numbers);
/// error lines carry a short message.
pub const MAX_LINE: usize = 2048;

/// Largest data block accepted in a `VALUE` reply (the generator never
/// stores more than 1 MB; anything far larger is a framing error).
pub const MAX_DATA: usize = 64 << 20;

/// One reply frame. Ranges index the buffer given to [`parse_frame`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// `VALUE <key> <flags> <bytes> [<cas>]\r\n<data>\r\n`
    Value {
        /// The key.
        key: Range<usize>,
        /// The stored flags.
        flags: u32,
        /// The data block, without its CRLF.
        data: Range<usize>,
    },
    /// `END`: the end of a get's reply.
    End,
    /// `STORED`
    Stored,
    /// `NOT_STORED`
    NotStored,
    /// `EXISTS`
    Exists,
    /// `NOT_FOUND`
    NotFound,
    /// `ERROR`: the server did not understand the command.
    Error,
    /// `CLIENT_ERROR <message>`
    ClientError(Range<usize>),
    /// `SERVER_ERROR <message>`
    ServerError(Range<usize>),
}

/// Appends `get <key>…\r\n`.
pub fn encode_get(out: &mut Vec<u8>, prefix: &[u8], keys: impl IntoIterator<Item = u64>) {
    out.extend_from_slice(b"get");
    for idx in keys {
        out.push(b' ');
        push_key(out, prefix, idx);
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends `set <key> <FLAGS> 0 <len>\r\n<value>\r\n`, with the value for key `idx`.
pub fn encode_set(out: &mut Vec<u8>, prefix: &[u8], idx: u64, template: &[u8]) {
    out.extend_from_slice(b"set ");
    push_key(out, prefix, idx);
    out.push(b' ');
    push_decimal(out, u64::from(FLAGS));
    out.extend_from_slice(b" 0 ");
    push_decimal(out, template.len() as u64);
    out.extend_from_slice(b"\r\n");
    push_value(out, template, idx);
    out.extend_from_slice(b"\r\n");
}

/// Parses one reply frame at the start of `buf`: the frame and the number of
/// bytes it used, or [`ParseError::Incomplete`], or a framing error.
pub fn parse_frame(buf: &[u8]) -> Result<(Frame, usize), ParseError> {
    let Some(lf) = memchr(b'\n', buf) else {
        return Err(if buf.len() > MAX_LINE {
            ParseError::Malformed("reply line too long")
        } else {
            ParseError::Incomplete
        });
    };
    if lf > MAX_LINE {
        return Err(ParseError::Malformed("reply line too long"));
    }
    if lf == 0 || buf[lf - 1] != b'\r' {
        return Err(ParseError::Malformed("reply line not ended by CRLF"));
    }
    let line = &buf[..lf - 1];
    let after = lf + 1;
    let frame = match line {
        b"END" => Frame::End,
        b"STORED" => Frame::Stored,
        b"NOT_STORED" => Frame::NotStored,
        b"EXISTS" => Frame::Exists,
        b"NOT_FOUND" => Frame::NotFound,
        b"ERROR" => Frame::Error,
        _ if line.starts_with(b"VALUE ") => return parse_value(buf, line.len(), after),
        _ if line.starts_with(b"SERVER_ERROR") => {
            Frame::ServerError(error_message(line, b"SERVER_ERROR")?)
        }
        _ if line.starts_with(b"CLIENT_ERROR") => {
            Frame::ClientError(error_message(line, b"CLIENT_ERROR")?)
        }
        _ => return Err(ParseError::Malformed("unknown reply line")),
    };
    Ok((frame, after))
}

/// The message after an error word: `WORD` alone or `WORD <message>`.
/// Shared with the meta parser, whose error lines are the same.
pub(crate) fn error_message(line: &[u8], word: &[u8]) -> Result<Range<usize>, ParseError> {
    match line.get(word.len()) {
        None => Ok(line.len()..line.len()),
        Some(b' ') => Ok(word.len() + 1..line.len()),
        Some(_) => Err(ParseError::Malformed("unknown reply line")),
    }
}

/// `VALUE <key> <flags> <bytes> [<cas>]` then the data block.
fn parse_value(buf: &[u8], line_len: usize, after: usize) -> Result<(Frame, usize), ParseError> {
    const WORD: usize = b"VALUE ".len();
    let mut fields = buf[WORD..line_len].split(|&b| b == b' ');
    let malformed = ParseError::Malformed("malformed VALUE line");
    let key = fields.next().filter(|k| !k.is_empty()).ok_or(malformed)?;
    let flags = fields.next().and_then(parse_u64).ok_or(malformed)?;
    let flags = u32::try_from(flags).map_err(|_| malformed)?;
    let bytes = fields.next().and_then(parse_u64).ok_or(malformed)?;
    if let Some(cas) = fields.next() {
        parse_u64(cas).ok_or(malformed)?;
    }
    if fields.next().is_some() {
        return Err(malformed);
    }
    let bytes = usize::try_from(bytes)
        .ok()
        .filter(|&b| b <= MAX_DATA)
        .ok_or(ParseError::Malformed("VALUE data too large"))?;
    let data_end = after + bytes;
    let end = data_end + 2;
    if buf.len() < end {
        return Err(ParseError::Incomplete);
    }
    if &buf[data_end..end] != b"\r\n" {
        return Err(ParseError::Malformed("VALUE data not followed by CRLF"));
    }
    let frame = Frame::Value {
        key: WORD..WORD + key.len(),
        flags,
        data: after..data_end,
    };
    Ok((frame, end))
}

/// A plain decimal `u64`: digits only, no sign, no overflow.
pub(crate) fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 20 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        if d.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(buf: &[u8]) -> (Frame, usize) {
        parse_frame(buf).expect("valid frame")
    }

    #[test]
    fn encodes_get_and_set() {
        let mut out = Vec::new();
        encode_get(&mut out, b"k:", [1, 22]);
        encode_set(&mut out, b"k:", 3, b"abcd");
        assert_eq!(out, b"get k:1 k:22\r\nset k:3 24301 0 4\r\nabcd\r\n");
    }

    #[test]
    fn status_lines() {
        for (bytes, expected) in [
            (&b"END\r\n"[..], Frame::End),
            (b"STORED\r\n", Frame::Stored),
            (b"NOT_STORED\r\n", Frame::NotStored),
            (b"EXISTS\r\n", Frame::Exists),
            (b"NOT_FOUND\r\n", Frame::NotFound),
            (b"ERROR\r\n", Frame::Error),
            (b"SERVER_ERROR\r\n", Frame::ServerError(12..12)),
            (
                b"SERVER_ERROR out of memory\r\n",
                Frame::ServerError(13..26),
            ),
            (
                b"CLIENT_ERROR bad data chunk\r\n",
                Frame::ClientError(13..27),
            ),
        ] {
            assert_eq!(frame(bytes), (expected, bytes.len()), "{bytes:?}");
        }
    }

    #[test]
    fn value_with_and_without_cas() {
        let buf = b"VALUE k:1 24301 5\r\nhello\r\nEND\r\n";
        let (f, used) = frame(buf);
        assert_eq!(
            f,
            Frame::Value {
                key: 6..9,
                flags: 24301,
                data: 19..24
            }
        );
        assert_eq!(used, 26);
        assert_eq!(frame(&buf[used..]), (Frame::End, 5));

        let buf = b"VALUE k 0 0 77\r\n\r\n";
        let (f, used) = frame(buf);
        assert_eq!(
            f,
            Frame::Value {
                key: 6..7,
                flags: 0,
                data: 16..16
            }
        );
        assert_eq!(used, buf.len());
    }

    #[test]
    fn data_may_contain_crlf() {
        let buf = b"VALUE k 1 4\r\n\r\n\r\n\r\n";
        let (f, used) = frame(buf);
        assert_eq!(
            f,
            Frame::Value {
                key: 6..7,
                flags: 1,
                data: 13..17
            }
        );
        assert_eq!(used, buf.len());
    }

    #[test]
    fn every_prefix_is_incomplete() {
        let replies: [&[u8]; 4] = [
            b"VALUE k:1 24301 5 99\r\nhello\r\n",
            b"END\r\n",
            b"STORED\r\n",
            b"SERVER_ERROR out of memory\r\n",
        ];
        for reply in replies {
            for cut in 0..reply.len() {
                assert_eq!(
                    parse_frame(&reply[..cut]),
                    Err(ParseError::Incomplete),
                    "{:?}",
                    String::from_utf8_lossy(&reply[..cut])
                );
            }
            assert_eq!(frame(reply).1, reply.len());
        }
    }

    #[test]
    fn pipelined_frames_parse_one_at_a_time() {
        let buf = b"STORED\r\nVALUE a 0 1\r\nx\r\nEND\r\nEND\r\n";
        let mut pos = 0;
        let mut frames = Vec::new();
        while pos < buf.len() {
            let (f, used) = frame(&buf[pos..]);
            frames.push(f);
            pos += used;
        }
        assert_eq!(frames.len(), 4);
        assert_eq!(frames[0], Frame::Stored);
        assert!(matches!(frames[1], Frame::Value { .. }));
        assert_eq!(frames[2], Frame::End);
        assert_eq!(frames[3], Frame::End);
    }

    #[test]
    fn malformed_replies() {
        for bad in [
            &b"HELLO\r\n"[..],
            b"END\n",
            b"\n",
            b"END \r\n",
            b"STOREDX\r\n",
            b"SERVER_ERRORX\r\n",
            b"VALUE\r\n",
            b"VALUE \r\n",
            b"VALUE k\r\n",
            b"VALUE k 1\r\n",
            b"VALUE k x 1\r\n",
            b"VALUE k 1 -1\r\n",
            b"VALUE k 4294967296 1\r\n",
            b"VALUE k 1 1 2 3\r\n",
            b"VALUE k  1 1\r\n",
            b"VALUE k 1 99999999999\r\n",
            b"VALUE k 1 1 x\r\n",
            b"VALUE k 1 2\r\nabXY",
        ] {
            assert!(
                matches!(parse_frame(bad), Err(ParseError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn long_line_without_newline_is_rejected() {
        let line = vec![b'x'; MAX_LINE];
        assert_eq!(parse_frame(&line), Err(ParseError::Incomplete));
        let line = vec![b'x'; MAX_LINE + 1];
        assert!(matches!(parse_frame(&line), Err(ParseError::Malformed(_))));
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_u64(b"0"), Some(0));
        assert_eq!(parse_u64(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64(b"18446744073709551616"), None);
        assert_eq!(parse_u64(b""), None);
        assert_eq!(parse_u64(b"+1"), None);
    }
}
