//! The JWT path. The first byte picks the mode:
//! * even: the rest is an `Authorization` header value, verified as the
//!   node does (almost always refused; must never panic);
//! * odd: the rest is `claims JSON \0 key`: the claims are signed with the
//!   node's secret, so they pass verification and their scopes and
//!   prefixes are resolved and checked against the key.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use lucid::auth::{Access, Auth};
use lucid::config::Authentication;

const SECRET: &str = "fuzz-secret-0123456789-abcdefghijklmnop";

fn auth() -> &'static Auth {
    static AUTH: OnceLock<Auth> = OnceLock::new();
    AUTH.get_or_init(|| {
        Auth::from_config(&Authentication {
            enabled: true,
            secret_key: SECRET.into(),
            ..Authentication::default()
        })
        .expect("enabled")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        if let Ok(header) = std::str::from_utf8(rest) {
            let _ = auth().authenticate(std::iter::once(header));
        }
        return;
    }
    let (claims, key) = match rest.iter().position(|&b| b == 0) {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &b""[..]),
    };
    let Ok(mut claims) = serde_json::from_slice::<serde_json::Value>(claims) else {
        return;
    };
    let Some(object) = claims.as_object_mut() else {
        return;
    };
    object.insert("exp".into(), serde_json::json!(u32::MAX));
    object.remove("nbf");
    object.remove("iat");
    let token = sign(&claims);
    let header = format!("Bearer {token}");
    let Ok(verified) = auth().authenticate(std::iter::once(header.as_str())) else {
        // Claims of the wrong type (a number for scopes, say) are refused.
        return;
    };
    for access in [Access::Read, Access::Write, Access::Admin] {
        let one = verified.authorize(access, key);
        let all = verified.authorize_prefix(access, key);
        // What is granted for every key under a prefix is granted for the
        // prefix itself as a key.
        if all.is_ok() && access != Access::Admin {
            assert!(one.is_ok(), "prefix granted but not the key");
        }
    }
});

/// An HS256 JWT over `claims` with the fuzz secret.
fn sign(claims: &serde_json::Value) -> String {
    use jwt_simple::prelude::*;
    let claims: JWTClaims<serde_json::Map<String, serde_json::Value>> =
        match serde_json::from_value(claims.clone()) {
            Ok(claims) => claims,
            Err(_) => return String::new(),
        };
    HS256Key::from_bytes(SECRET.as_bytes())
        .authenticate(claims)
        .unwrap_or_default()
}
