//! `--tls-ca` end to end: the generator against a small memcached stand-in
//! behind a real TLS port (shoal-net's acceptor, certificates from a local
//! CA), with every reply checked as in any run. The stand-in knows ASCII
//! `get` and `set` and accepts any binary `SASL_AUTH`, which is all a run of
//! single-key gets and sets, with or without `--sasl-user`, sends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_loadgen::login::Credentials;
use shoal_loadgen::{run, Config, RunError};
use shoal_net::local_ca::LocalCa;
use shoal_net::{Stream, TlsAcceptor};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(5);

/// Stored items: key → (flags, data), as the `set` line gave them.
type Items = Arc<Mutex<HashMap<Vec<u8>, (Vec<u8>, Vec<u8>)>>>;

/// A scratch directory for one test's CA, removed by [`Scratch::drop`].
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("shoal-loadgen-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The stand-in's address and how many logins it accepted.
struct Server {
    addr: SocketAddr,
    logins: Arc<AtomicUsize>,
}

/// Starts the stand-in on a TLS port presenting `ca`'s certificate.
async fn start_server(ca: &LocalCa) -> Server {
    let acceptor = TlsAcceptor::from_pem_files(&ca.cert, &ca.key).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let logins = Arc::new(AtomicUsize::new(0));
    let items = Items::default();
    let counted = logins.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, items, logins) = (acceptor.clone(), items.clone(), counted.clone());
            tokio::spawn(async move {
                // A client that refuses the certificate ends here.
                if let Ok(stream) = acceptor.accept(tcp, HANDSHAKE_DEADLINE).await {
                    let _ = serve(stream, items, logins).await;
                }
            });
        }
    });
    Server { addr, logins }
}

/// Answers one connection: requests read together are answered in one
/// write and one flush.
async fn serve(stream: Stream, items: Items, logins: Arc<AtomicUsize>) -> std::io::Result<()> {
    let mut conn = BufReader::new(stream);
    let mut out = Vec::new();
    loop {
        if conn.buffer().is_empty() && !out.is_empty() {
            conn.write_all(&out).await?;
            conn.flush().await?;
            out.clear();
        }
        let first = match conn.fill_buf().await?.first() {
            Some(&byte) => byte,
            None => return Ok(()),
        };
        if first == 0x80 {
            // Binary SASL_AUTH: accept it, whoever it names.
            let mut header = [0u8; 24];
            conn.read_exact(&mut header).await?;
            let body_len = u32::from_be_bytes(header[8..12].try_into().unwrap());
            let mut body = vec![0; body_len as usize];
            conn.read_exact(&mut body).await?;
            assert_eq!(header[1], 0x21, "only SASL_AUTH is expected in binary");
            let answer = b"Authenticated";
            out.extend_from_slice(&[0x81, 0x21, 0, 0, 0, 0, 0, 0]);
            out.extend_from_slice(&(answer.len() as u32).to_be_bytes());
            out.extend_from_slice(&header[12..16]);
            out.extend_from_slice(&[0; 8]);
            out.extend_from_slice(answer);
            logins.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let mut line = Vec::new();
        conn.read_until(b'\n', &mut line).await?;
        let words: Vec<&[u8]> = line
            .trim_ascii_end()
            .split(|&b| b == b' ')
            .filter(|w| !w.is_empty())
            .collect();
        match words.as_slice() {
            [b"get", key] => {
                if let Some((flags, data)) = items.lock().unwrap().get(*key) {
                    out.extend_from_slice(b"VALUE ");
                    out.extend_from_slice(key);
                    out.push(b' ');
                    out.extend_from_slice(flags);
                    out.extend_from_slice(format!(" {}\r\n", data.len()).as_bytes());
                    out.extend_from_slice(data);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"END\r\n");
            }
            [b"set", key, flags, _exptime, len] => {
                let len: usize = std::str::from_utf8(len).unwrap().parse().unwrap();
                let mut data = vec![0; len + 2];
                conn.read_exact(&mut data).await?;
                data.truncate(len);
                items
                    .lock()
                    .unwrap()
                    .insert(key.to_vec(), (flags.to_vec(), data));
                out.extend_from_slice(b"STORED\r\n");
            }
            _ => out.extend_from_slice(b"ERROR\r\n"),
        }
    }
}

/// A short, preloaded run of 90/10 gets and sets against `server`.
fn config(server: SocketAddr, ca: PathBuf) -> Config {
    Config {
        server: server.to_string(),
        tls_ca: Some(ca),
        connections: 4,
        pipeline: 4,
        keys: 500,
        preload: true,
        warmup: Duration::ZERO,
        duration: Duration::from_millis(300),
        ..Config::default()
    }
    .validate()
    .unwrap()
}

#[tokio::test]
async fn a_run_over_tls_checks_every_reply() {
    let scratch = Scratch::new("run");
    let ca = LocalCa::ensure(&scratch.0, &["127.0.0.1"]).unwrap();
    let server = start_server(&ca).await;
    let report = run(&config(server.addr, ca.ca.clone())).await.unwrap();
    assert_eq!(report.errors, 0, "{:?}", report.first_error);
    assert_eq!(report.connections_lost, 0);
    assert!(report.gets > 0 && report.sets > 0, "{}", report.summary());
    assert_eq!(report.misses, 0, "every key was preloaded over TLS");
    assert!(report.tls);
    assert!(
        report.summary().contains("over TLS"),
        "{}",
        report.summary()
    );
    assert_eq!(server.logins.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn the_login_travels_inside_tls() {
    let scratch = Scratch::new("login");
    let ca = LocalCa::ensure(&scratch.0, &["127.0.0.1"]).unwrap();
    let server = start_server(&ca).await;
    let config = Config {
        sasl: Some(Credentials {
            user: "default".into(),
            password: Vec::new(),
        }),
        ..config(server.addr, ca.ca.clone())
    };
    let report = run(&config).await.unwrap();
    assert_eq!(report.errors, 0, "{:?}", report.first_error);
    assert_eq!(report.sasl_user.as_deref(), Some("default"));
    assert_eq!(server.logins.load(Ordering::Relaxed), config.connections);
}

#[tokio::test]
async fn a_server_the_ca_did_not_sign_stops_the_run() {
    let scratch = Scratch::new("otherca");
    let ca = LocalCa::ensure(&scratch.0.join("server"), &["127.0.0.1"]).unwrap();
    let other = LocalCa::ensure(&scratch.0.join("other"), &["127.0.0.1"]).unwrap();
    let server = start_server(&ca).await;
    let refused = run(&config(server.addr, other.ca.clone())).await;
    assert!(
        matches!(refused, Err(RunError::Tls { .. })),
        "{:?}",
        refused.map(|r| r.summary())
    );
}

#[tokio::test]
async fn a_missing_ca_file_is_named() {
    let scratch = Scratch::new("missing");
    let missing = scratch.0.join("nowhere.pem");
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let error = run(&config(addr, missing)).await.unwrap_err();
    assert!(matches!(error, RunError::TlsCa(_)), "{error}");
    assert!(error.to_string().contains("nowhere.pem"), "{error}");
}
