//! Per-connection counters and latency histograms ([`ConnStats`]), merged
//! into one [`Report`] at the end of a run.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::config::Config;

/// Longest latency recorded exactly; longer ones are recorded as this
/// (`saturating_record`). A minute is far past any drain timeout.
const MAX_RECORDED_NS: u64 = 60_000_000_000;
/// Three significant digits: 0.1 % relative error at any latency.
const SIGNIFICANT_DIGITS: u8 = 3;

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_RECORDED_NS, SIGNIFICANT_DIGITS)
        .expect("constant histogram bounds are valid")
}

/// What went wrong with a reply or a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bytes that do not frame as a reply, or a reply that fits no request:
    /// the connection was closed.
    Protocol,
    /// The connection failed or was closed by the server.
    Io,
    /// Replies still outstanding when the drain timeout expired (one per request).
    Timeout,
    /// A hit with the wrong key, flags, length or content.
    BadValue,
    /// A set the server did not store (`NOT_STORED`, `EXISTS`, `NOT_FOUND`).
    NotStored,
    /// `SERVER_ERROR`, or a binary status other than success or miss.
    ServerError,
    /// `ERROR` or `CLIENT_ERROR`: the server rejected a request the generator
    /// believes valid.
    ClientError,
}

impl ErrorKind {
    /// Every kind, in report order.
    pub const ALL: [ErrorKind; 7] = [
        ErrorKind::Protocol,
        ErrorKind::Io,
        ErrorKind::Timeout,
        ErrorKind::BadValue,
        ErrorKind::NotStored,
        ErrorKind::ServerError,
        ErrorKind::ClientError,
    ];

    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Protocol => "protocol",
            ErrorKind::Io => "io",
            ErrorKind::Timeout => "timeout",
            ErrorKind::BadValue => "bad_value",
            ErrorKind::NotStored => "not_stored",
            ErrorKind::ServerError => "server_error",
            ErrorKind::ClientError => "client_error",
        }
    }
}

/// What one connection saw. Counts of requests, hits and misses cover the
/// measured window only; errors are counted whenever they happen (warmup
/// included), since any error makes the run suspect.
#[derive(Debug)]
pub struct ConnStats {
    /// Latency of each measured request, in nanoseconds.
    pub latency: Histogram<u64>,
    /// Open loop only: how late each request was written after its intended
    /// time, in nanoseconds (the generator's own lag plus queueing behind a
    /// full pipeline).
    pub send_lag: Option<Histogram<u64>>,
    /// Gets completed (a multiget counts once).
    pub gets: u64,
    /// Keys asked for by those gets.
    pub get_keys: u64,
    /// Keys found.
    pub hits: u64,
    /// Keys not found.
    pub misses: u64,
    /// Sets completed.
    pub sets: u64,
    /// Errors by kind, indexed like [`ErrorKind::ALL`].
    pub errors: [u64; ErrorKind::ALL.len()],
    /// The first error seen, for the report.
    pub first_error: Option<String>,
    /// True when the connection was closed early.
    pub lost: bool,
    /// Open loop only: requests the schedule wanted sent inside the measured
    /// window that never were (the pipeline stayed full to the end).
    pub unsent: u64,
}

impl ConnStats {
    /// Empty stats; `open_loop` adds the send-lag histogram.
    pub fn new(open_loop: bool) -> Self {
        ConnStats {
            latency: histogram(),
            send_lag: open_loop.then(histogram),
            gets: 0,
            get_keys: 0,
            hits: 0,
            misses: 0,
            sets: 0,
            errors: [0; ErrorKind::ALL.len()],
            first_error: None,
            lost: false,
            unsent: 0,
        }
    }

    /// Counts `count` errors of `kind`; remembers the first one's detail.
    pub fn error(&mut self, kind: ErrorKind, count: u64, detail: &str) {
        let slot = ErrorKind::ALL.iter().position(|&k| k == kind).unwrap_or(0);
        self.errors[slot] += count;
        if self.first_error.is_none() {
            self.first_error = Some(format!("{}: {detail}", kind.name()));
        }
    }

