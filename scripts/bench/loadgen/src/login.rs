//! SASL PLAIN login at connection set-up ([`Credentials`], [`login`]).
//!
//! With `--sasl-user`, every connection sends one binary `SASL_AUTH` right
//! after it connects, and waits for the answer, before the keys are
//! preloaded and before the clock starts: the login is connection set-up,
//! not part of any measured request. Then the connection speaks the chosen
//! protocol; a Shoal node tells binary from ASCII by each request's first
//! byte, so an ASCII run may follow a binary login on the same socket. A
//! refusal stops the run: its numbers would be those of a connection with
//! no bucket.
//!
//! The request (mechanism PLAIN, RFC 4616 §2; the memcached binary
//! protocol's SASL commands, as memcached and Couchbase implement them):
//!
//! ```text
//!  header  magic 0x80, opcode 0x21 (SASL_AUTH), key length 5, extras 0,
//!          body length 5 + 2 + len(user) + len(password), opaque LOGIN_OPAQUE
//!  key     "PLAIN"                      the mechanism
//!  value   NUL user NUL password        authzid (empty), authcid, passwd
//! ```
//!
//! The answer is a response to opcode 0x21 with the same opaque: status 0
//! accepts; 0x20 (auth error) refuses, and the server says nothing of why;
//! 0x81 or 0x83 mean the server has no SASL.
//!
//! [`encode_plain`] and [`check_reply`] are pure; [`login`] is the few lines
//! of I/O that run them.

use std::fmt;
use std::io;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::binary::{self, OP_SASL_AUTH};

/// The mechanism: the password travels in the clear, which is fine on
/// loopback and costs the server one password check (Shoal caches it), not
/// a SCRAM exchange per connection.
pub const MECHANISM: &[u8] = b"PLAIN";
/// Opaque of the login request; nothing else is in flight then.
pub const LOGIN_OPAQUE: u32 = 0x5A51_0001;
/// Longest user name and password: RFC 4616 §2 asks servers to accept at
/// least 255 octets of each; more would not be portable.
pub const MAX_CREDENTIAL_LEN: usize = 255;
/// Read buffer for the answer ("Authenticated", or a short error text).
const READ_CAPACITY: usize = 1024;

/// Who every connection logs in as. The password is never printed: `Debug`
/// shows its length only.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The SASL user: a bucket's name (which selects that bucket, as Shoal
    /// and Membase do) or an admin user.
    pub user: String,
    /// The password; empty for a bucket without one.
    pub password: Vec<u8>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &format_args!("<{} bytes>", self.password.len()))
            .finish()
    }
}

impl Credentials {
    /// Why these credentials cannot be sent with PLAIN, if they cannot:
    /// (the setting at fault, the reason).
    pub fn problem(&self) -> Option<(&'static str, &'static str)> {
        if self.user.is_empty() {
            return Some(("sasl-user", "must not be empty"));
        }
        if self.user.len() > MAX_CREDENTIAL_LEN {
            return Some(("sasl-user", "at most 255 bytes"));
        }
        // NUL separates the fields of a PLAIN message.
        if self.user.contains('\0') {
            return Some(("sasl-user", "no NUL characters"));
        }
        if self.password.len() > MAX_CREDENTIAL_LEN {
            return Some(("sasl-password-file", "the password is at most 255 bytes"));
        }
        if self.password.contains(&0) {
            return Some(("sasl-password-file", "the password has a NUL byte"));
        }
        None
    }
}

/// The password in a password file's contents: its first line without the
/// line end (`\n` or `\r\n`), as `shoal`'s own `--…-password-file` options
/// read theirs. `None` when that line is empty.
pub fn password_from_file(contents: &[u8]) -> Option<Vec<u8>> {
    let line = contents.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    (!line.is_empty()).then(|| line.to_vec())
}

