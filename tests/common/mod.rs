//! Shared helpers for the integration tests: a running `lucid` node in a
//! temporary directory, a tiny HTTP/1.1 client over `TcpStream`, and small
//! assertion helpers. Each test file does `mod common;` and uses only part of
//! this module, hence the module-level `allow(dead_code)`.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Upper bound for a node to become ready, or to exit when it should fail.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);
/// Upper bound for any single socket read or write.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// The readiness line a server logs once it accepts connections.
pub const LISTENING: &str = "listening on http://127.0.0.1:";

pub const BIN: &str = env!("CARGO_BIN_EXE_lucid");
/// `general.threads` of every test node.
pub const WORKER_THREADS: usize = 4;

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

/// Sets a stop flag when dropped: clients looping on the flag in a thread
/// scope stop however the scope's body ends, so a failed check fails the
/// test instead of leaving the scope waiting for them.
pub struct StopOnDrop<'a>(pub &'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A spawned `lucid` process whose stderr is collected line by line.
pub struct Server {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    /// `Some(port)` when the readiness line appears, `None` when stderr closes.
    events: Receiver<Option<u16>>,
}

impl Server {
    /// Spawns `lucid ARGS...` (in `cwd` if given) with stderr piped.
    pub fn spawn<S: AsRef<OsStr>>(args: &[S], cwd: Option<&Path>) -> Server {
        Self::spawn_with_env(args, cwd, &[])
    }

    /// Like [`spawn`](Self::spawn), with extra environment variables.
    pub fn spawn_with_env<S: AsRef<OsStr>>(
        args: &[S],
        cwd: Option<&Path>,
        env: &[(String, String)],
    ) -> Server {
        let mut cmd = Command::new(lucid_bin());
        cmd.args(args).envs(env.iter().map(|(k, v)| (k, v)));
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        Self::spawn_command(cmd)
    }

