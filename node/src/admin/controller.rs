//! The REST endpoints that change the cluster: bucket create and delete,
//! `/controller/addNode` and `/controller/ejectNode`.
//!
//! They run on the Raft leader. Any other node forwards the request as is
//! (marked, so a forwarded request is never forwarded again) and relays the
//! answer; with no leader known the answer is 503 and nothing changes.
//! Parameters are Couchbase's, form-encoded; every bad one gets a 400
//! naming it.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use shoal_vbmap::planner::fresh_map;

use super::{error, json, manager_error, Admin};
use crate::bucket::{BucketKind, BucketSpec, Durability};
use shoal_auth::PasswordHash;

use crate::manager::state::BucketEdit;
use crate::manager::{BucketRecord, Command, Manager, NodeRecord};

/// Marks a request already forwarded once.
const FORWARDED: &str = "x-shoal-forwarded";

/// The largest vbucket count a bucket may ask for.
const MAX_VBUCKETS: u32 = 4096;

/// Most replicas per vbucket (Couchbase's limit).
const MAX_REPLICAS: u8 = 3;

/// A bucket as `POST /pools/default/buckets` describes it: its settings,
/// and its password in the clear until it is hashed (off the async
/// threads) into the spec.
#[derive(Clone, PartialEq, Eq)]
pub struct BucketForm {
    /// The settings (`password` still `None`).
    pub spec: BucketSpec,
    /// `saslPassword`, for `authType=sasl`.
    pub password: Option<String>,
}

impl std::fmt::Debug for BucketForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BucketForm")
            .field("spec", &self.spec)
            .field("password", &self.password.as_ref().map(|_| ".."))
            .finish()
    }
}

/// Parses and validates a form-encoded bucket-creation body.
pub fn parse_bucket_form(body: &[u8]) -> Result<BucketForm, String> {
    let form = form(body);
    let spec = bucket_params(&form)?;
    let password = sasl_password(&form)?;
    Ok(BucketForm { spec, password })
}

/// The shortest bucket or user password accepted (Couchbase's default).
pub(super) const MIN_PASSWORD_LEN: usize = 6;

/// `authType` and `saslPassword`: `Some(password)` for `sasl`, `None` for
/// `none` (or neither given).
fn sasl_password(form: &BTreeMap<String, String>) -> Result<Option<String>, String> {
    let password = form.get("saslPassword").filter(|p| !p.is_empty());
    match (form.get("authType").map(String::as_str), password) {
        (None | Some("none"), None) => Ok(None),
        (None | Some("none"), Some(_)) => Err("saslPassword needs authType=sasl".into()),
        (Some("sasl"), None) => Err("authType=sasl needs a saslPassword".into()),
        (Some("sasl"), Some(p)) if p.len() < MIN_PASSWORD_LEN => Err(format!(
            "saslPassword must have at least {MIN_PASSWORD_LEN} characters"
        )),
        (Some("sasl"), Some(p)) => Ok(Some(p.clone())),
        (Some(other), _) => Err(format!(
            "authType {other:?} is not supported: use none or sasl"
        )),
    }
}

/// `flushEnabled`: `0` or `1` (Couchbase's spelling), default off.
fn flush_enabled(form: &BTreeMap<String, String>) -> Result<Option<bool>, String> {
    match form.get("flushEnabled").map(String::as_str) {
        None => Ok(None),
        Some("0") | Some("false") => Ok(Some(false)),
        Some("1") | Some("true") => Ok(Some(true)),
        Some(other) => Err(format!("flushEnabled must be 0 or 1 (got {other:?})")),
    }
}

/// Hashes `password` off the async threads (it costs tens of
/// milliseconds).
pub(super) async fn hash_password(password: String) -> Result<PasswordHash, Response> {
    let hashed = tokio::task::spawn_blocking(move || PasswordHash::new(password.as_bytes())).await;
    match hashed {
        Ok(Ok(hash)) => Ok(hash),
        Ok(Err(e)) => Err(error(StatusCode::BAD_REQUEST, &e.to_string())),
        Err(_) => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "hashing the password failed",
        )),
    }
}

/// Decodes a form body into its last value per name.
pub(super) fn form(body: &[u8]) -> BTreeMap<String, String> {
    form_urlencoded::parse(body).into_owned().collect()
}

