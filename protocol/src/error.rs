//! [`ParseError`]: what went wrong with a request, what the client hears, and
//! whether the stream can go on.
//!
//! Every parser in this crate reports bad input through this one type, and the
//! mapping to a reply lives only here ([`ParseError::write_ascii_reply`],
//! [`ParseError::binary_status`]), so the node and the proxy answer bad input
//! exactly alike — and like memcached.

use bytes::{BufMut, BytesMut};

/// The class of a parse failure; decides the reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Not a command this protocol knows. ASCII `ERROR`; binary 0x81.
    UnknownCommand,
    /// A known command with malformed arguments. ASCII
    /// `CLIENT_ERROR <reason>`; binary 0x04 invalid arguments.
    BadFormat,
    /// A value (or binary body) over the configured maximum. ASCII
    /// `SERVER_ERROR object too large for cache`; binary 0x03.
    TooLarge,
    /// A storage command's data block did not end in CRLF. ASCII
    /// `CLIENT_ERROR bad data chunk`.
    BadDataChunk,
    /// An ASCII line over the limit with no CRLF in sight.
    LineTooLong,
    /// A binary frame that does not start with the expected magic byte.
    BadMagic,
    /// A malformed classic ASCII command that asked for `noreply`. memcached
    /// 1.6's `out_string` honours noreply even for `CLIENT_ERROR` and
    /// `SERVER_ERROR` replies, so the client hears nothing; `reason` still says
    /// what was wrong. (Never produced for binary; 0x04 if ever mapped.)
    NoReply,
    /// An HTTP request line (its last token starts `HTTP/`) where a
    /// memcached command was expected: someone pointed a browser or an
    /// HTTP health check at the data port. memcached closes the connection
    /// without a word, and so does Shoal.
    HttpRequest,
}

/// What the connection does after answering the error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Recovery {
    /// Discard this many bytes from the start of the input (the bad request,
    /// and for an oversized value its data block too), then carry on. The count
    /// may exceed what is buffered: the connection discards bytes as they
    /// arrive, never buffering them.
    Skip(usize),
    /// The stream cannot be resynchronised: answer, then close.
    Close,
}

/// A request the parser rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ParseError {
    /// The class of failure.
    pub kind: ErrorKind,
    /// Human-readable reason, sent in `CLIENT_ERROR`/`SERVER_ERROR` lines.
    pub reason: &'static str,
    /// How the stream continues.
    pub recovery: Recovery,
    /// For a storage command refused as too large, its key: memcached then
    /// unlinks the key, so no stale value outlives a write the client meant
    /// to replace it.
    pub key: Option<crate::Span>,
}

/// Binary status: invalid arguments.
const STATUS_EINVAL: u16 = 0x0004;
/// Binary status: value too large.
const STATUS_E2BIG: u16 = 0x0003;
/// Binary status: unknown command.
const STATUS_UNKNOWN_COMMAND: u16 = 0x0081;

impl ParseError {
    /// An error after which the stream resumes `skip` bytes further on.
    pub const fn skip(kind: ErrorKind, reason: &'static str, skip: usize) -> Self {
        ParseError {
            kind,
            reason,
            recovery: Recovery::Skip(skip),
            key: None,
        }
    }

    /// An error after which the connection must close.
    pub const fn close(kind: ErrorKind, reason: &'static str) -> Self {
        ParseError {
            kind,
            reason,
            recovery: Recovery::Close,
            key: None,
        }
    }

    /// The same error, naming the key of the refused storage command.
    pub const fn with_key(self, key: crate::Span) -> Self {
        ParseError {
            key: Some(key),
            ..self
        }
    }

    /// True when the connection must be closed after the reply.
    pub const fn is_fatal(&self) -> bool {
        matches!(self.recovery, Recovery::Close)
    }

    /// Append the ASCII protocol's reply for this error to `out`, as memcached
    /// 1.6 words it.
    pub fn write_ascii_reply(&self, out: &mut BytesMut) {
        match self.kind {
            ErrorKind::NoReply | ErrorKind::HttpRequest => {}
            ErrorKind::UnknownCommand => out.put_slice(b"ERROR\r\n"),
            ErrorKind::TooLarge => out.put_slice(b"SERVER_ERROR object too large for cache\r\n"),
            ErrorKind::BadFormat
            | ErrorKind::BadDataChunk
            | ErrorKind::LineTooLong
            | ErrorKind::BadMagic => {
                out.put_slice(b"CLIENT_ERROR ");
                out.put_slice(self.reason.as_bytes());
                out.put_slice(b"\r\n");
            }
        }
    }

    /// The binary protocol's status for this error.
    pub const fn binary_status(&self) -> u16 {
        match self.kind {
            ErrorKind::UnknownCommand => STATUS_UNKNOWN_COMMAND,
            ErrorKind::TooLarge => STATUS_E2BIG,
            ErrorKind::BadFormat
            | ErrorKind::BadDataChunk
            | ErrorKind::LineTooLong
            | ErrorKind::BadMagic
            | ErrorKind::NoReply
            | ErrorKind::HttpRequest => STATUS_EINVAL,
        }
    }
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.reason)
    }
}

impl std::error::Error for ParseError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn ascii(e: ParseError) -> String {
        let mut out = BytesMut::new();
        e.write_ascii_reply(&mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn replies_match_memcached_wording() {
        assert_eq!(
            ascii(ParseError::skip(ErrorKind::UnknownCommand, "x", 3)),
            "ERROR\r\n"
        );
        assert_eq!(
            ascii(ParseError::skip(
                ErrorKind::BadFormat,
                "bad command line format",
                3
            )),
            "CLIENT_ERROR bad command line format\r\n"
        );
        assert_eq!(
            ascii(ParseError::skip(ErrorKind::TooLarge, "x", 3)),
            "SERVER_ERROR object too large for cache\r\n"
        );
    }

    #[test]
    fn binary_statuses() {
        assert_eq!(
            ParseError::close(ErrorKind::UnknownCommand, "x").binary_status(),
            0x81
        );
        assert_eq!(
            ParseError::close(ErrorKind::TooLarge, "x").binary_status(),
            0x03
        );
        assert_eq!(
            ParseError::close(ErrorKind::BadFormat, "x").binary_status(),
            0x04
        );
        assert!(ParseError::close(ErrorKind::BadMagic, "x").is_fatal());
        assert!(!ParseError::skip(ErrorKind::BadFormat, "x", 1).is_fatal());
    }
}
