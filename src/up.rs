//! `shoal up`: a whole local cluster in one command — N storage nodes on
//! loopback, each with its own data directory under `--dir`, formed into
//! one cluster (the first node starts it, the others join), the bucket
//! `default` created through the cluster's REST API (its map planned by the
//! Raft leader), auto-failover switched on, and a proxy on `--port` that
//! any memcached client can use. Stays in the foreground; Ctrl-C or
//! SIGTERM stops every child cleanly (nodes flush to disk). A child that
//! dies is restarted (`supervise`): the proxy at once, a node once the
//! cluster has failed it over, so it waits with its data to be recovered.
//! Running it again with the same `--dir` reuses the cluster and its data
//! (the nodes keep their metadata and warm up).
//!
//! The cluster's first admin user is `--username`/`--password` (or their
//! environment and file forms); without them `up` makes a random password
//! for `Administrator`. Either way the credentials are kept in
//! `<dir>/credentials` (mode 0600), where `shoal ctl` finds them, reused on
//! the next run, printed with the endpoints, and handed to the nodes in
//! their environment (never on a command line). Bucket `default` has no
//! password, so memcached clients need none, and can be flushed.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use shoal_net::local_ca::LocalCa;
use shoal_node::config::Credentials;
use shoal_vbmap::config::{BucketConfig, NodeAddress};

use crate::credentials::{self, CredentialArgs, DEFAULT_USER};

mod supervise;

/// `shoal up` flags.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Storage nodes to run.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Replicas per vbucket in the map.
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// vbuckets in the bucket (a power of two).
    #[arg(long, default_value_t = 1024)]
    vbuckets: usize,
    /// The proxy's memcached port (its admin port is the next one).
    #[arg(long, default_value_t = 11211)]
    port: u16,
    /// First port for the nodes: node i uses base+2i (data) and base+2i+1
    /// (REST).
    #[arg(long, default_value_t = 12000)]
    base_port: u16,
    /// Where the nodes keep their data (and logs).
    #[arg(long, default_value = ".shoal")]
    dir: PathBuf,
    /// RAM quota of bucket `default` per node, MiB.
    #[arg(long, default_value_t = 256)]
    ram_quota_mb: usize,
    /// Seconds a node must be unresponsive before the cluster fails it
    /// over by itself (set when the cluster is formed; 0 leaves
    /// auto-failover off).
    #[arg(long, default_value_t = 2)]
    auto_failover_s: u32,
    /// Also serve TLS: a local CA and a certificate for 127.0.0.1 and
    /// localhost are made under `<dir>/tls` (kept for later runs), the
    /// proxy gets a TLS port and every node a TLS data port and an HTTPS
    /// admin port, and the nodes and the proxy talk to each other over TLS
    /// only.
    #[arg(long)]
    tls: bool,
    /// The proxy's TLS port, with --tls.
    #[arg(long, default_value_t = 11207)]
    tls_port: u16,
    /// First TLS port for the nodes, with --tls: node i uses base+2i (TLS
    /// data) and base+2i+1 (HTTPS).
    #[arg(long, default_value_t = 13000)]
    tls_base_port: u16,
    /// The cluster's first admin user (default: `Administrator` with a
    /// random password, kept in `<dir>/credentials`).
    #[command(flatten)]
    credentials: CredentialArgs,
}

/// The credentials file under `--dir`.
const CREDENTIALS_FILE: &str = "credentials";

/// The local CA and certificate's directory under `--dir`, with `--tls`.
const TLS_DIR: &str = "tls";

/// Length of a password `up` makes.
const PASSWORD_LEN: usize = 20;

/// How long forming the cluster and creating the bucket may take.
const FORM_TIMEOUT: Duration = Duration::from_secs(60);

/// A child process, what it is and how to start it again.
struct Running {
    name: String,
    child: Child,
    spawn: Spawn,
    /// A node's admin port (`None`: the proxy).
    node_admin_port: Option<u16>,
}

