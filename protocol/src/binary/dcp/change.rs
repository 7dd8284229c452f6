//! What a stream carries, producer to consumer: DCP_SNAPSHOT_MARKER (0x56)
//! bounds a run of changes, DCP_MUTATION (0x57), DCP_DELETION (0x58) and
//! DCP_EXPIRATION (0x59) are the changes, DCP_SET_VBUCKET_STATE (0x5b)
//! hands a vbucket over; and the one message going the other way,
//! DCP_SEQNO_ACKNOWLEDGED (0x61), the replica's durability acknowledgement.
//! Layouts from kv_engine's `snapshot-marker.md`, `mutation.md`,
//! `deletion.md`, `expiration.md`, `set-vbucket-state.md` and
//! `seqno-acknowledged.md`; the original ("V1") extras only (see the
//! [module doc](super)).
//!
//! An item's extended metadata (`nmeta` bytes) is the tail of the body,
//! after the key and the value: parsing splits it off into its own span,
//! and encoding writes the parts one after another, never joining them in
//! a buffer.

use bytes::{BufMut, BytesMut};

use super::{flag_set, request_header, DcpMessage, Frame, Rule};
use crate::binary::encode::{begin_frame, write_frame, EncodeError};
use crate::binary::extras::VbucketState;
use crate::binary::header::RawHeader;
use crate::binary::opcode::Opcode;
use crate::binary::shape::Presence;
use crate::Span;

/// DCP_SNAPSHOT_MARKER (V1) extras: start (8), end (8), flags (4).
pub const SNAPSHOT_MARKER_EXTRAS_LEN: usize = 20;
/// DCP_MUTATION extras: by seqno (8), rev seqno (8), flags (4), expiration
/// (4), lock time (4), nmeta (2), NRU (1).
pub const MUTATION_EXTRAS_LEN: usize = 31;
/// DCP_DELETION and DCP_EXPIRATION (V1) extras: by seqno (8), rev seqno
/// (8), nmeta (2).
pub const DELETION_EXTRAS_LEN: usize = 18;
/// DCP_SET_VBUCKET_STATE extras: state (1).
pub const SET_VBUCKET_STATE_EXTRAS_LEN: usize = 1;
/// DCP_SEQNO_ACKNOWLEDGED extras: prepared seqno (8).
pub const SEQNO_ACKNOWLEDGED_EXTRAS_LEN: usize = 8;

flag_set! {
    /// DCP_SNAPSHOT_MARKER flags ("snapshot type").
    SnapshotFlags {
        /// 0x01: the snapshot comes from memory.
        MEMORY = 0x01,
        /// 0x02: the snapshot comes from disk (backfill).
        DISK = 0x02,
        /// 0x04: the snapshot is a whole checkpoint (intra-cluster
        /// replication).
        CHECKPOINT = 0x04,
        /// 0x08: the consumer replies once it has the whole snapshot.
        ACK = 0x08,
    }
}

// === snapshot marker ===

/// DCP_SNAPSHOT_MARKER (0x56), V1: the changes that follow, up to the next
/// marker, are the seqnos `start_seqno..=end_seqno` (deduplicated: some
/// seqnos may be absent). Extras, big-endian:
///
/// ```text
///   Byte/     0       |       1       |       2       |       3       |
///     +---------------+---------------+---------------+---------------+
///    0| start seqno                                                   |
///     |                                                               |
///     +---------------+---------------+---------------+---------------+
///    8| end seqno                                                     |
///     |                                                               |
///     +---------------+---------------+---------------+---------------+
///   16| flags (snapshot type)                                         |
///     +---------------+---------------+---------------+---------------+
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SnapshotMarker {
    /// The vbucket streamed.
    pub vbucket: u16,
    /// The stream's opaque.
    pub opaque: u32,
    /// First seqno of the snapshot.
    pub start_seqno: u64,
    /// Last seqno of the snapshot.
    pub end_seqno: u64,
    /// Where the snapshot comes from, and whether to acknowledge it.
    pub flags: SnapshotFlags,
}

