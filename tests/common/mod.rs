//! Helpers shared by the end-to-end tests of `shoal node`: a throwaway
//! directory, a node process started on `127.0.0.1:0` (its port read back
//! from the `data <addr>` line it prints), readiness and persistence polled
//! through `stats` with deadlines, the two ways to stop it (`kill -9` and
//! SIGTERM), the process's RSS, and a small raw-socket memcached client.
//!
//! Nothing here sleeps a fixed time and hopes: every wait polls a condition
//! and fails the test with a message when its (generous) deadline passes.
//! Deadlines bound hangs; they are never what a test asserts.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The binary under test; `cargo test` builds it.
pub const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");

/// How long a node may take to print its address.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// How long warmup may take (200k items warm up in a few seconds here; this
/// is a hang bound for a loaded 2-core machine, not an expectation).
pub const READY_DEADLINE: Duration = Duration::from_secs(120);

/// How long the write queue may take to reach disk.
pub const PERSIST_DEADLINE: Duration = Duration::from_secs(120);

/// How long a SIGTERM'd node may take to drain and exit.
pub const EXIT_DEADLINE: Duration = Duration::from_secs(60);

/// Socket read/write timeout: a reply that does not come is a hang, and a
/// hang must fail the test rather than stall the suite.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Interval between polls of a condition.
const POLL: Duration = Duration::from_millis(20);

// === impl TestDir ===

/// A fresh directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    /// Creates `<tmp>/shoal-e2e-<name>-<pid>-<n>`.
    pub fn new(name: &str) -> TestDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("shoal-e2e-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create test dir");
        TestDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

// === impl NodeProcess ===

/// A running `shoal node --standalone` child process.
#[derive(Debug)]
pub struct NodeProcess {
    /// The data port.
    pub addr: SocketAddr,
    /// The node's `--data-dir`.
    pub dir: PathBuf,
    /// The process; `None` once it has been stopped.
    pub child: Option<Child>,
    /// When it was spawned.
    pub spawned: Instant,
    /// Its stderr (tracing output), printed if the test fails.
    log: PathBuf,
}

