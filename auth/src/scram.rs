//! SCRAM (RFC 5802; SHA-256 as RFC 7677 specifies it, SHA-512 as
//! Couchbase's data service offers it), sans-IO, both sides.
//!
//! The server side reads the client's first message and answers with
//! [`ServerFirst::start`], then checks the client's proof with
//! [`ServerFirst::finish`]; the client side ([`Client`]) makes the first
//! message, answers the server's, and checks the server's signature. Only
//! the `n` and `y` channel-binding flags are supported (no TLS channel
//! binding), as Couchbase's data service does. Messages are bounded by
//! [`MAX_MESSAGE`]; every malformed one is a [`ScramError`], never a panic.
//! A user the server does not know gets a salt like any other and fails at
//! the proof, so the exchange does not tell who exists.

use base64::engine::general_purpose::{STANDARD as B64, STANDARD_NO_PAD as B64_NO_PAD};
use base64::Engine as _;
use subtle::ConstantTimeEq;

use crate::password::{ScramKeys, MAX_ITERATIONS, MIN_ITERATIONS};
use crate::{random_bytes, Hash, RandomError};

/// The longest SCRAM message accepted, bytes.
pub const MAX_MESSAGE: usize = 4096;

/// A SCRAM mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mechanism(pub Hash);

impl Mechanism {
    /// Every mechanism, strongest first.
    pub const ALL: [Mechanism; 3] = [
        Mechanism(Hash::Sha512),
        Mechanism(Hash::Sha256),
        Mechanism(Hash::Sha1),
    ];

    /// The name Couchbase's data service lists it under.
    pub fn name(self) -> &'static str {
        match self.0 {
            Hash::Sha512 => "SCRAM-SHA512",
            Hash::Sha256 => "SCRAM-SHA256",
            Hash::Sha1 => "SCRAM-SHA1",
        }
    }

    /// A mechanism by Couchbase's name or IANA's (`SCRAM-SHA-512`).
    pub fn parse(name: &[u8]) -> Option<Mechanism> {
        let hash = match name {
            b"SCRAM-SHA512" | b"SCRAM-SHA-512" => Hash::Sha512,
            b"SCRAM-SHA256" | b"SCRAM-SHA-256" => Hash::Sha256,
            b"SCRAM-SHA1" | b"SCRAM-SHA-1" => Hash::Sha1,
            _ => return None,
        };
        Some(Mechanism(hash))
    }
}

/// Why a SCRAM exchange failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// A message over [`MAX_MESSAGE`].
    #[error("SCRAM message too long")]
    TooLong,
    /// A message that is not what the step expects.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// The client asked for channel binding, which is not supported.
    #[error("SCRAM channel binding is not supported")]
    ChannelBinding,
    /// The nonce does not continue the exchange's.
    #[error("SCRAM nonce mismatch")]
    Nonce,
    /// The client's proof is wrong: wrong password or unknown user.
    #[error("authentication failed")]
    Proof,
    /// The server's signature is wrong: it does not know the password.
    #[error("the server's SCRAM signature is wrong")]
    ServerSignature,
    /// An iteration count out of range.
    #[error("SCRAM iteration count out of range")]
    Iterations,
    /// No nonce could be drawn.
    #[error(transparent)]
    Random(#[from] RandomError),
}

/// A fresh nonce: 18 random bytes as 24 base64 characters (printable, no
/// comma).
pub fn new_nonce() -> Result<String, RandomError> {
    Ok(B64_NO_PAD.encode(random_bytes::<18>()?))
}

/// What the server knows of a user for one hash.
#[derive(Clone, Debug)]
pub struct Credential {
    /// The salt.
    pub salt: Vec<u8>,
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// SCRAM's keys.
    pub keys: ScramKeys,
}

// === the server ===

/// A server between its first message and the client's proof.
#[derive(Debug)]
pub struct ServerFirst {
    hash: Hash,
    user: String,
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
    /// `None` for an unknown user: the proof is never accepted.
    keys: Option<ScramKeys>,
}

