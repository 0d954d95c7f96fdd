//! MQTT brokers and clients for the bridge's tests (tests/mqtt.rs), none of
//! them Lucid's own code: Debian's `mosquitto` and `nats-server` (JetStream
//! and its MQTT listener on), each started on a free loopback port with a
//! config in its own tempdir and stopped by PID; a persistent `mosquitto_sub`
//! collecting what it receives; `mosquitto_pub`; a paho-mqtt publisher for
//! many topics over one connection; and a TCP proxy that cuts a connection
//! after some bytes. A missing program fails the test, naming what
//! `.ci/run` installs.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::{eventually, free_port, run_to_end, STARTUP_TIMEOUT};

/// What `.ci/run` installs for these tests.
const INSTALLED_BY_CI: &str = "`.ci/run` installs it: apt-get install mosquitto \
     mosquitto-clients nats-server python3-paho-mqtt";

/// The Python that has Debian's python3-paho-mqtt (not a pyenv shim's).
const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// The path of `program` (searched in PATH and the sbin directories, where
/// Debian puts the brokers); fails the test when it is not installed.
pub fn require(program: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"])
        .map(|dir| Path::new(dir).join(program))
        .find(|candidate| candidate.is_file());
    found.unwrap_or_else(|| panic!("{program} is not installed; {INSTALLED_BY_CI}"))
}

/// Which broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    /// Eclipse Mosquitto 2.0.
    Mosquitto,
    /// nats-server 2.9 with its MQTT listener.
    Nats,
}

/// A broker process on a loopback port, its config, storage and log in a
/// tempdir. Stopped (SIGKILL) when dropped.
pub struct Broker {
    kind: BrokerKind,
    dir: tempfile::TempDir,
    config: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Broker {
    /// Mosquitto on a free port, with a persistent store (sessions and
    /// queued messages survive a stop), no limit on the messages queued for
    /// an offline client, and `extra` config lines (e.g. `allow_anonymous
    /// false`: anonymous clients are allowed unless `extra` says).
    pub fn mosquitto(extra: &[&str]) -> Broker {
        Self::start_with_retries(|| Self::mosquitto_on(free_port(), extra))
    }

    /// Mosquitto on `port` (a port a node was given before the broker ran).
    pub fn mosquitto_on(port: u16, extra: &[&str]) -> Result<Broker, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let anonymous = if extra.iter().any(|line| line.starts_with("allow_anonymous")) {
            ""
        } else {
            "allow_anonymous true\n"
        };
        // `user root`: a broker started by root keeps its privileges (it
        // would switch to the `mosquitto` user, who cannot write the
        // tempdir); ignored when not run by root.
        let text = format!(
            "listener {port} 127.0.0.1\n{anonymous}persistence true\npersistence_location {}/\n\
             max_queued_messages 0\nlog_dest stderr\nlog_type all\nuser root\n{}\n",
            dir.path().display(),
            extra.join("\n")
        );
        Self::launch(BrokerKind::Mosquitto, dir, port, &text)
    }

    /// nats-server on a free port: JetStream (where its MQTT keeps
    /// sessions and messages) and the MQTT listener on; unacknowledged
    /// QoS 1 messages are sent again after `ack_wait`.
    pub fn nats(ack_wait: &str) -> Broker {
        Self::start_with_retries(|| {
            let dir = tempfile::tempdir().expect("tempdir");
            let port = free_port();
            let text = format!(
                "server_name: lucid_test\nlisten: 127.0.0.1:{}\njetstream {{ store_dir: \"{}\" }}\n\
                 mqtt {{ listen: 127.0.0.1:{port}, ack_wait: \"{ack_wait}\" }}\n",
                free_port(),
                dir.path().join("jetstream").display()
            );
            Self::launch(BrokerKind::Nats, dir, port, &text)
        })
    }

    /// Another free port was taken between choosing and binding it: again.
    fn start_with_retries(mut start: impl FnMut() -> Result<Broker, String>) -> Broker {
        let mut failures = Vec::new();
        for _ in 0..3 {
            match start() {
                Ok(broker) => return broker,
                Err(why) => failures.push(why),
            }
        }
        panic!("the broker did not start:\n{}", failures.join("\n---\n"));
    }

    fn launch(
        kind: BrokerKind,
        dir: tempfile::TempDir,
        port: u16,
        text: &str,
    ) -> Result<Broker, String> {
        let config = dir.path().join("broker.conf");
        std::fs::write(&config, text).expect("write the broker's config");
        let mut broker = Broker {
            kind,
            dir,
            config,
            port,
            child: None,
        };
        broker.try_start()?;
        Ok(broker)
    }

    /// Starts the broker again (after [`stop`](Self::stop)), on the same
    /// port with the same config and storage.
    pub fn start(&mut self) {
        if let Err(why) = self.try_start() {
            panic!("{why}");
        }
    }

