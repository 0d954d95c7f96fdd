//! `lucid promote`: asks the follower running on this machine to become a
//! primary (`POST /api/admin/promote`), as when its primary is lost.

use std::path::Path;

use serde::Deserialize;

use super::remote::{self, Answer};
use super::CommandResult;
use crate::cli::PromoteArgs;
use crate::replication::state::Epoch;

/// What to do once a node is promoted, printed after its answer.
const THEN: &str = "Now remove replication.primary from the node's config: until then it \
     stays a primary but warns at each start (set it to another node's URL and it follows that \
     one).";

/// Asks the node at `--url` (default: the configured address) to promote
/// itself and prints its answer; an error if it is not a follower, refuses,
/// or cannot be reached.
pub fn run(config_path: Option<&Path>, args: PromoteArgs) -> CommandResult {
    let base = remote::base_url(config_path, args.url.as_deref())?;
    let url = format!("{base}/api/admin/promote");
    let answer = remote::post(&url, remote::token(args.token).as_deref(), b"")?;
    say!("{}", outcome(&url, &answer)?)?;
    say!("{THEN}")?;
    Ok(())
}

/// What the node's answer to `url` says: on 200, its message or its new
/// epoch; else (a 409 from a node that is no follower, a 401 or 403 for
/// the token) an error with its status and message.
fn outcome(url: &str, answer: &Answer) -> Result<String, String> {
    if answer.status != 200 {
        return Err(format!("{url} answered {}", answer.message()));
    }
    if let Some(message) = answer.body["message"].as_str() {
        return Ok(message.to_owned());
    }
    Ok(match Epoch::deserialize(&answer.body["epoch"]) {
        Ok(epoch) => format!("promoted: the node is a primary now, in epoch {epoch}"),
        Err(_) => "promoted: the node is a primary now".to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const URL: &str = "http://127.0.0.1:7021/api/admin/promote";

    fn answer(status: u16, body: serde_json::Value) -> Answer {
        Answer { status, body }
    }

    #[test]
    fn a_promotion_is_told_by_the_nodes_message_or_its_epoch() {
        let told = answer(200, json!({"message": "promoted to epoch 4.99"}));
        assert_eq!(outcome(URL, &told).unwrap(), "promoted to epoch 4.99");
        let epoch = answer(200, json!({"epoch": {"number": 4, "id": 99}}));
        let said = outcome(URL, &epoch).unwrap();
        assert!(said.ends_with("in epoch 4.99"), "{said}");
        let bare = outcome(URL, &answer(200, serde_json::Value::Null)).unwrap();
        assert_eq!(bare, "promoted: the node is a primary now");
    }

    #[test]
    fn a_refusal_passes_on_the_nodes_status_and_message() {
        let primary = answer(
            409,
            json!({"error": "not_follower", "message": "this node is a primary already"}),
        );
        let err = outcome(URL, &primary).unwrap_err();
        assert_eq!(
            err,
            format!("{URL} answered 409 this node is a primary already")
        );
        let err = outcome(URL, &answer(401, serde_json::Value::Null)).unwrap_err();
        assert_eq!(err, format!("{URL} answered 401"));
    }
}