impl ServerFirst {
    /// Reads `client_first`, looks its user up and answers the server's
    /// first message, using `server_nonce` (see [`new_nonce`]).
    pub fn start(
        mechanism: Mechanism,
        client_first: &[u8],
        lookup: impl FnOnce(&str) -> Option<Credential>,
        server_nonce: &str,
    ) -> Result<(ServerFirst, Vec<u8>), ScramError> {
        let hash = mechanism.0;
        let first = parse_client_first(client_first)?;
        let nonce = format!("{}{server_nonce}", first.nonce);
        let credential = lookup(&first.user);
        let (salt, iterations) = match &credential {
            Some(c) => (c.salt.clone(), c.iterations),
            // A salt that looks real and stays the same for a name.
            None => (
                hash.hmac(b"shoal unknown user", first.user.as_bytes())[..16].to_vec(),
                15_000,
            ),
        };
        let server_first = format!("r={nonce},s={},i={iterations}", B64.encode(&salt));
        let reply = server_first.clone().into_bytes();
        Ok((
            ServerFirst {
                hash,
                user: first.user,
                gs2_header: first.gs2_header,
                client_first_bare: first.bare,
                server_first,
                nonce,
                keys: credential.map(|c| c.keys),
            },
            reply,
        ))
    }

    /// The user the client says it is (not yet proven).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Checks `client_final`'s proof; on success returns the user and the
    /// server's final message (its signature).
    pub fn finish(self, client_final: &[u8]) -> Result<(String, Vec<u8>), ScramError> {
        let last = parse_client_final(client_final, self.hash)?;
        if last.channel_binding != self.gs2_header.as_bytes() {
            return Err(ScramError::Malformed("channel binding data differs"));
        }
        if last.nonce != self.nonce {
            return Err(ScramError::Nonce);
        }
        let Some(keys) = &self.keys else {
            return Err(ScramError::Proof);
        };
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, last.without_proof
        );
        let signature = self.hash.hmac(&keys.stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = last
            .proof
            .iter()
            .zip(&signature)
            .map(|(p, s)| p ^ s)
            .collect();
        let stored = self.hash.digest(&client_key);
        if !bool::from(stored.ct_eq(&keys.stored_key)) {
            return Err(ScramError::Proof);
        }
        let server_signature = self.hash.hmac(&keys.server_key, auth_message.as_bytes());
        let reply = format!("v={}", B64.encode(server_signature)).into_bytes();
        Ok((self.user, reply))
    }
}

// === the client ===

/// A client that sent its first message.
#[derive(Debug)]
pub struct Client {
    hash: Hash,
    password: Vec<u8>,
    client_first_bare: String,
    nonce: String,
}

/// A client that sent its proof, waiting for the server's signature.
#[derive(Debug)]
pub struct ClientFinal {
    server_signature: Vec<u8>,
}

impl Client {
    /// Starts an exchange as `user`; returns the client and its first
    /// message.
    pub fn new(
        mechanism: Mechanism,
        user: &str,
        password: &str,
        client_nonce: &str,
    ) -> (Client, Vec<u8>) {
        let bare = format!("n={},r={client_nonce}", escape_name(user));
        let first = format!("n,,{bare}").into_bytes();
        (
            Client {
                hash: mechanism.0,
                password: password.as_bytes().to_vec(),
                client_first_bare: bare,
                nonce: client_nonce.to_string(),
            },
            first,
        )
    }

    /// Answers the server's first message with the proof.
    pub fn respond(self, server_first: &[u8]) -> Result<(ClientFinal, Vec<u8>), ScramError> {
        let text = message_text(server_first)?;
        let mut attrs = text.split(',');
        let nonce = attribute(attrs.next(), 'r')?;
        let salt = B64
            .decode(attribute(attrs.next(), 's')?)
            .map_err(|_| ScramError::Malformed("salt is not base64"))?;
        let iterations: u32 = attribute(attrs.next(), 'i')?
            .parse()
            .map_err(|_| ScramError::Malformed("iteration count"))?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(ScramError::Nonce);
        }
        if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
            return Err(ScramError::Iterations);
        }
        let hash = self.hash;
        let salted = hash.salted_password(&self.password, &salt, iterations);
        let client_key = hash.hmac(&salted, b"Client Key");
        let stored_key = hash.digest(&client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{text},{without_proof}", self.client_first_bare);
        let signature = hash.hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let server_key = hash.hmac(&salted, b"Server Key");
        let final_message = format!("{without_proof},p={}", B64.encode(proof)).into_bytes();
        Ok((
            ClientFinal {
                server_signature: hash.hmac(&server_key, auth_message.as_bytes()),
            },
            final_message,
        ))
    }
}

impl ClientFinal {
    /// Checks the server's final message (`v=` its signature).
    pub fn verify(self, server_final: &[u8]) -> Result<(), ScramError> {
        let text = message_text(server_final)?;
        let signature = B64
            .decode(attribute(text.split(',').next(), 'v')?)
            .map_err(|_| ScramError::Malformed("signature is not base64"))?;
        if bool::from(signature.ct_eq(&self.server_signature)) {
            Ok(())
        } else {
            Err(ScramError::ServerSignature)
        }
    }
}

