//! End-to-end tests of `shoal ctl` against a real cluster: `shoal up
//! --nodes 3` as a child process, then `shoal ctl` runs checked on their
//! exit code, stdout and stderr.
//!
//! Nothing sleeps a fixed time: every wait polls with a deadline (see
//! tests/common/mod.rs).

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{TestDir, SHOAL};
use serde_json::Value;

/// How long `shoal up` may take to print `ready`.
const UP_DEADLINE: Duration = Duration::from_secs(60);

/// How long a change (bucket created or deleted, node added or ejected)
/// may take to show in `status` (a hang bound, not an expectation).
const CHANGE_DEADLINE: Duration = Duration::from_secs(60);

/// How long a SIGTERM'd `shoal up` may take to stop its children.
const EXIT_DEADLINE: Duration = Duration::from_secs(60);

const POLL: Duration = Duration::from_millis(100);

/// Ports `shoal up` needs: data and REST for each of 3 nodes, then the
/// proxy's memcached and admin ports.
const PORTS: u16 = 3 * 2 + 2;

// === impl UpCluster ===

/// A running `shoal up --nodes 3`.
struct UpCluster {
    child: Option<Child>,
    /// First node port; node i has data on base+2i and REST on base+2i+1.
    base_port: u16,
    log: PathBuf,
    dir: TestDir,
}

impl UpCluster {
    /// Starts `shoal up` on a run of free ports and waits for `ready`.
    /// `up` takes fixed ports, so a port taken between the check and the
    /// bind makes it exit early; it is then retried on other ports.
    fn start(name: &str) -> UpCluster {
        let dir = TestDir::new(name);
        let mut failures = Vec::new();
        for attempt in 0..3 {
            let base = free_port_run(PORTS);
            let log = dir.path().join(format!("up-{attempt}.log"));
            match try_up(dir.path(), base, &log) {
                Ok(child) => {
                    let mut cluster = UpCluster {
                        child: Some(child),
                        base_port: base,
                        log,
                        dir,
                    };
                    // Changes go through the Raft leader (without one the
                    // server answers 503). Polled with `ctl` rather than
                    // `status_json`: until the nodes agree, status may fail.
                    cluster.wait_until("a raft leader", |c| {
                        let ran = c.ctl(&["--json", "status"]);
                        let json: Value = serde_json::from_str(&ran.stdout).unwrap_or_default();
                        ran.code == 0
                            && json["nodes"].as_array().is_some_and(|nodes| {
                                nodes.len() == 3 && nodes.iter().any(|n| n["raftRole"] == "leader")
                            })
                    });
                    return cluster;
                }
                Err(why) => failures.push(format!("ports {base}..: {why}\n{}", tail(&log))),
            }
        }
        panic!("shoal up did not start:\n{}", failures.join("\n---\n"));
    }

    /// Node i's REST URL.
    fn url(&self, i: u16) -> String {
        format!("http://127.0.0.1:{}", self.base_port + 2 * i + 1)
    }

    /// Every node's REST URL, as `--cluster` takes them.
    fn cluster(&self) -> String {
        (0..3).map(|i| self.url(i)).collect::<Vec<_>>().join(",")
    }

    /// `shoal ctl --cluster <all nodes> <args>`, with the admin
    /// credentials `up` kept.
    fn ctl(&self, args: &[&str]) -> Ran {
        ctl(&self.cluster(), Some(&self.credentials()), args)
    }

    /// The credentials file `shoal up` wrote.
    fn credentials(&self) -> PathBuf {
        self.dir.path().join("cluster").join("credentials")
    }

    /// `ctl` that must succeed; its stdout.
    fn ctl_ok(&self, args: &[&str]) -> String {
        let ran = self.ctl(args);
        assert_eq!(ran.code, 0, "shoal ctl {args:?} failed: {ran:?}");
        ran.stdout
    }

    /// `status --json`, parsed.
    fn status_json(&self) -> Value {
        serde_json::from_str(&self.ctl_ok(&["--json", "status"])).expect("status --json is JSON")
    }

