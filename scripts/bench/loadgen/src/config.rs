//! Run settings: [`Config`], its validation, and [`parse_duration`], a small
//! hand-written parser for "10s" / "500ms" (no extra crate for one function).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::login::Credentials;

/// memcached's longest key (`KEY_MAX_LENGTH`).
pub const MAX_KEY_LEN: usize = 250;
/// Longest decimal key index (`u64::MAX` has 20 digits).
const MAX_INDEX_DIGITS: usize = 20;
/// Largest value: memcached's default item size limit is 1 MiB including
/// the item header and key, so stay clearly below it.
pub const MAX_VALUE_SIZE: usize = 1_000_000;
/// Requests in flight per connection; past this the server's socket buffers,
/// not the server, decide the result.
pub const MAX_PIPELINE: usize = 4096;
/// Keys per get.
pub const MAX_MULTIGET: usize = 1024;

/// The wire protocol to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// The classic text protocol (`get`, `set`).
    Ascii,
    /// The binary protocol (GETK, GETKQ…NOOP, SET).
    Binary,
    /// The meta text protocol: `mg <key> v` and `ms <key> <len>`, one reply
    /// per command (a multiget is one `mg` line per key).
    Meta,
}

impl Protocol {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Ascii => "ascii",
            Protocol::Binary => "binary",
            Protocol::Meta => "meta",
        }
    }
}

impl FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ascii" => Ok(Protocol::Ascii),
            "binary" => Ok(Protocol::Binary),
            "meta" => Ok(Protocol::Meta),
            other => Err(format!(
                "unknown protocol {other:?} (ascii, binary or meta)"
            )),
        }
    }
}

/// Everything one run needs. Build it, then [`Config::validate`] it.
#[derive(Debug, Clone)]
pub struct Config {
    /// Server address, `host:port`.
    pub server: String,
    /// Wire protocol.
    pub protocol: Protocol,
    /// Number of TCP connections, all opened before the clock starts.
    pub connections: usize,
    /// Requests in flight per connection; new ones are written together in one write.
    pub pipeline: usize,
    /// Length of the measured window.
    pub duration: Duration,
    /// Load applied before the measured window, not recorded.
    pub warmup: Duration,
    /// Size of the key space: keys are `key_prefix` followed by `0..keys` in decimal.
    pub keys: u64,
    /// Prefix of every key.
    pub key_prefix: String,
    /// Bytes per value.
    pub value_size: usize,
    /// Fraction of requests that are gets (the rest are sets).
    pub get_ratio: f64,
    /// Keys per get.
    pub multiget: usize,
    /// Total requests per second across all connections; 0 means closed loop
    /// (each connection sends as soon as a pipeline slot frees).
    pub rate: f64,
    /// Tokio worker threads. 1 uses a current-thread runtime.
    pub threads: usize,
    /// Set every key once before measuring.
    pub preload: bool,
    /// Seed for key and verb choice; each connection derives its own stream.
    pub seed: u64,
    /// Log every connection in with SASL PLAIN right after it connects,
    /// before the clock starts ([`crate::login`]); `None`: no login.
    pub sasl: Option<Credentials>,
    /// Speak TLS on every connection, trusting the CA certificates in this
    /// PEM file; the server's certificate must name the host of `server`.
    /// The handshake is set-up, done before the clock starts. `None`: plain
    /// TCP.
    pub tls_ca: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: "127.0.0.1:11211".to_string(),
            protocol: Protocol::Ascii,
            connections: 50,
            pipeline: 1,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(2),
            keys: 100_000,
            key_prefix: "shoal:".to_string(),
            value_size: 100,
            get_ratio: 0.9,
            multiget: 1,
            rate: 0.0,
            threads: 1,
            preload: false,
            seed: 1,
            sasl: None,
            tls_ca: None,
        }
    }
}

/// A setting that cannot work, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting --{field}: {reason}")]
pub struct ConfigError {
    /// The command-line name of the setting.
    pub field: &'static str,
    /// Why it was rejected.
    pub reason: &'static str,
}

fn reject(field: &'static str, reason: &'static str) -> ConfigError {
    ConfigError { field, reason }
}

impl Config {
    /// Checks every setting against the limits above.
    pub fn validate(self) -> Result<Self, ConfigError> {
        if self.server.is_empty() {
            return Err(reject("server", "must be host:port"));
        }
        if self.connections == 0 {
            return Err(reject("connections", "must be at least 1"));
        }
        if self.pipeline == 0 || self.pipeline > MAX_PIPELINE {
            return Err(reject("pipeline", "must be 1..=4096"));
        }
        if self.duration.is_zero() {
            return Err(reject("duration", "must be longer than 0"));
        }
        if self.keys == 0 {
            return Err(reject("keys", "must be at least 1"));
        }
        if self.key_prefix.len() + MAX_INDEX_DIGITS > MAX_KEY_LEN {
            return Err(reject("key-prefix", "too long: keys must fit in 250 bytes"));
        }
        if self
            .key_prefix
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(reject("key-prefix", "no spaces or control characters"));
        }
        if self.value_size > MAX_VALUE_SIZE {
            return Err(reject("value-size", "at most 1000000 bytes"));
        }
        if !(0.0..=1.0).contains(&self.get_ratio) {
            return Err(reject("get-ratio", "must be between 0 and 1"));
        }
        if self.multiget == 0 || self.multiget > MAX_MULTIGET {
            return Err(reject("multiget", "must be 1..=1024"));
        }
        if !self.rate.is_finite() || self.rate < 0.0 {
            return Err(reject("rate", "must be 0 (closed loop) or a positive rate"));
        }
        if self.threads == 0 {
            return Err(reject("threads", "must be at least 1"));
        }
        if let Some((field, reason)) = self.sasl.as_ref().and_then(Credentials::problem) {
            return Err(reject(field, reason));
        }
        Ok(self)
    }

    /// True when `--rate` asks for an open loop.
    pub fn open_loop(&self) -> bool {
        self.rate > 0.0
    }
}

