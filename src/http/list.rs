//! `GET /api/kv?prefix=P&limit=N&after=K&keys_only=true`: live keys in key
//! order, a page at a time. The index is an ordered map, so a page costs
//! O(page) whatever the number of keys; the metadata of each listed key is
//! read from its record's header only (never its value).

use serde_json::json;

use super::errors::read_error;
use super::query::Params;
use super::reply::Reply;
use super::Context;

/// Keys per page unless `limit` says otherwise.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest `limit`.
pub const MAX_LIMIT: usize = 1000;

/// Answers a listing request.
pub fn handle<'b>(ctx: &Context, url: &str) -> Reply<'b> {
    let params = match Params::parse(
        url,
        &["prefix", "limit", "after", "keys_only"],
        ctx.max_key_bytes,
    ) {
        Ok(params) => params,
        Err(reply) => return reply,
    };
    let limit = match params.get("limit").map(str::parse::<usize>) {
        None => DEFAULT_LIMIT,
        Some(Ok(limit)) if (1..=MAX_LIMIT).contains(&limit) => limit,
        Some(_) => {
            return Reply::message(
                400,
                format!("limit must be a whole number from 1 to {MAX_LIMIT}."),
            )
        }
    };
    let keys_only = match params.get("keys_only") {
        None | Some("false") => false,
        Some("true" | "") => true,
        Some(_) => return Reply::message(400, "keys_only must be true or false."),
    };
    let prefix = params.get("prefix").unwrap_or("").as_bytes();
    let after = params.get("after").map(str::as_bytes);
    let page = ctx.store.list(prefix, after, limit);
    let next = page
        .more
        .then(|| page.entries.last().map(|(key, _)| text(key)))
        .flatten();
    if keys_only {
        let keys: Vec<String> = page.entries.iter().map(|(key, _)| text(key)).collect();
        return Reply::document(200, &json!({ "keys": keys, "next": next }));
    }
    let mut room = None;
    let infos = match ctx
        .store
        .key_info(page.entries, &mut |len| ctx.memory.hold(&mut room, len))
    {
        Ok(infos) => infos,
        Err(err) => return read_error(ctx, err),
    };
    let keys: Vec<_> = infos
        .iter()
        .map(|info| {
            json!({
                "key": text(&info.key),
                "size": info.size,
                "version": info.version,
                "content_type": text(&info.content_type),
                "updated_at": info.updated_at_ms,
                "expires_at": (info.expires_at_ms != 0).then_some(info.expires_at_ms),
                "locked": info.locked,
            })
        })
        .collect();
    Reply::document(200, &json!({ "keys": keys, "next": next }))
}

/// Keys are UTF-8 (checked when written); content types are shown lossily.
fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