/// Why a connection could not log in.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// Status 0x20: wrong user or password (the server does not say which).
    #[error(
        "the server refused the credentials (SASL PLAIN answered with status 0x0020, auth error)"
    )]
    Refused,
    /// Status 0x81 or 0x83: the server has no SASL.
    #[error("the server does not support SASL (status {0:#06x})")]
    Unsupported(u16),
    /// Status 0x21: the server wants another step, which PLAIN has not.
    #[error("the server asked for another SASL step (status 0x0021), which PLAIN does not have")]
    Continue,
    /// Any other status.
    #[error("SASL PLAIN failed with status {0:#06x}")]
    Status(u16),
    /// The answer is not a binary response to the login.
    #[error("unexpected answer to SASL_AUTH: {0} (does the server speak the binary protocol?)")]
    Malformed(&'static str),
    /// The server closed the connection before answering.
    #[error("the server closed the connection before answering SASL_AUTH")]
    Closed,
    /// No answer in time.
    #[error("no answer to SASL_AUTH in time")]
    Timeout,
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Appends the `SASL_AUTH` request that logs in as `credentials` with PLAIN.
pub fn encode_plain(out: &mut Vec<u8>, credentials: &Credentials) {
    let user = credentials.user.as_bytes();
    let mut message = Vec::with_capacity(2 + user.len() + credentials.password.len());
    message.push(0);
    message.extend_from_slice(user);
    message.push(0);
    message.extend_from_slice(&credentials.password);
    binary::encode_sasl_auth(out, MECHANISM, &message, LOGIN_OPAQUE);
}

/// Checks the answer at the start of `buf`: `Ok(Some(n))` when the login
/// was accepted by a response of `n` bytes, `Ok(None)` when more bytes are
/// needed, or why it failed.
pub fn check_reply(buf: &[u8]) -> Result<Option<usize>, LoginError> {
    let (response, used) = match binary::parse_response(buf) {
        Ok(parsed) => parsed,
        Err(e) if e.is_incomplete() => return Ok(None),
        Err(e) => return Err(LoginError::Malformed(e.reason())),
    };
    if response.opcode != OP_SASL_AUTH || response.opaque != LOGIN_OPAQUE {
        return Err(LoginError::Malformed("a response to another request"));
    }
    match response.status {
        binary::STATUS_OK => Ok(Some(used)),
        binary::STATUS_AUTH_ERROR => Err(LoginError::Refused),
        binary::STATUS_AUTH_CONTINUE => Err(LoginError::Continue),
        status @ (binary::STATUS_UNKNOWN_COMMAND | binary::STATUS_NOT_SUPPORTED) => {
            Err(LoginError::Unsupported(status))
        }
        status => Err(LoginError::Status(status)),
    }
}

// === I/O ===

/// Logs `stream` in as `credentials` (plain TCP or TLS): one write and a
/// flush, then reads until the whole answer is there. Nothing may follow the answer (nothing else was asked).
pub async fn login<S>(stream: &mut S, credentials: &Credentials) -> Result<(), LoginError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut request = Vec::new();
    encode_plain(&mut request, credentials);
    stream.write_all(&request).await?;
    // Over TLS the request may sit in the session until flushed.
    stream.flush().await?;
    let mut buf = BytesMut::with_capacity(READ_CAPACITY);
    loop {
        if let Some(used) = check_reply(&buf)? {
            if used != buf.len() {
                return Err(LoginError::Malformed("bytes after the answer"));
            }
            return Ok(());
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(LoginError::Closed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binary::{MAGIC_RESPONSE, OP_GETK};

    fn creds(user: &str, password: &[u8]) -> Credentials {
        Credentials {
            user: user.to_string(),
            password: password.to_vec(),
        }
    }

    /// A response as a server writes it.
    fn response(opcode: u8, status: u16, opaque: u32, value: &[u8]) -> Vec<u8> {
        let mut out = vec![MAGIC_RESPONSE, opcode, 0, 0, 0, 0];
        out.extend_from_slice(&status.to_be_bytes());
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(&opaque.to_be_bytes());
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(value);
        out
    }

    fn accepted() -> Vec<u8> {
        response(OP_SASL_AUTH, 0, LOGIN_OPAQUE, b"Authenticated")
    }

    #[test]
    fn plain_request_byte_exact() {
        let mut out = Vec::new();
        encode_plain(&mut out, &creds("locked", b"pw"));
        #[rustfmt::skip]
        let expected: &[u8] = &[
            0x80, 0x21, 0x00, 0x05, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x0f, 0x5a, 0x51, 0x00, 0x01,
            0, 0, 0, 0, 0, 0, 0, 0,
            b'P', b'L', b'A', b'I', b'N',
            0, b'l', b'o', b'c', b'k', b'e', b'd', 0, b'p', b'w',
        ];
        assert_eq!(out, expected);
    }

    #[test]
    fn plain_request_with_an_empty_password() {
        // An open bucket: the message ends with its second NUL.
        let mut out = Vec::new();
        encode_plain(&mut out, &creds("open", b""));
        assert_eq!(&out[8..12], 11u32.to_be_bytes());
        assert_eq!(&out[24..], b"PLAIN\0open\0");
    }

    #[test]
    fn accepted_after_every_prefix_is_incomplete() {
        let reply = accepted();
        for cut in 0..reply.len() {
            assert!(matches!(check_reply(&reply[..cut]), Ok(None)), "cut {cut}");
        }
        assert!(matches!(check_reply(&reply), Ok(Some(n)) if n == reply.len()));
    }

    #[test]
    fn refusal_and_other_statuses() {
        let refused = response(OP_SASL_AUTH, 0x20, LOGIN_OPAQUE, b"Auth failure.");
        assert!(matches!(check_reply(&refused), Err(LoginError::Refused)));
        let more = response(OP_SASL_AUTH, 0x21, LOGIN_OPAQUE, b"r=abc");
        assert!(matches!(check_reply(&more), Err(LoginError::Continue)));
        for status in [0x81, 0x83] {
            let unsupported = response(OP_SASL_AUTH, status, LOGIN_OPAQUE, b"");
            assert!(
                matches!(check_reply(&unsupported), Err(LoginError::Unsupported(s)) if s == status)
            );
        }
        let busy = response(OP_SASL_AUTH, 0x86, LOGIN_OPAQUE, b"");
        assert!(matches!(check_reply(&busy), Err(LoginError::Status(0x86))));
    }

    #[test]
    fn answers_that_are_not_the_login_reply() {
        for wrong in [
            response(OP_GETK, 0, LOGIN_OPAQUE, b""),
            response(OP_SASL_AUTH, 0, 7, b"Authenticated"),
            b"ERROR\r\n".to_vec(),
        ] {
            assert!(
                matches!(check_reply(&wrong), Err(LoginError::Malformed(_))),
                "{wrong:?}"
            );
        }
    }

    #[test]
    fn refusal_message_names_the_status_not_the_password() {
        let text = LoginError::Refused.to_string();
        assert!(
            text.contains("refused") && text.contains("0x0020"),
            "{text}"
        );
        let debug = format!("{:?}", creds("locked", b"s3cret"));
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(debug.contains("<6 bytes>"), "{debug}");
    }

    #[test]
    fn credentials_checked() {
        assert_eq!(creds("open", b"").problem(), None);
        assert_eq!(creds("locked", b"pw").problem(), None);
        assert_eq!(creds("", b"pw").problem().map(|p| p.0), Some("sasl-user"));
        assert_eq!(creds("a\0b", b"").problem().map(|p| p.0), Some("sasl-user"));
        assert_eq!(
            creds(&"u".repeat(256), b"").problem().map(|p| p.0),
            Some("sasl-user")
        );
        assert_eq!(
            creds("b", b"p\0w").problem().map(|p| p.0),
            Some("sasl-password-file")
        );
        assert_eq!(
            creds("b", &[b'p'; 256]).problem().map(|p| p.0),
            Some("sasl-password-file")
        );
    }

    #[test]
    fn password_is_the_first_line() {
        assert_eq!(password_from_file(b"s3cret\n"), Some(b"s3cret".to_vec()));
        assert_eq!(password_from_file(b"s3cret"), Some(b"s3cret".to_vec()));
        assert_eq!(
            password_from_file(b"s3cret\r\nmore\n"),
            Some(b"s3cret".to_vec())
        );
        assert_eq!(
            password_from_file(b" spaced \n"),
            Some(b" spaced ".to_vec())
        );
        assert_eq!(password_from_file(b""), None);
        assert_eq!(password_from_file(b"\nsecond\n"), None);
    }

    // === the I/O, over an in-memory pipe ===

    /// Reads the login request on the server's side of the pipe.
    async fn read_request(server: &mut tokio::io::DuplexStream, want: &[u8]) {
        let mut got = vec![0; want.len()];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn login_accepted_with_the_answer_in_pieces() {
        let credentials = creds("locked", b"pw");
        let mut request = Vec::new();
        encode_plain(&mut request, &credentials);
        let (mut client, mut server) = tokio::io::duplex(64);
        let serve = tokio::spawn(async move {
            read_request(&mut server, &request).await;
            // One byte at a time: every cut through the header and the value.
            for byte in accepted() {
                server.write_all(&[byte]).await.unwrap();
                tokio::task::yield_now().await;
            }
            server
        });
        login(&mut client, &credentials).await.unwrap();
        drop(serve.await.unwrap());
    }

    #[tokio::test]
    async fn login_refused() {
        let credentials = creds("locked", b"wrong");
        let mut request = Vec::new();
        encode_plain(&mut request, &credentials);
        let (mut client, mut server) = tokio::io::duplex(64);
        let serve = tokio::spawn(async move {
            read_request(&mut server, &request).await;
            let refusal = response(OP_SASL_AUTH, 0x20, LOGIN_OPAQUE, b"Auth failure.");
            server.write_all(&refusal).await.unwrap();
            server
        });
        let err = login(&mut client, &credentials).await.unwrap_err();
        assert!(matches!(err, LoginError::Refused), "{err}");
        drop(serve.await.unwrap());
    }

    #[tokio::test]
    async fn login_closed_before_the_answer() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let serve = tokio::spawn(async move {
            let mut first = [0; 1];
            server.read_exact(&mut first).await.unwrap();
            // Dropping the server's end closes the pipe.
        });
        let err = login(&mut client, &creds("open", b"")).await.unwrap_err();
        serve.await.unwrap();
        assert!(
            matches!(err, LoginError::Closed | LoginError::Io(_)),
            "{err}"
        );
    }

    #[tokio::test]
    async fn login_with_bytes_after_the_answer_fails() {
        let credentials = creds("open", b"");
        let mut request = Vec::new();
        encode_plain(&mut request, &credentials);
        let (mut client, mut server) = tokio::io::duplex(256);
        let serve = tokio::spawn(async move {
            read_request(&mut server, &request).await;
            let mut answer = accepted();
            answer.extend_from_slice(b"END\r\n");
            server.write_all(&answer).await.unwrap();
            server
        });
        let err = login(&mut client, &credentials).await.unwrap_err();
        assert!(matches!(err, LoginError::Malformed(_)), "{err}");
        drop(serve.await.unwrap());
    }
}
