//! Asking the node that runs on this machine over its HTTP API, for the
//! commands that cannot do their work while it holds the data directory.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use crate::config::General;

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

/// Sends `POST url` with `token` as its bearer token, and waits as long as
/// the node takes to answer.
pub fn post(url: &str, token: &str) -> Result<Answer, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    let mut response = agent
        .post(url)
        .header("Authorization", format!("Bearer {token}"))
        .send_empty()
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
