//! The byte stream to the broker: a TCP connection (`mqtt://`) or, with
//! the `tls` feature, TLS over it (`mqtts://`: rustls with ring, the
//! broker's certificate checked for its host against `mqtt.ca_file`'s
//! certificates, or the web PKI's roots without it; see
//! [`crate::tls_trust`]).
//!
//! A read waits at most a given time, or not at all. Over TLS a record
//! may arrive in pieces: a read goes on taking them in until it yields
//! plaintext or the wait ends, and what arrived of a record stays in the
//! TLS connection for the next read.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::settings::MqttSettings;

/// Where the broker is, and how the link to it is secured.
#[derive(Debug, Clone)]
pub struct Endpoint {
    host: String,
    port: u16,
    /// For `mqtts://`.
    #[cfg(feature = "tls")]
    tls: Option<tls::TlsClient>,
}

/// A connection to the broker.
pub enum Link {
    /// `mqtt://`.
    Plain(TcpStream),
    /// `mqtts://`.
    #[cfg(feature = "tls")]
    Tls(Box<tls::TlsStream>),
}

impl Endpoint {
    /// The broker `mqtt.url` names; for `mqtts://`, with the certificates
    /// `mqtt.ca_file` trusts, read now (it fails, naming the file, if they
    /// cannot be).
    pub fn new(settings: &MqttSettings) -> Result<Self, String> {
        let broker = settings.broker()?;
        // A build without TLS refused mqtts:// in `broker()`.
        #[cfg(feature = "tls")]
        let tls = match broker.tls {
            true => Some(tls::TlsClient::new(settings.broker_trust(), &broker.host)?),
            false => None,
        };
        Ok(Self {
            host: broker.host,
            port: broker.port,
            #[cfg(feature = "tls")]
            tls,
        })
    }

    /// Connects, waiting at most `timeout` for the broker to accept (and
    /// for each step of the TLS handshake).
    pub fn connect(&self, timeout: Duration) -> io::Result<Link> {
        let address = (self.host.as_str(), self.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{} has no address", self.host),
                )
            })?;
        let socket = TcpStream::connect_timeout(&address, timeout)?;
        socket.set_nodelay(true)?;
        socket.set_write_timeout(Some(timeout))?;
        #[cfg(feature = "tls")]
        if let Some(client) = &self.tls {
            return Ok(Link::Tls(Box::new(client.handshake(socket, timeout)?)));
        }
        Ok(Link::Plain(socket))
    }
}

impl Link {
    /// The TCP connection under the link.
    fn socket(&self) -> &TcpStream {
        match self {
            Self::Plain(socket) => socket,
            #[cfg(feature = "tls")]
            Self::Tls(stream) => &stream.sock,
        }
    }

    /// Reads into `buf` what arrives within `wait` (zero: only what is
    /// there now). `Ok(0)`: the broker closed the link; an error of kind
    /// `WouldBlock` or `TimedOut`: nothing came.
    pub fn read_within(&mut self, buf: &mut [u8], wait: Duration) -> io::Result<usize> {
        if wait.is_zero() {
            self.socket().set_nonblocking(true)?;
        }
        let read = match self {
            Self::Plain(socket) => {
                if !wait.is_zero() {
                    socket.set_read_timeout(Some(wait))?;
                }
                socket.read(buf)
            }
            #[cfg(feature = "tls")]
            Self::Tls(stream) => tls::read_within(stream, buf, wait),
        };
        if wait.is_zero() {
            self.socket().set_nonblocking(false)?;
        }
        read
    }

    /// Sends all of `bytes`.
    pub fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Self::Plain(socket) => socket.write_all(bytes),
            #[cfg(feature = "tls")]
            Self::Tls(stream) => {
                stream.write_all(bytes)?;
                stream.flush()
            }
        }
    }
}

