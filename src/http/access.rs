//! Access control before dispatch: which access each route needs, and the
//! check of the request's token against it (see [`crate::auth`]).
//!
//! `/health` and the web console's files (`/ui`) are always open (the
//! console's API calls need a token like any other); `/metrics` needs `admin` unless
//! `authentication.metrics_public` is set; every other `/api/*` request
//! needs a valid token, even one for a resource that does not exist.

use lucid_http::{Method, Request};

use super::reply::Reply;
use super::route::{percent_decode, Route};
use super::watch::websocket;
use super::Context;
use crate::auth::{Access, Claims, Denied, Unauthorized, UNAUTHORIZED};

/// What a route needs before its handler may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need<'u> {
    /// Nothing.
    Open,
    /// A valid token, whatever it grants (unknown `/api/*` resources).
    Token,
    /// A valid token granting this access (to this key, still encoded).
    Access(Access, Option<&'u str>),
    /// A valid token granting this access to every key under this prefix
    /// (still encoded; `""`: every key).
    Prefix(Access, &'u str),
}

/// The access `route` needs for `method`; `url` is the request target.
///
/// A batch needs a valid token here; its keys are in its body, and the
/// batch handler checks `write` on each of them with the claims [`check`]
/// returns.
fn need<'u>(route: Route<'u>, url: &'u str, method: &Method, metrics_public: bool) -> Need<'u> {
    match route {
        Route::Kv { raw_key } => {
            let access = match method {
                Method::Get | Method::Head => Access::Read,
                _ => Access::Write,
            };
            Need::Access(access, Some(raw_key))
        }
        Route::List | Route::Watch => {
            Need::Prefix(Access::Read, query_param(url, "prefix").unwrap_or(""))
        }
        Route::Batch => Need::Token,
        Route::AdminStats
        | Route::AdminCompact
        | Route::AdminExport
        | Route::AdminSnapshot
        | Route::AdminImport => Need::Access(Access::Admin, None),
        Route::Health | Route::Ui => Need::Open,
        Route::Metrics if metrics_public => Need::Open,
        Route::Metrics => Need::Access(Access::Admin, None),
        Route::Unknown => Need::Token,
    }
}

/// Checks the request against what its route needs: `Ok` to dispatch, with
/// the token's claims when authentication is on (for handlers that check
/// more, as a batch does for each of its keys), or the 401/403 reply.
/// `scratch` receives the decoded key or prefix.
pub fn check(
    ctx: &Context,
    request: &Request,
    url: &str,
    route: Route<'_>,
    scratch: &mut Vec<u8>,
) -> Result<Option<Claims>, Reply<'static>> {
    let Some(auth) = &ctx.auth else {
        return Ok(None);
    };
    let need = match need(route, url, request.method(), ctx.metrics_public) {
        Need::Open => return Ok(None),
        Need::Token if !url.starts_with("/api/") => return Ok(None),
        need => need,
    };
    let claims = authenticate(auth, request, route)?;
    let (access, raw, whole_prefix) = match need {
        Need::Open | Need::Token => return Ok(Some(claims)),
        Need::Access(access, None) => {
            return authorize(&claims, access, b"").map(|()| Some(claims))
        }
        Need::Access(access, Some(raw_key)) => (access, raw_key, false),
        Need::Prefix(access, raw_prefix) => (access, raw_prefix, true),
    };
    // What does not decode is left to the handler's 400; nothing is
    // reached with it.
    if percent_decode(raw, scratch, ctx.max_key_bytes).is_err() {
        return Ok(Some(claims));
    }
    let allowed = if whole_prefix {
        claims.authorize_prefix(access, scratch)
    } else {
        claims.authorize(access, scratch)
    };
    allowed.map_err(denied).map(|()| Some(claims))
}

/// The raw (still encoded) value of the first query parameter `name`.
fn query_param<'u>(url: &'u str, name: &str) -> Option<&'u str> {
    let (_, query) = url.split_once('?')?;
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}

