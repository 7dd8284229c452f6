//! incr and decr with memcached 1.6's `do_add_delta` semantics, checked
//! against memcached 1.6.18: the stored value is read the way memcached's
//! `safe_strtoull` reads it (leading whitespace, an optional sign, digits of
//! any length up to `u64::MAX`, then whitespace, NUL or the end — so
//! `"  12"`, `"12 abc"`, `"+5"` and `"-0"` are numbers and `"12abc"`, `"-5"`,
//! `""` are not); incr wraps at 2^64, decr stops at 0; the result keeps the
//! flags and exptime and gets a new CAS. The binary protocol may create a
//! missing key with an initial value (returned as is, flags 0) unless its
//! exptime is `0xffffffff`. One difference: memcached rewrites a shorter
//! result in place padded with spaces (`decr` of `"100"` reads back as
//! `"99 "`); protocol.txt calls that padding an implementation detail not to
//! rely on, so the engine stores the exact digits.

use bytes::Bytes;

use super::item::resolve_exptime;
use super::vbucket::{VbInner, VbucketState};
use super::{Bucket, EngineError, OpError};
use crate::mutation::VbucketId;

/// The binary protocol's exptime meaning "do not create a missing key".
pub const ARITH_NO_CREATE: u32 = 0xffff_ffff;

/// incr or decr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ArithOp {
    /// Add, wrapping at 2^64.
    Incr,
    /// Subtract, stopping at 0.
    Decr,
}

/// Auto-create a missing key (binary INCREMENT/DECREMENT).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArithCreate {
    /// The value to create the key with (and to return).
    pub initial: u64,
    /// Its absolute exptime (0 = never).
    pub exptime: u32,
}

impl ArithCreate {
    /// From a binary request's extras: `raw_exptime` as sent (memcached
    /// rules), [`ARITH_NO_CREATE`] meaning no creation.
    pub fn from_binary(initial: u64, raw_exptime: u32, now: u32) -> Option<ArithCreate> {
        (raw_exptime != ARITH_NO_CREATE).then(|| ArithCreate {
            initial,
            exptime: resolve_exptime(i64::from(raw_exptime), now),
        })
    }
}

/// One incr/decr.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArithRequest {
    /// The key (owned: auto-create inserts it).
    pub key: Bytes,
    /// incr or decr.
    pub op: ArithOp,
    /// The amount.
    pub delta: u64,
    /// Create a missing key instead of answering NOT_FOUND.
    pub create: Option<ArithCreate>,
    /// Compare-CAS on an existing item; 0 = none. Ignored when creating,
    /// as memcached does.
    pub cas: u64,
}

/// The result of an incr/decr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArithOutcome {
    /// The new value.
    pub value: u64,
    /// The new CAS.
    pub cas: u64,
    /// The seqno of the write.
    pub seqno: u64,
    /// The counter did not exist and was created with its initial value.
    pub created: bool,
}

// === impl Bucket ===

impl Bucket {
    /// incr/decr on an active vbucket.
    pub fn arith(
        &self,
        vb: VbucketId,
        req: &ArithRequest,
        now: u32,
    ) -> Result<ArithOutcome, EngineError> {
        let vbucket = self.admit_write(vb)?;
        let result = self.with_memory(|| {
            let mut inner = self.lock_in(vbucket, VbucketState::Active)?;
            self.arith_locked(vb, &mut inner, req, now)
        });
        let (hits, misses) = match req.op {
            ArithOp::Incr => (&self.stats.incr_hits, &self.stats.incr_misses),
            ArithOp::Decr => (&self.stats.decr_hits, &self.stats.decr_misses),
        };
        match &result {
            Ok((_, false)) => hits.incr(),
            Ok((_, true)) => self.stats.total_items.incr(),
            Err(EngineError::NotFound) => misses.incr(),
            Err(_) => {}
        }
        result.map(|(outcome, _)| outcome)
    }