    /// Total errors of every kind.
    pub fn error_total(&self) -> u64 {
        self.errors.iter().sum()
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &ConnStats) {
        // Same bounds on both sides, so `add` cannot fail.
        let _ = self.latency.add(&other.latency);
        if let (Some(mine), Some(theirs)) = (&mut self.send_lag, &other.send_lag) {
            let _ = mine.add(theirs);
        }
        self.gets += other.gets;
        self.get_keys += other.get_keys;
        self.hits += other.hits;
        self.misses += other.misses;
        self.sets += other.sets;
        for (mine, theirs) in self.errors.iter_mut().zip(other.errors) {
            *mine += theirs;
        }
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
        self.lost |= other.lost;
        self.unsent += other.unsent;
    }
}

/// The result of one run: printed as one JSON object on stdout.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Requests (gets + sets) completed per second of the measured window.
    pub ops_per_sec: f64,
    /// Keys read or written per second (differs from `ops_per_sec` with `--multiget`).
    pub keys_per_sec: f64,
    /// Median latency, microseconds.
    pub p50_us: f64,
    /// 90th percentile latency, microseconds.
    pub p90_us: f64,
    /// 99th percentile latency, microseconds.
    pub p99_us: f64,
    /// 99.9th percentile latency, microseconds.
    pub p999_us: f64,
    /// Largest latency, microseconds.
    pub max_us: f64,
    /// Mean latency, microseconds.
    pub mean_us: f64,
    /// Gets completed in the window.
    pub gets: u64,
    /// Keys those gets asked for.
    pub get_keys: u64,
    /// Keys found.
    pub hits: u64,
    /// Keys not found.
    pub misses: u64,
    /// Sets completed in the window.
    pub sets: u64,
    /// Errors of every kind (warmup included).
    pub errors: u64,
    /// Errors by kind.
    pub error_kinds: BTreeMap<&'static str, u64>,
    /// The first error, with detail.
    pub first_error: Option<String>,
    /// Connections opened.
    pub connections: usize,
    /// Connections closed early (by an error or by the server).
    pub connections_lost: usize,
    /// Requests in flight per connection.
    pub pipeline: usize,
    /// Keys per get.
    pub multiget: usize,
    /// `ascii`, `binary` or `meta`.
    pub protocol: &'static str,
    /// Server address.
    pub server: String,
    /// Bytes per value.
    pub value_size: usize,
    /// Key space size.
    pub keys: u64,
    /// Fraction of requests that were gets.
    pub get_ratio: f64,
    /// Target rate (0 = closed loop).
    pub rate: f64,
    /// Measured window, seconds.
    pub duration_s: f64,
    /// Warmup, seconds.
    pub warmup_s: f64,
    /// Tokio worker threads.
    pub threads: usize,
    /// Whether every key was set before measuring.
    pub preloaded: bool,
    /// The SASL user every connection logged in as (`--sasl-user`), if any.
    pub sasl_user: Option<String>,
    /// Whether every connection spoke TLS (`--tls-ca`).
    pub tls: bool,
    /// CPU used by the generator during the window, in cores (1.0 = one core
    /// fully busy: the generator, not the server, may be the limit).
    pub loadgen_cpu: Option<f64>,
    /// Open loop: 99th percentile of send lag, microseconds.
    pub send_lag_p99_us: Option<f64>,
    /// Open loop: scheduled requests never sent in the window.
    pub unsent: Option<u64>,
}

fn micros(ns: u64) -> f64 {
    round(ns as f64 / 1000.0, 1)
}

fn round(x: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (x * scale).round() / scale
}

