//! The proxy's own counters (`stats proxy`, `/metrics`): requests, errors,
//! retries, NOT_MY_VBUCKET replies, multi-get keys it could not fetch, and a
//! latency histogram with power-of-two microsecond buckets (no allocation,
//! one atomic add per request).
//!
//! Layer 0, a leaf: imports nothing from the rest of the proxy.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Latency buckets: bucket `i` counts requests that took less than `2^i`
/// µs (the last one: everything slower), so 1 µs .. ~8.4 s.
pub const LATENCY_BUCKETS: usize = 24;

/// Counters shared by every client connection.
#[derive(Debug, Default)]
pub struct ProxyStats {
    /// Client connections open now.
    pub curr_connections: AtomicU64,
    /// Client connections accepted since start.
    pub total_connections: AtomicU64,
    /// Client requests answered.
    pub requests: AtomicU64,
    /// Client requests answered with an error the proxy produced (temporary
    /// failure, outcome unknown, node error).
    pub errors: AtomicU64,
    /// Requests sent again (NOT_MY_VBUCKET, node down, lost idempotent).
    pub retries: AtomicU64,
    /// NOT_MY_VBUCKET replies seen from nodes.
    pub not_my_vbucket: AtomicU64,
    /// Multi-get keys left out because their node stayed unreachable.
    pub multiget_missing_keys: AtomicU64,
    /// Requests the client's bytes could not be parsed as.
    pub protocol_errors: AtomicU64,
    /// Client connections refused because the client port was full.
    pub rejected_connections: AtomicU64,
    /// Connections closed with a request half sent and nothing new for
    /// the request deadline.
    pub request_timeouts: AtomicU64,
    /// Idle connections closed after the idle deadline.
    pub idle_kicks: AtomicU64,
    /// Connections closed because the client stopped reading its replies.
    pub write_timeouts: AtomicU64,
    /// TLS handshakes that failed or timed out (plaintext to the TLS port
    /// among them).
    pub tls_handshake_failures: AtomicU64,
    /// Request latency histogram (see [`LATENCY_BUCKETS`]).
    pub latency: [AtomicU64; LATENCY_BUCKETS],
}

/// One counter of [`ProxyStats`], with the name each report gives it.
#[derive(Debug)]
pub struct Counter {
    /// Its name in `stats proxy`.
    pub stat: &'static str,
    /// Its Prometheus family on `/metrics`.
    pub metric: &'static str,
    /// True when it goes down as well as up (a gauge); otherwise it only
    /// grows.
    pub gauge: bool,
    /// What it counts (the family's `# HELP`).
    pub help: &'static str,
    /// Reads it.
    pub read: fn(&ProxyStats) -> &AtomicU64,
}

/// Every counter of [`ProxyStats`] but the latency histogram, in the order
/// the reports list them: both `stats proxy` and `/metrics` read this table,
/// so a new counter is added here once.
pub const COUNTERS: [Counter; 13] = [
    Counter {
        stat: "proxy_curr_connections",
        metric: "shoal_proxy_current_connections",
        gauge: true,
        help: "Client connections open now.",
        read: |s| &s.curr_connections,
    },
    Counter {
        stat: "proxy_total_connections",
        metric: "shoal_proxy_connections_total",
        gauge: false,
        help: "Client connections accepted since start.",
        read: |s| &s.total_connections,
    },
    Counter {
        stat: "proxy_requests",
        metric: "shoal_proxy_requests_total",
        gauge: false,
        help: "Client requests answered.",
        read: |s| &s.requests,
    },
    Counter {
        stat: "proxy_errors",
        metric: "shoal_proxy_errors_total",
        gauge: false,
        help: "Client requests answered with an error the proxy produced.",
        read: |s| &s.errors,
    },
    Counter {
        stat: "proxy_retries",
        metric: "shoal_proxy_retries_total",
        gauge: false,
        help: "Requests sent again (NOT_MY_VBUCKET, node down, lost idempotent request).",
        read: |s| &s.retries,
    },
    Counter {
        stat: "proxy_not_my_vbucket",
        metric: "shoal_proxy_not_my_vbucket_total",
        gauge: false,
        help: "NOT_MY_VBUCKET replies received from nodes.",
        read: |s| &s.not_my_vbucket,
    },
    Counter {
        stat: "proxy_multiget_missing_keys",
        metric: "shoal_proxy_multiget_missing_keys_total",
        gauge: false,
        help: "Multi-get keys left out because their node stayed unreachable.",
        read: |s| &s.multiget_missing_keys,
    },
    Counter {
        stat: "proxy_protocol_errors",
        metric: "shoal_proxy_protocol_errors_total",
        gauge: false,
        help: "Client requests that could not be parsed.",
        read: |s| &s.protocol_errors,
    },
    Counter {
        stat: "proxy_rejected_connections",
        metric: "shoal_proxy_rejected_connections_total",
        gauge: false,
        help: "Client connections refused because the client port was full.",
        read: |s| &s.rejected_connections,
    },
    Counter {
        stat: "proxy_request_timeouts",
        metric: "shoal_proxy_request_timeouts_total",
        gauge: false,
        help: "Connections closed holding a half-sent request past the request deadline.",
        read: |s| &s.request_timeouts,
    },
    Counter {
        stat: "proxy_idle_kicks",
        metric: "shoal_proxy_idle_kicks_total",
        gauge: false,
        help: "Idle connections closed after the idle deadline.",
        read: |s| &s.idle_kicks,
    },
    Counter {
        stat: "proxy_write_timeouts",
        metric: "shoal_proxy_write_timeouts_total",
        gauge: false,
        help: "Connections closed because the client stopped reading its replies.",
        read: |s| &s.write_timeouts,
    },
    Counter {
        stat: "proxy_tls_handshake_failures",
        metric: "shoal_proxy_tls_handshake_failures_total",
        gauge: false,
        help: "TLS handshakes on the client port that failed or timed out.",
        read: |s| &s.tls_handshake_failures,
    },
];

