//! The MQTT bridge against real brokers the tests start (Debian's
//! `mosquitto`, and `nats-server` 2.9 with JetStream and its MQTT listener),
//! watched by independent clients (`mosquitto_sub`, `mosquitto_pub`,
//! paho-mqtt; see tests/common/brokers.rs):
//!
//! * every change (PUT, DELETE, batch, PATCH increment, overwrites) reaches
//!   a subscriber once and in order when nothing fails, on both brokers;
//! * a broker outage while writes go on, with the node killed (SIGKILL)
//!   during it and just after the broker returns and a compaction during
//!   it, loses nothing: every change arrives, in order per key, duplicates
//!   only within the window in flight, and draining starts on its own, on
//!   both brokers;
//! * a backlog past `mqtt.max_backlog_bytes` drops the oldest changes,
//!   counted and announced by a gap message, and the newest arrive, on
//!   both brokers;
//! * every message published on a subscribed topic is stored, the node
//!   killed midway (the broker sends again what was not acknowledged), on
//!   both brokers;
//! * with `retain`, the broker keeps each key's last change, and a delete
//!   clears it;
//! * bad input: credentials refused, nothing listening, a connection cut
//!   mid-message both ways, a message larger than a value may be, a bad
//!   `mqtt:` section: clear log lines, retries, and the node serves on.
//!
//! `LUCID_MQTT_OUTAGE_S` sets the outage's length (default 8 s; the
//! issue's figure is 60); `LUCID_MQTT_LONG_OUTAGE_S` that of the test of
//! draining after an outage long enough for the backoff to reach its
//! longest (default 15 s).

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::brokers::*;
use common::*;
use lucid::mqtt::bridge::WINDOW;
use serde_json::{json, Value};

/// The node's name: its client id is `lucid-t1`, its topics `lucid/t1/...`.
const NODE: &str = "t1";

/// How long messages may take to arrive, or the bridge to catch up, before
/// a test gives up (a bound, not a measure: they take far less).
const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(90);

/// How long the bridge may take to start draining once the broker is back.
const DRAIN_START: Duration = Duration::from_secs(5);

/// A node named [`NODE`] bridged to the broker at `url`.
fn bridged(url: &str) -> Config {
    Config::new()
        .raw("general", &format!("node_name: {NODE}"))
        .raw("mqtt", &format!("url: {url}"))
}

/// A node taking in `devices/<n>/state` as key `dev/<n>`, publishing
/// nothing.
fn ingesting(url: &str) -> Config {
    bridged(url).raw("mqtt", "publish: {enabled: false}").raw(
        "mqtt",
        r#"subscribe: [{filter: "devices/+/state", key: "dev/{1}"}]"#,
    )
}

/// `GET /api/admin/mqtt`.
fn bridge_status(port: u16) -> Value {
    let resp = get(port, "/api/admin/mqtt");
    assert_eq!(resp.status, 200, "{}", resp.text());
    serde_json::from_slice(&resp.body).expect("a JSON status")
}

/// Waits until the bridge is connected to its broker.
#[track_caller]
fn wait_connected(node: &Node) {
    assert!(
        eventually(STARTUP_TIMEOUT, || bridge_status(node.port())["connected"]
            == true),
        "the bridge did not connect: {}; stderr:\n{}",
        bridge_status(node.port()),
        node.logs()
    );
}

/// The key a change message on `lucid/t1/<key>` is about.
fn key_of(message: &Received) -> Option<&str> {
    message.topic.strip_prefix(&format!("lucid/{NODE}/")[..])
}

/// A change as a subscriber should see it.
#[derive(Debug, Clone, PartialEq)]
struct Change {
    op: &'static str,
    key: String,
    value: Option<String>,
}

impl Change {
    fn put(key: String, value: String) -> Self {
        Self {
            op: "put",
            key,
            value: Some(value),
        }
    }

    fn delete(key: String) -> Self {
        Self {
            op: "delete",
            key,
            value: None,
        }
    }
}

