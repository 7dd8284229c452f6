//! The `shoal` binary: parses arguments, runs the chosen role, maps failures
//! to exit codes. Everything else lives in the library crates.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

mod credentials;
mod ctl;
mod limits;
mod up;
use shoal_node::{Node, NodeConfig};
use shoal_persist::FsyncPolicy;

/// Shoal: a memcached-compatible clustered store and smart proxy.
#[derive(Debug, Parser)]
#[command(name = "shoal", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a local cluster (nodes plus a proxy on 127.0.0.1:11211).
    Up(up::UpArgs),
    /// Run a storage node.
    Node(NodeArgs),
    /// Run a smart proxy.
    Proxy(ProxyArgs),
    /// Administer a running cluster over its REST API.
    Ctl(ctl::CtlArgs),
    /// Map keys to vbuckets the way libvbucket does (a debugging aid).
    Vbucket {
        /// Number of vbuckets (a power of two).
        #[arg(long, default_value_t = 1024)]
        vbuckets: usize,
        /// Keys to map.
        keys: Vec<String>,
    },
}

/// `shoal node` flags.
#[derive(Debug, Args)]
struct NodeArgs {
    /// Directory for the node's data (created if missing).
    #[arg(long)]
    data_dir: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Address the admin (REST) port listens on, if not --host: keep it on
    /// a private network while the data port serves clients.
    #[arg(long)]
    admin_host: Option<IpAddr>,
    /// The host other nodes and clients reach this node at (needed when
    /// --host is 0.0.0.0 or ::): an address or a hostname.
    #[arg(long, visible_alias = "advertise")]
    advertise_host: Option<String>,
    /// memcached data port (ASCII, meta and binary).
    #[arg(long, default_value_t = 11210)]
    port: u16,
    /// REST admin port.
    #[arg(long, default_value_t = 8091)]
    admin_port: u16,
    /// RAM quota of the bucket, MiB.
    #[arg(long, default_value_t = 256)]
    ram_quota_mb: usize,
    /// Serve one bucket `default` with every vbucket active here, outside
    /// any cluster.
    #[arg(long, conflicts_with_all = ["init_cluster", "join"])]
    standalone: bool,
    /// Start a new cluster with this node as its first member (a no-op if
    /// the data dir already belongs to a cluster).
    #[arg(long, conflicts_with = "join")]
    init_cluster: bool,
    /// Join the cluster one of whose nodes has this admin URL
    /// (e.g. http://127.0.0.1:8091); a no-op once a member.
    #[arg(long, value_name = "URL")]
    join: Option<String>,
    /// Number of vbuckets (a power of two).
    #[arg(long, default_value_t = 1024)]
    vbuckets: usize,
    /// With --init-cluster: the cluster's memory quota per node, MiB — what
    /// its buckets' RAM quotas may add up to (default: half of this node's
    /// RAM; at most 80 % of it).
    #[arg(long, requires = "init_cluster")]
    memory_quota_mb: Option<u64>,
    /// The RAM this node may use, MiB, when less than the host's or its
    /// control group's (other processes share the host).
    #[arg(long)]
    memory_limit_mb: Option<u64>,
    /// Make written batches durable every N ms (0 = fsync every batch
    /// before it counts as persisted).
    #[arg(long, default_value_t = 100)]
    fsync_ms: u64,
    /// Largest value accepted, bytes.
    #[arg(long, default_value_t = 1024 * 1024)]
    max_value_bytes: usize,
    /// Most concurrent client connections.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// Connections reserved beyond --max-connections for the cluster's own
    /// traffic (replication, durable-write acknowledgements), so a client
    /// flood never starves it.
    #[arg(long, default_value_t = 1000)]
    max_system_connections: usize,
    /// TLS data port (Couchbase's is 11207; 0 picks a free one).
    #[arg(long, requires = "tls_cert")]
    tls_port: Option<u16>,
    /// HTTPS admin port (Couchbase's is 18091; 0 picks a free one).
    #[arg(long, requires = "tls_cert")]
    admin_tls_port: Option<u16>,
    /// Node-to-node encryption: talk to other nodes (replication, Raft,
    /// internal calls) over TLS only, to their TLS ports, trusting the CA
    /// in this PEM file. Every node of the cluster needs it; add nodes by
    /// their https:// admin address.
    #[arg(long, value_name = "CA_FILE", requires_all = ["tls_port", "admin_tls_port"])]
    cluster_tls: Option<PathBuf>,
    #[command(flatten)]
    tls: limits::TlsArgs,
    #[command(flatten)]
    limits: limits::LimitArgs,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// The admin credentials a cluster is initialised with (its first
    /// admin user) or joined with.
    #[command(flatten)]
    credentials: credentials::CredentialArgs,
}

