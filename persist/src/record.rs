//! The on-disk record codec: how one item or tombstone is laid out as a fjall
//! key and value. Sans-IO and total: decoding faces the disk, so any byte
//! sequence yields a record or a typed [`RecordError`] — never a panic, and
//! never an allocation sized by a field read from disk (there are no length
//! fields at all: the value is whatever follows the fixed header). Encoding is
//! canonical, so `decode_record(b)` succeeding implies
//! `encode(decoded) == b`; the tests and the fuzz target check that law.

use bytes::Bytes;

use shoal_engine::mutation::{Mutation, MutationKind, VbucketId};

/// The only record format this build writes and reads.
pub const FORMAT_VERSION: u8 = 1;

/// Length of the fixed record header that precedes the value bytes.
pub const HEADER_LEN: usize = 34;

/// Length of the vbucket prefix of every data key.
pub const KEY_PREFIX_LEN: usize = 2;

/// Longest item key a record may carry. fjall caps keys at `u16::MAX` bytes
/// and the vbucket prefix takes two of them; the engine enforces memcached's
/// 250-byte limit long before this.
pub const MAX_ITEM_KEY_LEN: usize = u16::MAX as usize - KEY_PREFIX_LEN;

/// Byte offset of the CRC field inside the header (it is the last field).
const CRC_OFFSET: usize = HEADER_LEN - 4;

/// Kind byte of a live item.
const KIND_ITEM: u8 = 0;
/// Kind byte of a tombstone.
const KIND_TOMBSTONE: u8 = 1;

/// Why bytes read from disk are not a valid record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Fewer bytes than the fixed header.
    #[error("record shorter than its {HEADER_LEN}-byte header")]
    Truncated,
    /// A format version this build does not know (written by a newer build,
    /// or garbage).
    #[error("unknown record format version {0}")]
    UnknownVersion(u8),
    /// A kind byte other than item (0) or tombstone (1).
    #[error("unknown record kind {0}")]
    UnknownKind(u8),
    /// The stored CRC does not match the bytes.
    #[error("record checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    ChecksumMismatch {
        /// The CRC field as stored.
        stored: u32,
        /// The CRC of the bytes as read.
        computed: u32,
    },
    /// A tombstone that carries value bytes; the encoder never writes one.
    #[error("tombstone record carries a value")]
    TombstoneWithValue,
    /// A data key shorter than its two-byte vbucket prefix.
    #[error("data key shorter than its vbucket prefix")]
    KeyTooShort,
}

impl RecordError {
    /// A static description, for [`PersistError::Corrupt`](super::PersistError::Corrupt).
    pub fn reason(&self) -> &'static str {
        match self {
            RecordError::Truncated => "record shorter than its header",
            RecordError::UnknownVersion(_) => "unknown record format version",
            RecordError::UnknownKind(_) => "unknown record kind",
            RecordError::ChecksumMismatch { .. } => "record checksum mismatch",
            RecordError::TombstoneWithValue => "tombstone record carries a value",
            RecordError::KeyTooShort => "data key shorter than its vbucket prefix",
        }
    }
}

/// Whether a record is a live item or a deletion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// The key holds a value.
    Item,
    /// The key was deleted at `seqno`; kept so that an older copy (on disk or
    /// on a replica being backfilled) can never come back.
    Tombstone,
}

/// The fixed part of a record: everything but the key and the value bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// Item or tombstone.
    pub kind: RecordKind,
    /// Client flags (0 for a tombstone written from a `Delete`).
    pub flags: u32,
    /// Absolute expiry, unix seconds; 0 = never.
    pub exptime: u32,
    /// CAS after the change.
    pub cas: u64,
    /// The vbucket seqno of the change.
    pub seqno: u64,
    /// Unix time (seconds) of the change.
    pub time: u32,
}

/// A record borrowed from a byte slice, as [`decode_record`] returns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// The header fields.
    pub header: RecordHeader,
    /// The value bytes (empty for a tombstone).
    pub value: &'a [u8],
}