/// How a child is started: the command line and environment, and the log
/// its stderr goes to.
struct Spawn {
    exe: PathBuf,
    args: Vec<String>,
    /// The `SHOAL_*` variables it sees (credentials: never on a command
    /// line).
    env: Vec<(String, String)>,
    log: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        // Last resort when `up` itself fails: never leave children behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs the cluster until a signal arrives.
pub fn run(args: UpArgs) -> anyhow::Result<()> {
    validate(&args)?;
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let exe = std::env::current_exe().context("finding the shoal binary")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let admin = admin_credentials(&args)?;
    let tls = match args.tls {
        true => Some(
            LocalCa::ensure(&args.dir.join(TLS_DIR), &["127.0.0.1", "localhost"])
                .context("making the local CA")?,
        ),
        false => None,
    };
    let (mut children, servers) = start_nodes(&exe, &args, &admin, tls.as_ref())?;
    let client = shoal_net::tls::http_client(None)
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()?;
    runtime.block_on(form_cluster(&client, &args, &servers, &admin))?;
    let proxy_admin = args.port.checked_add(1).context("--port too high")?;
    children.push(start_proxy(
        &exe,
        &args,
        &servers,
        proxy_admin,
        tls.as_ref(),
    )?);
    runtime.block_on(wait_healthy(&client, proxy_admin))?;
    print_endpoints(&args, &servers, proxy_admin, &admin);
    if let Some(tls) = &tls {
        print_tls_endpoints(&args, tls);
    }
    println!("ready");
    let watch = supervise::Watch {
        client,
        admin,
        admin_ports: servers.iter().map(|s| s.admin_port).collect(),
        auto_failover_s: args.auto_failover_s,
    };
    let outcome = runtime.block_on(supervise::supervise(&mut children, &watch));
    stop_all(&mut children);
    outcome
}

/// The admin credentials: as given (and kept), as kept by an earlier run,
/// or made now (and kept).
fn admin_credentials(args: &UpArgs) -> anyhow::Result<Credentials> {
    let path = args.dir.join(CREDENTIALS_FILE);
    if let Some(given) = args.credentials.resolve()? {
        credentials::write_credentials(&path, &given)?;
        return Ok(given);
    }
    if path.exists() {
        return credentials::read_credentials(&path);
    }
    let made = Credentials {
        username: DEFAULT_USER.to_string(),
        password: shoal_auth::secret::random_password(PASSWORD_LEN)?,
    };
    credentials::write_credentials(&path, &made)?;
    Ok(made)
}

fn validate(args: &UpArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.nodes >= 1, "--nodes must be at least 1");
    anyhow::ensure!(
        args.vbuckets.is_power_of_two() && args.vbuckets <= 1 << 16,
        "--vbuckets must be a power of two up to 65536"
    );
    let last_port = u32::from(args.base_port) + 2 * args.nodes as u32;
    anyhow::ensure!(
        last_port <= u32::from(u16::MAX),
        "--base-port too high for --nodes"
    );
    let last_tls_port = u32::from(args.tls_base_port) + 2 * args.nodes as u32;
    anyhow::ensure!(
        last_tls_port <= u32::from(u16::MAX),
        "--tls-base-port too high for --nodes"
    );
    Ok(())
}

