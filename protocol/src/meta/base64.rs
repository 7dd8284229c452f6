//! Base64 for meta keys (`b` flag), allocation-free. The parser only checks
//! that a key decodes; turning it into bytes is the server's job, so this
//! module offers decode-into and encode helpers over caller buffers. Decoding
//! follows memcached's `base64_decode` exactly (it is lenient: characters
//! outside the alphabet are skipped, `=` counts as a zero digit, decoding stops
//! after the first padded block, and a key that decodes to nothing is an
//! error), so Shoal accepts and rejects the same keys memcached does.

use bytes::{BufMut, BytesMut};

/// The standard alphabet (RFC 4648 §4), as memcached uses.
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Largest decoded key: a base64 key token is at most 250 bytes, and every 4
/// characters yield at most 3 bytes.
pub const MAX_DECODED_KEY_LEN: usize = crate::limits::MAX_KEY_LEN / 4 * 3;

/// The 6-bit value of `c`, with `=` as 0 (memcached's table does the same), or
/// `None` for a byte outside the alphabet.
fn digit(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        b'=' => Some(0),
        _ => None,
    }
}

/// Run memcached's decoder over `src`, handing each output byte to `emit`.
/// Returns the decoded length, or `None` where memcached's returns 0.
fn run(src: &[u8], mut emit: impl FnMut(usize, u8)) -> Option<usize> {
    let count = src.iter().filter(|&&c| digit(c).is_some()).count();
    if count == 0 || count % 4 != 0 {
        return None;
    }
    let mut block = [0u8; 4];
    let mut filled = 0;
    let mut pad = 0;
    let mut len = 0;
    for &c in src {
        let Some(d) = digit(c) else { continue };
        if c == b'=' {
            pad += 1;
        }
        if let Some(slot) = block.get_mut(filled) {
            *slot = d;
        }
        filled += 1;
        if filled == 4 {
            let [a, b, c2, d2] = block;
            let bytes = [(a << 2) | (b >> 4), (b << 4) | (c2 >> 2), (c2 << 6) | d2];
            let keep = match pad {
                0 => 3,
                1 => 2,
                2 => 1,
                _ => return None,
            };
            for &byte in bytes.iter().take(keep) {
                emit(len, byte);
                len += 1;
            }
            filled = 0;
            if pad > 0 {
                break;
            }
        }
    }
    // A block of "A===" style padding yields nothing; memcached reports that
    // as a failure (its decoder returns 0 bytes).
    (len > 0).then_some(len)
}

/// The length `src` decodes to under memcached's rules, or `None` if memcached
/// would answer `CLIENT_ERROR error decoding key`.
pub fn decoded_len(src: &[u8]) -> Option<usize> {
    run(src, |_, _| {})
}

/// Decode `src` into `out`, returning the decoded length; `None` if `src` does
/// not decode or `out` is too small (a [`MAX_DECODED_KEY_LEN`] buffer always
/// fits a key the parser accepted).
pub fn decode_into(src: &[u8], out: &mut [u8]) -> Option<usize> {
    let need = decoded_len(src)?;
    if need > out.len() {
        return None;
    }
    run(src, |i, b| {
        if let Some(slot) = out.get_mut(i) {
            *slot = b;
        }
    })
}

/// Length of the padded encoding of `n` bytes.
pub const fn encoded_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

/// Append the padded base64 encoding of `src` to `out` (how memcached writes a
/// binary key back in a `k` return flag).
pub fn encode_to(out: &mut BytesMut, src: &[u8]) {
    out.reserve(encoded_len(src.len()));
    let sym = |v: u8| ALPHABET.get(usize::from(v & 0x3f)).copied().unwrap_or(b'=');
    for chunk in src.chunks(3) {
        let (a, b, c) = match *chunk {
            [a, b, c] => (a, Some(b), Some(c)),
            [a, b] => (a, Some(b), None),
            [a] => (a, None, None),
            _ => continue,
        };
        let b0 = b.unwrap_or(0);
        let c0 = c.unwrap_or(0);
        out.put_u8(sym(a >> 2));
        out.put_u8(sym((a << 4) | (b0 >> 4)));
        out.put_u8(if b.is_some() {
            sym((b0 << 2) | (c0 >> 6))
        } else {
            b'='
        });
        out.put_u8(if c.is_some() { sym(c0) } else { b'=' });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode(src: &[u8]) -> Option<Vec<u8>> {
        let mut buf = [0u8; MAX_DECODED_KEY_LEN];
        decode_into(src, &mut buf).map(|n| buf[..n].to_vec())
    }

    #[test]
    fn matches_memcached_decoder() {
        // Each case was sent to memcached 1.6.18 as `mg <key> b k`; it echoes
        // the decoded key re-encoded, or CLIENT_ERROR error decoding key.
        assert_eq!(decode(b"Zm9v").as_deref(), Some(&b"foo"[..]));
        assert_eq!(decode(b"Zg==").as_deref(), Some(&b"f"[..]));
        assert_eq!(decode(b"Zh==").as_deref(), Some(&b"f"[..]));
        assert_eq!(decode(b"Z=g=").as_deref(), Some(&[0x64][..]));
        assert_eq!(decode(b"Zm9v\tYQ==").as_deref(), Some(&b"fooa"[..]));
        assert_eq!(decode(b"Zg==Zm9v").as_deref(), Some(&b"f"[..]));
        assert_eq!(decode(b"AA==").as_deref(), Some(&[0u8][..]));
        for bad in [
            &b"Zm9"[..],
            b"Zm9v=",
            b"Zg=",
            b"Zg",
            b"Zm9vYg",
            b"====",
            b"A===",
            b"Zm9v====",
            b"Zm9v==",
            b"Zm$v",
            b"",
            b"$$$$",
        ] {
            assert_eq!(decode(bad), None, "{:?}", bad);
        }
    }

    #[test]
    fn decode_into_checks_room() {
        let mut small = [0u8; 2];
        assert_eq!(decode_into(b"Zm9v", &mut small), None);
        let mut exact = [0u8; 3];
        assert_eq!(decode_into(b"Zm9v", &mut exact), Some(3));
        assert_eq!(&exact, b"foo");
    }

    #[test]
    fn encodes_like_memcached() {
        let mut out = BytesMut::new();
        encode_to(&mut out, b"f");
        out.put_u8(b' ');
        encode_to(&mut out, b"fo");
        out.put_u8(b' ');
        encode_to(&mut out, b"foo");
        assert_eq!(&out[..], b"Zg== Zm8= Zm9v");
        assert_eq!(encoded_len(0), 0);
        assert_eq!(encoded_len(4), 8);
    }

    proptest! {
        #[test]
        fn encode_then_decode_is_identity(data in proptest::collection::vec(any::<u8>(), 1..187)) {
            let mut out = BytesMut::new();
            encode_to(&mut out, &data);
            prop_assert_eq!(out.len(), encoded_len(data.len()));
            prop_assert_eq!(decode(&out), Some(data));
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut buf = [0u8; 300];
            if let Some(n) = decode_into(&data, &mut buf) {
                prop_assert!(n <= data.len());
            }
        }
    }
}
