//! `/metrics`: the proxy's counters in the Prometheus text exposition
//! format, version 0.0.4
//! (<https://prometheus.io/docs/instrumenting/exposition_formats/>).
//!
//! Every family is declared in one table (the proxy-wide counters in
//! [`COUNTERS`], shared with `stats proxy`) or one call below, so the test at
//! the bottom can check that no two share a name (STYLE rule 27).

use std::collections::BTreeMap;
use std::fmt::{Display, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::downstream::{NodePool, NodeStats};
use crate::routing::Routing;
use crate::shared::Shared;
use crate::stats::{ProxyStats, COUNTERS, LATENCY_BUCKETS};

/// The `Content-Type` of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A family's `# TYPE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A per-node metric read from one [`NodeStats`] field.
struct NodeMetric {
    name: &'static str,
    kind: Kind,
    help: &'static str,
    read: fn(&NodeStats) -> &AtomicU64,
}

const NODE_METRICS: [NodeMetric; 5] = [
    NodeMetric {
        name: "shoal_proxy_node_batches_total",
        kind: Kind::Counter,
        help: "Request batches sent to the node.",
        read: |s| &s.batches,
    },
    NodeMetric {
        name: "shoal_proxy_node_errors_total",
        kind: Kind::Counter,
        help: "Batches to the node that failed (not sent, lost or timed out).",
        read: |s| &s.errors,
    },
    NodeMetric {
        name: "shoal_proxy_node_in_flight",
        kind: Kind::Gauge,
        help: "Batches to the node waiting for their replies now.",
        read: |s| &s.in_flight,
    },
    NodeMetric {
        name: "shoal_proxy_node_connects_total",
        kind: Kind::Counter,
        help: "Connections opened to the node.",
        read: |s| &s.connects,
    },
    NodeMetric {
        name: "shoal_proxy_node_connect_failures_total",
        kind: Kind::Counter,
        help: "Failed connect attempts to the node.",
        read: |s| &s.connect_failures,
    },
];

const NODE_DOWN: &str = "shoal_proxy_node_down";
const LATENCY: &str = "shoal_proxy_request_duration_seconds";
const MAP_READY: &str = "shoal_proxy_map_ready";
const MAP_REVISION: &str = "shoal_proxy_map_revision";
const MAP_SERVERS: &str = "shoal_proxy_map_servers";
const DRAINING: &str = "shoal_proxy_draining";

/// The whole `/metrics` page.
pub fn render(shared: &Shared) -> String {
    let mut out = Exposition::default();
    render_counters(&mut out, &shared.stats);
    render_latency(&mut out, &shared.stats);
    let routing = shared.maps.snapshot();
    render_map(&mut out, &routing, shared.draining.load(Ordering::Acquire));
    render_nodes(&mut out, &routing);
    out.text
}

/// The proxy-wide counters and gauges of [`COUNTERS`].
fn render_counters(out: &mut Exposition, stats: &ProxyStats) {
    for counter in &COUNTERS {
        let kind = if counter.gauge {
            Kind::Gauge
        } else {
            Kind::Counter
        };
        out.family(counter.metric, kind, counter.help);
        out.sample(
            counter.metric,
            &[],
            (counter.read)(stats).load(Ordering::Relaxed),
        );
    }
}

/// The map in use, and whether the proxy is draining.
fn render_map(out: &mut Exposition, routing: &Routing, draining: bool) {
    out.family(
        MAP_READY,
        Kind::Gauge,
        "1 once a cluster map is loaded and keys can be routed.",
    );
    out.sample(MAP_READY, &[], u8::from(routing.is_ready()));
    out.family(
        MAP_REVISION,
        Kind::Gauge,
        "rev of the cluster map in use (absent for static maps).",
    );
    if let Some(rev) = routing.revision.and_then(|r| r.rev) {
        out.sample(MAP_REVISION, &[], rev);
    }
    out.family(
        MAP_SERVERS,
        Kind::Gauge,
        "Servers in the cluster map in use.",
    );
    out.sample(MAP_SERVERS, &[], routing.servers.len());
    out.family(
        DRAINING,
        Kind::Gauge,
        "1 while the proxy drains for shutdown.",
    );
    out.sample(DRAINING, &[], u8::from(draining));
}

/// The per-node series of [`NODE_METRICS`] and [`NODE_DOWN`].
fn render_nodes(out: &mut Exposition, routing: &Routing) {
    // One series per address: a map that lists a server twice has two
    // pools for it, whose counters add up.
    let mut nodes: BTreeMap<String, Vec<&NodePool>> = BTreeMap::new();
    for pool in &routing.pools {
        nodes.entry(pool.addr().to_string()).or_default().push(pool);
    }
    for metric in &NODE_METRICS {
        out.family(metric.name, metric.kind, metric.help);
        for (node, pools) in &nodes {
            let total: u64 = pools
                .iter()
                .map(|p| (metric.read)(&p.stats).load(Ordering::Relaxed))
                .sum();
            out.sample(metric.name, &[("node", node)], total);
        }
    }
    out.family(
        NODE_DOWN,
        Kind::Gauge,
        "1 while the node refuses connections.",
    );
    for (node, pools) in &nodes {
        let down = pools.iter().any(|p| p.is_down());
        out.sample(NODE_DOWN, &[("node", node)], u8::from(down));
    }
}

/// The latency histogram, from [`ProxyStats`]'s power-of-two buckets.
///
/// Bucket `i` counts requests faster than `2^i` µs, so its bound is an
/// exact `le`. `_sum` is not recorded by the proxy; it is estimated from
/// the buckets (each request counted at the middle of its bucket, the
/// unbounded last bucket at its lower bound), good to within a factor of
/// 1.5 — enough for an average-latency panel, not for billing.
fn render_latency(out: &mut Exposition, stats: &ProxyStats) {
    out.family(
        LATENCY,
        Kind::Histogram,
        "Client request latency. _sum is estimated from the power-of-two buckets.",
    );
    let bucket = format!("{LATENCY}_bucket");
    let counts: [u64; LATENCY_BUCKETS] =
        std::array::from_fn(|i| stats.latency[i].load(Ordering::Relaxed));
    let mut cumulative = 0u64;
    let mut sum_micros = 0f64;
    for (i, &count) in counts.iter().enumerate() {
        cumulative += count;
        let (low, high) = bucket_range_micros(i);
        let typical = high.map_or(low as f64, |high| (low + high) as f64 / 2.0);
        sum_micros += typical * count as f64;
        if let Some(high) = high {
            out.sample(&bucket, &[("le", &seconds(high))], cumulative);
        }
    }
    out.sample(&bucket, &[("le", "+Inf")], cumulative);
    out.sample(&format!("{LATENCY}_sum"), &[], sum_micros / 1e6);
    out.sample(&format!("{LATENCY}_count"), &[], cumulative);
}

/// `[low, high)` µs of latency bucket `i` (`high` is `None` for the last).
fn bucket_range_micros(i: usize) -> (u64, Option<u64>) {
    let low = match i {
        0 => 0,
        _ => ProxyStats::bucket_bound_micros(i - 1).unwrap_or(u64::MAX),
    };
    (low, ProxyStats::bucket_bound_micros(i))
}

/// Whole microseconds as exact decimal seconds.
fn seconds(micros: u64) -> String {
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

/// The page being written.
#[derive(Debug, Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    /// `# HELP` and `# TYPE` of a family; its samples follow.
    fn family(&mut self, name: &str, kind: Kind, help: &str) {
        // Writing to a String cannot fail.
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {}", kind.as_str());
    }

    /// `name{labels} value`.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                self.text.push_str(label);
                self.text.push_str("=\"");
                escape_label_value(&mut self.text, value);
                self.text.push('"');
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }
}