/// Validates bucket-creation parameters (Couchbase's names; `numVBuckets`
/// is Shoal's own, default 1024).
fn bucket_params(form: &BTreeMap<String, String>) -> Result<BucketSpec, String> {
    let name = form
        .get("name")
        .filter(|n| !n.is_empty())
        .ok_or("name is required")?
        .clone();
    if shoal_persist::validate_bucket_name(&name).is_err() {
        return Err(format!(
            "name {name:?} is invalid: use up to 100 of A-Z a-z 0-9 _ - . (not starting with .)"
        ));
    }
    let kind = match form.get("bucketType").map(String::as_str) {
        None | Some("membase") | Some("couchbase") => BucketKind::Membase,
        Some("memcached") => BucketKind::Memcached,
        Some(other) => {
            return Err(format!(
                "bucketType {other:?} is not supported: use membase (couchbase) or memcached"
            ))
        }
    };
    let ram_quota_mb = match form.get("ramQuotaMB").or_else(|| form.get("ramQuota")) {
        None => return Err("ramQuotaMB is required".into()),
        Some(q) => q
            .parse::<u64>()
            .ok()
            .filter(|q| (1..=1 << 20).contains(q))
            .ok_or_else(|| {
                format!("ramQuotaMB must be a whole number of MiB from 1 (got {q:?})")
            })?,
    };
    let replicas = match form.get("replicaNumber") {
        None if kind == BucketKind::Memcached => 0,
        None => 1,
        Some(r) => r
            .parse::<u8>()
            .ok()
            .filter(|r| *r <= MAX_REPLICAS)
            .ok_or_else(|| format!("replicaNumber must be 0 to {MAX_REPLICAS} (got {r:?})"))?,
    };
    let durability = match form.get("durabilityMinLevel") {
        None => Durability::None,
        Some(d) => Durability::parse(d).ok_or_else(|| {
            format!(
                "durabilityMinLevel must be none, majority, majorityAndPersistActive or \
                 persistToMajority (got {d:?})"
            )
        })?,
    };
    let num_vbuckets = match form.get("numVBuckets") {
        None if kind == BucketKind::Memcached => 1,
        None => 1024,
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|v| v.is_power_of_two() && *v <= MAX_VBUCKETS)
            .ok_or_else(|| {
                format!("numVBuckets must be a power of two from 1 to {MAX_VBUCKETS} (got {v:?})")
            })?,
    };
    if kind == BucketKind::Memcached {
        if replicas != 0 {
            return Err("memcached buckets have no replicas: replicaNumber must be 0".into());
        }
        if durability != Durability::None {
            return Err(
                "memcached buckets have no durability: durabilityMinLevel must be none".into(),
            );
        }
        if num_vbuckets != 1 {
            return Err("memcached buckets have no vbuckets: omit numVBuckets".into());
        }
    }
    Ok(BucketSpec {
        name,
        kind,
        ram_quota_mb,
        replicas,
        durability,
        num_vbuckets,
        password: None,
        flush_enabled: flush_enabled(form)?.unwrap_or(false),
    })
}

/// The request as received, for forwarding (an extractor: it takes the
/// body, so it comes last in a handler's arguments).
pub(super) struct Incoming {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

/// The largest body a change request may carry (forms are tiny).
const MAX_BODY: usize = 64 * 1024;

impl<S: Send + Sync> FromRequest<S> for Incoming {
    type Rejection = Response;

    async fn from_request(request: Request, _state: &S) -> Result<Incoming, Response> {
        let (parts, body) = request.into_parts();
        let body = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("request body over {MAX_BODY} bytes, or unreadable"),
            )
        })?;
        Ok(Incoming {
            method: parts.method,
            uri: parts.uri,
            headers: parts.headers,
            body,
        })
    }
}

