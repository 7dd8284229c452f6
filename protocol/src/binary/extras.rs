//! Typed request extras: [`Extras`], decoded per opcode once the frame's
//! shape has been validated, the [`VbucketState`] SET_VBUCKET carries, and
//! fixed-size encoders (`store_extras` and friends) that build the wire form
//! on the stack, so encoding a request never allocates. Expiry travels as an
//! unsigned 32-bit field in the binary protocol; [`exptime_to_wire`] is the
//! one place that maps the signed [`Exptime`] onto it.

use crate::binary::opcode::Opcode;
use crate::{Exptime, Span};

/// SET/ADD/REPLACE extras: flags (4) + expiry (4).
pub const STORE_EXTRAS_LEN: usize = 8;
/// INCREMENT/DECREMENT extras: delta (8) + initial (8) + expiry (4).
pub const ARITH_EXTRAS_LEN: usize = 20;
/// TOUCH/GAT extras: expiry (4).
pub const TOUCH_EXTRAS_LEN: usize = 4;
/// FLUSH extras when a delay is given: expiry (4).
pub const FLUSH_EXTRAS_LEN: usize = 4;
/// VERBOSITY extras: level (4).
pub const VERBOSITY_EXTRAS_LEN: usize = 4;
/// Retrieval reply extras: flags (4).
pub const FLAGS_EXTRAS_LEN: usize = 4;

/// The arithmetic expiry that means "do not create a missing counter; answer
/// not found" (`0xffffffff`, checked by memcached's `complete_incr_bin`).
pub const ARITH_NO_CREATE: u32 = u32::MAX;

/// What [`exptime_to_wire`] sends for a negative (already expired) exptime:
/// one second past the relative window, which memcached reads as an absolute
/// time in January 1970 — long past, so the item is invisible at once.
const EXPIRED_ON_WIRE: u32 = crate::exptime::RELATIVE_EXPTIME_MAX as u32 + 1;

/// The state of a vbucket on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum VbucketState {
    /// Serves reads and writes for its keys.
    Active = 1,
    /// Receives a replication stream; refuses clients.
    Replica = 2,
    /// Being taken over during rebalance; clients are held off.
    Pending = 3,
    /// Not served here.
    Dead = 4,
}

impl VbucketState {
    /// The state for a wire value, or `None` outside 1–4.
    pub const fn from_u32(raw: u32) -> Option<VbucketState> {
        match raw {
            1 => Some(VbucketState::Active),
            2 => Some(VbucketState::Replica),
            3 => Some(VbucketState::Pending),
            4 => Some(VbucketState::Dead),
            _ => None,
        }
    }

    /// The wire value, 1–4.
    pub const fn to_u32(self) -> u32 {
        self as u32
    }

    /// The word `stats vbucket` prints: `active|replica|pending|dead`.
    pub const fn as_str(self) -> &'static str {
        match self {
            VbucketState::Active => "active",
            VbucketState::Replica => "replica",
            VbucketState::Pending => "pending",
            VbucketState::Dead => "dead",
        }
    }
}

/// A request's extras, typed by opcode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Extras {
    /// The opcode takes no extras (GET, DELETE, APPEND, NOOP, SASL, …).
    None,
    /// SET/ADD/REPLACE and their quiet twins.
    Store {
        /// Opaque client flags stored with the item.
        flags: u32,
        /// When the item expires.
        exptime: Exptime,
    },
    /// INCREMENT/DECREMENT and their quiet twins.
    Arith {
        /// Amount to add or subtract.
        delta: u64,
        /// Value to create a missing counter with.
        initial: u64,
        /// Expiry of a created counter; `Exptime(ARITH_NO_CREATE as i64)`
        /// means "do not create, answer not found".
        exptime: Exptime,
    },
    /// TOUCH, GAT, GATQ, GATK, GATKQ.
    Touch {
        /// The new expiry.
        exptime: Exptime,
    },
    /// FLUSH/FLUSHQ: a delay when 4 bytes of extras are present.
    Flush {
        /// When to invalidate; `None` means now.
        exptime: Option<Exptime>,
    },
    /// VERBOSITY.
    Verbosity {
        /// The log level.
        level: u32,
    },
    /// SET_VBUCKET, whichever of the three encodings carried the state
    /// (1-byte extras, 4-byte extras, or a 4-byte value with no extras —
    /// the last leaves the request's value span covering those 4 bytes,
    /// since spans always describe the wire).
    SetVbucket {
        /// The vbucket's new state.
        state: VbucketState,
    },
    /// The extras bytes, untyped, for opcodes with no typed form here
    /// (unknown opcodes, DCP, OBSERVE, GET_CLUSTER_CONFIG). Offsets into the
    /// frame, like the key and value spans.
    Raw(Span),
}

