//! [`FailoverLog`]: a vbucket's history as (vbucket UUID, seqno) pairs,
//! newest first. A vbucket gets a new UUID whenever it becomes active
//! (failover, unclean restart); the entry records the seqno it started
//! from. A consumer resumes a stream by quoting the UUID and seqno it last
//! saw; the producer finds that branch in its log and either continues or
//! answers ROLLBACK. The log travels as the body of a successful
//! DCP_STREAM_REQ or DCP_GET_FAILOVER_LOG reply, 16 bytes an entry:
//!
//! ```text
//!   Byte/     0       |       1       |       2       |       3       |
//!     +---------------+---------------+---------------+---------------+
//!    0| vbucket UUID                                                  |
//!     |                                                               |
//!     +---------------+---------------+---------------+---------------+
//!    8| seqno                                                         |
//!     |                                                               |
//!     +---------------+---------------+---------------+---------------+
//!     … repeated per entry
//! ```
//!
//! Parsed logs stay in the frame: [`FailoverLog`] is a checked span, and
//! [`FailoverLog::entries`] decodes entries as they are iterated.

use std::iter::FusedIterator;
use std::slice::ChunksExact;

use bytes::{BufMut, BytesMut};

use crate::binary::encode::EncodeError;
use crate::Span;

/// Bytes per entry on the wire.
pub const FAILOVER_ENTRY_LEN: usize = 16;

/// Most entries a failover log may carry. Couchbase trims its logs to
/// `ep_max_failover_entries`, 25 by default; ten times that leaves room for
/// a differently configured peer while bounding a collected log to 4 KiB.
pub const MAX_FAILOVER_ENTRIES: usize = 256;

/// One branch of a vbucket's history.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FailoverEntry {
    /// The UUID the vbucket took when this branch began.
    pub vbucket_uuid: u64,
    /// The seqno it began from.
    pub seqno: u64,
}

impl FailoverEntry {
    /// The 16 wire bytes.
    pub fn to_wire(&self) -> [u8; FAILOVER_ENTRY_LEN] {
        let mut b = [0u8; FAILOVER_ENTRY_LEN];
        b[..8].copy_from_slice(&self.vbucket_uuid.to_be_bytes());
        b[8..].copy_from_slice(&self.seqno.to_be_bytes());
        b
    }

    /// The entry in 16 wire bytes.
    pub fn from_wire(b: &[u8; FAILOVER_ENTRY_LEN]) -> FailoverEntry {
        // Both words lie inside the 16-byte array, so `get` always succeeds.
        let word = |at: usize| {
            b.get(at..)
                .and_then(|rest| rest.first_chunk::<8>())
                .map_or(0, |bytes| u64::from_be_bytes(*bytes))
        };
        FailoverEntry {
            vbucket_uuid: word(0),
            seqno: word(8),
        }
    }
}

/// A failover log inside a parsed frame: a span checked to hold a whole
/// number of entries, at most [`MAX_FAILOVER_ENTRIES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FailoverLog {
    body: Span,
}

impl FailoverLog {
    /// The log whose bytes lie at `body`, checked by length alone (so a
    /// reply is judged from its header); the error is the reason for
    /// refusing the frame.
    pub fn from_span(body: Span) -> Result<FailoverLog, &'static str> {
        check_len(body.len())?;
        Ok(FailoverLog { body })
    }

    /// Check a standalone body (one not parsed from a frame, such as a
    /// persisted copy) and iterate its entries.
    pub fn parse(body: &[u8]) -> Result<FailoverEntries<'_>, &'static str> {
        check_len(body.len())?;
        Ok(FailoverEntries::new(body))
    }

    /// Where the log's bytes lie in the frame.
    pub fn span(&self) -> Span {
        self.body
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.body.len() / FAILOVER_ENTRY_LEN
    }

    /// True when the log has no entries.
    pub fn is_empty(&self) -> bool {
        self.body.is_empty()
    }

    /// The entries, newest first, decoded from `frame` (the bytes the log
    /// was parsed from).
    pub fn entries<'a>(&self, frame: &'a [u8]) -> FailoverEntries<'a> {
        FailoverEntries::new(self.body.of(frame))
    }

    /// Append `entries` as a log body (no frame header) to `out`; refused,
    /// with nothing written, beyond [`MAX_FAILOVER_ENTRIES`].
    pub fn encode(out: &mut BytesMut, entries: &[FailoverEntry]) -> Result<(), EncodeError> {
        out.reserve(encoded_len(entries.len())?);
        put_entries(out, entries);
        Ok(())
    }
}