/// Runs `local` if this node leads; otherwise relays the request to the
/// leader.
pub(super) async fn on_leader<F, Fut>(admin: &Admin, incoming: Incoming, local: F) -> Response
where
    F: FnOnce(Arc<Manager>, Bytes) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let Some(manager) = admin.manager.clone() else {
        return error(
            StatusCode::CONFLICT,
            "a standalone node has no cluster to change",
        );
    };
    if manager.is_leader() {
        return local(manager, incoming.body).await;
    }
    let no_leader = || {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no Raft leader is known: the cluster has no majority, so metadata changes are \
             refused",
        )
    };
    if incoming.headers.contains_key(FORWARDED) {
        return no_leader();
    }
    let Some((_, leader)) = manager.leader() else {
        return no_leader();
    };
    let path = incoming
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let mut request = admin
        .http
        .request(
            incoming.method,
            manager.peers().transport().admin_url(&leader, &path),
        )
        .header(FORWARDED, "1")
        .body(incoming.body);
    // The leader checks the caller's own credentials again.
    for name in [
        axum::http::header::CONTENT_TYPE,
        axum::http::header::AUTHORIZATION,
    ] {
        if let Some(value) = incoming.headers.get(&name) {
            request = request.header(name, value);
        }
    }
    match request.send().await {
        Ok(response) => {
            let status = response.status();
            let ct = response
                .headers()
                .get(axum::http::header::CONTENT_TYPE)
                .cloned();
            let body = response.bytes().await.unwrap_or_default();
            let mut out = (status, body).into_response();
            if let Some(ct) = ct {
                out.headers_mut()
                    .insert(axum::http::header::CONTENT_TYPE, ct);
            }
            out
        }
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("the Raft leader at {leader} did not answer ({e}); retry"),
        ),
    }
}

/// `POST /pools/default/buckets`.
pub(super) async fn create_bucket(State(admin): State<Admin>, incoming: Incoming) -> Response {
    on_leader(&admin, incoming, |manager, body| async move {
        let (mut params, password) = match parse_bucket_form(&body) {
            Ok(form) => (form.spec, form.password),
            Err(m) => return error(StatusCode::BAD_REQUEST, &m),
        };
        if let Some(password) = password {
            match hash_password(password).await {
                Ok(hash) => params.password = Some(hash),
                Err(response) => return response,
            }
        }
        let state = manager.state();
        if state.buckets.contains_key(&params.name) {
            return error(
                StatusCode::CONFLICT,
                &format!("bucket {:?} already exists", params.name),
            );
        }
        let servers = state.active_nodes();
        if servers.is_empty() {
            return error(StatusCode::CONFLICT, "the cluster has no active node");
        }
        let chains = match params.kind {
            BucketKind::Membase => {
                let idx: Vec<u16> = (0..servers.len() as u16).collect();
                match fresh_map(params.num_vbuckets as usize, &idx, params.replicas as usize) {
                    Ok(map) => map.to_chains(),
                    Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
                }
            }
            BucketKind::Memcached => Vec::new(),
        };
        let record = BucketRecord {
            spec: params,
            uuid: uuid(),
            servers,
            chains,
            forward: None,
            rev: 0,
        };
        match manager.write(Command::CreateBucket(record)).await {
            Ok(()) => StatusCode::ACCEPTED.into_response(),
            Err(e) => manager_error(e),
        }
    })
    .await
}

/// `POST /pools/default/buckets/<b>`: changes what can change while the
/// bucket runs — `authType`/`saslPassword`, `flushEnabled`,
/// `durabilityMinLevel`; any other setting is refused, naming it.
pub(super) async fn edit_bucket(
    State(admin): State<Admin>,
    Path(bucket): Path<String>,
    incoming: Incoming,
) -> Response {
    on_leader(&admin, incoming, |manager, body| async move {
        let form = form(&body);
        let edit = match bucket_edit(bucket, &form) {
            Ok(edit) => edit,
            Err(m) => return error(StatusCode::BAD_REQUEST, &m),
        };
        let (mut edit, password) = edit;
        if let Some(password) = password {
            match hash_password(password).await {
                Ok(hash) => edit.password = Some(Some(hash)),
                Err(response) => return response,
            }
        }
        match manager.write(Command::EditBucket(edit)).await {
            Ok(()) => StatusCode::OK.into_response(),
            Err(e) => manager_error(e),
        }
    })
    .await
}

