//! The proxy's own counters (`stats proxy`, `/metrics`): requests, errors,
//! retries, NOT_MY_VBUCKET replies, multi-get keys it could not fetch, and a
//! latency histogram with power-of-two microsecond buckets (no allocation,
//! one atomic add per request).

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
    /// Request latency histogram (see [`LATENCY_BUCKETS`]).
    pub latency: [AtomicU64; LATENCY_BUCKETS],
}

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
