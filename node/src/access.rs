//! Who is asking and what they may do, for every port of the node.
//!
//! A request or connection acts as a [`Principal`]: nobody
//! ([`Principal::Anonymous`]), the cluster itself (a node proving the
//! cluster [`Secret`] as [`CLUSTER_USER`]), an admin user (full or
//! read-only, from the cluster metadata through a [`Directory`]) or a
//! bucket (its name and password, Membase-style). The
//! [`Authenticator`] turns credentials — a PLAIN or Basic password, or the
//! user side of a SCRAM exchange — into a principal; it caches successful
//! password checks ([`PasswordCache`]) because each one costs thousands of
//! HMACs. [`ClusterSecret`] holds the node's copy of the cluster secret,
//! kept in the data dir (mode 0600) and replaced when the node joins a
//! cluster.
//!
//! Layer 0 of the node: imports nothing of this crate (the cluster manager
//! implements [`Directory`]; the data service and the REST API use the
//! rest).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use shoal_auth::scram::Credential;
use shoal_auth::secret::CLUSTER_USER;
use shoal_auth::{Hash, PasswordHash, Secret};

/// What an admin user may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything (Couchbase's `admin`).
    Admin,
    /// Read every REST endpoint, change nothing (Couchbase's `ro_admin`).
    RoAdmin,
}

impl Role {
    /// The REST spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::RoAdmin => "ro_admin",
        }
    }

    /// Parses the REST spelling.
    pub fn parse(s: &str) -> Option<Role> {
        [Role::Admin, Role::RoAdmin]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

/// An admin user as the cluster metadata keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// What the user may do.
    pub role: Role,
    /// The password's salted hash (never the password).
    pub password: PasswordHash,
}

/// Who a request or a connection acts as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// No credentials.
    Anonymous,
    /// Another node of the cluster (it proved the cluster secret).
    Cluster,
    /// An admin user.
    User {
        /// The user's name.
        name: String,
        /// Full or read-only.
        role: Role,
    },
    /// A bucket's own credentials (its name, its password).
    Bucket(String),
}

impl Principal {
    /// May change the cluster (REST changes, any bucket's data).
    pub fn is_admin(&self) -> bool {
        matches!(
            self,
            Principal::Cluster
                | Principal::User {
                    role: Role::Admin,
                    ..
                }
        )
    }

    /// May read the cluster's internals over REST (any admin user).
    pub fn may_read_cluster(&self) -> bool {
        matches!(self, Principal::Cluster | Principal::User { .. })
    }

    /// May use bucket `name`, which is protected by a password or not.
    pub fn may_use_bucket(&self, name: &str, protected: bool) -> bool {
        !protected || self.is_admin() || matches!(self, Principal::Bucket(b) if b == name)
    }

    /// May run the cluster's own data-port commands (vbucket states, DCP).
    pub fn is_cluster(&self) -> bool {
        *self == Principal::Cluster
    }
}

/// The admin users, as the cluster metadata holds them.
pub trait Directory: Send + Sync + std::fmt::Debug {
    /// The user called `name`, if there is one.
    fn user(&self, name: &str) -> Option<UserRecord>;
}

/// A directory with no users: a standalone node, or one before its
/// cluster manager starts.
#[derive(Debug, Default)]
pub struct NoUsers;

impl Directory for NoUsers {
    fn user(&self, _name: &str) -> Option<UserRecord> {
        None
    }
}

/// How a bucket's password is looked up: `None` for no such bucket,
/// `Some(None)` for a bucket without a password.
pub type BucketPasswords<'a> = &'a dyn Fn(&str) -> Option<Option<PasswordHash>>;

/// Turns credentials into a [`Principal`].
#[derive(Debug)]
pub struct Authenticator {
    directory: ArcSwap<Arc<dyn Directory>>,
    secret: ClusterSecret,
    cache: PasswordCache,
    /// The SCRAM credential of a bucket without a password (its password
    /// is empty), computed the first time a client asks for it.
    open_bucket: std::sync::OnceLock<Option<PasswordHash>>,
}