    /// `bucket list --json`: the bucket names.
    fn bucket_names(&self) -> Vec<String> {
        let list: Value = serde_json::from_str(&self.ctl_ok(&["--json", "bucket", "list"]))
            .expect("bucket list --json is JSON");
        list.as_array()
            .expect("bucket list --json is an array")
            .iter()
            .map(|b| b["name"].as_str().expect("a bucket name").to_owned())
            .collect()
    }

    /// Polls `check` until it holds; fails the test with `what` after
    /// [`CHANGE_DEADLINE`].
    fn wait_until(&mut self, what: &str, mut check: impl FnMut(&UpCluster) -> bool) {
        let deadline = Instant::now() + CHANGE_DEADLINE;
        loop {
            self.assert_alive();
            if check(self) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; shoal up log:\n{}",
                tail(&self.log)
            );
            std::thread::sleep(POLL);
        }
    }

    fn assert_alive(&mut self) {
        let child = self.child.as_mut().expect("cluster running");
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!("shoal up exited ({status}); log:\n{}", tail(&self.log));
        }
    }
}

impl Drop for UpCluster {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM lets `up` stop its nodes and proxy; SIGKILL would
            // orphan them.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + EXIT_DEADLINE;
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(POLL);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- shoal up log ---\n{}", tail(&self.log));
            for name in ["node-0.log", "node-1.log", "node-2.log", "proxy.log"] {
                let path = self.dir.path().join("cluster").join(name);
                eprintln!("--- {name} ---\n{}", tail(&path));
            }
        }
    }
}

/// Spawns `shoal up` and waits for its `ready` line.
fn try_up(dir: &Path, base: u16, log: &Path) -> Result<Child, String> {
    let stderr = std::fs::File::create(log).expect("create up log");
    let mut child = Command::new(SHOAL)
        .args(["up", "--nodes", "3"])
        .args(["--base-port", &base.to_string()])
        .args(["--port", &(base + 6).to_string()])
        .arg("--dir")
        .arg(dir.join("cluster"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn shoal up");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // Read to EOF so `up` never writes into a closed pipe.
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.trim() == "ready" {
                let _ = tx.send(());
            }
        }
    });
    let deadline = Instant::now() + UP_DEADLINE;
    loop {
        if rx.recv_timeout(POLL).is_ok() {
            return Ok(child);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited before ready ({status})"));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("no `ready` within {UP_DEADLINE:?}"));
        }
    }
}

/// The first of `n` consecutive ports that are free now. Searched below
/// Linux's ephemeral range (32768+), where the kernel never hands ports to
/// outgoing connections, from a start that differs per process and call
/// so parallel tests do not race for the same run.
fn free_port_run(n: u16) -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let call = u32::from(NEXT.fetch_add(1, Ordering::Relaxed));
    let mut start = LOW + (std::process::id() * 131 + call * 997) % SPAN;
    for _ in 0..1000 {
        let base = start as u16;
        let held: Vec<_> = (0..n)
            .map_while(|i| TcpListener::bind(("127.0.0.1", base + i)).ok())
            .collect();
        if held.len() == usize::from(n) {
            return base;
        }
        start = LOW + (start - LOW + u32::from(n)) % SPAN;
    }
    panic!("no run of {n} free ports");
}

/// A REST URL nothing listens on: a port just bound and released.
fn dead_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("local addr").port();
    format!("http://127.0.0.1:{port}")
}

/// One `shoal ctl` run.
#[derive(Debug)]
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