    fn try_start(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "the broker runs already");
        let program = match self.kind {
            BrokerKind::Mosquitto => require("mosquitto"),
            BrokerKind::Nats => require("nats-server"),
        };
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open the broker's log");
        let mut child = Command::new(program)
            .arg("-c")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn the broker");
        let port = self.port;
        let up = eventually(STARTUP_TIMEOUT, || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
                || child.try_wait().ok().flatten().is_some()
        });
        if up && child.try_wait().ok().flatten().is_none() {
            self.child = Some(child);
            return Ok(());
        }
        let _ = child.kill();
        let _ = child.wait();
        Err(format!(
            "{:?} did not listen on port {port}; its log:\n{}",
            self.kind,
            self.log()
        ))
    }

    /// Stops the broker (SIGTERM, so mosquitto saves its store; SIGKILL if
    /// it has not exited within the startup timeout) and waits for it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Its MQTT port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `mqtt://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("broker.log")
    }

    /// What the broker logged so far (every run of it).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The last `lines` lines of its log that hold `needle` (a client id).
    pub fn log_about(&self, needle: &str, lines: usize) -> String {
        let log = self.log();
        let about: Vec<&str> = log.lines().filter(|line| line.contains(needle)).collect();
        about[about.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A message a [`Subscriber`] received.
#[derive(Debug, Clone)]
pub struct Received {
    /// Its topic.
    pub topic: String,
    /// Its payload (as text).
    pub payload: String,
}

impl Received {
    /// The payload as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.payload)
            .unwrap_or_else(|err| panic!("{:?} on {}: {err}", self.payload, self.topic))
    }
}

/// `mosquitto_sub` at QoS 1 with a persistent session (`-c`): the broker
/// keeps its messages while it reconnects (mosquitto_sub reconnects by
/// itself when the broker comes back), so it loses none.
pub struct Subscriber {
    child: Child,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Subscriber {
    /// Subscribes to `filter` on `broker` as client `id`: the session is
    /// set up first (a run that exits once subscribed), so every message
    /// published from now on is kept for it.
    pub fn start(broker: &Broker, filter: &str, id: &str) -> Subscriber {
        let program = require("mosquitto_sub");
        let port = broker.port().to_string();
        let args = [
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            filter,
            "-q",
            "1",
            "-c",
            "-i",
            id,
        ];
        let setup = run_client(Command::new(&program).args(args).arg("-E"));
        assert!(setup.status.success(), "mosquitto_sub -E: {setup:?}");
        let mut child = Command::new(&program)
            .args(args)
            .arg("-v")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mosquitto_sub");
        let stdout = child.stdout.take().expect("piped stdout");
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&received);
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let (topic, payload) = line.split_once(' ').unwrap_or((&line, ""));
                sink.lock().unwrap().push(Received {
                    topic: topic.to_owned(),
                    payload: payload.to_owned(),
                });
            }
        });
        Subscriber { child, received }
    }

    /// Every message received so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits up to `timeout` for `condition` to hold on what was received.
    pub fn wait_for(
        &self,
        timeout: Duration,
        mut condition: impl FnMut(&[Received]) -> bool,
    ) -> bool {
        eventually(timeout, || condition(&self.received.lock().unwrap()))
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the client `command` to its end (bounded), its output captured.
fn run_client(command: &mut Command) -> Output {
    let what = format!("{command:?}");
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    run_to_end(command, &what)
}

/// `mosquitto_pub` of one message at QoS 1 to `topic` on `broker`, its
/// payload from the file `payload`; fails the test if it fails.
pub fn publish_file(broker: &Broker, topic: &str, payload: &Path) {
    let out = run_client(
        Command::new(require("mosquitto_pub"))
            .args(["-h", "127.0.0.1", "-p", &broker.port().to_string()])
            .args(["-q", "1", "-t", topic, "-f"])
            .arg(payload),
    );
    assert!(out.status.success(), "mosquitto_pub: {out:?}");
}

/// `mosquitto_pub` of `payload` at QoS 1 to `topic` on `broker`.
pub fn publish(broker: &Broker, topic: &str, payload: &str) {
    let out = run_client(
        Command::new(require("mosquitto_pub"))
            .args(["-h", "127.0.0.1", "-p", &broker.port().to_string()])
            .args(["-q", "1", "-t", topic, "-m", payload]),
    );
    assert!(out.status.success(), "mosquitto_pub: {out:?}");
}

/// Publishes `count` messages at QoS 1 over one connection with paho-mqtt:
/// message `n` (from 0) on `topic` and with `payload`, each with `{n}`
/// made `n`. Exits 0 once the broker acknowledged them all.
const PAHO_PUBLISHER: &str = r#"
import sys
import paho.mqtt.client as mqtt
port, count, topic, payload = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
client = mqtt.Client(client_id="lucid-test-publisher", clean_session=True)
client.max_inflight_messages_set(100)
client.connect("127.0.0.1", port)
client.loop_start()
sent = [client.publish(topic.replace("{n}", str(n)), payload.replace("{n}", str(n)), qos=1)
        for n in range(count)]
for info in sent:
    info.wait_for_publish(120)
unacknowledged = sum(1 for info in sent if not info.is_published())
client.disconnect()
client.loop_stop()
print(f"{count - unacknowledged} acknowledged, {unacknowledged} not", flush=True)
sys.exit(1 if unacknowledged else 0)
"#;

/// A paho-mqtt publisher running in the background (see
/// [`publish_many`]).
pub struct Publisher {
    child: Child,
}

/// Starts publishing `count` messages at QoS 1 to `broker` (message `n`
/// on `topic` with `payload`, `{n}` made `n` in both) with paho-mqtt, in
/// the background.
pub fn publish_many(broker: &Broker, count: usize, topic: &str, payload: &str) -> Publisher {
    let python = Path::new(SYSTEM_PYTHON);
    assert!(
        python.is_file(),
        "{SYSTEM_PYTHON} is not installed; {INSTALLED_BY_CI}"
    );
    let check = run_client(Command::new(python).args(["-c", "import paho.mqtt.client"]));
    assert!(
        check.status.success(),
        "python3-paho-mqtt is not installed; {INSTALLED_BY_CI}"
    );
    let child = Command::new(python)
        .args(["-c", PAHO_PUBLISHER])
        .args([
            &broker.port().to_string(),
            &count.to_string(),
            topic,
            payload,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the paho publisher");
    Publisher { child }
}

impl Publisher {
    /// Waits (bounded) for it to finish; fails the test unless the broker
    /// acknowledged every message.
    pub fn finish(mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the publisher did not finish within {timeout:?}"
            );
            thread::sleep(Duration::from_millis(20));
        };
        let mut said = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            let _ = out.read_to_string(&mut said);
        }
        if let Some(mut err) = self.child.stderr.take() {
            let _ = err.read_to_string(&mut said);
        }
        assert!(status.success(), "the publisher failed: {said}");
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where a [`CuttingProxy`] cuts its first connection.
#[derive(Debug, Clone, Copy)]
pub enum Cut {
    /// After this many bytes from the broker to the client.
    FromBroker(usize),
    /// After this many bytes from the client to the broker.
    ToBroker(usize),
}

/// A TCP proxy in front of a broker that closes its first connection (both
/// ways) once `cut` bytes went through in one direction; later connections
/// pass whole. Its thread ends with the test process.
pub struct CuttingProxy {
    port: u16,
    connections: Arc<AtomicUsize>,
}

impl CuttingProxy {
    /// A proxy on a free loopback port to the broker on `upstream`.
    pub fn start(upstream: u16, cut: Cut) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("address").port();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&connections);
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(broker) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let first = counter.fetch_add(1, Ordering::SeqCst) == 0;
                let (from_broker, to_broker) = match (first, cut) {
                    (true, Cut::FromBroker(n)) => (n, usize::MAX),
                    (true, Cut::ToBroker(n)) => (usize::MAX, n),
                    (false, _) => (usize::MAX, usize::MAX),
                };
                pump(&broker, &client, from_broker);
                pump(&client, &broker, to_broker);
            }
        });
        CuttingProxy { port, connections }
    }

    /// `mqtt://127.0.0.1:<its port>`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Connections it accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Copies `from` to `to` on a thread, at most `budget` bytes; then shuts
