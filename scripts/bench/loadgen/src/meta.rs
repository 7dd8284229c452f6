//! memcached's meta protocol, as far as the generator speaks it: `mg <key> v`
//! (get the value) and `ms <key> <len>` (set), and a parser of their replies.
//!
//! Every meta request gets exactly one reply, in request order: `VA <len>`
//! and a data block for a hit, `EN` for a miss, `HD` for a stored set, `NS`,
//! `EX` or `NF` for one that was not, or an error line. A status may be
//! followed by return flags (`VA 5 f0`, `HD c42`); the generator asks for
//! none, so it skips any it is given. No flags are asked for: the client
//! flags are neither stored by `ms` nor returned by `mg`, and a hit is
//! checked by its length and content alone (the value is stamped with its
//! key, see [`crate::data`], so another key's value is still caught).
//!
//! [`parse_frame`] reads one reply and returns byte ranges into the buffer,
//! never copies, like [`crate::ascii::parse_frame`].

use std::ops::Range;

use memchr::memchr;

use crate::ascii::{error_message, parse_u64, MAX_DATA, MAX_LINE};
use crate::data::{push_decimal, push_key, push_value};
use crate::ParseError;

/// One reply. Ranges index the buffer given to [`parse_frame`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// `VA <len> [<flag>…]\r\n<data>\r\n`: a hit.
    Value {
        /// The data block, without its CRLF.
        data: Range<usize>,
    },
    /// `EN`: a miss.
    Miss,
    /// `HD`: success without a value (a stored set).
    Stored,
    /// `NS`: not stored.
    NotStored,
    /// `EX`: the item exists (a CAS mismatch).
    Exists,
    /// `NF`: not found.
    NotFound,
    /// `MN`: the answer to `mn` (never sent by the generator).
    Noop,
    /// `ERROR`: the server did not understand the command.
    Error,
    /// `CLIENT_ERROR <message>`
    ClientError(Range<usize>),
    /// `SERVER_ERROR <message>`
    ServerError(Range<usize>),
}

/// Appends `mg <key> v\r\n`.
pub fn encode_get(out: &mut Vec<u8>, prefix: &[u8], idx: u64) {
    out.extend_from_slice(b"mg ");
    push_key(out, prefix, idx);
    out.extend_from_slice(b" v\r\n");
}

/// Appends `ms <key> <len>\r\n<value>\r\n`, with the value for key `idx`.
pub fn encode_set(out: &mut Vec<u8>, prefix: &[u8], idx: u64, template: &[u8]) {
    out.extend_from_slice(b"ms ");
    push_key(out, prefix, idx);
    out.push(b' ');
    push_decimal(out, template.len() as u64);
    out.extend_from_slice(b"\r\n");
    push_value(out, template, idx);
    out.extend_from_slice(b"\r\n");
}

