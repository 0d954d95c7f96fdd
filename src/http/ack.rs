//! Answering requests, a write once it may be acknowledged.
//!
//! A handler answers with an [`Answer`]: its reply and, for a write, the
//! [`Ticket`] the write must see durable first. [`send`] sends a reply
//! whose ticket is settled at once. Otherwise, rather than parking its
//! request slot until the fsync, it hands the reply to the store's
//! [`Acknowledger`](crate::store::Acknowledger), whose thread ([`run`])
//! answers every write a group commit covered in one pass: request slots stay
//! free for other requests, and a burst of writes costs one wake-up per
//! fsync instead of a parked thread and a wake-up per write.
//!
//! If the fsync fails, every write it was to cover is answered with the
//! store's error (503: the store turned read-only), never with success.

use std::time::Instant;

use lucid_http::Request;

use super::errors::store_error;
use super::reply::{Reply, Responder};
use super::Context;
use crate::store::{Store, StoreError, Ticket};

/// A handler's answer: the reply, and what it waits for.
#[derive(Debug)]
pub struct Answer<'b> {
    /// The reply.
    pub reply: Reply<'b>,
    /// What the reply waits for: the ticket of the handler's write
    /// ([`Ticket::SETTLED`] when there is none).
    pub ticket: Ticket,
}

impl<'b> Answer<'b> {
    /// `reply`, sent once the write with `ticket` may be acknowledged.
    pub fn after(reply: Reply<'b>, ticket: Ticket) -> Self {
        Self { reply, ticket }
    }

    /// The reply, once its write may be acknowledged (waiting here), or the
    /// store's error if the write did not become durable.
    pub fn wait(self, store: &Store) -> Reply<'b> {
        fated(self.reply, store.wait_for(self.ticket))
    }
}

impl<'b> From<Reply<'b>> for Answer<'b> {
    /// A reply that waits for nothing.
    fn from(reply: Reply<'b>) -> Self {
        Self::after(reply, Ticket::SETTLED)
    }
}

/// A reply to a write, held until the write may be acknowledged.
pub struct Held {
    /// The request to answer.
    pub request: Request,
    /// The answer once the write is durable.
    pub reply: Reply<'static>,
    /// The request's method, for metrics.
    pub method_slot: usize,
    /// When the request was received, for metrics.
    pub started: Instant,
}

/// Sends `answer` to `request`, once its ticket allows: now, or later from
/// the acknowledging thread.
pub fn send(
    ctx: &Context,
    request: Request,
    answer: Answer<'_>,
    method_slot: usize,
    started: Instant,
    responder: &mut Responder,
) {
    let Answer { reply, ticket } = answer;
    if ticket.is_settled() {
        return deliver(ctx, request, reply, Ok(()), method_slot, started, responder);
    }
    match reply.into_owned() {
        Ok(reply) => {
            let held = Held {
                request,
                reply,
                method_slot,
                started,
            };
            if let Some((held, fate)) = ctx.acknowledger.submit(&ctx.store, ticket, held) {
                let Held { request, reply, .. } = held;
                deliver(ctx, request, reply, fate, method_slot, started, responder);
            }
        }
        // A reply borrowing a buffer (no write's does) waits here.
        Err(reply) => {
            let reply = Answer::after(reply, ticket).wait(&ctx.store);
            deliver(ctx, request, reply, Ok(()), method_slot, started, responder);
        }
    }
}

/// The acknowledging thread: answers held replies as their writes become
/// durable, until the acknowledger is closed and nothing is held.
pub fn run(ctx: &Context) {
    let mut responder = Responder::default();
    ctx.acknowledger.run(&ctx.store, |held, fate| {
        let Held {
            request,
            reply,
            method_slot,
            started,
        } = held;
        deliver(
            ctx,
            request,
            reply,
            fate,
            method_slot,
            started,
            &mut responder,
        );
    });
}

/// `reply`, or the store's error if the write's `fate` is a failure.
fn fated<'b>(reply: Reply<'b>, fate: Result<(), StoreError>) -> Reply<'b> {
    match fate {
        Ok(()) => reply,
        Err(err) => store_error(err),
    }
}

/// Sends `reply`, or the store's error if the write's `fate` is a failure,
/// and counts it.
fn deliver(
    ctx: &Context,
    request: Request,
    reply: Reply<'_>,
    fate: Result<(), StoreError>,
    method_slot: usize,
    started: Instant,
    responder: &mut Responder,
) {
    let reply = fated(reply, fate);
    let status = reply.status();
    reply.send(request, responder);
    ctx.metrics.record(method_slot, status, started.elapsed());
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
    use crate::store::testing::{fresh_store, put_unsynced, MemFile};
    use crate::store::{Expect, Store, SyncMode, Ticket};

    /// A store with `sync: always`, a context over it, and its
    /// acknowledging thread running.
    fn acknowledging() -> (Arc<MemFile>, Arc<Context>, thread::JoinHandle<()>) {
        let (file, store) = fresh_store(MemFile::with_bytes, SyncMode::Always);
        let ctx = Arc::new(Context::new(store, 256, 1 << 20));
        let runner = Arc::clone(&ctx);
        let thread = thread::spawn(move || run(&runner));
        (file, ctx, thread)
    }

    /// Puts `key` (returning before its fsync) and holds a 201 for it.
    fn put_and_hold(ctx: &Context, key: &str) {
        let applied = put_unsynced(&ctx.store, key, b"value", Expect::Any).unwrap();
        let held = Held {
            request: TestRequest::new().with_method(Method::Put).into(),
            reply: Reply::json(201, CREATED),
            method_slot: method_slot(&Method::Put),
            started: Instant::now(),
        };
        assert!(ctx.acknowledger.hold(applied.ticket, held).is_none());
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
        // Closed: a reply is handed back for its connection's thread to answer.
        let late = Held {
            request: TestRequest::new().into(),
            reply: Reply::json(201, CREATED),
            method_slot: method_slot(&Method::Put),
            started: Instant::now(),
        };
        assert!(ctx.acknowledger.hold(Ticket::SETTLED, late).is_some());
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
