//! Security through the real binary: every 401 and 403 case of bearer
//! tokens (JWT, HS256) with real tokens, `lucid init`'s secret and root
//! token, `lucid tokens issue`, and secrets kept out of the logs.

mod common;

use std::time::Duration;

use common::*;
use jwt_simple::prelude::*;
use jwt_simple::reexports::ct_codecs::{Base64UrlSafeNoPadding, Encoder};
use serde_json::{json, Map, Value};

const SECRET: &str = "test-secret-0123456789-abcdefghijklmnop";
const UNAUTHORIZED: &[u8] = br#"{"message":"You are not allowed to perform this action."}"#;

/// A node with authentication on and the given extra `authentication:`
/// lines.
fn secured(extra: &[&str]) -> Node {
    let mut config = Config::new()
        .raw("authentication", "enabled: true")
        .raw("authentication", &format!("secret_key: \"{SECRET}\""));
    for line in extra {
        config = config.raw("authentication", line);
    }
    config.start()
}

fn now() -> i64 {
    unix_now() as i64
}

/// A token over `payload` (JSON claims, taken as given) signed with HS256
/// under `secret`.
fn sign(secret: &str, payload: Value) -> String {
    let claims: JWTClaims<Map<String, Value>> = serde_json::from_value(payload).unwrap();
    HS256Key::from_bytes(secret.as_bytes())
        .authenticate(claims)
        .unwrap()
}

/// Claims valid for an hour with these scopes (and more claims merged in).
fn claims(scopes: &[&str], more: Value) -> Value {
    let mut payload = json!({ "iat": now(), "nbf": now(), "exp": now() + 3600, "scopes": scopes });
    for (name, value) in more.as_object().unwrap() {
        payload[name] = value.clone();
    }
    payload
}

fn token(scopes: &[&str]) -> String {
    sign(SECRET, claims(scopes, json!({})))
}

fn root() -> String {
    token(&["read", "write", "admin"])
}

/// `method path` with `Authorization: Bearer <token>`.
fn with_token(port: u16, token: &str, method: &str, path: &str, body: &[u8]) -> Response {
    let bearer = format!("Bearer {token}");
    request(port, method, path, &[("Authorization", &bearer)], body)
}

#[track_caller]
fn assert_unauthorized(resp: &Response) {
    assert_eq!(resp.status, 401, "body: {}", resp.text());
    assert_eq!(resp.body, UNAUTHORIZED);
    assert_eq!(resp.header("content-type"), Some("application/json"));
}

fn base64(bytes: &[u8]) -> String {
    Base64UrlSafeNoPadding::encode_to_string(bytes).unwrap()
}

/// `token` with its header replaced by `header` (the signature kept).
fn with_header(token: &str, header: Value) -> String {
    let (_, rest) = token.split_once('.').unwrap();
    format!("{}.{rest}", base64(header.to_string().as_bytes()))
}

