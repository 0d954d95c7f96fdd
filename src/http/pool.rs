//! The worker threads: a fixed core that answers requests, and extra workers
//! started while writes wait for their fsync.
//!
//! With `sync: always` a write holds its worker until an fdatasync covers it,
//! and one fdatasync covers every write appended while the previous one ran
//! (group commit). With only the core workers, at most that many writes
//! could share an fdatasync, and readers would queue behind writers. So a
//! worker about to wait for an fsync first makes sure that `core` workers
//! are still free for other requests, starting an extra one if not (up to
//! [`Pool::max`] in all). An extra worker answers requests like any other
//! and exits once it has been idle for [`EXTRA_IDLE`]: a read-only load
//! runs on the core workers alone, so it pays nothing for many threads.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use tiny_http::Server;

use super::Context;

/// How long an extra worker waits for a request before it exits.
pub const EXTRA_IDLE: Duration = Duration::from_secs(2);

/// Most workers at once (core and extra) with `sync: always`, unless the
/// core alone is larger: the most writes one fdatasync can cover.
pub const MAX_WORKERS: usize = 64;

/// Whether a worker belongs to the core or was started for waiting writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Runs until the server stops.
    Core,
    /// Exits after [`EXTRA_IDLE`] without a request.
    Extra,
}

/// Worker counts.
#[derive(Debug, Default)]
struct Counts {
    /// Workers running.
    live: usize,
    /// Workers waiting for an fsync.
    waiting: usize,
}

/// The workers of one server.
pub struct Pool {
    core: usize,
    max: usize,
    counts: Mutex<Counts>,
    /// Signalled whenever a worker exits.
    exited: Condvar,
}

/// The runtime of a worker: takes requests from `server` until it returns,
/// `true` if it left through [`Pool::retire`].
pub type WorkerLoop = fn(&Arc<Server>, &Arc<Context>, &Arc<Pool>, Role) -> bool;

impl Pool {
    /// A pool of `core` workers that may grow to `max` while writes wait for
    /// their fsync (`max` ≤ `core`: never grows).
    pub fn new(core: usize, max: usize) -> Arc<Self> {
        Arc::new(Self {
            core,
            max: max.max(core),
            counts: Mutex::new(Counts::default()),
            exited: Condvar::new(),
        })
    }

    /// The most workers this pool runs at once.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Starts the core workers, each running `work`.
    pub fn start(
        self: &Arc<Self>,
        server: &Arc<Server>,
        ctx: &Arc<Context>,
        work: WorkerLoop,
    ) -> Result<(), String> {
        // The whole core is counted before any of it runs: a core worker
        // already answering a write must not start extras into room the
        // rest of the core takes, or the pool outgrows `max` (and the stop,
        // which unblocks `max` workers, leaves some blocked).
        lock(&self.counts).live += self.core;
        for started in 0..self.core {
            if let Err(err) = self.spawn(server, ctx, work, Role::Core) {
                // `spawn` uncounted the failed one; uncount those not tried.
                lock(&self.counts).live -= self.core - started - 1;
                return Err(format!("cannot start an HTTP worker: {err}"));
            }
        }
        Ok(())
    }

    /// Called by a worker about to wait for an fsync: starts an extra
    /// worker if fewer than the core count would be left for other
    /// requests. The wait lasts as long as the returned guard.
    pub fn waiting_for_fsync(
        self: &Arc<Self>,
        server: &Arc<Server>,
        ctx: &Arc<Context>,
        work: WorkerLoop,
    ) -> Waiting {
        let mut counts = lock(&self.counts);
        counts.waiting += 1;
        let free = counts.live - counts.waiting;
        if free < self.core && counts.live < self.max && !ctx.is_stopping() {
            counts.live += 1;
            drop(counts);
            if let Err(err) = self.spawn(server, ctx, work, Role::Extra) {
                log::warn!("cannot start an extra HTTP worker: {err}");
            }
        }
        Waiting {
            pool: Arc::clone(self),
        }
    }

