//! SCRAM against the RFCs' worked examples, between our own client and
//! server, and against bad input.

use super::*;
use crate::PasswordHash;
use proptest::prelude::*;

fn credential(hash: Hash, password: &str, salt: &[u8], iterations: u32) -> Credential {
    let salted = hash.salted_password(password.as_bytes(), salt, iterations);
    Credential {
        salt: salt.to_vec(),
        iterations,
        keys: ScramKeys::from_salted(hash, &salted),
    }
}

/// RFC 5802 §5 (SCRAM-SHA-1) and RFC 7677 §3 (SCRAM-SHA-256): user
/// `user`, password `pencil`, 4096 iterations.
#[test]
fn the_rfcs_examples_run_through_the_server() {
    let cases = [
        (
            Hash::Sha1,
            "fyko+d2lbbFgONRv9qkxdawL",
            "3rfcNHYJY1ZVvWVs7j",
            "QSXCR+Q6sek8bf92",
            "v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
            "rmF9pqV8S7suAoZWja4dJRkFsKQ=",
        ),
        (
            Hash::Sha256,
            "rOprNGfwEbeRWgbNEkqO",
            "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
            "W22ZaJ0SNY7soEsUEjb6gQ==",
            "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
        ),
    ];
    for (hash, cnonce, snonce, salt, proof, signature) in cases {
        let salt_bytes = B64.decode(salt).unwrap();
        let cred = credential(hash, "pencil", &salt_bytes, 4096);
        let first = format!("n,,n=user,r={cnonce}");
        let (server, reply) = ServerFirst::start(
            Mechanism(hash),
            first.as_bytes(),
            |u| (u == "user").then(|| cred.clone()),
            snonce,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(reply).unwrap(),
            format!("r={cnonce}{snonce},s={salt},i=4096")
        );
        let last = format!("c=biws,r={cnonce}{snonce},p={proof}");
        let (user, fin) = server.finish(last.as_bytes()).unwrap();
        assert_eq!(user, "user");
        assert_eq!(String::from_utf8(fin).unwrap(), format!("v={signature}"));

        // And the client side computes the same proof and accepts the
        // same signature.
        let (client, client_first) = Client::new(Mechanism(hash), "user", "pencil", cnonce);
        assert_eq!(client_first, first.as_bytes());
        let server_first = format!("r={cnonce}{snonce},s={salt},i=4096");
        let (waiting, client_final) = client.respond(server_first.as_bytes()).unwrap();
        assert_eq!(client_final, last.as_bytes());
        waiting.verify(format!("v={signature}").as_bytes()).unwrap();
    }
}

/// Runs a whole exchange between our client and server.
fn exchange(
    mech: Mechanism,
    user: &str,
    password: &str,
    stored: &PasswordHash,
) -> Result<String, ScramError> {
    let lookup = |u: &str| {
        (u == "bucket").then(|| Credential {
            salt: stored.salt().to_vec(),
            iterations: stored.iterations(),
            keys: stored.keys(mech.0).clone(),
        })
    };
    let (client, first) = Client::new(mech, user, password, &new_nonce().unwrap());
    let (server, server_first) = ServerFirst::start(mech, &first, lookup, &new_nonce().unwrap())?;
    let (waiting, last) = client.respond(&server_first)?;
    let (who, fin) = server.finish(&last)?;
    waiting.verify(&fin)?;
    Ok(who)
}

#[test]
fn our_client_and_server_agree_for_every_mechanism() {
    let stored = PasswordHash::with_salt(b"s3cret", b"saltsaltsaltsalt", 4096).unwrap();
    for mech in Mechanism::ALL {
        assert_eq!(
            exchange(mech, "bucket", "s3cret", &stored).as_deref(),
            Ok("bucket")
        );
        assert_eq!(
            exchange(mech, "bucket", "wrong", &stored),
            Err(ScramError::Proof)
        );
        assert_eq!(
            exchange(mech, "nobody", "s3cret", &stored),
            Err(ScramError::Proof)
        );
    }
}

#[test]
fn unknown_users_get_a_stable_salt_and_fail_at_the_proof() {
    let start = |user: &str| {
        let first = format!("n,,n={user},r=abc");
        let (_, reply) =
            ServerFirst::start(Mechanism(Hash::Sha512), first.as_bytes(), |_| None, "xyz").unwrap();
        String::from_utf8(reply).unwrap()
    };
    assert_eq!(start("ghost"), start("ghost"));
    assert_ne!(start("ghost"), start("other"));
}