/// Parses one reply at the start of `buf`: the frame and the number of bytes
/// it used, or [`ParseError::Incomplete`], or a framing error.
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
    // The two-letter codes, alone or followed by return flags.
    if line.len() == 2 || line.get(2) == Some(&b' ') {
        let flags = line.get(3..).unwrap_or_default();
        let frame = match &line[..2] {
            b"VA" => return parse_value(buf, flags, after),
            b"EN" => Frame::Miss,
            b"HD" => Frame::Stored,
            b"NS" => Frame::NotStored,
            b"EX" => Frame::Exists,
            b"NF" => Frame::NotFound,
            b"MN" => Frame::Noop,
            _ => return Err(ParseError::Malformed("unknown reply line")),
        };
        if line.len() > 2 {
            return_flags(flags.split(|&b| b == b' '))?;
        }
        return Ok((frame, after));
    }
    let frame = match line {
        b"ERROR" => Frame::Error,
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

/// `VA <len> [<flag>…]` (the text after `VA `) then the data block.
fn parse_value(buf: &[u8], rest: &[u8], after: usize) -> Result<(Frame, usize), ParseError> {
    let malformed = ParseError::Malformed("malformed VA line");
    let mut fields = rest.split(|&b| b == b' ');
    let len = fields.next().and_then(parse_u64).ok_or(malformed)?;
    return_flags(fields)?;
    let len = usize::try_from(len)
        .ok()
        .filter(|&n| n <= MAX_DATA)
        .ok_or(ParseError::Malformed("VA data too large"))?;
    let data_end = after + len;
    let end = data_end + 2;
    if buf.len() < end {
        return Err(ParseError::Incomplete);
    }
    if &buf[data_end..end] != b"\r\n" {
        return Err(ParseError::Malformed("VA data not followed by CRLF"));
    }
    Ok((
        Frame::Value {
            data: after..data_end,
        },
        end,
    ))
}

/// Return flags: each a letter followed by its token (possibly empty),
/// separated by single spaces. Their content is not used.
fn return_flags<'a>(mut flags: impl Iterator<Item = &'a [u8]>) -> Result<(), ParseError> {
    if flags.all(|flag| flag.first().is_some_and(u8::is_ascii_alphabetic)) {
        Ok(())
    } else {
        Err(ParseError::Malformed("malformed return flags"))
    }
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
        encode_get(&mut out, b"k:", 22);
        encode_set(&mut out, b"k:", 3, b"abcd");
        assert_eq!(out, b"mg k:22 v\r\nms k:3 4\r\nabcd\r\n");
    }

    #[test]
    fn status_lines() {
        for (bytes, expected) in [
            (&b"EN\r\n"[..], Frame::Miss),
            (b"HD\r\n", Frame::Stored),
            (b"HD c42 Oab\r\n", Frame::Stored),
            (b"NS\r\n", Frame::NotStored),
            (b"EX\r\n", Frame::Exists),
            (b"NF\r\n", Frame::NotFound),
            (b"MN\r\n", Frame::Noop),
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
    fn value_with_and_without_flags() {
        let buf = b"VA 5\r\nhello\r\nEN\r\n";
        let (f, used) = frame(buf);
        assert_eq!(f, Frame::Value { data: 6..11 });
        assert_eq!(used, 13);
        assert_eq!(frame(&buf[used..]), (Frame::Miss, 4));

        let buf = b"VA 2 f24301 c7 kfoo\r\nhi\r\n";
        assert_eq!(frame(buf), (Frame::Value { data: 21..23 }, buf.len()));

        let buf = b"VA 0\r\n\r\n";
        assert_eq!(frame(buf), (Frame::Value { data: 6..6 }, buf.len()));
    }

    #[test]
    fn data_may_contain_crlf() {
        let buf = b"VA 4\r\n\r\n\r\n\r\n";
        assert_eq!(frame(buf), (Frame::Value { data: 6..10 }, buf.len()));
    }

    #[test]
    fn every_prefix_is_incomplete() {
        let replies: [&[u8]; 5] = [
            b"VA 5 f1\r\nhello\r\n",
            b"EN\r\n",
            b"HD\r\n",
            b"HD c1\r\n",
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
        let buf = b"HD\r\nVA 1\r\nx\r\nEN\r\nHD\r\n";
        let mut pos = 0;
        let mut frames = Vec::new();
        while pos < buf.len() {
            let (f, used) = frame(&buf[pos..]);
            frames.push(f);
            pos += used;
        }
        assert_eq!(
            frames,
            [
                Frame::Stored,
                Frame::Value { data: 6..7 },
                Frame::Miss,
                Frame::Stored
            ]
        );
    }

    #[test]
    fn malformed_replies() {
        for bad in [
            &b"HELLO\r\n"[..],
            b"EN\n",
            b"\n",
            b"\r\n",
            b"H\r\n",
            b"HD \r\n",
            b"HD c1  c2\r\n",
            b"HD 5\r\n",
            b"HDX\r\n",
            b"XX\r\n",
            b"END\r\n",
            b"STORED\r\n",
            b"VALUE k 0 1\r\n",
            b"VA\r\n",
            b"VA \r\n",
            b"VA x\r\n",
            b"VA -1\r\n",
            b"VA 1 2\r\n",
            b"VA 99999999999\r\n",
            b"VA 2\r\nabXY",
            b"SERVER_ERRORX\r\n",
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
}
