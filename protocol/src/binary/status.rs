//! Response statuses: [`Status`], a `u16` newtype with a named constant for
//! every status Shoal sends or reads (memcached's set plus Couchbase's
//! NOT_MY_VBUCKET, NO_BUCKET and DCP's ROLLBACK), and the text memcached
//! puts in an error reply's body.
//! A newtype rather than an enum because a peer may send any `u16` and the
//! proxy must pass unknown statuses through untouched.

use crate::ParseError;

/// A binary response status, as on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Status(pub u16);

impl Status {
    /// 0x0000: success.
    pub const OK: Status = Status(0x0000);
    /// 0x0001: key not found.
    pub const KEY_NOT_FOUND: Status = Status(0x0001);
    /// 0x0002: key exists (ADD on a present key, CAS mismatch).
    pub const KEY_EXISTS: Status = Status(0x0002);
    /// 0x0003: value too large.
    pub const TOO_LARGE: Status = Status(0x0003);
    /// 0x0004: invalid arguments (malformed request).
    pub const INVALID_ARGUMENTS: Status = Status(0x0004);
    /// 0x0005: item not stored.
    pub const NOT_STORED: Status = Status(0x0005);
    /// 0x0006: incr/decr on a non-numeric value.
    pub const NON_NUMERIC: Status = Status(0x0006);
    /// 0x0007: the vbucket is not active on this node; the body may carry
    /// the current bucket config JSON (Couchbase ≥ 2.5).
    pub const NOT_MY_VBUCKET: Status = Status(0x0007);
    /// 0x0008: the connection is not bound to a bucket (Couchbase's
    /// `NoBucket`): select one with SASL or SELECT_BUCKET first.
    pub const NO_BUCKET: Status = Status(0x0008);
    /// 0x0020: authentication failed.
    pub const AUTH_ERROR: Status = Status(0x0020);
    /// 0x0021: authentication continues (SASL step needed).
    pub const AUTH_CONTINUE: Status = Status(0x0021);
    /// 0x0023: a DCP stream request cannot resume where the consumer asked;
    /// the body is the u64 seqno to roll back to (Couchbase's `Rollback`).
    pub const ROLLBACK: Status = Status(0x0023);
    /// 0x0024: the connection is authenticated (or not at all) as someone
    /// who may not do this (Couchbase's `Eaccess`): a vbucket command or DCP
    /// from a client that is not the cluster, a protected bucket selected
    /// without its credentials.
    pub const NO_ACCESS: Status = Status(0x0024);
    /// 0x0081: unknown command.
    pub const UNKNOWN_COMMAND: Status = Status(0x0081);
    /// 0x0082: out of memory.
    pub const OUT_OF_MEMORY: Status = Status(0x0082);
    /// 0x0083: command not supported.
    pub const NOT_SUPPORTED: Status = Status(0x0083);
    /// 0x0084: internal error.
    pub const INTERNAL_ERROR: Status = Status(0x0084);
    /// 0x0085: busy.
    pub const BUSY: Status = Status(0x0085);
    /// 0x0086: temporary failure (e.g. a node still warming up); retry.
    pub const TEMPORARY_FAILURE: Status = Status(0x0086);

    /// True for 0x0000.
    pub const fn is_ok(self) -> bool {
        self.0 == Status::OK.0
    }

    /// The status a client hears for a request the parser rejected; the
    /// mapping itself lives in [`ParseError::binary_status`].
    pub const fn for_parse_error(error: &ParseError) -> Status {
        Status(error.binary_status())
    }

    /// The body text memcached 1.6 sends with this status (`write_bin_error`
    /// in `proto_bin.c`), so error replies read the same as memcached's;
    /// statuses memcached never sends get a short description of ours.
    pub const fn message(self) -> &'static str {
        match self {
            Status::OK => "",
            Status::KEY_NOT_FOUND => "Not found",
            Status::KEY_EXISTS => "Data exists for key.",
            Status::TOO_LARGE => "Too large.",
            Status::INVALID_ARGUMENTS => "Invalid arguments",
            Status::NOT_STORED => "Not stored.",
            Status::NON_NUMERIC => "Non-numeric server-side value for incr or decr",
            Status::NOT_MY_VBUCKET => "Not my vbucket",
            Status::NO_BUCKET => "No bucket selected",
            Status::AUTH_ERROR => "Auth failure.",
            Status::AUTH_CONTINUE => "Auth continue",
            Status::ROLLBACK => "Rollback",
            Status::NO_ACCESS => "No access",
            Status::UNKNOWN_COMMAND => "Unknown command",
            Status::OUT_OF_MEMORY => "Out of memory",
            Status::NOT_SUPPORTED => "Not supported",
            Status::INTERNAL_ERROR => "Internal error",
            Status::BUSY => "System is busy",
            Status::TEMPORARY_FAILURE => "Temporary failure",
            _ => "Unknown error",
        }
    }
}

impl From<u16> for Status {
    fn from(raw: u16) -> Status {
        Status(raw)
    }
}

impl From<Status> for u16 {
    fn from(status: Status) -> u16 {
        status.0
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "0x{:04x}", self.0)?;
        if !self.is_ok() {
            write!(f, " ({})", self.message())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn wire_values() {
        let table = [
            (Status::OK, 0x00),
            (Status::KEY_NOT_FOUND, 0x01),
            (Status::KEY_EXISTS, 0x02),
            (Status::TOO_LARGE, 0x03),
            (Status::INVALID_ARGUMENTS, 0x04),
            (Status::NOT_STORED, 0x05),
            (Status::NON_NUMERIC, 0x06),
            (Status::NOT_MY_VBUCKET, 0x07),
            (Status::NO_BUCKET, 0x08),
            (Status::AUTH_ERROR, 0x20),
            (Status::AUTH_CONTINUE, 0x21),
            (Status::NO_ACCESS, 0x24),
            (Status::ROLLBACK, 0x23),
            (Status::UNKNOWN_COMMAND, 0x81),
            (Status::OUT_OF_MEMORY, 0x82),
            (Status::NOT_SUPPORTED, 0x83),
            (Status::INTERNAL_ERROR, 0x84),
            (Status::BUSY, 0x85),
            (Status::TEMPORARY_FAILURE, 0x86),
        ];
        for (status, wire) in table {
            assert_eq!(u16::from(status), wire);
            assert_eq!(Status::from(wire), status);
            assert_ne!(status.message(), "Unknown error");
        }
        assert_eq!(Status(0x1234).message(), "Unknown error");
        assert_eq!(
            Status::NOT_MY_VBUCKET.to_string(),
            "0x0007 (Not my vbucket)"
        );
        assert_eq!(Status::OK.to_string(), "0x0000");
    }

    #[test]
    fn parse_errors_map_onto_named_statuses() {
        let status = |kind| Status::for_parse_error(&ParseError::close(kind, "x"));
        assert_eq!(status(ErrorKind::BadFormat), Status::INVALID_ARGUMENTS);
        assert_eq!(status(ErrorKind::BadMagic), Status::INVALID_ARGUMENTS);
        assert_eq!(status(ErrorKind::TooLarge), Status::TOO_LARGE);
        assert_eq!(status(ErrorKind::UnknownCommand), Status::UNKNOWN_COMMAND);
    }
}
