//! Requests answered on their connection's thread through
//! `ServerConfig::handler` (patch 30 of PATCHES.md).
#![warn(clippy::all)]

mod common;

use std::sync::{mpsc, Arc, Mutex};
use std::thread::{self, ThreadId};
use std::time::Duration;

use common::{config, ok, start, Running};
use lucid_http::{Handler, Request};

/// A server whose requests go to `handler` on their connection's thread.
fn handled(handler: impl Fn(Request) + Send + Sync + 'static) -> Running {
    let mut config = config();
    config.handler = Some(Handler(Arc::new(handler)));
    start(config)
}

#[test]
fn each_connection_s_requests_are_answered_on_its_own_thread_and_none_is_queued() {
    let threads: Arc<Mutex<Vec<(String, ThreadId)>>> = Arc::default();
    let seen = Arc::clone(&threads);
    let server = handled(move |request| {
        let url = request.url().to_string();
        seen.lock()
            .unwrap()
            .push((url.clone(), thread::current().id()));
        ok(request, &url);
    });
    let mut clients = [server.client(), server.client()];
    for (client, name) in [(0, "a"), (1, "b"), (0, "a")] {
        clients[client].send(format!("GET /{name} HTTP/1.1\r\n\r\n").as_bytes());
        let reply = clients[client].response();
        assert_eq!((reply.status, reply.text()), (200, format!("/{name}")));
    }
    let threads = threads.lock().unwrap().clone();
    let thread_of = |url: &str| -> Vec<ThreadId> {
        threads
            .iter()
            .filter(|(u, _)| u == url)
            .map(|(_, id)| *id)
            .collect()
    };
    let (a, b) = (thread_of("/a"), thread_of("/b"));
    assert_eq!(a.len(), 2, "{threads:?}");
    assert_eq!(a[0], a[1], "one connection, one thread: {threads:?}");
    assert_ne!(a[0], b[0], "two connections, two threads: {threads:?}");
    assert_ne!(a[0], thread::current().id());
    let queued = server.server.recv_timeout(Duration::from_millis(50));
    assert!(
        matches!(queued, Ok(None)),
        "nothing reaches recv when a handler is set"
    );
}

#[test]
fn a_request_the_handler_hands_on_is_answered_and_the_connection_goes_on() {
    // As Lucid's writes with `sync: always`: the handler passes the request
    // to another thread, which answers it later.
    let (hand_over, handed) = mpsc::channel::<Request>();
    let hand_over = Mutex::new(hand_over);
    let server = handled(move |request| hand_over.lock().unwrap().send(request).unwrap());
    let answerer = thread::spawn(move || {
        for request in handed.iter().take(2) {
            let url = request.url().to_string();
            ok(request, &url);
        }
    });
    let mut client = server.client();
    // Pipelined: the second is read once the first is answered.
    client.send(b"GET /first HTTP/1.1\r\n\r\nGET /second HTTP/1.1\r\n\r\n");
    assert_eq!(client.response().text(), "/first");
    assert_eq!(client.response().text(), "/second");
    answerer.join().unwrap();
}