/// A typed extras block on the stack; see [`Extras::to_wire`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExtrasBuf {
    bytes: [u8; ARITH_EXTRAS_LEN],
    len: usize,
}

impl ExtrasBuf {
    fn from_slice(src: &[u8]) -> ExtrasBuf {
        let mut buf = ExtrasBuf::default();
        let len = src.len().min(ARITH_EXTRAS_LEN);
        buf.bytes[..len].copy_from_slice(&src[..len]);
        buf.len = len;
        buf
    }

    /// The wire bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl Extras {
    /// The wire form of typed extras, ready for
    /// [`encode_request`](crate::binary::encode_request). `None` for
    /// [`Extras::Raw`], whose bytes live in the frame it was parsed from
    /// (slice them with its span). SET_VBUCKET uses the modern 1-byte form.
    pub fn to_wire(&self) -> Option<ExtrasBuf> {
        Some(match *self {
            Extras::None => ExtrasBuf::default(),
            Extras::Store { flags, exptime } => {
                ExtrasBuf::from_slice(&store_extras(flags, exptime))
            }
            Extras::Arith {
                delta,
                initial,
                exptime,
            } => ExtrasBuf::from_slice(&arith_extras(delta, initial, exptime)),
            Extras::Touch { exptime } => ExtrasBuf::from_slice(&touch_extras(exptime)),
            Extras::Flush { exptime: None } => ExtrasBuf::default(),
            Extras::Flush {
                exptime: Some(exptime),
            } => ExtrasBuf::from_slice(&touch_extras(exptime)),
            Extras::Verbosity { level } => ExtrasBuf::from_slice(&level.to_be_bytes()),
            Extras::SetVbucket { state } => ExtrasBuf::from_slice(&[state as u8]),
            Extras::Raw(_) => return None,
        })
    }
}

/// The binary protocol's unsigned expiry for an [`Exptime`]. Values that fit
/// pass through unchanged. A negative exptime ("already expired" in the text
/// protocol) becomes an absolute time in 1970, which memcached also treats as
/// expired; one beyond `u32` saturates to `0xfffffffe` (year 2106), never to
/// the arithmetic "do not create" sentinel `0xffffffff`.
pub fn exptime_to_wire(exptime: Exptime) -> u32 {
    match u32::try_from(exptime.0) {
        Ok(wire) => wire,
        Err(_) if exptime.0 < 0 => EXPIRED_ON_WIRE,
        Err(_) => ARITH_NO_CREATE - 1,
    }
}

/// The [`Exptime`] for a binary expiry field.
pub const fn exptime_from_wire(wire: u32) -> Exptime {
    Exptime(wire as i64)
}

/// SET/ADD/REPLACE extras: flags, then expiry.
pub fn store_extras(flags: u32, exptime: Exptime) -> [u8; STORE_EXTRAS_LEN] {
    let mut b = [0u8; STORE_EXTRAS_LEN];
    b[..4].copy_from_slice(&flags.to_be_bytes());
    b[4..].copy_from_slice(&exptime_to_wire(exptime).to_be_bytes());
    b
}

