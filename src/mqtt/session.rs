//! One connection to the broker, MQTT 3.1.1 over TCP or TLS (see
//! [`super::link`]), blocking, on the bridge's thread: CONNECT (a
//! persistent session, so the broker keeps the subscriptions' messages
//! while the node is away and sends again what it did not get
//! acknowledged), SUBSCRIBE at QoS 1, QoS 1 PUBLISH with
//! packet ids, PUBACKs sent when the caller says (only once a message is
//! stored), and keep-alive pings. Packets are encoded and decoded by the
//! `mqtt-proto` crate; this module only frames them on the link.
//!
//! A message larger than the node would store (`max_incoming`) is never
//! held in memory whole: its topic and packet id are read, the rest is
//! skipped as it arrives, and it is reported as [`Incoming::Oversized`].

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mqtt_proto::v3::SubscribeReturnCode;
use mqtt_proto::v3::{Connect, ConnectReturnCode, Header, Packet, Publish, Suback, Subscribe};
use mqtt_proto::{Pid, QoS, QosPid, TopicFilter, TopicName};

use super::link::{Endpoint, Link};
use super::settings::MqttSettings;

/// How long to wait for the broker to accept a connection and answer it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Queued outgoing bytes are sent once they reach this much.
const SEND_BATCH: usize = 64 * 1024;

/// What a session connects with.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    endpoint: Endpoint,
    client_id: String,
    username: Option<String>,
    password: Option<String>,
    keepalive: Duration,
    /// The largest message taken in whole.
    max_incoming: usize,
}

/// Why a session ended or could not start.
#[derive(Debug)]
pub enum SessionError {
    /// The broker refused the connection (CONNACK) or a subscription.
    Refused(String),
    /// The network failed (the broker unreachable, the link cut).
    Io(io::Error),
    /// The broker sent something that is not MQTT 3.1.1.
    Protocol(String),
    /// Something on this node's side (reading the log, the disk).
    Local(String),
}

impl std::fmt::Display for SessionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused(why) => write!(f, "the broker refused: {why}"),
            Self::Io(err) => write!(f, "the link to the broker failed: {err}"),
            Self::Protocol(why) => write!(f, "the broker sent {why}"),
            Self::Local(why) => f.write_str(why),
        }
    }
}

impl From<io::Error> for SessionError {
    fn from(err: io::Error) -> Self {
        Self::Io(err)
    }
}

/// What came from the broker.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// The broker has the message sent with this packet id.
    PubAck(u16),
    /// A message on a subscribed topic (`id` for QoS 1: acknowledge it).
    Publish {
        /// Its packet id, for QoS 1 and 2.
        id: Option<u16>,
        /// Its topic.
        topic: String,
        /// Its payload.
        payload: Vec<u8>,
    },
    /// A message too large to take in, skipped.
    Oversized {
        /// Its packet id, for QoS 1 and 2.
        id: Option<u16>,
        /// Its topic.
        topic: String,
        /// Its payload's size.
        len: usize,
    },
}

impl SessionOptions {
    /// The options `settings` give, for node `node` taking in messages of
    /// at most `max_incoming` bytes; for `mqtts://`, reads the
    /// certificates `mqtt.ca_file` trusts.
    pub fn new(settings: &MqttSettings, node: &str, max_incoming: usize) -> Result<Self, String> {
        let endpoint = Endpoint::new(settings)?;
        let client_id = if settings.client_id.is_empty() {
            format!("lucid-{node}")
        } else {
            settings.client_id.clone()
        };
        Ok(Self {
            endpoint,
            client_id,
            username: (!settings.username.is_empty()).then(|| settings.username.clone()),
            password: settings.password()?,
            keepalive: Duration::from_secs(u64::from(settings.keepalive_s)),
            max_incoming,
        })
    }
}

