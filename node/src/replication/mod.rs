//! Replication between storage nodes, DCP-style over the data port: every
//! replica vbucket streams from its active ([`consumer`] on the replica's
//! node, [`producer`] on the active's), starting at its own high seqno —
//! backfilled from disk when the active's checkpoint queue no longer holds
//! that far back, live from the queue after — with snapshot markers, flow
//! control and seqno acknowledgements. [`durability`] turns those
//! acknowledgements into durable writes: a client's write in a bucket with
//! a durability level is answered only once enough copies hold it. Failover
//! logs (kept by the engine, persisted with the vbucket state) decide when
//! a replica's history has diverged from its active's and it must roll
//! back.

pub mod consumer;
pub mod durability;
pub mod producer;