/// INCREMENT/DECREMENT extras: delta, initial, then expiry.
pub fn arith_extras(delta: u64, initial: u64, exptime: Exptime) -> [u8; ARITH_EXTRAS_LEN] {
    let mut b = [0u8; ARITH_EXTRAS_LEN];
    b[..8].copy_from_slice(&delta.to_be_bytes());
    b[8..16].copy_from_slice(&initial.to_be_bytes());
    b[16..].copy_from_slice(&exptime_to_wire(exptime).to_be_bytes());
    b
}

/// TOUCH/GAT extras (and FLUSH's optional delay): the expiry.
pub fn touch_extras(exptime: Exptime) -> [u8; TOUCH_EXTRAS_LEN] {
    exptime_to_wire(exptime).to_be_bytes()
}

/// Retrieval reply extras: the item's flags.
pub fn flags_extras(flags: u32) -> [u8; FLAGS_EXTRAS_LEN] {
    flags.to_be_bytes()
}

/// Decode the extras of a frame whose shape (extras, key and value lengths)
/// has already been validated for its opcode. `extras` and `value` are the
/// frame's bytes; `span` is where the extras lie, kept for [`Extras::Raw`].
/// Errors are reasons for an invalid-arguments reply.
pub(crate) fn decode(
    opcode: Opcode,
    extras: &[u8],
    span: Span,
    value: &[u8],
) -> Result<Extras, &'static str> {
    const BAD_LEN: &str = "invalid extras length";
    let be32 = |b: &[u8]| b.first_chunk::<4>().map(|c| u32::from_be_bytes(*c));
    let be64 = |b: &[u8]| b.first_chunk::<8>().map(|c| u64::from_be_bytes(*c));
    fn tail(b: &[u8], at: usize) -> &[u8] {
        b.get(at..).unwrap_or_default()
    }

    match opcode.non_quiet() {
        Opcode::Set | Opcode::Add | Opcode::Replace => Ok(Extras::Store {
            flags: be32(extras).ok_or(BAD_LEN)?,
            exptime: exptime_from_wire(be32(tail(extras, 4)).ok_or(BAD_LEN)?),
        }),
        Opcode::Increment | Opcode::Decrement => Ok(Extras::Arith {
            delta: be64(extras).ok_or(BAD_LEN)?,
            initial: be64(tail(extras, 8)).ok_or(BAD_LEN)?,
            exptime: exptime_from_wire(be32(tail(extras, 16)).ok_or(BAD_LEN)?),
        }),
        Opcode::Touch | Opcode::Gat | Opcode::GatK => Ok(Extras::Touch {
            exptime: exptime_from_wire(be32(extras).ok_or(BAD_LEN)?),
        }),
        Opcode::Flush => Ok(Extras::Flush {
            exptime: be32(extras).map(exptime_from_wire),
        }),
        Opcode::Verbosity => Ok(Extras::Verbosity {
            level: be32(extras).ok_or(BAD_LEN)?,
        }),
        Opcode::SetVbucket => {
            // Modern: 1 byte of extras. Older ep-engine: 4 bytes of extras.
            // Couchbase's cluster manager for years: no extras, 4-byte value.
            let raw = match extras {
                [state] => u32::from(*state),
                [] => be32(value).ok_or(BAD_LEN)?,
                _ => be32(extras).ok_or(BAD_LEN)?,
            };
            let state = VbucketState::from_u32(raw).ok_or("invalid vbucket state")?;
            Ok(Extras::SetVbucket { state })
        }
        _ if extras.is_empty() && !span_is_raw(opcode) => Ok(Extras::None),
        _ => Ok(Extras::Raw(span)),
    }
}

