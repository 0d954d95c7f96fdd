//! The web console's server side through the real binary: its files at
//! `/ui` with strict security headers, ETag revalidation, gzip, no token
//! needed for them, `ui.enabled: false`; and the WebSocket watch taking a
//! token as the subprotocol `lucid.bearer.<token>`.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::process::{Command, Stdio};

use common::*;
use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;
use tungstenite::{Message, WebSocket};

const SECRET: &str = "console-test-secret-0123456789-abcdefgh";

/// The console's files and their content types.
const FILES: [(&str, &str); 4] = [
    ("/ui", "text/html; charset=utf-8"),
    ("/ui/", "text/html; charset=utf-8"),
    ("/ui/app.js", "text/javascript; charset=utf-8"),
    ("/ui/app.css", "text/css; charset=utf-8"),
];

fn secured() -> Node {
    Config::new().secured(SECRET).start()
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut child = Command::new("gzip")
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("gzip on PATH");
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    out.stdout
}

#[test]
fn the_console_is_served_with_strict_headers_and_no_token() {
    let node = secured();
    let port = node.port();
    for (path, content_type) in FILES {
        let resp = get(port, path);
        assert_eq!(resp.status, 200, "{path}");
        assert_eq!(resp.header("content-type"), Some(content_type), "{path}");
        let csp = resp.header("content-security-policy").unwrap();
        assert!(csp.starts_with("default-src 'self'"), "{csp}");
        assert!(!csp.contains("unsafe"), "{csp}");
        assert!(csp.contains("connect-src 'self'"), "{csp}");
        assert_eq!(resp.header("x-frame-options"), Some("DENY"));
        assert_eq!(resp.header("referrer-policy"), Some("no-referrer"));
        assert_eq!(resp.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(resp.header("cache-control"), Some("no-cache"));
        assert!(resp.header("etag").is_some_and(|tag| tag.starts_with('"')));
        assert_eq!(resp.header("access-control-allow-origin"), None);
    }
    // The page has no inline script or style for the policy to refuse.
    let page = get(port, "/ui/").text();
    assert!(page.contains(r#"<script src="/ui/app.js""#));
    assert_eq!(page.matches("<script").count(), 1, "{page}");
    assert!(
        !page.contains("style=") && !page.contains("<style"),
        "{page}"
    );
    // The API it calls still needs a token, and it can tell.
    assert_eq!(get(port, "/api/kv?limit=1").status, 401);
    assert_eq!(
        get(port, "/ui/auth.json").text(),
        r#"{"authentication":true}"#
    );
    // No CORS preflight is answered with an opening.
    let preflight = request(
        port,
        "OPTIONS",
        "/api/kv/k",
        &[
            ("Origin", "http://evil.example"),
            ("Access-Control-Request-Method", "PUT"),
        ],
        b"",
    );
    assert_eq!(preflight.header("access-control-allow-origin"), None);
    assert_error(&get(port, "/ui/nothing.js"), 404, None);
    assert_error(&request(port, "POST", "/ui/", &[], b""), 405, None);
}

#[test]
fn an_etag_revalidates_with_a_304() {
    let node = Node::start();
    let port = node.port();
    let first = get(port, "/ui/app.js");
    let etag = first.header("etag").unwrap().to_string();
    let again = request(port, "GET", "/ui/app.js", &[("If-None-Match", &etag)], b"");
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    assert_eq!(again.header("etag"), Some(etag.as_str()));
    assert_eq!(again.header("x-frame-options"), Some("DENY"));
    let other = request(
        port,
        "GET",
        "/ui/app.js",
        &[("If-None-Match", "\"x\"")],
        b"",
    );
    assert_eq!(other.status, 200);
    assert_eq!(other.body, first.body);
    // Each file has its own tag.
    assert_ne!(get(port, "/ui/app.css").header("etag"), Some(etag.as_str()));
}

#[test]
fn gzip_goes_to_clients_that_accept_it() {
    let node = Node::start();
    let port = node.port();
    let mut gzipped_total = 0;
    for (path, _) in FILES {
        let plain = get(port, path);
        assert_eq!(plain.header("content-encoding"), None);
        assert_eq!(plain.header("vary"), Some("Accept-Encoding"));
        let zipped = request(port, "GET", path, &[("Accept-Encoding", "gzip, br")], b"");
        assert_eq!(zipped.header("content-encoding"), Some("gzip"), "{path}");
        assert_eq!(zipped.header("etag"), plain.header("etag"));
        assert!(zipped.body.len() < plain.body.len(), "{path}");
        assert_eq!(gunzip(&zipped.body), plain.body, "{path}");
        if path != "/ui" {
            gzipped_total += zipped.body.len();
        }
        let refused = request(port, "GET", path, &[("Accept-Encoding", "gzip;q=0")], b"");
        assert_eq!(refused.header("content-encoding"), None);
        assert_eq!(refused.body, plain.body);
    }
    assert!(gzipped_total <= 100 * 1024, "{gzipped_total} bytes");
}

#[test]
fn ui_enabled_false_is_a_404() {
    let node = Config::new().raw("ui", "enabled: false").start();
    let port = node.port();
    for (path, _) in FILES {
        assert_error(&get(port, path), 404, None);
    }
    assert_error(&get(port, "/ui/auth.json"), 404, None);
    assert_eq!(get(port, "/health").status, 200);
}

/// A WebSocket watch of `path` offering `protocols`, or the refusal's
/// status.
fn ws_with_protocols(
    port: u16,
    path: &str,
    protocols: &str,
    authorization: Option<&str>,
) -> Result<(WebSocket<TcpStream>, Option<String>), u16> {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut request = format!("ws://127.0.0.1:{port}{path}")
        .into_client_request()
        .unwrap();
    let headers = request.headers_mut();
    headers.insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_str(protocols).unwrap(),
    );
    if let Some(value) = authorization {
        headers.insert("Authorization", HeaderValue::from_str(value).unwrap());
    }
    match tungstenite::client(request, stream) {
        Ok((ws, response)) => {
            let protocol = response
                .headers()
                .get("Sec-WebSocket-Protocol")
                .map(|v| v.to_str().unwrap().to_string());
            Ok((ws, protocol))
        }
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            Err(response.status().as_u16())
        }
        Err(other) => panic!("handshake: {other}"),
    }
}

#[test]
fn a_websocket_watcher_may_offer_its_token_as_a_subprotocol() {
    let node = secured();
    let port = node.port();
    let reader = node.issue_token(&["--scope", "read", "--prefix", "s/"]);
    let writer = node.issue_token(&["--scope", "write"]);
    let offer = format!("lucid, lucid.bearer.{reader}");
    let (mut ws, protocol) = ws_with_protocols(port, "/api/watch?prefix=s/", &offer, None)
        .expect("the token in the subprotocol is accepted");
    // The plain protocol is answered, never the token.
    assert_eq!(protocol.as_deref(), Some("lucid"));
    let put = request(
        port,
        "PUT",
        "/api/kv/s/t",
        &[("Authorization", &format!("Bearer {writer}"))],
        b"21.5",
    );
    assert_eq!(put.status, 201);
    let event = loop {
        match ws.read().expect("a message") {
            Message::Text(text) => break serde_json::from_str::<serde_json::Value>(&text).unwrap(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(event["key"], "s/t");
    assert_eq!(event["value"], "21.5");

    // Scopes apply as in the header: this token reads s/ only.
    let elsewhere = ws_with_protocols(port, "/api/watch?prefix=x/", &offer, None);
    assert_eq!(elsewhere.err(), Some(403));
    // A bad token, a token without the plain protocol offered, a token in
    // both places, a token in the query string: all refused.
    let forged = format!("lucid, lucid.bearer.{reader}x");
    assert_eq!(
        ws_with_protocols(port, "/api/watch?prefix=s/", &forged, None).err(),
        Some(401)
    );
    let alone = format!("lucid.bearer.{reader}");
    assert_eq!(
        ws_with_protocols(port, "/api/watch?prefix=s/", &alone, None).err(),
        Some(400)
    );
    let bearer = format!("Bearer {reader}");
    assert_eq!(
        ws_with_protocols(port, "/api/watch?prefix=s/", &offer, Some(&bearer)).err(),
        Some(401)
    );
    let in_query = format!("/api/watch?prefix=s/&token={reader}");
    assert!(ws_with_protocols(port, &in_query, "lucid", None).is_err());
    let in_query = format!("/api/watch?prefix=s/&access_token={reader}");
    assert!(ws_with_protocols(port, &in_query, "lucid", None).is_err());
    // The header alone still works, and the plain protocol is answered.
    let (_, protocol) =
        ws_with_protocols(port, "/api/watch?prefix=s/", "lucid", Some(&bearer)).unwrap();
    assert_eq!(protocol.as_deref(), Some("lucid"));
    // Only watches read the subprotocol: a plain request with it is a 401.
    let plain = request(
        port,
        "GET",
        "/api/kv/s/t",
        &[("Sec-WebSocket-Protocol", &offer)],
        b"",
    );
    assert_eq!(plain.status, 401);
    // The token never reaches the log.
    assert!(!node.logs().contains(&reader));
}
