//! Endpoints: what a request asks for, resolved once from its route and
//! method ([`Endpoint::resolve`]), and everything the server decides from
//! that alone: who may call it ([`Rule`]), the body it reads and how large
//! ([`BodyKind`]), whether it is streamed, and for a method the resource does
//! not take, the `Allow` of the 405.
//!
//! An endpoint is a small `Copy` value: resolving one allocates nothing.

use lucid_http::Method;

use super::route::Route;
use crate::auth::Access;

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// An operation on the key of `/api/kv/{key}`.
    Key(KeyOp),
    /// `GET` or `HEAD /api/kv`: a page of keys.
    ListKeys,
    /// `POST /api/batch`.
    Batch,
    /// `GET /api/watch`: a stream of changes.
    Watch,
    /// `GET` or `HEAD /api/admin/stats`.
    Stats,
    /// `POST /api/admin/compact`.
    Compact,
    /// `GET /api/admin/export`: a stream of every key.
    Export,
    /// `GET /api/admin/snapshot`: a stream of the store's image.
    Snapshot,
    /// `POST /api/admin/import`.
    Import,
    /// `GET` or `HEAD /api/admin/replication`.
    ReplicationStatus,
    /// `POST /api/admin/promote`.
    Promote,
    /// `GET /api/replication/stream`: the log, streamed to a follower.
    ReplicationStream,
    /// `POST /api/replication/ack`.
    ReplicationAck,
    /// `GET /api/admin/digest`.
    Digest,
    /// `GET` or `HEAD /api/admin/mqtt`.
    Mqtt,
    /// `GET` or `HEAD /health`.
    Health,
    /// `GET` or `HEAD /metrics`.
    Metrics,
    /// `GET` or `HEAD` of the web console's files (`/ui`).
    Console,
    /// A method `resource` does not take: 405.
    MethodNotAllowed(Resource),
    /// No such resource: 404.
    NotFound,
}

/// An operation on one key (`/api/kv/{key}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOp {
    /// `GET` or `HEAD`: its value.
    Get,
    /// `PUT`: a new value.
    Put,
    /// `DELETE`.
    Delete,
    /// `PATCH`: an operation from the body (see `patch.rs`).
    Patch,
}

/// A resource a route names, whatever the method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// `/api/kv/{key}`.
    Key,
    /// `/api/kv`.
    Keys,
    /// `/api/batch`.
    Batch,
    /// `/api/watch`.
    Watch,
    /// `/api/admin/stats`.
    Stats,
    /// `/api/admin/compact`.
    Compact,
    /// `/api/admin/export`.
    Export,
    /// `/api/admin/snapshot`.
    Snapshot,
    /// `/api/admin/import`.
    Import,
    /// `/api/admin/replication`.
    ReplicationStatus,
    /// `/api/admin/promote`.
    Promote,
    /// `/api/replication/stream`.
    ReplicationStream,
    /// `/api/replication/ack`.
    ReplicationAck,
    /// `/api/admin/digest`.
    Digest,
    /// `/api/admin/mqtt`.
    Mqtt,
    /// `/health`.
    Health,
    /// `/metrics`.
    Metrics,
    /// `/ui` and the files under it.
    Console,
}

/// Who may call an endpoint (checked by `access::check`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Anyone, without a token.
    Public,
    /// Any valid token (a batch, whose handler checks each of its keys;
    /// a resource under `/api/` that does not exist).
    Token,
    /// A token granting this access, whatever its key prefixes
    /// (`admin`).
    Scope(Access),
    /// A token granting either access (a snapshot: `admin`, or `replicate`
    /// for a follower's bootstrap).
    EitherScope(Access, Access),
    /// A token granting this access to the request's key.
    Key(Access),
    /// A token granting this access to every key under the request's
    /// `prefix` query parameter.
    Prefix(Access),
}

/// A request body an endpoint reads: what it holds, which sets its limit
/// and how a 413 names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// A key's new value (`PUT`).
    Value,
    /// A `PATCH` operation.
    Patch,
    /// A batch's operations.
    Batch,
    /// An import's JSON Lines.
    Import,
}

/// Largest `PATCH` body read.
pub const PATCH_BODY_LIMIT: usize = 64 * 1024;

/// Largest batch (or import) body: room for two values of the maximum size
/// in base64, plus the JSON around them.
pub fn batch_body_limit(max_value_bytes: usize) -> usize {
    2 * max_value_bytes + 64 * 1024
}