/// Opcodes whose extras are always reported as [`Extras::Raw`], even when
/// empty: their extras have no typed form here, and a stable variant per
/// opcode keeps encode→parse an identity.
fn span_is_raw(opcode: Opcode) -> bool {
    crate::binary::shape::shape(opcode).is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(len: usize) -> Span {
        Span::new(24, 24 + len)
    }

    #[test]
    fn store_and_arith_are_big_endian() {
        assert_eq!(
            store_extras(0xdead_beef, Exptime(0x0e10)),
            [0xde, 0xad, 0xbe, 0xef, 0x00, 0x00, 0x0e, 0x10]
        );
        let arith = arith_extras(1, 0x0102_0304_0506_0708, Exptime(0));
        assert_eq!(&arith[..8], &[0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(&arith[8..16], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&arith[16..], &[0, 0, 0, 0]);
        let decoded = decode(Opcode::IncrementQ, &arith, span(20), &[]).unwrap();
        assert_eq!(
            decoded,
            Extras::Arith {
                delta: 1,
                initial: 0x0102_0304_0506_0708,
                exptime: Exptime(0)
            }
        );
        assert_eq!(decoded.to_wire().unwrap().as_slice(), &arith);
    }

    #[test]
    fn exptime_mapping_never_panics_or_hits_the_sentinel() {
        assert_eq!(exptime_to_wire(Exptime(0)), 0);
        assert_eq!(exptime_to_wire(Exptime(3600)), 3600);
        assert_eq!(exptime_to_wire(Exptime(u32::MAX as i64)), u32::MAX);
        assert_eq!(exptime_to_wire(Exptime(-1)), 2_592_001);
        assert_eq!(exptime_to_wire(Exptime(i64::MIN)), 2_592_001);
        assert_eq!(exptime_to_wire(Exptime(i64::MAX)), 0xffff_fffe);
        assert_eq!(exptime_from_wire(u32::MAX), Exptime(4_294_967_295));
    }

    #[test]
    fn set_vbucket_accepts_all_three_encodings() {
        let replica = Extras::SetVbucket {
            state: VbucketState::Replica,
        };
        assert_eq!(decode(Opcode::SetVbucket, &[2], span(1), &[]), Ok(replica));
        assert_eq!(
            decode(Opcode::SetVbucket, &[0, 0, 0, 2], span(4), &[]),
            Ok(replica)
        );
        assert_eq!(
            decode(Opcode::SetVbucket, &[], span(0), &[0, 0, 0, 2]),
            Ok(replica)
        );
        assert_eq!(
            decode(Opcode::SetVbucket, &[5], span(1), &[]),
            Err("invalid vbucket state")
        );
        assert_eq!(
            decode(Opcode::SetVbucket, &[0, 0, 1, 1], span(4), &[]),
            Err("invalid vbucket state")
        );
        assert_eq!(replica.to_wire().unwrap().as_slice(), &[2]);
    }

    #[test]
    fn flush_delay_is_optional() {
        assert_eq!(
            decode(Opcode::FlushQ, &[], span(0), &[]),
            Ok(Extras::Flush { exptime: None })
        );
        assert_eq!(
            decode(Opcode::Flush, &[0, 0, 0, 9], span(4), &[]),
            Ok(Extras::Flush {
                exptime: Some(Exptime(9))
            })
        );
    }

    #[test]
    fn untyped_opcodes_keep_a_raw_span() {
        assert_eq!(
            decode(Opcode::DcpMutation, &[1, 2, 3], span(3), &[]),
            Ok(Extras::Raw(span(3)))
        );
        assert_eq!(
            decode(Opcode::Other(0xee), &[], span(0), &[]),
            Ok(Extras::Raw(span(0)))
        );
        assert_eq!(decode(Opcode::GetK, &[], span(0), &[]), Ok(Extras::None));
        assert_eq!(Extras::Raw(span(3)).to_wire(), None);
    }

    #[test]
    fn short_extras_are_errors_not_panics() {
        for op in [
            Opcode::Set,
            Opcode::Increment,
            Opcode::Touch,
            Opcode::Verbosity,
        ] {
            assert_eq!(decode(op, &[1], span(1), &[]), Err("invalid extras length"));
        }
        assert_eq!(VbucketState::Dead.as_str(), "dead");
        assert_eq!(VbucketState::from_u32(0), None);
        assert_eq!(VbucketState::Pending.to_u32(), 3);
    }
}
