//! Acknowledging writes with `sync: always`.
//!
//! A write is acknowledged only once an fdatasync covers it. Rather than
//! parking its worker until then, a worker appends the write (the store
//! defers durability to its caller, see `Store::defer_durability`) and hands
//! the reply here; one thread runs the group commit's fdatasync and then
//! answers every write it covered, in one pass. Workers stay free for other
//! requests, and a burst of writes costs one wake-up per fsync instead of a
//! parked thread and a wake-up per write.
//!
//! If the fsync fails, every write it was to cover is answered with the
//! store's error (503: the store turned read-only), never with success.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

use lucid_http::Request;

use super::kv::store_error;
use super::reply::{Reply, Responder};
use super::Context;
use crate::store::StoreError;

/// Replies held until their writes are durable, and the thread answering
/// them ([`Acknowledger::run`]).
#[derive(Default)]
pub struct Acknowledger {
    queue: Mutex<Queue>,
    /// Signalled when a reply is held or the acknowledger is closed.
    changed: Condvar,
}

#[derive(Default)]
struct Queue {
    held: Vec<Held>,
    closed: bool,
}

/// A reply to a write, held until the write is durable.
pub struct Held {
    /// The request to answer.
    pub request: Request,
    /// The answer once the write is durable.
    pub reply: Reply<'static>,
    /// The write is at or below this sequence number.
    pub sequence: u64,
    /// The request's method, for metrics.
    pub method_slot: usize,
    /// When the request was received, for metrics.
    pub started: Instant,
}

impl Acknowledger {
    /// Holds `held` until its write is durable, or hands it back once the
    /// acknowledger is closed (the caller then waits itself).
    pub fn hold(&self, held: Held) -> Option<Held> {
        let mut queue = lock(&self.queue);
        if queue.closed {
            return Some(held);
        }
        queue.held.push(held);
        drop(queue);
        self.changed.notify_one();
        None
    }

    /// Whether no reply is held.
    pub fn is_idle(&self) -> bool {
        lock(&self.queue).held.is_empty()
    }

    /// Answers held replies as their writes become durable, each group
    /// after one fdatasync, until [`close`](Self::close) is called and
    /// nothing is held any more.
    pub fn run(&self, ctx: &Context) {
        let mut responder = Responder::default();
        let mut group = Vec::new();
        loop {
            {
                let mut queue = lock(&self.queue);
                while queue.held.is_empty() {
                    if queue.closed {
                        return;
                    }
                    queue = self.changed.wait(queue).unwrap_or_else(|e| e.into_inner());
                }
                // The emptied group's buffer goes back for the next one.
                std::mem::swap(&mut group, &mut queue.held);
            }
            let last = group.iter().map(|held| held.sequence).max().unwrap_or(0);
            // It fails only when an fsync failed and the store turned
            // read-only; writes an earlier fsync covered still succeeded.
            let durable = match ctx.store.wait_durable(last) {
                Ok(()) => last,
                Err(_) => ctx.store.durable_sequence(),
            };
            for held in group.drain(..) {
                let reply = if held.sequence <= durable {
                    held.reply
                } else {
                    store_error(StoreError::ReadOnly)
                };
                let status = reply.status();
                reply.send(held.request, &mut responder);
                ctx.metrics
                    .record(held.method_slot, status, held.started.elapsed());
            }
        }
    }

    /// Makes [`run`](Self::run) return once every held reply is answered.
    pub fn close(&self) {
        lock(&self.queue).closed = true;
        self.changed.notify_all();
    }
}

fn lock(queue: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    queue.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::thread;
    use std::time::Duration;

    use lucid_http::{Method, TestRequest};

    use super::*;
    use crate::http::metrics::method_slot;
    use crate::http::reply::CREATED;
    use crate::store::testing::{fresh_store, try_put, MemFile};
    use crate::store::{Store, SyncMode};

    /// A store with `sync: always` that leaves durability to its caller, a
    /// context over it, and its acknowledging thread running.
    fn acknowledging() -> (Arc<MemFile>, Arc<Context>, thread::JoinHandle<()>) {
        let (file, store) = fresh_store(MemFile::with_bytes, SyncMode::Always);
        store.defer_durability();
        let ctx = Arc::new(Context::new(store, 256, 1 << 20));
        let runner = Arc::clone(&ctx);
        let thread = thread::spawn(move || runner.acknowledger.run(&runner));
        (file, ctx, thread)
    }

    /// Puts `key` (returning before its fsync) and holds a 201 for it.
    fn put_and_hold(ctx: &Context, key: &str) {
        try_put(&ctx.store, key, b"value").unwrap();
        let held = Held {
            request: TestRequest::new().with_method(Method::Put).into(),
            reply: Reply::json(201, CREATED),
            sequence: ctx.store.appended_sequence(),
            method_slot: method_slot(&Method::Put),
            started: Instant::now(),
        };
        assert!(ctx.acknowledger.hold(held).is_none());
    }

    /// Whether the one PUT was answered with `status`.
    fn answered(ctx: &Context, status: u16) -> bool {
        let page = ctx.metrics.render(&ctx.store.stats(), 0);
        page.contains(&format!(
            "lucid_requests_total{{method=\"PUT\",status=\"{status}\"}} 1\n"
        ))
    }

    fn visible(store: &Store, key: &str) -> bool {
        store
            .get(key.as_bytes(), &mut Vec::new())
            .unwrap()
            .is_some()
    }

    #[test]
    fn a_held_reply_is_sent_only_after_the_fsync_that_covers_its_write() {
        let (file, ctx, thread) = acknowledging();
        file.hold_syncs();
        put_and_hold(&ctx, "k");
        // The fsync is stuck: the write is neither answered nor visible.
        thread::sleep(Duration::from_millis(300));
        assert!(!answered(&ctx, 201), "answered before its fsync");
        assert!(!visible(&ctx.store, "k"));
        file.release_syncs();
        ctx.acknowledger.close();
        thread.join().unwrap();
        assert!(answered(&ctx, 201));
        assert!(visible(&ctx.store, "k"));
        assert!(ctx.acknowledger.is_idle());
        // Closed: a reply is handed back for its worker to answer.
        let late = Held {
            request: TestRequest::new().into(),
            reply: Reply::json(201, CREATED),
            sequence: 1,
            method_slot: method_slot(&Method::Put),
            started: Instant::now(),
        };
        assert!(ctx.acknowledger.hold(late).is_some());
    }

    #[test]
    fn a_failed_fsync_answers_its_held_writes_with_503() {
        let (file, ctx, thread) = acknowledging();
        file.fail_syncs(1);
        put_and_hold(&ctx, "k");
        ctx.acknowledger.close();
        thread.join().unwrap();
        assert!(answered(&ctx, 503));
        assert!(!answered(&ctx, 201));
        assert!(ctx.store.is_read_only());
        assert!(!visible(&ctx.store, "k"));
    }
}