// === parsing ===

/// The parts of a client's first message.
struct ClientFirst {
    /// `n,,` or `y,,` (or with `a=`): echoed in the final message.
    gs2_header: String,
    bare: String,
    user: String,
    nonce: String,
}

fn parse_client_first(message: &[u8]) -> Result<ClientFirst, ScramError> {
    let text = message_text(message)?;
    let mut parts = text.splitn(3, ',');
    let (Some(flag), Some(authzid), Some(bare)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(ScramError::Malformed("client-first"));
    };
    match flag {
        "n" | "y" => {}
        f if f.starts_with("p=") => return Err(ScramError::ChannelBinding),
        _ => return Err(ScramError::Malformed("channel binding flag")),
    }
    if !authzid.is_empty() && !authzid.starts_with("a=") {
        return Err(ScramError::Malformed("authzid"));
    }
    let mut attrs = bare.split(',');
    let first = attrs.next();
    if first.is_some_and(|a| a.starts_with("m=")) {
        return Err(ScramError::Malformed("mandatory extension"));
    }
    let user = unescape_name(attribute(first, 'n')?)?;
    let nonce = attribute(attrs.next(), 'r')?;
    if !authzid.is_empty() && unescape_name(&authzid[2..])? != user {
        return Err(ScramError::Malformed("authzid differs from the user"));
    }
    check_nonce(nonce)?;
    Ok(ClientFirst {
        gs2_header: format!("{flag},{authzid},"),
        bare: bare.to_string(),
        user,
        nonce: nonce.to_string(),
    })
}

/// The parts of a client's final message.
struct ClientFinalMessage<'a> {
    channel_binding: Vec<u8>,
    nonce: &'a str,
    without_proof: &'a str,
    proof: Vec<u8>,
}

fn parse_client_final(message: &[u8], hash: Hash) -> Result<ClientFinalMessage<'_>, ScramError> {
    let text = message_text(message)?;
    let (without_proof, proof) = text
        .rsplit_once(",p=")
        .ok_or(ScramError::Malformed("no proof"))?;
    let mut attrs = without_proof.split(',');
    let channel_binding = B64
        .decode(attribute(attrs.next(), 'c')?)
        .map_err(|_| ScramError::Malformed("channel binding is not base64"))?;
    let nonce = attribute(attrs.next(), 'r')?;
    let proof = B64
        .decode(proof)
        .map_err(|_| ScramError::Malformed("proof is not base64"))?;
    if proof.len() != hash.output_len() {
        return Err(ScramError::Malformed("proof length"));
    }
    Ok(ClientFinalMessage {
        channel_binding,
        nonce,
        without_proof,
        proof,
    })
}

/// A message as text, bounded.
fn message_text(message: &[u8]) -> Result<&str, ScramError> {
    if message.len() > MAX_MESSAGE {
        return Err(ScramError::TooLong);
    }
    std::str::from_utf8(message).map_err(|_| ScramError::Malformed("not UTF-8"))
}

/// The value of attribute `name` (`name=value`), which must be there.
fn attribute(attr: Option<&str>, name: char) -> Result<&str, ScramError> {
    let attr = attr.ok_or(ScramError::Malformed("missing attribute"))?;
    let mut chars = attr.chars();
    if chars.next() != Some(name) || chars.next() != Some('=') {
        return Err(ScramError::Malformed("unexpected attribute"));
    }
    Ok(&attr[2..])
}

/// A nonce is printable ASCII without commas, and not empty.
fn check_nonce(nonce: &str) -> Result<(), ScramError> {
    let printable = nonce
        .bytes()
        .all(|b| (0x21..=0x7e).contains(&b) && b != b',');
    if nonce.is_empty() || !printable {
        return Err(ScramError::Malformed("nonce"));
    }
    Ok(())
}

/// A `saslname` decoded: `=2C` is `,`, `=3D` is `=`, any other `=` is an
/// error; the name must not be empty.
fn unescape_name(name: &str) -> Result<String, ScramError> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(ScramError::Malformed("user name escape")),
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    if out.is_empty() {
        return Err(ScramError::Malformed("empty user name"));
    }
    Ok(out)
}

/// A user name as a `saslname`.
fn escape_name(name: &str) -> String {
    name.replace('=', "=3D").replace(',', "=2C")
}

#[cfg(test)]
mod tests;