#[test]
fn requests_without_a_valid_token_get_401_and_change_nothing() {
    let node = secured(&[]);
    let port = node.port();
    let valid = claims(&["read", "write", "admin"], json!({}));
    let good = sign(SECRET, valid.clone());
    let unsigned = format!(
        "{}.{}.",
        base64(br#"{"alg":"none","typ":"JWT"}"#),
        base64(valid.to_string().as_bytes())
    );
    let hs384 = {
        let claims: JWTClaims<Map<String, Value>> = serde_json::from_value(valid.clone()).unwrap();
        HS384Key::from_bytes(SECRET.as_bytes())
            .authenticate(claims)
            .unwrap()
    };
    let mut no_exp = valid.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    let bad_tokens = [
        ("malformed", "not-a-jwt".to_string()),
        ("two parts", "abc.def".to_string()),
        (
            "wrong secret",
            sign("another-secret-0123456789-abcdefghij", valid.clone()),
        ),
        ("alg none", unsigned),
        (
            "alg none, signature kept",
            with_header(&good, json!({"alg": "none"})),
        ),
        ("alg HS384", hs384),
        (
            "HS256 signature, header says HS512",
            with_header(&good, json!({"alg": "HS512", "typ": "JWT"})),
        ),
        ("payload changed", {
            let parts: Vec<&str> = good.split('.').collect();
            let forged = claims(&["admin"], json!({}));
            format!(
                "{}.{}.{}",
                parts[0],
                base64(forged.to_string().as_bytes()),
                parts[2]
            )
        }),
        (
            "expired",
            sign(SECRET, claims(&["read"], json!({"exp": now() - 120}))),
        ),
        (
            "not yet valid",
            sign(SECRET, claims(&["read"], json!({"nbf": now() + 120}))),
        ),
        (
            "issued in the future",
            sign(SECRET, claims(&["read"], json!({"iat": now() + 120}))),
        ),
        ("no exp", sign(SECRET, no_exp)),
    ];
    let mut requests: Vec<(&str, Vec<(&str, String)>)> = Vec::new();
    for (what, token) in &bad_tokens {
        requests.push((what, vec![("Authorization", format!("Bearer {token}"))]));
    }
    requests.push(("no header", vec![]));
    requests.push((
        "Basic scheme",
        vec![("Authorization", format!("Basic {good}"))],
    ));
    requests.push(("bare token", vec![("Authorization", good.clone())]));
    requests.push(("empty bearer", vec![("Authorization", "Bearer ".into())]));
    requests.push((
        "two headers",
        vec![
            ("Authorization", format!("Bearer {good}")),
            ("Authorization", format!("Bearer {good}")),
        ],
    ));
    for (what, headers) in &requests {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        for (method, path) in [
            ("GET", "/api/kv/k"),
            ("HEAD", "/api/kv/k"),
            ("PUT", "/api/kv/k"),
            ("DELETE", "/api/kv/k"),
            ("GET", "/api/admin/stats"),
            ("POST", "/api/admin/compact"),
            ("GET", "/metrics"),
            ("GET", "/api/no-such-thing"),
        ] {
            let resp = request(port, method, path, &headers, b"v");
            if method == "HEAD" {
                assert_eq!(resp.status, 401, "{what}: {method} {path}");
            } else {
                assert_unauthorized(&resp);
            }
        }
    }
    // Nothing was written by any of them.
    assert_eq!(with_token(port, &good, "GET", "/api/kv/k", b"").status, 404);
    assert_eq!(
        with_token(port, &good, "PUT", "/api/kv/k", b"v").status,
        201
    );
}

#[test]
fn the_clock_leeway_is_configurable() {
    let node = secured(&["leeway_s: 5"]);
    let port = node.port();
    let barely = sign(SECRET, claims(&["read"], json!({"exp": now() - 2})));
    assert_eq!(
        with_token(port, &barely, "GET", "/api/kv/k", b"").status,
        404
    );
    let past = sign(SECRET, claims(&["read"], json!({"exp": now() - 60})));
    assert_unauthorized(&with_token(port, &past, "GET", "/api/kv/k", b""));
    let soon = sign(SECRET, claims(&["read"], json!({"nbf": now() + 2})));
    assert_eq!(with_token(port, &soon, "GET", "/api/kv/k", b"").status, 404);
    // Default leeway: 30 s.
    let node = secured(&[]);
    let late = sign(SECRET, claims(&["read"], json!({"exp": now() - 20})));
    assert_eq!(
        with_token(node.port(), &late, "GET", "/api/kv/k", b"").status,
        404
    );
}

#[test]
fn issuer_and_audience_are_checked_when_configured() {
    let node = secured(&["issuer: lucid-test", "audience: devices"]);
    let port = node.port();
    let cases = [
        (json!({"iss": "lucid-test", "aud": "devices"}), 404),
        (
            json!({"iss": "lucid-test", "aud": ["other", "devices"]}),
            404,
        ),
        (json!({"iss": "someone-else", "aud": "devices"}), 401),
        (json!({"aud": "devices"}), 401),
        (json!({"iss": "lucid-test", "aud": "other"}), 401),
        (json!({"iss": "lucid-test"}), 401),
    ];
    for (extra, status) in cases {
        let resp = with_token(
            port,
            &sign(SECRET, claims(&["read"], extra.clone())),
            "GET",
            "/api/kv/k",
            b"",
        );
        assert_eq!(resp.status, status, "{extra}");
        if status == 401 {
            assert_unauthorized(&resp);
        }
    }
    // Without issuer/audience configured, any are accepted.
    let open = secured(&[]);
    let token = sign(SECRET, claims(&["read"], json!({"iss": "x", "aud": "y"})));
    assert_eq!(
        with_token(open.port(), &token, "GET", "/api/kv/k", b"").status,
        404
    );
}

#[test]
fn scopes_decide_what_a_valid_token_may_do() {
    let node = secured(&[]);
    let port = node.port();
    let (read, write, admin) = (token(&["read"]), token(&["write"]), token(&["admin"]));
    let unknown = token(&["superuser"]);
    assert_eq!(
        with_token(port, &root(), "PUT", "/api/kv/k", b"old").status,
        201
    );
    let lock: &[u8] = br#"{"operation": "lock"}"#;
    // (token, method, path, body, status): 403s first, so nothing has
    // changed "k" when the allowed requests run.
    let cases: [(&str, &str, &str, &[u8], u16); 16] = [
        (&read, "PUT", "/api/kv/k", b"new", 403),
        (&read, "DELETE", "/api/kv/k", b"", 403),
        (&read, "PATCH", "/api/kv/k", lock, 403),
        (&read, "GET", "/api/admin/stats", b"", 403),
        (&read, "GET", "/metrics", b"", 403),
        (&write, "GET", "/api/kv/k", b"", 403),
        (&write, "POST", "/api/admin/compact", b"", 403),
        (&admin, "GET", "/api/kv/k", b"", 403),
        (&unknown, "GET", "/api/kv/k", b"", 403),
        (&read, "GET", "/api/kv/k", b"", 200),
        (&read, "HEAD", "/api/kv/k", b"", 200),
        (&read, "GET", "/api/nothing", b"", 404),
        (&write, "PUT", "/api/kv/w", b"1", 201),
        (&admin, "GET", "/api/admin/stats", b"", 200),
        (&admin, "POST", "/api/admin/compact", b"", 200),
        (&admin, "GET", "/metrics", b"", 200),
    ];
    for (token, method, path, body, status) in cases {
        let resp = with_token(port, token, method, path, body);
        assert_eq!(resp.status, status, "{method} {path}: {}", resp.text());
        if status == 403 {
            assert_error(&resp, 403, None);
        }
    }
    let denied = |token: &str, method: &str| {
        let resp = with_token(port, token, method, "/api/kv/k", b"x");
        json_message(&resp.body).unwrap()
    };
    assert_eq!(
        denied(&read, "PUT"),
        "This token does not grant the write scope here."
    );
    assert_eq!(
        denied(&write, "GET"),
        "This token does not grant the read scope here."
    );
    // The refused requests changed nothing.
    assert_eq!(
        with_token(port, &read, "GET", "/api/kv/k", b"").body,
        b"old"
    );
}

#[test]
fn prefixes_limit_keys_and_the_most_specific_rule_wins() {
    let node = secured(&[]);
    let port = node.port();
    let prefixes = json!({"prefixes": [
        "sensors/",
        {"prefix": "sensors/private/", "scopes": []},
        {"prefix": "sensors/private/public/", "scopes": ["read"]},
    ]});
    let scoped = sign(SECRET, claims(&["read", "write"], prefixes));
    for key in [
        "sensors/private/x",
        "sensors/private/public/x",
        "wallets/key",
        "other",
    ] {
        assert_eq!(
            with_token(port, &root(), "PUT", &kv_path(key), b"v").status,
            201
        );
    }
    assert_eq!(
        with_token(port, &scoped, "PUT", "/api/kv/sensors/t1", b"21.5").status,
        201
    );
    // The same key spelled with %2F is covered the same way.
    assert_eq!(
        with_token(port, &scoped, "GET", "/api/kv/sensors%2Ft1", b"").body,
        b"21.5"
    );
    for (method, key) in [
        ("GET", "wallets/key"),
        ("PUT", "wallets/key"),
        ("DELETE", "other"),
        ("GET", "sensors"),
    ] {
        let resp = with_token(port, &scoped, method, &kv_path(key), b"stolen");
        assert_error(
            &resp,
            403,
            Some("This token's prefixes do not cover these keys."),
        );
    }
    assert_error(
        &with_token(port, &scoped, "GET", &kv_path("sensors/private/x"), b""),
        403,
        None,
    );
    assert_error(
        &with_token(port, &scoped, "GET", "/api/kv/sensors%2Fprivate%2Fx", b""),
        403,
        None,
    );
    assert_eq!(
        with_token(
            port,
            &scoped,
            "GET",
            &kv_path("sensors/private/public/x"),
            b""
        )
        .status,
        200
    );
    assert_error(
        &with_token(
            port,
            &scoped,
            "PUT",
            &kv_path("sensors/private/public/x"),
            b"w",
        ),
        403,
        None,
    );
    // Token-wide scopes do not reach outside the prefixes, and admin needs
    // its own scope.
    assert_error(
        &with_token(port, &scoped, "GET", "/api/admin/stats", b""),
        403,
        None,
    );
    for key in [
        "wallets/key",
        "other",
        "sensors/private/x",
        "sensors/private/public/x",
    ] {
        assert_eq!(
            with_token(port, &root(), "GET", &kv_path(key), b"").body,
            b"v",
            "{key}"
        );
    }
}

#[test]
fn unscoped_tokens_are_refused_unless_allowed() {
    let unscoped = sign(SECRET, json!({"iat": now(), "exp": now() + 60}));
    let strict = secured(&[]);
    let resp = with_token(strict.port(), &unscoped, "GET", "/api/kv/k", b"");
    assert_error(&resp, 403, None);
    assert!(json_message(&resp.body).unwrap().contains("scopes"));
    let lenient = secured(&["allow_unscoped: true"]);
    let port = lenient.port();
    assert_eq!(
        with_token(port, &unscoped, "PUT", "/api/kv/k", b"v").status,
        201
    );
    assert_eq!(
        with_token(port, &unscoped, "GET", "/api/admin/stats", b"").status,
        200
    );
}

#[test]
fn health_is_open_and_metrics_only_when_public() {
    let node = secured(&[]);
    let port = node.port();
    let health = get(port, "/health");
    assert_eq!(
        (health.status, health.text()),
        (200, r#"{"status":"ok"}"#.into())
    );
    assert_unauthorized(&get(port, "/metrics"));
    assert_eq!(get(port, "/nowhere").status, 404);
    let public = secured(&["metrics_public: true"]);
    let metrics = get(public.port(), "/metrics");
    assert_eq!(metrics.status, 200);
    assert_unauthorized(&get(public.port(), "/api/admin/stats"));
}

#[test]
fn a_refused_request_with_a_large_body_does_not_hold_the_node() {
    let node = Config::new()
        .raw("general", "read_timeout_ms: 1000")
        .raw("authentication", "enabled: true")
        .raw("authentication", &format!("secret_key: \"{SECRET}\""))
        .start();
    let port = node.port();
    let body = vec![b'x'; 4 << 20];
    assert_unauthorized(&put(port, "/api/kv/big", &body));
    let resp = with_token(port, &token(&["read"]), "PUT", "/api/kv/big", &body);
    assert_error(&resp, 403, None);
    // A client that asks to continue is refused before it sends its body.
    let mut asking = Conn::open(port);
    let head = "PUT /api/kv/big HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n";
    asking
        .write_raw(format!("{head}Expect: 100-continue\r\n\r\n").as_bytes())
        .unwrap();
    assert_unauthorized(&asking.read_response(false).unwrap());
    // One that announces a body and never sends it holds no worker, and is
    // answered once the read timeout ends its body.
    let mut idle = Conn::open(port);
    idle.write_raw(format!("{head}\r\n").as_bytes()).unwrap();
    for n in 0..8 {
        let path = format!("/api/kv/ok-{n}");
        assert_eq!(with_token(port, &root(), "PUT", &path, b"1").status, 201);
    }
    assert_unauthorized(&idle.read_response(false).unwrap());
    assert_eq!(
        with_token(port, &root(), "GET", "/api/kv/big", b"").status,
        404
    );
}

#[test]
fn tokens_and_the_secret_never_reach_the_logs() {
    let node = Config::new()
        .level("trace")
        .raw("authentication", "enabled: true")
        .raw("authentication", &format!("secret_key: \"{SECRET}\""))
        .start();
    let port = node.port();
    let good = root();
    let wrong = sign(
        "another-secret-0123456789-abcdefghij",
        claims(&["read"], json!({})),
    );
    let expired = sign(SECRET, claims(&["read"], json!({"exp": now() - 3600})));
    for token in [&good, &wrong, &expired] {
        with_token(port, token, "PUT", "/api/kv/k", b"v");
        with_token(port, token, "GET", "/api/kv/k", b"");
        // In the query string, where some clients put it: refused, and
        // not logged either.
        for name in ["token", "access_token"] {
            assert_unauthorized(&get(port, &format!("/api/kv/k?{name}={token}")));
        }
    }
    let logs = node.logs();
    assert!(
        logs.contains("401"),
        "the refusals are not logged at all:\n{logs}"
    );
    for secret in [SECRET, &good, &wrong, &expired] {
        // Each part of a token is a secret-ish string on its own.
        for part in secret.split('.') {
            assert!(!logs.contains(part), "{part} appears in the logs:\n{logs}");
        }
    }
}

#[test]
fn init_makes_a_private_config_with_a_secret_and_prints_a_root_token_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("lucid.yml");
    let out = run_lucid(&["--config", config.to_str().unwrap(), "init"], dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let token = stdout.lines().last().unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("\n  enabled: true\n"), "{text}");
    let secret = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("secret_key: \""))
        .and_then(|s| s.strip_suffix('"'))
        .expect("no secret_key line");
    assert!(
        secret.len() >= 64 && secret.bytes().all(|b| b.is_ascii_hexdigit()),
        "{secret}"
    );
    assert!(
        !text.contains(token),
        "the root token was written to the config"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&config).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the config is readable by others");
    }
    // A second init makes another secret, so the first root token stops
    // working there.
    let again = run_lucid(
        &["--config", config.to_str().unwrap(), "init", "--force"],
        dir.path(),
    );
    assert!(again.status.success());
    assert_ne!(std::fs::read_to_string(&config).unwrap(), text);
    let claims = HS256Key::from_bytes(secret.as_bytes())
        .verify_token::<Map<String, Value>>(token, None)
        .unwrap();
    assert_eq!(claims.custom["scopes"], json!(["read", "write", "admin"]));
    assert!(claims.expires_at.unwrap().as_secs() > unix_now() + 300 * 86_400);
}

