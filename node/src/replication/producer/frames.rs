//! The stream messages a producer writes for what it reads — engine
//! [`Mutation`]s from the checkpoint queue, [`BackfillRecord`]s from disk —
//! through the protocol crate's DCP encoders. Shoal items carry no revision
//! counter and no extended metadata: rev seqno 1 (consumers here order by
//! seqno), no `nmeta`, data type raw.

use bytes::BytesMut;
use shoal_protocol::binary::dcp::{
    encode_deletion, encode_mutation, encode_snapshot_marker, DeletionFields, MutationFields,
    SnapshotFlags, SnapshotMarker,
};
use shoal_protocol::binary::EncodeError;

use super::backfill::BackfillRecord;
use shoal_engine::mutation::{Mutation, MutationKind, VbucketId};

/// Appends a snapshot marker: the changes of `vb`'s stream that follow,
/// up to the next marker, are (some of) the seqnos `start..=end`.
pub(super) fn encode_marker(
    wbuf: &mut BytesMut,
    vb: VbucketId,
    opaque: u32,
    start: u64,
    end: u64,
    flags: SnapshotFlags,
) {
    encode_snapshot_marker(
        wbuf,
        &SnapshotMarker {
            vbucket: vb,
            opaque,
            start_seqno: start,
            end_seqno: end,
            flags,
        },
    );
}

/// Appends the DCP_MUTATION or DCP_DELETION of a queued mutation.
pub(super) fn encode_change(
    wbuf: &mut BytesMut,
    vb: VbucketId,
    opaque: u32,
    m: &Mutation,
) -> Result<(), EncodeError> {
    match &m.kind {
        MutationKind::Set {
            value,
            flags,
            exptime,
        } => encode_mutation(
            wbuf,
            &mutation_fields(vb, opaque, m.seqno, m.cas, *flags, *exptime),
            &m.key,
            value,
            &[],
        ),
        MutationKind::Delete => encode_deletion(
            wbuf,
            &deletion_fields(vb, opaque, m.seqno, m.cas),
            &m.key,
            &[],
            &[],
        ),
    }
}

/// Appends the DCP_MUTATION or DCP_DELETION of a backfilled record.
pub(super) fn encode_record(
    wbuf: &mut BytesMut,
    vb: VbucketId,
    opaque: u32,
    r: &BackfillRecord,
) -> Result<(), EncodeError> {
    match &r.value {
        Some((value, flags, exptime)) => encode_mutation(
            wbuf,
            &mutation_fields(vb, opaque, r.seqno, r.cas, *flags, *exptime),
            &r.key,
            value,
            &[],
        ),
        None => encode_deletion(
            wbuf,
            &deletion_fields(vb, opaque, r.seqno, r.cas),
            &r.key,
            &[],
            &[],
        ),
    }
}

fn mutation_fields(
    vbucket: VbucketId,
    opaque: u32,
    by_seqno: u64,
    cas: u64,
    flags: u32,
    expiration: u32,
) -> MutationFields {
    MutationFields {
        vbucket,
        opaque,
        cas,
        data_type: 0,
        by_seqno,
        rev_seqno: 1,
        flags,
        expiration,
        lock_time: 0,
        nru: 0,
    }
}

fn deletion_fields(vbucket: VbucketId, opaque: u32, by_seqno: u64, cas: u64) -> DeletionFields {
    DeletionFields {
        vbucket,
        opaque,
        cas,
        data_type: 0,
        by_seqno,
        rev_seqno: 1,
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use shoal_protocol::binary::{parse_dcp, DcpMessage};
    use shoal_protocol::Limits;

    use super::*;

    /// Every frame in `wire`, each with its own bytes (spans index the
    /// frame).
    fn frames(wire: &[u8]) -> Vec<(DcpMessage, Vec<u8>)> {
        let mut at = 0;
        let mut out = Vec::new();
        while let Some((msg, used)) = parse_dcp(&wire[at..], &Limits::default()).unwrap() {
            out.push((msg, wire[at..at + used].to_vec()));
            at += used;
        }
        assert_eq!(at, wire.len(), "whole frames only");
        out
    }

    #[test]
    fn changes_and_records_parse_back_as_sent() {
        let mut wbuf = BytesMut::new();
        encode_marker(&mut wbuf, 3, 0xabcd, 5, 9, SnapshotFlags::MEMORY);
        let set = Mutation {
            vbucket: 3,
            seqno: 5,
            key: Bytes::from_static(b"a"),
            cas: 1005,
            time: 0,
            kind: MutationKind::Set {
                value: Bytes::from_static(b"v5"),
                flags: 7,
                exptime: 99,
            },
        };
        encode_change(&mut wbuf, 3, 0xabcd, &set).unwrap();
        let del = Mutation {
            seqno: 9,
            cas: 1009,
            kind: MutationKind::Delete,
            ..set.clone()
        };
        encode_change(&mut wbuf, 3, 0xabcd, &del).unwrap();
        let record = BackfillRecord {
            seqno: 12,
            key: Bytes::from_static(b"r"),
            cas: 1012,
            value: Some((Bytes::from_static(b"disk"), 1, 2)),
        };
        encode_record(&mut wbuf, 3, 0xabcd, &record).unwrap();
        let tombstone = BackfillRecord {
            value: None,
            ..record.clone()
        };
        encode_record(&mut wbuf, 3, 0xabcd, &tombstone).unwrap();

        let got = frames(&wbuf);
        assert_eq!(got.len(), 5);
        let DcpMessage::SnapshotMarker(marker) = got[0].0 else {
            panic!("{:?}", got[0].0);
        };
        assert_eq!(
            (
                marker.vbucket,
                marker.opaque,
                marker.start_seqno,
                marker.end_seqno
            ),
            (3, 0xabcd, 5, 9)
        );
        assert_eq!(marker.flags, SnapshotFlags::MEMORY);
        let DcpMessage::Mutation(m) = got[1].0 else {
            panic!("{:?}", got[1].0);
        };
        assert_eq!(m.fields, mutation_fields(3, 0xabcd, 5, 1005, 7, 99));
        assert_eq!(
            (m.key.of(&got[1].1), m.value.of(&got[1].1)),
            (&b"a"[..], &b"v5"[..])
        );
        let DcpMessage::Deletion(d) = got[2].0 else {
            panic!("{:?}", got[2].0);
        };
        assert_eq!(d.fields, deletion_fields(3, 0xabcd, 9, 1009));
        assert_eq!(d.key.of(&got[2].1), b"a");
        let DcpMessage::Mutation(m) = got[3].0 else {
            panic!("{:?}", got[3].0);
        };
        assert_eq!(
            (
                m.fields.by_seqno,
                m.fields.flags,
                m.fields.expiration,
                m.value.of(&got[3].1)
            ),
            (12, 1, 2, &b"disk"[..])
        );
        assert!(matches!(got[4].0, DcpMessage::Deletion(d) if d.fields.by_seqno == 12));
    }
}
