//! Who may do what on a real node's admin port, end to end: a one-node
//! cluster in-process, real HTTP.
//!
//! - Every route of the admin router — taken from the router's own table,
//!   so a new route is walked too — without credentials, with wrong ones
//!   and as a read-only user: 401 or 403 for everything that is not open
//!   to them, and the cluster state afterwards equal to before; with admin
//!   credentials (or, for the cluster's own routes, the cluster secret)
//!   none is refused.
//! - Forged Raft requests (a vote with a higher term, an append that
//!   deletes a bucket, a snapshot that leaves the node out, a chunk at
//!   offset 2^40) without the cluster secret: refused, nothing changed;
//!   the 2^40 chunk with the secret is refused too, before any allocation.
//! - `/internal/bucketConfig` to a node outside any cluster and `addNode`
//!   of an arbitrary URL: refused without credentials; the arbitrary URL is
//!   refused with them too, and nothing changes.
//! - The node still serves data afterwards.

mod common;

use std::time::{Duration, Instant};

use common::TestDir;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, SnapshotMeta, Vote};
use reqwest::{Method, StatusCode};
use shoal_node::admin::{routes, Access};
use shoal_node::config::Credentials;
use shoal_node::manager::{Command, TypeConfig};
use shoal_node::{Node, NodeConfig};

const ADMIN: (&str, &str) = ("Administrator", "admin-password");
const READER: (&str, &str) = ("reader", "reader-password");
const BUCKET_PASSWORD: &str = "bucket-password";

/// A change that does not show within this is a hang.
const DEADLINE: Duration = Duration::from_secs(30);

/// A cluster of one node, initialised with [`ADMIN`].
async fn start_cluster(dir: &TestDir) -> Node {
    Node::start(NodeConfig {
        data_dir: dir.path().to_path_buf(),
        port: 0,
        admin_port: 0,
        num_vbuckets: 16,
        ram_quota_mb: 16,
        default_bucket: false,
        init_cluster: true,
        credentials: Some(Credentials {
            username: ADMIN.0.into(),
            password: ADMIN.1.into(),
        }),
        ..NodeConfig::default()
    })
    .await
    .expect("start the node")
}

fn http() -> reqwest::Client {
    shoal_net::tls::http_client(None)
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()
        .unwrap()
}

/// Who a request is sent as.
#[derive(Clone, Copy, Debug)]
enum As<'a> {
    Nobody,
    User(&'a str, &'a str),
}

/// One request; its status. Streams answer as soon as their headers are
/// in (the body is dropped).
async fn call(
    node: &Node,
    method: Method,
    path: &str,
    who: As<'_>,
    form: &[(&str, &str)],
) -> StatusCode {
    let url = format!("http://{}{path}", node.admin_addr());
    let mut request = http().request(method.clone(), url);
    if let As::User(user, password) = who {
        request = request.basic_auth(user, Some(password));
    }
    if method != Method::GET {
        request = request.form(form);
    }
    request.send().await.expect("the node answers").status()
}

/// One request's status and the start of its body (a stream's first
/// chunk at most).
async fn call_body(node: &Node, method: Method, path: &str, who: As<'_>) -> (StatusCode, String) {
    let url = format!("http://{}{path}", node.admin_addr());
    let mut request = http().request(method.clone(), url);
    if let As::User(user, password) = who {
        request = request.basic_auth(user, Some(password));
    }
    if method != Method::GET {
        request = request.form(&[("", "")][..0]);
    }
    let mut response = request.send().await.expect("the node answers");
    let status = response.status();
    let chunk = response.chunk().await.ok().flatten().unwrap_or_default();
    (status, String::from_utf8_lossy(&chunk).into_owned())
}

/// Polls `check` until it holds.
async fn until<F: std::future::Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = Instant::now() + DEADLINE;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The cluster with its first admin, a read-only user and a bucket with a
/// password (`locked`).
async fn prepared(dir: &TestDir) -> Node {
    let node = start_cluster(dir).await;
    let admin = As::User(ADMIN.0, ADMIN.1);
    until("the first admin user", || async {
        call(&node, Method::GET, "/pools/default", admin, &[]).await == StatusCode::OK
    })
    .await;
    let path = format!("/settings/rbac/users/local/{}", READER.0);
    let form = [("password", READER.1), ("roles", "ro_admin")];
    assert_eq!(
        call(&node, Method::PUT, &path, admin, &form).await,
        StatusCode::OK
    );
    let form = [
        ("name", "locked"),
        ("ramQuotaMB", "8"),
        ("numVBuckets", "16"),
        ("replicaNumber", "0"),
        ("authType", "sasl"),
        ("saslPassword", BUCKET_PASSWORD),
    ];
    let created = call(&node, Method::POST, "/pools/default/buckets", admin, &form).await;
    assert_eq!(created, StatusCode::ACCEPTED);
    until("bucket locked served", || async {
        let path = "/pools/default/buckets/locked";
        call(&node, Method::GET, path, admin, &[]).await == StatusCode::OK
    })
    .await;
    node
}