/// Starts every node (the first initialises the cluster, the others join
/// it) and waits until each says it listens.
fn start_nodes(
    exe: &Path,
    args: &UpArgs,
    admin: &Credentials,
    tls: Option<&LocalCa>,
) -> anyhow::Result<(Vec<Running>, Vec<NodeAddress>)> {
    let mut children = Vec::new();
    let mut servers = Vec::new();
    for i in 0..args.nodes {
        let data_port = args.base_port + 2 * i as u16;
        let admin_port = data_port + 1;
        let dir = args.dir.join(format!("node-{i}"));
        let mut node_args = vec![
            "node".to_string(),
            "--data-dir".into(),
            dir.display().to_string(),
            "--port".into(),
            data_port.to_string(),
            "--admin-port".into(),
            admin_port.to_string(),
        ];
        if i == 0 {
            node_args.push("--init-cluster".into());
        } else {
            // With TLS the nodes talk to each other over TLS only: a joiner
            // asks the first node's HTTPS port.
            let first = match tls {
                Some(_) => format!("https://127.0.0.1:{}", args.tls_base_port + 1),
                None => format!("http://127.0.0.1:{}", args.base_port + 1),
            };
            node_args.extend(["--join".into(), first]);
        }
        if let Some(tls) = tls {
            let tls_port = args.tls_base_port + 2 * i as u16;
            node_args.extend(tls_args(tls));
            node_args.extend([
                "--tls-port".into(),
                tls_port.to_string(),
                "--admin-tls-port".into(),
                (tls_port + 1).to_string(),
                "--cluster-tls".into(),
                tls.ca.display().to_string(),
            ]);
        }
        // The credentials go in the environment: a command line is public.
        let env = [
            ("SHOAL_USERNAME", admin.username.as_str()),
            ("SHOAL_PASSWORD", admin.password.as_str()),
        ];
        let spawn = Spawn::new(exe, args.dir.join(format!("node-{i}.log")), node_args, &env);
        children.push(Running {
            name: format!("node-{i}"),
            child: spawn.start(false)?,
            spawn,
            node_admin_port: Some(admin_port),
        });
        servers.push(NodeAddress::new("127.0.0.1", data_port, admin_port));
    }
    for running in children.iter_mut() {
        expect_ready_line(running)?;
    }
    Ok((children, servers))
}

/// Starts the proxy in front of `servers` and waits until it listens.
fn start_proxy(
    exe: &Path,
    args: &UpArgs,
    servers: &[NodeAddress],
    proxy_admin: u16,
    tls: Option<&LocalCa>,
) -> anyhow::Result<Running> {
    // With TLS the proxy, too, talks to the nodes over TLS only: their
    // HTTPS ports for the config, their TLS data ports for requests.
    let cluster: Vec<String> = match tls {
        Some(_) => (0..servers.len())
            .map(|i| {
                format!(
                    "https://127.0.0.1:{}",
                    args.tls_base_port + 2 * i as u16 + 1
                )
            })
            .collect(),
        None => servers
            .iter()
            .map(|s| format!("http://127.0.0.1:{}", s.admin_port))
            .collect(),
    };
    let mut proxy_args = vec![
        "proxy".into(),
        "--cluster".into(),
        cluster.join(","),
        "--port".into(),
        args.port.to_string(),
        "--admin-port".into(),
        proxy_admin.to_string(),
    ];
    if let Some(tls) = tls {
        proxy_args.extend(tls_args(tls));
        proxy_args.extend(["--tls-port".into(), args.tls_port.to_string()]);
        proxy_args.extend(["--cluster-tls".into(), tls.ca.display().to_string()]);
    }
    let spawn = Spawn::new(exe, args.dir.join("proxy.log"), proxy_args, &[]);
    let mut proxy = Running {
        name: "proxy".into(),
        child: spawn.start(false)?,
        spawn,
        node_admin_port: None,
    };
    expect_ready_line(&mut proxy)?;
    Ok(proxy)
}

fn print_endpoints(args: &UpArgs, servers: &[NodeAddress], proxy_admin: u16, admin: &Credentials) {
    println!(
        "proxy     127.0.0.1:{}   (memcached ASCII, meta and binary)",
        args.port
    );
    println!("proxy     http://127.0.0.1:{proxy_admin}/health, /metrics, /config");
    for (i, s) in servers.iter().enumerate() {
        println!(
            "node-{i}    127.0.0.1:{} (data)   http://127.0.0.1:{}/pools/default/buckets/default",
            s.data_port, s.admin_port
        );
    }
    println!(
        "admin     user {}   password {}   (kept in {})",
        admin.username,
        admin.password,
        args.dir.join(CREDENTIALS_FILE).display()
    );
    println!("data      {}", args.dir.display());
}