    /// Returns the outcome and whether the key was created.
    fn arith_locked(
        &self,
        vb: VbucketId,
        inner: &mut VbInner,
        req: &ArithRequest,
        now: u32,
    ) -> Result<(ArithOutcome, bool), OpError> {
        let current = inner
            .table
            .get(&req.key[..])
            .filter(|it| self.is_live(it, now))
            .map(|it| (it.cas, it.value.clone(), it.flags, it.exptime));
        let Some((cas, value, flags, exptime)) = current else {
            let create = req.create.ok_or(EngineError::NotFound)?;
            let digits = Bytes::from(create.initial.to_string());
            let m = self.write_item(vb, inner, &req.key, digits, 0, create.exptime, now)?;
            let outcome = ArithOutcome {
                value: create.initial,
                cas: m.cas,
                seqno: m.seqno,
                created: true,
            };
            return Ok((outcome, true));
        };
        if req.cas != 0 && req.cas != cas {
            return Err(EngineError::Exists.into());
        }
        let value = value.ok_or(EngineError::ValueEjected)?;
        let number = parse_counter(&value).ok_or(EngineError::NonNumeric)?;
        let number = match req.op {
            ArithOp::Incr => number.wrapping_add(req.delta),
            ArithOp::Decr => number.saturating_sub(req.delta),
        };
        let digits = Bytes::from(number.to_string());
        let m = self.write_item(vb, inner, &req.key, digits, flags, exptime, now)?;
        let outcome = ArithOutcome {
            value: number,
            cas: m.cas,
            seqno: m.seqno,
            created: false,
        };
        Ok((outcome, false))
    }
}

