//! Golden vectors from memcached 1.6.18, replayed through [`parse_meta`].
//!
//! How they were made: each input below was written to a fresh connection of
//! `memcached -u root -l 127.0.0.1 -p <port> -I 1m` (1.6.18, Debian package),
//! followed by `mn\r\n`, and the reply kept only its `ERROR`,
//! `CLIENT_ERROR …`, `SERVER_ERROR …` and `MN` lines — the part a parser
//! decides; hits and misses depend on stored items. Keys are ones never
//! stored (`nokey`) or only ever set (`mskey`), so no vector depends on item
//! state. The replay feeds the same bytes to the parser the way a connection
//! would (honouring `Recovery::Skip` past the end of what is buffered) and
//! must produce the same lines: same wording, same resynchronisation.

use bytes::BytesMut;

use super::*;
use crate::Recovery;

/// The error and `MN` lines a connection would send for `input`.
fn replay(input: &[u8], limits: &Limits) -> Vec<Vec<u8>> {
    let mut lines = Vec::new();
    let mut buf = input;
    loop {
        match parse_meta(buf, limits) {
            Ok(Some((cmd, n))) => {
                if cmd == MetaCommand::Noop {
                    lines.push(b"MN".to_vec());
                }
                buf = &buf[n..];
            }
            Ok(None) => return lines,
            Err(e) => {
                let mut out = BytesMut::new();
                e.write_ascii_reply(&mut out);
                lines.push(out.strip_suffix(b"\r\n").unwrap_or(&out).to_vec());
                match e.recovery {
                    Recovery::Skip(n) => buf = buf.get(n..).unwrap_or(&[]),
                    Recovery::Close => return lines,
                }
            }
        }
    }
}

#[test]
fn replies_match_memcached() {
    for (input, want) in VECTORS {
        let got = replay(input, &Limits::default());
        let want: Vec<Vec<u8>> = want.iter().map(|l| l.to_vec()).collect();
        assert_eq!(got, want, "for {:?}", String::from_utf8_lossy(input));
    }
}

#[test]
fn oversize_value_matches_memcached() {
    // Sent with the whole 1,100,000-byte block: memcached (-I 1m) answers
    // only once it has swallowed it, then serves the `mn`.
    let mut input = b"ms mskey 1100000 T0\r\n".to_vec();
    input.resize(input.len() + 1_100_000, b'x');
    input.extend_from_slice(b"\r\nmn\r\n");
    let limits = Limits {
        max_value_len: 1024 * 1024,
        ..Limits::default()
    };
    assert_eq!(
        replay(&input, &limits),
        [&b"SERVER_ERROR object too large for cache"[..], b"MN"]
    );
}