/// Verifies the request's bearer token: its claims, or the 401 reply. A
/// watch may carry it as the WebSocket subprotocol `lucid.bearer.<token>`
/// instead of in `Authorization` (not both: that is a 401 too).
pub fn authenticate(
    auth: &crate::auth::Auth,
    request: &Request,
    route: Route<'_>,
) -> Result<Claims, Reply<'static>> {
    let mut headers = request
        .headers()
        .iter()
        .filter(|h| h.field.equiv("Authorization"))
        .map(|h| h.value.as_str());
    let offered = match route {
        Route::Watch => websocket::offered_token(request),
        _ => None,
    };
    let verified = match offered {
        None => auth.authenticate(headers),
        Some(_) if headers.next().is_some() => Err(Unauthorized(
            "a token both in Authorization and in Sec-WebSocket-Protocol".into(),
        )),
        Some(token) => auth.verify(token),
    };
    verified.map_err(|why| {
        let target = WithoutQuery(request.url());
        log::debug!("401 for {} {target}: {}", request.method(), why.0);
        Reply::json(401, UNAUTHORIZED)
    })
}

/// A request target as logged: its path, and its query only as `?...`. A
/// query string may hold a token (`?token=`, `?access_token=`), which must
/// never reach the logs.
pub struct WithoutQuery<'u>(pub &'u str);

impl std::fmt::Display for WithoutQuery<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.split_once('?') {
            Some((path, _)) => write!(f, "{path}?..."),
            None => f.write_str(self.0),
        }
    }
}

/// [`Claims::authorize`] as a reply: `Ok`, or the 403 naming what is missing.
pub fn authorize(claims: &Claims, access: Access, key: &[u8]) -> Result<(), Reply<'static>> {
    claims.authorize(access, key).map_err(denied)
}

/// The 403 for a refusal.
fn denied(why: Denied) -> Reply<'static> {
    Reply::message(403, why.message())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_need_what_the_issue_says() {
        let kv = Route::Kv { raw_key: "k" };
        assert_eq!(
            need(kv, "", &Method::Get, false),
            Need::Access(Access::Read, Some("k"))
        );
        assert_eq!(
            need(kv, "", &Method::Head, false),
            Need::Access(Access::Read, Some("k"))
        );
        for method in [Method::Put, Method::Delete, Method::Patch, Method::Post] {
            assert_eq!(
                need(kv, "", &method, false),
                Need::Access(Access::Write, Some("k"))
            );
        }
        for admin in [
            Route::AdminStats,
            Route::AdminCompact,
            Route::AdminExport,
            Route::AdminSnapshot,
            Route::AdminImport,
        ] {
            assert_eq!(
                need(admin, "", &Method::Get, true),
                Need::Access(Access::Admin, None)
            );
        }
        assert_eq!(need(Route::Health, "", &Method::Get, false), Need::Open);
        assert_eq!(need(Route::Ui, "/ui/", &Method::Get, false), Need::Open);
        assert_eq!(need(Route::Metrics, "", &Method::Get, true), Need::Open);
        assert_eq!(
            need(Route::Metrics, "", &Method::Get, false),
            Need::Access(Access::Admin, None)
        );
        assert_eq!(need(Route::Unknown, "", &Method::Get, false), Need::Token);
        let list = "/api/kv?limit=3&prefix=sensors%2F&prefix=x";
        assert_eq!(
            need(Route::List, list, &Method::Get, false),
            Need::Prefix(Access::Read, "sensors%2F")
        );
        assert_eq!(
            need(Route::List, "/api/kv", &Method::Get, false),
            Need::Prefix(Access::Read, "")
        );
        assert_eq!(
            need(Route::Watch, "/api/watch?prefix=a%2F", &Method::Get, false),
            Need::Prefix(Access::Read, "a%2F")
        );
        // Each of a batch's keys is checked by the batch handler.
        assert_eq!(
            need(Route::Batch, "/api/batch", &Method::Post, false),
            Need::Token
        );
    }
}