impl NodeProcess {
    /// Starts `shoal node --standalone --data-dir <dir>/node --port 0
    /// --admin-port 0 <extra…>` and waits for its `data <addr>` line. The
    /// data dir is `<dir>/node`, so a restart with the same `dir` finds the
    /// same data; logs go next to it.
    pub fn start(dir: &Path, extra: &[&str]) -> NodeProcess {
        static STARTS: AtomicUsize = AtomicUsize::new(0);
        let data_dir = dir.join("node");
        let log = dir.join(format!(
            "node-{}.log",
            STARTS.fetch_add(1, Ordering::Relaxed)
        ));
        let stderr = File::create(&log).expect("create node log");
        let mut child = Command::new(SHOAL)
            .arg("node")
            .arg("--standalone")
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--port", "0", "--admin-port", "0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn shoal node");
        let spawned = Instant::now();
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Keep reading to EOF so the node never sees a closed stdout.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("data ") {
                    let _ = tx.send(addr.trim().to_owned());
                }
            }
        });
        let mut node = NodeProcess {
            addr: "127.0.0.1:0".parse().unwrap(),
            dir: data_dir,
            child: Some(child),
            spawned,
            log,
        };
        match rx.recv_timeout(START_DEADLINE) {
            Ok(addr) => node.addr = addr.parse().expect("node printed a bad address"),
            Err(_) => panic!(
                "node did not print its address within {START_DEADLINE:?}; log:\n{}",
                node.log_tail()
            ),
        }
        node
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("node is running").id()
    }

    /// Polls `stats` until `ep_warmup_thread` is `complete`; returns the
    /// time from spawn to the first poll that saw it (a figure to print,
    /// never to assert on).
    pub fn wait_ready(&mut self) -> Duration {
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            self.assert_alive();
            if let Ok(stats) = self.try_stats() {
                if stats.get("ep_warmup_thread").map(String::as_str) == Some("complete") {
                    return self.spawned.elapsed();
                }
            }
            assert!(
                Instant::now() < deadline,
                "node not warmed up after {READY_DEADLINE:?}; log:\n{}",
                self.log_tail()
            );
            std::thread::sleep(POLL);
        }
    }

    /// `stats` over a fresh connection.
    pub fn stats(&self) -> HashMap<String, String> {
        self.try_stats().expect("stats")
    }

    fn try_stats(&self) -> io::Result<HashMap<String, String>> {
        let mut conn = Conn::connect(self.addr)?;
        conn.stats()
    }

    /// One numeric stat (the last one of that name, as a client would read
    /// it).
    pub fn stat(&self, name: &str) -> u64 {
        stat_u64(&self.stats(), name)
    }

    /// Polls until nothing is waiting for disk (`ep_diskqueue_items` 0,
    /// which is `ep_queue_size` + `ep_flusher_todo`); returns the stats that
    /// showed it.
    pub fn wait_persisted(&mut self) -> HashMap<String, String> {
        let deadline = Instant::now() + PERSIST_DEADLINE;
        loop {
            self.assert_alive();
            let stats = self.stats();
            if stat_u64(&stats, "ep_diskqueue_items") == 0 {
                return stats;
            }
            assert!(
                Instant::now() < deadline,
                "disk queue not drained after {PERSIST_DEADLINE:?}: ep_queue_size {} ep_flusher_todo {}",
                stat_u64(&stats, "ep_queue_size"),
                stat_u64(&stats, "ep_flusher_todo"),
            );
            std::thread::sleep(POLL);
        }
    }

    /// Polls `stats` until `pred` holds.
    pub fn wait_for_stats(
        &mut self,
        what: &str,
        mut pred: impl FnMut(&HashMap<String, String>) -> bool,
    ) -> HashMap<String, String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            self.assert_alive();
            let stats = self.stats();
            if pred(&stats) {
                return stats;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(POLL);
        }
    }

    /// `kill -9`: no chance to flush anything.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("node is running");
        child.kill().expect("SIGKILL the node");
        let status = child.wait().expect("reap the node");
        assert!(
            !status.success(),
            "a SIGKILLed node cannot exit cleanly: {status:?}"
        );
    }

    /// SIGTERM, then waits (bounded) for the process to exit; returns its
    /// status.
    pub fn sigterm_and_wait(&mut self) -> ExitStatus {
        let pid = self.pid();
        let sent = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill -TERM");
        assert!(sent.success(), "kill -TERM {pid} failed");
        let mut child = self.child.take().expect("node is running");
        let deadline = Instant::now() + EXIT_DEADLINE;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "node did not exit within {EXIT_DEADLINE:?} of SIGTERM; log:\n{}",
                    tail(&self.log)
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Fails the test if the process has exited.
    pub fn assert_alive(&mut self) {
        let child = self.child.as_mut().expect("node was stopped");
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!(
                "node exited unexpectedly ({status}); log:\n{}",
                tail(&self.log)
            );
        }
    }

    /// Resident set size now, bytes (`VmRSS` of `/proc/<pid>/status`).
    pub fn rss(&self) -> u64 {
        rss_of(self.pid()).expect("read VmRSS")
    }

    /// The last lines of the node's stderr.
    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- node log ({}) ---\n{}",
                self.log.display(),
                tail(&self.log)
            );
        }
    }
}

