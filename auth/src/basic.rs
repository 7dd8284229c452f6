//! HTTP Basic credentials (RFC 7617): `Authorization: Basic
//! base64(user ":" password)`. The password travels in the clear (base64
//! is no protection): use HTTPS beyond loopback.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

/// The longest header value looked at, bytes: user and password both fit
/// with room to spare; a longer one is refused before decoding.
const MAX_HEADER: usize = 4096;

/// Credentials from an `Authorization` header.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name (no `:`).
    pub user: String,
    /// The password (may hold `:`).
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// Why an `Authorization` header was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BasicError {
    /// Not the Basic scheme.
    #[error("not Basic credentials")]
    Scheme,
    /// Longer than the limit.
    #[error("credentials too long")]
    TooLong,
    /// Not base64 of UTF-8 `user:password`.
    #[error("malformed Basic credentials")]
    Malformed,
}

/// Parses an `Authorization` header value.
pub fn parse(value: &[u8]) -> Result<Credentials, BasicError> {
    if value.len() > MAX_HEADER {
        return Err(BasicError::TooLong);
    }
    let value = std::str::from_utf8(value).map_err(|_| BasicError::Malformed)?;
    let (scheme, token) = value.trim().split_once(' ').ok_or(BasicError::Scheme)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(BasicError::Scheme);
    }
    let decoded = B64
        .decode(token.trim())
        .map_err(|_| BasicError::Malformed)?;
    let text = String::from_utf8(decoded).map_err(|_| BasicError::Malformed)?;
    let (user, password) = text.split_once(':').ok_or(BasicError::Malformed)?;
    Ok(Credentials {
        user: user.to_string(),
        password: password.to_string(),
    })
}

/// The header value for `user` and `password`.
pub fn encode(user: &str, password: &str) -> String {
    format!("Basic {}", B64.encode(format!("{user}:{password}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_rfc_7617s_example_and_refuses_the_rest() {
        let c = parse(b"Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==").unwrap();
        assert_eq!(
            (c.user.as_str(), c.password.as_str()),
            ("Aladdin", "open sesame")
        );
        assert_eq!(parse(b"basic   QWxhZGRpbjpvcGVuIHNlc2FtZQ==  ").unwrap(), c);
        assert_eq!(parse(b"Bearer abc"), Err(BasicError::Scheme));
        assert_eq!(parse(b"Basic"), Err(BasicError::Scheme));
        assert_eq!(parse(b"Basic ***"), Err(BasicError::Malformed));
        assert_eq!(parse(b"Basic bm9jb2xvbg=="), Err(BasicError::Malformed)); // "nocolon"
        assert_eq!(parse(&[b'a'; MAX_HEADER + 1]), Err(BasicError::TooLong));
        assert!(!format!("{c:?}").contains("sesame"));
    }

    proptest! {
        #[test]
        fn encode_then_parse_round_trips(user in "[^:]{0,30}", password in ".{0,30}") {
            let c = parse(encode(&user, &password).as_bytes()).unwrap();
            prop_assert_eq!(c.user, user);
            prop_assert_eq!(c.password, password);
        }

        #[test]
        fn any_bytes_parse_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = parse(&bytes);
        }
    }
}
