//! memcached's text error lines, shared by the classic ASCII and the meta
//! front ends (both speak memcached's text protocol, whose errors are the
//! same lines).

use super::call::CallError;
use shoal_protocol::binary::Status;

/// A request the proxy could not get answered in time (safe to retry).
pub(super) const TEMPORARY_FAILURE: &[u8] = b"SERVER_ERROR temporary failure\r\n";

/// The line for a failed call: "temporary failure" when the client may
/// retry, a different one when a write may already have been applied.
pub(super) fn call_error_line(error: CallError) -> &'static [u8] {
    match error {
        CallError::Unavailable => TEMPORARY_FAILURE,
        CallError::OutcomeUnknown => b"SERVER_ERROR outcome unknown: connection to node lost\r\n",
        CallError::CredentialsRefused => {
            b"SERVER_ERROR the cluster refuses the proxy's bucket credentials\r\n"
        }
    }
}

/// memcached's line for a node status that refuses the request itself
/// (the value, the item or memory), or `None` for statuses each front end
/// words its own way.
pub(super) fn refusal_line(status: Status) -> Option<&'static [u8]> {
    match status {
        Status::NON_NUMERIC => {
            Some(b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n")
        }
        Status::TOO_LARGE => Some(b"SERVER_ERROR object too large for cache\r\n"),
        Status::OUT_OF_MEMORY => Some(b"SERVER_ERROR out of memory storing object\r\n"),
        _ => None,
    }
}