/// The last 40 lines of a log file.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// `VmRSS` of a process, bytes; `None` once it is gone.
pub fn rss_of(pid: u32) -> Option<u64> {
    proc_status_bytes(pid, "VmRSS")
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmPeak`…), in bytes.
pub fn proc_status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| {
        l.strip_prefix(field)
            .is_some_and(|rest| rest.starts_with(':'))
    })?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A numeric stat; 0 when absent would hide a renamed stat, so absence fails.
pub fn stat_u64(stats: &HashMap<String, String>, name: &str) -> u64 {
    let v = stats
        .get(name)
        .unwrap_or_else(|| panic!("stat {name} missing"));
    v.parse()
        .unwrap_or_else(|_| panic!("stat {name} = {v:?} is not a number"))
}

// === impl Conn ===

/// A raw memcached connection with a read buffer; every read and write
/// times out after [`IO_TIMEOUT`].
#[derive(Debug)]
pub struct Conn {
    pub stream: TcpStream,
    reader: BufReader<TcpStream>,
}

/// One hit of a retrieval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Value {
    pub key: Vec<u8>,
    pub flags: u32,
    pub data: Vec<u8>,
}

impl Conn {
    pub fn connect(addr: SocketAddr) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        let reader = BufReader::with_capacity(256 * 1024, stream.try_clone()?);
        Ok(Conn { stream, reader })
    }

    /// Sets the read timeout (shorter ones for "is anything coming?").
    pub fn set_read_timeout(&self, t: Duration) {
        self.stream.set_read_timeout(Some(t)).expect("set timeout");
    }

    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// One line including its `\r\n` (error if the peer closes first).
    pub fn read_line(&mut self) -> io::Result<Vec<u8>> {
        let mut line = Vec::new();
        self.reader.read_until(b'\n', &mut line)?;
        if !line.ends_with(b"\n") {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("closed after {:?}", String::from_utf8_lossy(&line)),
            ));
        }
        Ok(line)
    }

    /// One line as a string, without `\r\n`.
    pub fn line(&mut self) -> String {
        let line = self.read_line().expect("read a reply line");
        String::from_utf8_lossy(&line).trim_end().to_owned()
    }

    pub fn read_exact(&mut self, n: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0; n];
        self.reader.read_exact(&mut buf)?;
        Ok(buf)
    }

    /// Reads until the peer closes (EOF, or a reset: a node that closes
    /// with unread input makes the kernel send RST after the reply);
    /// returns everything that came first. A read that times out means the
    /// node neither answered nor closed: a hang, which fails the test.
    pub fn read_until_closed(&mut self) -> Vec<u8> {
        let mut all = Vec::new();
        let mut buf = [0u8; 64 * 1024];
        loop {
            match self.reader.read(&mut buf) {
                Ok(0) => return all,
                Ok(n) => all.extend_from_slice(&buf[..n]),
                Err(e) if is_reset(&e) => return all,
                Err(e) => panic!(
                    "connection neither closed nor answered ({e}); got {:?}",
                    String::from_utf8_lossy(&all[..all.len().min(200)])
                ),
            }
        }
    }

    /// Writes `bytes`, tolerating the node closing the connection midway
    /// (it may reject a request before reading all of it); returns whether
    /// everything was written.
    pub fn send_lossy(&mut self, bytes: &[u8]) -> bool {
        match self.stream.write_all(bytes) {
            Ok(()) => true,
            Err(e) if is_reset(&e) => false,
            Err(e) => panic!("send failed: {e}"),
        }
    }

    pub fn shutdown_write(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// `stats`: name → value (a repeated name keeps its last value).
    pub fn stats(&mut self) -> io::Result<HashMap<String, String>> {
        self.send(b"stats\r\n")?;
        let mut stats = HashMap::new();
        loop {
            let line = self.read_line()?;
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end();
            if line == "END" {
                return Ok(stats);
            }
            let mut parts = line.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("STAT"), Some(name), value) => {
                    stats.insert(name.to_owned(), value.unwrap_or("").to_owned());
                }
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("bad stats line {line:?}"),
                    ))
                }
            }
        }
    }

    /// `set` and its reply line.
    pub fn set(&mut self, key: &str, flags: u32, value: &[u8]) -> String {
        let mut req = Vec::with_capacity(value.len() + 64);
        push_set(&mut req, key.as_bytes(), flags, value);
        self.send(&req).expect("send set");
        self.line()
    }

    /// `get` of one key.
    pub fn get(&mut self, key: &str) -> Option<Value> {
        self.send(format!("get {key}\r\n").as_bytes())
            .expect("send get");
        let mut hits = self.read_values().expect("read get reply");
        assert!(hits.len() <= 1, "one key, {} values", hits.len());
        hits.pop()
    }

    /// Reads `VALUE` blocks up to `END`.
    pub fn read_values(&mut self) -> io::Result<Vec<Value>> {
        let mut hits = Vec::new();
        loop {
            let line = self.read_line()?;
            if line == b"END\r\n" {
                return Ok(hits);
            }
            let text = String::from_utf8_lossy(&line).trim_end().to_owned();
            let mut words = text.split(' ');
            let (Some("VALUE"), Some(key), Some(flags), Some(len)) =
                (words.next(), words.next(), words.next(), words.next())
            else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unexpected reply line {text:?}"),
                ));
            };
            let parse_err = |what: &str| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad {what} in {text:?}"),
                )
            };
            let flags: u32 = flags.parse().map_err(|_| parse_err("flags"))?;
            let len: usize = len.parse().map_err(|_| parse_err("length"))?;
            let mut data = self.read_exact(len + 2)?;
            if !data.ends_with(b"\r\n") {
                return Err(parse_err("data block terminator"));
            }
            data.truncate(len);
            hits.push(Value {
                key: key.as_bytes().to_vec(),
                flags,
                data,
            });
        }
    }
}

/// A peer that closed on us.
fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// Appends `set <key> <flags> 0 <len>\r\n<value>\r\n`.
pub fn push_set(out: &mut Vec<u8>, key: &[u8], flags: u32, value: &[u8]) {
    out.extend_from_slice(b"set ");
    out.extend_from_slice(key);
    out.extend_from_slice(format!(" {flags} 0 {}\r\n", value.len()).as_bytes());
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends `get k1 k2 …\r\n`.
pub fn push_get<K: AsRef<[u8]>>(out: &mut Vec<u8>, keys: &[K]) {
    out.extend_from_slice(b"get");
    for k in keys {
        out.push(b' ');
        out.extend_from_slice(k.as_ref());
    }
    out.extend_from_slice(b"\r\n");
}

// === binary protocol ===

/// A binary request header (24 bytes).
pub fn binary_header(
    opcode: u8,
    key_len: u16,
    extras_len: u8,
    vbucket: u16,
    body_len: u32,
    opaque: u32,
) -> [u8; 24] {
    let mut h = [0u8; 24];
    h[0] = 0x80;
    h[1] = opcode;
    h[2..4].copy_from_slice(&key_len.to_be_bytes());
    h[4] = extras_len;
    h[6..8].copy_from_slice(&vbucket.to_be_bytes());
    h[8..12].copy_from_slice(&body_len.to_be_bytes());
    h[12..16].copy_from_slice(&opaque.to_be_bytes());
    h
}

/// A decoded binary response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BinaryResponse {
    pub opcode: u8,
    pub status: u16,
    pub opaque: u32,
    pub cas: u64,
    pub extras: Vec<u8>,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

impl Conn {
    /// Reads one binary response.
    pub fn read_binary(&mut self) -> io::Result<BinaryResponse> {
        let h = self.read_exact(24)?;
        if h[0] != 0x81 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad response magic {:#04x}", h[0]),
            ));
        }
        let key_len = usize::from(u16::from_be_bytes([h[2], h[3]]));
        let extras_len = usize::from(h[4]);
        let body_len = u32::from_be_bytes([h[8], h[9], h[10], h[11]]) as usize;
        if body_len < key_len + extras_len || body_len > 64 << 20 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad response body length {body_len}"),
            ));
        }
        let body = self.read_exact(body_len)?;
        Ok(BinaryResponse {
            opcode: h[1],
            status: u16::from_be_bytes([h[6], h[7]]),
            opaque: u32::from_be_bytes([h[12], h[13], h[14], h[15]]),
            cas: u64::from_be_bytes(h[16..24].try_into().unwrap()),
            extras: body[..extras_len].to_vec(),
            key: body[extras_len..extras_len + key_len].to_vec(),
            value: body[extras_len + key_len..].to_vec(),
        })
    }
}

/// Runs `f` on `threads` threads, thread `t` getting `t`; joins them all
/// and re-raises the first panic.
pub fn on_threads<T: Send>(threads: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let f = &f;
                s.spawn(move || f(t))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}