/// The `--tls-cert`/`--tls-key` flags naming `tls`'s files.
fn tls_args(tls: &LocalCa) -> [String; 4] {
    [
        "--tls-cert".into(),
        tls.cert.display().to_string(),
        "--tls-key".into(),
        tls.key.display().to_string(),
    ]
}

fn print_tls_endpoints(args: &UpArgs, tls: &LocalCa) {
    println!(
        "proxy     127.0.0.1:{}   (memcached over TLS)",
        args.tls_port
    );
    for i in 0..args.nodes {
        let port = args.tls_base_port + 2 * i as u16;
        println!(
            "node-{i}    127.0.0.1:{port} (TLS data)   https://127.0.0.1:{}/pools",
            port + 1
        );
    }
    println!(
        "tls CA    {}   (trust it: curl --cacert, ssl.create_default_context(cafile=...))",
        tls.ca.display()
    );
}

impl Spawn {
    fn new(exe: &Path, log: PathBuf, args: Vec<String>, env: &[(&str, &str)]) -> Spawn {
        Spawn {
            exe: exe.to_path_buf(),
            args,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            log,
        }
    }

    /// Starts the child, its stderr into the log (a restart appends to
    /// it); its environment has only our `SHOAL_*` variables that it
    /// needs (none of ours leak to a child that needs none).
    fn start(&self, append: bool) -> anyhow::Result<Child> {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(&self.log)
            .with_context(|| format!("creating {}", self.log.display()))?;
        Command::new(&self.exe)
            .args(&self.args)
            .env_remove("SHOAL_USERNAME")
            .env_remove("SHOAL_PASSWORD")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {} {}", self.exe.display(), self.args.join(" ")))
    }
}

/// Waits for the child's `data …` line: its ports are bound.
fn expect_ready_line(running: &mut Running) -> anyhow::Result<()> {
    let stdout = running.child.stdout.take().context("child has no stdout")?;
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    // Keep draining the child's stdout so it never writes into a closed pipe.
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    if !line.starts_with("data ") {
        bail!(
            "{} did not start (see its log under --dir): {}",
            running.name,
            line.trim()
        );
    }
    Ok(())
}