/// The settings a bucket edit form changes, and the new password in the
/// clear (hashed by the caller).
fn bucket_edit(
    name: String,
    form: &BTreeMap<String, String>,
) -> Result<(BucketEdit, Option<String>), String> {
    const EDITABLE: [&str; 4] = [
        "authType",
        "saslPassword",
        "flushEnabled",
        "durabilityMinLevel",
    ];
    if let Some(other) = form
        .keys()
        .find(|k| !EDITABLE.contains(&k.as_str()) && *k != "name")
    {
        return Err(format!(
            "{other} cannot be changed on an existing bucket (only {})",
            EDITABLE.join(", ")
        ));
    }
    let touches_auth = form.contains_key("authType") || form.contains_key("saslPassword");
    let password = sasl_password(form)?;
    let durability = match form.get("durabilityMinLevel") {
        None => None,
        Some(d) => Some(
            Durability::parse(d)
                .ok_or_else(|| format!("durabilityMinLevel {d:?} is not a level"))?,
        ),
    };
    let edit = BucketEdit {
        name,
        // `authType=none` opens the bucket; a new password replaces the
        // old one once hashed.
        password: (touches_auth && password.is_none()).then_some(None),
        flush_enabled: flush_enabled(form)?,
        durability,
    };
    Ok((edit, password))
}

/// `DELETE /pools/default/buckets/<b>`.
pub(super) async fn delete_bucket(
    State(admin): State<Admin>,
    Path(bucket): Path<String>,
    incoming: Incoming,
) -> Response {
    on_leader(&admin, incoming, |manager, _| async move {
        match manager.write(Command::DeleteBucket { name: bucket }).await {
            Ok(()) => StatusCode::OK.into_response(),
            Err(e) => manager_error(e),
        }
    })
    .await
}

/// `POST /controller/addNode` with `hostname=host[:adminport]`.
pub(super) async fn add_node(State(admin): State<Admin>, incoming: Incoming) -> Response {
    on_leader(&admin, incoming, |manager, body| async move {
        let form = form(&body);
        let Some(hostname) = form.get("hostname").filter(|h| !h.is_empty()) else {
            return error(StatusCode::BAD_REQUEST, "hostname is required");
        };
        let hostname = add_node_target(hostname);
        let token = form.get("joinToken").map(String::as_str);
        match manager.add_node(&hostname, token).await {
            Ok(record) => json(serde_json::json!({ "otpNode": record.otp_node() }).to_string()),
            Err(e) => manager_error(e),
        }
    })
    .await
}

/// The node `addNode` names: `host[:port]` (plain, port 8091 by default)
/// or `https://host[:port]` (its HTTPS admin port, 18091 by default, as a
/// cluster with node-to-node TLS needs).
fn add_node_target(hostname: &str) -> String {
    let hostname = hostname.trim_end_matches('/');
    let (scheme, rest, default_port) = match hostname.strip_prefix("https://") {
        Some(rest) => ("https://", rest, 18091),
        None => ("", hostname.trim_start_matches("http://"), 8091),
    };
    // A port follows the last colon, unless it closes an IPv6 literal.
    let has_port = rest
        .rsplit_once(':')
        .is_some_and(|(_, port)| !port.ends_with(']'))
        && (!rest.starts_with('[') || rest.contains("]:"));
    if has_port {
        format!("{scheme}{rest}")
    } else {
        format!("{scheme}{rest}:{default_port}")
    }
}

/// `POST /controller/ejectNode` with `otpNode=ns_<id>@host` (or the
/// node's `host:adminport`).
pub(super) async fn eject_node(State(admin): State<Admin>, incoming: Incoming) -> Response {
    on_leader(&admin, incoming, |manager, body| async move {
        let node = match find_node(&manager, &form(&body)) {
            Ok(node) => node,
            Err(response) => return response,
        };
        match manager.eject_node(node.id).await {
            Ok(()) => StatusCode::OK.into_response(),
            Err(e) => manager_error(e),
        }
    })
    .await
}

/// `POST /controller/failOver` with `otpNode=ns_<id>@host` (or
/// `host:adminport`) and optionally `allowUnsafe=true`.
pub(super) async fn fail_over(State(admin): State<Admin>, incoming: Incoming) -> Response {
    on_leader(&admin, incoming, |manager, body| async move {
        let form = form(&body);
        let node = match find_node(&manager, &form) {
            Ok(node) => node,
            Err(response) => return response,
        };
        let allow_unsafe = form.get("allowUnsafe").is_some_and(|v| v == "true");
        match manager.fail_over(node.id, allow_unsafe).await {
            Ok(()) => StatusCode::OK.into_response(),
            Err(e) => manager_error(e),
        }
    })
    .await
}

