//! Key and value formats, and the checks of replies against them.
//!
//! A key is the prefix followed by its index in decimal, without leading
//! zeros ("shoal:12345"). A value is a fixed alphabet pattern whose first 16
//! bytes are replaced by the key index in hexadecimal, so a server that
//! returns another key's value is caught, not only one that returns the
//! wrong length. Everything is written straight into the caller's buffer.

/// Flags stored with every set, and expected back with every hit.
pub const FLAGS: u32 = 0x5EED;

/// Length of the key-index stamp at the start of a value (16 hex digits).
pub const STAMP_LEN: usize = 16;

const ALPHABET: &[u8; 26] = b"abcdefghijklmnopqrstuvwxyz";
const HEX: &[u8; 16] = b"0123456789abcdef";

/// The value pattern for `size` bytes (before stamping).
pub fn value_template(size: usize) -> Vec<u8> {
    (0..size).map(|i| ALPHABET[i % ALPHABET.len()]).collect()
}

/// Writes `n` in decimal into a stack buffer; returns the buffer and the
/// start of the digits.
fn decimal(mut n: u64) -> ([u8; 20], usize) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return (digits, start);
        }
    }
}

/// Appends `n` in decimal.
pub fn push_decimal(out: &mut Vec<u8>, n: u64) {
    let (digits, start) = decimal(n);
    out.extend_from_slice(&digits[start..]);
}

/// Appends the key with index `idx`.
pub fn push_key(out: &mut Vec<u8>, prefix: &[u8], idx: u64) {
    out.extend_from_slice(prefix);
    push_decimal(out, idx);
}

/// True when `candidate` is exactly the key with index `idx`.
pub fn key_matches(candidate: &[u8], prefix: &[u8], idx: u64) -> bool {
    let (digits, start) = decimal(idx);
    candidate.len() == prefix.len() + digits.len() - start
        && candidate.starts_with(prefix)
        && candidate[prefix.len()..] == digits[start..]
}

fn stamp(idx: u64) -> [u8; STAMP_LEN] {
    let mut out = [0u8; STAMP_LEN];
    for (i, byte) in out.iter_mut().enumerate() {
        let shift = 60 - 4 * i;
        *byte = HEX[((idx >> shift) & 0xF) as usize];
    }
    out
}

/// Appends the value stored under key `idx`: the template, stamped with the
/// index when it is long enough to hold the stamp.
pub fn push_value(out: &mut Vec<u8>, template: &[u8], idx: u64) {
    if template.len() >= STAMP_LEN {
        out.extend_from_slice(&stamp(idx));
        out.extend_from_slice(&template[STAMP_LEN..]);
    } else {
        out.extend_from_slice(template);
    }
}

/// True when `data` is exactly the value [`push_value`] writes for `idx`.
pub fn value_matches(data: &[u8], template: &[u8], idx: u64) -> bool {
    if data.len() != template.len() {
        return false;
    }
    if template.len() >= STAMP_LEN {
        data[..STAMP_LEN] == stamp(idx) && data[STAMP_LEN..] == template[STAMP_LEN..]
    } else {
        data == template
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_prefix_and_decimal() {
        let mut out = Vec::new();
        push_key(&mut out, b"k:", 0);
        out.push(b' ');
        push_key(&mut out, b"k:", 1234567);
        out.push(b' ');
        push_key(&mut out, b"", u64::MAX);
        assert_eq!(out, b"k:0 k:1234567 18446744073709551615");
    }

    #[test]
    fn key_matching_is_exact() {
        assert!(key_matches(b"k:42", b"k:", 42));
        assert!(key_matches(b"k:0", b"k:", 0));
        assert!(!key_matches(b"k:042", b"k:", 42));
        assert!(!key_matches(b"k:4", b"k:", 42));
        assert!(!key_matches(b"k:420", b"k:", 42));
        assert!(!key_matches(b"x:42", b"k:", 42));
        assert!(!key_matches(b"k:", b"k:", 0));
        assert!(!key_matches(b"", b"k:", 0));
    }

    #[test]
    fn values_are_stamped_with_their_key() {
        let template = value_template(20);
        assert_eq!(template, b"abcdefghijklmnopqrst");
        let mut out = Vec::new();
        push_value(&mut out, &template, 0xAB);
        assert_eq!(out, b"00000000000000abqrst");
        assert!(value_matches(&out, &template, 0xAB));
        assert!(!value_matches(&out, &template, 0xAC));
        assert!(!value_matches(&out[..19], &template, 0xAB));
        let mut wrong = out.clone();
        wrong[19] = b'x';
        assert!(!value_matches(&wrong, &template, 0xAB));
    }

    #[test]
    fn short_values_are_the_bare_template() {
        for size in [0, 1, 15] {
            let template = value_template(size);
            let mut out = Vec::new();
            push_value(&mut out, &template, 7);
            assert_eq!(out, template);
            assert!(value_matches(&out, &template, 7));
            assert!(value_matches(&out, &template, 8), "too short to be stamped");
        }
    }
}