/// Waits until the cluster lists every node, creates bucket `default`
/// unless it exists (a restart keeps the one it had), and waits until every
/// node serves the same revision of its config.
async fn form_cluster(
    client: &reqwest::Client,
    args: &UpArgs,
    servers: &[NodeAddress],
    admin: &Credentials,
) -> anyhow::Result<()> {
    let first = format!("http://127.0.0.1:{}", servers[0].admin_port);
    let deadline = Instant::now() + FORM_TIMEOUT;
    let authed = |request: reqwest::RequestBuilder| {
        request.basic_auth(&admin.username, Some(&admin.password))
    };
    loop {
        let request = authed(client.get(format!("{first}/pools/default")));
        let listed = match request.send().await {
            Ok(r) if r.status().is_success() => r
                .json::<serde_json::Value>()
                .await
                .ok()
                .and_then(|v| v["nodes"].as_array().map(Vec::len))
                .unwrap_or(0),
            _ => 0,
        };
        if listed >= servers.len() {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {listed} of {} nodes joined the cluster within {FORM_TIMEOUT:?} (see the node logs under --dir)", servers.len());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    loop {
        let exists = client
            .get(format!("{first}/pools/default/buckets/default"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if exists {
            break;
        }
        let form = [
            ("name", "default".to_string()),
            ("bucketType", "membase".into()),
            ("ramQuotaMB", args.ram_quota_mb.to_string()),
            ("replicaNumber", args.replicas.to_string()),
            ("numVBuckets", args.vbuckets.to_string()),
            // Like memcached: `flush_all` works on `up`'s bucket.
            ("flushEnabled", "1".into()),
        ];
        let response = authed(client.post(format!("{first}/pools/default/buckets")))
            .form(&form)
            .send()
            .await?;
        let status = response.status();
        if status.is_success() {
            // A new cluster: a node that dies is failed over by itself.
            enable_auto_failover(client, &first, admin, args, deadline).await?;
            continue;
        }
        if status == reqwest::StatusCode::CONFLICT {
            continue;
        }
        let text = response.text().await.unwrap_or_default();
        if status.is_client_error() || Instant::now() > deadline {
            bail!("creating bucket default failed: HTTP {status}: {text}");
        }
        // 503: no leader yet; try again.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    loop {
        let mut revs = Vec::new();
        for s in servers {
            let url = format!(
                "http://127.0.0.1:{}/pools/default/buckets/default",
                s.admin_port
            );
            if let Ok(r) = client.get(&url).send().await {
                if r.status().is_success() {
                    if let Ok(config) = BucketConfig::parse(&r.text().await?) {
                        revs.push(config.rev);
                    }
                }
            }
        }
        if revs.len() == servers.len() && revs.windows(2).all(|w| w[0] == w[1]) {
            break;
        }
        if Instant::now() > deadline {
            bail!("the nodes did not agree on bucket default's config within {FORM_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Ready means ready for data: every node has warmed bucket `default` up.
    for s in servers {
        loop {
            if warmed_up(s.data_port).await {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "the node on port {} did not warm up bucket default within {FORM_TIMEOUT:?}",
                    s.data_port
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Switches auto-failover on with `--auto-failover-s` (with two nodes or
/// more, and a replica to promote), retrying while the cluster has no
/// leader.
async fn enable_auto_failover(
    client: &reqwest::Client,
    first: &str,
    admin: &Credentials,
    args: &UpArgs,
    deadline: Instant,
) -> anyhow::Result<()> {
    if args.auto_failover_s == 0 || args.nodes < 2 || args.replicas == 0 {
        return Ok(());
    }
    let form = [
        ("enabled", "true".to_string()),
        ("timeout", args.auto_failover_s.to_string()),
    ];
    loop {
        let response = client
            .post(format!("{first}/settings/autoFailover"))
            .basic_auth(&admin.username, Some(&admin.password))
            .form(&form)
            .send()
            .await?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default();
        if status.is_client_error() || Instant::now() > deadline {
            bail!("switching auto-failover on failed: HTTP {status}: {text}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether the node on `data_port` serves bucket `default` with warmup
/// complete (`stats warmup` on a fresh connection, which starts on
/// `default`).
async fn warmed_up(data_port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut conn) = tokio::net::TcpStream::connect(("127.0.0.1", data_port)).await else {
        return false;
    };
    if conn.write_all(b"stats warmup\r\n").await.is_err() {
        return false;
    }
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(2), async {
        while !(reply.ends_with(b"END\r\n")
            || reply.ends_with(b"ERROR\r\n")
            || reply.len() > 1 << 16)
        {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => reply.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.is_ok() && String::from_utf8_lossy(&reply).contains("STAT ep_warmup_thread complete")
}

async fn wait_healthy(client: &reqwest::Client, admin_port: u16) -> anyhow::Result<()> {
    let url = format!("http://127.0.0.1:{admin_port}/health");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(resp) = client.get(&url).send().await {
            if resp.status().is_success() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the proxy did not load the map within 30 s")
}

/// SIGTERM to the proxy first, then the nodes; waits for each.
fn stop_all(children: &mut [Running]) {
    for running in children.iter_mut().rev() {
        let pid = running.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
    }
    for running in children.iter_mut().rev() {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match running.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    let _ = running.child.kill();
                    let _ = running.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        eprintln!("stopped {}", running.name);
    }
}