/// Append a DCP_SNAPSHOT_MARKER (V1) request to `out`.
pub fn encode_snapshot_marker(out: &mut BytesMut, marker: &SnapshotMarker) {
    let mut extras = [0u8; SNAPSHOT_MARKER_EXTRAS_LEN];
    extras[..8].copy_from_slice(&marker.start_seqno.to_be_bytes());
    extras[8..16].copy_from_slice(&marker.end_seqno.to_be_bytes());
    extras[16..].copy_from_slice(&marker.flags.0.to_be_bytes());
    let header = request_header(Opcode::DcpSnapshotMarker, marker.vbucket, marker.opaque);
    // 20 bytes of extras cannot overflow any length field.
    let _ = write_frame(out, header, &extras, &[], &[]);
}

pub(crate) const SNAPSHOT_MARKER: Rule = Rule {
    extras: SNAPSHOT_MARKER_EXTRAS_LEN,
    bad_extras: "DCP_SNAPSHOT_MARKER needs 20 bytes of extras (V2 markers are not supported)",
    key: Presence::Forbidden,
    value: Presence::Forbidden,
    decode: |frame| {
        Ok(DcpMessage::SnapshotMarker(SnapshotMarker {
            vbucket: frame.raw.specific,
            opaque: frame.raw.opaque,
            start_seqno: frame.u64_at(0)?,
            end_seqno: frame.u64_at(8)?,
            flags: SnapshotFlags(frame.u32_at(16)?),
        }))
    },
};

// === mutation ===

/// Everything a DCP_MUTATION says beside its key, value and extended
/// metadata: the header fields it uses, then the extras (big-endian):
///
/// ```text
///   Byte/     0       |       1       |       2       |       3       |
///     +---------------+---------------+---------------+---------------+
///    0| by seqno                                                      |
///     |                                                               |
///     +---------------+---------------+---------------+---------------+
///    8| rev seqno                                                     |
///     |                                                               |
///     +---------------+---------------+---------------+---------------+
///   16| flags                                                         |
///     +---------------+---------------+---------------+---------------+
///   20| expiration                                                    |
///     +---------------+---------------+---------------+---------------+
///   24| lock time                                                     |
///     +---------------+---------------+---------------+---------------+
///   28| nmeta                         | NRU           |
///     +---------------+---------------+---------------+
/// ```
///
/// `nmeta` is not a field here: it is the length of the extended metadata,
/// computed when encoding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MutationFields {
    /// The item's vbucket.
    pub vbucket: u16,
    /// The stream's opaque.
    pub opaque: u32,
    /// The item's CAS (header bytes 16–23).
    pub cas: u64,
    /// The value's data type (header byte 5: JSON 0x01, Snappy 0x02, XATTR
    /// 0x04).
    pub data_type: u8,
    /// The mutation's seqno in the vbucket.
    pub by_seqno: u64,
    /// The item's revision: how many times it has been changed.
    pub rev_seqno: u64,
    /// The item's client flags.
    pub flags: u32,
    /// The item's expiry, as the binary protocol sends it.
    pub expiration: u32,
    /// How long the item stays locked (GETL); 0 for none.
    pub lock_time: u32,
    /// The producer's not-recently-used bits; a consumer may ignore them.
    pub nru: u8,
}

/// DCP_MUTATION (0x57): an item was stored. Spans index the frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Mutation {
    /// Header and extras fields.
    pub fields: MutationFields,
    /// The item's key.
    pub key: Span,
    /// The item's value (without the extended metadata).
    pub value: Span,
    /// The extended metadata at the end of the body (`nmeta` bytes; empty
    /// unless the connection enabled `enable_ext_metadata`).
    pub ext_meta: Span,
}

impl Mutation {
    /// Append this request, re-encoded from `frame`, to `out`.
    pub fn encode(&self, out: &mut BytesMut, frame: &[u8]) -> Result<(), EncodeError> {
        encode_mutation(
            out,
            &self.fields,
            self.key.of(frame),
            self.value.of(frame),
            self.ext_meta.of(frame),
        )
    }
}

