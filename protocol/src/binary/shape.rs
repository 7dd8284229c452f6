//! Which extras, key and value each request opcode may carry — the rules of
//! memcached 1.6's `dispatch_bin_command` (`proto_bin.c`), tightened where
//! the binary protocol spec says "MUST NOT" but memcached merely never
//! looked (TOUCH/GAT with a value, STAT with a value: memcached would read
//! those stray bytes as the next header). Checked from the header alone, so
//! a malformed request is answered "invalid arguments" and skipped by its
//! known length without waiting for its body.

use crate::binary::opcode::Opcode;

/// Allowed extras lengths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ExtrasLen {
    /// Exactly this many bytes.
    Exactly(u8),
    /// FLUSH: none, or a 4-byte delay.
    NoneOrFour,
    /// SET_VBUCKET: 1 or 4 bytes of state, or none with a 4-byte value.
    SetVbucket,
}

/// Whether a key or value may appear.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Presence {
    /// Must be non-empty.
    Required,
    /// Must be empty.
    Forbidden,
    /// Either.
    Optional,
}

/// The shape of a valid request for one opcode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Shape {
    extras: ExtrasLen,
    key: Presence,
    value: Presence,
}

const fn shape_of(extras: ExtrasLen, key: Presence, value: Presence) -> Shape {
    Shape { extras, key, value }
}

/// The rules for `opcode`, or `None` when this crate does not validate it
/// (unknown opcodes, DCP, OBSERVE, GET_CLUSTER_CONFIG): those pass through
/// with raw extras, for the handler to judge.
pub(crate) fn shape(opcode: Opcode) -> Option<Shape> {
    use ExtrasLen::{Exactly, NoneOrFour, SetVbucket};
    use Presence::{Forbidden as No, Optional as Maybe, Required as Yes};
    Some(match opcode.non_quiet() {
        Opcode::Get | Opcode::GetK | Opcode::GetReplica => shape_of(Exactly(0), Yes, No),
        Opcode::Set | Opcode::Add | Opcode::Replace => shape_of(Exactly(8), Yes, Maybe),
        Opcode::Delete => shape_of(Exactly(0), Yes, No),
        Opcode::Increment | Opcode::Decrement => shape_of(Exactly(20), Yes, No),
        Opcode::Append | Opcode::Prepend => shape_of(Exactly(0), Yes, Maybe),
        Opcode::Touch | Opcode::Gat | Opcode::GatK => shape_of(Exactly(4), Yes, No),
        Opcode::Flush => shape_of(NoneOrFour, No, No),
        Opcode::Stat => shape_of(Exactly(0), Maybe, No),
        Opcode::Verbosity => shape_of(Exactly(4), No, No),
        Opcode::Quit
        | Opcode::Noop
        | Opcode::Version
        | Opcode::SaslListMechs
        | Opcode::GetVbucket => shape_of(Exactly(0), No, No),
        // The key names the mechanism; the value is the client's data.
        Opcode::SaslAuth | Opcode::SaslStep => shape_of(Exactly(0), Yes, Maybe),
        // The key names the bucket (Couchbase's BinaryProtocol.md).
        Opcode::SelectBucket => shape_of(Exactly(0), Yes, No),
        Opcode::SetVbucket => shape_of(SetVbucket, No, Maybe),
        // ep-engine accepted an optional "async" marker as the body.
        Opcode::DelVbucket => shape_of(Exactly(0), No, Maybe),
        // The decoded key routes it; the value is the meta request.
        Opcode::Meta => shape_of(Exactly(0), Yes, Yes),
        _ => return None,
    })
}

impl Shape {
    /// Check the lengths from a request header; the error is the reason for
    /// an invalid-arguments reply.
    pub(crate) fn check(
        &self,
        extras_len: usize,
        key_len: usize,
        value_len: usize,
    ) -> Result<(), &'static str> {
        let extras_ok = match self.extras {
            ExtrasLen::Exactly(n) => extras_len == usize::from(n),
            ExtrasLen::NoneOrFour => extras_len == 0 || extras_len == 4,
            // The state is in exactly one place: the extras or the value.
            ExtrasLen::SetVbucket => match extras_len {
                1 | 4 => value_len == 0,
                0 => value_len == 4,
                _ => false,
            },
        };
        if !extras_ok {
            return Err("invalid extras length");
        }
        present(self.key, key_len, "key required", "key not allowed")?;
        present(self.value, value_len, "value required", "value not allowed")
    }
}