#[rustfmt::skip]
const VECTORS: &[(&[u8], &[&[u8]])] = &[
    (b"mg nokey v\r\nmn\r\n", &[b"MN"]),
    (b"mg nokey\r\nmn\r\n", &[b"MN"]),
    (b"mg  nokey   v  \r\nmn\r\n", &[b"MN"]),
    (b"mg nokey v\nmn\r\n", &[b"MN"]),
    (b"mg nokey v\r\r\nmn\r\n", &[b"MN"]),
    (b"mg nokey\tx v\r\nmn\r\n", &[b"MN"]),
    (b"mg nokey\0 zz\r\nmn\r\n", &[b"MN"]),
    (b"mg\0 nokey\r\nmn\r\n", &[b"ERROR", b"MN"]),
    (b"mg\r\nmn\r\n", &[b"ERROR", b"MN"]),
    (b"mx nokey\r\nmn\r\n", &[b"ERROR", b"MN"]),
    (b"m\r\nmn\r\n", &[b"ERROR", b"MN"]),
    (b"MG nokey\r\nmn\r\n", &[b"ERROR", b"MN"]),
    (b"\r\nmn\r\n", &[b"ERROR", b"MN"]),
    (b"mnx\r\nmn\r\n", &[b"ERROR", b"MN"]),
    (b"mn\r\nmn\r\n", &[b"MN", b"MN"]),
    (b"mn foo bar\r\nmn\r\n", &[b"MN", b"MN"]),
    (b"me\r\nmn\r\n", &[b"CLIENT_ERROR bad command line format", b"MN"]),
    (b"me nokey\r\nmn\r\n", &[b"MN"]),
    (b"me nokey zz\r\nmn\r\n", &[b"MN"]),
    (b"me Zm9 b\r\nmn\r\n", &[b"CLIENT_ERROR bad command line format", b"MN"]),
    (b"me Zm9v b\r\nmn\r\n", &[b"MN"]),
    (b"me kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk\r\nmn\r\n", &[b"CLIENT_ERROR bad command line format", b"MN"]),
    (b"md\r\nmn\r\n", &[b"ERROR", b"MN"]),
    (b"ma\r\nmn\r\n", &[b"ERROR", b"MN"]),
    (b"ms\r\nmn\r\n", &[b"ERROR", b"MN"]),
    (b"mg nokey Y\r\nmn\r\n", &[b"CLIENT_ERROR invalid flag", b"MN"]),
    (b"mg nokey v v\r\nmn\r\n", &[b"CLIENT_ERROR duplicate flag", b"MN"]),
    (b"mg nokey \xff\r\nmn\r\n", &[b"CLIENT_ERROR duplicate flag", b"MN"]),
    (b"mg nokey \x7f\r\nmn\r\n", &[b"CLIENT_ERROR duplicate flag", b"MN"]),
    (b"mg nokey \r\r\nmn\r\n", &[b"CLIENT_ERROR invalid flag", b"MN"]),
    (b"mg nokey Tx Dy\r\nmn\r\n", &[b"CLIENT_ERROR invalid numeric delta value", b"MN"]),
    (b"mg nokey Tx Z\r\nmn\r\n", &[b"CLIENT_ERROR invalid flag", b"MN"]),
    (b"mg nokey T\r\nmn\r\n", &[b"CLIENT_ERROR bad token in command line format", b"MN"]),
    (b"mg nokey N\r\nmn\r\n", &[b"CLIENT_ERROR bad token in command line format", b"MN"]),
    (b"mg nokey R\r\nmn\r\n", &[b"CLIENT_ERROR bad token in command line format", b"MN"]),
    (b"mg nokey C-1\r\nmn\r\n", &[b"CLIENT_ERROR bad token in command line format", b"MN"]),
    (b"mg nokey C-0\r\nmn\r\n", &[b"MN"]),
    (b"mg nokey C18446744073709551615\r\nmn\r\n", &[b"MN"]),
    (b"mg nokey C18446744073709551616\r\nmn\r\n", &[b"CLIENT_ERROR bad token in command line format", b"MN"]),
    (b"mg nokey D\r\nmn\r\n", &[b"CLIENT_ERROR invalid numeric delta value", b"MN"]),
    (b"mg nokey J-1\r\nmn\r\n", &[b"CLIENT_ERROR invalid numeric initial value", b"MN"]),
    (b"mg nokey D-3\r\nmn\r\n", &[b"CLIENT_ERROR invalid numeric delta value", b"MN"]),
    (b"mg nokey O\r\nmn\r\n", &[b"MN"]),
    (b"mg nokey P L\r\nmn\r\n", &[b"MN"]),
    (b"mg nokey vxyz\r\nmn\r\n", &[b"MN"]),
    (b"mg nokey F-1\r\nmn\r\n", &[b"CLIENT_ERROR bad command line format", b"MN"]),
    (b"mg nokey Tx F-1\r\nmn\r\n", &[b"CLIENT_ERROR bad token in command line format", b"MN"]),
    (b"mg nokey MEE\r\nmn\r\n", &[b"CLIENT_ERROR incorrect length for M token", b"MN"]),
    (b"mg nokey M\r\nmn\r\n", &[b"CLIENT_ERROR incorrect length for M token", b"MN"]),
    (b"mg nokey Mz\r\nmn\r\n", &[b"MN"]),
    (b"mg nokey F5 D3 J4 C5 I M5 u h l\r\nmn\r\n", &[b"MN"]),
    (b"mg nokey T-1 N30 R5 T\t7\r\nmn\r\n", &[b"CLIENT_ERROR duplicate flag", b"MN"]),
    (b"mg nokey b\r\nmn\r\n", &[b"CLIENT_ERROR error decoding key", b"MN"]),
    (b"mg Zm9v b b\r\nmn\r\n", &[b"CLIENT_ERROR duplicate flag", b"MN"]),
    (b"mg Zm9 b\r\nmn\r\n", &[b"CLIENT_ERROR error decoding key", b"MN"]),
    (b"mg Zm9v= b\r\nmn\r\n", &[b"CLIENT_ERROR error decoding key", b"MN"]),
    (b"mg Zg== b k\r\nmn\r\n", &[b"MN"]),
    (b"mg Zg= b\r\nmn\r\n", &[b"CLIENT_ERROR error decoding key", b"MN"]),
    (b"mg Zm9vYg b\r\nmn\r\n", &[b"CLIENT_ERROR error decoding key", b"MN"]),
    (b"mg ==== b\r\nmn\r\n", &[b"CLIENT_ERROR error decoding key", b"MN"]),
    (b"mg A=== b\r\nmn\r\n", &[b"CLIENT_ERROR error decoding key", b"MN"]),
    (b"mg Zm9v==== b\r\nmn\r\n", &[b"CLIENT_ERROR error decoding key", b"MN"]),
    (b"mg Zm$v b\r\nmn\r\n", &[b"CLIENT_ERROR error decoding key", b"MN"]),
    (b"mg Z=g= b\r\nmn\r\n", &[b"MN"]),
    (b"mg Zg==Zm9v b\r\nmn\r\n", &[b"MN"]),
    (b"mg nokey Oaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\nmn\r\n", &[b"MN"]),
    (b"mg nokey Oaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\nmn\r\n", &[b"CLIENT_ERROR opaque token too long", b"MN"]),
    (b"mg nokey Oaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa Tx\r\nmn\r\n", &[b"CLIENT_ERROR bad token in command line format", b"MN"]),
    (b"mg kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk v\r\nmn\r\n", &[b"MN"]),
    (b"mg kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk v\r\nmn\r\n", &[b"CLIENT_ERROR bad command line format", b"MN"]),
    (b"mg kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk Y\r\nmn\r\n", &[b"CLIENT_ERROR bad command line format", b"MN"]),
    (b"mg nokey b c f h k l q s t v u O1 N1 R1 T1 P1 L1\r\nmn\r\n", &[b"CLIENT_ERROR error decoding key", b"MN"]),
    (b"mg nokey b c f h k l q s t v u O1 N1 R1 T1 P1 L1 I\r\nmn\r\n", &[b"CLIENT_ERROR options flags are too long", b"MN"]),
    (b"mg nokey c f h k l q s t v u O1 N1 R1 T1 P1 L1 I\r\nmn\r\n", &[b"MN"]),
    (b"ms nokey\r\nmn\r\n", &[b"CLIENT_ERROR bad command line format", b"MN"]),
    (b"ms nokey bar\r\nxx\r\nmn\r\n", &[b"CLIENT_ERROR bad command line format", b"ERROR", b"MN"]),
    (b"ms nokey -1\r\nmn\r\n", &[b"CLIENT_ERROR bad command line format", b"MN"]),
    (b"ms nokey 3x\r\nabc\r\nmn\r\n", &[b"CLIENT_ERROR bad command line format", b"ERROR", b"MN"]),
    (b"ms nokey 2147483646\r\nmn\r\n", &[b"CLIENT_ERROR bad command line format", b"MN"]),
    (b"ms kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk 1\r\nx\r\nmn\r\n", &[b"CLIENT_ERROR bad command line format", b"ERROR", b"MN"]),
    (b"ms mskey 3\r\nabc\r\nmn\r\n", &[b"MN"]),
    (b"ms mskey 3 \r\nabc\r\nmn\r\n", &[b"MN"]),
    (b"ms mskey 3\nabc\r\nmn\r\n", &[b"MN"]),
    (b"ms mskey 3\nabc\nmn\r\n", &[b"CLIENT_ERROR bad data chunk", b"ERROR"]),
    (b"ms mskey +003\r\nabc\r\nmn\r\n", &[b"MN"]),
    (b"ms mskey 4294967299\r\nabc\r\nmn\r\n", &[b"MN"]),
    (b"ms mskey -0\r\n\r\nmn\r\n", &[b"MN"]),
    (b"ms mskey 0 q\r\n\r\nmn\r\n", &[b"MN"]),
    (b"ms mskey 3\r\nabcde\r\nmn\r\n", &[b"CLIENT_ERROR bad data chunk", b"ERROR", b"MN"]),
    (b"ms mskey 3\r\nabc\n\nmn\r\n", &[b"CLIENT_ERROR bad data chunk", b"MN"]),
    (b"ms mskey 2 Fx\r\nxx\r\nmn\r\n", &[b"CLIENT_ERROR bad command line format", b"MN"]),
    (b"ms mskey 2 Tx Fx\r\nxx\r\nmn\r\n", &[b"CLIENT_ERROR bad token in command line format", b"MN"]),
    (b"ms mskey 2 Y\r\nxx\r\nmn\r\n", &[b"CLIENT_ERROR invalid flag", b"MN"]),
    // `E` and `x` came after 1.6.18: unknown flags there.
    (b"mg nokey E5\r\nmn\r\n", &[b"CLIENT_ERROR invalid flag", b"MN"]),
    (b"md nokey x\r\nmn\r\n", &[b"CLIENT_ERROR invalid or duplicate flag", b"MN"]),
    (b"ms mskey 2 E5\r\nxx\r\nmn\r\n", &[b"CLIENT_ERROR invalid flag", b"MN"]),
    (b"ma nokey E1\r\nmn\r\n", &[b"CLIENT_ERROR invalid or duplicate flag", b"MN"]),
    (b"ms mskey 2 b\r\nxx\r\nmn\r\n", &[b"CLIENT_ERROR error decoding key", b"MN"]),
    (b"ms mskey 3 Tx\r\nab\r\nmn\r\n", &[b"CLIENT_ERROR bad token in command line format", b"ERROR"]),
    (b"ms mskey 2 Ms\r\nxx\r\nmn\r\n", &[b"CLIENT_ERROR invalid mode for ms M token", b"MN"]),
    (b"ms mskey 2 Mx\r\nxx\r\nmn\r\n", &[b"CLIENT_ERROR invalid mode for ms M token", b"MN"]),
    (b"ms mskey 2 MA\r\nxx\r\nmn\r\n", &[b"MN"]),
    (b"ms mskey 2 Oaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa Mx\r\nxx\r\nmn\r\n", &[b"CLIENT_ERROR invalid mode for ms M token", b"MN"]),
    (b"ms mskey 2 Oaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\nxx\r\nmn\r\n", &[b"CLIENT_ERROR opaque token too long", b"MN"]),
    (b"ms mskey 2 S5\r\nxx\r\nmn\r\n", &[b"CLIENT_ERROR invalid flag", b"MN"]),
    (b"ms mskey 1 F4294967296\r\nx\r\nmn\r\n", &[b"MN"]),
    (b"ms mskey 1 F18446744073709551616\r\nx\r\nmn\r\n", &[b"CLIENT_ERROR bad command line format", b"MN"]),
    (b"ms mskey 1 F-0\r\nx\r\nmn\r\n", &[b"MN"]),
    (b"ms mskey 1 F\t7\r\nx\r\nmn\r\n", &[b"MN"]),
    (b"ms mskey 1 F7\tjunk\r\nx\r\nmn\r\n", &[b"MN"]),
    (b"ms mskey 1 T-1 c k O5 q\r\nx\r\nmn\r\n", &[b"MN"]),
    (b"ms mskey 1 b c f h k l q s t v O1 N1 R1 T1 P1 L1\r\nx\r\nmn\r\n", &[b"CLIENT_ERROR error decoding key", b"MN"]),
    (b"ms mskey 1 b c f h k l q s t v u O1 N1 R1 T1 P1 L1\r\nx\r\nmn\r\n", &[b"CLIENT_ERROR options flags too long", b"ERROR", b"MN"]),
    (b"ms Zm9v 1 b k\r\nx\r\nmn\r\n", &[b"MN"]),
    (b"md nokey\r\nmn\r\n", &[b"MN"]),
    (b"md nokey q\r\nmn\r\n", &[b"MN"]),
    (b"md nokey q O3 k\r\nmn\r\n", &[b"MN"]),
    (b"md nokey Tx\r\nmn\r\n", &[b"CLIENT_ERROR invalid or duplicate flag", b"MN"]),
    (b"md nokey Z\r\nmn\r\n", &[b"CLIENT_ERROR invalid or duplicate flag", b"MN"]),
    (b"md nokey \xff\r\nmn\r\n", &[b"CLIENT_ERROR invalid or duplicate flag", b"MN"]),
    (b"md nokey q q\r\nmn\r\n", &[b"CLIENT_ERROR invalid or duplicate flag", b"MN"]),
    (b"md nokey b\r\nmn\r\n", &[b"CLIENT_ERROR invalid or duplicate flag", b"MN"]),
    (b"md nokey v s t I T30 C5\r\nmn\r\n", &[b"MN"]),
    (b"md nokey Oaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\nmn\r\n", &[b"CLIENT_ERROR opaque token too long", b"MN"]),
    (b"md nokey c f h k l q s t v u O1 N1 R1 T1 P1 L1 I\r\nmn\r\n", &[b"MN"]),
    (b"md nokey c f h k l q s t v u O1 N1 R1 T1 P1 L1 I C1\r\nmn\r\n", &[b"CLIENT_ERROR options flags too long", b"MN"]),
    (b"ma nokey\r\nmn\r\n", &[b"MN"]),
    (b"ma nokey q\r\nmn\r\n", &[b"MN"]),
    (b"ma nokey Mx\r\nmn\r\n", &[b"CLIENT_ERROR invalid mode for ma M token", b"MN"]),
    (b"ma nokey Mi\r\nmn\r\n", &[b"CLIENT_ERROR invalid mode for ma M token", b"MN"]),
    (b"ma nokey M+\r\nmn\r\n", &[b"MN"]),
    (b"ma nokey M-\r\nmn\r\n", &[b"MN"]),
    (b"ma nokey MD\r\nmn\r\n", &[b"MN"]),
    (b"ma nokey Oaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa Mx\r\nmn\r\n", &[b"CLIENT_ERROR invalid mode for ma M token", b"MN"]),
    (b"ma nokey D-3\r\nmn\r\n", &[b"CLIENT_ERROR invalid or duplicate flag", b"MN"]),
    (b"ma nokey Dx\r\nmn\r\n", &[b"CLIENT_ERROR invalid or duplicate flag", b"MN"]),
    (b"ma nokey D18446744073709551616\r\nmn\r\n", &[b"CLIENT_ERROR invalid or duplicate flag", b"MN"]),
    (b"ma nokey Z\r\nmn\r\n", &[b"CLIENT_ERROR invalid or duplicate flag", b"MN"]),
    (b"ma nokey v t c D10 MD O7 k J5\r\nmn\r\n", &[b"MN"]),
    (b"ma nokey c f h k l q s t v u O1 N1 R1 T1 P1 L1 I C1\r\nmn\r\n", &[b"CLIENT_ERROR options flags too long", b"MN"]),
];
