//! `shoal-loadgen`: a memcached load generator for Shoal's side-by-side
//! benchmarks (`scripts/bench/`).
//!
//! Modules:
//! - [`config`]: run settings, their validation, the hand-written duration parser;
//! - [`data`]: key and value formats, and the checks of replies against them;
//! - [`rng`]: the SplitMix64 generator that picks keys and verbs;
//! - [`ascii`]: ASCII request encoders and the reply frame parser;
//! - [`binary`]: binary request encoders and the response parser;
//! - [`meta`]: meta request encoders (`mg <key> v`, `ms <key> <len>`) and the
//!   reply parser;
//! - [`session`]: sans-IO connection state: what is in flight, what each reply
//!   must look like, what gets recorded;
//! - [`login`]: the SASL PLAIN login of `--sasl-user`, done when a connection
//!   opens (the request, the check of the answer, and its I/O);
//! - `conn`: the per-connection I/O loops around a [`session`], one for plain
//!   TCP and one for TLS (`--tls-ca`);
//! - `preload`: writes every key once before the clock starts;
//! - [`stats`]: per-connection counters and histograms, merged into a [`Report`];
//! - `cpu`: the generator's own CPU use, read from `/proc/self/stat`;
//! - [`run`](mod@run): connects (TLS handshake and login included), preloads,
//!   runs every connection, builds the [`Report`].
//!
//! # What it measures
//!
//! - **Throughput**: requests completed per second of the measured window
//!   (`--duration`, after `--warmup`). A multiget counts as one request;
//!   `keys_per_sec` counts its keys.
//! - **Latency** of each request, from the moment its bytes were handed to the
//!   kernel (closed loop), or from the moment it *should* have been sent (open
//!   loop, `--rate`), to the moment its whole reply had been read and parsed.
//!   The open-loop figure is coordinated-omission correct: a server that
//!   stalls is charged for the requests the schedule wanted to send during
//!   the stall, not only for the few that were in flight.
//! - **Correctness of every reply**: the key, flags, length and content of
//!   each hit, the status of each set. Misses are counted apart from errors;
//!   framing errors (unexpected bytes) close the connection.
//! - Its **own CPU use** (`loadgen_cpu`, in cores), so a run that saturated the
//!   generator instead of the server shows it.
//!
//! # What it does not measure
//!
//! - Connection set-up: every connection is opened, its TLS handshake done
//!   (`--tls-ca`), logged in (`--sasl-user`), and the keys preloaded, before
//!   the clock starts; a lost connection is not reopened. What TLS or a login
//!   costs per request afterwards is measured; the handshake and the login
//!   themselves are not.
//! - Server-side CPU, memory, or what happens under eviction: the key space
//!   should fit in the server's memory.
//! - Verbs other than `get`/`set` (no cas, incr, delete, touch; of the meta
//!   protocol only `mg <key> v` and `ms <key> <len>`, without flags), key skew
//!   (keys are uniform), expiry, or values over 1 MB.
//! - Latency below the generator's own scheduling noise: all requests of one
//!   connection share one task, and replies read in one `read` share one
//!   timestamp. With `--pipeline N`, requests queue behind each other on the
//!   connection, and that queueing is part of their latency.
//!
//! # Open loop
//!
//! With `--rate R`, each connection gets its own schedule of `R / connections`
//! requests per second, offset so that connections do not fire together. A
//! request whose time has come is written as soon as a pipeline slot is free;
//! its latency counts from its scheduled time. Tokio's timer ticks in
//! milliseconds, so the last millisecond before a send is waited by yielding
//! and re-reading the clock: in an open loop the generator keeps its core
//! busy whatever the rate. The report adds `send_lag_p99_us` (how late
//! requests were written) and `unsent` (requests due in the window that never
//! went out because the pipeline stayed full): a large `unsent` means the
//! server could not sustain the rate.
//!
//! # TLS
//!
//! With `--tls-ca FILE`, every connection runs a TLS handshake right after
//! it connects (rustls through `shoal-net`, as node and proxy do), trusting
//! the CA certificates in FILE alone, with the host of `--server` as the
//! name the server's certificate must carry. The login, preload and load
//! then travel inside TLS. Encrypting and decrypting is the generator's work
//! too: it shows in `loadgen_cpu`, which is worth checking before blaming a
//! slower TLS figure on the server.
//!
//! # Why `hdrhistogram`
//!
//! Tail percentiles (p99.9, max) need every sample, not a reservoir or a
//! running average; an HDR histogram records each latency in constant time
//! and memory with a fixed relative error (3 significant digits here), and
//! per-connection histograms merge exactly at the end, so connections never
//! share a lock on the hot path.
//!
//! The generator deliberately does not use `shoal-protocol`: it has its own
//! small encoders and parsers, so a bug shared with the code under test
//! cannot hide.

#![forbid(unsafe_code)]

pub mod ascii;
pub mod binary;
pub mod config;
mod conn;
mod cpu;
pub mod data;
pub mod login;
pub mod meta;
mod preload;
pub mod rng;
pub mod run;
pub mod session;
pub mod stats;

pub use config::{parse_duration, Config, Protocol};
pub use run::{run, RunError};
pub use stats::Report;

/// Why a reply could not be parsed. Shared by the ASCII, meta and binary parsers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The buffer holds the start of a valid reply; read more.
    #[error("incomplete reply")]
    Incomplete,
    /// The bytes cannot be a reply: the connection is out of step.
    #[error("malformed reply: {0}")]
    Malformed(&'static str),
}

impl ParseError {
    /// True when more bytes may complete the reply.
    pub fn is_incomplete(&self) -> bool {
        matches!(self, ParseError::Incomplete)
    }

    /// A short description for error reports.
    pub fn reason(&self) -> &'static str {
        match self {
            ParseError::Incomplete => "incomplete reply",
            ParseError::Malformed(reason) => reason,
        }
    }
}