/// Append a DCP_MUTATION request to `out`: `value` then `ext_meta` form the
/// body after the key, and `nmeta` is `ext_meta`'s length. Nothing is
/// written if a part overflows its length field.
pub fn encode_mutation(
    out: &mut BytesMut,
    fields: &MutationFields,
    key: &[u8],
    value: &[u8],
    ext_meta: &[u8],
) -> Result<(), EncodeError> {
    let nmeta = nmeta(ext_meta)?;
    let mut extras = [0u8; MUTATION_EXTRAS_LEN];
    extras[..8].copy_from_slice(&fields.by_seqno.to_be_bytes());
    extras[8..16].copy_from_slice(&fields.rev_seqno.to_be_bytes());
    extras[16..20].copy_from_slice(&fields.flags.to_be_bytes());
    extras[20..24].copy_from_slice(&fields.expiration.to_be_bytes());
    extras[24..28].copy_from_slice(&fields.lock_time.to_be_bytes());
    extras[28..30].copy_from_slice(&nmeta.to_be_bytes());
    extras[30] = fields.nru;
    let header = RawHeader {
        cas: fields.cas,
        data_type: fields.data_type,
        ..request_header(Opcode::DcpMutation, fields.vbucket, fields.opaque)
    };
    write_item(out, header, &extras, key, value, ext_meta)
}

pub(crate) const MUTATION: Rule = Rule {
    extras: MUTATION_EXTRAS_LEN,
    bad_extras: "DCP_MUTATION needs 31 bytes of extras",
    key: Presence::Required,
    value: Presence::Optional,
    decode: decode_mutation,
};

fn decode_mutation(frame: &Frame<'_>) -> Result<DcpMessage, &'static str> {
    let (value, ext_meta) = split_ext_meta(frame.layout.value, frame.u16_at(28)?)?;
    Ok(DcpMessage::Mutation(Mutation {
        fields: MutationFields {
            vbucket: frame.raw.specific,
            opaque: frame.raw.opaque,
            cas: frame.raw.cas,
            data_type: frame.raw.data_type,
            by_seqno: frame.u64_at(0)?,
            rev_seqno: frame.u64_at(8)?,
            flags: frame.u32_at(16)?,
            expiration: frame.u32_at(20)?,
            lock_time: frame.u32_at(24)?,
            nru: frame.u8_at(30)?,
        },
        key: frame.layout.key,
        value,
        ext_meta,
    }))
}

// === deletion and expiration ===

/// Everything a DCP_DELETION or DCP_EXPIRATION says beside its key, value
/// (XATTRs, when the connection asked for them) and extended metadata.
/// Extras (V1), big-endian:
///
/// ```text
///   Byte/     0       |       1       |       2       |       3       |
///     +---------------+---------------+---------------+---------------+
///    0| by seqno                                                      |
///     |                                                               |
///     +---------------+---------------+---------------+---------------+
///    8| rev seqno                                                     |
///     |                                                               |
///     +---------------+---------------+---------------+---------------+
///   16| nmeta                         |
///     +---------------+---------------+
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DeletionFields {
    /// The item's vbucket.
    pub vbucket: u16,
    /// The stream's opaque.
    pub opaque: u32,
    /// The tombstone's CAS.
    pub cas: u64,
    /// The value's data type (XATTR 0x04 when XATTRs are carried).
    pub data_type: u8,
    /// The deletion's seqno in the vbucket.
    pub by_seqno: u64,
    /// The item's revision.
    pub rev_seqno: u64,
}

/// DCP_DELETION (0x58) or DCP_EXPIRATION (0x59): an item went away. Spans
/// index the frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Deletion {
    /// Header and extras fields.
    pub fields: DeletionFields,
    /// The item's key.
    pub key: Span,
    /// The body between key and extended metadata: the item's XATTRs when
    /// the connection opened with INCLUDE_XATTRS, otherwise empty.
    pub value: Span,
    /// The extended metadata at the end of the body (`nmeta` bytes).
    pub ext_meta: Span,
}

