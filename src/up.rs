//! `shoal up`: a whole local cluster in one command — N storage nodes on
//! loopback, each with its own data directory under `--dir`, the bucket
//! `default` spread over them by the vbucket planner, and a proxy on
//! `--port` that any memcached client can use. Stays in the foreground;
//! Ctrl-C or SIGTERM stops every child cleanly (nodes flush to disk).
//! Running it again with the same `--dir` reuses the data (warmup).
//!
//! Until the replicated cluster metadata lands, `up` itself computes the
//! map and hands it to every node over the admin API
//! (`POST /internal/bucketConfig`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use shoal_vbmap::config::{BucketConfig, NodeAddress};
use shoal_vbmap::planner::fresh_map;
use shoal_vbmap::ServerIdx;

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
    /// RAM quota per node, MiB.
    #[arg(long, default_value_t = 256)]
    ram_quota_mb: usize,
}

/// A child process and what it is.
struct Running {
    name: String,
    child: Child,
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
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let exe = std::env::current_exe().context("finding the shoal binary")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    let mut children = Vec::new();
    let mut servers = Vec::new();
    for i in 0..args.nodes {
        let data_port = args.base_port + 2 * i as u16;
        let admin_port = data_port + 1;
        let dir = args.dir.join(format!("node-{i}"));
        let child = spawn(
            &exe,
            &args.dir.join(format!("node-{i}.log")),
            &[
                "node".into(),
                "--data-dir".into(),
                dir.display().to_string(),
                "--port".into(),
                data_port.to_string(),
                "--admin-port".into(),
                admin_port.to_string(),
                "--vbuckets".into(),
                args.vbuckets.to_string(),
                "--ram-quota-mb".into(),
                args.ram_quota_mb.to_string(),
            ],
        )?;
        children.push(Running {
            name: format!("node-{i}"),
            child,
        });
        servers.push(NodeAddress::new("127.0.0.1", data_port, admin_port));
    }
    for running in children.iter_mut() {
        expect_ready_line(running)?;
    }

    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()?;
    runtime.block_on(publish_map(&client, &args, &servers))?;

    let cluster: Vec<String> = servers
        .iter()
        .map(|s| format!("http://127.0.0.1:{}", s.admin_port))
        .collect();
    let proxy_admin = args.port.checked_add(1).context("--port too high")?;
    let proxy = spawn(
        &exe,
        &args.dir.join("proxy.log"),
        &[
            "proxy".into(),
            "--cluster".into(),
            cluster.join(","),
            "--port".into(),
            args.port.to_string(),
            "--admin-port".into(),
            proxy_admin.to_string(),
        ],
    )?;
    children.push(Running {
        name: "proxy".into(),
        child: proxy,
    });
    if let Some(proxy) = children.last_mut() {
        expect_ready_line(proxy)?;
    }
    runtime.block_on(wait_healthy(&client, proxy_admin))?;

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
    println!("data      {}", args.dir.display());
    println!("ready");

    let outcome = runtime.block_on(wait_for_signal_or_exit(&mut children));
    stop_all(&mut children);
    outcome
}

fn spawn(exe: &Path, log: &Path, args: &[String]) -> anyhow::Result<Child> {
    let log_file =
        std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("starting {} {}", exe.display(), args.join(" ")))
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

/// Hands every node the bucket config, unless they already serve one for
/// this exact set of servers (a restart keeps the map it had).
async fn publish_map(
    client: &reqwest::Client,
    args: &UpArgs,
    servers: &[NodeAddress],
) -> anyhow::Result<()> {
    let want: Vec<String> = servers
        .iter()
        .map(|s| format!("{}:{}", s.host, s.data_port))
        .collect();
    // What each node serves now (after a restart: the map it had).
    let mut held_rev = 0;
    let mut all_current = true;
    for s in servers {
        let url = format!(
            "http://127.0.0.1:{}/pools/default/buckets/default",
            s.admin_port
        );
        let held = match client.get(&url).send().await {
            Ok(resp) if resp.status().is_success() => BucketConfig::parse(&resp.text().await?).ok(),
            _ => None,
        };
        let current = held.as_ref().is_some_and(|config| {
            config
                .vbucket_server_map
                .as_ref()
                .is_some_and(|m| m.server_list == want && m.vbucket_map.len() == args.vbuckets)
        });
        all_current &= current;
        held_rev = held_rev.max(held.and_then(|c| c.rev).unwrap_or(0));
    }
    if all_current {
        return Ok(());
    }
    let indexes: Vec<ServerIdx> = (0..servers.len() as u16).collect();
    let map = fresh_map(args.vbuckets, &indexes, args.replicas)?;
    let config = BucketConfig::for_vbucket_map("default", held_rev + 1, servers, &map, None)?;
    let json = config.to_json();
    for s in servers {
        let url = format!("http://127.0.0.1:{}/internal/bucketConfig", s.admin_port);
        let resp = client.post(&url).body(json.clone()).send().await?;
        if !resp.status().is_success() {
            bail!(
                "node at {url} refused the map: {}",
                resp.text().await.unwrap_or_default()
            );
        }
    }
    Ok(())
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

/// Waits for Ctrl-C / SIGTERM, or for a child to exit on its own.
async fn wait_for_signal_or_exit(children: &mut [Running]) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            r = tokio::signal::ctrl_c() => return r.map_err(Into::into),
            _ = tick.tick() => {
                for c in children.iter_mut() {
                    if let Ok(Some(status)) = c.child.try_wait() {
                        bail!("{} exited unexpectedly ({status}); stopping the cluster", c.name);
                    }
                }
            }
        }
    }
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
