//! [`Session`]: who a connection is and which bucket it works on.
//!
//! A connection starts as nobody ([`Principal::Anonymous`]) on bucket
//! `default` when the node has one and it has no password; with a
//! password it starts on no bucket and is told to authenticate. SASL
//! (PLAIN, or SCRAM-SHA512/256/1 in two steps) proves a principal: a
//! bucket's own name and password select that bucket (Membase's way), an
//! admin user or the cluster itself may then select any bucket.
//! SELECT_BUCKET picks a bucket the principal may use. The selected
//! bucket's `Arc<LiveBucket>` is held, so requests take no lock to find it;
//! when it is deleted the connection closes after its current batch.

use std::sync::Arc;

use shoal_auth::plain;
use shoal_auth::scram::{self, Mechanism, ServerFirst};
use shoal_protocol::Limits;
use tokio::sync::watch;

use crate::access::{Authenticator, Principal};
use crate::bucket::{Buckets, LiveBucket, ServerStats, DEFAULT_BUCKET};

/// The mechanisms SASL_LIST_MECHS offers, strongest first (Couchbase's
/// names and order).
pub(super) const MECHANISMS: &[u8] = b"SCRAM-SHA512 SCRAM-SHA256 SCRAM-SHA1 PLAIN";

/// A connection's principal and bucket, and where it can select another.
pub(super) struct Session {
    /// The selected bucket; `None` until one is (a node without an open
    /// `default`).
    ctx: Option<Arc<LiveBucket>>,
    /// Fires when the selected bucket is deleted.
    pub(super) deleted: Option<watch::Receiver<bool>>,
    /// Where names are looked up.
    scope: Scope,
    /// The node's parser limits (the same for every bucket).
    pub(super) limits: Limits,
    /// The node's counters.
    pub(super) stats: Arc<ServerStats>,
    /// Who the connection proved it is.
    principal: Principal,
    /// `default` exists but has a password: until the connection
    /// authenticates, requests are told so rather than "no bucket".
    needs_auth: bool,
    /// A SCRAM exchange between its two steps, and who it will prove.
    scram: Option<(Mechanism, ServerFirst, Principal)>,
    /// Checks credentials.
    auth: Arc<Authenticator>,
}

/// Where a [`Session`] looks bucket names up.
enum Scope {
    /// Every bucket of a node.
    Node(Arc<Buckets>),
    /// One bucket and nothing else (`drive`).
    Single(Arc<LiveBucket>),
}

/// What SELECT_BUCKET (or a bucket's SASL login) found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Selection {
    /// The bucket is selected.
    Selected,
    /// No bucket of that name here.
    NoSuchBucket,
    /// The bucket has a password the connection has not proved.
    NoAccess,
}

/// The answer to one SASL request.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum SaslReply {
    /// Authenticated; the bytes are the reply's value.
    Done(Vec<u8>),
    /// SCRAM's server-first message: send SASL_STEP next.
    Continue(Vec<u8>),
    /// Wrong credentials, unknown mechanism or malformed message.
    Failed,
}

// === impl Session ===

impl Session {
    /// A session of a connection to the node of `buckets`, as nobody, on
    /// `default` if the node has one without a password.
    pub(super) fn on_node(buckets: Arc<Buckets>, auth: Arc<Authenticator>) -> Session {
        let mut session = Session {
            ctx: None,
            deleted: None,
            limits: *buckets.limits(),
            stats: buckets.stats().clone(),
            scope: Scope::Node(buckets),
            principal: Principal::Anonymous,
            needs_auth: false,
            scram: None,
            auth,
        };
        if let Some(ctx) = session.lookup(DEFAULT_BUCKET) {
            if ctx.is_protected() {
                session.needs_auth = true;
            } else {
                session.set_bucket(ctx);
            }
        }
        session
    }

    /// A session on `ctx`, which can select nothing else, acting as the
    /// cluster (harnesses drive every command through it).
    pub(super) fn on_bucket(ctx: Arc<LiveBucket>, auth: Arc<Authenticator>) -> Session {
        let mut session = Session {
            ctx: None,
            deleted: None,
            limits: ctx.limits,
            stats: ctx.stats.clone(),
            scope: Scope::Single(ctx.clone()),
            principal: Principal::Cluster,
            needs_auth: false,
            scram: None,
            auth,
        };
        session.set_bucket(ctx);
        session
    }

    /// The selected bucket.
    #[inline]
    pub(super) fn bucket(&self) -> Option<&Arc<LiveBucket>> {
        self.ctx.as_ref()
    }

    /// Who the connection is.
    pub(super) fn principal(&self) -> &Principal {
        &self.principal
    }

    /// The connection has no bucket because `default` wants a password:
    /// requests that need a bucket are told to authenticate.
    pub(super) fn needs_auth(&self) -> bool {
        self.needs_auth && self.ctx.is_none()
    }

