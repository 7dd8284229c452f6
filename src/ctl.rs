//! `shoal ctl`: the admin CLI over the cluster's REST API, which has
//! Couchbase's paths and shapes.
//!
//! - `status`: `GET /pools/default` and `GET /pools/default/buckets`, shown
//!   as a nodes table and a buckets table;
//! - `bucket list|create|delete`: `GET`/`POST /pools/default/buckets`,
//!   `DELETE /pools/default/buckets/<name>`;
//! - `add-node` / `eject-node`: `POST /controller/addNode` and
//!   `/controller/ejectNode`;
//! - `failover`: `POST /controller/failOver`;
//! - `rebalance`: `POST /controller/rebalance` with every node as
//!   `knownNodes` (and `--eject` ones as `ejectedNodes`), then
//!   `GET /pools/default/rebalanceProgress` until it is done;
//! - `user list|set|delete`: `GET /settings/rbac/users`,
//!   `PUT`/`DELETE /settings/rbac/users/local/<name>`.
//!
//! Credentials: `--username` with `--password`, `--password-file` or
//! `--credentials FILE` (before the subcommand), `SHOAL_USERNAME` and
//! `SHOAL_PASSWORD`, or else the `.shoal/credentials` that `shoal up`
//! wrote in the current directory.
//!
//! Modules: [`client`] (requests, failover over `--cluster` URLs, errors)
//! and [`render`] (the JSON views, vbucket counts and tables; no I/O).
//!
//! With `--json` a command prints the server's JSON instead of tables
//! (`status`: `{"nodes": […], "buckets": […]}`), and a refusal's JSON body
//! goes to stdout too, so scripts see every field the server sent. Errors
//! print `error: <message> (HTTP <status>)` on stderr; the exit code is 1
//! when the cluster refused, 3 when no node answered or a write's outcome
//! is unknown, 2 for usage errors.

mod client;
mod render;

use std::io::Write as _;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use reqwest::Url;
use serde::Deserialize as _;
use serde_json::Value;
use shoal_node::config::Credentials;

use crate::credentials::{self, CredentialArgs};
use client::{Cluster, CtlError, Reply, Timeouts};
use render::{Bucket, Pool};

/// The REST URL of node 0 of `shoal up` with its default `--base-port`
/// (12000: data on base+2i, REST on base+2i+1). A test checks it against
/// `up`'s flag.
const DEFAULT_CLUSTER: &str = "http://127.0.0.1:12001";

/// `shoal ctl` flags.
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// Cluster REST URLs, comma-separated; each is tried in turn until one
    /// answers.
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        value_parser = parse_cluster_url,
        default_value = DEFAULT_CLUSTER
    )]
    cluster: Vec<Url>,
    /// Print the server's JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Admin credentials (or `.shoal/credentials` when none are given).
    #[command(flatten)]
    credentials: CredentialArgs,
    #[command(subcommand)]
    command: CtlCommand,
}

/// Where `shoal up` (run from the same directory with its default
/// `--dir`) keeps the credentials.
const UP_CREDENTIALS: &str = ".shoal/credentials";

#[derive(Debug, Subcommand)]
enum CtlCommand {
    /// Show the cluster's nodes and buckets.
    Status,
    /// List, create or delete buckets.
    Bucket {
        #[command(subcommand)]
        command: BucketCommand,
    },
    /// Add a node to the cluster by its REST address.
    AddNode {
        /// The new node's REST address: HOST:PORT, http://HOST:PORT, or
        /// https://HOST:PORT (its HTTPS port, in a cluster with TLS
        /// between nodes).
        #[arg(value_parser = parse_node_address)]
        hostname: String,
    },
    /// Remove a node from the cluster.
    EjectNode {
        /// The node's otpNode (ns_3@127.0.0.1) or its REST HOST:PORT.
        node: String,
    },
    /// Fail a node over: its vbuckets' replicas become active elsewhere.
    Failover {
        /// The node's otpNode (ns_3@127.0.0.1) or its REST HOST:PORT.
        node: String,
        /// Go ahead even when some vbuckets would lose their last copy.
        #[arg(long, conflicts_with = "graceful")]
        allow_unsafe: bool,
        /// Hand the node's active vbuckets to their replicas first (no
        /// error, nothing lost: for maintenance); waits until it is done.
        #[arg(long)]
        graceful: bool,
    },
    /// Choose how a failed-over node comes back at the next rebalance:
    /// --delta keeps its data and streams only what it missed, --full
    /// empties it first.
    Recover {
        /// The node's otpNode (ns_3@127.0.0.1) or its REST HOST:PORT.
        node: String,
        /// Keep its data.
        #[arg(long, conflicts_with = "full", required_unless_present = "full")]
        delta: bool,
        /// Empty it first.
        #[arg(long)]
        full: bool,
    },
    /// List, create, change or delete admin users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Rebalance: spread every bucket evenly over the nodes (taking in
    /// added ones), removing the `--eject`ed ones; waits until it is done.
    Rebalance {
        /// A node to remove (otpNode or REST HOST:PORT); repeatable.
        #[arg(long = "eject")]
        eject: Vec<String>,
        /// Start it and return at once.
        #[arg(long)]
        no_wait: bool,
    },
}