    /// Spawns `cmd` (a `lucid` server, possibly wrapped, e.g. in `setpriv`)
    /// with stderr piped.
    pub fn spawn_command(mut cmd: Command) -> Server {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn lucid");
        let stderr = child.stderr.take().expect("piped stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, events) = mpsc::channel();
        let sink = Arc::clone(&lines);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let port = listening_port(&line);
                sink.lock().unwrap().push(line);
                if let Some(port) = port {
                    let _ = tx.send(Some(port));
                }
            }
            let _ = tx.send(None);
        });
        Server {
            child,
            lines,
            events,
        }
    }

    /// Waits for the readiness line: `Some(port)`, or `None` if the process
    /// closed stderr (exited) first. Panics with the stderr on timeout.
    pub fn wait_listening(&self) -> Option<u16> {
        match self.events.recv_timeout(STARTUP_TIMEOUT) {
            Ok(event) => event,
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => panic!(
                "lucid did not log {LISTENING:?} nor exit within {STARTUP_TIMEOUT:?}; stderr:\n{}",
                self.logs()
            ),
        }
    }

    /// Waits (bounded) for the process to exit on its own.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Let the reader thread drain the rest of stderr.
                while let Ok(Some(_)) = self.events.recv_timeout(Duration::from_secs(2)) {}
                return status;
            }
            if Instant::now() > deadline {
                self.kill();
                panic!(
                    "lucid did not exit within {STARTUP_TIMEOUT:?}; stderr:\n{}",
                    self.logs()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Everything the process wrote to stderr so far.
    pub fn logs(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Whether the process has not exited yet.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Sends SIGTERM (a clean stop) and waits, bounded, for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM failed");
        self.wait_exit()
    }

    /// SIGKILL (what `Child::kill` sends on Unix), then reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn listening_port(line: &str) -> Option<u16> {
    let rest = &line[line.find(LISTENING)? + LISTENING.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Runs a short-lived `lucid` command (init, check, ...) to completion with a
/// bounded wait, capturing stdout and stderr.
pub fn run_lucid<S: AsRef<OsStr>>(args: &[S], cwd: &Path) -> Output {
    run_lucid_with(args, cwd, |_| {})
}

/// Like [`run_lucid`], with the command changed by `adjust` first (its
/// environment, or its stdout: `Output::stdout` is then empty).
pub fn run_lucid_with<S: AsRef<OsStr>>(
    args: &[S],
    cwd: &Path,
    adjust: impl FnOnce(&mut Command),
) -> Output {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    adjust(&mut command);
    run_to_end(&mut command, &format!("lucid {:?}", args_str(args)))
}

/// Runs `command` (its stdio as it set them) to its end, bounded by
/// [`STARTUP_TIMEOUT`] (past it, a panic naming `what`), and collects what
/// it wrote to the pipes.
pub fn run_to_end(command: &mut Command, what: &str) -> Output {
    let mut child = command
        .spawn()
        .unwrap_or_else(|err| panic!("spawn {what}: {err}"));
    let drain = |r: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = drain(child.stdout.take().map(|r| Box::new(r) as _));
    let stderr = drain(child.stderr.take().map(|r| Box::new(r) as _));
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`{what}` did not finish within {STARTUP_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

fn args_str<S: AsRef<OsStr>>(args: &[S]) -> Vec<String> {
    args.iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect()
}

// ---------------------------------------------------------------------------
// A node: config + data directory in a tempdir, plus the running process
// ---------------------------------------------------------------------------

/// Builder for the YAML config of a test node.
#[derive(Clone, Default)]
pub struct Config {
    port: Option<u16>,
    sync: Option<String>,
    sync_interval_ms: Option<u64>,
    max_key_bytes: Option<u64>,
    max_value_bytes: Option<u64>,
    level: Option<String>,
    /// Raw extra lines per section, e.g. `("general", "prot: 1")`.
    raw: Vec<(String, String)>,
    /// Environment variables for the server process.
    env: Vec<(String, String)>,
}

impl Config {
    pub fn new() -> Self {
        Self::default()
    }
    /// `general.port` (default 0: a port chosen at each start), for a node
    /// that others name before it starts, or that must come back on the
    /// same port after a restart.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }
    pub fn sync(mut self, mode: &str) -> Self {
        self.sync = Some(mode.into());
        self
    }
    pub fn sync_interval_ms(mut self, ms: u64) -> Self {
        self.sync_interval_ms = Some(ms);
        self
    }
    pub fn max_key_bytes(mut self, n: u64) -> Self {
        self.max_key_bytes = Some(n);
        self
    }
    pub fn max_value_bytes(mut self, n: u64) -> Self {
        self.max_value_bytes = Some(n);
        self
    }
    /// `logging.level` (default here: info).
    pub fn level(mut self, level: &str) -> Self {
        self.level = Some(level.into());
        self
    }
    /// Sets an environment variable for the server process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Authentication on, tokens signed with `secret`.
    pub fn secured(self, secret: &str) -> Self {
        self.raw("authentication", "enabled: true")
            .raw("authentication", &format!("secret_key: \"{secret}\""))
    }

    /// Adds a raw `line` under top-level `section` (created if needed).
    pub fn raw(mut self, section: &str, line: &str) -> Self {
        self.raw.push((section.into(), line.into()));
        self
    }

    /// The YAML text, with the data directory at `data_dir`.
    pub fn yaml(&self, data_dir: &Path) -> String {
        let mut general = vec![
            "bind_address: 127.0.0.1".to_string(),
            format!("port: {}", self.port.unwrap_or(0)),
        ];
        let own_threads = self
            .raw
            .iter()
            .any(|(section, line)| section == "general" && line.starts_with("threads:"));
        if !own_threads {
            general.push(format!("threads: {WORKER_THREADS}"));
        }
        let mut storage = vec![format!("directory: '{}'", data_dir.display())];
        if let Some(v) = &self.sync {
            storage.push(format!("sync: {v}"));
        }
        if let Some(v) = self.sync_interval_ms {
            storage.push(format!("sync_interval_ms: {v}"));
        }
        if let Some(v) = self.max_key_bytes {
            storage.push(format!("max_key_bytes: {v}"));
        }
        if let Some(v) = self.max_value_bytes {
            storage.push(format!("max_value_bytes: {v}"));
        }
        let level = self.level.as_deref().unwrap_or("info");
        let mut logging = vec![format!("level: {level}")];
        let mut others: Vec<(String, Vec<String>)> = Vec::new();
        for (section, line) in &self.raw {
            match section.as_str() {
                "general" => general.push(line.clone()),
                "storage" => storage.push(line.clone()),
                "logging" => logging.push(line.clone()),
                _ => match others.iter_mut().find(|(s, _)| s == section) {
                    Some((_, lines)) => lines.push(line.clone()),
                    None => others.push((section.clone(), vec![line.clone()])),
                },
            }
        }
        let mut sections = vec![
            ("general".to_string(), general),
            ("storage".into(), storage),
            ("logging".into(), logging),
        ];
        sections.extend(others);
        let mut out = String::new();
        for (name, lines) in sections {
            out.push_str(&format!("{name}:\n"));
            for line in lines {
                out.push_str(&format!("  {line}\n"));
            }
        }
        out
    }

    /// Writes the config into a fresh tempdir and starts a node on it.
    pub fn start(self) -> Node {
        let mut node = self.prepare();
        node.restart();
        node
    }

    /// Writes the config into a fresh tempdir without starting the node
    /// (to set up its data directory first); `restart` starts it.
    pub fn prepare(self) -> Node {
        Node::prepare(&self)
    }

    /// Writes the config into a fresh tempdir and runs a server that must
    /// fail to start; returns its exit status and stderr.
    pub fn start_expect_failure(self) -> (ExitStatus, String) {
        Node::prepare(&self).try_start_expect_failure()
    }
}

/// A `lucid server` on a private tempdir (config file + data directory).
pub struct Node {
    dir: tempfile::TempDir,
    config_path: PathBuf,
    env: Vec<(String, String)>,
    server: Option<Server>,
    port: u16,
}

impl Node {
    /// A node with the default test config.
    pub fn start() -> Node {
        Config::new().start()
    }

    fn prepare(config: &Config) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("lucid.yml");
        std::fs::write(&config_path, config.yaml(&dir.path().join("data"))).unwrap();
        Node {
            dir,
            config_path,
            env: config.env.clone(),
            server: None,
            port: 0,
        }
    }

    fn spawn(&self) -> Server {
        let config = self.config_path.as_os_str();
        Server::spawn_with_env(
            &[OsStr::new("--config"), config, OsStr::new("server")],
            Some(self.dir.path()),
            &self.env,
        )
    }

    /// Port of the running server.
    pub fn port(&self) -> u16 {
        assert!(self.server.is_some(), "node is not running");
        self.port
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn data_log(&self) -> PathBuf {
        self.data_dir().join("data.log")
    }

    /// Stderr of the current (or last) server process.
    pub fn logs(&self) -> String {
        self.server.as_ref().map(Server::logs).unwrap_or_default()
    }

    /// Stops the server with SIGTERM and returns its exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.server.as_mut().expect("node was started").terminate()
    }

    /// SIGKILL the server and reap it.
    pub fn kill9(&mut self) {
        if let Some(server) = self.server.as_mut() {
            server.kill();
        }
    }

    /// Kills the server if it runs, then starts it again on the same config
    /// and directory (it gets a new port).
    pub fn restart(&mut self) {
        self.kill9();
        let server = self.spawn();
        match server.wait_listening() {
            Some(port) => self.port = port,
            None => panic!(
                "lucid exited instead of starting; stderr:\n{}",
                server.logs()
            ),
        }
        self.server = Some(server);
    }

    /// Starts another server process on this node's config that must fail;
    /// returns its exit status and stderr. Does not touch the current one.
    pub fn try_start_expect_failure(&self) -> (ExitStatus, String) {
        let mut server = self.spawn();
        if let Some(port) = server.wait_listening() {
            let logs = server.logs();
            drop(server);
            panic!("lucid started on port {port} but was expected to fail; stderr:\n{logs}");
        }
        let status = server.wait_exit();
        (status, server.logs())
    }

    /// Asserts the node still answers a PUT and a GET on a new connection;
    /// on failure the panic shows the server's stderr.
    #[track_caller]
    pub fn assert_serving(&self) {
        let port = self.port();
        let round_trip = || -> io::Result<(Response, Response)> {
            let mut conn = Conn::try_open(port)?;
            let put = conn.try_send("PUT", "/api/kv/still-serving", &[], b"yes")?;
            Ok((
                put,
                conn.try_send("GET", "/api/kv/still-serving", &[], b"")?,
            ))
        };
        match round_trip() {
            Ok((put, get)) => {
                assert!(
                    matches!(put.status, 200 | 201),
                    "PUT answered {}",
                    put.status
                );
                assert_eq!((get.status, get.body), (200, b"yes".to_vec()));
            }
            Err(e) => panic!("the node no longer serves ({e}); stderr:\n{}", self.logs()),
        }
    }

    /// Asserts the server process has not exited (crashed).
    #[track_caller]
    pub fn assert_running(&mut self) {
        let server = self.server.as_mut().expect("node was started");
        assert!(
            server.is_running(),
            "the node exited; stderr:\n{}",
            server.logs()
        );
    }

    /// A token from `lucid tokens issue --expires 1h` with these arguments,
    /// signed with this node's secret (see [`Config::secured`]).
    pub fn issue_token(&self, args: &[&str]) -> String {
        let mut all = vec!["tokens", "issue", "--expires", "1h"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// A `lucid --config <this config> ARGS...` run, e.g. `check`.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut all = vec![OsStr::new("--config"), self.config_path.as_os_str()];
        all.extend(args.iter().map(OsStr::new));
        run_lucid(&all, self.dir.path())
    }
}

// ---------------------------------------------------------------------------
// HTTP/1.1 client
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// Case-insensitive header lookup (first occurrence).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One TCP connection; several requests can be sent on it (keep-alive).
pub struct Conn {
    port: u16,
    reader: BufReader<TcpStream>,
}

impl Conn {
    pub fn open(port: u16) -> Conn {
        Conn::try_open(port).expect("connect to lucid")
    }

    pub fn try_open(port: u16) -> io::Result<Conn> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(Conn {
            port,
            reader: BufReader::new(stream),
        })
    }

    /// Sends a request and reads the response; panics on I/O errors.
    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        self.try_send(method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// Sends a request and reads the response. A `Content-Length` is added
    /// unless the caller passes `Content-Length` or `Transfer-Encoding`; the
    /// body is sent as given (so chunked bodies are pre-encoded by the caller).
    pub fn try_send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<Response> {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n",
            self.port
        );
        for (name, value) in headers {
            req.push_str(&format!("{name}: {value}\r\n"));
        }
        let framed = headers.iter().any(|(n, _)| {
            n.eq_ignore_ascii_case("content-length") || n.eq_ignore_ascii_case("transfer-encoding")
        });
        if !framed && (!body.is_empty() || matches!(method, "PUT" | "POST")) {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.write_raw(&bytes)?;
        self.read_response(method == "HEAD")
    }

    /// Closes the sending side (the server reads end-of-file); responses can
    /// still be read.
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        self.reader.get_mut().shutdown(std::net::Shutdown::Write)
    }

    pub fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        let stream = self.reader.get_mut();
        stream.write_all(bytes)?;
        stream.flush()
    }

    /// Reads one response (skipping any 1xx). `head`: the request was HEAD,
    /// so there is no body whatever the headers say.
    pub fn read_response(&mut self, head: bool) -> io::Result<Response> {
        loop {
            let mut response = self.read_head()?;
            let status = response.status;
            if (100..200).contains(&status) {
                continue;
            }
            if head || status == 204 || status == 304 {
                return Ok(response);
            }
            let chunked = response
                .header("transfer-encoding")
                .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
            if chunked {
                response.body = self.read_chunked()?;
            } else if let Some(len) = response.header("content-length") {
                let len: usize = len
                    .trim()
                    .parse()
                    .map_err(|_| bad_data(format!("bad Content-Length {len:?}")))?;
                response.body = vec![0; len];
                self.reader.read_exact(&mut response.body)?;
            } else {
                self.reader.read_to_end(&mut response.body)?;
            }
            return Ok(response);
        }
    }

    /// Reads a response's status line and headers, not its body.
    pub fn read_head(&mut self) -> io::Result<Response> {
        let status_line = self.read_line()?;
        let mut parts = status_line.splitn(3, ' ');
        let (version, code) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let status: u16 = match (version.starts_with("HTTP/1."), code.parse()) {
            (true, Ok(code)) => code,
            _ => return Err(bad_data(format!("bad status line {status_line:?}"))),
        };
        let headers = self.read_headers()?;
        Ok(Response {
            status,
            headers,
            body: Vec::new(),
        })
    }

    fn read_line(&mut self) -> io::Result<String> {
        let mut line = Vec::new();
        self.reader.read_until(b'\n', &mut line)?;
        if line.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        let line = String::from_utf8(line).map_err(|_| bad_data("non-UTF-8 header line".into()))?;
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    }

    fn read_headers(&mut self) -> io::Result<Vec<(String, String)>> {
        let mut headers = Vec::new();
        loop {
            let line = self.read_line()?;
            if line.is_empty() {
                return Ok(headers);
            }
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| bad_data(format!("bad header line {line:?}")))?;
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
    }

    fn read_chunked(&mut self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line()?;
            let size = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| bad_data(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                self.read_headers()?; // trailers
                return Ok(body);
            }
            let start = body.len();
            body.resize(start + size, 0);
            self.reader.read_exact(&mut body[start..])?;
            self.read_line()?; // CRLF after the chunk data
        }
    }
}

fn bad_data(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// One request on a fresh connection.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    Conn::open(port).send(method, path, headers, body)
}

pub fn put(port: u16, path: &str, body: &[u8]) -> Response {
    request(port, "PUT", path, &[], body)
}

pub fn get(port: u16, path: &str) -> Response {
    request(port, "GET", path, &[], b"")
}

pub fn delete(port: u16, path: &str) -> Response {
    request(port, "DELETE", path, &[], b"")
}

/// The value of the gauge or counter `name` on the node's `/metrics` page.
pub fn metric(port: u16, name: &str) -> f64 {
    let page = get(port, "/metrics").text();
    let prefix = format!("{name} ");
    page.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {name} in:\n{page}"))
        .parse()
        .unwrap()
}

/// A loopback port free right now, for a config that must name its port
/// (commands that read the config to reach the node need it; port 0 would
/// be chosen anew by the node).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// `/api/kv/` followed by `key` percent-encoded (every byte outside the
/// unreserved set, including `/`, becomes `%XX`).
pub fn kv_path(key: &str) -> String {
    let mut path = String::from("/api/kv/");
    for &b in key.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            path.push(b as char);
        } else {
            path.push_str(&format!("%{b:02X}"));
        }
    }
    path
}

