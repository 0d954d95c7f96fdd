//! Who may use the API: authentication (a bearer token in the
//! `Authorization` header, see [`token`]) and authorization (the scopes and
//! key prefixes the token grants, see [`rules`]).
//!
//! The HTTP layer calls [`Auth::authenticate`] once per `/api/*` request and
//! then [`Claims::authorize`] (one key) or [`Claims::authorize_prefix`]
//! (every key under a prefix) for what the request does.

pub mod rules;
pub mod token;

pub use rules::{Access, Denied, PrefixRule, Scope};
pub use token::{generate_secret, LucidClaims, Tokens};

use crate::config::Authentication;
use rules::Grants;

/// The 401 body for every authentication failure: it says nothing of why.
pub const UNAUTHORIZED: &str = r#"{"message":"You are not allowed to perform this action."}"#;

/// Verifies the tokens of requests.
pub struct Auth {
    tokens: Tokens,
    allow_unscoped: bool,
}

/// A request without a valid token (a 401). Why is only logged, at debug
/// level, never the token itself.
#[derive(Debug)]
pub struct Unauthorized(pub String);

/// What the bearer of a verified token may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// `None`: an unscoped token on a node that refuses them.
    grants: Option<Grants>,
}

impl Claims {
    /// May the bearer perform `access` on `key`? (`Admin` ignores the key.)
    pub fn authorize(&self, access: Access, key: &[u8]) -> Result<(), Denied> {
        self.grants
            .as_ref()
            .ok_or(Denied::Unscoped)?
            .authorize(access, key)
    }

    /// May the bearer perform `access` on every key starting with `prefix`
    /// (a listing or a watch of that prefix)?
    pub fn authorize_prefix(&self, access: Access, prefix: &[u8]) -> Result<(), Denied> {
        self.grants
            .as_ref()
            .ok_or(Denied::Unscoped)?
            .authorize_prefix(access, prefix)
    }
}

impl Auth {
    /// The verifier for `config`, or `None` when authentication is off.
    pub fn from_config(config: &Authentication) -> Option<Self> {
        config.enabled.then(|| Self {
            tokens: Tokens::new(config),
            allow_unscoped: config.allow_unscoped,
        })
    }

    /// Verifies the value of the request's `Authorization` header(s): there
    /// must be exactly one, `Bearer <token>`.
    pub fn authenticate<'h>(
        &self,
        mut authorization: impl Iterator<Item = &'h str>,
    ) -> Result<Claims, Unauthorized> {
        let header = authorization
            .next()
            .ok_or_else(|| Unauthorized("no Authorization header".into()))?;
        if authorization.next().is_some() {
            return Err(Unauthorized("more than one Authorization header".into()));
        }
        let token = header
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .ok_or_else(|| Unauthorized("the Authorization header is not Bearer".into()))?;
        self.verify(token)
    }

    /// Verifies a bearer token itself (from `Authorization: Bearer`, or
    /// offered as a WebSocket subprotocol).
    pub fn verify(&self, token: &str) -> Result<Claims, Unauthorized> {
        let claims = self
            .tokens
            .verify(token)
            .map_err(|invalid| Unauthorized(invalid.0))?
            .custom;
        let grants = match claims.scopes {
            Some(scopes) => Some(Grants::new(&scopes, claims.prefixes.as_deref())),
            None if self.allow_unscoped => Some(Grants::FULL),
            None => None,
        };
        Ok(Claims { grants })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn config(allow_unscoped: bool) -> Authentication {
        Authentication {
            enabled: true,
            secret_key: "s".repeat(40),
            allow_unscoped,
            ..Authentication::default()
        }
    }

    fn bearer(config: &Authentication, claims: LucidClaims) -> String {
        let token = Tokens::new(config)
            .issue(claims, Duration::from_secs(60), None)
            .unwrap();
        format!("Bearer {token}")
    }

    #[test]
    fn off_means_no_verifier() {
        assert!(Auth::from_config(&Authentication::default()).is_none());
    }

    #[test]
    fn header_forms() {
        let config = config(false);
        let auth = Auth::from_config(&config).unwrap();
        let good = bearer(&config, LucidClaims::default());
        assert!(auth.authenticate([good.as_str()].into_iter()).is_ok());
        let lower = good.replacen("Bearer", "bearer", 1);
        assert!(auth.authenticate([lower.as_str()].into_iter()).is_ok());
        assert!(auth.authenticate(std::iter::empty()).is_err());
        assert!(auth
            .authenticate([good.as_str(), good.as_str()].into_iter())
            .is_err());
        let basic = good.replacen("Bearer", "Basic", 1);
        assert!(auth.authenticate([basic.as_str()].into_iter()).is_err());
        assert!(auth.authenticate(["Bearer"].into_iter()).is_err());
    }

    /// The claims of a token without scopes, on a node that allows such
    /// tokens or not.
    fn unscoped(allow: bool) -> Claims {
        let config = config(allow);
        let header = bearer(&config, LucidClaims::default());
        Auth::from_config(&config)
            .unwrap()
            .authenticate([header.as_str()].into_iter())
            .unwrap()
    }

    #[test]
    fn unscoped_tokens_have_full_access_only_where_allowed() {
        for allow in [false, true] {
            let claims = unscoped(allow);
            let expected = if allow { Ok(()) } else { Err(Denied::Unscoped) };
            assert_eq!(claims.authorize(Access::Admin, b""), expected);
            assert_eq!(claims.authorize_prefix(Access::Write, b""), expected);
        }
    }

    #[test]
    fn an_unscoped_token_may_replicate_only_where_allowed() {
        for allow in [false, true] {
            let expected = if allow { Ok(()) } else { Err(Denied::Unscoped) };
            assert_eq!(unscoped(allow).authorize(Access::Replicate, b""), expected);
        }
    }
}