#[test]
fn a_server_that_does_not_know_the_password_is_caught() {
    let (client, _) = Client::new(Mechanism(Hash::Sha256), "u", "p", "abc");
    let (waiting, _) = client.respond(b"r=abcdef,s=c2FsdHNhbHQ=,i=4096").unwrap();
    assert_eq!(waiting.verify(b"v=AAAA"), Err(ScramError::ServerSignature));
    let (client, _) = Client::new(Mechanism(Hash::Sha256), "u", "p", "abc");
    assert_eq!(
        client.respond(b"r=zzz,s=c2FsdA==,i=4096").unwrap_err(),
        ScramError::Nonce
    );
    let (client, _) = Client::new(Mechanism(Hash::Sha256), "u", "p", "abc");
    assert_eq!(
        client
            .respond(b"r=abcd,s=c2FsdA==,i=4000000000")
            .unwrap_err(),
        ScramError::Iterations
    );
}

#[test]
fn names_are_escaped_and_bad_first_messages_refused() {
    let start = |first: &[u8]| {
        ServerFirst::start(Mechanism(Hash::Sha1), first, |_| None, "n")
            .map(|(s, _)| s.user().to_string())
    };
    assert_eq!(start(b"n,,n=a=2Cb=3Dc,r=x").unwrap(), "a,b=c");
    assert_eq!(start(b"y,,n=u,r=x,ext=1").unwrap(), "u");
    assert_eq!(start(b"n,a=u,n=u,r=x").unwrap(), "u");
    assert_eq!(
        start(b"p=tls-unique,,n=u,r=x").unwrap_err(),
        ScramError::ChannelBinding
    );
    for bad in [
        &b""[..],
        b"n,,",
        b"n,,n=u",
        b"n,,r=x,n=u",
        b"n,,m=ext,n=u,r=x",
        b"n,,n=,r=x",
        b"n,,n=a=2,r=x",
        b"n,,n=u,r=",
        b"n,,n=u,r=a b",
        b"n,a=other,n=u,r=x",
        b"q,,n=u,r=x",
        b"n,,n=u,r=\xff",
    ] {
        assert!(start(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
    }
    assert_eq!(
        start(&vec![b'a'; MAX_MESSAGE + 1]).unwrap_err(),
        ScramError::TooLong
    );
    assert_eq!(escape_name("a,b=c"), "a=2Cb=3Dc");
}

#[test]
fn bad_final_messages_are_refused() {
    let stored = PasswordHash::with_salt(b"pw", b"saltsaltsaltsalt", 4096).unwrap();
    let mech = Mechanism(Hash::Sha256);
    let finish = |last: &[u8]| {
        let lookup = |_: &str| {
            Some(Credential {
                salt: stored.salt().to_vec(),
                iterations: 4096,
                keys: stored.keys(mech.0).clone(),
            })
        };
        let (server, _) = ServerFirst::start(mech, b"n,,n=u,r=abc", lookup, "def").unwrap();
        server.finish(last).map(|(u, _)| u)
    };
    let proof = B64.encode([0u8; 32]);
    assert_eq!(
        finish(format!("c=biws,r=abcdef,p={proof}").as_bytes()),
        Err(ScramError::Proof)
    );
    assert_eq!(
        finish(format!("c=biws,r=abcxxx,p={proof}").as_bytes()),
        Err(ScramError::Nonce)
    );
    assert!(matches!(
        finish(format!("c=eSws,r=abcdef,p={proof}").as_bytes()),
        Err(ScramError::Malformed(_))
    ));
    assert!(matches!(
        finish(b"c=biws,r=abcdef,p=AAAA"),
        Err(ScramError::Malformed(_))
    ));
    assert!(matches!(
        finish(b"c=biws,r=abcdef"),
        Err(ScramError::Malformed(_))
    ));
    assert!(matches!(finish(b"garbage"), Err(ScramError::Malformed(_))));
}

#[test]
fn mechanism_names_parse_both_spellings() {
    for mech in Mechanism::ALL {
        assert_eq!(Mechanism::parse(mech.name().as_bytes()), Some(mech));
    }
    assert_eq!(
        Mechanism::parse(b"SCRAM-SHA-512"),
        Some(Mechanism(Hash::Sha512))
    );
    assert_eq!(Mechanism::parse(b"PLAIN"), None);
}

proptest! {
    #[test]
    fn any_first_message_parses_or_fails_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = ServerFirst::start(Mechanism(Hash::Sha1), &bytes, |_| None, "n");
    }

    #[test]
    fn any_final_message_parses_or_fails_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let (server, _) = ServerFirst::start(Mechanism(Hash::Sha1), b"n,,n=u,r=a", |_| None, "b").unwrap();
        prop_assert!(server.finish(&bytes).is_err());
    }

    #[test]
    fn user_names_round_trip_through_escaping(name in "[a-z=,]{1,20}") {
        prop_assert_eq!(unescape_name(&escape_name(&name)).unwrap(), name);
    }
}