/// Writes `bulk/00000`..: `count` keys of 100 bytes, through batches of
/// 1000.
pub fn write_bulk(port: u16, count: usize) {
    for start in (0..count).step_by(1000) {
        let operations: Vec<serde_json::Value> = (start..count.min(start + 1000))
            .map(|i| serde_json::json!({"op": "put", "key": format!("bulk/{i:05}"), "value": format!("{i:0100}")}))
            .collect();
        let body = serde_json::json!({ "operations": operations }).to_string();
        let resp = request(port, "POST", "/api/batch", &[], body.as_bytes());
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
}

/// Writes the keys whose every property an export or a snapshot carries:
/// text, binary (with NUL bytes and invalid UTF-8), content types, an
/// expiry, a lock.
pub fn write_varied(port: u16) {
    let put = |path: &str, headers: &[(&str, &str)], body: &[u8]| {
        let resp = request(port, "PUT", path, headers, body);
        assert!(matches!(resp.status, 200 | 201), "{}", resp.text());
    };
    put(
        "/api/kv/text/greeting",
        &[("Content-Type", "text/plain; charset=utf-8")],
        "héllo \"world\"\n".as_bytes(),
    );
    put(
        "/api/kv/bin/blob",
        &[("Content-Type", "application/octet-stream")],
        &[0, 1, 2, 0xff, 0xfe, 0, b'a'],
    );
    put("/api/kv/text/expiring?ttl=3600", &[], b"soon gone");
    put(
        "/api/kv/text/locked",
        &[("Content-Type", "application/json")],
        b"{\"a\":1}",
    );
    let lock = request(
        port,
        "PATCH",
        "/api/kv/text/locked",
        &[],
        br#"{"operation":"lock"}"#,
    );
    assert_eq!(lock.status, 200, "{}", lock.text());
}

/// Encodes `chunks` as a chunked request body, including the final chunk.
pub fn chunked(chunks: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in chunks.iter().filter(|c| !c.is_empty()) {
        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

// ---------------------------------------------------------------------------
// Assertions
// ---------------------------------------------------------------------------

/// Parses a body of the exact shape `{"message": "<JSON string>"}`
/// (whitespace allowed) and returns the message.
pub fn json_message(body: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(body).ok()?.trim();
    let s = s.strip_prefix('{')?.trim_start();
    let s = s.strip_prefix("\"message\"")?.trim_start();
    let s = s.strip_prefix(':')?.trim_start();
    let s = s.strip_prefix('"')?;
    let mut message = String::new();
    let mut chars = s.char_indices();
    let rest = loop {
        match chars.next()? {
            (i, '"') => break &s[i + 1..],
            (_, '\\') => match chars.next()?.1 {
                'n' => message.push('\n'),
                't' => message.push('\t'),
                'r' => message.push('\r'),
                'b' => message.push('\u{8}'),
                'f' => message.push('\u{c}'),
                'u' => {
                    let hex: String = (0..4).filter_map(|_| chars.next().map(|c| c.1)).collect();
                    let code = u32::from_str_radix(&hex, 16).ok()?;
                    message.push(char::from_u32(code).unwrap_or('\u{fffd}'));
                }
                c @ ('"' | '\\' | '/') => message.push(c),
                _ => return None,
            },
            (_, c) if (c as u32) < 0x20 => return None,
            (_, c) => message.push(c),
        }
    };
    (rest.trim() == "}").then_some(message)
}

/// Asserts a JSON error response: status, `Content-Type: application/json`,
/// a body `{"message": "..."}` with a non-empty message, equal to `expected`
/// when given.
#[track_caller]
pub fn assert_error(resp: &Response, status: u16, expected: Option<&str>) {
    assert_eq!(
        resp.status,
        status,
        "unexpected status; body: {}",
        resp.text()
    );
    let content_type = resp.header("content-type").unwrap_or("");
    assert!(
        content_type.starts_with("application/json"),
        "status {status}: Content-Type is {content_type:?}, want application/json"
    );
    let message = json_message(&resp.body).unwrap_or_else(|| {
        panic!(
            "status {status}: body is not {{\"message\": ...}}: {:?}",
            resp.text()
        )
    });
    assert!(!message.is_empty(), "status {status}: empty message");
    if let Some(expected) = expected {
        assert_eq!(message, expected, "status {status}: wrong message");
    }
}

/// Asserts a JSON success message (`201`/`200` on PUT, `200` on DELETE).
#[track_caller]
pub fn assert_message(resp: &Response, status: u16, expected: &str) {
    assert_error(resp, status, Some(expected));
}

pub const CREATED: &str = "The specified key was successfully created.";
pub const UPDATED: &str = "The specified key was successfully updated.";
pub const DELETED: &str = "The specified key was successfully deleted.";
pub const NOT_FOUND: &str = "The specified key does not exist.";

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) into Unix
/// seconds, checking the weekday too.
pub fn parse_http_date(s: &str) -> Option<u64> {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let parts: Vec<&str> = s.split(' ').collect();
    let [wday, day, month, year, time, "GMT"] = parts[..] else {
        return None;
    };
    let wday = DAYS.iter().position(|d| wday == format!("{d},"))? as i64;
    let month = MONTHS.iter().position(|m| *m == month)? as i64 + 1;
    let (day, year): (i64, i64) = (day.parse().ok()?, year.parse().ok()?);
    let hms: Vec<i64> = time
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [h, m, sec] = hms[..] else { return None };
    if day.to_string().len() > 2 || !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    // Days since 1970-01-01 (Howard Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    if (days + 4).rem_euclid(7) != wday {
        return None;
    }
    u64::try_from(days * 86_400 + h * 3600 + m * 60 + sec).ok()
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Position of `needle` in `haystack`, asserting it occurs exactly once.
pub fn find_unique(haystack: &[u8], needle: &[u8]) -> usize {
    let hits: Vec<usize> = haystack
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        hits.len(),
        1,
        "marker {:?} found {} times",
        String::from_utf8_lossy(needle),
        hits.len()
    );
    hits[0]
}

/// Asserts that every (path, value) pair reads back exactly.
#[track_caller]
pub fn assert_values(port: u16, expected: &[(String, Vec<u8>)]) {
    for (path, value) in expected {
        let resp = get(port, path);
        assert_eq!(resp.status, 200, "GET {path}");
        assert_eq!(&resp.body, value, "GET {path}: wrong value");
    }
}

// ---------------------------------------------------------------------------
// Encryption at rest
// ---------------------------------------------------------------------------

/// Writes a key file (32 bytes made from `seed`, mode 0600) into `dir` and
/// returns `config` with encryption on, using it.
pub fn encrypted(config: Config, dir: &Path, seed: u8) -> Config {
    let path = dir.join(format!("key-{seed}"));
    std::fs::write(&path, [seed; 32]).unwrap();
    encrypted_by(config, &path)
}

/// `config` with encryption on under the key file at `path` (made private).
pub fn encrypted_by(config: Config, path: &Path) -> Config {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    config
        .raw("encryption", "enabled: true")
        .raw("encryption", &format!("key_file: '{}'", path.display()))
}

/// Whether any file directly in `dir` contains `needle`.
pub fn any_file_contains(dir: &Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().any(|entry| {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap_or_default();
        bytes.windows(needle.len()).any(|w| w == needle)
    })
}

// ---------------------------------------------------------------------------
// Watch streams (Server-Sent Events)
// ---------------------------------------------------------------------------

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

impl SseEvent {
    /// The data parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {:?}", self.data))
    }
}

