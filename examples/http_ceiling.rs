//! The HTTP ceiling for Lucid's benchmarks: a bare lucid-http server with
//! Lucid's worker count and release profile that answers every request with
//! a fixed 100-byte body. Lucid, built on lucid-http, cannot be faster than
//! this; `bench/run.sh` measures both in the same run.
//!
//! `cargo run --release --example http_ceiling -- --port P` (0 = any free
//! port; the real one is printed).

use std::sync::Arc;
use std::thread;

use lucid_http::{Response, Server, StatusCode};

/// Answer every request with a fixed 100-byte body.
#[derive(argh::FromArgs)]
struct Args {
    /// TCP port on 127.0.0.1 (0 = any free port)
    #[argh(option, default = "0")]
    port: u16,
}

fn main() {
    let args: Args = argh::from_env();
    let server = Arc::new(Server::http(("127.0.0.1", args.port)).expect("bind 127.0.0.1"));
    let workers = lucid::config::General::default().worker_threads();
    let addr = server.server_addr().to_ip().expect("an IP address");
    eprintln!("http_ceiling listening on http://{addr} ({workers} threads)");
    let body = [b'x'; 100];
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let server = Arc::clone(&server);
            thread::spawn(move || {
                while let Ok(request) = server.recv() {
                    let response = Response::new(
                        StatusCode(200),
                        Vec::new(),
                        &body[..],
                        Some(body.len()),
                        None,
                    );
                    let _ = request.respond(response);
                }
            })
        })
        .collect();
    for handle in handles {
        let _ = handle.join();
    }
}