/// both connections down.
fn pump(from: &TcpStream, to: &TcpStream, budget: usize) {
    let (mut from, mut to) = (
        from.try_clone().expect("clone a socket"),
        to.try_clone().expect("clone a socket"),
    );
    thread::spawn(move || {
        let mut left = budget;
        let mut buf = [0u8; 16 * 1024];
        while left > 0 {
            let n = match from.read(&mut buf[..left.min(16 * 1024)]) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
            left -= n;
        }
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    });
}

/// Writes `bytes` bytes of `byte` to a new file in `dir` and returns its
/// path.
pub fn payload_file(dir: &Path, bytes: usize, byte: u8) -> PathBuf {
    let path = dir.join(format!("payload-{bytes}"));
    let mut file = File::create(&path).expect("create the payload");
    let chunk = vec![byte; 1024 * 1024];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len());
        file.write_all(&chunk[..n]).expect("write the payload");
        left -= n;
    }
    path
}

/// Runs `mosquitto_passwd -b -c` to make a password file in `dir` with
/// `user` and `password`; returns its path.
pub fn password_file(dir: &Path, user: &str, password: &str) -> PathBuf {
    let path = dir.join("passwords");
    let out = run_client(
        Command::new(require("mosquitto_passwd"))
            .args(["-b", "-c"])
            .arg(&path)
            .args([user, password]),
    );
    assert!(out.status.success(), "mosquitto_passwd: {out:?}");
    path
}