impl Conn {
    /// Sends `GET path` with `headers` and reads the response head only: a
    /// 200 leaves the event stream on the connection for
    /// [`next_event`](Self::next_event); any other status comes with its
    /// body.
    pub fn watch(port: u16, path: &str, headers: &[(&str, &str)]) -> (Conn, Response) {
        let mut conn = Conn::open(port);
        let mut request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        conn.write_raw(request.as_bytes())
            .expect("send a watch request");
        let mut head = conn.read_head().expect("read a watch response");
        if head.status != 200 {
            let len: usize = head
                .header("content-length")
                .map_or(0, |l| l.parse().unwrap());
            head.body = vec![0; len];
            conn.reader
                .read_exact(&mut head.body)
                .expect("read the body");
        }
        (conn, head)
    }

    /// Reads the next event of a Server-Sent Events stream, skipping
    /// comments (keepalives); `None` once the stream has ended.
    pub fn next_event(&mut self) -> io::Result<Option<SseEvent>> {
        let mut event = SseEvent {
            id: None,
            event: "message".into(),
            data: String::new(),
        };
        let mut fields = 0;
        loop {
            let line = match self.read_line() {
                Ok(line) => line,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && fields == 0 => {
                    return Ok(None)
                }
                Err(e) => return Err(e),
            };
            if line.is_empty() {
                if fields > 0 {
                    return Ok(Some(event));
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (name, value) = line.split_once(": ").unwrap_or((&line, ""));
            match name {
                "id" => event.id = Some(value.to_string()),
                "event" => event.event = value.to_string(),
                "data" => event.data.push_str(value),
                other => return Err(bad_data(format!("unknown SSE field {other:?}"))),
            }
            fields += 1;
        }
    }

    /// Sets the read timeout of the connection.
    /// Another handle on the connection's socket, to write to it from
    /// another thread while this one reads.
    pub fn writer(&self) -> TcpStream {
        self.reader.get_ref().try_clone().expect("clone a socket")
    }

    pub fn set_read_timeout(&mut self, timeout: Duration) {
        self.reader
            .get_mut()
            .set_read_timeout(Some(timeout))
            .expect("set a read timeout");
    }
}

/// The value of the `lucid_watchers` gauge.
pub fn watchers(port: u16) -> usize {
    let page = get(port, "/metrics").text();
    page.lines()
        .find_map(|line| line.strip_prefix("lucid_watchers "))
        .expect("lucid_watchers in /metrics")
        .parse()
        .expect("a count")
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes;
/// returns whether it held.
pub fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

pub mod brokers;
pub mod fault_proxy;
pub mod workload;

impl Node {
    /// Rewrites the node's config (same data directory) for its next start.
    pub fn reconfigure(&mut self, config: &Config) {
        std::fs::write(&self.config_path, config.yaml(&self.data_dir())).unwrap();
        self.env = config.env.clone();
    }

    /// Starts the node and SIGKILLs it `after` that long, in the middle of
    /// its recovery or soon after; returns whether it was serving by then.
    pub fn kill_during_start(&mut self, after: Duration) -> bool {
        self.kill9();
        let mut server = self.spawn();
        thread::sleep(after);
        let serving = server.logs().contains(LISTENING);
        server.kill();
        serving
    }
}

/// A seed from `var` if set, else from the OS's random source; printed, so
/// a failing run can be replayed.
pub fn seed_from_env(var: &str) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let seed = std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
        });
    eprintln!("seed {seed} (replay: {var}={seed})");
    seed
}

/// The number in environment variable `var`, or `default`.
pub fn env_number(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The `lucid` binary servers run: `LUCID_BIN` if set (the soak runs the
/// release build; a relative path is from the repository root), else the
/// one Cargo built for the tests.
pub fn lucid_bin() -> PathBuf {
    std::env::var_os("LUCID_BIN").map_or_else(
        || PathBuf::from(BIN),
        |bin| Path::new(env!("CARGO_MANIFEST_DIR")).join(bin),
    )
}

impl Node {
    /// Process id of the running server.
    pub fn pid(&self) -> u32 {
        self.server.as_ref().expect("node is running").child.id()
    }

    /// Sends `signal` (e.g. `STOP`, `CONT`) to the running server.
    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -{signal} failed");
    }
}
