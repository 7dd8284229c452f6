//! `shoal-loadgen`: parses arguments, builds the runtime, runs, prints one
//! JSON object on stdout and a summary line on stderr.
//!
//! Exit status: 0 for a clean run; 1 when the run could not take place
//! (invalid settings, no server, an unusable `--tls-ca` or a failed TLS
//! handshake, a refused `--sasl-user` login, failed preload); 2 for a command-line usage error (clap's own status); 3 when it
//! ran but saw errors or lost connections (the JSON is still printed, and
//! says which).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use shoal_loadgen::login::{self, Credentials};
use shoal_loadgen::{parse_duration, Config, Protocol};

/// Load a memcached-compatible server and report throughput, latency
/// percentiles and reply errors.
#[derive(Debug, Parser)]
#[command(name = "shoal-loadgen", version, about)]
struct Args {
    /// Server address, host:port.
    #[arg(long, default_value = "127.0.0.1:11211")]
    server: String,
    /// Wire protocol: ascii, binary or meta (`mg <key> v`, `ms <key> <len>`;
    /// values carry no client flags, so hits are checked by length and content).
    #[arg(long, default_value = "ascii")]
    protocol: Protocol,
    /// TCP connections, all opened before the clock starts.
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Requests in flight per connection; new ones go out together in one write.
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    /// Measured window ("10s", "500ms", "1.5m").
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Load applied before the window and not recorded.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// Key space size: keys are the prefix followed by 0..KEYS.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Prefix of every key.
    #[arg(long, default_value = "shoal:")]
    key_prefix: String,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Fraction of requests that are gets; the rest are sets.
    #[arg(long, default_value_t = 0.9)]
    get_ratio: f64,
    /// Keys per get (ASCII "get k1 k2 …", binary GETKQ… NOOP, meta one
    /// "mg k v" line per key, all counted as one request).
    #[arg(long, default_value_t = 1)]
    multiget: usize,
    /// Total requests per second for an open loop, with latency measured from
    /// each request's intended send time; 0 = closed loop.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Tokio worker threads. The default, 1, runs everything on one thread
    /// and leaves the machine's other core to the server under test; raise it
    /// only when `loadgen_cpu` in the report is near the thread count.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Set every key once (pipelined) before warmup, so every get should hit.
    #[arg(long)]
    preload: bool,
    /// Seed for key and verb choice (runs with the same seed send the same requests).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Log every connection in with binary SASL PLAIN as USER right after it
    /// connects, before preload and warmup (set-up, not measured); a bucket's
    /// name selects that bucket. The run stops (exit 1) if the server refuses.
    #[arg(long, value_name = "USER")]
    sasl_user: Option<String>,
    /// A file whose first line is the SASL password (kept off the command
    /// line, where any user could read it). Without it the password is
    /// empty: a bucket that has none.
    #[arg(long, value_name = "FILE", requires = "sasl_user")]
    sasl_password_file: Option<PathBuf>,
    /// Speak TLS on every connection, trusting the CA certificate(s) in
    /// this PEM file (and nothing else). The server's certificate must name
    /// the host of --server (a name, or an IP address as an IP SAN). The
    /// handshake, like the login, is set-up before the clock starts; the
    /// login (--sasl-user) travels inside TLS.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
}

impl Args {
    /// The run's settings, reading the password file if there is one.
    fn into_config(self) -> Result<Config, String> {
        let sasl = match (self.sasl_user, self.sasl_password_file) {
            (None, _) => None,
            (Some(user), None) => Some(Credentials {
                user,
                password: Vec::new(),
            }),
            (Some(user), Some(path)) => {
                let contents = std::fs::read(&path).map_err(|e| {
                    format!("cannot read the SASL password file {}: {e}", path.display())
                })?;
                let password = login::password_from_file(&contents).ok_or_else(|| {
                    format!(
                        "the SASL password file {} holds no password (its first line is empty; \
                         leave out --sasl-password-file for an empty password)",
                        path.display()
                    )
                })?;
                Some(Credentials { user, password })
            }
        };
        Ok(Config {
            server: self.server,
            protocol: self.protocol,
            connections: self.connections,
            pipeline: self.pipeline,
            duration: self.duration,
            warmup: self.warmup,
            keys: self.keys,
            key_prefix: self.key_prefix,
            value_size: self.value_size,
            get_ratio: self.get_ratio,
            multiget: self.multiget,
            rate: self.rate,
            threads: self.threads,
            preload: self.preload,
            seed: self.seed,
            sasl,
            tls_ca: self.tls_ca,
        })
    }
}

fn main() -> ExitCode {
    let config = match Args::parse().into_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("shoal-loadgen: {e}");
            return ExitCode::from(1);
        }
    };
    let config = match config.validate() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("shoal-loadgen: {e}");
            return ExitCode::from(1);
        }
    };
    let runtime = if config.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("shoal-loadgen: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let report = match runtime.block_on(shoal_loadgen::run(&config)) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("shoal-loadgen: {e}");
            return ExitCode::from(1);
        }
    };
    match serde_json::to_string(&report) {
        Ok(json) => println!("{json}"),
        Err(e) => {
            eprintln!("shoal-loadgen: cannot encode the report: {e}");
            return ExitCode::from(1);
        }
    }
    eprintln!("shoal-loadgen: {}", report.summary());
    if report.errors > 0 || report.connections_lost > 0 {
        if let Some(first) = &report.first_error {
            eprintln!("shoal-loadgen: first error: {first}");
        }
        return ExitCode::from(3);
    }
    ExitCode::SUCCESS
}
