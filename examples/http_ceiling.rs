//! The HTTP ceiling for Lucid's benchmarks: a bare lucid-http server, set
//! up as Lucid's is (each request answered on its connection's thread, in
//! one write of a head written once), that answers every request with a
//! fixed 100-byte body. Lucid, built on lucid-http, cannot be faster than
//! this; `bench/run.sh` measures both in the same run.
//!
//! `cargo run --release --example http_ceiling -- --port P` (0 = any free
//! port; the real one is printed).

use std::sync::Arc;

use lucid_http::{ConfigListenAddr, Handler, Server, ServerConfig};

/// Answer every request with a fixed 100-byte body.
#[derive(argh::FromArgs)]
struct Args {
    /// TCP port on 127.0.0.1 (0 = any free port)
    #[argh(option, default = "0")]
    port: u16,
}

/// The response's head, for a body of [`BODY`].
const HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\nServer: lucid\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n";
/// The response's body.
const BODY: &[u8; 100] = &[b'x'; 100];

fn main() {
    let args: Args = argh::from_env();
    let addr = ConfigListenAddr::from_socket_addrs(("127.0.0.1", args.port)).expect("an address");
    let config = ServerConfig {
        handler: Some(Handler(Arc::new(|request| {
            let _ = request.respond_raw(HEAD, BODY);
        }))),
        ..ServerConfig::listening(addr)
    };
    let server = Server::new(config).expect("bind 127.0.0.1");
    let addr = server.server_addr().to_ip().expect("an IP address");
    eprintln!(
        "http_ceiling listening on http://{addr} (requests answered on their connection's thread)"
    );
    loop {
        std::thread::park();
    }
}