impl Deletion {
    /// Append this request as `opcode` (DCP_DELETION or DCP_EXPIRATION),
    /// re-encoded from `frame`, to `out`.
    pub(crate) fn encode(
        &self,
        out: &mut BytesMut,
        frame: &[u8],
        opcode: Opcode,
    ) -> Result<(), EncodeError> {
        encode_tombstone(
            out,
            opcode,
            &self.fields,
            self.key.of(frame),
            self.value.of(frame),
            self.ext_meta.of(frame),
        )
    }
}

/// Append a DCP_DELETION (V1) request to `out`; the body after the key is
/// `value` then `ext_meta`.
pub fn encode_deletion(
    out: &mut BytesMut,
    fields: &DeletionFields,
    key: &[u8],
    value: &[u8],
    ext_meta: &[u8],
) -> Result<(), EncodeError> {
    encode_tombstone(out, Opcode::DcpDeletion, fields, key, value, ext_meta)
}

/// Append a DCP_EXPIRATION request to `out`, in the deletion's V1 layout.
pub fn encode_expiration(
    out: &mut BytesMut,
    fields: &DeletionFields,
    key: &[u8],
    value: &[u8],
    ext_meta: &[u8],
) -> Result<(), EncodeError> {
    encode_tombstone(out, Opcode::DcpExpiration, fields, key, value, ext_meta)
}

fn encode_tombstone(
    out: &mut BytesMut,
    opcode: Opcode,
    fields: &DeletionFields,
    key: &[u8],
    value: &[u8],
    ext_meta: &[u8],
) -> Result<(), EncodeError> {
    let nmeta = nmeta(ext_meta)?;
    let mut extras = [0u8; DELETION_EXTRAS_LEN];
    extras[..8].copy_from_slice(&fields.by_seqno.to_be_bytes());
    extras[8..16].copy_from_slice(&fields.rev_seqno.to_be_bytes());
    extras[16..].copy_from_slice(&nmeta.to_be_bytes());
    let header = RawHeader {
        cas: fields.cas,
        data_type: fields.data_type,
        ..request_header(opcode, fields.vbucket, fields.opaque)
    };
    write_item(out, header, &extras, key, value, ext_meta)
}

pub(crate) const DELETION: Rule = Rule {
    extras: DELETION_EXTRAS_LEN,
    bad_extras: "DCP_DELETION needs 18 bytes of extras (delete times are not supported)",
    key: Presence::Required,
    value: Presence::Optional,
    decode: |frame| decode_tombstone(frame).map(DcpMessage::Deletion),
};

pub(crate) const EXPIRATION: Rule = Rule {
    extras: DELETION_EXTRAS_LEN,
    bad_extras: "DCP_EXPIRATION needs 18 bytes of extras (delete times are not supported)",
    key: Presence::Required,
    value: Presence::Optional,
    decode: |frame| decode_tombstone(frame).map(DcpMessage::Expiration),
};

fn decode_tombstone(frame: &Frame<'_>) -> Result<Deletion, &'static str> {
    let (value, ext_meta) = split_ext_meta(frame.layout.value, frame.u16_at(16)?)?;
    Ok(Deletion {
        fields: DeletionFields {
            vbucket: frame.raw.specific,
            opaque: frame.raw.opaque,
            cas: frame.raw.cas,
            data_type: frame.raw.data_type,
            by_seqno: frame.u64_at(0)?,
            rev_seqno: frame.u64_at(8)?,
        },
        key: frame.layout.key,
        value,
        ext_meta,
    })
}

// === shared by items ===

/// The 16-bit `nmeta` for `ext_meta`, or an error if it does not fit.
fn nmeta(ext_meta: &[u8]) -> Result<u16, EncodeError> {
    u16::try_from(ext_meta.len()).map_err(|_| EncodeError::ExtMetaTooLong(ext_meta.len()))
}

/// Write an item frame whose body after the key is `value` then `ext_meta`,
/// straight into `out`.
fn write_item(
    out: &mut BytesMut,
    header: RawHeader,
    extras: &[u8],
    key: &[u8],
    value: &[u8],
    ext_meta: &[u8],
) -> Result<(), EncodeError> {
    let tail = value
        .len()
        .checked_add(ext_meta.len())
        .ok_or(EncodeError::BodyTooLong(usize::MAX))?;
    begin_frame(out, header, extras.len(), key.len(), tail)?;
    out.put_slice(extras);
    out.put_slice(key);
    out.put_slice(value);
    out.put_slice(ext_meta);
    Ok(())
}

/// Split the body after the key into the value and the last `nmeta` bytes.
fn split_ext_meta(body: Span, nmeta: u16) -> Result<(Span, Span), &'static str> {
    let value_len = body
        .len()
        .checked_sub(usize::from(nmeta))
        .ok_or("DCP extended metadata longer than the body")?;
    let cut = body.start + value_len;
    Ok((Span::new(body.start, cut), Span::new(cut, body.end)))
}

