//! Tokens: JWTs signed with HMAC-SHA256 under `authentication.secret_key`.
//! Verifying one pins the algorithm to HS256 (the token's `alg` header is
//! checked against it, never obeyed), and checks `exp` (required), `nbf`,
//! `iat`, and `iss`/`aud` when configured, with the configured leeway.
//! Issuing one and generating a secret are here too.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jwt_simple::prelude::{
    Duration as JwtDuration, HS256Key, JWTClaims, MACLike, VerificationOptions,
};
use serde::{Deserialize, Serialize};

use super::rules::{PrefixRule, Scope};
use crate::config::Authentication;

/// Longest token accepted, in bytes; longer ones are refused unread.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The latest `exp` a token can carry, in seconds since 1970 (2106-02-07):
/// the JWT library keeps times as 32-bit seconds, and a later expiry would
/// wrap around to a date in the past.
pub const LATEST_EXPIRY: u64 = u32::MAX as u64;

/// Lucid's own claims, beside the registered ones.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LucidClaims {
    /// What the token may do; absent = unscoped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<Scope>>,
    /// Which keys it reaches; absent = every key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefixes: Option<Vec<PrefixRule>>,
}

/// Verifies and signs tokens with one configuration's secret and rules.
pub struct Tokens {
    key: HS256Key,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: Duration,
}

/// Why a token was refused. Only logged at debug level; the client always
/// gets the same 401 message.
#[derive(Debug)]
pub struct Invalid(pub String);

impl Tokens {
    /// The tokens of `auth` (its secret must be set; the config checks it).
    pub fn new(auth: &Authentication) -> Self {
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
        Self {
            key: HS256Key::from_bytes(auth.secret_key.as_bytes()),
            issuer: non_empty(&auth.issuer),
            audience: non_empty(&auth.audience),
            leeway: Duration::from_secs(auth.leeway_s),
        }
    }

    /// Verifies `token` and returns its claims.
    pub fn verify(&self, token: &str) -> Result<JWTClaims<LucidClaims>, Invalid> {
        let options = VerificationOptions {
            time_tolerance: Some(JwtDuration::from_secs(self.leeway.as_secs())),
            allowed_issuers: self.issuer.clone().map(one),
            allowed_audiences: self.audience.clone().map(one),
            max_token_length: Some(MAX_TOKEN_BYTES),
            ..VerificationOptions::default()
        };
        let claims = self
            .key
            .verify_token::<LucidClaims>(token, Some(options))
            .map_err(|err| Invalid(err.to_string()))?;
        if claims.expires_at.is_none() {
            return Err(Invalid("the token has no exp claim".into()));
        }
        Ok(claims)
    }

    /// Signs a token valid from now (`iat` and `nbf`) for `valid_for`
    /// (`exp`), with the configured issuer and audience. Refuses a validity
    /// that would end after [`LATEST_EXPIRY`].
    pub fn issue(
        &self,
        claims: LucidClaims,
        valid_for: Duration,
        subject: Option<&str>,
    ) -> Result<String, String> {
        check_expiry(valid_for)?;
        let valid_for = JwtDuration::from_secs(valid_for.as_secs());
        let mut jwt = jwt_simple::claims::Claims::with_custom_claims(claims, valid_for);
        if let Some(subject) = subject {
            jwt = jwt.with_subject(subject);
        }
        if let Some(issuer) = &self.issuer {
            jwt = jwt.with_issuer(issuer);
        }
        if let Some(audience) = &self.audience {
            jwt = jwt.with_audience(audience);
        }
        self.key
            .authenticate(jwt)
            .map_err(|err| format!("cannot sign the token: {err}"))
    }
}

/// Whether a token issued now and valid for `valid_for` has an expiry a
/// token can carry.
fn check_expiry(valid_for: Duration) -> Result<(), String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| "the system clock is set before 1970".to_string())?;
    match now.as_secs().checked_add(valid_for.as_secs()) {
        Some(expiry) if expiry <= LATEST_EXPIRY => Ok(()),
        _ => Err(format!(
            "a token valid for {} days would expire after 2106-02-07, the latest expiry a \
             token can carry; choose a shorter validity",
            valid_for.as_secs() / 86_400
        )),
    }
}

fn one(value: String) -> HashSet<String> {
    HashSet::from([value])
}

/// A new secret for `authentication.secret_key`: 32 bytes from the OS's
/// random number generator, as 64 hex digits.
pub fn generate_secret() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|err| format!("cannot read the OS random number generator: {err}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Authentication {
        Authentication {
            enabled: true,
            secret_key: "k".repeat(32),
            ..Authentication::default()
        }
    }

    #[test]
    fn issued_tokens_verify_and_keep_their_claims() {
        let tokens = Tokens::new(&auth());
        let claims = LucidClaims {
            scopes: Some(vec![Scope::Read]),
            prefixes: Some(vec![PrefixRule::Plain("a/".into())]),
        };
        let token = tokens
            .issue(claims.clone(), Duration::from_secs(60), Some("me"))
            .unwrap();
        let verified = tokens.verify(&token).unwrap();
        assert_eq!(verified.custom, claims);
        assert_eq!(verified.subject.as_deref(), Some("me"));
    }

    #[test]
    fn another_secret_or_issuer_is_refused() {
        let token = Tokens::new(&auth())
            .issue(LucidClaims::default(), Duration::from_secs(60), None)
            .unwrap();
        let other = Authentication {
            secret_key: "x".repeat(32),
            ..auth()
        };
        assert!(Tokens::new(&other).verify(&token).is_err());
        let with_issuer = Authentication {
            issuer: "lucid".into(),
            ..auth()
        };
        assert!(Tokens::new(&with_issuer).verify(&token).is_err());
        let issued = Tokens::new(&with_issuer)
            .issue(LucidClaims::default(), Duration::from_secs(60), None)
            .unwrap();
        assert!(Tokens::new(&with_issuer).verify(&issued).is_ok());
    }

    #[test]
    fn an_expiry_past_2106_is_refused_not_wrapped() {
        let tokens = Tokens::new(&auth());
        let year = Duration::from_secs(365 * 86_400);
        for years in [80, 500, 1_000_000] {
            let err = tokens
                .issue(LucidClaims::default(), year * years, None)
                .unwrap_err();
            assert!(err.contains("2106"), "{years}y: {err}");
        }
        let token = tokens
            .issue(LucidClaims::default(), year * 50, None)
            .unwrap();
        let claims = tokens.verify(&token).unwrap();
        let expiry = claims.expires_at.unwrap().as_secs();
        assert!(expiry > LATEST_EXPIRY - 40 * 365 * 86_400, "{expiry}");
    }

    #[test]
    fn secrets_are_random_hex() {
        let (a, b) = (generate_secret().unwrap(), generate_secret().unwrap());
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