/// Writes at least `total` changes through one connection, in rounds of
/// 20 PUTs, a batch of 99 PUTs (overwriting 300 keys in turn) and a
/// DELETE, 5 DELETEs and 5 PATCH increments; returns them in order.
fn write_changes(port: u16, total: usize) -> Vec<Change> {
    let mut conn = Conn::open(port);
    let mut changes = Vec::new();
    let send = |conn: &mut Conn, method: &str, key: &str, body: &[u8]| {
        let resp = conn.send(method, &kv_path(key), &[], body);
        assert!(
            matches!(resp.status, 200 | 201),
            "{method} {key}: {}",
            resp.text()
        );
        resp
    };
    let mut counters = [0u64; 5];
    for (i, _) in counters.iter().enumerate() {
        let key = format!("count/{i}");
        send(&mut conn, "PUT", &key, b"0");
        changes.push(Change::put(key, "0".into()));
    }
    let mut round = 0;
    while changes.len() < total {
        for j in 0..20 {
            let (key, value) = (format!("s/{j}"), format!("p{round}.{j}"));
            send(&mut conn, "PUT", &key, value.as_bytes());
            changes.push(Change::put(key, value));
        }
        let mut operations: Vec<Value> = (0..99)
            .map(|j| {
                let key = format!("k/{:03}", (round * 99 + j) % 300);
                let value = format!("b{round}.{j}");
                changes.push(Change::put(key.clone(), value.clone()));
                json!({"op": "put", "key": key, "value": value})
            })
            .collect();
        operations.push(json!({"op": "delete", "key": "s/19"}));
        changes.push(Change::delete("s/19".into()));
        let body = json!({ "operations": operations }).to_string();
        let resp = conn.send("POST", "/api/batch", &[], body.as_bytes());
        assert_eq!(resp.status, 200, "{}", resp.text());
        for j in 0..5 {
            let key = format!("s/{j}");
            send(&mut conn, "DELETE", &key, b"");
            changes.push(Change::delete(key));
        }
        for (j, counter) in counters.iter_mut().enumerate() {
            let key = format!("count/{j}");
            send(&mut conn, "PATCH", &key, br#"{"operation":"increment"}"#);
            *counter += 1;
            changes.push(Change::put(key, counter.to_string()));
        }
        round += 1;
    }
    changes
}

/// Every change written reaches a subscriber exactly once, in order, with
/// its node, sequence number, operation, key and value.
fn every_change_arrives_once_in_order(broker: &Broker) {
    let subscriber = Subscriber::start(broker, "lucid/#", "lucid-test-subscriber");
    let node = bridged(&broker.url()).start();
    wait_connected(&node);
    let changes = write_changes(node.port(), 20_000);
    let arrived = subscriber.wait_for(ARRIVAL_TIMEOUT, |received| received.len() >= changes.len());
    let received = subscriber.received();
    assert!(
        arrived,
        "{} of {} changes arrived; bridge: {}; stderr:\n{}",
        received.len(),
        changes.len(),
        bridge_status(node.port()),
        node.logs()
    );
    assert_eq!(received.len(), changes.len(), "as many messages as changes");
    for (at, (message, change)) in received.iter().zip(&changes).enumerate() {
        let document = message.json();
        let seen = Change {
            op: if document["op"] == "delete" {
                "delete"
            } else {
                "put"
            },
            key: document["key"].as_str().unwrap_or_default().to_owned(),
            value: document["value"].as_str().map(str::to_owned),
        };
        assert_eq!(
            (&seen, &document["node"], &document["seq"]),
            (change, &json!(NODE), &json!(at + 1)),
            "message {at}: {}",
            message.payload
        );
        assert_eq!(key_of(message), Some(change.key.as_str()));
    }
    let status = bridge_status(node.port());
    assert_eq!(
        (&status["cursor"], &status["published"], &status["dropped"]),
        (&json!(changes.len()), &json!(changes.len()), &json!(0)),
        "{status}"
    );
}

#[test]
fn every_change_reaches_a_mosquitto_subscriber_once_and_in_order() {
    every_change_arrives_once_in_order(&Broker::mosquitto(&[]));
}

#[test]
fn every_change_reaches_a_nats_subscriber_once_and_in_order() {
    every_change_arrives_once_in_order(&Broker::nats("30s"));
}

/// PUTs at 20 a second on 20 keys, `o/<n % 20>` = `w<n>`, each value once.
struct PacedWriter {
    written: Vec<(String, String)>,
}

impl PacedWriter {
    const PERIOD: Duration = Duration::from_millis(50);

    /// Writes for `period`.
    fn run(&mut self, port: u16, period: Duration) {
        let mut conn = Conn::open(port);
        for _ in 0..(period.as_millis() / Self::PERIOD.as_millis()).max(1) {
            let n = self.written.len();
            let (key, value) = (format!("o/{}", n % 20), format!("w{n}"));
            let resp = conn.send("PUT", &kv_path(&key), &[], value.as_bytes());
            assert!(matches!(resp.status, 200 | 201), "{}", resp.text());
            self.written.push((key, value));
            std::thread::sleep(Self::PERIOD);
        }
    }
}

/// `POST /api/admin/compact`, which must compact.
fn compact(port: u16) {
    let resp = request(port, "POST", "/api/admin/compact", &[], b"");
    assert_eq!(resp.status, 200, "{}", resp.text());
}

#[test]
fn an_outage_of_mosquitto_loses_nothing_through_kills_and_a_compaction() {
    an_outage_loses_nothing_through_kills_and_a_compaction(Broker::mosquitto(&[]));
}

#[test]
fn an_outage_of_nats_loses_nothing_through_kills_and_a_compaction() {
    an_outage_loses_nothing_through_kills_and_a_compaction(Broker::nats("30s"));
}

fn an_outage_loses_nothing_through_kills_and_a_compaction(mut broker: Broker) {
    let outage = Duration::from_secs(env_number("LUCID_MQTT_OUTAGE_S", 8));
    let subscriber = Subscriber::start(&broker, "lucid/#", "outage-subscriber");
    let mut node = bridged(&broker.url()).start();
    wait_connected(&node);
    let mut writer = PacedWriter {
        written: Vec::new(),
    };
    writer.run(node.port(), Duration::from_secs(1));
    assert!(
        subscriber.wait_for(ARRIVAL_TIMEOUT, |received| received.len()
            == writer.written.len()),
        "the changes before the outage did not arrive"
    );

    broker.stop();
    writer.run(node.port(), outage / 2);
    compact(node.port());
    writer.run(node.port(), outage / 8 * 3);
    node.kill9();
    node.restart();
    // The restarted node holds the changes after its cursor too.
    compact(node.port());
    writer.run(node.port(), outage / 8);
    let cursor = bridge_status(node.port())["cursor"].as_u64().unwrap();

    broker.start();
    // Draining starts on its own, without a new write.
    assert!(
        eventually(DRAIN_START, || bridge_status(node.port())["cursor"]
            .as_u64()
            .unwrap()
            > cursor),
        "the bridge did not start draining within {DRAIN_START:?} of the broker's return: {}; \
         stderr:\n{}",
        bridge_status(node.port()),
        node.logs()
    );
    node.kill9();
    node.restart();
    writer.run(node.port(), Duration::from_secs(1));

    let written: HashSet<&str> = writer.written.iter().map(|(_, v)| v.as_str()).collect();
    let missing = |received: &[Received]| -> Vec<String> {
        let values: HashSet<String> = received
            .iter()
            .filter_map(|m| Some(m.json()["value"].as_str()?.to_owned()))
            .collect();
        let mut missing: Vec<String> = written
            .iter()
            .filter(|v| !values.contains(**v))
            .map(|v| v.to_string())
            .collect();
        missing.sort();
        missing
    };
    subscriber.wait_for(ARRIVAL_TIMEOUT, |received| missing(received).is_empty());
    let received = subscriber.received();
    let missing = missing(&received);
    assert!(
        missing.is_empty(),
        "{} changes never arrived (e.g. {:?}); bridge: {}; stderr:\n{}",
        missing.len(),
        &missing[..missing.len().min(5)],
        bridge_status(node.port()),
        node.logs()
    );
    // In order per key; a change seen again is one of the window in
    // flight when the link or the node went.
    let (mut seen, mut last_per_key, mut highest) = (HashSet::new(), HashMap::new(), 0);
    let mut duplicates = 0;
    for message in &received {
        let document = message.json();
        assert_ne!(document["op"], "gap", "nothing was dropped: {document}");
        let seq = document["seq"].as_u64().unwrap();
        if !seen.insert(seq) {
            duplicates += 1;
            assert!(
                highest - seq < WINDOW as u64,
                "change {seq} came again after {highest}: further back than the window"
            );
            continue;
        }
        let key = document["key"].as_str().unwrap().to_owned();
        if let Some(before) = last_per_key.insert(key.clone(), seq) {
            assert!(before < seq, "{key}: change {seq} came after {before}");
        }
        highest = highest.max(seq);
    }
    eprintln!(
        "{} changes written, {} messages received ({duplicates} sent again)",
        writer.written.len(),
        received.len()
    );
}

/// After an outage longer than the bridge's backoff grows in a few steps,
/// draining starts soon after the broker's return all the same.
/// `LUCID_MQTT_LONG_OUTAGE_S` sets the outage (default 15 s).
#[test]
fn draining_starts_soon_after_a_long_outage() {
    let mut broker = Broker::mosquitto(&[]);
    let node = bridged(&broker.url()).start();
    wait_connected(&node);
    broker.stop();
    assert_eq!(put(node.port(), "/api/kv/during", b"1").status, 201);
    std::thread::sleep(Duration::from_secs(env_number(
        "LUCID_MQTT_LONG_OUTAGE_S",
        15,
    )));
    broker.start();
    assert!(
        eventually(DRAIN_START, || bridge_status(node.port())["cursor"] == 1),
        "the bridge did not start draining within {DRAIN_START:?} of the broker's return: {}; \
         stderr:\n{}",
        bridge_status(node.port()),
        node.logs()
    );
}

#[test]
fn a_backlog_past_its_bound_at_mosquitto_drops_the_oldest_changes_and_says_so() {
    a_backlog_past_its_bound_drops_the_oldest_changes_and_says_so(Broker::mosquitto(&[]));
}

#[test]
fn a_backlog_past_its_bound_at_nats_drops_the_oldest_changes_and_says_so() {
    a_backlog_past_its_bound_drops_the_oldest_changes_and_says_so(Broker::nats("30s"));
}

fn a_backlog_past_its_bound_drops_the_oldest_changes_and_says_so(mut broker: Broker) {
    const MAX_BACKLOG: u64 = 1024 * 1024;
    const VALUE: usize = 10 * 1024;
    let subscriber = Subscriber::start(&broker, "lucid/#", "backlog-subscriber");
    let node = bridged(&broker.url())
        .raw("mqtt", &format!("max_backlog_bytes: {MAX_BACKLOG}"))
        .start();
    wait_connected(&node);
    for n in 0..5 {
        assert_eq!(
            put(node.port(), &format!("/api/kv/before/{n}"), b"x").status,
            201
        );
    }
    assert!(subscriber.wait_for(ARRIVAL_TIMEOUT, |received| received.len() == 5));
    // The broker's PUBACKs may come after the subscriber has the messages.
    assert!(eventually(ARRIVAL_TIMEOUT, || bridge_status(node.port())
        ["cursor"]
        == 5));
    let shipped = 5;

    broker.stop();
    // 3 MiB of changes while the broker is away.
    let mut conn = Conn::open(node.port());
    for n in 0..300 {
        let value = format!("{n:03}{}", "x".repeat(VALUE - 3));
        let resp = conn.send("PUT", &format!("/api/kv/big/{n:03}"), &[], value.as_bytes());
        assert_eq!(resp.status, 201, "{}", resp.text());
    }
    let last = shipped + 300;
    assert!(
        eventually(ARRIVAL_TIMEOUT, || {
            let status = bridge_status(node.port());
            status["dropped"].as_u64().unwrap() > 0
                && status["backlog_bytes"].as_u64().unwrap() <= MAX_BACKLOG
        }),
        "the backlog was not bounded: {}",
        bridge_status(node.port())
    );
    let dropped = metric(node.port(), "lucid_mqtt_dropped_changes_total") as u64;
    assert!(
        node.logs()
            .contains("the backlog passed mqtt.max_backlog_bytes (1048576): dropped the"),
        "{}",
        node.logs()
    );

    broker.start();
    let newest = format!("lucid/{NODE}/big/299");
    assert!(
        subscriber.wait_for(ARRIVAL_TIMEOUT, |received| received
            .iter()
            .any(|m| m.topic == newest)),
        "the newest change did not arrive; stderr:\n{}",
        node.logs()
    );
    let received = subscriber.received();
    let gap_at = received
        .iter()
        .position(|m| m.topic == format!("lucid/{NODE}/$gap"))
        .unwrap_or_else(|| panic!("no gap message in {:?}", received.len()));
    let gap = received[gap_at].json();
    let (from, to) = (gap["from"].as_u64().unwrap(), gap["to"].as_u64().unwrap());
    assert_eq!(
        gap,
        json!({"node": NODE, "op": "gap", "from": shipped + 1, "to": to})
    );
    assert_eq!(to - from + 1, dropped, "the gap is what was dropped");
    assert!(
        (last - to) * VALUE as u64 <= MAX_BACKLOG,
        "{} changes of {VALUE} bytes kept",
        last - to
    );
    // The oldest never arrive; the gap comes before the newer, which all
    // do. (The broker may send the subscriber again what it had not
    // acknowledged when the broker stopped: the changes before the outage.)
    let gap_topic = format!("lucid/{NODE}/$gap");
    let newer: Vec<(usize, u64)> = received
        .iter()
        .enumerate()
        .filter(|(_, m)| m.topic != gap_topic)
        .map(|(at, m)| (at, m.json()["seq"].as_u64().unwrap()))
        .filter(|&(_, seq)| seq > shipped)
        .collect();
    let sequences: Vec<u64> = newer.iter().map(|&(_, seq)| seq).collect();
    assert_eq!(
        sequences,
        (to + 1..=last).collect::<Vec<_>>(),
        "after the gap {from}..={to}"
    );
    assert!(gap_at < newer[0].0, "the gap comes first");
    let status = bridge_status(node.port());
    assert_eq!(
        (&status["gap"], &status["dropped"]),
        (&Value::Null, &json!(dropped)),
        "{status}"
    );
}

/// Every one of 10,000 messages published at QoS 1 on subscribed topics is
/// stored, the node killed midway and restarted.
fn every_message_is_stored_through_a_kill(broker: &Broker) {
    const MESSAGES: usize = 10_000;
    let mut node = ingesting(&broker.url()).start();
    wait_connected(&node);
    let publisher = publish_many(broker, MESSAGES, "devices/{n}/state", "m{n}");
    let midway = eventually(ARRIVAL_TIMEOUT, || {
        metric(node.port(), "lucid_mqtt_stored_total") >= (MESSAGES / 3) as f64
    });
    assert!(midway, "nothing stored; stderr:\n{}", node.logs());
    node.kill9();
    node.restart();
    publisher.finish(ARRIVAL_TIMEOUT);
    // The node holds no other keys.
    let all = eventually(ARRIVAL_TIMEOUT, || {
        metric(node.port(), "lucid_keys") == MESSAGES as f64
    });
    let export = get(node.port(), "/api/admin/export?prefix=dev/").text();
    let stored: HashMap<String, String> = export
        .lines()
        .map(|line| {
            let document: Value = serde_json::from_str(line).unwrap();
            (
                document["key"].as_str().unwrap().to_owned(),
                document["value"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let missing: Vec<usize> = (0..MESSAGES)
        .filter(|n| stored.get(&format!("dev/{n}")) != Some(&format!("m{n}")))
        .collect();
    assert!(
        all && missing.is_empty(),
        "{} of {MESSAGES} messages not stored (e.g. {:?}); bridge: {}; stderr:\n{}\nthe \
         broker's last words with the node:\n{}",
        missing.len(),
        &missing[..missing.len().min(10)],
        bridge_status(node.port()),
        node.logs(),
        broker.log_about("lucid-t1", 40)
    );
}

#[test]
fn every_message_from_mosquitto_is_stored_through_a_kill() {
    every_message_is_stored_through_a_kill(&Broker::mosquitto(&[]));
}

/// nats-server sends again a message not acknowledged within `ack_wait`,
/// on the same connection too: the messages the bridge drops in its
/// handshake (see the mosquitto test) come back after it.
#[test]
fn every_message_from_nats_is_stored_through_a_kill() {
    every_message_is_stored_through_a_kill(&Broker::nats("2s"));
}

#[test]
fn a_broker_refusing_the_credentials_is_retried_and_said_once() {
    let secrets = tempfile::tempdir().unwrap();
    let passwords = password_file(secrets.path(), "lucid", "right");
    let broker = Broker::mosquitto(&[
        "allow_anonymous false",
        &format!("password_file {}", passwords.display()),
    ]);
    let config = bridged(&broker.url()).raw("mqtt", "username: lucid");
    let mut node = config.clone().raw("mqtt", "password: wrong").start();
    let refused = format!("MQTT bridge to {}: the broker refused: ", broker.url());
    // Retried: the broker refuses the node again and again (5: not
    // authorized).
    assert!(
        eventually(ARRIVAL_TIMEOUT, || broker
            .log()
            .matches("Sending CONNACK to 127.0.0.1 (0, 5)")
            .count()
            >= 3),
        "no retries; the broker's log:\n{}\nthe node's:\n{}",
        broker.log(),
        node.logs()
    );
    let logs = node.logs();
    assert_eq!(logs.matches(&refused[..]).count(), 1, "said once:\n{logs}");
    assert!(logs.contains("retrying (backoff up to"), "{logs}");
    let status = bridge_status(node.port());
    assert_eq!(
        (&status["connected"], &status["connections"]),
        (&json!(false), &json!(0)),
        "{status}"
    );
    assert!(
        status["last_error"]
            .as_str()
            .is_some_and(|error| error.starts_with("the broker refused")),
        "{status}"
    );
    node.assert_serving();

    // The right password (from a file) is taken.
    let password = secrets.path().join("mqtt-password");
    std::fs::write(&password, "right\n").unwrap();
    node.reconfigure(&config.raw("mqtt", &format!("password_file: '{}'", password.display())));
    node.restart();
    wait_connected(&node);
}

#[test]
fn a_broker_not_listening_yet_is_retried_until_it_is() {
    let port = free_port();
    let url = format!("mqtt://127.0.0.1:{port}");
    let node = bridged(&url).start();
    let failed = format!("MQTT bridge to {url}: the link to the broker failed: ");
    assert!(
        eventually(ARRIVAL_TIMEOUT, || node.logs().contains(&failed)),
        "{}",
        node.logs()
    );
    assert!(node.logs().contains("retrying (backoff up to"));
    let status = bridge_status(node.port());
    assert_eq!(status["connected"], false, "{status}");
    assert!(status["last_error"].is_string(), "{status}");
    node.assert_serving();
    assert_eq!(put(node.port(), "/api/kv/waiting", b"1").status, 201);

    let broker = Broker::mosquitto_on(port, &[]).unwrap_or_else(|why| panic!("{why}"));
    let subscriber = Subscriber::start(&broker, "lucid/#", "late-subscriber");
    wait_connected(&node);
    assert_eq!(put(node.port(), "/api/kv/arrived", b"2").status, 201);
    assert!(
        subscriber.wait_for(ARRIVAL_TIMEOUT, |received| received
            .iter()
            .any(|m| key_of(m) == Some("arrived"))),
        "{}",
        node.logs()
    );
}

/// CONNACK (4 bytes) and the SUBACK of one filter (5).
const HANDSHAKE_FROM_BROKER: usize = 9;

#[test]
fn a_message_cut_off_by_the_broker_is_taken_whole_when_sent_again() {
    let broker = Broker::mosquitto(&[]);
    let proxy = CuttingProxy::start(broker.port(), Cut::FromBroker(HANDSHAKE_FROM_BROKER + 40));
    let node = ingesting(&proxy.url()).start();
    wait_connected(&node);
    let value = "v".repeat(4096);
    publish(&broker, "devices/cut/state", &value);
    let stored = eventually(ARRIVAL_TIMEOUT, || {
        get(node.port(), "/api/kv/dev/cut").body == value.as_bytes()
    });
    assert!(
        stored,
        "the message was not stored after the cut: {}; {} connections; stderr:\n{}\nthe \
         broker's log:\n{}",
        bridge_status(node.port()),
        proxy.connections(),
        node.logs(),
        broker.log()
    );
    let logs = node.logs();
    assert!(
        logs.contains("the link to the broker failed: the broker closed the connection; retrying"),
        "{logs}"
    );
    node.assert_serving();
}

#[test]
fn a_change_cut_off_on_its_way_to_the_broker_is_sent_again() {
    let broker = Broker::mosquitto(&[]);
    let subscriber = Subscriber::start(&broker, "lucid/#", "cut-subscriber");
    // Past the CONNECT, into the first PUBLISH.
    let proxy = CuttingProxy::start(broker.port(), Cut::ToBroker(200));
    let node = bridged(&proxy.url()).start();
    wait_connected(&node);
    let value = "v".repeat(4096);
    assert_eq!(
        put(node.port(), "/api/kv/cut", value.as_bytes()).status,
        201
    );
    let arrived = subscriber.wait_for(ARRIVAL_TIMEOUT, |received| !received.is_empty());
    assert!(
        arrived,
        "the change did not arrive: {}; {} connections; stderr:\n{}",
        bridge_status(node.port()),
        proxy.connections(),
        node.logs()
    );
    let document = subscriber.received()[0].json();
    assert_eq!(
        (&document["key"], &document["value"]),
        (&json!("cut"), &json!(value))
    );
    assert!(proxy.connections() >= 2, "the cut link was made again");
    assert!(
        node.logs().contains("the link to the broker failed"),
        "{}",
        node.logs()
    );
    node.assert_serving();
}

#[test]
fn a_message_larger_than_a_value_may_be_is_skipped_acknowledged_and_counted() {
    let broker = Broker::mosquitto(&[]);
    let mut node = ingesting(&broker.url()).start();
    wait_connected(&node);
    let scratch = tempfile::tempdir().unwrap();
    // storage.max_value_bytes is 16 MiB by default.
    let big = payload_file(scratch.path(), 20 * 1024 * 1024, b'x');
    publish_file(&broker, "devices/big/state", &big);
    publish(&broker, "devices/small/state", "after");
    assert!(
        eventually(ARRIVAL_TIMEOUT, || get(node.port(), "/api/kv/dev/small")
            .body
            == b"after"),
        "the message after the large one was not stored: {}; stderr:\n{}",
        bridge_status(node.port()),
        node.logs()
    );
    assert_eq!(get(node.port(), "/api/kv/dev/big").status, 404);
    let counted = |port: u16, name: &str| metric(port, &format!("lucid_mqtt_{name}_total"));
    let port = node.port();
    assert_eq!(
        (
            counted(port, "received"),
            counted(port, "stored"),
            counted(port, "refused")
        ),
        (2.0, 1.0, 1.0)
    );
    let logs = node.logs();
    assert!(
        logs.contains(
            "MQTT bridge: a message of 20971520 bytes on \"devices/big/state\" was not stored: \
             it is larger than storage.max_value_bytes; it is acknowledged so the broker does \
             not send it again"
        ),
        "{logs}"
    );
    node.assert_serving();

    // Acknowledged: the broker does not send it again to the node back.
    node.stop();
    node.restart();
    wait_connected(&node);
    publish(&broker, "devices/again/state", "1");
    assert!(eventually(ARRIVAL_TIMEOUT, || get(
        node.port(),
        "/api/kv/dev/again"
    )
    .status
        == 200));
    let port = node.port();
    assert_eq!(
        (counted(port, "received"), counted(port, "refused")),
        (1.0, 0.0)
    );
}

#[test]
fn a_bad_mqtt_section_stops_the_node_with_a_clear_error() {
    for (line, error) in [
        (
            "url: http://127.0.0.1:1883",
            "is not an mqtt:// or mqtts:// URL",
        ),
        ("url: mqtt://127.0.0.1:0", "has a port that is not a number"),
        (
            "max_backlog_bytes: 1000",
            "mqtt.max_backlog_bytes must be at least 1048576",
        ),
        (
            r#"subscribe: [{filter: "a/#/b"}]"#,
            "is not an MQTT topic filter",
        ),
        (
            r#"subscribe: [{filter: "a/+", key: "{2}"}]"#,
            "uses {2}, but filter \"a/+\" has 1 `+`",
        ),
    ] {
        let mut config = Config::new().raw("mqtt", line);
        if !line.starts_with("url:") {
            config = config.raw("mqtt", "url: mqtt://127.0.0.1:1883");
        }
        let (status, stderr) = config.start_expect_failure();
        assert!(!status.success(), "{line}");
        assert!(stderr.contains(error), "{line}: {stderr}");
    }
}

#[test]
fn the_bridge_status_says_when_it_is_off() {
    let node = Node::start();
    let resp = get(node.port(), "/api/admin/mqtt");
    assert_message(&resp, 404, "The MQTT bridge is off (mqtt.url is not set).");
    assert!(!get(node.port(), "/metrics").text().contains("lucid_mqtt_"));
    let resp = request(node.port(), "POST", "/api/admin/mqtt", &[], b"");
    assert_eq!(
        (resp.status, resp.header("Allow")),
        (405, Some("GET, HEAD"))
    );
}

#[test]
fn the_bridge_status_needs_the_admin_scope() {
    let broker = Broker::mosquitto(&[]);
    let node = bridged(&broker.url())
        .secured("a secret for the bridge's status")
        .start();
    let status_with = |token: &str| {
        let bearer = format!("Bearer {token}");
        request(
            node.port(),
            "GET",
            "/api/admin/mqtt",
            &[("Authorization", &bearer)],
            b"",
        )
    };
    assert_eq!(get(node.port(), "/api/admin/mqtt").status, 401);
    let reader = node.issue_token(&["--scope", "read"]);
    assert_eq!(status_with(&reader).status, 403);
    let admin = node.issue_token(&["--scope", "admin"]);
    let resp = status_with(&admin);
    assert_eq!(resp.status, 200, "{}", resp.text());
    let status: Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(status["broker"], broker.url(), "{status}");
}

/// With `retain`, the broker keeps each key's last change (in `payload`
/// format) for subscribers to come, and a delete clears the key's retained
/// message.
fn retained_messages_follow_the_keys(payload: &str) {
    let broker = Broker::mosquitto(&[]);
    let node = bridged(&broker.url())
        .raw(
            "mqtt",
            &format!("publish: {{retain: true, payload: {payload}}}"),
        )
        .start();
    wait_connected(&node);
    for (method, key, body) in [("PUT", "a", "1"), ("PUT", "b", "2"), ("DELETE", "b", "")] {
        let resp = request(node.port(), method, &kv_path(key), &[], body.as_bytes());
        assert!(matches!(resp.status, 200 | 201), "{}", resp.text());
    }
    assert!(eventually(ARRIVAL_TIMEOUT, || bridge_status(node.port())
        ["cursor"]
        == 3));
    // A subscriber that comes now gets the retained messages first, then
    // what is published after it subscribed.
    let subscriber = Subscriber::start(&broker, "lucid/#", "retained-subscriber");
    publish(&broker, "lucid/marker", "after");
    assert!(subscriber.wait_for(ARRIVAL_TIMEOUT, |received| received
        .iter()
        .any(|m| m.topic == "lucid/marker")));
    let received = subscriber.received();
    let retained: Vec<&Received> = received
        .iter()
        .take_while(|m| m.topic != "lucid/marker")
        .collect();
    assert!(
        retained.iter().any(|m| key_of(m) == Some("a")),
        "{retained:?}"
    );
    assert!(
        retained.iter().all(|m| key_of(m) != Some("b")),
        "the deleted key's message is still retained: {retained:?}"
    );
}

#[test]
fn retained_raw_messages_follow_the_keys() {
    retained_messages_follow_the_keys("raw");
}

#[test]
fn retained_json_messages_follow_the_keys() {
    retained_messages_follow_the_keys("json");
}