impl Endpoint {
    /// The endpoint `method` asks for on `route`.
    pub fn resolve(route: Route<'_>, method: &Method) -> Self {
        let resource = match route {
            Route::Kv { .. } => Resource::Key,
            Route::List => Resource::Keys,
            Route::Batch => Resource::Batch,
            Route::Watch => Resource::Watch,
            Route::AdminStats => Resource::Stats,
            Route::AdminCompact => Resource::Compact,
            Route::AdminExport => Resource::Export,
            Route::AdminSnapshot => Resource::Snapshot,
            Route::AdminImport => Resource::Import,
            Route::AdminReplication => Resource::ReplicationStatus,
            Route::AdminPromote => Resource::Promote,
            Route::ReplicationStream => Resource::ReplicationStream,
            Route::ReplicationAck => Resource::ReplicationAck,
            Route::AdminDigest => Resource::Digest,
            Route::AdminMqtt => Resource::Mqtt,
            Route::Health => Resource::Health,
            Route::Metrics => Resource::Metrics,
            Route::Ui => Resource::Console,
            Route::Unknown => return Self::NotFound,
        };
        resource
            .endpoint(method)
            .unwrap_or(Self::MethodNotAllowed(resource))
    }

    /// Who may call it; `/metrics` is public when `metrics_public`
    /// (`authentication.metrics_public`).
    pub fn access(self, metrics_public: bool) -> Rule {
        let resource = match self {
            Self::Key(op) => return Rule::Key(op.access()),
            Self::NotFound => return Rule::Token,
            Self::MethodNotAllowed(resource) => resource,
            Self::ListKeys => Resource::Keys,
            Self::Batch => Resource::Batch,
            Self::Watch => Resource::Watch,
            Self::Stats => Resource::Stats,
            Self::Compact => Resource::Compact,
            Self::Export => Resource::Export,
            Self::Snapshot => Resource::Snapshot,
            Self::Import => Resource::Import,
            Self::ReplicationStatus => Resource::ReplicationStatus,
            Self::Promote => Resource::Promote,
            Self::ReplicationStream => Resource::ReplicationStream,
            Self::ReplicationAck => Resource::ReplicationAck,
            Self::Digest => Resource::Digest,
            Self::Mqtt => Resource::Mqtt,
            Self::Health => Resource::Health,
            Self::Metrics => Resource::Metrics,
            Self::Console => Resource::Console,
        };
        resource.access(metrics_public)
    }

    /// The body it reads, if any.
    pub fn body(self) -> Option<BodyKind> {
        match self {
            Self::Key(KeyOp::Put) => Some(BodyKind::Value),
            Self::Key(KeyOp::Patch) => Some(BodyKind::Patch),
            Self::Batch => Some(BodyKind::Batch),
            Self::Import => Some(BodyKind::Import),
            _ => None,
        }
    }

    /// Whether it is answered with a stream of its own (see `streams.rs`),
    /// which ends by closing its connection.
    pub fn is_streamed(self) -> bool {
        matches!(
            self,
            Self::Watch | Self::Export | Self::Snapshot | Self::ReplicationStream
        )
    }

    /// Whether it writes keys: what a follower refuses (307 to its
    /// primary), and a primary short of followers too (503).
    pub fn writes(self) -> bool {
        match self {
            Self::Key(op) => op.writes(),
            Self::Batch | Self::Import => true,
            _ => false,
        }
    }
}

impl KeyOp {
    /// Whether it changes the key.
    pub fn writes(self) -> bool {
        self != Self::Get
    }

    /// The access it needs to the key.
    fn access(self) -> Access {
        if self.writes() {
            Access::Write
        } else {
            Access::Read
        }
    }
}