/// A route's path with its parameters filled in.
fn concrete(path: &str) -> String {
    path.replace("{bucket}", "locked")
        .replace("{user}", "someone")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_whom_it_must_and_nothing_changes() {
    let dir = TestDir::new("security", "routes");
    let node = prepared(&dir).await;
    let manager = node.manager().expect("a cluster member").clone();
    let before = manager.state();
    let routes = routes();
    assert!(routes.len() >= 30, "the router's table: {routes:?}");
    let callers = [
        ("nobody", As::Nobody),
        ("wrong password", As::User(ADMIN.0, "not-the-password")),
        ("unknown user", As::User("mallory", "whatever")),
        ("read-only", As::User(READER.0, READER.1)),
    ];
    let mut walked = 0;
    for route in &routes {
        let method = Method::from_bytes(route.method.as_bytes()).unwrap();
        let path = concrete(route.path);
        for (name, who) in callers {
            let status = call(&node, method.clone(), &path, who, &[]).await;
            let reader = name == "read-only";
            let expected = match route.access {
                Access::Public => continue,
                Access::BucketConfig | Access::Read if reader => {
                    assert!(status.is_success(), "{route:?} as {name}: {status}");
                    continue;
                }
                Access::Change | Access::Cluster if reader => StatusCode::FORBIDDEN,
                _ => StatusCode::UNAUTHORIZED,
            };
            assert_eq!(status, expected, "{route:?} as {name}");
            walked += 1;
        }
    }
    assert!(walked > 80, "{walked} refusals checked");
    assert_eq!(*manager.state(), *before, "nothing changed");

    // With the right credentials nothing is refused: admin for the REST
    // API, the cluster secret for the cluster's own routes.
    let secret = node.cluster_secret().current().to_hex();
    for route in &routes {
        let method = Method::from_bytes(route.method.as_bytes()).unwrap();
        let who = match route.access {
            Access::Cluster => As::User("@cluster", &secret),
            _ => As::User(ADMIN.0, ADMIN.1),
        };
        let (status, body) = call_body(&node, method, &concrete(route.path), who).await;
        assert!(
            status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
            "{route:?}: {status}"
        );
        // Every route of the table is routed: none falls through to the
        // router's "no such endpoint".
        assert!(!body.contains("no such endpoint"), "{route:?}: not routed");
    }
    node.shutdown().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_changes_are_refused() {
    let dir = TestDir::new("security", "origin");
    let node = prepared(&dir).await;
    let url = format!("http://{}/pools/default/buckets/locked", node.admin_addr());
    let deleted = http()
        .delete(url)
        .basic_auth(ADMIN.0, Some(ADMIN.1))
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(deleted, StatusCode::FORBIDDEN);
    let state = node.manager().unwrap().state();
    assert!(state.buckets.contains_key("locked"), "nothing deleted");
    node.shutdown().await.expect("clean stop");
}

/// A Raft RPC `body` posted to `/internal/raft/<path>` as `who`.
async fn raft(node: &Node, path: &str, body: &impl serde::Serialize, who: As<'_>) -> StatusCode {
    let url = format!("http://{}/internal/raft/{path}", node.admin_addr());
    let mut request = http().post(url).json(body);
    if let As::User(user, password) = who {
        request = request.basic_auth(user, Some(password));
    }
    request.send().await.expect("answered").status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_raft_requests_change_nothing() {
    let dir = TestDir::new("security", "raft");
    let node = prepared(&dir).await;
    let manager = node.manager().unwrap().clone();
    let before = manager.state();
    let term = manager.term();
    let forger: u64 = 424_242;
    let vote = Vote::new(term + 100, forger);
    let log_id = |index| LogId::new(CommittedLeaderId::new(term + 100, forger), index);

    let vote_request = VoteRequest::new(vote, Some(log_id(1_000_000)));
    let append = AppendEntriesRequest::<TypeConfig> {
        vote,
        prev_log_id: None,
        entries: vec![Entry {
            log_id: log_id(1),
            payload: EntryPayload::Normal(Command::DeleteBucket {
                name: "locked".into(),
            }),
        }],
        leader_commit: Some(log_id(1)),
    };
    // A snapshot of a cluster without this node (empty membership), and a
    // chunk placed 1 TiB into the snapshot.
    let leave_out = InstallSnapshotRequest::<TypeConfig> {
        vote,
        meta: SnapshotMeta {
            last_log_id: Some(log_id(1_000_000)),
            ..SnapshotMeta::default()
        },
        offset: 0,
        data: br#"{"nodes":{},"buckets":{}}"#.to_vec(),
        done: true,
    };
    let far_chunk = InstallSnapshotRequest::<TypeConfig> {
        offset: 1 << 40,
        data: vec![7; 16],
        done: false,
        ..leave_out.clone()
    };
    for who in [As::Nobody, As::User("@cluster", &"0".repeat(64))] {
        assert_eq!(
            raft(&node, "vote", &vote_request, who).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            raft(&node, "append", &append, who).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            raft(&node, "snapshot", &leave_out, who).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            raft(&node, "snapshot", &far_chunk, who).await,
            StatusCode::UNAUTHORIZED
        );
    }
    // An admin is not the cluster either.
    let admin = As::User(ADMIN.0, ADMIN.1);
    assert_eq!(
        raft(&node, "append", &append, admin).await,
        StatusCode::FORBIDDEN
    );
    // Even the cluster cannot make a node hold a 1 TiB snapshot.
    let secret = node.cluster_secret().current().to_hex();
    let cluster = As::User("@cluster", &secret);
    assert_eq!(
        raft(&node, "snapshot", &far_chunk, cluster).await,
        StatusCode::BAD_REQUEST
    );

    assert_eq!(*manager.state(), *before, "the state is what it was");
    assert_eq!(manager.term(), term, "no forged vote moved the term");
    assert!(manager.is_leader(), "the node still leads its cluster");
    let path = "/pools/default/buckets/locked";
    assert_eq!(
        call(&node, Method::GET, path, admin, &[]).await,
        StatusCode::OK
    );
    node.shutdown().await.expect("clean stop");
}

/// An HTTP server on loopback answering every request with `status` and
/// `body`; its address.
async fn http_server(status: &'static str, body: &'static str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf).await;
            let reply = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(reply.as_bytes()).await;
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_node_admits_only_a_real_node_an_admin_named() {
    let dir = TestDir::new("security", "addnode");
    let node = prepared(&dir).await;
    let manager = node.manager().unwrap().clone();
    let before = manager.state();
    // An arbitrary web server, and one that answers like a node to every
    // request (but cannot be reached where it says it lives, nor prove the
    // secret there).
    let arbitrary = http_server("404 Not Found", r#"{"error":"nope"}"#).await;
    let impostor = http_server(
        "200 OK",
        r#"{"id":1,"host":"10.6.6.6","dataPort":1,"adminPort":2}"#,
    )
    .await;
    let admin = As::User(ADMIN.0, ADMIN.1);
    for target in [&arbitrary, &impostor] {
        let form = [("hostname", target.as_str())];
        let path = "/controller/addNode";
        assert_eq!(
            call(&node, Method::POST, path, As::Nobody, &form).await,
            StatusCode::UNAUTHORIZED
        );
        let reader = As::User(READER.0, READER.1);
        assert_eq!(
            call(&node, Method::POST, path, reader, &form).await,
            StatusCode::FORBIDDEN
        );
        let refused = call(&node, Method::POST, path, admin, &form).await;
        assert_eq!(refused, StatusCode::BAD_REQUEST, "{target}");
    }
    assert_eq!(*manager.state(), *before, "no node was added");
    let members = manager.raft_roles();
    assert_eq!(members.len(), 1, "no Raft member was added: {members:?}");
    node.shutdown().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_outside_any_cluster_takes_configs_only_from_the_cluster() {
    let dir = TestDir::new("security", "adopt");
    let node = Node::start(NodeConfig {
        data_dir: dir.path().to_path_buf(),
        port: 0,
        admin_port: 0,
        num_vbuckets: 16,
        ram_quota_mb: 16,
        ..NodeConfig::default()
    })
    .await
    .expect("a bare node");
    node.ready().await.unwrap();
    let config = serde_json::json!({
        "rev": 99, "name": "default", "nodeLocator": "vbucket",
        "vBucketServerMap": {
            "hashAlgorithm": "CRC", "numReplicas": 0,
            "serverList": ["10.6.6.6:11210"],
            "vBucketMap": vec![vec![0]; 16],
        },
    })
    .to_string();
    let url = format!("http://{}/internal/bucketConfig", node.admin_addr());
    let send = |who: As<'static>| {
        let mut request = http().post(&url).body(config.clone());
        if let As::User(user, password) = who {
            request = request.basic_auth(user, Some(password));
        }
        request.send()
    };
    assert_eq!(
        send(As::Nobody).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let wrong = send(As::User("@cluster", "00")).await.unwrap().status();
    assert_eq!(wrong, StatusCode::UNAUTHORIZED);
    assert!(
        node.cluster_view().current("default").is_none(),
        "nothing adopted"
    );
    // The data is still served, from every vbucket it had.
    let bucket = node.default_bucket().expect("default");
    assert!(bucket.engine.vbucket_state(0).is_some());
    node.shutdown().await.expect("clean stop");
}