/// `POST /controller/rebalance` with `knownNodes` (every node taking
/// part, comma-separated otpNodes) and `ejectedNodes` (those to remove):
/// starts the rebalance on the leader and answers at once; progress is in
/// `/pools/default/rebalanceProgress`.
pub(super) async fn rebalance(State(admin): State<Admin>, incoming: Incoming) -> Response {
    on_leader(&admin, incoming, |manager, body| async move {
        let form = form(&body);
        let state = manager.state();
        // Errors as text: a `Response` is too big to pass around in a Result.
        let ids = |key: &str| -> Result<Vec<u64>, String> {
            let list = form.get(key).map(String::as_str).unwrap_or("");
            list.split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(|wanted| {
                    state
                        .nodes
                        .values()
                        .find(|n| n.otp_node() == wanted || n.admin_address() == wanted)
                        .map(|n| n.id)
                        .ok_or_else(|| format!("{key}: no node {wanted:?} in the cluster"))
                })
                .collect()
        };
        let known = match ids("knownNodes") {
            Ok(k) if !k.is_empty() => k,
            Ok(_) => return error(StatusCode::BAD_REQUEST, "knownNodes is required"),
            Err(e) => return error(StatusCode::BAD_REQUEST, &e),
        };
        let ejected = match ids("ejectedNodes") {
            Ok(e) => e,
            Err(e) => return error(StatusCode::BAD_REQUEST, &e),
        };
        match manager.start_rebalance(known, ejected) {
            Ok(()) => StatusCode::OK.into_response(),
            Err(e) => manager_error(e),
        }
    })
    .await
}

/// `GET /pools/default/rebalanceProgress`, answered by the leader (which
/// runs any rebalance), so every node gives the same answer.
pub(super) async fn rebalance_progress(State(admin): State<Admin>, incoming: Incoming) -> Response {
    on_leader(&admin, incoming, |manager, _body| async move {
        super::json(super::pools::rebalance_progress_body(&manager))
    })
    .await
}

/// `POST /controller/stopRebalance`.
pub(super) async fn stop_rebalance(State(admin): State<Admin>, incoming: Incoming) -> Response {
    on_leader(&admin, incoming, |manager, _body| async move {
        manager.rebalancer.stop();
        StatusCode::OK.into_response()
    })
    .await
}

/// `POST /settings/autoFailover` with `enabled=true|false` and
/// `timeout=<seconds>` (kept as is when absent).
pub(super) async fn set_auto_failover(State(admin): State<Admin>, incoming: Incoming) -> Response {
    on_leader(&admin, incoming, |manager, body| async move {
        let form = form(&body);
        let enabled = match form.get("enabled").map(String::as_str) {
            Some("true") => true,
            Some("false") => false,
            _ => return error(StatusCode::BAD_REQUEST, "enabled must be true or false"),
        };
        let mut settings = manager.state().auto_failover;
        if let Some(t) = form.get("timeout") {
            match t.parse::<u32>() {
                Ok(t) => settings.timeout_s = t,
                Err(_) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        &format!("timeout must be a whole number of seconds (got {t:?})"),
                    )
                }
            }
        }
        settings.enabled = enabled;
        match manager.write(Command::SetAutoFailover(settings)).await {
            Ok(()) => StatusCode::OK.into_response(),
            Err(e) => manager_error(e),
        }
    })
    .await
}

/// The node a form's `otpNode` names (an otpNode or `host:adminport`).
#[allow(clippy::result_large_err)]
pub(super) fn find_node(
    manager: &Manager,
    form: &BTreeMap<String, String>,
) -> Result<NodeRecord, Response> {
    let Some(wanted) = form.get("otpNode").filter(|n| !n.is_empty()) else {
        return Err(error(StatusCode::BAD_REQUEST, "otpNode is required"));
    };
    manager
        .state()
        .nodes
        .values()
        .find(|n| n.otp_node() == *wanted || n.admin_address() == *wanted)
        .cloned()
        .ok_or_else(|| {
            error(
                StatusCode::NOT_FOUND,
                &format!("no node {wanted:?} in the cluster"),
            )
        })
}

