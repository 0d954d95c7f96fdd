//! Server-Sent Events for `/api/watch`: a `200 text/event-stream` response
//! without a length, whose body is one event per change until the
//! connection closes:
//!
//! ```text
//! id: <version>
//! event: <op>
//! data: <the event's JSON>
//!
//! ```
//!
//! The id is the version, so an EventSource that reconnects sends it back
//! as `Last-Event-ID` and resumes where it stopped. Keepalives are SSE
//! comments; an overflow ends the stream with `event: error`.

use std::io::{self, BufWriter, Write};
use std::time::Duration;

use lucid_http::{Header, Request, Response};

use super::End;
use crate::http::reply::server_header;
use crate::watch::Event;

/// Bytes buffered between flushes.
const BUFFER: usize = 8 * 1024;

/// A watcher's event stream.
pub struct Feed<W: Write> {
    out: BufWriter<W>,
}

impl Feed<Box<dyn Write + Send>> {
    /// Answers `request` with the stream's status and headers, and returns
    /// the stream.
    pub fn start(request: Request) -> io::Result<Self> {
        let headers = [
            ("Content-Type", "text/event-stream"),
            ("Cache-Control", "no-cache"),
        ]
        .map(|(name, value)| {
            Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("a valid header")
        });
        let headers = [server_header()].into_iter().chain(headers).collect();
        let response = Response::new(200.into(), headers, io::empty(), None, None);
        request.into_stream(response).map(Self::new)
    }
}

impl<W: Write> Feed<W> {
    /// A stream written to `out`, whose headers are sent already.
    pub fn new(out: W) -> Self {
        Self {
            out: BufWriter::with_capacity(BUFFER, out),
        }
    }

    /// What was written, once the stream is done with (for tests).
    #[cfg(test)]
    fn into_inner(self) -> W {
        self.out.into_inner().ok().expect("flushed")
    }
}

impl<W: Write> super::Feed for Feed<W> {
    fn event(&mut self, event: &Event) -> io::Result<()> {
        write!(
            self.out,
            "id: {}\nevent: {}\ndata: ",
            event.version,
            event.op.name()
        )?;
        event.write_json(&mut self.out)?;
        self.out.write_all(b"\n\n")
    }

    fn keepalive(&mut self) -> io::Result<()> {
        self.out.write_all(b": keepalive\n\n")
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn poll_interval(&self) -> Option<Duration> {
        None
    }

    fn poll(&mut self) -> io::Result<bool> {
        Ok(true)
    }

    fn finish(&mut self, end: &End) {
        if let Some(json) = end.error_json() {
            let written = write!(self.out, "event: error\ndata: {json}\n\n");
            if let Err(err) = written.and_then(|()| self.out.flush()) {
                log::debug!("could not send a watcher its error event: {err}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::thread;

    use super::*;
    use crate::http::watch::pump;
    use crate::watch::{EventBus, EventOp};

    fn put(key: &str, version: u64) -> Event {
        Event::new(
            EventOp::Put,
            key.as_bytes(),
            version,
            b"text/plain",
            b"21.5",
        )
    }

    /// Runs a pump over an SSE feed into memory until the bus is closed by
    /// `act`, and returns the text and why it ended.
    fn stream(
        bus: &EventBus,
        since: Option<u64>,
        keepalive: Duration,
        act: impl FnOnce(),
    ) -> (String, End) {
        let subscription = bus.subscribe(b"sensors/", since).unwrap();
        let (done, finished) = mpsc::channel();
        thread::scope(|scope| {
            scope.spawn(move || {
                let mut feed = Feed::new(Vec::new());
                let end = pump(&subscription, since, &mut feed, keepalive).unwrap();
                done.send((String::from_utf8(feed.into_inner()).unwrap(), end))
                    .unwrap();
            });
            act();
        });
        finished.recv().unwrap()
    }

    #[test]
    fn events_are_framed_with_their_version_and_op() {
        let bus = EventBus::new(0);
        let (text, end) = stream(&bus, None, Duration::from_secs(60), || {
            bus.publish(put("sensors/a", 1));
            bus.publish(put("config/b", 2));
            bus.publish(Event::new(EventOp::Delete, b"sensors/a", 3, b"", b""));
            bus.close();
        });
        assert_eq!(end, End::Stopping);
        assert_eq!(
            text,
            "id: 1\nevent: put\ndata: {\"content_type\":\"text/plain\",\"key\":\"sensors/a\",\"op\":\"put\",\"size\":4,\"value\":\"21.5\",\"version\":1}\n\n\
             id: 3\nevent: delete\ndata: {\"content_type\":null,\"key\":\"sensors/a\",\"op\":\"delete\",\"size\":0,\"version\":3}\n\n"
        );
    }

    #[test]
    fn the_backlog_comes_first() {
        let bus = EventBus::new(0);
        bus.publish(put("sensors/a", 1));
        bus.publish(put("sensors/b", 2));
        let (text, _) = stream(&bus, Some(1), Duration::from_secs(60), || {
            bus.publish(put("sensors/c", 3));
            bus.close();
        });
        let ids: Vec<&str> = text.lines().filter(|l| l.starts_with("id: ")).collect();
        assert_eq!(ids, ["id: 2", "id: 3"]);
    }

    #[test]
    fn silence_brings_keepalives() {
        let bus = EventBus::new(0);
        let (text, _) = stream(&bus, None, Duration::from_millis(20), || {
            thread::sleep(Duration::from_millis(200));
            bus.close();
        });
        assert!(text.starts_with(": keepalive\n\n"), "{text:?}");
    }

    #[test]
    fn an_overflow_ends_with_an_error_event_naming_where_to_resume() {
        let bus = EventBus::new(0);
        bus.set_limits(100, 1);
        let subscription = bus.subscribe(b"", None).unwrap();
        for version in 1..=3 {
            bus.publish(put("sensors/a", version));
        }
        let mut feed = Feed::new(Vec::new());
        let end = pump(&subscription, None, &mut feed, Duration::from_secs(60)).unwrap();
        assert_eq!(
            end,
            End::Overflow {
                last_version: Some(1)
            }
        );
        let text = String::from_utf8(feed.into_inner()).unwrap();
        let last = text.trim_end().rsplit("\n\n").next().unwrap();
        assert!(last.starts_with("event: error\ndata: {"), "{text}");
        let data: serde_json::Value =
            serde_json::from_str(last.split_once("data: ").unwrap().1).unwrap();
        assert_eq!(data["op"], "error");
        assert!(
            data["message"].as_str().unwrap().contains("since=1"),
            "{data}"
        );
    }
}