/// memcached's `safe_strtoull` applied to a stored value: `strtoull` reads
/// a C string, so it stops at a NUL (memcached's item data ends in
/// `"\r\n"`, which counts as whitespace; here the end of the value does).
fn parse_counter(value: &[u8]) -> Option<u64> {
    // C's isspace in the "C" locale.
    let is_space = |c: u8| matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r');
    let end = value.iter().position(|&c| c == 0).unwrap_or(value.len());
    let s = &value[..end];
    let mut i = s.iter().take_while(|&&c| is_space(c)).count();
    let negative = match s.get(i) {
        Some(b'-') => {
            i += 1;
            true
        }
        Some(b'+') => {
            i += 1;
            false
        }
        _ => false,
    };
    let digits_start = i;
    let mut n: u64 = 0;
    while let Some(&c) = s.get(i).filter(|c| c.is_ascii_digit()) {
        // Overflow is strtoull's ERANGE, which memcached rejects.
        n = n.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
        i += 1;
    }
    if i == digits_start {
        return None; // no digits: strtoull's endptr == str
    }
    if s.get(i).is_some_and(|&c| !is_space(c)) {
        return None;
    }
    // strtoull negates a '-' number modulo 2^64; memcached then rejects the
    // result only if it is negative as a signed number.
    let n = if negative { n.wrapping_neg() } else { n };
    if negative && i64::try_from(n).is_err() {
        return None;
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{active_bucket, get_value, set, set_with, NOW};
    use super::*;

    fn incr(b: &Bucket, key: &'static str, delta: u64) -> Result<u64, EngineError> {
        arith(b, key, ArithOp::Incr, delta)
    }

    fn arith(b: &Bucket, key: &'static str, op: ArithOp, delta: u64) -> Result<u64, EngineError> {
        let req = ArithRequest {
            key: Bytes::from_static(key.as_bytes()),
            op,
            delta,
            create: None,
            cas: 0,
        };
        b.arith(0, &req, NOW).map(|o| o.value)
    }

    #[test]
    fn parse_like_memcached_safe_strtoull() {
        // Each pair was checked against memcached 1.6.18 (binary incr by 1
        // of the stored value; None = "Non-numeric server-side value").
        let cases: &[(&[u8], Option<u64>)] = &[
            (b"  12", Some(12)),
            (b"12  ", Some(12)),
            (b"+5", Some(5)),
            (b"-0", Some(0)),
            (b"-5", None),
            (b"12abc", None),
            (b"12 abc", Some(12)),
            (b"\t7", Some(7)),
            (b"18446744073709551615", Some(u64::MAX)),
            (b"18446744073709551616", None),
            (b"00000000000000000000000001", Some(1)),
            (b"-18446744073709551615", Some(1)),
            (b" ", None),
            (b"", None),
            (b"1\x002", Some(1)),
            (b"0x10", None),
            (b"\n3", Some(3)),
            (b"\r3", Some(3)),
            (b"\x0b3", Some(3)),
            (b"\x0c3", Some(3)),
            (b"3\r", Some(3)),
            (b"3\n", Some(3)),
            (b"+", None),
            (b"-", None),
            (b"+-1", None),
            (b"\x00", None),
        ];
        for (value, want) in cases {
            assert_eq!(parse_counter(value), *want, "{value:?}");
        }
    }

    #[test]
    fn incr_decr_semantics() {
        let b = active_bucket();
        assert_eq!(incr(&b, "n", 1), Err(EngineError::NotFound));
        set_with(&b, "n", "  12", 5, NOW + 100);
        assert_eq!(incr(&b, "n", 1), Ok(13));
        let hit = b.get(0, b"n", NOW).unwrap().hit().unwrap();
        assert_eq!(
            (&hit.value[..], hit.flags, hit.exptime),
            (&b"13"[..], 5, NOW + 100)
        );
        assert_eq!(
            arith(&b, "n", ArithOp::Decr, 100),
            Ok(0),
            "decr floors at 0"
        );
        set(&b, "n", "18446744073709551615");
        assert_eq!(incr(&b, "n", 1), Ok(0), "incr wraps at 2^64");
        set(&b, "n", "18446744073709551615");
        assert_eq!(incr(&b, "n", 2), Ok(1));
        set(&b, "n", "100");
        assert_eq!(arith(&b, "n", ArithOp::Decr, 1), Ok(99));
        assert_eq!(get_value(&b, "n"), Some("99".into()), "no space padding");
        set(&b, "x", "12abc");
        assert_eq!(incr(&b, "x", 1), Err(EngineError::NonNumeric));
        assert_eq!(get_value(&b, "x"), Some("12abc".into()));
        let stats = b.stats();
        for (name, want) in [("incr_hits", 3), ("incr_misses", 1), ("decr_hits", 2)] {
            assert!(stats.contains(&(name, want)), "{name}: {stats:?}");
        }
    }

    #[test]
    fn cas_and_auto_create() {
        let b = active_bucket();
        let m = set(&b, "n", "1");
        let mut req = ArithRequest {
            key: Bytes::from_static(b"n"),
            op: ArithOp::Incr,
            delta: 1,
            create: None,
            cas: m.cas + 1,
        };
        assert_eq!(b.arith(0, &req, NOW), Err(EngineError::Exists));
        req.cas = m.cas;
        let o = b.arith(0, &req, NOW).unwrap();
        assert!(o.value == 2 && o.cas > m.cas);
        // Create: returns the initial value, flags 0, ignores the cas.
        req.key = Bytes::from_static(b"new");
        req.cas = 99;
        req.create = ArithCreate::from_binary(7, 100, NOW);
        assert_eq!(
            req.create,
            Some(ArithCreate {
                initial: 7,
                exptime: NOW + 100
            })
        );
        assert_eq!(b.arith(0, &req, NOW).map(|o| o.value), Ok(7));
        let hit = b.get(0, b"new", NOW).unwrap().hit().unwrap();
        assert_eq!(
            (&hit.value[..], hit.flags, hit.exptime),
            (&b"7"[..], 0, NOW + 100)
        );
        assert_eq!(
            b.arith(0, &req, NOW).map(|o| o.value),
            Err(EngineError::Exists)
        );
        req.cas = 0;
        assert_eq!(b.arith(0, &req, NOW).map(|o| o.value), Ok(8));
        req.key = Bytes::from_static(b"other");
        req.create = ArithCreate::from_binary(7, ARITH_NO_CREATE, NOW);
        assert_eq!(req.create, None);
        assert_eq!(b.arith(0, &req, NOW), Err(EngineError::NotFound));
    }

    #[test]
    fn incr_of_an_ejected_value_asks_for_it() {
        let b = active_bucket();
        let m = set(&b, "n", "5");
        b.drain_mutations(0, 10, &mut Vec::new());
        b.mark_persisted(0, m.seqno);
        b.eject_all_clean();
        assert_eq!(incr(&b, "n", 1), Err(EngineError::ValueEjected));
        assert!(b.restore_value(0, b"n", m.seqno, "5".into()));
        assert_eq!(incr(&b, "n", 1), Ok(6));
        b.assert_accounting();
    }
}
