//! The worker threads: a fixed number of them, each answering requests
//! until the server stops, and a count of those still running so a stop can
//! wait for them (however they end, a panic included).

use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Instant;

use lucid_http::Server;

use super::Context;
use crate::locks::lock;

/// The workers of one server.
pub struct Pool {
    size: usize,
    /// Workers running.
    live: Mutex<usize>,
    /// Signalled whenever a worker exits.
    exited: Condvar,
}

/// The runtime of a worker: takes requests from `server` until it stops.
pub type WorkerLoop = fn(&Server, &Context);

impl Pool {
    /// A pool of `size` workers.
    pub fn new(size: usize) -> Arc<Self> {
        Arc::new(Self {
            size,
            live: Mutex::new(0),
            exited: Condvar::new(),
        })
    }

    /// Starts the workers, each running `work`.
    pub fn start(
        self: &Arc<Self>,
        server: &Arc<Server>,
        ctx: &Arc<Context>,
        work: WorkerLoop,
    ) -> Result<(), String> {
        for n in 0..self.size {
            *lock(&self.live) += 1;
            let (pool, server, ctx) = (Arc::clone(self), Arc::clone(server), Arc::clone(ctx));
            let spawned = thread::Builder::new()
                .name(format!("lucid-http-{n}"))
                .spawn(move || {
                    let _exit = Exit(pool);
                    work(&server, &ctx);
                });
            if let Err(err) = spawned {
                *lock(&self.live) -= 1;
                return Err(format!("cannot start an HTTP worker: {err}"));
            }
        }
        Ok(())
    }

    /// Waits until every worker has exited or `deadline` passes; returns
    /// how many are still running.
    pub fn wait_exited(&self, deadline: Instant) -> usize {
        let mut live = lock(&self.live);
        while *live > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            live = self
                .exited
                .wait_timeout(live, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *live
    }

    /// Workers running now.
    pub fn live(&self) -> usize {
        *lock(&self.live)
    }
}

/// Uncounts a worker when its thread ends, also by panic.
struct Exit(Arc<Pool>);

impl Drop for Exit {
    fn drop(&mut self) {
        *lock(&self.0.live) -= 1;
        self.0.exited.notify_all();
    }
}