/// A fresh bucket UUID (32 hex digits), unique enough to tell a bucket
/// from an earlier one of the same name.
fn uuid() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut out = String::with_capacity(32);
    for salt in 0..2u8 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u8(salt);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Result<BucketSpec, String> {
        let body: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        bucket_params(&form(body.as_bytes()))
    }

    #[test]
    fn add_node_names_a_plain_or_https_admin_address() {
        assert_eq!(add_node_target("10.0.0.2"), "10.0.0.2:8091");
        assert_eq!(add_node_target("http://10.0.0.2:9000/"), "10.0.0.2:9000");
        assert_eq!(
            add_node_target("https://10.0.0.2"),
            "https://10.0.0.2:18091"
        );
        assert_eq!(
            add_node_target("https://10.0.0.2:13001"),
            "https://10.0.0.2:13001"
        );
        assert_eq!(add_node_target("[::1]"), "[::1]:8091");
        assert_eq!(
            add_node_target("https://[::1]:13001"),
            "https://[::1]:13001"
        );
    }

    #[test]
    fn defaults_and_aliases() {
        let p = params(&[("name", "b"), ("ramQuotaMB", "100")]).unwrap();
        assert_eq!(p.kind, BucketKind::Membase);
        assert_eq!((p.replicas, p.num_vbuckets), (1, 1024));
        assert_eq!(p.durability, Durability::None);
        let p = params(&[
            ("name", "b"),
            ("bucketType", "couchbase"),
            ("ramQuotaMB", "100"),
            ("replicaNumber", "2"),
            ("durabilityMinLevel", "majority"),
            ("numVBuckets", "64"),
        ])
        .unwrap();
        assert_eq!((p.replicas, p.num_vbuckets), (2, 64));
        assert_eq!(p.durability, Durability::Majority);
        let p = params(&[
            ("name", "m"),
            ("bucketType", "memcached"),
            ("ramQuotaMB", "8"),
        ])
        .unwrap();
        assert_eq!(
            (p.kind, p.replicas, p.num_vbuckets),
            (BucketKind::Memcached, 0, 1)
        );
    }

    #[test]
    fn every_bad_parameter_is_named() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("ramQuotaMB", "100")], "name"),
            (&[("name", ".x"), ("ramQuotaMB", "100")], "name"),
            (&[("name", "a/b"), ("ramQuotaMB", "100")], "name"),
            (&[("name", "b")], "ramQuotaMB"),
            (&[("name", "b"), ("ramQuotaMB", "lots")], "ramQuotaMB"),
            (&[("name", "b"), ("ramQuotaMB", "0")], "ramQuotaMB"),
            (
                &[
                    ("name", "b"),
                    ("ramQuotaMB", "1"),
                    ("bucketType", "ephemeral"),
                ],
                "bucketType",
            ),
            (
                &[("name", "b"), ("ramQuotaMB", "1"), ("replicaNumber", "4")],
                "replicaNumber",
            ),
            (
                &[("name", "b"), ("ramQuotaMB", "1"), ("replicaNumber", "-1")],
                "replicaNumber",
            ),
            (
                &[("name", "b"), ("ramQuotaMB", "1"), ("numVBuckets", "1000")],
                "numVBuckets",
            ),
            (
                &[
                    ("name", "b"),
                    ("ramQuotaMB", "1"),
                    ("durabilityMinLevel", "x"),
                ],
                "durabilityMinLevel",
            ),
            (
                &[
                    ("name", "b"),
                    ("ramQuotaMB", "1"),
                    ("bucketType", "memcached"),
                    ("replicaNumber", "1"),
                ],
                "replicaNumber",
            ),
        ];
        for (pairs, field) in cases {
            let message = params(pairs).unwrap_err();
            assert!(message.contains(field), "{pairs:?}: {message}");
        }
    }

    #[test]
    fn uuids_differ() {
        assert_ne!(uuid(), uuid());
        assert_eq!(uuid().len(), 32);
    }
}