/// A record with its value as shared [`Bytes`]: what the store hands out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredItem {
    /// The header fields.
    pub header: RecordHeader,
    /// The value bytes (empty for a tombstone).
    pub value: Bytes,
}

// === impl RecordHeader ===

impl RecordHeader {
    /// The header a mutation is persisted with.
    pub fn from_mutation(m: &Mutation) -> RecordHeader {
        match &m.kind {
            MutationKind::Set { flags, exptime, .. } => RecordHeader {
                kind: RecordKind::Item,
                flags: *flags,
                exptime: *exptime,
                cas: m.cas,
                seqno: m.seqno,
                time: m.time,
            },
            MutationKind::Delete => RecordHeader {
                kind: RecordKind::Tombstone,
                flags: 0,
                exptime: 0,
                cas: m.cas,
                seqno: m.seqno,
                time: m.time,
            },
        }
    }

    /// True for a tombstone.
    pub fn is_tombstone(&self) -> bool {
        self.kind == RecordKind::Tombstone
    }
}

// === impl StoredItem ===

impl StoredItem {
    /// True for a tombstone.
    pub fn is_tombstone(&self) -> bool {
        self.header.is_tombstone()
    }

    /// Re-allocates the value so it owns exactly its bytes. Values decoded
    /// from fjall share the buffer of the data block they were read from
    /// (4 KiB by default); a value kept for long (warmup, background fetch)
    /// would otherwise keep the whole block alive and make the engine's
    /// memory accounting lie. Costs one copy of the value.
    pub fn detach(mut self) -> StoredItem {
        self.value = Bytes::copy_from_slice(&self.value);
        self
    }
}

// === keys ===

/// Appends the data key of `key` in `vbucket`: the vbucket id big-endian,
/// then the key, so one vbucket is one contiguous key range.
///
/// ```text
/// 0      2                 2+len
/// +------+-----------------+
/// | vb   | item key bytes  |
/// | u16BE|                 |
/// +------+-----------------+
/// ```
pub fn encode_key(vbucket: VbucketId, key: &[u8], out: &mut Vec<u8>) {
    out.reserve(KEY_PREFIX_LEN + key.len());
    out.extend_from_slice(&vbucket.to_be_bytes());
    out.extend_from_slice(key);
}

/// Splits a data key into its vbucket and item key.
pub fn decode_key(buf: &[u8]) -> Result<(VbucketId, &[u8]), RecordError> {
    match buf {
        [hi, lo, key @ ..] => Ok((u16::from_be_bytes([*hi, *lo]), key)),
        _ => Err(RecordError::KeyTooShort),
    }
}

/// The 2-byte prefix shared by every data key of `vbucket`.
pub fn vbucket_prefix(vbucket: VbucketId) -> [u8; KEY_PREFIX_LEN] {
    vbucket.to_be_bytes()
}

// === values ===

/// Bytes `m` takes on disk as key + value, before fjall's own overhead
/// (used for the flusher's byte budget and `ep_*` byte counters).
pub fn encoded_len(m: &Mutation) -> usize {
    let value_len = match &m.kind {
        MutationKind::Set { value, .. } => value.len(),
        MutationKind::Delete => 0,
    };
    KEY_PREFIX_LEN + m.key.len() + HEADER_LEN + value_len
}

