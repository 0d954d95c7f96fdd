//! `lucid health`: asks a running node's `/health` and succeeds only if it
//! answers 200, so a container's health check needs neither a shell nor
//! curl.

use std::path::Path;
use std::time::Duration;

use super::{remote, CommandResult};
use crate::config::{Config, General};

/// How long the whole exchange may take.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The most of the answer's body read (it is a short JSON object).
const MAX_BODY: u64 = 4096;

/// Queries `{url}/health` (default: the configured address) and prints the
/// answer; an error unless the node answers 200.
pub fn run(config_path: Option<&Path>, url: Option<&str>) -> CommandResult {
    let base = match url {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => node_url(&Config::load(config_path)?.0.general)?,
    };
    let url = format!("{base}/health");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(TIMEOUT))
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent
        .get(&url)
        .call()
        .map_err(|err| format!("cannot reach {url}: {err}"))?;
    let status = response.status();
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_BODY)
        .read_to_string()
        .map_err(|err| format!("{url} answered {status} with an unreadable body: {err}"))?;
    let body = body.trim();
    if status != 200 {
        return Err(format!("{url} answered {status}: {body}").into());
    }
    say!("{body}")?;
    Ok(())
}

/// The URL of the node a config describes, as seen from this machine.
fn node_url(general: &General) -> Result<String, String> {
    if general.tls.enabled() {
        return Err("the node speaks HTTPS, which `lucid health` does not; \
                    give --url http://... of a plain-HTTP node"
            .into());
    }
    remote::url(general, "").map_err(|err| format!("{err}: give --url"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_listening_everywhere_is_asked_on_loopback() {
        let mut general = General::default();
        assert_eq!(node_url(&general).unwrap(), "http://127.0.0.1:7021");
        general.bind_address = "0.0.0.0".into();
        assert_eq!(node_url(&general).unwrap(), "http://127.0.0.1:7021");
        general.bind_address = "::".into();
        general.port = 8080;
        assert_eq!(node_url(&general).unwrap(), "http://[::1]:8080");
        general.port = 0;
        assert!(node_url(&general).is_err());
    }
}
