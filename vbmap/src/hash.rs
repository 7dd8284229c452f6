//! Key → vbucket, exactly as libvbucket computes it.
//!
//! `crc = crc32_ieee(key)`, `vb = ((crc >> 16) & 0x7fff) & (n - 1)`, where
//! `n` is the vbucket count (a power of two). Every smart client in the
//! Couchbase family agrees on this rule, so a key lands on the same vbucket
//! whichever client or proxy sent it.

use crate::map::VbucketId;

/// The vbucket of `key` among `num_vbuckets` (a power of two, ≤ 65536).
#[inline]
pub fn vbucket_of(key: &[u8], num_vbuckets: usize) -> VbucketId {
    debug_assert!(num_vbuckets.is_power_of_two() && num_vbuckets <= 1 << 16);
    let crc = crc32fast::hash(key);
    (((crc >> 16) & 0x7fff) as usize & (num_vbuckets - 1)) as VbucketId
}

#[cfg(test)]
mod tests {
    use super::*;

    /// libvbucket's own `tests/testapp.c` vectors, with 4 vbuckets.
    #[test]
    fn libvbucket_testapp_vectors() {
        for (key, vb) in [
            ("hello", 0),
            ("doctor", 0),
            ("name", 3),
            ("continue", 3),
            ("yesterday", 0),
            ("tomorrow", 1),
            ("another key", 2),
        ] {
            assert_eq!(vbucket_of(key.as_bytes(), 4), vb, "key {key}");
        }
    }

    /// Every row of `shared/vectors/vbucket.tsv`.
    #[test]
    fn shared_vectors() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/vectors/vbucket.tsv"
        );
        let text =
            std::fs::read_to_string(path).expect("shared/vectors/vbucket.tsv beside the repo");
        let mut rows = 0;
        for line in text.lines().filter(|l| !l.starts_with('#')).skip(1) {
            let cols: Vec<&str> = line.split('\t').collect();
            assert_eq!(cols.len(), 3, "malformed row {line:?}");
            let (key, vb64, vb1024) = (
                cols[0],
                cols[1].parse::<u16>().unwrap(),
                cols[2].parse::<u16>().unwrap(),
            );
            assert_eq!(
                vbucket_of(key.as_bytes(), 64),
                vb64,
                "key {key:?} with 64 vbuckets"
            );
            assert_eq!(
                vbucket_of(key.as_bytes(), 1024),
                vb1024,
                "key {key:?} with 1024 vbuckets"
            );
            rows += 1;
        }
        assert!(rows >= 100, "only {rows} vectors read");
    }
}