impl Report {
    /// Builds the report from the merged stats of every connection.
    pub fn build(
        config: &Config,
        all: &ConnStats,
        connections_lost: usize,
        cpu: Option<f64>,
    ) -> Report {
        let window = config.duration.as_secs_f64();
        let ops = all.gets + all.sets;
        let h = &all.latency;
        let percentile = |q: f64| {
            if h.is_empty() {
                0.0
            } else {
                micros(h.value_at_quantile(q))
            }
        };
        Report {
            ops_per_sec: round(ops as f64 / window, 1),
            keys_per_sec: round((all.get_keys + all.sets) as f64 / window, 1),
            p50_us: percentile(0.50),
            p90_us: percentile(0.90),
            p99_us: percentile(0.99),
            p999_us: percentile(0.999),
            max_us: micros(h.max()),
            mean_us: round(h.mean() / 1000.0, 1),
            gets: all.gets,
            get_keys: all.get_keys,
            hits: all.hits,
            misses: all.misses,
            sets: all.sets,
            errors: all.error_total(),
            error_kinds: ErrorKind::ALL
                .iter()
                .zip(all.errors)
                .map(|(kind, n)| (kind.name(), n))
                .collect(),
            first_error: all.first_error.clone(),
            connections: config.connections,
            connections_lost,
            pipeline: config.pipeline,
            multiget: config.multiget,
            protocol: config.protocol.name(),
            server: config.server.clone(),
            value_size: config.value_size,
            keys: config.keys,
            get_ratio: config.get_ratio,
            rate: config.rate,
            duration_s: window,
            warmup_s: config.warmup.as_secs_f64(),
            threads: config.threads,
            preloaded: config.preload,
            sasl_user: config.sasl.as_ref().map(|c| c.user.clone()),
            tls: config.tls_ca.is_some(),
            loadgen_cpu: cpu.map(|c| round(c, 2)),
            send_lag_p99_us: all.send_lag.as_ref().map(|h| {
                if h.is_empty() {
                    0.0
                } else {
                    micros(h.value_at_quantile(0.99))
                }
            }),
            unsent: config.open_loop().then_some(all.unsent),
        }
    }

    /// The one-line human summary printed on stderr.
    pub fn summary(&self) -> String {
        let mode = if self.rate > 0.0 {
            format!("open loop at {} ops/s", self.rate)
        } else {
            "closed loop".to_string()
        };
        let cpu = self
            .loadgen_cpu
            .map(|c| format!(", loadgen cpu {:.0}%", c * 100.0))
            .unwrap_or_default();
        format!(
            "{:.0} ops/s ({}{} {}, {} conns x {} pipeline, multiget {}, {:.0}% get, {}) \
             p50 {}us p99 {}us p99.9 {}us max {}us; gets {} sets {} misses {} errors {}{}",
            self.ops_per_sec,
            self.protocol,
            if self.tls { " over TLS to" } else { "" },
            self.server,
            self.connections,
            self.pipeline,
            self.multiget,
            self.get_ratio * 100.0,
            mode,
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.max_us,
            self.gets,
            self.sets,
            self.misses,
            self.errors,
            cpu,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_everything() {
        let mut a = ConnStats::new(false);
        let mut b = ConnStats::new(false);
        a.latency.record(1_000).unwrap();
        b.latency.record(3_000).unwrap();
        a.gets = 1;
        b.sets = 2;
        b.error(ErrorKind::BadValue, 1, "wrong length");
        b.lost = true;
        a.merge(&b);
        assert_eq!(a.latency.len(), 2);
        assert_eq!((a.gets, a.sets), (1, 2));
        assert_eq!(a.error_total(), 1);
        assert_eq!(a.first_error.as_deref(), Some("bad_value: wrong length"));
        assert!(a.lost);
    }

    #[test]
    fn report_computes_rates_and_percentiles() {
        let config = Config {
            duration: std::time::Duration::from_secs(2),
            ..Config::default()
        };
        let mut all = ConnStats::new(false);
        for us in 1..=100u64 {
            all.latency.record(us * 1000).unwrap();
        }
        all.gets = 90;
        all.get_keys = 90;
        all.sets = 10;
        let report = Report::build(&config, &all, 0, Some(0.5));
        assert_eq!(report.ops_per_sec, 50.0);
        assert_eq!(report.p50_us, 50.0);
        assert_eq!(report.p99_us, 99.0);
        assert_eq!(report.max_us, 100.0);
        assert_eq!(report.errors, 0);
        assert_eq!(report.error_kinds.len(), ErrorKind::ALL.len());
        assert_eq!(report.unsent, None);
        let json = serde_json::to_value(&report).unwrap();
        for field in [
            "ops_per_sec",
            "p50_us",
            "p99_us",
            "p999_us",
            "max_us",
            "gets",
            "sets",
            "misses",
            "errors",
            "connections",
            "pipeline",
        ] {
            assert!(json.get(field).is_some(), "{field}");
        }
        assert!(report.summary().contains("50 ops/s"));
    }
}
