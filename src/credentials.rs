//! Admin credentials from the command line, the environment or a file —
//! shared by `shoal node`, `shoal up` and `shoal ctl` — and the
//! credentials file `shoal up` writes (`username=…` and `password=…`
//! lines, mode 0600), which `shoal ctl` finds by itself. A password given
//! as a flag is visible to every user of the machine (in the process
//! list): prefer `SHOAL_PASSWORD`, `--password-file` or `--credentials`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;
use shoal_node::config::Credentials;

/// The user `shoal up` makes when none is given (Couchbase's default
/// administrator name).
pub const DEFAULT_USER: &str = "Administrator";

/// Where credentials come from.
#[derive(Debug, Args, Clone, Default)]
pub struct CredentialArgs {
    /// Admin user name.
    #[arg(long, env = "SHOAL_USERNAME")]
    pub username: Option<String>,
    /// Admin password. Visible in the process list: prefer SHOAL_PASSWORD,
    /// --password-file or --credentials.
    #[arg(long, env = "SHOAL_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// A file whose first line is the admin password.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// A credentials file as `shoal up` writes it (`username=…` and
    /// `password=…` lines).
    #[arg(long, value_name = "FILE")]
    pub credentials: Option<PathBuf>,
}

impl CredentialArgs {
    /// The credentials these arguments give, if any: a credentials file
    /// first, then a password file or the password (flag or environment)
    /// with the user name (default [`DEFAULT_USER`]).
    pub fn resolve(&self) -> anyhow::Result<Option<Credentials>> {
        if let Some(path) = &self.credentials {
            return read_credentials(path).map(Some);
        }
        let password = match (&self.password_file, &self.password) {
            (Some(path), _) => Some(read_password_file(path)?),
            (None, Some(password)) => Some(password.clone()),
            (None, None) => None,
        };
        Ok(password.map(|password| Credentials {
            username: self
                .username
                .clone()
                .unwrap_or_else(|| DEFAULT_USER.to_string()),
            password,
        }))
    }
}

/// The first line of `path`, without its line end.
pub fn read_password_file(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the password file {}", path.display()))?;
    let password = text.lines().next().unwrap_or("").to_string();
    anyhow::ensure!(!password.is_empty(), "{} holds no password", path.display());
    Ok(password)
}

/// Reads a credentials file (`username=…`, `password=…`).
pub fn read_credentials(path: &Path) -> anyhow::Result<Credentials> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the credentials file {}", path.display()))?;
    let mut username = None;
    let mut password = None;
    for line in text.lines() {
        match line.split_once('=') {
            Some(("username", v)) => username = Some(v.to_string()),
            Some(("password", v)) => password = Some(v.to_string()),
            _ => {}
        }
    }
    match (username, password) {
        (Some(username), Some(password)) => Ok(Credentials { username, password }),
        _ => anyhow::bail!(
            "{} must hold a username= and a password= line",
            path.display()
        ),
    }
}

/// Writes a credentials file readable by its owner only.
pub fn write_credentials(path: &Path, credentials: &Credentials) -> anyhow::Result<()> {
    let text = format!(
        "username={}\npassword={}\n",
        credentials.username, credentials.password
    );
    shoal_node::access::write_private(path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_round_trip_and_stay_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("shoal-creds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("credentials");
        let creds = Credentials {
            username: "Administrator".into(),
            password: "p=ss:word".into(),
        };
        write_credentials(&path, &creds).unwrap();
        assert_eq!(read_credentials(&path).unwrap(), creds);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let args = CredentialArgs {
            credentials: Some(path.clone()),
            ..CredentialArgs::default()
        };
        assert_eq!(args.resolve().unwrap(), Some(creds));
        std::fs::write(dir.join("pw"), "secret\n").unwrap();
        let args = CredentialArgs {
            username: Some("u".into()),
            password: Some("ignored".into()),
            password_file: Some(dir.join("pw")),
            ..CredentialArgs::default()
        };
        let got = args.resolve().unwrap().unwrap();
        assert_eq!(
            (got.username.as_str(), got.password.as_str()),
            ("u", "secret")
        );
        assert_eq!(CredentialArgs::default().resolve().unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
