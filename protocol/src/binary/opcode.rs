//! Opcodes: a named constant for every opcode Shoal knows, and [`Opcode`],
//! the typed form a parsed header carries. The classic memcached set
//! (0x00–0x24, from memcached's `protocol_binary.h`), the vbucket, bucket
//! and cluster commands Couchbase added (0x3d–0x3f, 0x83, 0x89, 0x92,
//! 0xb5), and the DCP replication opcodes Shoal speaks (0x50–0x5e, 0x61;
//! values from kv_engine's `include/mcbp/protocol/opcode.h`) and Shoal's
//! meta envelope (0xe7) are named;
//! every other byte is [`Opcode::Other`] — a value, never an error, so a
//! server can answer 0x81 "unknown command" for it and carry on with the
//! next frame. One macro table is the single source of truth for the
//! constants, the enum and both conversions, so they cannot drift apart.

/// Declares the opcode constants, the [`Opcode`] enum and its conversions
/// from one table, so adding an opcode is one line.
macro_rules! opcodes {
    ($( $(#[doc = $doc:literal])* $variant:ident = $name:ident = $value:literal, )*) => {
        $(
            $(#[doc = $doc])*
            pub const $name: u8 = $value;
        )*

        /// A binary protocol opcode.
        ///
        /// Build one with [`Opcode::from_u8`] (or `From<u8>`): it maps every
        /// named byte to its variant, so `Other(b)` only ever holds a byte with
        /// no name here. Constructing `Other` with a named byte by hand still
        /// encodes correctly, but compares unequal to the named variant.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Opcode {
            $(
                $(#[doc = $doc])*
                $variant,
            )*
            /// An opcode this crate has no name for; carried as a value so the
            /// server can answer "unknown command" and keep the stream.
            Other(u8),
        }

        impl Opcode {
            /// The typed opcode for a wire byte; total.
            pub const fn from_u8(byte: u8) -> Opcode {
                match byte {
                    $( $name => Opcode::$variant, )*
                    other => Opcode::Other(other),
                }
            }

            /// The wire byte.
            pub const fn to_u8(self) -> u8 {
                match self {
                    $( Opcode::$variant => $name, )*
                    Opcode::Other(byte) => byte,
                }
            }

            /// The constant's name (`"GETKQ"`, `"DCP_MUTATION"`), or
            /// `"UNKNOWN"`; for logs and stats.
            pub const fn name(self) -> &'static str {
                match self {
                    $( Opcode::$variant => stringify!($name), )*
                    Opcode::Other(_) => "UNKNOWN",
                }
            }
        }
    };
}

opcodes! {
    /// 0x00: get a value by key.
    Get = GET = 0x00,
    /// 0x01: store unconditionally.
    Set = SET = 0x01,
    /// 0x02: store only if absent.
    Add = ADD = 0x02,
    /// 0x03: store only if present.
    Replace = REPLACE = 0x03,
    /// 0x04: delete a key.
    Delete = DELETE = 0x04,
    /// 0x05: add to a counter.
    Increment = INCREMENT = 0x05,
    /// 0x06: subtract from a counter.
    Decrement = DECREMENT = 0x06,
    /// 0x07: answer, then close the connection.
    Quit = QUIT = 0x07,
    /// 0x08: invalidate every item (optionally later).
    Flush = FLUSH = 0x08,
    /// 0x09: GET, silent on a miss.
    GetQ = GETQ = 0x09,
    /// 0x0a: no operation; flushes a pipeline of quiet commands.
    Noop = NOOP = 0x0a,
    /// 0x0b: the server's version string.
    Version = VERSION = 0x0b,
    /// 0x0c: GET that echoes the key in the reply.
    GetK = GETK = 0x0c,
    /// 0x0d: GETK, silent on a miss.
    GetKQ = GETKQ = 0x0d,
    /// 0x0e: append to an existing value.
    Append = APPEND = 0x0e,
    /// 0x0f: prepend to an existing value.
    Prepend = PREPEND = 0x0f,
    /// 0x10: statistics; one reply per stat, ended by an empty-key reply.
    Stat = STAT = 0x10,
    /// 0x11: SET, silent on success.
    SetQ = SETQ = 0x11,
    /// 0x12: ADD, silent on success.
    AddQ = ADDQ = 0x12,
    /// 0x13: REPLACE, silent on success.
    ReplaceQ = REPLACEQ = 0x13,
    /// 0x14: DELETE, silent on success.
    DeleteQ = DELETEQ = 0x14,
    /// 0x15: INCREMENT, silent on success.
    IncrementQ = INCREMENTQ = 0x15,
    /// 0x16: DECREMENT, silent on success.
    DecrementQ = DECREMENTQ = 0x16,
    /// 0x17: QUIT without a reply.
    QuitQ = QUITQ = 0x17,
    /// 0x18: FLUSH, silent on success.
    FlushQ = FLUSHQ = 0x18,
    /// 0x19: APPEND, silent on success.
    AppendQ = APPENDQ = 0x19,
    /// 0x1a: PREPEND, silent on success.
    PrependQ = PREPENDQ = 0x1a,
    /// 0x1b: set the server's log verbosity.
    Verbosity = VERBOSITY = 0x1b,
    /// 0x1c: change an item's expiry.
    Touch = TOUCH = 0x1c,
    /// 0x1d: get and touch.
    Gat = GAT = 0x1d,
    /// 0x1e: GAT, silent on a miss.
    GatQ = GATQ = 0x1e,
    /// 0x20: list the SASL mechanisms.
    SaslListMechs = SASL_LIST_MECHS = 0x20,
    /// 0x21: start SASL authentication (key = mechanism).
    SaslAuth = SASL_AUTH = 0x21,
    /// 0x22: continue SASL authentication.
    SaslStep = SASL_STEP = 0x22,
    /// 0x23: GAT that echoes the key.
    GatK = GATK = 0x23,
    /// 0x24: GATK, silent on a miss.
    GatKQ = GATKQ = 0x24,
    /// 0x3d: set the state of the vbucket named in the header.
    SetVbucket = SET_VBUCKET = 0x3d,
    /// 0x3e: get the state of the vbucket named in the header.
    GetVbucket = GET_VBUCKET = 0x3e,
    /// 0x3f: delete the vbucket named in the header.
    DelVbucket = DEL_VBUCKET = 0x3f,
    /// 0x50: open a DCP connection.
    DcpOpen = DCP_OPEN = 0x50,
    /// 0x51: ask a DCP consumer to add a stream.
    DcpAddStream = DCP_ADD_STREAM = 0x51,
    /// 0x52: close a DCP stream.
    DcpCloseStream = DCP_CLOSE_STREAM = 0x52,
    /// 0x53: request a DCP stream from a seqno.
    DcpStreamReq = DCP_STREAM_REQ = 0x53,
    /// 0x54: a vbucket's failover log.
    DcpGetFailoverLog = DCP_GET_FAILOVER_LOG = 0x54,
    /// 0x55: a DCP stream ended.
    DcpStreamEnd = DCP_STREAM_END = 0x55,
    /// 0x56: a DCP snapshot boundary.
    DcpSnapshotMarker = DCP_SNAPSHOT_MARKER = 0x56,
    /// 0x57: a replicated mutation.
    DcpMutation = DCP_MUTATION = 0x57,
    /// 0x58: a replicated deletion.
    DcpDeletion = DCP_DELETION = 0x58,
    /// 0x59: a replicated expiration.
    DcpExpiration = DCP_EXPIRATION = 0x59,
    /// 0x5a: a replicated flush.
    DcpFlush = DCP_FLUSH = 0x5a,
    /// 0x5b: a vbucket changed state on the producer.
    DcpSetVbucketState = DCP_SET_VBUCKET_STATE = 0x5b,
    /// 0x5c: DCP liveness check.
    DcpNoop = DCP_NOOP = 0x5c,
    /// 0x5d: DCP flow-control acknowledgement.
    DcpBufferAck = DCP_BUFFER_ACK = 0x5d,
    /// 0x5e: DCP connection settings.
    DcpControl = DCP_CONTROL = 0x5e,
    /// 0x61: a replica acknowledges the seqno it has reached (durability).
    DcpSeqnoAcknowledged = DCP_SEQNO_ACKNOWLEDGED = 0x61,
    /// 0x83: read a key from a replica vbucket.
    GetReplica = GET_REPLICA = 0x83,
    /// 0x89: bind the connection to the bucket named by the key
    /// (Couchbase).
    SelectBucket = SELECT_BUCKET = 0x89,
    /// 0x92: persistence/replication state of keys.
    Observe = OBSERVE = 0x92,
    /// 0xb5: the bucket config JSON.
    GetClusterConfig = GET_CLUSTER_CONFIG = 0xb5,
    /// 0xe7: Shoal's meta envelope, proxy to node: the value is one meta
    /// request (`mg ms md ma me`) as a client sent it, the key its decoded
    /// key, the vbucket the one it addresses; a success carries the meta
    /// reply text (empty when `q` suppressed it). Routing errors (not my
    /// vbucket, temporary failure) come back as statuses. 0xe7 is in a
    /// block Couchbase's opcode table leaves unassigned.
    Meta = META = 0xe7,
}

/// First opcode of the range reserved for DCP replication.
pub const DCP_RANGE_START: u8 = 0x50;
/// Last opcode of the range reserved for DCP replication: kv_engine's
/// `/* DCP */` block runs 0x50–0x65 (0x5f–0x65 are system events, sync
/// replication and OSO snapshots, 0x64 unassigned).
pub const DCP_RANGE_END: u8 = 0x65;

impl From<u8> for Opcode {
    fn from(byte: u8) -> Opcode {
        Opcode::from_u8(byte)
    }
}

impl From<Opcode> for u8 {
    fn from(op: Opcode) -> u8 {
        op.to_u8()
    }
}

impl Opcode {
    /// True for the quiet variants: GETQ/GETKQ/GATQ/GATKQ are silent on a
    /// miss, quiet mutations are silent on success; errors are always sent.
    pub const fn is_quiet(self) -> bool {
        // Only quiet opcodes have a loud twin different from themselves.
        self.non_quiet().to_u8() != self.to_u8()
    }

    /// The loud twin of a quiet opcode (GETKQ → GETK, SETQ → SET); every
    /// other opcode is its own twin.
    pub const fn non_quiet(self) -> Opcode {
        match self {
            Opcode::GetQ => Opcode::Get,
            Opcode::GetKQ => Opcode::GetK,
            Opcode::SetQ => Opcode::Set,
            Opcode::AddQ => Opcode::Add,
            Opcode::ReplaceQ => Opcode::Replace,
            Opcode::DeleteQ => Opcode::Delete,
            Opcode::IncrementQ => Opcode::Increment,
            Opcode::DecrementQ => Opcode::Decrement,
            Opcode::QuitQ => Opcode::Quit,
            Opcode::FlushQ => Opcode::Flush,
            Opcode::AppendQ => Opcode::Append,
            Opcode::PrependQ => Opcode::Prepend,
            Opcode::GatQ => Opcode::Gat,
            Opcode::GatKQ => Opcode::GatK,
            other => other,
        }
    }

    /// The quiet twin of a loud opcode (GET → GETQ), if it has one. The
    /// proxy uses it to fan a multi-get out as quiet gets plus a NOOP.
    pub const fn quiet_twin(self) -> Option<Opcode> {
        Some(match self {
            Opcode::Get => Opcode::GetQ,
            Opcode::GetK => Opcode::GetKQ,
            Opcode::Set => Opcode::SetQ,
            Opcode::Add => Opcode::AddQ,
            Opcode::Replace => Opcode::ReplaceQ,
            Opcode::Delete => Opcode::DeleteQ,
            Opcode::Increment => Opcode::IncrementQ,
            Opcode::Decrement => Opcode::DecrementQ,
            Opcode::Quit => Opcode::QuitQ,
            Opcode::Flush => Opcode::FlushQ,
            Opcode::Append => Opcode::AppendQ,
            Opcode::Prepend => Opcode::PrependQ,
            Opcode::Gat => Opcode::GatQ,
            Opcode::GatK => Opcode::GatKQ,
            _ => return None,
        })
    }

    /// True when a request with this opcode must carry a key: the commands
    /// that address one item, plus SASL (whose "key" is the mechanism name).
    /// The proxy routes exactly these by key; STAT's key is optional and is
    /// a stat group, not an item, so it is `false` here.
    pub const fn requires_key(self) -> bool {
        matches!(
            self.non_quiet(),
            Opcode::Get
                | Opcode::GetK
                | Opcode::Set
                | Opcode::Add
                | Opcode::Replace
                | Opcode::Delete
                | Opcode::Increment
                | Opcode::Decrement
                | Opcode::Append
                | Opcode::Prepend
                | Opcode::Touch
                | Opcode::Gat
                | Opcode::GatK
                | Opcode::GetReplica
                | Opcode::SaslAuth
                | Opcode::SaslStep
        )
    }

    /// True when a successful reply echoes the request's key (the `K`
    /// variants), which the proxy needs to merge quiet multi-get replies.
    pub const fn reply_has_key(self) -> bool {
        matches!(self.non_quiet(), Opcode::GetK | Opcode::GatK)
    }

    /// True for the GET family whose successful replies carry 4 bytes of
    /// flags as extras and the value as the body.
    pub const fn is_retrieval(self) -> bool {
        matches!(
            self.non_quiet(),
            Opcode::Get | Opcode::GetK | Opcode::Gat | Opcode::GatK | Opcode::GetReplica
        )
    }

    /// True for INCREMENT/DECREMENT and their quiet twins.
    pub const fn is_arithmetic(self) -> bool {
        matches!(self.non_quiet(), Opcode::Increment | Opcode::Decrement)
    }

    /// True for any opcode in the DCP range 0x50–0x65, named or not.
    pub const fn is_dcp(self) -> bool {
        let byte = self.to_u8();
        byte >= DCP_RANGE_START && byte <= DCP_RANGE_END
    }
}

impl std::fmt::Display for Opcode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Opcode::Other(byte) => write!(f, "UNKNOWN(0x{byte:02x})"),
            named => f.write_str(named.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_round_trips() {
        for byte in 0..=u8::MAX {
            assert_eq!(Opcode::from_u8(byte).to_u8(), byte);
            assert_eq!(u8::from(Opcode::from(byte)), byte);
        }
    }

    #[test]
    fn wire_values_match_memcached_and_couchbase() {
        let table = [
            (GET, 0x00),
            (SET, 0x01),
            (DELETE, 0x04),
            (QUIT, 0x07),
            (FLUSH, 0x08),
            (NOOP, 0x0a),
            (VERSION, 0x0b),
            (STAT, 0x10),
            (PREPENDQ, 0x1a),
            (VERBOSITY, 0x1b),
            (TOUCH, 0x1c),
            (GAT, 0x1d),
            (GATQ, 0x1e),
            (SASL_LIST_MECHS, 0x20),
            (SASL_AUTH, 0x21),
            (SASL_STEP, 0x22),
            (GATK, 0x23),
            (GATKQ, 0x24),
            (SET_VBUCKET, 0x3d),
            (GET_VBUCKET, 0x3e),
            (DEL_VBUCKET, 0x3f),
            (DCP_OPEN, 0x50),
            (DCP_STREAM_REQ, 0x53),
            (DCP_MUTATION, 0x57),
            (DCP_CONTROL, 0x5e),
            (DCP_SEQNO_ACKNOWLEDGED, 0x61),
            (GET_REPLICA, 0x83),
            (SELECT_BUCKET, 0x89),
            (OBSERVE, 0x92),
            (GET_CLUSTER_CONFIG, 0xb5),
        ];
        for (constant, wire) in table {
            assert_eq!(constant, wire);
            assert!(!matches!(Opcode::from_u8(wire), Opcode::Other(_)));
        }
    }

    #[test]
    fn unnamed_bytes_are_other() {
        // 0x1f is unassigned in memcached; 0x5f is DCP-reserved but unnamed.
        for byte in [0x1f, 0x25, 0x5f, 0x7f, 0xff] {
            assert_eq!(Opcode::from_u8(byte), Opcode::Other(byte));
        }
        assert!(Opcode::from_u8(0x5f).is_dcp());
        assert!(Opcode::DcpSeqnoAcknowledged.is_dcp());
        assert!(!Opcode::from_u8(0x66).is_dcp());
        assert_eq!(Opcode::Other(0xee).to_string(), "UNKNOWN(0xee)");
        assert_eq!(Opcode::GetKQ.to_string(), "GETKQ");
    }

    #[test]
    fn quiet_twins_are_inverse() {
        let mut quiet = 0;
        for byte in 0..=u8::MAX {
            let op = Opcode::from_u8(byte);
            if op.is_quiet() {
                quiet += 1;
                assert_eq!(op.non_quiet().quiet_twin(), Some(op));
                assert!(!op.non_quiet().is_quiet());
            } else {
                assert_eq!(op.non_quiet(), op);
            }
            if let Some(q) = op.quiet_twin() {
                assert!(q.is_quiet());
                assert_eq!(q.non_quiet(), op);
            }
        }
        // GETQ GETKQ SETQ ADDQ REPLACEQ DELETEQ INCREMENTQ DECREMENTQ QUITQ
        // FLUSHQ APPENDQ PREPENDQ GATQ GATKQ.
        assert_eq!(quiet, 14);
    }

    #[test]
    fn key_and_family_helpers() {
        assert!(Opcode::GetKQ.requires_key());
        assert!(Opcode::SetQ.requires_key());
        assert!(Opcode::GetReplica.requires_key());
        assert!(!Opcode::Stat.requires_key());
        assert!(!Opcode::Noop.requires_key());
        assert!(!Opcode::Other(0xee).requires_key());
        assert!(Opcode::GatKQ.reply_has_key());
        assert!(!Opcode::GetQ.reply_has_key());
        assert!(Opcode::GatQ.is_retrieval());
        assert!(!Opcode::Touch.is_retrieval());
        assert!(Opcode::DecrementQ.is_arithmetic());
        assert!(Opcode::DcpOpen.is_dcp());
        assert!(!Opcode::SetVbucket.is_dcp());
    }
}