#[derive(Debug, Subcommand)]
enum BucketCommand {
    /// Show every bucket with its vbuckets per server.
    List,
    /// Create a bucket.
    Create(CreateArgs),
    /// Delete a bucket and its data.
    Delete {
        /// The bucket's name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Show every admin user and its role.
    List,
    /// Create a user, or change its role or password.
    Set {
        /// The user's name.
        name: String,
        /// `admin` (everything) or `ro_admin` (read only).
        #[arg(long, value_parser = ["admin", "ro_admin"])]
        role: String,
        /// The user's password (visible in the process list: prefer
        /// --user-password-file); may be left out to change only the role.
        #[arg(long)]
        user_password: Option<String>,
        /// A file whose first line is the user's password.
        #[arg(long, value_name = "FILE")]
        user_password_file: Option<std::path::PathBuf>,
    },
    /// Delete a user (not the last admin).
    Delete {
        /// The user's name.
        name: String,
    },
}

/// `shoal ctl bucket create` flags.
#[derive(Debug, Args)]
struct CreateArgs {
    /// The bucket's name.
    name: String,
    /// Bucket type.
    #[arg(long = "type", value_enum, default_value_t = BucketType::Membase)]
    bucket_type: BucketType,
    /// RAM quota per node, MiB.
    #[arg(long, default_value_t = 256)]
    ram_quota_mb: u64,
    /// Replicas per vbucket [default: 1 for membase, 0 for memcached,
    /// which has none].
    #[arg(long)]
    replicas: Option<u32>,
    /// The least durability every write gets.
    #[arg(long, value_enum, default_value_t = Durability::None)]
    durability: Durability,
    /// Number of vbuckets (the server's default when not given).
    #[arg(long)]
    vbuckets: Option<u32>,
    /// Protect the bucket with this password (SASL; visible in the process
    /// list: prefer --bucket-password-file).
    #[arg(long)]
    bucket_password: Option<String>,
    /// A file whose first line is the bucket's password.
    #[arg(long, value_name = "FILE")]
    bucket_password_file: Option<std::path::PathBuf>,
    /// Allow `flush_all` on the bucket.
    #[arg(long)]
    flush: bool,
}

/// `bucketType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum BucketType {
    /// vbuckets, replicas and persistence (Couchbase's `couchbase` is an
    /// alias).
    #[value(alias = "couchbase")]
    Membase,
    /// A ketama ring of caches: no vbuckets, no replicas.
    Memcached,
}

/// `durabilityMinLevel`, spelled as the API spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Durability {
    #[value(name = "none")]
    None,
    #[value(name = "majority")]
    Majority,
    #[value(name = "majorityAndPersistActive")]
    MajorityAndPersistActive,
    #[value(name = "persistToMajority")]
    PersistToMajority,
}

impl CreateArgs {
    /// `--replicas`, or the type's default: a memcached bucket has no
    /// replicas, and the server refuses any other count for one.
    fn replicas(&self) -> u32 {
        self.replicas.unwrap_or(match self.bucket_type {
            BucketType::Membase => 1,
            BucketType::Memcached => 0,
        })
    }
}

impl BucketType {
    fn as_str(self) -> &'static str {
        match self {
            BucketType::Membase => "membase",
            BucketType::Memcached => "memcached",
        }
    }
}

impl Durability {
    fn as_str(self) -> &'static str {
        match self {
            Durability::None => "none",
            Durability::Majority => "majority",
            Durability::MajorityAndPersistActive => "majorityAndPersistActive",
            Durability::PersistToMajority => "persistToMajority",
        }
    }
}