/// `mqtts://`: the TLS client and its reads.
#[cfg(feature = "tls")]
mod tls {
    use std::io::{self, Read};
    use std::net::TcpStream;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection, StreamOwned};

    use crate::tls_trust::CaFile;

    /// A TLS connection over a TCP one.
    pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

    /// How to open a TLS connection to the broker.
    #[derive(Debug, Clone)]
    pub struct TlsClient {
        config: Arc<ClientConfig>,
        /// The broker's host: sent as SNI (unless it is an address), and
        /// what its certificate must be for.
        name: ServerName<'static>,
        /// Named when the broker's certificate is refused.
        trust: CaFile,
    }

    impl TlsClient {
        /// A client of `host` trusting what `trust` says.
        pub fn new(trust: CaFile, host: &str) -> Result<Self, String> {
            let roots = trust.root_store()?;
            let name = ServerName::try_from(host.to_owned()).map_err(|err| {
                format!(
                    "mqtt.url: the host {host:?} cannot be checked against a TLS certificate \
                     ({err}); give its DNS name or IP address"
                )
            })?;
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|err| format!("cannot set up TLS for mqtts://: {err}"))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Ok(Self {
                config: Arc::new(config),
                name,
                trust,
            })
        }

        /// Opens TLS over `socket`, waiting at most `timeout` for each of
        /// the broker's answers.
        pub fn handshake(&self, socket: TcpStream, timeout: Duration) -> io::Result<TlsStream> {
            let connection = ClientConnection::new(Arc::clone(&self.config), self.name.clone())
                .map_err(io::Error::other)?;
            let mut stream = StreamOwned::new(connection, socket);
            stream.sock.set_read_timeout(Some(timeout))?;
            while stream.conn.is_handshaking() {
                if let Err(err) = stream.conn.complete_io(&mut stream.sock) {
                    return Err(self.explain(err));
                }
            }
            Ok(stream)
        }

        /// `err`, said so that the user knows what to do when it is the
        /// broker's certificate refused, or its silence.
        fn explain(&self, err: io::Error) -> io::Error {
            if matches!(
                err.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) {
                return io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the broker did not answer the TLS handshake in time (is it a TLS listener?)",
                );
            }
            match err.get_ref().and_then(|inner| inner.downcast_ref()) {
                Some(refused @ rustls::Error::InvalidCertificate(_)) => io::Error::new(
                    io::ErrorKind::InvalidData,
                    self.trust.refusal(&refused.to_string()),
                ),
                _ => err,
            }
        }
    }

    /// [`Link::read_within`](super::Link::read_within) over TLS: TLS
    /// records are taken in until one yields plaintext, or the wait ends.
    pub fn read_within(
        stream: &mut TlsStream,
        buf: &mut [u8],
        wait: Duration,
    ) -> io::Result<usize> {
        let deadline = Instant::now() + wait;
        loop {
            match stream.conn.reader().read(buf) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                read => return read,
            }
            if !wait.is_zero() {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                stream.sock.set_read_timeout(Some(left))?;
            }
            stream.conn.read_tls(&mut stream.sock)?;
            stream
                .conn
                .process_new_packets()
                .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))?;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    /// Settings for a broker at `url`, trusting `ca_file` if given.
    fn settings(url: &str, ca_file: Option<&std::path::Path>) -> MqttSettings {
        MqttSettings {
            url: url.into(),
            ca_file: ca_file.map(Into::into).unwrap_or_default(),
            ..MqttSettings::default()
        }
    }

    fn nothing_came(read: io::Result<usize>) -> bool {
        matches!(
            read.map_err(|err| err.kind()),
            Err(io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
        )
    }

    #[test]
    fn a_plain_read_takes_what_is_there_or_says_nothing_came() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let endpoint = Endpoint::new(&settings(&format!("mqtt://127.0.0.1:{port}"), None)).unwrap();
        let mut link = endpoint.connect(Duration::from_secs(10)).unwrap();
        let (mut broker, _) = listener.accept().unwrap();
        let mut buf = [0; 16];
        assert!(nothing_came(link.read_within(&mut buf, Duration::ZERO)));
        assert!(nothing_came(
            link.read_within(&mut buf, Duration::from_millis(20))
        ));
        broker.write_all(b"hi").unwrap();
        let read = link.read_within(&mut buf, Duration::from_secs(10)).unwrap();
        assert_eq!(&buf[..read], b"hi");
        link.write_all(b"there").unwrap();
        let mut got = [0; 5];
        broker.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"there");
        drop(broker);
        assert_eq!(
            link.read_within(&mut buf, Duration::from_secs(10)).unwrap(),
            0
        );
    }

    #[cfg(feature = "tls")]
    mod over_tls {
        use std::path::{Path, PathBuf};
        use std::sync::mpsc;
        use std::sync::Arc;
        use std::thread;

        use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
        use rustls::{ServerConfig, ServerConnection};

        use super::*;

        /// A self-signed certificate for 127.0.0.1 (a CA's if `ca`)
        /// written to `dir/name.pem`, and the TLS server configuration that
        /// presents it.
        fn certificate(dir: &Path, name: &str, ca: bool) -> (PathBuf, Arc<ServerConfig>) {
            let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".into()]).unwrap();
            if ca {
                params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            }
            let key_pair = rcgen::KeyPair::generate().unwrap();
            let cert = params.self_signed(&key_pair).unwrap();
            let path = dir.join(format!("{name}.pem"));
            std::fs::write(&path, cert.pem()).unwrap();
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pair.serialize_der()));
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![cert.der().clone()], key)
                .unwrap();
            // Nothing but what a test sends follows the handshake.
            config.send_tls13_tickets = 0;
            (path, Arc::new(config))
        }

        /// A TLS server on a free port that runs `serve` on its one
        /// connection (once its handshake is done, if it succeeds).
        fn serve_once(
            config: Arc<ServerConfig>,
            serve: impl FnOnce(ServerConnection, TcpStream) + Send + 'static,
        ) -> (u16, thread::JoinHandle<()>) {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let server = thread::spawn(move || {
                let (mut socket, _) = listener.accept().unwrap();
                let mut connection = ServerConnection::new(config).unwrap();
                while connection.is_handshaking() {
                    if connection.complete_io(&mut socket).is_err() {
                        return;
                    }
                }
                serve(connection, socket);
            });
            (port, server)
        }

        /// A link to `mqtts://127.0.0.1:port`, trusting `ca_file`.
        fn connect(port: u16, ca_file: &Path) -> io::Result<Link> {
            let url = format!("mqtts://127.0.0.1:{port}");
            let endpoint = Endpoint::new(&settings(&url, Some(ca_file))).unwrap();
            endpoint.connect(Duration::from_secs(10))
        }

        #[test]
        fn a_record_read_in_pieces_yields_its_plaintext_once_whole() {
            let dir = tempfile::tempdir().unwrap();
            let (ca_file, config) = certificate(dir.path(), "broker", false);
            let (go, gone) = mpsc::channel();
            let (port, server) = serve_once(config, move |mut connection, mut socket| {
                connection.writer().write_all(b"hello").unwrap();
                let mut record = Vec::new();
                connection.write_tls(&mut record).unwrap();
                let half = record.len() / 2;
                socket.write_all(&record[..half]).unwrap();
                gone.recv().unwrap();
                socket.write_all(&record[half..]).unwrap();
                connection.send_close_notify();
                connection.complete_io(&mut socket).unwrap();
            });
            let mut link = connect(port, &ca_file).unwrap();
            // Half the record is here: no plaintext yet, whether asked
            // without waiting or with a wait that ends first.
            link.socket().peek(&mut [0]).unwrap();
            let mut buf = [0; 16];
            assert!(nothing_came(link.read_within(&mut buf, Duration::ZERO)));
            assert!(nothing_came(
                link.read_within(&mut buf, Duration::from_millis(20))
            ));
            go.send(()).unwrap();
            let read = link.read_within(&mut buf, Duration::from_secs(10)).unwrap();
            assert_eq!(&buf[..read], b"hello");
            // The broker's close_notify ends the link.
            assert_eq!(
                link.read_within(&mut buf, Duration::from_secs(10)).unwrap(),
                0
            );
            server.join().unwrap();
        }

        #[test]
        fn what_is_written_arrives_decrypted() {
            let dir = tempfile::tempdir().unwrap();
            let (ca_file, config) = certificate(dir.path(), "broker", false);
            let (port, server) = serve_once(config, |connection, socket| {
                let mut stream = rustls::StreamOwned::new(connection, socket);
                let mut got = [0; 5];
                stream.read_exact(&mut got).unwrap();
                assert_eq!(&got, b"there");
            });
            let mut link = connect(port, &ca_file).unwrap();
            link.write_all(b"there").unwrap();
            server.join().unwrap();
        }

        #[test]
        fn a_certificate_not_trusted_is_refused_with_what_to_do() {
            let dir = tempfile::tempdir().unwrap();
            let (_, config) = certificate(dir.path(), "broker", false);
            let (other_ca, _) = certificate(dir.path(), "other", false);
            let (port, server) = serve_once(config, |_, _| unreachable!("handshake done"));
            let err = connect(port, &other_ca).err().unwrap().to_string();
            assert!(
                err.contains("the broker's TLS certificate was refused (invalid peer certificate"),
                "{err}"
            );
            assert!(err.contains("mqtt.ca_file"), "{err}");
            assert!(err.contains(other_ca.to_str().unwrap()), "{err}");
            server.join().unwrap();
        }

        #[test]
        fn a_ca_s_certificate_as_the_broker_s_own_is_refused_with_what_to_do() {
            let dir = tempfile::tempdir().unwrap();
            let (ca_file, config) = certificate(dir.path(), "broker", true);
            let (port, server) = serve_once(config, |_, _| unreachable!("handshake done"));
            let err = connect(port, &ca_file).err().unwrap().to_string();
            assert!(err.contains("CaUsedAsEndEntity"), "{err}");
            assert!(err.contains("it is a CA's certificate"), "{err}");
            server.join().unwrap();
        }

        #[test]
        fn a_silent_broker_fails_the_handshake_in_time() {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let endpoint =
                Endpoint::new(&settings(&format!("mqtts://127.0.0.1:{port}"), None)).unwrap();
            let err = endpoint.connect(Duration::from_millis(100)).err().unwrap();
            assert_eq!(err.kind(), io::ErrorKind::TimedOut);
            assert!(err.to_string().contains("TLS handshake"), "{err}");
            drop(listener);
        }

        #[test]
        fn the_ca_file_and_the_host_are_checked_at_the_start() {
            let dir = tempfile::tempdir().unwrap();
            let missing = dir.path().join("missing.pem");
            let err = Endpoint::new(&settings("mqtts://b", Some(&missing))).unwrap_err();
            assert!(err.contains("mqtt.ca_file"), "{err}");
            assert!(err.contains("missing.pem: No such file"), "{err}");
            let err = Endpoint::new(&settings("mqtts://bad host", None)).unwrap_err();
            assert!(err.contains("\"bad host\" cannot be checked"), "{err}");
            assert!(Endpoint::new(&settings("mqtts://[::1]", None)).is_ok());
        }
    }
}