/// Appends the record (fjall value) for `header` and `value`.
///
/// All integers are big-endian. The CRC is CRC-32 (IEEE, as `crc32fast`)
/// over bytes 0..30 followed by the value bytes, i.e. over everything in the
/// record except the CRC field itself.
///
/// ```text
/// 0    1    2        6        10               18               26       30       34
/// +----+----+--------+--------+----------------+----------------+--------+--------+----------
/// |ver |kind| flags  |exptime |      cas       |     seqno      |  time  | crc32  | value ...
/// | u8 | u8 |  u32   |  u32   |      u64       |      u64       |  u32   |  u32   | (rest)
/// +----+----+--------+--------+----------------+----------------+--------+--------+----------
///  ver  = 1
///  kind = 0 item, 1 tombstone (a tombstone has no value bytes)
/// ```
///
/// The value length is not stored: fjall already frames the value, so a
/// length field would only be one more thing that can disagree.
pub fn encode_record(header: &RecordHeader, value: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.reserve(HEADER_LEN + value.len());
    out.push(FORMAT_VERSION);
    out.push(match header.kind {
        RecordKind::Item => KIND_ITEM,
        RecordKind::Tombstone => KIND_TOMBSTONE,
    });
    out.extend_from_slice(&header.flags.to_be_bytes());
    out.extend_from_slice(&header.exptime.to_be_bytes());
    out.extend_from_slice(&header.cas.to_be_bytes());
    out.extend_from_slice(&header.seqno.to_be_bytes());
    out.extend_from_slice(&header.time.to_be_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&out[start..]);
    crc.update(value);
    out.extend_from_slice(&crc.finalize().to_be_bytes());
    out.extend_from_slice(value);
}

/// Appends the record for a mutation (a tombstone for a `Delete`).
pub fn encode_mutation(m: &Mutation, out: &mut Vec<u8>) {
    let value: &[u8] = match &m.kind {
        MutationKind::Set { value, .. } => value,
        MutationKind::Delete => &[],
    };
    encode_record(&RecordHeader::from_mutation(m), value, out);
}

/// Decodes one record (a fjall value) from `buf`, borrowing the value bytes.
///
/// Total: any input gives `Ok` or a [`RecordError`]. This is the entry point
/// for the disk-facing fuzz target; its invariant is that an `Ok` record
/// re-encodes to exactly `buf`.
pub fn decode_record(buf: &[u8]) -> Result<Record<'_>, RecordError> {
    let (header_bytes, value) = buf
        .split_at_checked(HEADER_LEN)
        .ok_or(RecordError::Truncated)?;
    let h: &[u8; HEADER_LEN] = header_bytes
        .try_into()
        .map_err(|_| RecordError::Truncated)?;
    if h[0] != FORMAT_VERSION {
        return Err(RecordError::UnknownVersion(h[0]));
    }
    let kind = match h[1] {
        KIND_ITEM => RecordKind::Item,
        KIND_TOMBSTONE => RecordKind::Tombstone,
        other => return Err(RecordError::UnknownKind(other)),
    };
    let stored = be_u32(h, CRC_OFFSET);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&h[..CRC_OFFSET]);
    crc.update(value);
    let computed = crc.finalize();
    if stored != computed {
        return Err(RecordError::ChecksumMismatch { stored, computed });
    }
    // Checked after the CRC so that a flipped kind byte reports as the
    // corruption it is rather than as a malformed tombstone.
    if kind == RecordKind::Tombstone && !value.is_empty() {
        return Err(RecordError::TombstoneWithValue);
    }
    let header = RecordHeader {
        kind,
        flags: be_u32(h, 2),
        exptime: be_u32(h, 6),
        cas: be_u64(h, 10),
        seqno: be_u64(h, 18),
        time: be_u32(h, 26),
    };
    Ok(Record { header, value })
}

/// Decodes a record held in `Bytes`; the value is a zero-copy slice of `buf`
/// (a reference-count increment, no copy).
pub fn decode_value(buf: Bytes) -> Result<StoredItem, RecordError> {
    let header = decode_record(&buf)?.header;
    Ok(StoredItem {
        header,
        value: buf.slice(HEADER_LEN..),
    })
}