impl ProxyStats {
    /// Adds one request's latency to the histogram.
    #[inline]
    pub fn observe(&self, elapsed: Duration) {
        let micros = elapsed.as_micros().min(u128::from(u64::MAX)) as u64;
        let bucket = (u64::BITS - micros.leading_zeros()) as usize;
        self.latency[bucket.min(LATENCY_BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
    }

    /// Upper bound, µs, of histogram bucket `i` (`None` for the last,
    /// unbounded one).
    pub fn bucket_bound_micros(i: usize) -> Option<u64> {
        (i + 1 < LATENCY_BUCKETS).then(|| 1u64 << i)
    }

    /// The latency at quantile `q` (0..=1), as a bucket's upper bound in µs.
    pub fn latency_quantile_micros(&self, q: f64) -> u64 {
        let counts: Vec<u64> = self
            .latency
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0;
        }
        let target = ((total as f64) * q).ceil() as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= target {
                return Self::bucket_bound_micros(i).unwrap_or(u64::MAX);
            }
        }
        u64::MAX
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_cover_every_field_once() {
        let stats = ProxyStats::default();
        for (i, counter) in COUNTERS.iter().enumerate() {
            (counter.read)(&stats).store(i as u64 + 1, Ordering::Relaxed);
        }
        let fields = [
            &stats.curr_connections,
            &stats.total_connections,
            &stats.requests,
            &stats.errors,
            &stats.retries,
            &stats.not_my_vbucket,
            &stats.multiget_missing_keys,
            &stats.protocol_errors,
            &stats.rejected_connections,
            &stats.request_timeouts,
            &stats.idle_kicks,
            &stats.write_timeouts,
            &stats.tls_handshake_failures,
        ];
        let mut seen: Vec<u64> = fields.iter().map(|f| f.load(Ordering::Relaxed)).collect();
        seen.sort_unstable();
        assert_eq!(seen, (1..=COUNTERS.len() as u64).collect::<Vec<_>>());
        let mut names: Vec<&str> = COUNTERS.iter().map(|c| c.stat).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(
            names.len(),
            COUNTERS.len(),
            "a `stats proxy` name is used twice"
        );
    }

    #[test]
    fn histogram_buckets_by_power_of_two() {
        let s = ProxyStats::default();
        s.observe(Duration::from_micros(0));
        s.observe(Duration::from_micros(3));
        s.observe(Duration::from_micros(1000));
        assert_eq!(s.latency[0].load(Ordering::Relaxed), 1);
        assert_eq!(s.latency[2].load(Ordering::Relaxed), 1);
        assert_eq!(s.latency[10].load(Ordering::Relaxed), 1);
        assert_eq!(s.latency_quantile_micros(0.5), 4);
        assert_eq!(s.latency_quantile_micros(1.0), 1024);
    }
}
