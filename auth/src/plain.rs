//! SASL PLAIN (RFC 4616): `[authzid] NUL authcid NUL passwd`, sent whole in
//! one SASL_AUTH. The password travels in the clear, so PLAIN is for
//! loopback, TLS, or clients that know nothing better.

/// The longest field accepted, bytes (RFC 4616 allows 255 for the
/// identities; passwords get more room).
const MAX_FIELD: usize = 1024;

/// A parsed PLAIN message, borrowing the input.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Plain<'a> {
    /// The identity to act as (usually empty: the same as `user`).
    pub authzid: &'a [u8],
    /// Who authenticates.
    pub user: &'a [u8],
    /// Their password.
    pub password: &'a [u8],
}

impl std::fmt::Debug for Plain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plain")
            .field("user", &String::from_utf8_lossy(self.user))
            .finish_non_exhaustive()
    }
}

/// Why a PLAIN message was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlainError {
    /// Not three NUL-separated fields.
    #[error("not a SASL PLAIN message")]
    Shape,
    /// An empty user name.
    #[error("empty user name")]
    NoUser,
    /// A field longer than the limit.
    #[error("field too long")]
    TooLong,
}

/// Parses a PLAIN message.
pub fn parse(message: &[u8]) -> Result<Plain<'_>, PlainError> {
    let mut parts = message.split(|&b| b == 0);
    let (Some(authzid), Some(user), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(PlainError::Shape);
    };
    if [authzid, user, password]
        .iter()
        .any(|f| f.len() > MAX_FIELD)
    {
        return Err(PlainError::TooLong);
    }
    if user.is_empty() {
        return Err(PlainError::NoUser);
    }
    Ok(Plain {
        authzid,
        user,
        password,
    })
}

/// Encodes a PLAIN message for `user` (no authzid).
pub fn encode(user: &str, password: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + user.len() + password.len());
    out.push(0);
    out.extend_from_slice(user.as_bytes());
    out.push(0);
    out.extend_from_slice(password.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_three_fields() {
        let p = parse(b"\0bucket\0secret").unwrap();
        assert_eq!(
            (p.authzid, p.user, p.password),
            (&b""[..], &b"bucket"[..], &b"secret"[..])
        );
        let p = parse(b"admin\0bucket\0").unwrap();
        assert_eq!((p.authzid, p.password), (&b"admin"[..], &b""[..]));
        assert_eq!(parse(&encode("u", "p")).unwrap().user, b"u");
        assert!(!format!("{:?}", parse(b"\0u\0hunter2").unwrap()).contains("hunter2"));
    }

    #[test]
    fn refuses_other_shapes() {
        assert_eq!(parse(b""), Err(PlainError::Shape));
        assert_eq!(parse(b"user"), Err(PlainError::Shape));
        assert_eq!(parse(b"\0user"), Err(PlainError::Shape));
        assert_eq!(parse(b"\0u\0p\0x"), Err(PlainError::Shape));
        assert_eq!(parse(b"\0\0p"), Err(PlainError::NoUser));
        let long = [&b"\0u\0"[..], &[b'p'; MAX_FIELD + 1]].concat();
        assert_eq!(parse(&long), Err(PlainError::TooLong));
    }

    proptest! {
        #[test]
        fn encode_then_parse_gives_the_fields_back(
            user in "[^\u{0}]{1,40}",
            password in "[^\u{0}]{0,40}",
        ) {
            let message = encode(&user, &password);
            let p = parse(&message).unwrap();
            prop_assert_eq!(p.user, user.as_bytes());
            prop_assert_eq!(p.password, password.as_bytes());
        }

        #[test]
        fn any_bytes_parse_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(p) = parse(&bytes) {
                prop_assert!(!p.user.is_empty());
                prop_assert_eq!(p.authzid.len() + p.user.len() + p.password.len() + 2, bytes.len());
            }
        }
    }
}