/// A duration that [`parse_duration`] could not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurationError(&'static str);

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (examples: 10s, 500ms, 1.5m)", self.0)
    }
}

impl std::error::Error for DurationError {}

/// Parses a number followed by a unit: `ns`, `us` (or `µs`), `ms`, `s`, `m`,
/// `h`; the number may have a fraction ("1.5s"). A bare `0` is accepted;
/// any other bare number is rejected, since "10" is ambiguous.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or(DurationError("missing unit"))?;
    let (number, unit) = text.split_at(split);
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return Err(DurationError("expected a number before the unit"));
    }
    let number: f64 = number
        .parse()
        .map_err(|_| DurationError("expected a number before the unit"))?;
    let seconds_per_unit = match unit {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(DurationError("unknown unit")),
    };
    Duration::try_from_secs_f64(number * seconds_per_unit)
        .map_err(|_| DurationError("duration out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_with_units() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("250µs"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("7ns"), Ok(Duration::from_nanos(7)));
        assert_eq!(parse_duration(" 3s "), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn durations_rejected() {
        for bad in [
            "",
            "10",
            "s",
            "ms",
            "10x",
            "10 s",
            "-1s",
            "1..5s",
            ".5s",
            "5.s",
            "1e3s",
            "10S",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn protocol_names() {
        assert_eq!("ascii".parse::<Protocol>(), Ok(Protocol::Ascii));
        assert_eq!("binary".parse::<Protocol>(), Ok(Protocol::Binary));
        assert_eq!("meta".parse::<Protocol>(), Ok(Protocol::Meta));
        for p in [Protocol::Ascii, Protocol::Binary, Protocol::Meta] {
            assert_eq!(p.name().parse::<Protocol>(), Ok(p));
        }
        assert!("mg".parse::<Protocol>().is_err());
        assert!("Meta".parse::<Protocol>().is_err());
    }

    #[test]
    fn default_config_is_valid() {
        assert!(Config::default().validate().is_ok());
    }

    #[test]
    fn bad_settings_are_rejected() {
        let cases: Vec<(&str, Config)> = vec![
            (
                "connections",
                Config {
                    connections: 0,
                    ..Config::default()
                },
            ),
            (
                "pipeline",
                Config {
                    pipeline: 0,
                    ..Config::default()
                },
            ),
            (
                "pipeline",
                Config {
                    pipeline: 5000,
                    ..Config::default()
                },
            ),
            (
                "duration",
                Config {
                    duration: Duration::ZERO,
                    ..Config::default()
                },
            ),
            (
                "keys",
                Config {
                    keys: 0,
                    ..Config::default()
                },
            ),
            (
                "key-prefix",
                Config {
                    key_prefix: "a b".into(),
                    ..Config::default()
                },
            ),
            (
                "key-prefix",
                Config {
                    key_prefix: "k".repeat(240),
                    ..Config::default()
                },
            ),
            (
                "value-size",
                Config {
                    value_size: 2_000_000,
                    ..Config::default()
                },
            ),
            (
                "get-ratio",
                Config {
                    get_ratio: 1.5,
                    ..Config::default()
                },
            ),
            (
                "get-ratio",
                Config {
                    get_ratio: f64::NAN,
                    ..Config::default()
                },
            ),
            (
                "multiget",
                Config {
                    multiget: 0,
                    ..Config::default()
                },
            ),
            (
                "rate",
                Config {
                    rate: -1.0,
                    ..Config::default()
                },
            ),
            (
                "rate",
                Config {
                    rate: f64::INFINITY,
                    ..Config::default()
                },
            ),
            (
                "threads",
                Config {
                    threads: 0,
                    ..Config::default()
                },
            ),
            (
                "sasl-user",
                Config {
                    sasl: Some(Credentials {
                        user: String::new(),
                        password: b"pw".to_vec(),
                    }),
                    ..Config::default()
                },
            ),
            (
                "sasl-password-file",
                Config {
                    sasl: Some(Credentials {
                        user: "locked".into(),
                        password: b"p\0w".to_vec(),
                    }),
                    ..Config::default()
                },
            ),
        ];
        for (field, config) in cases {
            let err = config.validate().expect_err(field);
            assert_eq!(err.field, field);
        }
    }
}