/// The text format's label-value escapes: backslash, quote, newline.
fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};
    use std::sync::Arc;
    use std::time::Duration;

    use shoal_vbmap::config::ServerAddr;

    use super::*;
    use crate::config::ProxyConfig;

    fn shared() -> Arc<Shared> {
        Shared::new(ProxyConfig::default())
    }

    /// One parsed sample line.
    #[derive(Debug)]
    struct Sample {
        name: String,
        labels: Vec<(String, String)>,
        value: f64,
    }

    /// Parses `name{label="value",…} value` strictly, or says why not.
    fn parse_sample(line: &str) -> Result<Sample, String> {
        let is_name_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
        let end = line.find(|c: char| !is_name_char(c)).unwrap_or(line.len());
        let (name, mut rest) = line.split_at(end);
        if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(format!("bad metric name in {line:?}"));
        }
        let mut labels = Vec::new();
        if let Some(after) = rest.strip_prefix('{') {
            rest = after;
            loop {
                if let Some(after) = rest.strip_prefix('}') {
                    rest = after;
                    break;
                }
                let eq = rest.find('=').ok_or(format!("no '=' in {line:?}"))?;
                let label = &rest[..eq];
                if label.is_empty() || !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                {
                    return Err(format!("bad label name {label:?}"));
                }
                let mut chars = rest[eq + 1..]
                    .strip_prefix('"')
                    .ok_or("label value not quoted")?
                    .char_indices();
                let mut value = String::new();
                let close = loop {
                    match chars.next().ok_or("unterminated label value")? {
                        (_, '\\') => match chars.next().ok_or("dangling escape")?.1 {
                            '\\' => value.push('\\'),
                            '"' => value.push('"'),
                            'n' => value.push('\n'),
                            c => return Err(format!("bad escape \\{c}")),
                        },
                        (at, '"') => break at,
                        (_, c) => value.push(c),
                    }
                };
                rest = &rest[eq + 1..][1 + close + 1..];
                labels.push((label.to_owned(), value));
                rest = rest.strip_prefix(',').unwrap_or(rest);
            }
        }
        let value = rest
            .strip_prefix(' ')
            .ok_or(format!("no space before the value in {line:?}"))?;
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse::<f64>()
                .map_err(|e| format!("bad value {v:?}: {e}"))?,
        };
        Ok(Sample {
            name: name.to_owned(),
            labels,
            value,
        })
    }

    /// Checks the whole page: HELP then TYPE once per family, every sample
    /// parses and belongs to the family declared last. Returns samples by
    /// name.
    fn check_page(page: &str) -> HashMap<String, Vec<Sample>> {
        let mut families: HashMap<String, Kind> = HashMap::new();
        let mut current: Option<(String, Kind)> = None;
        let mut help: Option<String> = None;
        let mut samples: HashMap<String, Vec<Sample>> = HashMap::new();
        let mut series = HashSet::new();
        for line in page.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, text) = rest.split_once(' ').expect("HELP has text");
                assert!(!text.is_empty());
                help = Some(name.to_owned());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE has a kind");
                assert_eq!(help.as_deref(), Some(name), "HELP must precede TYPE");
                let kind = match kind {
                    "counter" => Kind::Counter,
                    "gauge" => Kind::Gauge,
                    "histogram" => Kind::Histogram,
                    other => panic!("unknown type {other}"),
                };
                assert!(
                    families.insert(name.to_owned(), kind).is_none(),
                    "metric family {name} declared twice"
                );
                current = Some((name.to_owned(), kind));
            } else {
                assert!(!line.starts_with('#'), "unexpected comment {line:?}");
                let sample = parse_sample(line).unwrap_or_else(|e| panic!("{e}"));
                let (family, kind) = current.as_ref().expect("sample before any TYPE");
                let belongs = match kind {
                    Kind::Histogram => ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| sample.name == format!("{family}{s}")),
                    _ => sample.name == *family,
                };
                assert!(belongs, "{} outside its family {family}", sample.name);
                assert!(
                    series.insert(format!("{}{:?}", sample.name, sample.labels)),
                    "duplicate series {line}"
                );
                samples.entry(sample.name.clone()).or_default().push(sample);
            }
        }
        // No family's name may be another's sample name (e.g. a gauge
        // `x_count` beside a histogram `x`), nor differ from another only by
        // the `_total` suffix a counter carries.
        let mut stems = HashSet::new();
        for name in families.keys() {
            assert!(
                stems.insert(name.strip_suffix("_total").unwrap_or(name)),
                "{name} clashes with another family"
            );
            for suffix in ["_bucket", "_sum", "_count"] {
                if let Some(base) = name.strip_suffix(suffix) {
                    assert_ne!(families.get(base), Some(&Kind::Histogram), "{name}");
                }
            }
        }
        samples
    }

    #[test]
    fn metric_names_are_unique() {
        let mut names: Vec<&str> = COUNTERS
            .iter()
            .map(|c| c.metric)
            .chain(NODE_METRICS.iter().map(|m| m.name))
            .chain([
                NODE_DOWN,
                LATENCY,
                MAP_READY,
                MAP_REVISION,
                MAP_SERVERS,
                DRAINING,
            ])
            .collect();
        let all = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all, "a metric name is used twice");
        assert!(names.iter().all(|n| n.starts_with("shoal_proxy_")));
        // And the rendered page agrees (this also checks suffix clashes).
        let page = render(&shared());
        assert_eq!(page.matches("# TYPE ").count(), all);
        check_page(&page);
    }

    #[tokio::test]
    async fn page_parses_as_the_text_format() {
        let shared = shared();
        shared.stats.requests.store(7, Ordering::Relaxed);
        shared.stats.not_my_vbucket.store(2, Ordering::Relaxed);
        for micros in [0, 3, 3, 1000, 20_000_000] {
            shared.stats.observe(Duration::from_micros(micros));
        }
        // A quote and a backslash in a host exercise the label escapes; the
        // repeated server is one series.
        let odd = ServerAddr {
            host: "we\"ird\\host".into(),
            port: 1,
        };
        let plain = ServerAddr::parse("127.0.0.1:11211").unwrap();
        shared
            .maps
            .install_static(vec![plain.clone(), odd, plain], &[]);
        let routing = shared.maps.snapshot();
        routing.pools[0].stats.batches.store(5, Ordering::Relaxed);
        routing.pools[2].stats.batches.store(1, Ordering::Relaxed);
        drop(routing);

        let page = render(&shared);
        let samples = check_page(&page);
        let value = |name: &str| samples[name][0].value;
        assert_eq!(value("shoal_proxy_requests_total"), 7.0);
        assert_eq!(value("shoal_proxy_not_my_vbucket_total"), 2.0);
        assert_eq!(value("shoal_proxy_map_ready"), 1.0);
        assert_eq!(value("shoal_proxy_map_servers"), 3.0);
        assert!(
            !samples.contains_key("shoal_proxy_map_revision"),
            "static map"
        );

        let batches = &samples["shoal_proxy_node_batches_total"];
        assert_eq!(batches.len(), 2);
        let by_node: HashMap<&str, f64> = batches
            .iter()
            .map(|s| (s.labels[0].1.as_str(), s.value))
            .collect();
        assert_eq!(by_node["127.0.0.1:11211"], 6.0);
        assert_eq!(by_node["we\"ird\\host:1"], 0.0);
        assert!(page.contains(r#"node="we\"ird\\host:1""#), "{page}");

        let buckets = &samples["shoal_proxy_request_duration_seconds_bucket"];
        assert_eq!(buckets.len(), LATENCY_BUCKETS);
        let le = |s: &Sample| s.labels[0].1.clone();
        assert_eq!(le(&buckets[0]), "0.000001");
        assert_eq!(buckets[0].value, 1.0);
        assert_eq!(le(&buckets[2]), "0.000004");
        assert_eq!(buckets[2].value, 3.0);
        assert_eq!(le(&buckets[10]), "0.001024");
        assert_eq!(buckets[10].value, 4.0);
        assert_eq!(le(&buckets[LATENCY_BUCKETS - 2]), "4.194304");
        assert_eq!(buckets[LATENCY_BUCKETS - 2].value, 4.0);
        assert_eq!(le(&buckets[LATENCY_BUCKETS - 1]), "+Inf");
        assert_eq!(buckets[LATENCY_BUCKETS - 1].value, 5.0);
        assert!(buckets.windows(2).all(|w| w[0].value <= w[1].value));
        assert_eq!(value("shoal_proxy_request_duration_seconds_count"), 5.0);
        // Estimated: 0.5 + 3 + 3 + 768 µs + 4.194304 s.
        let sum = value("shoal_proxy_request_duration_seconds_sum");
        assert!((sum - 4.195078_5).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn the_checker_rejects_bad_lines() {
        for bad in [
            "1abc 1",
            "abc",
            "abc{le=\"1} 1",
            "abc{le=1} 1",
            "abc{le=\"\\x\"} 1",
            "abc x",
            "abc  1",
        ] {
            assert!(parse_sample(bad).is_err(), "{bad}");
        }
        let ok = parse_sample(r#"a_b:c{x="1",y="q\"\\\n"} -2.5"#).unwrap();
        assert_eq!(ok.labels[1].1, "q\"\\\n");
        assert_eq!(ok.value, -2.5);
    }
}
