//! The memcached binary protocol, sans-IO and zero-copy.
//!
//! Modules:
//! - [`header`]: the 24-byte header (with its byte diagram), [`Magic`], and
//!   the checks a frame must pass before its body is awaited.
//! - [`opcode`]: a constant for every opcode and the [`Opcode`] enum, where
//!   unknown opcodes are values ([`Opcode::Other`]), never errors.
//! - [`status`]: [`Status`] and its named constants.
//! - [`extras`]: typed request extras ([`Extras`], [`VbucketState`]) and
//!   stack-only extras encoders.
//! - [`request`]: [`parse_request`] and [`encode_request`].
//! - [`response`]: [`parse_response`] and [`encode_response`].
//! - [`dcp`]: the DCP replication messages, [`parse_dcp`] and an encoder
//!   per message.
//! - `shape` (private): which extras, key and value each opcode may carry.
//! - `encode` (private): the shared frame writer and [`EncodeError`].
//!
//! Parsers follow the crate's contract: `Ok(Some((frame, consumed)))`,
//! `Ok(None)` for "need more bytes", or a [`ParseError`](crate::ParseError);
//! spans index the frame starting at `buf[0]`. Encoders append to a
//! `BytesMut` with lengths computed from the slices given.

pub mod dcp;
pub mod extras;
pub mod header;
pub mod opcode;
pub mod request;
pub mod response;
pub mod status;

mod encode;
mod shape;

#[cfg(test)]
mod proptests;

pub use dcp::{parse_dcp, DcpMessage, FailoverEntry, FailoverLog};
pub use encode::EncodeError;
pub use extras::{
    arith_extras, exptime_from_wire, exptime_to_wire, flags_extras, store_extras, touch_extras,
    Extras, ExtrasBuf, VbucketState,
};
pub use header::{Magic, RequestHeader, ResponseHeader, HEADER_LEN, REQUEST_MAGIC, RESPONSE_MAGIC};
pub use opcode::Opcode;
pub use request::{encode_request, parse_request, peek_request_header, Request, RequestFields};
pub use response::{
    counter_value, encode_error_response, encode_response, parse_response, vbucket_state_value,
    Decoded, Response, ResponseFields,
};
pub use status::Status;

/// True when a connection's first byte says it speaks the binary protocol
/// (a request magic, 0x80); no ASCII or meta command starts with it, so the
/// data port can serve both protocols and tell them apart by one byte.
pub const fn looks_binary(first_byte: u8) -> bool {
    first_byte == REQUEST_MAGIC
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_the_request_magic_only() {
        assert!(looks_binary(0x80));
        assert!(!looks_binary(0x81));
        for b in b"gsmdaicvfqtn" {
            assert!(!looks_binary(*b));
        }
    }
}