    /// Whether an idle extra worker should exit now; if so it is no longer
    /// counted.
    pub fn retire(&self) -> bool {
        let mut counts = lock(&self.counts);
        if counts.live > self.core {
            counts.live -= 1;
            true
        } else {
            false
        }
    }

    /// Waits until every worker has exited or `deadline` passes; returns
    /// how many are still running.
    pub fn wait_exited(&self, deadline: Instant) -> usize {
        let mut counts = lock(&self.counts);
        while counts.live > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            counts = self
                .exited
                .wait_timeout(counts, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        counts.live
    }

    /// Workers running now.
    pub fn live(&self) -> usize {
        lock(&self.counts).live
    }

    /// Starts one worker (already counted as live); it is uncounted when it
    /// exits, however it exits.
    fn spawn(
        self: &Arc<Self>,
        server: &Arc<Server>,
        ctx: &Arc<Context>,
        work: WorkerLoop,
        role: Role,
    ) -> std::io::Result<()> {
        let (pool, server, ctx) = (Arc::clone(self), Arc::clone(server), Arc::clone(ctx));
        let name = match role {
            Role::Core => "lucid-http",
            Role::Extra => "lucid-http-extra",
        };
        let spawned = thread::Builder::new().name(name.into()).spawn(move || {
            let mut exit = Exit {
                pool: Arc::clone(&pool),
                counted: true,
            };
            exit.counted = !work(&server, &ctx, &pool, role);
        });
        if spawned.is_err() {
            lock(&self.counts).live -= 1;
        }
        spawned.map(drop)
    }
}

/// A worker waiting for an fsync; dropping it ends the wait.
pub struct Waiting {
    pool: Arc<Pool>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        lock(&self.pool.counts).waiting -= 1;
    }
}

/// Uncounts a worker when its thread ends, also by panic, unless
/// [`Pool::retire`] already did.
struct Exit {
    pool: Arc<Pool>,
    counted: bool,
}

impl Drop for Exit {
    fn drop(&mut self) {
        let mut counts = lock(&self.pool.counts);
        if self.counted {
            counts.live -= 1;
        }
        self.pool.exited.notify_all();
    }
}

fn lock(counts: &Mutex<Counts>) -> MutexGuard<'_, Counts> {
    counts.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::super::{next_request, Next};
    use super::*;

    static WROTE: AtomicBool = AtomicBool::new(false);

    /// A worker whose first request (queued before the server ran, say) is
    /// a write waiting for its fsync; then it idles like any worker.
    fn writes_first(
        server: &Arc<Server>,
        ctx: &Arc<Context>,
        pool: &Arc<Pool>,
        role: Role,
    ) -> bool {
        if role == Role::Core && !WROTE.load(Ordering::SeqCst) {
            drop(pool.waiting_for_fsync(server, ctx, writes_first));
            WROTE.store(true, Ordering::SeqCst);
        }
        loop {
            match next_request(server, ctx, pool, role) {
                Next::Request(_) => {}
                Next::Stop => return false,
                Next::Retire => return true,
            }
        }
    }

    #[test]
    fn a_write_while_the_core_starts_never_grows_the_pool_past_its_maximum() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = crate::store::open(dir.path(), crate::store::SyncMode::Always).unwrap();
        let ctx = Arc::new(Context::new(store, 1024, 1024));
        let server = Arc::new(Server::http("127.0.0.1:0").unwrap());
        // `threads: 64` with `sync: always`: the core is the maximum.
        let pool = Pool::new(MAX_WORKERS, MAX_WORKERS);
        pool.start(&server, &ctx, writes_first).unwrap();
        while !WROTE.load(Ordering::SeqCst) {
            thread::yield_now();
        }
        let live = pool.live();
        // Stop as `HttpServer::run` does: one unblock per possible worker.
        ctx.stopping.store(true, Ordering::SeqCst);
        for _ in 0..pool.max() {
            server.unblock();
        }
        let left = pool.wait_exited(Instant::now() + Duration::from_secs(3));
        assert!(
            live <= pool.max(),
            "{live} workers, at most {} allowed",
            pool.max()
        );
        assert_eq!(left, 0, "workers never unblocked by the stop");
    }
}