/// Reads a big-endian u32 at a constant offset of the fixed header. The
/// offsets are compile-time constants within `HEADER_LEN`, so the fallback
/// is unreachable; it exists to keep the decoder free of panic paths.
fn be_u32(h: &[u8; HEADER_LEN], at: usize) -> u32 {
    let mut b = [0u8; 4];
    if let Some(src) = h.get(at..at + 4) {
        b.copy_from_slice(src);
    }
    u32::from_be_bytes(b)
}

/// Reads a big-endian u64 at a constant offset of the fixed header (see
/// [`be_u32`]).
fn be_u64(h: &[u8; HEADER_LEN], at: usize) -> u64 {
    let mut b = [0u8; 8];
    if let Some(src) = h.get(at..at + 8) {
        b.copy_from_slice(src);
    }
    u64::from_be_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(kind: RecordKind) -> RecordHeader {
        RecordHeader {
            kind,
            flags: 0xdead_beef,
            exptime: 1_700_000_000,
            cas: 0x0102_0304_0506_0708,
            seqno: 42,
            time: 1_600_000_000,
        }
    }

    fn encoded(h: &RecordHeader, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_record(h, value, &mut out);
        out
    }

    #[test]
    fn layout_is_byte_exact() {
        let buf = encoded(&header(RecordKind::Item), b"hi");
        assert_eq!(buf.len(), HEADER_LEN + 2);
        assert_eq!(&buf[..2], &[1, 0]);
        assert_eq!(&buf[2..6], &[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(&buf[6..10], &1_700_000_000u32.to_be_bytes());
        assert_eq!(&buf[10..18], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&buf[18..26], &42u64.to_be_bytes());
        assert_eq!(&buf[26..30], &1_600_000_000u32.to_be_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&buf[..30]);
        crc.update(b"hi");
        assert_eq!(&buf[30..34], &crc.finalize().to_be_bytes());
        assert_eq!(&buf[34..], b"hi");
    }

    #[test]
    fn tombstone_round_trips() {
        let h = header(RecordKind::Tombstone);
        let buf = encoded(&h, b"");
        let r = decode_record(&buf).unwrap();
        assert_eq!(r.header, h);
        assert!(r.value.is_empty());
    }

    #[test]
    fn mutation_encodes_to_its_header() {
        let set = Mutation {
            vbucket: 7,
            seqno: 9,
            key: Bytes::from_static(b"k"),
            cas: 77,
            time: 5,
            kind: MutationKind::Set {
                value: Bytes::from_static(b"value"),
                flags: 3,
                exptime: 4,
            },
        };
        let mut buf = Vec::new();
        encode_mutation(&set, &mut buf);
        assert_eq!(buf.len() + KEY_PREFIX_LEN + 1, encoded_len(&set));
        let r = decode_record(&buf).unwrap();
        assert_eq!(r.header, RecordHeader::from_mutation(&set));
        assert_eq!(r.value, b"value");

        let del = Mutation {
            kind: MutationKind::Delete,
            ..set
        };
        buf.clear();
        encode_mutation(&del, &mut buf);
        let r = decode_record(&buf).unwrap();
        assert!(r.header.is_tombstone());
        assert_eq!((r.header.seqno, r.header.cas), (9, 77));
    }

    #[test]
    fn every_truncation_is_an_error() {
        for value in [&b""[..], b"x", b"a longer value"] {
            let buf = encoded(&header(RecordKind::Item), value);
            for cut in 0..buf.len() {
                let err = decode_record(&buf[..cut]).unwrap_err();
                if cut < HEADER_LEN {
                    assert_eq!(err, RecordError::Truncated, "cut {cut}");
                } else {
                    assert!(
                        matches!(err, RecordError::ChecksumMismatch { .. }),
                        "cut {cut}: {err:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn crc_mismatch_is_detected_in_every_byte() {
        let buf = encoded(&header(RecordKind::Item), b"payload");
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x10;
            let err = decode_record(&bad).unwrap_err();
            match i {
                0 => assert_eq!(err, RecordError::UnknownVersion(1 ^ 0x10)),
                1 => assert_eq!(err, RecordError::UnknownKind(0x10)),
                _ => assert!(
                    matches!(err, RecordError::ChecksumMismatch { .. }),
                    "byte {i}: {err:?}"
                ),
            }
        }
    }

    #[test]
    fn tombstone_with_value_is_rejected() {
        // A tombstone header with a valid CRC over a value: only a buggy
        // writer produces it, and the decoder must still refuse it.
        let buf = encoded(&header(RecordKind::Tombstone), b"ghost");
        assert_eq!(decode_record(&buf), Err(RecordError::TombstoneWithValue));
    }

    #[test]
    fn unknown_version_is_rejected_before_crc() {
        let mut buf = encoded(&header(RecordKind::Item), b"v");
        buf[0] = 2;
        assert_eq!(decode_record(&buf), Err(RecordError::UnknownVersion(2)));
    }

    #[test]
    fn keys_sort_by_vbucket_first() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        encode_key(1, b"zzz", &mut a);
        encode_key(2, b"a", &mut b);
        assert!(a < b);
        assert_eq!(decode_key(&a), Ok((1, &b"zzz"[..])));
        assert_eq!(decode_key(&[0x01, 0x00]), Ok((256, &b""[..])));
        assert_eq!(decode_key(&[0x01]), Err(RecordError::KeyTooShort));
        assert_eq!(decode_key(&[]), Err(RecordError::KeyTooShort));
    }

    #[test]
    fn decode_value_slices_without_copy() {
        let buf = Bytes::from(encoded(&header(RecordKind::Item), b"shared"));
        let item = decode_value(buf.clone()).unwrap();
        assert_eq!(item.value, &b"shared"[..]);
        // Same allocation: the value pointer lies inside `buf`.
        assert_eq!(item.value.as_ptr(), buf[HEADER_LEN..].as_ptr());
        let owned = item.detach();
        assert_ne!(owned.value.as_ptr(), buf[HEADER_LEN..].as_ptr());
        assert_eq!(owned.value, &b"shared"[..]);
    }

    fn any_header() -> impl Strategy<Value = RecordHeader> {
        (
            any::<bool>(),
            any::<u32>(),
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
        )
            .prop_map(|(tomb, flags, exptime, cas, seqno, time)| RecordHeader {
                kind: if tomb {
                    RecordKind::Tombstone
                } else {
                    RecordKind::Item
                },
                flags,
                exptime,
                cas,
                seqno,
                time,
            })
    }

    proptest! {
        /// Law: encode → decode is the identity (tombstones carry no value).
        #[test]
        fn encode_decode_round_trips(h in any_header(), value in proptest::collection::vec(any::<u8>(), 0..512)) {
            let value = if h.is_tombstone() { Vec::new() } else { value };
            let buf = encoded(&h, &value);
            let r = decode_record(&buf).unwrap();
            prop_assert_eq!(r.header, h);
            prop_assert_eq!(r.value, &value[..]);
            let item = decode_value(Bytes::from(buf)).unwrap();
            prop_assert_eq!(item.header, h);
            prop_assert_eq!(&item.value[..], &value[..]);
        }

        /// Law: random bytes never panic, and anything accepted is canonical
        /// (re-encodes to the same bytes).
        #[test]
        fn random_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..128)) {
            if let Ok(r) = decode_record(&buf) {
                prop_assert_eq!(&encoded(&r.header, r.value)[..], &buf[..]);
            }
            let _ = decode_key(&buf);
        }

        /// Law: flipping any bit of a valid record is detected.
        #[test]
        fn any_bit_flip_is_detected(h in any_header(), value in proptest::collection::vec(any::<u8>(), 0..64), bit in any::<usize>()) {
            let value = if h.is_tombstone() { Vec::new() } else { value };
            let mut buf = encoded(&h, &value);
            let bit = bit % (buf.len() * 8);
            buf[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(decode_record(&buf).is_err());
        }
    }
}