impl Authenticator {
    /// An authenticator for the node holding `secret`, with no users until
    /// [`Authenticator::set_directory`].
    pub fn new(secret: ClusterSecret) -> Authenticator {
        Authenticator {
            directory: ArcSwap::from_pointee(Arc::new(NoUsers) as Arc<dyn Directory>),
            secret,
            cache: PasswordCache::default(),
            open_bucket: std::sync::OnceLock::new(),
        }
    }

    /// An authenticator with a random secret kept nowhere and no users:
    /// for harnesses that drive sessions without a node.
    pub fn in_memory() -> Authenticator {
        Authenticator {
            directory: ArcSwap::from_pointee(Arc::new(NoUsers) as Arc<dyn Directory>),
            secret: ClusterSecret::in_memory(
                Secret::generate()
                    .unwrap_or_else(|_| Secret::from_hex(&"5a".repeat(32)).expect("64 hex digits")),
            ),
            cache: PasswordCache::default(),
            open_bucket: std::sync::OnceLock::new(),
        }
    }

    /// Looks users up in `directory` from now on (the cluster manager,
    /// once it runs).
    pub fn set_directory(&self, directory: Arc<dyn Directory>) {
        self.directory.store(Arc::new(directory));
    }

    /// The node's copy of the cluster secret.
    pub fn secret(&self) -> &ClusterSecret {
        &self.secret
    }

    /// The principal `user` proves with `password`, if it does: the
    /// cluster (the secret), a bucket (its password; none for a bucket
    /// without one), or an admin user, in that order.
    pub fn password(
        &self,
        user: &str,
        password: &[u8],
        buckets: BucketPasswords<'_>,
    ) -> Option<Principal> {
        if user == CLUSTER_USER {
            return self
                .secret
                .current()
                .matches(password)
                .then_some(Principal::Cluster);
        }
        if let Some(bucket) = buckets(user) {
            let ok = match &bucket {
                Some(hash) => self.cache.check(user, password, hash),
                None => password.is_empty(),
            };
            return ok.then(|| Principal::Bucket(user.to_string()));
        }
        let record = self.directory.load().user(user)?;
        self.cache
            .check(user, password, &record.password)
            .then(|| Principal::User {
                name: user.to_string(),
                role: record.role,
            })
    }

    /// What a SCRAM exchange for `user` with `hash` checks against, and
    /// the principal it proves when it succeeds.
    pub fn scram(
        &self,
        user: &str,
        hash: Hash,
        buckets: BucketPasswords<'_>,
    ) -> Option<(Credential, Principal)> {
        let credential = |h: &PasswordHash| Credential {
            salt: h.salt().to_vec(),
            iterations: h.iterations(),
            keys: h.keys(hash).clone(),
        };
        if user == CLUSTER_USER {
            let secret = self.secret.credential()?;
            return Some((credential(&secret), Principal::Cluster));
        }
        if let Some(bucket) = buckets(user) {
            let stored = match bucket {
                Some(hash) => hash,
                None => self.open_bucket_credential()?,
            };
            return Some((credential(&stored), Principal::Bucket(user.to_string())));
        }
        let record = self.directory.load().user(user)?;
        let principal = Principal::User {
            name: user.to_string(),
            role: record.role,
        };
        Some((credential(&record.password), principal))
    }
}

impl Authenticator {
    /// The SCRAM credential of an open bucket: the empty password.
    fn open_bucket_credential(&self) -> Option<PasswordHash> {
        self.open_bucket
            .get_or_init(|| {
                PasswordHash::with_salt(
                    b"",
                    b"shoal-open-bucket",
                    shoal_auth::password::MIN_ITERATIONS,
                )
                .ok()
            })
            .clone()
    }
}

/// Successful password checks, so a client that logs in again (a REST
/// call, a new connection) does not cost another PBKDF2. Keyed by a keyed
/// hash of user and password (the password itself is never kept); an
/// entry counts only while the stored hash it was checked against is still
/// the user's.
#[derive(Debug)]
pub struct PasswordCache {
    /// Random per process: the keys mean nothing elsewhere.
    key: [u8; 32],
    /// Fingerprint of (user, password) → the stored key it matched. Why a
    /// std mutex: held only for one lookup or insert, never across an
    /// `.await`, and only when someone authenticates.
    verified: Mutex<HashMap<Vec<u8>, Vec<u8>>>,
}