fn check_len(len: usize) -> Result<(), &'static str> {
    // Not `is_multiple_of`: that is Rust 1.87, the workspace says 1.85.
    let (entries, partial) = (len / FAILOVER_ENTRY_LEN, len % FAILOVER_ENTRY_LEN);
    if partial != 0 {
        return Err("failover log is not a whole number of entries");
    }
    if entries > MAX_FAILOVER_ENTRIES {
        return Err("failover log has too many entries");
    }
    Ok(())
}

/// Body length of a log of `count` entries, refusing one too long.
pub(crate) fn encoded_len(count: usize) -> Result<usize, EncodeError> {
    if count > MAX_FAILOVER_ENTRIES {
        return Err(EncodeError::TooManyEntries(count));
    }
    Ok(count * FAILOVER_ENTRY_LEN)
}

/// Append the entries' wire bytes; the caller has checked the count.
pub(crate) fn put_entries(out: &mut BytesMut, entries: &[FailoverEntry]) {
    for entry in entries {
        out.put_slice(&entry.to_wire());
    }
}

/// The entries of a failover log, decoded as they are iterated.
#[derive(Clone, Debug)]
pub struct FailoverEntries<'a> {
    chunks: ChunksExact<'a, u8>,
}

impl<'a> FailoverEntries<'a> {
    fn new(body: &'a [u8]) -> FailoverEntries<'a> {
        FailoverEntries {
            chunks: body.chunks_exact(FAILOVER_ENTRY_LEN),
        }
    }
}

impl Iterator for FailoverEntries<'_> {
    type Item = FailoverEntry;

    fn next(&mut self) -> Option<FailoverEntry> {
        // `chunks_exact` yields only whole 16-byte chunks.
        self.chunks
            .next()
            .and_then(|chunk| chunk.first_chunk::<FAILOVER_ENTRY_LEN>())
            .map(FailoverEntry::from_wire)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.chunks.size_hint()
    }
}

impl ExactSizeIterator for FailoverEntries<'_> {}

impl FusedIterator for FailoverEntries<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_big_endian_pairs() {
        let entry = FailoverEntry {
            vbucket_uuid: 0x0102_0304_0506_0708,
            seqno: 0x1112_1314_1516_1718,
        };
        let wire = entry.to_wire();
        assert_eq!(
            wire,
            [
                0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16,
                0x17, 0x18
            ]
        );
        assert_eq!(FailoverEntry::from_wire(&wire), entry);
    }

    #[test]
    fn encode_then_parse() {
        let log: Vec<FailoverEntry> = (0..3)
            .map(|i| FailoverEntry {
                vbucket_uuid: 100 + i,
                seqno: 10 * i,
            })
            .collect();
        let mut out = BytesMut::new();
        FailoverLog::encode(&mut out, &log).unwrap();
        assert_eq!(out.len(), 48);
        let entries = FailoverLog::parse(&out).unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries.collect::<Vec<_>>(), log);

        let parsed = FailoverLog::from_span(Span::new(0, 48)).unwrap();
        assert_eq!((parsed.len(), parsed.is_empty()), (3, false));
        assert_eq!(parsed.entries(&out).nth(2), log.get(2).copied());
        assert!(FailoverLog::from_span(Span::EMPTY).unwrap().is_empty());
    }

    #[test]
    fn lengths_are_bounded() {
        assert_eq!(
            FailoverLog::parse(&[0; 17]).unwrap_err(),
            "failover log is not a whole number of entries"
        );
        let most = MAX_FAILOVER_ENTRIES * FAILOVER_ENTRY_LEN;
        assert!(FailoverLog::from_span(Span::new(0, most)).is_ok());
        assert_eq!(
            FailoverLog::from_span(Span::new(0, most + FAILOVER_ENTRY_LEN)).unwrap_err(),
            "failover log has too many entries"
        );

        let too_many = vec![FailoverEntry::default(); MAX_FAILOVER_ENTRIES + 1];
        let mut out = BytesMut::from(&b"earlier"[..]);
        assert_eq!(
            FailoverLog::encode(&mut out, &too_many),
            Err(EncodeError::TooManyEntries(MAX_FAILOVER_ENTRIES + 1))
        );
        assert_eq!(&out[..], b"earlier");
    }
}
