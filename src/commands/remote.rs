//! Asking the node that runs on this machine over its HTTP API, for the
//! commands that cannot do their work while it holds the data directory.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use crate::config::{Config, General};

/// How long to wait for the node to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Environment variable holding a token, instead of `--token`.
pub const TOKEN_VAR: &str = "LUCID_TOKEN";

/// The token from `--token`, else from `$LUCID_TOKEN`, if any.
pub fn token(given: Option<String>) -> Option<String> {
    given
        .or_else(|| std::env::var(TOKEN_VAR).ok())
        .filter(|token| !token.is_empty())
}

/// The URL of `path` on the node `general` configures, as reached from this
/// machine: a wildcard bind address (0.0.0.0, ::) is asked on loopback.
pub fn url(general: &General, path: &str) -> Result<String, String> {
    if general.port == 0 {
        return Err(
            "general.port is 0, so the node's port is chosen at each start (its log says which)"
                .into(),
        );
    }
    let first = general.listen_addresses()?[0];
    let ip = match first.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let scheme = if general.tls.enabled() {
        "https"
    } else {
        "http"
    };
    Ok(format!(
        "{scheme}://{}{path}",
        SocketAddr::new(ip, general.port)
    ))
}

/// A node's answer: its status and JSON body.
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body (`Null` if it is not JSON).
    pub body: serde_json::Value,
}

impl Answer {
    /// The body's `message`, or the status alone.
    pub fn message(&self) -> String {
        match self.body["message"].as_str() {
            Some(message) => format!("{} {message}", self.status),
            None => self.status.to_string(),
        }
    }
}

/// The client the commands ask the node with: it connects within
/// 5 s, then waits as long as the node takes to answer
/// (an export or a compaction may take a while); any status is an answer.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into()
}

/// The `Authorization` header's value for `token`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The node's base URL: `given` (`--url`), else the one `config_path`'s
/// config describes.
pub fn base_url(config_path: Option<&Path>, given: Option<&str>) -> Result<String, String> {
    match given {
        Some(url) => Ok(url.trim_end_matches('/').to_string()),
        None => {
            let (config, _) = Config::load(config_path).map_err(|err| err.to_string())?;
            url(&config.general, "").map_err(|err| format!("{err}: give --url"))
        }
    }
}

/// Sends `GET url` with `token`, if any, as its bearer token, and returns
/// the response once it answers 200 (its body still to be read, however
/// long), else an error with the node's message.
pub fn get_ok(
    url: &str,
    token: Option<String>,
) -> Result<ureq::http::Response<ureq::Body>, String> {
    let mut request = agent().get(url);
    if let Some(token) = token {
        request = request.header("Authorization", bearer(&token));
    }
    let mut response = request
        .call()
        .map_err(|err| format!("cannot ask the node at {url}: {err}"))?;
    if response.status() != 200 {
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let answer = Answer {
            status,
            body: serde_json::from_str(&text).unwrap_or_default(),
        };
        return Err(format!("{url} answered {}", answer.message()));
    }
    Ok(response)
}

/// Sends `POST url` with `body` (JSON Lines, may be empty) and `token`, if
/// any, as its bearer token, and waits as long as the node takes to answer.
pub fn post(url: &str, token: Option<&str>, body: &[u8]) -> Result<Answer, String> {
    post_with(&agent(), url, token, body)
}

/// [`post`] through `agent`, which keeps its connection to the node open
/// for the next request.
pub fn post_with(
    agent: &ureq::Agent,
    url: &str,
    token: Option<&str>,
    body: &[u8],
) -> Result<Answer, String> {
    let mut request = agent.post(url);
    if let Some(token) = token {
        request = request.header("Authorization", bearer(token));
    }
    if !body.is_empty() {
        request = request.header("Content-Type", "application/jsonl");
    }
    let mut response = request
        .send(body)
        .map_err(|err| format!("cannot ask the node at {url}: {err}"))?;
    let text = response
        .body_mut()
        .read_to_string()
        .map_err(|err| format!("cannot read the node's answer from {url}: {err}"))?;
    Ok(Answer {
        status: response.status().as_u16(),
        body: serde_json::from_str(&text).unwrap_or_default(),
    })
}