/// Most cached checks; the cache is emptied when full (a flood of
/// different passwords only costs them their own PBKDF2s).
const CACHE_ENTRIES: usize = 4096;

impl Default for PasswordCache {
    fn default() -> Self {
        PasswordCache {
            // Without randomness the cache would still be correct, only
            // its keys predictable; they never leave the process.
            key: shoal_auth::random_bytes().unwrap_or([0x5a; 32]),
            verified: Mutex::new(HashMap::new()),
        }
    }
}

impl PasswordCache {
    /// Whether `password` is `user`'s, per `hash`.
    pub fn check(&self, user: &str, password: &[u8], hash: &PasswordHash) -> bool {
        let mut message = Vec::with_capacity(user.len() + 1 + password.len());
        message.extend_from_slice(user.as_bytes());
        message.push(0);
        message.extend_from_slice(password);
        let fingerprint = Hash::Sha256.hmac(&self.key, &message);
        let current = &hash.keys(Hash::Sha512).stored_key;
        let cached = self
            .lock()
            .get(&fingerprint)
            .is_some_and(|stored| stored == current);
        if cached {
            return true;
        }
        if !hash.verify(password) {
            return false;
        }
        let mut verified = self.lock();
        if verified.len() >= CACHE_ENTRIES {
            verified.clear();
        }
        verified.insert(fingerprint, current.clone());
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Vec<u8>>> {
        self.verified.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The node's copy of the cluster secret: made when the node first starts
/// (a node that initialises a cluster keeps it; one that joins takes the
/// cluster's), kept in `<data dir>/cluster-secret`, readable by the node's
/// user only.
#[derive(Clone, Debug)]
pub struct ClusterSecret {
    /// Where it is kept; `None` for one kept in memory only.
    path: Option<PathBuf>,
    current: Arc<ArcSwap<Secret>>,
    /// The SCRAM credential derived from a secret (its hex form and the
    /// credential), made the first time a node logs in with it. Why a std
    /// mutex: held for one clone or one store, never across an `.await`.
    credential: Arc<Mutex<Option<(String, PasswordHash)>>>,
}

/// The file the secret is kept in, inside the data dir.
pub const SECRET_FILE: &str = "cluster-secret";

impl ClusterSecret {
    /// Reads the secret from `data_dir`, or makes one and writes it.
    pub fn load_or_create(data_dir: &Path) -> std::io::Result<ClusterSecret> {
        let path = data_dir.join(SECRET_FILE);
        let secret = match std::fs::read_to_string(&path) {
            Ok(text) => Secret::from_hex(&text).ok_or_else(|| {
                std::io::Error::other(format!("{} is not a cluster secret", path.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let secret = Secret::generate().map_err(std::io::Error::other)?;
                write_private(&path, secret.to_hex().as_bytes())?;
                secret
            }
            Err(e) => return Err(e),
        };
        Ok(ClusterSecret {
            path: Some(path),
            current: Arc::new(ArcSwap::from_pointee(secret)),
            credential: Arc::new(Mutex::new(None)),
        })
    }

    /// A secret kept in memory only (harnesses).
    pub fn in_memory(secret: Secret) -> ClusterSecret {
        ClusterSecret {
            path: None,
            current: Arc::new(ArcSwap::from_pointee(secret)),
            credential: Arc::new(Mutex::new(None)),
        }
    }

    /// The secret now.
    pub fn current(&self) -> Arc<Secret> {
        self.current.load_full()
    }

    /// Replaces the secret (the node joined a cluster), on disk first.
    pub fn replace(&self, secret: Secret) -> std::io::Result<()> {
        if *self.current() == secret {
            return Ok(());
        }
        if let Some(path) = &self.path {
            write_private(path, secret.to_hex().as_bytes())?;
        }
        self.current.store(Arc::new(secret));
        Ok(())
    }

    /// The SCRAM credential of [`CLUSTER_USER`]: the secret's hex form as
    /// its password, salted with a hash of the secret. The secret is
    /// random, so the minimum iteration count protects it well enough and
    /// keeps each node-to-node login cheap.
    fn credential(&self) -> Option<PasswordHash> {
        let hex = self.current().to_hex();
        let mut cached = self
            .credential
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((for_hex, credential)) = cached.as_ref() {
            if *for_hex == hex {
                return Some(credential.clone());
            }
        }
        let salt = &Hash::Sha256.digest(hex.as_bytes())[..16];
        let derived =
            PasswordHash::with_salt(hex.as_bytes(), salt, shoal_auth::password::MIN_ITERATIONS)
                .ok()?;
        *cached = Some((hex, derived.clone()));
        Some(derived)
    }
}

/// Every file holding a secret (the cluster secret here, `shoal up`'s
/// credentials) is written by this one function: mode 0600, replaced
/// atomically.
pub use shoal_net::private::write_private;

#[cfg(test)]
mod tests {
    use super::*;

    fn quick(password: &str) -> PasswordHash {
        PasswordHash::with_salt(password.as_bytes(), b"saltsaltsaltsalt", 4096).unwrap()
    }

    #[derive(Debug)]
    struct OneUser(UserRecord);

    impl Directory for OneUser {
        fn user(&self, name: &str) -> Option<UserRecord> {
            (name == "Administrator").then(|| self.0.clone())
        }
    }

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("shoal-access-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn credentials_become_principals() {
        let data = dir("principals");
        let auth = Authenticator::new(ClusterSecret::load_or_create(&data).unwrap());
        auth.set_directory(Arc::new(OneUser(UserRecord {
            role: Role::RoAdmin,
            password: quick("reader"),
        })));
        let buckets = |name: &str| match name {
            "locked" => Some(Some(quick("bucketpw"))),
            "open" => Some(None),
            _ => None,
        };
        let hex = auth.secret().current().to_hex();
        assert_eq!(
            auth.password("@cluster", hex.as_bytes(), &buckets),
            Some(Principal::Cluster)
        );
        assert_eq!(auth.password("@cluster", b"guess", &buckets), None);
        assert_eq!(
            auth.password("locked", b"bucketpw", &buckets),
            Some(Principal::Bucket("locked".into()))
        );
        assert_eq!(auth.password("locked", b"nope", &buckets), None);
        assert_eq!(
            auth.password("open", b"", &buckets),
            Some(Principal::Bucket("open".into()))
        );
        assert_eq!(auth.password("open", b"x", &buckets), None);
        let reader = auth.password("Administrator", b"reader", &buckets).unwrap();
        assert!(reader.may_read_cluster() && !reader.is_admin());
        assert!(reader.may_use_bucket("open", false) && !reader.may_use_bucket("locked", true));
        assert_eq!(auth.password("Administrator", b"wrong", &buckets), None);
        assert_eq!(auth.password("nobody", b"", &buckets), None);
        assert!(auth.scram("locked", Hash::Sha512, &buckets).is_some());
        assert!(auth.scram("@cluster", Hash::Sha1, &buckets).is_some());
        assert!(auth.scram("nobody", Hash::Sha1, &buckets).is_none());
        std::fs::remove_dir_all(&data).unwrap();
    }

    #[test]
    fn the_secret_is_kept_private_and_survives_a_restart() {
        use std::os::unix::fs::PermissionsExt;
        let data = dir("secret");
        let first = ClusterSecret::load_or_create(&data).unwrap();
        let mode = std::fs::metadata(data.join(SECRET_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = ClusterSecret::load_or_create(&data).unwrap();
        assert_eq!(*first.current(), *again.current());
        let other = Secret::generate().unwrap();
        again.replace(other.clone()).unwrap();
        assert_eq!(
            *ClusterSecret::load_or_create(&data).unwrap().current(),
            other
        );
        std::fs::write(data.join(SECRET_FILE), "garbage").unwrap();
        assert!(ClusterSecret::load_or_create(&data).is_err());
        std::fs::remove_dir_all(&data).unwrap();
    }

    #[test]
    fn the_cache_forgets_a_changed_password() {
        let cache = PasswordCache::default();
        let old = quick("one");
        assert!(cache.check("u", b"one", &old));
        assert!(cache.check("u", b"one", &old), "cached");
        let new = PasswordHash::with_salt(b"two", b"othersaltothersa", 4096).unwrap();
        assert!(
            !cache.check("u", b"one", &new),
            "the old password no longer counts"
        );
        assert!(cache.check("u", b"two", &new));
    }
}