#[test]
fn tokens_issue_prints_a_token_the_node_honours() {
    let node = secured(&[]);
    let port = node.port();
    // `lucid tokens issue ARGS` (split at spaces).
    let run = |args: &str| {
        let mut all = vec!["tokens", "issue"];
        all.extend(args.split(' '));
        node.run(&all)
    };
    let issue = |args: &str| {
        let out = run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args}: {stderr}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let token = issue("--scope read --prefix sensors/ --expires 30d --subject dashboard");
    let claims = HS256Key::from_bytes(SECRET.as_bytes())
        .verify_token::<Map<String, Value>>(&token, None)
        .unwrap();
    assert_eq!(claims.subject.as_deref(), Some("dashboard"));
    let days = (claims.expires_at.unwrap().as_secs() - unix_now()) as f64 / 86_400.0;
    assert!((29.9..=30.1).contains(&days), "{days} days");
    let ruled = issue("--scope read --scope write --prefix a/ --rule a/secret/=none --expires 1h");

    assert_eq!(
        with_token(port, &root(), "PUT", "/api/kv/sensors/t", b"1").status,
        201
    );
    let cases = [
        (&token, "GET", "/api/kv/sensors/t", 200),
        (&token, "PUT", "/api/kv/sensors/t", 403),
        (&token, "GET", "/api/kv/wallets/w", 403),
        (&ruled, "PUT", "/api/kv/a/x", 201),
        (&ruled, "PUT", "/api/kv/a/secret/x", 403),
    ];
    for (token, method, path, status) in cases {
        let resp = with_token(port, token, method, path, b"1");
        assert_eq!(resp.status, status, "{method} {path}: {}", resp.text());
    }

    for (args, expected) in [
        ("--expires 30d", "--scope"),
        ("--scope root --expires 30d", "read, write or admin"),
        ("--scope read --expires soon", "30d"),
        ("--scope read", "--expires"),
        // Beyond 2106 the expiry would wrap to a date in the past.
        ("--scope read --expires 80y", "2106"),
        ("--scope read --expires 500y", "2106"),
    ] {
        let out = run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[test]
fn a_replicate_token_from_tokens_issue_reads_writes_and_administers_nothing() {
    let node = secured(&[]);
    let port = node.port();
    let out = node.run(&["tokens", "issue", "--scope", "replicate", "--expires", "1y"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let claims = HS256Key::from_bytes(SECRET.as_bytes())
        .verify_token::<Map<String, Value>>(&token, None)
        .unwrap();
    assert_eq!(claims.custom["scopes"], json!(["replicate"]));

    assert_eq!(
        with_token(port, &root(), "PUT", "/api/kv/k", b"v").status,
        201
    );
    for (method, path, scope) in [
        ("GET", "/api/kv/k", "read"),
        ("GET", "/api/kv?prefix=", "read"),
        ("PUT", "/api/kv/k", "write"),
        ("GET", "/api/admin/stats", "admin"),
    ] {
        let resp = with_token(port, &token, method, path, b"w");
        assert_eq!(resp.status, 403, "{method} {path}: {}", resp.text());
        assert!(
            resp.text().contains(scope),
            "{method} {path}: {}",
            resp.text()
        );
    }
    assert_eq!(
        with_token(port, &root(), "GET", "/api/kv/k", b"").body,
        b"v"
    );
}

#[test]
fn tokens_issue_without_a_secret_says_what_to_do() {
    let node = Config::new().prepare();
    let out = node.run(&["tokens", "issue", "--scope", "read", "--expires", "1d"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("secret_key") && stderr.contains("lucid init"),
        "{stderr}"
    );
}

#[test]
fn expired_tokens_stop_working() {
    let node = secured(&["leeway_s: 0"]);
    let short = sign(SECRET, claims(&["read"], json!({"exp": now() + 2})));
    assert_eq!(
        with_token(node.port(), &short, "GET", "/api/kv/k", b"").status,
        404
    );
    std::thread::sleep(Duration::from_secs(4));
    assert_unauthorized(&with_token(node.port(), &short, "GET", "/api/kv/k", b""));
}

#[test]
fn listings_need_read_on_the_whole_prefix_and_batches_write_on_every_key() {
    let node = secured(&[]);
    let port = node.port();
    for key in ["sensors/a", "sensors/private/b", "wallets/c"] {
        assert_eq!(
            with_token(port, &root(), "PUT", &kv_path(key), b"v").status,
            201
        );
    }
    let prefixes = json!({"prefixes": ["sensors/", {"prefix": "sensors/private/", "scopes": []}]});
    let scoped = sign(SECRET, claims(&["read", "write"], prefixes));
    let list =
        |token: &str, query: &str| with_token(port, token, "GET", &format!("/api/kv{query}"), b"");

    let open = list(&scoped, "?prefix=sensors%2Fa");
    assert_eq!(open.status, 200, "{}", open.text());
    assert!(open.text().contains("sensors/a"), "{}", open.text());
    for query in ["?prefix=sensors/", "?prefix=wallets/", "", "?limit=5"] {
        let resp = list(&scoped, query);
        assert_error(&resp, 403, None);
        assert!(
            !resp.text().contains("wallets/c"),
            "{query}: {}",
            resp.text()
        );
    }
    assert_unauthorized(&request(port, "GET", "/api/kv?prefix=sensors/", &[], b""));
    assert_error(&list(&token(&["write"]), "?prefix=sensors/"), 403, None);
    assert_eq!(list(&token(&["read"]), "").status, 200);

    // A batch needs write on each of its keys, checked one by one: one
    // key out of reach refuses the whole batch and names it.
    let ops = |keys: &[&str], value: &str| {
        let ops: Vec<_> = keys
            .iter()
            .map(|key| json!({"op": "put", "key": key, "value": value}))
            .collect();
        json!({ "operations": ops }).to_string()
    };
    let post =
        |token: &str, body: &str| with_token(port, token, "POST", "/api/batch", body.as_bytes());
    let value_of = |key: &str| with_token(port, &root(), "GET", &kv_path(key), b"").body;
    let mixed = ops(&["sensors/a", "sensors/private/b"], "mixed");
    assert_unauthorized(&request(port, "POST", "/api/batch", &[], mixed.as_bytes()));
    let refused = post(&scoped, &mixed);
    assert_eq!(refused.status, 403, "{}", refused.text());
    let body: serde_json::Value = serde_json::from_slice(&refused.body).unwrap();
    assert!(body["message"].as_str().unwrap().contains("Operation 1"));
    assert_eq!(body["operation"], 1, "{}", refused.text());
    assert_eq!(post(&scoped, &ops(&["wallets/c"], "x")).status, 403);
    assert_eq!(
        post(&token(&["read"]), &ops(&["sensors/a"], "x")).status,
        403
    );
    assert_eq!(
        value_of("sensors/a"),
        b"v",
        "nothing of a refused batch applied"
    );
    let resp = post(&scoped, &ops(&["sensors/a"], "new"));
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(value_of("sensors/a"), b"new");
    let resp = post(&token(&["write"]), &ops(&["sensors/a", "wallets/c"], "all"));
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(value_of("wallets/c"), b"all");
}

#[test]
fn watches_need_read_on_the_whole_prefix() {
    let node = secured(&[]);
    let port = node.port();
    let scoped = sign(SECRET, claims(&["read"], json!({"prefixes": ["sensors/"]})));
    assert_unauthorized(&request(
        port,
        "GET",
        "/api/watch?prefix=sensors/",
        &[],
        b"",
    ));
    for path in ["/api/watch?prefix=wallets/", "/api/watch"] {
        assert_error(&with_token(port, &scoped, "GET", path, b""), 403, None);
    }
    assert_error(
        &with_token(
            port,
            &token(&["write"]),
            "GET",
            "/api/watch?prefix=sensors/",
            b"",
        ),
        403,
        None,
    );
    // Allowed: the event stream starts (its first line is enough).
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let head = format!(
        "GET /api/watch?prefix=sensors%2F HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {scoped}\r\n\r\n"
    );
    std::io::Write::write_all(&mut stream, head.as_bytes()).unwrap();
    let mut status = [0u8; 12];
    std::io::Read::read_exact(&mut stream, &mut status).unwrap();
    assert_eq!(&status, b"HTTP/1.1 200");
}