// === set vbucket state ===

/// Append a DCP_SET_VBUCKET_STATE (0x5b) request to `out`; the one extras
/// byte is the state (1 active, 2 replica, 3 pending, 4 dead).
pub fn encode_set_vbucket_state(
    out: &mut BytesMut,
    vbucket: u16,
    opaque: u32,
    state: VbucketState,
) {
    let header = request_header(Opcode::DcpSetVbucketState, vbucket, opaque);
    // One byte of extras cannot overflow any length field.
    let _ = write_frame(out, header, &[state as u8], &[], &[]);
}

pub(crate) const SET_VBUCKET_STATE: Rule = Rule {
    extras: SET_VBUCKET_STATE_EXTRAS_LEN,
    bad_extras: "DCP_SET_VBUCKET_STATE needs 1 byte of extras",
    key: Presence::Forbidden,
    value: Presence::Forbidden,
    decode: |frame| {
        let state =
            VbucketState::from_u32(u32::from(frame.u8_at(0)?)).ok_or("invalid vbucket state")?;
        Ok(DcpMessage::SetVbucketState {
            vbucket: frame.raw.specific,
            opaque: frame.raw.opaque,
            state,
        })
    },
};

// === seqno acknowledged ===

/// Append a DCP_SEQNO_ACKNOWLEDGED (0x61) request to `out`: the replica
/// has reached `prepared_seqno` in `vbucket`. Extras:
///
/// ```text
///   Byte/     0       |       1       |       2       |       3       |
///     +---------------+---------------+---------------+---------------+
///    0| prepared seqno                                                |
///     |                                                               |
///     +---------------+---------------+---------------+---------------+
/// ```
///
/// Couchbase's single seqno serves every durability level: a replica
/// advances it when a write is in memory, or only once it is on disk when
/// the write asked for persistence on the replicas.
pub fn encode_seqno_acknowledged(
    out: &mut BytesMut,
    vbucket: u16,
    opaque: u32,
    prepared_seqno: u64,
) {
    let header = request_header(Opcode::DcpSeqnoAcknowledged, vbucket, opaque);
    // Eight bytes of extras cannot overflow any length field.
    let _ = write_frame(out, header, &prepared_seqno.to_be_bytes(), &[], &[]);
}