/// A connected session.
pub struct Session {
    stream: Link,
    options: Arc<SessionOptions>,
    /// Received bytes, `start..end` not consumed yet.
    input: Vec<u8>,
    start: usize,
    end: usize,
    /// Encoded packets not sent yet.
    output: Vec<u8>,
    last_sent: Instant,
    last_heard: Instant,
    ping_sent: Option<Instant>,
    next_id: u16,
    /// An oversized message being skipped: bytes left of it.
    skipping: usize,
    /// The SUBSCRIBE sent and its filters, until its SUBACK comes.
    subscribed: Option<(Pid, Vec<String>)>,
}

impl Session {
    /// Connects with `options`, sets up a persistent session and
    /// subscribes to `filters` at QoS 1.
    pub fn connect(options: &Arc<SessionOptions>, filters: &[&str]) -> Result<Self, SessionError> {
        let mut session = Self {
            stream: options.endpoint.connect(CONNECT_TIMEOUT)?,
            options: Arc::clone(options),
            input: vec![0; 64 * 1024],
            start: 0,
            end: 0,
            output: Vec::with_capacity(SEND_BATCH),
            last_sent: Instant::now(),
            last_heard: Instant::now(),
            ping_sent: None,
            next_id: 0,
            skipping: 0,
            subscribed: None,
        };
        session.handshake(filters)?;
        Ok(session)
    }

