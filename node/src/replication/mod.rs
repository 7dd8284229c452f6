//! Replication between storage nodes, DCP-style over the data port: every
//! replica vbucket streams from its active ([`consumer`] on the replica's
//! node, [`producer`] on the active's), starting at its own high seqno —
//! backfilled from disk when the active's checkpoint queue no longer holds
//! that far back, live from the queue after — with snapshot markers, flow
//! control and seqno acknowledgements, which feed each bucket's durability
//! monitor (in the bucket runtime) for durable writes. Failover
//! logs (kept by the engine, persisted with the vbucket state) decide when
//! a replica's history has diverged from its active's and it must roll
//! back.
//!
//! Layer: beside the data service (`server`), above the bucket runtime. The
//! producer gets its connections from the wiring, which takes them from the
//! data service when a client opens a DCP stream. Must not import:
//! `server`, `cluster_view`, `manager`, `admin`, `node`.

pub mod consumer;
pub mod producer;
