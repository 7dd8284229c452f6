//! Shoal's network edge, the part node and proxy share without depending
//! on each other: admitting connections under budgets and accepting them
//! ([`accept`]), the byte stream a connection is, plain or TLS
//! ([`stream`], [`tls`], with [`local_ca`] for a test or laptop CA),
//! deadlines that stop slow or silent peers from holding memory
//! ([`deadline`]), the admin ports' HTTP server loop ([`http`]), and files
//! only their owner may read ([`private`]).
//!
//! It knows nothing of memcached, vbuckets or either caller: it imports
//! no other Shoal crate.
#![forbid(unsafe_code)]

pub mod accept;
pub mod deadline;
pub mod http;
pub mod local_ca;
pub mod private;
pub mod stream;
pub mod tls;

pub use accept::{accept_loop, ConnectionBudget, Seat};
pub use deadline::Deadlines;
pub use stream::Stream;
pub use tls::{TlsAcceptor, TlsConnector, TlsError, TlsFiles};
