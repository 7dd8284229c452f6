//! Writing whole frames: the shared back end of
//! [`encode_request`](crate::binary::encode_request),
//! [`encode_response`](crate::binary::encode_response) and the DCP
//! encoders. Lengths are computed
//! from the slices, never taken on trust, and a part too long for its header
//! field is refused with an [`EncodeError`] before a single byte is written —
//! a bad argument never panics and never leaves half a frame in the buffer.
//! The frame goes straight into the caller's `BytesMut` (one reservation, no
//! intermediate buffer), so a pipelined batch of replies shares one write.

use bytes::{BufMut, BytesMut};

use crate::binary::header::{RawHeader, HEADER_LEN};

/// A frame that cannot be encoded: some part overflows its header field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EncodeError {
    /// The key is longer than the 16-bit key length field allows.
    KeyTooLong(usize),
    /// The extras are longer than the 8-bit extras length field allows.
    ExtrasTooLong(usize),
    /// Extras + key + value overflow the 32-bit body length field.
    BodyTooLong(usize),
    /// A DCP item's extended metadata is longer than its 16-bit `nmeta`
    /// extras field allows.
    ExtMetaTooLong(usize),
    /// A DCP failover log has more entries than
    /// [`MAX_FAILOVER_ENTRIES`](crate::binary::dcp::MAX_FAILOVER_ENTRIES).
    TooManyEntries(usize),
}

impl std::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EncodeError::KeyTooLong(n) => write!(f, "key of {n} bytes exceeds 65535"),
            EncodeError::ExtrasTooLong(n) => write!(f, "extras of {n} bytes exceed 255"),
            EncodeError::BodyTooLong(n) => write!(f, "body of {n} bytes exceeds 4 GiB"),
            EncodeError::ExtMetaTooLong(n) => {
                write!(f, "extended metadata of {n} bytes exceeds 65535")
            }
            EncodeError::TooManyEntries(n) => write!(f, "failover log of {n} entries is too long"),
        }
    }
}

impl std::error::Error for EncodeError {}

/// Append one frame to `out`: `header` with its three length fields filled
/// in from the slices, then extras, key and value.
pub(crate) fn write_frame(
    out: &mut BytesMut,
    header: RawHeader,
    extras: &[u8],
    key: &[u8],
    value: &[u8],
) -> Result<(), EncodeError> {
    begin_frame(out, header, extras.len(), key.len(), value.len())?;
    out.put_slice(extras);
    out.put_slice(key);
    out.put_slice(value);
    Ok(())
}

/// Check the three lengths, reserve room for the whole frame and write
/// `header` with them filled in; the caller then appends exactly
/// `extras_len` + `key_len` + `value_len` bytes. For frames whose value is
/// assembled from parts (a DCP item's value and extended metadata, a
/// failover log's entries) without an intermediate buffer. Nothing is
/// written on error.
pub(crate) fn begin_frame(
    out: &mut BytesMut,
    mut header: RawHeader,
    extras_len: usize,
    key_len: usize,
    value_len: usize,
) -> Result<(), EncodeError> {
    header.extras_len =
        u8::try_from(extras_len).map_err(|_| EncodeError::ExtrasTooLong(extras_len))?;
    header.key_len = u16::try_from(key_len).map_err(|_| EncodeError::KeyTooLong(key_len))?;
    // extras ≤ 255 and key ≤ 65535, so only the value can overflow the sum.
    let body = (extras_len + key_len)
        .checked_add(value_len)
        .ok_or(EncodeError::BodyTooLong(usize::MAX))?;
    header.body_len = u32::try_from(body).map_err(|_| EncodeError::BodyTooLong(body))?;

    out.reserve(HEADER_LEN + body);
    out.put_slice(&header.encode());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binary::header::REQUEST_MAGIC;

    fn blank() -> RawHeader {
        RawHeader {
            magic: REQUEST_MAGIC,
            opcode: 0x01,
            key_len: 0xffff,
            extras_len: 0xff,
            data_type: 0,
            specific: 7,
            body_len: 0xffff_ffff,
            opaque: 0xaabb_ccdd,
            cas: 1,
        }
    }

    #[test]
    fn lengths_come_from_the_slices() {
        let mut out = BytesMut::new();
        write_frame(&mut out, blank(), &[9; 8], b"key", b"value").unwrap();
        assert_eq!(out.len(), 24 + 8 + 3 + 5);
        assert_eq!(&out[2..4], &[0, 3]);
        assert_eq!(out[4], 8);
        assert_eq!(&out[8..12], &[0, 0, 0, 16]);
        assert_eq!(&out[24..32], &[9; 8]);
        assert_eq!(&out[32..], b"keyvalue");
    }

    #[test]
    fn oversized_parts_are_refused_without_writing() {
        let mut out = BytesMut::from(&b"earlier reply"[..]);
        let long_key = vec![b'k'; 65_536];
        assert_eq!(
            write_frame(&mut out, blank(), &[], &long_key, &[]),
            Err(EncodeError::KeyTooLong(65_536))
        );
        assert_eq!(
            write_frame(&mut out, blank(), &[0; 256], b"k", &[]),
            Err(EncodeError::ExtrasTooLong(256))
        );
        assert_eq!(&out[..], b"earlier reply");
        assert_eq!(
            EncodeError::KeyTooLong(65_536).to_string(),
            "key of 65536 bytes exceeds 65535"
        );
    }
}
