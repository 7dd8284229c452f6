//! Every route of the admin port and who may call it: the table the router
//! is built from ([`table`]), so a route cannot exist without an
//! [`Access`], and the guard that enforces it before any handler runs.
//!
//! Credentials are HTTP Basic: an admin user (full or read-only), a
//! bucket's name and password (for that bucket's config), or the cluster's
//! own user with the cluster secret (other nodes). No credentials, or wrong
//! ones, get 401 with `WWW-Authenticate`; credentials that may not do what
//! is asked get 403. Nothing changes either way. A request that would
//! change something and comes from another site's page (its `Origin` is
//! not this host, or `Sec-Fetch-Site` says `cross-site`) gets 403 too, so
//! a browser holding an admin's credentials cannot be driven by another
//! site.

use axum::extract::{MatchedPath, RawPathParams, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put, MethodRouter};

use super::{controller, error, internal, pools, raft, recovery, users, Admin};
use crate::access::Principal;

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone (what Couchbase leaves open: `/pools`; a node's identity;
    /// the join hand-off, which checks its own conditions).
    Public,
    /// Anyone for a bucket without a password; for one with a password,
    /// its own credentials or any admin user.
    BucketConfig,
    /// Any admin user (read-only included) or the cluster.
    Read,
    /// A full admin user or the cluster.
    Change,
    /// The cluster alone: other nodes, proving the cluster secret.
    Cluster,
}

/// One route: method, path (axum's syntax) and who may call it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// The HTTP method.
    pub method: &'static str,
    /// The path, with `{name}` for parameters.
    pub path: &'static str,
    /// Who may call it.
    pub access: Access,
}

/// Every route with its handler: the one list the router is built from.
pub(super) fn table() -> Vec<(Route, MethodRouter<Admin>)> {
    use Access::*;
    let r = |method, path, access| Route {
        method,
        path,
        access,
    };
    vec![
        (r("GET", "/pools", Public), get(pools::pools)),
        (r("GET", "/pools/default", Read), get(pools::pool_default)),
        (r("GET", "/pools/nodes", Read), get(pools::pool_default)),
        (
            r("POST", "/pools/default", Change),
            post(recovery::set_pool),
        ),
        (
            r("GET", "/pools/default/buckets", Read),
            get(pools::buckets),
        ),
        (
            r("POST", "/pools/default/buckets", Change),
            post(controller::create_bucket),
        ),
        (
            r("GET", "/pools/default/buckets/{bucket}", BucketConfig),
            get(pools::bucket),
        ),
        (
            r("POST", "/pools/default/buckets/{bucket}", Change),
            post(controller::edit_bucket),
        ),
        (
            r("DELETE", "/pools/default/buckets/{bucket}", Change),
            delete(controller::delete_bucket),
        ),
        (
            r("GET", "/pools/default/b/{bucket}", BucketConfig),
            get(pools::bucket),
        ),
        (
            r(
                "GET",
                "/pools/default/bucketsStreaming/{bucket}",
                BucketConfig,
            ),
            get(pools::bucket_stream),
        ),
        (
            r("GET", "/pools/default/bs/{bucket}", BucketConfig),
            get(pools::bucket_stream),
        ),
        (r("GET", "/pools/default/tasks", Read), get(pools::tasks)),
        (
            r("GET", "/pools/default/rebalanceProgress", Read),
            get(controller::rebalance_progress),
        ),
        (
            r("POST", "/controller/addNode", Change),
            post(controller::add_node),
        ),
        (
            r("POST", "/controller/ejectNode", Change),
            post(controller::eject_node),
        ),
        (
            r("POST", "/controller/failOver", Change),
            post(controller::fail_over),
        ),
        (
            r("POST", "/controller/startGracefulFailover", Change),
            post(recovery::graceful_failover),
        ),
        (
            r("POST", "/controller/setRecoveryType", Change),
            post(recovery::set_recovery_type),
        ),
        (
            r("POST", "/controller/rebalance", Change),
            post(controller::rebalance),
        ),
        (
            r("POST", "/controller/stopRebalance", Change),
            post(controller::stop_rebalance),
        ),
        (
            r("GET", "/settings/autoFailover", Read),
            get(pools::auto_failover),
        ),
        (
            r("POST", "/settings/autoFailover", Change),
            post(controller::set_auto_failover),
        ),
        (r("GET", "/settings/rbac/users", Read), get(users::list)),
        (
            r("PUT", "/settings/rbac/users/local/{user}", Change),
            put(users::set),
        ),
        (
            r("DELETE", "/settings/rbac/users/local/{user}", Change),
            delete(users::delete),
        ),
        (
            r("GET", "/internal/nodeInfo", Public),
            get(internal::node_info),
        ),
        (r("GET", "/internal/alerts", Cluster), get(pools::alerts)),
        (r("GET", "/internal/lease", Cluster), get(internal::lease)),
        (
            r("GET", "/internal/whoami", Cluster),
            get(internal::node_info),
        ),
        (r("POST", "/internal/join", Public), post(internal::join)),
        (
            r("POST", "/internal/bucketConfig", Cluster),
            post(internal::adopt),
        ),
        (
            r("GET", "/internal/seqnos/{bucket}", Cluster),
            get(internal::seqnos),
        ),
        (
            r("GET", "/internal/vbuckets/{bucket}", Cluster),
            get(internal::vbuckets),
        ),
        (
            r("POST", "/internal/raft/append", Cluster),
            post(raft::append),
        ),
        (r("POST", "/internal/raft/vote", Cluster), post(raft::vote)),
        (
            r("POST", "/internal/raft/snapshot", Cluster),
            post(raft::snapshot),
        ),
    ]
}