/// `shoal ctl --cluster <cluster> [--credentials <file>] <args>`. Bounded
/// by ctl's own timeouts (10 s per URL at most).
fn ctl(cluster: &str, credentials: Option<&Path>, args: &[&str]) -> Ran {
    let mut command = Command::new(SHOAL);
    // Not the repository: a `.shoal/credentials` there (from a `shoal up`
    // run by hand) must not count.
    command.current_dir(std::env::temp_dir());
    command.args(["ctl", "--cluster", cluster]);
    if let Some(file) = credentials {
        command.arg("--credentials").arg(file);
    }
    let out = command
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run shoal ctl");
    Ran {
        code: out.status.code().expect("ctl exited, not killed"),
        stdout: String::from_utf8(out.stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("utf-8 stderr"),
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The whitespace-separated cells of the table row whose first cell is
/// `first`.
fn row<'a>(table: &'a str, first: &str) -> Option<Vec<&'a str>> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&first))
}

// === tests ===

#[test]
fn status_shows_every_node_and_the_default_bucket() {
    let cluster = UpCluster::start("ctl-status");
    let json = cluster.status_json();
    let nodes = json["nodes"].as_array().expect("nodes array");
    assert_eq!(nodes.len(), 3, "{json:#}");
    // In the server's order (by node id), not necessarily start order.
    let mut hostnames: Vec<&str> = nodes
        .iter()
        .map(|n| n["hostname"].as_str().expect("hostname"))
        .collect();
    hostnames.sort_unstable();
    let want: Vec<String> = (0..3)
        .map(|i| format!("127.0.0.1:{}", cluster.base_port + 2 * i + 1))
        .collect();
    assert_eq!(hostnames, want, "{json:#}");
    for node in nodes {
        assert_eq!(node["clusterMembership"], "active", "{node:#}");
        assert_eq!(node["status"], "healthy", "{node:#}");
    }
    let buckets = json["buckets"].as_array().expect("buckets array");
    let default = buckets
        .iter()
        .find(|b| b["name"] == "default")
        .expect("bucket default");
    let map = &default["vBucketServerMap"];
    let servers = map["serverList"].as_array().expect("serverList");
    let rows = map["vBucketMap"].as_array().expect("vBucketMap");

    // The table shows, for each server, the vbuckets whose row starts with
    // its index (active) and those listing it later (replica).
    let table = cluster.ctl_ok(&["status"]);
    let header = row(&table, "NAME").expect("buckets header");
    let cells = row(&table, "default").expect("default row");
    assert_eq!(cells[1], "membase", "{table}");
    for (i, server) in servers.iter().enumerate() {
        let server = server.as_str().expect("server address");
        let column = header
            .iter()
            .position(|h| *h == server)
            .unwrap_or_else(|| panic!("no column {server}:\n{table}"));
        let active = rows.iter().filter(|r| r[0] == i).count();
        let replica = rows
            .iter()
            .map(|r| {
                r.as_array().unwrap()[1..]
                    .iter()
                    .filter(|e| **e == i)
                    .count()
            })
            .sum::<usize>();
        // The header has "RAM MiB" (two words) before the server columns.
        assert_eq!(cells[column - 1], format!("{active}/{replica}"), "{table}");
    }
    for node in nodes {
        let otp = node["otpNode"].as_str().expect("otpNode");
        assert!(row(&table, otp).is_some(), "no row for {otp}:\n{table}");
    }
}

#[test]
fn bucket_create_list_delete() {
    let mut cluster = UpCluster::start("ctl-bucket");
    let out = cluster.ctl_ok(&[
        "bucket",
        "create",
        "ctl-e2e",
        "--ram-quota-mb",
        "100",
        "--replicas",
        "1",
    ]);
    assert!(out.starts_with("bucket ctl-e2e accepted"), "{out}");
    cluster.wait_until("ctl-e2e listed", |c| {
        c.bucket_names().iter().any(|n| n == "ctl-e2e")
    });
    let table = cluster.ctl_ok(&["bucket", "list"]);
    let cells = row(&table, "ctl-e2e").unwrap_or_else(|| panic!("no row:\n{table}"));
    assert_eq!(&cells[1..2], ["membase"], "{table}");
    assert_eq!(cells[3], "1", "replicas:\n{table}");
    assert_eq!(cells[4], "100", "RAM MiB:\n{table}");

    let out = cluster.ctl_ok(&[
        "bucket",
        "create",
        "ctl-cache",
        "--type",
        "memcached",
        "--ram-quota-mb",
        "100",
    ]);
    assert!(out.starts_with("bucket ctl-cache accepted"), "{out}");
    cluster.wait_until("ctl-cache listed", |c| {
        c.bucket_names().iter().any(|n| n == "ctl-cache")
    });
    let table = cluster.ctl_ok(&["bucket", "list"]);
    let cells = row(&table, "ctl-cache").unwrap_or_else(|| panic!("no row:\n{table}"));
    assert_eq!(cells[1], "memcached", "{table}");
    assert!(
        cells[5..].iter().all(|c| *c == "-"),
        "no vbuckets:\n{table}"
    );

    for name in ["ctl-e2e", "ctl-cache"] {
        assert_eq!(
            cluster.ctl_ok(&["bucket", "delete", name]),
            format!("bucket {name} deleted\n")
        );
    }
    cluster.wait_until("both buckets gone", |c| {
        let names = c.bucket_names();
        !names.iter().any(|n| n == "ctl-e2e" || n == "ctl-cache")
    });
    assert!(row(&cluster.ctl_ok(&["bucket", "list"]), "ctl-e2e").is_none());
}

#[test]
fn refusals_print_the_servers_message_and_exit_1() {
    let cluster = UpCluster::start("ctl-refused");

    let ran = cluster.ctl(&["bucket", "create", "bad", "--ram-quota-mb", "0"]);
    assert_eq!(ran.code, 1, "{ran:?}");
    assert_eq!(ran.stdout, "", "{ran:?}");
    assert!(ran.stderr.starts_with("error: "), "{ran:?}");
    assert!(
        ran.stderr.contains("(HTTP 4"),
        "a client error status: {ran:?}"
    );
    assert!(
        !ran.stderr.contains("error: Bad Request"),
        "the server's own message: {ran:?}"
    );

    // --json adds the server's error document on stdout.
    let ran = cluster.ctl(&["--json", "bucket", "create", "bad", "--ram-quota-mb", "0"]);
    assert_eq!(ran.code, 1, "{ran:?}");
    let body: Value = serde_json::from_str(&ran.stdout).expect("error JSON on stdout");
    assert!(body["error"].is_string(), "{body:#}");

    let ran = cluster.ctl(&["bucket", "delete", "no-such-bucket"]);
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(ran.stderr.starts_with("error: "), "{ran:?}");
    assert!(ran.stderr.trim_end().ends_with("(HTTP 404)"), "{ran:?}");
    assert!(!cluster.bucket_names().iter().any(|n| n == "bad"));
}

#[test]
fn dead_urls_are_skipped_and_all_dead_exits_3() {
    let cluster = UpCluster::start("ctl-failover");
    let with_dead_first = format!("{},{}", dead_url(), cluster.url(1));
    let ran = ctl(&with_dead_first, Some(&cluster.credentials()), &["status"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(row(&ran.stdout, "NODE").is_some(), "{ran:?}");

    let all_dead = format!("{},{}", dead_url(), dead_url());
    let ran = ctl(&all_dead, None, &["status"]);
    assert_eq!(ran.code, 3, "{ran:?}");
    assert!(
        ran.stderr.starts_with("error: no cluster node answered: "),
        "{ran:?}"
    );
    assert_eq!(ran.stdout, "");
}

#[test]
fn add_and_eject_a_node() {
    let mut cluster = UpCluster::start("ctl-nodes");
    // A fourth node outside the cluster, on ports the kernel picks.
    let extra = cluster.dir.path().join("extra");
    let mut node = Command::new(SHOAL)
        .arg("node")
        .arg("--data-dir")
        .arg(&extra)
        .args(["--port", "0", "--admin-port", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn shoal node");
    let stdout = node.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(addr) = line.strip_prefix("admin ") {
                let _ = tx.send(addr.trim().to_owned());
            }
        }
    });
    let admin = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the extra node prints its admin address");

    let ran = cluster.ctl(&["--json", "add-node", &admin]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let added: Value = serde_json::from_str(&ran.stdout).expect("addNode JSON");
    let otp = added["otpNode"].as_str().expect("otpNode").to_owned();
    cluster.wait_until("the new node in status", |c| {
        let json = c.status_json();
        json["nodes"].as_array().is_some_and(|nodes| {
            nodes
                .iter()
                .any(|n| n["otpNode"] == otp.as_str() && n["hostname"] == admin.as_str())
        })
    });
    let table = cluster.ctl_ok(&["status"]);
    assert!(row(&table, &otp).is_some(), "{table}");

    assert_eq!(
        cluster.ctl_ok(&["eject-node", &otp]),
        format!("ejected {otp}\n")
    );
    cluster.wait_until("the node gone from status", |c| {
        let json = c.status_json();
        json["nodes"].as_array().is_some_and(|nodes| {
            nodes.len() == 3 && !nodes.iter().any(|n| n["otpNode"] == otp.as_str())
        })
    });

    let _ = node.kill();
    let _ = node.wait();
}

#[test]
fn credentials_are_needed_and_users_have_roles() {
    let cluster = UpCluster::start("ctl-users");
    // No credentials (none given, none in the current directory): 401,
    // with what to do about it.
    let ran = ctl(&cluster.cluster(), None, &["status"]);
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(ran.stderr.contains("(HTTP 401)"), "{ran:?}");
    assert!(ran.stderr.contains("--username"), "{ran:?}");

    // A read-only user: reads work, changes are refused (403) and change
    // nothing.
    let set = [
        "user",
        "set",
        "reader",
        "--role",
        "ro_admin",
        "--user-password",
        "reader-pw",
    ];
    assert_eq!(cluster.ctl_ok(&set), "user reader set (ro_admin)\n");
    let list = cluster.ctl_ok(&["user", "list"]);
    assert!(
        row(&list, "reader") == Some(vec!["reader", "ro_admin"]),
        "{list}"
    );
    assert!(
        row(&list, "Administrator") == Some(vec!["Administrator", "admin"]),
        "{list}"
    );
    let reader = |args: &[&str]| {
        let mut full = vec!["--username", "reader", "--password", "reader-pw"];
        full.extend_from_slice(args);
        ctl(&cluster.cluster(), None, &full)
    };
    assert_eq!(reader(&["status"]).code, 0);
    let refused = reader(&["bucket", "create", "nope", "--ram-quota-mb", "8"]);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stderr.contains("(HTTP 403)"), "{refused:?}");
    assert!(!cluster.bucket_names().iter().any(|n| n == "nope"));
    let wrong = ctl(
        &cluster.cluster(),
        None,
        &["--username", "reader", "--password", "guess", "status"],
    );
    assert!(wrong.stderr.contains("(HTTP 401)"), "{wrong:?}");

    // The last admin stays.
    let ran = cluster.ctl(&["user", "delete", "Administrator"]);
    assert_eq!(ran.code, 1, "{ran:?}");
    assert_eq!(
        cluster.ctl_ok(&["user", "delete", "reader"]),
        "user reader deleted\n"
    );
    assert_eq!(reader(&["status"]).code, 1, "a deleted user is refused");
}

#[test]
fn usage_errors_exit_2_without_asking_the_cluster() {
    for args in [
        &["bucket", "create", "b", "--durability", "sometimes"][..],
        &["add-node", "no-port"],
        &["--cluster", "https://127.0.0.1:1", "status"],
    ] {
        let out = Command::new(SHOAL)
            .arg("ctl")
            .args(args)
            .output()
            .expect("run shoal ctl");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    }
}

#[test]
fn rebalance_waits_for_the_end_and_refuses_unknown_nodes() {
    let cluster = UpCluster::start("ctl-rebalance");
    let before = cluster.status_json();

    // `shoal up`'s map is balanced already: the rebalance has nothing to
    // move, and ctl still waits for the leader to report it done.
    let out = cluster.ctl_ok(&["rebalance"]);
    assert!(out.starts_with("rebalance done in "), "{out:?}");
    let after = cluster.status_json();
    assert_eq!(
        before["nodes"].as_array().map(Vec::len),
        after["nodes"].as_array().map(Vec::len),
        "no node came or went: {after:#}"
    );

    let ran = cluster.ctl(&["rebalance", "--eject", "ns_1@nowhere"]);
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(
        ran.stderr.contains("--eject ns_1@nowhere: no such node"),
        "{ran:?}"
    );
}