/// `shoal proxy` flags.
#[derive(Debug, Args)]
struct ProxyArgs {
    /// Largest value a client may store through the proxy, bytes: the
    /// nodes' `--max-value-bytes` (the same 1 MiB default), so a write the
    /// node would refuse is refused here with memcached's reply, before it
    /// crosses the network.
    #[arg(long, default_value_t = 1024 * 1024)]
    max_value_bytes: usize,
    /// Cluster admin URLs to stream the bucket config from (vbucket mode).
    #[arg(long, value_delimiter = ',', conflicts_with = "servers")]
    cluster: Vec<String>,
    /// Bucket to serve (vbucket mode).
    #[arg(long, default_value = "default")]
    bucket: String,
    /// The bucket's password (a bucket created with authType=sasl): the
    /// proxy logs in to the nodes and reads the config with it.
    #[arg(long, env = "SHOAL_BUCKET_PASSWORD", hide_env_values = true)]
    bucket_password: Option<String>,
    /// A file whose first line is the bucket's password.
    #[arg(long, value_name = "FILE")]
    bucket_password_file: Option<PathBuf>,
    /// Static ketama mode: memcached servers as host:port or host:port:weight.
    #[arg(long, value_delimiter = ',')]
    servers: Vec<String>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// memcached port for clients.
    #[arg(long, default_value_t = 11211)]
    port: u16,
    /// HTTP admin port (/health, /metrics, /config).
    #[arg(long, default_value_t = 11212)]
    admin_port: u16,
    /// How long a request may retry (NOT_MY_VBUCKET, node down) before a
    /// temporary failure, ms.
    #[arg(long, default_value_t = 2000)]
    retry_deadline_ms: u64,
    /// Fail a multi-get when any of its nodes stays unreachable.
    #[arg(long)]
    strict_multiget: bool,
    /// Downstream connections per node.
    #[arg(long, default_value_t = 1)]
    connections_per_node: usize,
    /// Most concurrent client connections (both client ports together);
    /// more are told so and closed.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// TLS client port (Couchbase's is 11207; 0 picks a free one).
    #[arg(long, requires = "tls_cert")]
    tls_port: Option<u16>,
    /// Talk to the cluster over TLS only — config streams from https://
    /// cluster URLs, requests to the nodes' TLS data ports — trusting the
    /// CA in this PEM file.
    #[arg(long, value_name = "CA_FILE")]
    cluster_tls: Option<PathBuf>,
    #[command(flatten)]
    tls: limits::TlsArgs,
    #[command(flatten)]
    limits: limits::LimitArgs,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,lsm_tree=warn,fjall=warn")
            }),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Up(args) => up::run(args),
        Command::Node(args) => run_node(args),
        Command::Proxy(args) => run_proxy(args),
        Command::Vbucket { vbuckets, keys } => map_keys(vbuckets, &keys),
        // ctl prints its own errors and picks its exit codes.
        Command::Ctl(args) => return ctl::main(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("shoal: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn map_keys(vbuckets: usize, keys: &[String]) -> anyhow::Result<()> {
    anyhow::ensure!(
        vbuckets.is_power_of_two() && vbuckets <= 1 << 16,
        "--vbuckets must be a power of two up to 65536"
    );
    for key in keys {
        let vb = shoal_vbmap::hash::vbucket_of(key.as_bytes(), vbuckets);
        println!("{key}\t{vb}");
    }
    Ok(())
}

fn run_node(args: NodeArgs) -> anyhow::Result<()> {
    let member = NodeConfig::is_cluster_member(&args.data_dir);
    let config = NodeConfig {
        data_dir: args.data_dir,
        host: args.host,
        port: args.port,
        admin_port: args.admin_port,
        ram_quota_mb: args.ram_quota_mb,
        num_vbuckets: args.vbuckets,
        standalone: args.standalone,
        fsync: match args.fsync_ms {
            0 => FsyncPolicy::EveryBatch,
            ms => FsyncPolicy::Interval(Duration::from_millis(ms)),
        },
        max_value_len: args.max_value_bytes,
        max_connections: args.max_connections,
        max_system_connections: args.max_system_connections,
        deadlines: args.limits.deadlines()?,
        admin_limits: args.limits.admin()?,
        tls: args.tls.files(),
        tls_port: args.tls_port,
        admin_tls_port: args.admin_tls_port,
        cluster_ca: args.cluster_tls,
        // A node that is or will be a cluster member gets its buckets from
        // the cluster; any other serves `default` as configured here.
        default_bucket: args.standalone || !(args.init_cluster || args.join.is_some() || member),
        init_cluster: args.init_cluster,
        join: args.join,
        admin_host: args.admin_host,
        advertise_host: args.advertise_host,
        credentials: args.credentials.resolve()?,
        memory_limit_mb: args.memory_limit_mb,
        memory_quota_mb: args.memory_quota_mb,
    }
    .validate()?;
    let runtime = runtime(args.threads)?;
    runtime.block_on(async {
        let node = Node::start(config).await?;
        // Tests and scripts read these lines to learn the bound ports.
        announce(&format!(
            "data {}\nadmin {}",
            node.data_addr(),
            node.admin_addr()
        ));
        if let Some(addr) = node.tls_data_addr() {
            announce(&format!("tls {addr}"));
        }
        if let Some(addr) = node.https_addr() {
            announce(&format!("https {addr}"));
        }
        wait_for_signal().await?;
        tracing::info!("shutting down: flushing to disk");
        node.shutdown().await?;
        tracing::info!("stopped cleanly");
        Ok(())
    })
}

fn run_proxy(args: ProxyArgs) -> anyhow::Result<()> {
    use shoal_proxy::{MapSource, Proxy, ProxyConfig};
    use shoal_vbmap::config::ServerAddr;
    let bucket_password = match &args.bucket_password_file {
        Some(path) => Some(credentials::read_password_file(path)?),
        None => args.bucket_password.clone(),
    };
    let source = if args.servers.is_empty() {
        MapSource::Cluster {
            urls: args.cluster,
            bucket: args.bucket,
            password: bucket_password.map(shoal_proxy::config::Password),
        }
    } else {
        let mut servers = Vec::new();
        let mut weights = Vec::new();
        for spec in &args.servers {
            // host:port or host:port:weight
            let (addr, weight) = match spec.rsplit_once(':') {
                Some((addr, w)) if addr.contains(':') => (addr, w.parse::<u32>()?),
                _ => (spec.as_str(), 1),
            };
            servers.push(
                ServerAddr::parse(addr).map_err(|e| anyhow::anyhow!("--servers {spec:?}: {e}"))?,
            );
            weights.push(weight);
        }
        MapSource::Static { servers, weights }
    };
    let mut config = ProxyConfig {
        source,
        host: args.host,
        port: args.port,
        admin_port: args.admin_port,
        retry_deadline: Duration::from_millis(args.retry_deadline_ms),
        strict_multiget: args.strict_multiget,
        max_connections: args.max_connections,
        deadlines: args.limits.deadlines()?,
        admin_limits: args.limits.admin()?,
        tls: args.tls.files(),
        tls_port: args.tls_port,
        max_value_len: args.max_value_bytes,
        ..ProxyConfig::default()
    };
    config.downstream.connections_per_node = args.connections_per_node;
    if let Some(ca) = &args.cluster_tls {
        config.downstream.tls = Some(shoal_net::TlsConnector::trusting(ca)?);
    }
    let config = config.validate()?;
    let runtime = runtime(args.threads)?;
    runtime.block_on(async {
        let proxy = Proxy::start(config).await?;
        announce(&format!(
            "data {}\nadmin {}",
            proxy.data_addr(),
            proxy.admin_addr()
        ));
        if let Some(addr) = proxy.tls_addr() {
            announce(&format!("tls {addr}"));
        }
        wait_for_signal().await?;
        tracing::info!("draining");
        proxy.shutdown(Duration::from_secs(10)).await;
        Ok(())
    })
}

/// Prints the bound addresses for whoever started us (tests, `shoal up`).
/// A closed stdout is not an error: the parent may stop listening.
fn announce(lines: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{lines}");
    let _ = out.flush();
}

fn runtime(threads: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        anyhow::ensure!(n > 0, "--threads must be at least 1");
        builder.worker_threads(n);
    }
    Ok(builder.enable_all().build()?)
}

/// Resolves on SIGTERM or Ctrl-C.
async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        result = tokio::signal::ctrl_c() => result?,
    }
    Ok(())
}