    fn handshake(&mut self, filters: &[&str]) -> Result<(), SessionError> {
        let options = Arc::clone(&self.options);
        let client_id = options.client_id.as_str().into();
        let keep_alive = u16::try_from(options.keepalive.as_secs()).unwrap_or(u16::MAX);
        let mut connect = Connect::new(client_id, keep_alive);
        connect.clean_session = false;
        connect.username = options.username.as_deref().map(|name| name.into());
        connect.password = options
            .password
            .as_ref()
            .map(|p| p.clone().into_bytes().into());
        self.queue(&Packet::Connect(connect))?;
        self.flush()?;
        match self.wait_for_packet()? {
            Packet::Connack(connack) => match connack.code {
                ConnectReturnCode::Accepted => {}
                ConnectReturnCode::BadUserNameOrPassword => {
                    return Err(SessionError::Refused(
                        "bad user name or password (mqtt.username, mqtt.password)".into(),
                    ))
                }
                ConnectReturnCode::NotAuthorized => {
                    return Err(SessionError::Refused(
                        "not authorized (check mqtt.username and mqtt.password, and the \
                         broker's access rules)"
                            .into(),
                    ))
                }
                ConnectReturnCode::IdentifierRejected => {
                    return Err(SessionError::Refused(format!(
                        "the client id {:?} (mqtt.client_id)",
                        options.client_id
                    )))
                }
                code => return Err(SessionError::Refused(format!("{code:?}"))),
            },
            other => return Err(unexpected(&other)),
        }
        if filters.is_empty() {
            return Ok(());
        }
        let topics = filters
            .iter()
            .map(|filter| {
                TopicFilter::try_from(*filter)
                    .map(|filter| (filter, QoS::Level1))
                    .map_err(|_| SessionError::Local(format!("{filter:?} is not a topic filter")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let id = self.next_id()?;
        self.queue(&Packet::Subscribe(Subscribe::new(id, topics)))?;
        self.flush()?;
        // The SUBACK is checked as it comes, by `poll`: messages of the
        // persistent session may come before it, and are taken in.
        self.subscribed = Some((id, filters.iter().map(|f| f.to_string()).collect()));
        Ok(())
    }

    /// Queues a QoS 1 PUBLISH of `payload` on `topic`; returns its packet
    /// id. Sent by [`flush`](Self::flush), or once enough is queued.
    pub fn publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        retain: bool,
    ) -> Result<u16, SessionError> {
        let name = TopicName::try_from(topic)
            .map_err(|_| SessionError::Local(format!("{topic:?} is not a topic name")))?;
        let id = self.next_id()?;
        let mut publish = Publish::new(QosPid::Level1(id), name, payload.to_vec().into());
        publish.retain = retain;
        self.queue(&Packet::Publish(publish))?;
        if self.output.len() >= SEND_BATCH {
            self.flush()?;
        }
        Ok(id.value())
    }

    /// Queues the acknowledgement of the message with packet id `id` (sent
    /// by [`flush`](Self::flush)).
    pub fn puback(&mut self, id: u16) -> Result<(), SessionError> {
        let pid = Pid::try_from(id).map_err(|_| SessionError::Protocol("a packet id 0".into()))?;
        self.queue(&Packet::Puback(pid))
    }

    /// Sends what is queued.
    pub fn flush(&mut self) -> Result<(), SessionError> {
        if !self.output.is_empty() {
            self.stream.write_all(&self.output)?;
            self.output.clear();
            self.last_sent = Instant::now();
        }
        Ok(())
    }

    /// The next packet from the broker that the caller must see, waiting
    /// up to `wait` for one (`None` if none came). Pings as keep-alive
    /// asks, and fails if the broker stays silent past it.
    pub fn poll(&mut self, wait: Duration) -> Result<Option<Incoming>, SessionError> {
        self.keep_alive()?;
        let deadline = Instant::now() + wait;
        loop {
            if let Some(incoming) = self.next_buffered()? {
                return Ok(Some(incoming));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if !self.fill(left)? {
                return Ok(None);
            }
        }
    }

    fn keep_alive(&mut self) -> Result<(), SessionError> {
        let keepalive = self.options.keepalive;
        if let Some(sent) = self.ping_sent {
            if sent.elapsed() > keepalive {
                return Err(SessionError::Io(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the broker did not answer a ping",
                )));
            }
        } else if self.last_sent.elapsed() >= keepalive / 2 {
            self.queue(&Packet::Pingreq)?;
            self.flush()?;
            self.ping_sent = Some(Instant::now());
        }
        Ok(())
    }

    /// The next packet already received that the caller must see.
    fn next_buffered(&mut self) -> Result<Option<Incoming>, SessionError> {
        loop {
            if self.skipping > 0 {
                let skipped = self.skipping.min(self.end - self.start);
                self.start += skipped;
                self.skipping -= skipped;
                if self.skipping > 0 {
                    return Ok(None);
                }
            }
            let Some(packet) = self.decode()? else {
                return Ok(None);
            };
            self.last_heard = Instant::now();
            match packet {
                Decoded::Packet(Packet::Puback(id)) => {
                    return Ok(Some(Incoming::PubAck(id.value())))
                }
                Decoded::Packet(Packet::Publish(publish)) => {
                    return Ok(Some(Incoming::Publish {
                        id: publish.qos_pid.pid().map(Pid::value),
                        topic: publish.topic_name.to_string(),
                        payload: publish.payload.to_vec(),
                    }))
                }
                Decoded::Packet(Packet::Pingresp) => self.ping_sent = None,
                Decoded::Packet(Packet::Suback(suback)) => self.check_suback(&suback)?,
                Decoded::Packet(other) => return Err(unexpected(&other)),
                Decoded::Oversized(incoming) => return Ok(Some(incoming)),
            }
        }
    }

    /// Fails if the broker refused one of the subscriptions.
    fn check_suback(&mut self, suback: &Suback) -> Result<(), SessionError> {
        let Some((id, filters)) = self.subscribed.take() else {
            return Err(SessionError::Protocol("a SUBACK for no SUBSCRIBE".into()));
        };
        if suback.pid != id {
            return Err(SessionError::Protocol(
                "a SUBACK for another SUBSCRIBE".into(),
            ));
        }
        let refused: Vec<&str> = suback
            .topics
            .iter()
            .zip(&filters)
            .filter(|(code, _)| **code == SubscribeReturnCode::Failure)
            .map(|(_, filter)| filter.as_str())
            .collect();
        if refused.is_empty() {
            Ok(())
        } else {
            Err(SessionError::Refused(format!(
                "the subscriptions to {}",
                refused.join(", ")
            )))
        }
    }

    /// Decodes the packet at the start of the input, if it is whole (an
    /// oversized PUBLISH as soon as its topic and id are).
    fn decode(&mut self) -> Result<Option<Decoded>, SessionError> {
        let available = &self.input[self.start..self.end];
        let header = match Header::decode(available) {
            Ok(header) => header,
            Err(err) if err.is_eof() => return Ok(None),
            Err(err) => {
                return Err(SessionError::Protocol(format!(
                    "a malformed packet ({err})"
                )))
            }
        };
        let head = 1 + header.total_len as usize;
        let len = head + header.remaining_len as usize;
        if header.remaining_len as usize > self.options.max_incoming {
            return self.decode_oversized(header.remaining_len as usize, head);
        }
        if available.len() < len {
            if self.input.len() < len {
                self.input.resize(len, 0);
            }
            return Ok(None);
        }
        let packet = Packet::decode(&available[..len])
            .map_err(|err| SessionError::Protocol(format!("a malformed packet ({err})")))?
            .ok_or_else(|| SessionError::Protocol("a packet shorter than it said".into()))?;
        self.start += len;
        Ok(Some(Decoded::Packet(packet)))
    }

    /// The topic and id of a PUBLISH too large to take in, once they are
    /// received; the rest is then skipped.
    fn decode_oversized(
        &mut self,
        remaining: usize,
        head: usize,
    ) -> Result<Option<Decoded>, SessionError> {
        let available = &self.input[self.start..self.end];
        let qos = (available[0] >> 1) & 3;
        if available[0] >> 4 != 3 {
            return Err(SessionError::Protocol(format!(
                "a packet of {remaining} bytes"
            )));
        }
        let Some(topic_len) = available.get(head..head + 2) else {
            return Ok(None);
        };
        let topic_len = usize::from(u16::from_be_bytes([topic_len[0], topic_len[1]]));
        let id_len = if qos > 0 { 2 } else { 0 };
        let variable = 2 + topic_len + id_len;
        let Some(variable_bytes) = available.get(head..head + variable) else {
            return Ok(None);
        };
        let topic = String::from_utf8_lossy(&variable_bytes[2..2 + topic_len]).into_owned();
        let id = (qos > 0).then(|| {
            u16::from_be_bytes([variable_bytes[2 + topic_len], variable_bytes[3 + topic_len]])
        });
        self.start += head;
        self.skipping = remaining;
        Ok(Some(Decoded::Oversized(Incoming::Oversized {
            id,
            topic,
            len: remaining - variable,
        })))
    }

    /// Reads what arrives within `wait` (none: only what is there now);
    /// `false` if nothing did.
    fn fill(&mut self, wait: Duration) -> Result<bool, SessionError> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.start > 0 && self.end == self.input.len() {
            self.input.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        if self.end == self.input.len() {
            self.input.resize(self.input.len() * 2, 0);
        }
        match self.stream.read_within(&mut self.input[self.end..], wait) {
            Ok(0) => Err(SessionError::Io(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the broker closed the connection",
            ))),
            Ok(n) => {
                self.end += n;
                Ok(true)
            }
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(false)
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Waits for the next packet during the handshake.
    fn wait_for_packet(&mut self) -> Result<Packet, SessionError> {
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        loop {
            if let Some(Decoded::Packet(packet)) = self.decode()? {
                return Ok(packet);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(SessionError::Io(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the broker did not answer in time (is it an MQTT broker?)",
                )));
            }
            self.fill(left)?;
        }
    }

    fn queue(&mut self, packet: &Packet) -> Result<(), SessionError> {
        let bytes = packet
            .encode()
            .map_err(|err| SessionError::Local(format!("cannot encode a packet: {err}")))?;
        self.output.extend_from_slice(bytes.as_ref());
        Ok(())
    }

    fn next_id(&mut self) -> Result<Pid, SessionError> {
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        Pid::try_from(self.next_id).map_err(|_| SessionError::Local("packet id 0".into()))
    }
}

/// A packet decoded, or the start of one too large to take in.
enum Decoded {
    Packet(Packet),
    Oversized(Incoming),
}

fn unexpected(packet: &Packet) -> SessionError {
    SessionError::Protocol(format!("an unexpected {:?} packet", packet.get_type()))
}
