//! Replies for failures that several handlers share: a store error, and a
//! request body that could not be read.

use super::reply::{self, Reply};
use super::Context;
use crate::store::StoreError;

/// The reply to a request body that could not be read whole: 408 if the
/// client stopped sending it (the read timeout, or too slow a rate), 400 if
/// it closed the connection before its end or its chunked encoding is
/// malformed.
pub fn body_unreadable(err: &std::io::Error) -> Reply<'static> {
    use std::io::ErrorKind;
    match err.kind() {
        // A read timeout is `WouldBlock` on Linux.
        ErrorKind::TimedOut | ErrorKind::WouldBlock => {
            Reply::message(408, "The request body did not arrive in time.")
        }
        ErrorKind::UnexpectedEof => {
            Reply::message(400, "The connection ended before the request body did.")
        }
        _ => Reply::message(400, format!("The request body could not be read: {err}.")),
    }
}

/// The reply for `err`, met while reading values whole (room for a large
/// one is taken from the memory budget): [`store_error`]'s, except for a
/// value larger than the budget ever leaves a request (written before
/// `storage.max_value_bytes` was lowered, or replicated from a primary
/// with larger values), which no retry would read.
pub fn read_error<'b>(ctx: &Context, err: StoreError) -> Reply<'b> {
    let capacity = ctx.memory.capacity();
    match err {
        StoreError::NoRoom { needed } if needed > capacity => Reply::message(
            500,
            format!(
                "The value is {needed} bytes and must be read whole, more than storage.memory_budget leaves for a request ({capacity} bytes): raise storage.memory_budget to read it."
            ),
        ),
        err => store_error(err),
    }
}

/// The reply for a store error.
pub fn store_error<'b>(err: StoreError) -> Reply<'b> {
    match err {
        StoreError::Locked => Reply::json(409, reply::CANNOT_UPDATE),
        StoreError::PreconditionFailed => Reply::message(
            412,
            "The key's current version does not match the request's If-Match or If-None-Match condition; nothing was changed. Read the key again for its current version (ETag).",
        ),
        StoreError::NotFound => Reply::json(404, reply::KEY_NOT_FOUND),
        StoreError::AlreadyLocked => Reply::message(409, "The specified key is already locked."),
        StoreError::NotLocked => Reply::message(409, "The specified key is not locked."),
        StoreError::NotANumber => {
            Reply::message(400, "The specified key is not a valid numeric value.")
        }
        StoreError::Overflow => Reply::message(
            400,
            "The result does not fit: integers are 64-bit signed (up to 9223372036854775807) and decimals must stay finite.",
        ),
        StoreError::ReadOnly => Reply::message(
            503,
            "The node is read-only after a disk failure: writes are refused until it is restarted. Reads still work.",
        ),
        StoreError::Io(err) if err.kind() == std::io::ErrorKind::StorageFull => Reply::message(
            507,
            "The disk is full: the write was not stored. Free some space and retry.",
        ),
        StoreError::Io(err) => {
            log::error!("disk error: {err}");
            Reply::message(
                500,
                "The disk reported an error: the request was not completed. The error is in the node's log.",
            )
        }
        StoreError::NotReplicated { required, timeout_ms } => Reply::message(
            504,
            format!("The write is durable on this node, but fewer than {required} followers confirmed it within {timeout_ms} ms (replication.ack_timeout_ms): it may or may not survive a failover. Read the key back to see whether it is there before retrying a non-idempotent write."),
        ),
        StoreError::OutOfOrder { .. } => {
            log::error!("{err}");
            Reply::message(500, "The node could not apply a replicated record; the error is in its log.")
        }
        StoreError::NoRoom { .. } => Reply::over_memory_budget(),
        StoreError::Corrupt { .. } => Reply::message(
            500,
            "The key's stored record is damaged and was not served; the key answers this error until it is written or deleted. See /health.",
        ),
    }
}
