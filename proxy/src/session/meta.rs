//! Meta clients (`mg ms md ma me mn`). `mn` is answered here; every other
//! command goes, as the client wrote it, to the server that owns its key
//! (routed by the decoded key, for a base64 one), and the server's meta
//! reply comes back to the client as is. Every flag means exactly what it
//! means on that server: item state (`h l t`, the `N R I` recache flow and
//! its `W X Z` markers), `q`, opaques and error wording included.
//!
//! In front of a Shoal cluster (vbucket or memcached bucket) the request
//! travels in a META envelope (binary opcode 0xe7: the decoded key, the
//! vbucket in the header), so NOT_MY_VBUCKET and node failures are retried
//! like any request. A static ring's plain memcached servers speak meta
//! only in text, so there it travels on a meta text connection, followed
//! by `mn` to mark where its reply ends (`docs/DESIGN.md`, "Meta through
//! the proxy").

use std::sync::atomic::Ordering;

use bytes::{BufMut, Bytes, BytesMut};
use shoal_protocol::binary::{Opcode, Status};
use shoal_protocol::meta::{base64, Flag, MetaCommand};

use super::call::{keyed, CallError, MetaText, Plain};
use super::text::{call_error_line, refusal_line, TEMPORARY_FAILURE};
use super::Outcome;
use crate::config::MapSource;
use crate::downstream::Reply;
use crate::shared::Shared;

/// memcached's longest key; base64 keys decode into a buffer this size.
const MAX_KEY: usize = 250;

/// Runs one meta command parsed from `frame`, appending its reply to `out`.
pub(super) async fn execute(
    shared: &Shared,
    frame: &Bytes,
    cmd: &MetaCommand,
    out: &mut BytesMut,
) -> Outcome {
    if matches!(cmd, MetaCommand::Noop) {
        out.put_slice(b"MN\r\n");
        return Outcome::Continue;
    }
    let mut key_buf = [0u8; MAX_KEY];
    let Some(key) = decoded_key(frame, cmd, &mut key_buf) else {
        out.put_slice(b"CLIENT_ERROR error decoding key\r\n");
        return Outcome::Continue;
    };
    let idempotent = is_idempotent(cmd);
    let result = match &shared.config.source {
        MapSource::Cluster { .. } => {
            let envelope = Plain {
                value: frame,
                ..Plain::new(Opcode::Meta, key, &[])
            };
            keyed(shared, key, &envelope, idempotent).await
        }
        MapSource::Static { .. } => {
            keyed(shared, key, &MetaText { request: frame }, idempotent).await
        }
    };
    match result {
        Ok(reply) if reply.response.header.status == Status::OK => {
            out.put_slice(reply.response.value.of(&reply.frame));
        }
        other => error(shared, out, other),
    }
    Outcome::Continue
}

/// The key a command addresses, decoded when it is base64 (`None`: it
/// does not decode, which memcached answers `CLIENT_ERROR error decoding
/// key`).
fn decoded_key<'k>(
    frame: &'k [u8],
    cmd: &MetaCommand,
    buf: &'k mut [u8; MAX_KEY],
) -> Option<&'k [u8]> {
    match cmd.key() {
        None => Some(&[]),
        Some(span) if cmd.base64() => match base64::decode_into(span.of(frame), buf) {
            Some(len) if len > 0 => buf.get(..len),
            _ => None,
        },
        Some(span) => Some(span.of(frame)),
    }
}

/// Whether sending `cmd` twice is the same as sending it once, so a
/// request lost with its connection may be sent again: reads that change
/// nothing (no `T` touch, `N` vivify or `R` win token).
fn is_idempotent(cmd: &MetaCommand) -> bool {
    match cmd {
        MetaCommand::Get(get) => ![Flag::Ttl, Flag::Vivify, Flag::Recache]
            .iter()
            .any(|f| get.flags.has(*f)),
        MetaCommand::Debug(_) | MetaCommand::Noop => true,
        MetaCommand::Set(_) | MetaCommand::Delete(_) | MetaCommand::Arith(_) => false,
    }
}

/// A node error or a failed call, as memcached words it.
fn error(shared: &Shared, out: &mut BytesMut, result: Result<Reply, CallError>) {
    shared.stats.errors.fetch_add(1, Ordering::Relaxed);
    let line = match result {
        Ok(reply) => refusal_line(reply.response.header.status).unwrap_or(TEMPORARY_FAILURE),
        Err(e) => call_error_line(e),
    };
    out.put_slice(line);
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_protocol::meta::parse_meta;
    use shoal_protocol::Limits;

    fn command(line: &[u8]) -> MetaCommand {
        parse_meta(line, &Limits::default()).unwrap().unwrap().0
    }

    #[test]
    fn only_reads_without_side_effects_are_retried() {
        assert!(is_idempotent(&command(b"mg k v t c\r\n")));
        assert!(is_idempotent(&command(b"me k\r\n")));
        for line in [
            &b"mg k T30\r\n"[..],
            b"mg k N30\r\n",
            b"mg k R30\r\n",
            b"md k\r\n",
            b"ma k\r\n",
        ] {
            assert!(!is_idempotent(&command(line)), "{line:?}");
        }
        assert!(!is_idempotent(&command(b"ms k 1\r\nx\r\n")));
    }

    #[test]
    fn base64_keys_route_by_their_decoded_bytes() {
        let mut buf = [0u8; MAX_KEY];
        let line = b"mg Zm9v b v\r\n";
        assert_eq!(
            decoded_key(line, &command(line), &mut buf),
            Some(&b"foo"[..])
        );
        let plain = b"mg Zm9v v\r\n";
        let key = decoded_key(plain, &command(plain), &mut buf);
        assert_eq!(key, Some(&b"Zm9v"[..]));
    }
}