pub(crate) const SEQNO_ACKNOWLEDGED: Rule = Rule {
    extras: SEQNO_ACKNOWLEDGED_EXTRAS_LEN,
    bad_extras: "DCP_SEQNO_ACKNOWLEDGED needs 8 bytes of extras",
    key: Presence::Forbidden,
    value: Presence::Forbidden,
    decode: |frame| {
        Ok(DcpMessage::SeqnoAcknowledged {
            vbucket: frame.raw.specific,
            opaque: frame.raw.opaque,
            prepared_seqno: frame.u64_at(0)?,
        })
    },
};

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_fixture, assert_rejected, assert_rejected_with_body, patch};
    use super::*;
    use crate::binary::opcode as op;

    /// A V1 marker for an in-memory snapshot of seqnos 0..=8, vbucket 0,
    /// opaque 0xdeadbeef (snapshot-marker.md's example).
    const MARKER_MEMORY: &[u8] = &[
        0x80, 0x56, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, // extras 20
        0x00, 0x00, 0x00, 0x14, 0xde, 0xad, 0xbe, 0xef, // body 20, opaque
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // CAS
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // start seqno
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x08, // end seqno
        0x00, 0x00, 0x00, 0x01, // flags: memory
    ];

    /// A disk snapshot 5..=9 of vbucket 3 that asks for an ACK.
    const MARKER_DISK_ACK: &[u8] = &[
        0x80, 0x56, 0x00, 0x00, 0x14, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00,
        0x07, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // header
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, // start seqno
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x09, // end seqno
        0x00, 0x00, 0x00, 0x0a, // flags: disk | ack
    ];

    /// mutation.md's example: "hello" = "world" in vbucket 0x0210, by seqno
    /// 4, rev seqno 1, opaque 0x1210.
    const MUTATION_HELLO: &[u8] = &[
        0x80, 0x57, 0x00, 0x05, 0x1f, 0x00, 0x02, 0x10, // key 5, extras 31
        0x00, 0x00, 0x00, 0x29, 0x00, 0x00, 0x12, 0x10, // body 41, opaque
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // CAS
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, // by seqno
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, // rev seqno
        0x00, 0x00, 0x00, 0x00, // flags
        0x00, 0x00, 0x00, 0x00, // expiration
        0x00, 0x00, 0x00, 0x00, // lock time
        0x00, 0x00, 0x00, // nmeta, NRU
        b'h', b'e', b'l', b'l', b'o', b'w', b'o', b'r', b'l', b'd',
    ];

    /// Every field set: JSON "{}" for key "k" with 3 bytes of extended
    /// metadata, CAS 0x0102030405060708, flags 0xdeadbeef, expiry 3600,
    /// lock time 15, NRU 2.
    const MUTATION_FULL: &[u8] = &[
        0x80, 0x57, 0x00, 0x01, 0x1f, 0x01, 0x00, 0x07, // key 1, extras 31, JSON
        0x00, 0x00, 0x00, 0x25, 0x00, 0x00, 0x00, 0x09, // body 37, opaque 9
        0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, // CAS
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, // by seqno 256
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, // rev seqno 3
        0xde, 0xad, 0xbe, 0xef, // flags
        0x00, 0x00, 0x0e, 0x10, // expiration 3600
        0x00, 0x00, 0x00, 0x0f, // lock time 15
        0x00, 0x03, 0x02, // nmeta 3, NRU 2
        b'k', b'{', b'}', 0x01, 0x01, 0x00, // key, value, ext meta
    ];

    /// A V1 deletion of "hello" in vbucket 0x0210, by seqno 5, rev seqno 1,
    /// CAS 9, opaque 0x1210.
    const DELETION_HELLO: &[u8] = &[
        0x80, 0x58, 0x00, 0x05, 0x12, 0x00, 0x02, 0x10, // key 5, extras 18
        0x00, 0x00, 0x00, 0x17, 0x00, 0x00, 0x12, 0x10, // body 23, opaque
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x09, // CAS
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, // by seqno
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, // rev seqno
        0x00, 0x00, // nmeta
        b'h', b'e', b'l', b'l', b'o',
    ];

    /// set-vbucket-state.md: vbucket 0 goes dead, opaque 0xdeadbeef.
    const SET_DEAD: &[u8] = &[
        0x80, 0x5b, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0xde, 0xad, 0xbe,
        0xef, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // header
        0x04, // state: dead
    ];

    /// seqno-acknowledged.md: prepared seqno 4 in vbucket 0x0210, opaque
    /// 0x1210.
    const SEQNO_ACK_4: &[u8] = &[
        0x80, 0x61, 0x00, 0x00, 0x08, 0x00, 0x02, 0x10, 0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x12,
        0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // header
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, // prepared seqno
    ];

    #[test]
    fn snapshot_markers_byte_exact() {
        let memory = SnapshotMarker {
            vbucket: 0,
            opaque: 0xdead_beef,
            start_seqno: 0,
            end_seqno: 8,
            flags: SnapshotFlags::MEMORY,
        };
        let disk = SnapshotMarker {
            vbucket: 3,
            opaque: 7,
            start_seqno: 5,
            end_seqno: 9,
            flags: SnapshotFlags::DISK | SnapshotFlags::ACK,
        };
        for (wire, marker) in [(MARKER_MEMORY, memory), (MARKER_DISK_ACK, disk)] {
            assert_eq!(assert_fixture(wire), DcpMessage::SnapshotMarker(marker));
            let mut out = BytesMut::new();
            encode_snapshot_marker(&mut out, &marker);
            assert_eq!(&out[..], wire);
        }
    }

    #[test]
    fn v2_snapshot_markers_are_refused() {
        // The V2.0 marker of snapshot-marker.md: 1 byte of version extras,
        // the fields in a 36-byte value.
        let mut v2 = patch(&MARKER_MEMORY[..24], &[(4, 1), (11, 37)]);
        v2.resize(24 + 37, 0);
        assert_rejected(
            &v2,
            "DCP_SNAPSHOT_MARKER needs 20 bytes of extras (V2 markers are not supported)",
        );
    }

    #[test]
    fn mutations_byte_exact() {
        let msg = assert_fixture(MUTATION_HELLO);
        let DcpMessage::Mutation(m) = msg else {
            panic!("{msg:?}");
        };
        let hello = MutationFields {
            vbucket: 0x0210,
            opaque: 0x1210,
            by_seqno: 4,
            rev_seqno: 1,
            ..MutationFields::default()
        };
        assert_eq!(m.fields, hello);
        assert_eq!(m.key.of(MUTATION_HELLO), b"hello");
        assert_eq!(m.value.of(MUTATION_HELLO), b"world");
        assert!(m.ext_meta.is_empty());
        let mut out = BytesMut::new();
        encode_mutation(&mut out, &hello, b"hello", b"world", b"").unwrap();
        assert_eq!(&out[..], MUTATION_HELLO);

        let msg = assert_fixture(MUTATION_FULL);
        let DcpMessage::Mutation(m) = msg else {
            panic!("{msg:?}");
        };
        let full = MutationFields {
            vbucket: 7,
            opaque: 9,
            cas: 0x0102_0304_0506_0708,
            data_type: 0x01,
            by_seqno: 256,
            rev_seqno: 3,
            flags: 0xdead_beef,
            expiration: 3600,
            lock_time: 15,
            nru: 2,
        };
        assert_eq!(m.fields, full);
        assert_eq!(m.key.of(MUTATION_FULL), b"k");
        assert_eq!(m.value.of(MUTATION_FULL), b"{}");
        assert_eq!(m.ext_meta.of(MUTATION_FULL), &[0x01, 0x01, 0x00]);
        let mut out = BytesMut::new();
        encode_mutation(&mut out, &full, b"k", b"{}", &[0x01, 0x01, 0x00]).unwrap();
        assert_eq!(&out[..], MUTATION_FULL);
    }

    #[test]
    fn malformed_mutations_are_skipped() {
        assert_rejected(
            &patch(&MUTATION_HELLO[..64], &[(4, 30), (11, 40)]),
            "DCP_MUTATION needs 31 bytes of extras",
        );
        assert_rejected(
            &patch(&MUTATION_HELLO[..55], &[(3, 0), (11, 31)]),
            "key required",
        );
        // nmeta 11 with 5 bytes after the key: only the body can tell.
        assert_rejected_with_body(
            &patch(MUTATION_HELLO, &[(53, 11)]),
            "DCP extended metadata longer than the body",
        );
        // nmeta equal to the whole tail is fine: an empty value.
        let msg = assert_fixture(&patch(MUTATION_HELLO, &[(53, 5)]));
        let DcpMessage::Mutation(m) = msg else {
            panic!("{msg:?}");
        };
        assert_eq!((m.value.len(), m.ext_meta.len()), (0, 5));
    }

    #[test]
    fn deletions_and_expirations_byte_exact() {
        let fields = DeletionFields {
            vbucket: 0x0210,
            opaque: 0x1210,
            cas: 9,
            data_type: 0,
            by_seqno: 5,
            rev_seqno: 1,
        };
        let expiration = patch(DELETION_HELLO, &[(1, op::DCP_EXPIRATION)]);
        for (wire, opcode) in [
            (DELETION_HELLO, Opcode::DcpDeletion),
            (&expiration[..], Opcode::DcpExpiration),
        ] {
            let msg = assert_fixture(wire);
            assert_eq!(msg.opcode(), opcode);
            let (DcpMessage::Deletion(d) | DcpMessage::Expiration(d)) = msg else {
                panic!("{msg:?}");
            };
            assert_eq!(d.fields, fields);
            assert_eq!(d.key.of(wire), b"hello");
            assert!(d.value.is_empty() && d.ext_meta.is_empty());
            let mut out = BytesMut::new();
            match opcode {
                Opcode::DcpDeletion => encode_deletion(&mut out, &fields, b"hello", b"", b""),
                _ => encode_expiration(&mut out, &fields, b"hello", b"", b""),
            }
            .unwrap();
            assert_eq!(&out[..], wire);
        }
    }

    #[test]
    fn delete_time_layouts_are_refused() {
        // V2 deletion: 21 bytes of extras (delete time, unused byte).
        let mut v2 = patch(&DELETION_HELLO[..24], &[(4, 21), (11, 26)]);
        v2.resize(24 + 26, 0);
        assert_rejected(
            &v2,
            "DCP_DELETION needs 18 bytes of extras (delete times are not supported)",
        );
        // Couchbase ≥ 6.5 expirations: 20 bytes (delete time).
        let mut v2 = patch(
            &DELETION_HELLO[..24],
            &[(1, op::DCP_EXPIRATION), (4, 20), (11, 25)],
        );
        v2.resize(24 + 25, 0);
        assert_rejected(
            &v2,
            "DCP_EXPIRATION needs 18 bytes of extras (delete times are not supported)",
        );
    }

    #[test]
    fn set_vbucket_state_byte_exact() {
        assert_eq!(
            assert_fixture(SET_DEAD),
            DcpMessage::SetVbucketState {
                vbucket: 0,
                opaque: 0xdead_beef,
                state: VbucketState::Dead
            }
        );
        let mut out = BytesMut::new();
        encode_set_vbucket_state(&mut out, 0, 0xdead_beef, VbucketState::Dead);
        assert_eq!(&out[..], SET_DEAD);
        for bad in [0, 5, 0xff] {
            assert_rejected_with_body(&patch(SET_DEAD, &[(24, bad)]), "invalid vbucket state");
        }
    }

    #[test]
    fn seqno_acknowledged_byte_exact() {
        assert_eq!(
            assert_fixture(SEQNO_ACK_4),
            DcpMessage::SeqnoAcknowledged {
                vbucket: 0x0210,
                opaque: 0x1210,
                prepared_seqno: 4
            }
        );
        let mut out = BytesMut::new();
        encode_seqno_acknowledged(&mut out, 0x0210, 0x1210, 4);
        assert_eq!(&out[..], SEQNO_ACK_4);
        // Two seqnos (memory and disk) are not Couchbase's layout.
        let mut wide = patch(SEQNO_ACK_4, &[(4, 16), (11, 16)]);
        wide.extend_from_slice(&[0; 8]);
        assert_rejected(&wide, "DCP_SEQNO_ACKNOWLEDGED needs 8 bytes of extras");
    }

    #[test]
    fn oversized_ext_meta_is_refused_without_writing() {
        let mut out = BytesMut::from(&b"earlier"[..]);
        let meta = vec![0; 65_536];
        assert_eq!(
            encode_mutation(&mut out, &MutationFields::default(), b"k", b"", &meta),
            Err(EncodeError::ExtMetaTooLong(65_536))
        );
        assert_eq!(
            encode_deletion(&mut out, &DeletionFields::default(), b"k", b"", &meta),
            Err(EncodeError::ExtMetaTooLong(65_536))
        );
        assert_eq!(&out[..], b"earlier");
    }
}
