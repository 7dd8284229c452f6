//! memcached wire formats, sans-IO.
//!
//! Modules:
//! - [`binary`]: the binary protocol — 24-byte header, opcodes, statuses,
//!   typed extras; requests and responses, parse and encode.
//! - [`ascii`]: the classic text protocol — retrieval, storage, arithmetic,
//!   touch and admin commands, and every reply form.
//! - [`meta`]: the meta text commands `mg ms md ma mn me` and their replies.
//! - [`error`]: [`ParseError`], the one place that decides what a client hears
//!   for bad input and whether the stream can go on.
//! - [`limits`], [`span`], [`exptime`], [`cas`]: the shared vocabulary.
//!
//! Every parser is a total function over `&[u8]`: it returns
//! `Ok(Some((request, consumed)))`, `Ok(None)` when more bytes are needed, or a
//! [`ParseError`]. Parsed requests hold [`Span`]s (byte ranges) into the input
//! rather than copies; the caller freezes the consumed bytes and slices them
//! (`Bytes::slice`) so keys and values are never copied on the hot path.
//!
//! This crate never performs I/O, never imports an async runtime and never
//! allocates a buffer sized by an unchecked length field.
#![forbid(unsafe_code)]

pub mod ascii;
pub mod binary;
pub mod cas;
pub mod error;
pub mod exptime;
pub mod limits;
pub mod meta;
pub mod span;

pub use error::{ErrorKind, ParseError, Recovery};
pub use exptime::{Expiry, Exptime};
pub use limits::Limits;
pub use span::Span;

/// The result of every parser: the value and the number of bytes it used, or
/// `None` when the input is a valid prefix that needs more bytes.
pub type ParseResult<T> = Result<Option<(T, usize)>, ParseError>;