/// A `--cluster` entry: an http URL (`http://` may be left out).
fn parse_cluster_url(text: &str) -> Result<Url, String> {
    let full = if text.contains("://") {
        text.to_owned()
    } else {
        format!("http://{text}")
    };
    let url = Url::parse(&full).map_err(|e| format!("{text:?}: {e}"))?;
    match url.scheme() {
        "http" => {}
        "https" => return Err("https is not supported (shoal is built without TLS)".to_owned()),
        other => return Err(format!("{text:?}: scheme {other:?} is not http")),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{text:?}: no host"));
    }
    Ok(url)
}

/// An `add-node` address: `host:port`, sent as typed.
/// A node's REST address as `add-node` takes it: `HOST:PORT`, or the same
/// after `http://` (dropped) or `https://` (kept: the cluster then reaches
/// the node over HTTPS).
fn parse_node_address(text: &str) -> Result<String, String> {
    let trimmed = text.trim_end_matches('/');
    let (scheme, rest) = match trimmed.strip_prefix("https://") {
        Some(rest) => ("https://", rest),
        None => ("", trimmed.strip_prefix("http://").unwrap_or(trimmed)),
    };
    shoal_vbmap::config::ServerAddr::parse(rest)
        .map(|_| format!("{scheme}{rest}"))
        .map_err(|e| {
            format!(
                "{text:?}: {e} (expected HOST:PORT or http(s)://HOST:PORT of the node's REST API)"
            )
        })
}