/// Check one part's length against its rule; the error is the reason for
/// an invalid-arguments reply (`missing` or `unwanted`).
pub(crate) fn present(
    rule: Presence,
    len: usize,
    missing: &'static str,
    unwanted: &'static str,
) -> Result<(), &'static str> {
    match (rule, len) {
        (Presence::Required, 0) => Err(missing),
        (Presence::Forbidden, 1..) => Err(unwanted),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(op: Opcode, e: usize, k: usize, v: usize) -> Result<(), &'static str> {
        shape(op).unwrap().check(e, k, v)
    }

    #[test]
    fn memcached_rules() {
        assert_eq!(check(Opcode::GetKQ, 0, 3, 0), Ok(()));
        assert_eq!(check(Opcode::Get, 0, 0, 0), Err("key required"));
        assert_eq!(check(Opcode::Get, 4, 3, 0), Err("invalid extras length"));
        assert_eq!(check(Opcode::Get, 0, 3, 1), Err("value not allowed"));
        assert_eq!(check(Opcode::SetQ, 8, 1, 0), Ok(()));
        assert_eq!(check(Opcode::Set, 4, 1, 9), Err("invalid extras length"));
        assert_eq!(check(Opcode::Increment, 20, 1, 0), Ok(()));
        assert_eq!(check(Opcode::Decrement, 20, 1, 8), Err("value not allowed"));
        assert_eq!(check(Opcode::AppendQ, 0, 1, 5), Ok(()));
        assert_eq!(check(Opcode::Touch, 4, 1, 0), Ok(()));
        assert_eq!(check(Opcode::GatKQ, 0, 1, 0), Err("invalid extras length"));
        assert_eq!(check(Opcode::FlushQ, 0, 0, 0), Ok(()));
        assert_eq!(check(Opcode::Flush, 4, 0, 0), Ok(()));
        assert_eq!(check(Opcode::Flush, 8, 0, 0), Err("invalid extras length"));
        assert_eq!(check(Opcode::Stat, 0, 5, 0), Ok(()));
        assert_eq!(check(Opcode::Stat, 0, 0, 0), Ok(()));
        assert_eq!(check(Opcode::Noop, 0, 1, 0), Err("key not allowed"));
        assert_eq!(check(Opcode::Version, 0, 0, 2), Err("value not allowed"));
        assert_eq!(check(Opcode::SaslAuth, 0, 5, 12), Ok(()));
        assert_eq!(check(Opcode::SaslStep, 0, 0, 12), Err("key required"));
        assert_eq!(check(Opcode::Verbosity, 4, 0, 0), Ok(()));
        assert_eq!(check(Opcode::SelectBucket, 0, 7, 0), Ok(()));
        assert_eq!(check(Opcode::SelectBucket, 0, 0, 0), Err("key required"));
        assert_eq!(
            check(Opcode::SelectBucket, 0, 3, 1),
            Err("value not allowed")
        );
    }

    #[test]
    fn set_vbucket_state_lives_in_one_place() {
        assert_eq!(check(Opcode::SetVbucket, 1, 0, 0), Ok(()));
        assert_eq!(check(Opcode::SetVbucket, 4, 0, 0), Ok(()));
        assert_eq!(check(Opcode::SetVbucket, 0, 0, 4), Ok(()));
        assert!(check(Opcode::SetVbucket, 0, 0, 0).is_err());
        assert!(check(Opcode::SetVbucket, 1, 0, 4).is_err());
        assert!(check(Opcode::SetVbucket, 2, 0, 0).is_err());
        assert!(check(Opcode::SetVbucket, 1, 3, 0).is_err());
    }

    #[test]
    fn unvalidated_opcodes() {
        for op in [
            Opcode::Other(0xee),
            Opcode::DcpMutation,
            Opcode::Observe,
            Opcode::GetClusterConfig,
        ] {
            assert_eq!(shape(op), None);
        }
    }
}