    /// Whether the selected bucket has been deleted.
    pub(super) fn bucket_deleted(&self) -> bool {
        self.ctx.as_ref().is_some_and(|ctx| ctx.is_deleted())
    }

    /// Selects bucket `name` if the principal may use it; otherwise the
    /// selection stays as it was (as Couchbase keeps it).
    pub(super) fn select(&mut self, name: &[u8]) -> Selection {
        let Some(ctx) = std::str::from_utf8(name)
            .ok()
            .and_then(|name| self.lookup(name))
        else {
            return Selection::NoSuchBucket;
        };
        if !self.principal.may_use_bucket(&ctx.name, ctx.is_protected()) {
            return Selection::NoAccess;
        }
        self.set_bucket(ctx);
        Selection::Selected
    }

    /// SASL_AUTH with `mechanism` and its first message.
    pub(super) fn sasl_auth(&mut self, mechanism: &[u8], data: &[u8]) -> SaslReply {
        self.scram = None;
        if mechanism == b"PLAIN" {
            return self.plain(data);
        }
        let Some(mech) = Mechanism::parse(mechanism) else {
            return SaslReply::Failed;
        };
        let Ok(nonce) = scram::new_nonce() else {
            return SaslReply::Failed;
        };
        let mut proves = None;
        let lookup = |user: &str| {
            let passwords = |name: &str| self.bucket_password(name);
            let (credential, principal) = self.auth.scram(user, mech.0, &passwords)?;
            proves = Some(principal);
            Some(credential)
        };
        match ServerFirst::start(mech, data, lookup, &nonce) {
            Ok((server, reply)) => {
                // An unknown user goes on to fail at the proof, like a
                // wrong password.
                let principal = proves.unwrap_or(Principal::Anonymous);
                self.scram = Some((mech, server, principal));
                SaslReply::Continue(reply)
            }
            Err(_) => SaslReply::Failed,
        }
    }

    /// SASL_STEP: SCRAM's final message.
    pub(super) fn sasl_step(&mut self, mechanism: &[u8], data: &[u8]) -> SaslReply {
        let Some((mech, server, principal)) = self.scram.take() else {
            return SaslReply::Failed;
        };
        if Mechanism::parse(mechanism) != Some(mech) || principal == Principal::Anonymous {
            return SaslReply::Failed;
        }
        match server.finish(data) {
            Ok((_, server_final)) => {
                self.authenticated(principal);
                SaslReply::Done(server_final)
            }
            Err(_) => SaslReply::Failed,
        }
    }

    /// SASL PLAIN, in one step.
    fn plain(&mut self, data: &[u8]) -> SaslReply {
        let Ok(message) = plain::parse(data) else {
            return SaslReply::Failed;
        };
        let Ok(user) = std::str::from_utf8(message.user) else {
            return SaslReply::Failed;
        };
        let passwords = |name: &str| self.bucket_password(name);
        match self.auth.password(user, message.password, &passwords) {
            Some(principal) => {
                self.authenticated(principal);
                SaslReply::Done(b"Authenticated".to_vec())
            }
            None => SaslReply::Failed,
        }
    }

    /// The connection proved `principal`: a bucket's login selects that
    /// bucket; a selected bucket the new principal may not use is left.
    fn authenticated(&mut self, principal: Principal) {
        if let Principal::Bucket(name) = &principal {
            if let Some(ctx) = self.lookup(name) {
                self.set_bucket(ctx);
            }
        }
        self.principal = principal;
        let keep = self
            .ctx
            .as_ref()
            .is_none_or(|ctx| self.principal.may_use_bucket(&ctx.name, ctx.is_protected()));
        if !keep {
            self.ctx = None;
            self.deleted = None;
        }
    }

    /// The password of bucket `name` here: `None` for no such bucket,
    /// `Some(None)` for a bucket without one.
    fn bucket_password(&self, name: &str) -> Option<Option<shoal_auth::PasswordHash>> {
        self.lookup(name).map(|ctx| ctx.access().password.clone())
    }

    fn lookup(&self, name: &str) -> Option<Arc<LiveBucket>> {
        match &self.scope {
            Scope::Node(buckets) => buckets.get(name),
            Scope::Single(ctx) => (ctx.name == name && !ctx.is_deleted()).then(|| ctx.clone()),
        }
    }

    fn set_bucket(&mut self, ctx: Arc<LiveBucket>) {
        // The batch may have written to the bucket being left; the serve
        // loop only notifies the one selected when the batch ends.
        if let Some(old) = &self.ctx {
            old.wrote();
        }
        self.deleted = Some(ctx.deleted_signal());
        self.ctx = Some(ctx);
    }
}