/// Runs `shoal ctl` and reports the outcome (the binary's whole exit path
/// for this subcommand: ctl prints its own errors).
pub fn main(args: CtlArgs) -> ExitCode {
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CtlError::Local(format!("starting the runtime: {e}")))
        .and_then(|runtime| runtime.block_on(run(&args)));
    match result {
        Ok(out) => {
            emit(&out);
            ExitCode::SUCCESS
        }
        Err(error) => {
            match &error {
                CtlError::Refused {
                    body: Some(body), ..
                } if args.json => emit(&pretty(body)),
                _ => {}
            }
            eprintln!("error: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

/// Writes to stdout; a reader that went away (`| head`) is not an error.
fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// Indented JSON and a newline.
fn pretty(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    text.push('\n');
    text
}

/// A reply body for `--json`: indented when it is JSON, as sent when not,
/// nothing when empty.
fn pretty_body(reply: &Reply) -> String {
    if reply.body.trim().is_empty() {
        return String::new();
    }
    match serde_json::from_str::<Value>(&reply.body) {
        Ok(value) => pretty(&value),
        Err(_) => format!("{}\n", reply.body.trim_end()),
    }
}

const BUCKETS: [&str; 3] = ["pools", "default", "buckets"];

/// Runs the command; returns what to print.
async fn run(args: &CtlArgs) -> Result<String, CtlError> {
    let credentials = ctl_credentials(&args.credentials)?;
    let cluster = Cluster::new(args.cluster.clone(), Timeouts::default(), credentials)?;
    match &args.command {
        CtlCommand::Status => status(&cluster, args.json).await,
        CtlCommand::Bucket {
            command: BucketCommand::List,
        } => {
            let (raw, buckets) = fetch_buckets(&cluster).await?;
            Ok(match args.json {
                true => pretty(&raw),
                false => render::buckets_table(&buckets),
            })
        }
        CtlCommand::Bucket {
            command: BucketCommand::Create(create),
        } => {
            let reply = cluster.post_form(&BUCKETS, &create_form(create)?).await?;
            Ok(match args.json {
                true => pretty_body(&reply),
                false => format!(
                    "bucket {} accepted; the cluster creates it in the background\n",
                    create.name
                ),
            })
        }
        CtlCommand::Bucket {
            command: BucketCommand::Delete { name },
        } => {
            let reply = cluster
                .delete(&["pools", "default", "buckets", name])
                .await?;
            Ok(match args.json {
                true => pretty_body(&reply),
                false => format!("bucket {name} deleted\n"),
            })
        }
        CtlCommand::AddNode { hostname } => {
            let form = [("hostname", hostname.clone())];
            let reply = cluster.post_form(&["controller", "addNode"], &form).await?;
            let body = reply.json()?;
            let otp = body.get("otpNode").and_then(Value::as_str);
            Ok(match (args.json, otp) {
                (true, _) => pretty(&body),
                (false, Some(otp)) => format!("added {hostname} as {otp}\n"),
                (false, None) => return Err(reply.bad("no otpNode in the reply")),
            })
        }
        CtlCommand::EjectNode { node } => {
            let form = [("otpNode", node.clone())];
            let reply = cluster
                .post_form(&["controller", "ejectNode"], &form)
                .await?;
            Ok(match args.json {
                true => pretty_body(&reply),
                false => format!("ejected {node}\n"),
            })
        }
        CtlCommand::Failover {
            node,
            graceful: true,
            ..
        } => {
            let form = [("otpNode", node.clone())];
            cluster
                .post_form(&["controller", "startGracefulFailover"], &form)
                .await?;
            let done = wait_rebalance_like(&cluster, "graceful failover", args.json).await?;
            Ok(match args.json {
                true => done,
                false => format!("{done}failed over {node} gracefully\n"),
            })
        }
        CtlCommand::Recover { node, delta, .. } => {
            let kind = if *delta { "delta" } else { "full" };
            let form = [
                ("otpNode", node.clone()),
                ("recoveryType", kind.to_string()),
            ];
            let reply = cluster
                .post_form(&["controller", "setRecoveryType"], &form)
                .await?;
            Ok(match args.json {
                true => pretty_body(&reply),
                false => format!(
                    "{node} will come back by {kind} recovery; run `shoal ctl rebalance` to take it in\n"
                ),
            })
        }
        CtlCommand::Failover {
            node, allow_unsafe, ..
        } => {
            let form = [
                ("otpNode", node.clone()),
                ("allowUnsafe", allow_unsafe.to_string()),
            ];
            let reply = cluster
                .post_form(&["controller", "failOver"], &form)
                .await?;
            Ok(match args.json {
                true => pretty_body(&reply),
                false => format!("failed over {node}\n"),
            })
        }
        CtlCommand::Rebalance { eject, no_wait } => {
            rebalance(&cluster, eject, *no_wait, args.json).await
        }
        CtlCommand::User { command } => user(&cluster, command, args.json).await,
    }
}

/// The credentials given, or those `shoal up` kept in the current
/// directory.
fn ctl_credentials(args: &CredentialArgs) -> Result<Option<Credentials>, CtlError> {
    let local = |e: anyhow::Error| CtlError::Local(format!("{e:#}"));
    if let Some(given) = args.resolve().map_err(local)? {
        return Ok(Some(given));
    }
    let path = std::path::Path::new(UP_CREDENTIALS);
    if path.exists() {
        return credentials::read_credentials(path).map(Some).map_err(local);
    }
    Ok(None)
}

/// `shoal ctl user …`.
async fn user(cluster: &Cluster, command: &UserCommand, json: bool) -> Result<String, CtlError> {
    match command {
        UserCommand::List => {
            let reply = cluster.get(&["settings", "rbac", "users"]).await?;
            let body = reply.json()?;
            if json {
                return Ok(pretty(&body));
            }
            Ok(render::users_table(&body))
        }
        UserCommand::Set {
            name,
            role,
            user_password,
            user_password_file,
        } => {
            let password = match user_password_file {
                Some(path) => Some(
                    credentials::read_password_file(path)
                        .map_err(|e| CtlError::Local(format!("{e:#}")))?,
                ),
                None => user_password.clone(),
            };
            let mut form = vec![("roles", role.clone())];
            if let Some(password) = password {
                form.push(("password", password));
            }
            let path = ["settings", "rbac", "users", "local", name.as_str()];
            let reply = cluster.put_form(&path, &form).await?;
            Ok(match json {
                true => pretty_body(&reply),
                false => format!("user {name} set ({role})\n"),
            })
        }
        UserCommand::Delete { name } => {
            let path = ["settings", "rbac", "users", "local", name.as_str()];
            let reply = cluster.delete(&path).await?;
            Ok(match json {
                true => pretty_body(&reply),
                false => format!("user {name} deleted\n"),
            })
        }
    }
}

/// How often `rebalance` asks for progress.
const REBALANCE_POLL: std::time::Duration = std::time::Duration::from_millis(500);

/// Starts a rebalance over every node the cluster lists and, unless
/// `no_wait`, waits for it to end; an error message at the end is an error.
async fn rebalance(
    cluster: &Cluster,
    eject: &[String],
    no_wait: bool,
    json: bool,
) -> Result<String, CtlError> {
    let pool = cluster.get(&["pools", "nodes"]).await?;
    let body = pool.json()?;
    let nodes = body
        .get("nodes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut known = Vec::new();
    let mut ejected = Vec::new();
    for node in &nodes {
        let otp = node
            .get("otpNode")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let host = node
            .get("hostname")
            .and_then(Value::as_str)
            .unwrap_or_default();
        known.push(otp.to_string());
        if eject.iter().any(|e| e == otp || e == host) {
            ejected.push(otp.to_string());
        }
    }
    if let Some(unknown) = eject.iter().find(|e| {
        !nodes.iter().any(|n| {
            n.get("otpNode").and_then(Value::as_str) == Some(e.as_str())
                || n.get("hostname").and_then(Value::as_str) == Some(e.as_str())
        })
    }) {
        return Err(CtlError::Local(format!(
            "--eject {unknown}: no such node in the cluster"
        )));
    }
    let form = [
        ("knownNodes", known.join(",")),
        ("ejectedNodes", ejected.join(",")),
    ];
    let reply = cluster
        .post_form(&["controller", "rebalance"], &form)
        .await?;
    if no_wait {
        return Ok(match json {
            true => pretty_body(&reply),
            false => "rebalance started\n".to_string(),
        });
    }
    wait_rebalance_like(cluster, "rebalance", json).await
}

/// Waits for the running rebalance (or graceful failover, which reports
/// through the same progress) to end; an error message is an error.
async fn wait_rebalance_like(
    cluster: &Cluster,
    what: &str,
    json: bool,
) -> Result<String, CtlError> {
    loop {
        tokio::time::sleep(REBALANCE_POLL).await;
        let progress = cluster
            .get(&["pools", "default", "rebalanceProgress"])
            .await?
            .json()?;
        if progress.get("status").and_then(Value::as_str) == Some("running") {
            continue;
        }
        if let Some(message) = progress.get("errorMessage").and_then(Value::as_str) {
            return Err(CtlError::Failed(format!("{what} failed: {message}")));
        }
        let secs = progress
            .get("lastDurationSeconds")
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
        return Ok(match json {
            true => pretty(&progress),
            false => format!("{what} done in {secs:.1} s\n"),
        });
    }
}

/// The form of `POST /pools/default/buckets`.
fn create_form(create: &CreateArgs) -> Result<Vec<(&'static str, String)>, CtlError> {
    let mut form = vec![
        ("name", create.name.clone()),
        ("bucketType", create.bucket_type.as_str().to_owned()),
        ("ramQuotaMB", create.ram_quota_mb.to_string()),
        ("replicaNumber", create.replicas().to_string()),
        ("durabilityMinLevel", create.durability.as_str().to_owned()),
    ];
    if let Some(vbuckets) = create.vbuckets {
        form.push(("numVBuckets", vbuckets.to_string()));
    }
    let password = match &create.bucket_password_file {
        Some(path) => Some(
            credentials::read_password_file(path).map_err(|e| CtlError::Local(format!("{e:#}")))?,
        ),
        None => create.bucket_password.clone(),
    };
    if let Some(password) = password {
        form.push(("authType", "sasl".to_owned()));
        form.push(("saslPassword", password));
    }
    if create.flush {
        form.push(("flushEnabled", "1".to_owned()));
    }
    Ok(form)
}

/// `GET /pools/default/buckets`: the raw array and its view.
async fn fetch_buckets(cluster: &Cluster) -> Result<(Value, Vec<Bucket>), CtlError> {
    let reply = cluster.get(&BUCKETS).await?;
    let raw = reply.json()?;
    let buckets = Vec::<Bucket>::deserialize(&raw).map_err(|e| reply.bad(e))?;
    Ok((raw, buckets))
}

async fn status(cluster: &Cluster, json: bool) -> Result<String, CtlError> {
    let reply = cluster.get(&["pools", "default"]).await?;
    let raw_pool = reply.json()?;
    let pool = Pool::deserialize(&raw_pool).map_err(|e| reply.bad(e))?;
    let (raw_buckets, buckets) = fetch_buckets(cluster).await?;
    if json {
        /// The `--json` shape of `status`; a struct, so `nodes` comes first.
        #[derive(serde::Serialize)]
        struct Status<'a> {
            nodes: &'a Value,
            buckets: &'a Value,
        }
        let status = Status {
            nodes: raw_pool.get("nodes").unwrap_or(&Value::Null),
            buckets: &raw_buckets,
        };
        let mut text = serde_json::to_string_pretty(&status).map_err(|e| reply.bad(e))?;
        text.push('\n');
        return Ok(text);
    }
    Ok(format!(
        "{}\n{}",
        render::nodes_table(&pool),
        render::buckets_table(&buckets)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    fn parse(args: &[&str]) -> Result<CtlArgs, clap::Error> {
        let argv = ["shoal", "ctl"].iter().chain(args);
        match crate::Cli::try_parse_from(argv)?.command {
            crate::Command::Ctl(ctl) => Ok(ctl),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn default_cluster_is_node_0_of_shoal_up() {
        let cli = crate::Cli::command();
        let up = cli.find_subcommand("up").expect("an up subcommand");
        let base = up
            .get_arguments()
            .find(|a| a.get_id() == "base_port")
            .expect("up --base-port")
            .get_default_values()[0]
            .to_str()
            .unwrap()
            .parse::<u16>()
            .unwrap();
        assert_eq!(DEFAULT_CLUSTER, format!("http://127.0.0.1:{}", base + 1));
        let args = parse(&["status"]).unwrap();
        assert_eq!(args.cluster, [Url::parse(DEFAULT_CLUSTER).unwrap()]);
        assert!(!args.json);
    }

    #[test]
    fn cluster_urls_are_a_list_and_flags_go_anywhere() {
        let args = parse(&[
            "--cluster",
            "http://h1:8091,h2:9000/",
            "bucket",
            "list",
            "--json",
        ])
        .unwrap();
        let urls: Vec<&str> = args.cluster.iter().map(Url::as_str).collect();
        assert_eq!(urls, ["http://h1:8091/", "http://h2:9000/"]);
        assert!(args.json);
        assert!(matches!(
            args.command,
            CtlCommand::Bucket {
                command: BucketCommand::List
            }
        ));
        let args = parse(&["status", "--cluster", "127.0.0.1:1"]).unwrap();
        assert_eq!(args.cluster[0].as_str(), "http://127.0.0.1:1/");
    }

    #[test]
    fn bad_cluster_urls_are_usage_errors() {
        for bad in ["https://h:1", "ftp://h:1", "http://", "http://h:99999"] {
            let error = parse(&["--cluster", bad, "status"]).unwrap_err();
            assert_eq!(
                error.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{bad}"
            );
        }
    }

    #[test]
    fn bucket_create_defaults() {
        let args = parse(&["bucket", "create", "b1"]).unwrap();
        let CtlCommand::Bucket {
            command: BucketCommand::Create(create),
        } = args.command
        else {
            panic!("{:?}", args.command)
        };
        let form = create_form(&create).unwrap();
        assert_eq!(
            form,
            [
                ("name", "b1".to_owned()),
                ("bucketType", "membase".to_owned()),
                ("ramQuotaMB", "256".to_owned()),
                ("replicaNumber", "1".to_owned()),
                ("durabilityMinLevel", "none".to_owned()),
            ]
        );
    }

    #[test]
    fn bucket_create_every_flag() {
        let args = parse(&[
            "bucket",
            "create",
            "cache",
            "--type",
            "memcached",
            "--ram-quota-mb",
            "64",
            "--replicas",
            "2",
            "--durability",
            "majorityAndPersistActive",
            "--vbuckets",
            "64",
        ])
        .unwrap();
        let CtlCommand::Bucket {
            command: BucketCommand::Create(create),
        } = args.command
        else {
            panic!("{:?}", args.command)
        };
        let form = create_form(&create).unwrap();
        let pairs: Vec<String> = form.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(
            pairs.join("&"),
            "name=cache&bucketType=memcached&ramQuotaMB=64&replicaNumber=2&\
             durabilityMinLevel=majorityAndPersistActive&numVBuckets=64"
        );
        let args = parse(&["bucket", "create", "c", "--type", "couchbase"]).unwrap();
        let CtlCommand::Bucket {
            command: BucketCommand::Create(create),
        } = args.command
        else {
            panic!()
        };
        assert_eq!(create.bucket_type, BucketType::Membase);
    }

    #[test]
    fn memcached_buckets_default_to_no_replicas() {
        let args = parse(&["bucket", "create", "c", "--type", "memcached"]).unwrap();
        let CtlCommand::Bucket {
            command: BucketCommand::Create(create),
        } = args.command
        else {
            panic!()
        };
        let form = create_form(&create).unwrap();
        assert!(
            form.contains(&("replicaNumber", "0".to_owned())),
            "{form:?}"
        );
        assert!(form.contains(&("durabilityMinLevel", "none".to_owned())));
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for bad in [
            &["bucket", "create", "b", "--durability", "all"][..],
            &["bucket", "create", "b", "--type", "ephemeral"],
            &["bucket", "create", "b", "--ram-quota-mb", "-1"],
            &["bucket", "create"],
            &["bucket", "delete"],
            &["add-node", "10.0.0.1"],
            &["add-node", "10.0.0.1:x"],
            &["eject-node"],
            &["failover"],
            &["frobnicate"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn node_commands() {
        let args = parse(&["add-node", "127.0.0.1:12007"]).unwrap();
        assert!(
            matches!(args.command, CtlCommand::AddNode { hostname } if hostname == "127.0.0.1:12007")
        );
        let args = parse(&["add-node", "[::1]:8091"]).unwrap();
        assert!(matches!(args.command, CtlCommand::AddNode { .. }));
        for node in ["ns_3@127.0.0.1", "127.0.0.1:12005"] {
            let args = parse(&["eject-node", node]).unwrap();
            assert!(matches!(args.command, CtlCommand::EjectNode { node: n } if n == node));
        }
        let args = parse(&["failover", "ns_3@127.0.0.1", "--allow-unsafe"]).unwrap();
        assert!(matches!(
            args.command,
            CtlCommand::Failover { node, allow_unsafe: true, graceful: false } if node == "ns_3@127.0.0.1"
        ));
        let args = parse(&["failover", "--graceful", "127.0.0.1:12005"]).unwrap();
        assert!(matches!(
            args.command,
            CtlCommand::Failover { graceful: true, .. }
        ));
        assert!(parse(&["failover", "--graceful", "--allow-unsafe", "n"]).is_err());
        for (url, want) in [
            ("http://127.0.0.1:12007", "127.0.0.1:12007"),
            ("http://127.0.0.1:12007/", "127.0.0.1:12007"),
            ("https://node4.example:18091", "https://node4.example:18091"),
            ("node4.example:8091", "node4.example:8091"),
        ] {
            let args = parse(&["add-node", url]).unwrap();
            assert!(
                matches!(&args.command, CtlCommand::AddNode { hostname } if hostname == want),
                "{url}: {:?}",
                args.command
            );
        }
        assert!(parse(&["add-node", "ftp://x:1"]).is_err());
        let args = parse(&["recover", "ns_3@127.0.0.1", "--delta"]).unwrap();
        assert!(matches!(
            args.command,
            CtlCommand::Recover {
                delta: true,
                full: false,
                ..
            }
        ));
        let args = parse(&["recover", "ns_3@127.0.0.1", "--full"]).unwrap();
        assert!(matches!(
            args.command,
            CtlCommand::Recover {
                delta: false,
                full: true,
                ..
            }
        ));
        assert!(
            parse(&["recover", "ns_3@127.0.0.1"]).is_err(),
            "delta or full is required"
        );
        assert!(parse(&["recover", "n", "--delta", "--full"]).is_err());
    }

    #[test]
    fn rebalance_takes_repeated_ejects() {
        let args = parse(&[
            "rebalance",
            "--eject",
            "a:1",
            "--eject",
            "ns_2@h",
            "--no-wait",
        ])
        .unwrap();
        assert!(matches!(
            args.command,
            CtlCommand::Rebalance { eject, no_wait: true } if eject == ["a:1", "ns_2@h"]
        ));
        let args = parse(&["rebalance"]).unwrap();
        assert!(matches!(
            args.command,
            CtlCommand::Rebalance { eject, no_wait: false } if eject.is_empty()
        ));
    }

    #[test]
    fn durability_names_round_trip() {
        for d in Durability::value_variants() {
            let name = d.to_possible_value().unwrap();
            assert_eq!(name.get_name(), d.as_str());
        }
        for t in BucketType::value_variants() {
            assert_eq!(t.to_possible_value().unwrap().get_name(), t.as_str());
        }
    }
}
