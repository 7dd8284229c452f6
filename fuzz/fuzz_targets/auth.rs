//! Fuzzes every parser of credentials that faces the network or the
//! metadata: SASL PLAIN messages, HTTP Basic headers, the SCRAM messages a
//! server reads (client-first, client-final) and a client reads
//! (server-first, server-final), and stored password hashes (JSON).
//!
//! The first byte picks the parser; the rest is its input. Invariants
//! beyond "no panic, no hang":
//! - PLAIN: a parsed message's fields are within the input, the user is
//!   never empty, and encoding user and password back parses to the same
//!   fields;
//! - Basic: a parsed header encodes back to one that parses the same;
//! - SCRAM server: no client-final message proves a user the server does
//!   not know, and an exchange with a known user accepts only the one
//!   proof our own client computes;
//! - a stored hash that deserialises serialises back to itself, and
//!   checking a password against it terminates.
//!
//! SCRAM's iteration count is the stored hash's or the minimum (4096), so
//! each input costs at most a few PBKDF2 runs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_auth::password::{PasswordHash, MIN_ITERATIONS};
use shoal_auth::scram::{Client, Credential, Mechanism, ServerFirst};
use shoal_auth::{basic, plain, Hash};
use std::sync::OnceLock;

/// The known user's stored hash, made once per process.
fn known() -> &'static PasswordHash {
    static HASH: OnceLock<PasswordHash> = OnceLock::new();
    HASH.get_or_init(|| {
        PasswordHash::with_salt(b"pencil", b"fuzz-salt-fixed!", MIN_ITERATIONS).expect("hash")
    })
}

fn credential(hash: Hash) -> Credential {
    let stored = known();
    Credential {
        salt: stored.salt().to_vec(),
        iterations: stored.iterations(),
        keys: stored.keys(hash).clone(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, input)) = data.split_first() else {
        return;
    };
    let mech = Mechanism::ALL[usize::from(which >> 4) % 3];
    match which % 6 {
        0 => plain_message(input),
        1 => basic_header(input),
        2 => server_reads_client_first(mech, input),
        3 => server_reads_client_final(mech, input),
        4 => client_reads_server_messages(mech, input),
        _ => stored_hash(input),
    }
});

fn plain_message(input: &[u8]) {
    let Ok(p) = plain::parse(input) else { return };
    assert!(!p.user.is_empty());
    assert_eq!(p.authzid.len() + p.user.len() + p.password.len() + 2, input.len());
    if let (Ok(user), Ok(password)) = (std::str::from_utf8(p.user), std::str::from_utf8(p.password)) {
        let again = plain::encode(user, password);
        let q = plain::parse(&again).expect("an encoded message parses");
        assert_eq!((q.user, q.password), (p.user, p.password));
    }
}

fn basic_header(input: &[u8]) {
    let Ok(c) = basic::parse(input) else { return };
    assert!(!c.user.contains(':'));
    let again = basic::parse(basic::encode(&c.user, &c.password).as_bytes()).expect("re-encoded");
    assert_eq!(again, c);
}

fn server_reads_client_first(mech: Mechanism, input: &[u8]) {
    let lookup = |user: &str| (user == "user").then(|| credential(mech.0));
    if let Ok((server, reply)) = ServerFirst::start(mech, input, lookup, "servernonce") {
        let text = String::from_utf8(reply).expect("server-first is text");
        assert!(text.starts_with("r=") && text.contains("servernonce,s="));
        assert!(!server.user().is_empty());
    }
}

fn server_reads_client_final(mech: Mechanism, input: &[u8]) {
    // A known user: only our client's proof is accepted.
    let lookup = |user: &str| (user == "user").then(|| credential(mech.0));
    let first = b"n,,n=user,r=clientnonce";
    let (server, _) = ServerFirst::start(mech, first, lookup, "servernonce").expect("good first");
    let (client, _) = Client::new(mech, "user", "pencil", "clientnonce");
    if server.finish(input).is_ok() {
        // Then it must be exactly the proof the real client sends.
        let stored = known();
        let server_first = format!(
            "r=clientnonceservernonce,s={},i={}",
            base64_of(stored.salt()),
            stored.iterations()
        );
        let (_, proof) = client.respond(server_first.as_bytes()).expect("client responds");
        assert_eq!(proof, input, "a forged proof was accepted");
    }
    // An unknown user never authenticates.
    let (server, _) =
        ServerFirst::start(mech, b"n,,n=ghost,r=c", |_| None, "s").expect("good first");
    assert!(server.finish(input).is_err());
}

fn client_reads_server_messages(mech: Mechanism, input: &[u8]) {
    // Split the input into a server-first and a server-final message.
    let cut = input.iter().position(|&b| b == b'\n').unwrap_or(input.len());
    let (first, last) = (&input[..cut], input.get(cut + 1..).unwrap_or_default());
    let (client, _) = Client::new(mech, "user", "pencil", "clientnonce");
    // Keep the work bounded: large iteration counts are legal but slow.
    let iterations = std::str::from_utf8(first)
        .ok()
        .and_then(|t| t.split(",i=").nth(1))
        .and_then(|i| i.parse::<u32>().ok());
    if iterations.is_some_and(|i| i > 2 * MIN_ITERATIONS) {
        return;
    }
    if let Ok((waiting, _)) = client.respond(first) {
        let _ = waiting.verify(last);
    }
}

fn stored_hash(input: &[u8]) {
    let Ok(hash) = serde_json::from_slice::<PasswordHash>(input) else {
        return;
    };
    if hash.iterations() > 2 * MIN_ITERATIONS {
        return;
    }
    let again: PasswordHash =
        serde_json::from_str(&serde_json::to_string(&hash).expect("serialises")).expect("parses");
    assert_eq!(again, hash);
    let _ = hash.verify(b"");
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
