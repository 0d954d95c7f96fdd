//! The systemd notify protocol (`Type=notify` services): `READY=1` once the
//! node serves, `STOPPING=1` when it begins to stop, and `WATCHDOG=1` pings
//! when the unit sets `WatchdogSec=`. Each message is one datagram sent to
//! the socket named by `$NOTIFY_SOCKET` (a path, or `@name` for Linux's
//! abstract namespace). Without that variable every call does nothing, so
//! the node runs the same outside systemd.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Where to send notifications, if anywhere.
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET`; an unusable value is logged and ignored.
    pub fn from_env() -> Self {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|name| {
            let name = name.to_string_lossy().into_owned();
            match connect(&name) {
                Ok(target) => Some(target),
                Err(err) => {
                    log::warn!("NOTIFY_SOCKET={name} is unusable ({err}); systemd will not hear from the node");
                    None
                }
            }
        });
        Self { target }
    }

    /// Tells systemd the node is up and serving; `status` is shown by
    /// `systemctl status`.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    /// Tells systemd the node is shutting down.
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping");
    }

    /// Keeps systemd's watchdog from restarting the node.
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    /// How often to ping the watchdog: half of `$WATCHDOG_USEC`, if it is set
    /// for this process.
    pub fn watchdog_period(&self) -> Option<Duration> {
        self.target.as_ref()?;
        let pid_matches =
            std::env::var("WATCHDOG_PID").map_or(true, |pid| pid.parse() == Ok(std::process::id()));
        let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
        (pid_matches && usec > 0).then(|| Duration::from_micros(usec / 2))
    }

    fn send(&self, message: &str) {
        if let Some((socket, addr)) = &self.target {
            if let Err(err) = socket.send_to_addr(message.as_bytes(), addr) {
                log::warn!("could not notify systemd: {err}");
            }
        }
    }
}

fn connect(name: &str) -> io::Result<(UnixDatagram, SocketAddr)> {
    let addr = match name.strip_prefix('@') {
        Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name.as_bytes())?,
        None if name.starts_with('/') => SocketAddr::from_pathname(name)?,
        None => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "neither an absolute path nor an @abstract name",
            ))
        }
    };
    Ok((UnixDatagram::unbound()?, addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let (socket, addr) = connect(path.to_str().unwrap()).unwrap();
        let notifier = Notifier {
            target: Some((socket, addr)),
        };
        notifier.ready("serving");
        notifier.stopping();
        let mut buf = [0u8; 256];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=serving");
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1\nSTATUS=stopping");
    }

    #[test]
    fn messages_reach_an_abstract_socket() {
        let name = format!("lucid-test-{}", std::process::id());
        let listener =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        let (socket, addr) = connect(&format!("@{name}")).unwrap();
        Notifier {
            target: Some((socket, addr)),
        }
        .watchdog();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
    }

    #[test]
    fn relative_names_are_refused() {
        assert!(connect("relative/path").is_err());
        assert!(Notifier { target: None }.watchdog_period().is_none());
    }
}