impl Resource {
    /// The endpoint `method` asks for here; `None` if the resource does not
    /// take it.
    fn endpoint(self, method: &Method) -> Option<Endpoint> {
        let read = matches!(method, Method::Get | Method::Head);
        let only_get = method == &Method::Get;
        let only_post = method == &Method::Post;
        let endpoint = match self {
            Self::Key => Endpoint::Key(match method {
                Method::Get | Method::Head => KeyOp::Get,
                Method::Put => KeyOp::Put,
                Method::Delete => KeyOp::Delete,
                Method::Patch => KeyOp::Patch,
                _ => return None,
            }),
            Self::Keys if read => Endpoint::ListKeys,
            Self::Batch if only_post => Endpoint::Batch,
            Self::Watch if only_get => Endpoint::Watch,
            Self::Stats if read => Endpoint::Stats,
            Self::Compact if only_post => Endpoint::Compact,
            Self::Export if only_get => Endpoint::Export,
            Self::Snapshot if only_get => Endpoint::Snapshot,
            Self::Import if only_post => Endpoint::Import,
            Self::ReplicationStatus if read => Endpoint::ReplicationStatus,
            Self::Promote if only_post => Endpoint::Promote,
            Self::ReplicationStream if only_get => Endpoint::ReplicationStream,
            Self::ReplicationAck if only_post => Endpoint::ReplicationAck,
            Self::Digest if only_get => Endpoint::Digest,
            Self::Mqtt if read => Endpoint::Mqtt,
            Self::Health if read => Endpoint::Health,
            Self::Metrics if read => Endpoint::Metrics,
            Self::Console if read => Endpoint::Console,
            _ => return None,
        };
        Some(endpoint)
    }

    /// The methods it takes, as a 405's `Allow` header lists them.
    pub fn allow(self) -> &'static str {
        match self {
            Self::Key => "GET, HEAD, PUT, DELETE, PATCH",
            Self::Keys
            | Self::Stats
            | Self::Health
            | Self::Metrics
            | Self::Console
            | Self::ReplicationStatus
            | Self::Mqtt => "GET, HEAD",
            Self::Batch | Self::Compact | Self::Import | Self::Promote | Self::ReplicationAck => {
                "POST"
            }
            Self::Watch
            | Self::Export
            | Self::Snapshot
            | Self::Digest
            | Self::ReplicationStream => "GET",
        }
    }

    /// Who may call it: for a key, with a method that writes or one it
    /// does not take (refused after this check).
    fn access(self, metrics_public: bool) -> Rule {
        match self {
            Self::Key => Rule::Key(Access::Write),
            Self::Keys | Self::Watch => Rule::Prefix(Access::Read),
            Self::Batch => Rule::Token,
            Self::Stats
            | Self::Compact
            | Self::Export
            | Self::Import
            | Self::Digest
            | Self::Mqtt
            | Self::ReplicationStatus
            | Self::Promote => Rule::Scope(Access::Admin),
            Self::Snapshot => Rule::EitherScope(Access::Admin, Access::Replicate),
            Self::ReplicationStream | Self::ReplicationAck => Rule::Scope(Access::Replicate),
            Self::Health | Self::Console => Rule::Public,
            Self::Metrics if metrics_public => Rule::Public,
            Self::Metrics => Rule::Scope(Access::Admin),
        }
    }
}

impl BodyKind {
    /// Its largest size in bytes, given `storage.max_value_bytes`.
    pub fn limit(self, max_value_bytes: usize) -> usize {
        match self {
            Self::Value => max_value_bytes,
            Self::Patch => PATCH_BODY_LIMIT,
            Self::Batch | Self::Import => batch_body_limit(max_value_bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_method_of_a_route_is_one_endpoint() {
        let key = Route::Kv { raw_key: "k" };
        assert_eq!(
            Endpoint::resolve(key, &Method::Head),
            Endpoint::Key(KeyOp::Get)
        );
        assert_eq!(
            Endpoint::resolve(key, &Method::Patch),
            Endpoint::Key(KeyOp::Patch)
        );
        assert_eq!(
            Endpoint::resolve(key, &Method::Post),
            Endpoint::MethodNotAllowed(Resource::Key)
        );
        assert_eq!(
            Endpoint::resolve(Route::Watch, &Method::Head),
            Endpoint::MethodNotAllowed(Resource::Watch)
        );
        assert_eq!(
            Endpoint::resolve(Route::Unknown, &Method::Post),
            Endpoint::NotFound
        );
        assert!(Endpoint::resolve(Route::AdminExport, &Method::Get).is_streamed());
        assert!(!Endpoint::resolve(Route::AdminExport, &Method::Post).is_streamed());
    }

    #[test]
    fn only_writes_of_keys_batches_and_imports_read_a_body() {
        let put = Endpoint::Key(KeyOp::Put);
        assert_eq!(put.body().map(|body| body.limit(100)), Some(100));
        assert_eq!(Endpoint::Key(KeyOp::Patch).body(), Some(BodyKind::Patch),);
        assert_eq!(Endpoint::Import.body(), Some(BodyKind::Import));
        assert_eq!(Endpoint::Key(KeyOp::Delete).body(), None);
        assert_eq!(Endpoint::MethodNotAllowed(Resource::Batch).body(), None);
    }
}