/// Every route of the admin port (for tests that walk them all).
pub fn routes() -> Vec<Route> {
    table().into_iter().map(|(route, _)| route).collect()
}

/// The access rule of the route `path` answers `method` on, if any.
fn access_of(method: &Method, path: &str) -> Option<Access> {
    // HEAD is served by the GET route.
    let method = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    // Built per request: 31 small entries, cheaper than the password check
    // that follows and far off any data path.
    table()
        .into_iter()
        .find(|(r, _)| r.method == method && r.path == path)
        .map(|(r, _)| r.access)
}

/// Runs before every routed handler: refuses cross-site changes, works out
/// the principal, checks the route's [`Access`] and hands the principal on
/// to the handler (as a request extension).
pub(super) async fn guard(
    State(admin): State<Admin>,
    matched: MatchedPath,
    params: RawPathParams,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(access) = access_of(request.method(), matched.as_str()) else {
        // A method the path does not serve: the router answers 405.
        return next.run(request).await;
    };
    let changes = !matches!(*request.method(), Method::GET | Method::HEAD);
    if changes && cross_site(request.headers()) {
        return error(
            StatusCode::FORBIDDEN,
            "cross-site requests may not change the cluster",
        );
    }
    let bucket = params
        .iter()
        .find(|(name, _)| *name == "bucket")
        .map(|(_, value)| value.to_string());
    let principal = match principal(&admin, request.headers()).await {
        Ok(principal) => principal,
        Err(()) if access == Access::Public => Principal::Anonymous,
        Err(()) => return unauthorized(),
    };
    if !allowed(&admin, access, &principal, bucket.as_deref()) {
        return if principal == Principal::Anonymous {
            unauthorized()
        } else {
            error(StatusCode::FORBIDDEN, "these credentials may not do this")
        };
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}

/// Whether `principal` may call a route with `access` (on `bucket`, for a
/// bucket's config).
fn allowed(admin: &Admin, access: Access, principal: &Principal, bucket: Option<&str>) -> bool {
    match access {
        Access::Public => true,
        Access::BucketConfig => match bucket.and_then(|b| admin.bucket_password(b)) {
            // No such bucket (the handler says so) or no password.
            None | Some(None) => true,
            Some(Some(_)) => {
                principal.may_read_cluster()
                    || bucket.is_some_and(|b| principal.may_use_bucket(b, true))
            }
        },
        Access::Read => principal.may_read_cluster(),
        Access::Change => principal.is_admin(),
        Access::Cluster => principal.is_cluster(),
    }
}

/// The principal a request's `Authorization` proves: anonymous without
/// one, `Err` for credentials that are malformed or wrong. A password
/// check that misses the cache costs a PBKDF2, so it runs off the async
/// threads.
async fn principal(admin: &Admin, headers: &HeaderMap) -> Result<Principal, ()> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(Principal::Anonymous);
    };
    let credentials = shoal_auth::basic::parse(value.as_bytes()).map_err(|_| ())?;
    let admin = admin.clone();
    let checked = tokio::task::spawn_blocking(move || {
        let passwords = |name: &str| admin.bucket_password(name);
        admin.auth.password(
            &credentials.user,
            credentials.password.as_bytes(),
            &passwords,
        )
    })
    .await;
    checked.ok().flatten().ok_or(())
}

/// Whether a request comes from another site's page: its `Origin` names
/// another host than the one it was sent to, or the browser says so.
fn cross_site(headers: &HeaderMap) -> bool {
    let fetch_site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if fetch_site == Some("cross-site") {
        return true;
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    Some(origin_host.trim_end_matches('/')) != host
}

/// 401 with the challenge browsers and tools answer with Basic
/// credentials.
fn unauthorized() -> Response {
    let mut response = error(StatusCode::UNAUTHORIZED, "authentication required");
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Basic realm=\"Shoal\""),
    );
    response.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_listed_once_and_internal_ones_are_the_clusters() {
        let routes = routes();
        let mut seen = std::collections::BTreeSet::new();
        for r in &routes {
            assert!(seen.insert((r.method, r.path)), "{r:?} twice");
            if r.path.starts_with("/internal/") && r.path != "/internal/nodeInfo" {
                assert!(
                    r.access == Access::Cluster || r.path == "/internal/join",
                    "{r:?} must be the cluster's"
                );
            }
            if r.method != "GET" {
                assert_ne!(r.access, Access::Read, "{r:?}: a change needs Change");
                assert_ne!(
                    r.access,
                    Access::BucketConfig,
                    "{r:?}: a change needs Change"
                );
            }
        }
    }

    #[test]
    fn cross_site_requests_are_told_apart() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, header::HeaderValue::from_static(v));
            }
            h
        };
        assert!(!cross_site(&headers(&[("host", "10.0.0.1:8091")])));
        assert!(!cross_site(&headers(&[
            ("host", "10.0.0.1:8091"),
            ("origin", "http://10.0.0.1:8091")
        ])));
        assert!(cross_site(&headers(&[
            ("host", "10.0.0.1:8091"),
            ("origin", "http://evil.example")
        ])));
        assert!(cross_site(&headers(&[("sec-fetch-site", "cross-site")])));
        assert!(!cross_site(&headers(&[("sec-fetch-site", "same-origin")])));
    }

    #[test]
    fn access_follows_the_table() {
        assert_eq!(access_of(&Method::GET, "/pools"), Some(Access::Public));
        assert_eq!(
            access_of(&Method::HEAD, "/pools/default"),
            Some(Access::Read)
        );
        assert_eq!(
            access_of(&Method::DELETE, "/pools/default/buckets/{bucket}"),
            Some(Access::Change)
        );
        assert_eq!(access_of(&Method::PATCH, "/pools"), None);
    }
}
