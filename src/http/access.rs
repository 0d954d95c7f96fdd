//! Access control before dispatch: the check of the request's token
//! against what its endpoint needs (see [`crate::auth`], and
//! [`Endpoint::access`] for each endpoint's rule).
//!
//! `/health` and the web console's files (`/ui`) are always open (the
//! console's API calls need a token like any other); `/metrics` needs `admin` unless
//! `authentication.metrics_public` is set; every other `/api/*` request
//! needs a valid token, even one for a resource that does not exist.

use lucid_http::Request;

use super::endpoint::{Endpoint, Rule};
use super::reply::Reply;
use super::route::{percent_decode, Route};
use super::watch::websocket;
use super::Context;
use crate::auth::{Access, Claims, Denied, Unauthorized, UNAUTHORIZED};

/// What a request needs before its handler may run: its endpoint's
/// [`Rule`], with the key or prefix it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need<'u> {
    /// Nothing.
    Open,
    /// A valid token, whatever it grants (unknown `/api/*` resources).
    Token,
    /// A valid token granting this access (to this key, still encoded).
    Access(Access, Option<&'u str>),
    /// A valid token granting either access.
    Either(Access, Access),
    /// A valid token granting this access to every key under this prefix
    /// (still encoded; `""`: every key).
    Prefix(Access, &'u str),
}

/// What `endpoint` needs (see [`Endpoint::access`]) of the request to
/// `route`; `url` is the request target.
///
/// A batch needs a valid token here; its keys are in its body, and the
/// batch handler checks `write` on each of them with the claims [`check`]
/// returns.
fn need<'u>(endpoint: Endpoint, route: Route<'u>, url: &'u str, metrics_public: bool) -> Need<'u> {
    match endpoint.access(metrics_public) {
        Rule::Public => Need::Open,
        Rule::Token => Need::Token,
        Rule::Scope(access) => Need::Access(access, None),
        Rule::EitherScope(one, other) => Need::Either(one, other),
        Rule::Key(access) => {
            let raw_key = match route {
                Route::Kv { raw_key } => raw_key,
                _ => "",
            };
            Need::Access(access, Some(raw_key))
        }
        Rule::Prefix(access) => Need::Prefix(access, query_param(url, "prefix").unwrap_or("")),
    }
}

/// Checks the request to `route` against what its `endpoint` needs: `Ok`
/// to dispatch, with the token's claims when authentication is on (for
/// handlers that check more, as a batch does for each of its keys), or the
/// 401/403 reply. `key` is the request's key as `http::admit` decoded it
/// (`None`: not decoded, left to the handler's 400: nothing is reached with
/// it); `scratch` receives the decoded prefix.
pub fn check(
    ctx: &Context,
    request: &Request,
    url: &str,
    route: Route<'_>,
    endpoint: Endpoint,
    key: Option<&[u8]>,
    scratch: &mut Vec<u8>,
) -> Result<Option<Claims>, Reply<'static>> {
    let Some(auth) = &ctx.auth else {
        return Ok(None);
    };
    let need = match need(endpoint, route, url, ctx.metrics_public) {
        Need::Open => return Ok(None),
        Need::Token if !url.starts_with("/api/") => return Ok(None),
        need => need,
    };
    let claims = authenticate(auth, request, route)?;
    let allowed = match need {
        Need::Open | Need::Token => return Ok(Some(claims)),
        Need::Access(access, None) => claims.authorize(access, b""),
        Need::Either(one, other) => claims
            .authorize(one, b"")
            .or_else(|_| claims.authorize(other, b"")),
        Need::Access(access, Some(_)) => match key {
            Some(key) => claims.authorize(access, key),
            None => return Ok(Some(claims)),
        },
        Need::Prefix(access, raw_prefix) => {
            // As for a key, what does not decode is left to the handler.
            if percent_decode(raw_prefix, scratch, ctx.max_key_bytes).is_err() {
                return Ok(Some(claims));
            }
            claims.authorize_prefix(access, scratch)
        }
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

/// The 403 for a refusal.
fn denied(why: Denied) -> Reply<'static> {
    Reply::message(403, why.message())
}

#[cfg(test)]
mod tests {
    use lucid_http::Method;

    use super::*;

    /// What `route` needs for `method`, as [`check`] works it out.
    fn need<'u>(route: Route<'u>, url: &'u str, method: &Method, metrics_public: bool) -> Need<'u> {
        super::need(Endpoint::resolve(route, method), route, url, metrics_public)
    }

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
            Route::AdminImport,
            Route::AdminDigest,
            Route::AdminReplication,
            Route::AdminPromote,
            Route::AdminMqtt,
        ] {
            assert_eq!(
                need(admin, "", &Method::Get, true),
                Need::Access(Access::Admin, None)
            );
        }
        // A follower bootstraps from a snapshot with its `replicate` token.
        assert_eq!(
            need(Route::AdminSnapshot, "", &Method::Get, true),
            Need::Either(Access::Admin, Access::Replicate)
        );
        for replica in [Route::ReplicationStream, Route::ReplicationAck] {
            assert_eq!(
                need(replica, "", &Method::Get, true),
                Need::Access(Access::Replicate, None)
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
